//! libcni's result cache: one file per attachment, `<cacheDir>/results/<network>-<containerID>-<ifname>`, holding
//! the config list, the runtime arguments and the final ADD result (`"kind": "cniCacheV1"`). Same names, modes and
//! JSON as libcni, so trestlectl and a runtime (podman, containerd, CRI-O) read each other's attachments.

use crate::error::RuntimeError;
use crate::rtconf::RuntimeConf;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The `kind` of a current cache file.
pub const CACHE_KIND: &str = "cniCacheV1";

/// The default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAttachment {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// The container ID.
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The config list's bytes (base64 in the file, as Go encodes `[]byte`).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// The interface name.
    #[serde(rename = "ifName")]
    pub ifname: String,
    /// The network name.
    #[serde(rename = "networkName")]
    pub network: String,
    /// The netns path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// `CNI_ARGS` pairs.
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments.
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    /// The final ADD result, in the version the last plugin answered in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl CachedAttachment {
    /// The runtime arguments the attachment was added with.
    pub fn runtime_conf(&self) -> RuntimeConf {
        RuntimeConf {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self.cni_args.clone(),
            capability_args: self.capability_args.clone(),
        }
    }
}

/// The cache under one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// What a cache file holds.
pub enum Entry {
    /// A `cniCacheV1` file.
    Current(Box<CachedAttachment>),
    /// An old cache file that is a bare result.
    Legacy(Value),
}

impl Cache {
    /// The cache rooted at `dir` (libcni's `cacheDir`; results live in `dir/results`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// The results directory.
    pub fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// The file of one attachment; libcni refuses to name it without all three parts.
    pub fn path(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<PathBuf, RuntimeError> {
        if network.is_empty() || container_id.is_empty() || ifname.is_empty() {
            return Err(RuntimeError::Cache {
                path: self.results_dir(),
                msg: format!(
                    "cache file path requires network name ({network:?}), container ID ({container_id:?}), and interface name ({ifname:?})"
                ),
            });
        }
        Ok(self
            .results_dir()
            .join(format!("{network}-{container_id}-{ifname}")))
    }

    /// Writes an attachment (dir 0700, file 0600), atomically so a concurrent reader never sees half a file.
    pub fn write(&self, a: &CachedAttachment) -> Result<PathBuf, RuntimeError> {
        let path = self.path(&a.network, &a.container_id, &a.ifname)?;
        let fail = |e: std::io::Error| RuntimeError::Cache {
            path: path.clone(),
            msg: e.to_string(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.results_dir())
            .map_err(fail)?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
            std::process::id()
        ));
        let bytes = serde_json::to_vec(a).expect("a cache entry serialises");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(&bytes).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(path)
    }

    /// Reads an attachment's file; `None` when there is none.
    pub fn read(&self, network: &str, rt: &RuntimeConf) -> Result<Option<Entry>, RuntimeError> {
        let path = self.path(network, &rt.container_id, &rt.ifname)?;
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        parse_entry(&bytes)
            .map(Some)
            .map_err(|e| RuntimeError::Cache {
                path,
                msg: format!("failed to unmarshal: {e}"),
            })
    }

    /// Removes an attachment's file; a missing one is fine.
    pub fn remove(&self, network: &str, rt: &RuntimeConf) {
        if let Ok(path) = self.path(network, &rt.container_id, &rt.ifname) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Every current-format attachment, sorted by file name, optionally of one container (libcni's
    /// `GetCachedAttachments`); unreadable and legacy files are passed over.
    pub fn attachments(
        &self,
        container_id: Option<&str>,
    ) -> Result<Vec<CachedAttachment>, RuntimeError> {
        let dir = self.results_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::io(format!("reading {}", dir.display()), e)),
        };
        let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        Ok(files
            .iter()
            .filter(|p| !is_temp(p))
            .filter_map(|p| match parse_entry(&std::fs::read(p).ok()?).ok()? {
                Entry::Current(a) => Some(*a),
                Entry::Legacy(_) => None,
            })
            .filter(|a| container_id.is_none_or(|c| a.container_id == c))
            .filter(|a| !a.ifname.is_empty() && !a.network.is_empty())
            .collect())
    }
}

fn is_temp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// A cache file's entry; the error is the JSON decoder's (the file is not JSON, or not a `cniCacheV1` entry).
fn parse_entry(bytes: &[u8]) -> Result<Entry, serde_json::Error> {
    let v: Value = serde_json::from_slice(bytes)?;
    if v.get("kind").and_then(Value::as_str) != Some(CACHE_KIND) {
        return Ok(Entry::Legacy(v));
    }
    serde_json::from_value(v).map(|a| Entry::Current(Box::new(a)))
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        // Go writes a nil []byte as null.
        let s: Option<String> = Option::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.unwrap_or_default())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
