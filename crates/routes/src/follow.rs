//! Following etcd: the whole root read at one revision, then watched from the next one. A
//! broken watch resumes from the last revision applied (nothing is read twice or missed); a
//! watch whose start etcd has compacted away reads the root again. Each new state of the
//! cluster is published on a `watch` channel, the first only once the whole read is applied.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use trestle_ipam_etcd::kv::Kv;
use trestle_ipam_etcd::watch::{WatchError, Watcher};
use trestle_ipam_etcd::Keys;

use crate::cluster::{Cluster, Mirror};

/// What the follower did, for metrics and `trestlectl node list`.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// The etcd revision of the last state published.
    pub revision: AtomicI64,
    /// Whole reads of the root (the first, and one per compaction or failed read).
    pub reads: AtomicU64,
    /// Watches started.
    pub watches: AtomicU64,
    /// Failures of etcd (reads, watches).
    pub failures: AtomicU64,
    /// States published (one per whole read, and one per wake of the watch however many batches
    /// had queued).
    pub published: AtomicU64,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Follows the keys under `keys`' root for ever, publishing each state of the cluster on `out`.
pub async fn follow<K: Kv>(
    kv: K,
    keys: Keys,
    out: watch::Sender<Option<Arc<Cluster>>>,
    stats: Arc<FollowStats>,
) {
    let mut mirror: Option<Mirror> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut m = match mirror.take() {
            Some(m) => m,
            None => match read(&kv, &keys, &stats).await {
                Some(m) => {
                    publish(&m, &out, &stats);
                    m
                }
                None => {
                    pause(&mut backoff).await;
                    continue;
                }
            },
        };
        stats.watches.fetch_add(1, Ordering::Relaxed);
        let mut w = match kv.watch_from(keys.root(), m.revision + 1).await {
            Ok(w) => w,
            Err(WatchError::Compacted(rev)) => {
                log::info!(
                    "etcd compacted to revision {rev}, past {}: reading again",
                    m.revision
                );
                continue;
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("cannot watch etcd: {e}");
                mirror = Some(m);
                pause(&mut backoff).await;
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        loop {
            let (changed, end) = catch_up(&mut w, &mut m, &keys).await;
            if changed {
                publish(&m, &out, &stats);
            }
            match end {
                None => {}
                Some(WatchError::Compacted(rev)) => {
                    log::info!("etcd compacted to revision {rev}: reading again");
                    break;
                }
                Some(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    log::warn!("etcd watch ended at revision {}: {e}", m.revision);
                    mirror = Some(m);
                    pause(&mut backoff).await;
                    break;
                }
            }
        }
    }
}

/// Waits for the next batch, then applies it and every batch already queued behind it: one
/// publication for all (each costs a copy of the cluster's index and a routing pass), so a
/// follower that fell behind catches up at once. Whether anything changed, and the error that
/// ended the watch, if one did (after what came before it was applied).
async fn catch_up(w: &mut Watcher, m: &mut Mirror, keys: &Keys) -> (bool, Option<WatchError>) {
    let mut next = Some(w.next().await);
    let mut changed = false;
    while let Some(r) = next {
        match r {
            Ok(batch) => changed |= m.apply(keys, &batch),
            Err(e) => return (changed, Some(e)),
        }
        next = w.ready();
    }
    (changed, None)
}

async fn read<K: Kv>(kv: &K, keys: &Keys, stats: &FollowStats) -> Option<Mirror> {
    stats.reads.fetch_add(1, Ordering::Relaxed);
    match kv.list_at(keys.root()).await {
        Ok((kvs, revision)) => {
            let rel = kvs.into_iter().filter_map(|kv| {
                let k = keys.relative(&kv.key)?.to_string();
                Some((k, kv.value))
            });
            Some(Mirror::new(rel, revision))
        }
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            log::warn!("cannot read the cluster from etcd: {e}");
            None
        }
    }
}

fn publish(m: &Mirror, out: &watch::Sender<Option<Arc<Cluster>>>, stats: &FollowStats) {
    stats.revision.store(m.revision, Ordering::Relaxed);
    stats.published.fetch_add(1, Ordering::Relaxed);
    out.send_replace(Some(Arc::new(m.cluster())));
}

async fn pause(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use trestle_ipam_etcd::kv::fake::FakeKv;

    struct Run {
        kv: FakeKv,
        rx: watch::Receiver<Option<Arc<Cluster>>>,
        stats: Arc<FollowStats>,
    }

    fn start(kv: &FakeKv) -> Run {
        let (tx, rx) = watch::channel(None);
        let stats = Arc::new(FollowStats::default());
        tokio::spawn(follow(kv.clone(), Keys::new("/t"), tx, stats.clone()));
        Run {
            kv: kv.clone(),
            rx,
            stats,
        }
    }

    impl Run {
        /// Waits for a published state at `revision` or later.
        async fn at(&mut self, revision: i64) -> Arc<Cluster> {
            let c = self
                .rx
                .wait_for(|c| c.as_ref().is_some_and(|c| c.revision >= revision))
                .await
                .unwrap();
            c.clone().unwrap()
        }

        fn host(&self, node: &str) -> i64 {
            let h = crate::host::HostRecord {
                v4: None,
                v6: None,
                vtep_mac: "02:00:00:00:00:01".into(),
                vni: 1,
                port: 4789,
                version: node.into(),
            };
            self.kv.set(&format!("/t/v1/hosts/{node}"), &h.encode())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_then_changes() {
        let kv = FakeKv::new();
        let mut r = start(&kv);
        r.host("a");
        let rev = r.host("b");
        let c = r.at(rev).await;
        assert_eq!(c.hosts.len(), 2);
        let rev = kv.remove("/t/v1/hosts/a");
        let c = r.at(rev).await;
        assert_eq!(c.hosts.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(r.stats.reads.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_published_before_the_first_read() {
        let kv = FakeKv::new();
        kv.fail_lists(3);
        let mut r = start(&kv);
        let rev = r.host("a");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(r.rx.borrow().is_none(), "published before a whole read");
        assert_eq!(r.at(rev).await.hosts.len(), 1);
        assert_eq!(r.stats.failures.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_watch_resumes_without_reading_again() {
        let kv = FakeKv::new();
        let mut r = start(&kv);
        r.at(1).await;
        while kv.watchers() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        kv.break_watches();
        kv.fail_watches(2);
        // Changes made while no watch is open arrive from the history.
        r.host("a");
        let rev = r.host("b");
        assert_eq!(r.at(rev).await.hosts.len(), 2);
        assert_eq!(r.stats.reads.load(Ordering::Relaxed), 1);
        assert!(r.stats.watches.load(Ordering::Relaxed) >= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_queued_behind_one_are_published_once() {
        let kv = FakeKv::new();
        let mut r = start(&kv);
        r.at(1).await;
        while kv.watchers() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let before = r.stats.published.load(Ordering::Relaxed);
        // Five revisions reach the follower at once, as to one that fell behind.
        kv.hold(true);
        let mut rev = 0;
        for node in ["a", "b", "c", "d", "e"] {
            rev = r.host(node);
        }
        kv.hold(false);
        assert_eq!(r.at(rev).await.hosts.len(), 5);
        assert_eq!(r.stats.published.load(Ordering::Relaxed), before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn compaction_past_the_mirror_reads_again() {
        let kv = FakeKv::new();
        let mut r = start(&kv);
        r.at(1).await;
        while kv.watchers() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        kv.hold(true);
        r.host("a");
        kv.remove("/t/v1/hosts/a");
        let rev = r.host("b");
        kv.compact(rev);
        kv.break_watches();
        let c = r.at(rev).await;
        assert_eq!(c.hosts.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(r.stats.reads.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_answers_change_nothing() {
        let kv = FakeKv::new();
        kv.repeat(true);
        let mut r = start(&kv);
        r.host("a");
        let rev = kv.remove("/t/v1/hosts/a");
        let c = r.at(rev).await;
        assert!(
            c.hosts.is_empty(),
            "a repeated put came back after the delete"
        );
        let rev = r.host("c");
        assert_eq!(r.at(rev).await.hosts.len(), 1);
    }
}
