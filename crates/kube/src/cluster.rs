//! A cluster of Docker "nodes" running `deploy/etcd` as a kubelet would: privileged node containers of the
//! project's image on two underlay networks joined by a router container, a three-member etcd with TLS on a
//! control network every node also joins, and on each node the DaemonSet's init and main containers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;
use trestle_netns::NetNs;

use crate::manifest::PodSpec;

use crate::docker::Docker;
use crate::etcd::{Certs, Etcd};
use crate::kubelet::{self, Context, HostPaths};
use crate::Error;

mod ops;

/// The DaemonSet, ConfigMap and Secret names `deploy/etcd` uses.
pub const DAEMONSET: &str = "trestle";
/// The ConfigMap.
pub const CONFIG: &str = "trestle-config";
/// The Secret the operator creates by hand.
pub const SECRET: &str = "trestle-etcd-tls";

/// A Docker network of the run, on a /24 of its own.
#[derive(Debug, Clone)]
pub struct Net {
    /// Its Docker name.
    pub name: String,
    /// Its subnet.
    pub subnet: Ipv4Net,
}

impl Net {
    /// The subnet's address `host`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        let o = self.subnet.network().octets();
        Ipv4Addr::new(o[0], o[1], o[2], host)
    }

    /// Creates a bridge network on a free /24 of 10.100.0.0-10.199.255.0: one no route of this machine covers or
    /// falls in (its own networks, a VPN's), and that Docker accepts (it refuses one that overlaps another of its
    /// networks; the next random one is tried).
    pub fn create(docker: &Docker, what: &str) -> Result<Net, Error> {
        let name = docker.name(what);
        let [l, v] = docker.label();
        let taken = host_routes()?;
        let mut last = None;
        for attempt in 0..32u32 {
            let r = random_u32() ^ attempt;
            let subnet = Ipv4Net::new(
                Ipv4Addr::new(10, 100 + (r % 100) as u8, (r >> 8) as u8, 0),
                24,
            )
            .expect("a /24");
            if taken
                .iter()
                .any(|t| t.contains(&subnet.network()) || subnet.contains(&t.network()))
            {
                continue;
            }
            let gateway = Net {
                name: name.clone(),
                subnet,
            }
            .ip(1);
            match docker.cmd(&[
                "network",
                "create",
                &l,
                &v,
                "--driver=bridge",
                &format!("--subnet={subnet}"),
                &format!("--gateway={gateway}"),
                &name,
            ]) {
                Ok(_) => return Ok(Net { name, subnet }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map(Error::from).unwrap_or_else(|| {
            Error::Command("no free /24 in 10.100.0.0-10.199.255.0 after 32 tries".into())
        }))
    }
}

/// One node: its container and what runs on it.
#[derive(Debug)]
pub struct Node {
    /// The Kubernetes node name (also the container's hostname).
    pub name: String,
    /// The node container.
    pub container: String,
    /// Its underlay segment (index into [`Cluster::segments`]).
    pub segment: usize,
    /// Its underlay address (`status.hostIP`).
    pub ip: Ipv4Addr,
    /// Its address on the control network (etcd), when there is one.
    pub control_ip: Option<Ipv4Addr>,
    /// hostPath → Docker volume.
    pub host: HostPaths,
    /// The running trestled container, if any.
    pub daemon: Option<String>,
    /// When the kubelet began its pod (init containers included).
    pub started: Option<Instant>,
    generation: u32,
}

/// What the run is made of.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The kustomize tree: `deploy/etcd` or `deploy/single-node`.
    pub deploy: PathBuf,
    /// Whether the tree's trestled needs etcd (the control network, etcd and its certificates are made, and the
    /// ConfigMap's `etcd-endpoints` and the Secret filled in as the README tells an operator to).
    pub etcd: bool,
    /// Where the static binaries are (the image is made from them).
    pub binaries: PathBuf,
    /// The nodes: name and segment (0 or 1).
    pub nodes: Vec<(String, usize)>,
}

/// etcd, on a network of its own that every node joins.
#[derive(Debug)]
pub struct Control {
    /// The control network.
    pub net: Net,
    /// etcd.
    pub etcd: Etcd,
    /// etcd's certificates.
    pub certs: Certs,
}

impl Control {
    /// Makes the network and starts three members.
    fn start(docker: &Docker, work: &Path) -> Result<Control, Error> {
        let image = crate::etcd::build_image(docker)?;
        let net = Net::create(docker, "control")?;
        let ips: Vec<Ipv4Addr> = (10..13).map(|h| net.ip(h)).collect();
        let certs = Certs::create(&work.join("certs"), &ips)?;
        let etcd = Etcd::start(docker, &image, &net.name, &ips, &certs)?;
        Ok(Control { net, etcd, certs })
    }

    /// The Secret `trestle-etcd-tls` an operator makes from the certificates.
    fn secret(&self) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        let mut secret = BTreeMap::new();
        for (key, file) in [
            ("ca.crt", self.certs.ca()),
            ("tls.crt", self.certs.cert()),
            ("tls.key", self.certs.key()),
        ] {
            let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            secret.insert(key.to_string(), bytes);
        }
        Ok(secret)
    }
}

/// A running cluster; dropping it removes every container, network, volume and image it made.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The underlay segments (two, joined by a router, when a node is on the second).
    pub segments: Vec<Net>,
    /// etcd and its network, when the tree needs them.
    pub control: Option<Control>,
    /// The image tag the DaemonSet runs now.
    pub image: String,
    /// The conflist's network name.
    pub network: String,
    /// The DaemonSet's pod spec.
    pub spec: PodSpec,
    binaries: PathBuf,
    context: Context,
    // Fields drop in order: the containers go before the directories they mount.
    docker: Docker,
    work: tempfile::TempDir,
}

impl Cluster {
    /// Builds the images, the networks, etcd, the router and the nodes, and starts the DaemonSet on every node
    /// (not waiting for readiness).
    pub fn start(spec: &Spec) -> Result<Cluster, Error> {
        let docker = Docker::new("trestle-e2e");
        let work = tempfile::Builder::new()
            .prefix("trestle-e2e-")
            .tempdir()
            .map_err(|e| Error::io(Path::new("/tmp"), e))?;
        let objects = crate::manifest::load(&spec.deploy)?;
        let ds = crate::manifest::daemon_set(&objects, DAEMONSET)?;
        let mut config_data = crate::manifest::config_map_data(&objects, CONFIG)?;
        let pod_spec = ds.pod().clone();
        let namespace = ds.metadata.namespace.clone();

        let image = build_image(&docker, &spec.binaries)?;
        let wanted = spec.nodes.iter().map(|(_, seg)| seg + 1).max().unwrap_or(1);
        let segments = (0..wanted)
            .map(|i| Net::create(&docker, &format!("seg{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        if segments.len() > 1 {
            start_router(&docker, &image, &segments)?;
        }
        let control = if spec.etcd {
            Some(Control::start(&docker, work.path())?)
        } else {
            None
        };
        let mut secrets = BTreeMap::new();
        if let Some(c) = &control {
            // The operator's edit of the ConfigMap, and the Secret: this cluster's etcd.
            config_data.insert("etcd-endpoints".into(), c.etcd.endpoints());
            secrets.insert(SECRET.to_string(), c.secret()?);
        }
        let network = conflist_name(&config_data)?;
        let context = Context {
            node_name: String::new(),
            host_ip: String::new(),
            namespace,
            config_maps: BTreeMap::from([(CONFIG.to_string(), config_data)]),
            secrets,
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            segments,
            control,
            image,
            network,
            spec: pod_spec,
            binaries: spec.binaries.clone(),
            context,
            docker,
            work,
        };
        for (i, (name, segment)) in spec.nodes.iter().enumerate() {
            let node = cluster.create_node(name, *segment, i as u8)?;
            cluster.nodes.push(node);
        }
        for i in 0..cluster.nodes.len() {
            cluster.start_daemon(i)?;
        }
        Ok(cluster)
    }

    /// The run's Docker.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// A node container on `segment`, with a volume for every hostPath of the pod spec at the same path, a leg on
    /// the control network, and a route to the other segment through the router.
    fn create_node(&self, name: &str, segment: usize, index: u8) -> Result<Node, Error> {
        let d = &self.docker;
        let container = d.name(name);
        let mut host = HostPaths::new();
        let [l, v] = d.label();
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), l.clone(), v.clone()];
        for path in kubelet::host_paths(&self.spec) {
            let vol = d.name(&format!("{name}{}", path.replace('/', "-")));
            d.cmd(&["volume", "create", &l, &v, &vol])?;
            args.push(format!("--volume={vol}:{path}"));
            host.insert(path, vol);
        }
        let net = &self.segments[segment];
        let ip = net.ip(11 + index);
        let control_ip = self.control.as_ref().map(|c| c.net.ip(21 + index));
        args.extend(crate::docker::privileged_args());
        args.extend([
            format!("--name={container}"),
            format!("--hostname={name}"),
            format!("--network={}", net.name),
            format!("--ip={ip}"),
            self.image.clone(),
            "trestlectl".into(),
            "pause".into(),
        ]);
        d.cmd(&args)?;
        if let (Some(c), Some(ip)) = (&self.control, control_ip) {
            d.cmd(&[
                "network",
                "connect",
                &format!("--ip={ip}"),
                &c.net.name,
                &container,
            ])?;
        }
        let node = Node {
            name: name.into(),
            container,
            segment,
            ip,
            control_ip,
            host,
            daemon: None,
            started: None,
            generation: 0,
        };
        self.route_segments(&node)?;
        Ok(node)
    }

    /// The underlay's own routing: the other segment through the router (as a real network's would be).
    pub(crate) fn route_segments(&self, node: &Node) -> Result<(), Error> {
        let ns = self.node_ns(node)?;
        let via = self.segments[node.segment].ip(ROUTER);
        for (i, other) in self.segments.iter().enumerate() {
            if i == node.segment {
                continue;
            }
            let dst = ipnet::IpNet::V4(other.subnet);
            ns.run(|| {
                let mut route = trestle_netlink::Route::new(dst);
                route.gateway = Some(via.into());
                trestle_netlink::Netlink::open()?.add_route(&route)
            })??;
        }
        Ok(())
    }

    /// The node container's network namespace.
    pub fn node_ns(&self, node: &Node) -> Result<NetNs, Error> {
        let pid = self.docker.pid(&node.container)?;
        not_ours(NetNs::open(format!("/proc/{pid}/ns/net"))?)
    }

    /// Runs the DaemonSet's pod on node `i` with the current image: init containers to completion, then trestled.
    pub fn start_daemon(&mut self, i: usize) -> Result<(), Error> {
        let mut ctx = self.context.clone();
        let node = &mut self.nodes[i];
        node.generation += 1;
        node.started = Some(Instant::now());
        ctx.node_name = node.name.clone();
        ctx.host_ip = node.ip.to_string();
        let files = kubelet::files_dir(self.work.path(), &node.name, node.generation);
        let (init, main) = kubelet::prepare(
            &self.docker,
            &node.container,
            &self.spec,
            &ctx,
            &node.host,
            &files,
            &self.image,
        )?;
        for c in &init {
            kubelet::run_init(&self.docker, c)?;
        }
        let main = main
            .first()
            .ok_or_else(|| Error::Manifest("the pod has no container".into()))?;
        let name = self
            .docker
            .name(&format!("{}-{}-{}", node.name, main.name, node.generation));
        kubelet::start(&self.docker, main, &name)?;
        node.daemon = Some(name);
        Ok(())
    }

    /// Stops node `i`'s trestled as the kubelet does (SIGTERM, then SIGKILL after the grace period) and removes
    /// its container.
    pub fn stop_daemon(&mut self, i: usize) -> Result<(), Error> {
        let grace = self
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .to_string();
        if let Some(c) = self.nodes[i].daemon.take() {
            self.docker.cmd(&["stop", "-t", &grace, &c])?;
            self.docker.cmd(&["rm", "-f", &c])?;
        }
        Ok(())
    }

    /// The HTTP status of the main container's probe `which` (`readinessProbe`, `livenessProbe`) on node `i`, or
    /// `None` when nothing answers.
    pub fn probe(&self, i: usize, which: &str) -> Result<Option<u16>, Error> {
        let c = self
            .spec
            .containers
            .first()
            .ok_or_else(|| Error::Manifest("the pod has no container".into()))?;
        let node = &self.nodes[i];
        let (host, port, path) = kubelet::http_probe(c, which, &node.ip.to_string())?;
        let addr = SocketAddr::new(
            host.parse()
                .map_err(|_| Error::Manifest(format!("probe host {host}")))?,
            port,
        );
        let ns = self.node_ns(node)?;
        Ok(ns.run(|| http_status(addr, &path))?)
    }

    /// Waits until node `i` is Ready as Kubernetes means it: trestled's readiness probe answers 200 and the
    /// runtime finds a network config in /etc/cni/net.d (the kubelet's NetworkReady); how long that took.
    pub fn wait_ready(&self, i: usize, timeout: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        self.wait(timeout, &format!("{} ready", self.nodes[i].name), || {
            Ok(self.probe(i, "readinessProbe")? == Some(200) && self.has_conflist(i)?)
        })?;
        Ok(start.elapsed())
    }

    /// Whether node `i`'s /etc/cni/net.d holds a conflist (seen through its first process's root).
    pub fn has_conflist(&self, i: usize) -> Result<bool, Error> {
        let pid = self.docker.pid(&self.nodes[i].container)?;
        let dir = PathBuf::from(format!("/proc/{pid}/root/etc/cni/net.d"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(false);
        };
        Ok(entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".conflist")))
    }

    /// Polls `f` every 100 ms until it is true.
    pub fn wait(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut() -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if f()? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("{what} (logs: {})", self.logs())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every trestled's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            if let Some(c) = &n.daemon {
                let log = std::process::Command::new("docker")
                    .args(["logs", "--tail", "15", c])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                out.push_str(&format!("\n--- {} ---\n{log}", n.name));
            }
        }
        out
    }

    /// Tags the image again as `<run>:<suffix>` (a new tag for a rolling update); the tag.
    pub fn retag(&self, suffix: &str) -> Result<String, Error> {
        let tag = format!("localhost/{}:{suffix}", self.docker.run_id());
        self.docker.own_image(&tag);
        self.docker.cmd(&["tag", &self.image, &tag])?;
        Ok(tag)
    }

    /// Runs the host's trestlectl against this cluster's etcd: `args` then the etcd flags.
    pub fn trestlectl_etcd(&self, args: &[&str]) -> Result<String, Error> {
        let c = self.control()?;
        let exe = self.binaries.join("trestlectl");
        let out = std::process::Command::new(&exe)
            .args(args)
            .arg(format!("--etcd={}", c.etcd.endpoints()))
            .arg(format!("--etcd-ca={}", c.certs.ca().display()))
            .arg(format!("--etcd-cert={}", c.certs.cert().display()))
            .arg(format!("--etcd-key={}", c.certs.key().display()))
            .output()
            .map_err(|e| Error::io(&exe, e))?;
        if !out.status.success() {
            return Err(Error::Command(format!(
                "trestlectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// etcd and its network; an error for a tree without etcd.
    pub fn control(&self) -> Result<&Control, Error> {
        self.control
            .as_ref()
            .ok_or_else(|| Error::Manifest("this tree runs without etcd".into()))
    }

    /// Removes everything the run made; what could not be removed.
    pub fn remove_all(&self) -> Vec<String> {
        self.docker.remove_all()
    }
}

/// `ns`, unless it is this process's own network namespace: a pid that is not the container's (reused, or of
/// another PID namespace) must never lead a test to change the machine's own network.
pub(crate) fn not_ours(ns: NetNs) -> Result<NetNs, Error> {
    if ns.same_as(&NetNs::current()?) {
        return Err(Error::Command(
            "refusing the machine's own network namespace".into(),
        ));
    }
    Ok(ns)
}

/// This machine's IPv4 routes but the default ones (read only).
fn host_routes() -> Result<Vec<Ipv4Net>, Error> {
    let routes = trestle_netlink::Netlink::open()?.routes(Some(trestle_netlink::Family::V4))?;
    Ok(routes
        .into_iter()
        .filter_map(|r| match r.dst {
            ipnet::IpNet::V4(n) if n.prefix_len() > 0 => Some(n),
            _ => None,
        })
        .collect())
}

/// The router's host number on each segment.
pub const ROUTER: u8 = 254;

/// A container of the project's image on both segments, forwarding between them.
fn start_router(docker: &Docker, image: &str, segments: &[Net]) -> Result<(), Error> {
    let name = docker.name("router");
    let [l, v] = docker.label();
    docker.cmd(&[
        "run",
        "-d",
        &l,
        &v,
        &format!("--name={name}"),
        "--sysctl=net.ipv4.ip_forward=1",
        &format!("--network={}", segments[0].name),
        &format!("--ip={}", segments[0].ip(ROUTER)),
        image,
        "trestlectl",
        "pause",
    ])?;
    docker.cmd(&[
        "network",
        "connect",
        &format!("--ip={}", segments[1].ip(ROUTER)),
        &segments[1].name,
        &name,
    ])?;
    Ok(())
}

/// Makes the project's image from `binaries` with `trestlectl image`, tagged for this run; the tag.
fn build_image(docker: &Docker, binaries: &Path) -> Result<String, Error> {
    let tag = format!(
        "localhost/{}:{}",
        docker.run_id(),
        env!("CARGO_PKG_VERSION")
    );
    docker.own_image(&tag);
    let exe = binaries.join("trestlectl");
    let out = std::process::Command::new(&exe)
        .args(["image", "--load", "--tag", &tag, "--from"])
        .arg(binaries)
        .output()
        .map_err(|e| Error::io(&exe, e))?;
    if !out.status.success() {
        return Err(Error::Command(format!(
            "trestlectl image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(tag)
}

/// The conflist's network name, from the ConfigMap's `*.conflist` key.
fn conflist_name(data: &BTreeMap<String, String>) -> Result<String, Error> {
    let text = data
        .iter()
        .find(|(k, _)| k.ends_with(".conflist"))
        .map(|(_, v)| v)
        .ok_or_else(|| Error::Manifest("no conflist in the ConfigMap".into()))?;
    let v: Value = serde_json::from_str(text).map_err(|e| Error::Manifest(e.to_string()))?;
    v.get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::Manifest("the conflist has no name".into()))
}

/// `GET path` over HTTP/1.0; the status code, or `None` when nothing answers in a second.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u32::from_le_bytes(b)
}
