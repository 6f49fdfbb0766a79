//! Fixtures for the end-to-end tests: a private "host" namespace per test, pod namespaces, and the real plugin
//! binaries invoked as a runtime invokes them. Nothing touches the machine's own network namespace; IPAM state
//! lives in a per-test directory.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use trestle_netlink::{Link, Netlink};
use trestle_netns::{NamedNetNs, NetNs};
use trestlectl::runtime::{Invocation, Outcome};

/// Every spec version trestle speaks.
pub const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// Where cargo put the workspace binaries (target/<profile>), beside this test's `deps` directory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    for bin in ["trestle", "trestle-ipam", "trestlectl"] {
        assert!(
            dir.join(bin).is_file(),
            "{} missing: run the tests with `cargo test --workspace` so the binaries are built",
            dir.join(bin).display()
        );
    }
    dir
}

/// The reference plugins' directory (Debian's containernetworking-plugins), if installed.
pub fn reference_dir() -> Option<PathBuf> {
    ["/usr/lib/cni", "/opt/cni/bin"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").is_file() && d.join("host-local").is_file())
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "trestle-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's world: a host namespace, a state directory and pods.
pub struct World {
    pub host: NetNs,
    pub dir: TempDir,
    pub bins: PathBuf,
    /// Extra environment for every plugin call.
    pub env: Vec<(String, String)>,
    pods: AtomicU32,
}

impl World {
    pub fn new() -> World {
        let host = NetNs::new_anonymous().expect("host namespace");
        host.run(|| {
            let mut nl = Netlink::open().unwrap();
            let lo = nl.link_by_name("lo").unwrap().unwrap();
            nl.set_up(lo.index, true).unwrap();
        })
        .unwrap();
        World {
            host,
            dir: TempDir::new("e2e"),
            bins: bin_dir(),
            env: Vec::new(),
            pods: AtomicU32::new(0),
        }
    }

    /// A new pod namespace, bind-mounted so plugins get a path.
    pub fn pod(&self) -> NamedNetNs {
        let n = self.pods.fetch_add(1, Ordering::Relaxed);
        NamedNetNs::create(self.dir.0.join(format!("ns-{n}"))).expect("pod namespace")
    }

    /// The IPAM state directory for configs of this world.
    pub fn data_dir(&self) -> String {
        self.dir.0.join("ipam").display().to_string()
    }

    /// The classic walkthrough config the demo uses, at `version`, with this world's state directory.
    pub fn classic(&self, version: &str) -> Value {
        let mut conf: Value = serde_json::from_str(trestlectl::demo::CLASSIC_CONFIG).unwrap();
        conf["cniVersion"] = json!(version);
        conf["ipam"]["dataDir"] = json!(self.data_dir());
        conf
    }

    /// Calls `plugin` (a binary in `bins`) with `conf` on stdin, inside the host namespace.
    pub fn call(&self, cmd: &str, id: &str, netns: &str, ifname: &str, conf: &Value) -> Outcome {
        self.call_with(
            &self.bins.join("trestle"),
            cmd,
            id,
            netns,
            ifname,
            conf,
            |_| {},
        )
    }

    /// Like `call`, with the invocation adjusted by `tweak`.
    #[allow(clippy::too_many_arguments)]
    pub fn call_with(
        &self,
        plugin: &Path,
        cmd: &str,
        id: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
        tweak: impl FnOnce(&mut Invocation),
    ) -> Outcome {
        let mut inv = Invocation::new(plugin, cmd, id, netns, ifname);
        inv.extra_env.extend(self.env.iter().cloned());
        tweak(&mut inv);
        inv.run(conf.to_string().as_bytes(), Some(&self.host))
            .expect("spawn plugin")
    }

    /// ADD that must succeed; returns the result JSON.
    pub fn add(&self, id: &str, pod: &NamedNetNs, conf: &Value) -> Value {
        let out = self.call("ADD", id, &pod.path().display().to_string(), "eth0", conf);
        assert!(out.success, "ADD failed: {} {}", out.stdout, out.stderr);
        out.json().expect("ADD result is JSON")
    }

    /// DEL that must succeed.
    pub fn del(&self, id: &str, netns: &str, conf: &Value) {
        let out = self.call("DEL", id, netns, "eth0", conf);
        assert!(out.success, "DEL failed: {} {}", out.stdout, out.stderr);
        assert!(out.stdout.is_empty(), "DEL printed {:?}", out.stdout);
    }

    /// The links of the host namespace.
    pub fn host_links(&self) -> Vec<Link> {
        self.host
            .run(|| Netlink::open().unwrap().links().unwrap())
            .unwrap()
    }

    /// Waits (up to 10 s) until the host namespace has no veth left: DEL destroys cut-off pairs in a detached
    /// child, after it has answered.
    pub fn wait_no_veth(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left: Vec<String> = self
                .host_links()
                .into_iter()
                .filter(|l| l.kind.as_deref() == Some("veth"))
                .map(|l| l.name)
                .collect();
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Ports of `bridge` in the host namespace.
    pub fn ports(&self, bridge: &str) -> Vec<Link> {
        let links = self.host_links();
        let Some(br) = links.iter().find(|l| l.name == bridge) else {
            return Vec::new();
        };
        links
            .iter()
            .filter(|l| l.master == Some(br.index))
            .cloned()
            .collect()
    }

    /// Reserved addresses of `network` in this world's state directory.
    pub fn reservations(&self, network: &str) -> Vec<String> {
        reservations(&Path::new(&self.data_dir()).join(network))
    }

    /// Masqueraded pod subnets in the host namespace.
    pub fn masqueraded(&self) -> Vec<String> {
        self.host
            .run(|| {
                let mut fw =
                    trestle_firewall::Firewall::open(Path::new(trestle_firewall::LOCK_PATH))
                        .unwrap();
                fw.list()
                    .unwrap()
                    .iter()
                    .map(|e| e.subnet.to_string())
                    .collect()
            })
            .unwrap()
    }
}

/// Files named by an IP in a host-local style directory.
pub fn reservations(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// Removes `addr` from the pod's `eth0` behind the plugin's back (what CHECK must notice).
pub fn remove_pod_address(ns: &NetNs, addr: &str) {
    let addr = addr.parse().unwrap();
    ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
        nl.del_address(eth0.index, addr).unwrap();
    })
    .unwrap();
}

/// Addresses and main-table routes of `ifname` inside a namespace, normalised for comparison.
pub fn pod_state(ns: &NetNs, ifname: &str) -> (Vec<String>, Vec<String>) {
    ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        let Some(link) = nl.link_by_name(ifname).unwrap() else {
            return (Vec::new(), Vec::new());
        };
        let mut addrs: Vec<String> = nl
            .addresses(Some(link.index))
            .unwrap()
            .iter()
            .filter(|a| a.scope == 0)
            .map(|a| a.address.to_string())
            .collect();
        addrs.sort();
        let mut routes: Vec<String> = nl
            .routes(None)
            .unwrap()
            .iter()
            .filter(|r| r.table == 254 && r.oif == Some(link.index) && r.kind == 1)
            .filter(|r| {
                !(r.dst.addr().is_ipv6() && r.dst.prefix_len() == 64 && r.gateway.is_none())
            })
            .map(|r| match r.gateway {
                Some(gw) => format!("{} via {gw}", r.dst),
                None => format!("{} dev", r.dst),
            })
            .collect();
        routes.sort();
        (addrs, routes)
    })
    .unwrap()
}

/// Whether `from` gets an ICMP echo reply from `to` (within 2 s).
pub fn pings(from: &NetNs, to: &str) -> bool {
    from.run(|| trestlectl::probe::ping(to.parse().unwrap(), 1, std::time::Duration::from_secs(2)))
        .unwrap()
        .is_ok()
}

/// Whether a TCP exchange from `from` to `to` (served in `server`, port 7080) works: the source address the server
/// saw.
pub fn tcp_peer(from: &NetNs, server: &NetNs, to: &str) -> Option<String> {
    let addr = std::net::SocketAddr::new(to.parse().unwrap(), 7080);
    let listener = server
        .run(|| trestlectl::probe::listen(addr))
        .unwrap()
        .unwrap();
    std::thread::scope(|s| {
        let served =
            s.spawn(|| trestlectl::probe::serve_once(&listener, std::time::Duration::from_secs(5)));
        let answer = from
            .run(|| trestlectl::probe::exchange(addr, "hello\n", std::time::Duration::from_secs(3)))
            .unwrap();
        let peer = served.join().unwrap();
        answer.ok().and(peer.ok()).map(|p| p.ip().to_string())
    })
}
