//! The bridge plugin's commands called in-process, as the Go plugins' `CmdAddWithArgs` tests do: the test thread
//! enters a "host" namespace the test made, builds the request a runtime would send, and calls
//! [`trestle::Bridge`]. Every test makes its own namespaces and state directory; nothing touches the machine's.

use cni_plugin::{Plugin, Request};
use cni_proto::{parse_request, CniError, CniResult, Command, Env, Version};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use trestle::Bridge;
use trestle_netlink::{Link, Netlink, VethEnd};
use trestle_netns::{NamedNetNs, NetNs};

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
const BRIDGE: &str = "trbr0";
const PLUGIN: Bridge = Bridge::inline();

/// One test's namespaces and state.
struct World {
    host: NetNs,
    dir: PathBuf,
    pods: AtomicU32,
}

impl World {
    fn new(tag: &str) -> World {
        let dir = std::env::temp_dir().join(format!("trestle-inproc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host = NetNs::new_anonymous().unwrap();
        World {
            host,
            dir,
            pods: AtomicU32::new(0),
        }
    }

    fn pod(&self) -> NamedNetNs {
        let n = self.pods.fetch_add(1, Ordering::Relaxed);
        NamedNetNs::create(self.dir.join(format!("ns-{n}"))).unwrap()
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "inproc",
            "type": "trestle",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "trestle-ipam",
                "subnet": "10.77.0.0/24",
                "dataDir": self.dir.join("ipam").display().to_string(),
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        })
    }

    /// Runs `f` on a thread inside the host namespace.
    fn in_host<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.host.run(f).unwrap()
    }

    /// Calls `cmd` in-process, as a runtime would exec the plugin.
    fn call(
        &self,
        cmd: &str,
        id: &str,
        netns: &str,
        conf: &Value,
    ) -> Result<Option<CniResult>, CniError> {
        let req = request(cmd, id, netns, "eth0", conf)?;
        self.in_host(|| match req.env.command {
            Command::Add => PLUGIN.add(&req).map(Some),
            Command::Del => PLUGIN.del(&req).map(|_| None),
            Command::Check => PLUGIN.check(&req).map(|_| None),
            Command::Gc => PLUGIN.gc(&req).map(|_| None),
            Command::Status => PLUGIN.status(&req).map(|_| None),
            Command::Version => Ok(None),
        })
    }

    fn links(&self) -> Vec<Link> {
        self.in_host(|| Netlink::open().unwrap().links().unwrap())
    }

    fn reservations(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("ipam/inproc")) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    fn masqueraded(&self) -> usize {
        self.in_host(|| {
            let mut fw =
                trestle_firewall::Firewall::open(Path::new(trestle_firewall::LOCK_PATH)).unwrap();
            fw.list().unwrap().len()
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The request a runtime sends: environment and stdin, validated as the plugin's `main` validates them.
fn request(
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    conf: &Value,
) -> Result<Request, CniError> {
    let vars = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/nonexistent"),
    ];
    let env: Env = Env::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })?
    .expect("CNI_COMMAND is set");
    let stdin = conf.to_string().into_bytes();
    let conf = parse_request(env.command, &stdin)?;
    Ok(Request { env, conf, stdin })
}

fn pod_links(pod: &NetNs) -> Vec<Link> {
    pod.run(|| Netlink::open().unwrap().links().unwrap())
        .unwrap()
}

fn eth0_addresses(pod: &NetNs) -> Vec<String> {
    pod.run(|| {
        let mut nl = Netlink::open().unwrap();
        let Some(eth0) = nl.link_by_name("eth0").unwrap() else {
            return Vec::new();
        };
        nl.addresses(Some(eth0.index))
            .unwrap()
            .iter()
            .filter(|a| a.address.addr().is_ipv4())
            .map(|a| a.address.to_string())
            .collect()
    })
    .unwrap()
}

/// ADD, CHECK (where the version has it), DEL and DEL again, over every version; the result printed in each
/// version parses back and names the address the pod really has.
#[test]
#[ignore = "privileged: needs root"]
fn add_check_del_over_every_version() {
    let w = World::new("versions");
    for (i, version) in VERSIONS.iter().enumerate() {
        let pod = w.pod();
        let path = pod.path().display().to_string();
        let id = format!("c{i}");
        let conf = w.conf(version);
        let result = w.call("ADD", &id, &path, &conf).unwrap().unwrap();
        let v: Version = version.parse().unwrap();
        let printed: Value = serde_json::from_str(&result.to_json(v).unwrap()).unwrap();
        let parsed = CniResult::parse(&printed, v).unwrap();
        assert_eq!(parsed.ips.len(), 1, "{version}: {printed}");
        let addr = parsed.ips[0].address.to_string();
        assert_eq!(eth0_addresses(pod.ns()), vec![addr.clone()], "{version}");
        assert_eq!(w.reservations().len(), 1, "{version}");
        assert_eq!(w.masqueraded(), 1, "{version}");
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = printed;
        if v >= Version::V0_4_0 {
            w.call("CHECK", &id, &path, &with_prev).unwrap();
            // CHECK notices a pod whose address is gone.
            pod.ns()
                .run(|| {
                    let mut nl = Netlink::open().unwrap();
                    let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
                    nl.del_address(eth0.index, addr.parse().unwrap()).unwrap();
                })
                .unwrap();
            let err = w.call("CHECK", &id, &path, &with_prev).unwrap_err();
            assert!(err.msg.contains(&addr), "{version}: {}", err.msg);
        }
        w.call("DEL", &id, &path, &with_prev).unwrap();
        assert!(
            pod_links(pod.ns()).iter().all(|l| l.name == "lo"),
            "{version}"
        );
        assert!(w.reservations().is_empty(), "{version}");
        assert_eq!(w.masqueraded(), 0, "{version}");
        assert!(
            w.links().iter().all(|l| l.kind.as_deref() != Some("veth")),
            "{version}"
        );
        w.call("DEL", &id, &path, &with_prev).unwrap();
    }
}

/// Every input ADD refuses is refused before the first change: no bridge, no link, no reservation, no rule.
#[test]
#[ignore = "privileged: needs root"]
fn invalid_adds_change_nothing() {
    let w = World::new("invalid");
    let pod = w.pod();
    let path = pod.path().display().to_string();
    let base = w.conf("1.0.0");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "multicast MAC",
            with(&|c| c["args"] = json!({"cni": {"mac": "01:00:5e:00:00:01"}})),
            "args.cni.mac",
        ),
        (
            "zero MAC",
            with(&|c| c["runtimeConfig"] = json!({"mac": "00:00:00:00:00:00"})),
            "runtimeConfig.mac",
        ),
        (
            "two default routes",
            with(&|c| {
                c["ipam"]["routes"] =
                    json!([{"dst": "0.0.0.0/0"}, {"dst": "0.0.0.0/0", "gw": "10.77.0.9"}])
            }),
            "route to 0.0.0.0/0",
        ),
        (
            "gateway of the other family",
            with(&|c| c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0", "gw": "fd00::1"}])),
            "other family",
        ),
        (
            "unreachable gateway",
            with(&|c| c["ipam"]["routes"] = json!([{"dst": "192.168.0.0/16", "gw": "10.9.9.9"}])),
            "none of the pod's subnets",
        ),
        (
            "mtu below the minimum",
            with(&|c| c["mtu"] = json!(50)),
            "mtu",
        ),
        (
            "IPv6 on a small link",
            with(&|c| {
                c["mtu"] = json!(1000);
                c["ipam"]["subnet"] = json!("fd00:77::/64");
                c["ipam"]["routes"] = json!([]);
            }),
            "mtu",
        ),
    ];
    for (what, conf, field) in cases {
        let err = w.call("ADD", "bad", &path, &conf).unwrap_err();
        assert_eq!(err.code, 7, "{what}: {}", err.msg);
        assert!(err.msg.contains(field), "{what}: {}", err.msg);
        let links: Vec<String> = w.links().into_iter().map(|l| l.name).collect();
        assert_eq!(links, vec!["lo"], "{what} changed the host");
        assert!(
            pod_links(pod.ns()).iter().all(|l| l.name == "lo"),
            "{what} changed the pod"
        );
        assert!(w.reservations().is_empty(), "{what} kept a reservation");
        assert_eq!(w.masqueraded(), 0, "{what}");
    }
}

/// Creates `n` veth pairs, both ends in the calling thread's namespace, named `names(i)`; returns the indexes of
/// the first ends.
fn host_pairs(nl: &mut Netlink, n: u32, names: impl Fn(u32) -> (String, String)) -> Vec<u32> {
    let home = NetNs::current().unwrap();
    let end = |name: String| VethEnd {
        name,
        ..VethEnd::default()
    };
    (0..n)
        .map(|i| {
            let (first, second) = names(i);
            nl.create_veth(&end(first.clone()), &end(second), home.fd())
                .unwrap();
            nl.link_by_name(&first).unwrap().unwrap().index
        })
        .collect()
}

/// The host links a hostile layout offers DEL: eight veth pairs of the host, each a port of the network's bridge
/// with a trestle-style name, so that any small index a foreign namespace uses names one of them.
fn host_victims(w: &World) -> Vec<Link> {
    w.in_host(|| {
        let mut nl = Netlink::open().unwrap();
        // The pairs first, so that they hold the namespace's smallest indexes.
        let ports = host_pairs(&mut nl, 8, |i| {
            (format!("veth{i:08x}"), format!("victim{i}"))
        });
        nl.create_bridge(BRIDGE, None, false).unwrap();
        let br = nl.link_by_name(BRIDGE).unwrap().unwrap();
        for port in ports {
            nl.set_master(port, Some(br.index)).unwrap();
        }
        nl.links().unwrap()
    })
}

/// A pod's `CNI_IFNAME` that is a veth whose peer lives in a third namespace (or in the pod itself) carries an
/// `IFLA_LINK` that, read as a host index, names a host port of the network's bridge. DEL must delete it inside
/// the pod and leave every host link exactly as it was; the address is still released.
#[test]
#[ignore = "privileged: needs root"]
fn del_leaves_host_links_alone_whatever_the_pod_holds() {
    let w = World::new("hostile");
    let before = host_victims(&w);
    let third = NetNs::new_anonymous().unwrap();
    for layout in ["peer in a third namespace", "peer in the pod"] {
        let pod = w.pod();
        let path = pod.path().display().to_string();
        // A real ADD first, so there is an address to release; then the pod's eth0 is swapped for the hostile one.
        let mut conf = w.conf("1.0.0");
        conf["bridge"] = json!("trbr-other");
        w.call("ADD", "hostile", &path, &conf).unwrap();
        let mut conf = w.conf("1.0.0");
        conf["bridge"] = json!(BRIDGE);
        let peer_index = pod
            .ns()
            .run(|| {
                let mut nl = Netlink::open().unwrap();
                let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
                nl.delete_link(eth0.index).unwrap();
                let end = |name: &str| VethEnd {
                    name: name.into(),
                    ..VethEnd::default()
                };
                if layout == "peer in the pod" {
                    nl.create_veth(
                        &end("eth0"),
                        &end("eth0peer"),
                        NetNs::current().unwrap().fd(),
                    )
                    .unwrap();
                } else {
                    let mut t = third.run(Netlink::open).unwrap().unwrap();
                    t.create_veth(
                        &end("hostile"),
                        &end("eth0"),
                        NetNs::current().unwrap().fd(),
                    )
                    .unwrap();
                }
                nl.link_by_name("eth0")
                    .unwrap()
                    .unwrap()
                    .peer_index
                    .unwrap()
            })
            .unwrap();
        // The index names a host port: exactly what DEL must not follow.
        let host_now = w.links();
        let named = host_now.iter().find(|l| l.index == peer_index);
        assert!(
            named.is_some(),
            "{layout}: index {peer_index} names no host link; the test proves nothing"
        );
        w.call("DEL", "hostile", &path, &conf).unwrap();
        let after = w.links();
        for b in &before {
            let a = after.iter().find(|a| a.index == b.index);
            assert_eq!(
                a.map(|a| (&a.name, a.master, a.group, a.up)),
                Some((&b.name, b.master, b.group, b.up)),
                "{layout}: DEL touched host link {}",
                b.name
            );
        }
        assert!(
            pod_links(pod.ns()).iter().all(|l| l.name == "lo"),
            "{layout}: the pod's hostile interface stays"
        );
        assert!(
            w.reservations().is_empty(),
            "{layout}: address not released"
        );
    }
}

/// Sets the pod's `eth0` down (as its user may, for a moment).
fn set_eth0_down(pod: &NetNs) {
    pod.run(|| {
        let mut nl = Netlink::open().unwrap();
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
        nl.set_up(eth0.index, false).unwrap();
    })
    .unwrap();
}

/// Masquerade stays exactly while an attachment that needs it is on the bridge, whatever its link's state: a pod
/// whose `eth0` is down (its port has no carrier, so neither may the bridge) keeps it.
#[test]
#[ignore = "privileged: needs root"]
fn masquerade_follows_attachments_not_carrier() {
    let w = World::new("masq-down");
    let conf = w.conf("1.0.0");
    let (p1, p2) = (w.pod(), w.pod());
    let (path1, path2) = (
        p1.path().display().to_string(),
        p2.path().display().to_string(),
    );
    w.call("ADD", "p1", &path1, &conf).unwrap();
    w.call("ADD", "p2", &path2, &conf).unwrap();
    set_eth0_down(p1.ns());
    set_eth0_down(p2.ns());
    // The bridge learns that its ports lost carrier from the kernel's linkwatch worker, which runs later (up to a
    // second on a busy machine): wait for it.
    let bridge_carrier = || {
        w.links()
            .into_iter()
            .find(|l| l.name == BRIDGE)
            .unwrap()
            .carrier
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut carrier = bridge_carrier();
    while carrier && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        carrier = bridge_carrier();
    }
    assert!(
        !carrier,
        "the bridge still has carrier: the test would prove nothing"
    );
    w.call("DEL", "p2", &path2, &conf).unwrap();
    assert_eq!(
        w.masqueraded(),
        1,
        "p1 (eth0 down) lost its masquerade to p2's DEL"
    );
    w.call("DEL", "p1", &path1, &conf).unwrap();
    assert_eq!(w.masqueraded(), 0, "the last user's DEL keeps the rules");
}

/// A `disableContainerInterface` attachment of the same network (layer 2 only, no address) neither needs the
/// masquerade nor takes it away from a pod that does.
#[test]
#[ignore = "privileged: needs root"]
fn masquerade_ignores_attachments_without_addresses() {
    let w = World::new("masq-l2");
    let conf = w.conf("1.0.0");
    let mut l2 = conf.clone();
    l2["disableContainerInterface"] = json!(true);
    l2.as_object_mut().unwrap().remove("ipam");
    let (pod, quiet) = (w.pod(), w.pod());
    let (path, quiet_path) = (
        pod.path().display().to_string(),
        quiet.path().display().to_string(),
    );
    w.call("ADD", "quiet", &quiet_path, &l2).unwrap();
    assert_eq!(
        w.masqueraded(),
        0,
        "an attachment without addresses needs no masquerade"
    );
    w.call("ADD", "pod", &path, &conf).unwrap();
    w.call("DEL", "quiet", &quiet_path, &l2).unwrap();
    assert_eq!(
        w.masqueraded(),
        1,
        "the L2 attachment's DEL took the pod's masquerade"
    );
    w.call("ADD", "quiet", &quiet_path, &l2).unwrap();
    w.call("DEL", "pod", &path, &conf).unwrap();
    assert_eq!(
        w.masqueraded(),
        0,
        "kept for an attachment that has no address to masquerade"
    );
    w.call("DEL", "quiet", &quiet_path, &l2).unwrap();
}

/// The 1024th port of a bridge is refused by the kernel (port numbers have 10 bits and 0 is reserved); ADD says
/// so, naming the bridge, and rolls back.
#[test]
#[ignore = "privileged: needs root"]
fn a_full_bridge_is_named() {
    let w = World::new("full");
    w.in_host(|| {
        let mut nl = Netlink::open().unwrap();
        nl.create_bridge(BRIDGE, None, false).unwrap();
        let br = nl.link_by_name(BRIDGE).unwrap().unwrap();
        let ports = host_pairs(&mut nl, trestle::links::MAX_PORTS, |i| {
            (format!("fill{i}"), format!("fillp{i}"))
        });
        for port in ports {
            nl.set_master(port, Some(br.index)).unwrap();
        }
    });
    let pod = w.pod();
    let err = w
        .call(
            "ADD",
            "one-too-many",
            &pod.path().display().to_string(),
            &w.conf("1.0.0"),
        )
        .unwrap_err();
    assert_eq!(err.code, trestle::error::code::BRIDGE_FULL, "{}", err.msg);
    assert!(
        err.msg.contains(BRIDGE) && err.msg.contains("1023"),
        "{}",
        err.msg
    );
    assert!(w.reservations().is_empty());
    assert!(pod_links(pod.ns()).iter().all(|l| l.name == "lo"));
}

/// `ipMasqBackend: "none"`: the host's firewall masquerades, so ADD, CHECK and DEL install and look for nothing.
#[test]
#[ignore = "privileged: needs root"]
fn the_none_backend_leaves_the_ruleset_alone() {
    let w = World::new("nomasq");
    let mut conf = w.conf("1.1.0");
    conf["ipMasqBackend"] = json!("none");
    let pod = w.pod();
    let path = pod.path().display().to_string();
    let result = w.call("ADD", "n", &path, &conf).unwrap().unwrap();
    assert_eq!(w.masqueraded(), 0);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] =
        serde_json::from_str(&result.to_json(Version::V1_1_0).unwrap()).unwrap();
    w.call("CHECK", "n", &path, &with_prev).unwrap();
    w.call("DEL", "n", &path, &with_prev).unwrap();
    assert!(w.reservations().is_empty());
}
