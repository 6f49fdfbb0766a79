use super::*;
use crate::cluster::tests::{block, pool};
use crate::cluster::Mirror;
use crate::host::{vtep_mac, Underlay};

fn host(v4: Option<&str>, v6: Option<&str>, node: &str, mtu: u32) -> HostRecord {
    let u = |a: &str| Underlay {
        address: a.parse().unwrap(),
        interface: "eth0".into(),
        mtu,
    };
    HostRecord {
        v4: v4.map(u),
        v6: v6.map(u),
        vtep_mac: trestle_netlink::format_mac(vtep_mac(node)),
        vni: 4096,
        port: 4789,
        version: "t".into(),
    }
}

/// Nodes a and b on 192.168.1.0/24, c on 192.168.2.0/24; a block each, c borrows in b's.
fn cluster() -> Cluster {
    let p = pool();
    let mut kvs = vec![
        (
            "pools/net/10.244.0.0_16".to_string(),
            serde_json::to_vec(&p).unwrap(),
        ),
        (
            "blocks/net/10.244.0.0_16/10.244.0.0".into(),
            block("a", &[]),
        ),
        (
            "blocks/net/10.244.0.0_16/10.244.0.64".into(),
            block("b", &[("c", 5), ("a", 6)]),
        ),
        (
            "blocks/net/10.244.0.0_16/10.244.0.128".into(),
            block("c", &[]),
        ),
    ];
    for (n, h) in [
        ("a", host(Some("192.168.1.10/24"), None, "a", 1500)),
        ("b", host(Some("192.168.1.11/24"), None, "b", 1500)),
        ("c", host(Some("192.168.2.10/24"), None, "c", 1400)),
    ] {
        kvs.push((format!("hosts/{n}"), h.encode()));
    }
    Mirror::new(kvs, 10).cluster()
}

fn plan_for(name: &str, mode: Mode) -> Plan {
    let c = cluster();
    let h = c.hosts[name].clone();
    Plan::new(
        &Me {
            name,
            host: &h,
            mode,
        },
        &c,
    )
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn auto_is_direct_on_the_segment_and_vxlan_across() {
    let p = plan_for("a", Mode::Auto);
    assert_eq!(
        p.routes[&net("10.244.0.64/26")],
        Via::Direct(ip("192.168.1.11"))
    );
    assert_eq!(
        p.routes[&net("10.244.0.128/26")],
        Via::Vxlan(ip("192.168.2.10"))
    );
    // c's address in b's block goes to c, a's own to its bridge.
    assert_eq!(
        p.routes[&net("10.244.0.69/32")],
        Via::Vxlan(ip("192.168.2.10"))
    );
    assert_eq!(p.routes[&net("10.244.0.70/32")], Via::Local);
    assert!(
        !p.routes.contains_key(&net("10.244.0.0/26")),
        "its own block"
    );
    assert_eq!(
        p.tunnels,
        vec![Tunnel {
            gateway: ip("192.168.2.10"),
            mac: vtep_mac("c"),
            remote: ip("192.168.2.10"),
        }]
    );
    // c's underlay is the smallest.
    assert_eq!(p.vxlan_mtu, Some(1350));
    assert_eq!(p.pod_mtu, Some(1350));
    assert_eq!(p.pools, vec![net("10.244.0.0/16")]);
    assert!(p.unreachable.is_empty());
    assert_eq!(p.peers.get("b"), Some(&false));
    assert_eq!(p.peers.get("c"), Some(&true));
}

#[test]
fn vxlan_mode_tunnels_everything_and_direct_mode_nothing() {
    let p = plan_for("a", Mode::Vxlan);
    assert_eq!(
        p.routes[&net("10.244.0.64/26")],
        Via::Vxlan(ip("192.168.1.11"))
    );
    assert_eq!(p.tunnels.len(), 2);
    let p = plan_for("a", Mode::Direct);
    assert_eq!(
        p.routes[&net("10.244.0.128/26")],
        Via::Direct(ip("192.168.2.10"))
    );
    assert!(p.tunnels.is_empty());
}

#[test]
fn the_owner_of_a_block_routes_borrowed_addresses_out() {
    let p = plan_for("b", Mode::Auto);
    assert!(!p.routes.contains_key(&net("10.244.0.64/26")));
    assert_eq!(
        p.routes[&net("10.244.0.69/32")],
        Via::Vxlan(ip("192.168.2.10"))
    );
    assert_eq!(
        p.routes[&net("10.244.0.70/32")],
        Via::Direct(ip("192.168.1.10"))
    );
}

#[test]
fn a_peer_without_a_host_record_is_reported_not_routed() {
    let mut c = cluster();
    c.hosts.remove("c");
    let h = c.hosts["a"].clone();
    let p = Plan::new(
        &Me {
            name: "a",
            host: &h,
            mode: Mode::Auto,
        },
        &c,
    );
    assert!(!p.routes.contains_key(&net("10.244.0.128/26")));
    assert_eq!(p.unreachable.len(), 1);
    assert_eq!(p.unreachable[0].node, "c");
}

#[test]
fn ipv6_pods_use_a_link_local_next_hop_over_an_ipv4_underlay() {
    let me = host(Some("192.168.1.10/24"), None, "a", 1500);
    let peer = host(Some("192.168.2.10/24"), None, "c", 1500);
    let dst = net("fd00:10::40/122");
    let (v, t) = via(
        &Me {
            name: "a",
            host: &me,
            mode: Mode::Auto,
        },
        &peer,
        dst,
    )
    .unwrap();
    let gw = vtep_link_local(vtep_mac("c"));
    assert_eq!(v, Via::Vxlan(gw));
    assert_eq!(t.unwrap().remote, ip("192.168.2.10"));
    // Directly only with IPv6 underlays on one subnet.
    let me6 = host(Some("192.168.1.10/24"), Some("fd00:1::10/64"), "a", 1500);
    let peer6 = host(Some("192.168.2.10/24"), Some("fd00:1::11/64"), "c", 1500);
    let m = Me {
        name: "a",
        host: &me6,
        mode: Mode::Auto,
    };
    assert_eq!(
        via(&m, &peer6, dst).unwrap().0,
        Via::Direct(ip("fd00:1::11"))
    );
}

#[test]
fn mixed_underlay_families_cannot_tunnel() {
    let me = host(Some("192.168.1.10/24"), None, "a", 1500);
    let peer = host(None, Some("fd00:1::11/64"), "c", 1500);
    let m = Me {
        name: "a",
        host: &me,
        mode: Mode::Auto,
    };
    assert!(via(&m, &peer, net("10.244.0.0/26")).is_err());
    let d = Me {
        mode: Mode::Direct,
        ..m
    };
    assert!(via(&d, &peer, net("10.244.0.0/26")).is_err());
}

#[test]
fn modes_parse() {
    assert_eq!("auto".parse::<Mode>(), Ok(Mode::Auto));
    assert_eq!("vxlan".parse::<Mode>(), Ok(Mode::Vxlan));
    assert!("bgp".parse::<Mode>().is_err());
}
