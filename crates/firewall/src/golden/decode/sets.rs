//! Decoding of the VXLAN guard's messages beyond tables, chains and rules: sets, their elements, and the
//! expressions of its rules that the masquerade rule does not use (`lookup`, `immediate`). Numbers from
//! `linux/netfilter/nf_tables.h` and `linux/netfilter.h`, written down independently of the encoder.

use super::{list, Expr, Tlvs, NFTA_DATA_VALUE, NFT_REG_1};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// enum nft_set_attributes
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
// enum nft_set_elem_list_attributes, nft_set_elem_attributes
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
// enum nft_lookup_attributes, nft_lookup_flags
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;
// enum nft_immediate_attributes, nft_data_attributes, nft_verdict_attributes
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
/// `NFT_REG_VERDICT`.
const NFT_REG_VERDICT: u32 = 0;
/// `NF_DROP` (linux/netfilter.h).
const NF_DROP: u32 = 0;

/// `add set <fam> <table> <set> { type ipv4_addr|ipv6_addr; }`: no flags, nft's key datatype (`TYPE_IPADDR` 7,
/// `TYPE_IP6ADDR` 8 in nftables' datatype.h) with its length, and nft's userdata (`NFTNL_UDATA_SET_KEYBYTEORDER`
/// 0, length 4, `BYTEORDER_BIG_ENDIAN` 2 as a little-endian u32).
pub(super) fn new_set(fam: &str, attrs: &[u8], set_ids: &mut Vec<(String, u32)>) -> String {
    let a = Tlvs::parse(
        attrs,
        &[
            NFTA_SET_TABLE,
            NFTA_SET_NAME,
            NFTA_SET_FLAGS,
            NFTA_SET_KEY_TYPE,
            NFTA_SET_KEY_LEN,
            NFTA_SET_ID,
            NFTA_SET_USERDATA,
        ],
    );
    assert_eq!(a.u32(NFTA_SET_FLAGS), 0, "a plain named set");
    let ty = match (a.u32(NFTA_SET_KEY_TYPE), a.u32(NFTA_SET_KEY_LEN)) {
        (7, 4) => "ipv4_addr",
        (8, 16) => "ipv6_addr",
        k => panic!("unexpected key type and length {k:?}"),
    };
    assert_eq!(a.value(NFTA_SET_USERDATA), [0, 4, 2, 0, 0, 0]);
    let name = a.str(NFTA_SET_NAME);
    set_ids.push((name.clone(), a.u32(NFTA_SET_ID)));
    format!(
        "add set {fam} {} {name} {{ type {ty}; }}",
        a.str(NFTA_SET_TABLE)
    )
}

/// The table of a set dump request.
pub(super) fn get_sets(attrs: &[u8]) -> String {
    Tlvs::parse(attrs, &[NFTA_SET_TABLE]).str(NFTA_SET_TABLE)
}

const ELEM_LIST: [u16; 4] = [
    NFTA_SET_ELEM_LIST_TABLE,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET_ID,
];

/// `<table> <set>` of an element list, its set id (if any) added to `set_ids`.
fn place(a: &Tlvs, set_ids: &mut Vec<(String, u32)>) -> String {
    let set = a.str(NFTA_SET_ELEM_LIST_SET);
    if a.has(NFTA_SET_ELEM_LIST_SET_ID) {
        set_ids.push((set.clone(), a.u32(NFTA_SET_ELEM_LIST_SET_ID)));
    }
    format!("{} {set}", a.str(NFTA_SET_ELEM_LIST_TABLE))
}

/// `<table> <set>` of an element dump request.
pub(super) fn set_place(attrs: &[u8], set_ids: &mut Vec<(String, u32)>) -> String {
    let a = Tlvs::parse(attrs, &ELEM_LIST);
    assert!(!a.has(NFTA_SET_ELEM_LIST_ELEMENTS));
    place(&a, set_ids)
}

/// `add element <fam> <table> <set> { <addr>, ... }`: each element a key and nothing else.
pub(super) fn new_elements(fam: &str, attrs: &[u8], set_ids: &mut Vec<(String, u32)>) -> String {
    let a = Tlvs::parse(attrs, &ELEM_LIST);
    let keys: Vec<String> = list(a.nested(NFTA_SET_ELEM_LIST_ELEMENTS))
        .into_iter()
        .map(|elem| {
            let e = Tlvs::parse(elem, &[NFTA_SET_ELEM_KEY]);
            let key = Tlvs::parse(e.nested(NFTA_SET_ELEM_KEY), &[NFTA_DATA_VALUE]);
            let addr = match key.value(NFTA_DATA_VALUE) {
                v if v.len() == 4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).unwrap())),
                v if v.len() == 16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).unwrap())),
                v => panic!("key of {} bytes", v.len()),
            };
            addr.to_string()
        })
        .collect();
    assert!(!keys.is_empty(), "the guard sends no empty element list");
    format!(
        "add element {fam} {} {{ {} }}",
        place(&a, set_ids),
        keys.join(", ")
    )
}

/// `flush set <fam> <table> <set>`: `NFT_MSG_DELSETELEM` without an element list.
pub(super) fn flush(fam: &str, attrs: &[u8]) -> String {
    let a = Tlvs::parse(attrs, &[NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET]);
    format!(
        "flush set {fam} {} {}",
        a.str(NFTA_SET_ELEM_LIST_TABLE),
        a.str(NFTA_SET_ELEM_LIST_SET)
    )
}

/// `lookup reg 1 set <set>`, `!=` with `NFT_LOOKUP_F_INV`.
pub(super) fn lookup(data: &[u8]) -> Expr {
    let a = Tlvs::parse(
        data,
        &[
            NFTA_LOOKUP_SET,
            NFTA_LOOKUP_SREG,
            NFTA_LOOKUP_SET_ID,
            NFTA_LOOKUP_FLAGS,
        ],
    );
    assert_eq!(a.u32(NFTA_LOOKUP_SREG), NFT_REG_1);
    let flags = if a.has(NFTA_LOOKUP_FLAGS) {
        a.u32(NFTA_LOOKUP_FLAGS)
    } else {
        0
    };
    assert_eq!(flags & !NFT_LOOKUP_F_INV, 0, "unknown lookup flags");
    Expr::Lookup {
        set: a.str(NFTA_LOOKUP_SET),
        id: a.has(NFTA_LOOKUP_SET_ID).then(|| a.u32(NFTA_LOOKUP_SET_ID)),
        inverted: flags == NFT_LOOKUP_F_INV,
    }
}

/// `immediate reg 0 drop`, the only verdict the guard writes.
pub(super) fn immediate(data: &[u8]) -> Expr {
    let a = Tlvs::parse(data, &[NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA]);
    assert_eq!(a.u32(NFTA_IMMEDIATE_DREG), NFT_REG_VERDICT);
    let data = Tlvs::parse(a.nested(NFTA_IMMEDIATE_DATA), &[NFTA_DATA_VERDICT]);
    let verdict = Tlvs::parse(data.nested(NFTA_DATA_VERDICT), &[NFTA_VERDICT_CODE]);
    assert_eq!(verdict.u32(NFTA_VERDICT_CODE), NF_DROP, "drop");
    Expr::Drop
}
