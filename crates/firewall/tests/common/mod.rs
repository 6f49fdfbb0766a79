//! Helpers for the privileged tests: namespaces of their own, `nft`/`ip` run inside them.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use trestle_firewall::Firewall;
use trestle_netns::NamedNetNs;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named namespace (so `ip -n` / `ip netns exec` reach it) plus a private lock file.
pub struct TestNs {
    pub ns: NamedNetNs,
    pub name: String,
    pub lock: PathBuf,
}

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tfw-{}-{tag}-{n}", std::process::id());
        let ns = NamedNetNs::create(format!("/run/netns/{name}")).expect("create namespace");
        let lock = std::env::temp_dir().join(format!("{name}.lock"));
        TestNs { ns, name, lock }
    }

    /// A `Firewall` whose socket lives in this namespace.
    pub fn firewall(&self) -> Firewall {
        self.ns
            .ns()
            .run(|| Firewall::open(&self.lock))
            .expect("enter namespace")
            .expect("open firewall")
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace())
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `nft list ruleset` as text.
    pub fn ruleset(&self) -> String {
        self.exec(&["nft", "list", "ruleset"])
    }

    /// `nft -j list ruleset`, without the metainfo object.
    pub fn ruleset_json(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.exec(&["nft", "-j", "list", "ruleset"])).expect("nft json");
        v["nftables"]
            .as_array()
            .expect("nftables array")
            .iter()
            .filter(|o| o.get("metainfo").is_none())
            .cloned()
            .collect()
    }

    /// The elements of a set, as `(address, comment)` pairs, sorted.
    pub fn elements(&self, table: &str, set: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .ruleset_json()
            .iter()
            .filter_map(|o| o.get("set"))
            .filter(|s| s["table"] == table && s["name"] == set)
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                let e = &e["elem"];
                (
                    e["val"].as_str().expect("address").to_owned(),
                    e["comment"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}
