//! `trestlectl demo`: the guided walkthrough's command line.

use std::io::IsTerminal;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The options of `trestlectl demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
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
}

/// Runs `trestlectl demo`.
pub fn run(args: DemoArgs) -> ExitCode {
    let DemoArgs {
        machine_netns,
        bin_dir,
        no_color,
        step,
        runtime,
        cluster,
    } = args;
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
