//! Pure planning: which requests an operation sends, given what the kernel holds.

use crate::attachment::encode_udata;
use crate::names::{chain_name, Family};
use crate::nft::{self, ElemOp, Element};
use crate::sock::Msg;
use crate::Attachment;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Elements per set element request, keeping every request far below netlink's 64 KiB attribute limit.
const ELEMS_PER_MSG: usize = 256;

/// The batch adding `att` with `addrs` to the network's table. It needs no prior dump:
/// - table, sets and subnet chains are created if missing (`NLM_F_CREATE` without `NLM_F_EXCL`);
/// - each subnet chain is flushed and its one rule written again, so the chain is right whatever it held;
/// - each element is added without userdata (a no-op if present), deleted, and added with the attachment's
///   userdata: an upsert, because the kernel keeps an existing element's userdata on a plain add. That way a
///   reused address whose old element was never removed ends up owned by the new attachment.
pub(crate) fn add_batch(network: &str, table: &str, att: &Attachment, addrs: &[IpNet]) -> Vec<Msg> {
    let mut seen = BTreeSet::new();
    let addrs: Vec<IpNet> = addrs
        .iter()
        .copied()
        .filter(|a| seen.insert(a.addr()))
        .collect();
    if addrs.is_empty() {
        return Vec::new();
    }
    let families: BTreeSet<Family> = addrs.iter().map(|a| Family::of(a.addr())).collect();
    let subnets: BTreeSet<IpNet> = addrs.iter().map(IpNet::trunc).collect();
    let mut msgs = vec![nft::new_table(table, network)];
    msgs.extend(families.iter().map(|f| nft::new_set(table, *f)));
    for subnet in &subnets {
        let chain = chain_name(*subnet);
        msgs.push(nft::new_masq_chain(table, &chain));
        msgs.push(nft::flush_chain(table, &chain));
        msgs.push(nft::new_masq_rule(table, &chain, *subnet, network));
    }
    for family in families {
        let of_family = addrs.iter().filter(|a| Family::of(a.addr()) == family);
        let bare: Vec<_> = of_family.clone().map(|a| (a.addr(), None)).collect();
        let owned: Vec<_> = of_family
            .map(|a| (a.addr(), Some(encode_udata(att, a.prefix_len()))))
            .collect();
        msgs.push(nft::elems(ElemOp::Add, table, family, &bare));
        msgs.push(nft::elems(ElemOp::Delete, table, family, &bare));
        msgs.push(nft::elems(ElemOp::Add, table, family, &owned));
    }
    msgs
}

/// What a removal deletes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Removal {
    /// The elements removed.
    pub(crate) doomed: Vec<Element>,
    /// Subnet chains whose last pod goes.
    pub(crate) chains: Vec<IpNet>,
    /// No element is left: the whole table goes.
    pub(crate) drop_table: bool,
}

/// Plans removing the elements `doomed` selects from `existing` (the table's whole content).
pub(crate) fn plan_removal(existing: &[Element], doomed: impl Fn(&Element) -> bool) -> Removal {
    let (doomed, kept): (Vec<Element>, Vec<Element>) =
        existing.iter().cloned().partition(|e| doomed(e));
    let drop_table = kept.is_empty();
    // An element without a recorded prefix (not made by this crate) might rely on any chain: keep them all.
    let chains = if drop_table || kept.iter().any(|e| e.prefix.is_none()) {
        Vec::new()
    } else {
        let needed: BTreeSet<IpNet> = kept.iter().filter_map(Element::subnet).collect();
        let gone: BTreeSet<IpNet> = doomed.iter().filter_map(Element::subnet).collect();
        gone.difference(&needed).copied().collect()
    };
    Removal {
        doomed,
        chains,
        drop_table,
    }
}

/// The batch carrying out `removal`: element deletes first, so the chains are unreferenced when they go.
pub(crate) fn removal_batch(table: &str, removal: &Removal) -> Vec<Msg> {
    if removal.drop_table {
        return vec![nft::del_table(table)];
    }
    let mut msgs = Vec::new();
    for family in Family::ALL {
        let keys: Vec<(IpAddr, Option<Vec<u8>>)> = removal
            .doomed
            .iter()
            .filter(|e| Family::of(e.addr) == family)
            .map(|e| (e.addr, None))
            .collect();
        for chunk in keys.chunks(ELEMS_PER_MSG) {
            msgs.push(nft::elems(ElemOp::Delete, table, family, chunk));
        }
    }
    msgs.extend(
        removal
            .chains
            .iter()
            .map(|s| nft::del_chain(table, &chain_name(*s))),
    );
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(addr: &str, cid: &str, prefix: Option<u8>) -> Element {
        Element {
            addr: addr.parse().unwrap(),
            att: Some(Attachment::new(cid, "eth0")),
            prefix,
        }
    }

    fn of(cid: &str) -> impl Fn(&Element) -> bool + '_ {
        move |e: &Element| e.att.as_ref().is_some_and(|a| a.container_id == cid)
    }

    #[test]
    fn last_pod_drops_the_table() {
        let existing = [el("10.0.0.2", "a", Some(24)), el("fd00::2", "a", Some(64))];
        let r = plan_removal(&existing, of("a"));
        assert!(r.drop_table);
        assert_eq!(r.doomed.len(), 2);
        assert_eq!(removal_batch("t", &r).len(), 1);
    }

    #[test]
    fn chain_goes_with_the_last_pod_of_its_subnet() {
        let existing = [
            el("10.0.0.2", "a", Some(24)),
            el("10.0.1.2", "a", Some(24)),
            el("10.0.0.3", "b", Some(24)),
        ];
        let r = plan_removal(&existing, of("a"));
        assert!(!r.drop_table);
        assert_eq!(r.chains, vec!["10.0.1.0/24".parse::<IpNet>().unwrap()]);
        let kinds: Vec<_> = removal_batch("t", &r).iter().map(|m| m.op).collect();
        assert_eq!(kinds, ["delete set element", "delete chain"]);
    }

    #[test]
    fn unknown_prefix_keeps_chains_and_nothing_doomed_sends_nothing() {
        let existing = [el("10.0.0.2", "a", Some(24)), el("10.0.1.2", "b", None)];
        assert!(plan_removal(&existing, of("a")).chains.is_empty());
        let r = plan_removal(&existing, of("zzz"));
        assert!(r.doomed.is_empty() && !r.drop_table);
        assert!(removal_batch("t", &r).is_empty());
    }

    #[test]
    fn add_batch_upserts_each_family_once() {
        let att = Attachment::new("c", "eth0");
        let addrs: Vec<IpNet> = ["10.0.0.2/24", "10.0.0.2/24", "fd00::2/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ops: Vec<_> = add_batch("n", "t", &att, &addrs)
            .iter()
            .map(|m| m.op)
            .collect();
        assert_eq!(
            ops,
            [
                "add table",
                "add set",
                "add set",
                "add chain",
                "flush chain",
                "add rule",
                "add chain",
                "flush chain",
                "add rule",
                "add set element",
                "delete set element",
                "add set element",
                "add set element",
                "delete set element",
                "add set element"
            ]
        );
        assert!(add_batch("n", "t", &att, &[]).is_empty());
    }
}
