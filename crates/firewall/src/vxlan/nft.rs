//! The nf_tables messages of the VXLAN guard (`linux/netfilter/nf_tables.h`, numbers checked against the 6.1
//! UAPI headers): sets and their elements, the three base chains, and the rules as a list of [`Ex`] that is both
//! encoded into requests and parsed back from dumps, so that "is the installed rule the one we write" is an
//! equality of two lists.

use super::{Chain, Set, SETS, TABLE};
use crate::attr::{AttrWriter, Attrs};
use crate::names::Family;
use crate::nf::*;
use crate::nft::{cmp, comment_udata, data_value, expr};
use crate::sock::Msg;
use std::net::{Ipv4Addr, Ipv6Addr};

const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

/// `NFT_REG_VERDICT`.
const REG_VERDICT: u32 = 0;
/// `NFT_META_L4PROTO`.
pub(super) const META_L4PROTO: u32 = 16;
/// `NFT_PAYLOAD_TRANSPORT_HEADER`.
pub(super) const BASE_TRANSPORT: u32 = 2;
/// `IPPROTO_UDP`.
const IPPROTO_UDP: u8 = 17;
/// Offset and length of the destination port in the UDP header.
const UDP_DPORT: (u32, u32) = (2, 2);
/// `NFT_LOOKUP_F_INV`: the lookup matches when the key is *not* in the set.
const LOOKUP_F_INV: u32 = 1;
/// `NF_DROP`, `NF_ACCEPT`.
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// nft's datatype numbers for set keys (`TYPE_IPADDR`, `TYPE_IP6ADDR` in nftables' `datatype.h`): the kernel
/// stores them for `nft list` only.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
/// Set userdata as nft writes it: `NFTNL_UDATA_SET_KEYBYTEORDER` (0), 4 bytes, `BYTEORDER_BIG_ENDIAN` (2) as a
/// host-order u32.
const SET_UDATA_TYPE: u8 = 0;
const BYTEORDER_BIG_ENDIAN: u32 = 2;

/// One expression of a guard rule, as written and as read back (registers fixed: data in register 1, verdicts
/// in the verdict register; counter values are read separately, see [`ParsedRule::counter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ex {
    /// `meta load <key> => reg 1`.
    Meta(u32),
    /// `cmp <op> reg 1 <value>`.
    Cmp(u32, Vec<u8>),
    /// `payload load <len>b @ <base> header + <offset> => reg 1`.
    Payload { base: u32, offset: u32, len: u32 },
    /// `lookup reg 1 set <set>`, negated (`!= @set`) when `inverted`.
    Lookup { set: String, inverted: bool },
    /// `notrack`: the packet gets the untracked conntrack template, so conntrack leaves it alone.
    Notrack,
    /// `counter`.
    Counter,
    /// `immediate reg 0 drop`.
    Drop,
}

/// What a guard rule does after its match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// `notrack`.
    Notrack,
    /// `counter drop`.
    CountDrop,
}

/// One rule of a [`Chain`]: `udp dport <port> ip[6] saddr|daddr [!=] @<set> <action>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RuleSpec {
    pub(super) family: Family,
    /// Source (`saddr`) or destination (`daddr`) address.
    pub(super) source: bool,
    pub(super) inverted: bool,
    pub(super) action: Action,
}

/// The expressions of `rule` for VXLAN on `port`: `meta nfproto` before the network header is read (an inet
/// chain sees both families), `meta l4proto udp` before the transport header is, then the port, the address
/// lookup and the action. This is also the order `nft` writes for the same rule text.
pub(super) fn rule_exprs(rule: &RuleSpec, port: u16) -> Vec<Ex> {
    let (saddr, daddr) = rule.family.addr_offsets();
    let mut out = vec![
        Ex::Meta(META_NFPROTO),
        Ex::Cmp(CMP_EQ, vec![rule.family.nfproto()]),
        Ex::Meta(META_L4PROTO),
        Ex::Cmp(CMP_EQ, vec![IPPROTO_UDP]),
        Ex::Payload {
            base: BASE_TRANSPORT,
            offset: UDP_DPORT.0,
            len: UDP_DPORT.1,
        },
        Ex::Cmp(CMP_EQ, port.to_be_bytes().to_vec()),
        Ex::Payload {
            base: BASE_NETWORK,
            offset: if rule.source { saddr } else { daddr },
            len: rule.family.addr_len(),
        },
        Ex::Lookup {
            set: set_of(rule.family).name.to_owned(),
            inverted: rule.inverted,
        },
    ];
    match rule.action {
        Action::Notrack => out.push(Ex::Notrack),
        Action::CountDrop => out.extend([Ex::Counter, Ex::Drop]),
    }
    out
}

/// The set holding the peers of `family`.
pub(super) fn set_of(family: Family) -> &'static Set {
    SETS.iter()
        .find(|s| s.family == family)
        .expect("a set per family")
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

/// `add table inet trestle-vxlan { comment "<comment>" }`, exclusive: a table created meanwhile by another
/// writer fails the batch, which is then planned again.
pub(super) fn new_table(comment: &str) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_TABLE_NAME, TABLE);
    if let Some(udata) = comment_udata(comment) {
        a.bytes(NFTA_TABLE_USERDATA, &udata);
    }
    msg(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, "add table", a)
}

/// `add set inet trestle-vxlan <set> { type ipv4_addr|ipv6_addr; }` with its transaction id `NFTA_SET_ID`, by
/// which the lookups and elements of the same batch may name it too.
pub(super) fn new_set(set: &Set) -> Msg {
    let key_type = match set.family {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    };
    let mut udata = vec![SET_UDATA_TYPE, 4];
    udata.extend_from_slice(&BYTEORDER_BIG_ENDIAN.to_ne_bytes());
    let mut a = AttrWriter::new();
    a.str(NFTA_SET_TABLE, TABLE)
        .str(NFTA_SET_NAME, set.name)
        .u32_be(NFTA_SET_FLAGS, 0)
        .u32_be(NFTA_SET_KEY_TYPE, key_type)
        .u32_be(NFTA_SET_KEY_LEN, set.family.addr_len())
        .u32_be(NFTA_SET_ID, set.id)
        .bytes(NFTA_SET_USERDATA, &udata);
    msg(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL, "add set", a)
}

/// `add chain inet trestle-vxlan <chain> { type filter hook <hook> priority <priority>; policy accept; }`.
pub(super) fn new_chain(chain: &Chain) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_CHAIN_TABLE, TABLE)
        .str(NFTA_CHAIN_NAME, chain.name)
        .nested(NFTA_CHAIN_HOOK, |h| {
            h.u32_be(NFTA_HOOK_HOOKNUM, chain.hook)
                .u32_be(NFTA_HOOK_PRIORITY, chain.priority as u32);
        })
        .u32_be(NFTA_CHAIN_POLICY, NF_ACCEPT)
        .str(NFTA_CHAIN_TYPE, "filter");
    msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, "add chain", a)
}

/// `add rule inet trestle-vxlan <chain> <rule>`; with `sets_in_batch` the lookup also names its set by
/// transaction id (the set is created by the same batch).
pub(super) fn new_rule(chain: &Chain, rule: &RuleSpec, port: u16, sets_in_batch: bool) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_RULE_TABLE, TABLE)
        .str(NFTA_RULE_CHAIN, chain.name)
        .nested(NFTA_RULE_EXPRESSIONS, |e| {
            for x in rule_exprs(rule, port) {
                encode(e, &x, sets_in_batch);
            }
        });
    msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, "add rule", a)
}

fn encode(e: &mut AttrWriter, x: &Ex, sets_in_batch: bool) {
    match x {
        Ex::Meta(key) => expr(e, "meta", |d| {
            d.u32_be(NFTA_META_DREG, REG_1).u32_be(NFTA_META_KEY, *key);
        }),
        Ex::Cmp(op, value) => cmp(e, *op, value),
        Ex::Payload { base, offset, len } => expr(e, "payload", |d| {
            d.u32_be(NFTA_PAYLOAD_DREG, REG_1)
                .u32_be(NFTA_PAYLOAD_BASE, *base)
                .u32_be(NFTA_PAYLOAD_OFFSET, *offset)
                .u32_be(NFTA_PAYLOAD_LEN, *len);
        }),
        Ex::Lookup { set, inverted } => expr(e, "lookup", |d| {
            d.str(NFTA_LOOKUP_SET, set).u32_be(NFTA_LOOKUP_SREG, REG_1);
            if sets_in_batch {
                let id = SETS.iter().find(|s| s.name == set).map(|s| s.id);
                d.u32_be(NFTA_LOOKUP_SET_ID, id.expect("a guard set"));
            }
            d.u32_be(NFTA_LOOKUP_FLAGS, if *inverted { LOOKUP_F_INV } else { 0 });
        }),
        Ex::Notrack => expr(e, "notrack", |_| {}),
        Ex::Counter => expr(e, "counter", |_| {}),
        Ex::Drop => expr(e, "immediate", |d| {
            d.u32_be(NFTA_IMMEDIATE_DREG, REG_VERDICT)
                .nested(NFTA_IMMEDIATE_DATA, |v| {
                    v.nested(NFTA_DATA_VERDICT, |v| {
                        v.u32_be(NFTA_VERDICT_CODE, NF_DROP);
                    });
                });
        }),
    }
}

fn elem_list(set: &Set, sets_in_batch: bool) -> AttrWriter {
    let mut a = AttrWriter::new();
    a.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, set.name);
    if sets_in_batch {
        a.u32_be(NFTA_SET_ELEM_LIST_SET_ID, set.id);
    }
    a
}

/// `flush set inet trestle-vxlan <set>`: `NFT_MSG_DELSETELEM` without an element list deletes every element.
pub(super) fn flush_set(set: &Set) -> Msg {
    msg(NFT_MSG_DELSETELEM, 0, "flush set", elem_list(set, false))
}

/// Keys per `NFT_MSG_NEWSETELEM`: a message's element list is one netlink attribute, at most 64 KiB; an IPv6
/// element takes 28 bytes of it, so 1,024 stay well inside, and a large cluster's peers go in several messages of
/// the same batch (one transaction all the same).
const KEYS_PER_MESSAGE: usize = 1024;

/// `add element inet trestle-vxlan <set> { <keys> }`, in as many messages as the keys need; none for no keys (an
/// empty list would change nothing).
pub(super) fn new_elems(set: &Set, keys: &[Vec<u8>], sets_in_batch: bool) -> Vec<Msg> {
    keys.chunks(KEYS_PER_MESSAGE)
        .map(|chunk| {
            let mut a = elem_list(set, sets_in_batch);
            a.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                for key in chunk {
                    l.nested(NFTA_LIST_ELEM, |el| {
                        data_value(el, NFTA_SET_ELEM_KEY, key);
                    });
                }
            });
            msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add element", a)
        })
        .collect()
}

/// Dump request for the sets of the guard table.
pub(super) fn get_sets() -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_SET_TABLE, TABLE);
    msg(NFT_MSG_GETSET, 0, "list sets", a)
}

/// Dump request for the elements of one set.
pub(super) fn get_elems(set: &Set) -> Msg {
    msg(NFT_MSG_GETSETELEM, 0, "list set", elem_list(set, false))
}

/// Dump request for the rules of the guard table (every chain), or of one chain.
pub(super) fn get_rules(chain: Option<&str>) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_RULE_TABLE, TABLE);
    if let Some(chain) = chain {
        a.str(NFTA_RULE_CHAIN, chain);
    }
    msg(NFT_MSG_GETRULE, 0, "list rules", a)
}

fn be32(raw: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(raw.try_into().ok()?))
}

fn be64(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

/// A set of a set dump: name, key type, key length, flags, and whether it is a map (has a data type).
pub(super) fn parse_set(attrs: &[u8]) -> Option<(String, u32, u32, u32, bool)> {
    let a = Attrs::new(attrs);
    if a.get_str(NFTA_SET_TABLE)? != TABLE {
        return None;
    }
    Some((
        a.get_str(NFTA_SET_NAME)?.to_owned(),
        a.get(NFTA_SET_KEY_TYPE).and_then(be32).unwrap_or_default(),
        be32(a.get(NFTA_SET_KEY_LEN)?)?,
        a.get(NFTA_SET_FLAGS).and_then(be32).unwrap_or_default(),
        a.get(NFTA_SET_DATA_TYPE).is_some(),
    ))
}

/// Whether a dumped set is `set` as [`new_set`] creates it.
pub(super) fn set_matches(set: &Set, dumped: &(String, u32, u32, u32, bool)) -> bool {
    let key_type = match set.family {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    };
    *dumped
        == (
            set.name.to_owned(),
            key_type,
            set.family.addr_len(),
            0,
            false,
        )
}

/// The keys of one message of an element dump.
pub(super) fn parse_elems(attrs: &[u8]) -> Vec<Vec<u8>> {
    let list = Attrs::new(attrs)
        .get(NFTA_SET_ELEM_LIST_ELEMENTS)
        .unwrap_or_default();
    Attrs::new(list)
        .filter_map(|(_, el)| {
            let key = Attrs::new(el).get(NFTA_SET_ELEM_KEY)?;
            Attrs::new(key).get(NFTA_DATA_VALUE).map(<[u8]>::to_vec)
        })
        .collect()
}

/// The IPv4 and IPv6 addresses among `keys`, by length.
pub(super) fn addrs(keys: &[Vec<u8>]) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for key in keys {
        if let Ok(a) = <[u8; 4]>::try_from(key.as_slice()) {
            v4.push(Ipv4Addr::from(a));
        } else if let Ok(a) = <[u8; 16]>::try_from(key.as_slice()) {
            v6.push(Ipv6Addr::from(a));
        }
    }
    (v4, v6)
}

/// A chain of a chain dump, if it is in the guard table: name, type, hook number, priority and policy (`None`
/// for a regular chain).
pub(super) type DumpedChain = (String, Option<(String, u32, i32, u32)>);

pub(super) fn parse_chain(attrs: &[u8]) -> Option<DumpedChain> {
    let a = Attrs::new(attrs);
    if a.get_str(NFTA_CHAIN_TABLE)? != TABLE {
        return None;
    }
    let name = a.get_str(NFTA_CHAIN_NAME)?.to_owned();
    let base = a.get(NFTA_CHAIN_HOOK).and_then(|h| {
        let h = Attrs::new(h);
        Some((
            a.get_str(NFTA_CHAIN_TYPE)?.to_owned(),
            be32(h.get(NFTA_HOOK_HOOKNUM)?)?,
            be32(h.get(NFTA_HOOK_PRIORITY)?)? as i32,
            be32(a.get(NFTA_CHAIN_POLICY)?)?,
        ))
    });
    Some((name, base))
}

/// Whether a dumped chain is `chain` as [`new_chain`] creates it.
pub(super) fn chain_matches(chain: &Chain, dumped: &DumpedChain) -> bool {
    *dumped
        == (
            chain.name.to_owned(),
            Some(("filter".to_owned(), chain.hook, chain.priority, NF_ACCEPT)),
        )
}

/// A rule of a rule dump: its chain, its expressions (`None` when one is not of the kinds the guard writes, or
/// differs from them in a register or an attribute) and its counter's packets and bytes, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParsedRule {
    pub(super) chain: String,
    pub(super) exprs: Option<Vec<Ex>>,
    pub(super) counter: Option<(u64, u64)>,
}

pub(super) fn parse_rule(attrs: &[u8]) -> Option<ParsedRule> {
    let a = Attrs::new(attrs);
    if a.get_str(NFTA_RULE_TABLE)? != TABLE {
        return None;
    }
    let mut counter = None;
    let exprs = a.get(NFTA_RULE_EXPRESSIONS).and_then(|list| {
        Attrs::new(list)
            .map(|(_, e)| {
                let x = parse_expr(e)?;
                if x == Ex::Counter {
                    // A dump has the values, a request none.
                    let d = Attrs::new(Attrs::new(e).get(NFTA_EXPR_DATA).unwrap_or_default());
                    let value = |ty| d.get(ty).and_then(be64);
                    counter = value(NFTA_COUNTER_PACKETS).zip(value(NFTA_COUNTER_BYTES));
                }
                Some(x)
            })
            .collect::<Option<Vec<Ex>>>()
    });
    Some(ParsedRule {
        chain: a.get_str(NFTA_RULE_CHAIN)?.to_owned(),
        exprs,
        counter,
    })
}

/// One expression, strictly: every attribute must be one [`encode`] writes (or the kernel adds to a dump, such
/// as a counter's values), registers as the guard uses them.
fn parse_expr(e: &[u8]) -> Option<Ex> {
    let e = Attrs::new(e);
    let d = Attrs::new(e.get(NFTA_EXPR_DATA).unwrap_or_default());
    let only = |known: &[u16]| d.clone().all(|(t, _)| known.contains(&t));
    let u32_of = |ty| d.get(ty).and_then(be32);
    let x = match e.get_str(NFTA_EXPR_NAME)? {
        "meta" if only(&[NFTA_META_DREG, NFTA_META_KEY]) && u32_of(NFTA_META_DREG)? == REG_1 => {
            Ex::Meta(u32_of(NFTA_META_KEY)?)
        }
        "cmp"
            if only(&[NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA])
                && u32_of(NFTA_CMP_SREG)? == REG_1 =>
        {
            let data = Attrs::new(d.get(NFTA_CMP_DATA)?);
            Ex::Cmp(u32_of(NFTA_CMP_OP)?, data.get(NFTA_DATA_VALUE)?.to_vec())
        }
        "payload"
            if only(&[
                NFTA_PAYLOAD_DREG,
                NFTA_PAYLOAD_BASE,
                NFTA_PAYLOAD_OFFSET,
                NFTA_PAYLOAD_LEN,
            ]) && u32_of(NFTA_PAYLOAD_DREG)? == REG_1 =>
        {
            Ex::Payload {
                base: u32_of(NFTA_PAYLOAD_BASE)?,
                offset: u32_of(NFTA_PAYLOAD_OFFSET)?,
                len: u32_of(NFTA_PAYLOAD_LEN)?,
            }
        }
        "lookup"
            if only(&[
                NFTA_LOOKUP_SET,
                NFTA_LOOKUP_SREG,
                NFTA_LOOKUP_SET_ID,
                NFTA_LOOKUP_FLAGS,
            ]) && u32_of(NFTA_LOOKUP_SREG)? == REG_1 =>
        {
            let flags = u32_of(NFTA_LOOKUP_FLAGS).unwrap_or(0);
            if flags & !LOOKUP_F_INV != 0 {
                return None;
            }
            Ex::Lookup {
                set: d.get_str(NFTA_LOOKUP_SET)?.to_owned(),
                inverted: flags & LOOKUP_F_INV != 0,
            }
        }
        "notrack" if only(&[]) => Ex::Notrack,
        // NFTA_COUNTER_PAD (3) pads the 64-bit values of a dump.
        "counter" if only(&[NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS, 3]) => Ex::Counter,
        "immediate"
            if only(&[NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA])
                && u32_of(NFTA_IMMEDIATE_DREG)? == REG_VERDICT =>
        {
            let v = Attrs::new(Attrs::new(d.get(NFTA_IMMEDIATE_DATA)?).get(NFTA_DATA_VERDICT)?);
            if v.get(NFTA_VERDICT_CHAIN).is_some() || be32(v.get(NFTA_VERDICT_CODE)?)? != NF_DROP {
                return None;
            }
            Ex::Drop
        }
        _ => return None,
    };
    Some(x)
}
