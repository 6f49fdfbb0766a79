//! `trestlectl add|del|check|gc|status|ls`: the runtime side, as `cnitool` and libcni-based runtimes do it, reading
//! and writing the same conf dir, plugin path and result cache.

use cni_runtime::{Cni, GcAttachment, InvalidArgsPair, NetworkList, RuntimeConf, RuntimeError};
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};
use std::path::PathBuf;

/// Where configs, plugins and the cache are.
#[derive(Debug, Clone)]
pub struct Locations {
    /// The conf dir (`NETCONFPATH`, default `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Plugin directories (`CNI_PATH`, default `/opt/cni/bin`).
    pub cni_path: Vec<PathBuf>,
    /// The cache dir (default `/var/lib/cni`).
    pub cache_dir: PathBuf,
}

impl Locations {
    /// The runtime over these locations.
    pub fn cni(&self) -> Cni {
        Cni::new(self.cni_path.clone(), &self.cache_dir)
    }

    /// Loads network `name` from the conf dir.
    pub fn load(&self, name: &str) -> Result<NetworkList, RuntimeError> {
        cni_runtime::conf::load(&self.conf_dir, name)
    }
}

/// Why the command-line arguments of an attachment do not describe a runtime conf.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `CAP_ARGS` is JSON, but not an object.
    #[error("CAP_ARGS must be a JSON object")]
    CapArgsNotObject,
    /// `CAP_ARGS` is not JSON.
    #[error("CAP_ARGS is not JSON")]
    CapArgsNotJson(#[source] serde_json::Error),
    /// `CNI_ARGS` holds a pair that is not `KEY=VALUE`.
    #[error("bad CNI_ARGS")]
    CniArgs(#[source] InvalidArgsPair),
}

/// The arguments of one attachment, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct AttachArgs {
    /// The netns: a path, or a name under `/var/run/netns`.
    pub netns: String,
    /// The container ID (default: derived from the netns path, as cnitool does).
    pub container_id: Option<String>,
    /// The interface name.
    pub ifname: String,
    /// `CNI_ARGS` text.
    pub cni_args: String,
    /// Capability arguments as a JSON object (`CAP_ARGS`).
    pub cap_args: Option<String>,
}

impl AttachArgs {
    /// The runtime conf these arguments describe.
    pub fn runtime_conf(&self) -> Result<RuntimeConf, Error> {
        let netns = netns_path(&self.netns);
        let capability_args = match &self.cap_args {
            None => Map::new(),
            Some(s) if s.trim().is_empty() => Map::new(),
            Some(s) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(Error::CapArgsNotObject),
                Err(e) => return Err(Error::CapArgsNotJson(e)),
            },
        };
        Ok(RuntimeConf {
            container_id: self
                .container_id
                .clone()
                .unwrap_or_else(|| cnitool_container_id(&netns)),
            netns,
            ifname: self.ifname.clone(),
            args: RuntimeConf::parse_args(&self.cni_args).map_err(Error::CniArgs)?,
            capability_args,
        })
    }
}

/// A netns given by name lives under `/var/run/netns` (where `ip netns` puts it).
pub fn netns_path(s: &str) -> String {
    if s.is_empty() || s.contains('/') {
        s.to_owned()
    } else {
        format!("/var/run/netns/{s}")
    }
}

/// cnitool's container ID for a netns path: `cnitool-` and the first hex digits of its SHA-512 (25 characters), so
/// an attachment made by either tool can be deleted by the other.
pub fn cnitool_container_id(netns: &str) -> String {
    let hex: String = Sha512::digest(netns.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("cnitool-{hex}")[..25].to_owned()
}

/// Parses `--valid CONTAINER/IFNAME` (the interface defaults to `eth0`).
pub fn parse_valid(s: &str) -> GcAttachment {
    let (c, i) = s.split_once('/').unwrap_or((s, "eth0"));
    GcAttachment {
        container_id: c.to_owned(),
        ifname: i.to_owned(),
    }
}

/// One row of `trestlectl ls`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Network name.
    pub network: String,
    /// Container ID.
    pub container_id: String,
    /// Interface.
    pub ifname: String,
    /// Netns path.
    pub netns: String,
    /// Addresses in the cached result.
    pub addresses: Vec<String>,
}

/// The cached attachments, optionally of one network.
pub fn cached(
    loc: &Locations,
    network: Option<&str>,
) -> Result<Vec<cni_runtime::CachedAttachment>, RuntimeError> {
    let mut all = loc.cni().cache.attachments(None)?;
    all.retain(|a| network.is_none_or(|n| a.network == n));
    Ok(all)
}

/// The cached attachments as `ls` rows.
pub fn list(loc: &Locations, network: Option<&str>) -> Result<Vec<Row>, RuntimeError> {
    Ok(cached(loc, network)?
        .into_iter()
        .map(|a| Row {
            addresses: a.result.as_ref().map(addresses).unwrap_or_default(),
            network: a.network,
            container_id: a.container_id,
            ifname: a.ifname,
            netns: a.netns,
        })
        .collect())
}

/// The rows as an aligned table.
pub fn table(rows: &[Row]) -> String {
    let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.network.clone(),
                r.container_id.clone(),
                r.ifname.clone(),
                dash(r.addresses.join(",")),
                dash(r.netns.clone()),
            ]
        })
        .collect();
    crate::table::table(
        &["NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "NETNS"],
        &rows,
    )
}

/// The addresses of a result of any version (`ips[].address`, or 0.1/0.2's `ip4.ip`/`ip6.ip`).
fn addresses(result: &Value) -> Vec<String> {
    let mut out: Vec<String> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str().map(str::to_owned))
        .collect();
    for key in ["ip4", "ip6"] {
        if let Some(ip) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            out.push(ip.to_owned());
        }
    }
    out
}

/// A `CNI_PATH`-style list (`:`-separated) as directories; an empty one means `/opt/cni/bin`.
pub fn cni_path_dirs(s: &str) -> Vec<PathBuf> {
    if s.is_empty() {
        return vec![PathBuf::from("/opt/cni/bin")];
    }
    std::env::split_paths(s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_matches_cnitool() {
        // cnitool: fmt.Sprintf("cnitool-%x", sha512.Sum512([]byte(netns)))[:25]
        let id = cnitool_container_id("/var/run/netns/testing");
        assert_eq!(id.len(), 25);
        assert!(id.starts_with("cnitool-"));
        let full: String = Sha512::digest(b"/var/run/netns/testing")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(&id[8..], &full[..17]);
    }

    #[test]
    fn netns_names_resolve_under_var_run() {
        assert_eq!(netns_path("pod1"), "/var/run/netns/pod1");
        assert_eq!(netns_path("/proc/1/ns/net"), "/proc/1/ns/net");
        assert_eq!(netns_path(""), "");
    }

    #[test]
    fn valid_attachments_parse() {
        assert_eq!(parse_valid("abc").ifname, "eth0");
        assert_eq!(parse_valid("abc/net1").ifname, "net1");
        assert_eq!(parse_valid("abc/net1").container_id, "abc");
    }

    #[test]
    fn cap_args_must_be_an_object() {
        let mut a = AttachArgs {
            netns: "x".into(),
            ifname: "eth0".into(),
            cap_args: Some(r#"{"portMappings":[]}"#.into()),
            ..Default::default()
        };
        assert!(a
            .runtime_conf()
            .unwrap()
            .capability_args
            .contains_key("portMappings"));
        a.cap_args = Some("[1]".into());
        assert!(matches!(a.runtime_conf(), Err(Error::CapArgsNotObject)));
        a.cap_args = Some("{".into());
        assert!(matches!(a.runtime_conf(), Err(Error::CapArgsNotJson(_))));
        a.cap_args = None;
        a.cni_args = "novalue".into();
        let e = a.runtime_conf().unwrap_err();
        assert_eq!(
            cni_proto::error_chain(&e),
            "bad CNI_ARGS: invalid CNI_ARGS pair \"novalue\": want KEY=VALUE"
        );
    }

    #[test]
    fn addresses_of_every_result_shape() {
        let modern =
            serde_json::json!({"ips":[{"address":"10.0.0.2/24"},{"address":"fd00::2/64"}]});
        assert_eq!(addresses(&modern), ["10.0.0.2/24", "fd00::2/64"]);
        let legacy = serde_json::json!({"ip4":{"ip":"10.0.0.3/24"}});
        assert_eq!(addresses(&legacy), ["10.0.0.3/24"]);
    }

    #[test]
    fn table_aligns() {
        let rows = [Row {
            network: "n".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: String::new(),
            addresses: vec!["10.0.0.2/24".into()],
        }];
        let t = table(&rows);
        assert_eq!(t.lines().count(), 2);
        assert!(t
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("n        c1         eth0"));
    }
}
