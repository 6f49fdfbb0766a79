//! The bridge plugin with its IPAM in daemon mode: trestle runs trestle-ipam in-process, which asks a real
//! `trestled`. DEL never fails because of the daemon: with it down, DEL still cuts the pod off, exits 0 and queues
//! the release, which the daemon applies when it is back.

mod common;

use common::{bin_dir, pod_state, World};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use trestle_testkit::{Daemon, DaemonDir};

/// A trestled on sockets and state of the world's own directory.
struct Trestled {
    files: DaemonDir,
    process: Option<Daemon>,
}

impl Trestled {
    fn new(w: &World) -> Trestled {
        let files = DaemonDir::new(w.dir.0.join("trestled"));
        std::fs::create_dir_all(&files.dir).unwrap();
        Trestled {
            files,
            process: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.files.socket()
    }

    fn start(&mut self) {
        let mut cmd = self.files.command(&bin_dir().join("trestled"));
        cmd.args(["--reuse-delay", "0"]);
        let mut d = Daemon::spawn(&mut cmd, &self.files.log())
            .expect("trestled (built by `cargo build --workspace`)");
        d.wait_until("answering", Duration::from_secs(20), || {
            self.show().is_some()
        });
        self.process = Some(d);
    }

    fn kill9(&mut self) {
        if let Some(mut d) = self.process.take() {
            d.kill9();
        }
    }

    /// `trestlectl ipam show --json` against the daemon, if it answers.
    fn show(&self) -> Option<Value> {
        let out = Command::new(bin_dir().join("trestlectl"))
            .args(["ipam", "show", "--json", "--socket"])
            .arg(self.socket())
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// (container, address) of every allocation.
    fn held(&self) -> Vec<(String, String)> {
        let v = self.show().expect("trestled answers");
        let mut held: Vec<(String, String)> = v["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["containerId"].as_str().unwrap().to_string(),
                    a["address"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        held.sort();
        held
    }

    fn queued(&self) -> usize {
        std::fs::read_dir(self.files.queue())
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn daemon_conf(w: &World, d: &Trestled) -> Value {
    let mut conf = w.classic("1.1.0");
    conf["ipam"]["daemon"] = json!({"socket": d.socket(), "deleteQueue": d.files.queue()});
    conf
}

fn path(pod: &trestle_netns::NamedNetNs) -> String {
    pod.path().display().to_string()
}

fn veths(w: &World) -> usize {
    w.host_links()
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .count()
}

#[test]
#[ignore = "privileged: needs root"]
fn the_bridge_in_daemon_mode_survives_the_daemon_going_away() {
    let w = World::new();
    let mut d = Trestled::new(&w);
    d.start();
    let conf = daemon_conf(&w, &d);
    let (p1, p2, p3) = (w.pod(), w.pod(), w.pod());
    w.add("c1", &p1, &conf);
    w.add("c2", &p2, &conf);
    assert_eq!(pod_state(p1.ns(), "eth0").0, ["10.15.20.2/24"]);
    assert_eq!(
        d.held(),
        [
            ("c1".into(), "10.15.20.2".into()),
            ("c2".into(), "10.15.20.3".into())
        ]
    );
    assert!(
        !Path::new(&w.data_dir()).join("mybridge").exists(),
        "daemon mode keeps nothing in dataDir"
    );

    d.kill9();
    // ADD answers 11 quickly and leaves nothing behind.
    let before = veths(&w);
    let start = Instant::now();
    let out = w.call("ADD", "c3", &path(&p3), "eth0", &conf);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.json().unwrap()["code"], 11, "{}", out.stdout);
    assert_eq!(veths(&w), before, "the failed ADD rolled back");
    // DEL cuts the pod off, exits 0 and queues the release.
    w.del("c1", &path(&p1), &conf);
    assert!(pod_state(p1.ns(), "eth0").0.is_empty(), "c1 is cut off");
    assert_eq!(d.queued(), 1);
    let out = w.call("STATUS", "", "", "", &conf);
    assert_eq!(out.json().unwrap()["code"], 50, "{}", out.stdout);

    d.start();
    assert_eq!(d.queued(), 0, "applied before serving");
    assert_eq!(d.held(), [("c2".into(), "10.15.20.3".into())]);
    w.add("c3", &p3, &conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c3", "ifname": "eth0"}]);
    let out = w.call("GC", "", "", "", &gc);
    assert!(out.success, "{}", out.stdout);
    let held: Vec<String> = d.held().into_iter().map(|h| h.0).collect();
    assert_eq!(held, ["c3"]);
}
