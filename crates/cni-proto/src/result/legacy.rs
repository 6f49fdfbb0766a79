//! The 0.1.0/0.2.0 result shape: at most one `ip4` and one `ip6`, routes per family.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::{ip_empty_none, null_default, require_objects, WireRoute};
use super::{decode_error, CniResult, Dns, IpConfig, Route};
use crate::{CniError, ErrorCode};

#[derive(Debug, Serialize, Deserialize)]
struct LegacyIp {
    ip: ipnet::IpNet,
    #[serde(
        default,
        deserialize_with = "ip_empty_none",
        skip_serializing_if = "Option::is_none"
    )]
    gateway: Option<std::net::IpAddr>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    routes: Vec<WireRoute>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Legacy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<LegacyIp>,
    /// Always written, `{}` when empty, like Go's 0.x types.
    #[serde(default, deserialize_with = "null_default")]
    dns: Dns,
}

/// Places where Go expects objects.
const OBJECT_PATHS: [&[&str]; 6] = [
    &[],
    &["ip4"],
    &["ip6"],
    &["ip4", "routes", "*"],
    &["ip6", "routes", "*"],
    &["dns"],
];

/// Up-conversion as in Go: `ip4` then `ip6` become `ips` (no interface), and their
/// routes are concatenated in the same order.
pub(super) fn parse(v: &Value) -> Result<CniResult, CniError> {
    for path in OBJECT_PATHS {
        require_objects(v, path).map_err(|e| decode_error("result", e))?;
    }
    let l = Legacy::deserialize(v).map_err(|e| decode_error("result", e))?;
    let mut r = CniResult {
        dns: l.dns,
        ..CniResult::default()
    };
    for ip in [l.ip4, l.ip6].into_iter().flatten() {
        r.ips.push(IpConfig {
            address: ip.ip,
            gateway: ip.gateway,
            interface: None,
        });
        r.routes
            .extend(ip.routes.into_iter().map(WireRoute::into_model));
    }
    Ok(r)
}

/// Lossy down-conversion as in Go: the first address of each family, that family's
/// routes (dst and gw only, and only if it has an address); interfaces are lost.
pub(super) fn to_value(r: &CniResult) -> Result<Value, CniError> {
    let first = |v4: bool| {
        r.ips
            .iter()
            .find(|ip| ip.address.addr().is_ipv4() == v4)
            .map(|ip| LegacyIp {
                ip: ip.address,
                gateway: ip.gateway,
                routes: family_routes(&r.routes, v4),
            })
    };
    let l = Legacy {
        ip4: first(true),
        ip6: first(false),
        dns: r.dns.clone(),
    };
    if l.ip4.is_none() && l.ip6.is_none() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            "cannot convert: no valid IP addresses",
        ));
    }
    Ok(serde_json::to_value(l).expect("result types always serialise"))
}

fn family_routes(routes: &[Route], v4: bool) -> Vec<WireRoute> {
    routes
        .iter()
        .filter(|rt| rt.dst.addr().is_ipv4() == v4)
        .map(|rt| WireRoute::from_model(rt, false))
        .collect()
}
