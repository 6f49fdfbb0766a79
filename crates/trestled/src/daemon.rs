//! The daemon's operations, independent of gRPC: each validates nothing (the service did),
//! changes the in-memory state under one lock, hands the changes to the store's writer in the
//! same critical section, and waits for the commit before it answers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use trestle_ipam_api::convert::AllocateInput;
use trestle_ipam_core::{Attachment, BootIdSource, IpamError};

use trestle_ipam_etcd::{AllocationError, Attempt, ClusterError, Node};

use crate::clock;
use crate::state::{Allocated, ClusterOutcome, Op, Record, State};
use crate::store::{Commit, Writer};
use crate::{import, metrics};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The allocator refused (exhausted pool, taken address, ...).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The change could not be made durable.
    #[error("{0}")]
    Store(String),
    /// The daemon is starting or stopping.
    #[error("trestled is not ready: {0}")]
    NotReady(&'static str),
    /// The cluster store cannot give an address now.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Where the host-local state of embedded mode lives, for the import.
#[derive(Debug, Clone)]
pub struct HostLocal {
    /// host-local's `dataDir` (`/var/lib/cni/networks`).
    pub dir: PathBuf,
    /// What the handover file names: the daemon's socket and delete queue.
    pub handover: trestle_ipam_core::Handover,
    /// The boot ID source the import's reboot check uses.
    pub boot: BootIdSource,
}

/// The daemon.
pub struct Daemon {
    state: Mutex<State>,
    writer: Writer,
    /// False while starting and draining.
    pub ready: Arc<AtomicBool>,
    /// True while a damaged store is being rebuilt (see [`crate::recovery`]).
    pub recovering: AtomicBool,
    /// False after a failed store commit, until one succeeds.
    pub store_ok: Arc<AtomicBool>,
    /// The boot the store belongs to.
    pub boot_id: String,
    host_local: Option<HostLocal>,
    /// Networks whose import failed, and when to try again.
    import_failed: Mutex<HashMap<String, Instant>>,
    cluster: Option<Arc<Node>>,
    /// The router of cross-node routes, once started (etcd mode).
    pub routes: std::sync::OnceLock<trestle_routes::Router>,
    grow_timeout: std::time::Duration,
    /// What an operator should know although Allocate is served, by problem.
    warnings: Mutex<BTreeMap<&'static str, String>>,
}

/// Why Allocate, Release and GC wait while a damaged store is rebuilt.
const REBUILDING: &str = "rebuilding the allocations of a damaged store";

/// How long a failed host-local import waits before it is tried again.
const IMPORT_RETRY: Duration = Duration::from_secs(30);

impl Daemon {
    /// A daemon over a loaded state and its store's writer.
    pub fn new(
        state: State,
        (writer, store_ok): (Writer, Arc<AtomicBool>),
        boot_id: String,
        host_local: Option<HostLocal>,
    ) -> Daemon {
        Daemon {
            state: Mutex::new(state),
            writer,
            ready: Arc::new(AtomicBool::new(false)),
            recovering: AtomicBool::new(false),
            store_ok,
            boot_id,
            host_local,
            import_failed: Mutex::new(HashMap::new()),
            cluster: None,
            routes: std::sync::OnceLock::new(),
            grow_timeout: std::time::Duration::from_millis(1500),
            warnings: Mutex::new(BTreeMap::new()),
        }
    }

    /// Allocates from `node`'s blocks (the etcd store) instead of whole ranges; a growth of
    /// its holdings (one etcd transaction, mostly) may take at most `grow_timeout`.
    pub fn with_cluster(mut self, node: Arc<Node>, grow_timeout: std::time::Duration) -> Daemon {
        self.cluster = Some(node);
        self.grow_timeout = grow_timeout;
        self
    }

    /// The cluster node, in etcd mode.
    pub fn cluster(&self) -> Option<&Arc<Node>> {
        self.cluster.as_ref()
    }

    /// The state, locked. A panic while it was held cannot leave it half-changed in a way
    /// that matters more than stopping would, so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why Allocate cannot be served now, if it cannot (STATUS, /readyz).
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Acquire) {
            Some("starting or stopping")
        } else if self.recovering.load(Ordering::Acquire) {
            Some(REBUILDING)
        } else if !self.store_ok.load(Ordering::Acquire) {
            Some("the last store commit failed")
        } else if self.cluster.as_ref().is_some_and(|n| !n.lease_valid()) {
            Some("the node's etcd lease is not certainly valid")
        } else {
            None
        }
    }

    /// The MTU pods should have, when this node routes between nodes.
    pub fn pod_mtu(&self) -> Option<u32> {
        self.routes.get().and_then(trestle_routes::Router::pod_mtu)
    }

    /// Routes a pod needs to reach other nodes' pods, when this node routes between nodes: for an
    /// IPv6 address, the pool through its gateway at metric 100, above the pool's on-link prefix
    /// route (256). Linux proxies NDP only address by address, so a pod that took every address of
    /// an IPv6 pool as on its link could not reach another node's pods; IPv4 pods need nothing (the
    /// bridge answers ARP for them, see docs/cluster-networking.md).
    pub fn cluster_routes(
        &self,
        ips: &[trestle_ipam_core::AllocatedIp],
    ) -> Vec<trestle_ipam_core::RouteConfig> {
        if self.routes.get().is_none() {
            return Vec::new();
        }
        ips.iter()
            .filter(|ip| ip.address.addr().is_ipv6())
            .filter_map(|ip| {
                Some(trestle_ipam_core::RouteConfig {
                    dst: ip.address.trunc(),
                    gw: Some(ip.gateway?),
                    mtu: None,
                    advmss: None,
                    priority: Some(100),
                    table: None,
                    scope: None,
                })
            })
            .collect()
    }

    /// Why existing pods may have limited connectivity (CNI STATUS 51), if they may.
    pub fn limited(&self) -> Option<String> {
        self.routes.get().and_then(trestle_routes::Router::limited)
    }

    /// Sets (or with `None` clears) the warning about `problem`; logs and counts a change.
    pub fn warn(&self, problem: &'static str, text: Option<String>) {
        let mut w = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match &text {
            Some(t) => w.insert(problem, t.clone()).as_ref() != Some(t),
            None => w.remove(problem).is_some(),
        };
        if changed {
            match &text {
                Some(t) => log::error!("{t}"),
                None => log::info!("resolved: {problem}"),
            }
        }
        metrics::problem(problem, text.is_some());
    }

    /// The warnings in force (STATUS, `trestlectl ipam show`).
    pub fn warnings(&self) -> Vec<String> {
        let w = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        w.values().cloned().collect()
    }

    /// Every change waits for a rebuild: an Allocate must see what it enters, and a Release
    /// or GC served before it would free nothing, the rebuild then entering the address again
    /// from a cache entry its DEL made stale. The plugin resends (or queues) them.
    fn refuse_while_recovering(&self) -> Result<(), OpError> {
        if self.recovering.load(Ordering::Acquire) {
            return Err(OpError::NotReady(REBUILDING));
        }
        Ok(())
    }

    fn ensure_ready(&self) -> Result<(), OpError> {
        match self.not_ready() {
            None => Ok(()),
            Some(why) => Err(OpError::NotReady(why)),
        }
    }

    /// Applies `ops` durably; call with the state lock held, await after releasing it.
    /// Even with no changes: the answer then still waits for every commit queued before it,
    /// so nothing is acknowledged on the strength of memory a commit has not made durable yet
    /// (a Release of nothing right after a Release whose commit is pending, say).
    pub(crate) fn submit(&self, ops: Vec<Op>) -> Commit {
        self.writer.submit(ops)
    }

    /// Allocate.
    pub async fn allocate(&self, input: &AllocateInput) -> Result<Allocated, OpError> {
        if let Some(node) = &self.cluster {
            return self.allocate_cluster(input, node).await;
        }
        self.ensure_ready()?;
        let network = &input.config.network;
        let imported = self.read_import(network).await;
        let (allocated, commit) = {
            let mut st = self.lock();
            let mut ops = Vec::new();
            apply_import(&mut st, network, imported, &mut ops);
            let result = st.allocate(input, clock::now(), &mut ops);
            // The import's changes stand even if the allocation failed.
            let commit = self.submit(ops);
            publish(&st, network);
            (result, commit)
        };
        self.wait(commit).await?;
        let allocated = allocated?;
        Ok(allocated)
    }

    /// Allocate in etcd mode: the node's allocation loop ([`Node::allocate`]), each attempt under
    /// the state lock and answered after its commit, the holdings grown outside the lock.
    async fn allocate_cluster(
        &self,
        input: &AllocateInput,
        node: &Arc<Node>,
    ) -> Result<Allocated, OpError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(OpError::NotReady("starting or stopping"));
        }
        self.refuse_while_recovering()?;
        let network = &input.config.network;
        let deadline = tokio::time::Instant::now() + self.grow_timeout;
        let allocated = node
            .allocate(network, Some(deadline), || async move {
                let (outcome, commit) = {
                    let mut st = self.lock();
                    let mut ops = Vec::new();
                    let outcome = st.allocate_cluster(input, clock::now(), &mut ops, node);
                    let commit = self.submit(ops);
                    publish(&st, network);
                    (outcome, commit)
                };
                self.wait(commit).await?;
                match outcome? {
                    ClusterOutcome::Done(a, low) => Ok(Attempt::Done(a, low)),
                    ClusterOutcome::Grow(ranges, want) => Ok(Attempt::Grow(ranges, want)),
                    ClusterOutcome::NoLease => Err(ClusterError::LeaseUncertain.into()),
                }
            })
            .await;
        allocated.map_err(|e| match e {
            AllocationError::Attempt(e) => e,
            AllocationError::Grow(ClusterError::Exhausted(pool)) => {
                OpError::Ipam(IpamError::Exhausted {
                    network: network.clone(),
                    set_index: 0,
                    range: pool,
                })
            }
            AllocationError::Grow(ClusterError::Unavailable { ip, why }) => {
                OpError::Ipam(IpamError::Unavailable { ip, range: why })
            }
            AllocationError::Grow(e) => e.into(),
            AllocationError::Late => ClusterError::Etcd(trestle_ipam_etcd::EtcdError::Unavailable(
                "no answer in time".into(),
            ))
            .into(),
        })
    }

    /// Release; `before_ns` limits it to allocations made before a queued DEL.
    pub async fn release(
        &self,
        network: &str,
        att: &Attachment,
        before_ns: Option<u64>,
    ) -> Result<Vec<IpAddr>, OpError> {
        self.refuse_while_recovering()?;
        // A network not imported yet is imported first: its host-local reservation of this
        // attachment must be there to be released, not imported after the release.
        let imported = self.read_import(network).await;
        let (freed, commit) = {
            let mut st = self.lock();
            let mut ops = Vec::new();
            apply_import(&mut st, network, imported, &mut ops);
            let freed = st.release(network, att, before_ns, clock::now(), &mut ops);
            let commit = self.submit(ops);
            publish(&st, network);
            (freed, commit)
        };
        self.wait(commit).await?;
        Ok(freed)
    }

    /// Check: the addresses `att` holds.
    pub fn check(&self, network: &str, att: &Attachment) -> Result<Vec<IpAddr>, OpError> {
        let st = self.lock();
        let held = st
            .pools
            .get(network)
            .map(|p| p.addresses_of(att))
            .unwrap_or_default();
        if held.is_empty() {
            return Err(OpError::Ipam(IpamError::NotFound {
                container_id: att.container_id.clone(),
            }));
        }
        Ok(held)
    }

    /// GC.
    pub async fn gc(
        &self,
        network: &str,
        valid: &[Attachment],
    ) -> Result<Vec<(IpAddr, Record)>, OpError> {
        self.refuse_while_recovering()?;
        let imported = self.read_import(network).await;
        let (freed, commit) = {
            let mut st = self.lock();
            let mut ops = Vec::new();
            apply_import(&mut st, network, imported, &mut ops);
            let freed = st.gc(network, valid, clock::now(), &mut ops);
            let commit = self.submit(ops);
            publish(&st, network);
            (freed, commit)
        };
        self.wait(commit).await?;
        metrics::reclaimed("gc", freed.len());
        Ok(freed)
    }

    /// Releases one allocation if it is still exactly `rec` (leak repair).
    pub async fn reclaim(&self, network: &str, ip: IpAddr, rec: &Record) -> Result<bool, OpError> {
        let (done, commit) = {
            let mut st = self.lock();
            let mut ops = Vec::new();
            let done = st.release_if_unchanged(network, ip, rec, clock::now(), &mut ops);
            let commit = self.submit(ops);
            publish(&st, network);
            (done, commit)
        };
        self.wait(commit).await?;
        Ok(done)
    }

    /// Waits for `commit`, which the store's writer thread makes (an fsync never pins one of
    /// the runtime's workers).
    pub(crate) async fn wait(&self, commit: Commit) -> Result<(), OpError> {
        match commit.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OpError::Store(e)),
            Err(_) => Err(OpError::Store("the store has stopped".into())),
        }
    }

    /// Publishes every network's usage (at start: the gauges exist before the first request).
    pub fn publish_all(&self) {
        let st = self.lock();
        for n in st.pools.keys() {
            publish(&st, n);
        }
    }

    /// After a failed commit, tries an empty one, so readiness comes back once the store is
    /// writable again even on a node where nothing else is committed.
    pub async fn probe_store(&self) {
        if !self.store_ok.load(Ordering::Acquire) {
            let commit = self.writer.submit(vec![Op::Probe]);
            let _ = self.wait(commit).await;
        }
    }

    /// Waits until whatever is queued is committed (shutdown): an empty commit is made after
    /// everything queued before it.
    pub async fn stop_store(&self) {
        let _ = self.wait(self.writer.submit(Vec::new())).await;
    }

    /// Ends reuse delays that are over (housekeeping: not awaited).
    pub fn expire_cooling(&self) {
        {
            let mut st = self.lock();
            let mut ops = Vec::new();
            if st.expire_cooling(clock::now(), &mut ops) == 0 {
                return;
            }
            self.writer.submit_detached(ops);
            let networks: Vec<String> = st.pools.keys().cloned().collect();
            for n in networks {
                publish(&st, &n);
            }
        }
    }

    /// Imports every network found in host-local's `dataDir` that the daemon does not know
    /// yet (at start; later networks are imported on their first Allocate).
    pub async fn import_all(&self) -> Result<(), OpError> {
        let Some(hl) = &self.host_local else {
            return Ok(());
        };
        let dir = hl.dir.clone();
        let names = tokio::task::spawn_blocking(move || import::networks(&dir))
            .await
            .unwrap_or_default();
        for name in names {
            self.import(&name).await?;
        }
        Ok(())
    }

    /// Imports `network` unless it was (see [`Daemon::read_import`]), durably.
    async fn import(&self, network: &str) -> Result<(), OpError> {
        let found = self.read_import(network).await;
        let commit = {
            let mut st = self.lock();
            let mut ops = Vec::new();
            apply_import(&mut st, network, found, &mut ops);
            self.submit(ops)
        };
        self.wait(commit).await
    }

    /// Tries the failed imports whose retry is due (housekeeping, every second).
    pub async fn retry_imports(&self) {
        let due: Vec<String> = {
            let failed = self.import_failed.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            failed
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(n, _)| n.clone())
                .collect()
        };
        for network in due {
            // A failed commit leaves the import unrecorded: the next Allocate imports again.
            let _ = self.import(&network).await;
        }
    }

    /// `network`'s host-local reservations, read (under host-local's file lock, on a blocking
    /// thread) unless the store records the network imported, or its last failure is recent:
    /// a failed import is retried on a schedule, not by every ADD.
    async fn read_import(&self, network: &str) -> Option<Vec<(IpAddr, Record)>> {
        let hl = self.host_local.clone()?;
        if self.lock().imported.contains(network) {
            return None;
        }
        {
            let failed = self.import_failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.get(network).is_some_and(|at| *at > Instant::now()) {
                return None;
            }
        }
        let name = network.to_string();
        let read = tokio::task::spawn_blocking(move || import::hand_over(&hl, &name)).await;
        let mut failed = self.import_failed.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Ok(Ok(found)) => {
                if failed.remove(network).is_some() && failed.is_empty() {
                    drop(failed);
                    self.warn("import_failed", None);
                }
                Some(found)
            }
            Ok(Err(e)) => {
                // The daemon allocates regardless: the import only adds what embedded mode held.
                failed.insert(network.to_string(), Instant::now() + IMPORT_RETRY);
                drop(failed);
                self.warn(
                    "import_failed",
                    Some(format!(
                        "import of host-local network {network} failed (retried every {}s): {e}",
                        IMPORT_RETRY.as_secs()
                    )),
                );
                None
            }
            Err(_) => {
                failed.insert(network.to_string(), Instant::now() + IMPORT_RETRY);
                None
            }
        }
    }
}

/// Enters `found` (a network's host-local reservations) into the state unless the network
/// was imported meanwhile. The allocations and the record of the import go in one commit, so
/// a daemon killed in between imports again, and one that finished never imports twice
/// (which would bring back released addresses).
fn apply_import(
    st: &mut State,
    network: &str,
    found: Option<Vec<(IpAddr, Record)>>,
    ops: &mut Vec<Op>,
) {
    let Some(found) = found else { return };
    if st.imported.contains(network) {
        return;
    }
    let pool = st.pools.entry(network.to_string()).or_default();
    for (ip, rec) in found {
        // An address the daemon already holds keeps its owner.
        if pool.by_ip.contains_key(&ip) {
            continue;
        }
        ops.push(Op::Put(network.to_string(), ip, rec.clone()));
        pool.insert(ip, rec);
    }
    ops.push(Op::Imported(network.to_string()));
    st.imported.insert(network.to_string());
}

/// Publishes a network's usage to the metrics.
fn publish(st: &State, network: &str) {
    if let Some(p) = st.pools.get(network) {
        metrics::pool(network, p.by_ip.len(), p.free(), p.cooling.len());
    }
}
