//! The 0.3.0+ result shape: `interfaces`, `ips`, `routes`, `dns`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::{null_default, require_objects, WireInterface, WireIp, WireRoute};
use super::{decode_error, CniResult, Dns};
use crate::{CniError, Version};

#[derive(Debug, Serialize, Deserialize)]
struct Modern {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    interfaces: Vec<WireInterface>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    ips: Vec<WireIp>,
    /// 0.3.0's spec text says `ip`; Go and everyone else use `ips`. Read both.
    #[serde(default, deserialize_with = "null_default", skip_serializing)]
    ip: Vec<WireIp>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    routes: Vec<WireRoute>,
    /// Go's 0.x type always writes `dns`, 1.x drops it when empty.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Option::is_none"
    )]
    dns: Option<Dns>,
}

/// Places where Go expects objects.
const OBJECT_PATHS: [&[&str]; 6] = [
    &[],
    &["interfaces", "*"],
    &["ips", "*"],
    &["ip", "*"],
    &["routes", "*"],
    &["dns"],
];

pub(super) fn parse(v: &Value) -> Result<CniResult, CniError> {
    for path in OBJECT_PATHS {
        require_objects(v, path).map_err(|e| decode_error("result", e))?;
    }
    let m = Modern::deserialize(v).map_err(|e| decode_error("result", e))?;
    let ips = if m.ips.is_empty() { m.ip } else { m.ips };
    Ok(CniResult {
        interfaces: m
            .interfaces
            .into_iter()
            .map(WireInterface::into_model)
            .collect(),
        ips: ips.into_iter().map(WireIp::into_model).collect(),
        routes: m.routes.into_iter().map(WireRoute::into_model).collect(),
        dns: m.dns.unwrap_or_default(),
    })
}

pub(super) fn to_value(r: &CniResult, version: Version) -> Value {
    let v11 = version >= Version::V1_1_0;
    let labelled = version < Version::V1_0_0;
    let m = Modern {
        interfaces: r
            .interfaces
            .iter()
            .map(|i| WireInterface::from_model(i, v11))
            .collect(),
        ips: r
            .ips
            .iter()
            .map(|ip| WireIp::from_model(ip, labelled))
            .collect(),
        ip: Vec::new(),
        routes: r
            .routes
            .iter()
            .map(|rt| WireRoute::from_model(rt, v11))
            .collect(),
        dns: (labelled || !r.dns.is_empty()).then(|| r.dns.clone()),
    };
    serde_json::to_value(m).expect("result types always serialise")
}
