//! One node's side of cluster IPAM: its registration and lease, the blocks it owns and the
//! addresses it borrowed (a cache of etcd, rebuilt from etcd after any doubt), and every change
//! to them as one compare-and-swap transaction.
//!
//! The rule that keeps addresses unique: a node hands out only addresses its blocks' records
//! say it holds (`held`, or its `foreign` set in another node's block), and only while its
//! lease is certainly valid: until the send time of its last answered keep-alive plus the TTL
//! etcd granted, less a margin. etcd cannot expire the lease before then, and nobody reclaims
//! a block before its owner's lease is gone, so what the node believes it holds is true
//! whenever it acts on it. After a lease loss it re-registers and rebuilds its holdings from
//! etcd (fencing) before it allocates again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use trestle_ipam_core::boottime_ns;

use crate::block::{Bitmap, Block, Pool, PoolError};
use crate::client::{Etcd, EtcdError};
use crate::keys::Keys;
use crate::kv::Store;

pub use allocation::{AllocationError, Attempt};

mod allocation;
mod cas;
mod exhaustion;
mod growth;
mod holdings;
mod housekeeping;
mod lease;

/// A node's cluster settings.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The node's name (unique in the cluster).
    pub name: String,
    /// The key prefix.
    pub prefix: String,
    /// The node lease's TTL.
    pub lease_ttl: Duration,
    /// How long after a node's lease is gone its blocks may be reclaimed.
    pub reclaim_grace: Duration,
    /// How long a block stays empty before it goes back (a node keeps its last one per pool).
    pub release_grace: Duration,
    /// Never borrow addresses from other nodes' blocks.
    pub strict_affinity: bool,
    /// Block prefix lengths for pools created by this node, by subnet; else the defaults.
    pub block_sizes: Vec<(IpNet, u8)>,
    /// Default IPv4 block prefix length (26: 64 addresses).
    pub block_v4: u8,
    /// Default IPv6 block prefix length (122: 64 addresses).
    pub block_v6: u8,
    /// This run's identity on this machine (the boot ID): a restart on the same boot takes its
    /// registration over, a machine with the same name on another boot waits for it to lapse.
    pub instance: String,
}

impl NodeSettings {
    /// Settings with the defaults for `name`.
    pub fn new(name: &str, prefix: &str, instance: &str) -> NodeSettings {
        NodeSettings {
            name: name.to_string(),
            prefix: prefix.to_string(),
            lease_ttl: Duration::from_secs(15),
            reclaim_grace: Duration::from_secs(300),
            release_grace: Duration::from_secs(600),
            strict_affinity: false,
            block_sizes: Vec::new(),
            block_v4: 26,
            block_v6: 122,
            instance: instance.to_string(),
        }
    }

    fn block_prefix(&self, subnet: IpNet) -> u8 {
        self.block_sizes
            .iter()
            .find(|(n, _)| n.trunc() == subnet.trunc())
            .map(|(_, b)| *b)
            .unwrap_or(if subnet.addr().is_ipv4() {
                self.block_v4
            } else {
                self.block_v6
            })
    }
}

/// Why the cluster cannot give an address now.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node cannot prove its lease valid (etcd unreachable, or re-registering).
    #[error("this node's etcd lease is not certainly valid (etcd unreachable, or fencing after a lease loss); try again later")]
    LeaseUncertain,
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The pool's geometry.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// No block to claim or reclaim and nothing to borrow.
    #[error("pool {0} has no address left for this node")]
    Exhausted(String),
    /// A requested address is taken or outside the pool.
    #[error("{ip} is not available: {why}")]
    Unavailable {
        /// The address.
        ip: IpAddr,
        /// Why.
        why: String,
    },
    /// A record etcd holds cannot be read.
    #[error("unreadable record {0}")]
    Corrupt(String),
}

/// A block this node owns.
#[derive(Debug, Clone)]
struct Owned {
    block: Block,
    rev: i64,
    /// Not allocated from: its release is under way.
    draining: bool,
    /// Allocation is limited to this subset of `held` while a shrink is written.
    limit: Option<Bitmap>,
    /// When (CLOCK_BOOTTIME) it was first seen with nothing in use.
    empty_since: Option<u64>,
    /// When it was first seen holding more than a chunk unused.
    slack_since: Option<u64>,
}

/// Addresses this node holds in another node's block.
#[derive(Debug, Clone)]
struct Borrowed {
    bits: Bitmap,
}

/// One pool's holdings.
#[derive(Debug, Clone)]
struct Holding {
    pool: Pool,
    owned: BTreeMap<u128, Owned>,
    borrowed: BTreeMap<u128, Borrowed>,
}

/// The node's registration record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// See [`NodeSettings::instance`].
    pub instance: String,
    /// Its lease.
    pub lease: i64,
    /// Wall clock at registration, ms.
    pub since_ms: i64,
    /// The software.
    pub version: String,
}

/// `expired/<node>`'s value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expired {
    /// Wall clock when a node first saw the lease gone, ms.
    pub noticed_ms: i64,
    /// Who noticed.
    pub by: String,
}

/// Counts of what the node did, for metrics and the bench.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blocks claimed.
    pub claims: AtomicU64,
    /// Reservations extended.
    pub extends: AtomicU64,
    /// Blocks reclaimed from dead nodes.
    pub reclaims: AtomicU64,
    /// Addresses borrowed.
    pub borrows: AtomicU64,
    /// Empty blocks given back.
    pub releases: AtomicU64,
    /// Reservations shrunk, and borrowed addresses returned.
    pub shrinks: AtomicU64,
    /// Re-registrations after a lost lease (each followed by fencing).
    pub fencings: AtomicU64,
    /// Compare-and-swap transactions that lost a race.
    pub conflicts: AtomicU64,
}

/// A node's usage of one pool, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// The network.
    pub network: String,
    /// The pool (its subnet).
    pub pool: IpNet,
    /// Blocks owned.
    pub blocks: usize,
    /// Addresses held in them.
    pub held: u32,
    /// Addresses held in other nodes' blocks.
    pub borrowed: u32,
}

/// Background work planned under the daemon's lock and done afterwards.
#[derive(Debug)]
pub enum Plan {
    /// Give back an empty block.
    Release(String, IpNet, u128),
    /// Write a smaller `held`.
    Shrink(String, IpNet, u128, Bitmap),
    /// Return borrowed addresses.
    Return(String, IpNet, u128, Bitmap),
}

type PoolKey = (String, IpNet);

/// One node of the cluster, over etcd (or, in tests, any [`Store`]).
pub struct Node<K = Etcd> {
    etcd: K,
    keys: Keys,
    s: NodeSettings,
    /// CLOCK_BOOTTIME until which the lease is certainly valid; 0: not valid.
    deadline_ns: AtomicU64,
    /// The mod revision of this process's registration key: every block write compares it,
    /// so nothing this node proposed under an earlier registration (or an earlier process)
    /// can apply after the registration that fencing follows.
    registration: std::sync::atomic::AtomicI64,
    holdings: Mutex<HashMap<PoolKey, Holding>>,
    /// Bumped at every change of the holdings: a waiting ADD knows someone grew them.
    generation: AtomicU64,
    grow: tokio::sync::Mutex<()>,
    nonce: AtomicU64,
    /// This process among all that ran as this node (a restart on the same boot reads back
    /// its predecessor's writes and must not take them for its own).
    process: u64,
    /// What it did.
    pub stats: Stats,
}

impl<K: Store> Node<K> {
    /// A node over `etcd`; call [`Node::run`] to register it.
    pub fn new(etcd: K, s: NodeSettings) -> Arc<Node<K>> {
        Arc::new(Node {
            keys: Keys::new(&s.prefix),
            etcd,
            s,
            deadline_ns: AtomicU64::new(0),
            registration: std::sync::atomic::AtomicI64::new(0),
            holdings: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            grow: tokio::sync::Mutex::new(()),
            nonce: AtomicU64::new(0),
            process: boottime_ns() ^ (u64::from(std::process::id()) << 40),
            stats: Stats::default(),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.s.name
    }

    /// The holdings' generation (see [`Node::grow`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl Node<Etcd> {
    /// The client (its counters are the node's etcd requests).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }
}
