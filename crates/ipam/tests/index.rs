//! DiskStore's attachment index, alone and with host-local writing to the same directory.

mod common;

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use common::{addrs, cfg, ip};
use serde_json::json;
use tempfile::TempDir;
use trestle_ipam_core::{
    allocate, check, gc, release, Attachment, BootIdSource, DiskStore, IpamConfig, IpamError,
};

fn att(id: &str) -> Attachment {
    Attachment::new(id, "eth0")
}

fn v4() -> IpamConfig {
    cfg(json!([[{"subnet": "10.0.0.0/24"}]]))
}

fn dual() -> IpamConfig {
    cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]))
}

fn setup() -> (TempDir, DiskStore, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let store = DiskStore::open_with(root.path(), "testnet", &BootIdSource::Disabled).unwrap();
    let dir = store.dir().to_path_buf();
    (root, store, dir)
}

fn index(dir: &Path) -> PathBuf {
    dir.join(".trestle-index")
}

fn link_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(index(dir))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The addresses the index links to attachment `key`, one per line, in address order.
fn entry(dir: &Path, key: &str) -> Option<String> {
    let mut ips: Vec<IpAddr> = link_names(dir)
        .iter()
        .filter_map(|n| n.strip_suffix(&format!("@{key}"))?.parse().ok())
        .collect();
    ips.sort();
    (!ips.is_empty()).then(|| ips.iter().map(|ip| format!("{ip}\n")).collect())
}

/// The addresses with an index link, as `<ip>.pin`, sorted by name.
fn pins(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = link_names(dir)
        .iter()
        .map(|n| format!("{}.pin", n.split_once('@').unwrap().0))
        .collect();
    v.sort();
    v
}

/// What host-local's DEL (`ReleaseByKey`) does: walk the directory recursively and delete
/// every file whose trimmed content is the attachment's.
fn host_local_release(dir: &Path, a: &Attachment) {
    let key = format!("{}\r\n{}", a.container_id, a.ifname);
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            host_local_release(&path, a);
        } else if fs::read_to_string(&path).is_ok_and(|c| c.trim() == key) {
            fs::remove_file(path).unwrap();
        }
    }
}

/// What host-local's ADD writes for a reservation.
fn host_local_reserve(dir: &Path, addr: &str, a: &Attachment) {
    let path = dir.join(addr);
    assert!(!path.exists(), "{addr} taken");
    fs::write(path, format!("{}\r\n{}", a.container_id, a.ifname)).unwrap();
}

fn is_duplicate(r: Result<trestle_ipam_core::Allocation, IpamError>) -> bool {
    matches!(r, Err(IpamError::Duplicate { .. }))
}

#[test]
fn entry_written_on_add_and_removed_on_del() {
    let (_root, mut s, dir) = setup();
    allocate(&dual(), &mut s, &att("a")).unwrap();
    allocate(&dual(), &mut s, &att("b")).unwrap();
    assert_eq!(entry(&dir, "a@eth0").unwrap(), "10.0.0.2\nfd00::2\n");
    assert_eq!(entry(&dir, "b@eth0").unwrap(), "10.0.0.3\nfd00::3\n");
    assert_eq!(pins(&dir).len(), 4);
    assert_eq!(
        check(&dual(), &mut s, &att("a")).unwrap(),
        [ip("10.0.0.2"), ip("fd00::2")]
    );
    assert_eq!(
        release(&dual(), &mut s, &att("a")).unwrap(),
        [ip("10.0.0.2"), ip("fd00::2")]
    );
    assert_eq!(entry(&dir, "a@eth0"), None);
    assert_eq!(pins(&dir), ["10.0.0.3.pin", "fd00::3.pin"]);
    assert!(!dir.join("10.0.0.2").exists());
    // DEL is idempotent; CHECK of a released attachment fails.
    assert!(release(&dual(), &mut s, &att("a")).unwrap().is_empty());
    assert!(matches!(
        check(&dual(), &mut s, &att("a")),
        Err(IpamError::NotFound { .. })
    ));
}

#[test]
fn duplicate_add_detected_through_the_entry() {
    let (_root, mut s, dir) = setup();
    allocate(&dual(), &mut s, &att("a")).unwrap();
    let err = allocate(&dual(), &mut s, &att("a")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "10.0.0.2 has been allocated to a, duplicate allocation is not allowed"
    );
    // Still a duplicate when only one of its addresses remains.
    fs::remove_file(dir.join("10.0.0.2")).unwrap();
    let err = allocate(&dual(), &mut s, &att("a")).unwrap_err();
    assert!(
        err.to_string().starts_with("fd00::2 has been allocated"),
        "{err}"
    );
    // A requested address skips the check for its set, and is added to the entry.
    let mut with_req = v4();
    with_req.requested = vec![ip("10.0.0.7")];
    allocate(&with_req, &mut s, &att("a")).unwrap();
    assert_eq!(entry(&dir, "a@eth0").unwrap(), "10.0.0.7\nfd00::2\n");
}

/// host-local released our attachment (its files and, having the same content, our links)
/// behind our back, or an operator removed the files: a new ADD is not blocked.
#[test]
fn stale_entry_does_not_block_add() {
    let (_root, mut s, dir) = setup();
    allocate(&dual(), &mut s, &att("a")).unwrap();
    host_local_release(&dir, &att("a"));
    assert!(pins(&dir).is_empty(), "host-local deleted the links");
    let got = allocate(&dual(), &mut s, &att("a")).unwrap();
    assert_eq!(addrs(&got), ["10.0.0.3/24", "fd00::3/64"]);
    assert_eq!(entry(&dir, "a@eth0").unwrap(), "10.0.0.3\nfd00::3\n");
    // Same when only the reservation files went (an operator's rm): the stale links go too.
    fs::remove_file(dir.join("10.0.0.3")).unwrap();
    fs::remove_file(dir.join("fd00::3")).unwrap();
    assert_eq!(pins(&dir), ["10.0.0.3.pin", "fd00::3.pin"]);
    assert!(!is_duplicate(allocate(&dual(), &mut s, &att("a"))));
    assert_eq!(entry(&dir, "a@eth0").unwrap(), "10.0.0.4\nfd00::4\n");
    assert_eq!(pins(&dir), ["10.0.0.4.pin", "fd00::4.pin"]);
}

/// Attachments made by host-local have no entry; they are still duplicates, CHECKed and
/// released, including when host-local reused an address the index used to cover.
#[test]
fn host_local_attachments_still_found() {
    let (_root, mut s, dir) = setup();
    allocate(&v4(), &mut s, &att("a")).unwrap(); // 10.0.0.2
    allocate(&v4(), &mut s, &att("b")).unwrap(); // 10.0.0.3
                                                 // host-local: DEL a, then ADD c into the freed address. As many address files as
                                                 // indexed addresses, same names, yet 10.0.0.2 is no longer ours.
    host_local_release(&dir, &att("a"));
    host_local_reserve(&dir, "10.0.0.2", &att("c"));
    assert!(is_duplicate(allocate(&v4(), &mut s, &att("c"))));
    assert_eq!(check(&v4(), &mut s, &att("c")).unwrap(), [ip("10.0.0.2")]);
    // Our own attachments still work while host-local's file is there.
    assert!(is_duplicate(allocate(&v4(), &mut s, &att("b"))));
    assert_eq!(release(&v4(), &mut s, &att("b")).unwrap(), [ip("10.0.0.3")]);
    assert_eq!(entry(&dir, "b@eth0"), None);
    // An old host-local's ID-only reservation belongs to every interface of the container.
    fs::write(dir.join("10.0.0.9"), "old").unwrap();
    assert!(is_duplicate(allocate(&v4(), &mut s, &att("old"))));
    assert_eq!(release(&v4(), &mut s, &att("c")).unwrap(), [ip("10.0.0.2")]);
    assert_eq!(
        release(&v4(), &mut s, &att("old")).unwrap(),
        [ip("10.0.0.9")]
    );
    assert!(allocate(&v4(), &mut s, &att("c")).is_ok());
}

/// One attachment with a trestle reservation (indexed) and a host-local one (not): DEL and
/// CHECK must see both.
#[test]
fn mixed_attachment_fully_released() {
    let (_root, mut s, dir) = setup();
    allocate(&v4(), &mut s, &att("a")).unwrap();
    host_local_reserve(&dir, "fd00::9", &att("a"));
    assert_eq!(
        check(&v4(), &mut s, &att("a")).unwrap(),
        [ip("10.0.0.2"), ip("fd00::9")]
    );
    assert_eq!(
        release(&v4(), &mut s, &att("a")).unwrap(),
        [ip("10.0.0.2"), ip("fd00::9")]
    );
    assert_eq!(entry(&dir, "a@eth0"), None);
    assert!(pins(&dir).is_empty());
}

#[test]
fn reboot_reset_clears_the_index() {
    let root = tempfile::tempdir().unwrap();
    let open = |boot: &str| {
        DiskStore::open_with(root.path(), "testnet", &BootIdSource::Fixed(boot.into())).unwrap()
    };
    let mut s = open("boot-1");
    allocate(&dual(), &mut s, &att("a")).unwrap();
    let dir = s.dir().to_path_buf();
    assert!(index(&dir).exists());
    drop(s);
    let mut s = open("boot-2");
    assert!(!index(&dir).exists());
    // The same attachment allocates again after the reboot, and is indexed again.
    allocate(&dual(), &mut s, &att("a")).unwrap();
    assert_eq!(entry(&dir, "a@eth0").unwrap(), "10.0.0.3\nfd00::3\n");
}

#[test]
fn gc_prunes_stale_entries_and_adds_none() {
    let (_root, mut s, dir) = setup();
    for id in ["a", "b", "c", "d"] {
        allocate(&dual(), &mut s, &att(id)).unwrap();
    }
    // a: fully gone behind our back (pins stay); b: half gone; c: invalid, GC frees it;
    // d: valid and intact. e: a valid host-local attachment.
    for addr in ["10.0.0.2", "fd00::2", "fd00::3"] {
        fs::remove_file(dir.join(addr)).unwrap();
    }
    host_local_reserve(&dir, "10.0.0.9", &att("e"));
    let freed = gc(&dual(), &mut s, &[att("a"), att("b"), att("d"), att("e")]).unwrap();
    assert_eq!(freed.len(), 2, "{freed:?}");
    assert_eq!(entry(&dir, "a@eth0"), None);
    assert_eq!(entry(&dir, "b@eth0").unwrap(), "10.0.0.3\n");
    assert_eq!(entry(&dir, "c@eth0"), None);
    assert_eq!(entry(&dir, "d@eth0").unwrap(), "10.0.0.5\nfd00::5\n");
    assert_eq!(entry(&dir, "e@eth0"), None);
    assert_eq!(pins(&dir), ["10.0.0.3.pin", "10.0.0.5.pin", "fd00::5.pin"]);
}

/// Attachments without a safe entry name are simply not indexed.
#[test]
fn unindexable_attachment_works_by_scanning() {
    let (_root, mut s, dir) = setup();
    let odd = Attachment::new("has@at", "eth0");
    allocate(&v4(), &mut s, &odd).unwrap();
    assert!(!index(&dir).exists());
    assert!(is_duplicate(allocate(&v4(), &mut s, &odd)));
    allocate(&v4(), &mut s, &att("a")).unwrap();
    assert_eq!(release(&v4(), &mut s, &odd).unwrap(), [ip("10.0.0.2")]);
    assert!(is_duplicate(allocate(&v4(), &mut s, &att("a"))));
}

/// The previous layout (an entry file per attachment and `pins/`): its reservations are found
/// by scanning, and GC removes its directory.
#[test]
fn previous_layout_is_scanned_then_removed() {
    let (_root, mut s, dir) = setup();
    host_local_reserve(&dir, "10.0.0.2", &att("a"));
    let legacy = dir.join(".trestle-attachments");
    fs::create_dir_all(legacy.join("pins")).unwrap();
    fs::write(legacy.join("a@eth0"), "10.0.0.2\n").unwrap();
    fs::hard_link(dir.join("10.0.0.2"), legacy.join("pins/10.0.0.2.pin")).unwrap();
    assert_eq!(check(&v4(), &mut s, &att("a")).unwrap(), [ip("10.0.0.2")]);
    assert!(is_duplicate(allocate(&v4(), &mut s, &att("a"))));
    gc(&v4(), &mut s, &[att("a")]).unwrap();
    assert!(!legacy.exists());
    assert_eq!(release(&v4(), &mut s, &att("a")).unwrap(), [ip("10.0.0.2")]);
}

/// host-local trims the container ID it stores; so does the index, for every lookup.
#[test]
fn padded_container_id_is_the_same_attachment() {
    let (_root, mut s, dir) = setup();
    let padded = Attachment::new("  a ", "eth0");
    allocate(&v4(), &mut s, &padded).unwrap();
    assert_eq!(entry(&dir, "a@eth0").unwrap(), "10.0.0.2\n");
    assert!(is_duplicate(allocate(&v4(), &mut s, &att("a"))));
    assert_eq!(check(&v4(), &mut s, &padded).unwrap(), [ip("10.0.0.2")]);
    assert_eq!(release(&v4(), &mut s, &padded).unwrap(), [ip("10.0.0.2")]);
    assert!(pins(&dir).is_empty());
}
