//! The on-disk store, compatible with host-local's `dataDir` layout.
//!
//! Layout of `<data_dir>/<network>/` (directory mode 0755):
//! - one file per reserved address, named by the address, mode 0600, holding
//!   `<containerID>\r\n<ifname>` (written before it gets its name: `O_TMPFILE` and `linkat`, whose
//!   `EEXIST` is the `O_EXCL` of host-local's create) (older host-local: `<containerID>\n<ifname>`,
//!   oldest: `<containerID>`; all are read);
//! - `last_reserved_ip.<setIndex>` with the last address reserved in that range set;
//! - `lock`, which every host-local and trestle process `flock`s around each operation;
//! - `.trestle-boot`, trestle's boot ID record (see [`crate::boot`]);
//! - `.trestle-index/`, trestle's attachment index (see [`crate::index`]).
//!
//! Cost of the hot path: reserving is one exclusive link per candidate address plus the
//! `last_reserved_ip` write and the index update (one hard link per address: no new inode),
//! independent of how many addresses are taken. The duplicate-ADD check, DEL and CHECK read
//! two directory listings (names and inode numbers, no file opened: the index's link names
//! say which addresses the attachment holds, their inode numbers prove that the index covers
//! every reservation) and the attachment's own reservation files. Only when the index does
//! not cover every reservation (host-local wrote some too) do they read every reservation
//! file, as host-local does; the duplicate check then reads only files named by addresses
//! inside the range sets it is about to allocate from.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::boot::{self, BootCheck, BootIdSource, BOOT_FILE};
use crate::config::is_valid_name;
use crate::error::IpamError;
use crate::index::Index;
use crate::store::{self, Attachment, Reservation, Store};

/// Prefix of the per-set round-robin cursor files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";

/// Name of the file, inside a network's state directory, that hands the directory over to
/// `trestled` (see [`DiskStore::hand_over`]); a dot-file, which host-local ignores.
pub const HANDOVER_FILE: &str = ".trestle-daemon";

/// What [`HANDOVER_FILE`] records: where the daemon that took the directory over listens, and
/// where its delete queue is. Two lines of text (socket, queue); a file of only one line
/// names the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Its delete queue, if recorded.
    pub delete_queue: Option<PathBuf>,
}

impl Handover {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.socket.as_os_str().as_bytes().to_vec();
        if let Some(q) = &self.delete_queue {
            out.push(b'\n');
            out.extend_from_slice(q.as_os_str().as_bytes());
        }
        out.push(b'\n');
        out
    }

    fn decode(bytes: &[u8]) -> Handover {
        let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let path = |l: &[u8]| PathBuf::from(std::ffi::OsString::from_vec(l.to_vec()));
        Handover {
            socket: lines.next().map(path).unwrap_or_default(),
            delete_queue: lines.next().map(path),
        }
    }
}

/// The separator current host-local writes between container ID and ifname.
const LINE_BREAK: &str = "\r\n";

/// host-local compatible reservation store in `<data_dir>/<network>`.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    lock_file: File,
    index: Index,
}

impl DiskStore {
    /// Opens (creating if needed) the store of `network` under `data_dir`, with reboot
    /// detection from the kernel boot ID.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore, IpamError> {
        Self::open_with(data_dir, network, &BootIdSource::Kernel)
    }

    /// Like [`DiskStore::open`] with an explicit boot ID source. Under the lock, if the
    /// recorded boot ID differs from the current one, every reservation is dropped (the
    /// `last_reserved_ip.*` cursors are kept, so round-robin continues) and the new ID is
    /// recorded. If none is recorded, reservations are kept and the ID is recorded.
    pub fn open_with(
        data_dir: &Path,
        network: &str,
        boot_id: &BootIdSource,
    ) -> Result<DiskStore, IpamError> {
        if !is_valid_name(network) {
            return Err(IpamError::invalid(
                "name",
                format!("invalid network name {network:?}"),
            ));
        }
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| IpamError::io("create", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| IpamError::io("open", &lock_path, e))?;
        let index = Index::new(&dir);
        let mut store = DiskStore {
            dir,
            lock_file,
            index,
        };
        // The raw lock: a handed-over directory still opens (its operations then refuse, and
        // the daemon's import reads it).
        store.flock()?;
        let checked = store.apply_boot_check(boot_id);
        let unlocked = store.unlock();
        checked?;
        unlocked?;
        Ok(store)
    }

    /// The network's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands the directory over to `trestled`: under the lock, reads every reservation and
    /// writes [`HANDOVER_FILE`] naming the daemon (`handover`: its socket and delete queue).
    /// From then on every locked operation of trestle-ipam in embedded mode fails with
    /// [`IpamError::ManagedByDaemon`] (and the plugin asks the daemon instead), so embedded and
    /// daemon mode never allocate from the same range at the same time. Idempotent: the
    /// reservation files stay as they were, so a daemon killed before it recorded the import
    /// reads the same set again (and an operator can still read them).
    pub fn hand_over(&mut self, handover: &Handover) -> Result<Vec<Reservation>, IpamError> {
        self.flock()?;
        let done = self.list().and_then(|all| {
            write_file(&self.dir.join(HANDOVER_FILE), &handover.encode()).map(|_| all)
        });
        let unlocked = self.unlock();
        let all = done?;
        unlocked?;
        Ok(all)
    }

    /// The daemon named by [`DiskStore::hand_over`], if the directory was handed over.
    pub fn handover(&self) -> Result<Option<Handover>, IpamError> {
        let path = self.dir.join(HANDOVER_FILE);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(Handover::decode(&bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io("read", path, e)),
        }
    }

    fn network(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn flock(&mut self) -> Result<(), IpamError> {
        self.lock_file
            .lock()
            .map_err(|e| IpamError::io("lock", self.dir.join("lock"), e))?;
        // Other processes may have changed the directory while it was not locked.
        self.index.forget();
        Ok(())
    }

    fn apply_boot_check(&mut self, source: &BootIdSource) -> Result<(), IpamError> {
        let id = match boot::check(&self.dir, source)? {
            BootCheck::Same => return Ok(()),
            BootCheck::FirstUse(id) => id,
            BootCheck::Rebooted(id) => {
                // The index goes first: reservations it no longer covers are merely unindexed.
                self.index.clear()?;
                let stale = self.list()?;
                let ips: Vec<IpAddr> = stale.iter().map(|r| r.ip).collect();
                store::release_all(self, &ips)?;
                log::info!(
                    "{}: boot ID changed, dropped {} stale reservations",
                    self.dir.display(),
                    ips.len()
                );
                id
            }
        };
        write_file(&self.dir.join(BOOT_FILE), id.as_bytes())
    }

    /// The addresses of `att`'s index entry that still name it; drops a stale entry.
    fn indexed_owned(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let Some(listed) = self.index.entry(att)? else {
            return Ok(Vec::new());
        };
        let owned = self.index.owned(att, &listed)?;
        if owned.is_empty() {
            log::debug!(
                "{}: dropping stale index entry of {att}",
                self.dir.display()
            );
            self.index.drop_entry(att, &listed)?;
        }
        Ok(owned)
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn last_path(&self, set_index: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED_PREFIX}{set_index}"))
    }

    /// Creates the reservation file `path` holding `att`, or returns `false` if the address is taken. The file
    /// appears under its name with its owner already written (an unnamed `O_TMPFILE`, written, then linked in),
    /// so a process killed at any instant leaves either no reservation or one its owner's DEL releases; never an
    /// empty one that no DEL can match. Filesystems without `O_TMPFILE` get the classic create-then-write.
    fn create_reservation(&self, path: &Path, att: &Attachment) -> Result<bool, IpamError> {
        let content = format!("{}{LINE_BREAK}{}", att.stored_id(), att.ifname);
        match self.link_reservation(path, content.as_bytes()) {
            Ok(taken) => Ok(taken),
            Err(e) if tmpfile_unsupported(&e) => self.create_then_write(path, content.as_bytes()),
            Err(e) => Err(IpamError::io("create", path, e)),
        }
    }

    /// The `O_TMPFILE` path of [`DiskStore::create_reservation`].
    fn link_reservation(&self, path: &Path, content: &[u8]) -> std::io::Result<bool> {
        let mut file = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(&self.dir)?;
        file.write_all(content)?;
        let name = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
        // SAFETY: `file` is an open descriptor and `name` a NUL-terminated path; linkat copies both.
        let rc = unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                name.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        match std::io::Error::last_os_error() {
            e if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link of the descriptor does not.
            e if e.raw_os_error() == Some(libc::ENOENT)
                || e.raw_os_error() == Some(libc::EPERM) =>
            {
                link_via_proc(&file, &name)
            }
            e => Err(e),
        }
    }

    /// The classic reservation: `O_EXCL` create, then write (an empty file is visible in between).
    fn create_then_write(&self, path: &Path, content: &[u8]) -> Result<bool, IpamError> {
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(IpamError::io("create", path, e)),
        };
        if let Err(e) = file.write_all(content) {
            // An empty file would leak the address, so undo the half-written reservation.
            let _ = fs::remove_file(path);
            return Err(IpamError::io("write", path, e));
        }
        Ok(true)
    }
}

/// Whether `open(O_TMPFILE)` failed because the filesystem (or kernel) has no unnamed files.
fn tmpfile_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
    )
}

/// Links an unnamed file in through its `/proc/self/fd` name.
fn link_via_proc(file: &File, name: &std::ffi::CStr) -> std::io::Result<bool> {
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: both paths are NUL-terminated and live across the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        e => Err(e),
    }
}

/// Writes (truncating) a state file with mode 0600.
pub(crate) fn write_file(path: &Path, content: &[u8]) -> Result<(), IpamError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content))
        .map_err(|e| IpamError::io("write", path, e))
}

/// Overwrites a `last_reserved_ip` cursor in place and then cuts it to length. Truncating it
/// to zero first (`O_TRUNC`) makes ext4 (`auto_da_alloc`) flush the file on close, which cost
/// about 2 ms per ADD; readers hold the lock, so the in-place write is never seen half done.
fn write_cursor(path: &Path, content: &[u8]) -> Result<(), IpamError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            f.write_all(content)?;
            f.set_len(content.len() as u64)
        })
        .map_err(|e| IpamError::io("write", path, e))
}

/// Parses a reservation file's content; host-local compares the whitespace-trimmed content.
pub fn parse_owner(content: &str) -> Attachment {
    let content = content.trim();
    match content.split_once('\n') {
        Some((id, ifname)) => Attachment::new(id.trim_end_matches('\r'), ifname),
        None => Attachment::new(content, ""),
    }
}

impl Store for DiskStore {
    fn lock(&mut self) -> Result<(), IpamError> {
        self.flock()?;
        // Checked under the lock: `hand_over` writes the file under it, so no allocation of
        // this process can slip in after the daemon imported the directory.
        if let Some(handover) = self.handover()? {
            self.unlock()?;
            return Err(IpamError::ManagedByDaemon {
                network: self.network(),
                socket: handover.socket,
                delete_queue: handover.delete_queue,
            });
        }
        Ok(())
    }

    fn unlock(&mut self) -> Result<(), IpamError> {
        self.lock_file
            .unlock()
            .map_err(|e| IpamError::io("unlock", self.dir.join("lock"), e))
    }

    fn reserve(
        &mut self,
        att: &Attachment,
        ip: IpAddr,
        set_index: usize,
    ) -> Result<bool, IpamError> {
        if !self.create_reservation(&self.ip_path(ip), att)? {
            return Ok(false);
        }
        write_cursor(&self.last_path(set_index), ip.to_string().as_bytes())?;
        Ok(true)
    }

    fn last_reserved(&self, set_index: usize) -> Result<Option<IpAddr>, IpamError> {
        let path = self.last_path(set_index);
        match fs::read_to_string(&path) {
            // Garbage is treated like a missing cursor: round-robin restarts, nothing breaks.
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io("read", path, e)),
        }
    }

    fn release(&mut self, ip: IpAddr) -> Result<bool, IpamError> {
        let path = self.ip_path(ip);
        let freed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(IpamError::io("remove", path, e)),
        };
        self.index.unpin(ip);
        Ok(freed)
    }

    /// Answers from the index when it covers every reservation passing `filter`, else scans.
    /// A stale entry (none of its addresses still names `att`) is deleted on the way.
    fn find_attachment(
        &self,
        att: &Attachment,
        filter: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let owned = self.indexed_owned(att)?;
        if !self.index.covered(filter)? {
            return store::find_by_scan(self, att, filter);
        }
        Ok(owned.into_iter().filter(|ip| filter(*ip)).collect())
    }

    /// Frees the addresses the index lists for `att` if it covers every reservation, else
    /// scans like host-local; then deletes the entry.
    fn release_by_attachment(&mut self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let listed = self.index.entry(att)?;
        let owned = match &listed {
            Some(ips) => self.index.owned(att, ips)?,
            None => Vec::new(),
        };
        let freed = if self.index.covered(&|_| true)? {
            store::release_all(self, &owned)?
        } else {
            store::release_by_scan(self, att)?
        };
        if let Some(ips) = listed {
            self.index.drop_entry(att, &ips)?;
        }
        Ok(freed)
    }

    fn record_attachment(&mut self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError> {
        // Links of addresses the attachment has lost since go first, so its links stay exactly
        // what it holds.
        if let Some(listed) = self.index.entry(att)? {
            self.index.drop_entry(att, &listed)?;
        }
        self.index.record(att, ips)
    }

    fn prune_index(&mut self) -> Result<(), IpamError> {
        self.index.prune()
    }

    fn list_matching(
        &self,
        filter: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Vec<Reservation>, IpamError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| IpamError::io("list", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("list", &self.dir, e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if !filter(ip) {
                continue;
            }
            match fs::read(entry.path()) {
                Ok(bytes) => out.push(Reservation {
                    ip,
                    owner: parse_owner(&String::from_utf8_lossy(&bytes)),
                }),
                // Like host-local, unreadable files (or directories) are not reservations.
                Err(e) => log::warn!("skipping {}: {e}", entry.path().display()),
            }
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_formats() {
        assert_eq!(parse_owner("abc\r\neth0"), Attachment::new("abc", "eth0"));
        assert_eq!(parse_owner("abc\neth0"), Attachment::new("abc", "eth0"));
        assert_eq!(
            parse_owner("  abc\r\neth0\n"),
            Attachment::new("abc", "eth0")
        );
        assert_eq!(parse_owner("abc"), Attachment::new("abc", ""));
        assert_eq!(parse_owner(""), Attachment::new("", ""));
    }

    fn store(tag: &str) -> (PathBuf, DiskStore) {
        let dir = std::env::temp_dir().join(format!("trestle-disk-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = DiskStore::open(&dir, "net").unwrap();
        (dir, store)
    }

    #[test]
    fn reservations_appear_with_their_owner_written() {
        let (dir, store) = store("tmpfile");
        let att = Attachment::new("c1", "eth0");
        let path = store.ip_path("10.0.0.2".parse().unwrap());
        // The unnamed-file path itself, where the filesystem has it (tmpfs and ext4 do).
        match store.link_reservation(&path, b"c1\r\neth0") {
            Ok(taken) => assert!(taken),
            Err(e) => assert!(tmpfile_unsupported(&e), "{e}"),
        }
        assert!(
            !store.create_reservation(&path, &att).unwrap(),
            "taken twice"
        );
        assert_eq!(parse_owner(&fs::read_to_string(&path).unwrap()), att);
        // The fallback for filesystems without O_TMPFILE.
        let other = store.ip_path("10.0.0.3".parse().unwrap());
        assert!(store.create_then_write(&other, b"c2\r\neth0").unwrap());
        assert!(!store.create_then_write(&other, b"c3\r\neth0").unwrap());
        assert!(!store.create_reservation(&other, &att).unwrap());
        assert_eq!(fs::read_to_string(&other).unwrap(), "c2\r\neth0");
        let _ = fs::remove_dir_all(dir);
    }
}
