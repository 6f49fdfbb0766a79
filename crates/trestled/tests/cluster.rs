//! Cluster IPAM on a real 3-member etcd (Debian's `etcd-server`, started here on loopback with
//! data under a temporary folder) and real `trestled` nodes, allocating through the real
//! `trestle-ipam` plugin: no duplicate under leader loss, partition, crashes and reclaim.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{error_code, plugin, Node, Proxy, NO_NETNS};
use serde_json::Value;
use trestle_etcd_local::LocalCluster;
use trestle_ipam_etcd::{admin, Etcd, EtcdConfig};

/// One cluster test at a time: each runs three etcd members and several daemons with
/// second-scale leases, and two cores shared by all of them would turn timing into luck.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The test's turn, its folder, a 3-member etcd in it, and its endpoints (dropped in
/// reverse: etcd stops before the folder goes and the next test starts).
fn cluster3() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    LocalCluster,
    Vec<String>,
) {
    let one = serial();
    let dir = tempfile::tempdir().unwrap();
    let etcd =
        LocalCluster::start(dir.path(), 3).expect("a 3-member etcd (apt-get install etcd-server)");
    let eps = etcd.endpoints();
    (one, dir, etcd, eps)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn view(endpoints: &[String], prefix: &str) -> admin::ClusterView {
    rt().block_on(async {
        let etcd = Etcd::new(&EtcdConfig {
            endpoints: endpoints.to_vec(),
            tls: None,
            timeout: Duration::from_secs(3),
        })
        .unwrap();
        admin::view(&etcd, prefix).await.unwrap()
    })
}

/// The member that leads, by asking each.
fn leader(c: &LocalCluster) -> usize {
    rt().block_on(async {
        for i in 0..c.members.len() {
            if !c.running(i) {
                continue;
            }
            let etcd = Etcd::new(&EtcdConfig {
                endpoints: vec![c.endpoints()[i].clone()],
                tls: None,
                timeout: Duration::from_secs(2),
            })
            .unwrap();
            if let Ok((me, lead)) = etcd.status(0).await {
                if me == lead {
                    return i;
                }
            }
        }
        panic!("no leader");
    })
}

fn started(name: &str, endpoints: &[String], prefix: &str) -> Node {
    let mut n = Node::new();
    n.cluster(name, endpoints, prefix);
    n.start();
    n
}

/// Every address every node holds, with its holder; panics on a duplicate.
fn unique(nodes: &[&Node]) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    for n in nodes {
        for (_, ip, id, _) in n.allocations() {
            if let Some(other) = seen.insert(ip.clone(), id.clone()) {
                panic!("{ip} held by {other} and {id}");
            }
        }
    }
    seen
}

#[test]
fn three_nodes_allocate_1500_while_the_etcd_leader_is_killed_without_a_duplicate() {
    let (_one, _dir, mut etcd, eps) = cluster3();
    let nodes: Vec<Node> = (0..3)
        .map(|i| started(&format!("node-{i}"), &eps, "/t1"))
        .collect();
    let confs: Vec<Value> = nodes
        .iter()
        .map(|n| n.conf("cluster", "10.60.0.0/16"))
        .collect();
    let acked = std::sync::Mutex::new(Vec::<(usize, String, String)>::new());
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (k, node) in nodes.iter().enumerate() {
            for t in 0..8 {
                let (conf, acked, done) = (&confs[k], &acked, &done);
                s.spawn(move || {
                    for j in 0..500 / 8 + usize::from(t < 500 % 8) {
                        let id = format!("n{k}-t{t}-{j}");
                        if let Ok(ip) = node.add_retrying(conf, &id, 100) {
                            acked.lock().unwrap().push((k, id, ip));
                        }
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        }
        // Midway, the leader dies.
        while done.load(std::sync::atomic::Ordering::SeqCst) < 750 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let l = leader(&etcd);
        etcd.kill(l);
    });
    let acked = acked.into_inner().unwrap();
    assert_eq!(
        acked.len(),
        1500,
        "every ADD succeeds after retrying code 11"
    );
    let ips: BTreeSet<&String> = acked.iter().map(|(_, _, ip)| ip).collect();
    assert_eq!(ips.len(), acked.len(), "no address acknowledged twice");
    // Every acknowledged allocation is held by its node, and nothing else is.
    let held = unique(&nodes.iter().collect::<Vec<_>>());
    assert_eq!(held.len(), 1500);
    for (_, id, ip) in &acked {
        assert_eq!(held.get(ip.split('/').next().unwrap()), Some(id));
    }
    // Blocks are the nodes' own: no block is owned twice, and each node holds what it uses.
    let v = view(&eps, "/t1");
    let owners: BTreeSet<&str> = v.pools[0]
        .block_list
        .iter()
        .map(|b| b.cidr.as_str())
        .collect();
    assert_eq!(owners.len(), v.pools[0].block_list.len());
    for (k, node) in nodes.iter().enumerate() {
        for (_, id, _) in acked.iter().filter(|(n, _, _)| *n == k) {
            let out = plugin("DEL", id, NO_NETNS, &confs[k]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        assert!(node.allocations().is_empty());
    }
}

#[test]
fn a_node_cut_off_past_its_lease_stops_and_its_block_is_reclaimed_without_a_double_assignment() {
    let (_one, _dir, etcd, eps) = cluster3();
    // A reaches etcd through proxies the test can cut.
    let proxies: Vec<Proxy> = etcd.members.iter().map(|m| Proxy::new(m.client)).collect();
    let via: Vec<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    let mut a = Node::new();
    a.cluster("node-a", &via, "/t2");
    a.args
        .extend(["--block-size", "10.61.0.0/26=28"].map(String::from));
    a.start();
    // B never borrows (strict affinity), so what it gets of A's block it got by reclaiming it.
    let mut b = Node::new();
    b.cluster("node-b", &eps, "/t2");
    b.args.push("--strict-affinity".into());
    b.start();
    // 4 blocks of 16: 61 usable addresses.
    let (ca, cb) = (a.conf("c", "10.61.0.0/26"), b.conf("c", "10.61.0.0/26"));
    let a_ips: Vec<String> = (0..3)
        .map(|i| a.add_retrying(&ca, &format!("a{i}"), 50).unwrap())
        .collect();

    for p in &proxies {
        p.cut();
    }
    // Past A's lease: A refuses instead of guessing, quickly.
    std::thread::sleep(Duration::from_secs(4));
    let t = Instant::now();
    let out = plugin("ADD", "a-late", NO_NETNS, &ca);
    assert_eq!(
        error_code(&out),
        11,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // B fills the pool: its own blocks, then A's block minus what A held.
    let mut b_ips = Vec::new();
    for i in 0..80 {
        match b.add_retrying(&cb, &format!("b{i}"), 30) {
            Ok(ip) => b_ips.push(ip),
            Err(code) => {
                assert_eq!(code, 11, "an exhausted pool is 'try again later'");
                break;
            }
        }
    }
    let held = unique(&[&a, &b]);
    assert_eq!(held.len(), 3 + b_ips.len());
    let v = view(&eps, "/t2");
    let a_view = v.nodes.iter().find(|n| n.name == "node-a").unwrap();
    assert!(!a_view.alive && a_view.expired_since_ms.is_some());
    assert_eq!(
        a_view.blocks,
        0,
        "A's block was reclaimed: {v:?}\n{}",
        b.log()
    );
    assert_eq!(
        a_view.borrowed, 8,
        "A's whole reservation stays reserved for it"
    );
    assert_eq!(b_ips.len(), 61 - 8, "B got everything else");

    // A comes back: it re-registers, fences, and goes on from what it still holds.
    for p in &proxies {
        p.heal();
    }
    let more = a.add_retrying(&ca, "a-back", 100).expect("A serves again");
    assert!(!b_ips.contains(&more) && !a_ips.contains(&more));
    let held = unique(&[&a, &b]);
    assert_eq!(held.len(), 3 + 1 + b_ips.len());
}

#[test]
fn a_killed_daemon_restarts_with_its_state_and_its_own_block() {
    let (_one, _dir, _etcd, eps) = cluster3();
    let mut a = started("node-a", &eps, "/t3");
    let conf = a.conf("c", "10.62.0.0/16");
    let first: Vec<String> = (0..5)
        .map(|i| a.add_retrying(&conf, &format!("a{i}"), 50).unwrap())
        .collect();
    let before = view(&eps, "/t3");
    a.kill9();
    a.start();
    assert_eq!(a.allocations().len(), 5, "state intact");
    let next = a.add_retrying(&conf, "a5", 50).unwrap();
    let block = |ip: &str| {
        ip.rsplit_once('.')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            / 64
    };
    assert_eq!(
        block(&next),
        block(&first[0]),
        "the same block: {next} after {first:?}"
    );
    assert_eq!(
        &next[..next.rfind('.').unwrap()],
        &first[0][..first[0].rfind('.').unwrap()]
    );
    let after = view(&eps, "/t3");
    assert_eq!(
        after.pools[0].block_list, before.pools[0].block_list,
        "no new claim"
    );
    assert_eq!(after.nodes.len(), 1);
}

#[test]
fn with_etcd_down_add_answers_11_within_2_seconds_and_service_resumes() {
    let (_one, _dir, mut etcd, eps) = cluster3();
    let a = started("node-a", &eps, "/t4");
    let conf = a.conf("c", "10.63.0.0/16");
    let ip = a.add_retrying(&conf, "a0", 50).unwrap();
    etcd.kill_all();
    // Past the lease (3 s): nothing new is handed out, and the answer is quick.
    std::thread::sleep(Duration::from_secs(4));
    for i in 0..3 {
        let t = Instant::now();
        let out = plugin("ADD", &format!("down{i}"), NO_NETNS, &conf);
        assert_eq!(error_code(&out), 11);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // DEL needs no etcd.
    assert!(plugin("DEL", "a0", NO_NETNS, &conf).status.success());
    for i in 0..3 {
        etcd.restart(i).unwrap();
    }
    etcd.wait_serving(Duration::from_secs(30)).unwrap();
    let again = a.add_retrying(&conf, "a1", 200).expect("service resumes");
    assert_ne!(again, "");
    let _ = ip;
}

#[test]
fn a_dead_nodes_blocks_are_reclaimed_and_reused_and_release_node_frees_the_rest() {
    let (_one, _dir, _etcd, eps) = cluster3();
    let mut a = Node::new();
    a.cluster("node-a", &eps, "/t5");
    a.args
        .extend(["--block-size", "10.64.0.0/27=28"].map(String::from));
    a.start();
    let b = started("node-b", &eps, "/t5");
    let (ca, cb) = (a.conf("c", "10.64.0.0/27"), b.conf("c", "10.64.0.0/27"));
    let a_ips: Vec<String> = (0..2)
        .map(|i| a.add_retrying(&ca, &format!("a{i}"), 50).unwrap())
        .collect();
    drop(a); // SIGKILL: the node is gone for good.
             // 2 blocks of 16, 29 usable: B's own block, then A's once its lease and grace are over.
    let mut b_ips = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while b_ips.len() < 29 - 8 && Instant::now() < deadline {
        match b.add_retrying(&cb, &format!("b{}", b_ips.len()), 5) {
            Ok(ip) => b_ips.push(ip),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    assert_eq!(
        b_ips.len(),
        29 - 8,
        "B reused A's block beyond A's reservation"
    );
    for ip in &a_ips {
        assert!(!b_ips.contains(ip), "{ip} handed out again");
    }
    // B may have borrowed all of that while A's lease still ran; release-node refuses a live
    // node, so wait for the lease to lapse.
    let deadline = Instant::now() + Duration::from_secs(15);
    while view(&eps, "/t5")
        .nodes
        .iter()
        .any(|n| n.name == "node-a" && n.alive)
    {
        assert!(Instant::now() < deadline, "A's lease never lapsed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without a terminal to confirm on, and without --yes, nothing is released.
    let refused = std::process::Command::new(common::bin("trestlectl"))
        .args([
            "ipam",
            "release-node",
            "node-a",
            "--etcd-prefix",
            "/t5",
            "--etcd",
        ])
        .arg(eps.join(","))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --yes"));
    // The operator says A is gone: its reservation is freed, and B can have it.
    let out = std::process::Command::new(common::bin("trestlectl"))
        .args([
            "ipam",
            "release-node",
            "node-a",
            "--yes",
            "--etcd-prefix",
            "/t5",
            "--etcd",
        ])
        .arg(eps.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rest = 0;
    while b.add_retrying(&cb, &format!("r{rest}"), 3).is_ok() {
        rest += 1;
    }
    assert_eq!(rest, 8, "A's 8 addresses came back");
    let v = view(&eps, "/t5");
    // A holds nothing (a block it owned where B holds addresses stays, empty, for reclaim).
    assert!(
        v.nodes
            .iter()
            .all(|n| n.name != "node-a" || (n.held == 0 && n.borrowed == 0)),
        "{v:?}"
    );
}

/// A CA, a server certificate for `ips` and a client certificate, as PEM files in `dir`.
fn certificates(dir: &std::path::Path, ips: &[std::net::Ipv4Addr]) -> std::io::Result<()> {
    let tls = trestle_testkit::Tls::generate(ips).map_err(std::io::Error::other)?;
    for (name, pem) in [
        ("ca.pem", tls.ca),
        ("server.pem", tls.server),
        ("server-key.pem", tls.server_key),
        ("client.pem", tls.client),
        ("client-key.pem", tls.client_key),
    ] {
        std::fs::write(dir.join(name), pem)?;
    }
    Ok(())
}

#[test]
fn a_node_reaches_etcd_over_tls_with_a_client_certificate_and_one_without_is_refused() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let etcd = LocalCluster::start_tls(&dir.path().join("etcd"), 1, |ips| {
        certificates(&certs, ips)?;
        Ok(Some(trestle_etcd_local::ServerTls {
            cert: certs.join("server.pem"),
            key: certs.join("server-key.pem"),
            client_ca: certs.join("ca.pem"),
        }))
    })
    .expect("etcd with TLS");
    let eps = etcd.endpoints();
    let tls_args = |with_client: bool| {
        let mut v = vec![
            "--etcd-ca".to_string(),
            certs.join("ca.pem").display().to_string(),
        ];
        if with_client {
            v.extend([
                "--etcd-cert".to_string(),
                certs.join("client.pem").display().to_string(),
                "--etcd-key".to_string(),
                certs.join("client-key.pem").display().to_string(),
            ]);
        }
        v
    };
    let mut a = Node::new();
    a.cluster("node-tls", &eps, "/t6");
    a.args.extend(tls_args(true));
    a.start();
    let conf = a.conf("c", "10.65.0.0/16");
    a.add_retrying(&conf, "a0", 20).expect("ADD over TLS");
    // The operator's view over TLS too.
    let out = std::process::Command::new(common::bin("trestlectl"))
        .args(["ipam", "show", "--json", "--etcd-prefix", "/t6", "--etcd"])
        .arg(eps.join(","))
        .args(tls_args(true))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"][0]["name"], "node-tls");
    assert_eq!(v["pools"][0]["blocksClaimed"], 1);

    // Without a client certificate, etcd refuses: the node never becomes ready, ADD says 11.
    let mut b = Node::new();
    b.cluster("node-nocert", &eps, "/t6");
    b.args.extend(tls_args(false));
    b.child = Some(b.spawn());
    std::thread::sleep(Duration::from_secs(2));
    let out = plugin("ADD", "b0", NO_NETNS, &b.conf("c", "10.65.0.0/16"));
    assert_eq!(
        error_code(&out),
        11,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        b.log().contains("cannot register node node-nocert"),
        "{}",
        b.log()
    );
}

#[test]
fn empty_blocks_go_back_but_the_last_reservations_shrink_and_borrowed_addresses_return() {
    let (_one, _dir, _etcd, eps) = cluster3();
    let quick = ["--block-release-grace", "1", "--cluster-interval", "0.2"].map(String::from);
    let mut a = Node::new();
    a.cluster("node-a", &eps, "/t7");
    a.args
        .extend(["--block-size", "10.66.0.0/26=28"].map(String::from));
    a.args.extend(quick.clone());
    a.start();
    let conf = a.conf("c", "10.66.0.0/26");
    for i in 0..20 {
        a.add_retrying(&conf, &format!("a{i}"), 20).unwrap();
    }
    let node = |v: &admin::ClusterView, n: &str| v.nodes.iter().find(|x| x.name == n).cloned();
    assert_eq!(node(&view(&eps, "/t7"), "node-a").unwrap().blocks, 2);
    for i in 0..20 {
        assert!(plugin("DEL", &format!("a{i}"), NO_NETNS, &conf)
            .status
            .success());
    }
    // One block goes back; the last one stays, its reservation cut to one chunk (8).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = node(&view(&eps, "/t7"), "node-a").unwrap();
        if n.blocks == 1 && n.held == 8 {
            break;
        }
        assert!(Instant::now() < deadline, "{n:?}\n{}", a.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // B fills the rest of the pool, borrowing A's unreserved addresses last, then lets go.
    let mut b = Node::new();
    b.cluster("node-b", &eps, "/t7");
    b.args.extend(quick);
    b.start();
    let cb = b.conf("c", "10.66.0.0/26");
    let mut got = 0;
    while b.add_retrying(&cb, &format!("b{got}"), 2).is_ok() {
        got += 1;
    }
    assert_eq!(got, 61 - 8, "everything but A's reservation");
    assert!(node(&view(&eps, "/t7"), "node-b").unwrap().borrowed > 0);
    for i in 0..got {
        assert!(plugin("DEL", &format!("b{i}"), NO_NETNS, &cb)
            .status
            .success());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while node(&view(&eps, "/t7"), "node-b").unwrap().borrowed > 0 {
        assert!(
            Instant::now() < deadline,
            "borrowed addresses never returned\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pool_overlapping_another_of_the_same_network_is_refused_naming_both() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalCluster::start(dir.path(), 1).expect("etcd");
    let eps = etcd.endpoints();
    let a = started("node-a", &eps, "/t8");
    a.add_retrying(&a.conf("c", "10.67.0.0/16"), "a0", 20)
        .unwrap();
    // Another node with a drifted config: the same addresses as a second pool would be
    // handed out twice, so it is refused (INVALID_ARGUMENT, CNI code 7).
    let b = started("node-b", &eps, "/t8");
    let out = plugin("ADD", "b0", NO_NETNS, &b.conf("c", "10.67.0.0/17"));
    assert_eq!(
        error_code(&out),
        7,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(
        msg.contains("10.67.0.0/17") && msg.contains("10.67.0.0/16"),
        "{msg}"
    );
    // Another network may use the same subnet: its pools are its own.
    b.add_retrying(&b.conf("other", "10.67.0.0/17"), "b1", 20)
        .unwrap();
}

#[test]
fn a_store_of_random_bytes_never_hands_out_what_etcd_records_as_this_nodes() {
    let (_one, _dir, _etcd, eps) = cluster3();
    let mut a = started("node-a", &eps, "/t9");
    let conf = a.conf("c", "10.69.0.0/16");
    let first: Vec<String> = (0..12)
        .map(|i| a.add_retrying(&conf, &format!("a{i}"), 50).unwrap())
        .collect();
    a.kill9();
    a.damage_store();
    a.start();
    assert!(a.log().contains("store rebuilt"), "{}", a.log());
    for i in 0..12 {
        let ip = a.add_retrying(&conf, &format!("b{i}"), 50).unwrap();
        assert!(
            !first.contains(&ip),
            "{ip} handed out again: the pods before the damage hold {first:?}"
        );
    }
    assert_eq!(unique(&[&a]).len(), 12);
}

#[test]
fn a_large_prefix_is_read_in_pages_at_one_revision() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalCluster::start(dir.path(), 1).expect("etcd");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Etcd::new(&EtcdConfig {
            endpoints: etcd.endpoints(),
            tls: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        for chunk in (0..2500).collect::<Vec<u32>>().chunks(100) {
            let txn = chunk
                .iter()
                .fold(trestle_ipam_etcd::client::Txn::new(), |t, i| {
                    t.put(&format!("/p/k{i:05}"), vec![1], 0)
                });
            client.txn(txn).await.unwrap();
        }
        // A key outside the prefix, and one after the read, are not part of it.
        client
            .txn(trestle_ipam_etcd::client::Txn::new().put("/q", vec![1], 0))
            .await
            .unwrap();
        let (kvs, rev) = client.list_paged("/p/", 1000).await.unwrap();
        client
            .txn(trestle_ipam_etcd::client::Txn::new().put("/p/zz", vec![1], 0))
            .await
            .unwrap();
        assert_eq!(kvs.len(), 2500);
        assert!(
            kvs.windows(2).all(|w| w[0].key < w[1].key),
            "in order, no repeat"
        );
        assert!(kvs.iter().all(|kv| kv.mod_revision <= rev));
        let (again, _) = client.list_paged("/p/", 7).await.unwrap();
        assert_eq!(again.len(), 2501);
    });
}
