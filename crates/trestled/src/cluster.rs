//! Housekeeping of the etcd store: empty blocks go back, oversized reservations shrink,
//! unused borrowed addresses are returned; local allocations the node no longer holds in etcd
//! are reported; and the node's figures go to the metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use trestle_ipam_etcd::Node;

use crate::daemon::Daemon;
use crate::metrics;

/// Runs forever, every `every`.
pub async fn housekeeping(daemon: Arc<Daemon>, node: Arc<Node>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut fenced = u64::MAX;
    loop {
        tick.tick().await;
        publish(&node);
        // While a damaged store is rebuilt, the state does not yet show what is in use:
        // housekeeping would give back blocks and borrowed addresses live pods hold.
        if !node.lease_valid() || daemon.recovering.load(Ordering::Acquire) {
            continue;
        }
        let fencings = node.stats.fencings.load(Ordering::Relaxed);
        if fencings != fenced {
            fenced = fencings;
            report_uncovered(&daemon, &node);
        }
        node.housekeep(|| {
            let st = daemon.lock();
            node.plan(&|net, ip| {
                st.pools
                    .get(net)
                    .is_some_and(|p| p.by_ip.contains_key(&ip) || p.cooling.contains_key(&ip))
                    || st.evidence.iter().any(|s| s.ip == ip)
            })
        })
        .await;
    }
}

/// After (re)registering: every local allocation should be one the node holds in etcd. One
/// that is not was released by an operator (`trestlectl ipam release-node`) while the node was
/// cut off: it is logged, and its pod should be restarted.
fn report_uncovered(daemon: &Daemon, node: &Node) {
    let st = daemon.lock();
    let mut n = 0;
    for (net, pool) in &st.pools {
        for (ip, rec) in &pool.by_ip {
            if !node.covers_any(net, *ip) {
                n += 1;
                log::error!(
                    "network={net} ip={ip} container={} is not held by this node in etcd any more (released while the node was cut off?): restart that pod",
                    rec.container_id
                );
            }
        }
    }
    metrics::cluster(node.name(), "uncovered_allocations", &[], n);
}

fn publish(node: &Node) {
    let name = node.name();
    metrics::cluster(name, "lease_valid", &[], i64::from(node.lease_valid()));
    for u in node.usage() {
        let l = [("network", u.network.clone()), ("pool", u.pool.to_string())];
        metrics::cluster(name, "blocks", &l, u.blocks as i64);
        metrics::cluster(name, "held_addresses", &l, i64::from(u.held));
        metrics::cluster(name, "borrowed_addresses", &l, i64::from(u.borrowed));
    }
    let (reads, writes, keepalives, failures) = node.etcd().counters.snapshot();
    for (what, v) in [
        ("etcd_reads", reads),
        ("etcd_writes", writes),
        ("etcd_keepalives", keepalives),
        ("etcd_failures", failures),
    ] {
        metrics::cluster(name, what, &[], v as i64);
    }
    let s = &node.stats;
    for (what, c) in [
        ("claims", &s.claims),
        ("extends", &s.extends),
        ("reclaims", &s.reclaims),
        ("borrows", &s.borrows),
        ("releases", &s.releases),
        ("shrinks", &s.shrinks),
        ("fencings", &s.fencings),
        ("conflicts", &s.conflicts),
    ] {
        metrics::cluster(name, what, &[], c.load(Ordering::Relaxed) as i64);
    }
}

/// Publishes the router's figures every second, for ever.
pub async fn publish_routes(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(r) = daemon.routes.get() else {
            return;
        };
        let (s, f) = (&r.stats, &r.follow);
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        metrics::routes("revision_seen", &[], f.revision.load(Ordering::Relaxed));
        metrics::routes(
            "revision_applied",
            &[],
            s.applied_revision.load(Ordering::Relaxed),
        );
        for (what, v) in [
            ("routes", &s.routes),
            ("neighbours", &s.neighbours),
            ("fdb", &s.fdb),
            ("changes", &s.changes),
            ("repairs", &s.repairs),
            ("errors", &s.errors),
            ("full_passes", &s.full_passes),
            ("incremental_passes", &s.incremental_passes),
            ("vxlan_drops", &s.vxlan_drops),
            ("etcd_reads", &f.reads),
            ("etcd_watches", &f.watches),
            ("etcd_failures", &f.failures),
        ] {
            metrics::routes(what, &[], load(v));
        }
        if let Some(p) = s.plan() {
            let vxlan = p.peers.values().filter(|v| **v).count();
            for (via, n) in [
                ("direct", p.peers.len() - vxlan),
                ("vxlan", vxlan),
                ("unreachable", p.unreachable.len()),
            ] {
                metrics::routes("peers", &[("via", via.to_string())], n as i64);
            }
        }
    }
}
