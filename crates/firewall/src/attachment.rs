//! Attachments (`<containerID>/<ifname>`) and their encoding as nftables set element userdata.
//!
//! The userdata is a list of `nftnl_udata` TLVs (`u8 type, u8 len, value`), the format `nft` itself uses, so
//! `nft list ruleset` shows the attachment as the element's comment.

use crate::Error;
use std::fmt;

/// `NFTNL_UDATA_SET_ELEM_COMMENT`: a NUL-terminated comment, shown by `nft`.
const UDATA_COMMENT: u8 = 0;
/// Private TLV holding the pod's subnet prefix length (one byte). `nft` ignores unknown TLV types; the value lets
/// a removal work out which subnet chains lose their last pod without asking the kernel for more.
const UDATA_PREFIX: u8 = 0x74;
/// `NFT_USERDATA_MAXLEN`: the kernel's limit on userdata.
const USERDATA_MAX: usize = 256;

/// One container interface: the unit that owns masquerade elements.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl Attachment {
    /// An attachment of `container_id` and `ifname`.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// Checks that the attachment fits in element userdata and parses back unambiguously.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |why| Err(Error::InvalidAttachment(self.to_string(), why));
        if self.container_id.is_empty() || self.ifname.is_empty() {
            return bad("empty container ID or interface name");
        }
        // The ifname is split off at the last '/', and Linux interface names never contain one.
        if self.ifname.contains('/') {
            return bad("interface name contains '/'");
        }
        if self.to_string().contains('\0') {
            return bad("contains NUL");
        }
        // comment TLV (2 + text + NUL) + prefix TLV (3) must fit the kernel's limit.
        if self.to_string().len() + 3 + 3 > USERDATA_MAX {
            return bad("too long");
        }
        Ok(())
    }

    fn parse(text: &str) -> Option<Attachment> {
        let (cid, ifname) = text.rsplit_once('/')?;
        (!cid.is_empty() && !ifname.is_empty()).then(|| Attachment::new(cid, ifname))
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Encodes element userdata: the attachment as comment, plus the subnet prefix length. The attachment must have
/// passed [`Attachment::validate`].
pub(crate) fn encode_udata(att: &Attachment, prefix: u8) -> Vec<u8> {
    let mut comment = att.to_string().into_bytes();
    comment.push(0);
    let mut out = vec![UDATA_COMMENT, comment.len() as u8];
    out.extend_from_slice(&comment);
    out.extend_from_slice(&[UDATA_PREFIX, 1, prefix]);
    out
}

/// Decodes element userdata into the attachment and prefix length, each `None` if absent or malformed.
pub(crate) fn decode_udata(mut data: &[u8]) -> (Option<Attachment>, Option<u8>) {
    let (mut att, mut prefix) = (None, None);
    while data.len() >= 2 {
        let (ty, len) = (data[0], usize::from(data[1]));
        let Some(value) = data.get(2..2 + len) else {
            break;
        };
        match (ty, value) {
            (UDATA_COMMENT, [text @ .., 0]) => {
                att = std::str::from_utf8(text).ok().and_then(Attachment::parse)
            }
            (UDATA_PREFIX, [p]) => prefix = Some(*p),
            _ => {}
        }
        data = &data[2 + len..];
    }
    (att, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udata_round_trip() {
        let att = Attachment::new("0123abc.def_x-y", "eth0");
        att.validate().unwrap();
        let raw = encode_udata(&att, 24);
        // "0123abc.def_x-y/eth0" is 20 bytes, plus the NUL.
        assert_eq!(&raw[..2], &[0, 21]);
        assert_eq!(decode_udata(&raw), (Some(att), Some(24)));
    }

    #[test]
    fn container_id_may_contain_slash() {
        let att = Attachment::new("pod/abc", "net1");
        att.validate().unwrap();
        assert_eq!(decode_udata(&encode_udata(&att, 64)).0, Some(att));
    }

    #[test]
    fn foreign_or_truncated_udata() {
        assert_eq!(decode_udata(&[]), (None, None));
        // nft's own comment on a hand-made element: not an attachment.
        assert_eq!(decode_udata(&[0, 4, b'a', b'b', b'c', 0]), (None, None));
        assert_eq!(decode_udata(&[0, 9, b'a']), (None, None));
        assert_eq!(
            decode_udata(&[9, 1, 5, UDATA_PREFIX, 1, 8]),
            (None, Some(8))
        );
    }

    #[test]
    fn invalid_attachments() {
        assert!(Attachment::new("", "eth0").validate().is_err());
        assert!(Attachment::new("c", "").validate().is_err());
        assert!(Attachment::new("c", "a/b").validate().is_err());
        assert!(Attachment::new("c\0", "eth0").validate().is_err());
        assert!(Attachment::new("c".repeat(250), "eth0").validate().is_err());
        assert!(Attachment::new("c".repeat(240), "eth0").validate().is_ok());
    }
}
