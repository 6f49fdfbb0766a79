//! Routes follow blocks: borrowed addresses get host routes, released blocks leave every peer.

use trestle_netns::NamedNetNs;
use trestlectl::runtime::Invocation;

use crate::common::bin_dir;
use crate::world::*;

#[test]
#[ignore = "privileged: needs root, etcd"]
fn an_address_borrowed_from_another_nodes_block_gets_host_routes() {
    need_root();
    let world = World::new();
    // A pool of two blocks of 8 for three nodes: the third borrows from a block another node owns.
    let small = &["--block-size", "10.245.0.0/28=29"];
    let nodes = [
        world.node("n1", 1, "192.168.1.11", small),
        world.node("n2", 2, "192.168.2.12", small),
        world.node("n3", 1, "192.168.1.13", small),
    ];
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let ips: Vec<String> = nodes
        .iter()
        .zip(&pods)
        .map(|(n, p)| {
            n.pod_with(
                p,
                &format!("p-{}", n.name),
                &n.conf_for("10.245.0.0/28", "10.245.0.1"),
            )
        })
        .collect();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in ips.iter().enumerate() {
            if i != j {
                assert!(
                    reaches(from.ns(), to),
                    "{} -> {to} on {}\n{}",
                    nodes[i].name,
                    nodes[j].name,
                    sh(&nodes[i].ns, "ip route show proto 116")
                );
            }
        }
    }
    // Two of the three pods share a block of 8 (there are two): the one whose node does not own it has a host
    // route on every node, to its bridge on its own node and to its node elsewhere.
    let host_routes = |n: &Node| {
        sh(&n.ns, "ip route show proto 116")
            .lines()
            .filter(|l| l.starts_with("10.245.0.") && !l.split(' ').next().unwrap().contains('/'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let routes: Vec<Vec<String>> = nodes.iter().map(host_routes).collect();
    assert!(routes.iter().all(|r| r.len() == 1), "{routes:?}");
    assert_eq!(
        routes.iter().filter(|r| r[0].contains("dev cbr0")).count(),
        1,
        "{routes:?}"
    );
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn a_released_block_leaves_every_peers_routes() {
    need_root();
    let world = World::new();
    // Empty blocks go back after a second (a node keeps its last one per pool: so two blocks of 8 on n2).
    let quick = &[
        "--block-size",
        "10.244.0.0/16=29",
        "--block-release-grace",
        "1",
        "--cluster-interval",
        "0.2",
        "--reuse-delay",
        "0",
    ];
    let n1 = world.node("n1", 1, "192.168.1.11", quick);
    let n2 = world.node("n2", 2, "192.168.2.12", quick);
    let n3 = world.node("n3", 1, "192.168.1.13", quick);
    let pods: Vec<NamedNetNs> = (0..10)
        .map(|i| pod_ns(&world.dir.0, &format!("r{i}")))
        .collect();
    let ips: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| n2.pod(p, &format!("r{i}")))
        .collect();
    let blocks_of_n2 = |n: &Node| {
        sh(&n.ns, "ip route show proto 116")
            .lines()
            .filter(|l| l.contains("192.168.2.12"))
            .count()
    };
    assert!(eventually(
        || blocks_of_n2(&n1) >= 2 && blocks_of_n2(&n3) >= 2
    ));
    let before = blocks_of_n2(&n1);
    // Every pod but the first goes: n2's emptied blocks go back to the pool, and every peer drops their routes.
    for (i, p) in pods.iter().enumerate().skip(1) {
        let inv = Invocation::new(
            &bin_dir().join("trestle"),
            "DEL",
            &format!("r{i}"),
            &p.path().display().to_string(),
            "eth0",
        );
        let out = inv
            .run(n2.conf().to_string().as_bytes(), Some(&n2.ns))
            .unwrap();
        assert!(out.success, "{}", out.stdout);
    }
    assert!(
        eventually(|| blocks_of_n2(&n1) < before && blocks_of_n2(&n1) == blocks_of_n2(&n3)),
        "{}\n{}",
        sh(&n1.ns, "ip route show proto 116"),
        n2.log()
    );
    // The pod left on n2 is still reached.
    let p1 = pod_ns(&world.dir.0, "p1");
    n1.pod(&p1, "p1");
    assert!(reaches(p1.ns(), &ips[0]));
    // The peers followed n2's claims and releases by incremental passes (no read of the kernel), and a full pass,
    // which reads the kernel back, finds nothing missing that they had applied (nobody removed anything here).
    let passes = |n: &Node, what: &str| {
        n.metric(&format!("trestle_ipam_routes{{what=\"{what}_passes\"}}"))
            .unwrap_or(0.0)
    };
    for n in [&n1, &n3] {
        // At least one: how many depends on how the watch batches n2's claims and releases (quick DELs come as
        // one batch) and on whether the periodic full pass got to a change first.
        assert!(
            passes(n, "incremental") >= 1.0,
            "{}",
            passes(n, "incremental")
        );
        let full = passes(n, "full");
        // A pass that reads the kernel: the periodic one (--routes-resync 1).
        assert!(eventually(|| passes(n, "full") > full));
        let repairs = n.metric("trestle_ipam_routes{what=\"repairs\"}");
        assert_eq!(repairs, Some(0.0), "{}", n.log());
    }
}
