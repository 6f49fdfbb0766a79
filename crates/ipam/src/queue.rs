//! The node's durable delete queue: DELs that `trestled` could not take when they came.
//!
//! A DEL must succeed while the daemon is down or restarting (a pod otherwise stays stuck
//! Terminating, aws/amazon-vpc-cni-k8s#2487), yet its address must not be handed out again
//! before the release is applied. So the plugin writes the release here and exits 0; the
//! address stays allocated in the daemon's store, and the daemon applies the queue when it
//! starts and then every second (Cilium's delete queue works the same way).
//!
//! One file per DEL, `<queued_at_ns>-<hash>.del`, holding JSON; written to a temporary name and
//! renamed, so a plugin killed at any instant leaves either a whole entry or a `.tmp-*` file the
//! daemon removes. `queued_at_ns` is CLOCK_BOOTTIME: the daemon releases only allocations made
//! before it, so a late-applied DEL never frees a later ADD of the same attachment. Entries are
//! void after a reboot like the allocations they name; keep the queue on tmpfs (`/run`).

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IpamError;
use crate::store::Attachment;

/// The default queue directory.
pub const DEFAULT_QUEUE_DIR: &str = "/run/trestle/ipam-queue";

/// One queued release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRelease {
    /// Network name.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// CLOCK_BOOTTIME when the DEL was queued, in nanoseconds.
    pub queued_at_ns: u64,
}

impl QueuedRelease {
    /// The attachment it releases.
    pub fn attachment(&self) -> Attachment {
        Attachment::new(self.container_id.clone(), self.ifname.clone())
    }
}

/// A queue file and what it holds (or why it could not be read).
pub type Listed = (PathBuf, Result<QueuedRelease, String>);

/// The queue directory.
#[derive(Debug, Clone)]
pub struct DeleteQueue {
    dir: PathBuf,
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// CLOCK_BOOTTIME in nanoseconds: comparable across processes of one boot, and it keeps
/// counting through a suspend.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is always available on Linux");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl DeleteQueue {
    /// The queue in `dir` (created when the first entry is written).
    pub fn new(dir: impl Into<PathBuf>) -> DeleteQueue {
        DeleteQueue { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues a release durably (against the death of any process; the file is not fsynced:
    /// after a power loss the allocation it names is void too).
    pub fn push(&self, entry: &QueuedRelease) -> Result<PathBuf, IpamError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| IpamError::io("create", &self.dir, e))?;
        let json = serde_json::to_vec(entry).expect("a QueuedRelease always serializes");
        let name = format!(
            "{:020}-{:016x}.del",
            entry.queued_at_ns,
            fnv(&[&entry.network, &entry.container_id, &entry.ifname])
        );
        let tmp = self.dir.join(format!(".tmp-{name}-{}", std::process::id()));
        let path = self.dir.join(name);
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            IpamError::io("write", &path, e)
        })?;
        Ok(path)
    }

    /// The queued releases, oldest first, each with its file. Unreadable or garbled entries
    /// are returned as errors for the caller to log and remove; a missing directory is an
    /// empty queue. Left-over temporary files older than a minute are removed.
    pub fn list(&self) -> Result<Vec<Listed>, IpamError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IpamError::io("read", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                remove_if_stale(&path);
                continue;
            }
            if !name.ends_with(".del") {
                continue;
            }
            let parsed = fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<QueuedRelease>(&b).map_err(|e| e.to_string())
            });
            out.push((path, parsed));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes an applied entry; one already gone is fine.
    pub fn remove(&self, path: &Path) -> Result<(), IpamError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(IpamError::io("remove", path, e)),
            _ => Ok(()),
        }
    }
}

fn remove_if_stale(path: &Path) {
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 60);
    if old {
        let _ = fs::remove_file(path);
    }
}

/// FNV-1a over the parts, with a separator no part can contain.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, at: u64) -> QueuedRelease {
        QueuedRelease {
            network: "n".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            queued_at_ns: at,
        }
    }

    #[test]
    fn entries_come_back_oldest_first_and_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeleteQueue::new(dir.path().join("q"));
        assert!(
            q.list().unwrap().is_empty(),
            "a missing directory is an empty queue"
        );
        q.push(&entry("b", 20)).unwrap();
        q.push(&entry("a", 10)).unwrap();
        let listed = q.list().unwrap();
        let ids: Vec<_> = listed
            .iter()
            .map(|(_, e)| e.clone().unwrap().container_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        for (path, _) in &listed {
            q.remove(path).unwrap();
            q.remove(path).unwrap();
        }
        assert!(q.list().unwrap().is_empty());
    }

    #[test]
    fn garbage_is_reported_and_temporaries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeleteQueue::new(dir.path());
        fs::write(dir.path().join("1-x.del"), b"{not json").unwrap();
        fs::write(dir.path().join(".tmp-2-y.del-1"), b"{}").unwrap();
        let listed = q.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].1.is_err());
        assert!(
            dir.path().join(".tmp-2-y.del-1").exists(),
            "a fresh temporary stays"
        );
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(a > 0 && b >= a);
    }
}
