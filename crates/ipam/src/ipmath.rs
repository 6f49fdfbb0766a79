//! Address arithmetic on a common `u128` representation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address as an integer (IPv4 in the low 32 bits).
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of `value` in the family of `like`. `value` must fit that family.
pub(crate) fn from_u128(value: u128, like: IpAddr) -> IpAddr {
    match like {
        // Truncation cannot happen: callers stay inside an IPv4 subnet.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// `ip + 1`, wrapping inside its family.
pub(crate) fn next(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(1))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add(1))),
    }
}

/// True when both addresses are of the same family.
pub(crate) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Go's `canonicalizeIP`: IPv4-mapped IPv6 addresses become IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}
