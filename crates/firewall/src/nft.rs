//! nf_tables request messages (`linux/netfilter/nf_tables.h`) for the objects this crate manages, and the
//! parsing of what the kernel returns for them.

use crate::attr::{AttrWriter, Attrs};
use crate::names::{addr_bytes, chain_name, Family};
use crate::nf::*;
use crate::sock::Msg;
use ipnet::IpNet;

/// `NFPROTO_UNSPEC`, for requests about the whole ruleset.
const NFPROTO_UNSPEC: u8 = 0;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETGEN: u16 = 16;

const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_GEN_ID: u16 = 1;

/// `NF_INET_POST_ROUTING`.
const HOOK_POSTROUTING: u32 = 4;
/// `NF_IP_PRI_NAT_SRC`, what nft calls `srcnat`.
const PRIORITY_SRCNAT: u32 = 100;
/// `NF_ACCEPT`: packets no rule matches leave the chain unchanged.
const POLICY_ACCEPT: u32 = 1;
const CMP_NEQ: u32 = 1;
/// `NFTNL_UDATA_*_COMMENT`, the comment TLV of table and rule userdata.
const UDATA_COMMENT: u8 = 0;
/// Longest comment text `nft` accepts (`NFT_USERDATA_MAXLEN`-bounded, 128 with the NUL).
pub(crate) const COMMENT_MAX: usize = 127;

/// The expressions of a masquerade rule, by name, in order (see [`new_masq_rule`]).
const MASQ_EXPRS: [&str; 12] = [
    "meta", "cmp", "payload", "bitwise", "cmp", "payload", "bitwise", "cmp", "payload", "bitwise",
    "cmp", "masq",
];

fn msg(kind: u16, flags: u16, op: &'static str, attrs: AttrWriter) -> Msg {
    Msg {
        kind,
        flags,
        family: NFPROTO_INET,
        attrs: attrs.into_bytes(),
        op,
    }
}

pub(crate) fn comment_udata(text: &str) -> Option<Vec<u8>> {
    if text.len() > COMMENT_MAX || text.contains('\0') {
        return None;
    }
    let mut out = vec![UDATA_COMMENT, (text.len() + 1) as u8];
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Some(out)
}

/// The comment TLV's text in table or rule userdata.
pub(crate) fn parse_comment(udata: &[u8]) -> Option<String> {
    let mut data = udata;
    while let [ty, len, rest @ ..] = data {
        let value = rest.get(..usize::from(*len))?;
        if let (UDATA_COMMENT, [text @ .., 0]) = (*ty, value) {
            return std::str::from_utf8(text).ok().map(str::to_owned);
        }
        data = &rest[usize::from(*len)..];
    }
    None
}

/// The comment of a subnet's masquerade rule: `trestle <network> <subnet>`. A network name too long for nft's
/// comment limit is cut (at a character boundary), so the comment is always written and always the same.
pub(crate) fn rule_comment(network: &str, subnet: IpNet) -> String {
    let subnet = subnet.trunc().to_string();
    let room = COMMENT_MAX - "trestle  ".len() - subnet.len();
    let mut cut = network.len().min(room);
    while !network.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("trestle {} {subnet}", &network[..cut]).replace('\0', "")
}

/// `add table inet <table> { comment "<comment>" }`; an existing table is kept. A comment too long for nft is
/// left out.
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

/// Get request for one table.
pub(crate) fn get_table(table: &str) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_TABLE_NAME, table);
    msg(NFT_MSG_GETTABLE, 0, "get table", a)
}

/// Dump request for the inet tables.
pub(crate) fn get_tables() -> Msg {
    msg(NFT_MSG_GETTABLE, 0, "list tables", AttrWriter::new())
}

/// Name and comment of a table from a table dump.
pub(crate) fn parse_table(attrs: &[u8]) -> Option<(String, Option<String>)> {
    let a = Attrs::new(attrs);
    let name = a.get_str(NFTA_TABLE_NAME)?.to_owned();
    let comment = a.get(NFTA_TABLE_USERDATA).and_then(parse_comment);
    Some((name, comment))
}

fn chain_attrs(table: &str, chain: &str) -> AttrWriter {
    let mut a = AttrWriter::new();
    a.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, chain);
    a
}

/// `add chain inet <table> <chain> { type nat hook postrouting priority srcnat; policy accept; }`. Exclusive: an
/// existing chain fails the batch rather than gaining a second rule.
pub(crate) fn new_masq_chain(table: &str, chain: &str) -> Msg {
    let mut a = chain_attrs(table, chain);
    a.nested(NFTA_CHAIN_HOOK, |h| {
        h.u32_be(NFTA_HOOK_HOOKNUM, HOOK_POSTROUTING)
            .u32_be(NFTA_HOOK_PRIORITY, PRIORITY_SRCNAT);
    })
    .u32_be(NFTA_CHAIN_POLICY, POLICY_ACCEPT)
    .str(NFTA_CHAIN_TYPE, "nat");
    msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, "add chain", a)
}

/// Get request for one chain.
pub(crate) fn get_chain(table: &str, chain: &str) -> Msg {
    msg(NFT_MSG_GETCHAIN, 0, "get chain", chain_attrs(table, chain))
}

/// Dump request for the chains of all inet tables (the kernel does not filter chain dumps by table).
pub(crate) fn get_chains() -> Msg {
    msg(NFT_MSG_GETCHAIN, 0, "list chains", AttrWriter::new())
}

/// Table and name of a chain from a chain dump.
pub(crate) fn parse_chain(attrs: &[u8]) -> Option<(String, String)> {
    let a = Attrs::new(attrs);
    Some((
        a.get_str(NFTA_CHAIN_TABLE)?.to_owned(),
        a.get_str(NFTA_CHAIN_NAME)?.to_owned(),
    ))
}

/// Dump request for the rules of one chain.
pub(crate) fn get_rules(table: &str, chain: &str) -> Msg {
    let mut a = AttrWriter::new();
    a.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    msg(NFT_MSG_GETRULE, 0, "list rules", a)
}

/// Whether a rule (from a rule dump) is the masquerade rule [`new_masq_rule`] writes for `subnet` of `network`
/// into `table`/`chain`: same place, same comment and the same expressions. The expressions are compared by name
/// only; together with the comment that tells this crate's rule from anything else.
pub(crate) fn is_masq_rule(
    attrs: &[u8],
    table: &str,
    chain: &str,
    network: &str,
    subnet: IpNet,
) -> bool {
    let a = Attrs::new(attrs);
    let names: Vec<&str> = a
        .get(NFTA_RULE_EXPRESSIONS)
        .map(|e| {
            Attrs::new(e)
                .filter_map(|(_, x)| Attrs::new(x).get_str(NFTA_EXPR_NAME))
                .collect()
        })
        .unwrap_or_default();
    a.get_str(NFTA_RULE_TABLE) == Some(table)
        && a.get_str(NFTA_RULE_CHAIN) == Some(chain)
        && a.get(NFTA_RULE_USERDATA).and_then(parse_comment) == Some(rule_comment(network, subnet))
        && names == MASQ_EXPRS
}

/// Get request for the ruleset generation.
pub(crate) fn get_gen() -> Msg {
    Msg {
        family: NFPROTO_UNSPEC,
        ..msg(NFT_MSG_GETGEN, 0, "get generation", AttrWriter::new())
    }
}

/// The generation id of a `NEWGEN` reply.
pub(crate) fn parse_gen(attrs: &[u8]) -> Option<u32> {
    let raw = Attrs::new(attrs).get(NFTA_GEN_ID)?;
    Some(u32::from_be_bytes(raw.try_into().ok()?))
}

/// The rule of a subnet chain:
/// `meta nfproto ipv4 ip saddr <subnet> ip daddr != <subnet> ip daddr != 224.0.0.0/4 masquerade`
/// (IPv6: `ff00::/8`), commented `trestle <network> <subnet>`.
pub(crate) fn new_masq_rule(table: &str, chain: &str, subnet: IpNet, network: &str) -> Msg {
    let subnet = subnet.trunc();
    let family = Family::of(subnet.addr());
    let (saddr, daddr) = family.addr_offsets();
    let mut a = AttrWriter::new();
    a.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    a.nested(NFTA_RULE_EXPRESSIONS, |e| {
        meta_nfproto(e, family);
        payload(e, saddr, family.addr_len());
        in_net(e, subnet, CMP_EQ);
        payload(e, daddr, family.addr_len());
        in_net(e, subnet, CMP_NEQ);
        payload(e, daddr, family.addr_len());
        in_net(e, family.multicast(), CMP_NEQ);
        expr(e, "masq", |_| {});
    });
    let udata = comment_udata(&rule_comment(network, subnet)).expect("rule_comment fits");
    a.bytes(NFTA_RULE_USERDATA, &udata);
    msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, "add rule", a)
}

/// The one transaction of [`crate::Firewall::ensure`] when chains are missing: the table (an existing one is
/// kept), then for each of `missing` (already distinct and truncated) its chain and the chain's rule.
pub(crate) fn ensure_msgs(table: &str, network: &str, missing: &[IpNet]) -> Vec<Msg> {
    let mut msgs = vec![new_table(table, network)];
    for &subnet in missing {
        let chain = chain_name(subnet);
        msgs.push(new_masq_chain(table, &chain));
        msgs.push(new_masq_rule(table, &chain, subnet, network));
    }
    msgs
}

pub(crate) fn expr(e: &mut AttrWriter, name: &str, data: impl FnOnce(&mut AttrWriter)) {
    e.nested(NFTA_LIST_ELEM, |x| {
        x.str(NFTA_EXPR_NAME, name).nested(NFTA_EXPR_DATA, data);
    });
}

pub(crate) fn data_value(a: &mut AttrWriter, ty: u16, value: &[u8]) {
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
pub(crate) fn payload(e: &mut AttrWriter, offset: u32, len: u32) {
    expr(e, "payload", |d| {
        // NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
        d.u32_be(1, REG_1)
            .u32_be(2, BASE_NETWORK)
            .u32_be(3, offset)
            .u32_be(4, len);
    });
}

pub(crate) fn cmp(e: &mut AttrWriter, op: u32, value: &[u8]) {
    expr(e, "cmp", |d| {
        d.u32_be(1, REG_1).u32_be(2, op); // NFTA_CMP_SREG, NFTA_CMP_OP
        data_value(d, 3, value); // NFTA_CMP_DATA
    });
}

/// Masks register 1 with the prefix of `net` and compares it with the network address (`==` or `!=`).
pub(crate) fn in_net(e: &mut AttrWriter, net: IpNet, op: u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
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
    fn rule_is_recognised_by_place_comment_and_expressions() {
        let m = new_masq_rule("t", "c", net("fd00::7/64"), "net");
        let exprs = Attrs::new(&m.attrs).get(NFTA_RULE_EXPRESSIONS).unwrap();
        let names: Vec<_> = Attrs::new(exprs)
            .map(|(_, e)| Attrs::new(e).get_str(NFTA_EXPR_NAME).unwrap().to_owned())
            .collect();
        assert_eq!(names, MASQ_EXPRS);
        // A rule request has the layout of a dumped rule.
        assert!(is_masq_rule(&m.attrs, "t", "c", "net", net("fd00::/64")));
        assert!(!is_masq_rule(&m.attrs, "t", "c", "net", net("fd01::/64")));
        assert!(!is_masq_rule(&m.attrs, "t", "c", "other", net("fd00::/64")));
        assert!(!is_masq_rule(&m.attrs, "t", "d", "net", net("fd00::/64")));
    }

    #[test]
    fn rule_comment_always_fits() {
        let s = net("10.1.2.3/24");
        assert_eq!(rule_comment("mynet", s), "trestle mynet 10.1.2.0/24");
        let wide = net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
        for name in ["é".repeat(100), "n".repeat(300)] {
            let c = rule_comment(&name, wide);
            assert!(
                c.len() <= COMMENT_MAX && c.ends_with(&format!(" {wide}")),
                "{c}"
            );
            assert!(comment_udata(&c).is_some());
        }
    }

    #[test]
    fn comment_udata_round_trip_and_foreign_tlvs() {
        let u = comment_udata("abc").unwrap();
        assert_eq!(u, [0, 4, b'a', b'b', b'c', 0]);
        assert_eq!(parse_comment(&u).as_deref(), Some("abc"));
        // An unknown TLV first is skipped; a truncated one ends parsing.
        assert_eq!(
            parse_comment(&[9, 1, 7, 0, 2, b'x', 0]).as_deref(),
            Some("x")
        );
        assert_eq!(parse_comment(&[0, 9, b'a']), None);
        assert_eq!(parse_comment(&[]), None);
    }

    #[test]
    fn generation_parses() {
        let mut a = AttrWriter::new();
        a.u32_be(NFTA_GEN_ID, 0x0102_0304);
        assert_eq!(parse_gen(&a.into_bytes()), Some(0x0102_0304));
        assert_eq!(parse_gen(&[]), None);
    }
}
