//! The cluster act's machinery: the processes it starts (etcd, trestled, pause sandboxes), the world's segments,
//! the nodes and their pods. Everything is made through netlink and plain process spawning; nothing here
//! narrates.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use trestle_netlink::{Netlink, Route, VethEnd};
use trestle_netns::NetNs;

use super::{Because, StepError};
use trestle_operator::runtime::{enter_on_exec, Invocation};
use trestle_operator::sandbox::Pause;

/// The cluster-wide pool, as in docs/cluster-networking.md.
pub const POOL: &str = "10.244.0.0/16";
/// The pool's gateway, on every node's bridge.
pub const GATEWAY: &str = "10.244.0.1";
/// The pods' bridge on every node.
pub const BRIDGE: &str = "cbr0";
/// The VXLAN device trestled makes when a peer is on another subnet.
pub const VXLAN: &str = "trestle.vxlan";
/// etcd's client address, on the first segment's bridge in the world.
pub const ETCD: &str = "192.168.1.1:2379";
/// The key prefix of the demo's cluster in etcd.
pub const PREFIX: &str = "/trestle-demo";

/// A long-running process the demo started (etcd, a trestled): in a process group of its own, so a Ctrl-C typed
/// at the terminal reaches only the demo, which then stops it in order; killed by the kernel should the demo die
/// (`PR_SET_PDEATHSIG`), so even a SIGKILL of the demo leaves none behind. Killed on drop.
#[derive(Debug)]
pub struct Service {
    /// What it is, for messages ("etcd", "trestled on n1").
    pub what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Spawns `cmd` inside `ns`, its stdout and stderr appended to `log`. Call it on the main thread: the death
    /// signal follows the thread that forks.
    pub fn spawn(what: &str, mut cmd: Command, ns: &NetNs, log: &Path) -> std::io::Result<Service> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        enter_on_exec(&mut cmd, ns);
        trestle_operator::sandbox::die_with_parent(&mut cmd);
        Ok(Service {
            what: what.to_owned(),
            child: Some(cmd.spawn()?),
            log: log.to_owned(),
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Why it is not running, if it exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(format!("{} exited ({status})", self.what)),
            Some(Err(e)) => Some(format!("{}: {e}", self.what)),
            None => Some(format!("{} was stopped", self.what)),
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; waits for it. `Err` names what could not be done.
    pub fn stop(&mut self, grace: Duration) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child
            .kill()
            .and_then(|()| child.wait().map(|_| ()))
            .map_err(|e| format!("{} (pid {}): {e}", self.what, child.id()))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The etcd command line: one member, clients on the first segment, peers on the world's loopback.
pub fn etcd_command(etcd: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(etcd);
    cmd.args(etcd_args(data));
    cmd
}

/// etcd's arguments (also shown to the reader).
pub fn etcd_args(data: &Path) -> Vec<String> {
    let client = format!("http://{ETCD}");
    [
        "--name",
        "trestle-demo",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "trestle-demo=http://127.0.0.1:2380",
        "--log-level",
        "error",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Waits until something accepts TCP connections on `addr` inside `ns`, or `service` exits, or `timeout` passes.
pub fn wait_serving(
    ns: &NetNs,
    addr: &str,
    service: &mut Service,
    timeout: Duration,
) -> Result<Duration, StepError> {
    let start = Instant::now();
    let addr: std::net::SocketAddr = addr.parse().expect("a socket address");
    loop {
        let up = ns
            .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            .because("cannot enter the world namespace")?;
        if up {
            return Ok(start.elapsed());
        }
        if let Some(why) = service.exited() {
            return Err(StepError::Expectation {
                wanted: format!("{} to serve on {addr}", service.what),
                got: format!("{why}:\n{}", service.log_tail(20)),
            });
        }
        interrupted()?;
        if start.elapsed() > timeout {
            return Err(StepError::Expectation {
                wanted: format!("{} to serve on {addr} within {timeout:?}", service.what),
                got: service.log_tail(20),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An error when Ctrl-C (SIGTERM, SIGHUP) asked the demo to stop: long waits give up at once.
pub fn interrupted() -> Result<(), StepError> {
    if super::super::interrupt::requested() {
        Err(StepError::Expectation {
            wanted: "to go on".into(),
            got: "interrupted".into(),
        })
    } else {
        Ok(())
    }
}

/// An underlay segment: a bridge of the world, and the address of its nodes' default gateway.
#[derive(Debug, Clone)]
pub struct Segment {
    /// `seg1`, `seg2`.
    pub name: String,
    /// The nodes' default gateway on it, with the subnet's prefix: the world's own address (made by
    /// [`Segment::create`]), or a router's on a segment made by [`Segment::create_bridge`].
    pub address: Ipv4Net,
}

impl Segment {
    /// Segment number `n` (from 1): `segN`, 192.168.N.1/24.
    pub fn number(n: u8) -> Segment {
        Segment {
            name: format!("seg{n}"),
            address: Ipv4Net::new(Ipv4Addr::new(192, 168, n, 1), 24).expect("a /24"),
        }
    }

    /// Makes the bridge in the calling thread's namespace (the world), with its address, up.
    pub fn create(&self) -> Result<(), trestle_netlink::Error> {
        let index = self.create_bridge()?;
        Netlink::open()?.add_address(index, IpNet::V4(self.address), false)
    }

    /// Makes the bridge alone (up, no address: the world is not on this segment); its index.
    pub fn create_bridge(&self) -> Result<u32, trestle_netlink::Error> {
        let mut nl = Netlink::open()?;
        nl.create_bridge(&self.name, None, false)?;
        let br = nl
            .link_by_name(&self.name)?
            .ok_or(trestle_netlink::Error::NotFound)?;
        nl.set_up(br.index, true)?;
        Ok(br.index)
    }
}

/// A router: a network namespace of its own with a leg on each of two segments and IPv4 forwarding on.
#[derive(Debug)]
pub struct Router {
    /// Its namespace, held: dropped, it goes, and its legs with it.
    _ns: NetNs,
    /// Its address on each segment, by segment name.
    pub legs: Vec<(String, Ipv4Net)>,
}

impl Router {
    /// Makes a router in a new namespace with, per `(segment, address)`, a veth whose world end (`r-<segment>`)
    /// is a port of the segment's bridge in `world` and whose router end (named after the segment) has `address`.
    pub fn create(world: &NetNs, legs: &[(&Segment, Ipv4Net)]) -> Result<Router, StepError> {
        let ns = NetNs::new_anonymous().because("cannot create the router's namespace")?;
        for (seg, _) in legs {
            plug(world, &ns, &format!("r-{}", seg.name), &seg.name, &seg.name)?;
        }
        ns.run(|| -> Result<(), trestle_netlink::Error> {
            let mut nl = Netlink::open()?;
            for (seg, address) in legs {
                let leg = nl
                    .link_by_name(&seg.name)?
                    .ok_or(trestle_netlink::Error::NotFound)?;
                nl.add_address(leg.index, IpNet::V4(*address), false)?;
            }
            Ok(())
        })
        .because("cannot enter the router's namespace")?
        .because("cannot give the router its addresses")?;
        ns.run(|| trestle_netlink::sysctl::set("net/ipv4/ip_forward", "1"))
            .because("cannot enter the router's namespace")?
            .because("cannot turn forwarding on in the router")?;
        Ok(Router {
            _ns: ns,
            legs: legs.iter().map(|(s, a)| (s.name.clone(), *a)).collect(),
        })
    }
}

/// Adds a route to `dst` via `gateway` in `ns`.
pub fn route_via(ns: &NetNs, dst: Ipv4Net, gateway: Ipv4Addr) -> Result<(), StepError> {
    ns.run(|| {
        let mut route = Route::new(IpNet::V4(dst));
        route.gateway = Some(gateway.into());
        Netlink::open()?.add_route(&route)
    })
    .because("cannot enter the namespace")?
    .because("cannot add the route")
}

/// A veth from `world`'s bridge `segment` (port `outer`, up) to `inner` in `ns` (up), and `ns`'s `lo` up.
fn plug(
    world: &NetNs,
    ns: &NetNs,
    outer: &str,
    inner: &str,
    segment: &str,
) -> Result<(), StepError> {
    world
        .run(|| -> Result<(), trestle_netlink::Error> {
            let mut nl = Netlink::open()?;
            let end = |n: &str| VethEnd {
                name: n.into(),
                ..VethEnd::default()
            };
            nl.create_veth(&end(outer), &end(inner), ns.fd())?;
            let seg = nl
                .link_by_name(segment)?
                .ok_or(trestle_netlink::Error::NotFound)?;
            let link = nl
                .link_by_name(outer)?
                .ok_or(trestle_netlink::Error::NotFound)?;
            nl.set_master(link.index, Some(seg.index))?;
            nl.set_up(link.index, true)
        })
        .because("cannot enter the world namespace")?
        .because("cannot plug a veth into the segment")?;
    ns.run(|| -> Result<(), trestle_netlink::Error> {
        let mut nl = Netlink::open()?;
        for name in ["lo", inner] {
            let link = nl
                .link_by_name(name)?
                .ok_or(trestle_netlink::Error::NotFound)?;
            nl.set_up(link.index, true)?;
        }
        Ok(())
    })
    .because("cannot enter the namespace")?
    .because("cannot set the links up")
}

/// A node: a network namespace with `eth0` on a segment, and its trestled.
#[derive(Debug)]
pub struct Node {
    /// `n1`, `n2`, `n3`.
    pub name: String,
    /// The node's network namespace.
    pub ns: NetNs,
    /// Its underlay address on `eth0`, with the segment's prefix.
    pub ip: Ipv4Net,
    /// The segment it is on.
    pub segment: Segment,
    /// The world's end of its `eth0` veth (a port of the segment's bridge).
    pub outer: String,
    /// Where its trestled keeps its socket, state and log.
    pub dir: PathBuf,
    /// Its trestled, once started.
    pub daemon: Option<Service>,
    /// More arguments of its trestled (the bench's small blocks).
    pub extra_args: Vec<String>,
}

impl Node {
    /// Makes node `name` on `segment` with underlay address `ip`: a namespace with `lo` and `eth0` up, `eth0`
    /// the end of a veth whose other end (`u-<name>`) is a port of the segment's bridge in `world`, and a default
    /// route via the segment's router address.
    pub fn create(
        world: &NetNs,
        name: &str,
        segment: &Segment,
        ip: Ipv4Addr,
        dir: &Path,
    ) -> Result<Node, StepError> {
        let ns = NetNs::new_anonymous().because("cannot create the node's namespace")?;
        let outer = format!("u-{name}");
        plug(world, &ns, &outer, "eth0", &segment.name)?;
        let addr = Ipv4Net::new(ip, segment.address.prefix_len()).expect("prefix of a segment");
        let gateway = segment.address.addr();
        ns.run(|| -> Result<(), trestle_netlink::Error> {
            let mut nl = Netlink::open()?;
            let eth0 = nl
                .link_by_name("eth0")?
                .ok_or(trestle_netlink::Error::NotFound)?;
            nl.add_address(eth0.index, IpNet::V4(addr), false)?;
            let mut default = Route::new("0.0.0.0/0".parse().expect("a prefix"));
            default.gateway = Some(gateway.into());
            nl.add_route(&default)
        })
        .because("cannot enter the node's namespace")?
        .because("cannot give the node its address and default route")?;
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).because("cannot create the node's directory")?;
        // trestled tells a reboot by the boot ID; each node is its own "machine" here.
        std::fs::write(dir.join("boot_id"), format!("trestle-demo-{name}\n"))
            .because("cannot write the node's boot ID")?;
        Ok(Node {
            name: name.to_owned(),
            ns,
            ip: addr,
            segment: segment.clone(),
            outer,
            dir,
            daemon: None,
            extra_args: Vec::new(),
        })
    }

    /// The arguments of trestled that matter to the reader: etcd mode, where etcd is, the node's name.
    pub fn daemon_args(&self) -> Vec<String> {
        [
            "--store",
            "etcd",
            "--etcd-endpoints",
            ETCD,
            "--etcd-prefix",
            PREFIX,
            "--node-name",
            &self.name,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Starts the node's trestled (from `bin_dir`) inside its namespace, with its files in the node's directory.
    pub fn start_daemon(&mut self, bin_dir: &Path) -> Result<u32, StepError> {
        let p = |f: &str| self.dir.join(f);
        let mut cmd = Command::new(bin_dir.join("trestled"));
        cmd.args(self.daemon_args())
            .arg("--socket")
            .arg(p("ipam.sock"))
            .arg("--state-dir")
            .arg(p("state"))
            .arg("--delete-queue")
            .arg(p("queue"))
            .arg("--host-local-dir")
            .arg("")
            .arg("--cni-cache-dir")
            .arg(p("cni-cache"))
            .arg("--boot-id-file")
            .arg(p("boot_id"))
            .args(&self.extra_args);
        let what = format!("trestled on {}", self.name);
        let service = Service::spawn(&what, cmd, &self.ns, &p("trestled.log"))
            .because("cannot start trestled")?;
        let pid = service.pid();
        self.daemon = Some(service);
        Ok(pid)
    }

    /// Waits until the node's trestled has its socket, or exits.
    pub fn wait_daemon(&mut self, timeout: Duration) -> Result<Duration, StepError> {
        let start = Instant::now();
        let socket = self.dir.join("ipam.sock");
        let daemon = self.daemon.as_mut().expect("trestled started");
        loop {
            if socket.exists() {
                return Ok(start.elapsed());
            }
            if let Some(why) = daemon.exited() {
                return Err(StepError::Expectation {
                    wanted: format!("{} to serve on {}", daemon.what, socket.display()),
                    got: format!("{why}:\n{}", daemon.log_tail(20)),
                });
            }
            interrupted()?;
            if start.elapsed() > timeout {
                return Err(StepError::Expectation {
                    wanted: format!("{} to serve within {timeout:?}", daemon.what),
                    got: daemon.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The network config of the node's pods: the seed's, with the node's own socket and delete queue.
    pub fn conf(&self) -> String {
        conf_text(&self.dir.join("ipam.sock"), &self.dir.join("queue"))
    }

    /// The path the config is written to (and shown at).
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("net.d/10-podnet.conf")
    }

    /// The last lines of its trestled's log.
    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_tail(20))
            .unwrap_or_default()
    }
}

/// The pods' network config, in the order a person writes it.
pub fn conf_text(socket: &Path, queue: &Path) -> String {
    format!(
        r#"{{
    "cniVersion": "1.1.0",
    "name": "podnet",
    "type": "trestle",
    "bridge": "{BRIDGE}",
    "isGateway": true,
    "ipMasq": true,
    "ipam": {{
        "type": "trestle-ipam",
        "daemon": {{ "socket": "{}", "deleteQueue": "{}" }},
        "ranges": [[{{ "subnet": "{POOL}", "gateway": "{GATEWAY}" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}]
    }}
}}"#,
        socket.display(),
        queue.display()
    )
}

/// A pod: a pause sandbox inside a node, attached to the node's network by the plugin.
#[derive(Debug)]
pub struct Pod {
    /// `CNI_CONTAINERID`.
    pub id: String,
    /// Index of its node in the demo's nodes.
    pub node: usize,
    /// The sandbox; `None` once stopped.
    pub pause: Option<Pause>,
    /// Whether an ADD was made (and no DEL yet): a runtime DELs after an ADD that failed too.
    pub attached: bool,
    /// Its address, once ADD answered.
    pub ip: Option<Ipv4Addr>,
}

impl Pod {
    /// `CNI_NETNS`.
    pub fn netns_path(&self) -> String {
        self.pause
            .as_ref()
            .map(|p| p.netns_path().display().to_string())
            .unwrap_or_default()
    }

    /// Opens the pod's namespace.
    pub fn ns(&self) -> Result<NetNs, StepError> {
        NetNs::open(self.netns_path()).because("cannot open the pod's network namespace")
    }

    /// The pod's address (after ADD).
    pub fn addr(&self) -> Ipv4Addr {
        self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The plugin call `command` for this pod, as a runtime makes it.
    pub fn invocation(&self, bin_dir: &Path, command: &str) -> Invocation {
        let mut inv = Invocation::new(
            &bin_dir.join("trestle"),
            command,
            &self.id,
            &self.netns_path(),
            "eth0",
        );
        // A Ctrl-C then waits for the call, and the clean-up DELs what it added.
        inv.own_process_group = true;
        inv
    }
}

/// The address of a CNI 1.x result's first IP (`"ips": [{"address": "10.244.1.2/16"}]`).
pub fn result_address(stdout: &str) -> Option<Ipv4Net> {
    let v: serde_json::Value = serde_json::from_str(stdout).ok()?;
    v["ips"][0]["address"].as_str()?.parse().ok()
}

/// Runs `inv` with `conf` inside `node`, again while trestled answers "try again later" (code 11: it is still
/// reading the cluster, or claiming a block), as a kubelet retries; the last outcome and the number of calls.
pub fn add_with_retry(
    inv: &Invocation,
    conf: &str,
    node: &NetNs,
    timeout: Duration,
) -> Result<(trestle_operator::runtime::Outcome, u32), StepError> {
    let start = Instant::now();
    let mut calls = 0;
    loop {
        let out = inv
            .run(conf.as_bytes(), Some(node))
            .because("cannot run the plugin")?;
        calls += 1;
        if out.success || out.error_code() != Some(11) || start.elapsed() > timeout {
            return Ok((out, calls));
        }
        interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_json_with_the_nodes_own_socket() {
        let text = conf_text(
            Path::new("/run/x/n1/ipam.sock"),
            Path::new("/run/x/n1/queue"),
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ipam"]["daemon"]["socket"], "/run/x/n1/ipam.sock");
        assert_eq!(v["ipam"]["ranges"][0][0]["subnet"], POOL);
        assert!(v.get("mtu").is_none(), "the MTU comes from trestled");
    }

    #[test]
    fn results_give_their_first_address() {
        let out =
            r#"{"cniVersion":"1.1.0","ips":[{"address":"10.244.3.2/16","gateway":"10.244.0.1"}]}"#;
        assert_eq!(result_address(out), Some("10.244.3.2/16".parse().unwrap()));
        assert_eq!(result_address("{}"), None);
    }

    #[test]
    fn segments_are_numbered() {
        let s = Segment::number(2);
        assert_eq!(
            (s.name.as_str(), s.address.to_string()),
            ("seg2", "192.168.2.1/24".into())
        );
        let args = etcd_args(Path::new("/run/d/etcd"));
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--listen-client-urls" && w[1] == "http://192.168.1.1:2379"));
    }
}
