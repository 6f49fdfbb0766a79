//! Privileged tests of the ruleset the firewall writes, each in a namespace of its own.

mod common;

use common::TestNs;
use ipnet::IpNet;
use trestle_firewall::{network_id, BackendKind, Error, MasqEntry};

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn table(network: &str) -> String {
    format!("trestle-{}", network_id(network))
}

#[test]
#[ignore = "privileged: needs root"]
fn ensure_writes_exactly_one_rule_per_subnet() {
    let t = TestNs::new("exact");
    let mut fw = t.firewall();
    // Host bits and a duplicate are given on purpose.
    fw.ensure(
        "mynet",
        &nets(&["10.88.0.5/16", "fd88::5/64", "10.89.0.0/24", "10.88.1.1/16"]),
    )
    .unwrap();
    let tb = table("mynet");
    let want = format!(
        "table inet {tb} {{
\tcomment \"mynet\"
\tchain masq-10.88.0.0/16 {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 masquerade comment \"trestle mynet 10.88.0.0/16\"
\t}}

\tchain masq-10.89.0.0/24 {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.89.0.0/24 ip daddr != 10.89.0.0/24 ip daddr != 224.0.0.0/4 masquerade comment \"trestle mynet 10.89.0.0/24\"
\t}}

\tchain masq-fd88__/64 {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip6 saddr fd88::/64 ip6 daddr != fd88::/64 ip6 daddr != ff00::/8 masquerade comment \"trestle mynet fd88::/64\"
\t}}
}}
"
    );
    assert_eq!(t.ruleset(), want);
    let chains: Vec<String> = t.chains().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        chains,
        ["masq-10.88.0.0/16", "masq-10.89.0.0/24", "masq-fd88__/64"]
    );
    assert_eq!(
        t.rule_comments(&tb, "masq-fd88__/64"),
        ["trestle mynet fd88::/64"]
    );
    fw.check(
        "mynet",
        &nets(&["10.88.7.7/16", "fd88::/64", "10.89.0.0/24"]),
    )
    .unwrap();
}

#[test]
#[ignore = "privileged: needs root"]
fn second_ensure_commits_nothing() {
    let t = TestNs::new("idem");
    let mut fw = t.firewall();
    let subnets = nets(&["10.1.0.2/24", "fd01::2/64"]);
    let before = fw.generation().unwrap();
    fw.ensure("n", &subnets).unwrap();
    let once = t.ruleset();
    let after_first = fw.generation().unwrap();
    assert_eq!(after_first, before.wrapping_add(1), "one transaction");

    // The steady state: every pod ADD after the first. Another handle, as another plugin process would have.
    let mut other = t.firewall();
    for _ in 0..3 {
        other.ensure("n", &subnets).unwrap();
        fw.ensure("n", &subnets[..1]).unwrap();
    }
    assert_eq!(fw.generation().unwrap(), after_first, "no transaction");
    assert_eq!(t.ruleset(), once);

    // A new subnet costs one transaction and adds only its chain.
    fw.ensure("n", &nets(&["10.1.0.9/24", "10.2.0.2/24"]))
        .unwrap();
    assert_eq!(fw.generation().unwrap(), after_first.wrapping_add(1));
    let tb = table("n");
    for chain in ["masq-10.1.0.0/24", "masq-10.2.0.0/24", "masq-fd01__/64"] {
        assert_eq!(t.rule_comments(&tb, chain).len(), 1, "{chain}");
    }
    assert_eq!(t.chains().len(), 3);
    fw.ensure("n", &[]).unwrap();
    assert_eq!(fw.generation().unwrap(), after_first.wrapping_add(1));
}

#[test]
#[ignore = "privileged: needs root"]
fn remove_if_unused_keeps_in_use_tables_and_deletes_unused_ones() {
    let t = TestNs::new("rm");
    let mut fw = t.firewall();
    fw.ensure("blue", &nets(&["10.2.0.0/24", "fd02::/64"]))
        .unwrap();
    fw.ensure("green", &nets(&["10.3.0.0/24"])).unwrap();
    let gen = fw.generation().unwrap();

    let mut asked = 0;
    let in_use = || {
        asked += 1;
        true
    };
    assert!(!fw.remove_if_unused("blue", in_use).unwrap());
    assert_eq!(asked, 1);
    assert_eq!(fw.generation().unwrap(), gen, "kept without a transaction");
    fw.check("blue", &nets(&["10.2.0.0/24", "fd02::/64"]))
        .unwrap();

    assert!(fw.remove_if_unused("blue", || false).unwrap());
    let text = t.ruleset();
    assert!(!text.contains(&table("blue")), "{text}");
    assert!(text.contains(&table("green")), "{text}");
    assert!(matches!(
        fw.check("blue", &nets(&["10.2.0.0/24"])),
        Err(Error::Missing { .. })
    ));
    // No table: nothing to decide, so `in_use` is not asked.
    assert!(!fw
        .remove_if_unused("blue", || panic!("in_use called without a table"))
        .unwrap());

    assert!(fw.remove_if_unused("green", || false).unwrap());
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}

#[test]
#[ignore = "privileged: needs root"]
fn remove_deletes_the_table_and_tolerates_a_missing_one() {
    let t = TestNs::new("gc");
    let mut fw = t.firewall();
    assert!(!fw.remove("never-existed").unwrap());
    fw.ensure("n", &nets(&["10.5.0.0/24", "fd05::/64"]))
        .unwrap();
    fw.ensure("other", &nets(&["10.6.0.0/24"])).unwrap();
    assert!(fw.remove("n").unwrap());
    assert!(!fw.remove("n").unwrap());
    fw.check("other", &nets(&["10.6.0.0/24"])).unwrap();
    assert!(fw.remove("other").unwrap());
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}

#[test]
#[ignore = "privileged: needs root"]
fn check_reports_the_first_missing_subnet() {
    let t = TestNs::new("check");
    let mut fw = t.firewall();
    fw.ensure("n", &nets(&["10.9.0.0/24", "fd09::/64"]))
        .unwrap();
    fw.check("n", &nets(&["10.9.0.2/24", "fd09::2/64"]))
        .unwrap();
    match fw.check("n", &nets(&["10.9.0.2/24", "10.9.1.2/24"])) {
        Err(Error::Missing { network, subnet }) => {
            assert_eq!(
                (network.as_str(), subnet),
                ("n", "10.9.1.0/24".parse().unwrap())
            );
        }
        r => panic!("expected Missing, got {r:?}"),
    }
    // Same prefix, another length: another subnet.
    assert!(matches!(
        fw.check("n", &nets(&["10.9.0.0/16"])),
        Err(Error::Missing { .. })
    ));
    assert!(matches!(
        fw.check("other-net", &nets(&["10.9.0.0/24"])),
        Err(Error::Missing { .. })
    ));
}

#[test]
#[ignore = "privileged: needs root"]
fn check_catches_a_flushed_chain_that_ensure_does_not_look_into() {
    let t = TestNs::new("flush");
    let mut fw = t.firewall();
    let subnets = nets(&["10.9.0.0/24"]);
    fw.ensure("n", &subnets).unwrap();
    let tb = table("n");
    t.exec(&["nft", "flush", "chain", "inet", &tb, "masq-10.9.0.0/24"]);
    assert!(matches!(
        fw.check("n", &subnets),
        Err(Error::Missing { .. })
    ));

    // Documented limit: ensure trusts an existing chain, so it neither repairs nor commits.
    let gen = fw.generation().unwrap();
    fw.ensure("n", &subnets).unwrap();
    assert_eq!(fw.generation().unwrap(), gen);
    assert!(matches!(
        fw.check("n", &subnets),
        Err(Error::Missing { .. })
    ));

    // A look-alike rule with our comment but other expressions is not ours.
    t.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        &tb,
        "masq-10.9.0.0/24",
        "ip",
        "saddr",
        "10.9.0.0/24",
        "masquerade",
        "comment",
        "\"trestle n 10.9.0.0/24\"",
    ]);
    assert!(matches!(
        fw.check("n", &subnets),
        Err(Error::Missing { .. })
    ));

    // A deleted chain, on the other hand, is recreated with its rule.
    t.exec(&["nft", "delete", "chain", "inet", &tb, "masq-10.9.0.0/24"]);
    fw.ensure("n", &subnets).unwrap();
    fw.check("n", &subnets).unwrap();
    assert_eq!(
        t.rule_comments(&tb, "masq-10.9.0.0/24"),
        ["trestle n 10.9.0.0/24"]
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn list_reports_every_subnet_of_every_network() {
    let t = TestNs::new("list");
    let mut fw = t.firewall();
    assert!(fw.list().unwrap().is_empty());
    fw.ensure("alpha", &nets(&["10.7.0.2/24", "fd07:1::2/64"]))
        .unwrap();
    fw.ensure("beta", &nets(&["10.8.0.2/16"])).unwrap();
    // Foreign tables and chains are not reported.
    t.exec(&["nft", "add", "table", "inet", "someone-else"]);
    t.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "someone-else",
        "masq-10.0.0.0/8",
    ]);
    t.exec(&["nft", "add", "chain", "inet", &table("beta"), "extra"]);
    let mut got = fw.list().unwrap();
    got.sort_by(|a, b| (&a.network_id, a.subnet).cmp(&(&b.network_id, b.subnet)));
    let entry = |n: &str, s: &str| MasqEntry {
        network_id: network_id(n),
        network: Some(n.to_owned()),
        subnet: s.parse().unwrap(),
    };
    let mut want = vec![
        entry("alpha", "10.7.0.0/24"),
        entry("alpha", "fd07:1::/64"),
        entry("beta", "10.8.0.0/16"),
    ];
    want.sort_by(|a, b| (&a.network_id, a.subnet).cmp(&(&b.network_id, b.subnet)));
    assert_eq!(got, want);
}

#[test]
#[ignore = "privileged: needs root"]
fn very_long_network_name_still_round_trips() {
    let t = TestNs::new("long");
    let mut fw = t.firewall();
    let name = "n".repeat(200);
    let subnets = nets(&["fd10:ffff:ffff:ffff::/64"]);
    fw.ensure(&name, &subnets).unwrap();
    fw.check(&name, &subnets).unwrap();
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1);
    // Too long for a table comment: the id still identifies the network.
    assert_eq!(listed[0].network_id, network_id(&name));
    assert_eq!(listed[0].network, None);
    assert!(fw.remove(&name).unwrap());
}

#[test]
#[ignore = "privileged: needs root"]
fn nftables_backend_through_the_trait_is_the_firewall() {
    let t = TestNs::new("dyn");
    let mut b = t.backend("iptables".parse().unwrap());
    let subnets = nets(&["10.11.0.2/24", "fd11::2/64"]);
    b.ensure("n", &subnets).unwrap();
    b.check("n", &subnets).unwrap();
    assert_eq!(t.chains().len(), 2);
    // The same rules as the inherent methods write, and they see them.
    t.firewall().check("n", &subnets).unwrap();

    let mut asked = 0;
    let mut in_use = || {
        asked += 1;
        true
    };
    assert!(!b.remove_if_unused("n", &mut in_use).unwrap());
    assert_eq!(asked, 1);
    assert!(b.remove_if_unused("n", &mut || false).unwrap());
    assert!(matches!(b.check("n", &subnets), Err(Error::Missing { .. })));
    assert!(!b
        .remove_if_unused("n", &mut || panic!("in_use called without a table"))
        .unwrap());
    b.ensure("n", &subnets).unwrap();
    assert!(b.remove("n").unwrap());
    assert!(!b.remove("n").unwrap());
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}

#[test]
#[ignore = "privileged: needs root"]
fn none_backend_leaves_the_ruleset_alone() {
    let t = TestNs::new("none");
    let mut fw = t.firewall();
    fw.ensure("other", &nets(&["10.12.0.0/24"])).unwrap();
    let before = t.ruleset();
    let gen = fw.generation().unwrap();

    let mut b = t.backend(BackendKind::None);
    let subnets = nets(&["10.13.0.2/24"]);
    b.ensure("n", &subnets).unwrap();
    b.check("n", &subnets).unwrap();
    // Not even another network's table is touched, whatever the name.
    assert!(!b.remove("other").unwrap());
    assert!(!b
        .remove_if_unused("other", &mut || panic!(
            "in_use called with nothing installed"
        ))
        .unwrap());
    assert_eq!(t.ruleset(), before);
    assert_eq!(fw.generation().unwrap(), gen, "nothing committed");
}
