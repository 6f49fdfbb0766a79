//! The request config a plugin reads on stdin, validated like the Go skel.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::result::wire::{null_default, require_objects};
use crate::result::{decode_error, Dns};
use crate::version::parse_semver;
use crate::{validate_network_name, CniError, CniResult, Command, ErrorCode, Version};

/// The stdin config of ADD/DEL/CHECK/GC/STATUS.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` (missing or empty means 0.1.0).
    pub cni_version: Version,
    /// `name`, already checked against the network-name rules.
    pub name: String,
    /// `type`: the plugin binary name (empty if absent; the runtime always sets it).
    pub plugin_type: String,
    /// `ipam`, unparsed: the IPAM plugin owns its keys.
    pub ipam: Option<Map<String, Value>>,
    /// `dns` from the config.
    pub dns: Option<Dns>,
    /// `prevResult`, unparsed; see [`NetConf::prev_result`].
    pub prev_result: Option<Value>,
    /// The well-known `runtimeConfig` keys (others stay in `raw`).
    pub runtime_config: RuntimeConfig,
    /// `args`, unparsed (conventions: `args.cni.*`).
    pub args: Option<Value>,
    /// The whole stdin object, for plugin-specific keys.
    pub raw: Map<String, Value>,
}

/// The well-known `runtimeConfig` capabilities this project uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `ips` capability: requested `ip[/prefix]` strings.
    #[serde(default, deserialize_with = "null_default")]
    pub ips: Vec<String>,
    /// `mac` capability.
    #[serde(default)]
    pub mac: Option<String>,
    /// `dns` capability (keys `servers`/`searches`/`options`, unlike the result's).
    #[serde(default)]
    pub dns: Option<RuntimeDns>,
    /// `ipRanges` capability, unparsed (host-local range-set shape).
    #[serde(default)]
    pub ip_ranges: Option<Value>,
}

/// The `dns` capability value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeDns {
    /// Name servers.
    #[serde(default, deserialize_with = "null_default")]
    pub servers: Vec<String>,
    /// Search domains.
    #[serde(default, deserialize_with = "null_default")]
    pub searches: Vec<String>,
    /// Resolver options.
    #[serde(default, deserialize_with = "null_default")]
    pub options: Vec<String>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    /// `containerID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// `args.cni.ips` / `args.cni.mac`, typed so a wrong shape fails at parse time.
#[derive(Debug, Default, Deserialize)]
struct ArgsCni {
    #[serde(default, deserialize_with = "null_default")]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
}

fn incompatible(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::IncompatibleVersion, msg)
}

/// Parses and validates the stdin config for `command`, in the Go skel's order:
///
/// 1. not a JSON object → 6 (`null` counts as an object without a name, as in Go);
/// 2. `name` missing/empty/invalid → 7;
/// 3. `cniVersion` not a string → 6; missing or `""` → 0.1.0;
/// 4. CHECK/GC/STATUS below 0.4.0/1.1.0 → 1 `config version does not allow X`
///    (a version too malformed to compare → 6);
/// 5. a version not exactly one of [`Version::ALL`] → 1 `incompatible CNI versions`,
///    details `config is "X", plugin supports ["0.1.0" ...]`;
/// 6. well-known keys of the wrong type → 6 naming the key.
///
/// VERSION is accepted like ADD here, but the skel ignores stdin for VERSION: reply
/// with [`crate::version_reply`] instead.
pub fn parse_request(command: Command, stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value =
        serde_json::from_slice(stdin).map_err(|e| decode_error("network config", e))?;
    let raw = match value {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(decode_error(
                "network config",
                format!("not an object: {other}"),
            ))
        }
    };
    let name = string_field(&raw, "name")?.unwrap_or_default();
    validate_network_name(&name)?;
    let version_str = string_field(&raw, "cniVersion")?.unwrap_or_default();
    check_command_version(command, &version_str)?;
    require_config_objects(&raw)?;
    let cni_version = Version::parse(if version_str.is_empty() {
        "0.1.0"
    } else {
        &version_str
    })
    .ok_or_else(|| {
        incompatible("incompatible CNI versions").with_details(incompatible_details(&version_str))
    })?;
    Ok(NetConf {
        cni_version,
        name,
        plugin_type: string_field(&raw, "type")?.unwrap_or_default(),
        ipam: typed_field(&raw, "ipam")?,
        dns: typed_field(&raw, "dns")?,
        prev_result: raw.get("prevResult").filter(|v| !v.is_null()).cloned(),
        runtime_config: typed_field(&raw, "runtimeConfig")?.unwrap_or_default(),
        args: checked_args(&raw)?,
        raw,
    })
}

/// Go's message details, with Go's `%q` list formatting.
fn incompatible_details(config: &str) -> String {
    let list: Vec<String> = Version::ALL
        .iter()
        .map(|v| format!("{:?}", v.as_str()))
        .collect();
    format!("config is {config:?}, plugin supports [{}]", list.join(" "))
}

/// The minimum config versions of the skel's CHECK/GC/STATUS branches. Like Go, this
/// compares versions numerically, so it runs before the exact-match check.
fn check_command_version(command: Command, version: &str) -> Result<(), CniError> {
    let min = match command {
        Command::Check => Version::V0_4_0,
        Command::Gc | Command::Status => Version::V1_1_0,
        _ => return Ok(()),
    };
    let semver =
        |s: &str| parse_semver(s).map_err(|e| CniError::new(ErrorCode::Decoding, e.to_string()));
    let config = semver(version)?;
    if config < semver(min.as_str())? {
        return Err(incompatible(format!(
            "config version does not allow {command}"
        )));
    }
    if config > semver(Version::LATEST.as_str())? {
        return Err(incompatible(format!(
            "plugin version does not allow {command}"
        )));
    }
    Ok(())
}

/// Well-known keys whose values must be objects (see [`require_objects`]).
const OBJECT_PATHS: [&[&str]; 6] = [
    &["ipam"],
    &["dns"],
    &["runtimeConfig"],
    &["runtimeConfig", "dns"],
    &["args"],
    &["args", "cni"],
];

fn require_config_objects(raw: &Map<String, Value>) -> Result<(), CniError> {
    let root = Value::Object(raw.clone());
    for path in OBJECT_PATHS {
        require_objects(&root, path).map_err(|e| decode_error(path[0], e))?;
    }
    Ok(())
}

fn string_field(raw: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(decode_error(key, format!("expected a string, got {other}"))),
    }
}

fn typed_field<T: serde::de::DeserializeOwned>(
    raw: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, CniError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| decode_error(key, e)),
    }
}

/// `args` must be an object when present; `args.cni.ips`/`mac` must have their types.
fn checked_args(raw: &Map<String, Value>) -> Result<Option<Value>, CniError> {
    let args = typed_field::<Map<String, Value>>(raw, "args")?;
    if let Some(cni) = args
        .as_ref()
        .and_then(|a| a.get("cni"))
        .filter(|v| !v.is_null())
    {
        ArgsCni::deserialize(cni).map_err(|e| decode_error("args.cni", e))?;
    }
    Ok(args.map(Value::Object))
}

impl NetConf {
    /// `prevResult` parsed in [`NetConf::cni_version`] (its own `cniVersion` wins).
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(|v| CniResult::parse(v, self.cni_version))
            .transpose()
    }

    fn args_cni(&self) -> ArgsCni {
        // parse_request already checked the shape; a hand-built NetConf with a bad
        // shape simply has no args.
        self.args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| ArgsCni::deserialize(c).ok())
            .unwrap_or_default()
    }

    /// `args.cni.ips`, unparsed `ip[/prefix]` strings (empty if absent).
    pub fn args_cni_ips(&self) -> Vec<String> {
        self.args_cni().ips
    }

    /// `args.cni.mac`, if set and non-empty.
    pub fn args_cni_mac(&self) -> Option<String> {
        self.args_cni().mac.filter(|m| !m.is_empty())
    }

    /// GC's attachment list: `cni.dev/valid-attachments`, else the legacy
    /// `cni.dev/attachments`; `None` if neither is present. Wrong shape → 6.
    pub fn valid_attachments(&self) -> Result<Option<Vec<Attachment>>, CniError> {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let root = Value::Object(self.raw.clone());
            require_objects(&root, &[key, "*"]).map_err(|e| decode_error(key, e))?;
            if let Some(list) = typed_field(&self.raw, key)? {
                return Ok(Some(list));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
