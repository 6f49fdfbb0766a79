//! Names of the nftables objects of a network, and the address family specifics.

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// Prefix of every table this crate owns (`inet trestle-<id>`).
pub(crate) const TABLE_PREFIX: &str = "trestle-";

/// The stable short id of a network: the first 12 hex digits of the SHA-256 of its name. Network names are free
/// text, nft object names are not, and 48 bits keep collisions between the networks of one host unrealistic.
pub fn network_id(network: &str) -> String {
    let digest = Sha256::digest(network.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The table holding everything of `network`.
pub(crate) fn table_name(network: &str) -> String {
    format!("{TABLE_PREFIX}{}", network_id(network))
}

/// The base chain masquerading the pods of one subnet, e.g. `masq-10.1.0.0/24` or `masq-fd00__/64`. ':' is not
/// valid in an nft identifier, so a saved ruleset would not load again with it; '_' is.
pub(crate) fn chain_name(subnet: IpNet) -> String {
    format!("masq-{}", subnet.trunc()).replace(':', "_")
}

/// IP version specifics of the pod sets and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, in the order objects are handled.
    pub(crate) const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `addr`.
    pub(crate) fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The set of pod addresses of this family.
    pub(crate) fn set_name(self) -> &'static str {
        match self {
            Family::V4 => "pods4",
            Family::V6 => "pods6",
        }
    }

    /// nft's datatype number (`ipv4_addr` 7, `ipv6_addr` 8), which `nft list` uses to print elements.
    pub(crate) fn key_type(self) -> u32 {
        match self {
            Family::V4 => 7,
            Family::V6 => 8,
        }
    }

    /// Address length in bytes.
    pub(crate) fn addr_len(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// `NFPROTO_IPV4` / `NFPROTO_IPV6`, matched by `meta nfproto` in the inet table.
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Family::V4 => 2,
            Family::V6 => 10,
        }
    }

    /// Offsets of the source and destination address in the network header.
    pub(crate) fn addr_offsets(self) -> (u32, u32) {
        match self {
            Family::V4 => (12, 16),
            Family::V6 => (8, 24),
        }
    }

    /// The multicast range, never masqueraded (224.0.0.0/4, ff00::/8).
    pub(crate) fn multicast(self) -> IpNet {
        match self {
            Family::V4 => "224.0.0.0/4".parse().expect("valid literal"),
            Family::V6 => "ff00::/8".parse().expect("valid literal"),
        }
    }
}

/// The raw bytes of an address.
pub(crate) fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address in `raw` (4 or 16 bytes).
pub(crate) fn addr_from_bytes(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(raw).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(raw).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        // `echo -n mynet | sha256sum`
        assert_eq!(network_id("mynet"), "11c844f95e28");
        assert_eq!(network_id("mynet"), network_id("mynet"));
        assert_ne!(network_id("mynet"), network_id("mynet2"));
        assert!(table_name("x").starts_with("trestle-"));
        assert_eq!(
            chain_name("10.1.0.7/24".parse().unwrap()),
            "masq-10.1.0.0/24"
        );
        assert_eq!(chain_name("fd00::5/64".parse().unwrap()), "masq-fd00__/64");
    }

    #[test]
    fn address_bytes_round_trip() {
        for a in ["10.1.2.3", "fd00::1"] {
            let addr: IpAddr = a.parse().unwrap();
            assert_eq!(addr_from_bytes(&addr_bytes(addr)), Some(addr));
        }
        assert_eq!(addr_from_bytes(&[1, 2, 3]), None);
    }
}
