//! The daemon's in-memory view of every pool: what Allocate, Release, Check and GC read and
//! change. Each change also yields the [`Op`]s that make it durable; the caller hands them to
//! the store's writer while it still holds the state lock, so the store applies changes in
//! exactly the order memory saw them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use trestle_ipam_api::convert::{AllocateInput, PodMeta};
use trestle_ipam_core::{
    Allocation, Attachment, IpamConfig, IpamError, Range, RangeSet, Reservation, Store,
};
use trestle_ipam_etcd::Node;

/// One allocated address as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`; empty for a legacy host-local reservation (container ID only).
    pub ifname: String,
    /// The range set it came from.
    pub set_index: u32,
    /// Pod metadata, if any.
    #[serde(default)]
    pub pod_namespace: String,
    /// Pod name.
    #[serde(default)]
    pub pod_name: String,
    /// Pod UID.
    #[serde(default)]
    pub pod_uid: String,
    /// `CNI_NETNS` as the plugin saw it.
    #[serde(default)]
    pub netns: String,
    /// The namespace's inode; 0 if unknown (then leak repair never touches it).
    #[serde(default)]
    pub netns_inode: u64,
    /// CLOCK_BOOTTIME of the allocation (0 for imported ones: older than any queued DEL).
    pub created_ns: u64,
    /// Wall-clock time of the allocation, ms since the epoch.
    pub since_unix_ms: i64,
}

impl Record {
    /// An allocation taken over from a host-local `dataDir`: no pod or namespace known, and
    /// older (`created_ns` 0) than any DEL queued since.
    pub fn imported(owner: Attachment, since_unix_ms: i64) -> Record {
        Record {
            container_id: owner.container_id,
            ifname: owner.ifname,
            set_index: 0,
            pod_namespace: String::new(),
            pod_name: String::new(),
            pod_uid: String::new(),
            netns: String::new(),
            netns_inode: 0,
            created_ns: 0,
            since_unix_ms,
        }
    }

    /// Its owner.
    pub fn attachment(&self) -> Attachment {
        Attachment::new(self.container_id.clone(), self.ifname.clone())
    }
}

/// A durable change, applied by the store in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// An allocation.
    Put(String, IpAddr, Record),
    /// A release.
    Del(String, IpAddr),
    /// A released address starts its reuse delay at this CLOCK_BOOTTIME.
    Cool(String, IpAddr, u64),
    /// A reuse delay is over (or the address was reused).
    Uncool(String, IpAddr),
    /// The round-robin cursor of a range set.
    Last(String, u32, IpAddr),
    /// The range sets a network was last allocated from (for usage reports).
    Ranges(String, Vec<String>),
    /// The network's host-local directory was imported.
    Imported(String),
    /// Nothing: a commit that only proves the store writable again.
    Probe,
    /// The namespace addresses a store recovery found that no network has taken yet.
    Evidence(Vec<crate::recovery::Seen>),
    /// A damaged store's rebuild is complete (committed with what it entered).
    Rebuilt,
}

/// One network's allocations.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    /// Allocated addresses.
    pub by_ip: BTreeMap<IpAddr, Record>,
    by_att: HashMap<(String, String), Vec<IpAddr>>,
    /// Round-robin cursors per range set.
    pub last: HashMap<u32, IpAddr>,
    /// Released addresses and when (CLOCK_BOOTTIME) their reuse delay started.
    pub cooling: HashMap<IpAddr, u64>,
    /// The range sets last allocated from, displayed.
    pub range_sets: Vec<String>,
    /// Sizes of those sets (allocatable addresses, gateways excluded).
    pub sizes: Vec<u128>,
}

impl Pool {
    /// Inserts an allocation (loading or importing).
    pub fn insert(&mut self, ip: IpAddr, rec: Record) {
        let key = (rec.container_id.clone(), rec.ifname.clone());
        self.by_att.entry(key).or_default().push(ip);
        if let Some(old) = self.by_ip.insert(ip, rec) {
            self.unindex(ip, &old);
        }
    }

    fn remove(&mut self, ip: IpAddr) -> Option<Record> {
        let rec = self.by_ip.remove(&ip)?;
        self.unindex(ip, &rec);
        Some(rec)
    }

    fn unindex(&mut self, ip: IpAddr, rec: &Record) {
        let key = (rec.container_id.clone(), rec.ifname.clone());
        if let Some(ips) = self.by_att.get_mut(&key) {
            ips.retain(|i| *i != ip);
            if ips.is_empty() {
                self.by_att.remove(&key);
            }
        }
    }

    /// The addresses of `att`: its exact ones, or if none, its container's legacy ones
    /// (host-local's `GetByID` rule).
    pub fn addresses_of(&self, att: &Attachment) -> Vec<IpAddr> {
        let id = att.stored_id().to_string();
        let exact = self.by_att.get(&(id.clone(), att.ifname.clone()));
        let legacy = || self.by_att.get(&(id, String::new()));
        let mut ips = exact.or_else(legacy).cloned().unwrap_or_default();
        ips.sort();
        ips
    }

    /// True if `ip` is waiting out its reuse delay at `now`. A delay that starts in the
    /// future (an address a store recovery holds back) has not even begun.
    fn is_cooling(&self, ip: IpAddr, now: u64, delay: u64) -> bool {
        self.cooling
            .get(&ip)
            .is_some_and(|at| cooling(*at, now, delay))
    }

    /// Addresses neither allocated nor cooling, over the last known range sets.
    pub fn free(&self) -> u128 {
        let total: u128 = self.sizes.iter().sum();
        total.saturating_sub((self.by_ip.len() + self.cooling.len()) as u128)
    }
}

/// Every pool, and the reuse delay.
#[derive(Debug, Default)]
pub struct State {
    /// Pools by network name.
    pub pools: BTreeMap<String, Pool>,
    /// How long a released address waits before it is handed out again.
    pub reuse_delay_ns: u64,
    /// Networks whose host-local directory was imported.
    pub imported: std::collections::HashSet<String>,
    /// Addresses a store recovery found in live namespaces, for the network whose ranges hold
    /// them to take at its next Allocate (see [`crate::recovery`]).
    pub evidence: Vec<crate::recovery::Seen>,
}

/// True while a reuse delay that started (or starts) at `at` is not over at `now`.
fn cooling(at: u64, now: u64, delay: u64) -> bool {
    now < at || now - at < delay
}

/// What an Allocate did.
#[derive(Debug)]
pub struct Allocated {
    /// The addresses (with prefix and gateway).
    pub allocation: Allocation,
    /// True if the attachment already held them.
    pub existing: bool,
}

/// What a cluster Allocate came to.
#[derive(Debug)]
pub enum ClusterOutcome {
    /// Allocated (or found the attachment's addresses); the ranges where the node's holdings
    /// run low.
    Done(Allocated, Vec<Range>),
    /// The node holds no free address in these ranges (or not `Some(ip)`): grow, then retry.
    Grow(Vec<Range>, Option<IpAddr>),
    /// The node's lease is not certainly valid: nothing new may be handed out.
    NoLease,
}

/// The clock readings an operation uses.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// CLOCK_BOOTTIME, ns.
    pub boot_ns: u64,
    /// Wall clock, ms since the epoch.
    pub unix_ms: i64,
}

impl State {
    /// Allocates for `input` (idempotent per attachment), returning the changes to persist.
    pub fn allocate(
        &mut self,
        input: &AllocateInput,
        now: Now,
        ops: &mut Vec<Op>,
    ) -> Result<Allocated, IpamError> {
        let cfg = &input.config;
        self.take_evidence(cfg, now, ops);
        let delay = self.reuse_delay_ns;
        let pool = self.pools.entry(cfg.network.clone()).or_default();
        note_ranges(pool, cfg, ops);
        let held = pool.addresses_of(&input.attachment);
        if !held.is_empty() {
            // Acknowledged again now: a DEL queued before this moment (one that never reached
            // the daemon) must not free what this ADD is told it holds.
            for ip in &held {
                if let Some(rec) = pool.by_ip.get_mut(ip) {
                    rec.created_ns = rec.created_ns.max(now.boot_ns);
                    ops.push(Op::Put(cfg.network.clone(), *ip, rec.clone()));
                }
            }
            return Ok(Allocated {
                allocation: existing_allocation(cfg, pool, &held),
                existing: true,
            });
        }
        let template = record(input, now);
        let mut txn = Txn {
            network: &cfg.network,
            pool,
            template,
            now: now.boot_ns,
            delay,
            ops,
        };
        let allocation = trestle_ipam_core::allocate(cfg, &mut txn, &input.attachment)?;
        Ok(Allocated {
            allocation,
            existing: false,
        })
    }

    /// Allocates from the addresses the cluster node holds (etcd store): the same idempotence,
    /// requested addresses and records as [`State::allocate`], but candidates come from the
    /// node's blocks, lowest first (blocks stay compact, so empty ones can go back).
    pub fn allocate_cluster(
        &mut self,
        input: &AllocateInput,
        now: Now,
        ops: &mut Vec<Op>,
        node: &Node,
    ) -> Result<ClusterOutcome, IpamError> {
        let cfg = &input.config;
        self.take_evidence(cfg, now, ops);
        let delay = self.reuse_delay_ns;
        let pool = self.pools.entry(cfg.network.clone()).or_default();
        note_ranges(pool, cfg, ops);
        if !pool.addresses_of(&input.attachment).is_empty() {
            return self
                .allocate(input, now, ops)
                .map(|a| ClusterOutcome::Done(a, Vec::new()));
        }
        if !node.lease_valid() {
            return Ok(ClusterOutcome::NoLease);
        }
        let requested = trestle_ipam_core::assign_requested(cfg)?;
        let mut picks: Vec<(usize, Range, IpAddr)> = Vec::new();
        for (index, set) in cfg.range_sets.iter().enumerate() {
            if let Some(ip) = requested[index] {
                let range = set.range_for(ip).expect("assigned to its set").clone();
                if pool.by_ip.contains_key(&ip) || pool.is_cooling(ip, now.boot_ns, delay) {
                    return Err(IpamError::Unavailable {
                        ip,
                        range: set.to_string(),
                    });
                }
                if !node.covers(&cfg.network, range.subnet, ip) {
                    return Ok(ClusterOutcome::Grow(vec![range], Some(ip)));
                }
                picks.push((index, range, ip));
                continue;
            }
            let mut found = None;
            for range in &set.0 {
                let mut free = |ip: IpAddr| {
                    !pool.by_ip.contains_key(&ip)
                        && !pool.is_cooling(ip, now.boot_ns, delay)
                        && !picks.iter().any(|(_, _, p)| *p == ip)
                };
                if let Some(ip) = node.pick(&cfg.network, range, &mut free) {
                    found = Some((range.clone(), ip));
                    break;
                }
            }
            match found {
                Some((range, ip)) => picks.push((index, range, ip)),
                None => return Ok(ClusterOutcome::Grow(set.0.clone(), None)),
            }
        }
        let template = record(input, now);
        let mut ips = Vec::new();
        let mut low = Vec::new();
        for (index, range, ip) in picks {
            if pool.cooling.remove(&ip).is_some() {
                ops.push(Op::Uncool(cfg.network.clone(), ip));
            }
            let mut rec = template.clone();
            rec.set_index = index as u32;
            pool.insert(ip, rec.clone());
            pool.last.insert(index as u32, ip);
            ops.push(Op::Put(cfg.network.clone(), ip, rec));
            ops.push(Op::Last(cfg.network.clone(), index as u32, ip));
            ips.push(trestle_ipam_core::AllocatedIp {
                address: ipnet::IpNet::new(ip, range.subnet.prefix_len())
                    .expect("prefix from a valid subnet"),
                gateway: range.gateway,
            });
            let mut free = |ip: IpAddr| {
                !pool.by_ip.contains_key(&ip) && !pool.is_cooling(ip, now.boot_ns, delay)
            };
            if node.running_low(&cfg.network, &range, &mut free) {
                low.push(range);
            }
        }
        Ok(ClusterOutcome::Done(
            Allocated {
                allocation: Allocation {
                    ips,
                    routes: cfg.routes.clone(),
                    dns: cfg.dns.clone(),
                },
                existing: false,
            },
            low,
        ))
    }

    /// Releases `att`'s addresses in `network` that were allocated before `before_ns` (all if
    /// `None`); each starts its reuse delay.
    pub fn release(
        &mut self,
        network: &str,
        att: &Attachment,
        before_ns: Option<u64>,
        now: Now,
        ops: &mut Vec<Op>,
    ) -> Vec<IpAddr> {
        let Some(pool) = self.pools.get_mut(network) else {
            return Vec::new();
        };
        let ips: Vec<IpAddr> = pool
            .addresses_of(att)
            .into_iter()
            .filter(|ip| before_ns.is_none_or(|b| pool.by_ip[ip].created_ns < b))
            .collect();
        for &ip in &ips {
            free(pool, network, ip, now, self.reuse_delay_ns, ops);
        }
        ips
    }

    /// Releases one address if it still holds exactly `rec` (leak repair's re-check).
    pub fn release_if_unchanged(
        &mut self,
        network: &str,
        ip: IpAddr,
        rec: &Record,
        now: Now,
        ops: &mut Vec<Op>,
    ) -> bool {
        let Some(pool) = self.pools.get_mut(network) else {
            return false;
        };
        if pool.by_ip.get(&ip) != Some(rec) {
            return false;
        }
        free(pool, network, ip, now, self.reuse_delay_ns, ops);
        true
    }

    /// GC: releases every allocation of `network` whose owner is not among `valid`.
    pub fn gc(
        &mut self,
        network: &str,
        valid: &[Attachment],
        now: Now,
        ops: &mut Vec<Op>,
    ) -> Vec<(IpAddr, Record)> {
        let Some(pool) = self.pools.get_mut(network) else {
            return Vec::new();
        };
        let stale: Vec<(IpAddr, Record)> = pool
            .by_ip
            .iter()
            .filter(|(ip, r)| {
                let res = Reservation {
                    ip: **ip,
                    owner: r.attachment(),
                };
                !valid.iter().any(|v| res.belongs_to(v))
            })
            .map(|(ip, r)| (*ip, r.clone()))
            .collect();
        for (ip, _) in &stale {
            free(pool, network, *ip, now, self.reuse_delay_ns, ops);
        }
        stale
    }

    /// Takes the recovery's namespace addresses that fall in `cfg`'s ranges as allocations of
    /// its network, each owned by the namespace that holds it (leak repair frees it once that
    /// namespace is gone); the rest wait for their own network.
    fn take_evidence(&mut self, cfg: &IpamConfig, now: Now, ops: &mut Vec<Op>) {
        let in_ranges = |s: &crate::recovery::Seen| cfg.range_sets.iter().any(|r| r.contains(s.ip));
        // Addresses of no network (the host's own, another plugin's) stay for good: most ADDs
        // only look.
        if !self.evidence.iter().any(in_ranges) {
            return;
        }
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.evidence)
            .into_iter()
            .partition(in_ranges);
        self.evidence = rest;
        let pool = self.pools.entry(cfg.network.clone()).or_default();
        for s in mine {
            if pool.by_ip.contains_key(&s.ip) {
                continue;
            }
            let ip = s.ip;
            let rec = s.into_record(now);
            ops.push(Op::Put(cfg.network.clone(), ip, rec.clone()));
            pool.insert(ip, rec);
        }
        ops.push(Op::Evidence(self.evidence.clone()));
    }

    /// Ends the reuse delays that are over.
    pub fn expire_cooling(&mut self, now: Now, ops: &mut Vec<Op>) -> usize {
        let delay = self.reuse_delay_ns;
        let mut n = 0;
        for (network, pool) in &mut self.pools {
            let done: Vec<IpAddr> = pool
                .cooling
                .iter()
                .filter(|(_, at)| !cooling(**at, now.boot_ns, delay))
                .map(|(ip, _)| *ip)
                .collect();
            for ip in done {
                pool.cooling.remove(&ip);
                ops.push(Op::Uncool(network.clone(), ip));
                n += 1;
            }
        }
        n
    }
}

fn free(pool: &mut Pool, network: &str, ip: IpAddr, now: Now, delay: u64, ops: &mut Vec<Op>) {
    pool.remove(ip);
    ops.push(Op::Del(network.to_string(), ip));
    if delay > 0 {
        pool.cooling.insert(ip, now.boot_ns);
        ops.push(Op::Cool(network.to_string(), ip, now.boot_ns));
    }
}

fn note_ranges(pool: &mut Pool, cfg: &IpamConfig, ops: &mut Vec<Op>) {
    let shown: Vec<String> = cfg.range_sets.iter().map(RangeSet::to_string).collect();
    if pool.range_sets != shown {
        pool.sizes = cfg.range_sets.iter().map(set_size).collect();
        pool.range_sets = shown.clone();
        ops.push(Op::Ranges(cfg.network.clone(), shown));
    }
}

/// Allocatable addresses of a set: each range's span, less its gateway if inside.
pub fn set_size(set: &RangeSet) -> u128 {
    set.0
        .iter()
        .map(|r| {
            let span = to_u128(r.range_end) - to_u128(r.range_start) + 1;
            span - u128::from(r.gateway.is_some_and(|g| r.contains(g)))
        })
        .sum()
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn record(input: &AllocateInput, now: Now) -> Record {
    let PodMeta {
        namespace,
        name,
        uid,
    } = input.pod.clone();
    Record {
        container_id: input.attachment.stored_id().to_string(),
        ifname: input.attachment.ifname.clone(),
        set_index: 0,
        pod_namespace: namespace,
        pod_name: name,
        pod_uid: uid,
        netns: input.netns.clone(),
        netns_inode: input.netns_inode,
        created_ns: now.boot_ns,
        since_unix_ms: now.unix_ms,
    }
}

/// The reply for addresses an attachment already holds: each with its set's prefix and gateway.
fn existing_allocation(cfg: &IpamConfig, pool: &Pool, held: &[IpAddr]) -> Allocation {
    let mut ips: Vec<(u32, trestle_ipam_core::AllocatedIp)> = held
        .iter()
        .filter_map(|ip| {
            let set = pool.by_ip[ip].set_index;
            let range = cfg
                .range_sets
                .get(set as usize)
                .and_then(|s| s.range_for(*ip))
                .or_else(|| cfg.range_sets.iter().find_map(|s| s.range_for(*ip)))?;
            let address = ipnet::IpNet::new(*ip, range.subnet.prefix_len()).ok()?;
            Some((
                set,
                trestle_ipam_core::AllocatedIp {
                    address,
                    gateway: range.gateway,
                },
            ))
        })
        .collect();
    ips.sort_by_key(|(set, _)| *set);
    Allocation {
        ips: ips.into_iter().map(|(_, ip)| ip).collect(),
        routes: cfg.routes.clone(),
        dns: cfg.dns.clone(),
    }
}

/// The allocator's view of one pool during one Allocate: `trestle-ipam-core`'s round-robin
/// and requested-address logic (host-local's) runs unchanged on top of it.
struct Txn<'a> {
    network: &'a str,
    pool: &'a mut Pool,
    template: Record,
    now: u64,
    delay: u64,
    ops: &'a mut Vec<Op>,
}

impl Store for Txn<'_> {
    // The state lock is held by the caller for the whole operation.
    fn lock(&mut self) -> Result<(), IpamError> {
        Ok(())
    }

    fn unlock(&mut self) -> Result<(), IpamError> {
        Ok(())
    }

    fn reserve(&mut self, att: &Attachment, ip: IpAddr, set: usize) -> Result<bool, IpamError> {
        if self.pool.by_ip.contains_key(&ip) || self.pool.is_cooling(ip, self.now, self.delay) {
            return Ok(false);
        }
        if self.pool.cooling.remove(&ip).is_some() {
            self.ops.push(Op::Uncool(self.network.to_string(), ip));
        }
        let mut rec = self.template.clone();
        rec.container_id = att.stored_id().to_string();
        rec.set_index = set as u32;
        self.pool.insert(ip, rec.clone());
        self.pool.last.insert(set as u32, ip);
        self.ops.push(Op::Put(self.network.to_string(), ip, rec));
        self.ops
            .push(Op::Last(self.network.to_string(), set as u32, ip));
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.pool.last.get(&(set as u32)).copied())
    }

    fn release(&mut self, ip: IpAddr) -> Result<bool, IpamError> {
        // Only the allocator's own roll-back of a failed Allocate comes here: the address was
        // never handed out, so it needs no reuse delay.
        let freed = self.pool.remove(ip).is_some();
        if freed {
            self.ops.push(Op::Del(self.network.to_string(), ip));
        }
        Ok(freed)
    }

    fn list_matching(
        &self,
        filter: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Vec<Reservation>, IpamError> {
        Ok(self
            .pool
            .by_ip
            .iter()
            .filter(|(ip, _)| filter(**ip))
            .map(|(ip, r)| Reservation {
                ip: *ip,
                owner: r.attachment(),
            })
            .collect())
    }

    fn find_attachment(
        &self,
        att: &Attachment,
        filter: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let mut ips = self.pool.addresses_of(att);
        ips.retain(|ip| filter(*ip));
        Ok(ips)
    }
}

#[cfg(test)]
mod tests;
