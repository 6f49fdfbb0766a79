//! `trestlectl add|del|check|gc|status|ls|install`: the runtime side, run as a real process inside a private host
//! namespace, against the real plugins (trestle, and the reference suite's portmap and tuning for chaining).

mod common;

use base64::Engine;
use common::{reference_dir, remove_pod_address, World};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use trestlectl::runtime::enter_on_exec;

/// A conf dir, a cache dir and trestlectl run inside the world's host namespace.
struct Runtime<'w> {
    w: &'w World,
    conf_dir: PathBuf,
    cache_dir: PathBuf,
    cni_path: String,
}

impl<'w> Runtime<'w> {
    fn new(w: &'w World, extra_path: Option<&Path>) -> Self {
        let conf_dir = w.dir.0.join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let mut cni_path = w.bins.display().to_string();
        if let Some(p) = extra_path {
            cni_path = format!("{cni_path}:{}", p.display());
        }
        Runtime {
            w,
            conf_dir,
            cache_dir: w.dir.0.join("cache"),
            cni_path,
        }
    }

    fn write_conf(&self, file: &str, conf: &Value) -> Vec<u8> {
        let bytes = serde_json::to_vec_pretty(conf).unwrap();
        std::fs::write(self.conf_dir.join(file), &bytes).unwrap();
        bytes
    }

    fn ctl(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(self.w.bins.join("trestlectl"));
        cmd.args(args)
            .arg("--conf-dir")
            .arg(&self.conf_dir)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--cni-path")
            .arg(&self.cni_path)
            .env_remove("CNI_ARGS")
            .env_remove("CAP_ARGS")
            .envs(env.iter().copied());
        enter_on_exec(&mut cmd, &self.w.host);
        cmd.output().expect("run trestlectl")
    }

    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.ctl(args, env);
        assert!(
            out.status.success(),
            "trestlectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn cache_file(&self, net: &str, cid: &str) -> PathBuf {
        self.cache_dir.join(format!("results/{net}-{cid}-eth0"))
    }
}

fn trestle_list(w: &World, name: &str, version: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "plugins": [{
            "type": "trestle",
            "bridge": "tr-rt0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {"type": "trestle-ipam", "subnet": subnet, "dataDir": w.data_dir()}
        }]
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
#[ignore = "privileged: needs root"]
fn add_check_del_with_the_libcni_cache() {
    let w = World::new();
    let rt = Runtime::new(&w, None);
    let bytes = rt.write_conf(
        "10-net.conflist",
        &trestle_list(&w, "rtnet", "1.0.0", "10.31.0.0/24"),
    );
    let pod = w.pod();
    let ns = pod.path().display().to_string();

    let out = rt.ok(
        &["add", "rtnet", &ns, "--container-id", "c1"],
        &[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p")],
    );
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["ips"][0]["address"], "10.31.0.2/24", "{out}");

    // The cache file is libcni's: kind, base64 of the conflist bytes, args, result.
    let cached: Value =
        serde_json::from_slice(&std::fs::read(rt.cache_file("rtnet", "c1")).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], "c1");
    assert_eq!(cached["netns"], ns.as_str());
    assert_eq!(
        cached["cniArgs"],
        json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]])
    );
    let config = base64::engine::general_purpose::STANDARD
        .decode(cached["config"].as_str().unwrap())
        .unwrap();
    assert_eq!(config, bytes);
    assert_eq!(cached["result"], result);

    let ls = rt.ok(&["ls"], &[]);
    assert!(
        ls.contains("rtnet") && ls.contains("c1") && ls.contains("10.31.0.2/24"),
        "{ls}"
    );
    rt.ok(&["check", "rtnet", &ns, "--container-id", "c1"], &[]);

    // Take the pod's address away: CHECK must see it against the cached result.
    remove_pod_address(pod.ns(), "10.31.0.2/24");
    let out = rt.ctl(&["check", "rtnet", &ns, "--container-id", "c1"], &[]);
    assert!(
        !out.status.success(),
        "CHECK passed without the pod's address"
    );
    assert!(stderr(&out).contains("(check)"), "{}", stderr(&out));

    rt.ok(&["del", "rtnet", &ns, "--container-id", "c1"], &[]);
    assert!(
        !rt.cache_file("rtnet", "c1").exists(),
        "cache entry left after DEL"
    );
    assert!(w.reservations("rtnet").is_empty());
    rt.ok(&["del", "rtnet", &ns, "--container-id", "c1"], &[]);
    assert_eq!(
        rt.ok(&["ls"], &[]).lines().count(),
        1,
        "only the header is left"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn default_container_id_is_cnitools() {
    let w = World::new();
    let rt = Runtime::new(&w, None);
    rt.write_conf(
        "10-net.conflist",
        &trestle_list(&w, "idnet", "1.0.0", "10.32.0.0/24"),
    );
    let pod = w.pod();
    let ns = pod.path().display().to_string();
    rt.ok(&["add", "idnet", &ns], &[]);
    let id = trestlectl::attach::cnitool_container_id(&ns);
    assert!(rt.cache_file("idnet", &id).exists());
    rt.ok(&["del", "idnet", &ns], &[]);
    assert!(!rt.cache_file("idnet", &id).exists());
}

#[test]
#[ignore = "privileged: needs root"]
fn chained_with_reference_portmap_and_tuning() {
    let reference = reference_dir()
        .expect("reference plugins missing: apt-get install containernetworking-plugins");
    let w = World::new();
    let rt = Runtime::new(&w, Some(&reference));
    let mut list = trestle_list(&w, "chain", "1.0.0", "10.33.0.0/24");
    // Dual stack, so portmap maps both families from trestle's result.
    list["plugins"][0]["ipam"] = json!({
        "type": "trestle-ipam",
        "ranges": [[{"subnet": "10.33.0.0/24"}], [{"subnet": "fd33::/64"}]],
        "dataDir": w.data_dir()
    });
    let plugins = list["plugins"].as_array_mut().unwrap();
    plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    plugins.push(json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "555"}}));
    rt.write_conf("10-chain.conflist", &list);
    let pod = w.pod();
    let ns = pod.path().display().to_string();
    let caps = r#"{"portMappings":[{"hostPort":18080,"containerPort":8080,"protocol":"tcp"}]}"#;

    let out = rt.ok(
        &["add", "chain", &ns, "--container-id", "pm1"],
        &[("CAP_ARGS", caps)],
    );
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["ips"][0]["address"], "10.33.0.2/24", "{out}");
    let somaxconn = pod
        .ns()
        .run(|| std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap())
        .unwrap();
    assert_eq!(somaxconn.trim(), "555", "tuning ran on trestle's result");

    // portmap's DNAT: the host reaches the pod's 8080 through its own gateway address's 18080.
    let listener = pod
        .ns()
        .run(|| trestlectl::probe::listen("10.33.0.2:8080".parse().unwrap()).unwrap())
        .unwrap();
    let server = std::thread::spawn(move || {
        trestlectl::probe::serve_once(&listener, Duration::from_secs(5))
    });
    let reply = w
        .host
        .run(|| {
            trestlectl::probe::exchange(
                "10.33.0.1:18080".parse().unwrap(),
                "hello",
                Duration::from_secs(5),
            )
        })
        .unwrap()
        .expect("connect through the port mapping");
    assert!(reply.contains("hello"), "{reply}");
    server.join().unwrap().unwrap();

    // No CHECK here: Debian's portmap 1.1.1 checks its IPv4 rules in the ip6tables table whenever ip6tables works,
    // so its CHECK fails under any runtime (upstream bug, fixed in later releases).
    rt.ok(&["del", "chain", &ns, "--container-id", "pm1"], &[]);
    let rules = iptables_save(&w);
    assert!(
        !rules.contains("18080"),
        "portmap rules left after DEL:\n{rules}"
    );
    assert!(w.reservations("chain").is_empty());
    assert!(!rt.cache_file("chain", "pm1").exists());
}

fn iptables_save(w: &World) -> String {
    let mut cmd = Command::new("iptables-save");
    enter_on_exec(&mut cmd, &w.host);
    String::from_utf8(cmd.output().expect("iptables-save").stdout).unwrap()
}

#[test]
#[ignore = "privileged: needs root"]
fn gc_deletes_attachments_not_named_valid() {
    let w = World::new();
    let rt = Runtime::new(&w, None);
    rt.write_conf(
        "10-gc.conflist",
        &trestle_list(&w, "gcnet", "1.1.0", "10.34.0.0/24"),
    );
    let pods: Vec<_> = (0..3).map(|_| w.pod()).collect();
    for (i, p) in pods.iter().enumerate() {
        rt.ok(
            &[
                "add",
                "gcnet",
                &p.path().display().to_string(),
                "--container-id",
                &format!("g{i}"),
            ],
            &[],
        );
    }
    assert_eq!(w.reservations("gcnet").len(), 3);

    let refused = rt.ctl(&["gc", "gcnet"], &[]);
    assert!(
        !refused.status.success(),
        "gc without --valid or --all must refuse"
    );
    assert_eq!(w.reservations("gcnet").len(), 3);

    rt.ok(&["gc", "gcnet", "--valid", "g0", "--valid", "g2/eth0"], &[]);
    assert_eq!(w.reservations("gcnet").len(), 2);
    assert!(!rt.cache_file("gcnet", "g1").exists());
    assert!(rt.cache_file("gcnet", "g0").exists() && rt.cache_file("gcnet", "g2").exists());
    assert_eq!(w.ports("tr-rt0").len(), 2, "g1's port is gone");

    rt.ok(&["gc", "gcnet", "--all"], &[]);
    assert!(w.reservations("gcnet").is_empty());
    assert_eq!(rt.ok(&["ls", "gcnet"], &[]).lines().count(), 1);
    assert!(w.wait_no_veth().is_empty());
}

#[test]
#[ignore = "privileged: needs root"]
fn status_answers_per_network() {
    let w = World::new();
    let rt = Runtime::new(&w, None);
    rt.write_conf(
        "10-st.conflist",
        &trestle_list(&w, "stnet", "1.1.0", "10.35.0.0/24"),
    );
    rt.write_conf(
        "20-old.conflist",
        &trestle_list(&w, "oldnet", "1.0.0", "10.36.0.0/24"),
    );
    let mut broken = trestle_list(&w, "broken", "1.1.0", "10.37.0.0/24");
    broken["plugins"][0]["type"] = json!("no-such-plugin");
    rt.write_conf("30-broken.conflist", &broken);
    rt.ok(&["status", "stnet"], &[]);
    rt.ok(&["status", "oldnet"], &[]);
    let out = rt.ctl(&["status", "broken"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-plugin"), "{}", stderr(&out));
    let out = rt.ctl(&["status", "missing"], &[]);
    assert!(
        stderr(&out).contains("no net configuration with name \"missing\""),
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn installed_plugins_and_config_serve_an_add() {
    let w = World::new();
    let bin_dir = w.dir.0.join("opt-cni-bin");
    let conf_dir = w.dir.0.join("net.d");
    let conf_file = w.dir.0.join("mine.conflist");
    std::fs::write(
        &conf_file,
        trestle_list(&w, "inst", "1.0.0", "10.38.0.0/24").to_string(),
    )
    .unwrap();
    let install = |extra: &[&str]| {
        let mut cmd = Command::new(w.bins.join("trestlectl"));
        cmd.arg("install")
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--conf-dir")
            .arg(&conf_dir)
            .arg("--config")
            .arg(&conf_file)
            .args(extra);
        cmd.output().unwrap()
    };
    let first = install(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&install(&[])).contains("unchanged"),
        "second install changes nothing"
    );

    let rt = Runtime {
        w: &w,
        conf_dir: conf_dir.clone(),
        cache_dir: w.dir.0.join("cache"),
        cni_path: bin_dir.display().to_string(),
    };
    let pod = w.pod();
    let ns = pod.path().display().to_string();
    let out = rt.ok(&["add", "inst", &ns, "--container-id", "i1"], &[]);
    assert!(out.contains("10.38.0.2/24"), "{out}");
    rt.ok(&["del", "inst", &ns, "--container-id", "i1"], &[]);
}

/// `trestlectl pause --netns --name NAME`, as the end-to-end test starts pods in a node container: a process that
/// holds a network namespace of its own. Killed when dropped.
struct PauseNetns {
    child: std::process::Child,
    ns: trestle_netns::NetNs,
}

impl PauseNetns {
    /// Starts it (inside `host` when given) and waits until its namespace is not `host`'s and has `lo` up.
    fn start(ctl: &Path, name: &str, host: &trestle_netns::NetNs, enter: bool) -> PauseNetns {
        let mut cmd = Command::new(ctl);
        cmd.args(["pause", "--netns", "--name", name]);
        if enter {
            enter_on_exec(&mut cmd, host);
        }
        let mut child = cmd.spawn().expect("start trestlectl pause --netns");
        let path = format!("/proc/{}/ns/net", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("trestlectl pause --netns exited: {status}");
            }
            let ns = trestle_netns::NetNs::open(&path).unwrap();
            if !ns.same_as(host) && lo_up(&ns) {
                return PauseNetns { child, ns };
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pid {} has no namespace of its own with lo up after 10 s",
                child.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn netns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.child.id())
    }
}

impl Drop for PauseNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lo_up(ns: &trestle_netns::NetNs) -> bool {
    ns.run(|| {
        let mut nl = trestle_netlink::Netlink::open().unwrap();
        nl.link_by_name("lo").unwrap().is_some_and(|lo| lo.up)
    })
    .unwrap()
}

#[test]
#[ignore = "privileged: needs root"]
fn pause_netns_holds_a_namespace_of_its_own_with_lo_up_and_its_name_on_its_command_line() {
    let ctl = Path::new(env!("CARGO_BIN_EXE_trestlectl"));
    let ours = trestle_netns::NetNs::current().unwrap();
    let name = format!("pod-pause-{}", std::process::id());
    let pause = PauseNetns::start(ctl, &name, &ours, false);
    assert!(!pause.ns.same_as(&ours));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pause.child.id())).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    assert!(
        args.windows(2)
            .any(|w| w == [&b"--name"[..], name.as_bytes()]),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    // Only lo: nothing else is made in it.
    let links = pause
        .ns
        .run(|| trestle_netlink::Netlink::open().unwrap().links().unwrap())
        .unwrap();
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo"]);
    let pid = pause.child.id();
    drop(pause);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn plugins_only_install_and_a_pause_netns_pod_serve_an_add() {
    let w = World::new();
    let bin_dir = w.dir.0.join("opt-cni-bin");
    let machine_conf = Path::new("/etc/cni/net.d/10-trestle.conflist");
    let before = std::fs::read(machine_conf).ok();
    let install = |extra: &[&str]| {
        Command::new(w.bins.join("trestlectl"))
            .args(["install", "--plugins-only", "--bin-dir"])
            .arg(&bin_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    // A DaemonSet's init container: the two plugins, no trestled, no conflist.
    let first = install(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let mut installed: Vec<String> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    installed.sort();
    assert_eq!(installed, ["trestle", "trestle-ipam"]);
    assert_eq!(
        std::fs::read(bin_dir.join("trestle")).unwrap(),
        std::fs::read(w.bins.join("trestle")).unwrap()
    );
    assert_eq!(
        std::fs::read(machine_conf).ok(),
        before,
        "no conflist written"
    );
    let again = install(&[]);
    assert_eq!(
        stderr(&again)
            .lines()
            .filter(|l| l.starts_with("unchanged "))
            .count(),
        2,
        "{}",
        stderr(&again)
    );
    for extra in [
        &["--config", "x.conflist"][..],
        &["--start-daemon"],
        &["--systemd-units", "/tmp"],
        &["--conf-dir", "/tmp"],
    ] {
        let out = install(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{}",
            stderr(&out)
        );
    }

    // trestled writes the conflist once it is ready; here, the test does.
    let rt = Runtime {
        w: &w,
        conf_dir: w.dir.0.join("net.d"),
        cache_dir: w.dir.0.join("cache"),
        cni_path: bin_dir.display().to_string(),
    };
    std::fs::create_dir_all(&rt.conf_dir).unwrap();
    rt.write_conf(
        "05-trestle.conflist",
        &trestle_list(&w, "ds", "1.1.0", "10.39.0.0/24"),
    );
    // The pod, as the end-to-end test makes one in a node container: a pause process in a namespace of its own,
    // ADDed by its /proc path.
    let name = format!("pod-ds-{}", std::process::id());
    let pause = PauseNetns::start(&w.bins.join("trestlectl"), &name, &w.host, true);
    let ns = pause.netns_path();
    let out = rt.ok(&["add", "ds", &ns, "--container-id", &name], &[]);
    assert!(out.contains("10.39.0.2/24"), "{out}");
    let (addrs, _) = common::pod_state(&pause.ns, "eth0");
    assert_eq!(addrs, ["10.39.0.2/24"]);
    rt.ok(&["del", "ds", &ns, "--container-id", &name], &[]);
    assert_eq!(common::pod_state(&pause.ns, "eth0").0, Vec::<String>::new());
}
