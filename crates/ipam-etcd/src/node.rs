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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use trestle_ipam_core::{boottime_ns, unix_ms, Range};

use crate::block::{Bitmap, Block, Pool, PoolError};
use crate::client::{Etcd, EtcdError, KeyValue, Txn};
use crate::keys::Keys;

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

/// One node of the cluster.
pub struct Node {
    etcd: Etcd,
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

/// The outcome of returning borrowed addresses.
enum Returned {
    /// Etcd no longer gives these addresses to this node.
    Done,
    /// Certainly not returned: these are still this node's.
    Not(Bitmap),
    /// Maybe returned.
    Unknown,
}

/// The outcome of a compare-and-swap.
enum Cas {
    /// It applied; the key's new revision.
    Done(i64),
    /// It did not apply and never will (the key moved on): what the key holds now.
    Lost(Option<KeyValue>),
    /// No answer, and the key still looks as compared: the write may yet apply.
    Unknown,
}

impl Node {
    /// A node over `etcd`; call [`Node::run`] to register it.
    pub fn new(etcd: Etcd, s: NodeSettings) -> Arc<Node> {
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

    /// The client (its counters are the node's etcd requests).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// True while the lease is certainly valid and the holdings are fenced.
    pub fn lease_valid(&self) -> bool {
        boottime_ns() < self.deadline_ns.load(Ordering::Acquire)
    }

    /// The holdings' generation (see [`Node::grow`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn holdings(&self) -> MutexGuard<'_, HashMap<PoolKey, Holding>> {
        self.holdings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A transaction that applies only while this node's current registration stands.
    fn block_txn(&self) -> Txn {
        let rev = self.registration.load(Ordering::Acquire);
        Txn::new().if_mod(&self.keys.node(&self.s.name), rev.max(1))
    }

    fn writer(&self) -> String {
        format!(
            "{}:{}:{:x}:{}",
            self.s.name,
            self.s.instance,
            self.process,
            self.nonce.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// True if fewer than a quarter chunk of the addresses this node holds in `network`'s pool
    /// of `range` are free locally (`free`): time to grow ahead of the ADDs.
    pub fn running_low(
        &self,
        network: &str,
        range: &Range,
        free: &mut dyn FnMut(IpAddr) -> bool,
    ) -> bool {
        let low = {
            let h = self.holdings();
            match h.get(&(network.to_string(), range.subnet.trunc())) {
                Some(hold) => (hold.pool.chunk() / 4).max(1),
                None => return false,
            }
        };
        let mut n = 0;
        let mut enough = |ip: IpAddr| {
            if free(ip) {
                n += 1;
            }
            n >= low
        };
        self.pick(network, range, &mut enough).is_none()
    }

    /// Grows the holdings ahead of need (an extension or a block claim, never a reclaim or a
    /// borrow), in the background after an ADD found them running low, so the ADDs that follow
    /// find addresses without waiting for etcd. Skipped if a growth is under way.
    pub async fn grow_ahead(&self, network: &str, range: &Range) {
        let Ok(_one) = self.grow.try_lock() else {
            return;
        };
        if !self.lease_valid() {
            return;
        }
        let grown = async {
            let pool = self.ensure_pool(network, range).await?;
            Ok::<_, ClusterError>(
                self.extend(network, &pool).await? || self.claim(network, &pool, None).await?,
            )
        };
        if let Err(e) = grown.await {
            log::debug!("growing ahead in {network}: {e}");
        }
    }

    /// The first address of `network`'s pool of `range` this node holds for which `take`
    /// says yes (it is free locally), lowest first: own blocks, then borrowed addresses.
    pub fn pick(
        &self,
        network: &str,
        range: &Range,
        take: &mut dyn FnMut(IpAddr) -> bool,
    ) -> Option<IpAddr> {
        let h = self.holdings();
        let hold = h.get(&(network.to_string(), range.subnet.trunc()))?;
        for (n, o) in &hold.owned {
            if o.draining {
                continue;
            }
            let start = hold.pool.block_start(*n);
            let bits = match &o.limit {
                Some(l) => o.block.held.intersect(l),
                None => o.block.held.clone(),
            };
            for i in bits.iter() {
                let ip = hold.pool.address(start, i);
                if hold.pool.usable(ip) && take(ip) {
                    return Some(ip);
                }
            }
        }
        for (n, b) in &hold.borrowed {
            let start = hold.pool.block_start(*n);
            for i in b.bits.iter() {
                let ip = hold.pool.address(start, i);
                if take(ip) {
                    return Some(ip);
                }
            }
        }
        None
    }

    /// True if this node holds `ip` in `network`'s pool of `range` (owned or borrowed).
    pub fn covers(&self, network: &str, subnet: IpNet, ip: IpAddr) -> bool {
        let h = self.holdings();
        let Some(hold) = h.get(&(network.to_string(), subnet.trunc())) else {
            return false;
        };
        let Some((start, i)) = hold.pool.block_of(ip) else {
            return false;
        };
        let n = hold.pool.index_of(start);
        // What `pick` may hand out: not a draining block, nor what a shrink gives up.
        let owned = hold.owned.get(&n).is_some_and(|o| {
            !o.draining && o.block.held.get(i) && o.limit.as_ref().is_none_or(|l| l.get(i))
        });
        owned || hold.borrowed.get(&n).is_some_and(|b| b.bits.get(i))
    }

    /// True if this node holds `ip` in any pool of `network`.
    pub fn covers_any(&self, network: &str, ip: IpAddr) -> bool {
        let subnets: Vec<IpNet> = self
            .holdings()
            .iter()
            .filter(|((n, s), _)| n == network && s.contains(&ip))
            .map(|((_, s), _)| *s)
            .collect();
        subnets.into_iter().any(|s| self.covers(network, s, ip))
    }

    /// Every address this node holds in etcd (its blocks' reservations, draining ones and
    /// shrinking ones included, and its borrowed addresses), by network: what a daemon whose
    /// store was lost must treat as possibly in use.
    pub fn held_addresses(&self) -> Vec<(String, IpAddr)> {
        let h = self.holdings();
        let mut out = Vec::new();
        for ((network, _), hold) in h.iter() {
            for (n, o) in &hold.owned {
                let start = hold.pool.block_start(*n);
                out.extend(
                    o.block
                        .held
                        .iter()
                        .map(|i| hold.pool.address(start, i))
                        .filter(|ip| hold.pool.usable(*ip))
                        .map(|ip| (network.clone(), ip)),
                );
            }
            for (n, b) in &hold.borrowed {
                let start = hold.pool.block_start(*n);
                out.extend(
                    b.bits
                        .iter()
                        .map(|i| (network.clone(), hold.pool.address(start, i))),
                );
            }
        }
        out
    }

    /// Usage per pool.
    pub fn usage(&self) -> Vec<PoolUsage> {
        let h = self.holdings();
        let mut out: Vec<PoolUsage> = h
            .iter()
            .map(|((net, subnet), hold)| PoolUsage {
                network: net.clone(),
                pool: *subnet,
                blocks: hold.owned.len(),
                held: hold.owned.values().map(|o| o.block.held.count()).sum(),
                borrowed: hold.borrowed.values().map(|b| b.bits.count()).sum(),
            })
            .collect();
        out.sort_by(|a, b| (&a.network, a.pool).cmp(&(&b.network, b.pool)));
        out
    }

    /// Makes `network`'s pool of `range` able to give one more address (or `want`): extends a
    /// reservation, claims a block, reclaims a dead node's, or borrows, in that order. One ADD
    /// grows at a time; if the holdings changed since `seen` (another ADD grew them), it
    /// returns at once so the caller picks again.
    pub async fn grow(
        &self,
        network: &str,
        range: &Range,
        want: Option<IpAddr>,
        seen: u64,
    ) -> Result<(), ClusterError> {
        if !self.lease_valid() {
            return Err(ClusterError::LeaseUncertain);
        }
        let _one = self.grow.lock().await;
        if want.is_none() && self.generation() != seen {
            return Ok(());
        }
        let pool = self.ensure_pool(network, range).await?;
        if let Some(ip) = want {
            return self.acquire(network, &pool, ip).await;
        }
        if self.extend(network, &pool).await?
            || self.claim(network, &pool, None).await?
            || self.reclaim(network, &pool).await?
            || (!self.s.strict_affinity && self.borrow(network, &pool, None).await?)
        {
            return Ok(());
        }
        Err(ClusterError::Exhausted(format!(
            "{network}/{}",
            pool.subnet
        )))
    }

    /// The pool's record: created by the first node to use it; it must agree with ours.
    async fn ensure_pool(&self, network: &str, range: &Range) -> Result<Pool, ClusterError> {
        let subnet = range.subnet.trunc();
        if let Some(h) = self.holdings().get(&(network.to_string(), subnet)) {
            return Ok(h.pool.clone());
        }
        let ours = Pool::new(range, self.s.block_prefix(subnet));
        let key = self
            .keys
            .pool(network, &subnet.to_string().replace('/', "_"));
        let prefix = self.keys.pool(network, "");
        let existing = loop {
            // The network's pools, read (not written: every node but the first finds its pool).
            let (listed, at) = self
                .etcd
                .range(
                    prefix.as_bytes(),
                    &crate::client::prefix_end(prefix.as_bytes()),
                    false,
                )
                .await?;
            let mut found = None;
            for kv in listed {
                let Ok(p) = serde_json::from_slice::<Pool>(&kv.value) else {
                    continue;
                };
                if p.subnet == subnet {
                    found = Some(kv);
                } else if p.subnet.contains(&subnet.network())
                    || subnet.contains(&p.subnet.network())
                {
                    // Two pools over the same addresses would hand them out twice.
                    return Err(PoolError::Overlap {
                        ours: subnet,
                        theirs: p.subnet,
                    }
                    .into());
                }
            }
            if found.is_some() {
                break found;
            }
            // Our default block size may not fit; then only an existing pool will do.
            let p = match &ours {
                Ok(p) => p,
                Err(_) => break None,
            };
            let value = serde_json::to_vec(p).expect("plain data");
            // Created only if no pool of the network appeared since the read (else read again).
            let out = self
                .etcd
                .txn(
                    Txn::new()
                        .if_absent(&key)
                        .if_range_unchanged(&prefix, at)
                        .put(&key, value, 0),
                )
                .await?;
            if out.succeeded {
                break None;
            }
        };
        let pool = match existing {
            None => ours?,
            Some(kv) => {
                let theirs: Pool = serde_json::from_slice(&kv.value)
                    .map_err(|_| ClusterError::Corrupt(key.clone()))?;
                // The block size is the pool's, whoever created it; the range must match.
                let cmp = Pool::new(range, theirs.block_prefix)?;
                if let Some(e) = cmp.mismatch(&theirs) {
                    return Err(e.into());
                }
                theirs
            }
        };
        self.holdings()
            .entry((network.to_string(), subnet))
            .or_insert_with(|| Holding {
                pool: pool.clone(),
                owned: BTreeMap::new(),
                borrowed: BTreeMap::new(),
            });
        Ok(pool)
    }

    /// One compare-and-swap on `key` (compared at revision `rev`, 0: absent): `txn` carries
    /// the comparisons and writes. An answer lost in transit is settled by reading the key
    /// back: our `writer` nonce there, it applied; the key moved on, it never will; otherwise
    /// it may still apply ([`Cas::Unknown`]), and a write that gives addresses up must then be
    /// treated as possibly done.
    async fn cas(
        &self,
        key: &str,
        rev: i64,
        txn: Txn,
        writer: Option<&str>,
        len: u32,
    ) -> Result<Cas, ClusterError> {
        let ours = |kv: &KeyValue| {
            writer.is_some_and(|w| Block::decode(&kv.value, len).is_some_and(|b| b.writer == w))
        };
        match self.etcd.txn(txn.or_get(key)).await {
            Ok(o) if o.succeeded => Ok(Cas::Done(o.revision)),
            Ok(o) => {
                // Compared and refused: the key moved on (an earlier attempt of ours may be
                // what moved it, which the nonce tells).
                let cur = o.read(0).pop();
                if let Some(kv) = cur.as_ref().filter(|kv| ours(kv)) {
                    return Ok(Cas::Done(kv.mod_revision));
                }
                // The block is as compared: what failed is this node's registration.
                if cur.as_ref().map_or(0, |kv| kv.mod_revision) == rev {
                    return Err(ClusterError::LeaseUncertain);
                }
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                Ok(Cas::Lost(cur))
            }
            Err(_) => match self.etcd.get(key).await {
                Err(_) => Ok(Cas::Unknown),
                Ok(Some(kv)) if ours(&kv) => Ok(Cas::Done(kv.mod_revision)),
                Ok(Some(kv)) if kv.mod_revision == rev => Ok(Cas::Unknown),
                Ok(None) if rev == 0 => Ok(Cas::Unknown),
                Ok(cur) => Ok(Cas::Lost(cur)),
            },
        }
    }

    fn new_block(&self, held: Bitmap, foreign: BTreeMap<String, Bitmap>) -> Block {
        Block {
            owner: self.s.name.clone(),
            held,
            foreign,
            writer: self.writer(),
            at_ms: unix_ms(),
        }
    }

    fn record_owned(&self, network: &str, pool: &Pool, n: u128, block: Block, rev: i64) {
        let mut h = self.holdings();
        if let Some(hold) = h.get_mut(&(network.to_string(), pool.subnet)) {
            hold.owned.insert(
                n,
                Owned {
                    block,
                    rev,
                    draining: false,
                    limit: None,
                    empty_since: None,
                    slack_since: None,
                },
            );
        }
        drop(h);
        self.changed();
    }

    /// Extends the reservation of an owned block that has unheld addresses by one chunk.
    async fn extend(&self, network: &str, pool: &Pool) -> Result<bool, ClusterError> {
        for _ in 0..5 {
            let candidate = {
                let h = self.holdings();
                let hold = &h[&(network.to_string(), pool.subnet)];
                hold.owned.iter().find_map(|(n, o)| {
                    let free = o.block.free(&pool.usable_in(pool.block_start(*n)));
                    (!o.draining && !free.is_empty()).then(|| (*n, o.clone(), free))
                })
            };
            let Some((n, o, free)) = candidate else {
                return Ok(false);
            };
            let mut held = o.block.held.clone();
            for i in free.iter().take(pool.chunk() as usize) {
                held.set(i, true);
            }
            match self.write_held(network, pool, n, &o, held).await? {
                Cas::Done(_) => {
                    self.stats.extends.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                Cas::Lost(cur) => self.refresh_owned(network, pool, n, cur),
                // The extension may apply later: harmless, its addresses are simply not used.
                Cas::Unknown => return Err(unknown()),
            }
        }
        Ok(false)
    }

    /// Writes `held` as the reservation of owned block `n`, compared at the revision `o` was
    /// read at; the cache follows a successful write.
    async fn write_held(
        &self,
        network: &str,
        pool: &Pool,
        n: u128,
        o: &Owned,
        held: Bitmap,
    ) -> Result<Cas, ClusterError> {
        let new = self.new_block(held, o.block.foreign.clone());
        let key = self.keys.block(network, &pool.id(), pool.block_start(n));
        let txn = self
            .block_txn()
            .if_mod(&key, o.rev)
            .put(&key, new.encode(), 0);
        let out = self
            .cas(&key, o.rev, txn, Some(&new.writer), pool.block_len())
            .await?;
        if let Cas::Done(rev) = out {
            self.record_owned(network, pool, n, new, rev);
        }
        Ok(out)
    }

    /// After a lost race on an owned block: its current record (a borrower changed it; or it is
    /// no longer ours, which only an operator's release-node does to a live node).
    fn refresh_owned(&self, network: &str, pool: &Pool, n: u128, cur: Option<KeyValue>) {
        let mut h = self.holdings();
        let Some(hold) = h.get_mut(&(network.to_string(), pool.subnet)) else {
            return;
        };
        let block = cur.as_ref().and_then(|kv| {
            Block::decode(&kv.value, pool.block_len()).map(|b| (b, kv.mod_revision))
        });
        match block {
            Some((b, rev)) if b.owner == self.s.name => {
                if let Some(o) = hold.owned.get_mut(&n) {
                    o.block = b;
                    o.rev = rev;
                }
            }
            other => {
                log::error!(
                    "block {} of {network} is no longer this node's (now {}): not allocating from it",
                    pool.block_start(n),
                    other.map_or("released".to_string(), |(b, _)| b.owner)
                );
                hold.owned.remove(&n);
            }
        }
        drop(h);
        self.changed();
    }

    /// Claims a free block (the one holding `want`, if given), with one chunk held.
    async fn claim(
        &self,
        network: &str,
        pool: &Pool,
        want: Option<IpAddr>,
    ) -> Result<bool, ClusterError> {
        let prefix = self.keys.blocks(network, &pool.id());
        let mut taken: BTreeSet<u128> = BTreeSet::new();
        if want.is_none() {
            for kv in self.etcd.list(&prefix, true).await? {
                if let Ok(ip) = Keys::last(&kv.key).parse::<IpAddr>() {
                    taken.insert(pool.index_of(ip));
                }
            }
        }
        let seed = pool.seed(&self.s.name);
        for _ in 0..8 {
            let n = match want {
                Some(ip) => pool.index_of(pool.block_of(ip).map(|(s, _)| s).unwrap_or(ip)),
                None => match pool.pick_free(seed, &taken) {
                    Some(n) => n,
                    None => return Ok(false),
                },
            };
            let start = pool.block_start(n);
            let usable = pool.usable_in(start);
            let mut held = Bitmap::new(pool.block_len());
            for i in usable.iter().take(pool.chunk() as usize) {
                held.set(i, true);
            }
            if let Some((_, i)) = want.and_then(|ip| pool.block_of(ip)) {
                held.set(i, true);
            }
            if held.is_empty() {
                taken.insert(n);
                continue;
            }
            let new = self.new_block(held, BTreeMap::new());
            let key = self.keys.block(network, &pool.id(), start);
            let txn = self
                .block_txn()
                .if_absent(&key)
                .put(&key, new.encode(), 0)
                .put(
                    &self.keys.affinity(&self.s.name, network, &pool.id(), start),
                    Vec::new(),
                    0,
                );
            match self
                .cas(&key, 0, txn, Some(&new.writer), pool.block_len())
                .await?
            {
                Cas::Unknown => return Err(unknown()),
                Cas::Done(rev) => {
                    self.stats.claims.fetch_add(1, Ordering::Relaxed);
                    log::info!("claimed block {start}/{} of {network}", pool.block_prefix);
                    self.record_owned(network, pool, n, new, rev);
                    return Ok(true);
                }
                Cas::Lost(None) => return Err(ClusterError::LeaseUncertain),
                Cas::Lost(Some(_)) if want.is_some() => return Ok(false),
                Cas::Lost(Some(_)) => {
                    taken.insert(n);
                }
            }
        }
        Ok(false)
    }

    /// Takes over a block of a node whose lease has been gone for the grace period. What the
    /// dead node held stays held in its name (its pods may still run, cut off from etcd); the
    /// rest of the block becomes this node's.
    async fn reclaim(&self, network: &str, pool: &Pool) -> Result<bool, ClusterError> {
        let live: BTreeSet<String> = self
            .etcd
            .list(&self.keys.nodes(), true)
            .await?
            .iter()
            .map(|kv| Keys::last(&kv.key))
            .collect();
        let mut dead: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for kv in self.etcd.list(&self.keys.affinities(None), true).await? {
            if let Some((node, net, pid, start)) = self.keys.parse_index(&kv.key) {
                if net == network
                    && pid == pool.id()
                    && !live.contains(&node)
                    && node != self.s.name
                {
                    dead.entry(node).or_default().push(start);
                }
            }
        }
        for (node, starts) in dead {
            if !self.grace_over(&node).await? {
                continue;
            }
            for start in starts {
                if self.reclaim_block(network, pool, &node, start).await? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// True once `node`'s lease has been seen gone for the reclaim grace (the first look
    /// records the moment).
    async fn grace_over(&self, node: &str) -> Result<bool, ClusterError> {
        let key = self.keys.expired(node);
        let value = serde_json::to_vec(&Expired {
            noticed_ms: unix_ms(),
            by: self.s.name.clone(),
        })
        .expect("plain data");
        let out = self
            .etcd
            .txn(
                Txn::new()
                    .if_absent(&key)
                    .if_absent(&self.keys.node(node))
                    .put(&key, value, 0)
                    .or_get(&key),
            )
            .await?;
        if out.succeeded {
            log::info!(
                "node {node}'s lease is gone; its blocks may be reclaimed after {:?}",
                self.s.reclaim_grace
            );
            return Ok(self.s.reclaim_grace.is_zero());
        }
        let Some(kv) = out.read(0).pop() else {
            // The node is alive again.
            return Ok(false);
        };
        let e: Expired =
            serde_json::from_slice(&kv.value).map_err(|_| ClusterError::Corrupt(key))?;
        Ok(unix_ms().saturating_sub(e.noticed_ms) >= self.s.reclaim_grace.as_millis() as i64)
    }

    async fn reclaim_block(
        &self,
        network: &str,
        pool: &Pool,
        dead: &str,
        start: IpAddr,
    ) -> Result<bool, ClusterError> {
        let key = self.keys.block(network, &pool.id(), start);
        let Some(kv) = self.etcd.get(&key).await? else {
            return Ok(false);
        };
        let old = Block::decode(&kv.value, pool.block_len())
            .ok_or_else(|| ClusterError::Corrupt(key.clone()))?;
        if old.owner != dead {
            return Ok(false);
        }
        let free = old.free(&pool.usable_in(start));
        if free.is_empty() {
            // Everything is still held in the dead node's name: nothing to gain yet.
            return Ok(false);
        }
        let mut foreign = old.foreign.clone();
        let theirs = foreign
            .entry(dead.to_string())
            .or_insert_with(|| Bitmap::new(pool.block_len()));
        *theirs = theirs.union(&old.held);
        let mut held = Bitmap::new(pool.block_len());
        for i in free.iter().take(pool.chunk() as usize) {
            held.set(i, true);
        }
        let new = self.new_block(held, foreign);
        let mut txn = self
            .block_txn()
            .if_mod(&key, kv.mod_revision)
            .if_absent(&self.keys.node(dead))
            .put(&key, new.encode(), 0)
            .delete(&self.keys.affinity(dead, network, &pool.id(), start))
            .put(
                &self.keys.affinity(&self.s.name, network, &pool.id(), start),
                Vec::new(),
                0,
            );
        if !old.held.is_empty() {
            txn = txn.put(
                &self.keys.borrowed(dead, network, &pool.id(), start),
                Vec::new(),
                0,
            );
        }
        match self
            .cas(
                &key,
                kv.mod_revision,
                txn,
                Some(&new.writer),
                pool.block_len(),
            )
            .await?
        {
            Cas::Unknown => Err(unknown()),
            Cas::Done(rev) => {
                self.stats.reclaims.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "reclaimed block {start}/{} of {network} from {dead} (lease gone); its {} held addresses stay reserved for it",
                    pool.block_prefix,
                    old.held.count()
                );
                self.record_owned(network, pool, pool.index_of(start), new, rev);
                Ok(true)
            }
            Cas::Lost(_) => Ok(false),
        }
    }

    /// Borrows one address (`want`, or any) from another node's block.
    async fn borrow(
        &self,
        network: &str,
        pool: &Pool,
        want: Option<IpAddr>,
    ) -> Result<bool, ClusterError> {
        let prefix = self.keys.blocks(network, &pool.id());
        let kvs = match want.and_then(|ip| pool.block_of(ip)) {
            Some((start, _)) => self
                .etcd
                .get(&self.keys.block(network, &pool.id(), start))
                .await?
                .into_iter()
                .collect(),
            None => self.etcd.list(&prefix, false).await?,
        };
        for kv in kvs {
            let Ok(start) = Keys::last(&kv.key).parse::<IpAddr>() else {
                continue;
            };
            let Some(old) = Block::decode(&kv.value, pool.block_len()) else {
                continue;
            };
            if old.owner == self.s.name {
                continue;
            }
            let free = old.free(&pool.usable_in(start));
            let i = match want.and_then(|ip| pool.block_of(ip)) {
                Some((_, i)) if free.get(i) => i,
                Some(_) => return Ok(false),
                None => match free.iter().next() {
                    Some(i) => i,
                    None => continue,
                },
            };
            let mut new = old.clone();
            new.foreign
                .entry(self.s.name.clone())
                .or_insert_with(|| Bitmap::new(pool.block_len()))
                .set(i, true);
            new.writer = self.writer();
            new.at_ms = unix_ms();
            let key = self.keys.block(network, &pool.id(), start);
            let txn = self
                .block_txn()
                .if_mod(&key, kv.mod_revision)
                .put(&key, new.encode(), 0)
                .put(
                    &self.keys.borrowed(&self.s.name, network, &pool.id(), start),
                    Vec::new(),
                    0,
                );
            let outcome = self
                .cas(
                    &key,
                    kv.mod_revision,
                    txn,
                    Some(&new.writer),
                    pool.block_len(),
                )
                .await?;
            if matches!(outcome, Cas::Unknown) {
                return Err(unknown());
            }
            if let Cas::Done(_) = outcome {
                self.stats.borrows.fetch_add(1, Ordering::Relaxed);
                let n = pool.index_of(start);
                let mut h = self.holdings();
                if let Some(hold) = h.get_mut(&(network.to_string(), pool.subnet)) {
                    hold.borrowed
                        .entry(n)
                        .or_insert_with(|| Borrowed {
                            bits: Bitmap::new(pool.block_len()),
                        })
                        .bits
                        .set(i, true);
                }
                drop(h);
                self.changed();
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Makes a requested address this node's: in an owned block, a free block, or borrowed.
    async fn acquire(&self, network: &str, pool: &Pool, ip: IpAddr) -> Result<(), ClusterError> {
        let Some((start, i)) = pool.block_of(ip) else {
            return Err(ClusterError::Unavailable {
                ip,
                why: format!("outside pool {} or its gateway", pool.subnet),
            });
        };
        if self.covers(network, pool.subnet, ip) {
            return Ok(());
        }
        let key = self.keys.block(network, &pool.id(), start);
        for _ in 0..5 {
            let Some(kv) = self.etcd.get(&key).await? else {
                if self.claim(network, pool, Some(ip)).await? {
                    return Ok(());
                }
                continue;
            };
            let b = Block::decode(&kv.value, pool.block_len())
                .ok_or_else(|| ClusterError::Corrupt(key.clone()))?;
            if !b.free(&pool.usable_in(start)).get(i) {
                let holder = if b.held.get(i) {
                    b.owner.clone()
                } else {
                    b.foreign
                        .iter()
                        .find(|(_, f)| f.get(i))
                        .map_or("?".into(), |(n, _)| n.clone())
                };
                return Err(ClusterError::Unavailable {
                    ip,
                    why: format!("held by node {holder}"),
                });
            }
            if b.owner == self.s.name {
                let mut held = b.held.clone();
                held.set(i, true);
                let new = self.new_block(held, b.foreign.clone());
                let txn = self
                    .block_txn()
                    .if_mod(&key, kv.mod_revision)
                    .put(&key, new.encode(), 0);
                match self
                    .cas(
                        &key,
                        kv.mod_revision,
                        txn,
                        Some(&new.writer),
                        pool.block_len(),
                    )
                    .await?
                {
                    Cas::Done(rev) => {
                        self.record_owned(network, pool, pool.index_of(start), new, rev);
                        return Ok(());
                    }
                    Cas::Unknown => return Err(unknown()),
                    Cas::Lost(_) => {}
                }
            } else if self.s.strict_affinity {
                return Err(ClusterError::Unavailable {
                    ip,
                    why: format!(
                        "in node {}'s block, and this node has strict affinity",
                        b.owner
                    ),
                });
            } else if self.borrow(network, pool, Some(ip)).await? {
                return Ok(());
            }
        }
        Err(ClusterError::Unavailable {
            ip,
            why: "lost every race for it".into(),
        })
    }

    /// Runs the node: registers, fences, keeps the lease alive, and starts over after losing it.
    pub async fn run(self: Arc<Self>) {
        loop {
            let lease = match self.register().await {
                Ok(l) => l,
                Err(e) => {
                    log::warn!("cannot register node {} in etcd: {e}", self.s.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.keep_alive(lease).await;
            self.deadline_ns.store(0, Ordering::Release);
            self.stats.fencings.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "node {}'s lease {lease:x} is gone: re-registering and re-validating blocks",
                self.s.name
            );
        }
    }

    fn margin(&self) -> u64 {
        // Clock rates differ a little between this node and etcd's leader.
        (self.s.lease_ttl.as_nanos() as u64 / 10).max(500_000_000)
    }

    /// Registers (taking over this instance's earlier registration), then fences; the lease
    /// is valid from here on.
    async fn register(&self) -> Result<i64, ClusterError> {
        let key = self.keys.node(&self.s.name);
        loop {
            let sent = boottime_ns();
            let (lease, ttl) = self
                .etcd
                .grant(self.s.lease_ttl.as_secs().max(1) as i64)
                .await?;
            let value = serde_json::to_vec(&Registration {
                instance: self.s.instance.clone(),
                lease,
                since_ms: unix_ms(),
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .expect("plain data");
            let expired = self.keys.expired(&self.s.name);
            let out = self
                .etcd
                .txn(
                    Txn::new()
                        .if_absent(&key)
                        .put(&key, value.clone(), lease)
                        .delete(&expired)
                        .or_get(&key),
                )
                .await?;
            let registered = if out.succeeded {
                self.registration.store(out.revision, Ordering::Release);
                true
            } else {
                let cur = out.read(0).pop();
                let theirs = cur
                    .as_ref()
                    .and_then(|kv| serde_json::from_slice::<Registration>(&kv.value).ok());
                match (cur, theirs) {
                    (Some(kv), Some(r)) if r.instance == self.s.instance || r.lease == lease => {
                        let o = self
                            .etcd
                            .txn(
                                Txn::new()
                                    .if_mod(&key, kv.mod_revision)
                                    .put(&key, value, lease)
                                    .delete(&expired),
                            )
                            .await?;
                        if o.succeeded {
                            self.registration.store(o.revision, Ordering::Release);
                        }
                        if o.succeeded && r.lease != lease {
                            self.etcd.revoke(r.lease).await.ok();
                        }
                        o.succeeded
                    }
                    _ => {
                        log::warn!(
                            "node name {} is registered by another instance; waiting for its lease to lapse",
                            self.s.name
                        );
                        false
                    }
                }
            };
            if !registered {
                self.etcd.revoke(lease).await.ok();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.fence().await?;
            // Fencing may have taken a while: renew before counting on the lease.
            let (sent, ttl) = {
                let again = boottime_ns();
                match self.etcd.keepalive(lease).await {
                    Ok(t) if t > 0 => (again, t),
                    Ok(_) => continue,
                    Err(_) => (sent, ttl),
                }
            };
            let until = sent + (ttl.max(0) as u64) * 1_000_000_000;
            self.deadline_ns
                .store(until.saturating_sub(self.margin()), Ordering::Release);
            log::info!(
                "node {} registered in etcd (lease {lease:x}, TTL {ttl} s)",
                self.s.name
            );
            return Ok(lease);
        }
    }

    /// Keeps `lease` alive until etcd says it is gone.
    async fn keep_alive(&self, lease: i64) {
        let every = (self.s.lease_ttl / 3).max(Duration::from_millis(300));
        let mut failing = false;
        loop {
            tokio::time::sleep(if failing {
                Duration::from_millis(200)
            } else {
                every
            })
            .await;
            let sent = boottime_ns();
            match self.etcd.keepalive(lease).await {
                Ok(ttl) if ttl > 0 => {
                    let until = sent + ttl as u64 * 1_000_000_000;
                    self.deadline_ns
                        .store(until.saturating_sub(self.margin()), Ordering::Release);
                    if failing {
                        log::info!("etcd reachable again; lease {lease:x} renewed");
                    }
                    failing = false;
                }
                Ok(_) => return,
                Err(e) => {
                    if !failing {
                        log::warn!("cannot renew lease {lease:x}: {e}");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Rebuilds the holdings from etcd: the blocks indexed as ours that are ours, and our
    /// addresses in others' blocks. Nothing else is trusted after a lease loss or a restart.
    async fn fence(&self) -> Result<(), ClusterError> {
        // No claim, extension or housekeeping write is in flight while the cache is rebuilt.
        let _one = self.grow.lock().await;
        let mut pools: HashMap<(String, String), Pool> = HashMap::new();
        let mut fresh: HashMap<PoolKey, Holding> = HashMap::new();
        let me = &self.s.name;
        let mut index = self
            .etcd
            .list(&self.keys.affinities(Some(me)), true)
            .await?;
        index.extend(
            self.etcd
                .list(&self.keys.borrowings(Some(me)), true)
                .await?,
        );
        for kv in index {
            let Some((_, net, pid, start)) = self.keys.parse_index(&kv.key) else {
                continue;
            };
            let pool = match pools.get(&(net.clone(), pid.clone())) {
                Some(p) => p.clone(),
                None => {
                    let key = self.keys.pool(&net, &pid);
                    let Some(pkv) = self.etcd.get(&key).await? else {
                        continue;
                    };
                    let p: Pool = serde_json::from_slice(&pkv.value)
                        .map_err(|_| ClusterError::Corrupt(key))?;
                    pools.insert((net.clone(), pid.clone()), p.clone());
                    p
                }
            };
            let bkey = self.keys.block(&net, &pid, start);
            let Some(bkv) = self.etcd.get(&bkey).await? else {
                continue;
            };
            let Some(b) = Block::decode(&bkv.value, pool.block_len()) else {
                // Nobody can trust it, so nobody allocates from it (others skip it too).
                log::error!("unreadable block record {bkey}: skipped");
                continue;
            };
            let hold = fresh
                .entry((net.clone(), pool.subnet))
                .or_insert_with(|| Holding {
                    pool: pool.clone(),
                    owned: BTreeMap::new(),
                    borrowed: BTreeMap::new(),
                });
            let n = pool.index_of(start);
            if b.owner == *me {
                hold.owned.insert(
                    n,
                    Owned {
                        block: b.clone(),
                        rev: bkv.mod_revision,
                        draining: false,
                        limit: None,
                        empty_since: None,
                        slack_since: None,
                    },
                );
            }
            if let Some(f) = b.foreign.get(me).filter(|f| !f.is_empty()) {
                hold.borrowed.insert(n, Borrowed { bits: f.clone() });
            }
        }
        let mut h = self.holdings();
        for (k, old) in h.iter() {
            for (n, o) in &old.owned {
                // A release or shrink whose outcome is unknown may still apply: keep honouring it.
                if let Some(f) = fresh.get_mut(k).and_then(|f| f.owned.get_mut(n)) {
                    f.draining = o.draining;
                    f.limit = o.limit.as_ref().map(|l| l.intersect(&f.block.held));
                }
                if !fresh.get(k).is_some_and(|f| f.owned.contains_key(n)) {
                    log::warn!(
                        "block {} of {} is no longer this node's",
                        old.pool.block_start(*n),
                        k.0
                    );
                }
            }
        }
        // Pools known but now empty stay known (their geometry is checked already).
        for (k, old) in h.drain() {
            fresh.entry(k).or_insert(Holding {
                pool: old.pool,
                owned: BTreeMap::new(),
                borrowed: BTreeMap::new(),
            });
        }
        *h = fresh;
        drop(h);
        self.changed();
        Ok(())
    }

    /// Housekeeping, one round: `plan` (which calls [`Node::plan`] with the daemon's state
    /// locked) and then carrying the plans out, all under the grow lock, so no claim or
    /// extension changes a block between the plan and the write.
    pub async fn housekeep(&self, plan: impl FnOnce() -> Vec<Plan>) {
        let _one = self.grow.lock().await;
        let plans = plan();
        for p in plans {
            if let Err(e) = self.execute_one(&p).await {
                log::warn!("cluster housekeeping {p:?}: {e}");
            }
        }
    }

    /// Plans housekeeping (call with the daemon's state locked; `in_use` says whether an
    /// address is allocated or cooling locally): empty blocks past the grace go back (not the
    /// last of a pool, nor one where others hold addresses), reservations more than a chunk
    /// larger than needed shrink after the grace, unused borrowed addresses are returned. A
    /// release or shrink whose outcome is not known yet is planned again; until it is settled
    /// the block is not allocated from (release) or only from what the shrink keeps.
    pub fn plan(&self, in_use: &dyn Fn(&str, IpAddr) -> bool) -> Vec<Plan> {
        let now = boottime_ns();
        let grace = self.s.release_grace.as_nanos() as u64;
        let mut plans = Vec::new();
        let mut h = self.holdings();
        for ((net, subnet), hold) in h.iter_mut() {
            let pool = hold.pool.clone();
            let mut keep = hold.owned.values().filter(|o| !o.draining).count();
            for (n, o) in hold.owned.iter_mut() {
                if o.draining {
                    plans.push(Plan::Release(net.clone(), *subnet, *n));
                    continue;
                }
                if let Some(l) = &o.limit {
                    plans.push(Plan::Shrink(net.clone(), *subnet, *n, l.clone()));
                    continue;
                }
                let start = pool.block_start(*n);
                let mut used = Bitmap::new(pool.block_len());
                for i in o.block.held.iter() {
                    used.set(i, in_use(net, pool.address(start, i)));
                }
                if used.is_empty() && keep > 1 && o.block.foreign.values().all(Bitmap::is_empty) {
                    let since = *o.empty_since.get_or_insert(now);
                    if now - since >= grace {
                        o.draining = true;
                        keep -= 1;
                        plans.push(Plan::Release(net.clone(), *subnet, *n));
                    }
                    continue;
                }
                o.empty_since = None;
                let slack = o.block.held.count() - used.count();
                if slack > pool.chunk() {
                    let since = *o.slack_since.get_or_insert(now);
                    if now - since >= grace {
                        let mut new = used.clone();
                        for i in o.block.held.minus(&used).iter().take(pool.chunk() as usize) {
                            new.set(i, true);
                        }
                        o.limit = Some(new.clone());
                        plans.push(Plan::Shrink(net.clone(), *subnet, *n, new));
                    }
                } else {
                    o.slack_since = None;
                }
            }
            for (n, b) in hold.borrowed.iter_mut() {
                let start = pool.block_start(*n);
                let mut unused = Bitmap::new(pool.block_len());
                for i in b.bits.iter() {
                    unused.set(i, !in_use(net, pool.address(start, i)));
                }
                if !unused.is_empty() {
                    // Not used from here on: given back, or back in the holdings only once
                    // the return has certainly failed.
                    b.bits = b.bits.minus(&unused);
                    plans.push(Plan::Return(net.clone(), *subnet, *n, unused));
                }
            }
            hold.borrowed.retain(|_, b| !b.bits.is_empty());
        }
        drop(h);
        if !plans.is_empty() {
            self.changed();
        }
        plans
    }

    async fn execute_one(&self, p: &Plan) -> Result<(), ClusterError> {
        let (net, subnet, n) = match p {
            Plan::Release(a, b, c) | Plan::Shrink(a, b, c, _) | Plan::Return(a, b, c, _) => {
                (a, *b, *c)
            }
        };
        let Some(pool) = self
            .holdings()
            .get(&(net.clone(), subnet))
            .map(|h| h.pool.clone())
        else {
            return Ok(());
        };
        let start = pool.block_start(n);
        let key = self.keys.block(net, &pool.id(), start);
        match p {
            Plan::Release(..) => {
                let Some(o) = self.owned(net, &pool, n) else {
                    return Ok(());
                };
                let txn = self
                    .block_txn()
                    .if_mod(&key, o.rev)
                    .delete(&key)
                    .delete(&self.keys.affinity(&self.s.name, net, &pool.id(), start));
                match self.cas(&key, o.rev, txn, None, pool.block_len()).await? {
                    Cas::Done(_) | Cas::Lost(None) => {
                        self.stats.releases.fetch_add(1, Ordering::Relaxed);
                        log::info!(
                            "released empty block {start}/{} of {net}",
                            pool.block_prefix
                        );
                        if let Some(h) = self.holdings().get_mut(&(net.clone(), subnet)) {
                            h.owned.remove(&n);
                        }
                    }
                    Cas::Lost(cur) => {
                        // A borrower wrote to it: the delete can never apply; keep the block.
                        self.refresh_owned(net, &pool, n, cur);
                        self.owned_mut(net, subnet, n, |o| {
                            o.draining = false;
                            o.empty_since = None;
                        });
                    }
                    // Maybe deleted, maybe not: stays drained, planned again.
                    Cas::Unknown => return Err(unknown()),
                }
                self.changed();
            }
            Plan::Shrink(_, _, _, new_held) => {
                let Some(o) = self.owned(net, &pool, n) else {
                    return Ok(());
                };
                // Only ever a subset of what etcd has: allocation is limited to it already.
                let held = o.block.held.intersect(new_held);
                match self.write_held(net, &pool, n, &o, held).await? {
                    Cas::Done(_) => {
                        self.stats.shrinks.fetch_add(1, Ordering::Relaxed);
                    }
                    Cas::Lost(cur) => {
                        // It can never apply: the current record is the truth.
                        self.refresh_owned(net, &pool, n, cur);
                        self.owned_mut(net, subnet, n, |o| {
                            o.limit = None;
                            o.slack_since = None;
                        });
                    }
                    // Maybe applied: allocation stays limited, planned again.
                    Cas::Unknown => return Err(unknown()),
                }
            }
            Plan::Return(_, _, _, bits) => match self.return_borrowed(net, &pool, n, bits).await {
                Returned::Done => {}
                Returned::Not(still) => {
                    // Certainly still ours in etcd: usable again, returned at a later round.
                    if let Some(h) = self.holdings().get_mut(&(net.clone(), subnet)) {
                        let e = h.borrowed.entry(n).or_insert_with(|| Borrowed {
                            bits: Bitmap::new(pool.block_len()),
                        });
                        e.bits = e.bits.union(&still);
                    }
                    self.changed();
                }
                // Maybe returned: not used again until a fencing reads etcd.
                Returned::Unknown => return Err(unknown()),
            },
        }
        Ok(())
    }

    fn owned_mut(
        &self,
        net: &str,
        subnet: IpNet,
        n: u128,
        f: impl FnOnce(&mut Owned),
    ) -> Option<()> {
        let mut h = self.holdings();
        let o = h.get_mut(&(net.to_string(), subnet))?.owned.get_mut(&n)?;
        f(o);
        Some(())
    }

    /// Takes `bits` out of this node's foreign set in block `n`.
    async fn return_borrowed(&self, net: &str, pool: &Pool, n: u128, bits: &Bitmap) -> Returned {
        let start = pool.block_start(n);
        let key = self.keys.block(net, &pool.id(), start);
        // What of `bits` the record still gives this node; None: unreadable.
        let still_mine = |kv: &KeyValue| {
            Block::decode(&kv.value, pool.block_len()).map(|b| {
                let mine = b.foreign.get(&self.s.name).cloned().unwrap_or_default();
                (b, mine.intersect(bits))
            })
        };
        for _ in 0..5 {
            // After a refusal nothing of ours is in flight (see `cas`): this read is the truth.
            let kv = match self.etcd.get(&key).await {
                Ok(Some(kv)) => kv,
                Ok(None) => return Returned::Done,
                Err(_) => return Returned::Unknown,
            };
            let Some((mut b, left_of_bits)) = still_mine(&kv) else {
                return Returned::Unknown;
            };
            if left_of_bits.is_empty() {
                // An earlier attempt applied (its answer was lost), or nothing was left.
                return Returned::Done;
            }
            let mine = b.foreign.get(&self.s.name).cloned().unwrap_or_default();
            let left = mine.minus(bits);
            let mut txn = self.block_txn().if_mod(&key, kv.mod_revision);
            if left.is_empty() {
                b.foreign.remove(&self.s.name);
                txn = txn.delete(&self.keys.borrowed(&self.s.name, net, &pool.id(), start));
            } else {
                b.foreign.insert(self.s.name.clone(), left);
            }
            b.writer = self.writer();
            b.at_ms = unix_ms();
            let txn = txn.put(&key, b.encode(), 0);
            match self
                .cas(
                    &key,
                    kv.mod_revision,
                    txn,
                    Some(&b.writer),
                    pool.block_len(),
                )
                .await
            {
                Ok(Cas::Done(rev)) => {
                    self.stats.shrinks.fetch_add(1, Ordering::Relaxed);
                    if b.owner == self.s.name {
                        self.record_owned(net, pool, n, b, rev);
                    }
                    return Returned::Done;
                }
                Ok(Cas::Lost(_)) => {}
                Ok(Cas::Unknown) | Err(_) => return Returned::Unknown,
            }
        }
        // Five refusals: what the record gives this node now is certainly still its own.
        match self.etcd.get(&key).await {
            Ok(Some(kv)) => match still_mine(&kv) {
                Some((_, mine)) => Returned::Not(mine),
                None => Returned::Unknown,
            },
            Ok(None) => Returned::Done,
            Err(_) => Returned::Unknown,
        }
    }

    fn owned(&self, net: &str, pool: &Pool, n: u128) -> Option<Owned> {
        self.holdings()
            .get(&(net.to_string(), pool.subnet))
            .and_then(|h| h.owned.get(&n).cloned())
    }
}

fn unknown() -> ClusterError {
    ClusterError::Etcd(EtcdError::Unavailable(
        "no answer from etcd, and the outcome of the write is not known yet".into(),
    ))
}
