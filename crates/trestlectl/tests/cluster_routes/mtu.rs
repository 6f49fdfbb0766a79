//! The pods' MTU: the cluster's smallest underlay less VXLAN's overhead, followed at run time.

use serde_json::json;
use trestlectl::runtime::Invocation;

use crate::common::bin_dir;
use crate::world::*;

#[test]
#[ignore = "privileged: needs root, etcd"]
fn pods_get_the_smallest_mtu_of_the_cluster_and_full_size_packets_cross_vxlan() {
    need_root();
    let world = World::new();
    let n1 = world.node(
        "n1",
        1,
        "192.168.1.11",
        &["--vxlan-checksum-offload", "off"],
    );
    // Across segments, over VXLAN; its underlay is the cluster's smallest.
    let n2 = world.node_mtu("n2", 2, "192.168.2.12", 1400, &[]);
    let p1 = pod_ns(&world.dir.0, "1");
    let p2 = pod_ns(&world.dir.0, "2");
    let b = n2.pod(&p2, "p2");
    // n1 knows n2 (and its underlay's MTU) before its own pod comes.
    let peers = "trestle_ipam_routes{what=\"peers\",via=\"vxlan\"}";
    assert!(eventually(|| n1.metric(peers) == Some(1.0)), "{}", n1.log());
    let a = n1.pod(&p1, "p1");
    // 1400 less VXLAN over IPv4 (50), though n1's own underlay takes 1500: without an `mtu` in the config.
    assert_eq!((pod_mtu(&p1), pod_mtu(&p2)), (1350, 1350));
    let routes = sh(&n1.ns, "ip route show proto 116 dev trestle.vxlan");
    assert!(routes.contains("mtu 1350"), "{routes}");
    assert!(reaches(p1.ns(), &b) && reaches(p2.ns(), &a));
    // Full-size packets with DF set cross both ways; one byte more cannot leave the pod.
    assert!(pings_df(p1.ns(), &b, 1350 - 28), "a -> b, full size");
    assert!(pings_df(p2.ns(), &a, 1350 - 28), "b -> a, full size");
    assert!(!pings_df(p1.ns(), &b, 1350 - 27));
    // The underlay's MTU changes at run time: the host record follows, and every route over VXLAN with it.
    sh(&world.ns, "ip link set u-n1 mtu 1300");
    sh(&n1.ns, "ip link set eth0 mtu 1300");
    let routes_of = |n: &Node| sh(&n.ns, "ip route show proto 116 dev trestle.vxlan");
    assert!(
        eventually(|| routes_of(&n2).contains("mtu 1250")),
        "{}",
        routes_of(&n2)
    );
    assert!(
        eventually(|| routes_of(&n1).contains("mtu 1250")),
        "{}",
        routes_of(&n1)
    );
    assert!(
        pings_df(p2.ns(), &a, 1250 - 28),
        "b -> a, full size of the new path"
    );
    // Checksum offload: off where asked (as on kernels up to 5.7), the kernel's own elsewhere (this one is newer).
    let offload = |n: &Node| {
        n.ns.run(|| trestle_routes::offload::tx_checksum("trestle.vxlan"))
            .unwrap()
            .unwrap()
    };
    assert!(!offload(&n1));
    if !trestle_routes::offload::has_checksum_bug(&trestle_routes::offload::kernel_release()) {
        assert!(offload(&n2));
    }
    // A config's own mtu still wins.
    let p3 = pod_ns(&world.dir.0, "3");
    let mut n1c = n1.conf();
    n1c["mtu"] = json!(1300);
    let inv = Invocation::new(
        &bin_dir().join("trestle"),
        "ADD",
        "p3",
        &p3.path().display().to_string(),
        "eth0",
    );
    let out = inv.run(n1c.to_string().as_bytes(), Some(&n1.ns)).unwrap();
    assert!(out.success, "{}", out.stdout);
    assert_eq!(pod_mtu(&p3), 1300);
}
