//! `trestlectl ipam show|release|gc` as an operator runs it: against a dataDir the real `trestle-ipam` filled, and
//! against a real `trestled` the real `trestle-ipam` allocated from in daemon mode. Neither needs root: the dataDir
//! is a temporary directory, and trestled serves its own user on a socket it binds in one (mode 0600, and its
//! peer-credential check admits root and the daemon's own uid). The binaries are cargo's, beside trestlectl; a
//! missing one fails the test.

use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use trestle_testkit::{Daemon, DaemonDir};
use trestlectl::runtime::Invocation;

const C1: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const C2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn trestlectl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trestlectl"))
}

/// A workspace binary beside trestlectl (target/<profile>).
fn sibling(name: &str) -> PathBuf {
    let path = trestlectl()
        .parent()
        .expect("trestlectl has a directory")
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: build it first (cargo build -p trestled -p trestle-ipam, or cargo test --workspace)",
        path.display()
    );
    path
}

fn ctl(args: &[&str]) -> Output {
    Command::new(trestlectl())
        .args(args)
        .output()
        .expect("run trestlectl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stdout of a trestlectl run that must succeed.
fn ok(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        out.status.success(),
        "trestlectl {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// stderr of a trestlectl run that must fail.
fn fails(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        !out.status.success(),
        "trestlectl {args:?} succeeded: {}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    text(&out.stderr)
}

fn json_of(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// ADD through the real trestle-ipam; returns the first address.
fn add(conf: &Value, id: &str, ifname: &str, cni_args: &str) -> String {
    let mut inv = Invocation::new(
        &sibling("trestle-ipam"),
        "ADD",
        id,
        "/proc/self/ns/net",
        ifname,
    );
    inv.args = cni_args.into();
    let out = inv
        .run(conf.to_string().as_bytes(), None)
        .expect("spawn trestle-ipam");
    assert!(
        out.success,
        "ADD {id}/{ifname}: {} {}",
        out.stdout, out.stderr
    );
    out.json().expect("result JSON")["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .to_owned()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// The addresses a host-local style directory reserves.
fn reservations(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

fn addresses(listing: &Value) -> Vec<&str> {
    listing["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap())
        .collect()
}

#[test]
fn data_dir_show_release_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = s(&data);
    let conf = json!({"cniVersion": "1.0.0", "name": "net1",
        "ipam": {"type": "trestle-ipam", "subnet": "10.99.0.0/24", "dataDir": d}});
    assert_eq!(add(&conf, C1, "eth0", ""), "10.99.0.2/24");
    assert_eq!(add(&conf, C2, "eth0", ""), "10.99.0.3/24");
    assert_eq!(add(&conf, C2, "net1", ""), "10.99.0.4/24");
    // A reservation of an old host-local (container ID only), two hours old.
    let legacy = data.join("net1/10.99.0.200");
    std::fs::write(&legacy, "c3").unwrap();
    File::options()
        .write(true)
        .open(&legacy)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600 + 60))
        .unwrap();

    let v = json_of(&["ipam", "show", "--data-dir", d, "--json"]);
    assert_eq!(
        v["source"],
        json!({"kind": "dataDir", "path": d, "server": null})
    );
    assert_eq!(
        v["pools"],
        json!([{"network": "net1", "rangeSets": [], "used": 4, "free": null, "cooling": null,
                "handedOverTo": null}])
    );
    assert_eq!(
        addresses(&v),
        ["10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.200"]
    );
    let first = &v["allocations"][0];
    assert_eq!(first["containerId"], C1, "full ID in JSON");
    assert_eq!(first["ifName"], "eth0");
    assert_eq!(first["pod"], Value::Null);
    let since = first["sinceUnixMs"].as_i64().expect("mtime");
    assert!((now_ms() - since).abs() < 60_000, "{since}");
    assert_eq!(v["allocations"][3]["containerId"], "c3");
    assert_eq!(v["allocations"][3]["ifName"], "");

    let table = ok(&["ipam", "show", "--data-dir", d, "--network", "net1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], format!("dataDir {d}"));
    assert_eq!(lines[2], "NETWORK  RANGES  USED  FREE  COOLING");
    assert_eq!(lines[3], "net1     -       4     -     -");
    assert_eq!(
        lines[5],
        "NETWORK  ADDRESS      CONTAINER     IFNAME  POD  SINCE"
    );
    assert!(
        lines[6].starts_with("net1     10.99.0.2    0123456789ab  eth0    -    "),
        "{table}"
    );
    assert_eq!(
        lines[9],
        "net1     10.99.0.200  c3            -       -    2h"
    );

    // Errors name what is missing.
    let missing = tmp.path().join("nope");
    let err = fails(&["ipam", "show", "--data-dir", s(&missing)]);
    assert!(err.contains(s(&missing)), "{err}");
    let err = fails(&[
        "ipam",
        "release",
        "--data-dir",
        d,
        "--network",
        "nosuch",
        "--container",
        C1,
    ]);
    assert!(
        err.contains(&format!("no network \"nosuch\" in dataDir {d}")),
        "{err}"
    );
    assert!(!data.join("nosuch").exists(), "a typo creates no network");

    let out = ok(&[
        "ipam",
        "release",
        "--data-dir",
        d,
        "--network",
        "net1",
        "--container",
        C1,
    ]);
    assert_eq!(
        out,
        format!("released 10.99.0.2 of {C1}/eth0 in network net1\n")
    );
    let out = ok(&[
        "ipam",
        "release",
        "--data-dir",
        d,
        "--network",
        "net1",
        "--container",
        C1,
    ]);
    assert_eq!(out, "nothing released in network net1\n");

    // GC refuses to release everything by omission.
    let err = fails(&["ipam", "gc", "--data-dir", d, "--network", "net1"]);
    assert!(err.contains("--all"), "{err}");
    let net = data.join("net1");
    assert_eq!(
        reservations(&net),
        ["10.99.0.200", "10.99.0.3", "10.99.0.4"]
    );

    // The legacy reservation stays: its container has a valid attachment.
    let c2_eth0 = format!("{C2}/eth0");
    let out = ok(&[
        "ipam",
        "gc",
        "--data-dir",
        d,
        "--network",
        "net1",
        "--valid",
        &c2_eth0,
        "c3",
    ]);
    assert_eq!(
        out,
        format!("released 10.99.0.4 of {C2}/net1 in network net1\n")
    );
    assert_eq!(reservations(&net), ["10.99.0.200", "10.99.0.3"]);

    let released = json_of(&[
        "ipam",
        "gc",
        "--data-dir",
        d,
        "--network",
        "net1",
        "--all",
        "--json",
    ]);
    assert_eq!(
        released,
        json!([
            {"network": "net1", "address": "10.99.0.3", "containerId": C2, "ifName": "eth0"},
            {"network": "net1", "address": "10.99.0.200", "containerId": "c3", "ifName": ""}
        ])
    );
    assert!(reservations(&net).is_empty());
    // The store is still the plugin's: round-robin goes on after the last reservation.
    assert_eq!(add(&conf, C1, "eth0", ""), "10.99.0.5/24");
}

#[test]
fn a_handed_over_data_dir_points_at_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = s(&data);
    let conf = json!({"cniVersion": "1.0.0", "name": "net2",
        "ipam": {"type": "trestle-ipam", "subnet": "10.97.0.0/24", "dataDir": d}});
    add(&conf, C1, "eth0", "");
    std::fs::write(
        data.join("net2/.trestle-daemon"),
        "/run/x/ipam.sock\n/run/x/queue\n",
    )
    .unwrap();
    let table = ok(&["ipam", "show", "--data-dir", d]);
    assert!(
        table.contains("note: net2 was handed over to trestled at /run/x/ipam.sock"),
        "{table}"
    );
    let err = fails(&[
        "ipam",
        "release",
        "--data-dir",
        d,
        "--network",
        "net2",
        "--container",
        C1,
    ]);
    assert!(err.contains("use --socket /run/x/ipam.sock"), "{err}");
    assert_eq!(reservations(&data.join("net2")), ["10.97.0.2"]);
}

/// A trestled of its own on the files of `files`, serving (killed when dropped, a failed test included).
fn trestled(files: &DaemonDir) -> Daemon {
    let mut d = Daemon::spawn(&mut files.command(&sibling("trestled")), &files.log())
        .expect("spawn trestled");
    d.wait_serving(&files.socket());
    d
}

#[test]
fn daemon_show_release_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let files = DaemonDir::new(tmp.path());
    let mut daemon = trestled(&files);
    let socket = files.socket();
    let sock = s(&socket);
    let conf = json!({"cniVersion": "1.0.0", "name": "dnet",
        "ipam": {"type": "trestle-ipam", "subnet": "10.98.0.0/24",
                 "daemon": {"socket": sock, "deleteQueue": s(&files.queue())}}});
    let pod_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1";
    assert_eq!(add(&conf, C1, "eth0", pod_args), "10.98.0.2/24");
    assert_eq!(add(&conf, C2, "eth0", ""), "10.98.0.3/24");

    let v = json_of(&["ipam", "show", "--socket", sock, "--json"]);
    assert_eq!(v["source"]["kind"], "daemon");
    assert_eq!(v["source"]["path"], sock);
    let server = v["source"]["server"].as_str().unwrap_or_default();
    assert!(server.starts_with("trestled "), "{v}");
    let pool = &v["pools"][0];
    assert_eq!(v["pools"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(pool["network"], "dnet");
    assert_eq!(
        (pool["used"].as_u64(), pool["cooling"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    // 10.98.0.1-254 less the gateway (.1) and the two used.
    assert_eq!(pool["free"], 251, "{v}");
    assert_eq!(addresses(&v), ["10.98.0.2", "10.98.0.3"]);
    let a = &v["allocations"][0];
    assert_eq!(a["containerId"], C1);
    assert_eq!(a["ifName"], "eth0");
    assert_eq!(
        a["pod"],
        json!({"namespace": "default", "name": "web-0", "uid": "u1"})
    );
    assert_eq!(a["netns"], "/proc/self/ns/net");
    let since = a["sinceUnixMs"].as_i64().expect("since");
    assert!((now_ms() - since).abs() < 60_000, "{since}");
    assert_eq!(v["allocations"][1]["pod"], Value::Null);

    let table = ok(&["ipam", "show", "--socket", sock]);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("10.98.0.2"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["dnet", "10.98.0.2", "0123456789ab", "eth0", "default/web-0"]
    );
    assert!(cells[5].ends_with('s'), "{row}");
    let err = fails(&["ipam", "show", "--socket", sock, "--network", "nosuch"]);
    assert!(
        err.contains(&format!("trestled at {sock} has no network \"nosuch\"")),
        "{err}"
    );

    let out = ok(&[
        "ipam",
        "release",
        "--socket",
        sock,
        "--network",
        "dnet",
        "--container",
        C1,
    ]);
    assert_eq!(
        out,
        format!("released 10.98.0.2 of {C1}/eth0 in network dnet\n")
    );
    let v = json_of(&[
        "ipam",
        "show",
        "--socket",
        sock,
        "--json",
        "--network",
        "dnet",
    ]);
    assert_eq!(
        (
            v["pools"][0]["used"].as_u64(),
            v["pools"][0]["cooling"].as_u64()
        ),
        (Some(1), Some(1)),
        "{v}"
    );
    let out = ok(&[
        "ipam",
        "release",
        "--socket",
        sock,
        "--network",
        "dnet",
        "--container",
        C1,
    ]);
    assert_eq!(out, "nothing released in network dnet\n");

    let err = fails(&["ipam", "gc", "--socket", sock, "--network", "dnet"]);
    assert!(err.contains("--all"), "{err}");
    let out = ok(&[
        "ipam",
        "gc",
        "--socket",
        sock,
        "--network",
        "dnet",
        "--valid",
        C2,
    ]);
    assert_eq!(out, "nothing released in network dnet\n");
    let out = ok(&["ipam", "gc", "--socket", sock, "--network", "dnet", "--all"]);
    assert_eq!(
        out,
        format!("released 10.98.0.3 of {C2}/eth0 in network dnet\n")
    );
    let v = json_of(&["ipam", "show", "--socket", sock, "--json"]);
    assert!(addresses(&v).is_empty(), "{v}");

    let status = daemon.stop(Duration::from_secs(10));
    assert!(
        status.success(),
        "trestled exit {status}:\n{}",
        daemon.log()
    );
    let err = fails(&["ipam", "show", "--socket", sock]);
    assert!(
        err.contains(&format!("cannot connect to trestled at {sock}")),
        "{err}"
    );
}
