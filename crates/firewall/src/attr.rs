//! Netlink attribute (TLV) encoding and decoding, as used by every netlink family.

/// Flag marking an attribute whose payload is itself a list of attributes.
const NLA_F_NESTED: u16 = 0x8000;
/// Bits of the type field that carry the type (the rest are flags).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Size of an attribute header (`struct nlattr`).
const NLA_HDRLEN: usize = 4;

/// Rounds `n` up to the 4-byte netlink alignment.
pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A growing buffer of attributes.
#[derive(Debug, Default, Clone)]
pub(crate) struct AttrWriter {
    buf: Vec<u8>,
}

impl AttrWriter {
    /// An empty buffer.
    pub(crate) fn new() -> AttrWriter {
        AttrWriter::default()
    }

    /// Appends an attribute with a raw payload.
    pub(crate) fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let start = self.header(ty);
        self.buf.extend_from_slice(data);
        self.finish(start)
    }

    /// Appends a NUL-terminated string, the form nf_tables expects for names.
    pub(crate) fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let start = self.header(ty);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.finish(start)
    }

    /// Appends a 32-bit value in network byte order (nf_tables' integer encoding).
    pub(crate) fn u32_be(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// Appends a nested attribute whose content `f` writes.
    pub(crate) fn nested(&mut self, ty: u16, f: impl FnOnce(&mut AttrWriter)) -> &mut Self {
        let start = self.header(ty | NLA_F_NESTED);
        f(self);
        self.finish(start)
    }

    /// The encoded attributes.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn header(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        start
    }

    fn finish(&mut self, start: usize) -> &mut Self {
        // The length excludes the padding; a nested list longer than u16 cannot be expressed, and callers keep
        // lists far below that.
        let len = u16::try_from(self.buf.len() - start).expect("netlink attribute exceeds 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }
}

/// Iterator over the attributes in a buffer, yielding `(type, payload)`; it stops at the first malformed one.
#[derive(Debug, Clone)]
pub(crate) struct Attrs<'a> {
    data: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Iterates the attributes in `data`.
    pub(crate) fn new(data: &'a [u8]) -> Attrs<'a> {
        Attrs { data }
    }

    /// The payload of the first attribute of type `ty`.
    pub(crate) fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.clone().find(|(t, _)| *t == ty).map(|(_, v)| v)
    }

    /// The payload of attribute `ty` as a string without its NUL terminator.
    pub(crate) fn get_str(&self, ty: u16) -> Option<&'a str> {
        let raw = self.get(ty)?;
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        std::str::from_utf8(&raw[..end]).ok()
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([self.data[0], self.data[1]]));
        let ty = u16::from_ne_bytes([self.data[2], self.data[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.data.len() {
            self.data = &[];
            return None;
        }
        let payload = &self.data[NLA_HDRLEN..len];
        self.data = &self.data[align4(len).min(self.data.len())..];
        Some((ty, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_padding_and_nesting() {
        let mut w = AttrWriter::new();
        w.str(1, "abc").u32_be(2, 0x0102_0304).nested(3, |n| {
            n.bytes(7, &[9]);
        });
        let buf = w.into_bytes();
        assert_eq!(buf.len() % 4, 0);
        let attrs = Attrs::new(&buf);
        assert_eq!(attrs.get_str(1), Some("abc"));
        assert_eq!(attrs.get(2), Some(&[1, 2, 3, 4][..]));
        let inner = Attrs::new(attrs.get(3).unwrap());
        assert_eq!(inner.get(7), Some(&[9][..]));
        assert_eq!(attrs.get(4), None);
        // The nested flag is masked off the type and set on the wire.
        assert_eq!(u16::from_ne_bytes([buf[18], buf[19]]), 3 | NLA_F_NESTED);
    }

    #[test]
    fn malformed_length_stops_iteration() {
        let buf = [200u8, 0, 1, 0, 1, 2, 3, 4];
        assert_eq!(Attrs::new(&buf).count(), 0);
    }
}
