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
        let node_pid = d.pid(&node.container)?;
        let link = |ns: &str| {
            std::fs::read_link(format!("/proc/{node_pid}/ns/{ns}"))
                .map_err(|e| Error::io(std::path::Path::new("/proc"), e))
        };
        let host_pid = find_sandbox(&link("pid")?, &link("net")?, name)?;
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
        crate::cluster::not_ours(NetNs::open(format!("/proc/{}/ns/net", self.host_pid))?)
    }

    /// Pings `dst` from this pod (ICMP echo, up to `timeout`); the round trip.
    pub fn ping(&self, dst: Ipv4Addr, timeout: Duration) -> Result<Duration, Error> {
        Ok(self
            .ns()?
            .run(|| trestle_operator::probe::ping(dst, 1, timeout))??)
    }

    /// A TCP exchange from this pod to `to`'s `port`: `to` listens, this pod connects and both sides see the
    /// message.
    pub fn tcp(&self, to: &Pod, port: u16) -> Result<(), Error> {
        let addr = std::net::SocketAddr::from((to.ip, port));
        let listener = to.ns()?.run(|| trestle_operator::probe::listen(addr))??;
        let server = std::thread::spawn(move || {
            trestle_operator::probe::serve_once(&listener, Duration::from_secs(10))
        });
        let answer = self.ns()?.run(|| {
            trestle_operator::probe::exchange(addr, "trestle", Duration::from_secs(10))
        })??;
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
/// Only once it is in a network namespace other than the node's (`node_net`): it unshares one after its exec, and an
/// ADD given its path before that would wire the node's own namespace.
fn find_sandbox(
    pid_ns: &std::path::Path,
    node_net: &std::path::Path,
    name: &str,
) -> Result<u32, Error> {
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
            if !same_ns || !String::from_utf8_lossy(&cmdline).contains(&needle) {
                continue;
            }
            let own_net = std::fs::read_link(p.path().join("ns/net")).is_ok_and(|l| l != node_net);
            if own_net && lo_is_up(pid) {
                return Ok(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Timeout(format!("sandbox {name} never appeared")))
}

/// Whether `lo` is up in `pid`'s network namespace (the sandbox brings it up right after its unshare).
fn lo_is_up(pid: u32) -> bool {
    let Ok(ns) = NetNs::open(format!("/proc/{pid}/ns/net")) else {
        return false;
    };
    ns.run(|| {
        trestle_netlink::Netlink::open()
            .and_then(|mut nl| nl.link_by_name("lo"))
            .is_ok_and(|l| l.is_some_and(|l| l.up))
    })
    .unwrap_or(false)
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
