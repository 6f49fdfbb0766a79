//! Shared helpers: the expected loss of writing a result in an older version,
//! written independently of the crate's converters.

#![allow(dead_code)]

use cni_proto::{CniResult, Interface, IpConfig, Route, Version};

/// Drops the 1.1-only interface and route fields.
pub fn strip_v11(r: &CniResult) -> CniResult {
    CniResult {
        interfaces: r
            .interfaces
            .iter()
            .map(|i| Interface {
                mtu: None,
                socket_path: None,
                pci_id: None,
                ..i.clone()
            })
            .collect(),
        routes: r.routes.iter().map(dst_gw_only).collect(),
        ..r.clone()
    }
}

fn dst_gw_only(rt: &Route) -> Route {
    Route {
        dst: rt.dst,
        gw: rt.gw,
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    }
}

/// The 0.1/0.2 projection: first v4 ip then first v6 ip (no interface index),
/// each family's routes (dst/gw) only if that family kept an ip, v4 routes first;
/// no interfaces; dns kept. `None` when no ip survives (the write must fail).
pub fn legacy_projection(r: &CniResult) -> Option<CniResult> {
    let mut out = CniResult {
        dns: r.dns.clone(),
        ..CniResult::default()
    };
    for v4 in [true, false] {
        let Some(ip) = r.ips.iter().find(|ip| ip.address.addr().is_ipv4() == v4) else {
            continue;
        };
        out.ips.push(IpConfig {
            address: ip.address,
            gateway: ip.gateway,
            interface: None,
        });
        out.routes.extend(
            r.routes
                .iter()
                .filter(|rt| rt.dst.addr().is_ipv4() == v4)
                .map(dst_gw_only),
        );
    }
    (!out.ips.is_empty()).then_some(out)
}

/// What `r` should look like after a trip through version `v`.
pub fn project(r: &CniResult, v: Version) -> Option<CniResult> {
    match v {
        Version::V1_1_0 => Some(r.clone()),
        Version::V0_1_0 | Version::V0_2_0 => legacy_projection(r),
        _ => Some(strip_v11(r)),
    }
}

/// Reads a golden file as JSON.
pub fn golden(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}
