//! Network config lists, loaded from a conf dir exactly as libcni loads them: `.conflist` files in sorted order,
//! first match by name; then legacy single-plugin `.conf`/`.json` files, up-converted to a one-plugin list; plugin
//! files under `<dir>/<name>/*.conf` appended unless `loadOnlyInlinedPlugins`; the version is the highest of
//! `cniVersion` and `cniVersions` that this runtime speaks.

use crate::error::RuntimeError;
use crate::semver;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A plugin object of a list (the JSON object as written, unknown keys included).
pub type PluginConf = Map<String, Value>;

/// A network config list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// `name`.
    pub name: String,
    /// The selected version (may be empty for a legacy config without one).
    pub cni_version: String,
    /// `disableCheck`.
    pub disable_check: bool,
    /// `disableGC`.
    pub disable_gc: bool,
    /// `loadOnlyInlinedPlugins`.
    pub load_only_inlined_plugins: bool,
    /// The plugins, in chain order.
    pub plugins: Vec<PluginConf>,
    /// The list's bytes as read (cached with each attachment).
    pub bytes: Vec<u8>,
}

impl NetworkList {
    /// Parses a `.conflist` document; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<NetworkList, RuntimeError> {
        let bad = |msg: String| RuntimeError::config(origin, msg);
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("error parsing configuration list: {e}")))?;
        let raw = raw
            .as_object()
            .ok_or_else(|| bad("error parsing configuration list: not an object".into()))?;
        let name = match raw.get("name") {
            None => return Err(bad("error parsing configuration list: no name".into())),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(bad(
                    "error parsing configuration list: invalid name type".into()
                ))
            }
        };
        let cni_version = select_version(raw).map_err(|e| bad(e.to_string()))?;
        let flag = |key: &str| read_bool(raw, key).map_err(|e| bad(e.to_string()));
        let mut list = NetworkList {
            name,
            cni_version,
            disable_check: flag("disableCheck")?,
            disable_gc: flag("disableGC")?,
            load_only_inlined_plugins: flag("loadOnlyInlinedPlugins")?,
            plugins: Vec::new(),
            bytes: bytes.to_vec(),
        };
        match raw.get("plugins") {
            None if list.load_only_inlined_plugins => Err(bad(
                "error parsing configuration list: `loadOnlyInlinedPlugins` is true, and no 'plugins' key".into(),
            )),
            None => Ok(list),
            Some(Value::Array(ps)) if ps.is_empty() => Err(bad(
                "error parsing configuration list: no plugins in list".into(),
            )),
            Some(Value::Array(ps)) => {
                for (i, p) in ps.iter().enumerate() {
                    list.plugins
                        .push(plugin_conf(p).map_err(|e| bad(format!("plugin {i}: {e}")))?);
                }
                Ok(list)
            }
            Some(_) => Err(bad(
                "error parsing configuration list: invalid 'plugins' type".into(),
            )),
        }
    }

    /// Up-converts a legacy single-plugin config (`.conf`), as libcni's `ConfListFromConf`.
    pub fn from_plugin_bytes(bytes: &[u8], origin: &str) -> Result<NetworkList, RuntimeError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            RuntimeError::config(origin, format!("error parsing configuration: {e}"))
        })?;
        let plugin = plugin_conf(&raw).map_err(|e| RuntimeError::config(origin, e.to_string()))?;
        let text = |k: &str| {
            plugin
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        // Keys in Go's (sorted) order, so the cached bytes match what libcni would cache.
        let mut list = Map::new();
        list.insert("cniVersion".into(), text("cniVersion").into());
        list.insert("name".into(), text("name").into());
        list.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
        let bytes = serde_json::to_vec(&list).expect("a JSON map serialises");
        NetworkList::from_bytes(&bytes, origin)
    }

    /// Reads a `.conflist` file, appending `<dir>/<name>/*.conf` plugin files unless `loadOnlyInlinedPlugins`.
    pub fn from_file(path: &Path) -> Result<NetworkList, RuntimeError> {
        let bytes = read(path)?;
        let mut list = NetworkList::from_bytes(&bytes, &path.display().to_string())?;
        if !list.load_only_inlined_plugins {
            let dir = path.parent().unwrap_or(Path::new(".")).join(&list.name);
            for file in conf_files(&dir, &["conf"])? {
                let raw: Value = serde_json::from_slice(&read(&file)?).map_err(|e| {
                    RuntimeError::config(
                        file.display().to_string(),
                        format!("error parsing configuration: {e}"),
                    )
                })?;
                let p = plugin_conf(&raw)
                    .map_err(|e| RuntimeError::config(file.display().to_string(), e.to_string()))?;
                list.plugins.push(p);
            }
        }
        if list.plugins.is_empty() {
            return Err(RuntimeError::config(
                path.display().to_string(),
                "no plugin configs found",
            ));
        }
        Ok(list)
    }
}

/// Loads network `name` from `dir` (libcni's `LoadConfList`).
pub fn load(dir: &Path, name: &str) -> Result<NetworkList, RuntimeError> {
    for file in conf_files(dir, &["conflist"])? {
        let list = NetworkList::from_file(&file)?;
        if list.name == name {
            return Ok(list);
        }
    }
    for file in conf_files(dir, &["conf", "json"])? {
        let list = NetworkList::from_plugin_bytes(&read(&file)?, &file.display().to_string())?;
        if list.name == name {
            return Ok(list);
        }
    }
    Err(RuntimeError::NotFound {
        dir: dir.to_owned(),
        name: name.to_owned(),
    })
}

/// Regular files of `dir` with one of `exts`, sorted by name; a missing dir has none.
pub fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, RuntimeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RuntimeError::io(format!("reading {}", dir.display()), e)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.contains(&x))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path)
        .map_err(|e| RuntimeError::io(format!("error reading {}", path.display()), e))
}

/// Why a plugin object or a list's version or flag is refused; the messages are libcni's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ConfError {
    /// A plugin config that is not a JSON object.
    #[error("error parsing configuration: not an object")]
    PluginNotObject,
    /// A plugin config without a non-empty string `type`.
    #[error("error parsing configuration: missing 'type'")]
    MissingType,
    /// `cniVersion` is not a string.
    #[error("error parsing configuration list: invalid cniVersion type")]
    VersionType,
    /// `cniVersion` is not a version.
    #[error("error parsing configuration list: invalid cniVersion {0}")]
    BadVersion(String),
    /// `cniVersions` is not an array.
    #[error("error parsing configuration list: invalid type for cniVersions")]
    VersionsType,
    /// An entry of `cniVersions` is not a string.
    #[error("error parsing configuration list: invalid type for cniVersions index {0}")]
    VersionsEntryType(usize),
    /// An entry of `cniVersions` is not a version.
    #[error(
        "error parsing configuration list: invalid cniVersions entry {entry} at index {index}"
    )]
    BadVersionsEntry {
        /// The entry as written.
        entry: String,
        /// Its index.
        index: usize,
    },
    /// A boolean key holds a string that is not `true` or `false`.
    #[error("error parsing configuration list: invalid value {value:?} for {key}")]
    BoolValue {
        /// The key.
        key: String,
        /// The string found.
        value: String,
    },
    /// A boolean key holds neither a boolean nor a string.
    #[error("error parsing configuration list: invalid type for {0}")]
    BoolType(String),
}

fn plugin_conf(v: &Value) -> Result<PluginConf, ConfError> {
    let obj = v.as_object().ok_or(ConfError::PluginNotObject)?;
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => Ok(obj.clone()),
        _ => Err(ConfError::MissingType),
    }
}

/// The highest of `cniVersion` and `cniVersions`, ignoring versions newer than this runtime's (1.1.0).
fn select_version(raw: &Map<String, Value>) -> Result<String, ConfError> {
    let base = match raw.get("cniVersion") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ConfError::VersionType),
    };
    let Some(list) = raw.get("cniVersions") else {
        return Ok(base);
    };
    let list = list.as_array().ok_or(ConfError::VersionsType)?;
    let mut candidates = Vec::new();
    for (index, v) in list.iter().enumerate() {
        let s = v.as_str().ok_or(ConfError::VersionsEntryType(index))?;
        let parsed = semver::parse(s).ok_or_else(|| ConfError::BadVersionsEntry {
            entry: s.to_owned(),
            index,
        })?;
        candidates.push((parsed, s.to_owned()));
    }
    if !base.is_empty() {
        let parsed = semver::parse(&base).ok_or_else(|| ConfError::BadVersion(base.clone()))?;
        candidates.push((parsed, base.clone()));
    }
    Ok(candidates
        .into_iter()
        .filter(|(v, _)| *v <= semver::CURRENT)
        .max_by_key(|(v, _)| *v)
        .map(|(_, s)| s)
        .unwrap_or(base))
}

fn read_bool(raw: &Map<String, Value>, key: &str) -> Result<bool, ConfError> {
    match raw.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.to_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ConfError::BoolValue {
                key: key.to_owned(),
                value: s.clone(),
            }),
        },
        Some(_) => Err(ConfError::BoolType(key.to_owned())),
    }
}

#[cfg(test)]
mod tests;
