//! nf_tables request messages (`linux/netfilter/nf_tables.h`) for the objects this crate manages.

use crate::attachment::decode_udata;
use crate::attr::{AttrWriter, Attrs};
use crate::names::{addr_bytes, addr_from_bytes, Family};
use crate::sock::Msg;
use crate::Attachment;
use ipnet::IpNet;
use std::net::IpAddr;

/// `NFPROTO_INET`: one table serves IPv4 and IPv6.
const NFPROTO_INET: u8 = 1;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// `NF_INET_POST_ROUTING`.
const HOOK_POSTROUTING: u32 = 4;
/// `NF_IP_PRI_NAT_SRC`, what nft calls `srcnat`.
const PRIORITY_SRCNAT: u32 = 100;
/// `NF_ACCEPT`: packets no rule matches leave the chain unchanged.
const POLICY_ACCEPT: u32 = 1;
/// `NFT_REG_1`, the first 16-byte data register.
const REG_1: u32 = 1;
/// `NFT_PAYLOAD_NETWORK_HEADER`.
const BASE_NETWORK: u32 = 1;
/// `NFT_META_NFPROTO`.
const META_NFPROTO: u32 = 15;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
/// `NFTNL_UDATA_*_COMMENT`, the comment TLV of table and rule userdata.
const UDATA_COMMENT: u8 = 0;

/// An element read back from a pod set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    /// The pod address (the key).
    pub(crate) addr: IpAddr,
    /// The owning attachment, if the userdata names one.
    pub(crate) att: Option<Attachment>,
    /// The prefix length of the pod's subnet, if recorded.
    pub(crate) prefix: Option<u8>,
}

impl Element {
    /// The pod subnet, whose chain masquerades this element.
    pub(crate) fn subnet(&self) -> Option<IpNet> {
        IpNet::new(self.addr, self.prefix?).ok().map(|n| n.trunc())
    }
}

fn msg(kind: u16, flags: u16, op: &'static str, attrs: AttrWriter) -> Msg {
    Msg {
        kind,
        flags,
        family: NFPROTO_INET,
        attrs: attrs.into_bytes(),
        op,
    }
}

fn comment_udata(text: &str) -> Option<Vec<u8>> {
    // TLV length is one byte including the NUL; nft itself caps comments at 128 bytes.
    let len = u8::try_from(text.len() + 1).ok().filter(|l| *l <= 128)?;
    let mut out = vec![UDATA_COMMENT, len];
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Some(out)
}

/// `add table inet <table> { comment "<comment>" }`; an existing table is kept.
pub(crate) fn new_table(table: &str, comment: &str) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_TABLE_NAME, table);
    if let Some(udata) = comment_udata(comment) {
        a.bytes(NFTA_TABLE_USERDATA, &udata);
    }
    msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, "add table", a)
}

/// `delete table inet <table>`, with everything in it.
pub(crate) fn del_table(table: &str) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_TABLE_NAME, table);
    msg(NFT_MSG_DELTABLE, 0, "delete table", a)
}

/// Dump request for the inet tables.
pub(crate) fn get_tables() -> Msg {
    msg(NFT_MSG_GETTABLE, 0, "list tables", AttrWriter::new())
}

/// Name and comment of a table from a table dump.
pub(crate) fn parse_table(attrs: &[u8]) -> Option<(String, Option<String>)> {
    let a = Attrs::new(attrs);
    let name = a.get_str(NFTA_TABLE_NAME)?.to_owned();
    let comment = a.get(NFTA_TABLE_USERDATA).and_then(|u| match u {
        [UDATA_COMMENT, len, rest @ ..] if usize::from(*len) <= rest.len() && *len > 0 => {
            std::str::from_utf8(&rest[..usize::from(*len) - 1])
                .ok()
                .map(str::to_owned)
        }
        _ => None,
    });
    Some((name, comment))
}

/// `add set inet <table> pods4 { type ipv4_addr; }` (or pods6); an existing set is kept.
pub(crate) fn new_set(table: &str, family: Family) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_SET_TABLE, table)
        .str(NFTA_SET_NAME, family.set_name())
        .u32_be(NFTA_SET_FLAGS, 0)
        .u32_be(NFTA_SET_KEY_TYPE, family.key_type())
        .u32_be(NFTA_SET_KEY_LEN, family.addr_len())
        // Mandatory; it only matters for anonymous sets referenced by id within one batch.
        .u32_be(NFTA_SET_ID, family.key_type());
    msg(NFT_MSG_NEWSET, NLM_F_CREATE, "add set", a)
}

fn chain_attrs(table: &str, chain: &str) -> AttrWriter {
    let mut a = AttrWriter::new();
    a.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, chain);
    a
}

/// `add chain inet <table> <chain> { type nat hook postrouting priority srcnat; policy accept; }`.
pub(crate) fn new_masq_chain(table: &str, chain: &str) -> Msg {
    let mut a = chain_attrs(table, chain);
    a.nested(NFTA_CHAIN_HOOK, |h| {
        h.u32_be(NFTA_HOOK_HOOKNUM, HOOK_POSTROUTING)
            .u32_be(NFTA_HOOK_PRIORITY, PRIORITY_SRCNAT);
    })
    .u32_be(NFTA_CHAIN_POLICY, POLICY_ACCEPT)
    .str(NFTA_CHAIN_TYPE, "nat");
    msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, "add chain", a)
}

/// `delete chain inet <table> <chain>` (with its rules).
pub(crate) fn del_chain(table: &str, chain: &str) -> Msg {
    msg(
        NFT_MSG_DELCHAIN,
        0,
        "delete chain",
        chain_attrs(table, chain),
    )
}

/// Get request for one chain.
pub(crate) fn get_chain(table: &str, chain: &str) -> Msg {
    msg(NFT_MSG_GETCHAIN, 0, "get chain", chain_attrs(table, chain))
}

/// `flush chain inet <table> <chain>`: deletes its rules.
pub(crate) fn flush_chain(table: &str, chain: &str) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    msg(NFT_MSG_DELRULE, 0, "flush chain", a)
}

/// The rule of a subnet chain:
/// `ip saddr @pods4 ip saddr <subnet> ip daddr != <subnet> ip daddr != 224.0.0.0/4 masquerade`.
/// The `saddr <subnet>` match keeps the rule of one subnet from masquerading pods of another subnet of the same
/// network talking to their own subnet.
pub(crate) fn new_masq_rule(table: &str, chain: &str, subnet: IpNet, network: &str) -> Msg {
    let subnet = subnet.trunc();
    let family = Family::of(subnet.addr());
    let (saddr, daddr) = family.addr_offsets();
    let mut a = AttrWriter::new();
    a.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    a.nested(NFTA_RULE_EXPRESSIONS, |e| {
        meta_nfproto(e, family);
        payload(e, saddr, family.addr_len());
        lookup(e, family.set_name());
        in_net(e, subnet, CMP_EQ);
        payload(e, daddr, family.addr_len());
        in_net(e, subnet, CMP_NEQ);
        payload(e, daddr, family.addr_len());
        in_net(e, family.multicast(), CMP_NEQ);
        expr(e, "masq", |_| {});
    });
    if let Some(udata) = comment_udata(&format!("trestle {network} {subnet}")) {
        a.bytes(NFTA_RULE_USERDATA, &udata);
    }
    msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, "add rule", a)
}

fn expr(e: &mut AttrWriter, name: &str, data: impl FnOnce(&mut AttrWriter)) {
    e.nested(NFTA_LIST_ELEM, |x| {
        x.str(NFTA_EXPR_NAME, name).nested(NFTA_EXPR_DATA, data);
    });
}

fn data_value(a: &mut AttrWriter, ty: u16, value: &[u8]) {
    a.nested(ty, |d| {
        d.bytes(NFTA_DATA_VALUE, value);
    });
}

/// `meta nfproto ipv4`: in an inet table the network header may be either family.
fn meta_nfproto(e: &mut AttrWriter, family: Family) {
    expr(e, "meta", |d| {
        d.u32_be(1, REG_1).u32_be(2, META_NFPROTO); // NFTA_META_DREG, NFTA_META_KEY
    });
    cmp(e, CMP_EQ, &[family.nfproto()]);
}

/// Loads `len` bytes at `offset` of the network header into register 1.
fn payload(e: &mut AttrWriter, offset: u32, len: u32) {
    expr(e, "payload", |d| {
        // NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
        d.u32_be(1, REG_1)
            .u32_be(2, BASE_NETWORK)
            .u32_be(3, offset)
            .u32_be(4, len);
    });
}

/// Matches if register 1 is in the set.
fn lookup(e: &mut AttrWriter, set: &str) {
    expr(e, "lookup", |d| {
        d.str(1, set).u32_be(2, REG_1); // NFTA_LOOKUP_SET, NFTA_LOOKUP_SREG
    });
}

fn cmp(e: &mut AttrWriter, op: u32, value: &[u8]) {
    expr(e, "cmp", |d| {
        d.u32_be(1, REG_1).u32_be(2, op); // NFTA_CMP_SREG, NFTA_CMP_OP
        data_value(d, 3, value); // NFTA_CMP_DATA
    });
}

/// Masks register 1 with the prefix of `net` and compares it with the network address (`==` or `!=`).
fn in_net(e: &mut AttrWriter, net: IpNet, op: u32) {
    let mask = addr_bytes(net.netmask());
    expr(e, "bitwise", |d| {
        // NFTA_BITWISE_SREG, _DREG, _LEN
        d.u32_be(1, REG_1)
            .u32_be(2, REG_1)
            .u32_be(3, mask.len() as u32);
        data_value(d, 4, &mask); // NFTA_BITWISE_MASK
        data_value(d, 5, &vec![0; mask.len()]); // NFTA_BITWISE_XOR
    });
    cmp(e, op, &addr_bytes(net.network()));
}

/// Whether a set element request adds or deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemOp {
    Add,
    Delete,
}

/// Adds (keeping existing ones) or deletes elements of a pod set; each with optional userdata.
/// All addresses must be of `family`.
pub(crate) fn elems(
    op: ElemOp,
    table: &str,
    family: Family,
    items: &[(IpAddr, Option<Vec<u8>>)],
) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_SET_ELEM_LIST_TABLE, table)
        .str(NFTA_SET_ELEM_LIST_SET, family.set_name());
    a.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        for (addr, udata) in items {
            list.nested(NFTA_LIST_ELEM, |el| {
                data_value(el, NFTA_SET_ELEM_KEY, &addr_bytes(*addr));
                if let Some(udata) = udata {
                    el.bytes(NFTA_SET_ELEM_USERDATA, udata);
                }
            });
        }
    });
    match op {
        ElemOp::Add => msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add set element", a),
        ElemOp::Delete => msg(NFT_MSG_DELSETELEM, 0, "delete set element", a),
    }
}

/// Dump request for the elements of a pod set.
pub(crate) fn get_elems(table: &str, family: Family) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_SET_ELEM_LIST_TABLE, table)
        .str(NFTA_SET_ELEM_LIST_SET, family.set_name());
    msg(NFT_MSG_GETSETELEM, 0, "list set elements", a)
}

/// The elements in one message of a set element dump.
pub(crate) fn parse_elems(attrs: &[u8]) -> Vec<Element> {
    let Some(list) = Attrs::new(attrs).get(NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    Attrs::new(list)
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .filter_map(|(_, el)| {
            let el = Attrs::new(el);
            let key = Attrs::new(el.get(NFTA_SET_ELEM_KEY)?).get(NFTA_DATA_VALUE)?;
            let (att, prefix) = decode_udata(el.get(NFTA_SET_ELEM_USERDATA).unwrap_or_default());
            Some(Element {
                addr: addr_from_bytes(key)?,
                att,
                prefix,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::encode_udata;

    #[test]
    fn element_request_parses_back() {
        let att = Attachment::new("cid", "eth0");
        let addr: IpAddr = "10.1.0.5".parse().unwrap();
        let m = elems(
            ElemOp::Add,
            "t",
            Family::V4,
            &[(addr, Some(encode_udata(&att, 24)))],
        );
        let parsed = parse_elems(&m.attrs);
        assert_eq!(
            parsed,
            vec![Element {
                addr,
                att: Some(att),
                prefix: Some(24)
            }]
        );
        assert_eq!(parsed[0].subnet(), Some("10.1.0.0/24".parse().unwrap()));
    }

    #[test]
    fn table_comment_parses_back() {
        let m = new_table("trestle-x", "my net");
        assert_eq!(
            parse_table(&m.attrs),
            Some(("trestle-x".to_owned(), Some("my net".to_owned())))
        );
        let long = new_table("t", &"n".repeat(200));
        assert_eq!(parse_table(&long.attrs), Some(("t".to_owned(), None)));
    }

    #[test]
    fn rule_expression_sequence() {
        let m = new_masq_rule("t", "c", "fd00::7/64".parse().unwrap(), "net");
        let exprs = Attrs::new(&m.attrs).get(NFTA_RULE_EXPRESSIONS).unwrap();
        let names: Vec<_> = Attrs::new(exprs)
            .map(|(_, e)| Attrs::new(e).get_str(NFTA_EXPR_NAME).unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "meta", "cmp", "payload", "lookup", "bitwise", "cmp", "payload", "bitwise", "cmp",
                "payload", "bitwise", "cmp", "masq"
            ]
        );
    }
}
