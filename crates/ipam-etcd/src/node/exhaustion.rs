//! Growth once no block is free: reclaiming a block of a node whose lease has been gone for
//! the grace (what it held stays quarantined in its name), and borrowing single addresses
//! from other nodes' blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use trestle_ipam_core::unix_ms;

use super::cas::{unknown, Cas};
use super::{Borrowed, ClusterError, Expired, Node};
use crate::block::{Bitmap, Block, Pool};
use crate::client::Txn;
use crate::keys::Keys;
use crate::kv::Store;

impl<K: Store> Node<K> {
    /// Takes over a block of a node whose lease has been gone for the grace period. What the
    /// dead node held stays held in its name (its pods may still run, cut off from etcd); the
    /// rest of the block becomes this node's.
    pub(super) async fn reclaim(&self, network: &str, pool: &Pool) -> Result<bool, ClusterError> {
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
    pub(super) async fn borrow(
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
}
