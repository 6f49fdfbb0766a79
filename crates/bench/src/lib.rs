//! `trestlectl bench`: ADD/DEL latency, throughput, memory, density and the kernel floor, trestle side by side with
//! the reference plugins in the same run. Every side gets its own private host namespace and pod namespaces made up
//! front; runs alternate between the sides (A B A B ...) so drift on a noisy machine cancels out. With `--ipam
//! daemon` or `both`, trestle also runs in daemon mode against a trestled the bench starts; `--ipam-service`
//! ([`service`]) measures that trestled on its own, through its API.

pub use trestle_operator::binary;
pub mod cluster;
pub mod datapath;
pub mod fanout;
mod floor;
pub mod memory;
mod progress;
mod report;
pub mod routes;
pub mod service;
mod side;
pub(crate) mod stats;
mod trestled;

pub use report::Report;
pub use service::{ServiceOptions, ServiceReport};

use progress::Progress;
use report::{load_average, CaseResult, DaemonRun, DensityResult, SideCase};
use side::Side;
use stats::summarise;
use std::path::PathBuf;
use std::time::Duration;
use trestle_ipam_core::DaemonSettings;
use trestled::Trestled;

/// Which IPAM of trestle the bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpamMode {
    /// Embedded: trestle-ipam's code in the plugin, state in `dataDir` (side "trestle").
    Embedded,
    /// Daemon mode: the plugin asks a trestled the bench starts (side "trestle-daemon").
    Daemon,
    /// Both, side by side in the same rounds.
    Both,
}

impl IpamMode {
    /// Whether the embedded side runs.
    pub fn embedded(self) -> bool {
        matches!(self, IpamMode::Embedded | IpamMode::Both)
    }

    /// Whether the daemon-mode side runs.
    pub fn daemon(self) -> bool {
        matches!(self, IpamMode::Daemon | IpamMode::Both)
    }

    /// For the report.
    pub fn describe(self) -> &'static str {
        match self {
            IpamMode::Embedded => "embedded (`dataDir`)",
            IpamMode::Daemon => "daemon mode (trestled)",
            IpamMode::Both => "embedded (`dataDir`) and daemon mode (trestled), side by side",
        }
    }
}

/// Why the bench stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not running as root.
    #[error("the bench creates network namespaces: run it as root")]
    NotRoot,
    /// The scratch directory could not be created.
    #[error("cannot create the work directory {}", .path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The report files could not be written.
    #[error("writing {}", .path.display())]
    WriteReport {
        /// The output folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A side's namespaces or directories could not be set up.
    #[error("cannot set up the {side} side")]
    Side {
        /// The side.
        side: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A batch worker could not enter the side's host namespace.
    #[error("{side}: cannot enter its host namespace")]
    EnterHost {
        /// The side.
        side: &'static str,
        /// The cause.
        #[source]
        source: trestle_netns::Error,
    },
    /// A plugin could not be run.
    #[error("{side} {command} pod {pod}: cannot run the plugin")]
    Spawn {
        /// The side.
        side: &'static str,
        /// `ADD` or `DEL`.
        command: String,
        /// The pod's number.
        pod: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A plugin answered with an error.
    #[error("{side} {command} pod {pod}: {stdout} {stderr}")]
    PluginFailed {
        /// The side.
        side: &'static str,
        /// `ADD` or `DEL`.
        command: String,
        /// The pod's number.
        pod: usize,
        /// The plugin's stdout (its CNI error).
        stdout: String,
        /// The plugin's stderr, trimmed.
        stderr: String,
    },
    /// The peak memory of an ADD could not be measured.
    #[error("{side}: measuring the peak memory of one ADD")]
    Memory {
        /// The side.
        side: &'static str,
        /// The cause.
        #[source]
        source: memory::Error,
    },
    /// The DEL after the memory measurement could not be run.
    #[error("{side}: DEL after the memory measurement")]
    MemoryDel {
        /// The side.
        side: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The density run reserved fewer (or more) addresses than pods.
    #[error("{side}: {reserved} addresses reserved for {pods} pods")]
    Density {
        /// The side.
        side: &'static str,
        /// Addresses reserved.
        reserved: usize,
        /// Pods added.
        pods: usize,
    },
    /// A namespace of the kernel floor could not be made or entered.
    #[error("kernel floor: {what}")]
    FloorNetns {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_netns::Error,
    },
    /// A netlink request of the kernel floor failed.
    #[error("kernel floor: {what}")]
    FloorNetlink {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_netlink::Error,
    },
    /// The kernel floor's bridge was not there after creating it.
    #[error("kernel floor: no bridge floor0 after creating it")]
    FloorNoBridge,
    /// Daemon mode needs trestled beside the plugins.
    #[error("no trestled at {} (build it: cargo build --release)", .path.display())]
    TrestledMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// trestled could not be started or waited for.
    #[error("cannot run {}", .path.display())]
    TrestledSpawn {
        /// The binary.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// trestled exited on its own, or not cleanly at SIGTERM.
    #[error("trestled exited ({status}); its log ends:\n{log}")]
    TrestledExited {
        /// How it exited.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// trestled did not answer STATUS with ready in time.
    #[error("trestled not ready after {waited:?}; its log ends:\n{log}")]
    TrestledNotReady {
        /// How long the bench waited.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
    /// A call of the service bench failed.
    #[error("trestled: {what}")]
    Service {
        /// The call.
        what: String,
        /// The cause.
        #[source]
        source: Box<trestle_ipam::daemon::CallError>,
    },
    /// trestled answered something the service bench did not expect.
    #[error("trestled: {0}")]
    ServiceCheck(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pods per batch.
    pub pods: usize,
    /// Rounds per case (each round: every side ADDs then DELs all pods).
    pub rounds: usize,
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Masquerade settings to run.
    pub masq: Vec<bool>,
    /// Directory of `trestle`, `trestle-ipam` and `trestled`.
    pub bin_dir: PathBuf,
    /// Embedded IPAM, daemon mode, or both.
    pub ipam: IpamMode,
    /// A smoke run: its numbers are not judged.
    pub smoke: bool,
    /// Directory of the reference `bridge` and `host-local`, if any.
    pub reference: Option<PathBuf>,
    /// Pods of the density run (0: skip).
    pub density: usize,
    /// Output folder.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    /// Finds the reference plugins in the usual places.
    pub fn find_reference() -> Option<PathBuf> {
        ["/usr/lib/cni", "/opt/cni/bin"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("bridge").is_file() && d.join("host-local").is_file())
    }
}

/// Runs the bench and writes the report files. Returns the report.
pub fn run(opts: &Options) -> Result<Report, Error> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    let work = std::env::temp_dir().join(format!("trestle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|source| Error::WorkDir {
        path: work.clone(),
        source,
    })?;
    let result = run_in(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    report
        .write(&opts.out)
        .map_err(|source| Error::WriteReport {
            path: opts.out.clone(),
            source,
        })?;
    Ok(report)
}

fn sides(
    opts: &Options,
    work: &std::path::Path,
    pods: usize,
    daemon: Option<&DaemonSettings>,
) -> Result<Vec<Side>, Error> {
    let mut v = Vec::new();
    if opts.ipam.embedded() {
        v.push(
            Side::new(
                side::EMBEDDED,
                opts.bin_dir.join("trestle"),
                "trestle-ipam",
                work,
                pods,
            )
            .map_err(|source| Error::Side {
                side: side::EMBEDDED,
                source,
            })?,
        );
    }
    if let Some(d) = daemon {
        v.push(
            Side::new(
                side::DAEMON,
                opts.bin_dir.join("trestle"),
                "trestle-ipam",
                work,
                pods,
            )
            .map_err(|source| Error::Side {
                side: side::DAEMON,
                source,
            })?
            .with_daemon(d.clone()),
        );
    }
    if let Some(r) = &opts.reference {
        v.push(
            Side::new(side::REFERENCE, r.join("bridge"), "host-local", work, pods).map_err(
                |source| Error::Side {
                    side: side::REFERENCE,
                    source,
                },
            )?,
        );
    }
    Ok(v)
}

fn run_in(opts: &Options, work: &std::path::Path) -> Result<Report, Error> {
    let mut report = Report::new(opts);
    // Daemon mode: one trestled for the whole bench, its socket, store and delete queue in the work directory.
    // Reuse delay 0: the bench deletes and re-adds the same pods within a second, round after round, as embedded
    // mode (host-local's scheme, no reuse delay) allows.
    let mut daemon = match opts.ipam.daemon() {
        true => {
            let mut d = Trestled::new(
                opts.bin_dir.join("trestled"),
                &work.join("trestled"),
                &["--reuse-delay", "0"],
            )?;
            let ready = d.start()?;
            Some((d, ready))
        }
        false => None,
    };
    let settings = daemon.as_ref().map(|(d, _)| d.settings());
    let cpu_start = daemon.as_ref().and_then(|(d, _)| d.cpu_seconds());
    let sides = sides(opts, &work.join("cases"), opts.pods, settings.as_ref())?;
    let cases: Vec<(usize, bool)> = opts
        .concurrency
        .iter()
        .flat_map(|&c| opts.masq.iter().map(move |&m| (c, m)))
        .collect();
    // The floor runs in every round of the concurrency-1 cases, as one more side.
    let floor_rounds = cases.iter().filter(|(c, _)| *c == 1).count() * opts.rounds;
    let total = (cases.len() * opts.rounds * sides.len() + floor_rounds) * opts.pods * 2;
    let progress = Progress::new(total as u64);
    for (c, masq) in cases {
        let (add, del) = run_case(opts, &sides, c, masq, &progress)?;
        report.cases.push(add);
        report.cases.push(del);
    }
    progress.finish();
    report.memory = memory(&sides)?;
    drop(sides);
    if opts.density > 0 {
        report.density = density(opts, &work.join("density"), settings.as_ref())?;
    }
    if let Some((mut d, ready)) = daemon.take() {
        let (rss_kib, cpu) = (d.rss_kib(), d.cpu_seconds());
        let stop = d.stop()?;
        report.daemon = Some(DaemonRun {
            command: d.command_line(),
            start_ms: ready.as_secs_f64() * 1e3,
            rss_kib,
            cpu_s: cpu.zip(cpu_start).map(|(end, start)| end - start),
            stop_ms: stop.as_secs_f64() * 1e3,
        });
    }
    report.load.push(load_average());
    Ok(report)
}

/// A pause before every measured batch, the same for both sides: the kernel finishes work queued by the batch
/// before (RCU callbacks, the IPv6 cleanup of deleted links, writeback of the state directory) instead of doing it
/// on the next side's time. A smoke run judges no number, so it pauses only briefly.
fn settle(opts: &Options) {
    std::thread::sleep(Duration::from_millis(if opts.smoke { 50 } else { 300 }));
}

fn run_case(
    opts: &Options,
    sides: &[Side],
    c: usize,
    masq: bool,
    progress: &Progress,
) -> Result<(CaseResult, CaseResult), Error> {
    let mut add: Vec<SideCase> = sides.iter().map(|s| SideCase::new(s.name)).collect();
    let mut del = add.clone();
    // At concurrency 1 the kernel floor is measured in every round too, after the same pause, so it drifts with
    // the sides and trestle's multiple of it is a median of per-round ratios like the others.
    let mut floors = (c == 1).then(|| (SideCase::new("floor"), SideCase::new("floor")));
    for _round in 0..opts.rounds {
        for (i, side) in sides.iter().enumerate() {
            let conf = side.config("benchnet", "10.128.0.0/16", masq);
            progress.label(&format!("{} ADD c={c} ipMasq={masq}", side.name));
            settle(opts);
            let a = side.batch("ADD", &conf, opts.pods, c, &|| progress.tick())?;
            add[i].record(&a.latencies, a.wall, None);
            progress.label(&format!("{} DEL c={c} ipMasq={masq}", side.name));
            settle(opts);
            let d = side.batch("DEL", &conf, opts.pods, c, &|| progress.tick())?;
            let gone = side.wait_links_gone(Duration::from_secs(60));
            del[i].record(&d.latencies, d.wall, Some(d.wall + gone));
        }
        if let Some((fa, fd)) = &mut floors {
            progress.label(&format!("kernel floor (c=1 ipMasq={masq} round)"));
            settle(opts);
            let f = floor::measure(opts.pods, &|| progress.tick())?;
            fa.record(&f.add, f.add.iter().sum(), None);
            fd.record(&f.del, f.del.iter().sum(), None);
        }
    }
    let (floor_add, floor_del) = floors.unzip();
    Ok((
        CaseResult::new("ADD", c, masq, add).with_floor(floor_add),
        CaseResult::new("DEL", c, masq, del).with_floor(floor_del),
    ))
}

/// Peak memory of one ADD (plugin and IPAM child) per side, with masquerade on.
fn memory(sides: &[Side]) -> Result<Vec<(String, u64)>, Error> {
    let mut out = Vec::new();
    for side in sides {
        let conf = side.config("benchnet", "10.128.0.0/16", true);
        let inv = trestle_operator::runtime::Invocation::new(
            &side.plugin,
            "ADD",
            "mem-0",
            &side.pods[0].path().display().to_string(),
            "eth0",
        );
        let kib = side::peak_memory_kib(&inv, conf.to_string().as_bytes(), &side.host).map_err(
            |source| Error::Memory {
                side: side.name,
                source,
            },
        )?;
        let mut del = inv.clone();
        del.command = "DEL".into();
        del.run(conf.to_string().as_bytes(), Some(&side.host))
            .map_err(|source| Error::MemoryDel {
                side: side.name,
                source,
            })?;
        out.push((side.name.to_owned(), kib));
    }
    Ok(out)
}

/// Many pods on one /22: total ADD and DEL time, and all addresses distinct.
fn density(
    opts: &Options,
    work: &std::path::Path,
    daemon: Option<&DaemonSettings>,
) -> Result<Vec<DensityResult>, Error> {
    let sides = sides(opts, work, opts.density, daemon)?;
    let progress = Progress::new((opts.density * 2 * sides.len()) as u64);
    let mut out = Vec::new();
    for side in &sides {
        let conf = side.config("densenet", "10.130.0.0/22", true);
        progress.label(&format!("{} density ADD", side.name));
        settle(opts);
        let a = side.batch("ADD", &conf, opts.density, 8, &|| progress.tick())?;
        let distinct = side.reserved("densenet");
        progress.label(&format!("{} density DEL", side.name));
        settle(opts);
        let d = side.batch("DEL", &conf, opts.density, 8, &|| progress.tick())?;
        let gone = side.wait_links_gone(Duration::from_secs(120));
        out.push(DensityResult {
            side: side.name.to_owned(),
            pods: opts.density,
            add_total_s: a.wall.as_secs_f64(),
            del_total_s: d.wall.as_secs_f64(),
            links_gone_s: (d.wall + gone).as_secs_f64(),
            distinct_addresses: distinct,
            add_p50_ms: summarise(&a.latencies).p50_ms,
        });
        if distinct != opts.density {
            return Err(Error::Density {
                side: side.name,
                reserved: distinct,
                pods: opts.density,
            });
        }
    }
    progress.finish();
    Ok(out)
}

/// Writes a bench mode's `<name>.md` (`markdown`) and `<name>.json` (`report`) into `out`, made if missing.
pub(crate) fn write_report(
    out: &std::path::Path,
    name: &str,
    markdown: &str,
    report: &impl serde::Serialize,
) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write into {}: {e}", out.display());
    std::fs::create_dir_all(out).map_err(err)?;
    std::fs::write(out.join(format!("{name}.md")), markdown).map_err(err)?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())? + "\n";
    std::fs::write(out.join(format!("{name}.json")), json).map_err(err)
}
