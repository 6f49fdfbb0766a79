//! Real traffic through a routed "host" namespace proves the masquerade:
//!
//! ```text
//!  pod 10.10.0.2/24 --p0==h0-- host 10.10.0.1 | 192.168.77.1 --h1==o0-- outside 192.168.77.2, 10.10.5.2
//! ```
//! The pod subnet is ensured as 10.10.0.0/16, so 10.10.5.2 is inside the pod subnet (reached through the
//! host, not on-link) and must not be masqueraded, while 192.168.77.2 must see the host's address. IPv6 has the
//! same shape: pod fd10::2/64, host fd10::1 | fd77::1, outside fd77::2 and fd10:0:0:5::2, pod subnet fd10::/48.

mod common;

use common::TestNs;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

struct Topology {
    pod: TestNs,
    host: TestNs,
    outside: TestNs,
}

fn topology() -> Topology {
    let (pod, host, outside) = (TestNs::new("pod"), TestNs::new("host"), TestNs::new("out"));
    host.ip(&format!(
        "link add h0 type veth peer name p0 netns {}",
        pod.name
    ));
    host.ip(&format!(
        "link add h1 type veth peer name o0 netns {}",
        outside.name
    ));
    for (ns, dev) in [(&pod, "p0"), (&host, "h0"), (&host, "h1"), (&outside, "o0")] {
        ns.ip(&format!("link set {dev} up"));
        ns.ip("link set lo up");
    }
    pod.ip("addr add 10.10.0.2/24 dev p0");
    pod.ip("route add default via 10.10.0.1");
    host.ip("addr add 10.10.0.1/24 dev h0");
    host.ip("addr add 192.168.77.1/24 dev h1");
    host.ip("route add 10.10.5.0/24 via 192.168.77.2");
    outside.ip("addr add 192.168.77.2/24 dev o0");
    outside.ip("addr add 10.10.5.2/32 dev o0");
    // Without masquerade the replies still find the pod: the test then sees the pod's own address.
    outside.ip("route add 10.10.0.0/24 via 192.168.77.1");
    pod.ip("addr add fd10::2/64 dev p0 nodad");
    pod.ip("route add default via fd10::1");
    host.ip("addr add fd10::1/64 dev h0 nodad");
    host.ip("addr add fd77::1/64 dev h1 nodad");
    host.ip("route add fd10:0:0:5::/64 via fd77::2");
    outside.ip("addr add fd77::2/64 dev o0 nodad");
    outside.ip("addr add fd10:0:0:5::2/128 dev o0 nodad");
    outside.ip("route add fd10::/64 via fd77::1");
    host.ns
        .ns()
        .run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        })
        .unwrap()
        .unwrap();
    Topology { pod, host, outside }
}

/// Connects from the pod to `dst` and returns the source address the listener in "outside" sees.
fn seen_source(t: &Topology, dst: &str) -> IpAddr {
    let listener = t
        .outside
        .ns
        .ns()
        .run(|| TcpListener::bind((dst, 0)))
        .unwrap()
        .unwrap();
    let target: SocketAddr = listener.local_addr().unwrap();
    let _client = t
        .pod
        .ns
        .ns()
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    // The handshake is complete, so the connection waits in the backlog.
    let (_conn, peer) = listener.accept().unwrap();
    peer.ip()
}

#[test]
#[ignore = "privileged: needs root"]
fn masquerade_follows_the_table() {
    let t = topology();
    let pod_ip: IpAddr = "10.10.0.2".parse().unwrap();
    let host_ip: IpAddr = "192.168.77.1".parse().unwrap();
    assert_eq!(
        seen_source(&t, "192.168.77.2"),
        pod_ip,
        "routed without NAT before ensure"
    );

    let mut fw = t.host.firewall();
    // Host bits as a pod's address would carry them.
    fw.ensure("trafficnet", &["10.10.0.2/16".parse().unwrap()])
        .unwrap();
    assert_eq!(
        seen_source(&t, "192.168.77.2"),
        host_ip,
        "masqueraded while ensured"
    );
    assert_eq!(
        seen_source(&t, "10.10.5.2"),
        pod_ip,
        "destination inside the pod subnet"
    );

    assert!(fw.remove_if_unused("trafficnet", || false).unwrap());
    assert_eq!(
        seen_source(&t, "192.168.77.2"),
        pod_ip,
        "not masqueraded after removal"
    );
    assert!(t.host.ruleset_json().is_empty());
}

#[test]
#[ignore = "privileged: needs root"]
fn masquerade_follows_the_table_ipv6() {
    let t = topology();
    let pod_ip: IpAddr = "fd10::2".parse().unwrap();
    let host_ip: IpAddr = "fd77::1".parse().unwrap();
    assert_eq!(
        seen_source(&t, "fd77::2"),
        pod_ip,
        "routed without NAT before ensure"
    );

    let mut fw = t.host.firewall();
    let subnets = [
        "10.10.0.0/16".parse().unwrap(),
        "fd10::2/48".parse().unwrap(),
    ];
    fw.ensure("trafficnet", &subnets).unwrap();
    assert_eq!(
        seen_source(&t, "fd77::2"),
        host_ip,
        "masqueraded while ensured"
    );
    assert_eq!(
        seen_source(&t, "fd10:0:0:5::2"),
        pod_ip,
        "destination inside the pod subnet"
    );

    assert!(fw.remove("trafficnet").unwrap());
    assert_eq!(
        seen_source(&t, "fd77::2"),
        pod_ip,
        "not masqueraded after removal"
    );
    assert!(t.host.ruleset_json().is_empty());
}
