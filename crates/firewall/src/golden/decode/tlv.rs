//! Netlink attribute reading for the decoder: strict about lengths, padding, nesting flags and duplicates.

use super::{NFTA_LIST_ELEM, NLA_F_NESTED, NLA_HDRLEN, NLA_TYPE_MASK};
use std::collections::BTreeMap;

/// The elements of an `NFTA_LIST_ELEM` list, in order.
pub(super) fn list(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (ty, nested, payload, rest) = next_attr(data);
        assert!(ty == NFTA_LIST_ELEM && nested, "list element");
        out.push(payload);
        data = rest;
    }
    out
}

/// Type, nested flag, payload and what follows of the first attribute of `data`.
fn next_attr(data: &[u8]) -> (u16, bool, &[u8], &[u8]) {
    assert!(data.len() >= NLA_HDRLEN, "truncated attribute");
    let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let raw_ty = u16::from_le_bytes([data[2], data[3]]);
    assert!(len >= NLA_HDRLEN && len <= data.len(), "bad nla_len {len}");
    let padded = (len + 3) & !3;
    assert!(padded <= data.len(), "attribute padding missing");
    assert!(
        data[len..padded].iter().all(|b| *b == 0),
        "non-zero padding"
    );
    let nested = raw_ty & NLA_F_NESTED != 0;
    (
        raw_ty & NLA_TYPE_MASK,
        nested,
        &data[NLA_HDRLEN..len],
        &data[padded..],
    )
}

/// The attributes of one level, each at most once, each of a type the caller knows.
pub(super) struct Tlvs<'a>(BTreeMap<u16, (bool, &'a [u8])>);

impl<'a> Tlvs<'a> {
    pub(super) fn parse(mut data: &'a [u8], known: &[u16]) -> Tlvs<'a> {
        let mut map = BTreeMap::new();
        while !data.is_empty() {
            let (ty, nested, payload, rest) = next_attr(data);
            assert!(known.contains(&ty), "unexpected attribute type {ty}");
            assert!(
                map.insert(ty, (nested, payload)).is_none(),
                "attribute {ty} twice"
            );
            data = rest;
        }
        Tlvs(map)
    }

    pub(super) fn has(&self, ty: u16) -> bool {
        self.0.contains_key(&ty)
    }

    fn entry(&self, ty: u16, nested: bool) -> &'a [u8] {
        let (is_nested, payload) = *self
            .0
            .get(&ty)
            .unwrap_or_else(|| panic!("attribute {ty} missing"));
        assert_eq!(is_nested, nested, "NLA_F_NESTED on attribute {ty}");
        payload
    }

    pub(super) fn value(&self, ty: u16) -> &'a [u8] {
        self.entry(ty, false)
    }

    pub(super) fn nested(&self, ty: u16) -> &'a [u8] {
        self.entry(ty, true)
    }

    /// A NUL-terminated string (`NLA_STRING`/`NLA_NUL_STRING` as nf_tables sends and accepts them).
    pub(super) fn str(&self, ty: u16) -> String {
        let [text @ .., 0] = self.value(ty) else {
            panic!("attribute {ty} is not NUL-terminated");
        };
        assert!(!text.contains(&0), "NUL inside attribute {ty}");
        String::from_utf8(text.to_vec()).expect("utf-8 name")
    }

    /// An `NLA_U32`, which nf_tables sends in network byte order.
    pub(super) fn u32(&self, ty: u16) -> u32 {
        u32::from_be_bytes(self.value(ty).try_into().expect("4-byte u32"))
    }
}
