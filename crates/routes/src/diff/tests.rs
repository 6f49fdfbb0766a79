use super::*;
use crate::plan::Tunnel;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const MAC: [u8; 6] = [2, 1, 2, 3, 4, 5];

fn plan() -> Plan {
    let mut p = Plan::default();
    p.routes
        .insert(net("10.244.0.64/26"), Via::Direct(ip("192.168.1.11")));
    p.routes
        .insert(net("10.244.0.128/26"), Via::Vxlan(ip("192.168.2.10")));
    p.routes.insert(net("10.244.0.70/32"), Via::Local);
    p.tunnels.push(Tunnel {
        gateway: ip("192.168.2.10"),
        mac: MAC,
        remote: ip("192.168.2.10"),
    });
    p.vxlan_mtu = Some(1450);
    p.pools.push(net("10.244.0.0/16"));
    p
}

fn links() -> Links {
    Links {
        underlay_v4: Some(2),
        underlay_v6: None,
        vxlan: Some(9),
        pool_links: [(net("10.244.0.0/16"), 5)].into(),
    }
}

/// The kernel after applying `ops` to nothing.
fn apply(ops: &[Op]) -> Held {
    let mut h = Held::default();
    for op in ops {
        match op {
            Op::SetRoute(r) => h.routes.push(*r),
            Op::SetNeighbour(ip, mac) => h.neighbours.push(permanent_neighbour(9, *ip, *mac)),
            Op::SetFdb(mac, dst) => h.fdb.push(permanent_fdb(9, *mac, *dst)),
            _ => panic!("a removal from nothing: {op:?}"),
        }
    }
    h
}

#[test]
fn a_plan_becomes_entries_and_a_second_pass_does_nothing() {
    let w = Wanted::new(&plan(), &links());
    let r = &w.routes[&(net("10.244.0.128/26"), ROUTE_METRIC)];
    assert_eq!((r.oif, r.onlink, r.mtu), (Some(9), true, Some(1450)));
    assert_eq!(r.protocol, ROUTE_PROTO);
    let d = &w.routes[&(net("10.244.0.64/26"), ROUTE_METRIC)];
    assert_eq!(
        (d.oif, d.gateway, d.onlink),
        (Some(2), Some(ip("192.168.1.11")), false)
    );
    let l = &w.routes[&(net("10.244.0.70/32"), ROUTE_METRIC)];
    assert_eq!((l.oif, l.scope, l.gateway), (Some(5), SCOPE_LINK, None));
    let u = &w.routes[&(net("10.244.0.0/16"), UNREACHABLE_METRIC)];
    assert_eq!(u.kind, RTN_UNREACHABLE);
    let ops = diff(&w, &Held::default());
    assert_eq!(ops.len(), 6);
    assert_eq!(ops[0], Op::SetFdb(MAC, ip("192.168.2.10")));
    assert_eq!(ops[1], Op::SetNeighbour(ip("192.168.2.10"), MAC));
    assert!(diff(&w, &apply(&ops)).is_empty());
}

#[test]
fn missing_interfaces_leave_their_routes_out() {
    let mut l = links();
    l.vxlan = None;
    l.pool_links.clear();
    let w = Wanted::new(&plan(), &l);
    assert_eq!(w.routes.len(), 2, "{:?}", w.routes.keys());
    assert!(w.neighbours.is_empty() && w.fdb.is_empty());
}

#[test]
fn only_stale_entries_of_trestle_go_and_changed_ones_are_replaced() {
    let w = Wanted::new(&plan(), &links());
    let mut held = apply(&diff(&w, &Held::default()));
    // A peer gone, one moved to another address, one route changed by hand.
    let mut stale = base(net("10.244.1.0/26"), ROUTE_METRIC);
    stale.gateway = Some(ip("192.168.1.99"));
    held.routes.push(stale);
    held.fdb.push(FdbEntry {
        dst: Some(ip("192.168.2.99")),
        mac: [2, 9, 9, 9, 9, 9],
        ..held.fdb[0]
    });
    held.fdb[0].dst = Some(ip("192.168.2.11"));
    let vx = held.routes.iter_mut().find(|r| r.onlink).unwrap();
    vx.mtu = Some(1500);
    // A neighbour someone else's, not permanent: never touched.
    held.neighbours.push(Neighbour {
        ip: ip("192.168.2.77"),
        state: 0x02,
        ..held.neighbours[0]
    });
    let ops = diff(&w, &held);
    assert!(ops.contains(&Op::SetFdb(MAC, ip("192.168.2.10"))));
    assert!(ops.contains(&Op::DelRoute(stale)));
    assert!(ops.contains(&Op::DelFdb([2, 9, 9, 9, 9, 9], ip("192.168.2.99"))));
    assert!(ops.contains(&Op::DelFdb(MAC, ip("192.168.2.11"))));
    assert!(ops
        .iter()
        .any(|o| matches!(o, Op::SetRoute(r) if r.mtu == Some(1450))));
    assert!(!ops.iter().any(|o| matches!(o, Op::DelNeighbour(_))));
    // Additions come before removals.
    let first_del = ops
        .iter()
        .position(|o| matches!(o, Op::DelRoute(_) | Op::DelFdb(..)));
    let last_set = ops
        .iter()
        .rposition(|o| matches!(o, Op::SetRoute(_) | Op::SetFdb(..)));
    assert!(last_set < first_del);
}

#[test]
fn an_ipv6_unreachable_route_on_lo_is_the_same() {
    let mut p = Plan::default();
    p.pools.push(net("fd00:10::/64"));
    let w = Wanted::new(&p, &links());
    let mut held = apply(&diff(&w, &Held::default()));
    held.routes[0].oif = Some(1);
    assert!(diff(&w, &held).is_empty());
}

#[test]
fn an_incremental_pass_from_what_was_applied_reaches_what_a_full_one_would() {
    let before = Wanted::new(&plan(), &links());
    let kernel = apply(&diff(&before, &Held::default()));
    // The cluster moves: a block goes, one moves to another peer, a peer's tunnel changes its MAC.
    let mut p = plan();
    p.routes.remove(&net("10.244.0.64/26"));
    p.routes
        .insert(net("10.244.1.0/26"), Via::Direct(ip("192.168.1.12")));
    let mac2 = [2, 9, 9, 9, 9, 9];
    p.tunnels[0].mac = mac2;
    let after = Wanted::new(&p, &links());
    let incremental = diff(&after, &Held::assumed(&before, Some(9)));
    assert_eq!(incremental, diff(&after, &kernel));
    assert!(incremental.contains(&Op::DelRoute(
        before.routes[&(net("10.244.0.64/26"), ROUTE_METRIC)]
    )));
    assert!(incremental.contains(&Op::SetFdb(mac2, ip("192.168.2.10"))));
    assert!(incremental.contains(&Op::DelFdb(MAC, ip("192.168.2.10"))));
    // Nothing changed: nothing to do, without reading the kernel.
    assert!(diff(&after, &Held::assumed(&after, Some(9))).is_empty());
}
