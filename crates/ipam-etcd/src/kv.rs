//! The seam between etcd and the code that follows it: reading a prefix at one revision,
//! watching it from the next, writing a key. [`Etcd`] is the real implementation; the `fake`
//! feature adds `fake::FakeKv`, an in-memory store whose answers can be held back, repeated,
//! broken off or compacted away, so rare paths get deterministic tests.

use std::future::Future;

use crate::client::{Etcd, EtcdError, KeyValue, Txn};
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

/// An in-memory store with etcd's revisions, for tests.
#[cfg(feature = "fake")]
pub mod fake;
