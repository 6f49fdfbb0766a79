//! Pods on every node reach each other: directly on a segment, over VXLAN across, IPv4, IPv6 and dual stack.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trestle_netns::NamedNetNs;
use trestlectl::runtime::Invocation;

use crate::common::{bin_dir, tcp_peer};
use crate::world::*;

#[test]
#[ignore = "privileged: needs root, etcd"]
fn pods_on_three_nodes_reach_each_other_directly_on_a_segment_and_over_vxlan_across() {
    need_root();
    let world = World::new();
    let nodes = [
        world.node("n1", 1, "192.168.1.11", &[]),
        world.node("n2", 1, "192.168.1.12", &[]),
        world.node("n3", 2, "192.168.2.13", &[]),
    ];
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let ips: Vec<String> = nodes
        .iter()
        .zip(&pods)
        .map(|(n, p)| n.pod(p, &format!("pod-{}", n.name)))
        .collect();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in ips.iter().enumerate() {
            if i != j {
                assert!(
                    reaches(from.ns(), to),
                    "pod on {} cannot reach {to} on {}\n{}\n{}\n{}",
                    nodes[i].name,
                    nodes[j].name,
                    sh(
                        &nodes[i].ns,
                        "ip route; ip neigh; bridge fdb show dev trestle.vxlan 2>&1 || true"
                    ),
                    nodes[i].log(),
                    nodes[j].log()
                );
            }
        }
        // A pod reaches the other nodes' host addresses too.
        for n in &nodes {
            assert!(
                reaches(from.ns(), &n.ip),
                "pod {i} cannot reach node {}",
                n.name
            );
        }
    }
    // TCP across, both ways, without NAT: the server sees the client pod's own address.
    assert_eq!(
        tcp_peer(pods[0].ns(), pods[2].ns(), &ips[2]),
        Some(ips[0].clone())
    );
    assert_eq!(
        tcp_peer(pods[2].ns(), pods[1].ns(), &ips[1]),
        Some(ips[2].clone())
    );

    // n1 reaches n2 directly and n3 over VXLAN; routes carry trestle's protocol.
    let routes = sh(&nodes[0].ns, "ip route show proto 116");
    assert!(routes.contains("via 192.168.1.12 dev eth0"), "{routes}");
    assert!(
        routes.contains("via 192.168.2.13 dev trestle.vxlan") && routes.contains("onlink"),
        "{routes}"
    );
    assert!(routes.contains("unreachable 10.244.0.0/16"), "{routes}");
    let fdb = sh(&nodes[0].ns, "bridge fdb show dev trestle.vxlan");
    assert!(fdb.contains("dst 192.168.2.13"), "{fdb}");
    assert!(
        !fdb.contains("192.168.1.12"),
        "n2 is reached directly: {fdb}"
    );
    // An address of the pool that no pod holds never leaves by the default route.
    let lookup = sh(&nodes[0].ns, "ip route get 10.244.250.1 2>&1 || true");
    assert!(!lookup.contains(&format!("via {}", gateway(1))), "{lookup}");
    // Converged: STATUS says so, and the metrics count the peers by how they are reached.
    for n in &nodes {
        assert!(eventually(|| n.status().is_none()), "{:?}", n.status());
    }
    // The operator's view: how n1 reaches each node, and n1's kernel is at the revision etcd is at.
    let list = world.trestlectl(&[
        "node",
        "list",
        "--from",
        "n1",
        "--etcd",
        "192.168.1.1:2379",
        "--etcd-prefix",
        PREFIX,
    ]);
    let row = |n: &str| {
        list.lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("n1 ").contains("self") && row("n1 ").contains("alive"),
        "{list}"
    );
    assert!(
        row("n2 ").contains("direct") && row("n2 ").contains("192.168.1.12/24 (eth0)"),
        "{list}"
    );
    assert!(
        row("n3 ").contains("vxlan") && row("n3 ").contains("1450"),
        "{list}"
    );
    let json: Value = serde_json::from_str(&world.trestlectl(&[
        "node",
        "list",
        "--from",
        "n3",
        "--json",
        "--etcd",
        "192.168.1.1:2379",
        "--etcd-prefix",
        PREFIX,
    ]))
    .unwrap();
    assert_eq!(json[0]["path"], "vxlan", "{json}");
    assert_eq!(json[0]["blocks"].as_array().unwrap().len(), 1, "{json}");
    // VXLAN is untracked between nodes and accepted only from them: a pod's datagram to the VXLAN port is dropped.
    let set = sh(&nodes[0].ns, "nft list set inet trestle-vxlan nodes4");
    for n in &nodes {
        assert!(set.contains(&n.ip), "{set}");
    }
    pods[0]
        .ns()
        .run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"not vxlan", "192.168.1.11:4789").unwrap();
        })
        .unwrap();
    let drops = "trestle_ipam_routes{what=\"vxlan_drops\"}";
    assert!(
        eventually(|| nodes[0].metric(drops) == Some(1.0)),
        "{:?}",
        nodes[0].metric(drops)
    );
    let peers = |via: &str| format!("trestle_ipam_routes{{what=\"peers\",via=\"{via}\"}}");
    assert!(eventually(|| nodes[0].metric(&peers("vxlan")) == Some(1.0)));
    assert_eq!(nodes[0].metric(&peers("direct")), Some(1.0));
    assert!(eventually(|| nodes[2].metric(&peers("vxlan")) == Some(2.0)));
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn dual_stack_pods_reach_each_other_directly_and_over_vxlan() {
    need_root();
    let world = World::new();
    sh(
        &world.ns,
        "ip addr add fd00:1::1/64 dev seg1 nodad && ip addr add fd00:2::1/64 dev seg2 nodad && \
         echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
    );
    // n1 and n2 share both families' segment; n3, across, has IPv4 only: its IPv6 pods go over the IPv4 tunnel.
    let v6 = |n: &Node, addr: &str| {
        sh(
            &n.ns,
            &format!(
                "ip addr add {addr}/64 dev eth0 nodad && ip -6 route add default via fd00:1::1"
            ),
        )
    };
    let mut n1 = world.node("n1", 1, "192.168.1.11", &[]);
    let mut n2 = world.node("n2", 1, "192.168.1.12", &[]);
    // The underlay is read at start: restart with the IPv6 address in place.
    for (n, a) in [(&mut n1, "fd00:1::11"), (&mut n2, "fd00:1::12")] {
        n.signal(nix::sys::signal::Signal::SIGTERM);
        v6(n, a);
        n.start();
    }
    let n3 = world.node("n3", 2, "192.168.2.13", &[]);
    let nodes = [n1, n2, n3];
    let conf = |n: &Node| {
        let mut c = n.conf();
        c["ipam"]["ranges"] = json!([
            [{"subnet": POOL, "gateway": "10.244.0.1"}],
            [{"subnet": "fd00:10::/64", "gateway": "fd00:10::1"}]
        ]);
        c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
        c
    };
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let mut ips = Vec::new();
    for (n, p) in nodes.iter().zip(&pods) {
        let inv = Invocation::new(
            &bin_dir().join("trestle"),
            "ADD",
            &format!("p-{}", n.name),
            &p.path().display().to_string(),
            "eth0",
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let v = loop {
            let out = inv
                .run(conf(n).to_string().as_bytes(), Some(&n.ns))
                .unwrap();
            let v: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            if out.success || v["code"] != 11 || Instant::now() > deadline {
                assert!(out.success, "{} {}", out.stdout, n.log());
                break v;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let addr = |i: usize| {
            v["ips"][i]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        };
        ips.push((addr(0), addr(1)));
    }
    for (i, from) in pods.iter().enumerate() {
        for (j, (v4, v6)) in ips.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(reaches(from.ns(), v4));
            assert!(
                eventually(
                    || tcp_peer(from.ns(), pods[j].ns(), v6).as_deref() == Some(ips[i].1.as_str())
                ),
                "{} -> {v6} on {}\n{}\n{}",
                nodes[i].name,
                nodes[j].name,
                sh(
                    &nodes[i].ns,
                    "ip -6 route show proto 116; ip -6 neigh show dev trestle.vxlan 2>&1 || true"
                ),
                sh(from.ns(), "ip -6 route")
            );
        }
    }
    // IPv6 between n1 and n2 goes directly over their IPv6 underlay; to n3 through the tunnel, by a link-local next
    // hop made from n3's VTEP MAC.
    let r6 = sh(&nodes[0].ns, "ip -6 route show proto 116");
    assert!(r6.contains("via fd00:1::12 dev eth0"), "{r6}");
    assert!(
        r6.contains("via fe80::") && r6.contains("dev trestle.vxlan"),
        "{r6}"
    );
}
