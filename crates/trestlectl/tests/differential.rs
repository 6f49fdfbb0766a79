//! Differential tests: the same configs through the reference `bridge` + `host-local` (Debian's
//! containernetworking-plugins) and through `trestle` + `trestle-ipam`, each in its own fresh host namespace.
//! Results and namespace state must match, up to names and MACs that are random by design.

mod common;

use common::{pod_state, reference_dir, World};
use serde_json::{json, Value};
use trestle_netlink::Netlink;

/// Runs one ADD with `ipam_type`/`plugin` and returns (normalised result, pod state, bridge addresses), then DELs.
fn run(
    world: &World,
    plugin: &std::path::Path,
    ipam_type: &str,
    conf: &Value,
) -> (Value, (Vec<String>, Vec<String>), Vec<String>) {
    let mut conf = conf.clone();
    // An empty ipam object means layer 2 only: it stays empty.
    if conf["ipam"].as_object().is_some_and(|o| !o.is_empty()) {
        conf["ipam"]["type"] = json!(ipam_type);
        conf["ipam"]["dataDir"] = json!(world.data_dir());
    }
    let pod = world.pod();
    let path = pod.path().display().to_string();
    let out = world.call_with(plugin, "ADD", "diff-1", &path, "eth0", &conf, |_| {});
    assert!(
        out.success,
        "{} ADD failed: {} {}",
        plugin.display(),
        out.stdout,
        out.stderr
    );
    let result = normalise(out.json().unwrap(), &path);
    let state = pod_state(pod.ns(), "eth0");
    let bridge = conf["bridge"].as_str().unwrap().to_owned();
    let br_addrs = world
        .host
        .run(move || {
            let mut nl = Netlink::open().unwrap();
            let br = nl.link_by_name(&bridge).unwrap().unwrap();
            let mut v: Vec<String> = nl
                .addresses(Some(br.index))
                .unwrap()
                .iter()
                .filter(|a| a.scope == 0)
                .map(|a| a.address.to_string())
                .collect();
            v.sort();
            v
        })
        .unwrap();
    let out = world.call_with(plugin, "DEL", "diff-1", &path, "eth0", &conf, |_| {});
    assert!(
        out.success,
        "{} DEL failed: {} {}",
        plugin.display(),
        out.stdout,
        out.stderr
    );
    assert!(world
        .reservations(conf["name"].as_str().unwrap())
        .is_empty());
    (result, state, br_addrs)
}

/// Drops what differs by design: MACs, the host veth's name, an empty dns object.
fn normalise(mut v: Value, netns: &str) -> Value {
    if let Some(ifaces) = v.get_mut("interfaces").and_then(Value::as_array_mut) {
        for i in ifaces.iter_mut() {
            let obj = i.as_object_mut().unwrap();
            obj.remove("mac");
            if obj.get("sandbox").and_then(Value::as_str) == Some(netns) {
                obj.insert("sandbox".into(), json!("<netns>"));
            }
            if obj
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with("veth"))
            {
                obj.insert("name".into(), json!("<veth>"));
            }
        }
    }
    if v.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
    {
        v.as_object_mut().unwrap().remove("dns");
    }
    v
}

fn compare(conf: Value) {
    let Some(reference) = reference_dir() else {
        panic!("reference plugins not installed: apt-get install containernetworking-plugins");
    };
    let ours = World::new();
    let theirs = World::new();
    let a = run(&theirs, &reference.join("bridge"), "host-local", &conf);
    let b = run(&ours, &ours.bins.join("trestle"), "trestle-ipam", &conf);
    assert_eq!(a.0, b.0, "results differ for {conf}");
    assert_eq!(a.1, b.1, "pod state differs for {conf}");
    assert_eq!(a.2, b.2, "bridge addresses differ for {conf}");
}

#[test]
#[ignore = "privileged: needs root"]
fn classic_walkthrough_config() {
    for version in ["0.2.0", "0.3.1", "0.4.0", "1.0.0"] {
        compare(json!({
            "cniVersion": version, "name": "mybridge", "type": "bridge", "bridge": "cni_bridge0",
            "isGateway": true, "ipMasq": true, "hairpinMode": true,
            "ipam": { "subnet": "10.15.20.0/24",
                      "routes": [ { "dst": "0.0.0.0/0" }, { "dst": "1.1.1.1/32", "gw": "10.15.20.1" } ] }
        }));
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn default_gateway_and_range() {
    compare(json!({
        "cniVersion": "1.0.0", "name": "net2", "type": "bridge", "bridge": "br-diff",
        "isDefaultGateway": true,
        "ipam": { "ranges": [[{ "subnet": "10.99.0.0/16", "rangeStart": "10.99.3.10", "rangeEnd": "10.99.3.20" }]] }
    }));
}

#[test]
#[ignore = "privileged: needs root"]
fn dual_stack() {
    compare(json!({
        "cniVersion": "1.0.0", "name": "dual", "type": "bridge", "bridge": "br-dual", "isGateway": true,
        "ipam": {
            "ranges": [[{ "subnet": "10.88.0.0/24" }], [{ "subnet": "fd00:88::/64" }]],
            "routes": [ { "dst": "0.0.0.0/0" }, { "dst": "::/0" } ]
        }
    }));
}

#[test]
#[ignore = "privileged: needs root"]
fn layer2_only() {
    compare(
        json!({ "cniVersion": "0.4.0", "name": "l2", "type": "bridge", "bridge": "br-l2", "ipam": {} }),
    );
}

/// A node can switch between host-local and trestle-ipam on the same state directory, in both directions,
/// without a conflicting address: each reads the other's reservations, continues its round-robin, and releases
/// the other's attachments.
#[test]
#[ignore = "privileged: needs root"]
fn host_local_and_trestle_ipam_share_state() {
    let Some(reference) = reference_dir() else {
        panic!("reference plugins not installed: apt-get install containernetworking-plugins");
    };
    let w = World::new();
    let conf = |ty: &str| {
        json!({ "cniVersion": "1.0.0", "name": "shared", "type": "bridge",
                "ipam": { "type": ty, "subnet": "10.77.0.0/24", "dataDir": w.data_dir() } })
    };
    let host_local = reference.join("host-local");
    let ours = w.bins.join("trestle-ipam");
    let ipam = |plugin: &std::path::Path, cmd: &str, id: &str| {
        let ty = plugin.file_name().unwrap().to_str().unwrap().to_owned();
        let out = w.call_with(plugin, cmd, id, "/dummy", "eth0", &conf(&ty), |_| {});
        assert!(
            out.success,
            "{} {cmd} {id}: {} {}",
            plugin.display(),
            out.stdout,
            out.stderr
        );
        out.json()
            .map(|v| v["ips"][0]["address"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(ipam(&host_local, "ADD", "c1").unwrap(), "10.77.0.2/24");
    assert_eq!(ipam(&ours, "ADD", "c2").unwrap(), "10.77.0.3/24");
    assert_eq!(ipam(&host_local, "ADD", "c3").unwrap(), "10.77.0.4/24");
    // A duplicate ADD of an attachment host-local made is refused by trestle-ipam.
    let dup = w.call_with(
        &ours,
        "ADD",
        "c1",
        "/dummy",
        "eth0",
        &conf("trestle-ipam"),
        |_| {},
    );
    assert!(!dup.success, "{}", dup.stdout);
    ipam(&ours, "DEL", "c1");
    ipam(&host_local, "DEL", "c2");
    assert_eq!(w.reservations("shared"), vec!["10.77.0.4"]);
    ipam(&ours, "DEL", "c3");
    assert!(w.reservations("shared").is_empty());
}
