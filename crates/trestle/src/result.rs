//! The L3 part of ADD's result: gateways and default routes the config asks for, and the checks that refuse a
//! result the kernel would refuse part-way, before any link is made. Pure: no I/O.

use crate::config::BridgeConfig;
use cni_proto::{CniError, CniResult, ErrorCode, Route};
use ipnet::IpNet;
use std::net::IpAddr;

/// The smallest MTU the kernel gives an Ethernet device (`ETH_MIN_MTU`).
pub const MIN_MTU: u32 = 68;

/// The smallest MTU that carries IPv6 (RFC 8200); below it the kernel turns IPv6 off on the device.
pub const MIN_IPV6_MTU: u32 = 1280;

/// Fills gateways (network+1 when IPAM gave none and the bridge is the gateway) and the default routes.
pub fn prepare(cfg: &BridgeConfig, result: &mut CniResult) {
    if !cfg.is_gateway {
        return;
    }
    for ip in &mut result.ips {
        if ip.gateway.is_none() {
            ip.gateway = nth_host(&ip.address, 1);
        }
    }
    if !cfg.is_default_gateway {
        return;
    }
    for ip in result.ips.clone() {
        let default = default_route(&ip.address);
        let has_default = result
            .routes
            .iter()
            .any(|r| r.dst == default && r.gw.is_some());
        if !has_default {
            result.routes.push(Route {
                dst: default,
                gw: ip.gateway,
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            });
        }
    }
}

fn default_route(of: &IpNet) -> IpNet {
    match of {
        IpNet::V4(_) => IpNet::V4(Default::default()),
        IpNet::V6(_) => IpNet::V6(Default::default()),
    }
}

/// The `n`th address of the network containing `addr`; `None` past the end of the address space.
pub fn nth_host(addr: &IpNet, n: u8) -> Option<IpAddr> {
    let candidate = match addr.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).checked_add(u32::from(n))?.into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).checked_add(u128::from(n))?.into()),
    };
    addr.contains(&candidate).then_some(candidate)
}

/// The gateway addresses the bridge needs, with the pod subnet's prefix.
pub fn gateway_addrs(result: &CniResult) -> Vec<IpNet> {
    result
        .ips
        .iter()
        .filter_map(|ip| IpNet::new(ip.gateway?, ip.address.prefix_len()).ok())
        .collect()
}

/// The addresses of `addrs` that stand in the way of gateway address `want` (the reference's rule: one IPv4
/// address; IPv6 addresses may coexist when their subnets do not overlap).
pub fn conflicting(addrs: &[IpNet], want: &IpNet) -> Vec<IpNet> {
    addrs
        .iter()
        .copied()
        .filter(|a| a != want && a.addr().is_ipv4() == want.addr().is_ipv4())
        .filter(|a| match a {
            IpNet::V4(_) => true,
            IpNet::V6(_) => {
                !is_link_local(a.addr()) && (a.contains(&want.addr()) || want.contains(&a.addr()))
            }
        })
        .collect()
}

/// IPv6 link-local addresses are the kernel's: never a conflict, always on-link.
fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

fn invalid(what: impl std::fmt::Display) -> CniError {
    CniError::new(
        ErrorCode::InvalidConfig,
        format!("invalid IPAM result: {what}"),
    )
}

/// Refuses a result that the kernel would refuse half-way through ADD: addresses that cannot be the pod's,
/// gateways that cannot be reached, routes that collide or cannot be installed, IPv6 on a link too small for it.
pub fn validate(cfg: &BridgeConfig, result: &CniResult) -> Result<(), CniError> {
    for (i, ip) in result.ips.iter().enumerate() {
        for other in &result.ips[..i] {
            if other.address.addr() == ip.address.addr() {
                return Err(invalid(format!(
                    "address {} given twice",
                    ip.address.addr()
                )));
            }
        }
        if let Some(gw) = ip.gateway {
            if gw.is_ipv4() != ip.address.addr().is_ipv4() {
                return Err(invalid(format!(
                    "gateway {gw} of {} is of the other family",
                    ip.address
                )));
            }
            if cfg.is_gateway && gw == ip.address.addr() {
                return Err(invalid(format!("gateway {gw} is the pod's own address")));
            }
        }
    }
    if let Some(mtu) = cfg.mtu {
        if mtu < MIN_IPV6_MTU && result.ips.iter().any(|ip| ip.address.addr().is_ipv6()) {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "invalid mtu: {mtu} is below {MIN_IPV6_MTU}, too small for the IPv6 address"
                ),
            ));
        }
    }
    for (i, route) in result.routes.iter().enumerate() {
        validate_route(result, route)?;
        if result.routes[..i].iter().any(|r| same_route(r, route)) {
            return Err(invalid(format!("route to {} given twice", route.dst)));
        }
    }
    Ok(())
}

/// A route is installed with its own gateway, or else with the gateway of the pod's address of its family.
pub fn effective_gateway(result: &CniResult, route: &Route) -> Option<IpAddr> {
    let v4 = route.dst.addr().is_ipv4();
    route.gw.or_else(|| {
        result
            .ips
            .iter()
            .find(|ip| ip.address.addr().is_ipv4() == v4)
            .and_then(|ip| ip.gateway)
    })
}

fn validate_route(result: &CniResult, route: &Route) -> Result<(), CniError> {
    let v4 = route.dst.addr().is_ipv4();
    if let Some(gw) = route.gw {
        if gw.is_ipv4() != v4 {
            return Err(invalid(format!(
                "route to {} via {gw}: gateway of the other family",
                route.dst
            )));
        }
    }
    // The kernel refuses a gateway it cannot reach on the link (ENETUNREACH).
    if let Some(gw) = effective_gateway(result, route) {
        let on_link = is_link_local(gw) || result.ips.iter().any(|ip| ip.address.contains(&gw));
        if !on_link {
            return Err(invalid(format!(
                "route to {} via {gw}: the gateway is in none of the pod's subnets",
                route.dst
            )));
        }
    }
    Ok(())
}

/// Two routes the kernel would see as one (`EEXIST`): same destination, table and metric.
fn same_route(a: &Route, b: &Route) -> bool {
    a.dst.trunc() == b.dst.trunc()
        && a.table.unwrap_or(254) == b.table.unwrap_or(254)
        && a.priority.unwrap_or(0) == b.priority.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_proto::IpConfig;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(addr: &str, gw: Option<&str>) -> IpConfig {
        IpConfig {
            address: net(addr),
            gateway: gw.map(|g| g.parse().unwrap()),
            interface: None,
        }
    }

    fn route(dst: &str, gw: Option<&str>) -> Route {
        Route {
            dst: net(dst),
            gw: gw.map(|g| g.parse().unwrap()),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    fn cfg(is_gateway: bool, is_default_gateway: bool) -> BridgeConfig {
        let mut c = crate::config::tests::minimal();
        c.is_gateway = is_gateway || is_default_gateway;
        c.is_default_gateway = is_default_gateway;
        c
    }

    #[test]
    fn nth_host_stays_in_the_network() {
        assert_eq!(
            nth_host(&net("10.1.2.7/24"), 1),
            Some("10.1.2.1".parse().unwrap())
        );
        assert_eq!(
            nth_host(&net("fd00::5/64"), 1),
            Some("fd00::1".parse().unwrap())
        );
        // The last network of the space: adding overflows, or leaves the network.
        assert_eq!(nth_host(&net("255.255.255.255/32"), 1), None);
        assert_eq!(nth_host(&net("255.255.255.254/31"), 2), None);
        assert_eq!(
            nth_host(&net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 1),
            None
        );
        assert_eq!(
            nth_host(&net("10.0.0.0/32"), 0),
            Some("10.0.0.0".parse().unwrap())
        );
    }

    #[test]
    fn prepare_adds_gateways_and_one_default_per_family() {
        let mut r = CniResult {
            ips: vec![ip("10.1.0.5/24", None), ip("fd00::5/64", Some("fd00::fe"))],
            ..CniResult::default()
        };
        prepare(&cfg(false, true), &mut r);
        assert_eq!(r.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(r.ips[1].gateway, Some("fd00::fe".parse().unwrap()));
        assert_eq!(
            r.routes,
            vec![
                route("0.0.0.0/0", Some("10.1.0.1")),
                route("::/0", Some("fd00::fe"))
            ]
        );
        // Again: nothing added twice.
        prepare(&cfg(false, true), &mut r);
        assert_eq!(r.routes.len(), 2);
        // Not a gateway: the result is left alone.
        let mut plain = CniResult {
            ips: vec![ip("10.1.0.5/24", None)],
            ..CniResult::default()
        };
        prepare(&cfg(false, false), &mut plain);
        assert_eq!((plain.ips[0].gateway, plain.routes.len()), (None, 0));
    }

    #[test]
    fn conflicts_follow_the_reference_rule() {
        let have = [
            net("10.1.0.1/24"),
            net("fd00::1/64"),
            net("fe80::1/64"),
            net("fd01::1/64"),
        ];
        assert_eq!(conflicting(&have, &net("10.1.0.1/24")), Vec::<IpNet>::new());
        assert_eq!(
            conflicting(&have, &net("10.2.0.1/24")),
            vec![net("10.1.0.1/24")]
        );
        assert_eq!(
            conflicting(&have, &net("fd00::2/64")),
            vec![net("fd00::1/64")]
        );
        assert_eq!(conflicting(&have, &net("fd02::1/64")), Vec::<IpNet>::new());
        assert_eq!(
            gateway_addrs(&CniResult {
                ips: vec![ip("10.1.0.5/24", Some("10.1.0.1"))],
                ..CniResult::default()
            }),
            vec![net("10.1.0.1/24")]
        );
    }

    #[test]
    fn validation_refuses_what_the_kernel_would() {
        let ok = CniResult {
            ips: vec![ip("10.1.0.5/24", Some("10.1.0.1"))],
            routes: vec![
                route("0.0.0.0/0", None),
                route("192.168.0.0/16", Some("10.1.0.9")),
            ],
            ..CniResult::default()
        };
        validate(&cfg(true, false), &ok).unwrap();
        let bad: Vec<(&str, CniResult, Option<u32>)> = vec![
            (
                "two default routes",
                CniResult {
                    routes: vec![
                        route("0.0.0.0/0", None),
                        route("0.0.0.0/0", Some("10.1.0.2")),
                    ],
                    ..ok.clone()
                },
                None,
            ),
            (
                "gateway of the other family",
                CniResult {
                    routes: vec![route("0.0.0.0/0", Some("fd00::1"))],
                    ..ok.clone()
                },
                None,
            ),
            (
                "unreachable gateway",
                CniResult {
                    routes: vec![route("0.0.0.0/0", Some("10.9.0.1"))],
                    ..ok.clone()
                },
                None,
            ),
            (
                "address twice",
                CniResult {
                    ips: vec![ip("10.1.0.5/24", None), ip("10.1.0.5/24", None)],
                    ..ok.clone()
                },
                None,
            ),
            (
                "gateway is the pod",
                CniResult {
                    ips: vec![ip("10.1.0.5/24", Some("10.1.0.5"))],
                    routes: vec![],
                    ..ok.clone()
                },
                None,
            ),
            (
                "ipv6 on a small link",
                CniResult {
                    ips: vec![ip("fd00::5/64", None)],
                    routes: vec![],
                    ..ok.clone()
                },
                Some(1000),
            ),
        ];
        for (what, result, mtu) in bad {
            let mut c = cfg(true, false);
            c.mtu = mtu;
            let err = validate(&c, &result).expect_err(what);
            assert_eq!(
                err.code,
                ErrorCode::InvalidConfig as u32,
                "{what}: {}",
                err.msg
            );
        }
        // A link-local IPv6 gateway is on-link.
        let ll = CniResult {
            ips: vec![ip("fd00::5/64", None)],
            routes: vec![route("::/0", Some("fe80::1"))],
            ..CniResult::default()
        };
        validate(&cfg(false, false), &ll).unwrap();
        // Same destination in another table, or with another metric, is another route.
        let mut other_table = route("0.0.0.0/0", None);
        other_table.table = Some(100);
        let tables = CniResult {
            routes: vec![route("0.0.0.0/0", None), other_table],
            ..ok.clone()
        };
        validate(&cfg(true, false), &tables).unwrap();
    }
}
