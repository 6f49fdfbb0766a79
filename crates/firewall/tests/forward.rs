//! Forward accept against the real kernel and the real iptables programs, in namespaces of the tests' own: the
//! rules as iptables-nft and iptables-legacy show them, their lifetime, and the host's table left as found.

mod common;

use common::TestNs;
use ipnet::IpNet;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// `<program> -S` of the namespace's filter table (`-S` also names the policies).
fn rules(ns: &TestNs, program: &str) -> String {
    ns.exec(&[program, "-S"])
}

/// A namespace whose `FORWARD` drops, through `program` (iptables-nft, iptables-legacy or the ip6tables ones),
/// with a rule of someone else's in it.
fn dropping(program: &str) -> TestNs {
    let ns = TestNs::new("fwd");
    ns.exec(&[program, "-P", "FORWARD", "DROP"]);
    ns.exec(&[program, "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"]);
    ns
}

fn round_trip(program: &str, subnet: &str) {
    let ns = dropping(program);
    let before = rules(&ns, program);
    let mut fw = ns.firewall();
    assert!(fw
        .ensure_forward("net a", &[net(subnet)])
        .unwrap()
        .is_empty());
    let s = rules(&ns, program);
    let expected = [
        "-N TRESTLE-FORWARD".to_owned(),
        "-A FORWARD -m comment --comment \"trestle: pod networks\" -j TRESTLE-FORWARD".to_owned(),
        format!("-A TRESTLE-FORWARD -s {subnet} -m comment --comment \"trestle net a {subnet}\" -j ACCEPT"),
        format!(
            "-A TRESTLE-FORWARD -d {subnet} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"trestle net a {subnet}\" -j ACCEPT"
        ),
    ];
    for line in &expected {
        assert!(s.contains(line.as_str()), "{line:?} missing in:\n{s}");
    }
    let first = s.lines().find(|l| l.starts_with("-A FORWARD")).unwrap();
    assert_eq!(first, expected[1], "the jump goes first");
    fw.check_forward("net a", &[net(subnet)]).unwrap();
    // A second ADD changes nothing; a second network shares chain and jump.
    fw.ensure_forward("net a", &[net(subnet)]).unwrap();
    assert_eq!(rules(&ns, program), s);
    let other = if subnet.contains(':') {
        "fd00:2::/64"
    } else {
        "10.2.0.0/24"
    };
    fw.ensure_forward("net b", &[net(other)]).unwrap();
    assert!(fw.remove_forward("net a").unwrap());
    let left = rules(&ns, program);
    assert!(
        !left.contains("net a") && left.contains("net b") && left.contains("TRESTLE-FORWARD"),
        "{left}"
    );
    assert!(matches!(
        fw.check_forward("net a", &[net(subnet)]),
        Err(trestle_firewall::Error::ForwardMissing { .. })
    ));
    assert!(fw.remove_forward("net b").unwrap());
    assert!(
        !fw.remove_forward("net b").unwrap(),
        "nothing left to remove"
    );
    assert_eq!(rules(&ns, program), before, "the table as it was found");
}

#[test]
#[ignore = "privileged: needs root"]
fn iptables_nft_shows_the_rules_and_gets_its_table_back() {
    round_trip("iptables-nft", "10.1.0.0/24");
    // iptables-nft-save still reads the whole table: no rule it cannot translate.
    let ns = dropping("iptables-nft");
    ns.firewall()
        .ensure_forward("n", &[net("10.1.0.0/16")])
        .unwrap();
    let save = ns.exec(&["iptables-nft-save"]);
    assert!(
        !save.contains("incompatible") && save.contains("TRESTLE-FORWARD"),
        "{save}"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn ip6tables_nft_shows_the_rules_and_gets_its_table_back() {
    round_trip("ip6tables-nft", "fd00:1::/64");
}

#[test]
#[ignore = "privileged: needs root"]
fn iptables_legacy_shows_the_rules_and_gets_its_table_back() {
    round_trip("iptables-legacy", "10.1.0.0/24");
}

#[test]
#[ignore = "privileged: needs root"]
fn ip6tables_legacy_shows_the_rules_and_gets_its_table_back() {
    round_trip("ip6tables-legacy", "fd00:1::/64");
}

/// Nothing is added where nothing drops, and no legacy table is made where there was none.
#[test]
#[ignore = "privileged: needs root"]
fn a_filter_that_accepts_gets_nothing() {
    let ns = TestNs::new("fwd-accept");
    ns.exec(&["iptables-nft", "-P", "FORWARD", "ACCEPT"]);
    let before = ns.ruleset();
    let mut fw = ns.firewall();
    fw.ensure_forward("n", &[net("10.1.0.0/24"), net("fd00:1::/64")])
        .unwrap();
    fw.check_forward("n", &[net("10.1.0.0/24")]).unwrap();
    assert_eq!(ns.ruleset(), before);
    assert_eq!(ns.exec(&["cat", "/proc/net/ip_tables_names"]), "");
}

/// An administrator's nftables forward chain that drops is reported, never edited.
#[test]
#[ignore = "privileged: needs root"]
fn a_plain_nftables_drop_chain_is_reported() {
    let ns = TestNs::new("fwd-plain");
    ns.exec(&["nft", "add table inet admin"]);
    ns.exec(&[
        "nft",
        "add chain inet admin forward { type filter hook forward priority 0; policy drop; }",
    ]);
    let before = ns.ruleset();
    let mut fw = ns.firewall();
    let foreign = fw.ensure_forward("n", &[net("10.1.0.0/24")]).unwrap();
    assert_eq!(foreign.len(), 1);
    assert_eq!(
        (
            foreign[0].family,
            foreign[0].table.as_str(),
            foreign[0].chain.as_str()
        ),
        ("inet", "admin", "forward")
    );
    let err = fw.check_forward("n", &[net("10.1.0.0/24")]).unwrap_err();
    assert!(err.to_string().contains("inet admin forward"), "{err}");
    assert_eq!(ns.ruleset(), before);
}
