//! Cross-node routes for trestle's cluster mode. Every node publishes a host record (how its
//! pods are reached) in etcd; every node's `trestled` mirrors the records, pools and blocks with
//! one read and a watch from the revision after it, works out which routes, neighbour and FDB
//! entries its kernel should hold (a block another node owns goes to that node, directly on a
//! shared segment, over VXLAN otherwise), and keeps the kernel so, removing only entries it
//! owns. See docs/cluster-networking.md.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use trestle_ipam_etcd::kv::Kv;
use trestle_ipam_etcd::Keys;

pub mod cluster;
pub mod dataplane;
pub mod diff;
pub mod follow;
pub mod host;
pub mod offload;
pub mod plan;
pub mod underlay;

pub use dataplane::{RouteStats, VxlanSettings};
pub use follow::FollowStats;
pub use host::{HostRecord, Underlay};
pub use plan::{Mode, Plan};
pub use underlay::UnderlayChoice;

/// Why routing cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] trestle_netlink::Error),
    /// `--node-ip` names an address no interface holds.
    #[error("--node-ip {0} is on no interface of this node")]
    NodeIpMissing(IpAddr),
    /// `--node-interface` names no interface.
    #[error("--node-interface {0:?}: no such interface")]
    InterfaceMissing(String),
    /// Nothing tells the underlay.
    #[error("no underlay address found (no default route): give --node-ip or --node-interface")]
    NoUnderlay,
    /// A `/proc/sys` write failed.
    #[error("sysctl")]
    Sysctl(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
}

/// How to route.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This node's name.
    pub name: String,
    /// The mode.
    pub mode: Mode,
    /// The VXLAN device.
    pub vxlan: VxlanSettings,
    /// The underlay, as the operator gave it.
    pub underlay: UnderlayChoice,
    /// How often the kernel is read again without a reason.
    pub resync: Duration,
    /// The software's version, in the host record.
    pub version: String,
}

/// The running router of this node.
pub struct Router {
    /// The host record it publishes (it changes when the underlay does).
    pub host: watch::Receiver<HostRecord>,
    /// The kernel side.
    pub stats: Arc<RouteStats>,
    /// The etcd side.
    pub follow: Arc<FollowStats>,
    /// The latest state of the cluster.
    pub cluster: watch::Receiver<Option<Arc<cluster::Cluster>>>,
    /// The mode.
    pub mode: Mode,
    wakes: mpsc::Sender<dataplane::Wake>,
    /// The newest revision handed to the dataplane, and since when the kernel has trailed.
    handed: Arc<Mutex<(i64, Instant)>>,
}

/// How long the kernel may trail etcd before STATUS says so: a pass takes milliseconds, and a
/// burst of changes is applied as one.
const LAG_GRACE: Duration = Duration::from_secs(2);

impl Router {
    /// Detects the underlay, publishes the host record, follows etcd and programs the kernel of
    /// the calling thread's network namespace. Runs inside a tokio runtime.
    pub fn start<K: Kv>(kv: K, keys: Keys, cfg: RouterConfig) -> Result<Router, Error> {
        let mut nl = trestle_netlink::Netlink::open()?;
        let (v4, v6) = underlay::detect(&mut nl, &cfg.underlay)?;
        let host = HostRecord {
            v4,
            v6,
            vtep_mac: trestle_netlink::format_mac(host::vtep_mac(&cfg.name)),
            vni: cfg.vxlan.vni,
            port: cfg.vxlan.port,
            version: cfg.version.clone(),
        };
        log::info!(
            "routes: node {} underlay {} mode {:?}",
            cfg.name,
            [host.v4.as_ref(), host.v6.as_ref()]
                .into_iter()
                .flatten()
                .map(|u| format!("{} on {} (mtu {})", u.address, u.interface, u.mtu))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.mode
        );
        let (wake_tx, wake_rx) = mpsc::channel();
        let monitor = trestle_netlink::Monitor::open()?;
        let stats = Arc::new(RouteStats::default());
        let (host_tx, host_rx) = watch::channel(host.clone());
        let settings = dataplane::Settings {
            name: cfg.name.clone(),
            host: host.clone(),
            mode: cfg.mode,
            vxlan: cfg.vxlan.clone(),
            resync: cfg.resync,
            underlay: cfg.underlay.clone(),
            host_tx,
        };
        let st = stats.clone();
        std::thread::Builder::new()
            .name("routes".into())
            .spawn(move || {
                if let Err(e) = dataplane::run(settings, wake_rx, st) {
                    log::error!("routes: the dataplane stopped: {e}");
                }
            })
            .map_err(Error::Thread)?;
        let tx = wake_tx.clone();
        std::thread::Builder::new()
            .name("routes-events".into())
            .spawn(move || dataplane::watch_kernel(monitor, tx))
            .map_err(Error::Thread)?;
        let (out, rx) = watch::channel(None);
        let follow = Arc::new(FollowStats::default());
        tokio::spawn(publish(kv.clone(), keys.host(&cfg.name), host_rx.clone()));
        tokio::spawn(follow::follow(kv, keys, out, follow.clone()));
        let handed = Arc::new(Mutex::new((0, Instant::now())));
        tokio::spawn(forward(
            rx.clone(),
            wake_tx.clone(),
            handed.clone(),
            stats.clone(),
        ));
        Ok(Router {
            host: host_rx,
            stats,
            follow,
            cluster: rx,
            mode: cfg.mode,
            wakes: wake_tx,
            handed,
        })
    }

    /// The MTU pods should have (see [`Plan::pod_mtu`]): from the last plan, or before one from
    /// this node's own record.
    pub fn pod_mtu(&self) -> Option<u32> {
        match self.stats.plan() {
            Some(p) => p.pod_mtu,
            None => plan::pod_mtu(
                &plan::Me {
                    name: "",
                    host: &self.host.borrow(),
                    mode: self.mode,
                },
                &cluster::Cluster::default(),
            ),
        }
    }

    /// Why existing pods may have limited connectivity now, if they may (CNI STATUS 51): the
    /// kernel has not been brought to etcd's state yet, trails it, cannot reach a peer, or
    /// refused changes.
    pub fn limited(&self) -> Option<String> {
        let applied = self.stats.applied_revision.load(Ordering::Relaxed);
        if applied == 0 {
            return Some("routes to other nodes are not programmed yet (reading etcd)".into());
        }
        let (handed, at) = *self.handed.lock().unwrap_or_else(|p| p.into_inner());
        if handed > applied && at.elapsed() > LAG_GRACE {
            return Some(format!(
                "routes trail etcd: revision {applied} applied, {handed} known"
            ));
        }
        if let Some(u) = self
            .stats
            .plan()
            .as_ref()
            .and_then(|p| p.unreachable.first())
        {
            return Some(format!("no route to node {}: {}", u.node, u.why));
        }
        let failing = self.stats.failing.load(Ordering::Relaxed);
        if failing > 0 {
            return Some(format!(
                "the kernel refused {failing} route change(s) (see trestled's log)"
            ));
        }
        None
    }

    /// Stops programming the kernel; what is there stays (a restart takes it over).
    pub fn stop(&self) {
        let _ = self.wakes.send(dataplane::Wake::Stop);
    }
}

/// Writes the host record until etcd has it (a record equal to it is left alone), and again each
/// time the dataplane finds the underlay changed.
async fn publish<K: Kv>(kv: K, key: String, mut host: watch::Receiver<HostRecord>) {
    loop {
        let record = host.borrow_and_update().clone();
        publish_one(&kv, &key, &record).await;
        if host.changed().await.is_err() {
            return;
        }
    }
}

async fn publish_one<K: Kv>(kv: &K, key: &str, host: &HostRecord) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = kv.list_at(key).await.map(|(kvs, _)| {
            kvs.into_iter()
                .find(|k| k.key == key.as_bytes())
                .and_then(|k| HostRecord::decode(&k.value))
        });
        let r = match current {
            Ok(Some(h)) if &h == host => return,
            Ok(_) => kv.put(key, host.encode()).await.map(drop),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                log::info!("routes: published {key}");
                return;
            }
            Err(e) => log::warn!("routes: cannot publish {key}: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Hands each new state of the cluster to the dataplane thread.
async fn forward(
    mut rx: watch::Receiver<Option<Arc<cluster::Cluster>>>,
    tx: mpsc::Sender<dataplane::Wake>,
    handed: Arc<Mutex<(i64, Instant)>>,
    stats: Arc<RouteStats>,
) {
    while rx.changed().await.is_ok() {
        let c = rx.borrow_and_update().clone();
        if let Some(c) = c {
            let applied = stats.applied_revision.load(Ordering::Relaxed);
            let mut h = handed.lock().unwrap_or_else(|p| p.into_inner());
            // The kernel trails from the first state it has not caught up with.
            if applied >= h.0 {
                h.1 = Instant::now();
            }
            h.0 = c.revision;
            drop(h);
            if tx.send(dataplane::Wake::Cluster(c)).is_err() {
                return;
            }
        }
    }
}
