//! Continuous leak repair, and the delete queue's replay.
//!
//! An allocation is a leak when its network namespace is gone and no DEL came (a runtime that
//! crashed, a node agent that lost the DEL). The daemon recorded the namespace's identity, its
//! inode, at Allocate; a namespace is alive while anything holds it: a process or thread in it,
//! an open descriptor, or a bind mount in any mount namespace. Each round stats the recorded
//! path first (cheap, and enough while the pod lives); only if that does not show the same
//! inode does it scan `/proc` for every live namespace. An allocation found dead becomes a
//! candidate, is re-checked after the grace period, and is released only if it is still dead
//! and unchanged. An allocation whose namespace is unknown (inode 0) is never touched: only
//! its DEL or a GC frees it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trestle_ipam_core::{Attachment, DeleteQueue};

use crate::daemon::Daemon;
use crate::metrics;
use crate::state::Record;

/// Leak repair's settings.
#[derive(Debug, Clone, Copy)]
pub struct RepairSettings {
    /// Time between rounds.
    pub interval: Duration,
    /// How long an allocation stays a candidate before it is released.
    pub grace: Duration,
}

type Key = (String, IpAddr);

/// Runs leak repair forever (only as root: another user's view of /proc misses namespaces
/// that other users' processes hold, and would call live pods dead).
pub async fn run(daemon: Arc<Daemon>, settings: RepairSettings) {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        log::warn!("leak repair is off: trestled does not run as root");
    }
    let mut candidates: HashMap<Key, (Record, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        daemon.expire_cooling();
        if !root {
            continue;
        }
        let d = daemon.clone();
        let mut c = std::mem::take(&mut candidates);
        let due = tokio::task::spawn_blocking(move || {
            let due = find(&d, &mut c, settings.grace);
            (c, due)
        })
        .await;
        let Ok((c, due)) = due else { continue };
        candidates = c;
        metrics::reconciliation();
        for ((network, ip), rec) in due {
            candidates.remove(&(network.clone(), ip));
            match daemon.reclaim(&network, ip, &rec).await {
                Ok(true) => {
                    metrics::reclaimed("netns-gone", 1);
                    log::info!(
                        "reclaimed network={network} address={ip} container={} ifname={} netns={}: namespace gone",
                        rec.container_id, rec.ifname, rec.netns
                    );
                }
                Ok(false) => {}
                Err(e) => log::warn!("reclaim of {network}/{ip}: {e}"),
            }
        }
    }
}

/// One round: updates the candidates and returns those due for release (re-checked).
fn find(
    daemon: &Daemon,
    candidates: &mut HashMap<Key, (Record, Instant)>,
    grace: Duration,
) -> Vec<(Key, Record)> {
    let snapshot: Vec<(Key, Record)> = {
        let st = daemon.lock();
        st.pools
            .iter()
            .flat_map(|(n, p)| {
                p.by_ip
                    .iter()
                    .map(move |(ip, r)| ((n.clone(), *ip), r.clone()))
            })
            .filter(|(_, r)| r.netns_inode != 0)
            .collect()
    };
    let present: HashSet<&Key> = snapshot.iter().map(|(k, _)| k).collect();
    candidates.retain(|k, (rec, _)| {
        present.contains(k) && snapshot.iter().any(|(k2, r)| k2 == k && r == rec)
    });
    let suspects: Vec<&(Key, Record)> =
        snapshot.iter().filter(|(_, r)| !alive_at_path(r)).collect();
    if suspects.is_empty() {
        candidates.clear();
        return Vec::new();
    }
    let Some(live) = live_namespaces() else {
        log::warn!("leak repair: cannot read /proc; skipping this round");
        return Vec::new();
    };
    let now = Instant::now();
    let mut dead_now = HashSet::new();
    for (key, rec) in suspects {
        if live.contains(&rec.netns_inode) {
            candidates.remove(key);
            continue;
        }
        dead_now.insert(key.clone());
        candidates.entry(key.clone()).or_insert_with(|| {
            metrics::candidates(1);
            log::info!(
                "candidate network={} address={} container={} netns={}: namespace gone, releasing after {:?}",
                key.0, key.1, rec.container_id, rec.netns, grace
            );
            (rec.clone(), now)
        });
    }
    candidates.retain(|k, _| dead_now.contains(k));
    let due: Vec<(Key, Record)> = candidates
        .iter()
        .filter(|(_, (_, since))| now.duration_since(*since) >= grace)
        .map(|(k, (r, _))| (k.clone(), r.clone()))
        .collect();
    if due.is_empty() {
        return due;
    }
    // The re-check just before release: a fresh scan.
    let Some(live) = live_namespaces() else {
        return Vec::new();
    };
    due.into_iter()
        .filter(|(_, r)| !alive_at_path(r) && !live.contains(&r.netns_inode))
        .collect()
}

/// True if the recorded path still names the recorded namespace.
fn alive_at_path(r: &Record) -> bool {
    !r.netns.is_empty() && std::fs::metadata(&r.netns).is_ok_and(|m| m.ino() == r.netns_inode)
}

/// The inodes of every network namespace something on this machine holds: processes and
/// threads in them, open descriptors, and nsfs bind mounts of every mount namespace that has
/// a process. `None` when the view cannot be trusted (no /proc, or it does not even show this
/// process's own namespace): then nothing may be called dead.
pub fn live_namespaces() -> Option<HashSet<u64>> {
    let mut live = HashSet::new();
    let mut mount_namespaces = HashSet::new();
    let own = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let name = p.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = p.path();
        if let Ok(m) = std::fs::metadata(dir.join("ns/net")) {
            live.insert(m.ino());
        }
        if let Ok(tasks) = std::fs::read_dir(dir.join("task")) {
            for t in tasks.flatten() {
                if let Ok(m) = std::fs::metadata(t.path().join("ns/net")) {
                    live.insert(m.ino());
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                if let Some(ino) = std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| net_inode(&l))
                {
                    live.insert(ino);
                }
            }
        }
        let mnt = std::fs::metadata(dir.join("ns/mnt"))
            .map(|m| m.ino())
            .unwrap_or(0);
        if mount_namespaces.insert(mnt) {
            if let Ok(text) = std::fs::read_to_string(dir.join("mountinfo")) {
                live.extend(text.lines().filter_map(mountinfo_netns));
            }
        }
    }
    live.contains(&own).then_some(live)
}

/// `net:[4026532000]` → 4026532000.
fn net_inode(link: &Path) -> Option<u64> {
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The namespace of an nsfs bind mount in a mountinfo line: its root field is `net:[ino]`.
fn mountinfo_netns(line: &str) -> Option<u64> {
    let (_, fstype) = line.split_once(" - ")?;
    if !fstype.starts_with("nsfs ") {
        return None;
    }
    net_inode(Path::new(line.split(' ').nth(3)?))
}

/// Why the queue directory cannot be trusted, if it cannot: anyone who can write it can free
/// any pod's address, so it must be the daemon's own and closed to others.
fn untrusted(dir: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(dir).ok()?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.is_dir() || m.uid() != me || m.permissions().mode() & 0o022 != 0 {
        return Some(format!(
            "{} must be a directory owned by uid {me} and writable by it alone",
            dir.display()
        ));
    }
    None
}

/// Applies every queued DEL; returns how many allocations it released. A queue that cannot
/// be trusted is not read, and says so (log, metric, STATUS warnings) until it is fixed.
pub async fn apply_queue(daemon: &Daemon, queue: &DeleteQueue) -> usize {
    // The directory is read on a blocking thread: never on one of the runtime's workers.
    let q = queue.clone();
    let listed = tokio::task::spawn_blocking(move || match untrusted(q.dir()) {
        Some(why) => Err(why),
        None => Ok(q.list()),
    })
    .await;
    let entries = match listed {
        Ok(Ok(Ok(e))) => {
            daemon.warn("delete_queue_untrusted", None);
            e
        }
        Ok(Err(why)) => {
            daemon.warn(
                "delete_queue_untrusted",
                Some(format!("delete queue ignored: {why}")),
            );
            return 0;
        }
        Ok(Ok(Err(e))) => {
            log::warn!("delete queue: {e}");
            return 0;
        }
        Err(_) => return 0,
    };
    let mut released = 0;
    for (path, entry) in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(why) => {
                log::warn!(
                    "delete queue: dropping unreadable {}: {why}",
                    path.display()
                );
                remove(queue, path).await;
                continue;
            }
        };
        let valid = trestle_ipam_api::convert::network(&entry.network).is_ok()
            && cni_like_attachment(&entry.attachment());
        if !valid {
            log::warn!("delete queue: dropping invalid {}", path.display());
            remove(queue, path).await;
            continue;
        }
        match daemon
            .release(
                &entry.network,
                &entry.attachment(),
                Some(entry.queued_at_ns),
            )
            .await
        {
            Ok(freed) => {
                released += freed.len();
                log::info!(
                    "delete queue: release network={} container={} ifname={} addresses={freed:?}",
                    entry.network,
                    entry.container_id,
                    entry.ifname
                );
                remove(queue, path).await;
            }
            // Left in the queue for the next round.
            Err(e) => log::warn!("delete queue: {}: {e}", path.display()),
        }
    }
    metrics::reclaimed("queue", released);
    released
}

/// Removes a queue entry, on a blocking thread.
async fn remove(queue: &DeleteQueue, path: std::path::PathBuf) {
    let q = queue.clone();
    let done = tokio::task::spawn_blocking(move || q.remove(&path)).await;
    if let Ok(Err(e)) = done {
        log::warn!("delete queue: {e}");
    }
}

fn cni_like_attachment(att: &Attachment) -> bool {
    let proto = trestle_ipam_api::convert::attachment_to_proto(att);
    trestle_ipam_api::convert::attachment(Some(&proto), "attachment").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links_and_mounts_parse() {
        assert_eq!(net_inode(Path::new("net:[4026532001]")), Some(4026532001));
        assert_eq!(net_inode(Path::new("mnt:[4026532001]")), None);
        assert_eq!(net_inode(Path::new("socket:[1]")), None);
        let line = "610 29 0:4 net:[4026532801] /run/netns/x rw shared:1 - nsfs nsfs rw";
        assert_eq!(mountinfo_netns(line), Some(4026532801));
        let other = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw";
        assert_eq!(mountinfo_netns(other), None);
    }

    #[test]
    fn this_process_namespace_is_live() {
        let me = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(live_namespaces().unwrap().contains(&me));
    }
}
