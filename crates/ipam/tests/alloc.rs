//! Allocator behaviour, each test run against both `MemStore` and `DiskStore`.

mod common;

use common::{addrs, cfg, ip, parse};
use serde_json::json;
use tempfile::TempDir;
use trestle_ipam_core::{
    allocate, check, gc, release, Attachment, BootIdSource, DiskStore, ErrorKind, IpamConfig,
    IpamError, MemStore, Store,
};

/// A store plus whatever keeps it alive (the temp dir).
trait Harness: Store + Sized {
    fn make() -> (Self, Option<TempDir>);
}

impl Harness for MemStore {
    fn make() -> (Self, Option<TempDir>) {
        (MemStore::new(), None)
    }
}

impl Harness for DiskStore {
    fn make() -> (Self, Option<TempDir>) {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_with(dir.path(), "testnet", &BootIdSource::Disabled).unwrap();
        (store, Some(dir))
    }
}

fn att(id: &str) -> Attachment {
    Attachment::new(id, "eth0")
}

fn small() -> IpamConfig {
    cfg(json!([[{"subnet": "10.0.0.0/29"}]]))
}

/// All reserved addresses, under the lock.
fn reserved<S: Store>(s: &mut S) -> Vec<String> {
    s.lock().unwrap();
    let list = s.list().unwrap();
    s.unlock().unwrap();
    list.iter().map(|r| r.ip.to_string()).collect()
}

fn round_robin_and_wraparound<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = small();
    let mut got = Vec::new();
    for i in 0..5 {
        let a = allocate(&cfg, &mut s, &att(&format!("c{i}"))).unwrap();
        assert_eq!(a.ips[0].gateway, Some(ip("10.0.0.1")));
        got.extend(addrs(&a));
    }
    assert_eq!(
        got,
        [
            "10.0.0.2/29",
            "10.0.0.3/29",
            "10.0.0.4/29",
            "10.0.0.5/29",
            "10.0.0.6/29"
        ]
    );
    // Freeing .3 and .5: round-robin continues after .6, wraps, skips the gateway, takes .3.
    release(&cfg, &mut s, &att("c1")).unwrap();
    release(&cfg, &mut s, &att("c3")).unwrap();
    assert_eq!(
        addrs(&allocate(&cfg, &mut s, &att("x")).unwrap()),
        ["10.0.0.3/29"]
    );
    assert_eq!(
        addrs(&allocate(&cfg, &mut s, &att("y")).unwrap()),
        ["10.0.0.5/29"]
    );
}

fn released_address_not_reused_immediately<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let first = allocate(&cfg, &mut s, &att("a")).unwrap();
    release(&cfg, &mut s, &att("a")).unwrap();
    let second = allocate(&cfg, &mut s, &att("a")).unwrap();
    assert_eq!(addrs(&first), ["10.0.0.2/24"]);
    assert_eq!(
        addrs(&second),
        ["10.0.0.3/24"],
        "crash-looping containers rotate"
    );
}

fn exhaustion_names_range_and_network<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = small();
    for i in 0..5 {
        allocate(&cfg, &mut s, &att(&format!("c{i}"))).unwrap();
    }
    let err = allocate(&cfg, &mut s, &att("late")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to allocate for range 0: no IP addresses available in range set: \
         10.0.0.1-10.0.0.6 (network testnet)"
    );
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(reserved(&mut s).len(), 5);
}

fn multi_range_set_spans_ranges<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = cfg(json!([[
        {"subnet": "10.0.0.0/30"},
        {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.11"}
    ]]));
    let got: Vec<String> = (0..3)
        .flat_map(|i| addrs(&allocate(&cfg, &mut s, &att(&format!("c{i}"))).unwrap()))
        .collect();
    assert_eq!(got, ["10.0.0.2/30", "10.0.1.10/24", "10.0.1.11/24"]);
    let err = allocate(&cfg, &mut s, &att("x")).unwrap_err();
    assert!(
        err.to_string()
            .contains("range set: 10.0.0.1-10.0.0.2,10.0.1.10-10.0.1.11"),
        "{err}"
    );
}

fn dual_stack_and_v6<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = cfg(json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "2001:db8:1::/64"}]]));
    let a = allocate(&cfg, &mut s, &att("a")).unwrap();
    assert_eq!(addrs(&a), ["10.1.0.2/24", "2001:db8:1::2/64"]);
    assert_eq!(a.ips[1].gateway, Some(ip("2001:db8:1::1")));
    let b = allocate(&cfg, &mut s, &att("b")).unwrap();
    assert_eq!(addrs(&b), ["10.1.0.3/24", "2001:db8:1::3/64"]);
    let mut freed = release(&cfg, &mut s, &att("a")).unwrap();
    freed.sort();
    assert_eq!(freed, [ip("10.1.0.2"), ip("2001:db8:1::2")]);
}

fn v6_range_end_is_last_address<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = cfg(json!([[{"subnet": "fd00::/64", "rangeStart": "fd00::ffff:ffff:ffff:fffe"}]]));
    let a = allocate(&cfg, &mut s, &att("a")).unwrap();
    let b = allocate(&cfg, &mut s, &att("b")).unwrap();
    assert_eq!(addrs(&a), ["fd00::ffff:ffff:ffff:fffe/64"]);
    assert_eq!(addrs(&b), ["fd00::ffff:ffff:ffff:ffff/64"]);
    assert!(matches!(
        allocate(&cfg, &mut s, &att("c")),
        Err(IpamError::Exhausted { .. })
    ));
}

fn duplicate_allocation_rejected<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = small();
    allocate(&cfg, &mut s, &att("a")).unwrap();
    let err = allocate(&cfg, &mut s, &att("a")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "10.0.0.2 has been allocated to a, duplicate allocation is not allowed"
    );
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // Another interface of the same container is a different attachment.
    allocate(&cfg, &mut s, &Attachment::new("a", "net1")).unwrap();
    assert_eq!(reserved(&mut s).len(), 2);
}

fn failure_rolls_back_earlier_sets<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = cfg(json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]]));
    allocate(&cfg, &mut s, &att("a")).unwrap();
    let before = reserved(&mut s);
    let err = allocate(&cfg, &mut s, &att("b")).unwrap_err();
    assert!(
        matches!(err, IpamError::Exhausted { set_index: 1, .. }),
        "{err}"
    );
    assert_eq!(reserved(&mut s), before, "set 0's address was released");
}

fn requested_ips<S: Harness>() {
    let (mut s, _d) = S::make();
    let stdin = json!({"cniVersion": "1.0.0", "name": "testnet",
        "runtimeConfig": {"ips": ["10.1.0.50/24", "fd00::50"]},
        "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}], [{"subnet": "10.2.0.0/24"}]]}});
    let cfg = parse(&stdin).unwrap();
    let a = allocate(&cfg, &mut s, &att("a")).unwrap();
    assert_eq!(addrs(&a), ["10.1.0.50/24", "fd00::50/64", "10.2.0.2/24"]);
    // Round-robin continues from a requested address.
    let plain = common::cfg(json!([[{"subnet": "10.1.0.0/24"}]]));
    assert_eq!(
        addrs(&allocate(&plain, &mut s, &att("b")).unwrap()),
        ["10.1.0.51/24"]
    );
    // Already taken (even by the same attachment): unavailable, nothing else reserved.
    let before = reserved(&mut s);
    let err = allocate(&cfg, &mut s, &att("c")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "requested IP address 10.1.0.50 is not available in range set 10.1.0.1-10.1.0.254"
    );
    assert_eq!(reserved(&mut s), before);
}

fn requested_ip_errors<S: Harness>() {
    let (mut s, _d) = S::make();
    let with = |ips: serde_json::Value| {
        parse(&json!({"name": "testnet", "args": {"cni": {"ips": ips}},
            "ipam": {"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.100"}]]}}))
        .unwrap()
    };
    let cases = [
        (
            json!(["10.1.0.1"]),
            "requested ip 10.1.0.1 is subnet's gateway",
        ),
        (
            json!(["10.9.0.1"]),
            "requested IP address 10.9.0.1 is outside every range set",
        ),
        (
            json!(["10.1.0.200"]),
            "requested IP address 10.1.0.200 is outside every range set",
        ),
        (
            json!(["10.1.0.7", "10.1.0.8"]),
            "failed to allocate all requested IPs: 10.1.0.8",
        ),
    ];
    for (ips, msg) in cases {
        let err = allocate(&with(ips), &mut s, &att("a")).unwrap_err();
        assert_eq!(err.to_string(), msg);
        assert_eq!(err.kind(), ErrorKind::BadRequest);
    }
    assert!(reserved(&mut s).is_empty());
}

fn release_is_idempotent_and_precise<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = small();
    allocate(&cfg, &mut s, &att("a")).unwrap();
    allocate(&cfg, &mut s, &Attachment::new("a", "net1")).unwrap();
    allocate(&cfg, &mut s, &att("b")).unwrap();
    assert_eq!(release(&cfg, &mut s, &att("a")).unwrap(), [ip("10.0.0.2")]);
    assert!(release(&cfg, &mut s, &att("a")).unwrap().is_empty());
    assert!(release(&cfg, &mut s, &att("nobody")).unwrap().is_empty());
    assert_eq!(reserved(&mut s), ["10.0.0.3", "10.0.0.4"]);
}

fn check_finds_or_fails<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = small();
    allocate(&cfg, &mut s, &att("a")).unwrap();
    assert_eq!(check(&cfg, &mut s, &att("a")).unwrap(), [ip("10.0.0.2")]);
    let err = check(&cfg, &mut s, &att("b")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to find address added by container b"
    );
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(check(&cfg, &mut s, &Attachment::new("a", "net1")).is_err());
}

fn gc_frees_all_but_valid<S: Harness>() {
    let (mut s, _d) = S::make();
    let cfg = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]));
    for id in ["a", "b", "c"] {
        allocate(&cfg, &mut s, &att(id)).unwrap();
    }
    let mut freed = gc(&cfg, &mut s, &[att("b"), Attachment::new("c", "other")]).unwrap();
    freed.sort();
    let want = [
        (att("a"), ip("10.0.0.2")),
        (att("a"), ip("fd00::2")),
        (att("c"), ip("10.0.0.4")),
        (att("c"), ip("fd00::4")),
    ];
    assert_eq!(freed, want);
    assert_eq!(reserved(&mut s), ["10.0.0.3", "fd00::3"]);
    assert!(gc(&cfg, &mut s, &[att("b")]).unwrap().is_empty());
    assert_eq!(gc(&cfg, &mut s, &[]).unwrap().len(), 2);
}

/// Each allocator entry point takes the lock exactly once (MemStore panics on misuse).
#[test]
fn one_lock_per_operation() {
    let mut s = MemStore::new();
    let cfg = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]));
    allocate(&cfg, &mut s, &att("a")).unwrap();
    check(&cfg, &mut s, &att("a")).unwrap();
    release(&cfg, &mut s, &att("a")).unwrap();
    gc(&cfg, &mut s, &[]).unwrap();
    assert_eq!(s.lock_count, 4);
}

#[test]
fn legacy_reservations_on_memstore() {
    let mut s = MemStore::new();
    let cfg = small();
    s.insert(ip("10.0.0.2"), Attachment::new("old", ""));
    // Duplicate check, CHECK and DEL all see the ID-only reservation.
    assert!(matches!(
        allocate(&cfg, &mut s, &att("old")),
        Err(IpamError::Duplicate { .. })
    ));
    assert_eq!(check(&cfg, &mut s, &att("old")).unwrap(), [ip("10.0.0.2")]);
    assert!(gc(&cfg, &mut s, &[Attachment::new("old", "eth9")])
        .unwrap()
        .is_empty());
    assert_eq!(
        release(&cfg, &mut s, &att("old")).unwrap(),
        [ip("10.0.0.2")]
    );
    assert!(s.is_empty());
}

#[test]
fn last_reserved_outside_set_restarts_at_range_start() {
    let mut s = MemStore::new();
    s.set_last_reserved(0, ip("192.168.1.1"));
    let a = allocate(&small(), &mut s, &att("a")).unwrap();
    assert_eq!(addrs(&a), ["10.0.0.2/29"]);
    assert_eq!(s.owner(ip("10.0.0.2")), Some(&att("a")));
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod mem { $( #[test] fn $name() { super::$name::<trestle_ipam_core::MemStore>(); } )* }
        mod disk { $( #[test] fn $name() { super::$name::<trestle_ipam_core::DiskStore>(); } )* }
    };
}

both_stores!(
    round_robin_and_wraparound,
    released_address_not_reused_immediately,
    exhaustion_names_range_and_network,
    multi_range_set_spans_ranges,
    dual_stack_and_v6,
    v6_range_end_is_last_address,
    duplicate_allocation_rejected,
    failure_rolls_back_earlier_sets,
    requested_ips,
    requested_ip_errors,
    release_is_idempotent_and_precise,
    check_finds_or_fails,
    gc_frees_all_but_valid,
);
