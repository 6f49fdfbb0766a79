//! Rebuilding a damaged store from what the node can prove, so that a store lost to a bad
//! disk or a stray write never hands out an address a live pod holds.
//!
//! When the store file cannot be read it is moved aside and the daemon starts with an empty
//! one, not ready until this has run. The evidence, gathered on a blocking thread:
//! - the runtimes' CNI result cache (`/var/lib/cni/results`, written by libcni for podman,
//!   containerd and CRI-O, and by `trestlectl`): each cached result is an allocation of its
//!   network, unless its recorded namespace is gone;
//! - every live network namespace on the machine (held by a process or by a bind mount),
//!   and the universe-scope addresses on its interfaces: such an address is in use whatever
//!   any file says. These carry no network name, so they are kept (durably) until a network's
//!   first Allocate, which takes those inside its ranges as allocations owned by their
//!   namespace: leak repair frees each once its namespace is gone.
//! - in etcd mode, every address of the blocks etcd records as this node's: those not proven
//!   in use by the above are held back (they cool) for `hold`, in case a plugin that was
//!   given one just before the damage has not put it on its interface yet.
//!
//! Why rebuild rather than stay not ready for an operator: the node then keeps serving
//! pods without a human in the loop, and every source above only adds addresses to the used
//! set: a wrong guess costs an address held a little longer, never a duplicate.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::metrics;
use crate::state::{Op, Record, State};

/// An address found on an interface of a live namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The address.
    pub ip: IpAddr,
    /// The interface that holds it.
    pub ifname: String,
    /// A path that reached the namespace when it was seen.
    pub netns: String,
    /// The namespace's inode.
    pub netns_inode: u64,
}

/// An allocation read from the CNI result cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// `networkName`.
    pub network: String,
    /// `containerId`.
    pub container_id: String,
    /// `ifName`.
    pub ifname: String,
    /// The netns path, if the cache has it.
    pub netns: String,
    /// The addresses of its result.
    pub ips: Vec<IpAddr>,
}

/// What the node can prove in use.
#[derive(Debug, Default)]
pub struct Evidence {
    /// From the result cache.
    pub cached: Vec<Cached>,
    /// From the live namespaces.
    pub seen: Vec<Seen>,
}

/// How long a failed attempt waits before the next.
const RETRY: Duration = Duration::from_secs(1);

/// Rebuilds the state after a damaged store (see the module), then lets Allocate through.
/// It fails closed: until the rebuild is committed the daemon stays not ready, and a restart
/// meanwhile rebuilds again (the store is marked until then). It waits `settle` before it
/// looks: a plugin that was handed an address just before the damage puts it on its
/// interface within milliseconds, and two seconds (the default) cover a loaded node.
pub async fn recover(daemon: Arc<Daemon>, cache_dir: PathBuf, hold: Duration, settle: Duration) {
    log::warn!("rebuilding allocations from the CNI result cache and the live namespaces");
    tokio::time::sleep(settle).await;
    let held = match daemon.cluster().cloned() {
        None => Vec::new(),
        Some(node) => {
            // Its blocks are known once the node is registered and fenced.
            let mut said = false;
            while !node.lease_valid() {
                if !said {
                    log::warn!("waiting for etcd to learn which blocks this node holds");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            node.held_addresses()
        }
    };
    let summary = loop {
        match attempt(&daemon, &cache_dir, &held, hold).await {
            Ok(s) => break s,
            Err(e) => {
                log::error!("store rebuild: {e}; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    metrics::recovered("cni-cache", summary.cached);
    metrics::recovered("namespace", summary.seen);
    metrics::recovered("etcd-hold", summary.held);
    daemon.publish_all();
    daemon.recovering.store(false, Ordering::Release);
    log::warn!(
        "store rebuilt: {} allocations from the CNI cache, {} addresses seen in live namespaces \
         (taken by their networks' first Allocate), {} addresses of this node's etcd blocks held \
         back for {}s",
        summary.cached,
        summary.seen,
        summary.held,
        hold.as_secs()
    );
}

/// Why an attempt to rebuild failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("reading the CNI result cache")]
    Cache(#[source] std::io::Error),
    #[error("the evidence could not be gathered")]
    Gather,
    #[error(transparent)]
    Commit(#[from] crate::daemon::OpError),
}

/// One attempt: gather (on a blocking thread), enter, commit.
async fn attempt(
    daemon: &Daemon,
    cache_dir: &Path,
    held: &[(String, IpAddr)],
    hold: Duration,
) -> Result<Summary, AttemptError> {
    let dir = cache_dir.to_path_buf();
    let evidence = tokio::task::spawn_blocking(move || gather(&dir))
        .await
        .map_err(|_| AttemptError::Gather)?
        .map_err(AttemptError::Cache)?;
    let now = crate::clock::now();
    let (summary, commit) = {
        let mut st = daemon.lock();
        let mut ops = Vec::new();
        let summary = rebuild(&mut st, evidence, held, now, hold, &mut ops);
        ops.push(Op::Rebuilt);
        (summary, daemon.submit(ops))
    };
    daemon.wait(commit).await?;
    Ok(summary)
}

/// What [`rebuild`] entered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Allocations from the cache.
    pub cached: usize,
    /// Addresses seen in namespaces, kept for their networks.
    pub seen: usize,
    /// Addresses of the node's blocks held back.
    pub held: usize,
}

/// Enters the evidence into `st`: cached results as allocations; namespace addresses that
/// etcd names as this node's as allocations of that network, the others as pending evidence
/// (unless a cached result names them); and `held` addresses that nothing proves in use as
/// cooling until `hold` has passed. A cached result's record is as old as anything (created
/// 0): a DEL of its container still in the queue was sent after its ADD, and frees it.
pub fn rebuild(
    st: &mut State,
    evidence: Evidence,
    held: &[(String, IpAddr)],
    now: crate::state::Now,
    hold: Duration,
    ops: &mut Vec<Op>,
) -> Summary {
    let mut summary = Summary::default();
    // Where each seen address is in `evidence.seen` (indices: the list is consumed below).
    let by_ip: HashMap<IpAddr, usize> = evidence
        .seen
        .iter()
        .enumerate()
        .map(|(i, s)| (s.ip, i))
        .collect();
    let mut named: HashSet<IpAddr> = HashSet::new();
    for c in &evidence.cached {
        let pool = st.pools.entry(c.network.clone()).or_default();
        for ip in &c.ips {
            named.insert(*ip);
            if pool.by_ip.contains_key(ip) {
                continue;
            }
            let seen = by_ip.get(ip).map(|&i| &evidence.seen[i]);
            let rec = Record {
                netns: seen.map_or(c.netns.clone(), |s| s.netns.clone()),
                netns_inode: seen.map_or_else(|| inode_of(&c.netns), |s| s.netns_inode),
                ..Record::imported(
                    trestle_ipam_core::Attachment::new(c.container_id.clone(), c.ifname.clone()),
                    now.unix_ms,
                )
            };
            ops.push(Op::Put(c.network.clone(), *ip, rec.clone()));
            pool.insert(*ip, rec);
            summary.cached += 1;
        }
    }
    let held_by: HashMap<IpAddr, &str> = held.iter().map(|(n, ip)| (*ip, n.as_str())).collect();
    let mut pending = Vec::new();
    for s in evidence.seen.into_iter().filter(|s| !named.contains(&s.ip)) {
        summary.seen += 1;
        match held_by.get(&s.ip) {
            // Its network is known: an allocation now, so housekeeping never gives it back.
            Some(network) => {
                let (network, ip) = (network.to_string(), s.ip);
                let rec = s.into_record(now);
                let pool = st.pools.entry(network.clone()).or_default();
                if !pool.by_ip.contains_key(&ip) {
                    ops.push(Op::Put(network, ip, rec.clone()));
                    pool.insert(ip, rec);
                }
            }
            None => pending.push(s),
        }
    }
    st.evidence.extend(pending);
    ops.push(Op::Evidence(st.evidence.clone()));
    // Cooling ends `reuse delay` after its start: starting it at `until - delay` ends it at
    // `until` (and never earlier than a reuse delay from now).
    let until = now.boot_ns + hold.as_nanos() as u64;
    let start = until.saturating_sub(st.reuse_delay_ns).max(now.boot_ns);
    for (network, ip) in held {
        let pool = st.pools.entry(network.clone()).or_default();
        if pool.by_ip.contains_key(ip) || by_ip.contains_key(ip) {
            continue;
        }
        pool.cooling.insert(*ip, start);
        ops.push(Op::Cool(network.clone(), *ip, start));
        summary.held += 1;
    }
    summary
}

impl Seen {
    /// The allocation of an address seen in a namespace: owned by the namespace (its
    /// inode names it), so leak repair frees it once the namespace is gone.
    pub fn into_record(self, now: crate::state::Now) -> Record {
        let owner = trestle_ipam_core::Attachment::new(
            format!("recovered-netns-{}", self.netns_inode),
            self.ifname,
        );
        Record {
            netns: self.netns,
            netns_inode: self.netns_inode,
            created_ns: now.boot_ns,
            ..Record::imported(owner, now.unix_ms)
        }
    }
}

fn inode_of(path: &str) -> u64 {
    if path.is_empty() {
        return 0;
    }
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

/// Gathers the evidence (blocking: reads files and enters namespaces).
pub fn gather(cache_dir: &Path) -> std::io::Result<Evidence> {
    let cached = read_cache(cache_dir)?;
    let seen = namespaces()
        .into_iter()
        .flat_map(|(ino, path)| addresses_in(ino, &path))
        .collect();
    Ok(Evidence { cached, seen })
}

/// Every readable result in the cache directory whose namespace, if recorded, still exists.
/// No directory is no cache (a node whose runtimes keep none); a directory that cannot be
/// read is an error: the rebuild must not go on without what it holds.
pub fn read_cache(dir: &Path) -> std::io::Result<Vec<Cached>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let Ok(text) = std::fs::read(e.path()) else {
            continue;
        };
        let Some(c) = parse_cached(&text) else {
            log::debug!("recovery: {} is not a CNI cache entry", e.path().display());
            continue;
        };
        if !c.netns.is_empty() && !Path::new(&c.netns).exists() {
            continue;
        }
        out.push(c);
    }
    Ok(out)
}

/// A libcni cache entry (`cniCacheV1`): its network, owner and the addresses of its result
/// (CNI 0.3.0 and later `ips`, or 0.1/0.2 `ip4`/`ip6`).
pub fn parse_cached(text: &[u8]) -> Option<Cached> {
    let v: Value = serde_json::from_slice(text).ok()?;
    if v["kind"] != "cniCacheV1" {
        return None;
    }
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let result = &v["result"];
    let mut shown: Vec<&str> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .collect();
    for old in ["ip4", "ip6"] {
        shown.extend(result[old]["ip"].as_str());
    }
    let ips: Vec<IpAddr> = shown
        .iter()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    if ips.is_empty() {
        return None;
    }
    Some(Cached {
        network: s("networkName")?,
        container_id: s("containerId")?,
        ifname: s("ifName").unwrap_or_default(),
        netns: s("netns").unwrap_or_default(),
        ips,
    })
}

/// Every live network namespace, with a path that reaches it: a process's `ns/net`, or an
/// nsfs bind mount seen through a process in its mount namespace.
pub fn namespaces() -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let mut mount_namespaces = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = p.path();
        // The process, each of its threads, and each namespace it holds open.
        let mut paths = vec![dir.join("ns/net")];
        for sub in ["task", "fd"] {
            if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
                paths.extend(entries.flatten().map(|e| match sub {
                    "task" => e.path().join("ns/net"),
                    _ => e.path(),
                }));
            }
        }
        for path in paths {
            let is_net = path.ends_with("ns/net")
                || std::fs::read_link(&path)
                    .is_ok_and(|l| l.to_string_lossy().starts_with("net:["));
            if !is_net {
                continue;
            }
            if let Ok(m) = std::fs::metadata(&path) {
                found.entry(m.ino()).or_insert(path);
            }
        }
        let mnt = std::fs::metadata(dir.join("ns/mnt"))
            .map(|m| m.ino())
            .unwrap_or(0);
        if !mount_namespaces.insert(mnt) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(dir.join("mountinfo")) else {
            continue;
        };
        for (ino, point) in text.lines().filter_map(nsfs_mount) {
            let path = dir.join("root").join(point.trim_start_matches('/'));
            found.entry(ino).or_insert(path);
        }
    }
    found
}

/// An nsfs bind mount of a network namespace in a mountinfo line: (inode, mount point).
fn nsfs_mount(line: &str) -> Option<(u64, String)> {
    let (fields, fstype) = line.split_once(" - ")?;
    if !fstype.starts_with("nsfs ") {
        return None;
    }
    let mut f = fields.split(' ');
    let root = f.nth(3)?;
    let point = f.next()?;
    let ino = root
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    Some((ino, point.replace("\\040", " ")))
}

/// The universe-scope addresses on the interfaces of the namespace at `path`.
fn addresses_in(ino: u64, path: &Path) -> Vec<Seen> {
    let Ok(ns) = trestle_netns::NetNs::open(path) else {
        return Vec::new();
    };
    // The namespace may have been replaced at that path since it was listed.
    if std::fs::metadata(path).map(|m| m.ino()).ok() != Some(ino) {
        return Vec::new();
    }
    let listed = ns.run(|| {
        let mut nl = trestle_netlink::Netlink::open()?;
        let names: HashMap<u32, String> =
            nl.links()?.into_iter().map(|l| (l.index, l.name)).collect();
        let addrs = nl.addresses(None)?;
        Ok::<_, trestle_netlink::Error>((names, addrs))
    });
    let Ok(Ok((names, addrs))) = listed else {
        return Vec::new();
    };
    addrs
        .into_iter()
        .filter(|a| a.scope == 0)
        .map(|a| Seen {
            ip: a.address.addr(),
            ifname: names.get(&a.index).cloned().unwrap_or_default(),
            netns: path.display().to_string(),
            netns_inode: ino,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_of_every_result_version_parse() {
        let current = br#"{"kind":"cniCacheV1","containerId":"c1","config":"e30=","ifName":"eth0",
            "networkName":"net","netns":"/run/netns/x",
            "result":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"},{"address":"fd00::5/64"}]}}"#;
        let c = parse_cached(current).unwrap();
        assert_eq!(
            (
                c.network.as_str(),
                c.container_id.as_str(),
                c.ifname.as_str()
            ),
            ("net", "c1", "eth0")
        );
        assert_eq!(
            c.ips,
            [
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let old = br#"{"kind":"cniCacheV1","containerId":"c2","config":"","ifName":"eth0",
            "networkName":"net","result":{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.6/24"}}}"#;
        assert_eq!(
            parse_cached(old).unwrap().ips,
            ["10.1.0.6".parse::<IpAddr>().unwrap()]
        );
        assert!(parse_cached(br#"{"kind":"other"}"#).is_none());
        assert!(parse_cached(b"\x00garbage").is_none());
        let no_result = br#"{"kind":"cniCacheV1","containerId":"c","networkName":"n"}"#;
        assert!(parse_cached(no_result).is_none());
    }

    #[test]
    fn nsfs_mounts_parse() {
        let line = "610 29 0:4 net:[4026532801] /run/netns/a\\040b rw shared:1 - nsfs nsfs rw";
        assert_eq!(
            nsfs_mount(line),
            Some((4026532801, "/run/netns/a b".to_string()))
        );
        assert_eq!(
            nsfs_mount("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"),
            None
        );
    }

    #[test]
    fn this_process_namespace_is_found() {
        let me = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(namespaces().contains_key(&me));
    }

    fn seen(ip: &str, ino: u64) -> Seen {
        Seen {
            ip: ip.parse().unwrap(),
            ifname: "eth0".into(),
            netns: format!("/proc/1/ns/{ino}"),
            netns_inode: ino,
        }
    }

    #[test]
    fn the_rebuild_takes_every_source_and_holds_back_only_the_unproven() {
        let mut st = State::default();
        let mut ops = Vec::new();
        let evidence = Evidence {
            cached: vec![Cached {
                network: "n".into(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: String::new(),
                ips: vec!["10.0.0.2".parse().unwrap()],
            }],
            seen: vec![
                seen("10.0.0.2", 7),
                seen("10.0.0.3", 8),
                seen("10.9.0.9", 9),
            ],
        };
        let held: Vec<(String, IpAddr)> = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
            .iter()
            .map(|ip| ("n".to_string(), ip.parse().unwrap()))
            .collect();
        let now = crate::state::Now {
            boot_ns: 1_000,
            unix_ms: 5,
        };
        let summary = rebuild(
            &mut st,
            evidence,
            &held,
            now,
            Duration::from_nanos(500),
            &mut ops,
        );
        assert_eq!(
            summary,
            Summary {
                cached: 1,
                seen: 2,
                held: 1
            }
        );
        let pool = &st.pools["n"];
        let rec = &pool.by_ip[&"10.0.0.2".parse().unwrap()];
        assert_eq!(
            (rec.container_id.as_str(), rec.netns_inode, rec.created_ns),
            ("c1", 7, 0)
        );
        // Seen and held by this node: an allocation of the held network at once.
        let rec = &pool.by_ip[&"10.0.0.3".parse().unwrap()];
        assert_eq!(
            (rec.container_id.as_str(), rec.netns_inode),
            ("recovered-netns-8", 8)
        );
        // Seen only: waits for the network whose ranges hold it.
        assert_eq!(st.evidence, [seen("10.9.0.9", 9)]);
        assert!(ops.contains(&Op::Evidence(vec![seen("10.9.0.9", 9)])));
        assert_eq!(pool.cooling[&"10.0.0.4".parse().unwrap()], 1_500);
    }
}
