//! One implementation under test ("side"): its plugin, its own host namespace, its pods and state directory, and
//! batches of ADD/DEL run against it at a given concurrency.

use super::{memory, Error};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use trestle_ipam_core::DaemonSettings;
use trestle_netlink::Netlink;
use trestle_netns::{NamedNetNs, NetNs};
use trestle_operator::runtime::Invocation;

/// The bench network's bridge.
pub const BRIDGE: &str = "bench0";

/// The side of trestle with embedded IPAM (state in `dataDir`, like host-local).
pub const EMBEDDED: &str = "trestle";
/// The side of trestle in daemon mode (`ipam.daemon`: the bench's own trestled).
pub const DAEMON: &str = "trestle-daemon";
/// The reference plugins' side.
pub const REFERENCE: &str = "reference";

/// An implementation under test.
pub struct Side {
    /// [`EMBEDDED`], [`DAEMON`] or [`REFERENCE`].
    pub name: &'static str,
    /// The main plugin binary.
    pub plugin: PathBuf,
    /// The IPAM plugin type.
    pub ipam: &'static str,
    /// Its private host namespace.
    pub host: NetNs,
    /// Its pod namespaces, created up front.
    pub pods: Vec<NamedNetNs>,
    /// Daemon mode: the trestled its IPAM config names.
    pub daemon: Option<DaemonSettings>,
    dir: PathBuf,
}

/// The outcome of one batch.
pub struct Batch {
    /// Latency of every operation.
    pub latencies: Vec<Duration>,
    /// Wall time of the whole batch.
    pub wall: Duration,
}

impl Side {
    /// Creates the side's host namespace (loopback up) and `pods` pod namespaces under `dir`.
    pub fn new(
        name: &'static str,
        plugin: PathBuf,
        ipam: &'static str,
        dir: &Path,
        pods: usize,
    ) -> std::io::Result<Side> {
        let dir = dir.join(name);
        std::fs::create_dir_all(dir.join("ns"))?;
        let host = NetNs::new_anonymous().map_err(std::io::Error::other)?;
        host.run(|| -> Result<(), trestle_netlink::Error> {
            let mut nl = Netlink::open()?;
            if let Some(lo) = nl.link_by_name("lo")? {
                nl.set_up(lo.index, true)?;
            }
            Ok(())
        })
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
        let pods = (0..pods)
            .map(|i| {
                NamedNetNs::create(dir.join(format!("ns/pod{i}"))).map_err(std::io::Error::other)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Side {
            name,
            plugin,
            ipam,
            host,
            pods,
            daemon: None,
            dir,
        })
    }

    /// The side in daemon mode: its IPAM config names this daemon.
    pub fn with_daemon(mut self, daemon: DaemonSettings) -> Side {
        self.daemon = Some(daemon);
        self
    }

    /// The bench network config: the classic shape, with masquerade on or off.
    pub fn config(&self, network: &str, subnet: &str, masq: bool) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "type": self.plugin.file_name().and_then(|n| n.to_str()).unwrap_or("bridge"),
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": masq,
            "ipam": {
                "type": self.ipam,
                "subnet": subnet,
                "dataDir": self.dir.join("ipam").display().to_string(),
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        });
        if let Some(d) = &self.daemon {
            conf["ipam"]["daemon"] = json!({
                "socket": d.socket.display().to_string(),
                "deleteQueue": d.delete_queue.display().to_string(),
            });
        }
        conf
    }

    fn invocation(&self, cmd: &str, pod: usize) -> Invocation {
        Invocation::new(
            &self.plugin,
            cmd,
            &format!("bench-{pod}"),
            &self.pods[pod].path().display().to_string(),
            "eth0",
        )
    }

    /// Runs `cmd` for pods `0..count` with `concurrency` workers. `tick` is called after each operation.
    pub fn batch(
        &self,
        cmd: &str,
        conf: &Value,
        count: usize,
        concurrency: usize,
        tick: &(dyn Fn() + Sync),
    ) -> Result<Batch, Error> {
        let stdin = conf.to_string();
        let next = AtomicUsize::new(0);
        let latencies = Mutex::new(Vec::with_capacity(count));
        let failure = Mutex::new(None::<Error>);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..concurrency.max(1) {
                // Each worker thread moves into the side's host namespace once, so it spawns plugins the way a
                // runtime does (a plain fork/exec from a process in the host namespace), without a per-spawn
                // setns hook that forces a slower fork path. The thread ends with the batch.
                s.spawn(|| {
                    if let Err(source) = self.host.enter_current_thread() {
                        failure.lock().unwrap().get_or_insert(Error::EnterHost {
                            side: self.name,
                            source,
                        });
                        return;
                    }
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        match self.invocation(cmd, i).run(stdin.as_bytes(), None) {
                            Ok(out) if out.success => latencies.lock().unwrap().push(out.elapsed),
                            Ok(out) => {
                                failure.lock().unwrap().get_or_insert(Error::PluginFailed {
                                    side: self.name,
                                    command: cmd.to_owned(),
                                    pod: i,
                                    stdout: out.stdout,
                                    stderr: out.stderr.trim().to_owned(),
                                });
                            }
                            Err(source) => {
                                failure.lock().unwrap().get_or_insert(Error::Spawn {
                                    side: self.name,
                                    command: cmd.to_owned(),
                                    pod: i,
                                    source,
                                });
                            }
                        }
                        tick();
                    }
                });
            }
        });
        let wall = start.elapsed();
        if let Some(f) = failure.into_inner().unwrap() {
            return Err(f);
        }
        Ok(Batch {
            latencies: latencies.into_inner().unwrap(),
            wall,
        })
    }

    /// Waits until no veth is left in the host namespace (the kernel finished destroying the pods' links) and
    /// returns how long that took.
    pub fn wait_links_gone(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let mut nl = self.host.run(Netlink::open).ok().and_then(Result::ok);
        while start.elapsed() < timeout {
            let left = nl
                .as_mut()
                .and_then(|nl| nl.links().ok())
                .map(|l| {
                    l.iter()
                        .filter(|l| l.kind.as_deref() == Some("veth"))
                        .count()
                })
                .unwrap_or(0);
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        start.elapsed()
    }

    /// Addresses currently reserved on `network` (for the density check): the files of `dataDir`, or what the
    /// daemon lists.
    pub fn reserved(&self, network: &str) -> usize {
        if let Some(d) = &self.daemon {
            let req = trestle_ipam_api::v1::ListRequest {
                client: Some(trestle_ipam_api::version::peer("trestlectl-bench")),
                network: network.to_owned(),
                ..Default::default()
            };
            return trestle_ipam::daemon::DaemonClient::new(d.clone())
                .list(&req)
                .map(|reply| {
                    reply
                        .allocations
                        .iter()
                        .map(|a| &a.address)
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                })
                .unwrap_or(0);
        }
        std::fs::read_dir(self.dir.join("ipam").join(network))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Peak resident memory (KiB) of one plugin call: the largest `VmHWM` of the plugin and of every process it starts,
/// each read at its exit (see [`mod@memory`], which says why wait4(2)'s `ru_maxrss` cannot tell it).
pub fn peak_memory_kib(inv: &Invocation, stdin: &[u8], host: &NetNs) -> Result<u64, memory::Error> {
    let mut cmd = std::process::Command::new(&inv.plugin);
    cmd.envs(inv.env()).stderr(std::process::Stdio::null());
    trestle_operator::runtime::enter_on_exec(&mut cmd, host);
    memory::measure(cmd, stdin).map(|m| m.peak_kib)
}
