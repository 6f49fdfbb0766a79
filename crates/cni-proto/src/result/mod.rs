//! The ADD result: one canonical model (the 1.1 superset) and its exact JSON shape
//! in every version.
//!
//! Reading is lenient like Go's decoders (unknown keys are ignored, `""` and `null`
//! mean "absent", 1.1 fields are kept whatever the version, the 0.3/0.4 `version`
//! label is ignored in favour of the address family); writing is exact: each version gets only its own keys, empty
//! optional fields are omitted, `0` for `mtu`/`advmss`/`priority` means unset.

mod legacy;
mod modern;
pub(crate) mod wire;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{CniError, ErrorCode, Version};

/// A CNI result: what ADD prints and what later plugins get as `prevResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces created or configured (lost when written as 0.1/0.2).
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    pub ips: Vec<IpConfig>,
    /// Routes to install.
    pub routes: Vec<Route>,
    /// DNS information; all-empty means none.
    pub dns: Dns,
}

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    pub mac: Option<String>,
    /// Netns path for container interfaces, `None` for host ones.
    pub sandbox: Option<String>,
    /// MTU (1.1.0+).
    pub mtu: Option<u32>,
    /// vhost-user or similar socket path (1.1.0+).
    pub socket_path: Option<String>,
    /// PCI address of the device (1.1.0+).
    pub pci_id: Option<String>,
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with its prefix length (host bits kept, e.g. `10.1.2.3/24`).
    pub address: ipnet::IpNet,
    /// Gateway for this subnet.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] (0.3.0+; absent in IPAM results).
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: ipnet::IpNet,
    /// Next hop; when absent the same-family `ips[].gateway` may be used.
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0+).
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0+).
    pub advmss: Option<u32>,
    /// Route priority / metric (1.1.0+).
    pub priority: Option<u32>,
    /// Routing table (1.1.0+); `Some(0)` is written, unlike the zero-means-unset fields.
    pub table: Option<u32>,
    /// Scope (1.1.0+): 0 global, 253 link, 254 host.
    pub scope: Option<u8>,
}

/// DNS settings, in a result or in the config's `dns` key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name server addresses.
    #[serde(
        default,
        deserialize_with = "wire::null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(
        default,
        deserialize_with = "wire::empty_none",
        skip_serializing_if = "wire::is_none_or_empty"
    )]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(
        default,
        deserialize_with = "wire::null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub search: Vec<String>,
    /// resolver options.
    #[serde(
        default,
        deserialize_with = "wire::null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether no field is set (an empty `domain` counts as unset).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.as_deref().unwrap_or("").is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

pub(crate) fn decode_error(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::Decoding, format!("failed to decode {what}"))
        .with_details(e.to_string())
}

impl CniResult {
    /// Reads a result in the shape of its version: the `cniVersion` inside `v` when
    /// present and non-empty, else `version` (libcni assumes the config's version).
    ///
    /// Errors: not an object or wrong field types → 6; an inner `cniVersion` this
    /// crate does not speak → 1.
    pub fn parse(v: &Value, version: Version) -> Result<CniResult, CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| decode_error("result", "not a JSON object"))?;
        let version = match obj.get("cniVersion") {
            None | Some(Value::Null) => version,
            Some(Value::String(s)) if s.is_empty() => version,
            Some(Value::String(s)) => Version::parse(s).ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("unsupported CNI result version {s:?}"),
                )
            })?,
            Some(other) => return Err(decode_error("result", format!("cniVersion {other}"))),
        };
        if version.has_legacy_result() {
            legacy::parse(v)
        } else {
            modern::parse(v)
        }
    }

    /// Reads a result from JSON bytes (e.g. a delegate's stdout); see [`CniResult::parse`].
    pub fn parse_json(bytes: &[u8], version: Version) -> Result<CniResult, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| decode_error("result", e))?;
        CniResult::parse(&v, version)
    }

    /// The result in `version`'s exact shape, `cniVersion` first.
    ///
    /// Writing 0.1.0/0.2.0 keeps the first IPv4 and first IPv6 address only and fails
    /// with code 1 when there is none: the result is valid, the requested version just
    /// cannot express it (Go fails the same way, untyped, so its plugins say 999).
    pub fn to_value(&self, version: Version) -> Result<Value, CniError> {
        let body = if version.has_legacy_result() {
            legacy::to_value(self)?
        } else {
            modern::to_value(self, version)
        };
        let mut obj = serde_json::Map::new();
        obj.insert("cniVersion".into(), version.as_str().into());
        let Value::Object(body) = body else {
            unreachable!("result shapes serialise to objects")
        };
        obj.extend(body);
        Ok(Value::Object(obj))
    }

    /// [`CniResult::to_value`] as compact JSON text.
    pub fn to_json(&self, version: Version) -> Result<String, CniError> {
        Ok(self.to_value(version)?.to_string())
    }

    /// What survives a trip through `version`: `parse(to_value(version), version)`.
    pub fn convert(&self, version: Version) -> Result<CniResult, CniError> {
        CniResult::parse(&self.to_value(version)?, version)
    }
}

#[cfg(test)]
mod tests;
