//! End-to-end tests of the real `trestle` and `trestle-ipam` binaries in namespaces the tests create.

mod common;

use common::{pod_state, remove_pod_address, World, VERSIONS};
use serde_json::{json, Value};

/// The link group DEL parks cut-off host veth ends in (README, "DEL").
const DEAD_GROUP: u32 = 0x7472_0001;

fn addr_of(result: &Value) -> String {
    if let Some(ip4) = result.get("ip4") {
        return ip4["ip"].as_str().unwrap().to_owned();
    }
    result["ips"][0]["address"].as_str().unwrap().to_owned()
}

#[test]
#[ignore = "privileged: needs root"]
fn classic_config_every_version() {
    for (n, version) in VERSIONS.iter().copied().enumerate() {
        let mut w = World::new();
        if n % 2 == 1 {
            // Half the versions run trestle-ipam as a separate process, as any other IPAM plugin would be.
            w.env.push(("TRESTLE_IPAM_EXEC".into(), "1".into()));
        }
        let conf = w.classic(version);
        let pod = w.pod();
        let result = w.add("1234567890", &pod, &conf);
        assert_eq!(result["cniVersion"], version, "{result}");
        assert_eq!(addr_of(&result), "10.15.20.2/24", "{version}: {result}");
        if version < "0.3.0" {
            assert_eq!(result["ip4"]["gateway"], "10.15.20.1");
            assert!(result.get("interfaces").is_none());
        } else {
            assert_eq!(
                result["interfaces"].as_array().unwrap().len(),
                3,
                "{result}"
            );
            assert_eq!(result["interfaces"][2]["name"], "eth0");
            assert_eq!(
                result["interfaces"][2]["sandbox"],
                pod.path().display().to_string()
            );
            assert_eq!(result["ips"][0]["interface"], 2);
            assert_eq!(
                result["ips"][0].get("version").is_some(),
                version < "1.0.0",
                "{result}"
            );
        }
        let (addrs, routes) = pod_state(pod.ns(), "eth0");
        assert_eq!(addrs, vec!["10.15.20.2/24"], "{version}");
        assert_eq!(
            routes,
            vec![
                "0.0.0.0/0 via 10.15.20.1",
                "1.1.1.1/32 via 10.15.20.1",
                "10.15.20.0/24 dev"
            ],
            "{version}"
        );
        assert_eq!(w.ports("cni_bridge0").len(), 1);
        assert_eq!(w.masqueraded(), vec!["10.15.20.0/24"], "{version}");
        assert_eq!(w.reservations("mybridge"), vec!["10.15.20.2"]);
        let path = pod.path().display().to_string();
        w.del("1234567890", &path, &conf);
        w.del("1234567890", &path, &conf);
        assert!(w.ports("cni_bridge0").is_empty());
        assert!(w.masqueraded().is_empty());
        assert!(w.reservations("mybridge").is_empty());
        assert!(pod_state(pod.ns(), "eth0").0.is_empty());
        assert_eq!(w.wait_no_veth(), Vec::<String>::new(), "{version}");
    }
}

/// A veth pair parked for destruction whose destroyer never ran, as a killed DEL child leaves it (`name` is a
/// trestle host end's: GC destroys only those).
fn park_stray(w: &World, pod: &trestle_netns::NamedNetNs, name: &str) {
    w.host
        .run(|| {
            let mut nl = trestle_netlink::Netlink::open().unwrap();
            let end = trestle_netlink::VethEnd {
                name: name.into(),
                mtu: None,
                mac: None,
                group: None,
            };
            nl.create_veth(&end, &end, pod.ns().fd()).unwrap();
            let i = nl.link_by_name(name).unwrap().unwrap().index;
            nl.park(i, DEAD_GROUP).unwrap();
        })
        .unwrap();
}

/// DEL answers once the pod is cut off; the pair is destroyed by a detached child. A pair whose destruction never
/// happened (the child was killed, the node crashed) is destroyed by GC or by the next DEL.
#[test]
#[ignore = "privileged: needs root"]
fn cut_off_pairs_never_stay() {
    let w = World::new();
    let conf = w.classic("1.1.0");
    let pod = w.pod();
    let path = pod.path().display().to_string();
    w.add("a", &pod, &conf);
    w.del("a", &path, &conf);
    // At once: no port on the bridge, and the interface name is free for a new ADD.
    assert!(w.ports("cni_bridge0").is_empty());
    w.add("a2", &pod, &conf);
    w.del("a2", &path, &conf);
    assert!(w.wait_no_veth().is_empty());
    // A left-over cut-off pair, as a killed DEL child would leave it.
    let stray = w.pod();
    park_stray(&w, &stray, "veth00000077");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = w.call("GC", "", "", "", &gc);
    assert!(out.success, "{}", out.stdout);
    assert!(w.wait_no_veth().is_empty());
    // The next DEL's child reaps one too.
    park_stray(&w, &stray, "veth00000078");
    w.add("b", &pod, &conf);
    w.del("b", &path, &conf);
    assert!(w.wait_no_veth().is_empty());
}

/// Every log file the plugins wrote into `dir` (one per day), concatenated.
fn read_logs(dir: &std::path::Path) -> String {
    let mut log = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        log.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    log
}

/// One reaper per host namespace: DELs that come while it works leave their pairs to it instead of forking
/// another, and every pair still goes.
#[test]
#[ignore = "privileged: needs root"]
fn back_to_back_dels_share_one_reaper() {
    let w = World::new();
    let logs = tempfile::tempdir().unwrap();
    let mut conf = w.classic("1.1.0");
    conf["logLevel"] = json!("debug");
    conf["logFile"] = json!(logs.path().join("trestle.log").display().to_string());
    let pods: Vec<_> = (0..10).map(|_| w.pod()).collect();
    for (i, pod) in pods.iter().enumerate() {
        w.add(&format!("r{i}"), pod, &conf);
    }
    for (i, pod) in pods.iter().enumerate() {
        w.del(&format!("r{i}"), &pod.path().display().to_string(), &conf);
    }
    assert!(w.wait_no_veth().is_empty());
    let log = read_logs(logs.path());
    let started = log.matches("DEL: reaper started").count();
    let left = log.matches("DEL: pair left to the running reaper").count();
    assert_eq!(started + left, 10, "{log}");
    // DELs start a few milliseconds apart; a reaper waits and works for tens of milliseconds.
    assert!(left > 0, "every DEL started its own reaper:\n{log}");
}

#[test]
#[ignore = "privileged: needs root"]
fn check_status_and_version() {
    let w = World::new();
    let conf = w.classic("1.1.0");
    let pod = w.pod();
    let path = pod.path().display().to_string();
    let result = w.add("c1", &pod, &conf);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    let out = w.call("CHECK", "c1", &path, "eth0", &with_prev);
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty());
    // Without prevResult CHECK must fail.
    let out = w.call("CHECK", "c1", &path, "eth0", &conf);
    assert!(!out.success);
    // Remove the pod's address behind the plugin's back: CHECK notices.
    remove_pod_address(pod.ns(), "10.15.20.2/24");
    let out = w.call("CHECK", "c1", &path, "eth0", &with_prev);
    assert!(!out.success);
    assert!(out.stdout.contains("10.15.20.2"), "{}", out.stdout);
    let out = w.call("STATUS", "", "", "", &conf);
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    let out = w.call("VERSION", "", "", "", &json!({"cniVersion": "1.0.0"}));
    let v = out.json().unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
    w.del("c1", &path, &conf);
}

/// Every malformed input gets an error object with the spec's code on stdout and consumes no address.
#[test]
#[ignore = "privileged: needs root"]
fn malformed_inputs_get_spec_codes_and_consume_nothing() {
    let w = World::new();
    let pod = w.pod();
    let path = pod.path().display().to_string();
    let good = w.classic("1.0.0");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let cases: Vec<(&str, &str, &str, &str, Value, u64)> = vec![
        (
            "bad JSON",
            "ADD",
            "c",
            "eth0",
            Value::String("{not json".into()),
            6,
        ),
        (
            "unknown version",
            "ADD",
            "c",
            "eth0",
            with("cniVersion", json!("9.9.9")),
            1,
        ),
        (
            "CHECK at 0.3.1",
            "CHECK",
            "c",
            "eth0",
            with("cniVersion", json!("0.3.1")),
            1,
        ),
        ("GC at 1.0.0", "GC", "", "", good.clone(), 1),
        (
            "bad network name",
            "ADD",
            "c",
            "eth0",
            with("name", json!("bad/name")),
            7,
        ),
        (
            "empty network name",
            "ADD",
            "c",
            "eth0",
            with("name", json!("")),
            7,
        ),
        (
            "negative log age",
            "ADD",
            "c",
            "eth0",
            with("logMaxAge", json!(-1)),
            7,
        ),
        ("bad interface name", "ADD", "c", "eth0/x", good.clone(), 4),
        (
            "long interface name",
            "ADD",
            "c",
            "abcdefghijklmnop",
            good.clone(),
            4,
        ),
        ("bad container id", "ADD", "-bad", "eth0", good.clone(), 4),
        ("missing container id", "ADD", "", "eth0", good.clone(), 4),
        (
            "unimplemented key",
            "ADD",
            "c",
            "eth0",
            with("macspoofchk", json!(true)),
            2,
        ),
        (
            "wrong type",
            "ADD",
            "c",
            "eth0",
            with("isGateway", json!("yes")),
            7,
        ),
    ];
    for (what, cmd, id, ifname, conf, code) in cases {
        let stdin = match &conf {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let mut inv =
            trestlectl::runtime::Invocation::new(&w.bins.join("trestle"), cmd, id, &path, ifname);
        inv.path = w.bins.display().to_string();
        let out = inv.run(stdin.as_bytes(), Some(&w.host)).unwrap();
        assert!(!out.success, "{what}: succeeded");
        let err = out
            .json()
            .unwrap_or_else(|| panic!("{what}: stdout is not JSON: {:?}", out.stdout));
        assert_eq!(err["code"].as_u64(), Some(code), "{what}: {err}");
        assert!(
            !err["msg"].as_str().unwrap_or("").is_empty(),
            "{what}: {err}"
        );
        assert!(
            w.reservations("mybridge").is_empty(),
            "{what} consumed an address"
        );
    }
    // Missing CNI_NETNS on ADD names the variable.
    let out = w.call_with(
        &w.bins.join("trestle"),
        "ADD",
        "c",
        "",
        "eth0",
        &good,
        |_| {},
    );
    assert_eq!(out.error_code(), Some(4), "{}", out.stdout);
    assert!(out.stdout.contains("CNI_NETNS"), "{}", out.stdout);
    // CNI_ARGS with an unknown key and no IgnoreUnknown is refused; with it, accepted.
    let out = w.call_with(
        &w.bins.join("trestle"),
        "ADD",
        "c",
        &path,
        "eth0",
        &good,
        |i| i.args = "FOO=bar".into(),
    );
    assert!(!out.success);
    assert!(w.reservations("mybridge").is_empty());
    let out = w.call_with(
        &w.bins.join("trestle"),
        "ADD",
        "c",
        &path,
        "eth0",
        &good,
        |i| i.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".into(),
    );
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    w.del("c", &path, &good);
}

/// A failure after the address was reserved and the bridge made (here: every host name the attachment may take
/// is in use) rolls everything back.
#[test]
#[ignore = "privileged: needs root"]
fn failed_add_rolls_back() {
    let w = World::new();
    let pod = w.pod();
    let conf = w.classic("1.0.0");
    w.host
        .run(|| {
            let mut nl = trestle_netlink::Netlink::open().unwrap();
            let home = trestle_netns::NetNs::current().unwrap();
            for (i, name) in trestle::pair::host_names("c", "eth0")
                .into_iter()
                .enumerate()
            {
                let end = |name: String| trestle_netlink::VethEnd {
                    name,
                    ..Default::default()
                };
                nl.create_veth(&end(name), &end(format!("taken{i}")), home.fd())
                    .unwrap();
            }
        })
        .unwrap();
    let out = w.call("ADD", "c", &pod.path().display().to_string(), "eth0", &conf);
    assert!(!out.success, "{}", out.stdout);
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert!(
        out.stdout.contains("no free host veth name"),
        "{}",
        out.stdout
    );
    assert!(w.reservations("mybridge").is_empty());
    assert!(w.masqueraded().is_empty());
    assert!(w.ports("cni_bridge0").is_empty());
    assert!(pod_state(pod.ns(), "eth0").0.is_empty());
    let veths = w
        .host_links()
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("veth"));
    assert_eq!(veths.count(), 16, "only the 8 pairs holding the names");
    // An existing interface of the same name is refused before anything changes.
    let conf = w.classic("1.0.0");
    w.add("c2", &pod, &conf);
    let out = w.call(
        "ADD",
        "other",
        &pod.path().display().to_string(),
        "eth0",
        &conf,
    );
    assert_eq!(out.error_code(), Some(101), "{}", out.stdout);
    // Only the first pod's address: the refused ADD reserved nothing.
    assert_eq!(w.reservations("mybridge").len(), 1);
}

/// DEL succeeds and releases the address when the namespace is gone, when CNI_NETNS is empty, and when nothing
/// was ever added.
#[test]
#[ignore = "privileged: needs root"]
fn del_is_idempotent_and_tolerant() {
    let w = World::new();
    let conf = w.classic("0.4.0");
    let pod = w.pod();
    let path = pod.path().display().to_string();
    w.add("gone", &pod, &conf);
    drop(pod);
    w.del("gone", &path, &conf);
    assert!(w.reservations("mybridge").is_empty());
    let pod = w.pod();
    w.add("empty", &pod, &conf);
    w.del("empty", "", &conf);
    assert!(w.reservations("mybridge").is_empty());
    w.del("never-added", "", &conf);
    w.del("never-added", "/nonexistent/netns", &conf);
    // A config ADD refuses does not make DEL fail: it still cleans up.
    let pod = w.pod();
    // (The "empty" pod above keeps its port: DEL without CNI_NETNS cannot reach its namespace.)
    // (The "gone" pod's port may still be there too: the kernel destroys a dead namespace asynchronously.)
    let names =
        |w: &World| -> Vec<String> { w.ports("cni_bridge0").into_iter().map(|l| l.name).collect() };
    let ports_before = names(&w);
    w.add("refused-later", &pod, &conf);
    let mut refused = conf.clone();
    refused["macspoofchk"] = json!(true);
    refused["isGateway"] = json!("not a bool");
    w.del("refused-later", &pod.path().display().to_string(), &refused);
    assert!(w.reservations("mybridge").is_empty());
    let after = names(&w);
    assert!(
        after.iter().all(|p| ports_before.contains(p)),
        "{after:?} vs {ports_before:?}"
    );
    // The "empty" pod's namespace still holds its veth on the bridge, so the network's masquerade stays (it is
    // shared by the bridge's pods); GC with no valid attachment removes it.
    assert_eq!(w.masqueraded(), vec!["10.15.20.0/24"]);
    let mut gc = w.classic("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = w.call("GC", "", "", "", &gc);
    assert!(out.success, "{}", out.stdout);
    assert!(w.masqueraded().is_empty());
}

/// GC releases reservations and masquerade of every attachment not listed as valid.
#[test]
#[ignore = "privileged: needs root"]
fn gc_releases_what_is_not_valid() {
    let w = World::new();
    let conf = w.classic("1.1.0");
    let pods: Vec<_> = (0..3).map(|_| w.pod()).collect();
    for (i, p) in pods.iter().enumerate() {
        w.add(&format!("c{i}"), p, &conf);
    }
    assert_eq!(w.reservations("mybridge").len(), 3);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let out = w.call("GC", "", "", "", &gc);
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert_eq!(w.reservations("mybridge"), vec!["10.15.20.3"]);
    // A valid attachment remains, so the network's masquerade stays; with none valid it goes.
    assert_eq!(w.masqueraded(), vec!["10.15.20.0/24"]);
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = w.call("GC", "", "", "", &gc);
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert!(w.reservations("mybridge").is_empty());
    assert!(w.masqueraded().is_empty());
}

/// 60 concurrent ADDs get 60 distinct addresses; 60 concurrent DELs leave the bridge without ports.
#[test]
#[ignore = "privileged: needs root"]
fn sixty_concurrent_adds_and_dels() {
    const N: usize = 60;
    let w = World::new();
    let conf = w.classic("1.0.0");
    let pods: Vec<_> = (0..N).map(|_| w.pod()).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (w, conf) = (&w, &conf);
                s.spawn(move || w.add(&format!("pod{i}"), p, conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<String> = results.iter().map(addr_of).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), N, "duplicate addresses: {addrs:?}");
    assert_eq!(w.ports("cni_bridge0").len(), N);
    assert_eq!(w.masqueraded(), vec!["10.15.20.0/24"]);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (w, conf) = (&w, &conf);
            s.spawn(move || w.del(&format!("pod{i}"), &p.path().display().to_string(), conf));
        }
    });
    assert!(w.ports("cni_bridge0").is_empty());
    assert!(w.reservations("mybridge").is_empty());
    assert!(w.masqueraded().is_empty());
}

/// Pods on the same bridge reach each other and the gateway; stdout carries only the result.
#[test]
#[ignore = "privileged: needs root"]
fn pods_talk_through_the_bridge() {
    let w = World::new();
    let conf = w.classic("1.0.0");
    let (a, b) = (w.pod(), w.pod());
    w.add("a", &a, &conf);
    w.add("b", &b, &conf);
    let rtt = a
        .ns()
        .run(|| {
            trestlectl::probe::ping(
                "10.15.20.3".parse().unwrap(),
                1,
                std::time::Duration::from_secs(3),
            )
        })
        .unwrap();
    assert!(rtt.is_ok(), "{rtt:?}");
    let rtt = w
        .host
        .run(|| {
            trestlectl::probe::ping(
                "10.15.20.2".parse().unwrap(),
                2,
                std::time::Duration::from_secs(3),
            )
        })
        .unwrap();
    assert!(rtt.is_ok(), "{rtt:?}");
}

/// Logs go to stderr and to the configured file (rotated daily by name, files past `logMaxAge` days removed), never
/// to stdout.
#[test]
#[ignore = "privileged: needs root"]
fn logging_goes_to_file_and_stderr_only() {
    let w = World::new();
    let mut conf = w.classic("1.0.0");
    let log = w.dir.0.join("trestle.log");
    conf["logLevel"] = json!("debug");
    conf["logFile"] = json!(log.display().to_string());
    conf["logMaxAge"] = json!(30);
    let expired = w.dir.0.join("trestle.log.2001-02-03");
    std::fs::write(&expired, "old\n").unwrap();
    let pod = w.pod();
    let out = w.call(
        "ADD",
        "logged",
        &pod.path().display().to_string(),
        "eth0",
        &conf,
    );
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.json().is_some(),
        "stdout must be only the result: {:?}",
        out.stdout
    );
    assert!(
        out.stderr.contains("ADD container=logged"),
        "{}",
        out.stderr
    );
    // The line names the program (argv[0], which the plugin's own C main hands to the logger) and its pid.
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(" trestle[") && l.contains("ADD container=logged")),
        "{}",
        out.stderr
    );
    let files: Vec<_> = std::fs::read_dir(&w.dir.0)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("trestle.log.2"))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "the expired file is gone, today's is there: {files:?}"
    );
    assert!(!expired.exists());
    let text = std::fs::read_to_string(w.dir.0.join(&files[0])).unwrap();
    assert!(text.contains("ADD container=logged"), "{text}");
    // The environment wins over the config.
    let out = w.call_with(
        &w.bins.join("trestle"),
        "DEL",
        "logged",
        &pod.path().display().to_string(),
        "eth0",
        &conf,
        |i| {
            i.extra_env
                .push(("TRESTLE_LOG_LEVEL".into(), "error".into()))
        },
    );
    assert!(out.success);
    assert!(
        !out.stderr.contains("DEL container=logged"),
        "{}",
        out.stderr
    );
}

/// An unprivileged process that holds what used to be the reaper's claim (the abstract unix socket name
/// `trestle-reaper` in the host namespace), and tries to make the new one, cannot make DELs leave their pairs to
/// a reaper that does not exist.
#[test]
#[ignore = "privileged: needs root"]
fn an_unprivileged_squatter_cannot_starve_the_reaper() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let w = World::new();
    let logs = tempfile::tempdir().unwrap();
    let mut conf = w.classic("1.1.0");
    conf["logLevel"] = json!("debug");
    conf["logFile"] = json!(logs.path().join("trestle.log").display().to_string());
    // One DEL first, so the claim directory exists for the squatter to try.
    let pod = w.pod();
    w.add("first", &pod, &conf);
    w.del("first", &pod.path().display().to_string(), &conf);
    assert!(w.wait_no_veth().is_empty());
    let fd = w.host.fd().as_raw_fd();
    let mut squatter = std::process::Command::new("sleep");
    squatter.arg("60");
    // SAFETY: runs in the forked child before exec and makes only async-signal-safe system calls; `fd` is open
    // in the parent (so in the child) until spawn returns. The bound socket has no CLOEXEC, so `sleep` holds it.
    unsafe {
        squatter.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::setns(fd, libc::CLONE_NEWNET) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return fail();
            }
            // The new claim is out of reach: the directory is root's alone.
            let claim = c"/run/trestle/reaper/squat";
            let f = libc::open(claim.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
            if f >= 0 {
                return Err(std::io::Error::other("nobody could create a reaper claim"));
            }
            // The old one is anyone's: bind it.
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let name = b"\0trestle-reaper";
            for (d, b) in addr.sun_path.iter_mut().zip(name) {
                *d = *b as libc::c_char;
            }
            let len = (std::mem::size_of::<libc::sa_family_t>() + name.len()) as libc::socklen_t;
            if s < 0 || libc::bind(s, (&raw const addr).cast(), len) != 0 {
                return fail();
            }
            Ok(())
        });
    }
    let mut squatter = squatter.spawn().expect("start the squatter");
    let pods: Vec<_> = (0..10).map(|_| w.pod()).collect();
    for (i, pod) in pods.iter().enumerate() {
        w.add(&format!("s{i}"), pod, &conf);
    }
    for (i, pod) in pods.iter().enumerate() {
        w.del(&format!("s{i}"), &pod.path().display().to_string(), &conf);
    }
    let left = w.wait_no_veth();
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(
        left.is_empty(),
        "pairs left behind while the old claim was squatted: {left:?}"
    );
    let log = read_logs(logs.path());
    assert!(log.matches("DEL: reaper started").count() >= 2, "{log}");
}
