//! Pods on a Docker node, made the way a runtime makes them: a sandbox process holding a fresh network namespace
//! (`trestlectl pause --netns`, in the node's PID namespace), then `trestlectl add` in the node, which reads the
//! conflist trestled wrote and execs the plugins the install step copied, exactly as libcni does.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use trestle_netns::NetNs;

use crate::cluster::{Cluster, Node};
use crate::Error;

/// A pod's sandbox and its address.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its name (also its container ID).
    pub name: String,
    /// The node container it runs in.
    pub node: String,
    /// The sandbox process, as the machine sees it.
    pub host_pid: u32,
    /// The sandbox process, as the node sees it.
    pub node_pid: u32,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl Pod {
    /// Starts a sandbox named `name` on `node` and ADDs it to the cluster's network.
    pub fn create(cluster: &Cluster, node: &Node, name: &str) -> Result<Pod, Error> {
        let d = cluster.docker();
        d.cmd(&[
            "exec",
            "-d",
            &node.container,
            "trestlectl",
            "pause",
            "--netns",
            "--name",
            name,
        ])?;
        let node_pid_ns = std::fs::read_link(format!("/proc/{}/ns/pid", d.pid(&node.container)?))
            .map_err(|e| Error::io(std::path::Path::new("/proc"), e))?;
        let host_pid = find_sandbox(&node_pid_ns, name)?;
        let node_pid = ns_pid(host_pid)?;
        let mut pod = Pod {
            name: name.into(),
            node: node.container.clone(),
            host_pid,
            node_pid,
            ip: Ipv4Addr::UNSPECIFIED,
        };
        let out = pod.cni(cluster, "add")?;
        pod.ip = first_ipv4(&out)?;
        Ok(pod)
    }

    /// `trestlectl <command>` (add, check, del) for this pod in its node; the output.
    pub fn cni(&self, cluster: &Cluster, command: &str) -> Result<String, Error> {
        cluster
            .docker()
            .cmd(&[
                "exec",
                &self.node,
                "trestlectl",
                command,
                &cluster.network,
                &self.netns_in_node(),
                "--container-id",
                &self.name,
            ])
            .map_err(Error::from)
    }

    /// The netns path a runtime in the node passes to the plugins.
    pub fn netns_in_node(&self) -> String {
        format!("/proc/{}/ns/net", self.node_pid)
    }

    /// The sandbox's network namespace, entered from this machine.
    pub fn ns(&self) -> Result<NetNs, Error> {
        Ok(NetNs::open(format!("/proc/{}/ns/net", self.host_pid))?)
    }

    /// Pings `dst` from this pod (ICMP echo, up to `timeout`); the round trip.
    pub fn ping(&self, dst: Ipv4Addr, timeout: Duration) -> Result<Duration, Error> {
        Ok(self
            .ns()?
            .run(|| trestlectl::probe::ping(dst, 1, timeout))??)
    }

    /// A TCP exchange from this pod to `to`'s `port`: `to` listens, this pod connects and both sides see the
    /// message.
    pub fn tcp(&self, to: &Pod, port: u16) -> Result<(), Error> {
        let addr = std::net::SocketAddr::from((to.ip, port));
        let listener = to.ns()?.run(|| trestlectl::probe::listen(addr))??;
        let server = std::thread::spawn(move || {
            trestlectl::probe::serve_once(&listener, Duration::from_secs(10))
        });
        let answer = self
            .ns()?
            .run(|| trestlectl::probe::exchange(addr, "trestle", Duration::from_secs(10)))??;
        server
            .join()
            .map_err(|_| Error::Command("the TCP server panicked".into()))??;
        if !answer.contains("trestle") {
            return Err(Error::Command(format!("TCP answer {answer:?}")));
        }
        Ok(())
    }
}

/// The machine's pid of the sandbox `name` in the PID namespace `pid_ns` (`pid:[...]`): its command line names it.
fn find_sandbox(pid_ns: &std::path::Path, name: &str) -> Result<u32, Error> {
    let needle = format!("\0--name\0{name}\0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for p in std::fs::read_dir("/proc")
            .map_err(|e| Error::io(std::path::Path::new("/proc"), e))?
            .flatten()
        {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let same_ns = std::fs::read_link(p.path().join("ns/pid")).is_ok_and(|l| l == pid_ns);
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if same_ns && String::from_utf8_lossy(&cmdline).contains(&needle) {
                return Ok(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Timeout(format!("sandbox {name} never appeared")))
}

/// The pid of `host_pid` in its own PID namespace (the last field of `NSpid`).
fn ns_pid(host_pid: u32) -> Result<u32, Error> {
    let path = format!("/proc/{host_pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| Error::io(std::path::Path::new(&path), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::Command(format!("no NSpid in {path}")))
}

/// The first IPv4 address of a CNI result.
fn first_ipv4(result: &str) -> Result<Ipv4Addr, Error> {
    let v: Value = serde_json::from_str(result)
        .map_err(|_| Error::Command(format!("not a CNI result: {result}")))?;
    v.get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .next()
        .ok_or_else(|| Error::Command(format!("no IPv4 address in {result}")))
}
