//! Routes against the real kernel (privileged).

mod common;

use common::{in_ns, local_veth, test_ns};
use ipnet::IpNet;
use trestle_netlink::{Error, Family, Netlink, Route};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn find(nl: &mut Netlink, dst: &str, table: u32) -> Option<Route> {
    nl.routes(None)
        .unwrap()
        .into_iter()
        .find(|r| r.dst == net(dst) && r.table == table)
}

fn via(dst: &str, gw: &str, oif: Option<u32>) -> Route {
    let mut r = Route::new(net(dst));
    r.gateway = Some(gw.parse().unwrap());
    r.oif = oif;
    r
}

#[test]
#[ignore = "privileged: needs root"]
fn kernel_routes_are_listed() {
    let mut t = test_ns();
    let (a, _) = local_veth(&mut t, "va", "vb");
    t.nl.add_address(a, net("10.0.0.2/24"), false).unwrap();

    let connected = find(&mut t.nl, "10.0.0.0/24", 254).expect("connected route");
    assert_eq!(
        (
            connected.oif,
            connected.scope,
            connected.protocol,
            connected.kind
        ),
        (Some(a), 253, 2, 1)
    );
    let local = find(&mut t.nl, "10.0.0.2/32", 255).expect("local route");
    assert_eq!(local.kind, 2, "local table entry has type local");
    // The kernel adds the link-local prefix route once the link has carrier, which the linkwatch worker reports
    // asynchronously (up to a second later on a loaded machine): poll for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let v6 = loop {
        let v6 = t.nl.routes(Some(Family::V6)).unwrap();
        let found = v6
            .iter()
            .any(|r| r.dst == net("fe80::/64") && r.oif == Some(a));
        if found || std::time::Instant::now() > deadline {
            break v6;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(v6.iter().all(|r| r.family() == Family::V6));
    assert!(v6
        .iter()
        .any(|r| r.dst == net("fe80::/64") && r.oif == Some(a)));
    assert!(t
        .nl
        .routes(Some(Family::V4))
        .unwrap()
        .iter()
        .all(|r| r.family() == Family::V4));
}

#[test]
#[ignore = "privileged: needs root"]
fn gateway_routes() {
    let mut t = test_ns();
    let (a, _) = local_veth(&mut t, "va", "vb");
    t.nl.add_address(a, net("10.0.0.2/24"), false).unwrap();

    let subnet = via("10.9.0.0/16", "10.0.0.1", None);
    t.nl.add_route(&subnet).unwrap();
    assert!(matches!(t.nl.add_route(&subnet), Err(Error::Exists)));
    let listed = find(&mut t.nl, "10.9.0.0/16", 254).expect("listed");
    assert_eq!(
        (listed.gateway, listed.oif, listed.protocol, listed.scope),
        (subnet.gateway, Some(a), 3, 0)
    );

    // A /32 host route through the gateway.
    t.nl.add_route(&via("10.8.8.8/32", "10.0.0.1", Some(a)))
        .unwrap();
    assert!(in_ns(&t.ns, "ip", &["route", "show"]).contains("10.8.8.8 via 10.0.0.1 dev va"));

    // A gateway outside every subnet, reached by a link-scope /32 first (as
    // the reference bridge plugin does for its gateway).
    let mut gw_host = Route::new(net("192.168.99.1/32"));
    gw_host.oif = Some(a);
    gw_host.scope = 253;
    t.nl.add_route(&gw_host).unwrap();
    t.nl.add_route(&via("172.16.0.0/12", "192.168.99.1", Some(a)))
        .unwrap();
    assert_eq!(find(&mut t.nl, "192.168.99.1/32", 254).unwrap().scope, 253);

    let default = via("0.0.0.0/0", "10.0.0.1", None);
    t.nl.add_route(&default).unwrap();
    assert!(
        in_ns(&t.ns, "ip", &["route", "show", "default"]).contains("default via 10.0.0.1 dev va")
    );

    let unreachable =
        t.nl.add_route(&via("10.5.0.0/16", "10.99.0.1", None))
            .unwrap_err();
    assert_eq!(
        unreachable.errno(),
        Some(libc::ENETUNREACH),
        "{unreachable}"
    );

    for r in [
        &default,
        &subnet,
        &via("172.16.0.0/12", "192.168.99.1", Some(a)),
        &gw_host,
    ] {
        t.nl.del_route(r).unwrap();
        assert!(
            find(&mut t.nl, &r.dst.to_string(), 254).is_none(),
            "{r:?} still listed"
        );
        assert!(matches!(t.nl.del_route(r), Err(Error::NotFound)), "{r:?}");
    }
    // Deleting needs no scope or protocol: a plain description matches.
    t.nl.del_route(&Route::new(net("10.8.8.8/32"))).unwrap();
}

#[test]
#[ignore = "privileged: needs root"]
fn metrics_table_priority_and_scope() {
    let mut t = test_ns();
    let (a, _) = local_veth(&mut t, "va", "vb");
    t.nl.add_address(a, net("10.0.0.2/24"), false).unwrap();

    let mut r = via("10.20.0.0/16", "10.0.0.1", Some(a));
    r.table = 100;
    r.priority = Some(50);
    r.mtu = Some(1400);
    r.advmss = Some(1360);
    t.nl.add_route(&r).unwrap();
    assert_eq!(find(&mut t.nl, "10.20.0.0/16", 100), Some(r));
    let shown = in_ns(&t.ns, "ip", &["route", "show", "table", "100"]);
    assert!(
        shown.contains("metric 50") && shown.contains("mtu 1400") && shown.contains("advmss 1360"),
        "{shown}"
    );
    assert!(find(&mut t.nl, "10.20.0.0/16", 254).is_none());

    // The same prefix with another metric is another route.
    let mut r2 = r;
    r2.priority = Some(60);
    r2.mtu = None;
    r2.advmss = None;
    t.nl.add_route(&r2).unwrap();
    t.nl.del_route(&r).unwrap();
    assert_eq!(find(&mut t.nl, "10.20.0.0/16", 100), Some(r2));

    // Tables above 255 only fit RTA_TABLE.
    let mut big = Route::new(net("10.30.0.0/16"));
    big.oif = Some(a);
    big.scope = 253;
    big.table = 1000;
    t.nl.add_route(&big).unwrap();
    assert_eq!(find(&mut t.nl, "10.30.0.0/16", 1000), Some(big));
    assert!(in_ns(&t.ns, "ip", &["route", "show", "table", "1000"])
        .contains("10.30.0.0/16 dev va scope link"));
    t.nl.del_route(&big).unwrap();
    assert!(find(&mut t.nl, "10.30.0.0/16", 1000).is_none());
}

#[test]
#[ignore = "privileged: needs root"]
fn ipv6_routes() {
    let mut t = test_ns();
    let (a, _) = local_veth(&mut t, "va", "vb");
    t.nl.add_address(a, net("2001:db8::2/64"), true).unwrap();

    let r = via("2001:db8:9::/48", "2001:db8::1", None);
    t.nl.add_route(&r).unwrap();
    assert!(matches!(t.nl.add_route(&r), Err(Error::Exists)));
    let listed = find(&mut t.nl, "2001:db8:9::/48", 254).expect("listed");
    assert_eq!((listed.gateway, listed.oif), (r.gateway, Some(a)));
    // The kernel gives IPv6 routes metric 1024 when none is asked for.
    assert_eq!(listed.priority, Some(1024));

    let default = via("::/0", "fe80::1", Some(a));
    t.nl.add_route(&default).unwrap();
    assert!(in_ns(&t.ns, "ip", &["-6", "route", "show", "default"])
        .contains("default via fe80::1 dev va"));

    t.nl.del_route(&r).unwrap();
    t.nl.del_route(&default).unwrap();
    assert!(find(&mut t.nl, "2001:db8:9::/48", 254).is_none());
    assert!(find(&mut t.nl, "::/0", 254).is_none());
    assert!(matches!(t.nl.del_route(&r), Err(Error::NotFound)));
}
