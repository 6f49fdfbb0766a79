//! The nf_tables side of forward accept: the `filter` tables of families `ip` and `ip6` that iptables-nft (and so
//! Docker on most hosts) writes, read and changed over netlink.
//!
//! Rules are encoded exactly as iptables-nft encodes them, so that `iptables-nft -S`, `iptables-nft-save` and
//! every later `iptables` call of Docker or an administrator keep working on the table (iptables-nft refuses a
//! table holding expressions it cannot translate): addresses as `payload` + `bitwise` + `cmp`, the state match as
//! the x_tables `conntrack` match (revision 3) through `nft_compat`, a `counter`, an `immediate` verdict, and the
//! comment as the rule's userdata comment (what `-m comment` becomes in iptables-nft).

use super::chains::{be32, Chains, TABLE};
use super::rules::{Anchor, Kind, Rule, View, CHAIN, DOCKER_USER, FORWARD, JUMP_COMMENT};
use crate::attr::{AttrWriter, Attrs};
use crate::names::{masked_net, Family};
use crate::nft::{comment_udata, expr, in_net, parse_comment, payload};
use crate::sock::{Msg, NfSocket};
use crate::Error;
use ipnet::IpNet;

const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_POSITION: u16 = 6;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_REV: u16 = 2;
const NFTA_MATCH_INFO: u16 = 3;

/// `NFT_REG_VERDICT`.
const REG_VERDICT: u32 = 0;
/// `NF_ACCEPT`.
const NF_ACCEPT: u32 = 1;
/// `NFT_JUMP` (-3).
const NFT_JUMP: u32 = (-3i32) as u32;
const CMP_EQ: u32 = 0;
/// `sizeof(struct xt_conntrack_mtinfo3)` rounded up by `XT_ALIGN`, as nft_compat checks it.
const CONNTRACK_INFO_LEN: usize = 168;
/// Offsets in `struct xt_conntrack_mtinfo3`: eight 16-byte addresses, two u32 expiry bounds, the protocol and four
/// ports come first.
const CONNTRACK_MATCH_FLAGS: usize = 146;
const CONNTRACK_STATE_MASK: usize = 150;
/// `XT_CONNTRACK_STATE`.
const XT_CONNTRACK_STATE: u16 = 1;
/// `XT_CONNTRACK_STATE_BIT(IP_CT_ESTABLISHED) | XT_CONNTRACK_STATE_BIT(IP_CT_RELATED)`.
const STATES_ESTABLISHED_RELATED: u16 = (1 << 1) | (1 << 2);

/// Which table, as iptables-nft names its programs.
pub(crate) fn backend_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-nft",
        Family::V6 => "ip6tables-nft",
    }
}

fn msg(family: Family, kind: u16, flags: u16, op: &'static str, attrs: AttrWriter) -> Msg {
    Msg {
        kind,
        flags,
        family: family.nfproto(),
        attrs: attrs.into_bytes(),
        op,
    }
}

fn chain_attrs(chain: &str) -> AttrWriter {
    let mut a = AttrWriter::new();
    a.str(NFTA_CHAIN_TABLE, TABLE).str(NFTA_CHAIN_NAME, chain);
    a
}

fn rule_attrs(chain: &str) -> AttrWriter {
    let mut a = AttrWriter::new();
    a.str(NFTA_RULE_TABLE, TABLE).str(NFTA_RULE_CHAIN, chain);
    a
}

/// Reads what `family`'s `filter` table holds of trestle's, with `chains` just dumped; `None` when the table has
/// no `FORWARD` base chain (iptables-nft was never used for `filter` in this namespace).
pub(crate) fn read(
    sock: &mut NfSocket,
    family: Family,
    chains: &Chains,
) -> Result<Option<View<u64>>, Error> {
    let Some(forward) = chains.find(family, FORWARD) else {
        return Ok(None);
    };
    let mut view = View {
        drops: forward.drops,
        chain: chains.find(family, CHAIN).is_some(),
        jumps: Vec::new(),
        rules: Vec::new(),
        foreign: 0,
        docker_user: None,
    };
    for (index, rule) in sock.dump(&get_rules(family, FORWARD))?.iter().enumerate() {
        let Some(handle) = handle(rule) else { continue };
        match jump_target(rule).as_deref() {
            Some(CHAIN) if is_our_jump(rule) => view.jumps.push(handle),
            Some(CHAIN) => view.foreign += 1,
            Some(DOCKER_USER) if view.docker_user.is_none() => {
                view.docker_user = Some(Anchor { index, handle })
            }
            _ => {}
        }
    }
    if view.chain {
        let dumped = sock.dump(&get_rules(family, CHAIN))?;
        view.rules = dumped
            .iter()
            .filter_map(|r| Some((parse_rule(r, family)?, handle(r)?)))
            .collect();
        view.foreign += dumped.len() - view.rules.len();
    }
    Ok(Some(view))
}

fn get_rules(family: Family, chain: &str) -> Msg {
    msg(family, NFT_MSG_GETRULE, 0, "list rules", rule_attrs(chain))
}

fn handle(rule: &[u8]) -> Option<u64> {
    let raw = Attrs::new(rule).get(NFTA_RULE_HANDLE)?;
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

/// A rule's comment: its userdata comment (what nft and newer iptables-nft write) or its x_tables `comment`
/// match (what iptables-nft 1.8.9 writes for `-m comment`).
fn comment(rule: &[u8]) -> Option<String> {
    let a = Attrs::new(rule);
    if let Some(c) = a.get(NFTA_RULE_USERDATA).and_then(parse_comment) {
        return Some(c);
    }
    exprs(rule)
        .filter(|(name, _)| *name == "match")
        .find_map(|(_, data)| match_comment(&Attrs::new(data)))
}

/// The expressions of a rule: name and data.
fn exprs(rule: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    let list = Attrs::new(rule)
        .get(NFTA_RULE_EXPRESSIONS)
        .unwrap_or_default();
    Attrs::new(list).filter_map(|(_, e)| {
        let e = Attrs::new(e);
        Some((
            e.get_str(NFTA_EXPR_NAME)?,
            e.get(NFTA_EXPR_DATA).unwrap_or_default(),
        ))
    })
}

/// The text of an x_tables `comment` match (`struct xt_comment_info`: a NUL-terminated `char[256]`).
fn match_comment(data: &Attrs) -> Option<String> {
    if data.get_str(NFTA_MATCH_NAME)? != "comment" {
        return None;
    }
    let info = data.get(NFTA_MATCH_INFO)?;
    let end = info.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&info[..end]).ok().map(str::to_owned)
}

/// Whether the x_tables match `data` is `-m conntrack --ctstate RELATED,ESTABLISHED` exactly.
fn is_established_match(data: &Attrs) -> bool {
    let Some(info) = data.get(NFTA_MATCH_INFO) else {
        return false;
    };
    let u16_at = |at: usize| {
        info.get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    data.get_str(NFTA_MATCH_NAME) == Some("conntrack")
        && data.get(NFTA_MATCH_REV).and_then(be32) == Some(3)
        && info.len() == CONNTRACK_INFO_LEN
        && u16_at(CONNTRACK_MATCH_FLAGS) == Some(XT_CONNTRACK_STATE)
        && u16_at(CONNTRACK_MATCH_FLAGS + 2) == Some(0)
        && u16_at(CONNTRACK_STATE_MASK) == Some(STATES_ESTABLISHED_RELATED)
}

/// The chain a rule jumps to, if its verdict is a jump.
fn jump_target(rule: &[u8]) -> Option<String> {
    let (_, data) = exprs(rule).filter(|(n, _)| *n == "immediate").last()?;
    let v = Attrs::new(Attrs::new(data).get(NFTA_IMMEDIATE_DATA)?);
    let v = Attrs::new(v.get(NFTA_DATA_VERDICT)?);
    (be32(v.get(NFTA_VERDICT_CODE)?)? == NFT_JUMP)
        .then(|| v.get_str(NFTA_VERDICT_CHAIN).map(str::to_owned))?
}

/// Whether a `FORWARD` rule jumping to [`CHAIN`] is the jump [`jump_rule`] writes (or iptables writes for the
/// same `-m comment --comment "trestle: pod networks" -j TRESTLE-FORWARD`): a comment, no match on packets.
fn is_our_jump(rule: &[u8]) -> bool {
    comment(rule).as_deref() == Some(JUMP_COMMENT)
        && exprs(rule).all(|(name, data)| match name {
            "counter" | "immediate" => true,
            "match" => match_comment(&Attrs::new(data)).is_some(),
            _ => false,
        })
}

/// The messages of one change (see [`super::rules::Op`]).
pub(crate) fn op_msg(family: Family, op: &super::rules::Op<u64>) -> Msg {
    use super::rules::Op;
    match op {
        Op::NewChain => msg(
            family,
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            "add chain",
            chain_attrs(CHAIN),
        ),
        Op::InsertJump(after) => jump_rule(family, *after),
        Op::Append(rule) => new_rule(family, rule),
        Op::Delete(h) => del_rule(family, CHAIN, *h),
        Op::DeleteJump(h) => del_rule(family, FORWARD, *h),
        Op::DeleteChain => msg(
            family,
            NFT_MSG_DELCHAIN,
            0,
            "delete chain",
            chain_attrs(CHAIN),
        ),
    }
}

fn del_rule(family: Family, chain: &str, handle: u64) -> Msg {
    let mut a = rule_attrs(chain);
    a.bytes(NFTA_RULE_HANDLE, &handle.to_be_bytes());
    msg(family, NFT_MSG_DELRULE, 0, "delete rule", a)
}

/// `-I FORWARD <n> -m comment --comment "trestle: pod networks" -j TRESTLE-FORWARD`: after the rule `after`
/// names (a position handle with `NLM_F_APPEND` adds after it), else first (a new rule without `NLM_F_APPEND` or a
/// position goes first).
fn jump_rule(family: Family, after: Option<Anchor>) -> Msg {
    let mut a = rule_attrs(FORWARD);
    if let Some(after) = after {
        a.bytes(NFTA_RULE_POSITION, &after.handle.to_be_bytes());
    }
    a.nested(NFTA_RULE_EXPRESSIONS, |e| {
        counter(e);
        verdict(e, NFT_JUMP, Some(CHAIN));
    });
    let udata = comment_udata(JUMP_COMMENT).expect("a short comment");
    a.bytes(NFTA_RULE_USERDATA, &udata);
    let flags = match after {
        Some(_) => NLM_F_CREATE | NLM_F_APPEND,
        None => NLM_F_CREATE,
    };
    msg(family, NFT_MSG_NEWRULE, flags, "insert rule", a)
}

/// `-A TRESTLE-FORWARD -s <subnet> ... -j ACCEPT` or `-d <subnet> -m conntrack --ctstate RELATED,ESTABLISHED`.
fn new_rule(family: Family, rule: &Rule) -> Msg {
    let (saddr, daddr) = family.addr_offsets();
    let mut a = rule_attrs(CHAIN);
    a.nested(NFTA_RULE_EXPRESSIONS, |e| {
        let offset = match rule.kind {
            Kind::From => saddr,
            Kind::RepliesTo => daddr,
        };
        payload(e, offset, family.addr_len());
        in_net(e, rule.subnet, CMP_EQ);
        if rule.kind == Kind::RepliesTo {
            conntrack_established(e);
        }
        counter(e);
        verdict(e, NF_ACCEPT, None);
    });
    let udata = comment_udata(&rule.comment).expect("rule_comment fits");
    a.bytes(NFTA_RULE_USERDATA, &udata);
    msg(
        family,
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        "add rule",
        a,
    )
}

fn counter(e: &mut AttrWriter) {
    expr(e, "counter", |_| {});
}

fn verdict(e: &mut AttrWriter, code: u32, chain: Option<&str>) {
    expr(e, "immediate", |d| {
        d.u32_be(NFTA_IMMEDIATE_DREG, REG_VERDICT)
            .nested(NFTA_IMMEDIATE_DATA, |v| {
                v.nested(NFTA_DATA_VERDICT, |v| {
                    v.u32_be(NFTA_VERDICT_CODE, code);
                    if let Some(chain) = chain {
                        v.str(NFTA_VERDICT_CHAIN, chain);
                    }
                });
            });
    });
}

/// `-m conntrack --ctstate RELATED,ESTABLISHED`, as iptables-nft writes it.
fn conntrack_established(e: &mut AttrWriter) {
    let mut info = [0u8; CONNTRACK_INFO_LEN];
    info[CONNTRACK_MATCH_FLAGS..CONNTRACK_MATCH_FLAGS + 2]
        .copy_from_slice(&XT_CONNTRACK_STATE.to_ne_bytes());
    info[CONNTRACK_STATE_MASK..CONNTRACK_STATE_MASK + 2]
        .copy_from_slice(&STATES_ESTABLISHED_RELATED.to_ne_bytes());
    expr(e, "match", |d| {
        d.str(NFTA_MATCH_NAME, "conntrack")
            .u32_be(NFTA_MATCH_REV, 3)
            .bytes(NFTA_MATCH_INFO, &info);
    });
}

/// The trestle rule a dumped rule of [`CHAIN`] is, if it is one: a comment, one address match (with or without a
/// `bitwise` mask: iptables-nft writes a byte-aligned prefix as a shorter `payload`, so a table it has restored
/// reads back too), the conntrack match exactly for a destination, and an accept.
pub(crate) fn parse_rule(rule: &[u8], family: Family) -> Option<Rule> {
    let comment = comment(rule)?;
    let exprs = Attrs::new(rule).get(NFTA_RULE_EXPRESSIONS)?;
    let (saddr, daddr) = family.addr_offsets();
    let mut loaded = None;
    let mut mask = None;
    let mut value = None;
    let mut conntrack = false;
    let mut accept = false;
    for (_, e) in Attrs::new(exprs) {
        let e = Attrs::new(e);
        let data = Attrs::new(e.get(NFTA_EXPR_DATA).unwrap_or_default());
        match e.get_str(NFTA_EXPR_NAME)? {
            "payload" => {
                loaded = Some((
                    be32(data.get(NFTA_PAYLOAD_OFFSET)?)?,
                    be32(data.get(NFTA_PAYLOAD_LEN)?)?,
                ));
            }
            "bitwise" => {
                mask = Some(
                    Attrs::new(data.get(NFTA_BITWISE_MASK)?)
                        .get(NFTA_DATA_VALUE)?
                        .to_vec(),
                )
            }
            "cmp" => {
                if be32(data.get(NFTA_CMP_OP)?)? != CMP_EQ || value.is_some() {
                    return None;
                }
                value = Some(
                    Attrs::new(data.get(NFTA_CMP_DATA)?)
                        .get(NFTA_DATA_VALUE)?
                        .to_vec(),
                );
            }
            "match" if is_established_match(&data) => conntrack = true,
            "match" if match_comment(&data).is_some() => {}
            "immediate" => {
                let v = Attrs::new(data.get(NFTA_IMMEDIATE_DATA)?);
                let v = Attrs::new(v.get(NFTA_DATA_VERDICT)?);
                accept = be32(v.get(NFTA_VERDICT_CODE)?)? == NF_ACCEPT;
            }
            "counter" => {}
            _ => return None,
        }
    }
    let (offset, len) = loaded?;
    let kind = match (offset, conntrack) {
        (o, false) if o == saddr => Kind::From,
        (o, true) if o == daddr => Kind::RepliesTo,
        _ => return None,
    };
    let subnet = subnet(family, len, &value?, mask.as_deref())?;
    accept.then_some(Rule {
        kind,
        subnet,
        comment,
    })
}

/// The subnet of an address match: `len` loaded bytes compared with `value`, after a contiguous `mask` if any.
fn subnet(family: Family, len: u32, value: &[u8], mask: Option<&[u8]>) -> Option<IpNet> {
    let (full, len) = (family.addr_len() as usize, len as usize);
    if len == 0 || len > full || value.len() != len || mask.is_some_and(|m| m.len() != len) {
        return None;
    }
    // Both widened to the whole address: a shorter load compares only its bytes, so the rest of the mask is 0.
    let mut addr = value.to_vec();
    addr.resize(full, 0);
    let mut netmask = mask.map_or_else(|| vec![0xff; len], <[u8]>::to_vec);
    netmask.resize(full, 0);
    masked_net(&addr, &netmask).filter(|net| net.trunc() == *net)
}

#[cfg(test)]
mod tests {
    use super::super::rules::wanted;
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_back_from_their_requests() {
        for (family, s) in [(Family::V4, "10.15.20.0/24"), (Family::V6, "fd00:1::/64")] {
            for rule in wanted("my net", &[net(s)]) {
                let m = new_rule(family, &rule);
                assert_eq!(parse_rule(&m.attrs, family), Some(rule.clone()), "{rule:?}");
                let other = if family == Family::V4 {
                    Family::V6
                } else {
                    Family::V4
                };
                assert_eq!(parse_rule(&m.attrs, other), None);
            }
        }
        let jump = jump_rule(Family::V4, None);
        assert!(is_our_jump(&jump.attrs));
        assert_eq!(jump_target(&jump.attrs).as_deref(), Some(CHAIN));
        assert_eq!(comment(&jump.attrs).as_deref(), Some(JUMP_COMMENT));
        assert_eq!(parse_rule(&jump.attrs, Family::V4), None);
    }

    #[test]
    fn byte_aligned_prefixes_without_a_mask_read_back() {
        assert_eq!(
            subnet(Family::V4, 3, &[10, 1, 2], None),
            Some(net("10.1.2.0/24"))
        );
        assert_eq!(
            subnet(Family::V4, 4, &[10, 1, 2, 0], Some(&[255, 255, 254, 0])),
            Some(net("10.1.2.0/23"))
        );
        assert_eq!(
            subnet(Family::V4, 4, &[10, 1, 2, 0], Some(&[255, 0, 255, 0])),
            None
        );
        assert_eq!(
            subnet(Family::V4, 4, &[10, 1, 2, 1], Some(&[255, 255, 255, 0])),
            None
        );
        assert_eq!(
            subnet(Family::V6, 8, &[0xfd, 0, 0, 1, 0, 0, 0, 0], None),
            Some(net("fd00:1::/64"))
        );
    }

    #[test]
    fn the_conntrack_info_has_the_kernel_layout() {
        let mut e = AttrWriter::new();
        conntrack_established(&mut e);
        let bytes = e.into_bytes();
        let x = Attrs::new(&bytes).next().unwrap().1;
        let data = Attrs::new(Attrs::new(x).get(NFTA_EXPR_DATA).unwrap());
        let info = data.get(NFTA_MATCH_INFO).unwrap();
        assert_eq!(info.len(), 168);
        assert_eq!(info.iter().filter(|b| **b != 0).count(), 2);
        assert_eq!(info[146], 1);
        assert_eq!(info[150], 6);
    }
}
