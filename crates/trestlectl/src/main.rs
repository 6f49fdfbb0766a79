//! `trestlectl`: the operator's tool for trestle.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "trestlectl", version, about = "trestle operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The bench's modes other than the CNI bench: the CNI bench's own options make no sense with them.
const OTHER_MODE: [&str; 5] = ["ipam_service", "cluster", "routes", "datapath", "fanout"];
/// ... and the options `--smoke` sets itself, which it would otherwise override without a word.
const SMOKE_OR_OTHER_MODE: [&str; 6] = [
    "smoke",
    "ipam_service",
    "cluster",
    "routes",
    "datapath",
    "fanout",
];

#[derive(Subcommand)]
enum Cmd {
    /// Guided walkthrough: how a kubelet's runtime wires a pod with CNI, with the real trestle binaries.
    Demo {
        /// Run in the machine's own network namespace, as the classic walkthrough does (default: a private one).
        #[arg(long)]
        machine_netns: bool,
        /// Directory holding `trestle` and `trestle-ipam`, and `trestled` for --cluster (default: beside trestlectl).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Never colour the output, and draw the wiring in plain ASCII.
        #[arg(long)]
        no_color: bool,
        /// Wait for Enter after each step (when stdin is a terminal).
        #[arg(long)]
        step: bool,
        /// After the first pod, start a real pause container with this runtime and wire it the same way.
        #[arg(long, value_enum)]
        runtime: Option<trestlectl::demo::containers::Kind>,
        /// The demo across nodes: nodes as network namespaces on an underlay, one etcd member, trestled routing
        /// pods between them directly and over VXLAN (needs `trestled` beside trestlectl, and etcd: Debian's
        /// etcd-server).
        #[arg(long, conflicts_with_all = ["runtime", "machine_netns"])]
        cluster: bool,
    },
    /// Measure ADD/DEL latency, throughput, memory and density, side by side with the reference plugins.
    Bench {
        /// Pods per batch.
        #[arg(long, default_value_t = 200, conflicts_with_all = SMOKE_OR_OTHER_MODE)]
        pods: usize,
        /// Rounds per case; the sides alternate in each round.
        #[arg(long, default_value_t = 3, conflicts_with_all = SMOKE_OR_OTHER_MODE)]
        rounds: usize,
        /// Concurrency levels, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32", conflicts_with_all = SMOKE_OR_OTHER_MODE)]
        concurrency: Vec<usize>,
        /// Masquerade settings to run, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "true,false", conflicts_with_all = OTHER_MODE)]
        ip_masq: Vec<bool>,
        /// Pods of the density run on one /22 (0 skips it).
        #[arg(long, default_value_t = 1000, conflicts_with_all = SMOKE_OR_OTHER_MODE)]
        density: usize,
        /// Directory of the reference `bridge` and `host-local` (default: /usr/lib/cni or /opt/cni/bin).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Do not compare with the reference plugins.
        #[arg(long)]
        no_reference: bool,
        /// Directory holding `trestle`, `trestle-ipam` and `trestled` (default: beside trestlectl).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Output folder for results.md, results.json and latency.svg (ipam-service.md and .json with
        /// --ipam-service).
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// A few pods, one round, concurrency 1 and 4, small density, both IPAM modes: keeps the bench working in CI.
        /// The sizes it sets itself are refused beside it, rather than overridden.
        #[arg(long)]
        smoke: bool,
        /// trestle's IPAM: embedded (state in dataDir), daemon (a trestled the bench starts, side
        /// "trestle-daemon"), or both side by side [default: embedded; with --smoke: both].
        #[arg(long, value_enum, conflicts_with_all = OTHER_MODE)]
        ipam: Option<trestlectl::bench::IpamMode>,
        /// Instead of the CNI bench: trestled alone through its API (throughput of Allocate + Release pairs, call
        /// latency, memory holding --service-fill allocations, restart time).
        #[arg(long)]
        ipam_service: bool,
        /// --ipam-service: concurrent clients, each with its own connection.
        #[arg(
            long,
            default_value_t = 32,
            requires = "ipam_service", conflicts_with_all = ["smoke", "cluster", "routes", "datapath", "fanout"]
        )]
        service_clients: usize,
        /// --ipam-service: seconds of Allocate + Release pairs.
        #[arg(
            long,
            default_value_t = 5.0,
            requires = "ipam_service", conflicts_with_all = ["smoke", "cluster", "routes", "datapath", "fanout"]
        )]
        service_seconds: f64,
        /// --ipam-service: allocations held for the memory and restart measurements.
        #[arg(
            long,
            default_value_t = 10_000,
            requires = "ipam_service", conflicts_with_all = ["smoke", "cluster", "routes", "datapath", "fanout"]
        )]
        service_fill: usize,
        /// --ipam-service: restarts timed (the median is reported).
        #[arg(
            long,
            default_value_t = 5,
            requires = "ipam_service", conflicts_with_all = ["smoke", "cluster", "routes", "datapath", "fanout"]
        )]
        service_restarts: usize,
        /// Instead of the CNI bench: route convergence between nodes (as root, etcd from Debian's etcd-server):
        /// --routes-nodes namespaces on two segments with a trestled each claim blocks; milliseconds from each
        /// claim's etcd commit to the route in every other node's kernel.
        #[arg(long, conflicts_with_all = ["cluster", "ipam_service", "datapath"])]
        routes: bool,
        /// --routes: nodes.
        #[arg(
            long,
            default_value_t = 10,
            requires = "routes", conflicts_with_all = ["smoke", "ipam_service", "cluster", "datapath", "fanout"]
        )]
        routes_nodes: usize,
        /// --routes: addresses allocated per node (a block of the bench holds 8).
        #[arg(
            long,
            default_value_t = 16,
            requires = "routes", conflicts_with_all = ["smoke", "ipam_service", "cluster", "datapath", "fanout"]
        )]
        routes_allocations: usize,
        /// --routes: simulated nodes written into etcd first (a host record and a block each): what they cost
        /// every real node (first pass, kernel entries, memory).
        #[arg(
            long,
            default_value_t = 0,
            requires = "routes", conflicts_with_all = ["smoke", "ipam_service", "cluster", "datapath", "fanout"]
        )]
        routes_simulated: usize,
        /// Instead of the CNI bench: cluster IPAM on a real 3-member etcd the bench starts on loopback (etcd from
        /// Debian's etcd-server): --cluster-nodes simulated nodes x --cluster-pods pods, etcd requests per
        /// allocation, then ADD latency through the plugin with trestled in etcd mode. No root needed.
        #[arg(long, conflicts_with = "ipam_service")]
        cluster: bool,
        /// --cluster: simulated nodes.
        #[arg(
            long,
            default_value_t = 1000,
            requires = "cluster", conflicts_with_all = ["smoke", "ipam_service", "routes", "datapath", "fanout"]
        )]
        cluster_nodes: usize,
        /// --cluster: pods per simulated node.
        #[arg(
            long,
            default_value_t = 100,
            requires = "cluster", conflicts_with_all = ["smoke", "ipam_service", "routes", "datapath", "fanout"]
        )]
        cluster_pods: usize,
        /// --cluster: ADDs per concurrency level (1 and 32) through the plugin.
        #[arg(
            long,
            default_value_t = 200,
            requires = "cluster", conflicts_with_all = ["smoke", "ipam_service", "routes", "datapath", "fanout"]
        )]
        cluster_adds: usize,
        /// Instead of the CNI bench: pod to pod TCP throughput, CPU per Gbit and RTT (as root, etcd from Debian's
        /// etcd-server): same node, direct and VXLAN between three nodes with a trestled each, each beside the
        /// kernel's baseline built by hand in the same namespaces (plain veths and routes, a VXLAN device).
        #[arg(long, conflicts_with_all = ["cluster", "ipam_service", "fanout"])]
        datapath: bool,
        /// --datapath: seconds of each throughput run.
        #[arg(
            long,
            default_value_t = 5.0,
            requires = "datapath", conflicts_with_all = ["smoke", "ipam_service", "cluster", "routes", "fanout"]
        )]
        datapath_seconds: f64,
        /// --datapath: rounds (each runs trestle and the baseline once on every path; medians are reported).
        #[arg(
            long,
            default_value_t = 5,
            requires = "datapath", conflicts_with_all = ["smoke", "ipam_service", "cluster", "routes", "fanout"]
        )]
        datapath_rounds: usize,
        /// --datapath: timed round trips of each latency run.
        #[arg(
            long,
            default_value_t = 5000,
            requires = "datapath", conflicts_with_all = ["smoke", "ipam_service", "cluster", "routes", "fanout"]
        )]
        datapath_round_trips: usize,
        /// Instead of the CNI bench: the watch fan-out of cross-node routing on a real 3-member etcd the bench
        /// starts on loopback: --fanout-watchers followers (trestled's code, a connection each) read the cluster and
        /// watch it; milliseconds from each block claim's commit to every follower having it, with a member
        /// restarted midway. No root needed.
        #[arg(long, conflicts_with_all = ["cluster", "routes", "ipam_service", "datapath"])]
        fanout: bool,
        /// --fanout: followers (simulated nodes).
        #[arg(
            long,
            default_value_t = 1000,
            requires = "fanout", conflicts_with_all = ["smoke", "ipam_service", "cluster", "routes", "datapath"]
        )]
        fanout_watchers: usize,
        /// --fanout: block claims timed.
        #[arg(
            long,
            default_value_t = 50,
            requires = "fanout", conflicts_with_all = ["smoke", "ipam_service", "cluster", "routes", "datapath"]
        )]
        fanout_claims: usize,
        /// --fanout: milliseconds between claims.
        #[arg(
            long,
            default_value_t = 1000,
            requires = "fanout", conflicts_with_all = ["smoke", "ipam_service", "cluster", "routes", "datapath"]
        )]
        fanout_interval_ms: u64,
        /// --fanout: each follower's etcd request deadline, seconds (trestled's --etcd-timeout).
        #[arg(long, default_value_t = 1.0, requires = "fanout", conflicts_with_all = ["ipam_service", "cluster", "routes", "datapath"])]
        fanout_etcd_timeout: f64,
    },
    /// ADD a container's netns to a network, as a runtime does (libcni/cnitool behaviour); prints the result.
    Add(Attach),
    /// DEL a container's netns from a network, with the cached result as prevResult (CNI_ARGS and CAP_ARGS default
    /// to the ones the attachment was added with).
    Del(Attach),
    /// CHECK an attachment against its cached result.
    Check(Attach),
    /// GC a network: DEL every cached attachment not named valid, then the plugins' GC.
    Gc {
        /// The network name.
        network: String,
        /// A valid attachment, CONTAINER[/IFNAME] (default interface eth0); repeat for each.
        #[arg(long = "valid", value_name = "CONTAINER[/IFNAME]")]
        valid: Vec<String>,
        /// No attachment is valid: release every attachment of the network.
        #[arg(long, conflicts_with = "valid")]
        all: bool,
        #[command(flatten)]
        loc: LocArgs,
    },
    /// STATUS of a network's plugins: exits 0 when an ADD could be served.
    Status {
        /// The network name.
        network: String,
        #[command(flatten)]
        loc: LocArgs,
    },
    /// List cached attachments (written by trestlectl or by any libcni runtime).
    Ls {
        /// Only this network.
        network: Option<String>,
        /// Print the cache entries as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        loc: LocArgs,
    },
    /// Install the plugin binaries into a CNI bin dir and a conflist into a conf dir (atomic, idempotent).
    Install {
        /// The CNI bin dir.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The CNI conf dir.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The conflist's file name.
        #[arg(long, default_value = "10-trestle.conflist")]
        file: String,
        /// Install this conflist instead of the default one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Default config: network name.
        #[arg(long, default_value = "trestle")]
        name: String,
        /// Default config: bridge name.
        #[arg(long, default_value = "trestle0")]
        bridge: String,
        /// Default config: pod subnet.
        #[arg(long, default_value = "10.88.0.0/16")]
        subnet: String,
        /// Directory holding `trestle` and `trestle-ipam` (default: beside trestlectl).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Replace a config file that belongs to another plugin.
        #[arg(long)]
        force: bool,
        /// Also write trestled's systemd units (trestled.socket, trestled.service) into this directory, e.g.
        /// /etc/systemd/system.
        #[arg(long, value_name = "DIR")]
        systemd_units: Option<PathBuf>,
        /// Start trestled: `systemctl enable --now trestled.socket` under systemd (restarting a running trestled
        /// whose binary was replaced), else a detached process.
        #[arg(long)]
        start_daemon: bool,
        /// Without systemd: the file a detached trestled's output is appended to.
        #[arg(long, default_value = "/var/log/trestled.log")]
        daemon_log: PathBuf,
        /// Install only `trestle` and `trestle-ipam` into --bin-dir: no trestled, no conflist (a DaemonSet's init
        /// container; trestled, running from the image, writes the conflist once it is ready).
        #[arg(long, conflicts_with_all = [
            "conf_dir", "file", "config", "name", "bridge", "subnet", "force", "systemd_units", "start_daemon",
            "daemon_log",
        ])]
        plugins_only: bool,
    },
    /// IP address allocations of trestled or a host-local dataDir: show them, release one attachment's, GC a network.
    Ipam {
        #[command(subcommand)]
        command: trestlectl::ipam::Command,
    },
    /// The cluster's nodes as cross-node routing sees them (etcd mode): list them, remove one for good.
    Node {
        #[command(subcommand)]
        command: trestlectl::node::Command,
    },
    /// Sleep forever, like a pod's pause container (used by the demo and tests as a sandbox holder).
    #[command(hide = true)]
    Pause {
        /// First move into a new network namespace with lo up: a pod sandbox whose namespace is
        /// /proc/<pid>/ns/net (needs root).
        #[arg(long)]
        netns: bool,
        /// Not used: a name that shows in the process's command line, so that it can be found (`pgrep -f`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Build the container image (FROM scratch: the four static binaries in /usr/local/bin, command trestled) as a
    /// reproducible `docker save` archive; write it, load it into Docker, print its tags, ID and size.
    Image(trestlectl::image::Args),
    /// Print the interfaces of this process's network namespace, `ip addr` style.
    ShowNetns {
        /// Only this interface.
        name: Option<String>,
    },
}

/// Where configs, plugins and cached results are.
#[derive(clap::Args, Clone)]
struct LocArgs {
    /// Network config directory.
    #[arg(long, env = "NETCONFPATH", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// Plugin directories, `:`-separated.
    #[arg(long, env = "CNI_PATH", default_value = "/opt/cni/bin")]
    cni_path: String,
    /// Result cache directory.
    #[arg(long, default_value = cni_runtime::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
}

impl LocArgs {
    fn locations(&self) -> trestlectl::attach::Locations {
        trestlectl::attach::Locations {
            conf_dir: self.conf_dir.clone(),
            cni_path: trestlectl::attach::cni_path_dirs(&self.cni_path),
            cache_dir: self.cache_dir.clone(),
        }
    }
}

/// One attachment of a network.
#[derive(clap::Args, Clone)]
struct Attach {
    /// The network name (a config's `name` in the conf dir).
    network: String,
    /// The netns: a path, or a name under /var/run/netns.
    netns: String,
    /// Container ID (default: derived from the netns path, as cnitool does).
    #[arg(long)]
    container_id: Option<String>,
    /// Interface name inside the netns.
    #[arg(long, env = "CNI_IFNAME", default_value = "eth0")]
    ifname: String,
    /// CNI_ARGS, `K=V;K=V`.
    #[arg(long, env = "CNI_ARGS", default_value = "")]
    args: String,
    /// Capability arguments as a JSON object, e.g. '{"portMappings":[...]}'.
    #[arg(long, env = "CAP_ARGS")]
    cap_args: Option<String>,
    #[command(flatten)]
    loc: LocArgs,
}

/// The exit code of a command that printed its own output, its error (with its causes) on stderr.
fn exit<E: std::error::Error>(what: &str, r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trestlectl {what}: {}", cni_proto::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Demo {
            machine_netns,
            bin_dir,
            no_color,
            step,
            runtime,
            cluster,
        } => {
            if let Err(e) = trestlectl::elevate::as_root("the demo") {
                eprintln!("trestlectl demo: {}", cni_proto::error_chain(&e));
                return ExitCode::FAILURE;
            }
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("trestlectl"));
            let opts = trestlectl::demo::Options {
                machine_netns,
                bin_dir: bin_dir
                    .or_else(trestlectl::runtime::own_bin_dir)
                    .unwrap_or_else(|| PathBuf::from(".")),
                exe,
                color: !no_color && std::io::stdout().is_terminal(),
                charset: trestlectl::demo::picture::Charset::for_terminal(no_color, |k| {
                    std::env::var(k).ok()
                }),
                pace: if step {
                    trestlectl::demo::Pace::Step
                } else {
                    trestlectl::demo::Pace::Continuous
                },
                runtime,
                cluster,
            };
            match trestlectl::demo::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ trestlectl::demo::Error::Interrupted { .. }) => {
                    // The terminal may be gone (SIGHUP): eprintln! would panic, and the status would lie.
                    let _ = writeln!(std::io::stderr(), "trestlectl demo: {e}");
                    ExitCode::from(130)
                }
                Err(e) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "trestlectl demo: {}",
                        cni_proto::error_chain(&e)
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bench {
            pods,
            rounds,
            concurrency,
            ip_masq,
            density,
            reference,
            no_reference,
            bin_dir,
            out,
            smoke,
            ipam,
            ipam_service,
            service_clients,
            service_seconds,
            service_fill,
            service_restarts,
            cluster,
            cluster_nodes,
            cluster_pods,
            cluster_adds,
            routes,
            routes_nodes,
            routes_allocations,
            routes_simulated,
            datapath,
            datapath_seconds,
            datapath_rounds,
            datapath_round_trips,
            fanout,
            fanout_watchers,
            fanout_claims,
            fanout_interval_ms,
            fanout_etcd_timeout,
        } => {
            let bin_dir = bin_dir
                .or_else(trestlectl::runtime::own_bin_dir)
                .unwrap_or_else(|| PathBuf::from("."));
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            if datapath {
                if let Err(e) = trestlectl::elevate::as_root("the bench") {
                    eprintln!("trestlectl bench: {}", cni_proto::error_chain(&e));
                    return ExitCode::FAILURE;
                }
                // A smoke run: about a second per measurement, one round; its numbers are not judged.
                let opts = trestlectl::bench::datapath::DatapathOptions {
                    seconds: if smoke { 1.0 } else { datapath_seconds },
                    rounds: if smoke { 1 } else { datapath_rounds },
                    round_trips: if smoke { 1000 } else { datapath_round_trips },
                    smoke,
                    bin_dir,
                    out,
                    command,
                };
                let result = trestlectl::bench::datapath::run(&opts);
                return bench_done(
                    "datapath",
                    &opts.out,
                    result.map_err(|e| cni_proto::error_chain(&e)),
                    |r| r.markdown(),
                );
            }
            if fanout {
                let opts = trestlectl::bench::fanout::FanoutOptions {
                    followers: if smoke { 20 } else { fanout_watchers.max(1) },
                    claims: if smoke { 6 } else { fanout_claims },
                    interval: std::time::Duration::from_millis(if smoke {
                        200
                    } else {
                        fanout_interval_ms
                    }),
                    request_timeout: std::time::Duration::from_secs_f64(
                        fanout_etcd_timeout.clamp(0.05, 60.0),
                    ),
                    smoke,
                    out,
                    command,
                };
                let result = trestlectl::bench::fanout::run(&opts);
                return bench_done("fanout", &opts.out, result, |r| r.markdown());
            }
            if routes {
                if let Err(e) = trestlectl::elevate::as_root("the bench") {
                    eprintln!("trestlectl bench: {}", cni_proto::error_chain(&e));
                    return ExitCode::FAILURE;
                }
                let opts = trestlectl::bench::routes::RoutesOptions {
                    nodes: if smoke { 3 } else { routes_nodes.max(2) },
                    allocations: if smoke { 8 } else { routes_allocations },
                    simulated: if smoke { 20 } else { routes_simulated },
                    bin_dir,
                    out,
                    command,
                };
                let result = trestlectl::bench::routes::run(&opts);
                return bench_done("routes", &opts.out, result, |r| r.markdown());
            }
            if cluster {
                let opts = trestlectl::bench::cluster::ClusterOptions {
                    nodes: if smoke { 20 } else { cluster_nodes },
                    pods: if smoke { 10 } else { cluster_pods },
                    plugin_adds: if smoke { 8 } else { cluster_adds },
                    bin_dir,
                    reference: if no_reference {
                        None
                    } else {
                        reference.or_else(trestlectl::bench::Options::find_reference)
                    },
                    out,
                    command,
                };
                let result = trestlectl::bench::cluster::run(&opts);
                return bench_done("cluster", &opts.out, result, |r| r.markdown());
            }
            if ipam_service {
                // trestled and its clients only: no namespaces, so no root needed.
                let mut opts = trestlectl::bench::ServiceOptions {
                    bin_dir,
                    clients: service_clients,
                    seconds: service_seconds,
                    fill: service_fill,
                    restarts: service_restarts,
                    out,
                    command,
                    smoke,
                };
                if smoke {
                    opts.clients = 4;
                    opts.seconds = 0.5;
                    opts.fill = 200;
                    opts.restarts = 2;
                }
                let result = trestlectl::bench::service::run(&opts);
                return bench_done(
                    "ipam-service",
                    &opts.out,
                    result.map_err(|e| cni_proto::error_chain(&e)),
                    |r| r.markdown(),
                );
            }
            if let Err(e) = trestlectl::elevate::as_root("the bench") {
                eprintln!("trestlectl bench: {}", cni_proto::error_chain(&e));
                return ExitCode::FAILURE;
            }
            let mut opts = trestlectl::bench::Options {
                pods,
                rounds,
                concurrency,
                masq: ip_masq,
                bin_dir,
                ipam: ipam.unwrap_or(if smoke {
                    trestlectl::bench::IpamMode::Both
                } else {
                    trestlectl::bench::IpamMode::Embedded
                }),
                smoke,
                reference: if no_reference {
                    None
                } else {
                    reference.or_else(trestlectl::bench::Options::find_reference)
                },
                density,
                out,
                command,
            };
            if smoke {
                opts.pods = 4;
                opts.rounds = 1;
                opts.concurrency = vec![1, 4];
                opts.density = 16;
            }
            match trestlectl::bench::run(&opts) {
                Ok(report) => {
                    print!("{}", report.markdown());
                    eprintln!(
                        "wrote {}/results.md, results.json, latency.svg",
                        opts.out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trestlectl bench: {}", cni_proto::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Add(a) => attach_cmd(Op::Add, &a),
        Cmd::Del(a) => attach_cmd(Op::Del, &a),
        Cmd::Check(a) => attach_cmd(Op::Check, &a),
        Cmd::Gc {
            network,
            valid,
            all,
            loc,
        } => gc_cmd(&network, &valid, all, &loc),
        Cmd::Status { network, loc } => {
            let loc = loc.locations();
            report(
                "status",
                loc.load(&network).and_then(|list| {
                    loc.cni().status(&list)?;
                    eprintln!("network {network}: ready");
                    Ok(())
                }),
            )
        }
        Cmd::Ls { network, json, loc } => ls_cmd(network.as_deref(), json, &loc),
        Cmd::Install {
            bin_dir,
            conf_dir,
            file,
            config,
            name,
            bridge,
            subnet,
            from,
            force,
            systemd_units,
            start_daemon,
            daemon_log,
            plugins_only,
        } => {
            let config = match config {
                Some(p) => match std::fs::read(&p) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("trestlectl install: {}: {e}", p.display());
                        return ExitCode::FAILURE;
                    }
                },
                None => trestlectl::install::default_config(&name, &bridge, &subnet),
            };
            let opts = trestlectl::install::Options {
                from: from
                    .or_else(trestlectl::runtime::own_bin_dir)
                    .unwrap_or_else(|| PathBuf::from(".")),
                bin_dir,
                conf_dir,
                file_name: file,
                config,
                force,
                systemd_units,
                plugins_only,
            };
            match trestlectl::install::run(&opts) {
                Ok(changes) => {
                    for c in &changes {
                        match c {
                            trestlectl::install::Change::Written(p) => {
                                eprintln!("wrote     {}", p.display())
                            }
                            trestlectl::install::Change::Unchanged(p) => {
                                eprintln!("unchanged {}", p.display())
                            }
                        }
                    }
                    if !start_daemon {
                        return ExitCode::SUCCESS;
                    }
                    let how =
                        trestlectl::install::Start::after_install(&opts, &changes, daemon_log);
                    start_daemon_cmd(&how)
                }
                Err(e) => {
                    eprintln!("trestlectl install: {}", cni_proto::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Ipam { command } => exit(
            &format!("ipam {}", command.name()),
            trestlectl::ipam::run(&command, &mut std::io::stdout().lock()),
        ),
        Cmd::Node { command } => exit(
            &format!("node {}", command.name()),
            trestlectl::node::run(&command, &mut std::io::stdout().lock()),
        ),
        Cmd::Pause { netns: false, .. } => trestlectl::sandbox::pause_forever(),
        Cmd::Pause { netns: true, .. } => match trestlectl::sandbox::pause_in_new_netns() {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("trestlectl pause: {}", cni_proto::error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Cmd::Image(args) => exit(
            "image",
            trestlectl::image::run(&args, &mut std::io::stdout().lock()),
        ),
        Cmd::ShowNetns { name } => {
            let shown = trestle_netlink::Netlink::open()
                .and_then(|mut nl| trestlectl::show::ip_addr(&mut nl, name.as_deref()));
            match shown {
                Ok(text) => {
                    println!("(pid {})", std::process::id());
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trestlectl show-netns: {}", cni_proto::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `install --start-daemon`: starts trestled and says how.
fn start_daemon_cmd(how: &trestlectl::install::Start) -> ExitCode {
    use trestlectl::install::Started;
    match trestlectl::install::start_daemon(how) {
        Ok(Started::Systemd { restarted }) => {
            eprintln!(
                "started   trestled.socket (systemd){}",
                if restarted {
                    "; trestled.service restarted if it was running"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Ok(Started::AlreadyRunning(socket)) => {
            eprintln!(
                "running   trestled already serves {}: left alone (restart it to run a new binary)",
                socket.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Started::Spawned { pid, serving }) => {
            eprintln!(
                "started   trestled (pid {pid}, output in {}){}",
                how.log.display(),
                if serving { "" } else { ", not serving yet" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trestlectl install: {}", cni_proto::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The attachment commands.
#[derive(Clone, Copy)]
enum Op {
    Add,
    Del,
    Check,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Del => "del",
            Op::Check => "check",
        }
    }
}

fn attach_cmd(op: Op, a: &Attach) -> ExitCode {
    let loc = a.loc.locations();
    let args = trestlectl::attach::AttachArgs {
        netns: a.netns.clone(),
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        cni_args: a.args.clone(),
        cap_args: a.cap_args.clone(),
    };
    let rt = match args.runtime_conf() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trestlectl {}: {}", op.name(), cni_proto::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let done = loc.load(&a.network).and_then(|list| {
        let cni = loc.cni();
        match op {
            Op::Add => {
                let result = cni.add(&list, &rt)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
                Ok(())
            }
            Op::Del => cni.del(&list, &cni.with_cached_args(&list, rt)),
            Op::Check => cni.check(&list, &cni.with_cached_args(&list, rt)),
        }
    });
    report(op.name(), done)
}

fn gc_cmd(network: &str, valid: &[String], all: bool, loc: &LocArgs) -> ExitCode {
    if valid.is_empty() && !all {
        eprintln!(
            "trestlectl gc: name the attachments still in use with --valid CONTAINER[/IFNAME], or pass --all to \
             release every attachment of {network}"
        );
        return ExitCode::FAILURE;
    }
    let valid: Vec<_> = valid
        .iter()
        .map(|v| trestlectl::attach::parse_valid(v))
        .collect();
    let loc = loc.locations();
    report(
        "gc",
        loc.load(network)
            .and_then(|list| loc.cni().gc(&list, Some(&valid))),
    )
}

fn ls_cmd(network: Option<&str>, json: bool, loc: &LocArgs) -> ExitCode {
    let loc = loc.locations();
    if json {
        let all = trestlectl::attach::cached(&loc, network)
            .map(|v| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()));
        return report("ls", all);
    }
    report(
        "ls",
        trestlectl::attach::list(&loc, network)
            .map(|rows| print!("{}", trestlectl::attach::table(&rows))),
    )
}

/// Exit status of a runtime command: 0, or the error with its causes on stderr and 1.
fn report(op: &str, r: Result<(), cni_runtime::RuntimeError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trestlectl {op}: {}", cni_proto::error_chain(&e));
            if let Some(code) = e.cni_error().map(|c| c.code) {
                eprintln!("(CNI error code {code})");
            }
            ExitCode::FAILURE
        }
    }
}

/// `trestlectl bench --fanout`.
/// The end of a bench mode that writes `<mode>.md` and `<mode>.json` into `out`: its report on stdout and where the
/// files went, or its error.
fn bench_done<R>(
    mode: &str,
    out: &std::path::Path,
    result: Result<R, String>,
    markdown: impl FnOnce(&R) -> String,
) -> ExitCode {
    match result {
        Ok(report) => {
            print!("{}", markdown(&report));
            eprintln!("wrote {}/{mode}.md, {mode}.json", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trestlectl bench --{mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(args.split_whitespace())
    }

    #[test]
    fn the_benchs_modes_and_their_options_parse_as_before() {
        for ok in [
            "trestlectl bench",
            "trestlectl bench --pods 100 --rounds 3 --concurrency 1,8 --ip-masq true,false --density 0 --ipam both",
            "trestlectl bench --smoke --ipam embedded --ip-masq false",
            "trestlectl bench --ipam-service --service-clients 32 --service-seconds 5",
            "trestlectl bench --ipam-service --smoke",
            "trestlectl bench --cluster --cluster-nodes 10 --no-reference",
            "trestlectl bench --routes --routes-simulated 100",
            "trestlectl bench --datapath --datapath-rounds 3",
            "trestlectl bench --fanout --smoke --fanout-etcd-timeout 2",
        ] {
            assert!(parse(ok).is_ok(), "{ok}: {}", parse(ok).err().unwrap());
        }
    }

    #[test]
    fn conflicting_bench_flags_are_refused_not_silently_resolved() {
        for (bad, kind) in [
            // --smoke sets these itself: an explicit value used to be overridden without a word.
            (
                "trestlectl bench --smoke --pods 50",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --smoke --concurrency 1",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --ipam-service --smoke --service-clients 8",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --routes --smoke --routes-nodes 4",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            // Two modes, or a mode with another mode's options.
            (
                "trestlectl bench --cluster --ipam-service",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --fanout --datapath",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --cluster --pods 10",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --datapath --ipam daemon",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --service-clients 8",
                clap::error::ErrorKind::MissingRequiredArgument,
            ),
            (
                "trestlectl bench --cluster --routes-nodes 4",
                clap::error::ErrorKind::ArgumentConflict,
            ),
            (
                "trestlectl bench --fanout-etcd-timeout 2",
                clap::error::ErrorKind::MissingRequiredArgument,
            ),
        ] {
            match parse(bad) {
                Ok(_) => panic!("{bad}: accepted"),
                Err(e) => assert_eq!(e.kind(), kind, "{bad}: {e}"),
            }
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
