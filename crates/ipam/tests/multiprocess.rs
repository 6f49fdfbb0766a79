//! Several processes, each with its own DiskStore, allocating from one directory at once.
//!
//! This file has its own `main` (harness = false): run without arguments it is the parent,
//! and it re-executes itself with `TRESTLE_IPAM_MP_DIR` set to act as a worker.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;
use trestle_ipam_core::{
    allocate, Attachment, BootIdSource, ConfigInput, DiskStore, IpamConfig, IpamError,
};

const WORKERS: usize = 6;
const EACH: usize = 15;
const DIR_VAR: &str = "TRESTLE_IPAM_MP_DIR";
const ID_VAR: &str = "TRESTLE_IPAM_MP_WORKER";

fn config() -> IpamConfig {
    let stdin = json!({"cniVersion": "1.1.0", "name": "mp",
        "ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/64"}]]}});
    IpamConfig::parse(ConfigInput {
        stdin: &stdin,
        cni_args_ips: vec![],
        multiple_sets_per_family: true,
    })
    .unwrap()
}

fn allocate_once(root: &Path, att: &Attachment) -> Result<Vec<String>, IpamError> {
    let mut store = DiskStore::open_with(root, "mp", &BootIdSource::Fixed("b".into()))?;
    let a = allocate(&config(), &mut store, att)?;
    Ok(a.ips.iter().map(|i| i.address.addr().to_string()).collect())
}

/// Allocates for its own attachments and races the other workers for `shared-<i>` (a
/// duplicate ADD that only the lock can refuse). Prints `ip <addr>` per address it got.
fn worker(root: &Path, id: &str) {
    for i in 0..EACH {
        for ip in allocate_once(root, &Attachment::new(format!("w{id}-{i}"), "eth0")).unwrap() {
            println!("ip {ip}");
        }
        match allocate_once(root, &Attachment::new(format!("shared-{i}"), "eth0")) {
            Ok(got) => got.iter().for_each(|ip| println!("ip {ip}")),
            Err(IpamError::Duplicate { .. }) => {}
            Err(e) => panic!("shared-{i}: {e}"),
        }
    }
}

fn parent() {
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(&exe)
                .env(DIR_VAR, root.path())
                .env(ID_VAR, w.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ips = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "worker failed: {:?}", out.status);
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            match line.split_once(' ') {
                Some(("ip", ip)) => ips.push(ip.to_string()),
                _ => panic!("unexpected worker output {line:?}"),
            }
        }
    }
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "an address was handed out twice");
    // Two addresses per own attachment, plus exactly one winner per shared attachment.
    assert_eq!(
        ips.len(),
        (WORKERS + 1) * EACH * 2,
        "a shared attachment got two allocations"
    );
    let dir = root.path().join("mp");
    let files = std::fs::read_dir(&dir).unwrap().count();
    // Every reservation, plus two cursors, the lock, the boot file and the index.
    assert_eq!(files, ips.len() + 5);
    // One index link per reservation.
    let links = std::fs::read_dir(dir.join(".trestle-index"))
        .unwrap()
        .count();
    assert_eq!(links, ips.len(), "every reservation is linked");
    println!(
        "multiprocess: {} processes allocated {} distinct addresses: ok",
        WORKERS,
        ips.len()
    );
}

fn main() {
    // The harness passes test-filter arguments (e.g. `--list`); nothing to list here.
    if std::env::args().any(|a| a == "--list") {
        println!("multiprocess: test");
        return;
    }
    match (std::env::var_os(DIR_VAR), std::env::var(ID_VAR)) {
        (Some(dir), Ok(id)) => worker(Path::new(&dir), &id),
        _ => parent(),
    }
}
