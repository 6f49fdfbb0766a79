//! trestled tests that need root: namespaces for leak repair, other users for the socket's
//! permissions, the reference host-local for the migration.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{address, error_code, plugin, plugin_as, Node, NO_NETNS};

fn need_root() {
    assert!(
        common::is_root(),
        "run as root (cargo test -- --include-ignored goes through tools/test-runner)"
    );
}

/// A process in a new network namespace, killed on drop.
struct NsHolder(Child);

impl NsHolder {
    fn spawn(script: &str) -> NsHolder {
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--net",
                "sh",
                "-c",
                script,
            ])
            .spawn()
            .unwrap();
        NsHolder(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn a_vanished_namespace_is_reclaimed_and_live_ones_never() {
    need_root();
    let mut node = Node::new();
    node.args
        .extend(["--repair-interval", "0.1", "--netns-grace", "0.5"].map(String::from));
    node.start();
    let conf = node.conf("leak", "10.70.0.0/24");
    let dir = node.path("ns");
    std::fs::create_dir_all(&dir).unwrap();
    // Held by a process; held only by a bind mount (the process holding the mount lives in
    // the machine's network namespace).
    let proc_held = NsHolder::spawn("exec sleep 600");
    let mount_dir = dir.display().to_string();
    let mount_held = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("touch {mount_dir}/bound && unshare --net={mount_dir}/bound true && echo up > {mount_dir}/ready && exec sleep 600"))
        .spawn()
        .unwrap();
    let mount_held = NsHolder(mount_held);
    wait_for("the bind-mounted namespace", || dir.join("ready").exists());
    std::thread::sleep(Duration::from_millis(100));
    // The namespaces are reached through symlinks removed after ADD, so the daemon's cheap
    // path check fails and only its scan of /proc can find them alive.
    let link = |name: &str, target: String| {
        let l = dir.join(name);
        std::os::unix::fs::symlink(target, &l).unwrap();
        l.display().to_string()
    };
    let a = link("a", format!("/proc/{}/ns/net", proc_held.pid()));
    let b = link(
        "b",
        format!("/proc/{}/root{mount_dir}/bound", mount_held.pid()),
    );
    let doomed = NsHolder::spawn("exec sleep 600");
    let c = link("c", format!("/proc/{}/ns/net", doomed.pid()));
    std::thread::sleep(Duration::from_millis(100));
    for (id, ns) in [("proc-held", &a), ("mount-held", &b), ("doomed", &c)] {
        address(&plugin("ADD", id, ns, &conf));
    }
    let inodes: Vec<u64> = node
        .client()
        .list(&trestle_ipam_api::v1::ListRequest::default())
        .unwrap()
        .allocations
        .iter()
        .map(|x| x.netns_inode)
        .collect();
    assert!(
        inodes.iter().all(|i| *i != 0),
        "every allocation knows its namespace: {inodes:?}"
    );
    for l in ["a", "b", "c"] {
        std::fs::remove_file(dir.join(l)).unwrap();
    }
    drop(doomed);
    wait_for("the reclamation", || node.allocations().len() == 2);
    // Several more rounds: the live ones stay.
    std::thread::sleep(Duration::from_millis(1500));
    let mut ids: Vec<String> = node.allocations().into_iter().map(|x| x.2).collect();
    ids.sort();
    assert_eq!(ids, ["mount-held", "proc-held"]);
    assert!(
        node.log().contains("reclaimed network=leak"),
        "{}",
        node.log()
    );
    drop((proc_held, mount_held));
}

#[test]
#[ignore = "privileged: needs root"]
fn the_socket_refuses_other_users_by_mode_and_by_peer_credentials() {
    need_root();
    let nobody = 65534;
    // Default: 0600, so another user cannot even connect.
    let mut strict = Node::new();
    std::fs::set_permissions(strict.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    strict.start();
    let conf = strict.conf("perm", "10.71.0.0/24");
    let out = plugin_as("STATUS", "", NO_NETNS, &conf, Some(nobody));
    assert_eq!(error_code(&out), 50);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ermission denied"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // World-writable socket: the peer credentials still refuse.
    let mut open = Node::new();
    std::fs::set_permissions(open.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    open.args.extend(["--socket-mode", "666"].map(String::from));
    open.start();
    let conf = open.conf("perm", "10.71.0.0/24");
    let out = plugin_as("ADD", "c1", NO_NETNS, &conf, Some(nobody));
    assert_eq!(error_code(&out), 115);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uid 65534 gid 65534 may not use trestled")
    );
    assert!(open.allocations().is_empty());
    // The configured group may.
    let mut group = Node::new();
    std::fs::set_permissions(group.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    group
        .args
        .extend(["--socket-mode", "660", "--socket-group", "65534"].map(String::from));
    group.start();
    let conf = group.conf("perm", "10.71.0.0/24");
    address(&plugin_as("ADD", "c1", NO_NETNS, &conf, Some(nobody)));
    assert_eq!(
        plugin("STATUS", "", NO_NETNS, &conf).status.code(),
        Some(0),
        "root still may"
    );
}

#[test]
#[ignore = "privileged: needs root and the reference plugins (containernetworking-plugins)"]
fn a_populated_host_local_data_dir_migrates_without_conflict() {
    need_root();
    let host_local = ["/usr/lib/cni/host-local", "/opt/cni/bin/host-local"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("the reference host-local (apt-get install containernetworking-plugins)");
    let mut node = Node::new();
    let data = node.path("data");
    let embedded = serde_json::json!({
        "cniVersion": "1.0.0", "name": "mig", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.77.0.0/24"}]]}
    });
    for id in ["old1", "old2", "old3"] {
        let out = reference(host_local, "ADD", id, &embedded);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    node.args = vec![
        "--reuse-delay".into(),
        "0".into(),
        "--host-local-dir".into(),
        data.display().to_string(),
    ];
    // The harness passes --host-local-dir "" first; the later value wins.
    node.start();
    assert_eq!(
        node.allocations().len(),
        3,
        "imported at start: {:?}",
        node.allocations()
    );
    assert!(data.join("mig/.trestle-daemon").is_file(), "handed over");
    let mut daemon_conf = node.conf("mig", "10.77.0.0/24");
    let ip = address(&plugin("ADD", "new1", NO_NETNS, &daemon_conf));
    assert_eq!(ip, "10.77.0.5/24", "no conflict with the imported .2-.4");
    // Embedded mode on the handed-over directory asks the daemon.
    let mut embedded_ours = embedded.clone();
    embedded_ours["type"] = "trestle-ipam".into();
    embedded_ours["ipam"]["type"] = "trestle-ipam".into();
    let ip = address(&plugin("ADD", "new2", NO_NETNS, &embedded_ours));
    assert_eq!(ip, "10.77.0.6/24");
    assert!(
        !data.join("mig/10.77.0.6").exists(),
        "not allocated from the directory"
    );
    assert_eq!(node.allocations().len(), 5);
    // An imported attachment is released through the daemon.
    daemon_conf["ipam"]["daemon"]["timeoutMs"] = 5000.into();
    assert!(plugin("DEL", "old1", NO_NETNS, &daemon_conf)
        .status
        .success());
    assert!(plugin("DEL", "new2", NO_NETNS, &embedded_ours)
        .status
        .success());
    let ids = |node: &Node| {
        let mut ids: Vec<String> = node.allocations().into_iter().map(|x| x.2).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&node), ["new1", "old2", "old3"]);
    // The import is recorded with its allocations: a restart does not bring old1 back.
    node.kill9();
    node.start();
    assert_eq!(ids(&node), ["new1", "old2", "old3"]);
}

fn reference(bin: &str, cmd: &str, id: &str, conf: &serde_json::Value) -> std::process::Output {
    common::run_plugin(std::path::Path::new(bin), cmd, id, NO_NETNS, conf, None)
}

/// Puts `address` on a link named `eth0` inside the namespace at `netns`, as a plugin would
/// have (a bridge stands in for the veth end: only the address matters here).
fn put_address(netns: &str, address: &str) {
    let net: ipnet::IpNet = address.parse().unwrap();
    trestle_netns::NetNs::open(netns)
        .unwrap()
        .run(|| {
            let mut nl = trestle_netlink::Netlink::open().unwrap();
            nl.create_bridge("eth0", None, false).unwrap();
            let link = nl.link_by_name("eth0").unwrap().unwrap();
            nl.add_address(link.index, net, true).unwrap();
        })
        .unwrap();
}

/// A libcni result cache entry, as podman, containerd and CRI-O write them.
fn cache_entry(dir: &std::path::Path, network: &str, id: &str, netns: &str, address: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let entry = serde_json::json!({
        "kind": "cniCacheV1",
        "containerId": id,
        "config": "e30=",
        "ifName": "eth0",
        "networkName": network,
        "netns": netns,
        "result": {"cniVersion": "1.1.0", "ips": [{"address": address}]},
    });
    std::fs::write(dir.join(format!("{network}-{id}-eth0")), entry.to_string()).unwrap();
}

#[test]
#[ignore = "privileged: needs root"]
fn a_store_of_random_bytes_under_12_live_pods_never_hands_their_addresses_out_again() {
    need_root();
    let mut node = Node::new();
    node.start();
    let conf = node.conf("rebuilt", "10.72.0.0/24");
    let pods: Vec<NsHolder> = (0..12).map(|_| NsHolder::spawn("exec sleep 600")).collect();
    let mut live = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let netns = format!("/proc/{}/ns/net", pod.pid());
        let id = format!("live{i}");
        let ip = address(&plugin("ADD", &id, &netns, &conf));
        // Half are known from the runtime's result cache alone, half only from the address
        // on their interface: each source must be enough.
        if i < 6 {
            cache_entry(&node.path("cni-cache"), "rebuilt", &id, &netns, &ip);
        } else {
            put_address(&netns, &ip);
        }
        live.push(ip);
    }
    node.kill9();
    node.damage_store();
    node.start();
    assert!(node.log().contains("store rebuilt"), "{}", node.log());
    let mut given = Vec::new();
    for i in 0..12 {
        let ip = address(&plugin("ADD", &format!("new{i}"), NO_NETNS, &conf));
        assert!(
            !live.contains(&ip),
            "{ip} handed out again: live pods hold {live:?}"
        );
        given.push(ip);
    }
    // Every live pod's address is held, by its container or by its namespace.
    let held: Vec<String> = node.allocations().into_iter().map(|a| a.1).collect();
    for ip in &live {
        let bare = ip.split('/').next().unwrap();
        assert!(held.iter().any(|h| h == bare), "{bare} not held: {held:?}");
    }
    assert_eq!(held.len(), 24);
    drop(pods);
}
