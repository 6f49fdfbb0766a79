//! Pods on a host whose firewall drops forwarded packets, as a host running Docker has it: `FORWARD` policy
//! `DROP` (through iptables-nft, or iptables-legacy) and `br_netfilter` sending bridged frames through it. Each
//! test makes its own "host", pods and an "outside" namespace:
//!
//! ```text
//!  pod a 10.15.20.2 --\
//!                      cni_bridge0 10.15.20.1 (host) 192.168.95.1 --h1==o0-- outside 192.168.95.2
//!  pod b 10.15.20.3 --/
//! ```
//! The outside routes the pod subnet through the host, so only the host's firewall decides whether it reaches the
//! pods; the pods' own connections to it are masqueraded.

mod common;

use common::{pings, tcp_peer, World};
use serde_json::{json, Value};
use std::process::Command;
use trestle_netlink::{Netlink, VethEnd};
use trestle_netns::NetNs;
use trestlectl::runtime::Outcome;

const A: &str = "10.15.20.2";
const B: &str = "10.15.20.3";
const OUTSIDE: &str = "192.168.95.2";

/// Runs `args` in `ns` (the child inherits the thread's namespace), returning stdout; it must succeed.
fn run(ns: &NetNs, args: &[&str]) -> String {
    let out = ns
        .run(|| Command::new(args[0]).args(&args[1..]).output())
        .unwrap()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which firewall the host has.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Host {
    /// Docker's: iptables-nft, `FORWARD` policy `DROP`, a `DOCKER-USER` chain and a rule of its own.
    Nft,
    /// The same through iptables-legacy.
    Legacy,
    /// An administrator's nftables table with a forward chain of policy drop.
    PlainNft,
}

impl Host {
    fn iptables(self) -> &'static str {
        match self {
            Host::Legacy => "iptables-legacy",
            _ => "iptables-nft",
        }
    }

    /// The `filter` table as `iptables-save` prints it, without counters and comment lines: what must be
    /// exactly as it was after the last DEL.
    fn saved(self, w: &World) -> Vec<String> {
        let save = format!("{}-save", self.iptables());
        run(&w.host, &[&save, "-t", "filter"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                Some((chain, _)) if l.starts_with(':') => chain.to_owned(),
                _ => l.to_owned(),
            })
            .collect()
    }
}

/// A world whose host imitates `host`, with forwarding and `br_netfilter` on and an outside namespace.
fn docker_like(host: Host) -> (World, NetNs) {
    let w = World::new();
    w.host
        .run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
            // Per namespace since Linux 5.3; the module is loaded where Docker runs (the machines this suite
            // runs on) and by the bridge plugin's reference tests.
            let nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
            std::fs::write(nf, "1")
                .unwrap_or_else(|e| panic!("{nf}: {e} (is br_netfilter loaded?)"));
        })
        .unwrap();
    match host {
        Host::Nft | Host::Legacy => {
            let ipt = host.iptables();
            run(&w.host, &[ipt, "-P", "FORWARD", "DROP"]);
            run(&w.host, &[ipt, "-N", "DOCKER-USER"]);
            run(&w.host, &[ipt, "-A", "DOCKER-USER", "-j", "RETURN"]);
            run(&w.host, &[ipt, "-A", "FORWARD", "-j", "DOCKER-USER"]);
            run(
                &w.host,
                &[
                    ipt, "-A", "FORWARD", "-i", "docker0", "-o", "docker0", "-j", "ACCEPT",
                ],
            );
        }
        Host::PlainNft => {
            run(&w.host, &["nft", "add table inet admin"]);
            run(
                &w.host,
                &[
                    "nft",
                    "add chain inet admin forward { type filter hook forward priority 0; policy drop; }",
                ],
            );
        }
    }
    let outside = NetNs::new_anonymous().unwrap();
    w.host
        .run(|| {
            let end = |name: &str| VethEnd {
                name: name.into(),
                mtu: None,
                mac: None,
                group: None,
            };
            Netlink::open()
                .unwrap()
                .create_veth(&end("h1"), &end("o0"), outside.fd())
                .unwrap();
        })
        .unwrap();
    run(
        &w.host,
        &["ip", "addr", "add", "192.168.95.1/24", "dev", "h1"],
    );
    run(&w.host, &["ip", "link", "set", "h1", "up"]);
    run(
        &outside,
        &["ip", "addr", "add", "192.168.95.2/24", "dev", "o0"],
    );
    run(&outside, &["ip", "link", "set", "o0", "up"]);
    run(&outside, &["ip", "link", "set", "lo", "up"]);
    run(
        &outside,
        &["ip", "route", "add", "10.15.20.0/24", "via", "192.168.95.1"],
    );
    (w, outside)
}

fn conf(w: &World, forward_accept: Option<bool>) -> Value {
    let mut conf = w.classic("1.0.0");
    if let Some(on) = forward_accept {
        conf["forwardAccept"] = json!(on);
    }
    conf
}

/// CHECK of an attachment, with its ADD result as `prevResult`.
fn check(w: &World, id: &str, netns: &str, conf: &Value, result: &Value) -> Outcome {
    let mut conf = conf.clone();
    conf["prevResult"] = result.clone();
    w.call("CHECK", id, netns, "eth0", &conf)
}

/// Two pods and the outside behind a Docker-like firewall: everything the network's own traffic needs passes,
/// and after the last DEL the host's `filter` table is exactly as it was.
fn pods_pass_and_the_host_is_left_as_found(host: Host) {
    let (w, outside) = docker_like(host);
    let before = host.saved(&w);
    let conf = conf(&w, None);
    let (a, b) = (w.pod(), w.pod());
    let result = w.add("a", &a, &conf);
    w.add("b", &b, &conf);
    assert!(pings(a.ns(), B), "pod a -> pod b, across the bridge");
    assert!(pings(b.ns(), A), "pod b -> pod a");
    assert_eq!(
        tcp_peer(a.ns(), b.ns(), B).as_deref(),
        Some(A),
        "TCP a -> b"
    );
    assert!(pings(a.ns(), OUTSIDE), "pod a -> outside, masqueraded");
    assert_eq!(
        tcp_peer(a.ns(), &outside, OUTSIDE).as_deref(),
        Some("192.168.95.1"),
        "TCP a -> outside, seen from the host's address"
    );
    assert!(
        !pings(&outside, A),
        "the outside must not open connections to the pods: only replies pass"
    );
    let during = host.saved(&w);
    let ours: Vec<&String> = during.iter().filter(|l| !before.contains(l)).collect();
    assert_eq!(
        ours,
        [
            ":TRESTLE-FORWARD -",
            "-A FORWARD -m comment --comment \"trestle: pod networks\" -j TRESTLE-FORWARD",
            "-A TRESTLE-FORWARD -s 10.15.20.0/24 -m comment --comment \"trestle mybridge 10.15.20.0/24\" -j ACCEPT",
            "-A TRESTLE-FORWARD -d 10.15.20.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"trestle mybridge 10.15.20.0/24\" -j ACCEPT",
        ],
        "{}",
        during.join("\n")
    );
    let forward: Vec<&String> = during
        .iter()
        .filter(|l| l.starts_with("-A FORWARD"))
        .collect();
    assert_eq!(
        forward[0], "-A FORWARD -j DOCKER-USER",
        "Docker's jump stays first"
    );
    assert!(
        forward[1].contains("TRESTLE-FORWARD"),
        "trestle's jump comes right after it: {forward:?}"
    );
    // CHECK sees them, and sees one go.
    let a_path = a.path().display().to_string();
    assert!(check(&w, "a", &a_path, &conf, &result).success);
    let ipt = host.iptables();
    run(
        &w.host,
        &[
            ipt,
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "trestle: pod networks",
            "-j",
            "TRESTLE-FORWARD",
        ],
    );
    let checked = check(&w, "a", &a_path, &conf, &result);
    assert!(
        !checked.success
            && checked
                .stdout
                .contains("no forward accept for 10.15.20.0/24"),
        "{} {}",
        checked.stdout,
        checked.stderr
    );
    // The next ADD puts the jump back.
    let c = w.pod();
    w.add("c", &c, &conf);
    assert!(check(&w, "a", &a_path, &conf, &result).success);
    w.del("c", &c.path().display().to_string(), &conf);
    w.del("a", &a_path, &conf);
    assert!(pings(b.ns(), "10.15.20.1"), "b keeps its network");
    assert!(pings(b.ns(), OUTSIDE), "b keeps its rules after a's DEL");
    w.del("b", &b.path().display().to_string(), &conf);
    assert_eq!(
        host.saved(&w),
        before,
        "the filter table after the last DEL"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn docker_like_iptables_nft_lets_pods_talk_and_is_left_as_found() {
    pods_pass_and_the_host_is_left_as_found(Host::Nft);
}

#[test]
#[ignore = "privileged: needs root"]
fn docker_like_iptables_legacy_lets_pods_talk_and_is_left_as_found() {
    pods_pass_and_the_host_is_left_as_found(Host::Legacy);
}

/// With `forwardAccept: false` the host's policy rules: pods on the bridge cannot talk, and trestle adds nothing.
#[test]
#[ignore = "privileged: needs root"]
fn with_forward_accept_off_the_host_policy_drops_and_nothing_is_added() {
    let (w, _outside) = docker_like(Host::Nft);
    let before = Host::Nft.saved(&w);
    let conf = conf(&w, Some(false));
    let (a, b) = (w.pod(), w.pod());
    w.add("a", &a, &conf);
    w.add("b", &b, &conf);
    assert_eq!(Host::Nft.saved(&w), before);
    assert!(!pings(a.ns(), B), "dropped, as the host asked");
    assert!(!pings(a.ns(), OUTSIDE));
}

/// A plain nftables forward chain that drops is the administrator's: left alone, the traffic dropped, and the
/// ADD's log and CHECK name it.
#[test]
#[ignore = "privileged: needs root"]
fn a_plain_nftables_drop_chain_is_reported_and_left_alone() {
    let (w, _outside) = docker_like(Host::PlainNft);
    let ruleset = || run(&w.host, &["nft", "list", "ruleset"]);
    let before = ruleset();
    let conf = conf(&w, None);
    let (a, b) = (w.pod(), w.pod());
    let out = w.call("ADD", "a", &a.path().display().to_string(), "eth0", &conf);
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("nftables chain inet admin forward drops forwarded packets"),
        "the ADD says so: {}",
        out.stderr
    );
    w.add("b", &b, &conf);
    assert!(!pings(a.ns(), B), "dropped, as the host asked");
    let result = out.json().unwrap();
    let checked = check(&w, "a", &a.path().display().to_string(), &conf, &result);
    assert!(
        !checked.success && checked.stdout.contains("inet admin forward"),
        "{} {}",
        checked.stdout,
        checked.stderr
    );
    let after = ruleset();
    assert!(
        after.contains("policy drop") && !after.contains("TRESTLE"),
        "{after}"
    );
    assert!(
        before.lines().all(|l| after.contains(l)),
        "{before}\n---\n{after}"
    );
}

/// Pods added and deleted at the same time: every pod talks while it is there (a DEL never takes the rules from
/// under a pod added beside it), and the last DEL leaves the table as it was.
#[test]
#[ignore = "privileged: needs root"]
fn concurrent_adds_and_dels_keep_the_rules_exactly_while_pods_need_them() {
    let (w, _outside) = docker_like(Host::Nft);
    let before = Host::Nft.saved(&w);
    let conf = conf(&w, None);
    // Two pods that stay: their traffic crosses the bridge, so through FORWARD, while the others come and go.
    let (anchor, other) = (w.pod(), w.pod());
    let ip = |result: Value| {
        let cidr = result["ips"][0]["address"].as_str().unwrap().to_owned();
        cidr.split('/').next().unwrap().to_owned()
    };
    let anchor_ip = ip(w.add("anchor", &anchor, &conf));
    let other_ip = ip(w.add("other", &other, &conf));
    for round in 0..3 {
        let pods: Vec<_> = (0..6).map(|_| w.pod()).collect();
        std::thread::scope(|s| {
            for (i, p) in pods.iter().enumerate() {
                let (w, conf) = (&w, &conf);
                s.spawn(move || w.add(&format!("r{round}p{i}"), p, conf));
            }
        });
        std::thread::scope(|s| {
            for (i, p) in pods.iter().enumerate() {
                let (w, conf) = (&w, &conf);
                s.spawn(move || {
                    w.del(
                        &format!("r{round}p{i}"),
                        &p.path().display().to_string(),
                        conf,
                    )
                });
            }
            // Meanwhile the pods that stay keep talking.
            assert!(pings(anchor.ns(), &other_ip), "round {round}");
        });
        let fresh = w.pod();
        w.add("fresh", &fresh, &conf);
        assert!(
            pings(fresh.ns(), &anchor_ip),
            "round {round}: a new pod reaches the anchor"
        );
        w.del("fresh", &fresh.path().display().to_string(), &conf);
    }
    w.del("anchor", &anchor.path().display().to_string(), &conf);
    w.del("other", &other.path().display().to_string(), &conf);
    assert_eq!(Host::Nft.saved(&w), before);
}

/// A pod whose namespace is gone before its DEL (a runtime that DELs after the pod's last process died): the
/// kernel deletes the pair only later, yet the DEL already removes the network's rules and masquerade.
#[test]
#[ignore = "privileged: needs root"]
fn the_last_del_after_its_namespace_died_removes_the_rules() {
    let (w, _outside) = docker_like(Host::Nft);
    let before = Host::Nft.saved(&w);
    let conf = conf(&w, None);
    for round in 0..5 {
        let a = w.pod();
        let path = a.path().display().to_string();
        w.add("a", &a, &conf);
        drop(a);
        w.del("a", &path, &conf);
        assert_eq!(Host::Nft.saved(&w), before, "round {round}");
        assert!(w.masqueraded().is_empty(), "round {round}");
    }
}

/// GC of a network without valid attachments removes its forward rules.
#[test]
#[ignore = "privileged: needs root"]
fn gc_removes_the_forward_rules_of_a_network_without_attachments() {
    let (w, _outside) = docker_like(Host::Nft);
    let before = Host::Nft.saved(&w);
    let conf = conf(&w, None);
    let a = w.pod();
    w.add("a", &a, &conf);
    assert_ne!(Host::Nft.saved(&w), before);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = w.call("GC", "", "", "", &gc);
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert_eq!(Host::Nft.saved(&w), before);
}
