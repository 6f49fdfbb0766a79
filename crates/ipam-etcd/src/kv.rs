//! The seam between etcd and the code that uses it: [`Kv`], what a follower needs (reading a
//! prefix at one revision, watching it from the next, writing a key), and [`Store`], what a
//! [`crate::Node`] needs besides (transactions, reads, leases). [`Etcd`] is the real
//! implementation; the `fake` feature adds `fake::FakeKv`, an in-memory store whose answers can
//! be held back, lost, repeated, broken off or compacted away, so rare paths get deterministic
//! tests.

use std::future::Future;

use crate::client::{Etcd, EtcdError, KeyValue, Txn, TxnOutcome};
use crate::watch::{WatchError, Watcher};

/// What a follower of etcd needs of it.
pub trait Kv: Clone + Send + Sync + 'static {
    /// Every key under `prefix`, and the store revision they were read at.
    fn list_at(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<KeyValue>, i64), EtcdError>> + Send;

    /// The changes under `prefix` from revision `from` on.
    fn watch_from(
        &self,
        prefix: &str,
        from: i64,
    ) -> impl Future<Output = Result<Watcher, WatchError>> + Send;

    /// Writes `key` (no lease); returns the revision.
    fn put(&self, key: &str, value: Vec<u8>)
        -> impl Future<Output = Result<i64, EtcdError>> + Send;

    /// Deletes `key`; returns the revision.
    fn delete(&self, key: &str) -> impl Future<Output = Result<i64, EtcdError>> + Send;
}

impl Kv for Etcd {
    async fn list_at(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        // Pages of 1,000 keys: a 5,000-node cluster's records are some 15,000 keys and several MB,
        // more than one request may take within the client's timeout on a busy member.
        self.list_paged(prefix, 1000).await
    }

    async fn watch_from(&self, prefix: &str, from: i64) -> Result<Watcher, WatchError> {
        self.watch(prefix, from).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64, EtcdError> {
        Ok(self.txn(Txn::new().put(key, value, 0)).await?.revision)
    }

    async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        Ok(self.txn(Txn::new().delete(key)).await?.revision)
    }
}

/// What a node of cluster IPAM needs of etcd besides: its reads, compare-and-swap
/// transactions and its lease.
pub trait Store: Kv {
    /// One key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, EtcdError>> + Send;

    /// Every key under `prefix` (values left out if `keys_only`).
    fn list(
        &self,
        prefix: &str,
        keys_only: bool,
    ) -> impl Future<Output = Result<Vec<KeyValue>, EtcdError>> + Send;

    /// A transaction: whether its comparisons held, its results, and the revision.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, EtcdError>> + Send;

    /// Grants a lease of `ttl_s` seconds asked for; returns its ID and the TTL granted.
    fn grant(&self, ttl_s: i64) -> impl Future<Output = Result<(i64, i64), EtcdError>> + Send;

    /// Renews a lease once; returns the TTL granted from now (0: the lease is gone).
    fn keepalive(&self, id: i64) -> impl Future<Output = Result<i64, EtcdError>> + Send;

    /// Revokes a lease and deletes its keys; an unknown lease is not an error.
    fn revoke(&self, id: i64) -> impl Future<Output = Result<(), EtcdError>> + Send;
}

impl Store for Etcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        Etcd::get(self, key).await
    }

    async fn list(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>, EtcdError> {
        Etcd::list(self, prefix, keys_only).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, EtcdError> {
        Etcd::txn(self, txn).await
    }

    async fn grant(&self, ttl_s: i64) -> Result<(i64, i64), EtcdError> {
        Etcd::grant(self, ttl_s).await
    }

    async fn keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        Etcd::keepalive(self, id).await
    }

    async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        Etcd::revoke(self, id).await
    }
}

/// An in-memory store with etcd's revisions, for tests.
#[cfg(feature = "fake")]
pub mod fake;
