//! The VXLAN guard against the real kernel, each test in namespaces of its own: the table as `nft` lists it, what
//! a sync commits (nothing in the steady state), repairs, removal, and real datagrams: VXLAN from a node is
//! received and not tracked, from anything else dropped and counted.

mod common;

use common::TestNs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;
use trestle_firewall::{Error, VxlanDrops, VxlanPeers};

const TABLE: &str = "trestle-vxlan";

fn v4(list: &[&str]) -> Vec<Ipv4Addr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn v6(list: &[&str]) -> Vec<Ipv6Addr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn peers(port: u16, a: &[&str], b: &[&str]) -> VxlanPeers {
    VxlanPeers {
        port,
        v4: v4(a),
        v6: v6(b),
    }
}

/// `nft list table inet trestle-vxlan` for `port` and the sets' `elements = { .. }` lines (nft sorts them).
fn listed(port: u16, elems4: &str, elems6: &str) -> String {
    let elements = |e: &str| {
        if e.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {e} }}\n")
        }
    };
    format!(
        "table inet {TABLE} {{
\tcomment \"trestle: VXLAN only between cluster nodes\"
\tset nodes4 {{
\t\ttype ipv4_addr
{}\t}}

\tset nodes6 {{
\t\ttype ipv6_addr
{}\t}}

\tchain raw-pre {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tudp dport {port} ip saddr @nodes4 notrack
\t\tudp dport {port} ip6 saddr @nodes6 notrack
\t}}

\tchain raw-out {{
\t\ttype filter hook output priority raw; policy accept;
\t\tudp dport {port} ip daddr @nodes4 notrack
\t\tudp dport {port} ip6 daddr @nodes6 notrack
\t}}

\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tudp dport {port} ip saddr != @nodes4 counter packets 0 bytes 0 drop
\t\tudp dport {port} ip6 saddr != @nodes6 counter packets 0 bytes 0 drop
\t}}
}}
",
        elements(elems4),
        elements(elems6)
    )
}

fn table_text(t: &TestNs) -> String {
    t.exec(&["nft", "list", "table", "inet", TABLE])
}

/// The elements of a set as `nft -j` lists them, sorted.
fn set_elements(t: &TestNs, set: &str) -> Vec<String> {
    let out = t.exec(&["nft", "-j", "list", "set", "inet", TABLE, set]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft json");
    let mut elems: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("set"))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().expect("plain address element").to_owned())
        .collect();
    elems.sort();
    elems
}

/// The table's handle, which changes when the table is recreated (rule handles do not: they count per table).
fn table_handle(t: &TestNs) -> u64 {
    t.ruleset_json()
        .iter()
        .filter_map(|o| o.get("table"))
        .find(|r| r["name"] == TABLE)
        .map(|r| r["handle"].as_u64().unwrap())
        .expect("the table")
}

#[test]
#[ignore = "privileged: needs root"]
fn sync_installs_the_documented_table_in_one_transaction() {
    let t = TestNs::new("vxsync");
    let mut fw = t.firewall();
    let gen = fw.generation().unwrap();
    // Unsorted and with a duplicate on purpose.
    let p = peers(
        4789,
        &["192.0.2.20", "192.0.2.3", "192.0.2.20"],
        &["2001:db8::7"],
    );
    assert!(fw.sync_vxlan_guard(&p).unwrap());
    assert_eq!(fw.generation().unwrap(), gen.wrapping_add(1), "one batch");
    assert_eq!(
        table_text(&t),
        listed(4789, "192.0.2.3, 192.0.2.20", "2001:db8::7")
    );
    assert_eq!(set_elements(&t, "nodes4"), ["192.0.2.20", "192.0.2.3"]);
    assert_eq!(set_elements(&t, "nodes6"), ["2001:db8::7"]);
    assert_eq!(
        fw.vxlan_guard().unwrap(),
        Some(peers(4789, &["192.0.2.3", "192.0.2.20"], &["2001:db8::7"]))
    );
    assert_eq!(fw.vxlan_guard_drops().unwrap(), Some(VxlanDrops::default()));
    // Not a network's masquerade table, although its name starts alike.
    assert!(fw.list().unwrap().is_empty());
}

#[test]
#[ignore = "privileged: needs root"]
fn the_same_peers_commit_nothing_and_changes_commit_once() {
    let t = TestNs::new("vxidem");
    let mut fw = t.firewall();
    let p = peers(4789, &["10.0.0.1", "10.0.0.2"], &["fd00::1"]);
    assert!(fw.sync_vxlan_guard(&p).unwrap());
    let gen = fw.generation().unwrap();
    let (text, handle) = (table_text(&t), table_handle(&t));

    // The steady state: any order, duplicates, another handle (a restarted trestled).
    let mut other = t.firewall();
    let shuffled = peers(4789, &["10.0.0.2", "10.0.0.1", "10.0.0.2"], &["fd00::1"]);
    for _ in 0..3 {
        assert!(!fw.sync_vxlan_guard(&p).unwrap());
        assert!(!other.sync_vxlan_guard(&shuffled).unwrap());
    }
    assert_eq!(fw.generation().unwrap(), gen, "no transaction");
    assert_eq!(table_text(&t), text);

    // One peer replaced, one kept, the IPv6 set emptied: one transaction, only elements change.
    let changed = peers(4789, &["10.0.0.2", "10.0.0.9"], &[]);
    assert!(fw.sync_vxlan_guard(&changed).unwrap());
    assert_eq!(fw.generation().unwrap(), gen.wrapping_add(1));
    assert_eq!(set_elements(&t, "nodes4"), ["10.0.0.2", "10.0.0.9"]);
    assert!(set_elements(&t, "nodes6").is_empty());
    assert_eq!(table_text(&t), listed(4789, "10.0.0.2, 10.0.0.9", ""));
    assert_eq!(table_handle(&t), handle, "the table was not recreated");
    assert_eq!(fw.vxlan_guard().unwrap(), Some(changed.clone()));
    assert!(!fw.sync_vxlan_guard(&changed).unwrap());

    // Only the IPv6 set changes: the IPv4 one is not flushed (its elements are equal).
    let only6 = peers(4789, &["10.0.0.2", "10.0.0.9"], &["fd00::5", "fd00::4"]);
    assert!(fw.sync_vxlan_guard(&only6).unwrap());
    assert_eq!(set_elements(&t, "nodes6"), ["fd00::4", "fd00::5"]);
    assert_eq!(fw.generation().unwrap(), gen.wrapping_add(2));

    // Everything empty is a valid guard: VXLAN from nobody.
    let none = peers(4789, &[], &[]);
    assert!(fw.sync_vxlan_guard(&none).unwrap());
    assert_eq!(table_text(&t), listed(4789, "", ""));
    assert_eq!(fw.vxlan_guard().unwrap(), Some(none.clone()));
    assert!(!fw.sync_vxlan_guard(&none).unwrap());
}

#[test]
#[ignore = "privileged: needs root"]
fn a_port_change_recreates_the_table_with_the_new_port() {
    let t = TestNs::new("vxport");
    let mut fw = t.firewall();
    assert!(fw
        .sync_vxlan_guard(&peers(4789, &["10.0.0.1"], &["fd00::1"]))
        .unwrap());
    let gen = fw.generation().unwrap();
    let handle = table_handle(&t);
    let moved = peers(8472, &["10.0.0.1", "10.0.0.3"], &["fd00::1"]);
    assert!(fw.sync_vxlan_guard(&moved).unwrap());
    assert_eq!(fw.generation().unwrap(), gen.wrapping_add(1), "one batch");
    assert_eq!(
        table_text(&t),
        listed(8472, "10.0.0.1, 10.0.0.3", "fd00::1")
    );
    assert_ne!(table_handle(&t), handle, "recreated");
    assert_eq!(fw.vxlan_guard().unwrap(), Some(moved.clone()));
    assert!(!fw.sync_vxlan_guard(&moved).unwrap());
}

#[test]
#[ignore = "privileged: needs root"]
fn remove_deletes_only_the_guard_and_is_idempotent() {
    let t = TestNs::new("vxrm");
    let mut fw = t.firewall();
    assert!(!fw.remove_vxlan_guard().unwrap(), "nothing to remove yet");
    fw.ensure("n", &["10.5.0.0/24".parse().unwrap()]).unwrap();
    t.exec(&["nft", "add", "table", "inet", "someone-else"]);
    let others = t.ruleset();
    assert!(fw
        .sync_vxlan_guard(&peers(4789, &["10.0.0.1"], &[]))
        .unwrap());
    assert!(fw.remove_vxlan_guard().unwrap());
    assert_eq!(t.ruleset(), others, "other tables untouched");
    let gen = fw.generation().unwrap();
    assert!(!fw.remove_vxlan_guard().unwrap());
    assert_eq!(fw.generation().unwrap(), gen, "nothing committed");
    assert_eq!(fw.vxlan_guard().unwrap(), None);
    assert_eq!(fw.vxlan_guard_drops().unwrap(), None);
}

#[test]
#[ignore = "privileged: needs root"]
fn hand_made_changes_are_reported_and_repaired() {
    let t = TestNs::new("vxfix");
    let mut fw = t.firewall();
    let p = peers(4789, &["10.0.0.1"], &["fd00::1"]);
    let want = listed(4789, "10.0.0.1", "fd00::1");
    let damages: [&[&str]; 5] = [
        &["flush", "chain", "inet", TABLE, "input"],
        &["delete", "chain", "inet", TABLE, "raw-out"],
        &[
            "add", "rule", "inet", TABLE, "raw-pre", "udp", "dport", "53", "notrack",
        ],
        &["add", "set", "inet", TABLE, "extra", "{ type ipv4_addr; }"],
        &["add", "chain", "inet", TABLE, "input", "{ policy drop; }"],
    ];
    for damage in damages {
        fw.sync_vxlan_guard(&p).unwrap();
        let mut cmd = vec!["nft"];
        cmd.extend_from_slice(damage);
        t.exec(&cmd);
        assert!(
            matches!(fw.vxlan_guard(), Err(Error::VxlanGuardDamaged(_))),
            "{damage:?}"
        );
        let gen = fw.generation().unwrap();
        assert!(fw.sync_vxlan_guard(&p).unwrap(), "{damage:?}");
        assert_eq!(fw.generation().unwrap(), gen.wrapping_add(1), "{damage:?}");
        assert_eq!(table_text(&t), want, "{damage:?}");
        assert_eq!(fw.vxlan_guard().unwrap(), Some(p.clone()));
    }
    // Without the drop rules the counter cannot be read.
    t.exec(&["nft", "flush", "chain", "inet", TABLE, "input"]);
    assert!(matches!(
        fw.vxlan_guard_drops(),
        Err(Error::VxlanGuardDamaged(_))
    ));
    // An element added by hand is not a damage: the next sync takes it out again.
    fw.sync_vxlan_guard(&p).unwrap();
    t.exec(&[
        "nft",
        "add",
        "element",
        "inet",
        TABLE,
        "nodes4",
        "{ 10.9.9.9 }",
    ]);
    assert_eq!(
        fw.vxlan_guard().unwrap().unwrap().v4,
        v4(&["10.0.0.1", "10.9.9.9"])
    );
    assert!(fw.sync_vxlan_guard(&p).unwrap());
    assert_eq!(set_elements(&t, "nodes4"), ["10.0.0.1"]);
}

#[test]
#[ignore = "privileged: needs root"]
fn concurrent_syncs_end_with_one_writers_peers() {
    let t = TestNs::new("vxconc");
    let lists: Vec<VxlanPeers> = (1..=8)
        .map(|i| {
            // Sorted, as vxlan_guard returns them.
            let a = format!("10.0.0.{i}");
            let b = format!("fd00::{i}");
            peers(4789, &[&a, "10.0.0.100"], &[&b])
        })
        .collect();
    let start = std::sync::Barrier::new(lists.len());
    std::thread::scope(|s| {
        for p in &lists {
            let (t, start) = (&t, &start);
            s.spawn(move || {
                let mut fw = t.firewall();
                start.wait();
                fw.sync_vxlan_guard(p).unwrap();
            });
        }
    });
    let got = t.firewall().vxlan_guard().unwrap().unwrap();
    assert!(lists.contains(&got), "{got:?}");
    assert_eq!(t.chains().len(), 3);
}

/// The guarded "node" and a "peer" namespace on a veth pair. The peer holds a node address (.2, ::2) and one
/// that is not (.3, ::3).
struct Pair {
    node: TestNs,
    peer: TestNs,
}

const PORT: u16 = 4789;

fn pair() -> Pair {
    let (node, peer) = (TestNs::new("vxnode"), TestNs::new("vxpeer"));
    node.ip(&format!(
        "link add n0 type veth peer name p0 netns {}",
        peer.name
    ));
    for (ns, dev) in [(&node, "n0"), (&peer, "p0")] {
        ns.ip(&format!("link set {dev} up"));
        ns.ip("link set lo up");
    }
    node.ip("addr add 192.168.90.1/24 dev n0");
    node.ip("addr add fd90::1/64 dev n0 nodad");
    for a in ["192.168.90.2/24", "192.168.90.3/24"] {
        peer.ip(&format!("addr add {a} dev p0"));
    }
    for a in ["fd90::2/64", "fd90::3/64"] {
        peer.ip(&format!("addr add {a} dev p0 nodad"));
    }
    // Conntrack is only active in a namespace once something uses it: this table does, and counts what
    // conntrack made of the VXLAN packets that got past the guard (and of those the node sends).
    node.exec(&[
        "nft",
        &format!(
            "table inet probe {{
               chain in {{ type filter hook input priority 10; udp dport {PORT} ct state untracked counter; udp dport {PORT} ct state new counter; }}
               chain out {{ type filter hook output priority 10; udp dport {PORT} ct state untracked counter; udp dport {PORT} ct state new counter; }}
             }}"
        ),
    ]);
    Pair { node, peer }
}

/// Packet counts of the probe chain's rules: (untracked, new).
fn probe(t: &TestNs, chain: &str) -> (u64, u64) {
    let counts: Vec<u64> = t
        .ruleset_json()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["table"] == "probe" && r["chain"] == chain)
        .map(|r| {
            let expr = r["expr"].as_array().unwrap();
            let counter = expr.iter().find_map(|e| e.get("counter")).unwrap();
            counter["packets"].as_u64().unwrap()
        })
        .collect();
    (counts[0], counts[1])
}

fn send(ns: &TestNs, from: &str, to: SocketAddr, payload: &[u8]) {
    let from: IpAddr = from.parse().unwrap();
    ns.ns
        .ns()
        .run(|| {
            let s = UdpSocket::bind((from, 0))?;
            s.send_to(payload, to).map(|_| ())
        })
        .unwrap()
        .unwrap();
}

/// The sources of the datagrams waiting on `sock`, after waiting up to 2 s for the first.
fn received(sock: &UdpSocket) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    while let Ok((_, from)) = sock.recv_from(&mut buf) {
        out.push(from.ip());
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    out
}

#[test]
#[ignore = "privileged: needs root"]
fn vxlan_from_nodes_passes_untracked_and_from_others_is_dropped_and_counted() {
    let t = pair();
    let dst4: SocketAddr = (Ipv4Addr::new(192, 168, 90, 1), PORT).into();
    let dst6: SocketAddr = ("fd90::1".parse::<Ipv6Addr>().unwrap(), PORT).into();
    let (sock4, sock6) = t
        .node
        .ns
        .ns()
        .run(|| (UdpSocket::bind(dst4), UdpSocket::bind(dst6)))
        .unwrap();
    let (sock4, sock6) = (sock4.unwrap(), sock6.unwrap());

    // Without the guard: everything arrives, tracked.
    send(&t.peer, "192.168.90.3", dst4, b"hello");
    assert_eq!(
        received(&sock4),
        ["192.168.90.3".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(probe(&t.node, "in"), (0, 1));

    let mut fw = t.node.firewall();
    fw.sync_vxlan_guard(&peers(PORT, &["192.168.90.2"], &["fd90::2"]))
        .unwrap();
    // The stranger first: had it passed, it would be received first.
    send(&t.peer, "192.168.90.3", dst4, b"hello");
    send(&t.peer, "192.168.90.2", dst4, b"hello");
    assert_eq!(
        received(&sock4),
        ["192.168.90.2".parse::<IpAddr>().unwrap()]
    );
    send(&t.peer, "fd90::3", dst6, b"hello");
    send(&t.peer, "fd90::2", dst6, b"hello");
    assert_eq!(received(&sock6), ["fd90::2".parse::<IpAddr>().unwrap()]);
    // IPv4: 20 + 8 + 5 bytes, IPv6: 40 + 8 + 5.
    let drops = VxlanDrops {
        packets: 2,
        bytes: 33 + 53,
    };
    assert_eq!(fw.vxlan_guard_drops().unwrap(), Some(drops));
    // The node's datagrams passed conntrack untracked: one more "new" (the first, unguarded one) there is not.
    assert_eq!(probe(&t.node, "in"), (2, 1));

    // Sent by the node: untracked to a node, tracked to anything else.
    let to = |a: &str| SocketAddr::new(a.parse().unwrap(), PORT);
    send(&t.node, "192.168.90.1", to("192.168.90.2"), b"out");
    send(&t.node, "fd90::1", to("fd90::2"), b"out");
    send(&t.node, "192.168.90.1", to("192.168.90.3"), b"out");
    assert_eq!(probe(&t.node, "out"), (2, 1));

    // An element change keeps the counter; the stranger, now a node, passes.
    fw.sync_vxlan_guard(&peers(
        PORT,
        &["192.168.90.2", "192.168.90.3"],
        &["fd90::2"],
    ))
    .unwrap();
    assert_eq!(fw.vxlan_guard_drops().unwrap(), Some(drops));
    send(&t.peer, "192.168.90.3", dst4, b"hello");
    assert_eq!(
        received(&sock4),
        ["192.168.90.3".parse::<IpAddr>().unwrap()]
    );

    // A port change recreates the table: its counter starts from zero.
    fw.sync_vxlan_guard(&peers(PORT + 1, &["192.168.90.2"], &["fd90::2"]))
        .unwrap();
    assert_eq!(fw.vxlan_guard_drops().unwrap(), Some(VxlanDrops::default()));

    // Without the guard, strangers get through again.
    assert!(fw.remove_vxlan_guard().unwrap());
    send(&t.peer, "fd90::3", dst6, b"hello");
    assert_eq!(received(&sock6), ["fd90::3".parse::<IpAddr>().unwrap()]);
}
