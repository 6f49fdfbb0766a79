//! The bridge plugin with its IPAM in daemon mode: trestle runs trestle-ipam in-process, which asks a real
//! `trestled`. DEL never fails because of the daemon: with it down, DEL still cuts the pod off, exits 0 and queues
//! the release, which the daemon applies when it is back.

mod common;

use common::{bin_dir, pod_state, World};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A trestled on sockets and state of the world's own directory.
struct Trestled {
    dir: PathBuf,
    child: Option<Child>,
}

impl Trestled {
    fn new(w: &World) -> Trestled {
        Trestled {
            dir: w.dir.0.join("trestled"),
            child: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("ipam.sock")
    }

    fn start(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new(bin_dir().join("trestled"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--delete-queue")
            .arg(self.dir.join("queue"))
            .args(["--host-local-dir", "", "--reuse-delay", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("trestled (built by `cargo build --workspace`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.show().is_none() {
            assert!(Instant::now() < deadline, "trestled did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
        std::fs::read_dir(self.dir.join("queue"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Trestled {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn daemon_conf(w: &World, d: &Trestled) -> Value {
    let mut conf = w.classic("1.1.0");
    conf["ipam"]["daemon"] = json!({"socket": d.socket(), "deleteQueue": d.dir.join("queue")});
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
