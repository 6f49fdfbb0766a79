//! The test's world (segments, etcd), its nodes (a namespace and a trestled each) and the helpers the tests share.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trestle_netlink::{Netlink, VethEnd};
use trestle_netns::{NamedNetNs, NetNs};
use trestlectl::runtime::{enter_on_exec, Invocation};

use crate::common::{bin_dir, pings, TempDir};

pub(crate) const POOL: &str = "10.244.0.0/16";
pub(crate) const PREFIX: &str = "/routes-test";

pub(crate) fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (cargo test -- --include-ignored goes through tools/test-runner)"
    );
}

/// A child process killed on drop.
pub(crate) struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a shell command in `ns`; panics with its stderr when it fails.
pub(crate) fn sh(ns: &NetNs, script: &str) -> String {
    let out = ns
        .run(|| Command::new("sh").arg("-c").arg(script).output())
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn fresh_ns() -> NetNs {
    let ns = NetNs::new_anonymous().unwrap();
    sh(&ns, "ip link set lo up");
    ns
}

/// The world: two segments (bridges) joined by its own routing, and etcd on the first.
pub(crate) struct World {
    pub(crate) ns: NetNs,
    /// Routes between the segments (held for the world's life).
    _router: NetNs,
    pub(crate) dir: TempDir,
    /// etcd's client address.
    pub(crate) etcd: String,
    _etcd: Proc,
}

/// The router's address on segment `n` (1 or 2), the default gateway of the nodes there.
pub(crate) fn gateway(n: u8) -> String {
    format!("192.168.{n}.254")
}

/// The same, for [`World::new_v6`].
pub(crate) fn gateway6(n: u8) -> String {
    format!("fd00:{n}::fe")
}

impl World {
    /// Segments 192.168.1.0/24 and 192.168.2.0/24 (bridges of the world) joined by a router namespace of their
    /// own (.254 on each); etcd on the world's 192.168.1.1.
    pub(crate) fn new() -> World {
        World::with(
            "ip addr add 192.168.1.1/24 dev seg1 && ip route add 192.168.2.0/24 via 192.168.1.254",
            "ip addr add 192.168.1.254/24 dev r1 && ip addr add 192.168.2.254/24 dev r2 && \
             echo 1 > /proc/sys/net/ipv4/ip_forward",
            "192.168.1.1:2379",
        )
    }

    /// The same with fd00:1::/64 and fd00:2::/64 and no IPv4 at all; etcd on the world's fd00:1::1.
    pub(crate) fn new_v6() -> World {
        World::with(
            "ip addr add fd00:1::1/64 dev seg1 nodad && ip -6 route add fd00:2::/64 via fd00:1::fe",
            "ip addr add fd00:1::fe/64 dev r1 nodad && ip addr add fd00:2::fe/64 dev r2 nodad && \
             echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
            "[fd00:1::1]:2379",
        )
    }

    fn with(world_addresses: &str, router_addresses: &str, etcd_addr: &str) -> World {
        let ns = fresh_ns();
        sh(
            &ns,
            "ip link add seg1 type bridge && ip link add seg2 type bridge && \
             ip link set seg1 up && ip link set seg2 up",
        );
        sh(&ns, world_addresses);
        let router = fresh_ns();
        for seg in [1, 2] {
            plug(
                &ns,
                &router,
                &format!("r-seg{seg}"),
                &format!("r{seg}"),
                seg,
                1500,
            );
        }
        sh(&router, router_addresses);
        let dir = TempDir::new("routes");
        let etcd = trestle_etcd_local::etcd_binary()
            .expect("etcd missing: tools/install-test-deps installs Debian's etcd-server");
        let url = format!("http://{etcd_addr}");
        let mut cmd = Command::new(etcd);
        cmd.args([
            "--name",
            "m1",
            "--data-dir",
            &dir.0.join("etcd").display().to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "m1=http://127.0.0.1:2380",
            "--log-level",
            "error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("etcd.log")).unwrap());
        enter_on_exec(&mut cmd, &ns);
        let etcd = Proc(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = etcd_addr.parse().unwrap();
        while ns.run(|| TcpStream::connect(addr)).unwrap().is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        World {
            ns,
            _router: router,
            dir,
            etcd: etcd_addr.to_string(),
            _etcd: etcd,
        }
    }

    /// A node on `segment` (1 or 2) with underlay address `ip`, its trestled started.
    pub(crate) fn node(&self, name: &str, segment: u8, ip: &str, extra: &[&str]) -> Node {
        self.node_mtu(name, segment, ip, 1500, extra)
    }

    /// Like `node`, with an underlay of MTU `mtu`; an IPv6 `ip` makes an IPv6-only node of [`World::new_v6`] (in
    /// fd00:`segment`::/64).
    pub(crate) fn node_mtu(
        &self,
        name: &str,
        segment: u8,
        ip: &str,
        mtu: u32,
        extra: &[&str],
    ) -> Node {
        let addressing = if ip.contains(':') {
            format!(
                "ip addr add {ip}/64 dev eth0 nodad && ip -6 route add default via {}",
                gateway6(segment)
            )
        } else {
            format!(
                "ip addr add {ip}/24 dev eth0 && ip route add default via {}",
                gateway(segment)
            )
        };
        let ns = fresh_ns();
        plug(&self.ns, &ns, &format!("u-{name}"), "eth0", segment, mtu);
        sh(&ns, &addressing);
        self.start_node(name, ns, ip, extra)
    }

    fn start_node(&self, name: &str, ns: NetNs, ip: &str, extra: &[&str]) -> Node {
        let dir = self.dir.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("boot_id"), format!("boot-{name}\n")).unwrap();
        let mut node = Node {
            name: name.into(),
            ns,
            dir,
            ip: ip.into(),
            etcd: self.etcd.clone(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            daemon: None,
        };
        node.start();
        node
    }
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ns: NetNs,
    pub(crate) dir: PathBuf,
    pub(crate) ip: String,
    /// etcd's client address.
    pub(crate) etcd: String,
    pub(crate) args: Vec<String>,
    pub(crate) daemon: Option<Proc>,
}

impl Node {
    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub(crate) fn start(&mut self) {
        self.start_from(&bin_dir().join("trestled"));
    }

    pub(crate) fn start_from(&mut self, binary: &Path) {
        let mut cmd = Command::new(binary);
        cmd.arg("--socket")
            .arg(self.path("ipam.sock"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--delete-queue")
            .arg(self.path("queue"))
            .arg("--host-local-dir")
            .arg("")
            .arg("--boot-id-file")
            .arg(self.path("boot_id"))
            .arg("--cni-cache-dir")
            .arg(self.path("cni-cache"))
            .args([
                "--store",
                "etcd",
                "--etcd-endpoints",
                &self.etcd,
                "--etcd-prefix",
                PREFIX,
                "--node-name",
                &self.name,
                "--lease-ttl",
                "3",
                "--etcd-timeout",
                "1",
                "--routes-resync",
                "1",
                "--metrics-addr",
                "127.0.0.1:9100",
                "--log-level",
                "info",
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path("trestled.log"))
                    .unwrap(),
            );
        enter_on_exec(&mut cmd, &self.ns);
        self.daemon = Some(Proc(cmd.spawn().unwrap()));
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.path("trestled.log")).unwrap_or_default()
    }

    pub(crate) fn conf(&self) -> Value {
        self.conf_for(POOL, "10.244.0.1")
    }

    /// The pod network's config with one range of `subnet`.
    pub(crate) fn conf_for(&self, subnet: &str, gateway: &str) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "podnet", "type": "trestle",
            "bridge": "cbr0", "isGateway": true, "ipMasq": true,
            "ipam": {
                "type": "trestle-ipam",
                "daemon": {"socket": self.path("ipam.sock"), "deleteQueue": self.path("queue")},
                "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        })
    }

    /// A pod wired by the plugin (ADD retried while the daemon says "try again later", as a kubelet does); its
    /// address.
    pub(crate) fn pod(&self, pod: &NamedNetNs, id: &str) -> String {
        self.pod_with(pod, id, &self.conf())
    }

    /// Like `pod`, with `conf`.
    pub(crate) fn pod_with(&self, pod: &NamedNetNs, id: &str, conf: &Value) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let inv = Invocation::new(
                &bin_dir().join("trestle"),
                "ADD",
                id,
                &pod.path().display().to_string(),
                "eth0",
            );
            let out = inv
                .run(conf.to_string().as_bytes(), Some(&self.ns))
                .unwrap();
            let v: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            if out.success {
                let a = v["ips"][0]["address"].as_str().unwrap();
                return a.split('/').next().unwrap().to_string();
            }
            assert!(
                v["code"] == 11 && Instant::now() < deadline,
                "ADD on {}: {} {}\n{}",
                self.name,
                out.stdout,
                out.stderr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Node {
    /// CNI STATUS through the plugin: `None` when it succeeds, else the error code and message.
    pub(crate) fn status(&self) -> Option<(u64, String)> {
        let inv = Invocation::new(&bin_dir().join("trestle"), "STATUS", "", "", "");
        let out = inv
            .run(self.conf().to_string().as_bytes(), Some(&self.ns))
            .unwrap();
        if out.success {
            return None;
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        Some((
            v["code"].as_u64().unwrap(),
            v["msg"].as_str().unwrap().to_string(),
        ))
    }

    /// One figure of trestled's metrics (served inside the node on 127.0.0.1:9100).
    pub(crate) fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .ns
            .run(|| {
                let mut c = TcpStream::connect("127.0.0.1:9100")?;
                std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.0\r\n\r\n")?;
                let mut s = String::new();
                std::io::Read::read_to_string(&mut c, &mut s).map(|_| s)
            })
            .unwrap()
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }
}

impl Node {
    /// Waits until this node's daemon has applied etcd's state to its kernel again (its log says so).
    pub(crate) fn wait_synced(&self, after: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches("routes: first sync").count() <= after {
            assert!(Instant::now() < deadline, "no sync:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&mut self, sig: nix::sys::signal::Signal) {
        let d = self.daemon.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.0.id() as i32), sig).unwrap();
        let mut d = d;
        let _ = d.0.wait();
    }
}

impl World {
    /// `trestlectl` run in the world (where etcd is).
    pub(crate) fn trestlectl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(bin_dir().join("trestlectl"));
        cmd.args(args);
        enter_on_exec(&mut cmd, &self.ns);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "trestlectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Waits (up to 20 s) until `from` reaches `to`.
pub(crate) fn reaches(from: &NetNs, to: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if pings(from, to) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Waits (up to 20 s) until `f` holds; false if it never did.
pub(crate) fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub(crate) fn pod_ns(dir: &Path, name: &str) -> NamedNetNs {
    let p = NamedNetNs::create(dir.join(format!("pod-{name}"))).unwrap();
    p
}

/// The MTU of a pod's `eth0`.
pub(crate) fn pod_mtu(pod: &NamedNetNs) -> u32 {
    pod.ns()
        .run(|| {
            Netlink::open()
                .unwrap()
                .link_by_name("eth0")
                .unwrap()
                .unwrap()
                .mtu
        })
        .unwrap()
}

/// Whether an echo of `payload` bytes with Don't Fragment set gets through.
pub(crate) fn pings_df(from: &NetNs, to: &str, payload: usize) -> bool {
    (0..3).any(|seq| {
        from.run(|| {
            trestlectl::probe::ping_df(to.parse().unwrap(), seq, payload, Duration::from_secs(1))
        })
        .unwrap()
        .is_ok()
    })
}

/// n1 and n3 on the first segment, n2 on the second; a pod on each (a, b, c).
pub(crate) fn three_nodes(world: &World) -> ([Node; 3], Vec<NamedNetNs>, [String; 3]) {
    let nodes = [
        world.node("n1", 1, "192.168.1.11", &[]),
        world.node("n2", 2, "192.168.2.12", &[]),
        world.node("n3", 1, "192.168.1.13", &[]),
    ];
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let ips = [0, 1, 2].map(|i| nodes[i].pod(&pods[i], ["a", "b", "c"][i]));
    (nodes, pods, ips)
}

/// A veth from `world`'s bridge `seg<segment>` (port `outer`) to `inner` in `ns`, both ends of MTU `mtu` and up.
fn plug(world: &NetNs, ns: &NetNs, outer: &str, inner: &str, segment: u8, mtu: u32) {
    world
        .run(|| {
            let end = |n: &str| VethEnd {
                name: n.into(),
                ..VethEnd::default()
            };
            Netlink::open()
                .unwrap()
                .create_veth(&end(outer), &end(inner), ns.fd())
                .unwrap();
        })
        .unwrap();
    sh(
        world,
        &format!(
            "ip link set {outer} mtu {mtu} && ip link set {outer} master seg{segment} && \
             ip link set {outer} up"
        ),
    );
    sh(
        ns,
        &format!("ip link set {inner} mtu {mtu} && ip link set {inner} up"),
    );
}
