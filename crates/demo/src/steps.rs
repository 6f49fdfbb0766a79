//! The walkthrough's steps.

mod container;
mod firewall;
mod wiring;

use firewall::{forward_listing, masquerade_entries, masquerade_listing};

use super::containers::{Container, Engine};
use super::isolation::{reservations, Isolation, BRIDGE, RUN_DIR, STATE_DIR};
use super::narrate::Interrupted;
use super::picture::Charset;
use super::{Narrator, Options, CLASSIC_CONFIG};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use trestle_netlink::Netlink;
use trestle_netns::NetNs;
use trestle_operator::runtime::Invocation;
use trestle_operator::sandbox::{run_in_pod, Pause};
use trestle_operator::{probe, show};

/// What went wrong in a step of the demo (the step's number is in [`super::Error::Step`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An expectation of the demo did not hold.
    #[error("expected {wanted}, got:\n{got}")]
    Expectation {
        /// What the step expected.
        wanted: String,
        /// What it found.
        got: String,
    },
    /// The plugin answered with an error.
    #[error("plugin {command} failed: {stdout} {stderr}")]
    Plugin {
        /// `ADD` or `DEL`.
        command: String,
        /// The plugin's stdout (its CNI error).
        stdout: String,
        /// The plugin's stderr, trimmed.
        stderr: String,
    },
    /// The classic bridge is missing from the host namespace.
    #[error("no bridge {BRIDGE} in the host namespace")]
    NoBridge,
    /// A thread of the step panicked.
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// A file, process or socket operation failed.
    #[error("{what}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A namespace could not be opened or entered.
    #[error("{what}")]
    Netns {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_netns::Error,
    },
    /// A netlink request failed.
    #[error("{what}")]
    Netlink {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_netlink::Error,
    },
    /// The container runtime failed.
    #[error("{what}")]
    Runtime {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: super::containers::Error,
    },
    /// The demo's image could not be made.
    #[error("cannot make the demo's image")]
    Image(#[source] super::image::Error),
    /// The wiring could not be read for the picture.
    #[error("{what}")]
    Wiring {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: super::picture::Error,
    },
    /// The masquerade state could not be read.
    #[error("{what}")]
    Firewall {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_firewall::Error,
    },
}

/// A cause of a step's failure, turned into an [`Error`] that says what failed.
trait Cause {
    fn because(self, what: &'static str) -> Error;
}

impl Cause for std::io::Error {
    fn because(self, what: &'static str) -> Error {
        Error::Io { what, source: self }
    }
}

impl Cause for trestle_netns::Error {
    fn because(self, what: &'static str) -> Error {
        Error::Netns { what, source: self }
    }
}

impl Cause for trestle_netlink::Error {
    fn because(self, what: &'static str) -> Error {
        Error::Netlink { what, source: self }
    }
}

impl Cause for super::containers::Error {
    fn because(self, what: &'static str) -> Error {
        Error::Runtime { what, source: self }
    }
}

impl Cause for super::picture::Error {
    fn because(self, what: &'static str) -> Error {
        Error::Wiring { what, source: self }
    }
}

impl Cause for trestle_firewall::Error {
    fn because(self, what: &'static str) -> Error {
        Error::Firewall { what, source: self }
    }
}

/// `map_err` for a cause: [`Error`] saying `what` failed.
fn failed<E: Cause>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| e.because(what)
}

const POD_A: &str = "1234567890";
const POD_B: &str = "abcdef0123";
const TIMEOUT: Duration = Duration::from_secs(3);

/// What holds a pod's network namespace.
enum Holder {
    /// A sleeping process the demo started.
    Process(Pause),
    /// A runtime's pause container, its namespace linked at `link` as the classic walkthrough does.
    Container {
        /// The container's first process.
        pid: u32,
        /// `/var/run/netns/pause1`.
        link: PathBuf,
    },
}

/// One pod of the demo: its sandbox and whether it is still attached.
struct Pod {
    id: String,
    holder: Holder,
    attached: bool,
}

impl Pod {
    fn process(id: &str, pause: Pause) -> Pod {
        Pod {
            id: id.to_owned(),
            holder: Holder::Process(pause),
            attached: false,
        }
    }

    /// `CNI_NETNS`.
    fn netns_path(&self) -> PathBuf {
        match &self.holder {
            Holder::Process(p) => p.netns_path(),
            Holder::Container { link, .. } => link.clone(),
        }
    }
}

/// The demo's state between steps.
pub struct Demo<'a> {
    opts: &'a Options,
    iso: &'a Isolation,
    n: &'a mut Narrator,
    conf_path: PathBuf,
    pods: Vec<Pod>,
    engine: Option<Engine>,
    /// The runtime's pause container and the one that joins it.
    containers: Vec<Container>,
    /// `/var/run/netns/pause1`, once the demo has made it.
    netns_link: Option<PathBuf>,
    charset: Charset,
    /// What a failed or interrupted run could not remove.
    left_behind: Vec<String>,
}

type StepResult<T = ()> = Result<T, super::Error>;

impl<'a> Demo<'a> {
    /// Prepares the demo.
    pub fn new(
        opts: &'a Options,
        iso: &'a Isolation,
        n: &'a mut Narrator,
        engine: Option<Engine>,
    ) -> StepResult<Demo<'a>> {
        Ok(Demo {
            opts,
            iso,
            n,
            conf_path: Path::new(RUN_DIR).join("net.d/mybridge.conf"),
            pods: Vec::new(),
            engine,
            containers: Vec::new(),
            netns_link: None,
            charset: opts.charset,
            left_behind: Vec::new(),
        })
    }

    /// Starts the next step (after Enter, with `--step`).
    fn begin(&mut self, title: &str, why: &str) -> StepResult {
        self.n
            .step(title, why)
            .map_err(|Interrupted| super::Error::Interrupted { left: Vec::new() })
    }

    /// The demo's error for `source` in the current step.
    fn fail(&self, source: Error) -> super::Error {
        super::Error::Step {
            step: self.n.current(),
            source,
        }
    }

    /// `map_err` for a cause in the current step: the step failed because `what` failed.
    fn failed<E: Cause>(&self, what: &'static str) -> impl FnOnce(E) -> super::Error + '_ {
        move |e| self.fail(e.because(what))
    }

    /// Runs every step; on failure (or Ctrl-C) still DELs what was added and removes the containers and image.
    pub fn run_all(&mut self) -> StepResult {
        self.intro();
        let r = self.steps();
        if r.is_err() {
            let mut left = Vec::new();
            for i in 0..self.pods.len() {
                if let Err(e) = self.del_pod(i, false) {
                    left.push(format!(
                        "pod {} ({})",
                        self.pods[i].id,
                        cni_proto::error_chain(&e)
                    ));
                }
            }
            left.extend(self.remove_containers());
            if !left.is_empty() {
                self.n
                    .say(&format!("\nCould not clean up: {}", left.join("; ")));
            }
            self.left_behind = left;
        }
        r
    }

    /// What a failed or interrupted run could not remove (empty after a clean run).
    pub fn left_behind(&self) -> &[String] {
        &self.left_behind
    }

    fn steps(&mut self) -> StepResult {
        self.start_sandbox()?;
        self.write_config()?;
        self.add_pod(0)?;
        self.inspect_pod(0)?;
        if self.engine.is_some() {
            self.container_steps()?;
        } else {
            self.second_container()?;
        }
        self.second_pod_and_traffic()?;
        self.draw_wiring()?;
        self.delete_all()?;
        self.n.say(
            "\nThe walkthrough is complete: the pods were wired, talked, and left nothing behind.",
        );
        Ok(())
    }

    fn intro(&self) {
        self.n
            .say("trestle demo: how a kubelet's runtime wires a pod's network with CNI\n");
        self.n.say("A kubelet never configures a pod's network itself. Its CRI runtime (containerd, CRI-O) first");
        self.n.say("starts the pod's \"pause\" sandbox, which holds a fresh network namespace, then runs the CNI");
        self.n.say("plugin named by the network config's \"type\", with CNI_* variables in the environment and the");
        self.n.say(
            "config on stdin. Every other container of the pod joins the sandbox's namespace.",
        );
        if let Some(e) = &self.engine {
            self.n.say(&format!(
                "\nAfter the first pod, {} starts a real pause container, and the same plugin call wires it.",
                e.kind().name()
            ));
        }
        if self.n.waits() {
            self.n
                .say("\n--step: after each step the demo waits for Enter (Ctrl-C stops it and cleans up).");
        } else if self.opts.pace == super::Pace::Step {
            self.n.say(
                "\n--step: stdin is not a terminal, so the demo runs through without waiting.",
            );
        }
        if self.iso.isolated() {
            self.n.say("\nThis run happens inside a private \"host\" network namespace and a private mount namespace,");
            self.n.say("so the machine is left exactly as it was (use --machine-netns for the classic, on-host run).");
        } else {
            self.n.say("\nThis run uses the machine's own network namespace, as the classic walkthrough does; the");
            self.n
                .say("bridge, forwarding setting and state directory are put back afterwards.");
        }
    }

    fn start_sandbox(&mut self) -> StepResult {
        self.begin(
            "start the pod sandbox",
            "The runtime starts the pause container: a process that only sleeps, in a new network namespace.\n\
             Kubernetes keeps the pod's network alive exactly as long as this process (classic: `ip netns add myns`).",
        )?;
        let pause = Pause::start_detached(&self.opts.exe, self.iso.host.as_ref())
            .map_err(self.failed("cannot start the pause sandbox"))?;
        self.n
            .cmd(&format!("trestlectl pause &   # pid {}", pause.pid()));
        let ns = pause
            .netns()
            .map_err(self.failed("cannot open the sandbox's network namespace"))?;
        let links = ns
            .run(|| Netlink::open().and_then(|mut nl| nl.links()))
            .map_err(self.failed("cannot enter the sandbox's network namespace"))?
            .map_err(self.failed("cannot list the sandbox's links"))?;
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        self.n.ok(&format!(
            "sandbox namespace {} holds only: {}",
            pause.netns_path().display(),
            names.join(", ")
        ));
        self.pods.push(Pod::process(POD_A, pause));
        Ok(())
    }

    fn write_config(&mut self) -> StepResult {
        self.begin(
            "write the network config",
            "The runtime reads its network from /etc/cni/net.d. This is the classic walkthrough's config, verbatim\n\
             but for the plugin types: `trestle` instead of `bridge`, `trestle-ipam` instead of `host-local`.",
        )?;
        let dir = self
            .conf_path
            .parent()
            .expect("config path has a directory");
        std::fs::create_dir_all(dir).map_err(self.failed("cannot create the config directory"))?;
        std::fs::write(&self.conf_path, CLASSIC_CONFIG)
            .map_err(self.failed("cannot write the network config"))?;
        self.n.cmd(&format!("cat {}", self.conf_path.display()));
        self.n.out(CLASSIC_CONFIG);
        Ok(())
    }

    fn invocation(&self, command: &str, pod: usize) -> Invocation {
        let p = &self.pods[pod];
        let mut inv = Invocation::new(
            &self.opts.bin_dir.join("trestle"),
            command,
            &p.id,
            &p.netns_path().display().to_string(),
            "eth0",
        );
        // A Ctrl-C then waits for the call, and the demo's clean-up DELs what it added.
        inv.own_process_group = true;
        inv
    }

    fn call(&mut self, inv: &Invocation) -> StepResult<String> {
        let env: Vec<String> = inv.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.n.cmd(&format!(
            "{} {} < {}",
            env.join(" "),
            inv.plugin.display(),
            self.conf_path.display()
        ));
        let out = inv
            .run(CLASSIC_CONFIG.as_bytes(), self.iso.host.as_ref())
            .map_err(self.failed("cannot run the plugin"))?;
        if !out.success {
            return Err(self.fail(Error::Plugin {
                command: inv.command.clone(),
                stdout: out.stdout,
                stderr: out.stderr.trim().to_owned(),
            }));
        }
        self.n.say(&format!(
            "  (the plugin answered in {:.1} ms)",
            out.elapsed.as_secs_f64() * 1e3
        ));
        Ok(out.stdout)
    }

    fn add_pod(&mut self, pod: usize) -> StepResult {
        self.begin(
            "call the plugin exactly as the runtime does",
            "CNI_COMMAND says what to do, CNI_CONTAINERID and CNI_IFNAME name the attachment, CNI_NETNS is the\n\
             sandbox's namespace, CNI_PATH is where plugins live (trestle runs trestle-ipam from there for an\n\
             address). The result JSON on stdout is in the config's cniVersion (0.2.0: the `ip4` shape).",
        )?;
        let inv = self.invocation("ADD", pod);
        // Marked before the call: a runtime DELs after an ADD that failed or was cut short.
        self.pods[pod].attached = true;
        let stdout = self.call(&inv)?;
        let pretty = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(stdout);
        self.n.out(&pretty);
        Ok(())
    }

    fn pod_ns(&self, pod: usize) -> StepResult<NetNs> {
        NetNs::open(self.pods[pod].netns_path())
            .map_err(self.failed("cannot open the pod's network namespace"))
    }

    /// The address of the demo's pod number `pod` (from 0): trestle-ipam hands them out in order from 10.15.20.2.
    fn address_of(pod: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 15, 20, 2 + pod as u8)
    }

    fn inspect_pod(&mut self, pod: usize) -> StepResult {
        self.begin(
            "look inside the pod",
            "What `ip netns exec myns ip addr show eth0` and `route -n` show, read here through netlink.",
        )?;
        let ns = self.pod_ns(pod)?;
        let (addr, routes) = ns
            .run(|| -> Result<(String, String), trestle_netlink::Error> {
                let mut nl = Netlink::open()?;
                Ok((
                    show::ip_addr(&mut nl, Some("eth0"))?,
                    show::route_n(&mut nl)?,
                ))
            })
            .map_err(self.failed("cannot enter the pod's network namespace"))?
            .map_err(self.failed("cannot read the pod's addresses and routes"))?;
        self.n.cmd("ip netns exec myns ip addr show eth0");
        self.n.out(&addr);
        self.n.cmd("ip netns exec myns route -n");
        self.n.out(&routes);
        expect(&addr, "inet 10.15.20.2/24 scope global eth0").map_err(|e| self.fail(e))?;
        self.n.ok("eth0 has 10.15.20.2/24");
        for want in [
            (
                "0.0.0.0",
                "10.15.20.1",
                "0.0.0.0",
                "UG",
                "default route via the gateway",
            ),
            (
                "1.1.1.1",
                "10.15.20.1",
                "255.255.255.255",
                "UGH",
                "1.1.1.1 via the gateway",
            ),
            (
                "10.15.20.0",
                "0.0.0.0",
                "255.255.255.0",
                "U",
                "the pod subnet is connected",
            ),
        ] {
            expect_route(&routes, want.0, want.1, want.2, want.3).map_err(|e| self.fail(e))?;
            self.n.ok(want.4);
        }
        self.show_host_side()
    }

    fn show_host_side(&mut self) -> StepResult {
        self.n.say("\nOn the host side, the bridge carries the gateway and the pod's veth is one of its ports:");
        let (text, masq, forward) = self
            .iso
            .in_host(|| -> Result<(String, String, firewall::Forward), Error> {
                let mut nl = Netlink::open().map_err(failed("cannot open netlink in the host"))?;
                let br = nl
                    .link_by_name(BRIDGE)
                    .map_err(failed("cannot look up the bridge"))?
                    .ok_or(Error::NoBridge)?;
                let mut text = show::ip_addr(&mut nl, Some(BRIDGE))
                    .map_err(failed("cannot read the bridge's addresses"))?;
                for port in nl
                    .links()
                    .map_err(failed("cannot list the host's links"))?
                    .iter()
                    .filter(|l| l.master == Some(br.index))
                {
                    text.push_str(&format!("port {} (master {BRIDGE})\n", port.name));
                }
                Ok((text, masquerade_listing()?, forward_listing()?))
            })
            .map_err(|e| self.fail(e))?;
        self.n.cmd(&format!("ip addr show {BRIDGE}; bridge link"));
        self.n.out(&text);
        self.n
            .say("Masquerade (ipMasq) covers the pod's address for traffic leaving 10.15.20.0/24:");
        self.n
            .cmd("nft list ruleset   # table inet trestle-<network id>, read here through netlink");
        self.n.out(&masq);
        if !masq.contains("10.15.20.0/24") {
            return Err(self.fail(Error::Expectation {
                wanted: "masquerade to cover the pod's subnet 10.15.20.0/24".into(),
                got: masq,
            }));
        }
        self.n
            .ok("masquerade covers 10.15.20.2 (its subnet 10.15.20.0/24)");
        self.forward_rules(forward)
    }

    /// The forward filter: on a host running Docker its `FORWARD` policy drops, and trestle's rules let the
    /// network through (forwardAccept); elsewhere nothing is needed.
    fn forward_rules(&mut self, forward: firewall::Forward) -> StepResult {
        self.n.say(&forward.intro);
        self.n
            .cmd("iptables -S TRESTLE-FORWARD   # read here through netlink (and legacy tables in-process)");
        self.n.out(&forward.listing);
        if !forward.covers("10.15.20.0/24") {
            return Err(self.fail(Error::Expectation {
                wanted: "forward rules for 10.15.20.0/24 in every filter table that drops".into(),
                got: forward.listing,
            }));
        }
        self.n.ok(&forward.verdict);
        Ok(())
    }

    fn second_container(&mut self) -> StepResult {
        self.begin(
            "a second container joins the pod",
            "Every other container of the pod is started in the pause sandbox's network namespace (`docker run\n\
             --net=container:pause`), so it sees the very same eth0. Here a new process joins the namespace.",
        )?;
        let ns = self.pod_ns(0)?;
        let seen = run_in_pod(&self.opts.exe, &ns, &["show-netns", "eth0"])
            .map_err(self.failed("cannot run a second container in the pod"))?;
        self.n.cmd(&format!(
            "nsenter --net={} trestlectl show-netns eth0",
            self.pods[0].netns_path().display()
        ));
        self.n.out(&seen);
        let own = ns
            .run(|| Netlink::open().and_then(|mut nl| show::ip_addr(&mut nl, Some("eth0"))))
            .map_err(self.failed("cannot enter the pod's network namespace"))?
            .map_err(self.failed("cannot read the pod's eth0"))?;
        if !seen.contains(own.trim()) {
            return Err(self.fail(Error::Expectation {
                wanted: format!(
                    "the second container to see the pause sandbox's eth0:\n{}",
                    own.trim()
                ),
                got: seen,
            }));
        }
        self.n
            .ok("the second container sees the pause sandbox's eth0 (same index, MAC and address)");
        Ok(())
    }

    fn second_pod_and_traffic(&mut self) -> StepResult {
        self.begin(
            "a second pod, and real packets",
            "Another sandbox and another ADD on the same network; trestle-ipam hands out the next address.\n\
             Then ICMP echo and a TCP exchange, done in-process, from pod to pod and from the host to a pod.",
        )?;
        let want = format!("{}/24", Self::address_of(self.pods.len()));
        let pause = Pause::start_detached(&self.opts.exe, self.iso.host.as_ref())
            .map_err(self.failed("cannot start the second pod's pause sandbox"))?;
        self.pods.push(Pod::process(POD_B, pause));
        let b = self.pods.len() - 1;
        let inv = self.invocation("ADD", b);
        self.pods[b].attached = true;
        let stdout = self.call(&inv)?;
        self.n.out(&stdout);
        if !stdout.contains(&want) {
            return Err(self.fail(Error::Expectation {
                wanted: format!("the second pod to get {want}"),
                got: stdout,
            }));
        }
        self.n.ok(&format!("pod B got {want}"));
        self.traffic(b)
    }

    fn traffic(&mut self, b_index: usize) -> StepResult {
        let a = self.pod_ns(0)?;
        let b = self.pod_ns(b_index)?;
        let pod_a = Self::address_of(0);
        let pod_b = Self::address_of(b_index);
        let rtt = a
            .run(|| probe::ping(pod_b, 1, TIMEOUT))
            .map_err(self.failed("cannot enter pod A's network namespace"))?;
        let rtt = rtt.map_err(self.failed("ICMP echo pod A -> pod B"))?;
        self.n.ok(&format!(
            "ICMP echo pod A ({pod_a}) -> pod B ({pod_b}): reply in {:.3} ms",
            rtt.as_secs_f64() * 1e3
        ));
        let rtt = self.iso.in_host(|| probe::ping(pod_a, 2, TIMEOUT));
        let rtt = rtt.map_err(self.failed("ICMP echo host -> pod A"))?;
        self.n.ok(&format!(
            "ICMP echo host (10.15.20.1) -> pod A (10.15.20.2): reply in {:.3} ms",
            rtt.as_secs_f64() * 1e3
        ));
        let addr = SocketAddr::from((pod_b, 8080));
        let listener = b
            .run(|| probe::listen(addr))
            .map_err(self.failed("cannot enter pod B's network namespace"))?
            .map_err(self.failed("cannot listen in pod B"))?;
        let (peer, answer) = std::thread::scope(|s| {
            let server = s.spawn(|| probe::serve_once(&listener, TIMEOUT));
            let answer = a.run(|| probe::exchange(addr, "hello from pod A", TIMEOUT));
            (server.join(), answer)
        });
        let answer = answer
            .map_err(self.failed("cannot enter pod A's network namespace"))?
            .map_err(self.failed("TCP pod A -> pod B"))?;
        let peer = peer
            .map_err(|_| self.fail(Error::Panicked("the TCP server thread")))?
            .map_err(self.failed("TCP server in pod B"))?;
        self.n.ok(&format!(
            "TCP pod A -> {addr}: answered {answer:?}, the server saw the client as {peer}"
        ));
        if peer.ip() != std::net::IpAddr::V4(pod_a) {
            return Err(self.fail(Error::Expectation {
                wanted: format!(
                    "pod-to-pod traffic to keep the pod's address {pod_a} (it was translated)"
                ),
                got: peer.to_string(),
            }));
        }
        self.n.ok("pod-to-pod traffic keeps its source address (masquerade applies only outside the subnet)");
        Ok(())
    }

    fn del_pod(&mut self, pod: usize, narrate: bool) -> StepResult {
        if !self.pods[pod].attached {
            return Ok(());
        }
        let inv = self.invocation("DEL", pod);
        if narrate {
            self.call(&inv)?;
        } else {
            let out = inv
                .run(CLASSIC_CONFIG.as_bytes(), self.iso.host.as_ref())
                .map_err(self.failed("cannot run the plugin"))?;
            if !out.success {
                return Err(self.fail(Error::Plugin {
                    command: inv.command.clone(),
                    stdout: out.stdout,
                    stderr: out.stderr.trim().to_owned(),
                }));
            }
        }
        self.pods[pod].attached = false;
        Ok(())
    }

    fn delete_all(&mut self) -> StepResult {
        self.begin(
            "delete the pods",
            "When a pod stops, the runtime calls DEL with the same variables and config, then stops the sandbox.\n\
             DEL cuts the pod off (its eth0 goes down and is renamed out of the way, the host end leaves the\n\
             bridge), releases its address, and removes the network's masquerade with its last pod. The kernel's\n\
             slow destruction of the veth pair happens in a detached process after DEL has answered.",
        )?;
        for pod in 0..self.pods.len() {
            self.del_pod(pod, true)?;
        }
        let step = self.n.current();
        let mut killed = Vec::new();
        for pod in self.pods.drain(..) {
            if let Holder::Process(pause) = pod.holder {
                killed.push(pause.pid().to_string());
                pause.stop().map_err(|e| super::Error::Step {
                    step,
                    source: e.because("cannot stop a pause sandbox"),
                })?;
            }
        }
        self.n.cmd(&format!(
            "kill {}   # the pause processes",
            killed.join(" ")
        ));
        if self.engine.is_some() {
            self.stop_containers()?;
        }
        self.verify_clean()
    }

    fn verify_clean(&mut self) -> StepResult {
        let state = self
            .iso
            .in_host(|| -> Result<(usize, String, firewall::Forward), Error> {
                let mut nl = Netlink::open().map_err(failed("cannot open netlink in the host"))?;
                let br = nl
                    .link_by_name(BRIDGE)
                    .map_err(failed("cannot look up the bridge"))?
                    .ok_or(Error::NoBridge)?;
                let ports = nl
                    .links()
                    .map_err(failed("cannot list the host's links"))?
                    .iter()
                    .filter(|l| l.master == Some(br.index))
                    .count();
                Ok((ports, masquerade_listing()?, forward_listing()?))
            })
            .map_err(|e| self.fail(e))?;
        if state.0 != 0 {
            return Err(self.fail(Error::Expectation {
                wanted: format!("no port left on {BRIDGE}"),
                got: format!("{} ports", state.0),
            }));
        }
        self.n.ok(&format!("{BRIDGE} has no ports left"));
        let veths = self.iso.in_host(wait_no_veth);
        if !veths.is_empty() {
            return Err(self.fail(Error::Expectation {
                wanted: "no veth pair left behind".into(),
                got: veths.join(", "),
            }));
        }
        self.n.ok("every veth pair is destroyed");
        if state.1.contains("10.15.20.") {
            return Err(self.fail(Error::Expectation {
                wanted: "no masquerade left for 10.15.20.0/24".into(),
                got: state.1,
            }));
        }
        self.n
            .ok("no masquerade rule is left (the network's table went with its last pod)");
        if !state.2.subnets.is_empty() {
            return Err(self.fail(Error::Expectation {
                wanted: "no forward rule left".into(),
                got: state.2.listing,
            }));
        }
        self.n
            .ok("no forward rule is left (the host's filter table is as it was found)");
        let left = reservations(Path::new(STATE_DIR)).unwrap_or_default();
        if !left.is_empty() {
            return Err(self.fail(Error::Expectation {
                wanted: format!("no address reserved in {STATE_DIR}"),
                got: left.join(", "),
            }));
        }
        self.n.ok(&format!("no address is reserved in {STATE_DIR}"));
        if self.iso.isolated() {
            self.n
                .ok("the private host namespace and its bridge disappear when the demo exits");
        } else {
            self.n.ok(&format!(
                "{BRIDGE} is removed and ip_forward restored as the demo exits"
            ));
        }
        Ok(())
    }
}

/// Waits up to 5 s for the detached destruction of cut-off pairs; returns the veths still there.
fn wait_no_veth() -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = Netlink::open()
            .and_then(|mut nl| nl.links())
            .map(|l| {
                l.into_iter()
                    .filter(|l| l.kind.as_deref() == Some("veth"))
                    .map(|l| l.name)
                    .collect()
            })
            .unwrap_or_default();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `text` holds `needle`.
fn expect(text: &str, needle: &str) -> Result<(), Error> {
    if text.contains(needle) {
        Ok(())
    } else {
        Err(Error::Expectation {
            wanted: format!("{needle:?}"),
            got: text.to_owned(),
        })
    }
}

/// Whether `route -n` text `table` holds the route `dst` via `gw` (netmask `mask`, flags `flags`) on eth0.
fn expect_route(table: &str, dst: &str, gw: &str, mask: &str, flags: &str) -> Result<(), Error> {
    let found = table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[0] == dst && f[1] == gw && f[2] == mask && f[3] == flags && f[7] == "eth0"
    });
    if found {
        Ok(())
    } else {
        Err(Error::Expectation {
            wanted: format!("route {dst} via {gw} mask {mask} flags {flags} on eth0"),
            got: table.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_name_what_was_wanted_and_what_was_found() {
        assert!(expect("inet 10.0.0.2/24", "10.0.0.2").is_ok());
        let e = super::super::Error::Step {
            step: 4,
            source: expect("inet 10.0.0.3/24", "10.0.0.2").unwrap_err(),
        };
        assert_eq!(
            cni_proto::error_chain(&e),
            "step 4 failed: expected \"10.0.0.2\", got:\ninet 10.0.0.3/24"
        );
        let table = "0.0.0.0 10.15.20.1 0.0.0.0 UG 0 0 0 eth0\n";
        assert!(expect_route(table, "0.0.0.0", "10.15.20.1", "0.0.0.0", "UG").is_ok());
        assert!(matches!(
            expect_route(table, "1.1.1.1", "10.15.20.1", "255.255.255.255", "UGH"),
            Err(Error::Expectation { .. })
        ));
    }

    #[test]
    fn a_cause_is_the_source_not_part_of_the_message() {
        let e = failed::<std::io::Error>("cannot run the plugin")(std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "cannot run the plugin");
        assert_eq!(cni_proto::error_chain(&e), "cannot run the plugin: boom");
    }
}
