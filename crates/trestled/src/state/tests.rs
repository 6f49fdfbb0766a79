use super::*;
use trestle_ipam_api::convert::PodMeta;
use trestle_ipam_core::{DnsConfig, Range};

fn input(id: &str, subnet: &str) -> AllocateInput {
    let range = Range::new(subnet.parse().unwrap(), None, None, None).unwrap();
    AllocateInput {
        config: IpamConfig {
            network: "n".into(),
            range_sets: vec![RangeSet::new(vec![range]).unwrap()],
            routes: vec![],
            data_dir: Default::default(),
            dns: DnsConfig::default(),
            requested: vec![],
            daemon: None,
        },
        attachment: Attachment::new(id, "eth0"),
        pod: PodMeta::default(),
        netns: String::new(),
        netns_inode: 0,
    }
}

fn at(boot_ns: u64) -> Now {
    Now {
        boot_ns,
        unix_ms: 0,
    }
}

fn state(delay: u64) -> State {
    State {
        reuse_delay_ns: delay,
        ..State::default()
    }
}

#[test]
fn allocate_is_round_robin_and_idempotent() {
    let mut st = state(0);
    let mut ops = Vec::new();
    let a = st
        .allocate(&input("a", "10.0.0.0/29"), at(1), &mut ops)
        .unwrap();
    assert_eq!(a.allocation.ips[0].address.to_string(), "10.0.0.2/29");
    assert!(!a.existing);
    assert!(ops.iter().any(|o| matches!(o, Op::Put(..))));
    let mut again_ops = Vec::new();
    let again = st
        .allocate(&input("a", "10.0.0.0/29"), at(2), &mut again_ops)
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.allocation.ips, a.allocation.ips);
    // Re-acknowledged: persisted with the later time, so a DEL queued before it spares it.
    assert!(
        matches!(&again_ops[..], [Op::Put(_, _, r)] if r.created_ns == 2),
        "{again_ops:?}"
    );
    let att = Attachment::new("a", "eth0");
    assert!(st
        .release("n", &att, Some(2), at(3), &mut again_ops)
        .is_empty());
    let b = st
        .allocate(&input("b", "10.0.0.0/29"), at(3), &mut ops)
        .unwrap();
    assert_eq!(b.allocation.ips[0].address.to_string(), "10.0.0.3/29");
}

#[test]
fn a_released_address_waits_out_the_reuse_delay() {
    // /30: one allocatable address (.2; .1 is the gateway).
    let mut st = state(1_000);
    let mut ops = Vec::new();
    st.allocate(&input("a", "10.0.0.0/30"), at(0), &mut ops)
        .unwrap();
    let freed = st.release("n", &Attachment::new("a", "eth0"), None, at(10), &mut ops);
    assert_eq!(freed.len(), 1);
    let err = st
        .allocate(&input("b", "10.0.0.0/30"), at(500), &mut ops)
        .unwrap_err();
    assert!(
        err.to_string().contains("no IP addresses available"),
        "{err}"
    );
    assert_eq!(st.pools["n"].free(), 0);
    let b = st
        .allocate(&input("b", "10.0.0.0/30"), at(1_010), &mut ops)
        .unwrap();
    assert_eq!(b.allocation.ips[0].address.to_string(), "10.0.0.2/30");
}

#[test]
fn a_queued_release_spares_a_later_allocation() {
    let mut st = state(0);
    let mut ops = Vec::new();
    st.allocate(&input("a", "10.0.0.0/29"), at(100), &mut ops)
        .unwrap();
    let att = Attachment::new("a", "eth0");
    assert!(st
        .release("n", &att, Some(50), at(200), &mut ops)
        .is_empty());
    assert_eq!(st.release("n", &att, Some(150), at(200), &mut ops).len(), 1);
}

#[test]
fn gc_keeps_valid_and_legacy_owners() {
    let mut st = state(0);
    let mut ops = Vec::new();
    for id in ["a", "b", "c"] {
        st.allocate(&input(id, "10.0.0.0/28"), at(1), &mut ops)
            .unwrap();
    }
    let legacy = Record::imported(Attachment::new("d", ""), 0);
    st.pools
        .get_mut("n")
        .unwrap()
        .insert("10.0.0.10".parse().unwrap(), legacy);
    let valid = [Attachment::new("a", "eth0"), Attachment::new("d", "net1")];
    let freed = st.gc("n", &valid, at(2), &mut ops);
    let ids: Vec<&str> = freed.iter().map(|(_, r)| r.container_id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert_eq!(st.pools["n"].by_ip.len(), 2);
}

#[test]
fn release_if_unchanged_spares_a_new_owner() {
    let mut st = state(0);
    let mut ops = Vec::new();
    st.allocate(&input("a", "10.0.0.0/30"), at(1), &mut ops)
        .unwrap();
    let (ip, old) = st.pools["n"]
        .by_ip
        .iter()
        .next()
        .map(|(i, r)| (*i, r.clone()))
        .unwrap();
    st.release("n", &Attachment::new("a", "eth0"), None, at(2), &mut ops);
    st.allocate(&input("b", "10.0.0.0/30"), at(3), &mut ops)
        .unwrap();
    assert!(!st.release_if_unchanged("n", ip, &old, at(4), &mut ops));
    assert_eq!(st.pools["n"].by_ip[&ip].container_id, "b");
}

#[test]
fn expired_delays_end() {
    let mut st = state(10);
    let mut ops = Vec::new();
    st.allocate(&input("a", "10.0.0.0/29"), at(0), &mut ops)
        .unwrap();
    st.release("n", &Attachment::new("a", "eth0"), None, at(1), &mut ops);
    assert_eq!(st.expire_cooling(at(5), &mut ops), 0);
    assert_eq!(st.expire_cooling(at(11), &mut ops), 1);
    assert!(st.pools["n"].cooling.is_empty());
}

#[test]
fn set_sizes_leave_out_the_gateway() {
    let r = |s: &str| Range::new(s.parse().unwrap(), None, None, None).unwrap();
    assert_eq!(
        set_size(&RangeSet::new(vec![r("10.0.0.0/24")]).unwrap()),
        253
    );
    assert_eq!(
        set_size(&RangeSet::new(vec![r("10.0.0.0/30"), r("10.0.1.0/30")]).unwrap()),
        2
    );
}
