//! `trestlectl`: the operator's tool for trestle.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
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
    Demo {
        /// Run in the machine's own network namespace, as the classic walkthrough does (default: a private one).
        #[arg(long)]
        machine_netns: bool,
        /// Directory holding `trestle` and `trestle-ipam` (default: beside trestlectl).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Never colour the output.
        #[arg(long)]
        no_color: bool,
    },
    /// Measure ADD/DEL latency, throughput, memory and density, side by side with the reference plugins.
    Bench {
        /// Pods per batch.
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// Rounds per case; the sides alternate in each round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Concurrency levels, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<usize>,
        /// Masquerade settings to run, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "true,false")]
        ip_masq: Vec<bool>,
        /// Pods of the density run on one /22 (0 skips it).
        #[arg(long, default_value_t = 1000)]
        density: usize,
        /// Directory of the reference `bridge` and `host-local` (default: /usr/lib/cni or /opt/cni/bin).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Do not compare with the reference plugins.
        #[arg(long)]
        no_reference: bool,
        /// Directory holding `trestle` and `trestle-ipam` (default: beside trestlectl).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Output folder for results.md, results.json and latency.svg.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// A few pods, one round, concurrency 1 and 4, small density: keeps the bench working in CI.
        #[arg(long)]
        smoke: bool,
    },
    /// Sleep forever, like a pod's pause container (used by the demo and tests as a sandbox holder).
    #[command(hide = true)]
    Pause,
    /// Print the interfaces of this process's network namespace, `ip addr` style.
    ShowNetns {
        /// Only this interface.
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Demo {
            machine_netns,
            bin_dir,
            no_color,
        } => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("trestlectl"));
            let opts = trestlectl::demo::Options {
                machine_netns,
                bin_dir: bin_dir
                    .or_else(trestlectl::runtime::own_bin_dir)
                    .unwrap_or_else(|| PathBuf::from(".")),
                exe,
                color: !no_color && std::io::stdout().is_terminal(),
            };
            match trestlectl::demo::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("trestlectl demo: {e}");
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
        } => {
            let mut opts = trestlectl::bench::Options {
                pods,
                rounds,
                concurrency,
                masq: ip_masq,
                bin_dir: bin_dir
                    .or_else(trestlectl::runtime::own_bin_dir)
                    .unwrap_or_else(|| PathBuf::from(".")),
                reference: if no_reference {
                    None
                } else {
                    reference.or_else(trestlectl::bench::Options::find_reference)
                },
                density,
                out,
                command: std::env::args().collect::<Vec<_>>().join(" "),
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
                    eprintln!("trestlectl bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Pause => trestlectl::sandbox::pause_forever(),
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
                    eprintln!("trestlectl show-netns: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
