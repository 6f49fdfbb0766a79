//! Change notifications against the real kernel (privileged): a monitor opened inside a test namespace sees what
//! another socket changes there. Every wait is bounded.

mod common;

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{link, local_veth, test_ns, TestNs};
use ipnet::IpNet;
use trestle_netlink::{Event, Monitor, Route, VxlanSpec};

/// How long a test waits for one expected event.
const WAIT: Duration = Duration::from_secs(5);

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn monitor(t: &TestNs) -> Monitor {
    t.ns.run(Monitor::open)
        .expect("enter netns")
        .expect("open monitor")
}

/// Reads events until one satisfies `wanted`, for at most [`WAIT`]; fails the test with what came instead.
fn wait_for(mon: &mut Monitor, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match mon.recv_timeout(left).unwrap() {
            Some(e) if wanted(&e) => return e,
            Some(e) => seen.push(e),
            None => panic!("no {what} within {WAIT:?}; saw {seen:#?}"),
        }
    }
}

/// Everything that arrives until the monitor has been quiet for `quiet`.
fn drain(mon: &mut Monitor, quiet: Duration) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(e) = mon.recv_timeout(quiet).unwrap() {
        seen.push(e);
        assert!(Instant::now() < deadline, "never quiet: {seen:#?}");
    }
    seen
}

/// Every event up to and including the first that satisfies `last`, for at most [`WAIT`].
fn drain_until(mon: &mut Monitor, last: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = mon.recv_timeout(left).unwrap();
        let done = e.as_ref().is_none_or(&last);
        seen.extend(e);
        if done {
            assert!(seen.last().is_some_and(&last), "timed out; saw {seen:#?}");
            return seen;
        }
    }
}

fn is_route(e: &Event, dst: &str, deleted: bool) -> bool {
    matches!(e, Event::Route { route, deleted: d } if route.dst == net(dst) && *d == deleted)
}

fn is_link(e: &Event, index: u32, up: bool) -> bool {
    matches!(e, Event::Link { link, deleted: false } if link.index == index && link.up == up)
}

#[test]
#[ignore = "privileged: needs root"]
fn sees_routes_links_addresses_and_neighbours() {
    let mut t = test_ns();
    let mut mon = monitor(&t);
    let (a, _) = local_veth(&mut t, "va", "vb");
    wait_for(&mut mon, "va up", |e| is_link(e, a, true));

    t.nl.add_address(a, net("10.0.0.2/24"), false).unwrap();
    let e = wait_for(
        &mut mon,
        "address",
        |e| matches!(e, Event::Address { address, .. } if address.address == net("10.0.0.2/24")),
    );
    assert!(
        matches!(e, Event::Address { address, deleted: false } if address.index == a),
        "{e:?}"
    );

    let mut r = Route::new(net("10.9.0.0/16"));
    r.gateway = Some("10.0.0.1".parse().unwrap());
    r.oif = Some(a);
    r.protocol = 0x54;
    t.nl.add_route(&r).unwrap();
    let e = wait_for(&mut mon, "route add", |e| is_route(e, "10.9.0.0/16", false));
    let Event::Route { route, .. } = e else {
        unreachable!()
    };
    assert_eq!(route, r);
    t.nl.del_route(&r).unwrap();
    wait_for(&mut mon, "route delete", |e| {
        is_route(e, "10.9.0.0/16", true)
    });

    let peer = "10.0.0.7".parse().unwrap();
    t.nl.replace_neighbour(a, peer, [2, 0, 0, 0, 0, 7]).unwrap();
    let e = wait_for(
        &mut mon,
        "neighbour",
        |e| matches!(e, Event::Neighbour { neighbour, .. } if neighbour.ip == peer),
    );
    assert!(
        matches!(e, Event::Neighbour { neighbour, deleted: false }
            if neighbour.mac == Some([2, 0, 0, 0, 0, 7]) && neighbour.state == libc::NUD_PERMANENT),
        "{e:?}"
    );
    t.nl.del_neighbour(a, peer).unwrap();
    wait_for(
        &mut mon,
        "neighbour delete",
        |e| matches!(e, Event::Neighbour { neighbour, deleted: true } if neighbour.ip == peer),
    );

    t.nl.set_up(a, false).unwrap();
    wait_for(&mut mon, "va down", |e| is_link(e, a, false));
    t.nl.set_up(a, true).unwrap();
    wait_for(&mut mon, "va up again", |e| is_link(e, a, true));

    let b = link(&mut t.nl, "vb").index;
    t.nl.delete_link(a).unwrap();
    for index in [a, b] {
        wait_for(
            &mut mon,
            "link delete",
            |e| matches!(e, Event::Link { link, deleted: true } if link.index == index),
        );
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn sees_fdb_entries_and_not_bridge_port_views() {
    let mut t = test_ns();
    let (a, _) = local_veth(&mut t, "va", "vb");
    t.nl.add_address(a, net("192.0.2.10/24"), false).unwrap();
    let vx =
        t.nl.create_vxlan(&VxlanSpec {
            name: "vxlan0".into(),
            vni: 42,
            port: 4789,
            local: Some("192.0.2.10".parse().unwrap()),
            underlay: Some(a),
            ..VxlanSpec::default()
        })
        .unwrap();
    t.nl.create_bridge("br0", None, false).unwrap();
    let br = link(&mut t.nl, "br0").index;
    let mut mon = monitor(&t);

    let (mac, dst) = ([2, 0, 0, 0, 1, 1], "192.0.2.1".parse().unwrap());
    t.nl.replace_fdb(vx, mac, dst).unwrap();
    let e = wait_for(&mut mon, "fdb entry", |e| matches!(e, Event::Fdb { .. }));
    assert!(
        matches!(e, Event::Fdb { entry, deleted: false }
            if entry.index == vx && entry.mac == mac && entry.dst == Some(dst)),
        "{e:?}"
    );
    t.nl.del_fdb(vx, mac, dst).unwrap();
    wait_for(
        &mut mon,
        "fdb delete",
        |e| matches!(e, Event::Fdb { entry, deleted: true } if entry.mac == mac),
    );

    // Leaving a bridge makes the kernel send an AF_BRIDGE RTM_DELLINK for the port: not a deletion.
    t.nl.set_master(vx, Some(br)).unwrap();
    t.nl.set_master(vx, None).unwrap();
    t.nl.set_up(br, true).unwrap();
    let seen = drain_until(&mut mon, |e| is_link(e, br, true));
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Link { deleted: true, .. })),
        "{seen:#?}"
    );
    assert!(seen.contains(&Event::Other {
        message_type: libc::RTM_DELLINK
    }));
}

#[test]
#[ignore = "privileged: needs root"]
fn link_down_drops_ipv4_routes_without_a_route_event() {
    // What the documentation of Event::Link warns about: a controller must read the routes again itself.
    let mut t = test_ns();
    let (a, _) = local_veth(&mut t, "va", "vb");
    t.nl.add_address(a, net("10.0.0.2/24"), false).unwrap();
    let mut r = Route::new(net("10.9.0.0/16"));
    r.gateway = Some("10.0.0.1".parse().unwrap());
    t.nl.add_route(&r).unwrap();
    let mut mon = monitor(&t);

    t.nl.set_up(a, false).unwrap();
    wait_for(&mut mon, "va down", |e| is_link(e, a, false));
    let after = drain(&mut mon, Duration::from_millis(200));
    assert!(
        !after.iter().any(|e| is_route(e, "10.9.0.0/16", true)),
        "{after:#?}"
    );
    assert!(
        !t.nl.routes(None).unwrap().iter().any(|x| x.dst == r.dst),
        "the route went with the link"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn overrun_is_reported_and_events_resume() {
    let mut t = test_ns();
    let (a, _) = local_veth(&mut t, "va", "vb");
    let mut mon = monitor(&t);
    // The smallest buffer the kernel allows holds a handful of notifications.
    mon.set_receive_buffer(1).unwrap();
    for i in 0..200u32 {
        let mut r = Route::new(net(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)));
        r.oif = Some(a);
        r.scope = 253;
        t.nl.add_route(&r).unwrap();
    }
    let seen = drain(&mut mon, Duration::from_millis(100));
    assert!(seen.contains(&Event::Overrun), "{seen:#?}");
    assert!(seen.len() < 200, "nothing was lost? {}", seen.len());

    t.nl.set_up(a, false).unwrap();
    wait_for(&mut mon, "va down after the overrun", |e| {
        is_link(e, a, false)
    });
}

#[test]
#[ignore = "privileged: needs root"]
fn blocking_recv_on_a_dedicated_thread() {
    let mut t = test_ns();
    let mut mon = monitor(&t);
    let (tx, rx) = mpsc::channel();
    // The thread blocks in recv until the bridge appears; the test itself waits a bounded time for its report
    // (a thread still blocked at the end dies with the test process).
    std::thread::spawn(move || loop {
        let event = mon.recv().unwrap();
        if matches!(&event, Event::Link { link, .. } if link.name == "br-mon") {
            tx.send(event).unwrap();
            return;
        }
    });
    t.nl.create_bridge("br-mon", None, false).unwrap();
    let event = rx.recv_timeout(WAIT).expect("thread saw the bridge");
    assert!(
        matches!(&event, Event::Link { link, deleted: false } if link.kind.as_deref() == Some("bridge")),
        "{event:?}"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn quiet_timeout_and_close_on_exec() {
    let t = test_ns();
    let mut mon = monitor(&t);
    let start = Instant::now();
    assert_eq!(mon.recv_timeout(Duration::from_millis(100)).unwrap(), None);
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(mon.recv_timeout(Duration::ZERO).unwrap(), None);

    // O_CLOEXEC (02000000 octal) in the descriptor's flags.
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", mon.as_raw_fd())).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & 0o2_000_000, 0, "{fdinfo}");
}
