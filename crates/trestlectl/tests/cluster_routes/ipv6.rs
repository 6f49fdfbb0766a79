//! An IPv6-only cluster: IPv6 underlay, IPv6 pool, etcd over IPv6. Direct routes on a segment, VXLAN over IPv6
//! (70 bytes of overhead) across the router.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde_json::{json, Value};
use trestle_netns::{NamedNetNs, NetNs};

use crate::common::tcp_peer;
use crate::world::*;

const POOL6: &str = "fd00:10::/64";

fn conf6(n: &Node) -> Value {
    let mut c = n.conf_for(POOL6, "fd00:10::1");
    c["ipam"]["routes"] = json!([{"dst": "::/0"}]);
    c
}

/// Whether one UDP datagram of `payload` bytes, sent with IPv6's Don't Fragment, reaches `to_ip` in `to`; the
/// sender's error (EMSGSIZE when it exceeds the route's MTU) as an error.
fn datagram_arrives(
    from: &NetNs,
    to: &NetNs,
    to_ip: &str,
    payload: usize,
) -> std::io::Result<bool> {
    let addr = SocketAddr::new(to_ip.parse().unwrap(), 7095);
    let rx = to.run(|| UdpSocket::bind(addr)).unwrap()?;
    rx.set_read_timeout(Some(Duration::from_millis(500)))?;
    let tx = from.run(|| UdpSocket::bind("[::]:0")).unwrap()?;
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the duration of the call; the socket is open.
    let rc = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_DONTFRAG,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; 65536];
    // A few tries: the first may wait for neighbour discovery on the way.
    for _ in 0..4 {
        tx.send_to(&vec![0x5a; payload], addr)?;
        if let Ok(n) = rx.recv(&mut buf) {
            return Ok(n == payload);
        }
    }
    Ok(false)
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn an_ipv6_only_cluster_routes_directly_and_over_vxlan_on_an_ipv6_underlay() {
    need_root();
    let world = World::new_v6();
    let nodes = [
        world.node_mtu("n1", 1, "fd00:1::11", 1500, &[]),
        world.node_mtu("n2", 1, "fd00:1::12", 1500, &[]),
        // Across the router: over VXLAN, and its underlay is the cluster's smallest.
        world.node_mtu("n3", 2, "fd00:2::13", 1400, &[]),
    ];
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let add = |i: usize| {
        let n = &nodes[i];
        n.pod_with(&pods[i], &format!("p-{}", n.name), &conf6(n))
    };
    // n3's pod first: n1 and n2 learn of its block (and its underlay's MTU) before theirs come.
    let c = add(2);
    let vxlan_peers = "trestle_ipam_routes{what=\"peers\",via=\"vxlan\"}";
    for n in &nodes[..2] {
        assert!(
            eventually(|| n.metric(vxlan_peers) == Some(1.0)),
            "{}",
            n.log()
        );
    }
    let ips = [add(0), add(1), c];
    // 1400 less VXLAN over IPv6 (70), on every node.
    for p in &pods {
        assert_eq!(pod_mtu(p), 1330);
    }
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in ips.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(
                eventually(
                    || tcp_peer(from.ns(), pods[j].ns(), to).as_deref() == Some(ips[i].as_str())
                ),
                "{} -> {to} on {}\n{}",
                nodes[i].name,
                nodes[j].name,
                sh(&nodes[i].ns, "ip -6 route show proto 116")
            );
        }
    }
    // n1 reaches n2's pods through n2's underlay address, n3's by the link-local next hop of n3's VTEP on a
    // VXLAN device whose tunnel is IPv6 (local fd00:1::11, the FDB entry to fd00:2::13).
    let r6 = sh(&nodes[0].ns, "ip -6 route show proto 116");
    assert!(r6.contains("via fd00:1::12 dev eth0"), "{r6}");
    assert!(
        r6.contains("via fe80::") && r6.contains("dev trestle.vxlan") && r6.contains("mtu 1330"),
        "{r6}"
    );
    let link = sh(&nodes[0].ns, "ip -d link show trestle.vxlan");
    assert!(link.contains("local fd00:1::11"), "{link}");
    let fdb = sh(&nodes[0].ns, "bridge fdb show dev trestle.vxlan");
    assert!(fdb.contains("dst fd00:2::13"), "{fdb}");
    assert!(!fdb.contains("dst fd00:1::12"), "n2 is direct: {fdb}");
    // Full-size datagrams with Don't Fragment cross the IPv6 tunnel both ways (40 + 8 bytes of headers); one byte
    // more cannot leave the pod.
    let full = 1330 - 48;
    assert!(
        datagram_arrives(pods[0].ns(), pods[2].ns(), &ips[2], full).unwrap(),
        "n1 -> n3"
    );
    assert!(
        datagram_arrives(pods[2].ns(), pods[0].ns(), &ips[0], full).unwrap(),
        "n3 -> n1"
    );
    let over = datagram_arrives(pods[0].ns(), pods[2].ns(), &ips[2], full + 1).unwrap_err();
    assert_eq!(over.raw_os_error(), Some(libc::EMSGSIZE), "{over}");
}
