//! Growing the node's holdings when an ADD needs an address: extending a reservation,
//! claiming a free block, taking a requested address, and creating or checking the pool's
//! record on first use. Reclaiming and borrowing, once no block is free, are in
//! [`super::exhaustion`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use trestle_ipam_core::Range;

use super::cas::{unknown, Cas};
use super::{ClusterError, Holding, Node};
use crate::block::{Bitmap, Block, Pool, PoolError};
use crate::client::Txn;
use crate::keys::Keys;
use crate::kv::Store;

impl<K: Store> Node<K> {
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
            let (listed, at) = self.etcd.list_at(&prefix).await?;
            let mut found = None;
            for kv in listed {
                let Ok(p) = serde_json::from_slice::<Pool>(&kv.value) else {
                    // Ours unreadable: the create below would be refused (the key exists)
                    // and this would read again forever.
                    if kv.key == key.as_bytes() {
                        return Err(ClusterError::Corrupt(key));
                    }
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
                // Compared absent and refused: someone else's block now (a refusal with the
                // key still absent is this node's registration failing, which `cas` answers
                // as LeaseUncertain).
                Cas::Lost(_) if want.is_some() => return Ok(false),
                Cas::Lost(_) => {
                    taken.insert(n);
                }
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
}
