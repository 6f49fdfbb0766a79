//! `trestlectl install`: what a Kubernetes network add-on's install step does. Copies the plugin binaries into a
//! CNI bin dir and writes the network's conflist into a conf dir, each file written beside its target and renamed
//! over it, so a runtime never execs half a binary or reads half a config. Running it twice changes nothing.

use cni_runtime::NetworkList;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The binaries a node needs.
pub const BINARIES: [&str; 2] = ["trestle", "trestle-ipam"];

/// What to install.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the binaries are now.
    pub from: PathBuf,
    /// The CNI bin dir.
    pub bin_dir: PathBuf,
    /// The CNI conf dir.
    pub conf_dir: PathBuf,
    /// The conflist's file name.
    pub file_name: String,
    /// The conflist, as bytes.
    pub config: Vec<u8>,
    /// Overwrite a file that configures another plugin.
    pub force: bool,
}

/// What happened to each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Written (new or different).
    Written(PathBuf),
    /// Already identical.
    Unchanged(PathBuf),
}

/// Install errors.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The config is not a usable conflist.
    #[error("config")]
    Config(#[source] cni_runtime::RuntimeError),
    /// The config's plugin list is empty.
    #[error("config: no plugins")]
    NoPlugins,
    /// The target config belongs to another plugin.
    #[error("refusing to overwrite {path}: it configures plugin {plugin:?}, not trestle (pass --force to replace it)")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its first plugin's type.
        plugin: String,
    },
    /// A file operation failed; the OS error is the source.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The default network: one trestle bridge with masquerade and trestle-ipam on `subnet`.
pub fn default_config(name: &str, bridge: &str, subnet: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": name,
        "plugins": [{
            "type": "trestle",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "trestle-ipam",
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    });
    let mut out = serde_json::to_vec_pretty(&v).expect("JSON serialises");
    out.push(b'\n');
    out
}

/// Installs the binaries and the config.
pub fn run(opts: &Options) -> Result<Vec<Change>, InstallError> {
    let list = NetworkList::from_bytes(&opts.config, "config").map_err(InstallError::Config)?;
    if list.plugins.is_empty() {
        return Err(InstallError::NoPlugins);
    }
    let conf_path = opts.conf_dir.join(&opts.file_name);
    if !opts.force {
        refuse_foreign(&conf_path)?;
    }
    let mut changes = Vec::new();
    for bin in BINARIES {
        let bytes = read(&opts.from.join(bin))?;
        changes.push(put(&opts.bin_dir.join(bin), &bytes, 0o755)?);
    }
    changes.push(put(&conf_path, &opts.config, 0o644)?);
    Ok(changes)
}

/// Refuses when `path` holds a config whose first plugin is not trestle (or that is not a config at all).
fn refuse_foreign(path: &Path) -> Result<(), InstallError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    let plugin = NetworkList::from_bytes(&bytes, "")
        .or_else(|_| NetworkList::from_plugin_bytes(&bytes, ""))
        .ok()
        .and_then(|l| l.plugins.first()?.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "(unreadable)".into());
    if plugin == "trestle" {
        Ok(())
    } else {
        Err(InstallError::Foreign {
            path: path.to_owned(),
            plugin,
        })
    }
}

/// Writes `bytes` to `path` unless it already holds them: a temporary file beside it, then a rename.
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<Change, InstallError> {
    let io = |source| InstallError::Io {
        path: path.to_owned(),
        source,
    };
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(Change::Unchanged(path.to_owned()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A dot name with a non-config extension: a runtime scanning the dir never loads it.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    Ok(Change::Written(path.to_owned()))
}

fn read(path: &Path) -> Result<Vec<u8>, InstallError> {
    std::fs::read(path).map_err(|source| InstallError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Options) {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join("build");
        std::fs::create_dir(&from).unwrap();
        for b in BINARIES {
            std::fs::write(from.join(b), format!("binary {b}")).unwrap();
        }
        let opts = Options {
            from,
            bin_dir: d.path().join("bin"),
            conf_dir: d.path().join("net.d"),
            file_name: "10-trestle.conflist".into(),
            config: default_config("trestle", "trestle0", "10.88.0.0/16"),
            force: false,
        };
        (d, opts)
    }

    #[test]
    fn installs_then_changes_nothing() {
        let (_d, opts) = setup();
        let first = run(&opts).unwrap();
        assert!(
            first.iter().all(|c| matches!(c, Change::Written(_))),
            "{first:?}"
        );
        let second = run(&opts).unwrap();
        assert!(
            second.iter().all(|c| matches!(c, Change::Unchanged(_))),
            "{second:?}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(opts.bin_dir.join("trestle"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let list = cni_runtime::conf::load(&opts.conf_dir, "trestle").unwrap();
        assert_eq!(list.cni_version, "1.1.0");
        assert_eq!(list.plugins[0]["type"], "trestle");
        let leftovers: Vec<_> = std::fs::read_dir(&opts.conf_dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
    }

    #[test]
    fn updates_its_own_config_but_not_another_plugins() {
        let (_d, mut opts) = setup();
        run(&opts).unwrap();
        opts.config = default_config("trestle", "trestle0", "10.99.0.0/16");
        assert!(matches!(run(&opts).unwrap()[2], Change::Written(_)));
        let target = opts.conf_dir.join(&opts.file_name);
        let foreign = r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"calico"}]}"#;
        std::fs::write(&target, foreign).unwrap();
        let e = run(&opts).unwrap_err();
        assert!(e.to_string().contains("calico"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), foreign);
        opts.force = true;
        run(&opts).unwrap();
        assert_ne!(std::fs::read_to_string(&target).unwrap(), foreign);
    }

    #[test]
    fn rejects_a_config_that_is_not_a_conflist() {
        let (_d, mut opts) = setup();
        opts.config = br#"{"name":"x","plugins":[]}"#.to_vec();
        assert!(matches!(
            run(&opts),
            Err(InstallError::Config(_) | InstallError::NoPlugins)
        ));
        assert!(
            !opts.bin_dir.exists(),
            "nothing installed from a bad config"
        );
    }
}
