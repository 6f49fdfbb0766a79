//! `deploy/etcd` on three Docker nodes, run as a kubelet would run it (crates/kube/src/kubelet.rs): node1 and
//! node2 share an underlay segment, node3 is on another behind a router container, and etcd is three members with
//! TLS on a control network. One cluster goes through every phase in turn (a cluster takes a minute to make), and
//! the phases print the figures the closing notes quote. `tools/nodes-e2e` runs it by hand.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use trestle_kube::cluster::{Cluster, Spec};
use trestle_kube::docker::Error as DockerError;
use trestle_kube::pod::Pod;
use trestle_kube::Error;

/// How long a node may take to turn ready (etcd's first election included on a loaded machine).
const READY: Duration = Duration::from_secs(120);
/// The node lease of the manifest's trestled (its default, `--lease-ttl`).
const LEASE: Duration = Duration::from_secs(15);

/// `deploy/<tree>` on `nodes` (name, segment).
fn spec(tree: &str, etcd: bool, nodes: &[(&str, usize)]) -> Spec {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The test executable is target/<profile>/deps/nodes-<hash>; the binaries are target/<profile>/.
    let exe = std::env::current_exe().unwrap();
    let binaries = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    for b in ["trestle", "trestle-ipam", "trestled", "trestlectl"] {
        assert!(
            binaries.join(b).exists(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            binaries.join(b).display()
        );
    }
    Spec {
        deploy: root.join("deploy").join(tree),
        etcd,
        binaries,
        nodes: nodes.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
    }
}

#[test]
#[ignore = "privileged: needs root, a Docker engine, etcd-server"]
fn deploy_etcd_runs_on_docker_nodes() {
    let nodes = [("node1", 0), ("node2", 0), ("node3", 1)];
    run(spec("etcd", true, &nodes), phases);
}

#[test]
#[ignore = "privileged: needs root, a Docker engine"]
fn deploy_single_node_runs_on_a_docker_node() {
    run(spec("single-node", false, &[("node1", 0)]), |c| {
        println!("single node: Ready after {:?}", ready_times(c));
        let pods = [pod(c, 0, "pod-a"), pod(c, 0, "pod-b")];
        reach_everywhere(&pods);
        tcp_everywhere(&pods);
        assert_ne!(pods[0].ip, pods[1].ip);
        // trestled restarted (an upgrade): the conflist stays, the pods keep their addresses.
        let gaps = c
            .rolling_update(&c.image.clone(), READY)
            .unwrap_or_else(|e| panic!("{e}"));
        println!("single node: restarted and Ready in {gaps:?}");
        for p in &pods {
            p.cni(c, "check")
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
        reach_everywhere(&pods);
    });
}

/// Starts the cluster, runs `phases`, and removes everything the run made, also when a phase fails.
fn run(spec: Spec, phases: impl FnOnce(&mut Cluster)) {
    let mut cluster = Cluster::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| phases(&mut cluster)));
    let failed = cluster.remove_all();
    let left = cluster.docker().leftovers();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    assert!(
        failed.is_empty() && left.is_empty(),
        "left behind: {failed:?} {left:?}"
    );
}

fn phases(c: &mut Cluster) {
    let ready = ready_times(c);
    println!("time from the kubelet's start of the pod to Ready: {ready:?}");
    let mut pods = vec![pod(c, 0, "pod-a"), pod(c, 1, "pod-b"), pod(c, 2, "pod-c")];
    let converged = reach_everywhere(&pods);
    println!("first pods reach each other (ICMP, both ways) after {converged:?}");
    paths_are_direct_and_vxlan(c);
    tcp_everywhere(&pods);
    no_address_twice(c, &pods);

    rolling_update(c, &pods);
    etcd_cut_off(c, &mut pods);
    paused_past_the_lease(c, &mut pods);
    restarted(c, &mut pods);
    removed_for_good(c, &pods);
}

/// Every node turns ready; how long each took from the start of its pod.
fn ready_times(c: &Cluster) -> Vec<Duration> {
    (0..c.nodes.len())
        .map(|i| {
            c.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e}"));
            c.nodes[i].started.unwrap().elapsed()
        })
        .collect()
}

fn pod(c: &Cluster, node: usize, name: &str) -> Pod {
    Pod::create(c, &c.nodes[node], name).unwrap_or_else(|e| panic!("{name}: {e}\n{}", c.logs()))
}

/// Pings every pod from every other until all answer; how long that took.
fn reach_everywhere(pods: &[Pod]) -> Duration {
    let start = Instant::now();
    for a in pods {
        for b in pods {
            if a.name == b.name {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match a.ping(b.ip, Duration::from_millis(500)) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        panic!(
                            "{} ({}) cannot reach {} ({}): {e}",
                            a.name, a.ip, b.name, b.ip
                        )
                    }
                    Err(_) => {}
                }
            }
        }
    }
    start.elapsed()
}

fn tcp_everywhere(pods: &[Pod]) {
    let mut port = 7300;
    for a in pods {
        for b in pods {
            if a.name != b.name {
                port += 1;
                a.tcp(b, port)
                    .unwrap_or_else(|e| panic!("TCP {} -> {}: {e}", a.name, b.name));
            }
        }
    }
}

/// node1 reaches node2 directly (one segment) and node3 over VXLAN (across the router), as `node list` says.
fn paths_are_direct_and_vxlan(c: &Cluster) {
    let rows = node_list(c, "node1");
    let path = |n: &str| {
        rows.iter()
            .find(|r| r["name"] == n)
            .and_then(|r| r["path"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(path("node2"), "direct", "{rows:?}");
    assert_eq!(path("node3"), "vxlan", "{rows:?}");
}

fn node_list(c: &Cluster, from: &str) -> Vec<Value> {
    let out = c
        .trestlectl_etcd(&["node", "list", "--from", from, "--json"])
        .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&out).unwrap();
    match v {
        Value::Array(rows) => rows,
        other => other["nodes"].as_array().cloned().unwrap_or_default(),
    }
}

/// Every pod's address is its own, and lies in a block etcd gives to the pod's node (owned, or held as foreign).
fn no_address_twice(c: &Cluster, pods: &[Pod]) {
    let distinct: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(distinct.len(), pods.len(), "an address twice: {pods:?}");
    let view: Value =
        serde_json::from_str(&c.trestlectl_etcd(&["ipam", "show", "--json"]).unwrap()).unwrap();
    let blocks: Vec<&Value> = view["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["block_list"]
                .as_array()
                .or(p["blockList"].as_array())
                .into_iter()
                .flatten()
        })
        .collect();
    for p in pods {
        let node = c.nodes.iter().find(|n| n.container == p.node).unwrap();
        let block = blocks
            .iter()
            .find(|b| {
                b["cidr"]
                    .as_str()
                    .and_then(|s| s.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|n| n.contains(&IpAddr::V4(p.ip)))
            })
            .unwrap_or_else(|| panic!("{} ({}) is in no block: {view}", p.name, p.ip));
        let owner = block["owner"].as_str() == Some(node.name.as_str());
        let foreign = block["foreign"].get(node.name.as_str()).is_some();
        assert!(
            owner || foreign,
            "{} ({}) on {} but {block}",
            p.name,
            p.ip,
            node.name
        );
    }
}

/// A new image tag, node by node, while 1 kHz streams cross both paths: not a datagram lost, and every pod keeps
/// its address (CNI CHECK passes).
fn rolling_update(c: &mut Cluster, pods: &[Pod]) {
    let streams = [(0, 1, 7401), (1, 0, 7402), (0, 2, 7403), (2, 0, 7404)].map(|(a, b, port)| {
        let (from, to) = (&pods[a], &pods[b]);
        trestle_operator::probe::Stream::start(&from.ns().unwrap(), &to.ns().unwrap(), to.ip, port)
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let next = c.retag("next").unwrap();
    let gaps = c
        .rolling_update(&next, READY)
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(300));
    let mut lost_total = 0;
    for (s, (a, b)) in streams.into_iter().zip([(0, 1), (1, 0), (0, 2), (2, 0)]) {
        let (lost, sent) = s.finish().unwrap();
        println!(
            "rolling update: {} -> {}: {} of {sent} datagrams lost",
            pods[a].name,
            pods[b].name,
            lost.len()
        );
        lost_total += lost.len();
    }
    println!("rolling update: each node from stop to ready: {gaps:?}");
    assert_eq!(lost_total, 0, "datagrams lost during the rolling update");
    for p in pods {
        p.cni(c, "check")
            .unwrap_or_else(|e| panic!("{} lost its attachment: {e}", p.name));
    }
}

/// node2 cut off from etcd: within the lease it says not ready (probe and CNI STATUS), an ADD there fails without
/// an address, its pods keep their traffic; plugged back, it is ready again and ADDs work.
fn etcd_cut_off(c: &mut Cluster, pods: &mut Vec<Pod>) {
    c.disconnect_control(1).unwrap();
    let cut = Instant::now();
    c.wait(LEASE * 3, "node2 not ready without etcd", || {
        Ok(c.probe(1, "readinessProbe")? == Some(503))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    println!("cut off from etcd: not ready after {:?}", cut.elapsed());
    // Liveness never depends on etcd: a kubelet must not restart a daemon that only lost etcd.
    assert_eq!(
        c.probe(1, "livenessProbe").unwrap(),
        Some(200),
        "liveness without etcd"
    );
    let status = c.cni_status(1).unwrap();
    assert!(status.is_err(), "CNI STATUS passes on a node without etcd");
    // The ADD itself is refused (not the sandbox or docker), and etcd holds no address for it.
    match Pod::create(c, &c.nodes[1], "pod-b-cut") {
        Ok(p) => panic!("an ADD succeeded on a node without its lease: {}", p.ip),
        Err(Error::Docker(DockerError::Failed { args, stderr })) => {
            assert!(args.contains("trestlectl add"), "{args}: {stderr}")
        }
        Err(e) => panic!("the ADD could not even be tried: {e}"),
    }
    // Its pods' traffic does not need etcd.
    pods[0].ping(pods[1].ip, Duration::from_secs(2)).unwrap();
    // The others allocate meanwhile.
    pods.push(pod(c, 0, "pod-a2"));
    c.connect_control(1).unwrap();
    let back = Instant::now();
    c.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e}"));
    println!("reconnected: ready after {:?}", back.elapsed());
    assert_eq!(c.cni_status(1).unwrap(), Ok(()));
    pods.push(pod(c, 1, "pod-b2"));
    no_address_twice(c, pods);
}

/// node3 frozen past its lease: etcd says its lease is gone, the others go on allocating without touching its
/// blocks; thawed, it re-registers, is ready, keeps its pods and their addresses, and allocates again.
fn paused_past_the_lease(c: &mut Cluster, pods: &mut Vec<Pod>) {
    c.pause(2).unwrap();
    let frozen = Instant::now();
    c.wait(LEASE * 3, "node3's lease to lapse", || {
        Ok(node_list(c, "node1")
            .iter()
            .any(|r| r["name"] == "node3" && r["alive"] == false))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    println!("paused: node3's lease lapsed after {:?}", frozen.elapsed());
    pods.push(pod(c, 0, "pod-a3"));
    pods.push(pod(c, 1, "pod-b3"));
    no_address_twice(c, pods);
    c.unpause(2).unwrap();
    let thawed = Instant::now();
    c.wait_ready(2, READY).unwrap_or_else(|e| panic!("{e}"));
    println!("unpaused: ready after {:?}", thawed.elapsed());
    // Ready means a live lease: etcd must already say so.
    let rows = node_list(c, "node1");
    assert!(
        rows.iter()
            .any(|r| r["name"] == "node3" && r["alive"] == true),
        "node3 says ready, etcd says its lease is gone: {rows:?}"
    );
    let c3 = pods.iter().find(|p| p.name == "pod-c").unwrap().clone();
    c3.cni(c, "check")
        .unwrap_or_else(|e| panic!("pod-c after the pause: {e}"));
    pods.push(pod(c, 2, "pod-c2"));
    no_address_twice(c, pods);
    reach_everywhere(pods);
}

/// node2 restarted: its pods die with it; the kubelet runs the DaemonSet's pod again, the node turns ready, and a
/// new pod there gets an address nobody holds.
fn restarted(c: &mut Cluster, pods: &mut Vec<Pod>) {
    let node2 = c.nodes[1].container.clone();
    let up = Instant::now();
    c.restart_node(1).unwrap_or_else(|e| panic!("{e}"));
    pods.retain(|p| p.node != node2);
    c.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e}"));
    println!("restarted: ready {:?} after docker restart", up.elapsed());
    assert_eq!(c.cni_status(1).unwrap(), Ok(()));
    pods.push(pod(c, 1, "pod-b4"));
    no_address_twice(c, pods);
    reach_everywhere(pods);
}

/// node3 gone for good: once its lease has lapsed the operator removes it, and the routes to its blocks leave the
/// other nodes.
fn removed_for_good(c: &mut Cluster, pods: &[Pod]) {
    let ip = IpAddr::V4(c.nodes[2].ip);
    assert!(
        !c.routes_via(0, ip).unwrap().is_empty(),
        "node1 had no route to node3"
    );
    c.remove_node(2).unwrap();
    c.wait(LEASE * 3, "node3's lease to lapse", || {
        Ok(node_list(c, "node1")
            .iter()
            .any(|r| r["name"] == "node3" && r["alive"] == false))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    c.trestlectl_etcd(&["node", "remove", "node3", "--yes"])
        .unwrap_or_else(|e| panic!("{e}"));
    let removed = Instant::now();
    c.wait(
        Duration::from_secs(30),
        "routes to node3 to leave node1 and node2",
        || Ok(c.routes_via(0, ip)?.is_empty() && c.routes_via(1, ip)?.is_empty()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "removed: routes gone from the others after {:?}",
        removed.elapsed()
    );
    let left: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.node != c.nodes[2].container)
        .collect();
    for a in &left {
        for b in &left {
            if a.name != b.name {
                a.ping(b.ip, Duration::from_secs(2)).unwrap();
            }
        }
    }
}

#[test]
#[ignore = "privileged: needs a Docker engine"]
fn a_run_that_fails_leaves_nothing_behind() {
    use trestle_kube::docker::Docker;
    use trestle_operator::image::archive;
    let (tx, rx) = std::sync::mpsc::channel();
    // A run that makes one of everything, then fails: the panic drops its Docker, which must remove it all.
    let result = std::panic::catch_unwind(move || {
        let docker = Docker::new("trestle-e2e-cleanup");
        tx.send(docker.run_id().to_string()).unwrap();
        let [l, v] = docker.label();
        trestle_kube::cluster::Net::create(&docker, "seg").unwrap();
        docker
            .cmd(&["volume", "create", &l, &v, &docker.name("vol")])
            .unwrap();
        let tag = format!("localhost/{}:x", docker.run_id());
        let layer = archive::layer(
            &[archive::Entry::File {
                path: "x",
                mode: 0o755,
                data: b"x",
            }],
            0,
        );
        let config = archive::Config {
            architecture: archive::oci_arch().into(),
            cmd: vec!["/x".into()],
            ..Default::default()
        };
        let image = archive::docker_archive(&layer, &config, std::slice::from_ref(&tag), 0);
        docker.own_image(&tag);
        docker.cmd_stdin(&["load"], Some(&image.bytes)).unwrap();
        docker
            .cmd(&["create", &l, &v, "--name", &docker.name("c"), &tag])
            .unwrap();
        assert_eq!(docker.leftovers().len(), 4, "{:?}", docker.leftovers());
        panic!("a phase failed");
    });
    assert!(result.is_err());
    let run = rx.recv().unwrap();
    let after = Docker::attach(&run);
    after.own_image(&format!("localhost/{run}:x"));
    assert!(
        after.leftovers().is_empty(),
        "left behind: {:?}",
        after.leftovers()
    );
}
