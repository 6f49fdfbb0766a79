//! The attachment index of [`DiskStore`](crate::DiskStore): lets ADD's duplicate check, DEL
//! and CHECK read a directory listing and the attachment's own reservation files instead of
//! every reservation, while host-local, which knows nothing of it, may share the directory.
//!
//! # Layout, under `<dir>/.trestle-index/`
//! - `<ip>@<containerID>@<ifname>`: a hard link to the reservation file `<dir>/<ip>` that
//!   trestle created for that attachment. The name says who holds the address; the link's
//!   inode says the reservation is still the very file trestle created. Container IDs match
//!   `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` and addresses hold no `@`, so the first two `@` split the
//!   name; the ifname may hold anything but `/`, NUL and whitespace (including `@`).
//!   Attachments without such a name (bad ID, empty ifname, which reads back like a legacy
//!   ID-only reservation, or a name over 255 bytes) are not indexed.
//!
//! A link is a name, not a file: indexing an address creates no inode and writes no data.
//! That matters on file systems where creating an inode is the expensive part (measured on
//! ext4 without a journal: about 0.4 ms per inode under pod churn), and it makes the index
//! update one `link(2)`.
//!
//! # Why it can be trusted
//! A link is a hint checked on use: a listed address counts only while its reservation file
//! still names the attachment (host-local may have released it since).
//!
//! What host-local may have *added* is detected through the links' inode numbers. A link keeps
//! its inode alive, so while it exists no other file can have that number. If every
//! address-named file of the directory has the inode number of a link for that address (two
//! directory listings, names and inode numbers only, no file opened), each is the very file
//! trestle created: its content has not changed (neither plugin rewrites a reservation) and
//! the link's name says its owner. The links then describe every reservation and no scan is
//! needed. Otherwise (host-local reservations, reservations made before this index existed, or
//! by an ADD interrupted between reserving and linking) the operation falls back to reading
//! every reservation, exactly as host-local does; such reservations are never adopted into the
//! index (GC adds nothing), so the fast path returns once they are released.
//! A count of files would not do: host-local releasing one of ours and reserving another keeps
//! the count. This assumes inode numbers are unique among a file system's live files.
//!
//! host-local's DEL walks the directory recursively and deletes every file whose content is the
//! attachment's, so it deletes our links together with its own files; its `GetByID` ignores
//! the links (their names are not addresses). Everything here runs under the store lock, and
//! the listing is read at most once per locked operation.
//!
//! Earlier versions kept `<dir>/.trestle-attachments/` (an entry file per attachment and a
//! `pins/` directory). Reservations indexed only there read as not covered (so they are found
//! by scanning), and GC or a reboot reset removes that directory.
//!
//! # Cost
//! ADD, DEL and CHECK list two directories and read the one or two reservation files of the
//! attachment. Listing is linear in the number of names but opens nothing: about 0.3 ms per
//! listing at 1,000 reservations on ext4, against about 3 µs per file for a scan.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt};
use std::path::{Path, PathBuf};

use crate::disk::parse_owner;
use crate::error::IpamError;
use crate::store::{Attachment, Reservation};

/// Name of the index directory inside the network's state directory.
pub const INDEX_DIR: &str = ".trestle-index";

/// The directory of the previous index layout, removed by GC and by a reboot reset.
pub const LEGACY_INDEX_DIR: &str = ".trestle-attachments";

const NAME_MAX: usize = 255;

/// One link of the index.
#[derive(Debug, Clone)]
struct Link {
    ip: IpAddr,
    ino: u64,
    /// `<ip>@<key>`.
    name: String,
}

impl Link {
    /// The attachment's key (see [`key`]).
    fn key(&self) -> &str {
        link_key(&self.name)
    }
}

/// The index of one network directory.
#[derive(Debug)]
pub(crate) struct Index {
    net_dir: PathBuf,
    dir: PathBuf,
    /// The links as listed in this locked operation (see [`Index::forget`]).
    links: RefCell<Option<Vec<Link>>>,
}

/// The `<containerID>@<ifname>` part of `att`'s link names, or `None` if it is not indexed.
pub(crate) fn key(att: &Attachment) -> Option<String> {
    let id = att.stored_id();
    valid_parts(id, &att.ifname).then(|| format!("{id}@{}", att.ifname))
}

/// True for the keys [`key`] makes (the first `@` ends the ID, which holds none). Checked for every listed link, so
/// it allocates nothing.
fn valid_key(key: &str) -> bool {
    key.split_once('@')
        .is_some_and(|(id, ifname)| valid_parts(id, ifname))
}

/// True if `<id>@<ifname>` is an indexable key: it splits back into these two parts, and a link name made from it
/// fits in a directory entry.
fn valid_parts(id: &str, ifname: &str) -> bool {
    // These characters exclude `@` and whitespace, so the ID splits off and reads back (trimmed) as itself.
    let id_ok = id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let ifname_ok = !ifname.is_empty()
        && !ifname
            .chars()
            .any(|c| c == '/' || c == '\0' || c.is_whitespace());
    // The longest address ("ffff:...:ffff", 39 bytes) and its `@` must fit too.
    id_ok && ifname_ok && id.len() + 1 + ifname.len() + 40 <= NAME_MAX
}

/// The attachment a key stands for; `None` for anything else.
#[cfg(test)]
fn parse_key(name: &str) -> Option<Attachment> {
    let (id, ifname) = name.split_once('@')?;
    valid_key(name).then(|| Attachment::new(id, ifname))
}

/// The address a link name stands for, if the name is one [`link_name`] makes.
fn parse_link(name: &str) -> Option<IpAddr> {
    let (ip, key) = name.split_once('@')?;
    valid_key(key).then_some(())?;
    ip.parse().ok()
}

/// The key part of a link name made by [`link_name`].
fn link_key(name: &str) -> &str {
    name.split_once('@').map_or("", |(_, key)| key)
}

fn link_name(ip: IpAddr, key: &str) -> String {
    format!("{ip}@{key}")
}

impl Index {
    /// The index of the network directory `net_dir`.
    pub(crate) fn new(net_dir: &Path) -> Index {
        Index {
            net_dir: net_dir.to_path_buf(),
            dir: net_dir.join(INDEX_DIR),
            links: RefCell::new(None),
        }
    }

    /// Drops what was listed: called when the store is locked, since other processes may have
    /// changed the directory while it was not.
    pub(crate) fn forget(&self) {
        self.links.replace(None);
    }

    /// Runs `f` on the links, listing them first if this operation has not yet.
    fn with_links<R>(&self, f: impl FnOnce(&mut Vec<Link>) -> R) -> Result<R, IpamError> {
        let mut cached = self.links.borrow_mut();
        if cached.is_none() {
            *cached = Some(self.list_links()?);
        }
        Ok(f(cached.as_mut().expect("just listed")))
    }

    fn list_links(&self) -> Result<Vec<Link>, IpamError> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(|e| IpamError::io("list", &self.dir, e))?,
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("list", &self.dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if let Some(ip) = parse_link(&name) {
                links.push(Link {
                    ip,
                    ino: entry.ino(),
                    name,
                });
            }
        }
        Ok(links)
    }

    /// The addresses linked to `att`, or `None` if there are none.
    pub(crate) fn entry(&self, att: &Attachment) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let Some(key) = key(att) else {
            return Ok(None);
        };
        let mut ips: Vec<IpAddr> = self.with_links(|links| {
            links
                .iter()
                .filter(|l| l.key() == key)
                .map(|l| l.ip)
                .collect()
        })?;
        ips.sort();
        ips.dedup();
        Ok((!ips.is_empty()).then_some(ips))
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

    /// Links each of `new` (reservations just created for `att`) into the index. Does nothing
    /// if `att` is not indexable.
    pub(crate) fn record(&self, att: &Attachment, new: &[IpAddr]) -> Result<(), IpamError> {
        let Some(key) = key(att) else {
            return Ok(());
        };
        for &ip in new {
            let name = link_name(ip, &key);
            let ino = self.link(ip, &name)?;
            let link = Link { ip, ino, name };
            // Keep a listing read earlier in this operation current.
            if let Some(links) = self.links.borrow_mut().as_mut() {
                links.retain(|l| l.name != link.name);
                links.push(link);
            }
        }
        Ok(())
    }

    /// Hard-links the reservation file of `ip` as `name`, replacing a stale link of that name
    /// and creating the index directory on first use. Returns the inode number.
    fn link(&self, ip: IpAddr, name: &str) -> Result<u64, IpamError> {
        use std::os::unix::fs::MetadataExt;
        let (file, link) = (self.net_dir.join(ip.to_string()), self.dir.join(name));
        let linked = match fs::hard_link(&file, &link) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                remove_if_exists(&link)?;
                fs::hard_link(&file, &link)
            }
            Err(e) if e.kind() == ErrorKind::NotFound && !self.dir.exists() => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&self.dir)
                    .map_err(|e| IpamError::io("create", &self.dir, e))?;
                fs::hard_link(&file, &link)
            }
            other => other,
        };
        linked.map_err(|e| IpamError::io("link", &link, e))?;
        fs::symlink_metadata(&link)
            .map(|m| m.ino())
            .map_err(|e| IpamError::io("stat", link, e))
    }

    /// Removes every link of `ip` (after its reservation was freed). Only logs on failure: a
    /// link left behind keeps an unused inode, so it can never vouch for another file.
    pub(crate) fn unpin(&self, ip: IpAddr) {
        let removed = self.with_links(|links| {
            let (gone, kept): (Vec<Link>, Vec<Link>) = links.drain(..).partition(|l| l.ip == ip);
            *links = kept;
            gone
        });
        let gone = match removed {
            Ok(gone) => gone,
            Err(e) => {
                log::warn!("cannot list the index to unlink {ip}: {e}");
                return;
            }
        };
        for link in gone {
            if let Err(e) = remove_if_exists(&self.dir.join(&link.name)) {
                log::warn!("cannot remove index link of {ip}: {e}");
            }
        }
    }

    /// Removes those links of `att` for `listed` that no longer link the live reservation.
    pub(crate) fn drop_entry(&self, att: &Attachment, listed: &[IpAddr]) -> Result<(), IpamError> {
        let Some(key) = key(att) else {
            return Ok(());
        };
        let stale: Vec<String> = self.with_links(|links| {
            links
                .iter()
                .filter(|l| l.key() == key && listed.contains(&l.ip))
                .filter(|l| !self.is_current(l))
                .map(|l| l.name.clone())
                .collect()
        })?;
        for name in stale {
            remove_if_exists(&self.dir.join(&name))?;
            if let Some(links) = self.links.borrow_mut().as_mut() {
                links.retain(|l| l.name != name);
            }
        }
        Ok(())
    }

    /// True if `link` is the same file as the reservation of its address.
    fn is_current(&self, link: &Link) -> bool {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(self.net_dir.join(link.ip.to_string()))
            .is_ok_and(|m| m.ino() == link.ino)
    }

    /// True if some link of `ip` is the same file as its reservation.
    #[cfg(test)]
    fn pin_is_current(&self, ip: IpAddr) -> bool {
        self.with_links(|links| links.clone())
            .unwrap_or_default()
            .iter()
            .any(|l| l.ip == ip && self.is_current(l))
    }

    /// True if every reservation whose address passes `filter` has a link with its inode
    /// number, i.e. the links describe all of them (see the module docs). Reads directory
    /// listings only.
    pub(crate) fn covered(&self, filter: &dyn Fn(IpAddr) -> bool) -> Result<bool, IpamError> {
        let files = inodes(&self.net_dir, |name| {
            name.parse::<IpAddr>().ok().filter(|ip| filter(*ip))
        })
        .map_err(|e| IpamError::io("list", &self.net_dir, e))?;
        if files.is_empty() {
            return Ok(true);
        }
        self.with_links(|links| {
            let linked: std::collections::HashSet<(IpAddr, u64)> =
                links.iter().map(|l| (l.ip, l.ino)).collect();
            files.iter().all(|(ip, ino)| linked.contains(&(*ip, *ino)))
        })
    }

    /// Deletes the whole index (after a reboot, when every reservation goes).
    pub(crate) fn clear(&self) -> Result<(), IpamError> {
        self.forget();
        for dir in [self.dir.clone(), self.net_dir.join(LEGACY_INDEX_DIR)] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(IpamError::io("remove", &dir, e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// GC of the index: removes links that no longer link their reservation (gone, or
    /// replaced by another file), and the previous layout's directory. Adds nothing.
    pub(crate) fn prune(&self) -> Result<(), IpamError> {
        let legacy = self.net_dir.join(LEGACY_INDEX_DIR);
        match fs::remove_dir_all(&legacy) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(IpamError::io("remove", legacy, e))
            }
            _ => {}
        }
        let files = inodes(&self.net_dir, |name| name.parse::<IpAddr>().ok())
            .map_err(|e| IpamError::io("list", &self.net_dir, e))?;
        let stale: Vec<String> = self.with_links(|links| {
            links
                .iter()
                .filter(|l| files.get(&l.ip) != Some(&l.ino))
                .map(|l| l.name.clone())
                .collect()
        })?;
        for name in stale {
            remove_if_exists(&self.dir.join(&name))?;
        }
        self.forget();
        Ok(())
    }
}

/// Inode numbers of the non-directory entries of `dir` whose names `select` keeps, by the
/// key it returns. Reads the listing only (`d_ino`, `d_type`).
fn inodes<K: std::hash::Hash + Eq>(
    dir: &Path,
    select: impl Fn(&str) -> Option<K>,
) -> io::Result<HashMap<K, u64>> {
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(&select) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            out.insert(key, entry.ino());
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
            index.record(&att, &[ip(addr)]).unwrap();
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
        fs::remove_file(index.dir.join(link_name(ip("10.0.0.2"), "a@eth0"))).unwrap();
        index.forget();
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
        // With the longest address and its `@`, link names stay within 255 bytes.
        assert!(k(&"a".repeat(210), "eth0").is_some());
        assert_eq!(k(&"a".repeat(211), "eth0"), None);
        assert_eq!(
            parse_key("abc@we@ird"),
            Some(Attachment::new("abc", "we@ird"))
        );
        for name in [".tmp", "pins", "abc@", "abc@a b"] {
            assert_eq!(parse_key(name), None, "{name}");
        }
        assert_eq!(parse_link("fd00::2@abc@we@ird"), Some(ip("fd00::2")));
        assert_eq!(
            parse_key(link_key("fd00::2@abc@we@ird")),
            Some(Attachment::new("abc", "we@ird"))
        );
        for name in [
            "abc@eth0",
            "10.0.0.2",
            "10.0.0.2@",
            "10.0.0.2@abc@",
            "x@abc@eth0",
        ] {
            assert_eq!(parse_link(name), None, "{name}");
        }
    }
}
