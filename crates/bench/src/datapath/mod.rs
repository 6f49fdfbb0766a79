//! `trestlectl bench --datapath`: pod to pod throughput and latency on trestle's three paths (same node, direct
//! between nodes of one segment, VXLAN across segments), each beside the kernel's own baseline built by hand in the
//! same node namespaces (plain veths and routes, a hand-made VXLAN device). Nodes are network namespaces with a
//! real etcd and a real trestled each, as in `bench --routes`; trestle's pods are made by the real plugin.
//!
//! Per path and round, trestle and its baseline run one after the other (the order alternating by round), so
//! machine noise hits both alike: one TCP stream's Gbit/s, the machine's busy CPU seconds per Gbit over it
//! (/proc/stat, every CPU: other work on the machine counts too), and the round trips of a 1-byte TCP ping-pong.
//! Medians over rounds; the ratios trestle / baseline.

mod measure;
mod report;
mod setup;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::quantile;
use measure::{median, End};
pub use report::Report;

/// What to run.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// Seconds of each throughput run.
    pub seconds: f64,
    /// Rounds per path (each: trestle and baseline once).
    pub rounds: usize,
    /// Timed round trips of each latency run.
    pub round_trips: usize,
    /// A smoke run: its numbers are not judged.
    pub smoke: bool,
    /// Directory of `trestle`, `trestle-ipam` and `trestled`.
    pub bin_dir: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// Why the bench stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not running as root.
    #[error("the bench creates network namespaces: run it as root")]
    NotRoot,
    /// etcd is not installed.
    #[error("etcd not found: install Debian's etcd-server (apt-get install etcd-server)")]
    NoEtcd,
    /// Ctrl-C (or SIGTERM, SIGHUP).
    #[error("interrupted")]
    Interrupted,
    /// The nodes, etcd, trestled or trestle's pods could not be set up.
    #[error("{0}")]
    Setup(String),
    /// A namespace could not be made or entered.
    #[error("network namespace")]
    Netns(#[source] trestle_netns::Error),
    /// A netlink request failed.
    #[error("netlink: {what}")]
    Netlink {
        /// What was being made.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_netlink::Error,
    },
    /// A measurement's socket failed.
    #[error("{what} ({addr})")]
    Traffic {
        /// The listening end.
        addr: SocketAddr,
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A pod never answered: a route is missing.
    #[error("{to} not reachable from {from} after {waited:?}")]
    Unreachable {
        /// The client's address.
        from: Ipv4Addr,
        /// The server's address.
        to: Ipv4Addr,
        /// How long the bench waited.
        waited: Duration,
    },
    /// A measuring thread panicked.
    #[error("a measuring thread panicked")]
    Thread,
    /// The work directory or the report files.
    #[error("{}", .path.display())]
    Files {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The three paths: name, and the indexes of the client and server pods in [`setup::LAYOUT`].
const PATHS: [(&str, usize, usize); 3] = [
    ("same node", 0, 1),
    ("direct (same segment)", 0, 2),
    ("VXLAN (other segment)", 0, 3),
];

/// One round of one side on one path.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Round {
    /// Throughput of the TCP stream.
    pub gbps: f64,
    /// Busy CPU seconds (whole machine) per Gbit moved.
    pub cpu_s_per_gbit: f64,
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 99th percentile round trip, µs.
    pub p99_us: f64,
}

/// One side of a path: its rounds and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Client and server addresses.
    pub from: Ipv4Addr,
    /// The server.
    pub to: Ipv4Addr,
    /// The client's eth0 MTU.
    pub mtu: u32,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Medians over the rounds of each field.
    pub median: Round,
}

impl Default for Side {
    fn default() -> Side {
        Side {
            from: Ipv4Addr::UNSPECIFIED,
            to: Ipv4Addr::UNSPECIFIED,
            mtu: 0,
            rounds: Vec::new(),
            median: Round::default(),
        }
    }
}

impl Side {
    fn new(from: &setup::Pod, to: &setup::Pod) -> Side {
        Side {
            from: from.ip,
            to: to.ip,
            mtu: from.mtu,
            ..Side::default()
        }
    }

    fn finish(&mut self) {
        let m = |f: fn(&Round) -> f64| median(&self.rounds.iter().map(f).collect::<Vec<_>>());
        self.median = Round {
            gbps: m(|r| r.gbps),
            cpu_s_per_gbit: m(|r| r.cpu_s_per_gbit),
            p50_us: m(|r| r.p50_us),
            p99_us: m(|r| r.p99_us),
        };
    }
}

/// trestle / baseline of the medians.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    /// Throughput (higher is better).
    pub gbps: f64,
    /// CPU per Gbit (lower is better).
    pub cpu_s_per_gbit: f64,
    /// p50 RTT (lower is better).
    pub p50_us: f64,
    /// p99 RTT (lower is better).
    pub p99_us: f64,
}

/// One path's result.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// `same node`, `direct (same segment)`, `VXLAN (other segment)`.
    pub path: String,
    /// trestle's pods.
    pub trestle: Side,
    /// The kernel's baseline.
    pub baseline: Side,
    /// trestle / baseline.
    pub ratios: Ratios,
    /// Whether throughput, CPU per Gbit and p99 RTT are each within 5% of the baseline; `None` in a smoke run.
    pub within_5pct: Option<bool>,
}

impl PathResult {
    fn finish(&mut self, smoke: bool) {
        self.trestle.finish();
        self.baseline.finish();
        let (t, b) = (self.trestle.median, self.baseline.median);
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
        self.ratios = Ratios {
            gbps: ratio(t.gbps, b.gbps),
            cpu_s_per_gbit: ratio(t.cpu_s_per_gbit, b.cpu_s_per_gbit),
            p50_us: ratio(t.p50_us, b.p50_us),
            p99_us: ratio(t.p99_us, b.p99_us),
        };
        self.within_5pct = (!smoke).then(|| within_5pct(&self.ratios));
    }
}

/// The target: throughput no more than 5% below the baseline, CPU per Gbit and p99 RTT no more than 5% above.
fn within_5pct(r: &Ratios) -> bool {
    r.gbps >= 0.95 && r.cpu_s_per_gbit <= 1.05 && r.p99_us <= 1.05
}

/// Runs the bench (as root) and writes datapath.md and datapath.json to the output folder.
pub fn run(opts: &DatapathOptions) -> Result<Report, Error> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    trestle_demo::interrupt::install().map_err(|source| Error::Files {
        path: "signal handlers".into(),
        source,
    })?;
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("trestle-bench-datapath-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|source| Error::Files {
        path: work.clone(),
        source,
    })?;
    // Whatever happens, the cluster (processes, namespaces) is dropped inside and the directory removed here.
    let result = run_in(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    let mut report = result?;
    report.runtime_s = started.elapsed().as_secs_f64();
    report.write(&opts.out)?;
    Ok(report)
}

fn run_in(opts: &DatapathOptions, work: &std::path::Path) -> Result<Report, Error> {
    eprintln!("datapath: etcd, 3 nodes with trestled, trestle's pods");
    let mut c = setup::cluster(&opts.bin_dir, work)?;
    let result = measure_all(opts, &mut c);
    c.stop();
    result
}

fn measure_all(opts: &DatapathOptions, c: &mut setup::Cluster) -> Result<Report, Error> {
    if trestle_demo::interrupt::requested() {
        return Err(Error::Interrupted);
    }
    eprintln!("datapath: the baseline beside them");
    setup::baseline(c)?;
    let mut paths = Vec::new();
    for (name, from, to) in PATHS {
        let (tf, tt) = (&c.pods[from], &c.pods[to]);
        let (bf, bt) = (&c.base[from], &c.base[to]);
        for (f, t) in [(tf, tt), (bf, bt)] {
            measure::wait_reachable(&pod_end(f), &pod_end(t), Duration::from_secs(30))?;
        }
        paths.push(PathResult {
            path: name.to_owned(),
            trestle: Side::new(tf, tt),
            baseline: Side::new(bf, bt),
            ratios: Ratios::default(),
            within_5pct: None,
        });
    }
    let secs = Duration::from_secs_f64(opts.seconds.max(0.1));
    for round in 0..opts.rounds.max(1) {
        for (k, (name, from, to)) in PATHS.into_iter().enumerate() {
            // Alternating the order by round: whatever the first of a pair pays (or leaves behind) falls on
            // both sides alike.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for base in order {
                let pods = if base { &c.base } else { &c.pods };
                let (f, t) = (pod_end(&pods[from]), pod_end(&pods[to]));
                eprintln!(
                    "datapath: round {}/{} {name} {}",
                    round + 1,
                    opts.rounds.max(1),
                    if base { "baseline" } else { "trestle" }
                );
                let stream = measure::stream(&f, &t, secs)?;
                let mut rtt = measure::ping_pong(&f, &t, opts.round_trips)?;
                if trestle_demo::interrupt::requested() {
                    return Err(Error::Interrupted);
                }
                rtt.sort_by(f64::total_cmp);
                let r = Round {
                    gbps: stream.gbps(),
                    cpu_s_per_gbit: stream.cpu_per_gbit(),
                    p50_us: quantile(&rtt, 0.5),
                    p99_us: quantile(&rtt, 0.99),
                };
                let side = if base {
                    &mut paths[k].baseline
                } else {
                    &mut paths[k].trestle
                };
                side.rounds.push(r);
            }
        }
    }
    for p in &mut paths {
        p.finish(opts.smoke);
    }
    Ok(Report::new(opts, paths))
}

fn pod_end(p: &setup::Pod) -> End<'_> {
    End {
        ns: &p.ns,
        ip: p.ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(gbps: f64, cpu: f64, p99: f64) -> Round {
        Round {
            gbps,
            cpu_s_per_gbit: cpu,
            p50_us: p99 / 2.0,
            p99_us: p99,
        }
    }

    #[test]
    fn ratios_of_medians_and_the_target() {
        let side = |rounds: Vec<Round>| Side {
            rounds,
            ..Side::default()
        };
        let mut p = PathResult {
            path: "x".into(),
            trestle: side(vec![
                round(9.0, 0.2, 60.0),
                round(1.0, 0.9, 500.0),
                round(9.6, 0.21, 62.0),
            ]),
            baseline: side(vec![round(10.0, 0.2, 60.0), round(10.0, 0.2, 60.0)]),
            ratios: Ratios::default(),
            within_5pct: None,
        };
        p.finish(false);
        assert_eq!(
            p.trestle.median.gbps, 9.0,
            "an outlier round does not move the median"
        );
        assert!((p.ratios.gbps - 0.9).abs() < 1e-9);
        assert!((p.ratios.cpu_s_per_gbit - 1.05).abs() < 1e-9);
        assert_eq!(p.within_5pct, Some(false), "10% less throughput");
        assert!(within_5pct(&Ratios {
            gbps: 0.95,
            cpu_s_per_gbit: 1.05,
            p50_us: 2.0,
            p99_us: 1.0
        }));
        assert!(!within_5pct(&Ratios {
            gbps: 1.0,
            cpu_s_per_gbit: 1.0,
            p50_us: 1.0,
            p99_us: 1.06
        }));
        p.finish(true);
        assert_eq!(p.within_5pct, None, "a smoke run judges nothing");
    }
}
