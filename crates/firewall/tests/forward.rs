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
    for names in ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"] {
        // Absent when x_tables is not built in or loaded: then there is no table either.
        let listed = ns.exec(&["sh", "-c", &format!("cat {names} 2>/dev/null || true")]);
        assert_eq!(listed, "", "{names}: a legacy table was made");
    }
}

/// Docker's own jump stays first: trestle's goes right after it, in both backends.
#[test]
#[ignore = "privileged: needs root"]
fn the_jump_goes_after_dockers_user_chain() {
    for program in ["iptables-nft", "iptables-legacy"] {
        let ns = dropping(program);
        ns.exec(&[program, "-N", "DOCKER-USER"]);
        ns.exec(&[program, "-I", "FORWARD", "-j", "DOCKER-USER"]);
        ns.firewall()
            .ensure_forward("n", &[net("10.1.0.0/24")])
            .unwrap();
        let forward: Vec<String> = rules(&ns, program)
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .map(str::to_owned)
            .collect();
        assert_eq!(forward[0], "-A FORWARD -j DOCKER-USER", "{program}");
        assert!(
            forward[1].contains("-j TRESTLE-FORWARD"),
            "{program}: {forward:?}"
        );
        assert!(forward[2].contains("docker0"), "{program}: {forward:?}");
    }
}

/// What iptables itself writes for the same rules (a save and restore, as netfilter-persistent does; a jump an
/// administrator put back by hand) is recognised: nothing is added twice, and removal leaves the table as found.
#[test]
#[ignore = "privileged: needs root"]
fn rules_rewritten_by_iptables_are_recognised() {
    let ns = dropping("iptables-nft");
    let before = rules(&ns, "iptables-nft");
    let mut fw = ns.firewall();
    fw.ensure_forward("n", &[net("10.1.0.0/24")]).unwrap();
    let ours = rules(&ns, "iptables-nft");
    ns.exec(&[
        "sh",
        "-c",
        "iptables-nft-save -t filter | iptables-nft-restore",
    ]);
    assert_eq!(
        rules(&ns, "iptables-nft"),
        ours,
        "the round trip changes nothing visible"
    );
    fw.check_forward("n", &[net("10.1.0.0/24")]).unwrap();
    fw.ensure_forward("n", &[net("10.1.0.0/24")]).unwrap();
    assert_eq!(rules(&ns, "iptables-nft"), ours, "nothing is added twice");
    // The jump deleted and put back by hand, as CHECK's message invites.
    let jump = [
        "-m",
        "comment",
        "--comment",
        "trestle: pod networks",
        "-j",
        "TRESTLE-FORWARD",
    ];
    ns.exec(&[&["iptables-nft", "-D", "FORWARD"][..], &jump[..]].concat());
    assert!(fw.check_forward("n", &[net("10.1.0.0/24")]).is_err());
    ns.exec(&[&["iptables-nft", "-I", "FORWARD"][..], &jump[..]].concat());
    fw.check_forward("n", &[net("10.1.0.0/24")]).unwrap();
    assert!(fw.remove_forward("n").unwrap());
    assert_eq!(rules(&ns, "iptables-nft"), before);
}

/// Someone else's rule jumping to the chain keeps it (it could not be deleted): the network's rules go, the chain
/// and the jump stay, and nothing fails.
#[test]
#[ignore = "privileged: needs root"]
fn a_foreign_jump_to_the_chain_keeps_it() {
    for program in ["iptables-nft", "iptables-legacy"] {
        let ns = dropping(program);
        let mut fw = ns.firewall();
        fw.ensure_forward("n", &[net("10.1.0.0/24")]).unwrap();
        ns.exec(&[
            program,
            "-A",
            "FORWARD",
            "-i",
            "eth9",
            "-j",
            "TRESTLE-FORWARD",
        ]);
        assert!(fw.remove_forward("n").unwrap(), "{program}");
        let left = rules(&ns, program);
        assert!(
            !left.contains("10.1.0.0/24") && left.contains("-N TRESTLE-FORWARD"),
            "{program}: {left}"
        );
    }
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
