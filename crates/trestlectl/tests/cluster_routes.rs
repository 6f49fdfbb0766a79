//! Cross-node routes, end to end: nodes are network namespaces on "underlay" bridges of a world namespace that
//! also routes between its two segments; a real etcd runs in the world; every node runs the real `trestled` in
//! etcd mode, and pods are wired by the real `trestle` plugin. Nothing touches the machine's own namespace.
//! Needs root, `etcd` (Debian's etcd-server) and `ip` (iproute2, for the test's own wiring only).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin_dir, pings, tcp_peer, TempDir};
use serde_json::{json, Value};
use trestle_netlink::{Netlink, VethEnd};
use trestle_netns::{NamedNetNs, NetNs};
use trestlectl::runtime::{enter_on_exec, Invocation};

const POOL: &str = "10.244.0.0/16";
const PREFIX: &str = "/routes-test";

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (cargo test -- --include-ignored goes through tools/test-runner)"
    );
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a shell command in `ns`; panics with its stderr when it fails.
fn sh(ns: &NetNs, script: &str) -> String {
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

fn fresh_ns() -> NetNs {
    let ns = NetNs::new_anonymous().unwrap();
    sh(&ns, "ip link set lo up");
    ns
}

/// The world: two segments (bridges) joined by its own routing, and etcd on the first.
struct World {
    ns: NetNs,
    dir: TempDir,
    _etcd: Proc,
}

impl World {
    fn new() -> World {
        let ns = fresh_ns();
        sh(
            &ns,
            "ip link add seg1 type bridge && ip link add seg2 type bridge && \
             ip addr add 192.168.1.1/24 dev seg1 && ip addr add 192.168.2.1/24 dev seg2 && \
             ip link set seg1 up && ip link set seg2 up && echo 1 > /proc/sys/net/ipv4/ip_forward",
        );
        let dir = TempDir::new("routes");
        let etcd = trestle_ipam_etcd::local::etcd_binary()
            .expect("etcd missing: tools/install-test-deps installs Debian's etcd-server");
        let mut cmd = Command::new(etcd);
        cmd.args([
            "--name",
            "m1",
            "--data-dir",
            &dir.0.join("etcd").display().to_string(),
            "--listen-client-urls",
            "http://192.168.1.1:2379",
            "--advertise-client-urls",
            "http://192.168.1.1:2379",
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
        while ns
            .run(|| TcpStream::connect("192.168.1.1:2379"))
            .unwrap()
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        World {
            ns,
            dir,
            _etcd: etcd,
        }
    }

    /// A node on `segment` (1 or 2) with underlay address `ip`, its trestled started.
    fn node(&self, name: &str, segment: u8, ip: &str, extra: &[&str]) -> Node {
        self.node_mtu(name, segment, ip, 1500, extra)
    }

    /// Like `node`, with an underlay of MTU `mtu`.
    fn node_mtu(&self, name: &str, segment: u8, ip: &str, mtu: u32, extra: &[&str]) -> Node {
        let ns = fresh_ns();
        let outer = format!("u-{name}");
        self.ns
            .run(|| {
                let end = |n: &str| VethEnd {
                    name: n.into(),
                    ..VethEnd::default()
                };
                Netlink::open()
                    .unwrap()
                    .create_veth(&end(&outer), &end("eth0"), ns.fd())
                    .unwrap();
            })
            .unwrap();
        sh(
            &self.ns,
            &format!(
                "ip link set {outer} mtu {mtu} && ip link set {outer} master seg{segment} && \
                 ip link set {outer} up"
            ),
        );
        sh(
            &ns,
            &format!(
                "ip link set eth0 mtu {mtu} && ip addr add {ip}/24 dev eth0 && ip link set eth0 up && \
                 ip route add default via 192.168.{segment}.1"
            ),
        );
        let dir = self.dir.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("boot_id"), format!("boot-{name}\n")).unwrap();
        let mut node = Node {
            name: name.into(),
            ns,
            dir,
            ip: ip.into(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            daemon: None,
        };
        node.start();
        node
    }
}

struct Node {
    name: String,
    ns: NetNs,
    dir: PathBuf,
    ip: String,
    args: Vec<String>,
    daemon: Option<Proc>,
}

impl Node {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn start(&mut self) {
        self.start_from(&bin_dir().join("trestled"));
    }

    fn start_from(&mut self, binary: &Path) {
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
                "192.168.1.1:2379",
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("trestled.log")).unwrap_or_default()
    }

    fn conf(&self) -> Value {
        self.conf_for(POOL, "10.244.0.1")
    }

    /// The pod network's config with one range of `subnet`.
    fn conf_for(&self, subnet: &str, gateway: &str) -> Value {
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
    fn pod(&self, pod: &NamedNetNs, id: &str) -> String {
        self.pod_with(pod, id, &self.conf())
    }

    /// Like `pod`, with `conf`.
    fn pod_with(&self, pod: &NamedNetNs, id: &str, conf: &Value) -> String {
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
    fn status(&self) -> Option<(u64, String)> {
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
    fn metric(&self, series: &str) -> Option<f64> {
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

/// Waits (up to 20 s) until `from` reaches `to`.
fn reaches(from: &NetNs, to: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if pings(from, to) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn pod_ns(dir: &Path, name: &str) -> NamedNetNs {
    let p = NamedNetNs::create(dir.join(format!("pod-{name}"))).unwrap();
    p
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn pods_on_three_nodes_reach_each_other_directly_on_a_segment_and_over_vxlan_across() {
    need_root();
    let world = World::new();
    let nodes = [
        world.node("n1", 1, "192.168.1.11", &[]),
        world.node("n2", 1, "192.168.1.12", &[]),
        world.node("n3", 2, "192.168.2.13", &[]),
    ];
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let ips: Vec<String> = nodes
        .iter()
        .zip(&pods)
        .map(|(n, p)| n.pod(p, &format!("pod-{}", n.name)))
        .collect();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in ips.iter().enumerate() {
            if i != j {
                assert!(
                    reaches(from.ns(), to),
                    "pod on {} cannot reach {to} on {}\n{}\n{}\n{}",
                    nodes[i].name,
                    nodes[j].name,
                    sh(
                        &nodes[i].ns,
                        "ip route; ip neigh; bridge fdb show dev trestle.vxlan 2>&1 || true"
                    ),
                    nodes[i].log(),
                    nodes[j].log()
                );
            }
        }
        // A pod reaches the other nodes' host addresses too.
        for n in &nodes {
            assert!(
                reaches(from.ns(), &n.ip),
                "pod {i} cannot reach node {}",
                n.name
            );
        }
    }
    // TCP across, both ways, without NAT: the server sees the client pod's own address.
    assert_eq!(
        tcp_peer(pods[0].ns(), pods[2].ns(), &ips[2]),
        Some(ips[0].clone())
    );
    assert_eq!(
        tcp_peer(pods[2].ns(), pods[1].ns(), &ips[1]),
        Some(ips[2].clone())
    );

    // n1 reaches n2 directly and n3 over VXLAN; routes carry trestle's protocol.
    let routes = sh(&nodes[0].ns, "ip route show proto 116");
    assert!(routes.contains("via 192.168.1.12 dev eth0"), "{routes}");
    assert!(
        routes.contains("via 192.168.2.13 dev trestle.vxlan") && routes.contains("onlink"),
        "{routes}"
    );
    assert!(routes.contains("unreachable 10.244.0.0/16"), "{routes}");
    let fdb = sh(&nodes[0].ns, "bridge fdb show dev trestle.vxlan");
    assert!(fdb.contains("dst 192.168.2.13"), "{fdb}");
    assert!(
        !fdb.contains("192.168.1.12"),
        "n2 is reached directly: {fdb}"
    );
    // An address of the pool that no pod holds never leaves by the default route.
    let lookup = sh(&nodes[0].ns, "ip route get 10.244.250.1 2>&1 || true");
    assert!(!lookup.contains("via 192.168.1.1"), "{lookup}");
    // Converged: STATUS says so, and the metrics count the peers by how they are reached.
    for n in &nodes {
        assert!(eventually(|| n.status().is_none()), "{:?}", n.status());
    }
    // The operator's view: how n1 reaches each node, and n1's kernel is at the revision etcd is at.
    let list = world.trestlectl(&[
        "node",
        "list",
        "--from",
        "n1",
        "--etcd",
        "192.168.1.1:2379",
        "--etcd-prefix",
        PREFIX,
    ]);
    let row = |n: &str| {
        list.lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("n1 ").contains("self") && row("n1 ").contains("alive"),
        "{list}"
    );
    assert!(
        row("n2 ").contains("direct") && row("n2 ").contains("192.168.1.12/24 (eth0)"),
        "{list}"
    );
    assert!(
        row("n3 ").contains("vxlan") && row("n3 ").contains("1450"),
        "{list}"
    );
    let json: Value = serde_json::from_str(&world.trestlectl(&[
        "node",
        "list",
        "--from",
        "n3",
        "--json",
        "--etcd",
        "192.168.1.1:2379",
        "--etcd-prefix",
        PREFIX,
    ]))
    .unwrap();
    assert_eq!(json[0]["path"], "vxlan", "{json}");
    assert_eq!(json[0]["blocks"].as_array().unwrap().len(), 1, "{json}");
    // VXLAN is untracked between nodes and accepted only from them: a pod's datagram to the VXLAN port is dropped.
    let set = sh(&nodes[0].ns, "nft list set inet trestle-vxlan nodes4");
    for n in &nodes {
        assert!(set.contains(&n.ip), "{set}");
    }
    pods[0]
        .ns()
        .run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"not vxlan", "192.168.1.11:4789").unwrap();
        })
        .unwrap();
    let drops = "trestle_ipam_routes{what=\"vxlan_drops\"}";
    assert!(
        eventually(|| nodes[0].metric(drops) == Some(1.0)),
        "{:?}",
        nodes[0].metric(drops)
    );
    let peers = |via: &str| format!("trestle_ipam_routes{{what=\"peers\",via=\"{via}\"}}");
    assert!(eventually(|| nodes[0].metric(&peers("vxlan")) == Some(1.0)));
    assert_eq!(nodes[0].metric(&peers("direct")), Some(1.0));
    assert!(eventually(|| nodes[2].metric(&peers("vxlan")) == Some(2.0)));
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn status_says_when_a_node_cannot_be_reached() {
    need_root();
    let world = World::new();
    let n1 = world.node("n1", 1, "192.168.1.11", &[]);
    // A node that routes nothing publishes no host record: nobody can reach its pods.
    let n2 = world.node("n2", 1, "192.168.1.12", &["--routing", "none"]);
    let p1 = pod_ns(&world.dir.0, "1");
    let p2 = pod_ns(&world.dir.0, "2");
    n1.pod(&p1, "p1");
    n2.pod(&p2, "p2");
    assert!(
        eventually(|| n1
            .status()
            .is_some_and(|(code, msg)| code == 51 && msg.contains("no route to node n2"))),
        "{:?}",
        n1.status()
    );
    assert_eq!(
        n2.status(),
        None,
        "a node without routing has nothing to converge"
    );
}

/// Kernel deletions of trestle's entries seen in a namespace while it runs.
struct Deletions {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Deletions {
    fn watch(ns: &NetNs) -> Deletions {
        use std::sync::atomic::{AtomicBool, Ordering};
        use trestle_netlink::{Event, Monitor};
        let mut monitor = ns.run(Monitor::open).unwrap().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match monitor.recv_timeout(Duration::from_millis(50)) {
                    Ok(Some(Event::Route {
                        route,
                        deleted: true,
                    })) if route.protocol == 116 => seen.push(format!("route {}", route.dst)),
                    Ok(Some(Event::Neighbour {
                        neighbour,
                        deleted: true,
                    })) => seen.push(format!("neighbour {}", neighbour.ip)),
                    Ok(Some(Event::Fdb {
                        entry,
                        deleted: true,
                    })) if entry.dst.is_some() => seen.push(format!("fdb {:?}", entry.dst)),
                    Ok(Some(Event::Link {
                        link,
                        deleted: true,
                    })) => seen.push(format!("link {}", link.name)),
                    Ok(Some(Event::Overrun)) => seen.push("overrun".into()),
                    _ => {}
                }
            }
            seen
        });
        Deletions {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// UDP datagrams from one pod to another, one a millisecond, numbered: how many were sent and which arrived.
struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<std::collections::BTreeSet<u64>>,
}

impl Probe {
    fn start(from: &NetNs, to: &NetNs, to_ip: &str, port: u16) -> Probe {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        let addr: SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
        let rx = to.run(|| UdpSocket::bind(addr)).unwrap().unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // Room for seconds of datagrams: a receiver thread descheduled on a busy machine must not lose any to a
        // full socket buffer (the default holds a few hundred), which would look like a loss on the path.
        let bytes: libc::c_int = 16 << 20;
        // SAFETY: `bytes` is a valid c_int for the duration of the call; the socket is open.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&rx),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let tx = from.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut n = 0u64;
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) {
                tx.send_to(&n.to_be_bytes(), addr).unwrap();
                n += 1;
                // Paced against the clock, so a late wake sends the ones it owes at once.
                let next = start + Duration::from_millis(n);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            n
        });
        let s = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut got = std::collections::BTreeSet::new();
            let mut buf = [0u8; 8];
            let mut quiet_after_stop = 0;
            loop {
                match rx.recv(&mut buf) {
                    Ok(8) => {
                        got.insert(u64::from_be_bytes(buf));
                    }
                    _ if s.load(Ordering::Relaxed) => {
                        quiet_after_stop += 1;
                        if quiet_after_stop > 3 {
                            return got;
                        }
                    }
                    _ => {}
                }
            }
        });
        Probe {
            stop,
            sender,
            receiver,
        }
    }

    /// Stops; the sequence numbers that never arrived, of how many sent.
    fn finish(self) -> (Vec<u64>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.sender.join().unwrap();
        let got = self.receiver.join().unwrap();
        ((0..sent).filter(|n| !got.contains(n)).collect(), sent)
    }
}

impl Node {
    /// Waits until this node's daemon has applied etcd's state to its kernel again (its log says so).
    fn wait_synced(&self, after: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches("routes: first sync").count() <= after {
            assert!(Instant::now() < deadline, "no sync:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        let d = self.daemon.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.0.id() as i32), sig).unwrap();
        let mut d = d;
        let _ = d.0.wait();
    }
}

/// n1 and n3 on the first segment, n2 on the second; a pod on each (a, b, c).
fn three_nodes(world: &World) -> ([Node; 3], Vec<NamedNetNs>, [String; 3]) {
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

#[test]
#[ignore = "privileged: needs root, etcd"]
fn restarts_and_upgrades_lose_no_packet_and_delete_nothing() {
    use nix::sys::signal::Signal;
    need_root();
    let world = World::new();
    let ([mut n1, mut n2, mut n3], pods, [a, b, c]) = three_nodes(&world);
    for (p, ip) in [(0, &b), (1, &a), (0, &c), (2, &a)] {
        assert!(reaches(pods[p].ns(), ip), "{p} -> {ip}");
    }
    n1.wait_synced(0);
    n2.wait_synced(0);
    let watched = [
        Deletions::watch(&n1.ns),
        Deletions::watch(&n2.ns),
        Deletions::watch(&n3.ns),
    ];
    // Over VXLAN (n1 <-> n2) and directly (n1 <-> n3), both ways.
    let probes = [
        Probe::start(pods[0].ns(), pods[1].ns(), &b, 7091),
        Probe::start(pods[1].ns(), pods[0].ns(), &a, 7092),
        Probe::start(pods[2].ns(), pods[0].ns(), &a, 7093),
        Probe::start(pods[0].ns(), pods[2].ns(), &c, 7094),
    ];
    std::thread::sleep(Duration::from_millis(300));
    // kill -9, and a restart.
    n1.signal(Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    n1.start();
    n1.wait_synced(1);
    // A graceful stop, and a restart.
    n2.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    n2.start();
    n2.wait_synced(1);
    // An upgrade: another binary (a copy) takes over.
    let upgraded = world.dir.0.join("trestled-next");
    std::fs::copy(bin_dir().join("trestled"), &upgraded).unwrap();
    n3.signal(Signal::SIGTERM);
    n3.start_from(&upgraded);
    n3.wait_synced(0);
    std::thread::sleep(Duration::from_millis(300));
    for (i, p) in probes.into_iter().enumerate() {
        let (lost, sent) = p.finish();
        assert!(sent > 500, "probe {i} sent only {sent}");
        assert!(
            lost.is_empty(),
            "probe {i}: lost {} of {sent}: {lost:?}",
            lost.len()
        );
    }
    for (i, d) in watched.into_iter().enumerate() {
        let seen = d.finish();
        assert!(seen.is_empty(), "node {}: deleted {seen:?}", i + 1);
    }
}

impl World {
    /// `trestlectl` run in the world (where etcd is).
    fn trestlectl(&self, args: &[&str]) -> String {
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

/// Waits (up to 20 s) until `f` holds; false if it never did.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn what_others_undo_comes_back_and_a_node_removed_while_one_was_down_leaves_it() {
    use nix::sys::signal::Signal;
    need_root();
    let world = World::new();
    let ([mut n1, n2, mut n3], pods, [a, b, c]) = three_nodes(&world);
    assert!(reaches(pods[0].ns(), &b) && reaches(pods[0].ns(), &c));
    let ours = |n: &Node| sh(&n.ns, "ip route show proto 116");
    let before = ours(&n1);

    // A route deleted by hand comes back.
    let to_b = before
        .lines()
        .find(|l| l.contains("trestle.vxlan"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    sh(&n1.ns, &format!("ip route del {to_b} proto 116"));
    assert!(eventually(|| ours(&n1) == before), "{}", ours(&n1));
    // So do the neighbour and FDB entries of the tunnel.
    sh(&n1.ns, "ip neigh flush dev trestle.vxlan nud permanent");
    sh(
        &n1.ns,
        "bridge fdb del de:00:00:00:00:00 dev trestle.vxlan 2>/dev/null || true",
    );
    let fdb = |n: &Node| {
        sh(
            &n.ns,
            "bridge fdb show dev trestle.vxlan | grep dst || true",
        )
    };
    let fdb_before = fdb(&n1);
    let mac = fdb_before.split(' ').next().unwrap().to_string();
    sh(
        &n1.ns,
        &format!("bridge fdb del {mac} dev trestle.vxlan dst 192.168.2.12 self"),
    );
    assert!(eventually(
        || fdb(&n1) == fdb_before && reaches(pods[0].ns(), &b)
    ));

    // The uplink goes down (the kernel drops every route through it) and up again: all come back.
    sh(&n1.ns, "ip link set eth0 down");
    std::thread::sleep(Duration::from_millis(200));
    sh(
        &n1.ns,
        "ip link set eth0 up && ip route replace default via 192.168.1.1",
    );
    assert!(eventually(|| ours(&n1) == before), "{}", ours(&n1));
    assert!(reaches(pods[0].ns(), &b) && reaches(pods[0].ns(), &c) && reaches(pods[1].ns(), &a));

    // n1's daemon is down while n3 leaves for good: when n1 comes back, n3's routes go at its first sync.
    n1.signal(Signal::SIGKILL);
    n3.signal(Signal::SIGTERM);
    drop(pods);
    assert!(eventually(|| {
        let out = world.trestlectl(&[
            "ipam",
            "show",
            "--etcd",
            "192.168.1.1:2379",
            "--etcd-prefix",
            PREFIX,
        ]);
        out.lines()
            .any(|l| l.starts_with("n3") && l.contains("expired"))
    }));
    let out = world.trestlectl(&[
        "ipam",
        "release-node",
        "n3",
        "--yes",
        "--etcd",
        "192.168.1.1:2379",
        "--etcd-prefix",
        PREFIX,
    ]);
    assert!(out.contains("host record is gone"), "{out}");
    // The running n2 drops them at once.
    assert!(
        eventually(|| !ours(&n2).contains("192.168.1.13")),
        "{}",
        ours(&n2)
    );
    assert!(
        ours(&n1).contains("192.168.1.13"),
        "n1 is down: nothing changes"
    );
    n1.start();
    n1.wait_synced(1);
    let now = ours(&n1);
    assert!(!now.contains("192.168.1.13"), "{now}");
    assert!(now.contains("192.168.2.12"), "{now}");
}

/// The MTU of a pod's `eth0`.
fn pod_mtu(pod: &NamedNetNs) -> u32 {
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
fn pings_df(from: &NetNs, to: &str, payload: usize) -> bool {
    (0..3).any(|seq| {
        from.run(|| {
            trestlectl::probe::ping_df(to.parse().unwrap(), seq, payload, Duration::from_secs(1))
        })
        .unwrap()
        .is_ok()
    })
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn pods_get_the_smallest_mtu_of_the_cluster_and_full_size_packets_cross_vxlan() {
    need_root();
    let world = World::new();
    let n1 = world.node(
        "n1",
        1,
        "192.168.1.11",
        &["--vxlan-checksum-offload", "off"],
    );
    // Across segments, over VXLAN; its underlay is the cluster's smallest.
    let n2 = world.node_mtu("n2", 2, "192.168.2.12", 1400, &[]);
    let p1 = pod_ns(&world.dir.0, "1");
    let p2 = pod_ns(&world.dir.0, "2");
    let b = n2.pod(&p2, "p2");
    // n1 knows n2 (and its underlay's MTU) before its own pod comes.
    let peers = "trestle_ipam_routes{what=\"peers\",via=\"vxlan\"}";
    assert!(eventually(|| n1.metric(peers) == Some(1.0)), "{}", n1.log());
    let a = n1.pod(&p1, "p1");
    // 1400 less VXLAN over IPv4 (50), though n1's own underlay takes 1500: without an `mtu` in the config.
    assert_eq!((pod_mtu(&p1), pod_mtu(&p2)), (1350, 1350));
    let routes = sh(&n1.ns, "ip route show proto 116 dev trestle.vxlan");
    assert!(routes.contains("mtu 1350"), "{routes}");
    assert!(reaches(p1.ns(), &b) && reaches(p2.ns(), &a));
    // Full-size packets with DF set cross both ways; one byte more cannot leave the pod.
    assert!(pings_df(p1.ns(), &b, 1350 - 28), "a -> b, full size");
    assert!(pings_df(p2.ns(), &a, 1350 - 28), "b -> a, full size");
    assert!(!pings_df(p1.ns(), &b, 1350 - 27));
    // The underlay's MTU changes at run time: the host record follows, and every route over VXLAN with it.
    sh(&world.ns, "ip link set u-n1 mtu 1300");
    sh(&n1.ns, "ip link set eth0 mtu 1300");
    let routes_of = |n: &Node| sh(&n.ns, "ip route show proto 116 dev trestle.vxlan");
    assert!(
        eventually(|| routes_of(&n2).contains("mtu 1250")),
        "{}",
        routes_of(&n2)
    );
    assert!(
        eventually(|| routes_of(&n1).contains("mtu 1250")),
        "{}",
        routes_of(&n1)
    );
    assert!(
        pings_df(p2.ns(), &a, 1250 - 28),
        "b -> a, full size of the new path"
    );
    // Checksum offload: off where asked (as on kernels up to 5.7), the kernel's own elsewhere (this one is newer).
    let offload = |n: &Node| {
        n.ns.run(|| trestle_routes::offload::tx_checksum("trestle.vxlan"))
            .unwrap()
            .unwrap()
    };
    assert!(!offload(&n1));
    if !trestle_routes::offload::has_checksum_bug(&trestle_routes::offload::kernel_release()) {
        assert!(offload(&n2));
    }
    // A config's own mtu still wins.
    let p3 = pod_ns(&world.dir.0, "3");
    let mut n1c = n1.conf();
    n1c["mtu"] = json!(1300);
    let inv = Invocation::new(
        &bin_dir().join("trestle"),
        "ADD",
        "p3",
        &p3.path().display().to_string(),
        "eth0",
    );
    let out = inv.run(n1c.to_string().as_bytes(), Some(&n1.ns)).unwrap();
    assert!(out.success, "{}", out.stdout);
    assert_eq!(pod_mtu(&p3), 1300);
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn an_address_borrowed_from_another_nodes_block_gets_host_routes() {
    need_root();
    let world = World::new();
    // A pool of two blocks of 8 for three nodes: the third borrows from a block another node owns.
    let small = &["--block-size", "10.245.0.0/28=29"];
    let nodes = [
        world.node("n1", 1, "192.168.1.11", small),
        world.node("n2", 2, "192.168.2.12", small),
        world.node("n3", 1, "192.168.1.13", small),
    ];
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let ips: Vec<String> = nodes
        .iter()
        .zip(&pods)
        .map(|(n, p)| {
            n.pod_with(
                p,
                &format!("p-{}", n.name),
                &n.conf_for("10.245.0.0/28", "10.245.0.1"),
            )
        })
        .collect();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in ips.iter().enumerate() {
            if i != j {
                assert!(
                    reaches(from.ns(), to),
                    "{} -> {to} on {}\n{}",
                    nodes[i].name,
                    nodes[j].name,
                    sh(&nodes[i].ns, "ip route show proto 116")
                );
            }
        }
    }
    // Two of the three pods share a block of 8 (there are two): the one whose node does not own it has a host
    // route on every node, to its bridge on its own node and to its node elsewhere.
    let host_routes = |n: &Node| {
        sh(&n.ns, "ip route show proto 116")
            .lines()
            .filter(|l| l.starts_with("10.245.0.") && !l.split(' ').next().unwrap().contains('/'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let routes: Vec<Vec<String>> = nodes.iter().map(host_routes).collect();
    assert!(routes.iter().all(|r| r.len() == 1), "{routes:?}");
    assert_eq!(
        routes.iter().filter(|r| r[0].contains("dev cbr0")).count(),
        1,
        "{routes:?}"
    );
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn dual_stack_pods_reach_each_other_directly_and_over_vxlan() {
    need_root();
    let world = World::new();
    sh(
        &world.ns,
        "ip addr add fd00:1::1/64 dev seg1 nodad && ip addr add fd00:2::1/64 dev seg2 nodad && \
         echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
    );
    // n1 and n2 share both families' segment; n3, across, has IPv4 only: its IPv6 pods go over the IPv4 tunnel.
    let v6 = |n: &Node, addr: &str| {
        sh(
            &n.ns,
            &format!(
                "ip addr add {addr}/64 dev eth0 nodad && ip -6 route add default via fd00:1::1"
            ),
        )
    };
    let mut n1 = world.node("n1", 1, "192.168.1.11", &[]);
    let mut n2 = world.node("n2", 1, "192.168.1.12", &[]);
    // The underlay is read at start: restart with the IPv6 address in place.
    for (n, a) in [(&mut n1, "fd00:1::11"), (&mut n2, "fd00:1::12")] {
        n.signal(nix::sys::signal::Signal::SIGTERM);
        v6(n, a);
        n.start();
    }
    let n3 = world.node("n3", 2, "192.168.2.13", &[]);
    let nodes = [n1, n2, n3];
    let conf = |n: &Node| {
        let mut c = n.conf();
        c["ipam"]["ranges"] = json!([
            [{"subnet": POOL, "gateway": "10.244.0.1"}],
            [{"subnet": "fd00:10::/64", "gateway": "fd00:10::1"}]
        ]);
        c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
        c
    };
    let pods: Vec<NamedNetNs> = nodes
        .iter()
        .map(|n| pod_ns(&world.dir.0, &n.name))
        .collect();
    let mut ips = Vec::new();
    for (n, p) in nodes.iter().zip(&pods) {
        let inv = Invocation::new(
            &bin_dir().join("trestle"),
            "ADD",
            &format!("p-{}", n.name),
            &p.path().display().to_string(),
            "eth0",
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let v = loop {
            let out = inv
                .run(conf(n).to_string().as_bytes(), Some(&n.ns))
                .unwrap();
            let v: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            if out.success || v["code"] != 11 || Instant::now() > deadline {
                assert!(out.success, "{} {}", out.stdout, n.log());
                break v;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let addr = |i: usize| {
            v["ips"][i]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        };
        ips.push((addr(0), addr(1)));
    }
    for (i, from) in pods.iter().enumerate() {
        for (j, (v4, v6)) in ips.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(reaches(from.ns(), v4));
            assert!(
                eventually(
                    || tcp_peer(from.ns(), pods[j].ns(), v6).as_deref() == Some(ips[i].1.as_str())
                ),
                "{} -> {v6} on {}\n{}\n{}",
                nodes[i].name,
                nodes[j].name,
                sh(
                    &nodes[i].ns,
                    "ip -6 route show proto 116; ip -6 neigh show dev trestle.vxlan 2>&1 || true"
                ),
                sh(from.ns(), "ip -6 route")
            );
        }
    }
    // IPv6 between n1 and n2 goes directly over their IPv6 underlay; to n3 through the tunnel, by a link-local next
    // hop made from n3's VTEP MAC.
    let r6 = sh(&nodes[0].ns, "ip -6 route show proto 116");
    assert!(r6.contains("via fd00:1::12 dev eth0"), "{r6}");
    assert!(
        r6.contains("via fe80::") && r6.contains("dev trestle.vxlan"),
        "{r6}"
    );
}

#[test]
#[ignore = "privileged: needs root, etcd"]
fn a_released_block_leaves_every_peers_routes() {
    need_root();
    let world = World::new();
    // Empty blocks go back after a second (a node keeps its last one per pool: so two blocks of 8 on n2).
    let quick = &[
        "--block-size",
        "10.244.0.0/16=29",
        "--block-release-grace",
        "1",
        "--cluster-interval",
        "0.2",
        "--reuse-delay",
        "0",
    ];
    let n1 = world.node("n1", 1, "192.168.1.11", quick);
    let n2 = world.node("n2", 2, "192.168.2.12", quick);
    let n3 = world.node("n3", 1, "192.168.1.13", quick);
    let pods: Vec<NamedNetNs> = (0..10)
        .map(|i| pod_ns(&world.dir.0, &format!("r{i}")))
        .collect();
    let ips: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| n2.pod(p, &format!("r{i}")))
        .collect();
    let blocks_of_n2 = |n: &Node| {
        sh(&n.ns, "ip route show proto 116")
            .lines()
            .filter(|l| l.contains("192.168.2.12"))
            .count()
    };
    assert!(eventually(
        || blocks_of_n2(&n1) >= 2 && blocks_of_n2(&n3) >= 2
    ));
    let before = blocks_of_n2(&n1);
    // Every pod but the first goes: n2's emptied blocks go back to the pool, and every peer drops their routes.
    for (i, p) in pods.iter().enumerate().skip(1) {
        let inv = Invocation::new(
            &bin_dir().join("trestle"),
            "DEL",
            &format!("r{i}"),
            &p.path().display().to_string(),
            "eth0",
        );
        let out = inv
            .run(n2.conf().to_string().as_bytes(), Some(&n2.ns))
            .unwrap();
        assert!(out.success, "{}", out.stdout);
    }
    assert!(
        eventually(|| blocks_of_n2(&n1) < before && blocks_of_n2(&n1) == blocks_of_n2(&n3)),
        "{}\n{}",
        sh(&n1.ns, "ip route show proto 116"),
        n2.log()
    );
    // The pod left on n2 is still reached.
    let p1 = pod_ns(&world.dir.0, "p1");
    n1.pod(&p1, "p1");
    assert!(reaches(p1.ns(), &ips[0]));
}
