//! `trestlectl demo --cluster`: the demo, across nodes. Nodes are network namespaces on an underlay (bridges of
//! a "world" namespace); one etcd member runs in the world; each node runs the real `trestled --store etcd`, and
//! pods are wired by the real `trestle` plugin. Part 1: two nodes on one segment, routed directly. Part 2: a
//! third node on a second segment behind a router (a namespace of its own), reached over VXLAN. The routes, neighbour and FDB
//! entries are read through netlink and shown as `ip` and `bridge` print them; traffic is ICMP and TCP done
//! in-process.
//!
//! Everything happens in the walkthrough's private namespaces ([`Isolation`]): the world is its private "host"
//! network namespace, and etcd's data and trestled's state live under a tmpfs over `/run` that only the demo's
//! mount namespace sees. The processes it starts are in process groups of their own and die with it
//! (`PR_SET_PDEATHSIG`); on a failure or Ctrl-C the pods are deleted and every process stopped before it exits.

mod drawing;
mod finish;
mod listing;
pub mod machine;
mod part1;
mod part2;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trestle_netns::NetNs;

use super::isolation::{Isolation, RUN_DIR};
use super::narrate::Interrupted;
use super::{Error, Narrator, Options};
use machine::{Node, Pod, Segment, Service};

/// What went wrong inside a step (the walkthrough's kinds of failure).
pub(super) type StepError = super::steps::Error;

/// etcd is not installed (or not where `$TRESTLE_ETCD` says).
#[derive(Debug, Clone)]
pub struct MissingEtcd {
    /// Where the demo looked.
    pub looked: String,
}

impl std::fmt::Display for MissingEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd not found ({}): the cluster demo runs one etcd member. Install it with \
             `apt-get install etcd-server` (Debian, Ubuntu), or give the path of an etcd binary in $TRESTLE_ETCD",
            self.looked
        )
    }
}

/// The etcd binary the demo will run, or where it looked.
fn find_etcd() -> Result<PathBuf, MissingEtcd> {
    match trestle_etcd_local::etcd_binary() {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(MissingEtcd {
            looked: format!("$TRESTLE_ETCD is {}, which is not a file", p.display()),
        }),
        None => Err(MissingEtcd {
            looked: "no etcd on PATH".into(),
        }),
    }
}

/// A cause of a step's failure, said with what failed.
pub(super) trait Because<T> {
    /// The step failed because `what` failed.
    fn because(self, what: &'static str) -> Result<T, StepError>;
}

impl<T> Because<T> for Result<T, std::io::Error> {
    fn because(self, what: &'static str) -> Result<T, StepError> {
        self.map_err(|source| StepError::Io { what, source })
    }
}

impl<T> Because<T> for Result<T, trestle_netns::Error> {
    fn because(self, what: &'static str) -> Result<T, StepError> {
        self.map_err(|source| StepError::Netns { what, source })
    }
}

impl<T> Because<T> for Result<T, trestle_netlink::Error> {
    fn because(self, what: &'static str) -> Result<T, StepError> {
        self.map_err(|source| StepError::Netlink { what, source })
    }
}

/// An expectation that did not hold.
fn expected(wanted: impl Into<String>, got: impl Into<String>) -> StepError {
    StepError::Expectation {
        wanted: wanted.into(),
        got: got.into(),
    }
}

/// Runs the cluster act. Must be called while the process is still single-threaded (it unshares its mount
/// namespace).
pub fn run(opts: &Options) -> Result<(), Error> {
    if opts.runtime.is_some() {
        return Err(Error::ClusterConflict("--runtime"));
    }
    if opts.machine_netns {
        return Err(Error::ClusterConflict("--machine-netns"));
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    for bin in ["trestle", "trestle-ipam", "trestled"] {
        let path = opts.bin_dir.join(bin);
        if !path.is_file() {
            return Err(Error::MissingBinary(path));
        }
    }
    // Everything the act needs is checked before anything is made.
    let etcd = find_etcd().map_err(Error::MissingEtcd)?;
    super::interrupt::install().map_err(|e| Error::Isolation(super::IsolationError::Signals(e)))?;
    let isolation = Isolation::set_up(false).map_err(Error::Isolation)?;
    let world = isolation
        .host
        .as_ref()
        .expect("an isolated run has a host namespace");
    let mut narrator = Narrator::new(
        opts.color,
        opts.pace,
        std::io::IsTerminal::is_terminal(&std::io::stdin()),
    );
    let (result, left) = {
        let mut act = Act::new(opts, world, &mut narrator, etcd);
        let result = act.run_all();
        (result, std::mem::take(&mut act.left))
    };
    isolation.tear_down();
    if result.is_err() && super::interrupt::requested() {
        return Err(Error::Interrupted { left });
    }
    result
}

/// How long a wait for the cluster to settle may take before the demo calls it a failure.
const SETTLE: Duration = Duration::from_secs(30);
/// One probe's wait for an answer.
const PROBE: Duration = Duration::from_secs(2);

/// The act's state between steps.
pub(super) struct Act<'a> {
    opts: &'a Options,
    world: &'a NetNs,
    n: &'a mut Narrator,
    etcd_bin: PathBuf,
    /// Where etcd's data and each node's files are (in the private `/run`).
    dir: PathBuf,
    etcd: Option<Service>,
    segments: Vec<Segment>,
    /// The router between the segments (part 2).
    router: Option<machine::Router>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// What a failed or interrupted run could not undo.
    left: Vec<String>,
    started: Instant,
}

type StepResult<T = ()> = Result<T, Error>;

impl<'a> Act<'a> {
    fn new(opts: &'a Options, world: &'a NetNs, n: &'a mut Narrator, etcd_bin: PathBuf) -> Act<'a> {
        Act {
            opts,
            world,
            n,
            etcd_bin,
            dir: Path::new(RUN_DIR).join("cluster"),
            etcd: None,
            segments: Vec::new(),
            router: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            left: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Starts the next step (after Enter, with `--step`) and runs `body`; its failure is the step's.
    fn step(
        &mut self,
        title: &str,
        why: &str,
        body: impl FnOnce(&mut Self) -> Result<(), StepError>,
    ) -> StepResult {
        self.n
            .step(title, why)
            .map_err(|Interrupted| Error::Interrupted { left: Vec::new() })?;
        body(self).map_err(|source| Error::Step {
            step: self.n.current(),
            source,
        })
    }

    /// Runs every step; on failure (or Ctrl-C) still deletes the pods and stops every process.
    fn run_all(&mut self) -> StepResult {
        self.intro();
        let result = self
            .part1()
            .and_then(|()| self.part2())
            .and_then(|()| self.finish());
        if result.is_err() {
            let left = self.clean_up();
            if !left.is_empty() {
                self.n
                    .say(&format!("\nCould not clean up: {}", left.join("; ")));
            }
            self.left = left;
        }
        result
    }

    fn intro(&self) {
        self.n
            .say("trestle demo --cluster: pods on different nodes, routed by trestled\n");
        self.n.say("With `trestled --store etcd`, every node takes blocks of addresses from one cluster-wide pool kept");
        self.n.say("in etcd, publishes how it is reached (its \"host record\"), and programs the routes to every other");
        self.n.say("node's blocks: directly when two nodes share an underlay subnet, over VXLAN when they do not.");
        self.n.say("\nHere each node is a network namespace, plugged into an underlay made of bridges in a \"world\"");
        self.n.say("namespace, which also runs etcd. Part 1: two nodes on one segment. Part 2: a third node on another");
        self.n.say(
            "segment, behind a router. The binaries are the real ones: etcd, trestled, trestle.",
        );
        self.n.say("It takes a few seconds.");
        if self.n.waits() {
            self.n
                .say("\n--step: after each step the demo waits for Enter (Ctrl-C stops it and cleans up).");
        } else if self.opts.pace == super::Pace::Step {
            self.n.say(
                "\n--step: stdin is not a terminal, so the demo runs through without waiting.",
            );
        }
        self.n.say("\nEverything lives in private namespaces and a private /run: the machine is left as it was.");
    }

    /// Reads a node's routing state.
    fn state(&self, node: usize) -> Result<listing::NodeState, StepError> {
        self.nodes[node]
            .ns
            .run(listing::NodeState::read)
            .because("cannot enter the node's namespace")?
            .because("cannot read the node's routes")
    }

    /// Waits until node `node`'s state satisfies `ready` (trestled follows etcd's watch), up to [`SETTLE`].
    fn wait_state(
        &self,
        node: usize,
        what: &str,
        ready: impl Fn(&listing::NodeState) -> bool,
    ) -> Result<(listing::NodeState, Duration), StepError> {
        let start = Instant::now();
        loop {
            let state = self.state(node)?;
            if ready(&state) {
                return Ok((state, start.elapsed()));
            }
            machine::interrupted()?;
            if start.elapsed() > SETTLE {
                return Err(expected(
                    format!("{} to hold {what}", self.nodes[node].name),
                    format!("{}\n{}", state.routes_text(), self.nodes[node].daemon_log()),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An ICMP echo from pod `from` to pod `to` (see [`ping_until`]).
    fn ping(&self, from: usize, to: usize) -> Result<Duration, StepError> {
        ping_until(
            &self.pods[from].ns()?,
            self.pods[to].addr(),
            "no answer to ICMP echo",
        )
    }

    /// A TCP exchange from pod `from` to a server in pod `to` on `port`: the answer, and the client's address as
    /// the server saw it.
    fn tcp(&self, from: usize, to: usize, port: u16) -> Result<(String, SocketAddr), StepError> {
        let client = self.pods[from].ns()?;
        let server = self.pods[to].ns()?;
        let addr = SocketAddr::from((self.pods[to].addr(), port));
        let listener = server
            .run(|| trestle_operator::probe::listen(addr))
            .because("cannot enter the server pod's namespace")?
            .because("cannot listen in the server pod")?;
        let msg = format!(
            "hello from the pod on {}",
            self.nodes[self.pods[from].node].name
        );
        let (peer, answer) = std::thread::scope(|s| {
            let served =
                s.spawn(|| trestle_operator::probe::serve_once(&listener, Duration::from_secs(5)));
            let answer = client
                .run(|| trestle_operator::probe::exchange(addr, &msg, Duration::from_secs(5)));
            (served.join(), answer)
        });
        let answer = answer
            .because("cannot enter the client pod's namespace")?
            .because("TCP exchange")?;
        let peer = peer
            .map_err(|_| StepError::Panicked("the TCP server thread"))?
            .because("TCP server")?;
        Ok((answer, peer))
    }

    /// Pings `from` -> `to` and says so.
    fn show_ping(&self, from: usize, to: usize) -> Result<(), StepError> {
        let rtt = self.ping(from, to)?;
        let (a, b) = (&self.pods[from], &self.pods[to]);
        self.n.ok(&format!(
            "ICMP echo pod on {} ({}) -> pod on {} ({}): reply in {:.3} ms",
            self.nodes[a.node].name,
            a.addr(),
            self.nodes[b.node].name,
            b.addr(),
            rtt.as_secs_f64() * 1e3
        ));
        Ok(())
    }

    /// A TCP exchange `from` -> `to`, said, and checked to keep the client pod's own address.
    fn show_tcp(&self, from: usize, to: usize, port: u16) -> Result<(), StepError> {
        let (answer, peer) = self.tcp(from, to, port)?;
        let (a, b) = (&self.pods[from], &self.pods[to]);
        self.n.ok(&format!(
            "TCP pod on {} -> {}:{port} (pod on {}): answered {:?}; the server saw the client as {peer}",
            self.nodes[a.node].name,
            b.addr(),
            self.nodes[b.node].name,
            answer.trim_end()
        ));
        if peer.ip() != std::net::IpAddr::V4(a.addr()) {
            return Err(expected(
                format!(
                    "the server to see the client pod's own address {}",
                    a.addr()
                ),
                peer.to_string(),
            ));
        }
        Ok(())
    }

    /// DELs pod `i` if attached: the plugin call a runtime makes when a pod stops.
    fn del_pod(&mut self, i: usize) -> Result<(), StepError> {
        if !self.pods[i].attached {
            return Ok(());
        }
        let node = &self.nodes[self.pods[i].node];
        let inv = self.pods[i].invocation(&self.opts.bin_dir, "DEL");
        let out = inv
            .run(node.conf().as_bytes(), Some(&node.ns))
            .because("cannot run the plugin")?;
        if !out.success {
            return Err(StepError::Plugin {
                command: "DEL".into(),
                stdout: out.stdout,
                stderr: out.stderr.trim().to_owned(),
            });
        }
        self.pods[i].attached = false;
        Ok(())
    }

    /// Undoes everything, as far as it goes: DELs the pods (while trestled still runs to release their
    /// addresses), stops the sandboxes, each trestled, then etcd. What could not be undone.
    fn clean_up(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        for i in 0..self.pods.len() {
            if let Err(e) = self.del_pod(i) {
                left.push(format!(
                    "pod {} ({})",
                    self.pods[i].id,
                    cni_proto::error_chain(&e)
                ));
            }
            if let Some(pause) = self.pods[i].pause.take() {
                if let Err(e) = pause.stop() {
                    left.push(format!("the sandbox of pod {} ({e})", self.pods[i].id));
                }
            }
        }
        for node in &mut self.nodes {
            if let Some(mut d) = node.daemon.take() {
                left.extend(d.stop(Duration::from_secs(5)).err());
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            left.extend(etcd.stop(Duration::from_secs(5)).err());
        }
        left
    }
}

/// An ICMP echo from namespace `ns` to `dst`, again until it is answered (the first packets wait for ARP, and for
/// routes still being programmed), up to [`SETTLE`]; the round trip, or `what` with the last error.
fn ping_until(
    ns: &NetNs,
    dst: std::net::Ipv4Addr,
    what: &'static str,
) -> Result<Duration, StepError> {
    let start = Instant::now();
    let mut seq: u16 = 0;
    loop {
        seq = seq.wrapping_add(1);
        let rtt = ns
            .run(|| trestle_operator::probe::ping(dst, seq, PROBE))
            .because("cannot enter a namespace to ping from")?;
        match rtt {
            Ok(rtt) => return Ok(rtt),
            Err(source) if start.elapsed() > SETTLE => return Err(StepError::Io { what, source }),
            Err(_) => {
                machine::interrupted()?;
                // An unreachable destination fails at once: no busy loop.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
