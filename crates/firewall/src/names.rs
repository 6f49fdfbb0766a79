//! Names of the nftables objects of a network, and the address family specifics.

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// Prefix of every table this crate owns (`inet trestle-<id>`).
pub(crate) const TABLE_PREFIX: &str = "trestle-";
/// Prefix of every subnet chain (`masq-<subnet>`).
const CHAIN_PREFIX: &str = "masq-";

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

/// The base chain masquerading one subnet, e.g. `masq-10.1.0.0/24` or `masq-fd00__/64`. ':' is not valid in an
/// nft identifier, so a saved ruleset would not load again with it; '_' is.
pub(crate) fn chain_name(subnet: IpNet) -> String {
    format!("{CHAIN_PREFIX}{}", subnet.trunc()).replace(':', "_")
}

/// The subnet a [`chain_name`] stands for; `None` for any other chain name.
pub(crate) fn parse_chain_name(chain: &str) -> Option<IpNet> {
    let net: IpNet = chain
        .strip_prefix(CHAIN_PREFIX)?
        .replace('_', ":")
        .parse()
        .ok()?;
    // Only the canonical form is ours: `masq-10.1.0.5/24` was not written by `chain_name`.
    (chain_name(net) == chain).then_some(net)
}

/// The distinct subnets of `subnets`, host bits cleared, in a stable order.
pub(crate) fn distinct_subnets(subnets: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = subnets.iter().map(IpNet::trunc).collect();
    out.sort();
    out.dedup();
    out
}

/// IP version specifics of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `addr`.
    pub(crate) fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
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

/// The network an address and a netmask of the same length (4 or 16 bytes) make, host bits as given; `None` for
/// other lengths or a mask whose ones are not contiguous from the top.
pub(crate) fn masked_net(addr: &[u8], mask: &[u8]) -> Option<IpNet> {
    let (ip, bits) = match (<[u8; 4]>::try_from(addr), <[u8; 4]>::try_from(mask)) {
        (Ok(a), Ok(m)) => (
            IpAddr::V4(a.into()),
            u128::from(u32::from_be_bytes(m)) << 96,
        ),
        _ => {
            let a = <[u8; 16]>::try_from(addr).ok()?;
            let m = <[u8; 16]>::try_from(mask).ok()?;
            (IpAddr::V6(a.into()), u128::from_be_bytes(m))
        }
    };
    // Contiguous: the ones all come first (an IPv4 mask is shifted to the top).
    let prefix = bits.leading_ones();
    if bits.checked_shl(prefix).unwrap_or(0) != 0 {
        return None;
    }
    IpNet::new(ip, u8::try_from(prefix).ok()?).ok()
}

/// The raw bytes of an address.
pub(crate) fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ids_and_names() {
        // `echo -n mynet | sha256sum`
        assert_eq!(network_id("mynet"), "11c844f95e28");
        assert_ne!(network_id("mynet"), network_id("mynet2"));
        assert_eq!(table_name("mynet"), "trestle-11c844f95e28");
        assert_eq!(chain_name(net("10.1.0.7/24")), "masq-10.1.0.0/24");
        assert_eq!(chain_name(net("fd00::5/64")), "masq-fd00__/64");
    }

    #[test]
    fn chain_names_parse_back() {
        for s in [
            "10.1.0.0/24",
            "fd00::/64",
            "fd00:1:2::/48",
            "::/0",
            "0.0.0.0/0",
        ] {
            assert_eq!(parse_chain_name(&chain_name(net(s))), Some(net(s)), "{s}");
        }
        for other in [
            "masq-",
            "masq-x/24",
            "masq-10.1.0.5/24",
            "postrouting",
            "masq-fd00::/64",
        ] {
            assert_eq!(parse_chain_name(other), None, "{other}");
        }
    }

    #[test]
    fn distinct_subnets_truncate_and_dedup() {
        let got = distinct_subnets(&[net("10.0.0.5/24"), net("fd00::1/64"), net("10.0.0.9/24")]);
        assert_eq!(got, [net("10.0.0.0/24"), net("fd00::/64")]);
        assert!(distinct_subnets(&[]).is_empty());
    }
}
