//! VXLAN devices, their neighbour and forwarding entries, and onlink routes through them, against the real
//! kernel (privileged). Everything is checked through the crate's own dumps.

mod common;

use std::net::IpAddr;

use common::{link, local_veth, test_ns, TestNs};
use ipnet::IpNet;
use trestle_netlink::{Error, Family, FdbEntry, Netlink, Route, VxlanInfo, VxlanSpec};

const VTEP_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0x01, 0x01];
const OTHER_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0x02, 0x02];
/// The protocol number a route controller marks its routes with (`ip route ... proto 0x54`).
const PROTO: u8 = 0x54;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn spec(name: &str, local: &str, underlay: u32) -> VxlanSpec {
    VxlanSpec {
        name: name.into(),
        vni: 42,
        port: 4789,
        local: Some(ip(local)),
        underlay: Some(underlay),
        learning: false,
        mtu: None,
        mac: None,
    }
}

/// An underlay veth holding `local`, and a VXLAN device on it, up; returns the VXLAN device's index.
fn overlay(t: &mut TestNs, local: &str, prefix: u8) -> u32 {
    let (ua, _) = local_veth(t, "ua", "ub");
    let local_net = IpNet::new(ip(local), prefix).unwrap();
    t.nl.add_address(ua, local_net, true).unwrap();
    let vx = t.nl.create_vxlan(&spec("vxlan0", local, ua)).unwrap();
    t.nl.set_up(vx, true).unwrap();
    vx
}

/// The onlink route a controller programs towards a peer's pod subnet: through the peer's VTEP address, which
/// no local subnet covers.
fn onlink(dst: &str, gateway: &str, oif: u32, mtu: u32) -> Route {
    let mut r = Route::new(net(dst));
    r.gateway = Some(ip(gateway));
    r.oif = Some(oif);
    r.protocol = PROTO;
    r.mtu = Some(mtu);
    r.onlink = true;
    r
}

fn routes_to(nl: &mut Netlink, dst: &str) -> Vec<Route> {
    nl.routes(None)
        .unwrap()
        .into_iter()
        .filter(|r| r.dst == net(dst) && r.table == 254)
        .collect()
}

fn fdb_for(nl: &mut Netlink, index: u32, mac: [u8; 6]) -> Vec<FdbEntry> {
    let mut entries: Vec<_> = nl
        .fdb(index)
        .unwrap()
        .into_iter()
        .filter(|e| e.mac == mac)
        .collect();
    entries.sort_by_key(|e| e.dst);
    entries
}

#[test]
#[ignore = "privileged: needs root"]
fn create_vxlan_and_read_it_back() {
    let mut t = test_ns();
    let (ua, _) = local_veth(&mut t, "ua", "ub");
    t.nl.add_address(ua, net("192.0.2.10/24"), false).unwrap();
    let mac = [0x02, 0x42, 0, 0, 0, 0x0a];
    let mut wanted = spec("vxlan0", "192.0.2.10", ua);
    wanted.mtu = Some(1450);
    wanted.mac = Some(mac);
    let vx = t.nl.create_vxlan(&wanted).unwrap();

    let l = link(&mut t.nl, "vxlan0");
    assert_eq!(l.index, vx);
    assert_eq!(
        (l.kind.as_deref(), l.mtu, l.mac, l.up),
        (Some("vxlan"), 1450, Some(mac), false)
    );
    let info = t.nl.vxlan_info(vx).unwrap().expect("vxlan info");
    assert_eq!(info, VxlanInfo::from(&wanted));
    assert_eq!(
        (
            info.vni,
            info.port,
            info.local,
            info.underlay,
            info.learning
        ),
        (42, 4789, Some(ip("192.0.2.10")), Some(ua), false)
    );

    assert_eq!(t.nl.vxlan_info(ua).unwrap(), None, "a veth is not vxlan");
    assert!(matches!(t.nl.vxlan_info(9999), Err(Error::NotFound)));
    assert!(matches!(t.nl.create_vxlan(&wanted), Err(Error::Exists)));
    // Another name for the same VNI and port is refused too.
    let err = t.nl.create_vxlan(&spec("vxlan1", "192.0.2.10", ua));
    assert!(matches!(err, Err(Error::Exists)), "{err:?}");
    assert!(matches!(
        t.nl.create_vxlan(&spec("much-too-long-name", "192.0.2.10", ua)),
        Err(Error::InvalidName(_))
    ));

    // A learning device without local address or underlay: no underlay MTU to follow, so 1500.
    let bare = VxlanSpec {
        name: "vxlan2".into(),
        vni: 43,
        port: 8472,
        learning: true,
        ..VxlanSpec::default()
    };
    let vx2 = t.nl.create_vxlan(&bare).unwrap();
    assert_eq!(t.nl.vxlan_info(vx2).unwrap(), Some(VxlanInfo::from(&bare)));
    assert_eq!(link(&mut t.nl, "vxlan2").mtu, 1500);
    // What a restart compares: the device it finds against the one it wants.
    assert_ne!(
        t.nl.vxlan_info(vx2).unwrap(),
        Some(VxlanInfo::from(&wanted))
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn permanent_neighbours() {
    let mut t = test_ns();
    let vx = overlay(&mut t, "192.0.2.10", 24);
    // The default MTU leaves room for the IPv4 encapsulation: 1500 - 50.
    assert_eq!(link(&mut t.nl, "vxlan0").mtu, 1450);
    let peer = ip("10.244.1.0");
    let find = |nl: &mut Netlink| {
        let all = nl.neighbours(Some(Family::V4), Some(vx)).unwrap();
        assert!(
            all.iter().all(|n| n.index == vx && n.ip.is_ipv4()),
            "{all:?}"
        );
        all.into_iter().filter(|n| n.ip == peer).collect::<Vec<_>>()
    };

    t.nl.replace_neighbour(vx, peer, VTEP_MAC).unwrap();
    let got = find(&mut t.nl);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].mac, got[0].state),
        (Some(VTEP_MAC), libc::NUD_PERMANENT)
    );
    // Again, then with another MAC: still one entry, now pointing at the new MAC.
    t.nl.replace_neighbour(vx, peer, VTEP_MAC).unwrap();
    t.nl.replace_neighbour(vx, peer, OTHER_MAC).unwrap();
    let got = find(&mut t.nl);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].mac, Some(OTHER_MAC));
    assert!(t
        .nl
        .neighbours(None, None)
        .unwrap()
        .iter()
        .any(|n| n.ip == peer && n.index == vx));
    assert!(!t
        .nl
        .neighbours(Some(Family::V6), None)
        .unwrap()
        .iter()
        .any(|n| n.ip == peer));

    t.nl.del_neighbour(vx, peer).unwrap();
    assert!(find(&mut t.nl).is_empty());
    assert!(matches!(t.nl.del_neighbour(vx, peer), Err(Error::NotFound)));
    assert!(matches!(
        t.nl.replace_neighbour(9999, peer, VTEP_MAC),
        Err(Error::NotFound)
    ));
}

#[test]
#[ignore = "privileged: needs root"]
fn fdb_entries() {
    let mut t = test_ns();
    let vx = overlay(&mut t, "192.0.2.10", 24);
    let (dst1, dst2) = (ip("192.0.2.1"), ip("192.0.2.2"));

    t.nl.replace_fdb(vx, VTEP_MAC, dst1).unwrap();
    let got = fdb_for(&mut t.nl, vx, VTEP_MAC);
    assert_eq!(got.len(), 1, "{got:?}");
    let e = got[0];
    assert_eq!((e.index, e.dst), (vx, Some(dst1)));
    // The device's own VNI and port are left out of its entries.
    assert_eq!((e.vni, e.port), (None, None));
    assert_ne!(e.flags & libc::NTF_SELF, 0, "{e:?}");
    assert_ne!(e.state & libc::NUD_PERMANENT, 0, "{e:?}");

    // Replacing is idempotent, and moves a unicast MAC to its new destination.
    t.nl.replace_fdb(vx, VTEP_MAC, dst1).unwrap();
    assert_eq!(fdb_for(&mut t.nl, vx, VTEP_MAC).len(), 1);
    t.nl.replace_fdb(vx, VTEP_MAC, dst2).unwrap();
    let got = fdb_for(&mut t.nl, vx, VTEP_MAC);
    assert_eq!(
        got.iter().map(|e| e.dst).collect::<Vec<_>>(),
        vec![Some(dst2)]
    );

    // Deleting must name the destination: the old one is not there any more.
    assert!(matches!(
        t.nl.del_fdb(vx, VTEP_MAC, dst1),
        Err(Error::NotFound)
    ));
    assert_eq!(fdb_for(&mut t.nl, vx, VTEP_MAC).len(), 1);
    t.nl.del_fdb(vx, VTEP_MAC, dst2).unwrap();
    assert!(fdb_for(&mut t.nl, vx, VTEP_MAC).is_empty());
    assert!(matches!(
        t.nl.del_fdb(vx, VTEP_MAC, dst2),
        Err(Error::NotFound)
    ));

    // The all-zero MAC holds a list of flooding destinations, added to rather than replaced.
    let zero = [0; 6];
    for dst in [dst1, dst2, dst1] {
        t.nl.replace_fdb(vx, zero, dst).unwrap();
    }
    let got = fdb_for(&mut t.nl, vx, zero);
    assert_eq!(
        got.iter().map(|e| e.dst).collect::<Vec<_>>(),
        vec![Some(dst1), Some(dst2)]
    );
    t.nl.del_fdb(vx, zero, dst1).unwrap();
    let got = fdb_for(&mut t.nl, vx, zero);
    assert_eq!(
        got.iter().map(|e| e.dst).collect::<Vec<_>>(),
        vec![Some(dst2)]
    );

    // The dump is the device's own: the underlay's database has none of these.
    let ua = link(&mut t.nl, "ua").index;
    assert!(t.nl.fdb(ua).unwrap().iter().all(|e| e.index == ua));
    assert!(!t.nl.fdb(ua).unwrap().iter().any(|e| e.dst.is_some()));
}

#[test]
#[ignore = "privileged: needs root"]
fn onlink_routes() {
    let mut t = test_ns();
    let vx = overlay(&mut t, "192.0.2.10", 24);
    let r = onlink("10.244.1.0/26", "10.244.1.0", vx, 1450);

    t.nl.replace_route(&r).unwrap();
    t.nl.replace_route(&r).unwrap();
    assert_eq!(routes_to(&mut t.nl, "10.244.1.0/26"), vec![r]);
    assert!(matches!(t.nl.add_route(&r), Err(Error::Exists)));

    // Replacing changes the route in place.
    let mut smaller = r;
    smaller.mtu = Some(1400);
    t.nl.replace_route(&smaller).unwrap();
    assert_eq!(routes_to(&mut t.nl, "10.244.1.0/26"), vec![smaller]);

    // Without onlink the gateway is unreachable: no subnet of vxlan0 covers it.
    let mut plain = r;
    plain.onlink = false;
    let err = t.nl.add_route(&plain).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");

    t.nl.del_route(&smaller).unwrap();
    assert!(routes_to(&mut t.nl, "10.244.1.0/26").is_empty());
    assert!(matches!(t.nl.del_route(&smaller), Err(Error::NotFound)));

    // add_route takes the flag too, and a bare description deletes the route.
    t.nl.add_route(&r).unwrap();
    assert!(routes_to(&mut t.nl, "10.244.1.0/26")[0].onlink);
    t.nl.del_route(&Route::new(net("10.244.1.0/26"))).unwrap();
    assert!(routes_to(&mut t.nl, "10.244.1.0/26").is_empty());
}

#[test]
#[ignore = "privileged: needs root"]
fn ipv6_overlay() {
    let mut t = test_ns();
    let vx = overlay(&mut t, "2001:db8::10", 64);
    // The default MTU leaves room for the IPv6 encapsulation: 1500 - 70.
    assert_eq!(link(&mut t.nl, "vxlan0").mtu, 1430);
    let info = t.nl.vxlan_info(vx).unwrap().unwrap();
    assert_eq!(info.local, Some(ip("2001:db8::10")));
    assert_eq!(
        info,
        VxlanInfo::from(&spec("vxlan0", "2001:db8::10", link(&mut t.nl, "ua").index))
    );

    let gw = ip("fd00:244:1::");
    t.nl.replace_neighbour(vx, gw, VTEP_MAC).unwrap();
    let got: Vec<_> =
        t.nl.neighbours(Some(Family::V6), Some(vx))
            .unwrap()
            .into_iter()
            .filter(|n| n.ip == gw)
            .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].mac, got[0].state),
        (Some(VTEP_MAC), libc::NUD_PERMANENT)
    );

    let peer = ip("2001:db8::1");
    t.nl.replace_fdb(vx, VTEP_MAC, peer).unwrap();
    let got = fdb_for(&mut t.nl, vx, VTEP_MAC);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].dst, Some(peer));

    let r = onlink("fd00:244:1::/80", "fd00:244:1::", vx, 1430);
    t.nl.replace_route(&r).unwrap();
    t.nl.replace_route(&r).unwrap();
    let got = routes_to(&mut t.nl, "fd00:244:1::/80");
    assert_eq!(got.len(), 1, "{got:?}");
    let mut want = r;
    // The kernel gives IPv6 routes metric 1024 when none is asked for.
    want.priority = Some(1024);
    assert_eq!(got[0], want);

    t.nl.del_route(&r).unwrap();
    assert!(routes_to(&mut t.nl, "fd00:244:1::/80").is_empty());
    assert!(matches!(t.nl.del_route(&r), Err(Error::NotFound)));
    t.nl.del_fdb(vx, VTEP_MAC, peer).unwrap();
    assert!(matches!(
        t.nl.del_fdb(vx, VTEP_MAC, peer),
        Err(Error::NotFound)
    ));
    t.nl.del_neighbour(vx, gw).unwrap();
    assert!(matches!(t.nl.del_neighbour(vx, gw), Err(Error::NotFound)));
}
