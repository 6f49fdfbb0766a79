//! The guided walkthrough runs to the end and leaves the machine as it found it.

mod common;

use std::process::Command;

/// What of the machine's own network state the demo could disturb.
fn machine_state() -> (Vec<String>, Vec<String>) {
    let mut nl = trestle_netlink::Netlink::open().unwrap();
    let mut links: Vec<String> = nl.links().unwrap().iter().map(|l| l.name.clone()).collect();
    links.sort();
    let mut addrs: Vec<String> = nl
        .addresses(None)
        .unwrap()
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    addrs.sort();
    (links, addrs)
}

#[test]
#[ignore = "privileged: needs root"]
fn demo_runs_and_leaves_nothing() {
    let bins = common::bin_dir();
    let before = machine_state();
    let out = Command::new(bins.join("trestlectl"))
        .args(["demo", "--no-color"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "inet 10.15.20.2/24 scope global eth0",
        "CNI_COMMAND=ADD CNI_CONTAINERID=1234567890",
        "pod B got 10.15.20.3/24",
        "cni_bridge0 has no ports left",
        "both veth pairs are destroyed",
        "The walkthrough is complete",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert_eq!(before, machine_state());
    assert!(!std::path::Path::new("/run/trestle-demo").exists());
    assert!(!std::path::Path::new("/var/lib/cni/networks/mybridge").exists());
}
