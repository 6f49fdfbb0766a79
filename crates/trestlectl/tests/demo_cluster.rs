//! `trestlectl demo --cluster` runs to the end, shows direct routes and then VXLAN with the kernel's real entries,
//! and leaves nothing behind; without etcd it says how to install it and makes nothing.
//!
//! Each run gets a mark in its environment, which everything it starts inherits (etcd, trestled, the sandboxes,
//! the plugins): the processes of this run are found by it, whatever else runs on the machine, and a private
//! `TMPDIR` shows whether it wrote a temporary file.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

/// A mark no other run carries.
fn unique_mark(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{nanos}", std::process::id())
}

const MARK_VAR: &str = "TRESTLE_DEMO_CLUSTER_TEST_MARK";

/// The processes whose environment holds `MARK_VAR=mark`: "pid name".
fn marked(mark: &str) -> Vec<String> {
    let want = format!("{MARK_VAR}={mark}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("{pid} {}", comm.trim()));
        }
    }
    found
}

/// Waits up to 10 s for the run's processes to be gone (a detached veth destroyer of DEL may outlive the demo
/// by a moment); those still there.
fn wait_gone(mark: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = marked(mark);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whatever in the machine's own namespaces looks like the act's: its links, addresses in its subnets, named
/// namespaces and mounts of its directory. Only these: other tests on the machine may add and remove their own
/// meanwhile. Empty unless the act leaked out of its private namespaces.
fn machine_state() -> Vec<String> {
    const LINKS: [&str; 7] = [
        "seg1",
        "seg2",
        "u-n1",
        "u-n2",
        "u-n3",
        "cbr0",
        "trestle.vxlan",
    ];
    let subnets: [ipnet::IpNet; 3] = [
        "192.168.1.0/24".parse().unwrap(),
        "192.168.2.0/24".parse().unwrap(),
        "10.244.0.0/16".parse().unwrap(),
    ];
    let mut nl = trestle_netlink::Netlink::open().unwrap();
    let mut found: Vec<String> = nl
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| LINKS.contains(&l.name.as_str()))
        .map(|l| format!("link {}", l.name))
        .collect();
    found.extend(
        nl.addresses(None)
            .unwrap()
            .iter()
            .filter(|a| subnets.iter().any(|s| s.contains(&a.address.addr())))
            .map(|a| format!("address {}", a.address)),
    );
    found.extend(
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        ["n1", "n2", "n3", "world"].contains(&n.as_str())
                            || n.contains("trestle-demo")
                    })
                    .map(|n| format!("netns {n}"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    found.extend(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains("trestle-demo"))
            .map(|l| format!("mount {l}")),
    );
    found.sort();
    found
}

/// `trestlectl demo --cluster --no-color`, marked, with `tmp` as its TMPDIR and `env` added.
fn demo(mark: &str, tmp: &Path, env: &[(&str, &str)]) -> Output {
    let bins = common::bin_dir();
    assert!(
        bins.join("trestled").is_file(),
        "trestled missing: build the workspace (cargo build --workspace) before these tests"
    );
    Command::new(bins.join("trestlectl"))
        .args(["demo", "--cluster", "--no-color"])
        .env(MARK_VAR, mark)
        .env("TMPDIR", tmp)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (cargo test -- --include-ignored goes through tools/test-runner)"
    );
}

/// The first line of `text` holding every one of `needles`.
fn line_with<'t>(text: &'t str, needles: &[&str]) -> &'t str {
    text.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{text}"))
}

/// The address the output says the pod on `node` got.
fn pod_address(text: &str, node: &str) -> String {
    let line = line_with(text, &[&format!("ok the pod on {node} got ")]);
    let rest = line.split(" got ").nth(1).unwrap();
    rest.split('/').next().unwrap().to_owned()
}

/// The process IDs the output gives for trestled and etcd (`... &   # pid N`).
fn service_pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter(|l| l.contains("trestled --store etcd") || l.contains("etcd --name trestle-demo"))
        .filter_map(|l| l.split("# pid ").nth(1))
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn the_cluster_act_routes_directly_then_over_vxlan_and_leaves_nothing() {
    need_root();
    let mark = unique_mark("act");
    let tmp = TempDir::new("demo-cluster");
    let before = machine_state();
    let out = demo(&mark, &tmp.0, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");

    // Part 1: n1 and n2 share 192.168.1.0/24 and route to each other's block directly.
    let (p1, p2, p3) = (
        pod_address(&stdout, "n1"),
        pod_address(&stdout, "n2"),
        pod_address(&stdout, "n3"),
    );
    let part2 = stdout.find("Part 2 of 2").expect("a part 2");
    let (one, two) = stdout.split_at(part2);
    line_with(one, &["via 192.168.1.12 dev eth0 proto 116 metric 1024"]);
    line_with(one, &["via 192.168.1.11 dev eth0 proto 116 metric 1024"]);
    line_with(one, &["unreachable 10.244.0.0/16 proto 116 metric 4242"]);
    assert!(!one.contains("dev trestle.vxlan"), "{one}");
    line_with(one, &["net.ipv4.conf.cbr0.proxy_arp = 1"]);
    line_with(one, &["eth0: <UP,LOWER_UP> mtu 1450"]);
    line_with(
        one,
        &[&format!(
            "ok ICMP echo pod on n1 ({p1}) -> pod on n2 ({p2}): reply in"
        )],
    );
    line_with(
        one,
        &[&format!(
            "ok ICMP echo pod on n2 ({p2}) -> pod on n1 ({p1}): reply in"
        )],
    );
    line_with(
        one,
        &[
            "ok TCP pod on n1 -> ",
            &format!("the server saw the client as {p1}:"),
        ],
    );

    // Part 2: n3 on seg2, over VXLAN, with the entries the kernel really holds.
    line_with(
        two,
        &["via 192.168.2.13 dev trestle.vxlan proto 116 metric 1024 onlink mtu 1450"],
    );
    let mac = trestle_netlink::format_mac(trestle_routes::host::vtep_mac("n3"));
    line_with(two, &[&format!("{mac} dst 192.168.2.13 self permanent")]);
    line_with(two, &[&format!("192.168.2.13 lladdr {mac} PERMANENT")]);
    line_with(
        two,
        &["vxlan id 4096 local 192.168.1.11 dev eth0 dstport 4789 nolearning"],
    );
    line_with(
        two,
        &["via 192.168.1.11 dev trestle.vxlan", "onlink mtu 1450"],
    );
    line_with(
        two,
        &[&format!(
            "ok ICMP echo pod on n1 ({p1}) -> pod on n3 ({p3}): reply in"
        )],
    );
    line_with(
        two,
        &[&format!(
            "ok ICMP echo pod on n3 ({p3}) -> pod on n1 ({p1}): reply in"
        )],
    );
    line_with(
        two,
        &[
            "ok TCP pod on n1 -> ",
            &format!("the server saw the client as {p1}:"),
        ],
    );
    line_with(
        two,
        &[
            "ok TCP pod on n3 -> ",
            &format!("the server saw the client as {p3}:"),
        ],
    );
    line_with(
        two,
        &["ok a 1450-byte packet with Don't Fragment set crosses the tunnel"],
    );
    line_with(two, &["ok CNI STATUS succeeds on n1, n2 and n3"]);
    // The picture, in ASCII under --no-color, with the tunnels and both segments.
    let picture =
        &two[two.find("the wiring of three nodes").unwrap()..two.find("Step 12").unwrap()];
    assert!(picture.is_ascii(), "{picture}");
    for needle in [
        "VXLAN n1 <-> n3",
        "VXLAN n2 <-> n3",
        "| seg1 192.168.1.0/24",
        "| seg2 192.168.2.0/24",
        "a router namespace joins the segments: 192.168.1.254 on seg1, 192.168.2.1 on seg2",
        "| to n3: over VXLAN",
        "| to n2: direct",
    ] {
        assert!(picture.contains(needle), "no {needle:?} in:\n{picture}");
    }
    // The operator's view.
    line_with(two, &["n2 ", "alive", "192.168.1.12/24 (eth0)", "direct"]);
    line_with(
        two,
        &[
            "n3 ",
            "alive",
            "192.168.2.13/24 (eth0)",
            &mac,
            "1450",
            "vxlan",
        ],
    );
    assert!(stdout.contains("The cluster act is complete"), "{stdout}");

    // Nothing is left: no process of the run (trestled, etcd, sandboxes), no temporary file, no namespace, mount
    // or link on the machine.
    let left = wait_gone(&mark);
    assert!(left.is_empty(), "still running: {left:?}");
    let pids = service_pids(&stdout);
    assert_eq!(pids.len(), 4, "trestled x3 and etcd in:\n{stdout}");
    for pid in pids {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&env).contains(&mark),
            "pid {pid} of the demo is still running"
        );
    }
    assert_eq!(
        std::fs::read_dir(&tmp.0).unwrap().count(),
        0,
        "the demo wrote to TMPDIR"
    );
    assert!(!Path::new("/run/trestle-demo").exists());
    assert_eq!(before, machine_state());
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn an_interrupted_act_deletes_its_pods_and_stops_every_process() {
    use std::io::BufRead;
    need_root();
    let mark = unique_mark("interrupted");
    let tmp = TempDir::new("demo-cluster-interrupted");
    let before = machine_state();
    let mut child = Command::new(common::bin_dir().join("trestlectl"))
        .args(["demo", "--cluster", "--no-color"])
        .env(MARK_VAR, &mark)
        .env("TMPDIR", &tmp.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Two nodes run trestled and hold a pod each: as Ctrl-C would, SIGINT now.
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("Step 4:") {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
            break;
        }
    }
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{seen}\n{stderr}");
    assert!(
        stderr.contains("trestlectl demo: interrupted: the pods were deleted"),
        "{stderr}"
    );
    assert!(seen.contains("ok the pod on n2 got "), "{seen}");
    assert!(
        !seen.contains("Step 6:"),
        "went on after the signal:\n{seen}"
    );
    assert_eq!(wait_gone(&mark), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0);
    assert_eq!(before, machine_state());
}

#[test]
#[ignore = "privileged: needs root"]
fn without_etcd_the_act_names_etcd_server_and_makes_nothing() {
    need_root();
    let mark = unique_mark("no-etcd");
    let tmp = TempDir::new("demo-cluster-no-etcd");
    let before = machine_state();
    let out = demo(&mark, &tmp.0, &[("TRESTLE_ETCD", "/nonexistent")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("apt-get install etcd-server"), "{stderr}");
    assert!(stderr.contains("/nonexistent"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "started anyway: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(wait_gone(&mark), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0);
    assert_eq!(before, machine_state());
}

#[test]
fn cluster_refuses_the_walkthroughs_runtime_and_machine_options() {
    for extra in [
        ["--runtime", "docker"].as_slice(),
        ["--machine-netns"].as_slice(),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_trestlectl"))
            .args(["demo", "--cluster"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("'--cluster' cannot be used with") && stderr.contains(extra[0]),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}
