//! The node's in-memory holdings: the blocks it owns and the addresses it borrowed, per pool,
//! as a cache of etcd. What an ADD picks from and what the metrics count; updated after each
//! successful write, and rebuilt from etcd by fencing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use ipnet::IpNet;
use trestle_ipam_core::Range;

use super::{Borrowed, ClusterError, Holding, Node, Owned, PoolKey, PoolUsage};
use crate::block::{Block, Pool};
use crate::client::KeyValue;
use crate::kv::Store;

impl<K: Store> Node<K> {
    pub(super) fn holdings(&self) -> MutexGuard<'_, HashMap<PoolKey, Holding>> {
        self.holdings.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
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

    /// True if this node holds `ip` in `network`'s pool of `subnet` (owned or borrowed) and may
    /// hand it out: what [`Node::pick`] may return.
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

    pub(super) fn record_owned(&self, network: &str, pool: &Pool, n: u128, block: Block, rev: i64) {
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

    /// After a lost race on an owned block: its current record (a borrower changed it; or it is
    /// no longer ours, which only an operator's release-node does to a live node).
    pub(super) fn refresh_owned(&self, network: &str, pool: &Pool, n: u128, cur: Option<KeyValue>) {
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

    /// Rebuilds the holdings from etcd: the blocks indexed as ours that are ours, and our
    /// addresses in others' blocks. Nothing else is trusted after a lease loss or a restart.
    pub(super) async fn fence(&self) -> Result<(), ClusterError> {
        // No claim, extension or housekeeping write is in flight while the cache is rebuilt.
        let _one = self.grow.lock().await;
        let mut pools: HashMap<(String, String), Pool> = HashMap::new();
        let mut unreadable: HashSet<(String, String)> = HashSet::new();
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
                    // An unreadable pool record leaves its blocks out, as an unreadable block
                    // record is. Failing the fencing instead kept the whole node from
                    // registering (retried every 500 ms, forever): no pool of it gave an
                    // address, while each attempt wrote its registration anew, so others saw
                    // it alive. Left out (and the pool forgotten), nothing of the pool is
                    // handed out: its next ADD reads the record and fails as corrupt until an
                    // operator repairs it; the node's blocks there come back at its next
                    // fencing (a restart).
                    let Ok(p) = serde_json::from_slice::<Pool>(&pkv.value) else {
                        log::error!("unreadable pool record {key}: its blocks are skipped");
                        unreadable.insert((net.clone(), pid.clone()));
                        continue;
                    };
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
        // Pools known but now empty stay known (their geometry is checked already), unless
        // their record is unreadable now.
        for (k, old) in h.drain() {
            if unreadable.contains(&(k.0.clone(), old.pool.id())) {
                continue;
            }
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
}
