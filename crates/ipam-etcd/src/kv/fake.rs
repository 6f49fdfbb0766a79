//! An in-memory store with etcd's revisions, for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::Kv;
use crate::client::{EtcdError, KeyValue};
use crate::watch::{Change, WatchError, Watcher};

type Batch = Result<Vec<Change>, WatchError>;

/// A store in memory. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct FakeKv {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    data: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    history: Vec<Change>,
    compacted: i64,
    watchers: Vec<Watch>,
    failing_lists: u32,
    failing_watches: u32,
    repeat: bool,
}

struct Watch {
    prefix: Vec<u8>,
    tx: mpsc::UnboundedSender<Batch>,
    /// Batches held back while the store is [`FakeKv::hold`]ing.
    held: Vec<Vec<Change>>,
    holding: bool,
}

impl Watch {
    fn send(&mut self, batch: Vec<Change>, repeat: bool) {
        let mine: Vec<Change> = batch
            .into_iter()
            .filter(|c| c.key().starts_with(&self.prefix))
            .collect();
        if mine.is_empty() {
            return;
        }
        if self.holding {
            self.held.push(mine);
            return;
        }
        if repeat {
            let _ = self.tx.send(Ok(mine.clone()));
        }
        let _ = self.tx.send(Ok(mine));
    }
}

impl FakeKv {
    /// An empty store at revision 1 (etcd's first).
    pub fn new() -> FakeKv {
        let kv = FakeKv::default();
        kv.lock().revision = 1;
        kv
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `key` now; returns the revision.
    pub fn set(&self, key: &str, value: &[u8]) -> i64 {
        let mut s = self.lock();
        s.revision += 1;
        let rev = s.revision;
        let prev = s.data.get(key.as_bytes());
        let kv = KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            value: value.to_vec(),
            lease: 0,
        };
        s.data.insert(kv.key.clone(), kv.clone());
        s.commit(Change::Put(kv));
        rev
    }

    /// Deletes `key` now (a revision even when absent, as etcd's txn would).
    pub fn remove(&self, key: &str) -> i64 {
        let mut s = self.lock();
        s.revision += 1;
        let rev = s.revision;
        if s.data.remove(key.as_bytes()).is_some() {
            s.commit(Change::Delete {
                key: key.as_bytes().to_vec(),
                revision: rev,
            });
        }
        rev
    }

    /// Forgets the history up to `revision`: a watch from before it is told so.
    pub fn compact(&self, revision: i64) {
        let mut s = self.lock();
        s.compacted = revision.min(s.revision);
        let c = s.compacted;
        s.history.retain(|ch| ch.revision() > c);
    }

    /// Ends every open watch with an error, as a broken connection does.
    pub fn break_watches(&self) {
        for w in self.lock().watchers.drain(..) {
            let _ =
                w.tx.send(Err(WatchError::Ended("broken by the test".into())));
        }
    }

    /// Holds back (true) or releases (false) what open watches are sent.
    pub fn hold(&self, on: bool) {
        let mut s = self.lock();
        let repeat = s.repeat;
        for w in &mut s.watchers {
            w.holding = on;
            if !on {
                for b in std::mem::take(&mut w.held) {
                    w.send(b, repeat);
                }
            }
        }
    }

    /// Sends every batch twice from now on (true), as a retried stream might.
    pub fn repeat(&self, on: bool) {
        self.lock().repeat = on;
    }

    /// The next `n` reads fail as unavailable.
    pub fn fail_lists(&self, n: u32) {
        self.lock().failing_lists = n;
    }

    /// The next `n` watch creations fail as unavailable.
    pub fn fail_watches(&self, n: u32) {
        self.lock().failing_watches = n;
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Open watches.
    pub fn watchers(&self) -> usize {
        let mut s = self.lock();
        s.watchers.retain(|w| !w.tx.is_closed());
        s.watchers.len()
    }
}

impl State {
    fn commit(&mut self, change: Change) {
        self.history.push(change.clone());
        let repeat = self.repeat;
        self.watchers.retain(|w| !w.tx.is_closed());
        for w in &mut self.watchers {
            w.send(vec![change.clone()], repeat);
        }
    }
}

fn unavailable() -> EtcdError {
    EtcdError::Unavailable("fault injected by the test".into())
}

impl Kv for FakeKv {
    async fn list_at(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let mut s = self.lock();
        if s.failing_lists > 0 {
            s.failing_lists -= 1;
            return Err(unavailable());
        }
        let kvs = s
            .data
            .range(prefix.as_bytes().to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((kvs, s.revision))
    }

    async fn watch_from(&self, prefix: &str, from: i64) -> Result<Watcher, WatchError> {
        let mut s = self.lock();
        if s.failing_watches > 0 {
            s.failing_watches -= 1;
            return Err(unavailable().into());
        }
        if from <= s.compacted {
            return Err(WatchError::Compacted(s.compacted));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = Watch {
            prefix: prefix.as_bytes().to_vec(),
            tx,
            held: Vec::new(),
            holding: false,
        };
        let past: Vec<Change> = s
            .history
            .iter()
            .filter(|c| c.revision() >= from)
            .cloned()
            .collect();
        if !past.is_empty() {
            w.send(past, s.repeat);
        }
        s.watchers.push(w);
        Ok(Watcher::from_stream(UnboundedReceiverStream::new(rx)))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64, EtcdError> {
        Ok(self.set(key, &value))
    }

    async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        Ok(self.remove(key))
    }
}
