//! Helpers for the privileged tests: namespaces of their own, `nft`/`ip` run inside them.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use trestle_firewall::{open_backend, Backend, BackendKind, Firewall};
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

    /// The backend `kind` selects, opened in this namespace (on a helper thread, as `NetNs::run` does: the box
    /// has to be `Send`).
    pub fn backend(&self, kind: BackendKind) -> Box<dyn Backend> {
        self.ns
            .ns()
            .run(|| open_backend(kind, &self.lock))
            .expect("enter namespace")
            .expect("open backend")
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

    /// The chains of the namespace, as `(table, chain)` pairs, sorted.
    pub fn chains(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .ruleset_json()
            .iter()
            .filter_map(|o| o.get("chain"))
            .map(|c| (str_of(&c["table"]), str_of(&c["name"])))
            .collect();
        out.sort();
        out
    }

    /// The comments of the rules of one chain, in order.
    pub fn rule_comments(&self, table: &str, chain: &str) -> Vec<String> {
        self.ruleset_json()
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["table"] == table && r["chain"] == chain)
            .map(|r| str_of(&r["comment"]))
            .collect()
    }
}

fn str_of(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}
