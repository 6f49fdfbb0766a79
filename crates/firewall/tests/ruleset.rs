//! Privileged tests of the ruleset the firewall writes, each in a namespace of its own.

mod common;

use common::TestNs;
use ipnet::IpNet;
use std::net::IpAddr;
use trestle_firewall::{network_id, Attachment, Error};

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
#[ignore = "privileged: needs root"]
fn add_writes_table_sets_chains_and_rules() {
    let t = TestNs::new("add");
    let mut fw = t.firewall();
    let att = Attachment::new("c0ffee", "eth0");
    fw.add_pod("mynet", &att, &nets(&["10.88.0.5/16", "fd88::5/64"]))
        .unwrap();

    let table = format!("trestle-{}", network_id("mynet"));
    let text = t.ruleset();
    assert!(text.contains(&format!("table inet {table} {{")), "{text}");
    assert!(text.contains("comment \"mynet\""), "{text}");
    for (chain, rule) in [
        (
            "masq-10.88.0.0/16",
            "ip saddr @pods4 ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 masquerade comment \"trestle mynet 10.88.0.0/16\"",
        ),
        (
            "masq-fd88__/64",
            "ip6 saddr @pods6 ip6 saddr fd88::/64 ip6 daddr != fd88::/64 ip6 daddr != ff00::/8 masquerade comment \"trestle mynet fd88::/64\"",
        ),
    ] {
        let block = text.split(&format!("chain {chain} {{")).nth(1).unwrap_or_else(|| panic!("{chain}: {text}"));
        let block = block.split('}').next().unwrap();
        assert!(block.contains("type nat hook postrouting priority srcnat; policy accept;"), "{block}");
        assert!(block.contains(rule), "{block}");
        assert_eq!(block.matches("masquerade").count(), 1, "{block}");
    }
    assert_eq!(
        t.elements(&table, "pods4"),
        [("10.88.0.5".to_owned(), "c0ffee/eth0".to_owned())]
    );
    assert_eq!(
        t.elements(&table, "pods6"),
        [("fd88::5".to_owned(), "c0ffee/eth0".to_owned())]
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn add_is_idempotent_and_check_follows_the_pod() {
    let t = TestNs::new("idem");
    let mut fw = t.firewall();
    let att = Attachment::new("idem", "eth0");
    let addrs = nets(&["10.1.0.2/24", "fd01::2/64"]);
    fw.add_pod("n", &att, &addrs).unwrap();
    let once = t.ruleset();
    fw.add_pod("n", &att, &addrs).unwrap();
    assert_eq!(t.ruleset(), once);
    fw.check_pod("n", &att, &ips(&["10.1.0.2", "fd01::2"]))
        .unwrap();

    let other = Attachment::new("idem", "eth1");
    match fw.check_pod("n", &other, &ips(&["10.1.0.2"])) {
        Err(Error::Missing { addr, .. }) => assert_eq!(addr, "10.1.0.2".parse::<IpAddr>().unwrap()),
        r => panic!("expected Missing, got {r:?}"),
    }
    assert!(matches!(
        fw.check_pod("n", &att, &ips(&["10.1.0.3"])),
        Err(Error::Missing { .. })
    ));
    assert!(matches!(
        fw.check_pod("other-net", &att, &ips(&["10.1.0.2"])),
        Err(Error::Missing { .. })
    ));

    let mut removed = fw.remove_pod("n", &att).unwrap();
    removed.sort();
    assert_eq!(removed, ips(&["10.1.0.2", "fd01::2"]));
    assert!(fw.remove_pod("n", &att).unwrap().is_empty());
    assert!(fw.remove_pod("never-existed", &att).unwrap().is_empty());
    assert!(matches!(
        fw.check_pod("n", &att, &ips(&["10.1.0.2"])),
        Err(Error::Missing { .. })
    ));
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}

#[test]
#[ignore = "privileged: needs root"]
fn removal_prunes_subnets_and_leaves_nothing_behind() {
    let t = TestNs::new("prune");
    let mut fw = t.firewall();
    let (a, b, c) = (
        Attachment::new("a", "eth0"),
        Attachment::new("b", "eth0"),
        Attachment::new("c", "net1"),
    );
    fw.add_pod("blue", &a, &nets(&["10.2.0.2/24", "fd02::2/64"]))
        .unwrap();
    fw.add_pod("blue", &b, &nets(&["10.2.1.2/24"])).unwrap();
    fw.add_pod("green", &c, &nets(&["10.3.0.2/24"])).unwrap();
    let blue = format!("trestle-{}", network_id("blue"));
    assert!(t.ruleset().contains("chain masq-10.2.1.0/24"));

    // b was the only pod of 10.2.1.0/24: its chain goes, the rest of blue stays.
    assert_eq!(fw.remove_pod("blue", &b).unwrap(), ips(&["10.2.1.2"]));
    let text = t.ruleset();
    assert!(!text.contains("masq-10.2.1.0/24"), "{text}");
    assert!(
        text.contains("chain masq-10.2.0.0/24") && text.contains("chain masq-fd02__/64"),
        "{text}"
    );
    assert_eq!(
        t.elements(&blue, "pods4"),
        [("10.2.0.2".to_owned(), "a/eth0".to_owned())]
    );

    fw.remove_pod("blue", &a).unwrap();
    let text = t.ruleset();
    assert!(!text.contains(&blue), "{text}");
    assert!(
        text.contains(&format!("trestle-{}", network_id("green"))),
        "{text}"
    );
    fw.remove_pod("green", &c).unwrap();
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}

#[test]
#[ignore = "privileged: needs root"]
fn reused_address_is_taken_over_by_the_new_pod() {
    let t = TestNs::new("reuse");
    let mut fw = t.firewall();
    let (old, new) = (
        Attachment::new("old", "eth0"),
        Attachment::new("new", "eth0"),
    );
    fw.add_pod("n", &old, &nets(&["10.4.0.9/24"])).unwrap();
    fw.add_pod("n", &new, &nets(&["10.4.0.9/24"])).unwrap();
    let table = format!("trestle-{}", network_id("n"));
    assert_eq!(
        t.elements(&table, "pods4"),
        [("10.4.0.9".to_owned(), "new/eth0".to_owned())]
    );
    // The stale owner's DEL must not take the address away from the new pod.
    assert!(fw.remove_pod("n", &old).unwrap().is_empty());
    fw.check_pod("n", &new, &ips(&["10.4.0.9"])).unwrap();
    assert_eq!(fw.remove_pod("n", &new).unwrap(), ips(&["10.4.0.9"]));
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}

#[test]
#[ignore = "privileged: needs root"]
fn gc_removes_attachments_not_in_the_valid_list() {
    let t = TestNs::new("gc");
    let mut fw = t.firewall();
    let atts: Vec<Attachment> = (0..4)
        .map(|i| Attachment::new(format!("gc{i}"), "eth0"))
        .collect();
    for (i, att) in atts.iter().enumerate() {
        fw.add_pod(
            "n",
            att,
            &nets(&[
                &format!("10.5.0.{}/24", i + 2),
                &format!("fd05::{}/64", i + 2),
            ]),
        )
        .unwrap();
    }
    fw.add_pod("other", &atts[0], &nets(&["10.6.0.2/24"]))
        .unwrap();

    let mut removed = fw.gc("n", &atts[1..3]).unwrap();
    removed.sort();
    let expected: Vec<(Attachment, IpAddr)> = [
        (0, "10.5.0.2"),
        (0, "fd05::2"),
        (3, "10.5.0.5"),
        (3, "fd05::5"),
    ]
    .iter()
    .map(|(i, a)| (atts[*i].clone(), a.parse().unwrap()))
    .collect();
    assert_eq!(removed, expected);
    let table = format!("trestle-{}", network_id("n"));
    assert_eq!(
        t.elements(&table, "pods4"),
        [
            ("10.5.0.3".to_owned(), "gc1/eth0".to_owned()),
            ("10.5.0.4".to_owned(), "gc2/eth0".to_owned())
        ]
    );
    // GC is per network: the other network's pod is untouched.
    fw.check_pod("other", &atts[0], &ips(&["10.6.0.2"]))
        .unwrap();
    assert!(fw.gc("n", &atts[1..3]).unwrap().is_empty());

    assert_eq!(fw.gc("n", &[]).unwrap().len(), 4);
    assert!(!t.ruleset().contains(&table));
    fw.gc("other", &[]).unwrap();
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}

#[test]
#[ignore = "privileged: needs root"]
fn list_reports_every_network() {
    let t = TestNs::new("list");
    let mut fw = t.firewall();
    fw.add_pod(
        "alpha",
        &Attachment::new("x", "eth0"),
        &nets(&["10.7.0.2/24", "fd07::2/64"]),
    )
    .unwrap();
    fw.add_pod(
        "beta",
        &Attachment::new("y", "eth1"),
        &nets(&["10.8.0.2/16"]),
    )
    .unwrap();
    // A foreign table is not reported.
    t.exec(&["nft", "add", "table", "inet", "someone-else"]);
    let mut got: Vec<String> = fw
        .list()
        .unwrap()
        .into_iter()
        .map(|e| {
            format!(
                "{} {} {} {} {}",
                e.network_id,
                e.network.unwrap_or_default(),
                e.attachment.map(|a| a.to_string()).unwrap_or_default(),
                e.addr,
                e.subnet.map(|s| s.to_string()).unwrap_or_default()
            )
        })
        .collect();
    got.sort();
    let (a, b) = (network_id("alpha"), network_id("beta"));
    let mut want = vec![
        format!("{a} alpha x/eth0 10.7.0.2 10.7.0.0/24"),
        format!("{a} alpha x/eth0 fd07::2 fd07::/64"),
        format!("{b} beta y/eth1 10.8.0.2 10.8.0.0/16"),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
#[ignore = "privileged: needs root"]
fn check_detects_a_deleted_chain() {
    let t = TestNs::new("drift");
    let mut fw = t.firewall();
    let att = Attachment::new("d", "eth0");
    fw.add_pod("n", &att, &nets(&["10.9.0.2/24"])).unwrap();
    let table = format!("trestle-{}", network_id("n"));
    t.exec(&["nft", "delete", "chain", "inet", &table, "masq-10.9.0.0/24"]);
    assert!(matches!(
        fw.check_pod("n", &att, &ips(&["10.9.0.2"])),
        Err(Error::Missing { .. })
    ));
    // ADD repairs it.
    fw.add_pod("n", &att, &nets(&["10.9.0.2/24"])).unwrap();
    fw.check_pod("n", &att, &ips(&["10.9.0.2"])).unwrap();
}

#[test]
#[ignore = "privileged: needs root"]
fn invalid_attachment_is_rejected_before_any_change() {
    let t = TestNs::new("inval");
    let mut fw = t.firewall();
    let bad = Attachment::new("x".repeat(300), "eth0");
    assert!(matches!(
        fw.add_pod("n", &bad, &nets(&["10.10.0.2/24"])),
        Err(Error::InvalidAttachment(..))
    ));
    assert!(t.ruleset_json().is_empty());
}
