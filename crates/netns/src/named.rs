//! Namespaces bind-mounted at a path, as `ip netns add` makes them, so that other processes (the plugin
//! binaries) can be handed a `CNI_NETNS` path.

use crate::{Error, NetNs};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::{Path, PathBuf};

/// A network namespace bind-mounted at a path. Dropping it unmounts and removes the path; the namespace itself
/// dies when no process, handle or mount holds it any more.
#[derive(Debug)]
pub struct NamedNetNs {
    ns: NetNs,
    path: PathBuf,
}

impl NamedNetNs {
    /// Creates a fresh namespace and bind-mounts it at `path` (its directory is created if needed).
    pub fn create(path: impl AsRef<Path>) -> Result<NamedNetNs, Error> {
        let path = path.as_ref().to_owned();
        let mount_err = |op, source| Error::Mount {
            op,
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| mount_err("create directory for", e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| mount_err("create", e))?;
        let bound = std::thread::scope(|s| {
            s.spawn(|| -> Result<(), Error> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(Error::Create)?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| mount_err("bind-mount", e.into()))
            })
            .join()
            .map_err(|_| Error::Thread)?
        });
        if let Err(e) = bound {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let ns = NetNs::open(&path)?;
        Ok(NamedNetNs { ns, path })
    }

    /// The bind-mount path (what a runtime passes as `CNI_NETNS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace handle.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// Unmounts and removes a namespace path made by [`NamedNetNs::create`] or `ip netns add`. A missing path is
    /// not an error.
    pub fn remove(path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(Error::Mount {
                    op: "unmount",
                    path: path.to_owned(),
                    source: e.into(),
                })
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Mount {
                op: "remove",
                path: path.to_owned(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for NamedNetNs {
    fn drop(&mut self) {
        let _ = NamedNetNs::remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "privileged: needs root"]
    fn create_open_and_remove() {
        let path = std::env::temp_dir().join(format!("trestle-netns-test-{}", std::process::id()));
        let named = NamedNetNs::create(&path).unwrap();
        let again = NetNs::open(named.path()).unwrap();
        assert!(again.same_as(named.ns()));
        assert!(!named.ns().is_current().unwrap());
        drop(named);
        assert!(!path.exists());
        assert!(matches!(NetNs::open(&path), Err(Error::NotFound(_))));
    }
}
