//! An independent decoder of the fixtures' netlink messages into nft syntax, for the golden tests.
//!
//! It shares no code or constant with the encoder (`nft.rs`, `sock.rs`, `attr.rs`): every number below was
//! written down from the kernel UAPI (`linux/netlink.h`, `linux/netfilter.h`, `linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nf_tables.h`, `linux/netfilter_ipv4.h`), so an encoder constant typed wrong shows as a
//! fixture that does not decode to the documented rule. It is strict: an attribute, flag or expression it does not
//! know fails the test instead of being skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`, on GET requests.
const NLM_F_DUMP: u16 = 0x300;
/// On NEW requests (the same bit as `NLM_F_MATCH`).
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10; // NLMSG_MIN_TYPE
const NFNL_MSG_BATCH_END: u16 = 0x11;

// enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;

mod sets;
mod tlv;

use tlv::{list, Tlvs};

/// One decoded message: its name as the UAPI spells it, and what it asks for, in nft syntax.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Decoded {
    /// `seq <n> <TYPE> <FLAGS>`, e.g. `seq 1001 NFT_MSG_NEWTABLE REQUEST|ACK|CREATE`.
    pub(super) header: String,
    /// The request in nft syntax, e.g. `add table inet t { comment "n" }`.
    pub(super) nft: String,
    /// The set transaction ids (`NFTA_*_SET_ID`) the message carries, with the set names next to them: what a
    /// set is created as, or what a lookup or element list refers to. nft syntax has no place for them.
    pub(super) set_ids: Vec<(String, u32)>,
}

/// Splits a datagram into its netlink messages by their length fields (checking lengths and padding).
pub(super) fn split_messages(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= NLMSG_HDRLEN, "truncated netlink header");
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert!(
            len >= NLMSG_HDRLEN && len <= bytes.len(),
            "bad nlmsg_len {len}"
        );
        assert_eq!(len % 4, 0, "nf_tables messages are padded to 4 bytes");
        out.push(&bytes[..len]);
        bytes = &bytes[len..];
    }
    out
}

/// Decodes one netlink message of an nf_tables request or batch.
pub(super) fn decode(msg: &[u8]) -> Decoded {
    let u16_at = |i: usize| u16::from_le_bytes([msg[i], msg[i + 1]]);
    let (kind, flags) = (u16_at(4), u16_at(6));
    let seq = u32::from_le_bytes(msg[8..12].try_into().unwrap());
    assert_eq!(&msg[12..16], [0; 4], "nlmsg_pid: the kernel fills it in");
    // struct nfgenmsg: family, version NFNETLINK_V0, res_id (big endian).
    let (family, version) = (msg[16], msg[17]);
    let res_id = u16::from_be_bytes([msg[18], msg[19]]);
    assert_eq!(version, 0, "NFNETLINK_V0");
    let attrs = &msg[20..];
    let (name, nft, set_ids) = match kind {
        NFNL_MSG_BATCH_BEGIN | NFNL_MSG_BATCH_END => {
            let (name, nft) = batch_marker(kind, family, res_id, attrs);
            (name, nft, Vec::new())
        }
        _ => {
            assert_eq!(kind >> 8, NFNL_SUBSYS_NFTABLES, "not an nf_tables message");
            assert_eq!(res_id, 0);
            nft_message(kind & 0xff, family, attrs)
        }
    };
    let is_get = matches!(
        kind & 0xff,
        NFT_MSG_GETTABLE
            | NFT_MSG_GETCHAIN
            | NFT_MSG_GETRULE
            | NFT_MSG_GETSET
            | NFT_MSG_GETSETELEM
            | NFT_MSG_GETGEN
    ) && kind >> 8 == NFNL_SUBSYS_NFTABLES;
    let mut header = format!("seq {seq} {name} {}", flag_names(flags, is_get));
    for (set, id) in &set_ids {
        header += &format!(" (set {set} id {id})");
    }
    Decoded {
        header,
        nft,
        set_ids,
    }
}

fn batch_marker(kind: u16, family: u8, res_id: u16, attrs: &[u8]) -> (&'static str, String) {
    assert_eq!(family, 0, "AF_UNSPEC");
    assert_eq!(res_id, NFNL_SUBSYS_NFTABLES, "the batch is for nf_tables");
    assert!(attrs.is_empty());
    if kind == NFNL_MSG_BATCH_BEGIN {
        ("NFNL_MSG_BATCH_BEGIN", "begin nf_tables transaction".into())
    } else {
        ("NFNL_MSG_BATCH_END", "commit".into())
    }
}

/// Names the `NLM_F_*` bits; GET requests read 0x300 as `DUMP`, NEW requests read 0x200 as `EXCL`.
fn flag_names(flags: u16, is_get: bool) -> String {
    let mut table = vec![(NLM_F_REQUEST, "REQUEST"), (NLM_F_ACK, "ACK")];
    if is_get {
        table.push((NLM_F_DUMP, "DUMP"));
    } else {
        table.extend([
            (NLM_F_EXCL, "EXCL"),
            (NLM_F_CREATE, "CREATE"),
            (NLM_F_APPEND, "APPEND"),
        ]);
    }
    let mut left = flags;
    let mut names = Vec::new();
    for (bit, name) in table {
        if left & bit == bit {
            left &= !bit;
            names.push(name);
        }
    }
    assert_eq!(left, 0, "unknown flags {flags:#x}");
    names.join("|")
}

fn family_name(family: u8) -> &'static str {
    match family {
        1 => "inet", // NFPROTO_INET
        0 => "unspec",
        f => panic!("unexpected family {f}"),
    }
}

fn nft_message(ty: u16, family: u8, attrs: &[u8]) -> (&'static str, String, Vec<(String, u32)>) {
    let fam = family_name(family);
    let mut set_ids = Vec::new();
    let nft = match ty {
        NFT_MSG_NEWTABLE => new_table(fam, attrs),
        NFT_MSG_GETTABLE if attrs.is_empty() => format!("list tables {fam}"),
        NFT_MSG_GETTABLE => format!("get table {fam} {}", table(attrs)),
        NFT_MSG_DELTABLE => format!("delete table {fam} {}", table(attrs)),
        NFT_MSG_NEWCHAIN => new_chain(fam, attrs),
        NFT_MSG_GETCHAIN if attrs.is_empty() => format!("list chains {fam}"),
        NFT_MSG_GETCHAIN => format!("get chain {fam} {}", chain(attrs)),
        NFT_MSG_NEWRULE => new_rule(fam, attrs, &mut set_ids),
        NFT_MSG_GETRULE => rule_place(attrs)
            .map(|chain| format!("list chain {fam} {chain}"))
            .unwrap_or_else(|table| format!("list rules of table {fam} {table}")),
        NFT_MSG_NEWSET => sets::new_set(fam, attrs, &mut set_ids),
        NFT_MSG_GETSET => format!("list sets of table {fam} {}", sets::get_sets(attrs)),
        NFT_MSG_NEWSETELEM => sets::new_elements(fam, attrs, &mut set_ids),
        NFT_MSG_GETSETELEM => format!("list set {fam} {}", sets::set_place(attrs, &mut set_ids)),
        NFT_MSG_DELSETELEM => sets::flush(fam, attrs),
        NFT_MSG_GETGEN if attrs.is_empty() => "get generation".into(),
        t => panic!("unexpected NFT_MSG type {t}"),
    };
    (msg_name(ty), nft, set_ids)
}

fn msg_name(ty: u16) -> &'static str {
    match ty {
        NFT_MSG_NEWTABLE => "NFT_MSG_NEWTABLE",
        NFT_MSG_GETTABLE => "NFT_MSG_GETTABLE",
        NFT_MSG_DELTABLE => "NFT_MSG_DELTABLE",
        NFT_MSG_NEWCHAIN => "NFT_MSG_NEWCHAIN",
        NFT_MSG_GETCHAIN => "NFT_MSG_GETCHAIN",
        NFT_MSG_NEWRULE => "NFT_MSG_NEWRULE",
        NFT_MSG_GETRULE => "NFT_MSG_GETRULE",
        NFT_MSG_NEWSET => "NFT_MSG_NEWSET",
        NFT_MSG_GETSET => "NFT_MSG_GETSET",
        NFT_MSG_NEWSETELEM => "NFT_MSG_NEWSETELEM",
        NFT_MSG_GETSETELEM => "NFT_MSG_GETSETELEM",
        NFT_MSG_DELSETELEM => "NFT_MSG_DELSETELEM",
        NFT_MSG_GETGEN => "NFT_MSG_GETGEN",
        t => panic!("unexpected NFT_MSG type {t}"),
    }
}

// enum nft_table_attributes
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;

fn table(attrs: &[u8]) -> String {
    Tlvs::parse(attrs, &[NFTA_TABLE_NAME]).str(NFTA_TABLE_NAME)
}

fn new_table(fam: &str, attrs: &[u8]) -> String {
    let a = Tlvs::parse(attrs, &[NFTA_TABLE_NAME, NFTA_TABLE_USERDATA]);
    let mut out = format!("add table {fam} {}", a.str(NFTA_TABLE_NAME));
    if a.has(NFTA_TABLE_USERDATA) {
        let comment = comment(a.value(NFTA_TABLE_USERDATA));
        out += &format!(" {{ comment \"{comment}\" }}");
    }
    out
}

// enum nft_chain_attributes, nft_hook_attributes
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

fn chain(attrs: &[u8]) -> String {
    let a = Tlvs::parse(attrs, &[NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME]);
    format!("{} {}", a.str(NFTA_CHAIN_TABLE), a.str(NFTA_CHAIN_NAME))
}

fn new_chain(fam: &str, attrs: &[u8]) -> String {
    let a = Tlvs::parse(
        attrs,
        &[
            NFTA_CHAIN_TABLE,
            NFTA_CHAIN_NAME,
            NFTA_CHAIN_HOOK,
            NFTA_CHAIN_POLICY,
            NFTA_CHAIN_TYPE,
        ],
    );
    let hook = Tlvs::parse(
        a.nested(NFTA_CHAIN_HOOK),
        &[NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY],
    );
    let hooknum = match hook.u32(NFTA_HOOK_HOOKNUM) {
        0 => "prerouting",  // NF_INET_PRE_ROUTING
        1 => "input",       // NF_INET_LOCAL_IN
        3 => "output",      // NF_INET_LOCAL_OUT
        4 => "postrouting", // NF_INET_POST_ROUTING
        h => panic!("unexpected hook {h}"),
    };
    let priority = match hook.u32(NFTA_HOOK_PRIORITY) as i32 {
        -300 => "raw",   // NF_IP_PRI_RAW
        0 => "filter",   // NF_IP_PRI_FILTER
        100 => "srcnat", // NF_IP_PRI_NAT_SRC
        p => panic!("unexpected priority {p}"),
    };
    let policy = match a.u32(NFTA_CHAIN_POLICY) {
        1 => "accept", // NF_ACCEPT
        p => panic!("unexpected policy {p}"),
    };
    format!(
        "add chain {fam} {} {} {{ type {} hook {hooknum} priority {priority}; policy {policy}; }}",
        a.str(NFTA_CHAIN_TABLE),
        a.str(NFTA_CHAIN_NAME),
        a.str(NFTA_CHAIN_TYPE)
    )
}

// enum nft_rule_attributes
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;

/// `<table> <chain>` of a rule dump of one chain, or `Err(<table>)` of every chain of a table.
fn rule_place(attrs: &[u8]) -> Result<String, String> {
    let a = Tlvs::parse(attrs, &[NFTA_RULE_TABLE, NFTA_RULE_CHAIN]);
    if !a.has(NFTA_RULE_CHAIN) {
        return Err(a.str(NFTA_RULE_TABLE));
    }
    Ok(format!(
        "{} {}",
        a.str(NFTA_RULE_TABLE),
        a.str(NFTA_RULE_CHAIN)
    ))
}

/// A rule, with its comment if it has one (the masquerade rules have, the VXLAN guard's have not).
fn new_rule(fam: &str, attrs: &[u8], set_ids: &mut Vec<(String, u32)>) -> String {
    let a = Tlvs::parse(
        attrs,
        &[
            NFTA_RULE_TABLE,
            NFTA_RULE_CHAIN,
            NFTA_RULE_EXPRESSIONS,
            NFTA_RULE_USERDATA,
        ],
    );
    let exprs: Vec<Expr> = list(a.nested(NFTA_RULE_EXPRESSIONS))
        .into_iter()
        .map(expr)
        .collect();
    for x in &exprs {
        if let Expr::Lookup {
            set, id: Some(id), ..
        } = x
        {
            set_ids.push((set.clone(), *id));
        }
    }
    let mut out = format!(
        "add rule {fam} {} {} {}",
        a.str(NFTA_RULE_TABLE),
        a.str(NFTA_RULE_CHAIN),
        render(&exprs),
    );
    if a.has(NFTA_RULE_USERDATA) {
        out += &format!(" comment \"{}\"", comment(a.value(NFTA_RULE_USERDATA)));
    }
    out
}

/// The comment of table or rule userdata: libnftnl's TLV list, where `NFTNL_UDATA_TABLE_COMMENT` and
/// `NFTNL_UDATA_RULE_COMMENT` are both type 0, a NUL-terminated string. The decoder expects nothing else.
fn comment(udata: &[u8]) -> String {
    let [0, len, text @ ..] = udata else {
        panic!("userdata is not a single comment TLV: {udata:?}");
    };
    assert_eq!(usize::from(*len), text.len(), "comment TLV length");
    let [text @ .., 0] = text else {
        panic!("comment not NUL-terminated");
    };
    String::from_utf8(text.to_vec()).expect("utf-8 comment")
}

/// One expression of a rule, with the registers checked.
#[derive(Debug)]
enum Expr {
    Meta {
        key: u32,
    },
    Cmp {
        op: u32,
        data: Vec<u8>,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    Bitwise {
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Masq,
    Lookup {
        set: String,
        id: Option<u32>,
        inverted: bool,
    },
    Notrack,
    Counter,
    Drop,
}

// enum nft_list_attributes, nft_expr_attributes, nft_data_attributes
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
/// `NFT_REG_1`: every expression of the rule works on the first 16-byte register.
const NFT_REG_1: u32 = 1;

fn expr(elem: &[u8]) -> Expr {
    let a = Tlvs::parse(elem, &[NFTA_EXPR_NAME, NFTA_EXPR_DATA]);
    let name = a.str(NFTA_EXPR_NAME);
    let data = a.nested(NFTA_EXPR_DATA);
    match name.as_str() {
        "meta" => meta(data),
        "cmp" => cmp(data),
        "payload" => payload(data),
        "bitwise" => bitwise(data),
        "masq" => {
            assert!(data.is_empty(), "masq without options");
            Expr::Masq
        }
        "lookup" => sets::lookup(data),
        "notrack" => {
            assert!(data.is_empty(), "notrack has no attributes");
            Expr::Notrack
        }
        "counter" => {
            assert!(data.is_empty(), "a new counter starts from zero");
            Expr::Counter
        }
        "immediate" => sets::immediate(data),
        other => panic!("unexpected expression {other}"),
    }
}

fn meta(data: &[u8]) -> Expr {
    // NFTA_META_DREG 1, NFTA_META_KEY 2
    let a = Tlvs::parse(data, &[1, 2]);
    assert_eq!(a.u32(1), NFT_REG_1);
    Expr::Meta { key: a.u32(2) }
}

fn cmp(data: &[u8]) -> Expr {
    // NFTA_CMP_SREG 1, NFTA_CMP_OP 2, NFTA_CMP_DATA 3
    let a = Tlvs::parse(data, &[1, 2, 3]);
    assert_eq!(a.u32(1), NFT_REG_1);
    Expr::Cmp {
        op: a.u32(2),
        data: data_value(a.nested(3)),
    }
}

fn payload(data: &[u8]) -> Expr {
    // NFTA_PAYLOAD_DREG 1, _BASE 2, _OFFSET 3, _LEN 4
    let a = Tlvs::parse(data, &[1, 2, 3, 4]);
    assert_eq!(a.u32(1), NFT_REG_1);
    Expr::Payload {
        base: a.u32(2),
        offset: a.u32(3),
        len: a.u32(4),
    }
}

fn bitwise(data: &[u8]) -> Expr {
    // NFTA_BITWISE_SREG 1, _DREG 2, _LEN 3, _MASK 4, _XOR 5
    let a = Tlvs::parse(data, &[1, 2, 3, 4, 5]);
    assert_eq!((a.u32(1), a.u32(2)), (NFT_REG_1, NFT_REG_1));
    Expr::Bitwise {
        len: a.u32(3),
        mask: data_value(a.nested(4)),
        xor: data_value(a.nested(5)),
    }
}

fn data_value(data: &[u8]) -> Vec<u8> {
    Tlvs::parse(data, &[NFTA_DATA_VALUE])
        .value(NFTA_DATA_VALUE)
        .to_vec()
}

/// The nft syntax of a rule's expressions; panics on any sequence the masquerade rule and the VXLAN guard's rules
/// do not use.
fn render(mut exprs: &[Expr]) -> String {
    let mut out = Vec::new();
    loop {
        exprs = match exprs {
            // NFT_META_NFPROTO, NFT_CMP_EQ
            [Expr::Meta { key: 15 }, Expr::Cmp { op: 0, data }, rest @ ..] => {
                out.push(format!("meta nfproto {}", nfproto(data)));
                rest
            }
            // NFT_META_L4PROTO, NFT_CMP_EQ, IPPROTO_UDP
            [Expr::Meta { key: 16 }, Expr::Cmp { op: 0, data }, rest @ ..] => {
                assert_eq!(data, &[17], "meta l4proto udp");
                out.push("meta l4proto udp".to_owned());
                rest
            }
            // NFT_PAYLOAD_TRANSPORT_HEADER, the UDP header's destination port (RFC 768)
            [Expr::Payload {
                base: 2,
                offset: 2,
                len: 2,
            }, Expr::Cmp { op, data }, rest @ ..] => {
                let port = u16::from_be_bytes(data.as_slice().try_into().expect("2-byte port"));
                out.push(format!("udp dport {}{port}", cmp_op(*op)));
                rest
            }
            // NFT_PAYLOAD_NETWORK_HEADER
            [Expr::Payload {
                base: 1,
                offset,
                len,
            }, Expr::Lookup { set, inverted, .. }, rest @ ..] => {
                let op = if *inverted { "!= " } else { "" };
                out.push(format!("{} {op}@{set}", field(*offset, *len)));
                rest
            }
            [Expr::Notrack, rest @ ..] => {
                out.push("notrack".to_owned());
                rest
            }
            [Expr::Counter, rest @ ..] => {
                out.push("counter".to_owned());
                rest
            }
            [Expr::Drop, rest @ ..] => {
                out.push("drop".to_owned());
                rest
            }
            [Expr::Payload {
                base: 1,
                offset,
                len,
            }, Expr::Bitwise {
                len: blen,
                mask,
                xor,
            }, Expr::Cmp { op, data }, rest @ ..] => {
                assert_eq!(
                    (blen, mask.len(), data.len()),
                    (len, *len as usize, *len as usize)
                );
                assert!(xor.iter().all(|b| *b == 0), "xor must be zero");
                out.push(format!(
                    "{} {}{}",
                    field(*offset, *len),
                    cmp_op(*op),
                    prefix(data, mask)
                ));
                rest
            }
            [Expr::Masq, rest @ ..] => {
                out.push("masquerade".to_owned());
                rest
            }
            [] => return out.join(" "),
            other => panic!("undecodable expressions {other:?}"),
        };
    }
}

fn nfproto(data: &[u8]) -> &'static str {
    match data {
        [2] => "ipv4",  // NFPROTO_IPV4
        [10] => "ipv6", // NFPROTO_IPV6
        d => panic!("unexpected nfproto {d:?}"),
    }
}

/// The header field at `offset`/`len` of an IPv4 (RFC 791) or IPv6 (RFC 8200) network header.
fn field(offset: u32, len: u32) -> &'static str {
    match (offset, len) {
        (12, 4) => "ip saddr",
        (16, 4) => "ip daddr",
        (8, 16) => "ip6 saddr",
        (24, 16) => "ip6 daddr",
        f => panic!("unexpected payload field {f:?}"),
    }
}

fn cmp_op(op: u32) -> &'static str {
    match op {
        0 => "",    // NFT_CMP_EQ
        1 => "!= ", // NFT_CMP_NEQ
        o => panic!("unexpected cmp op {o}"),
    }
}

/// `addr/len` of a masked comparison; the mask must be a prefix and the value free of host bits.
fn prefix(value: &[u8], mask: &[u8]) -> String {
    let bits: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let ones = mask
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1));
    assert!(
        ones.clone().skip(bits as usize).all(|one| !one),
        "mask {mask:?} is not a prefix"
    );
    assert!(
        value.iter().zip(mask).all(|(v, m)| v & !m == 0),
        "host bits set"
    );
    let addr = match value.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).unwrap())),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value).unwrap())),
        n => panic!("address of {n} bytes"),
    };
    format!("{addr}/{bits}")
}
