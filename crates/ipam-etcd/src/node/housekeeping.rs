//! Housekeeping: planning (under the daemon's lock) and carrying out the release of empty
//! blocks, the shrinking of oversized reservations and the return of unused borrowed
//! addresses, each settled like any other write when its outcome is unknown.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use ipnet::IpNet;
use trestle_ipam_core::{boottime_ns, unix_ms};

use super::cas::{unknown, Cas};
use super::{Borrowed, ClusterError, Node, Owned, Plan};
use crate::block::{Bitmap, Block, Pool};
use crate::client::KeyValue;
use crate::kv::Store;

/// The outcome of returning borrowed addresses.
enum Returned {
    /// Etcd no longer gives these addresses to this node.
    Done,
    /// Certainly not returned: these are still this node's.
    Not(Bitmap),
    /// Maybe returned.
    Unknown,
}

impl<K: Store> Node<K> {
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
