//! Writing a block record: every change is one compare-and-swap that also compares this
//! node's registration, and an answer lost in transit is settled by reading the key back
//! (the writer nonce); a write whose outcome stays unknown is reported as [`unknown`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use trestle_ipam_core::unix_ms;

use super::{ClusterError, Node, Owned};
use crate::block::{Bitmap, Block, Pool};
use crate::client::{EtcdError, KeyValue, Txn};
use crate::kv::Store;

/// The outcome of a compare-and-swap.
pub(super) enum Cas {
    /// It applied; the key's new revision.
    Done(i64),
    /// It did not apply and never will (the key moved on): what the key holds now.
    Lost(Option<KeyValue>),
    /// No answer, and the key still looks as compared: the write may yet apply.
    Unknown,
}

impl<K: Store> Node<K> {
    /// A transaction that applies only while this node's current registration stands.
    pub(super) fn block_txn(&self) -> Txn {
        let rev = self.registration.load(Ordering::Acquire);
        Txn::new().if_mod(&self.keys.node(&self.s.name), rev.max(1))
    }

    pub(super) fn writer(&self) -> String {
        format!(
            "{}:{}:{:x}:{}",
            self.s.name,
            self.s.instance,
            self.process,
            self.nonce.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// One compare-and-swap on `key` (compared at revision `rev`, 0: absent): `txn` carries
    /// the comparisons and writes. An answer lost in transit is settled by reading the key
    /// back: our `writer` nonce there, it applied; the key moved on, it never will; otherwise
    /// it may still apply ([`Cas::Unknown`]), and a write that gives addresses up must then be
    /// treated as possibly done.
    pub(super) async fn cas(
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

    pub(super) fn new_block(&self, held: Bitmap, foreign: BTreeMap<String, Bitmap>) -> Block {
        Block {
            owner: self.s.name.clone(),
            held,
            foreign,
            writer: self.writer(),
            at_ms: unix_ms(),
        }
    }

    /// Writes `held` as the reservation of owned block `n`, compared at the revision `o` was
    /// read at; the cache follows a successful write.
    pub(super) async fn write_held(
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
}

pub(super) fn unknown() -> ClusterError {
    ClusterError::Etcd(EtcdError::Unavailable(
        "no answer from etcd, and the outcome of the write is not known yet".into(),
    ))
}
