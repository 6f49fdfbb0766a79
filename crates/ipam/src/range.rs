//! Ranges and range sets, with host-local's defaults and validation.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::IpamError;
use crate::ipmath::{canonical, from_u128, next, same_family, to_u128};

/// Why a range or a range set is refused; the messages are host-local's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// The subnet has fewer than four addresses (IPv4 /31, IPv6 /127 and longer).
    #[error("Network {0} too small to allocate from")]
    TooSmall(IpNet),
    /// The subnet is written with host bits set, e.g. `10.1.2.3/24`.
    #[error(
        "Network has host bits set. For a subnet mask of length {} the network address is {}",
        .0.prefix_len(),
        .0.network()
    )]
    HostBits(IpNet),
    /// The gateway lies outside the subnet or is of the other family.
    #[error("gateway {gateway} not in network {subnet}")]
    GatewayOutside {
        /// The gateway given.
        gateway: IpAddr,
        /// The range's subnet.
        subnet: IpNet,
    },
    /// `rangeStart` or `rangeEnd` is of the other address family.
    #[error("IP {ip} is not the same protocol as subnet {subnet}")]
    WrongFamily {
        /// The address given.
        ip: IpAddr,
        /// The range's subnet.
        subnet: IpNet,
    },
    /// `rangeStart` or `rangeEnd` lies outside the subnet.
    #[error("{ip} not in network {subnet}")]
    Outside {
        /// The address given.
        ip: IpAddr,
        /// The range's subnet.
        subnet: IpNet,
    },
    /// `rangeEnd` comes before `rangeStart`.
    #[error("{end} is in network {subnet} but before start {start}")]
    EndBeforeStart {
        /// The range's start.
        start: IpAddr,
        /// The end given.
        end: IpAddr,
        /// The range's subnet.
        subnet: IpNet,
    },
    /// A range set without ranges.
    #[error("empty range set")]
    EmptySet,
    /// A range set with IPv4 and IPv6 ranges.
    #[error("mixed address families")]
    MixedFamilies,
    /// Two ranges of a set share addresses.
    #[error("subnets {} and {} overlap", .0.0, .0.1)]
    Overlap(Box<(Range, Range)>),
}

/// One pool of addresses: `range_start..=range_end` inside `subnet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet; its prefix length is returned with every address.
    pub subnet: IpNet,
    /// First allocatable address, inclusive.
    pub range_start: IpAddr,
    /// Last allocatable address, inclusive.
    pub range_end: IpAddr,
    /// Gateway, never allocated. Always set after [`Range::new`] (default network+1).
    pub gateway: Option<IpAddr>,
}

impl Range {
    /// Builds a range the way host-local's `Range.Canonicalize` does: fills in the defaults
    /// (start network+1, end broadcast-1 for IPv4 or the last address for IPv6, gateway
    /// network+1) and validates; an error's message is host-local's.
    pub fn new(
        subnet: IpNet,
        range_start: Option<IpAddr>,
        range_end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        let subnet = check_subnet(subnet)?;
        let gateway = match gateway.map(canonical) {
            None => next(subnet.network()),
            Some(gw) if same_family(gw, subnet.addr()) && subnet.contains(&gw) => gw,
            Some(gateway) => return Err(RangeError::GatewayOutside { gateway, subnet }),
        };
        let mut range = Range {
            subnet,
            range_start: next(subnet.network()),
            range_end: default_end(subnet),
            gateway: Some(gateway),
        };
        if let Some(start) = range_start.map(canonical) {
            range.check_in_subnet(start)?;
            range.range_start = start;
        }
        if let Some(end) = range_end.map(canonical) {
            range.check_in_subnet(end)?;
            if to_u128(end) < to_u128(range.range_start) {
                return Err(RangeError::EndBeforeStart {
                    start: range.range_start,
                    end,
                    subnet,
                });
            }
            range.range_end = end;
        }
        Ok(range)
    }

    /// True if `ip` lies in `range_start..=range_end` (host-local's `Range.Contains`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        same_family(ip, self.range_start)
            && to_u128(self.range_start) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.range_end)
    }

    /// True for an IPv4 range.
    pub fn is_ipv4(&self) -> bool {
        self.range_start.is_ipv4()
    }

    /// True if the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        same_family(self.range_start, other.range_start)
            && to_u128(self.range_start).max(to_u128(other.range_start))
                <= to_u128(self.range_end).min(to_u128(other.range_end))
    }

    fn check_in_subnet(&self, ip: IpAddr) -> Result<(), RangeError> {
        let subnet = self.subnet;
        if !same_family(ip, subnet.addr()) {
            return Err(RangeError::WrongFamily { ip, subnet });
        }
        if !subnet.contains(&ip) {
            return Err(RangeError::Outside { ip, subnet });
        }
        Ok(())
    }
}

/// host-local's `Range.String()`: `start-end`.
impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

fn check_subnet(subnet: IpNet) -> Result<IpNet, RangeError> {
    let subnet = match subnet {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            // Go canonicalises a mapped address to IPv4, keeping the IPv4 part of the mask.
            Some(v4) if v6.prefix_len() >= 96 => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                .expect("a prefix of 96..=128 leaves an IPv4 prefix of 0..=32"),
            _ => subnet,
        },
        IpNet::V4(_) => subnet,
    };
    if subnet.prefix_len() > subnet.max_prefix_len() - 2 {
        return Err(RangeError::TooSmall(subnet));
    }
    if subnet.addr() != subnet.network() {
        return Err(RangeError::HostBits(subnet));
    }
    Ok(subnet)
}

/// Last address of the subnet, excluding the IPv4 broadcast.
fn default_end(subnet: IpNet) -> IpAddr {
    let last = subnet.broadcast();
    match last {
        IpAddr::V4(_) => from_u128(to_u128(last) - 1, last),
        IpAddr::V6(_) => last,
    }
}

/// A list of ranges of one address family; one address is allocated per set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// Validates a set as host-local's `RangeSet.Canonicalize` does: not empty, one family,
    /// no two ranges overlapping. The ranges themselves are already canonical.
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, RangeError> {
        let Some(first) = ranges.first() else {
            return Err(RangeError::EmptySet);
        };
        if ranges.iter().any(|r| r.is_ipv4() != first.is_ipv4()) {
            return Err(RangeError::MixedFamilies);
        }
        for (i, r1) in ranges.iter().enumerate() {
            if let Some(r2) = ranges[i + 1..].iter().find(|r2| r1.overlaps(r2)) {
                return Err(RangeError::Overlap(Box::new((r1.clone(), r2.clone()))));
            }
        }
        Ok(RangeSet(ranges))
    }

    /// The first range containing `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// True if a range of the set contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// True for an IPv4 set (sets are single-family).
    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(Range::is_ipv4)
    }

    /// True if any range of `self` overlaps any range of `other`.
    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|r| other.0.iter().any(|o| r.overlaps(o)))
    }
}

/// host-local's `RangeSet.String()`: ranges joined by `,`.
impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Converts a range-level error into a config error at `field`, its message the reason.
pub(crate) fn invalid_at(field: &str) -> impl Fn(RangeError) -> IpamError + '_ {
    move |e| IpamError::invalid(field, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn v4_defaults() {
        let r = Range::new(net("10.1.2.0/24"), None, None, None).unwrap();
        assert_eq!(r.range_start, ip("10.1.2.1"));
        assert_eq!(r.range_end, ip("10.1.2.254"));
        assert_eq!(r.gateway, Some(ip("10.1.2.1")));
        assert_eq!(r.to_string(), "10.1.2.1-10.1.2.254");
    }

    #[test]
    fn v6_defaults_end_at_last_address() {
        let r = Range::new(net("2001:db8:1::/64"), None, None, None).unwrap();
        assert_eq!(r.range_start, ip("2001:db8:1::1"));
        assert_eq!(r.range_end, ip("2001:db8:1::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway, Some(ip("2001:db8:1::1")));
    }

    #[test]
    fn too_small_subnets_rejected() {
        for s in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            let err = Range::new(net(s), None, None, None).unwrap_err();
            assert_eq!(err, RangeError::TooSmall(net(s)));
            assert_eq!(
                err.to_string(),
                format!("Network {s} too small to allocate from")
            );
        }
        // A mapped IPv6 subnet is checked as the IPv4 subnet it stands for.
        let err = Range::new(net("::ffff:10.0.0.0/127"), None, None, None).unwrap_err();
        assert_eq!(err, RangeError::TooSmall(net("10.0.0.0/31")));
        Range::new(net("10.0.0.0/30"), None, None, None).unwrap();
        Range::new(net("fd00::/126"), None, None, None).unwrap();
    }

    #[test]
    fn host_bits_rejected() {
        let err = Range::new(net("10.1.2.3/24"), None, None, None).unwrap_err();
        assert_eq!(err, RangeError::HostBits(net("10.1.2.3/24")));
        assert_eq!(
            err.to_string(),
            "Network has host bits set. For a subnet mask of length 24 the network address is 10.1.2.0"
        );
    }

    #[test]
    fn start_end_gateway_validated() {
        let n = net("10.1.2.0/24");
        let err = Range::new(n, Some(ip("10.1.3.5")), None, None).unwrap_err();
        assert_eq!(
            err,
            RangeError::Outside {
                ip: ip("10.1.3.5"),
                subnet: n
            }
        );
        assert_eq!(err.to_string(), "10.1.3.5 not in network 10.1.2.0/24");
        let err = Range::new(n, None, Some(ip("fd00::5")), None).unwrap_err();
        assert!(matches!(err, RangeError::WrongFamily { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "IP fd00::5 is not the same protocol as subnet 10.1.2.0/24"
        );
        let err = Range::new(n, Some(ip("10.1.2.50")), Some(ip("10.1.2.40")), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.1.2.40 is in network 10.1.2.0/24 but before start 10.1.2.50"
        );
        let err = Range::new(n, None, None, Some(ip("10.9.9.9"))).unwrap_err();
        assert_eq!(
            err,
            RangeError::GatewayOutside {
                gateway: ip("10.9.9.9"),
                subnet: n
            }
        );
        assert_eq!(
            err.to_string(),
            "gateway 10.9.9.9 not in network 10.1.2.0/24"
        );
        let err = Range::new(n, None, None, Some(ip("fd00::1"))).unwrap_err();
        assert!(matches!(err, RangeError::GatewayOutside { .. }), "{err:?}");
        let r = Range::new(
            n,
            Some(ip("10.1.2.10")),
            Some(ip("10.1.2.20")),
            Some(ip("10.1.2.254")),
        )
        .unwrap();
        assert_eq!(r.to_string(), "10.1.2.10-10.1.2.20");
        assert!(r.contains(ip("10.1.2.10")) && r.contains(ip("10.1.2.20")));
        assert!(!r.contains(ip("10.1.2.9")) && !r.contains(ip("10.1.2.21")));
        assert!(
            r.contains(ip("::ffff:10.1.2.15")),
            "mapped addresses are canonicalised"
        );
    }

    #[test]
    fn set_validation() {
        let a = Range::new(net("10.1.2.0/24"), None, None, None).unwrap();
        let b = Range::new(net("10.1.3.0/24"), None, None, None).unwrap();
        let c = Range::new(net("fd00::/64"), None, None, None).unwrap();
        let half = Range::new(net("10.1.2.0/24"), Some(ip("10.1.2.200")), None, None).unwrap();
        assert_eq!(RangeSet::new(vec![]).unwrap_err(), RangeError::EmptySet);
        assert_eq!(RangeError::EmptySet.to_string(), "empty range set");
        let err = RangeSet::new(vec![a.clone(), c.clone()]).unwrap_err();
        assert_eq!(err, RangeError::MixedFamilies);
        assert_eq!(err.to_string(), "mixed address families");
        let err = RangeSet::new(vec![a.clone(), half.clone()]).unwrap_err();
        assert_eq!(err, RangeError::Overlap(Box::new((a.clone(), half))));
        assert_eq!(
            err.to_string(),
            "subnets 10.1.2.1-10.1.2.254 and 10.1.2.200-10.1.2.254 overlap"
        );
        let set = RangeSet::new(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(set.to_string(), "10.1.2.1-10.1.2.254,10.1.3.1-10.1.3.254");
        assert!(set.overlaps(&RangeSet(vec![b])));
        assert!(!set.overlaps(&RangeSet(vec![c])));
    }
}
