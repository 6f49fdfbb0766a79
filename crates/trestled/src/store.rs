//! The durable store: a redb file, written by one thread that commits batches.
//!
//! Why redb: an embedded, pure-Rust B-tree with ACID transactions and checksummed commit
//! slots, so a torn write after a power loss falls back to the last good commit, and nothing
//! but the Rust toolchain is needed to build it (SQLite would bring C and a second query
//! language for what is a key-value map).
//!
//! Every Allocate and Release waits for the commit that holds it before it answers, so
//! `kill -9` of the daemon never loses an acknowledged change. Concurrent requests are
//! committed together (group commit, see [`Writer`]): a commit takes everything queued while
//! the previous one ran, so its cost is shared by up to [`MAX_BATCH`] requests. Commits are
//! `Durability::Immediate` (written and fsynced); on the default tmpfs (`/run`) fsync costs
//! nothing, and after a reboot the store's allocations are void anyway (the boot ID tells).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use crate::state::{Op, Record, State};

const ALLOC: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("allocations");
const COOL: TableDefinition<(&str, &str), u64> = TableDefinition::new("cooling");
const LAST: TableDefinition<(&str, u32), &str> = TableDefinition::new("last_reserved");
const RANGES: TableDefinition<&str, &[u8]> = TableDefinition::new("range_sets");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// META key prefix recording a network's host-local import.
const IMPORTED: &str = "imported:";
/// META key of the namespace addresses a recovery found that no network took yet (JSON).
const EVIDENCE: &str = "recovery-evidence";
/// META key present while a damaged store's rebuild has not been committed: a restart before
/// then rebuilds again instead of trusting a store that merely looks clean.
const PENDING: &str = "recovery-pending";
/// Damaged store files kept (moved aside) for a post-mortem; older ones are removed.
const KEEP_DAMAGED: usize = 3;

/// The most requests one commit carries.
pub const MAX_BATCH: usize = 512;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed.
    #[error("store {}: {what}", path.display())]
    Db {
        /// The store file.
        path: PathBuf,
        /// What failed, with redb's message.
        what: String,
    },
}

fn db_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        what: format!("{what}: {e}"),
    }
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Allocations dropped because they were made during an earlier boot.
    pub dropped_earlier_boot: usize,
    /// The file was not a readable store: moved aside, and a new one started (see
    /// [`crate::recovery`]).
    pub damaged: bool,
}

/// Opens (or creates) the store at `path` and loads it into `state`. A file redb cannot open
/// is replaced by a new store marked for a rebuild (see [`crate::recovery`]): the daemon must
/// come up. Allocations of another boot than `boot_id` are dropped.
pub fn open(
    path: &Path,
    boot_id: &str,
    state: &mut State,
) -> Result<(Database, Opened), StoreError> {
    let mut opened = Opened::default();
    let db = match Database::builder().set_cache_size(4 << 20).create(path) {
        Ok(db) => db,
        // Only a file that is not a readable store is replaced; anything else (permissions, a
        // full disk, a newer format) stops the start with the error.
        Err(e) if is_corrupt(&e) => {
            replace_damaged(path, &e)?;
            Database::builder()
                .set_cache_size(4 << 20)
                .create(path)
                .map_err(|e| db_err(path, "open the new store", e))?
        }
        Err(e) => return Err(db_err(path, "open", e)),
    };
    opened.dropped_earlier_boot = check_boot(&db, path, boot_id)?;
    let loaded = load(&db, path, state)?;
    opened.damaged = loaded.pending || loaded.skipped > 0;
    if loaded.skipped > 0 && !loaded.pending {
        log::error!(
            "store {}: {} unreadable records: rebuilding",
            path.display(),
            loaded.skipped
        );
        mark_pending(&db, path)?;
    }
    Ok((db, opened))
}

/// Keeps the damaged file beside `path` (`<stem>.corrupt-<unix ms>`) and puts a new store
/// marked [`PENDING`] in its place with one rename: whenever the daemon dies, `path` is
/// either still the damaged file (found again at the next start) or the marked new store,
/// never a clean-looking empty one.
fn replace_damaged(path: &Path, why: &redb::DatabaseError) -> Result<(), StoreError> {
    let aside = path.with_extension(format!("corrupt-{}", crate::clock::unix_ms()));
    log::error!(
        "cannot open store {}: {why}; keeping it as {} and rebuilding",
        path.display(),
        aside.display()
    );
    std::fs::hard_link(path, &aside).map_err(|e| db_err(path, "keep the damaged file", e))?;
    let fresh = path.with_extension("new");
    let _ = std::fs::remove_file(&fresh);
    {
        let db = Database::builder()
            .create(&fresh)
            .map_err(|e| db_err(&fresh, "create", e))?;
        mark_pending(&db, &fresh)?;
    }
    std::fs::rename(&fresh, path).map_err(|e| db_err(path, "replace", e))?;
    prune_damaged(path);
    Ok(())
}

/// Records that the store needs a rebuild.
fn mark_pending(db: &Database, path: &Path) -> Result<(), StoreError> {
    let e = |what| move |err: redb::Error| db_err(path, what, err);
    let mut txn = db.begin_write().map_err(|x| e("begin")(x.into()))?;
    txn.set_durability(redb::Durability::Immediate);
    {
        let mut meta = txn.open_table(META).map_err(|x| e("open meta")(x.into()))?;
        meta.insert(PENDING, "1")
            .map_err(|x| e("write meta")(x.into()))?;
    }
    txn.commit().map_err(|x| e("commit")(x.into()))
}

/// Removes all but the newest [`KEEP_DAMAGED`] moved-aside copies of the store at `path`.
fn prune_damaged(path: &Path) {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
        return;
    };
    let prefix = format!("{}.corrupt-", stem.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut aside: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ms = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((ms, e.path()))
        })
        .collect();
    aside.sort_unstable_by_key(|(ms, _)| std::cmp::Reverse(*ms));
    for (_, old) in aside.into_iter().skip(KEEP_DAMAGED) {
        match std::fs::remove_file(&old) {
            Ok(()) => log::info!("removed the old damaged store {}", old.display()),
            Err(e) => log::warn!("cannot remove {}: {e}", old.display()),
        }
    }
}

/// True for errors that say the file's content is not a store: garbage, truncation, a torn
/// write that no commit slot survived.
fn is_corrupt(e: &redb::DatabaseError) -> bool {
    use std::io::ErrorKind::{InvalidData, UnexpectedEof};
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            matches!(io.kind(), InvalidData | UnexpectedEof)
        }
        _ => false,
    }
}

/// Drops every allocation and reuse delay of an earlier boot; returns how many allocations.
fn check_boot(db: &Database, path: &Path, boot_id: &str) -> Result<usize, StoreError> {
    let e = |what| move |err: redb::Error| db_err(path, what, err);
    let txn = db.begin_write().map_err(|x| e("begin")(x.into()))?;
    let mut dropped = 0;
    {
        // Opening a table in a write transaction creates it: a new store has them all.
        txn.open_table(LAST).map_err(|x| e("create")(x.into()))?;
        txn.open_table(RANGES).map_err(|x| e("create")(x.into()))?;
        let mut meta = txn.open_table(META).map_err(|x| e("open meta")(x.into()))?;
        let recorded = meta
            .get("boot_id")
            .map_err(|x| e("read meta")(x.into()))?
            .map(|v| v.value().to_string());
        if recorded.as_deref() != Some(boot_id) {
            let mut alloc = txn.open_table(ALLOC).map_err(|x| e("open")(x.into()))?;
            dropped = alloc.len().map_err(|x| e("count")(x.into()))? as usize;
            alloc
                .retain(|_, _| false)
                .map_err(|x| e("clear")(x.into()))?;
            let mut cool = txn.open_table(COOL).map_err(|x| e("open")(x.into()))?;
            cool.retain(|_, _| false)
                .map_err(|x| e("clear")(x.into()))?;
            meta.insert("boot_id", boot_id)
                .map_err(|x| e("write meta")(x.into()))?;
            if recorded.is_some() {
                // Nothing of an earlier boot is live: its evidence and rebuild are void too.
                meta.remove(EVIDENCE)
                    .map_err(|x| e("write meta")(x.into()))?;
                meta.remove(PENDING)
                    .map_err(|x| e("write meta")(x.into()))?;
                log::info!("boot ID changed: dropped {dropped} allocations of the earlier boot");
            }
        }
    }
    txn.commit().map_err(|x| e("commit")(x.into()))?;
    Ok(dropped)
}

/// What loading found besides the state.
#[derive(Debug, Default)]
struct Loaded {
    /// Records that could not be read (skipped).
    skipped: usize,
    /// A rebuild is pending.
    pending: bool,
}

fn load(db: &Database, path: &Path, state: &mut State) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let e = |what| move |err: redb::Error| db_err(path, what, err);
    let txn = db.begin_read().map_err(|x| e("begin read")(x.into()))?;
    let alloc = txn.open_table(ALLOC).map_err(|x| e("open")(x.into()))?;
    for row in alloc.iter().map_err(|x| e("read")(x.into()))? {
        let (k, v) = row.map_err(|x| e("read")(x.into()))?;
        let (net, ip) = k.value();
        let (Ok(ip), Ok(rec)) = (
            ip.parse::<IpAddr>(),
            serde_json::from_slice::<Record>(v.value()),
        ) else {
            log::warn!("store: skipping unreadable allocation {net}/{ip}");
            loaded.skipped += 1;
            continue;
        };
        state
            .pools
            .entry(net.to_string())
            .or_default()
            .insert(ip, rec);
    }
    let cool = txn.open_table(COOL).map_err(|x| e("open")(x.into()))?;
    for row in cool.iter().map_err(|x| e("read")(x.into()))? {
        let (k, v) = row.map_err(|x| e("read")(x.into()))?;
        let (net, ip) = k.value();
        let Ok(ip) = ip.parse::<IpAddr>() else {
            loaded.skipped += 1;
            continue;
        };
        state
            .pools
            .entry(net.to_string())
            .or_default()
            .cooling
            .insert(ip, v.value());
    }
    let last = txn.open_table(LAST).map_err(|x| e("open")(x.into()))?;
    for row in last.iter().map_err(|x| e("read")(x.into()))? {
        let (k, v) = row.map_err(|x| e("read")(x.into()))?;
        let (net, set) = k.value();
        if let Ok(ip) = v.value().parse::<IpAddr>() {
            state
                .pools
                .entry(net.to_string())
                .or_default()
                .last
                .insert(set, ip);
        }
    }
    let meta = txn.open_table(META).map_err(|x| e("open")(x.into()))?;
    for row in meta.iter().map_err(|x| e("read")(x.into()))? {
        let (k, v) = row.map_err(|x| e("read")(x.into()))?;
        if let Some(net) = k.value().strip_prefix(IMPORTED) {
            state.imported.insert(net.to_string());
        }
        if k.value() == EVIDENCE {
            match serde_json::from_str(v.value()) {
                Ok(seen) => state.evidence = seen,
                Err(err) => {
                    log::warn!("store: unreadable recovery evidence: {err}");
                    loaded.skipped += 1;
                }
            }
        }
        loaded.pending |= k.value() == PENDING;
    }
    let ranges = txn.open_table(RANGES).map_err(|x| e("open")(x.into()))?;
    for row in ranges.iter().map_err(|x| e("read")(x.into()))? {
        let (k, v) = row.map_err(|x| e("read")(x.into()))?;
        if let Ok(sets) = serde_json::from_slice::<Vec<String>>(v.value()) {
            let pool = state.pools.entry(k.value().to_string()).or_default();
            pool.sizes = sets.iter().map(|s| parse_set_size(s)).collect();
            pool.range_sets = sets;
        }
    }
    Ok(loaded)
}

/// The size of a displayed range set ("a-b,c-d"), for usage reports after a restart.
fn parse_set_size(shown: &str) -> u128 {
    shown
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            let (a, b) = (
                a.trim().parse::<IpAddr>().ok()?,
                b.trim().parse::<IpAddr>().ok()?,
            );
            let n = |ip: IpAddr| match ip {
                IpAddr::V4(x) => u128::from(u32::from(x)),
                IpAddr::V6(x) => u128::from(x),
            };
            n(b).checked_sub(n(a)).map(|d| d + 1)
        })
        .sum()
}

struct Batch {
    ops: Vec<Op>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The handle requests use to make their changes durable.
///
/// Group commit on a thread of its own, the only one that touches the database: a request
/// queues its changes (in the order memory saw them: under the state lock) and awaits its
/// commit; the writer thread, woken when the queue stops being empty, commits everything
/// queued, in order, up to [`MAX_BATCH`] requests a transaction, and goes on until the queue
/// is empty. So a commit's write and fsync never run on an async worker, a busy daemon shares
/// each commit among the requests that queued while the previous one ran, and the thread is
/// woken once per burst, not per request. When the last handle goes, the thread commits what
/// is still queued and ends.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
    _thread: Arc<WriterThread>,
}

struct Shared {
    queue: Mutex<VecDeque<Batch>>,
    /// Signalled when the queue stops being empty, and at stop.
    queued: Condvar,
    stop: AtomicBool,
}

/// How many times the writer thread looks for more work before it sleeps.
const SPINS: usize = 20;

/// The writer thread, stopped and joined when the last [`Writer`] goes.
struct WriterThread {
    shared: Arc<Shared>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _q = lock(&self.shared.queue);
            self.shared.queued.notify_all();
        }
        if let Some(h) = lock(&self.handle).take() {
            let _ = h.join();
        }
    }
}

/// What the writer thread owns: the database, and what it reports to.
struct Store {
    db: Database,
    path: PathBuf,
    healthy: Arc<AtomicBool>,
}

/// The writer thread's loop: sleep while nothing is queued, commit everything that is; at
/// stop, end once the queue is empty.
fn write_loop(store: &Store, sh: &Shared) {
    loop {
        // Under load the next batch is usually microseconds away: look a few times before
        // sleeping, which saves a futex sleep and wake-up per commit.
        for _ in 0..SPINS {
            if !lock(&sh.queue).is_empty() {
                break;
            }
            std::thread::yield_now();
        }
        let batches: Vec<Batch> = {
            let mut q = lock(&sh.queue);
            while q.is_empty() && !sh.stop.load(Ordering::Acquire) {
                q = sh.queued.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.is_empty() {
                return;
            }
            let n = q.len().min(MAX_BATCH);
            q.drain(..n).collect()
        };
        store.commit_batches(batches);
    }
}

impl Store {
    /// Commits `batches` in one transaction and answers each.
    fn commit_batches(&self, batches: Vec<Batch>) {
        let result =
            commit(&self.db, &batches).map_err(|e| format!("store {}: {e}", self.path.display()));
        crate::metrics::commit(batches.len(), result.is_ok());
        let was = self.healthy.swap(result.is_ok(), Ordering::AcqRel);
        // Logged here when the store turns bad (the requests' own errors are logged by the
        // service, once each), and when it recovers.
        match (&result, was) {
            (Err(msg), true) => log::error!("{msg}"),
            (Ok(()), false) => log::info!("store {}: writable again", self.path.display()),
            _ => {}
        }
        for b in batches {
            if let Some(done) = b.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// A commit to wait for.
pub type Commit = oneshot::Receiver<Result<(), String>>;

impl Writer {
    /// A writer over `db`. `healthy` follows the last commit: false after a failed one, true
    /// again after the next that succeeds (readiness reports it).
    pub fn new(db: Database, path: PathBuf, healthy: Arc<AtomicBool>) -> Writer {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let store = Store { db, path, healthy };
        let sh = shared.clone();
        let handle = std::thread::Builder::new()
            .name("trestled-store".into())
            .spawn(move || write_loop(&store, &sh))
            .expect("a thread for the store's commits");
        Writer {
            _thread: Arc::new(WriterThread {
                shared: shared.clone(),
                handle: Mutex::new(Some(handle)),
            }),
            shared,
        }
    }

    /// Queues `ops` (in order after everything queued before) and returns the commit to
    /// await (the writer thread commits it). Call it while holding the state lock.
    pub fn submit(&self, ops: Vec<Op>) -> Commit {
        let (done, rx) = oneshot::channel();
        self.push(Batch {
            ops,
            done: Some(done),
        });
        rx
    }

    /// Queues `ops` without a commit to wait for (housekeeping whose loss a crash only
    /// repeats: expired reuse delays).
    pub fn submit_detached(&self, ops: Vec<Op>) {
        self.push(Batch { ops, done: None });
    }

    fn push(&self, batch: Batch) {
        let mut q = lock(&self.shared.queue);
        q.push_back(batch);
        // Only the first of a burst wakes the thread: a busy one finds the rest queued.
        if q.len() == 1 {
            self.shared.queued.notify_one();
        }
    }
}

/// A mutex whose holder cannot leave its data half-changed (a queue push or drain).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn commit(db: &Database, batches: &[Batch]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate);
    {
        let mut alloc = txn.open_table(ALLOC)?;
        let mut cool = txn.open_table(COOL)?;
        let mut last = txn.open_table(LAST)?;
        let mut ranges = txn.open_table(RANGES)?;
        let mut meta = txn.open_table(META)?;
        for op in batches.iter().flat_map(|b| &b.ops) {
            match op {
                Op::Put(net, ip, rec) => {
                    let v = serde_json::to_vec(rec).expect("a Record always serializes");
                    alloc.insert((net.as_str(), ip.to_string().as_str()), v.as_slice())?;
                }
                Op::Del(net, ip) => {
                    alloc.remove((net.as_str(), ip.to_string().as_str()))?;
                }
                Op::Cool(net, ip, at) => {
                    cool.insert((net.as_str(), ip.to_string().as_str()), *at)?;
                }
                Op::Uncool(net, ip) => {
                    cool.remove((net.as_str(), ip.to_string().as_str()))?;
                }
                Op::Last(net, set, ip) => {
                    last.insert((net.as_str(), *set), ip.to_string().as_str())?;
                }
                Op::Ranges(net, sets) => {
                    let v = serde_json::to_vec(sets).expect("strings always serialize");
                    ranges.insert(net.as_str(), v.as_slice())?;
                }
                Op::Imported(net) => {
                    meta.insert(format!("{IMPORTED}{net}").as_str(), "1")?;
                }
                Op::Rebuilt => {
                    meta.remove(PENDING)?;
                }
                Op::Evidence(seen) => {
                    let v = serde_json::to_string(seen).expect("addresses always serialize");
                    meta.insert(EVIDENCE, v.as_str())?;
                }
                Op::Probe => {
                    meta.insert("probe", crate::clock::unix_ms().to_string().as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Record;
    use trestle_ipam_core::Attachment;

    #[test]
    fn a_damaged_store_is_moved_aside_and_only_the_newest_copies_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        for ms in [10, 20, 30, 40] {
            std::fs::write(dir.path().join(format!("ipam.corrupt-{ms}")), "old").unwrap();
        }
        std::fs::write(dir.path().join("ipam.corrupt-notes"), "not ours").unwrap();
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let mut state = State::default();
        let (_, opened) = open(&path, "boot", &mut state).unwrap();
        assert!(opened.damaged);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ipam.corrupt-"))
            .collect();
        left.sort();
        // The one just moved aside (a current timestamp) and the two newest before it.
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.contains(&"ipam.corrupt-notes".to_string()));
        assert!(left.contains(&"ipam.corrupt-40".to_string()));
        assert!(left.contains(&"ipam.corrupt-30".to_string()));
        assert!(!left.contains(&"ipam.corrupt-20".to_string()));
    }

    /// Many threads submit at once: every change is committed exactly once, none waits
    /// forever (a batch queued while the writer thread commits is found by its next look).
    #[test]
    fn concurrent_submitters_commit_everything_and_nobody_is_left_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let mut state = State::default();
        let (db, _) = open(&path, "boot", &mut state).unwrap();
        let writer = Writer::new(db, path.clone(), Arc::new(AtomicBool::new(true)));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..8u32 {
            let (w, done) = (writer.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let ip = IpAddr::from([10, t as u8, (i / 256) as u8, (i % 256) as u8]);
                    let rec = Record::imported(Attachment::new(format!("c{t}-{i}"), "eth0"), 0);
                    let commit = w.submit(vec![Op::Put("n".into(), ip, rec)]);
                    commit.blocking_recv().unwrap().unwrap();
                }
                // Its handle goes before it says it is done: the reopen below needs the file free.
                drop(w);
                done.send(()).unwrap();
            });
        }
        for _ in 0..8 {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("a submitter was left waiting");
        }
        drop(writer);
        let mut reloaded = State::default();
        open(&path, "boot", &mut reloaded).unwrap();
        assert_eq!(reloaded.pools["n"].by_ip.len(), 1600);
    }
}
