//! `trestlectl bench`: the command line of the bench's modes (the CNI bench, `--ipam-service`, `--cluster`,
//! `--routes`, `--datapath`, `--fanout`). A mode is a flag, as it always was; options of another mode, or sizes
//! `--smoke` sets itself, are refused beside it rather than ignored.

use std::path::PathBuf;
use std::process::ExitCode;

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

/// The options of `trestlectl bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
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
}

/// Runs `trestlectl bench`.
pub fn run(args: BenchArgs) -> ExitCode {
    let BenchArgs {
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
    } = args;
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
    use clap::{CommandFactory, Parser};

    /// `trestlectl bench ...` as clap parses it.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Bench(BenchArgs),
    }

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
        use clap::error::ErrorKind::{ArgumentConflict, MissingRequiredArgument};
        let conflicts = [
            // --smoke sets these itself: an explicit value used to be overridden without a word.
            "--smoke --pods 50",
            "--smoke --concurrency 1",
            "--ipam-service --smoke --service-clients 8",
            "--routes --smoke --routes-nodes 4",
            // Two modes, or a mode with another mode's options.
            "--cluster --ipam-service",
            "--fanout --datapath",
            "--cluster --pods 10",
            "--datapath --ipam daemon",
            "--cluster --routes-nodes 4",
        ];
        // A mode's options without the mode.
        let orphans = ["--service-clients 8", "--fanout-etcd-timeout 2"];
        let cases = conflicts.iter().map(|c| (c, ArgumentConflict));
        for (flags, kind) in cases.chain(orphans.iter().map(|c| (c, MissingRequiredArgument))) {
            match parse(&format!("trestlectl bench {flags}")) {
                Ok(_) => panic!("{flags}: accepted"),
                Err(e) => assert_eq!(e.kind(), kind, "{flags}: {e}"),
            }
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
