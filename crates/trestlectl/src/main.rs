//! `trestlectl`: the operator's tool for trestle.

mod cli;

use clap::{Parser, Subcommand};
use cli::attach::{attach_cmd, gc_cmd, ls_cmd, report, Attach, LocArgs, Op};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "trestlectl", version, about = "trestle operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Guided walkthrough: how a kubelet's runtime wires a pod with CNI, with the real trestle binaries.
    Demo(cli::demo::DemoArgs),
    /// Measure ADD/DEL latency, throughput, memory and density, side by side with the reference plugins.
    Bench(cli::bench::BenchArgs),
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
    Install(cli::install::InstallArgs),
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
        Cmd::Demo(args) => cli::demo::run(args),
        Cmd::Bench(args) => cli::bench::run(args),
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
        Cmd::Install(args) => cli::install::run(args),
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
