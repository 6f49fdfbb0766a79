//! DiskStore: host-local's on-disk format, reboot detection and concurrency.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{addrs, cfg, ip};
use serde_json::json;
use trestle_ipam_core::{
    allocate, check, gc, release, Attachment, BootIdSource, DiskStore, IpamConfig, IpamError,
};

fn att(id: &str) -> Attachment {
    Attachment::new(id, "eth0")
}

fn open(root: &Path) -> DiskStore {
    DiskStore::open_with(root, "testnet", &BootIdSource::Disabled).unwrap()
}

fn open_boot(root: &Path, boot: &str) -> DiskStore {
    DiskStore::open_with(root, "testnet", &BootIdSource::Fixed(boot.into())).unwrap()
}

fn small() -> IpamConfig {
    cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn writes_host_local_layout() {
    let root = tempfile::tempdir().unwrap();
    let mut s = open(root.path());
    allocate(&small(), &mut s, &Attachment::new("  cid-1 ", "eth0")).unwrap();
    let dir = root.path().join("testnet");
    assert_eq!(s.dir(), dir);
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(
        names(&dir),
        [
            ".trestle-index",
            "10.0.0.2",
            "fd00::2",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    // The index: a hard link per reservation file, named by address and attachment.
    let index = dir.join(".trestle-index");
    assert_eq!(names(&index), ["10.0.0.2@cid-1@eth0", "fd00::2@cid-1@eth0"]);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    for addr in ["10.0.0.2", "fd00::2"] {
        assert_eq!(
            ino(&index.join(format!("{addr}@cid-1@eth0"))),
            ino(&dir.join(addr))
        );
    }
    assert_eq!(
        fs::read_to_string(dir.join("10.0.0.2")).unwrap(),
        "cid-1\r\neth0"
    );
    assert_eq!(
        fs::read_to_string(dir.join("fd00::2")).unwrap(),
        "cid-1\r\neth0"
    );
    assert_eq!(mode(&dir.join("10.0.0.2")), 0o600);
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.0.0.2"
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
        "fd00::2"
    );
}

/// Files as written by current host-local (`\r\n`), Debian's v1.1.1 (`\n`) and releases that
/// stored only the container ID; plus host-local's round-robin cursor.
fn host_local_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("testnet");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("10.0.0.2"), "crlf\r\neth0").unwrap();
    fs::write(dir.join("10.0.0.3"), "lf\neth0").unwrap();
    fs::write(dir.join("10.0.0.4"), "legacy").unwrap();
    fs::write(dir.join("10.0.0.5"), "lf\neth1").unwrap();
    fs::write(dir.join("last_reserved_ip.0"), "10.0.0.5").unwrap();
    fs::write(dir.join("lock"), "").unwrap();
    fs::write(dir.join("not-an-ip"), "crlf\r\neth0").unwrap();
    dir
}

#[test]
fn reads_host_local_files() {
    let root = tempfile::tempdir().unwrap();
    let dir = host_local_dir(root.path());
    let cfg = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = open(root.path());
    // Round-robin continues from host-local's cursor.
    assert_eq!(
        addrs(&allocate(&cfg, &mut s, &att("new")).unwrap()),
        ["10.0.0.6/24"]
    );
    // Both separators and the legacy format are recognised owners.
    for id in ["crlf", "lf", "legacy"] {
        assert!(
            matches!(
                allocate(&cfg, &mut s, &att(id)),
                Err(IpamError::Duplicate { .. })
            ),
            "{id}"
        );
    }
    assert_eq!(check(&cfg, &mut s, &att("crlf")).unwrap(), [ip("10.0.0.2")]);
    assert_eq!(check(&cfg, &mut s, &att("lf")).unwrap(), [ip("10.0.0.3")]);
    assert_eq!(
        check(&cfg, &mut s, &Attachment::new("lf", "eth1")).unwrap(),
        [ip("10.0.0.5")]
    );
    assert_eq!(
        check(&cfg, &mut s, &att("legacy")).unwrap(),
        [ip("10.0.0.4")]
    );
    // DEL by content, per interface.
    assert_eq!(release(&cfg, &mut s, &att("lf")).unwrap(), [ip("10.0.0.3")]);
    assert!(dir.join("10.0.0.5").exists());
    assert_eq!(
        release(&cfg, &mut s, &att("crlf")).unwrap(),
        [ip("10.0.0.2")]
    );
    assert_eq!(
        release(&cfg, &mut s, &att("legacy")).unwrap(),
        [ip("10.0.0.4")]
    );
    assert!(
        dir.join("not-an-ip").exists(),
        "only files named by an IP are reservations"
    );
}

#[test]
fn legacy_release_only_as_fallback() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("testnet");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("10.0.0.2"), "c\r\neth0").unwrap();
    fs::write(dir.join("10.0.0.3"), "c").unwrap();
    let cfg = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = open(root.path());
    assert_eq!(release(&cfg, &mut s, &att("c")).unwrap(), [ip("10.0.0.2")]);
    assert_eq!(release(&cfg, &mut s, &att("c")).unwrap(), [ip("10.0.0.3")]);
}

#[test]
fn gc_frees_empty_leftovers_and_ignores_state_files() {
    let root = tempfile::tempdir().unwrap();
    let dir = host_local_dir(root.path());
    // A reservation whose writer died before writing the owner.
    fs::write(dir.join("10.0.0.9"), "").unwrap();
    let cfg = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = open(root.path());
    let freed = gc(
        &cfg,
        &mut s,
        &[att("crlf"), Attachment::new("legacy", "eth3")],
    )
    .unwrap();
    let freed: Vec<_> = freed
        .into_iter()
        .map(|(a, ip)| (a.container_id, ip.to_string()))
        .collect();
    assert_eq!(
        freed,
        [
            ("lf".into(), "10.0.0.3".into()),
            ("lf".into(), "10.0.0.5".into()),
            (String::new(), "10.0.0.9".into())
        ]
    );
    assert_eq!(
        names(&dir),
        [
            "10.0.0.2",
            "10.0.0.4",
            "last_reserved_ip.0",
            "lock",
            "not-an-ip"
        ]
    );
}

#[test]
fn reboot_drops_reservations_but_keeps_cursor() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("testnet");
    let cfg = small();
    let mut s = open_boot(root.path(), "boot-1");
    assert_eq!(
        fs::read_to_string(dir.join(".trestle-boot")).unwrap(),
        "boot-1"
    );
    allocate(&cfg, &mut s, &att("a")).unwrap();
    allocate(&cfg, &mut s, &att("b")).unwrap();
    drop(s);
    // Same boot: nothing happens.
    let mut s = open_boot(root.path(), "boot-1");
    assert_eq!(check(&cfg, &mut s, &att("a")).unwrap().len(), 2);
    drop(s);
    // Reboot: all reservations go, round-robin continues after the last one.
    let mut s = open_boot(root.path(), "boot-2");
    assert_eq!(
        fs::read_to_string(dir.join(".trestle-boot")).unwrap(),
        "boot-2"
    );
    assert!(check(&cfg, &mut s, &att("a")).is_err());
    assert!(check(&cfg, &mut s, &att("b")).is_err());
    assert_eq!(
        names(&dir),
        [
            ".trestle-boot",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    assert_eq!(
        addrs(&allocate(&cfg, &mut s, &att("a")).unwrap()),
        ["10.0.0.4/24", "fd00::4/64"]
    );
}

#[test]
fn first_use_keeps_existing_reservations() {
    let root = tempfile::tempdir().unwrap();
    let dir = host_local_dir(root.path());
    let cfg = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = open_boot(root.path(), "boot-1");
    assert_eq!(
        fs::read_to_string(dir.join(".trestle-boot")).unwrap(),
        "boot-1"
    );
    assert_eq!(check(&cfg, &mut s, &att("crlf")).unwrap(), [ip("10.0.0.2")]);
}

#[test]
fn boot_id_from_file_and_kernel() {
    let root = tempfile::tempdir().unwrap();
    let id_file = root.path().join("boot_id");
    fs::write(&id_file, "abc\n").unwrap();
    assert_eq!(
        BootIdSource::File(id_file.clone()).current().as_deref(),
        Some("abc")
    );
    assert_eq!(
        BootIdSource::File(root.path().join("missing")).current(),
        None
    );
    assert_eq!(BootIdSource::Disabled.current(), None);
    let kernel = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(
        BootIdSource::Kernel.current().as_deref(),
        Some(kernel.trim())
    );
    // The default `open` records the kernel's boot ID.
    let s = DiskStore::open(root.path(), "net").unwrap();
    let recorded = fs::read_to_string(s.dir().join(".trestle-boot")).unwrap();
    assert_eq!(recorded, kernel.trim());
}

#[test]
fn rejects_bad_network_names() {
    let root = tempfile::tempdir().unwrap();
    for name in ["", "..", "a/b", "/abs"] {
        let err = DiskStore::open(root.path(), name).unwrap_err();
        assert!(err.is_invalid_config(), "{name}: {err}");
    }
}

#[test]
fn io_errors_carry_the_path() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("plain-file");
    fs::write(&file, "").unwrap();
    let err = DiskStore::open(&file, "net").unwrap_err();
    match &err {
        IpamError::Io {
            op: "create", path, ..
        } => assert_eq!(path, &file.join("net")),
        other => panic!("{other:?}"),
    }
    assert!(std::error::Error::source(&err).is_some());
    assert!(
        !err.to_string().contains("Not a directory"),
        "source not repeated: {err}"
    );
}

#[test]
fn concurrent_threads_get_distinct_addresses() {
    const THREADS: usize = 8;
    const EACH: usize = 12;
    let root = tempfile::tempdir().unwrap();
    let cfg = small();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (root, cfg) = (root.path().to_path_buf(), cfg.clone());
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        // Every allocation opens its own store, like a plugin process.
                        let mut s = open_boot(&root, "boot");
                        let a = allocate(&cfg, &mut s, &att(&format!("t{t}-{i}"))).unwrap();
                        addrs(&a)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Vec<String>> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let v4: HashSet<&String> = all.iter().map(|a| &a[0]).collect();
    let v6: HashSet<&String> = all.iter().map(|a| &a[1]).collect();
    assert_eq!(v4.len(), THREADS * EACH);
    assert_eq!(v6.len(), THREADS * EACH);
    let dir = root.path().join("testnet");
    assert_eq!(
        names(&dir).len(),
        2 * THREADS * EACH + 5,
        "no stray reservations"
    );
    let index = dir.join(".trestle-index");
    assert_eq!(
        names(&index).len(),
        2 * THREADS * EACH,
        "one link per address"
    );
}

#[test]
fn lock_excludes_other_stores() {
    use std::sync::mpsc;
    use std::time::Duration;
    use trestle_ipam_core::Store;
    let root = tempfile::tempdir().unwrap();
    let mut holder = open(root.path());
    holder.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    let path = root.path().to_path_buf();
    let worker = std::thread::spawn(move || {
        let mut s = open(&path);
        tx.send(allocate(&small(), &mut s, &att("w")).map(|a| addrs(&a)))
            .unwrap();
    });
    // `open` itself takes the lock too, so the worker cannot get anywhere while it is held.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "lock did not exclude"
    );
    holder.unlock().unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(got, ["10.0.0.2/24", "fd00::2/64"]);
    worker.join().unwrap();
}

#[test]
fn racing_adds_of_one_attachment_yield_one_allocation() {
    let root = tempfile::tempdir().unwrap();
    let cfg = small();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (root, cfg, barrier) = (root.path().to_path_buf(), cfg.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = open(&root);
                barrier.wait();
                allocate(&cfg, &mut s, &att("same"))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, IpamError::Duplicate { .. }), "{r}");
    }
    let mut s = open(root.path());
    assert_eq!(check(&cfg, &mut s, &att("same")).unwrap().len(), 2);
}

/// The cursor is rewritten in place: a shorter address must not keep the old one's tail.
#[test]
fn cursor_rewritten_exactly() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("testnet");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("last_reserved_ip.0"), "10.0.0.254").unwrap();
    let mut s = open(root.path());
    let got = allocate(
        &cfg(json!([[{"subnet": "10.0.0.0/24"}]])),
        &mut s,
        &att("a"),
    )
    .unwrap();
    assert_eq!(addrs(&got), ["10.0.0.2/24"]);
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.0.0.2"
    );
}
