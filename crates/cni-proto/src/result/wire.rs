//! Serde shapes shared by the result versions, and the Go `omitempty` helpers.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::{Interface, IpConfig, Route};

/// `null` reads as the default (Go leaves a nil slice).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `""` and `null` read as `None` (Go's empty string is "unset").
pub(crate) fn empty_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// `0` and `null` read as `None` (Go's `int` with `omitempty`).
pub(crate) fn zero_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(Option::<u32>::deserialize(d)?.filter(|n| *n != 0))
}

/// `""` and `null` read as `None` (Go's `net.IP` accepts empty text as nil).
pub(crate) fn ip_empty_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

pub(crate) fn is_none_or_empty(s: &Option<String>) -> bool {
    s.as_deref().unwrap_or("").is_empty()
}

pub(crate) fn is_none_or_zero(n: &Option<u32>) -> bool {
    n.unwrap_or(0) == 0
}

/// An interface; key order follows Go's struct.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireInterface {
    pub name: String,
    #[serde(
        default,
        deserialize_with = "empty_none",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub mac: Option<String>,
    #[serde(
        default,
        deserialize_with = "zero_none",
        skip_serializing_if = "is_none_or_zero"
    )]
    pub mtu: Option<u32>,
    #[serde(
        default,
        deserialize_with = "empty_none",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub sandbox: Option<String>,
    #[serde(
        rename = "socketPath",
        default,
        deserialize_with = "empty_none",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub socket_path: Option<String>,
    #[serde(
        rename = "pciID",
        default,
        deserialize_with = "empty_none",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub pci_id: Option<String>,
}

impl WireInterface {
    /// The wire form; the 1.1-only fields are kept only if `v11`.
    pub fn from_model(i: &Interface, v11: bool) -> Self {
        WireInterface {
            name: i.name.clone(),
            mac: i.mac.clone(),
            mtu: i.mtu.filter(|_| v11),
            sandbox: i.sandbox.clone(),
            socket_path: i.socket_path.clone().filter(|_| v11),
            pci_id: i.pci_id.clone().filter(|_| v11),
        }
    }

    pub fn into_model(self) -> Interface {
        Interface {
            name: self.name,
            mac: self.mac,
            sandbox: self.sandbox,
            mtu: self.mtu,
            socket_path: self.socket_path,
            pci_id: self.pci_id,
        }
    }
}

/// An `ips[]` entry of 0.3.0+; `version` is written only below 1.0.0.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireIp {
    /// Read but ignored: the address family is authoritative (as in Go's 1.x
    /// conversions), so a missing or wrong label cannot misfile an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: ipnet::IpNet,
    #[serde(
        default,
        deserialize_with = "ip_empty_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<IpAddr>,
}

impl WireIp {
    /// The wire form; `labelled` adds the 0.3/0.4 `version` key.
    pub fn from_model(ip: &IpConfig, labelled: bool) -> Self {
        let family = if ip.address.addr().is_ipv4() {
            "4"
        } else {
            "6"
        };
        WireIp {
            version: labelled.then(|| family.into()),
            interface: ip.interface,
            address: ip.address,
            gateway: ip.gateway,
        }
    }

    pub fn into_model(self) -> IpConfig {
        IpConfig {
            address: self.address,
            gateway: self.gateway,
            interface: self.interface,
        }
    }
}

/// A route; key order follows Go's struct.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireRoute {
    pub dst: ipnet::IpNet,
    #[serde(
        default,
        deserialize_with = "ip_empty_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub gw: Option<IpAddr>,
    #[serde(
        default,
        deserialize_with = "zero_none",
        skip_serializing_if = "is_none_or_zero"
    )]
    pub mtu: Option<u32>,
    #[serde(
        default,
        deserialize_with = "zero_none",
        skip_serializing_if = "is_none_or_zero"
    )]
    pub advmss: Option<u32>,
    #[serde(
        default,
        deserialize_with = "zero_none",
        skip_serializing_if = "is_none_or_zero"
    )]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl WireRoute {
    /// The wire form; the 1.1-only fields are kept only if `v11`.
    pub fn from_model(r: &Route, v11: bool) -> Self {
        WireRoute {
            dst: r.dst,
            gw: r.gw,
            mtu: r.mtu.filter(|_| v11),
            advmss: r.advmss.filter(|_| v11),
            priority: r.priority.filter(|_| v11),
            table: r.table.filter(|_| v11),
            scope: r.scope.filter(|_| v11),
        }
    }

    pub fn into_model(self) -> Route {
        Route {
            dst: self.dst,
            gw: self.gw,
            mtu: self.mtu,
            advmss: self.advmss,
            priority: self.priority,
            table: self.table,
            scope: self.scope,
        }
    }
}

/// A value that Go's decoder would refuse because it is not an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}expected an object, got {got}")]
pub(crate) struct NotAnObject {
    /// The keys leading to the value, each followed by `": "` (empty at the top).
    at: String,
    /// The value found, as JSON.
    got: String,
}

impl NotAnObject {
    fn new(got: &serde_json::Value) -> Self {
        NotAnObject {
            at: String::new(),
            got: got.to_string(),
        }
    }

    fn under(mut self, key: &str) -> Self {
        self.at.insert_str(0, &format!("{key}: "));
        self
    }
}

/// Checks that the value at `path` (`"*"` = every element of an array) is an object
/// wherever present. Serde's derived structs also accept arrays (as tuples), which Go's
/// decoder rejects; we reject them too rather than read `["eth0"]` as an interface.
pub(crate) fn require_objects(v: &serde_json::Value, path: &[&str]) -> Result<(), NotAnObject> {
    use serde_json::Value;
    match (path.split_first(), v) {
        (_, Value::Null) => Ok(()),
        (None, Value::Object(_)) => Ok(()),
        (None, other) => Err(NotAnObject::new(other)),
        (Some((&"*", rest)), Value::Array(items)) => items
            .iter()
            .try_for_each(|item| require_objects(item, rest)),
        (Some((&"*", _)), _) => Ok(()), // a non-array fails in serde with a better message
        (Some((key, rest)), Value::Object(m)) => match m.get(*key) {
            Some(inner) => require_objects(inner, rest).map_err(|e| e.under(key)),
            None => Ok(()),
        },
        (Some(_), other) => Err(NotAnObject::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn not_an_object_names_the_keys() {
        let v = json!({"a": {"b": [1]}});
        let e = require_objects(&v, &["a", "b"]).unwrap_err();
        assert_eq!(e.to_string(), "a: b: expected an object, got [1]");
        let e = require_objects(&json!({"l": [{}, 2]}), &["l", "*"]).unwrap_err();
        assert_eq!(e.to_string(), "l: expected an object, got 2");
        assert_eq!(
            require_objects(&json!([]), &[]).unwrap_err().to_string(),
            "expected an object, got []"
        );
        require_objects(&json!({"a": null}), &["a", "b"]).unwrap();
    }
}
