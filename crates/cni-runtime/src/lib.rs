//! The runtime side of CNI, with libcni's behaviour (the part every runtime relies on): config lists from a conf
//! dir, plugins found on `CNI_PATH` and chained with `prevResult`, DEL in reverse order, the result cache that
//! CHECK and DEL read, GC of stale cached attachments followed by the plugins' GC, and STATUS.

pub mod cache;
pub mod conf;
mod error;
pub mod exec;
pub mod rtconf;
pub mod semver;

pub use cache::{Cache, CachedAttachment, Entry, CACHE_KIND, DEFAULT_CACHE_DIR};
pub use conf::{NetworkList, PluginConf};
pub use error::RuntimeError;
pub use rtconf::{InvalidArgsPair, RuntimeConf};

use cni_proto::{CniError, CniResult, ErrorCode, Version};
use serde_json::Value;
use std::path::PathBuf;

/// An attachment named as valid in a GC call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct GcAttachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// A CNI runtime: where plugins are and where results are cached.
#[derive(Debug, Clone)]
pub struct Cni {
    /// Plugin directories, searched in order.
    pub paths: Vec<PathBuf>,
    /// The cache.
    pub cache: Cache,
}

impl Cni {
    /// A runtime searching `paths` and caching under `cache_dir`.
    pub fn new(paths: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Cni {
            paths,
            cache: Cache::new(cache_dir),
        }
    }

    /// ADD through the whole list, each plugin getting the previous one's result; caches the final result.
    pub fn add(&self, list: &NetworkList, rt: &RuntimeConf) -> Result<Value, RuntimeError> {
        cni_proto::validate_container_id(&rt.container_id).map_err(RuntimeError::Invalid)?;
        cni_proto::validate_network_name(&list.name).map_err(RuntimeError::Invalid)?;
        cni_proto::validate_ifname(&rt.ifname).map_err(RuntimeError::Invalid)?;
        let mut result: Option<Value> = None;
        for plugin in &list.plugins {
            let out = self.attachment_call(list, plugin, result.as_ref(), rt, "ADD", "add")?;
            let parsed: Value = serde_json::from_slice(&out).map_err(|e| RuntimeError::Plugin {
                plugin: type_of(plugin),
                op: "add",
                error: CniError::new(ErrorCode::Decoding, "failed to decode plugin result")
                    .with_details(e.to_string()),
            })?;
            result = Some(parsed);
        }
        let result = result.unwrap_or(Value::Null);
        self.cache.write(&CachedAttachment {
            kind: CACHE_KIND.into(),
            container_id: rt.container_id.clone(),
            config: list.bytes.clone(),
            ifname: rt.ifname.clone(),
            network: list.name.clone(),
            netns: rt.netns.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: Some(result.clone()),
        })?;
        Ok(result)
    }

    /// CHECK through the list with the cached result as `prevResult` (needs 0.4.0; `disableCheck` skips it).
    pub fn check(&self, list: &NetworkList, rt: &RuntimeConf) -> Result<(), RuntimeError> {
        if !semver::at_least(&list.cni_version, (0, 4, 0)) {
            return Err(RuntimeError::CheckNotSupported(list.cni_version.clone()));
        }
        if list.disable_check {
            return Ok(());
        }
        let prev = self.cached_result(list, rt)?;
        for plugin in &list.plugins {
            self.attachment_call(list, plugin, prev.as_ref(), rt, "CHECK", "check")?;
        }
        Ok(())
    }

    /// DEL through the list in reverse order with the cached result as `prevResult` (0.4.0 on); removes the cache
    /// entry afterwards. An unreadable cache entry is dropped and DEL goes on without `prevResult`.
    pub fn del(&self, list: &NetworkList, rt: &RuntimeConf) -> Result<(), RuntimeError> {
        let mut prev = None;
        if semver::at_least(&list.cni_version, (0, 4, 0)) {
            match self.cached_result(list, rt) {
                Ok(p) => prev = p,
                Err(_) => self.cache.remove(&list.name, rt),
            }
        }
        for plugin in list.plugins.iter().rev() {
            self.attachment_call(list, plugin, prev.as_ref(), rt, "DEL", "delete")?;
        }
        // libcni removes the entry only when it read one; removing it always also clears an entry left by an
        // older-version config, which nothing else would ever clean up.
        self.cache.remove(&list.name, rt);
        Ok(())
    }

    /// GC: a full DEL for each cached attachment of the network not in `valid` (all of them when `valid` is
    /// `None`), then, from 1.1.0, GC to each plugin with `cni.dev/valid-attachments`. Errors are collected.
    pub fn gc(
        &self,
        list: &NetworkList,
        valid: Option<&[GcAttachment]>,
    ) -> Result<(), RuntimeError> {
        if list.disable_gc {
            return Ok(());
        }
        let mut errs = Vec::new();
        for a in self.cache.attachments(None)? {
            if a.network != list.name {
                continue;
            }
            let key = GcAttachment {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            };
            if valid.is_some_and(|v| v.contains(&key)) {
                continue;
            }
            if let Err(e) = self.del(list, &a.runtime_conf()) {
                errs.push(e);
            }
        }
        if semver::at_least(&list.cni_version, (1, 1, 0)) {
            for plugin in &list.plugins {
                let mut conf = plugin.clone();
                conf.insert("name".into(), list.name.clone().into());
                conf.insert("cniVersion".into(), list.cni_version.clone().into());
                if let Some(v) = valid {
                    let v = serde_json::to_value(v).expect("attachments serialise");
                    conf.insert("cni.dev/valid-attachments".into(), v.clone());
                    // Older plugins read the key's first name (CNI issue #1101).
                    conf.insert("cni.dev/attachments".into(), v);
                }
                let stdin = serde_json::to_vec(&conf).expect("a JSON map serialises");
                if let Err(e) = self.call(plugin, "GC", "gc", &stdin, &RuntimeConf::default()) {
                    errs.push(e);
                }
            }
        }
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(RuntimeError::Many(errs)),
        }
    }

    /// STATUS of each plugin in order (from 1.1.0; older lists are assumed ready); the first error is returned.
    pub fn status(&self, list: &NetworkList) -> Result<(), RuntimeError> {
        if !semver::at_least(&list.cni_version, (1, 1, 0)) {
            return Ok(());
        }
        for plugin in &list.plugins {
            let stdin = rtconf::request(plugin, &list.name, &list.cni_version, None, None);
            self.call(plugin, "STATUS", "status", &stdin, &RuntimeConf::default())?;
        }
        Ok(())
    }

    /// The cached result of an attachment, converted to the list's version (a result without `cniVersion` is
    /// taken to be in the list's version).
    pub fn cached_result(
        &self,
        list: &NetworkList,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>, RuntimeError> {
        let raw = match self.cache.read(&list.name, rt)? {
            None => return Ok(None),
            Some(Entry::Current(a)) => match a.result {
                None => return Ok(None),
                Some(r) => r,
            },
            Some(Entry::Legacy(r)) => r,
        };
        let Some(version) = Version::parse(&list.cni_version) else {
            return Ok(Some(raw));
        };
        let path = || {
            self.cache
                .path(&list.name, &rt.container_id, &rt.ifname)
                .unwrap_or_default()
        };
        let converted = CniResult::parse(&raw, version)
            .and_then(|r| r.to_value(version))
            .map_err(|e| RuntimeError::Cache {
                path: path(),
                msg: format!("failed to convert cached result to config version {version}: {e}"),
            })?;
        Ok(Some(converted))
    }

    /// `rt` completed from the attachment's cache entry, as runtimes do on DEL and CHECK with libcni's
    /// `GetNetworkListCachedConfig`: `CNI_ARGS` and capability arguments the caller did not give are the ones the
    /// attachment was added with (portmap, for one, needs its `portMappings` again to remove its rules).
    pub fn with_cached_args(&self, list: &NetworkList, mut rt: RuntimeConf) -> RuntimeConf {
        if let Ok(Some(Entry::Current(a))) = self.cache.read(&list.name, &rt) {
            if rt.args.is_empty() {
                rt.args = a.cni_args;
            }
            if rt.capability_args.is_empty() {
                rt.capability_args = a.capability_args;
            }
            if rt.netns.is_empty() {
                rt.netns = a.netns;
            }
        }
        rt
    }

    /// The versions a plugin says it supports (libcni's `GetVersionInfo`).
    pub fn version_info(&self, plugin_type: &str) -> Result<Vec<String>, RuntimeError> {
        let path = self.find(plugin_type)?;
        let args = exec::Args {
            command: "VERSION",
            netns: "dummy".into(),
            ifname: "dummy".into(),
            path: "dummy".into(),
            ..Default::default()
        };
        let fail = |error| RuntimeError::Plugin {
            plugin: plugin_type.into(),
            op: "version",
            error,
        };
        match exec::run(&path, br#"{"cniVersion":"1.1.0"}"#, &args) {
            Ok(out) => parse_version_reply(&out).map_err(fail),
            Err(exec::ExecError::Plugin(e)) if e.msg == "unknown CNI_COMMAND: VERSION" => {
                Ok(vec!["0.1.0".into()])
            }
            Err(exec::ExecError::Plugin(e)) => Err(fail(e)),
            Err(exec::ExecError::Spawn(e)) => {
                Err(RuntimeError::io(format!("running {}", path.display()), e))
            }
        }
    }

    /// One plugin's ADD, CHECK or DEL for an attachment: its request built from the list, then the call.
    fn attachment_call(
        &self,
        list: &NetworkList,
        plugin: &PluginConf,
        prev: Option<&Value>,
        rt: &RuntimeConf,
        command: &'static str,
        op: &'static str,
    ) -> Result<Vec<u8>, RuntimeError> {
        let stdin = rtconf::request(plugin, &list.name, &list.cni_version, prev, Some(rt));
        self.call(plugin, command, op, &stdin, rt)
    }

    fn find(&self, plugin_type: &str) -> Result<PathBuf, RuntimeError> {
        // The plugin side's lookup: libcni's rules, one implementation for delegation and for runtimes.
        cni_plugin::delegate::find_plugin(plugin_type, &self.paths).map_err(|_| {
            RuntimeError::PluginNotFound {
                name: plugin_type.into(),
                paths: self.paths.clone(),
            }
        })
    }

    fn call(
        &self,
        plugin: &PluginConf,
        command: &'static str,
        op: &'static str,
        stdin: &[u8],
        rt: &RuntimeConf,
    ) -> Result<Vec<u8>, RuntimeError> {
        let name = type_of(plugin);
        let path = self.find(&name)?;
        let args = exec::Args {
            command,
            container_id: rt.container_id.clone(),
            netns: rt.netns.clone(),
            ifname: rt.ifname.clone(),
            args: rt.cni_args(),
            path: std::env::join_paths(&self.paths)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        exec::run(&path, stdin, &args).map_err(|e| match e {
            exec::ExecError::Plugin(error) => RuntimeError::Plugin {
                plugin: name,
                op,
                error,
            },
            exec::ExecError::Spawn(e) => RuntimeError::io(format!("running {}", path.display()), e),
        })
    }
}

fn type_of(plugin: &PluginConf) -> String {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn parse_version_reply(out: &[u8]) -> Result<Vec<String>, CniError> {
    let v: Value = serde_json::from_slice(out).map_err(|e| {
        CniError::new(ErrorCode::Decoding, "failed to decode version reply")
            .with_details(e.to_string())
    })?;
    if let Some(list) = v.get("supportedVersions").and_then(Value::as_array) {
        return Ok(list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect());
    }
    match v.get("cniVersion").and_then(Value::as_str) {
        Some("0.2.0") => Ok(vec!["0.1.0".into(), "0.2.0".into()]),
        Some(other) => Ok(vec![other.to_owned()]),
        None => Err(CniError::new(
            ErrorCode::Decoding,
            "version reply has no cniVersion",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_replies() {
        assert_eq!(
            parse_version_reply(br#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0"]}"#)
                .unwrap(),
            ["0.4.0", "1.0.0"]
        );
        assert_eq!(
            parse_version_reply(br#"{"cniVersion":"0.2.0"}"#).unwrap(),
            ["0.1.0", "0.2.0"]
        );
        assert!(parse_version_reply(b"{}").is_err());
        assert!(parse_version_reply(b"nope").is_err());
    }

    #[test]
    fn gc_attachments_serialise_with_spec_keys() {
        let v = serde_json::to_value([GcAttachment {
            container_id: "c".into(),
            ifname: "eth0".into(),
        }])
        .unwrap();
        assert_eq!(v, serde_json::json!([{"containerID":"c","ifname":"eth0"}]));
    }
}
