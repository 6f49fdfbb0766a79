//! The attachment index of [`DiskStore`](crate::DiskStore): lets ADD's duplicate check, DEL
//! and CHECK open a couple of files instead of every reservation, while host-local, which
//! knows nothing of it, may share the directory.
//!
//! # Layout, under `<dir>/.trestle-attachments/`
//! - `<containerID>@<ifname>`: the *entry* of an attachment trestle allocated for, listing its
//!   addresses one per line. Container IDs match `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, so the first
//!   `@` ends the ID; the ifname may hold anything but `/`, NUL and whitespace (including `@`).
//!   Attachments without such a name (bad ID, empty ifname, which reads back like a legacy
//!   ID-only reservation, or longer than 255 bytes) are not indexed.
//! - `pins/<ip>.pin`: a hard link to the reservation file `<dir>/<ip>` that trestle created.
//!
//! # Why it can be trusted
//! An entry is a hint checked on use: a listed address counts only while its reservation file
//! still names the attachment (host-local may have released it since).
//!
//! What host-local may have *added* is detected through the pins. A pin keeps its inode alive,
//! so while it exists no other file can have that inode number. If every address-named file of
//! the directory has the inode number of its pin (two directory listings, names and inode
//! numbers only, no file opened), each is the very file trestle created: its content has not
//! changed (neither plugin rewrites a reservation) and its owner's entry lists it (entries are
//! written before pins). The entries then describe every reservation and no scan is needed.
//! Otherwise (host-local reservations, reservations made before the index existed, or by an
//! ADD interrupted between reserving and indexing) the operation falls back to reading every
//! reservation, exactly as before; such reservations are never adopted into the index (GC
//! adds nothing), so the fast path returns once they are released.
//! A count of files would not do: host-local releasing one of ours and reserving another keeps
//! the count. This assumes inode numbers are unique among a file system's live files.
//!
//! host-local's DEL walks the directory recursively and deletes every file whose content is the
//! attachment's, so it deletes our pins together with its own files; its `GetByID` ignores
//! entries and pins (their names are not addresses). Everything here runs under the store lock.
//!
//! # Cost
//! ADD, DEL and CHECK open the entry and the one or two reservation files it lists, and list
//! two directories. Listing is linear in the number of names but opens nothing: about 0.3 ms
//! per listing at 1,000 reservations on ext4, against about 3 µs per file for a scan.

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt};
use std::path::{Path, PathBuf};

use crate::disk::{parse_owner, write_file};
use crate::error::IpamError;
use crate::store::{Attachment, Reservation};

/// Name of the index directory inside the network's state directory.
pub const INDEX_DIR: &str = ".trestle-attachments";

const PINS_DIR: &str = "pins";
const PIN_SUFFIX: &str = ".pin";
/// Entries are replaced through this file and a rename, so a crash never leaves half a list.
const TMP_NAME: &str = ".tmp";
const NAME_MAX: usize = 255;

/// The index of one network directory.
#[derive(Debug)]
pub(crate) struct Index {
    net_dir: PathBuf,
    dir: PathBuf,
}

/// The entry name of `att`, or `None` if it is not indexed (see the module docs).
pub(crate) fn key(att: &Attachment) -> Option<String> {
    let id = att.stored_id();
    let id_ok = id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let ifname_ok = !att.ifname.is_empty()
        && !att
            .ifname
            .chars()
            .any(|c| c == '/' || c == '\0' || c.is_whitespace());
    let key = format!("{id}@{}", att.ifname);
    (id_ok && ifname_ok && key.len() <= NAME_MAX).then_some(key)
}

/// The attachment an entry name stands for; `None` for anything else in the directory.
fn parse_key(name: &str) -> Option<Attachment> {
    let (id, ifname) = name.split_once('@')?;
    let att = Attachment::new(id, ifname);
    (key(&att).as_deref() == Some(name)).then_some(att)
}

impl Index {
    /// The index of the network directory `net_dir`.
    pub(crate) fn new(net_dir: &Path) -> Index {
        Index {
            net_dir: net_dir.to_path_buf(),
            dir: net_dir.join(INDEX_DIR),
        }
    }

    fn pins_dir(&self) -> PathBuf {
        self.dir.join(PINS_DIR)
    }

    fn pin_path(&self, ip: IpAddr) -> PathBuf {
        self.pins_dir().join(format!("{ip}{PIN_SUFFIX}"))
    }

    /// The addresses `att`'s entry lists, or `None` if it has none.
    pub(crate) fn entry(&self, att: &Attachment) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let Some(key) = key(att) else {
            return Ok(None);
        };
        let path = self.dir.join(key);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::io("read", path, e)),
        }
    }

    /// Those of `ips` whose reservation file still names exactly `att`.
    pub(crate) fn owned(&self, att: &Attachment, ips: &[IpAddr]) -> Result<Vec<IpAddr>, IpamError> {
        let mut out = Vec::new();
        for &ip in ips {
            if let Some(owner) = self.owner(ip)? {
                if (Reservation { ip, owner }).matches_exact(att) {
                    out.push(ip);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The owner recorded in the reservation file of `ip`, if there is one.
    fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
        let path = self.net_dir.join(ip.to_string());
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(parse_owner(&String::from_utf8_lossy(&bytes)))),
            Err(e) if e.kind() == ErrorKind::NotFound || path.is_dir() => Ok(None),
            Err(e) => Err(IpamError::io("read", path, e)),
        }
    }

    /// Replaces `att`'s entry with `ips`, then pins each of `new` (reservations just created
    /// for it). Returns without writing anything if `att` is not indexable.
    pub(crate) fn record(
        &self,
        att: &Attachment,
        ips: &[IpAddr],
        new: &[IpAddr],
    ) -> Result<(), IpamError> {
        let Some(key) = key(att) else {
            return Ok(());
        };
        let content: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
        let tmp = self.dir.join(TMP_NAME);
        match write_file(&tmp, content.as_bytes()) {
            // The index is created by the first allocation that records into it.
            Err(IpamError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                self.create_dirs()?;
                write_file(&tmp, content.as_bytes())?;
            }
            other => other?,
        }
        let path = self.dir.join(key);
        fs::rename(&tmp, &path).map_err(|e| IpamError::io("rename", path, e))?;
        for &ip in new {
            self.pin(ip)?;
        }
        Ok(())
    }

    fn create_dirs(&self) -> Result<(), IpamError> {
        let pins = self.pins_dir();
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&pins)
            .map_err(|e| IpamError::io("create", pins, e))
    }

    /// Hard-links the reservation file of `ip` into the pins, replacing a stale pin.
    fn pin(&self, ip: IpAddr) -> Result<(), IpamError> {
        let (file, pin) = (self.net_dir.join(ip.to_string()), self.pin_path(ip));
        match fs::hard_link(&file, &pin) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                remove_if_exists(&pin)?;
                fs::hard_link(&file, &pin)
            }
            other => other,
        }
        .map_err(|e| IpamError::io("link", pin, e))
    }

    /// Removes the pin of `ip` (after its reservation was freed). Only logs on failure: a
    /// pin left behind keeps an unused inode, so it can never vouch for another file.
    pub(crate) fn unpin(&self, ip: IpAddr) {
        if let Err(e) = remove_if_exists(&self.pin_path(ip)) {
            log::warn!("cannot remove pin of {ip}: {e}");
        }
    }

    /// Removes `att`'s entry and those pins of `listed` that no longer pin a reservation.
    pub(crate) fn drop_entry(&self, att: &Attachment, listed: &[IpAddr]) -> Result<(), IpamError> {
        for &ip in listed {
            if !self.pin_is_current(ip) {
                self.unpin(ip);
            }
        }
        match key(att) {
            Some(key) => remove_if_exists(&self.dir.join(key)),
            None => Ok(()),
        }
    }

    /// True if the pin of `ip` is the same file as its reservation.
    fn pin_is_current(&self, ip: IpAddr) -> bool {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let pin = ino(&self.pin_path(ip));
        pin.is_some() && pin == ino(&self.net_dir.join(ip.to_string()))
    }

    /// True if every reservation whose address passes `filter` is a pinned file, i.e. the
    /// entries list all of them (see the module docs). Reads directory listings only.
    pub(crate) fn covered(&self, filter: &dyn Fn(IpAddr) -> bool) -> Result<bool, IpamError> {
        let files = inodes(&self.net_dir, |name| {
            name.parse::<IpAddr>()
                .ok()
                .filter(|ip| filter(*ip))
                .map(|_| name)
        })
        .map_err(|e| IpamError::io("list", &self.net_dir, e))?;
        if files.is_empty() {
            return Ok(true);
        }
        let pins = self.pin_inodes()?;
        Ok(files.iter().all(|(name, ino)| pins.get(name) == Some(ino)))
    }

    /// Pin inode numbers by address name; empty if there are no pins.
    fn pin_inodes(&self) -> Result<HashMap<String, u64>, IpamError> {
        let dir = self.pins_dir();
        match inodes(&dir, |name| name.strip_suffix(PIN_SUFFIX)) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(HashMap::new()),
            other => other.map_err(|e| IpamError::io("list", dir, e)),
        }
    }

    /// Deletes the whole index (after a reboot, when every reservation goes).
    pub(crate) fn clear(&self) -> Result<(), IpamError> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(IpamError::io("remove", &self.dir, e)),
            _ => Ok(()),
        }
    }

    /// GC of the index: removes pins that no longer pin their reservation, and entries (or
    /// addresses in them) whose reservation is gone or names someone else. Adds nothing.
    pub(crate) fn prune(&self) -> Result<(), IpamError> {
        let files = inodes(&self.net_dir, |name| {
            name.parse::<IpAddr>().ok().map(|_| name)
        })
        .map_err(|e| IpamError::io("list", &self.net_dir, e))?;
        for (name, ino) in self.pin_inodes()? {
            if files.get(&name) != Some(&ino) {
                remove_if_exists(&self.pins_dir().join(format!("{name}{PIN_SUFFIX}")))?;
            }
        }
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            other => other.map_err(|e| IpamError::io("list", &self.dir, e))?,
        };
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("list", &self.dir, e))?;
            if let Some(att) = entry.file_name().to_str().and_then(parse_key) {
                self.prune_entry(&att)?;
            }
        }
        Ok(())
    }

    fn prune_entry(&self, att: &Attachment) -> Result<(), IpamError> {
        let Some(listed) = self.entry(att)? else {
            return Ok(());
        };
        let owned = self.owned(att, &listed)?;
        if owned.is_empty() {
            self.drop_entry(att, &listed)
        } else if owned.len() < listed.len() {
            self.record(att, &owned, &[])
        } else {
            Ok(())
        }
    }
}

/// Inode numbers of the non-directory entries of `dir` whose names `select` keeps, by the
/// name it returns. Reads the listing only (`d_ino`, `d_type`).
fn inodes(dir: &Path, select: impl Fn(&str) -> Option<&str>) -> io::Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(&select) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            out.insert(key.to_string(), entry.ino());
        }
    }
    Ok(out)
}

fn remove_if_exists(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(IpamError::io("remove", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A directory with trestle-made reservations of `a` (10.0.0.2) and `b` (10.0.0.3).
    fn indexed_dir() -> (tempfile::TempDir, Index) {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::new(tmp.path());
        for (id, addr) in [("a", "10.0.0.2"), ("b", "10.0.0.3")] {
            fs::write(tmp.path().join(addr), format!("{id}\r\neth0")).unwrap();
            let att = Attachment::new(id, "eth0");
            index.record(&att, &[ip(addr)], &[ip(addr)]).unwrap();
        }
        (tmp, index)
    }

    #[test]
    fn covered_only_while_every_file_is_pinned() {
        let (tmp, index) = indexed_dir();
        let all = |_: IpAddr| true;
        assert!(index.covered(&all).unwrap());
        // Non-address names do not matter.
        fs::write(tmp.path().join("lock"), "").unwrap();
        assert!(index.covered(&all).unwrap());
        // A reservation host-local made: not covered, but only for filters that include it.
        fs::write(tmp.path().join("10.0.1.9"), "c\r\neth0").unwrap();
        assert!(!index.covered(&all).unwrap());
        let only_first = |ip: IpAddr| ip < "10.0.1.0".parse::<IpAddr>().unwrap();
        assert!(index.covered(&only_first).unwrap());
    }

    /// host-local releases `a` (deleting its file and the pin, as its recursive DEL does) and
    /// reserves the same address for `c`: the number of files matches the number of indexed
    /// addresses, and even the name is the same, but the new file is not ours.
    #[test]
    fn replaced_file_is_not_covered() {
        let (tmp, index) = indexed_dir();
        let file = tmp.path().join("10.0.0.2");
        fs::remove_file(&file).unwrap();
        fs::remove_file(index.pin_path(ip("10.0.0.2"))).unwrap();
        fs::write(&file, "c\r\neth0").unwrap();
        assert!(!index.covered(&|_| true).unwrap());
        // Even if our pin survived (say, an operator deleted only the file), the pin holds
        // the old inode, so the new file cannot share its number.
        let (tmp, index) = indexed_dir();
        let file = tmp.path().join("10.0.0.3");
        fs::remove_file(&file).unwrap();
        fs::write(&file, "c\r\neth0").unwrap();
        assert!(!index.covered(&|_| true).unwrap());
        assert!(!index.pin_is_current(ip("10.0.0.3")));
        assert!(index.pin_is_current(ip("10.0.0.2")));
    }

    #[test]
    fn owned_checks_the_reservation_file() {
        let (tmp, index) = indexed_dir();
        let a = Attachment::new("a", "eth0");
        let listed = index.entry(&a).unwrap().unwrap();
        assert_eq!(listed, [ip("10.0.0.2")]);
        assert_eq!(index.owned(&a, &listed).unwrap(), [ip("10.0.0.2")]);
        assert!(index
            .owned(&Attachment::new("a", "eth1"), &listed)
            .unwrap()
            .is_empty());
        fs::remove_file(tmp.path().join("10.0.0.2")).unwrap();
        assert!(index.owned(&a, &listed).unwrap().is_empty());
        assert_eq!(index.entry(&Attachment::new("zz", "eth0")).unwrap(), None);
    }

    #[test]
    fn keys_are_unambiguous_and_safe() {
        let k = |id: &str, ifname: &str| key(&Attachment::new(id, ifname));
        assert_eq!(k("abc-1.x_y", "eth0").as_deref(), Some("abc-1.x_y@eth0"));
        assert_eq!(k(" abc ", "eth0").as_deref(), Some("abc@eth0"));
        assert_eq!(k("abc", "we@ird").as_deref(), Some("abc@we@ird"));
        for (id, ifname) in [
            ("", "eth0"),
            ("-abc", "eth0"),
            (".x", "eth0"),
            ("a@b", "eth0"),
            ("a/b", "eth0"),
            ("abc", ""),
            ("abc", "a/b"),
            ("abc", "a b"),
        ] {
            assert_eq!(k(id, ifname), None, "{id:?} {ifname:?}");
        }
        assert!(k(&"a".repeat(250), "eth0").is_some(), "255 bytes fit");
        assert_eq!(k(&"a".repeat(251), "eth0"), None);
        assert_eq!(
            parse_key("abc@we@ird"),
            Some(Attachment::new("abc", "we@ird"))
        );
        for name in [".tmp", "pins", "abc@", "abc@a b"] {
            assert_eq!(parse_key(name), None, "{name}");
        }
    }
}
