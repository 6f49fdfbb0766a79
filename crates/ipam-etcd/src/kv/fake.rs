//! An in-memory store with etcd's revisions, transactions and leases, for tests. Faults are
//! injected by count ("the next n transactions ...") so a test says exactly which request
//! meets them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use trestle_ipam_core::boottime_ns;

use super::{Kv, Store};
use crate::client::{prefix_end, EtcdError, KeyValue, Txn, TxnOutcome};
use crate::pb;
use crate::watch::{Change, WatchError, Watcher};

mod txn;

type Batch = Result<Vec<Change>, WatchError>;

/// A store in memory. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct FakeKv {
    state: Arc<Mutex<State>>,
    /// Open (true) unless transactions are held back ([`FakeKv::hold_txns`]).
    gate: Arc<watch::Sender<bool>>,
}

impl Default for FakeKv {
    fn default() -> FakeKv {
        FakeKv {
            state: Arc::default(),
            gate: Arc::new(watch::channel(true).0),
        }
    }
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
    leases: BTreeMap<i64, Lease>,
    last_lease: i64,
    /// The TTL granted whatever is asked (etcd raises a short one to its minimum).
    granted_ttl: Option<i64>,
    faults: Faults,
    /// Transactions waiting at the gate.
    held_txns: usize,
}

/// Faults still to inject, by count of the requests they meet.
#[derive(Default)]
struct Faults {
    lost_answers: u32,
    failing_txns: u32,
    repeated_txns: u32,
    failing_gets: u32,
    failing_keepalives: u32,
    refused_keepalives: u32,
}

/// A lease: its TTL and when (CLOCK_BOOTTIME) etcd would expire it if not renewed.
struct Lease {
    ttl: i64,
    expires_ns: u64,
}

/// Takes one from a fault's count; true if there was one.
fn take(n: &mut u32) -> bool {
    let had = *n > 0;
    *n = n.saturating_sub(1);
    had
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
        let change = s.put_at(key.as_bytes(), value, 0, rev);
        s.commit(vec![change]);
        rev
    }

    /// Deletes `key` now (a revision even when absent, as etcd's txn would).
    pub fn remove(&self, key: &str) -> i64 {
        let mut s = self.lock();
        s.revision += 1;
        let rev = s.revision;
        if s.data.remove(key.as_bytes()).is_some() {
            s.commit(vec![Change::Delete {
                key: key.as_bytes().to_vec(),
                revision: rev,
            }]);
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

    /// `key` as it is now.
    pub fn value(&self, key: &str) -> Option<KeyValue> {
        self.lock().data.get(key.as_bytes()).cloned()
    }

    /// Every key under `prefix` as it is now.
    pub fn keys(&self, prefix: &str) -> Vec<KeyValue> {
        let s = self.lock();
        txn::in_range(&s.data, prefix.as_bytes(), &prefix_end(prefix.as_bytes()))
            .into_iter()
            .cloned()
            .collect()
    }

    /// The next `n` transactions apply, but their answers are lost: the caller gets an error.
    pub fn lose_answers(&self, n: u32) {
        self.lock().faults.lost_answers = n;
    }

    /// The next `n` transactions fail before they apply.
    pub fn fail_txns(&self, n: u32) {
        self.lock().faults.failing_txns = n;
    }

    /// The next `n` transactions are delivered twice, as a client's retry after a lost answer
    /// would: the caller gets the second delivery's answer.
    pub fn repeat_txns(&self, n: u32) {
        self.lock().faults.repeated_txns = n;
    }

    /// The next `n` single-key reads ([`Store::get`]) fail as unavailable.
    pub fn fail_gets(&self, n: u32) {
        self.lock().faults.failing_gets = n;
    }

    /// Holds transactions back (true) until released (false): they apply at the release.
    pub fn hold_txns(&self, on: bool) {
        self.gate.send_replace(!on);
    }

    /// Transactions held back now.
    pub fn held_txns(&self) -> usize {
        self.lock().held_txns
    }

    /// The next `n` keep-alives fail as unavailable.
    pub fn fail_keepalives(&self, n: u32) {
        self.lock().faults.failing_keepalives = n;
    }

    /// The next `n` keep-alives are answered LeaseNotFound.
    pub fn refuse_keepalives(&self, n: u32) {
        self.lock().faults.refused_keepalives = n;
    }

    /// Grants `ttl` seconds whatever is asked (None: what is asked).
    pub fn grant_ttl(&self, ttl: Option<i64>) {
        self.lock().granted_ttl = ttl;
    }

    /// Expires lease `id` now, as etcd does when its TTL lapses: its keys are deleted. False
    /// if there is no such lease.
    pub fn expire_lease(&self, id: i64) -> bool {
        self.lock().end_lease(id)
    }

    /// How many leases were granted.
    pub fn grants(&self) -> i64 {
        self.lock().last_lease
    }

    /// The leases, by ID.
    pub fn leases(&self) -> Vec<i64> {
        self.lock().leases.keys().copied().collect()
    }

    /// When (CLOCK_BOOTTIME, ns) etcd would expire lease `id` unless it is renewed.
    pub fn lease_deadline(&self, id: i64) -> Option<u64> {
        self.lock().leases.get(&id).map(|l| l.expires_ns)
    }

    /// Waits while transactions are held back.
    async fn pass_gate(&self) {
        let mut open = self.gate.subscribe();
        if *open.borrow_and_update() {
            return;
        }
        /// Counts a transaction at the gate for as long as it waits (or is dropped waiting).
        struct Waiting<'a>(&'a FakeKv);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.lock().held_txns -= 1;
            }
        }
        self.lock().held_txns += 1;
        let _waiting = Waiting(self);
        // The sender lives as long as the store: this ends only at the release.
        let _ = open.wait_for(|open| *open).await;
    }
}

impl State {
    /// Records the changes of one revision and sends them to the watches as one batch, as
    /// etcd sends a transaction's events together.
    fn commit(&mut self, changes: Vec<Change>) {
        self.history.extend(changes.iter().cloned());
        let repeat = self.repeat;
        self.watchers.retain(|w| !w.tx.is_closed());
        for w in &mut self.watchers {
            w.send(changes.clone(), repeat);
        }
    }

    /// Ends lease `id` and deletes its keys, in one revision; false if there is no such lease.
    fn end_lease(&mut self, id: i64) -> bool {
        if self.leases.remove(&id).is_none() {
            return false;
        }
        let keys: Vec<Vec<u8>> = self
            .data
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        if keys.is_empty() {
            return true;
        }
        self.revision += 1;
        let revision = self.revision;
        let changes = keys
            .into_iter()
            .filter(|k| self.data.remove(k).is_some())
            .map(|key| Change::Delete { key, revision })
            .collect();
        self.commit(changes);
        true
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

/// Every answer takes a turn of the runtime, as a real request does: a caller that loops on
/// the store (a bug) cannot starve the timers and tasks that would catch it.
async fn answer() {
    tokio::task::yield_now().await;
}

impl Store for FakeKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        answer().await;
        let mut s = self.lock();
        if take(&mut s.faults.failing_gets) {
            return Err(unavailable());
        }
        Ok(s.data.get(key.as_bytes()).cloned())
    }

    async fn list(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>, EtcdError> {
        answer().await;
        let mut s = self.lock();
        if take(&mut s.failing_lists) {
            return Err(unavailable());
        }
        let r = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            keys_only,
            ..Default::default()
        };
        Ok(s.range(&r).kvs)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, EtcdError> {
        answer().await;
        self.pass_gate().await;
        let mut s = self.lock();
        if take(&mut s.faults.failing_txns) {
            return Err(unavailable());
        }
        let first = s.apply(&txn)?;
        if take(&mut s.faults.repeated_txns) {
            return s.apply(&txn);
        }
        if take(&mut s.faults.lost_answers) {
            return Err(unavailable());
        }
        Ok(first)
    }

    async fn grant(&self, ttl_s: i64) -> Result<(i64, i64), EtcdError> {
        answer().await;
        let mut s = self.lock();
        let ttl = s.granted_ttl.unwrap_or(ttl_s);
        s.last_lease += 1;
        // etcd's lease IDs are large and random-looking; small ones would do as well.
        let id = 0x7e57_0000 + s.last_lease;
        let expires_ns = boottime_ns() + ttl.max(0) as u64 * 1_000_000_000;
        s.leases.insert(id, Lease { ttl, expires_ns });
        Ok((id, ttl))
    }

    async fn keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        answer().await;
        let mut s = self.lock();
        if take(&mut s.faults.failing_keepalives) {
            return Err(unavailable());
        }
        if take(&mut s.faults.refused_keepalives) {
            return Err(EtcdError::LeaseNotFound);
        }
        // A keep-alive of a lease that is gone is answered with a TTL of 0, as etcd does.
        let Some(l) = s.leases.get_mut(&id) else {
            return Ok(0);
        };
        l.expires_ns = boottime_ns() + l.ttl.max(0) as u64 * 1_000_000_000;
        Ok(l.ttl)
    }

    async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        answer().await;
        self.lock().end_lease(id);
        Ok(())
    }
}
