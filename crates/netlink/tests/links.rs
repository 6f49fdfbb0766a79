//! Links, bridges and veths against the real kernel (privileged).

mod common;

use common::{create_filtering_bridge, end, in_ns, link, test_ns, wait_oper_up};
use trestle_netlink::{Error, Netlink, VethEnd};

#[test]
#[ignore = "privileged: needs root"]
fn bridge_create() {
    let mut t = test_ns();
    t.nl.create_bridge("br0", Some(1400), false).unwrap();
    let br = link(&mut t.nl, "br0");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1400);
    assert!(!br.up);
    assert_eq!(t.nl.link_by_index(br.index).unwrap(), Some(br.clone()));
    assert_eq!(t.nl.vlan_filtering(br.index).unwrap(), Some(false));
    assert!(matches!(
        t.nl.create_bridge("br0", None, false),
        Err(Error::Exists)
    ));

    let lo = link(&mut t.nl, "lo");
    assert_eq!(lo.kind, None);
    assert_eq!(t.nl.vlan_filtering(lo.index).unwrap(), None);
    let names: Vec<_> = t.nl.links().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"lo".into()) && names.contains(&"br0".into()));
    assert_eq!(t.nl.link_by_index(9999).unwrap(), None);
    assert_eq!(t.nl.link_by_name("nosuch").unwrap(), None);
}

#[test]
#[ignore = "privileged: needs root"]
fn bridge_vlan_filtering() {
    let mut t = test_ns();
    if !create_filtering_bridge(&mut t.nl, "br0") {
        t.nl.create_bridge("br0", None, false).unwrap();
        let br = link(&mut t.nl, "br0").index;
        let err = t.nl.set_vlan_filtering(br, true).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EOPNOTSUPP), "{err}");
        assert_eq!(t.nl.vlan_filtering(br).unwrap(), Some(false));
        return;
    }
    let br = link(&mut t.nl, "br0").index;
    assert_eq!(t.nl.vlan_filtering(br).unwrap(), Some(true));
    assert!(in_ns(&t.ns, "ip", &["-d", "link", "show", "br0"]).contains("vlan_filtering 1"));
    t.nl.set_vlan_filtering(br, false).unwrap();
    assert_eq!(t.nl.vlan_filtering(br).unwrap(), Some(false));
    assert!(in_ns(&t.ns, "ip", &["-d", "link", "show", "br0"]).contains("vlan_filtering 0"));
    t.nl.set_vlan_filtering(br, true).unwrap();
    assert_eq!(t.nl.vlan_filtering(br).unwrap(), Some(true));
}

#[test]
#[ignore = "privileged: needs root"]
fn link_attributes_and_delete() {
    let mut t = test_ns();
    t.nl.create_bridge("br-attr", None, false).unwrap();
    let idx = link(&mut t.nl, "br-attr").index;

    t.nl.set_mtu(idx, 1300).unwrap();
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    t.nl.set_mac(idx, mac).unwrap();
    t.nl.set_promisc(idx, true).unwrap();
    t.nl.set_up(idx, true).unwrap();
    let l = link(&mut t.nl, "br-attr");
    assert_eq!(
        (l.mtu, l.mac, l.promisc, l.up),
        (1300, Some(mac), true, true)
    );
    let shown = in_ns(&t.ns, "ip", &["link", "show", "br-attr"]);
    assert!(
        shown.contains("PROMISC")
            && shown.contains("02:11:22:33:44:55")
            && shown.contains("mtu 1300"),
        "{shown}"
    );

    t.nl.set_promisc(idx, false).unwrap();
    assert!(!link(&mut t.nl, "br-attr").promisc);

    t.nl.set_up(idx, false).unwrap();
    assert!(!link(&mut t.nl, "br-attr").up);
    t.nl.set_name(idx, "br-new").unwrap();
    assert_eq!(t.nl.link_by_name("br-attr").unwrap(), None);
    assert_eq!(link(&mut t.nl, "br-new").index, idx);

    t.nl.delete_link(idx).unwrap();
    assert_eq!(t.nl.link_by_index(idx).unwrap(), None);
    assert!(matches!(t.nl.delete_link(idx), Err(Error::NotFound)));
    assert!(matches!(t.nl.set_mtu(idx, 1400), Err(Error::NotFound)));
    assert!(matches!(
        t.nl.link_by_name("much-too-long-name"),
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(
        t.nl.set_name(1, "a/b"),
        Err(Error::InvalidName(_))
    ));
}

#[test]
#[ignore = "privileged: needs root"]
fn veth_peer_is_born_in_the_other_namespace() {
    let mut host = test_ns();
    let mut cont = test_ns();
    let host_mac = [0x02, 0, 0, 0, 0, 0x01];
    let peer_mac = [0x02, 0, 0, 0, 0, 0x02];
    let h = VethEnd {
        name: "veth-h".into(),
        mtu: Some(1450),
        mac: Some(host_mac),
        group: Some(0x7473_1234),
    };
    let p = VethEnd {
        name: "eth0".into(),
        mtu: Some(1450),
        mac: Some(peer_mac),
        group: None,
    };
    host.nl.create_veth(&h, &p, cont.ns.fd()).unwrap();

    let hl = link(&mut host.nl, "veth-h");
    assert_eq!(
        (hl.kind.as_deref(), hl.mtu, hl.mac),
        (Some("veth"), 1450, Some(host_mac))
    );
    assert_eq!(
        host.nl.link_by_name("eth0").unwrap(),
        None,
        "peer must not exist in the host namespace"
    );
    let pl = link(&mut cont.nl, "eth0");
    assert_eq!(
        (pl.kind.as_deref(), pl.mtu, pl.mac),
        (Some("veth"), 1450, Some(peer_mac))
    );
    assert_eq!(cont.nl.link_by_name("veth-h").unwrap(), None);
    // Each end points at the other, across namespaces.
    assert_eq!(pl.peer_index, Some(hl.index));
    assert_eq!(hl.peer_index, Some(pl.index));
    assert!(pl.link_netnsid.is_some() && hl.link_netnsid.is_some());
    // Each side's IFLA_LINK_NETNSID is the id that side gives the other namespace.
    assert_eq!(cont.nl.netns_id(host.ns.fd()).unwrap(), pl.link_netnsid);
    assert_eq!(host.nl.netns_id(cont.ns.fd()).unwrap(), hl.link_netnsid);
    assert_eq!(
        (hl.group, pl.group),
        (0x7473_1234, 0),
        "group set at creation"
    );

    // Names are checked in each end's own namespace.
    let err = host
        .nl
        .create_veth(&end("veth-h"), &end("eth1"), cont.ns.fd());
    assert!(matches!(err, Err(Error::Exists)), "{err:?}");
    let err = host
        .nl
        .create_veth(&end("veth-h2"), &end("eth0"), cont.ns.fd());
    assert!(matches!(err, Err(Error::Exists)), "{err:?}");

    host.nl.set_up(hl.index, true).unwrap();
    cont.nl.set_up(pl.index, true).unwrap();
    assert!(wait_oper_up(&mut host.nl, "veth-h").oper_up);
    assert!(wait_oper_up(&mut cont.nl, "eth0").oper_up);

    host.nl.delete_link(hl.index).unwrap();
    assert_eq!(
        cont.nl.link_by_name("eth0").unwrap(),
        None,
        "deleting one end removes the peer"
    );
}

/// `any_link_with_master` answers as the whole list would, past the first chunk of the dump too, and a socket
/// that stopped a dump halfway takes nothing with it: the next one works.
#[test]
#[ignore = "privileged: needs root"]
fn any_port_answers_as_the_whole_list_would() {
    let mut t = test_ns();
    t.nl.create_bridge("br1", None, false).unwrap();
    let br = link(&mut t.nl, "br1").index;
    let fresh = || t.ns.run(Netlink::open).unwrap().unwrap();
    assert!(!fresh().any_link_with_master(br, |_| true).unwrap());
    // 80 ports: several 32 KiB chunks of replies.
    for i in 0..80 {
        let (a, b) = (format!("pa{i}"), format!("pb{i}"));
        t.nl.create_veth(&end(&a), &end(&b), t.ns.fd()).unwrap();
        let idx = link(&mut t.nl, &a).index;
        t.nl.set_master(idx, Some(br)).unwrap();
    }
    let ports = t.nl.links_with_master(br).unwrap();
    assert_eq!(ports.len(), 80);
    let last = ports.last().unwrap().name.clone();
    for name in ["pa0", last.as_str()] {
        assert!(
            fresh()
                .any_link_with_master(br, |l| l.name == name)
                .unwrap(),
            "{name}"
        );
    }
    assert!(
        !fresh()
            .any_link_with_master(br, |l| l.name == "pb0")
            .unwrap(),
        "not a port"
    );
    // Stopped at the first port, then asked again on new sockets, and on the long-lived one.
    for _ in 0..3 {
        assert!(fresh().any_link_with_master(br, |_| true).unwrap());
    }
    assert_eq!(t.nl.links_with_master(br).unwrap().len(), 80);
}

#[test]
#[ignore = "privileged: needs root"]
fn veth_in_one_namespace_and_master() {
    let mut t = test_ns();
    t.nl.create_bridge("br1", None, false).unwrap();
    let br = link(&mut t.nl, "br1").index;
    t.nl.create_veth(&end("va"), &end("vb"), t.ns.fd()).unwrap();
    let va = link(&mut t.nl, "va").index;
    assert_eq!(link(&mut t.nl, "vb").peer_index, Some(va));
    assert_eq!(link(&mut t.nl, "vb").link_netnsid, None);

    assert!(t.nl.links_with_master(br).unwrap().is_empty());
    t.nl.set_master(va, Some(br)).unwrap();
    assert_eq!(link(&mut t.nl, "va").master, Some(br));
    let ports = t.nl.links_with_master(br).unwrap();
    assert_eq!(
        ports.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        vec!["va"]
    );
    assert!(in_ns(&t.ns, "ip", &["link", "show", "va"]).contains("master br1"));
    // Bridge ports are promiscuous for the bridge, not by user request.
    t.nl.set_up(va, true).unwrap();
    assert!(!link(&mut t.nl, "va").promisc);

    t.nl.set_master(va, None).unwrap();
    assert_eq!(link(&mut t.nl, "va").master, None);
    assert!(matches!(
        t.nl.set_master(va, Some(9999)),
        Err(Error::NotFound) | Err(Error::Kernel { .. })
    ));
}

#[test]
#[ignore = "privileged: needs root"]
fn park_and_delete_group() {
    let mut t = test_ns();
    t.nl.create_bridge("brg", None, false).unwrap();
    let br = link(&mut t.nl, "brg").index;
    for (a, b) in [("pa", "pb"), ("qa", "qb"), ("ra", "rb")] {
        t.nl.create_veth(&end(a), &end(b), t.ns.fd()).unwrap();
        let i = link(&mut t.nl, a).index;
        t.nl.set_master(i, Some(br)).unwrap();
        t.nl.set_up(i, true).unwrap();
    }
    assert!(matches!(t.nl.delete_group(4242), Err(Error::NotFound)));
    for a in ["pa", "qa"] {
        let i = link(&mut t.nl, a).index;
        t.nl.park(i, 4242).unwrap();
        let l = link(&mut t.nl, a);
        // Off the bridge, in the group, and left up: DEL takes the other end down, which cuts the carrier.
        assert_eq!((l.up, l.master, l.group), (true, None, 4242));
    }
    t.nl.delete_group(4242).unwrap();
    for gone in ["pa", "pb", "qa", "qb"] {
        assert_eq!(t.nl.link_by_name(gone).unwrap(), None, "{gone}");
    }
    assert_eq!(link(&mut t.nl, "ra").master, Some(br));
    assert!(link(&mut t.nl, "rb").index > 0);
}

#[test]
#[ignore = "privileged: needs root"]
fn bridge_carrier_follows_its_ports() {
    let mut t = test_ns();
    t.nl.create_bridge("brc", None, false).unwrap();
    let br = link(&mut t.nl, "brc").index;
    t.nl.set_up(br, true).unwrap();
    // (A bridge that never had a port reports carrier on this kernel; what matters is the transitions below.)
    t.nl.create_veth(&end("ca"), &end("cb"), t.ns.fd()).unwrap();
    let (a, b) = (link(&mut t.nl, "ca").index, link(&mut t.nl, "cb").index);
    t.nl.set_master(a, Some(br)).unwrap();
    t.nl.set_up(a, true).unwrap();
    t.nl.set_up(b, true).unwrap();
    assert!(link(&mut t.nl, "ca").carrier);
    assert!(
        link(&mut t.nl, "brc").carrier,
        "a forwarding port gives the bridge carrier"
    );
    t.nl.set_master(a, None).unwrap();
    assert!(
        !link(&mut t.nl, "brc").carrier,
        "carrier goes at once with the last port"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn veth_ends_get_one_queue_each_way() {
    let t = test_ns();
    let mut nl = t.nl;
    nl.create_veth(&end("qa"), &end("qb"), t.ns.fd()).unwrap();
    for name in ["qa", "qb"] {
        let details = in_ns(&t.ns, "ip", &["-d", "link", "show", name]);
        assert!(details.contains("numtxqueues 1 numrxqueues 1"), "{details}");
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn port_up_in_one_request_without_ipv6_address() {
    let mut t = test_ns();
    t.nl.create_bridge("brm", None, false).unwrap();
    let br = link(&mut t.nl, "brm").index;
    t.nl.create_veth(&end("ma"), &end("mb"), t.ns.fd()).unwrap();
    let i = link(&mut t.nl, "ma").index;
    t.nl.set_port_up(i, br).unwrap();
    let l = link(&mut t.nl, "ma");
    assert_eq!((l.up, l.master), (true, Some(br)));
    // No IPv6 address on the port, while its peer (up too) gets its link-local one.
    let mb = link(&mut t.nl, "mb").index;
    t.nl.set_up(mb, true).unwrap();
    let details = in_ns(&t.ns, "ip", &["-d", "link", "show", "ma"]);
    assert!(details.contains("addrgenmode none"), "{details}");
    let v6 = |name: &str| in_ns(&t.ns, "ip", &["-6", "addr", "show", "dev", name]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !v6("mb").contains("fe80") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(v6("mb").contains("fe80"));
    assert_eq!(v6("ma"), "");
    assert!(matches!(t.nl.set_port_up(9999, br), Err(Error::NotFound)));
}

#[test]
#[ignore = "privileged: needs root"]
fn ipv4_conf_over_netlink() {
    let mut t = test_ns();
    t.nl.create_veth(&end("ca"), &end("cb"), t.ns.fd()).unwrap();
    let read = |ns: &trestle_netns::NetNs| {
        ns.run(|| trestle_netlink::sysctl::get("net/ipv4/conf/ca/arp_notify"))
            .unwrap()
            .unwrap()
    };
    assert_eq!(read(&t.ns), "0");
    let i = link(&mut t.nl, "ca").index;
    t.nl.set_ipv4_conf(i, &[(trestle_netlink::IPV4_DEVCONF_ARP_NOTIFY, 1)])
        .unwrap();
    assert_eq!(read(&t.ns), "1");
}

#[test]
#[ignore = "privileged: needs root"]
fn socket_created_in_a_namespace_acts_there() {
    let mut t = test_ns();
    let created = t.ns.run(trestle_netlink::Netlink::socket).unwrap().unwrap();
    // Set up on this thread, which is not in the namespace: the socket still acts on it.
    let mut nl = trestle_netlink::Netlink::from_socket(created).unwrap();
    nl.create_bridge("brs", None, false).unwrap();
    assert!(t.nl.link_by_name("brs").unwrap().is_some());
}
