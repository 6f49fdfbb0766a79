//! Who may hold a connection: a bound in all, a share per client process and per user, and
//! when the bound is reached, an idle connection of the client holding the most goes first.
//!
//! Why evict instead of refusing the newcomer: a bound that idle connections can fill lets one
//! client lock every other out (the plugins of the next ADDs among them). A client process
//! holding more connections than the newcomer's would after admission gives one of its idle
//! ones up; a connection with a request in flight, or that read or wrote anything in the last
//! [`QUIET`] (an answer on its way out), is never taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

/// How long a connection must have been silent, both ways, before it may be given up.
pub const QUIET: Duration = Duration::from_millis(100);

/// The connection bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections in all.
    pub total: usize,
    /// Connections of one client process (by the pid of its peer credentials).
    pub per_client: usize,
    /// Connections of one user other than root and the daemon's own.
    pub per_user: usize,
}

/// The peer credentials of a connection, taken by the kernel at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The connecting process.
    pub pid: i32,
    /// Its effective user.
    pub uid: u32,
    /// Its effective group.
    pub gid: u32,
    /// Its supplementary groups (`SO_PEERGROUPS`).
    pub groups: Vec<u32>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its process holds its share already.
    PerClient,
    /// Its user holds its share already.
    PerUser,
    /// Every connection is taken and none could be given up.
    Full,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerClient => "per-client",
            Refusal::PerUser => "per-user",
            Refusal::Full => "full",
        }
    }
}

/// What a served connection and its admission share: whether it was evicted (and the task
/// to wake so that it notices), its requests in flight, and when it last read anything.
#[derive(Debug, Default)]
pub struct ConnState {
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
    in_flight: AtomicUsize,
    last_active_ms: AtomicU64,
}

impl ConnState {
    /// True once the connection was given up.
    pub fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Remembers the task reading the connection (woken by an eviction).
    pub fn park(&self, waker: &Waker) {
        let mut w = lock(&self.waker);
        if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    /// Notes that the connection read or wrote something at `ms` (since admission started).
    pub fn touched(&self, ms: u64) {
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// A request started on the connection.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A request ended.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

struct Tracked {
    pid: i32,
    uid: u32,
    state: Arc<ConnState>,
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Tracked>,
    per_pid: HashMap<i32, usize>,
    per_uid: HashMap<u32, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Tracked> {
        let t = self.conns.remove(&id)?;
        dec(&mut self.per_pid, t.pid);
        dec(&mut self.per_uid, t.uid);
        Some(t)
    }

    /// The idle connection to give up for a newcomer of `pid`: of the process holding the
    /// most, provided it holds more than the newcomer's would; silent for `quiet` ms at `now`
    /// at least; the longest silent first.
    fn victim(&self, pid: i32, now: u64, quiet: u64) -> Option<u64> {
        let newcomer = self.per_pid.get(&pid).copied().unwrap_or(0) + 1;
        self.conns
            .iter()
            .filter(|(_, t)| t.state.in_flight.load(Ordering::Acquire) == 0)
            .filter(|(_, t)| t.state.last_active_ms.load(Ordering::Relaxed) + quiet <= now)
            .filter(|(_, t)| self.per_pid.get(&t.pid).copied().unwrap_or(0) > newcomer)
            .max_by_key(|(_, t)| {
                let held = self.per_pid.get(&t.pid).copied().unwrap_or(0);
                let silent = u64::MAX - t.state.last_active_ms.load(Ordering::Relaxed);
                (held, silent)
            })
            .map(|(id, _)| *id)
    }
}

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) {
    if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

/// The admission of connections.
pub struct Admission {
    limits: Limits,
    /// Users never held to a share: root and the daemon's own.
    privileged: [u32; 2],
    quiet: Duration,
    start: Instant,
    table: Mutex<Table>,
}

impl Admission {
    /// Admission under `limits`; `own_uid` (and root) are never held to a user's share.
    pub fn new(limits: Limits, own_uid: u32) -> Arc<Admission> {
        Admission::with_quiet(limits, own_uid, QUIET)
    }

    /// [`Admission::new`] with another quiet time before a connection may be given up.
    pub fn with_quiet(limits: Limits, own_uid: u32, quiet: Duration) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            privileged: [0, own_uid],
            quiet,
            start: Instant::now(),
            table: Mutex::new(Table::default()),
        })
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Milliseconds since admission started (connections' last reads).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        lock(&self.table).conns.len()
    }

    /// Admits a connection of `peer`, giving up another's idle connection if the bound is
    /// reached; the ticket holds the place until dropped.
    pub fn admit(self: &Arc<Self>, peer: &Peer) -> Result<(Ticket, Option<Refusal>), Refusal> {
        let now = self.now_ms();
        let mut t = lock(&self.table);
        if t.per_pid.get(&peer.pid).copied().unwrap_or(0) >= self.limits.per_client {
            return Err(Refusal::PerClient);
        }
        let shared = !self.privileged.contains(&peer.uid);
        if shared && t.per_uid.get(&peer.uid).copied().unwrap_or(0) >= self.limits.per_user {
            return Err(Refusal::PerUser);
        }
        let mut evicted = None;
        if t.conns.len() >= self.limits.total {
            let quiet = self.quiet.as_millis() as u64;
            let id = t.victim(peer.pid, now, quiet).ok_or(Refusal::Full)?;
            if let Some(victim) = t.remove(id) {
                victim.state.evict();
            }
            evicted = Some(Refusal::Full);
        }
        let id = t.next;
        t.next += 1;
        let state = Arc::new(ConnState::default());
        state.touched(now);
        t.conns.insert(
            id,
            Tracked {
                pid: peer.pid,
                uid: peer.uid,
                state: state.clone(),
            },
        );
        *t.per_pid.entry(peer.pid).or_default() += 1;
        *t.per_uid.entry(peer.uid).or_default() += 1;
        crate::metrics::connections(t.conns.len());
        let ticket = Ticket {
            id,
            state,
            admission: self.clone(),
        };
        Ok((ticket, evicted))
    }
}

/// A place among the admitted connections, given back when dropped.
pub struct Ticket {
    id: u64,
    state: Arc<ConnState>,
    admission: Arc<Admission>,
}

impl Ticket {
    /// The connection's shared state.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// The admission it belongs to.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // An evicted connection's place was given back at its eviction.
        let mut t = lock(&self.admission.table);
        t.remove(self.id);
        crate::metrics::connections(t.conns.len());
    }
}

/// A mutex whose holder cannot leave its data half-changed (counters, a waker).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(pid: i32, uid: u32) -> Peer {
        Peer {
            pid,
            uid,
            gid: uid,
            groups: vec![],
        }
    }

    fn limits(total: usize, per_client: usize, per_user: usize) -> Limits {
        Limits {
            total,
            per_client,
            per_user,
        }
    }

    #[test]
    fn a_client_is_held_to_its_share() {
        let a = Admission::new(limits(100, 2, 100), 0);
        let _t1 = a.admit(&peer(1, 0)).unwrap();
        let _t2 = a.admit(&peer(1, 0)).unwrap();
        assert_eq!(a.admit(&peer(1, 0)).err(), Some(Refusal::PerClient));
        assert!(a.admit(&peer(2, 0)).is_ok());
    }

    #[test]
    fn other_users_share_but_root_and_the_daemons_user_do_not() {
        let a = Admission::new(limits(100, 100, 2), 1000);
        let held: Vec<_> = (0..2).map(|i| a.admit(&peer(i, 42)).unwrap()).collect();
        assert_eq!(a.admit(&peer(9, 42)).err(), Some(Refusal::PerUser));
        let root: Vec<_> = (10..15).map(|i| a.admit(&peer(i, 0)).unwrap()).collect();
        let own: Vec<_> = (20..25).map(|i| a.admit(&peer(i, 1000)).unwrap()).collect();
        drop((held, root, own));
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn at_the_bound_the_biggest_holder_gives_up_an_idle_connection() {
        let a = Admission::with_quiet(limits(4, 10, 10), 0, Duration::ZERO);
        let flood: Vec<_> = (0..4).map(|_| a.admit(&peer(1, 0)).unwrap().0).collect();
        // One of the flood's connections is busy: never the one taken.
        flood[0].state().begin();
        let (newcomer, evicted) = a.admit(&peer(2, 0)).unwrap();
        assert_eq!(evicted, Some(Refusal::Full));
        assert_eq!(a.held(), 4);
        let gone: Vec<bool> = flood.iter().map(|t| t.state().evicted()).collect();
        assert_eq!(gone.iter().filter(|g| **g).count(), 1);
        assert!(!gone[0]);
        // A connection that was just active is not taken either.
        let b = Admission::new(limits(2, 10, 10), 0);
        let _fresh = [b.admit(&peer(1, 0)).unwrap(), b.admit(&peer(1, 0)).unwrap()];
        assert_eq!(b.admit(&peer(2, 0)).err(), Some(Refusal::Full));
        // Dropping an evicted ticket gives nothing back twice.
        drop(flood);
        assert_eq!(a.held(), 1);
        drop(newcomer);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn at_the_bound_nothing_is_taken_from_a_fair_holder() {
        let a = Admission::new(limits(2, 10, 10), 0);
        let _x = a.admit(&peer(1, 0)).unwrap();
        let _y = a.admit(&peer(2, 0)).unwrap();
        // Taking one of theirs would leave the newcomer with as many as they have.
        assert_eq!(a.admit(&peer(3, 0)).err(), Some(Refusal::Full));
        // And a flood never takes from the others.
        let b = Admission::new(limits(3, 10, 10), 0);
        let _o = b.admit(&peer(7, 0)).unwrap();
        let _f1 = b.admit(&peer(8, 0)).unwrap();
        let _f2 = b.admit(&peer(8, 0)).unwrap();
        assert_eq!(b.admit(&peer(8, 0)).err(), Some(Refusal::Full));
    }
}
