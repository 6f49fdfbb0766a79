//! Restarts and upgrades lose no packet; what others undo comes back; STATUS tells an unreachable node.

use std::time::Duration;

use crate::common::bin_dir;
use crate::probes::Deletions;
use crate::world::*;
use trestlectl::probe::Stream as Probe;

#[test]
#[ignore = "privileged: needs root, etcd"]
fn restarts_and_upgrades_lose_no_packet_and_delete_nothing() {
    use nix::sys::signal::Signal;
    need_root();
    let world = World::new();
    let ([mut n1, mut n2, mut n3], pods, [a, b, c]) = three_nodes(&world);
    for (p, ip) in [(0, &b), (1, &a), (0, &c), (2, &a)] {
        assert!(reaches(pods[p].ns(), ip), "{p} -> {ip}");
    }
    n1.wait_synced(0);
    n2.wait_synced(0);
    let watched = [
        Deletions::watch(&n1.ns),
        Deletions::watch(&n2.ns),
        Deletions::watch(&n3.ns),
    ];
    // Over VXLAN (n1 <-> n2) and directly (n1 <-> n3), both ways.
    let probes = [
        Probe::start(pods[0].ns(), pods[1].ns(), b.parse().unwrap(), 7091).unwrap(),
        Probe::start(pods[1].ns(), pods[0].ns(), a.parse().unwrap(), 7092).unwrap(),
        Probe::start(pods[2].ns(), pods[0].ns(), a.parse().unwrap(), 7093).unwrap(),
        Probe::start(pods[0].ns(), pods[2].ns(), c.parse().unwrap(), 7094).unwrap(),
    ];
    std::thread::sleep(Duration::from_millis(300));
    // kill -9, and a restart.
    n1.signal(Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    n1.start();
    n1.wait_synced(1);
    // A graceful stop, and a restart.
    n2.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    n2.start();
    n2.wait_synced(1);
    // An upgrade: another binary (a copy) takes over.
    let upgraded = world.dir.0.join("trestled-next");
    std::fs::copy(bin_dir().join("trestled"), &upgraded).unwrap();
    n3.signal(Signal::SIGTERM);
    n3.start_from(&upgraded);
    n3.wait_synced(0);
    std::thread::sleep(Duration::from_millis(300));
    for (i, p) in probes.into_iter().enumerate() {
        let (lost, sent) = p.finish().unwrap();
        assert!(sent > 500, "probe {i} sent only {sent}");
        assert!(
            lost.is_empty(),
            "probe {i}: lost {} of {sent}: {lost:?}",
            lost.len()
        );
    }
    for (i, d) in watched.into_iter().enumerate() {
        let seen = d.finish();
        assert!(seen.is_empty(), "node {}: deleted {seen:?}", i + 1);
    }
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn what_others_undo_comes_back_and_a_node_removed_while_one_was_down_leaves_it() {
    use nix::sys::signal::Signal;
    need_root();
    let world = World::new();
    let ([mut n1, n2, mut n3], pods, [a, b, c]) = three_nodes(&world);
    assert!(reaches(pods[0].ns(), &b) && reaches(pods[0].ns(), &c));
    let ours = |n: &Node| sh(&n.ns, "ip route show proto 116");
    let before = ours(&n1);

    // A route deleted by hand comes back.
    let to_b = before
        .lines()
        .find(|l| l.contains("trestle.vxlan"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    sh(&n1.ns, &format!("ip route del {to_b} proto 116"));
    assert!(eventually(|| ours(&n1) == before), "{}", ours(&n1));
    // So do the neighbour and FDB entries of the tunnel.
    sh(&n1.ns, "ip neigh flush dev trestle.vxlan nud permanent");
    sh(
        &n1.ns,
        "bridge fdb del de:00:00:00:00:00 dev trestle.vxlan 2>/dev/null || true",
    );
    let fdb = |n: &Node| {
        sh(
            &n.ns,
            "bridge fdb show dev trestle.vxlan | grep dst || true",
        )
    };
    let fdb_before = fdb(&n1);
    let mac = fdb_before.split(' ').next().unwrap().to_string();
    sh(
        &n1.ns,
        &format!("bridge fdb del {mac} dev trestle.vxlan dst 192.168.2.12 self"),
    );
    assert!(eventually(
        || fdb(&n1) == fdb_before && reaches(pods[0].ns(), &b)
    ));

    // The uplink goes down (the kernel drops every route through it) and up again: all come back.
    sh(&n1.ns, "ip link set eth0 down");
    std::thread::sleep(Duration::from_millis(200));
    sh(
        &n1.ns,
        &format!(
            "ip link set eth0 up && ip route replace default via {}",
            gateway(1)
        ),
    );
    assert!(eventually(|| ours(&n1) == before), "{}", ours(&n1));
    assert!(reaches(pods[0].ns(), &b) && reaches(pods[0].ns(), &c) && reaches(pods[1].ns(), &a));

    // n1's daemon is down while n3 leaves for good: when n1 comes back, n3's routes go at its first sync.
    n1.signal(Signal::SIGKILL);
    n3.signal(Signal::SIGTERM);
    drop(pods);
    assert!(eventually(|| {
        let out = world.trestlectl(&[
            "ipam",
            "show",
            "--etcd",
            "192.168.1.1:2379",
            "--etcd-prefix",
            PREFIX,
        ]);
        out.lines()
            .any(|l| l.starts_with("n3") && l.contains("expired"))
    }));
    let out = world.trestlectl(&[
        "ipam",
        "release-node",
        "n3",
        "--yes",
        "--etcd",
        "192.168.1.1:2379",
        "--etcd-prefix",
        PREFIX,
    ]);
    assert!(out.contains("host record is gone"), "{out}");
    // The running n2 drops them at once.
    assert!(
        eventually(|| !ours(&n2).contains("192.168.1.13")),
        "{}",
        ours(&n2)
    );
    assert!(
        ours(&n1).contains("192.168.1.13"),
        "n1 is down: nothing changes"
    );
    n1.start();
    n1.wait_synced(1);
    let now = ours(&n1);
    assert!(!now.contains("192.168.1.13"), "{now}");
    assert!(now.contains("192.168.2.12"), "{now}");
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn status_says_when_a_node_cannot_be_reached() {
    need_root();
    let world = World::new();
    let n1 = world.node("n1", 1, "192.168.1.11", &[]);
    // A node that routes nothing publishes no host record: nobody can reach its pods.
    let n2 = world.node("n2", 1, "192.168.1.12", &["--routing", "none"]);
    let p1 = pod_ns(&world.dir.0, "1");
    let p2 = pod_ns(&world.dir.0, "2");
    n1.pod(&p1, "p1");
    n2.pod(&p2, "p2");
    assert!(
        eventually(|| n1
            .status()
            .is_some_and(|(code, msg)| code == 51 && msg.contains("no route to node n2"))),
        "{:?}",
        n1.status()
    );
    assert_eq!(
        n2.status(),
        None,
        "a node without routing has nothing to converge"
    );
}
