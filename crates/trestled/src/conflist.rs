//! The node's CNI conflist, written by the daemon itself once it can serve (`--cni-conflist-source`,
//! `--cni-conflist-path`). A runtime starts pods on a node as soon as a conflist is in its conf dir, so writing it
//! before the daemon is ready lets pods start without a network (a mistake of several add-ons); removing it on stop
//! turns the node NotReady for the length of every upgrade (another). So the file appears only when the daemon is
//! ready, is replaced atomically when its source changes, and is never removed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;

/// How often readiness is looked at before the file was first written (a node is NotReady until then).
const UNTIL_WRITTEN: Duration = Duration::from_millis(200);
/// How often afterwards: a ConfigMap update reaches the source within about a minute anyway.
const AFTER_WRITTEN: Duration = Duration::from_secs(30);

/// Why the conflist could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source cannot be read.
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// The source is not a conflist.
    #[error("{} is not a CNI conflist: {why}", .0.display(), why = .1)]
    Invalid(PathBuf, &'static str),
    /// Writing or renaming failed.
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
}

/// The conflist to keep on the node.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where its contents come from (a mounted ConfigMap, say).
    pub source: PathBuf,
    /// The file a runtime reads, in its conf dir.
    pub path: PathBuf,
}

impl Target {
    /// Reads and checks the source: a JSON object with a name, a cniVersion and at least one plugin with a type.
    pub fn load(&self) -> Result<Vec<u8>, Error> {
        let bytes = std::fs::read(&self.source).map_err(|e| Error::Read(self.source.clone(), e))?;
        check(&bytes).map_err(|why| Error::Invalid(self.source.clone(), why))?;
        Ok(bytes)
    }

    /// Makes the file hold the source's contents, unless it already does. True when it was written.
    pub fn sync(&self) -> Result<bool, Error> {
        let want = self.load()?;
        if std::fs::read(&self.path).is_ok_and(|have| have == want) {
            return Ok(false);
        }
        replace(&self.path, &want).map_err(|e| Error::Write(self.path.clone(), e))?;
        Ok(true)
    }
}

/// What makes a conflist usable by a runtime; the plugins check the rest at ADD.
fn check(bytes: &[u8]) -> Result<(), &'static str> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "not JSON")?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
    text("name").ok_or("no name")?;
    text("cniVersion").ok_or("no cniVersion")?;
    let plugins = v
        .get("plugins")
        .and_then(|p| p.as_array())
        .filter(|p| !p.is_empty())
        .ok_or("no plugins")?;
    if plugins
        .iter()
        .any(|p| p.get("type").and_then(|t| t.as_str()).is_none())
    {
        return Err("a plugin without a type");
    }
    Ok(())
}

/// Writes `data` beside `path` and renames it over `path`, so a runtime reads the old file or the new one, never
/// half of one. The temporary name ends in `.tmp`, an extension libcni does not load.
fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    remove_stale(dir, &name);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself must survive a crash too.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes temporary files an earlier daemon left beside the conflist when it was killed mid-write (one daemon runs
/// per node: its state directory is locked).
fn remove_stale(dir: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Keeps `target` written while the daemon runs: first as soon as the daemon is ready, then again whenever the
/// file or its source changes (and the daemon is ready). Never returns; never removes the file.
pub async fn keep(daemon: Arc<Daemon>, target: Target) {
    let mut written = false;
    // The last error logged: a lasting one (a read-only conf dir) is logged once, not every look.
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(if written {
            AFTER_WRITTEN
        } else {
            UNTIL_WRITTEN
        })
        .await;
        if daemon.not_ready().is_some() {
            continue;
        }
        let t = target.clone();
        match tokio::task::spawn_blocking(move || t.sync()).await {
            Ok(Ok(changed)) => {
                if changed {
                    log::info!("wrote {}", target.path.display());
                }
                written = true;
                last_error.clear();
            }
            Ok(Err(e)) => {
                let said = chain(&e);
                if said != last_error {
                    log::error!("{said} (the node's runtime sees no network until it is written)");
                    last_error = said;
                }
            }
            Err(e) => log::error!("writing {}: {e}", target.path.display()),
        }
    }
}

/// An error and its sources, each once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"trestle","plugins":[{"type":"trestle"}]}"#;

    fn target(dir: &Path, source: &str) -> Target {
        std::fs::write(dir.join("source"), source).unwrap();
        Target {
            source: dir.join("source"),
            path: dir.join("05-trestle.conflist"),
        }
    }

    #[test]
    fn writes_once_and_skips_identical() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), GOOD);
        assert!(t.sync().unwrap());
        assert_eq!(std::fs::read_to_string(&t.path).unwrap(), GOOD);
        let before = std::fs::metadata(&t.path).unwrap().modified().unwrap();
        assert!(!t.sync().unwrap());
        assert_eq!(
            std::fs::metadata(&t.path).unwrap().modified().unwrap(),
            before
        );
        // Nothing but the source and the conflist: the temporary file is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_temporary_file_left_by_a_killed_daemon_goes() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), GOOD);
        std::fs::write(dir.path().join(".05-trestle.conflist.12345.tmp"), "half").unwrap();
        assert!(t.sync().unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn replaces_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), GOOD);
        std::fs::write(&t.path, "old").unwrap();
        assert!(t.sync().unwrap());
        assert_eq!(std::fs::read_to_string(&t.path).unwrap(), GOOD);
    }

    #[test]
    fn refuses_a_source_that_is_not_a_conflist() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "{",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
        ] {
            let t = target(dir.path(), bad);
            assert!(matches!(t.sync(), Err(Error::Invalid(..))), "{bad}");
            assert!(!t.path.exists(), "{bad}");
        }
    }

    #[test]
    fn a_missing_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target {
            source: dir.path().join("absent"),
            path: dir.path().join("c"),
        };
        assert!(matches!(t.sync(), Err(Error::Read(..))));
    }
}
