//! The bench report: a Markdown table, a JSON file and an SVG plot of the latency distributions.

use super::binary;
use super::side::{DAEMON, EMBEDDED, REFERENCE};
use super::stats::{median, summarise, Summary};
use super::{IpamMode, Options};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// One side's numbers for one case, pooled over rounds.
#[derive(Debug, Clone, Serialize)]
pub struct SideCase {
    /// "trestle" or "reference".
    pub side: String,
    /// Pooled latency summary.
    pub latency: Summary,
    /// Median over rounds of operations per second.
    pub ops_per_sec: f64,
    /// p50 of each round (ms), for the per-round ratios.
    pub round_p50_ms: Vec<f64>,
    /// ops/s of each round.
    pub round_ops: Vec<f64>,
    /// DEL only: median over rounds of the time until the last link was really gone (ms).
    pub links_gone_ms: Option<f64>,
    /// trestle's sides: median over rounds of reference p50 / this side's p50.
    pub p50_ratio: Option<f64>,
    /// trestle's sides: median over rounds of this side's ops/s / reference ops/s.
    pub throughput_ratio: Option<f64>,
    /// trestle's sides, concurrency 1: median over rounds of this side's p50 / the kernel floor's p50.
    pub floor_multiple: Option<f64>,
    #[serde(skip)]
    samples: Vec<Duration>,
    #[serde(skip)]
    gone: Vec<f64>,
}

impl SideCase {
    /// Empty numbers for `side`.
    pub fn new(side: &str) -> SideCase {
        SideCase {
            side: side.to_owned(),
            latency: Summary::default(),
            ops_per_sec: 0.0,
            round_p50_ms: Vec::new(),
            round_ops: Vec::new(),
            links_gone_ms: None,
            p50_ratio: None,
            throughput_ratio: None,
            floor_multiple: None,
            samples: Vec::new(),
            gone: Vec::new(),
        }
    }

    /// Adds one round.
    pub fn record(&mut self, latencies: &[Duration], wall: Duration, gone: Option<Duration>) {
        self.samples.extend_from_slice(latencies);
        self.round_p50_ms.push(summarise(latencies).p50_ms);
        self.round_ops
            .push(latencies.len() as f64 / wall.as_secs_f64().max(1e-9));
        if let Some(g) = gone {
            self.gone.push(g.as_secs_f64() * 1e3);
        }
        self.latency = summarise(&self.samples);
        self.ops_per_sec = median(&self.round_ops);
        self.links_gone_ms = (!self.gone.is_empty()).then(|| median(&self.gone));
    }

    fn sorted_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// One case: an operation at a concurrency with masquerade on or off.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// ADD or DEL.
    pub op: String,
    /// Concurrent operations.
    pub concurrency: usize,
    /// `ipMasq`.
    pub ip_masq: bool,
    /// Each side's numbers (trestle's sides with their ratios to the reference and the floor).
    pub sides: Vec<SideCase>,
    /// Median over rounds of reference p50 / trestle p50 (embedded IPAM).
    pub p50_ratio: Option<f64>,
    /// Median over rounds of trestle ops/s / reference ops/s (embedded IPAM).
    pub throughput_ratio: Option<f64>,
    /// Concurrency 1 only: the kernel floor of this operation, measured in the same rounds.
    pub floor: Option<SideCase>,
    /// Median over rounds of trestle p50 / floor p50 (embedded IPAM).
    pub floor_multiple: Option<f64>,
    /// Median over rounds of trestle-daemon p50 / trestle p50 (below 1: daemon mode is faster).
    pub daemon_vs_embedded_p50: Option<f64>,
    /// Median over rounds of trestle-daemon ops/s / trestle ops/s (above 1: daemon mode is faster).
    pub daemon_vs_embedded_throughput: Option<f64>,
}

impl CaseResult {
    /// Builds a case and its ratios: every side of trestle against the reference, and daemon mode against
    /// embedded.
    pub fn new(
        op: &str,
        concurrency: usize,
        ip_masq: bool,
        mut sides: Vec<SideCase>,
    ) -> CaseResult {
        let reference = sides
            .iter()
            .find(|s| s.side == REFERENCE)
            .map(|r| (r.round_p50_ms.clone(), r.round_ops.clone()));
        if let Some((ref_p50, ref_ops)) = &reference {
            for s in sides.iter_mut().filter(|s| s.side != REFERENCE) {
                s.p50_ratio = Some(median_ratio(ref_p50, &s.round_p50_ms));
                s.throughput_ratio = Some(median_ratio(&s.round_ops, ref_ops));
            }
        }
        let embedded = sides.iter().find(|s| s.side == EMBEDDED);
        let daemon = sides.iter().find(|s| s.side == DAEMON);
        let (daemon_vs_embedded_p50, daemon_vs_embedded_throughput) = match (daemon, embedded) {
            (Some(d), Some(e)) => (
                Some(median_ratio(&d.round_p50_ms, &e.round_p50_ms)),
                Some(median_ratio(&d.round_ops, &e.round_ops)),
            ),
            _ => (None, None),
        };
        CaseResult {
            op: op.to_owned(),
            concurrency,
            ip_masq,
            p50_ratio: embedded.and_then(|e| e.p50_ratio),
            throughput_ratio: embedded.and_then(|e| e.throughput_ratio),
            sides,
            floor: None,
            floor_multiple: None,
            daemon_vs_embedded_p50,
            daemon_vs_embedded_throughput,
        }
    }

    /// Adds the kernel floor measured in the same rounds, and each trestle side's multiple of it.
    pub fn with_floor(mut self, floor: Option<SideCase>) -> CaseResult {
        if let Some(f) = floor.as_ref().filter(|f| !f.round_p50_ms.is_empty()) {
            for s in self.sides.iter_mut().filter(|s| s.side != REFERENCE) {
                s.floor_multiple = Some(median_ratio(&s.round_p50_ms, &f.round_p50_ms));
            }
        }
        self.floor_multiple = self.side(EMBEDDED).and_then(|s| s.floor_multiple);
        self.floor = floor;
        self
    }

    /// "c=8 ipMasq=true", for the targets.
    pub fn label(&self) -> String {
        format!("c={} ipMasq={}", self.concurrency, self.ip_masq)
    }

    /// The numbers of the side named `name`.
    pub fn side(&self, name: &str) -> Option<&SideCase> {
        self.sides.iter().find(|s| s.side == name)
    }
}

/// A ratio as "4.2x" with `decimals` decimals, or nothing.
fn times(r: Option<f64>, decimals: usize) -> String {
    r.map_or(String::new(), |r| format!("{r:.decimals$}x"))
}

/// Whether every value is at most `limit`, with the values: "met (c=1 ipMasq=true 0.98x, ...)" or "missed
/// (...)"; a smoke run only lists them.
fn verdict(values: &[(String, f64)], limit: f64, smoke: bool) -> String {
    if values.is_empty() {
        return "not measured".into();
    }
    let shown: Vec<String> = values
        .iter()
        .map(|(label, v)| format!("{label} {v:.2}x"))
        .collect();
    let word = if smoke {
        "not judged"
    } else if values.iter().all(|(_, v)| *v <= limit) {
        "met"
    } else {
        "missed"
    };
    format!("{word} ({})", shown.join(", "))
}

/// The median over rounds of `num[i] / den[i]`: every ratio of the report pairs numbers of the same round, so
/// drift between rounds cancels.
fn median_ratio(num: &[f64], den: &[f64]) -> f64 {
    let per_round: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
    median(&per_round)
}

/// The density run of one side.
#[derive(Debug, Clone, Serialize)]
pub struct DensityResult {
    /// The side.
    pub side: String,
    /// Pods.
    pub pods: usize,
    /// All ADDs, seconds.
    pub add_total_s: f64,
    /// All DELs, seconds.
    pub del_total_s: f64,
    /// Until the last link was gone, seconds.
    pub links_gone_s: f64,
    /// Distinct reserved addresses after the ADDs.
    pub distinct_addresses: usize,
    /// ADD p50, ms.
    pub add_p50_ms: f64,
}

/// Everything the bench measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// Kernel, CPUs, date.
    pub machine: String,
    /// Pods per batch.
    pub pods: usize,
    /// Rounds per case.
    pub rounds: usize,
    /// The cases.
    pub cases: Vec<CaseResult>,
    /// Peak resident memory (KiB) of one ADD: the largest `VmHWM` of the plugin and the processes it starts, per
    /// side.
    pub memory: Vec<(String, u64)>,
    /// The measured executables: size, link mode, exec cost.
    pub binaries: Vec<Binary>,
    /// Density runs.
    pub density: Vec<DensityResult>,
    /// Which IPAM modes of trestle ran.
    pub ipam: IpamMode,
    /// A smoke run: its numbers are not judged against any target.
    pub smoke: bool,
    /// `/proc/loadavg` when the bench started and when it ended (the machine may be shared).
    pub load: Vec<String>,
    /// Daemon mode: the trestled the bench ran.
    pub daemon: Option<DaemonRun>,
}

/// The trestled behind the daemon-mode side.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonRun {
    /// How it was started.
    pub command: String,
    /// Spawn until its first ready STATUS answer, ms.
    pub start_ms: f64,
    /// Its resident memory after every case and the density run (`VmRSS`, KiB).
    pub rss_kib: Option<u64>,
    /// The CPU time it used over the whole bench, seconds.
    pub cpu_s: Option<f64>,
    /// SIGTERM until it exited, ms.
    pub stop_ms: f64,
}

/// The first three fields of `/proc/loadavg` ("0.41 0.93 0.60").
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Kernel, CPUs and CPU model.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("Linux {}, {cpus} CPUs ({model})", kernel.trim())
}

/// One measured executable.
#[derive(Debug, Clone, Serialize)]
pub struct Binary {
    /// `trestle`, `reference bridge`, ...
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// C library and link mode (`musl static-pie`, `glibc dynamic`, ...).
    pub link: String,
    /// Median wall time of one exec answering `VERSION`, for the main plugin of each side.
    pub exec_ms: Option<f64>,
}

/// Execs per binary for the exec cost.
const EXEC_RUNS: usize = 100;

impl Binary {
    fn measure(name: String, path: &Path, exec: bool) -> Option<Binary> {
        Some(Binary {
            bytes: std::fs::metadata(path).ok()?.len(),
            link: binary::link_mode(path),
            exec_ms: exec
                .then(|| binary::exec_cost_ms(path, EXEC_RUNS))
                .flatten(),
            name,
        })
    }
}

impl Report {
    /// An empty report for `opts`, with what it says about the binaries (measured here: ~0.5 s).
    pub fn new(opts: &Options) -> Report {
        let mut names = vec!["trestle", "trestle-ipam"];
        if opts.ipam.daemon() {
            names.push("trestled");
        }
        let mut binaries: Vec<Binary> = names
            .iter()
            .filter_map(|b| Binary::measure(b.to_string(), &opts.bin_dir.join(b), *b == "trestle"))
            .collect();
        if let Some(r) = &opts.reference {
            for b in ["bridge", "host-local"] {
                binaries.extend(Binary::measure(
                    format!("reference {b}"),
                    &r.join(b),
                    b == "bridge",
                ));
            }
        }
        Report {
            command: opts.command.clone(),
            machine: machine(),
            pods: opts.pods,
            rounds: opts.rounds,
            cases: Vec::new(),
            memory: Vec::new(),
            binaries,
            density: Vec::new(),
            ipam: opts.ipam,
            smoke: opts.smoke,
            load: vec![load_average()],
            daemon: None,
        }
    }

    /// Writes `results.md`, `results.json` and `latency.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("results.json"), json)?;
        std::fs::write(dir.join("latency.svg"), self.svg())
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# trestle bench\n\n- command: `{}`\n- machine: {}",
            self.command, self.machine
        );
        let _ = writeln!(
            s,
            "- {} pods per batch, {} rounds per case, sides alternating; IPAM of trestle: {}",
            self.pods,
            self.rounds,
            self.ipam.describe()
        );
        let _ = writeln!(
            s,
            "- load average (1, 5, 15 min) at start and end (the end counts the bench's own processes): {}\n",
            self.load.join(" / ")
        );
        s.push_str("| op | conc | ipMasq | side | p50 ms | p99 ms | max ms | ops/s | links gone ms | p50 ratio ref/side | throughput ratio side/ref |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for c in &self.cases {
            for side in &c.sides {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} |",
                    c.op,
                    c.concurrency,
                    c.ip_masq,
                    side.side,
                    side.latency.p50_ms,
                    side.latency.p99_ms,
                    side.latency.max_ms,
                    side.ops_per_sec,
                    side.links_gone_ms.map_or("".into(), |g| format!("{g:.0}")),
                    times(side.p50_ratio, 1),
                    times(side.throughput_ratio, 1),
                );
            }
        }
        self.floor_markdown(&mut s);
        self.daemon_markdown(&mut s);
        s.push_str(
            "\nPeak memory of one ADD (the largest VmHWM of the plugin and the processes it starts, each read at \
             its exit; trestle-daemon: without trestled):\n",
        );
        for (side, kib) in &self.memory {
            let _ = writeln!(s, "- {side}: {kib} KiB");
        }
        if let Some(d) = &self.daemon {
            let _ = writeln!(
                s,
                "- trestled (the daemon itself, VmRSS at the end): {}",
                d.rss_kib.map_or("unknown".into(), |k| format!("{k} KiB"))
            );
        }
        s.push_str("\nBinaries (size, how linked, one `VERSION` exec: median of 100):\n");
        for b in &self.binaries {
            let exec = b
                .exec_ms
                .map_or(String::new(), |ms| format!(", exec {ms:.2} ms"));
            let _ = writeln!(
                s,
                "- {}: {:.1} MiB, {}{exec}",
                b.name,
                b.bytes as f64 / 1048576.0,
                b.link
            );
        }
        if !self.density.is_empty() {
            s.push_str("\n| density | pods | all ADDs s | all DELs s | links gone s | distinct addresses | ADD p50 ms |\n|---|---|---|---|---|---|---|\n");
            for d in &self.density {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} |",
                    d.side,
                    d.pods,
                    d.add_total_s,
                    d.del_total_s,
                    d.links_gone_s,
                    d.distinct_addresses,
                    d.add_p50_ms
                );
            }
        }
        s
    }

    /// The kernel floor of every concurrency-1 case and each trestle side's multiple of it.
    fn floor_markdown(&self, s: &mut String) {
        let rows: Vec<(&CaseResult, &SideCase, &SideCase)> = self
            .cases
            .iter()
            .filter_map(|c| Some((c, c.floor.as_ref()?)))
            .flat_map(|(c, f)| {
                c.sides
                    .iter()
                    .filter(|t| t.floor_multiple.is_some())
                    .map(move |t| (c, f, t))
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        s.push_str("\nKernel floor: the same netlink work for one pod in a loop in one process (no exec, no IPAM), ");
        s.push_str("measured in every round of the case after the same pause as the sides.\n\n");
        s.push_str("| op | ipMasq of the case | floor p50 ms | floor p99 ms | side | side p50 ms | side / floor (median of rounds) |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for (c, f, t) in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} | {} | {:.3} | {} |",
                c.op,
                c.ip_masq,
                f.latency.p50_ms,
                f.latency.p99_ms,
                t.side,
                t.latency.p50_ms,
                times(t.floor_multiple, 2),
            );
        }
    }

    /// Daemon mode against embedded mode, case by case, and the targets for it.
    fn daemon_markdown(&self, s: &mut String) {
        let cases: Vec<(&CaseResult, &SideCase, &SideCase)> = self
            .cases
            .iter()
            .filter_map(|c| Some((c, c.side(EMBEDDED)?, c.side(DAEMON)?)))
            .collect();
        if self.daemon.is_none() && cases.is_empty() {
            return;
        }
        s.push_str("\n## IPAM in daemon mode (trestle-daemon) against embedded (trestle)\n\n");
        if let Some(d) = &self.daemon {
            let _ = writeln!(
                s,
                "trestle-daemon is the same `trestle` plugin with `ipam.daemon` naming a trestled the bench started \
                 itself (ready {:.1} ms after spawn; stopped with SIGTERM at the end, exit after {:.1} ms; CPU used \
                 over the whole bench {}): `{}`. The reuse delay is 0 because the bench deletes and re-adds the same \
                 pods within a second, round after round; embedded mode (host-local's scheme) has no reuse delay \
                 either, so both modes hand out addresses alike.\n",
                d.start_ms,
                d.stop_ms,
                d.cpu_s.map_or("unknown".into(), |c| format!("{c:.2} s")),
                d.command
            );
        }
        if cases.is_empty() {
            return;
        }
        s.push_str("| op | conc | ipMasq | embedded p50 ms | daemon p50 ms | daemon/embedded p50 | embedded ops/s | daemon ops/s | daemon/embedded throughput | daemon / floor |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for (c, e, d) in &cases {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {} | {} |",
                c.op,
                c.concurrency,
                c.ip_masq,
                e.latency.p50_ms,
                d.latency.p50_ms,
                times(c.daemon_vs_embedded_p50, 2),
                e.ops_per_sec,
                d.ops_per_sec,
                times(c.daemon_vs_embedded_throughput, 2),
                times(d.floor_multiple, 2),
            );
        }
        s.push_str("\nRatios are medians of per-round ratios (daemon/embedded p50 below 1: daemon mode is faster).\n");
        let adds = || cases.iter().filter(|(c, ..)| c.op == "ADD");
        let floor: Vec<(String, f64)> = adds()
            .filter_map(|(c, _, d)| Some((c.label(), d.floor_multiple?)))
            .collect();
        let embedded: Vec<(String, f64)> = adds()
            .filter_map(|(c, ..)| Some((c.label(), c.daemon_vs_embedded_p50?)))
            .collect();
        let _ = writeln!(
            s,
            "\nTargets{}:\n\n- daemon-mode ADD p50 within 2x of the kernel floor: {}\n- daemon-mode ADD p50 no slower than \
             embedded at every concurrency: {}",
            if self.smoke {
                " (smoke run: a few pods, one round; not judged)"
            } else {
                ""
            },
            verdict(&floor, 2.0, self.smoke),
            verdict(&embedded, 1.0, self.smoke),
        );
    }

    /// Latency distributions as horizontal strips on a log axis: min..max line, p25..p75 box, p50 tick, p99 dot.
    pub fn svg(&self) -> String {
        let rows: Vec<(String, &SideCase)> = self
            .cases
            .iter()
            .flat_map(|c| {
                c.sides.iter().chain(&c.floor).map(move |s| {
                    (
                        format!("{} c={} masq={} {}", c.op, c.concurrency, c.ip_masq, s.side),
                        s,
                    )
                })
            })
            .collect();
        let (left, width, row_h) = (260.0, 600.0, 22.0);
        let height = 60.0 + row_h * rows.len() as f64;
        let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
        let x = |ms: f64| left + (ms.max(0.1).log10() - lo) / (hi - lo) * width;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
            left + width + 20.0
        );
        for decade in [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0] {
            let _ = writeln!(s, "<line x1=\"{0}\" x2=\"{0}\" y1=\"20\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0}\" y=\"14\" text-anchor=\"middle\">{decade} ms</text>", x(decade), height - 20.0);
        }
        for (i, (label, side)) in rows.iter().enumerate() {
            let y = 30.0 + row_h * i as f64;
            let v = side.sorted_ms();
            let q = |p| super::stats::quantile(&v, p);
            let color = match side.side.as_str() {
                EMBEDDED => "#1f77b4",
                DAEMON => "#2ca02c",
                "floor" => "#7f7f7f",
                _ => "#d62728",
            };
            let _ = writeln!(s, "<text x=\"4\" y=\"{}\">{label}</text>", y + 12.0);
            let _ = writeln!(
                s,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{color}\"/>",
                x(q(0.0)),
                x(q(1.0)),
                y + 8.0,
                y + 8.0
            );
            let _ = writeln!(s, "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"16\" fill=\"{color}\" fill-opacity=\"0.3\" stroke=\"{color}\"/>", x(q(0.25)), (x(q(0.75)) - x(q(0.25))).max(1.0));
            let _ = writeln!(s, "<line x1=\"{0}\" x2=\"{0}\" y1=\"{y}\" y2=\"{1}\" stroke=\"black\" stroke-width=\"2\"/>", x(q(0.5)), y + 16.0);
            let _ = writeln!(
                s,
                "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{color}\"/>",
                x(q(0.99)),
                y + 8.0
            );
        }
        let _ = writeln!(s, "<text x=\"4\" y=\"{}\">box: p25-p75, bar: p50, dot: p99, line: min-max (log scale)</text>", height - 4.0);
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(name: &str, rounds: &[&[u64]]) -> SideCase {
        let mut s = SideCase::new(name);
        for r in rounds {
            let lat: Vec<Duration> = r.iter().map(|&us| Duration::from_micros(us)).collect();
            s.record(&lat, lat.iter().sum(), None);
        }
        s
    }

    fn report(cases: Vec<CaseResult>, ipam: IpamMode, smoke: bool) -> Report {
        Report {
            command: "bench".into(),
            machine: "m".into(),
            pods: 3,
            rounds: 3,
            cases,
            memory: Vec::new(),
            binaries: Vec::new(),
            density: Vec::new(),
            ipam,
            smoke,
            load: vec!["0.10 0.20 0.30".into()],
            daemon: None,
        }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let trestle = side("trestle", &[&[1000, 2000, 3000], &[4000], &[1000]]);
        let reference = side("reference", &[&[20_000], &[20_000], &[30_000]]);
        let floor = side("floor", &[&[500], &[1000], &[250]]);
        let c = CaseResult::new("ADD", 1, false, vec![trestle, reference]).with_floor(Some(floor));
        // Per round: 20/2, 20/4, 30/1 → median 10; trestle/floor: 2/0.5, 4/1, 1/0.25 → 4.
        assert_eq!(c.p50_ratio, Some(10.0));
        assert_eq!(c.floor_multiple, Some(4.0));
        assert_eq!(c.side("reference").unwrap().p50_ratio, None);
        let md = report(vec![c], IpamMode::Embedded, false).markdown();
        assert!(
            md.contains("| ADD | false | 0.500 | 1.000 | trestle | 2.000 | 4.00x |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| ADD | 1 | false | trestle | 2.00 | 4.00 | 4.00 | 500 |  | 10.0x | 10.0x |"
            ),
            "{md}"
        );
        assert!(!md.contains("daemon mode"), "{md}");
    }

    #[test]
    fn cases_without_a_floor_have_no_multiple() {
        let c = CaseResult::new("DEL", 8, true, vec![side("trestle", &[&[1000]])]).with_floor(None);
        assert_eq!((c.p50_ratio, c.floor_multiple), (None, None));
        assert_eq!(c.daemon_vs_embedded_p50, None);
    }

    #[test]
    fn daemon_mode_is_compared_with_embedded_reference_and_floor() {
        let embedded = side("trestle", &[&[2000], &[2000], &[4000]]);
        let daemon = side("trestle-daemon", &[&[1000], &[3000], &[2000]]);
        let reference = side("reference", &[&[20_000], &[30_000], &[20_000]]);
        let floor = side("floor", &[&[500], &[1000], &[1000]]);
        let add = CaseResult::new("ADD", 1, true, vec![embedded, daemon, reference])
            .with_floor(Some(floor));
        // daemon/embedded per round: 0.5, 1.5, 0.5 → 0.5; daemon/floor: 2, 3, 2 → 2; ref/daemon: 20, 10, 10 → 10.
        assert_eq!(add.daemon_vs_embedded_p50, Some(0.5));
        // ops/s are the inverse here (one op per round): 2, 0.667, 2 → 2.
        assert_eq!(add.daemon_vs_embedded_throughput, Some(2.0));
        let d = add.side("trestle-daemon").unwrap();
        assert_eq!((d.floor_multiple, d.p50_ratio), (Some(2.0), Some(10.0)));
        // The embedded side's numbers stay where they were.
        assert_eq!(add.p50_ratio, Some(10.0));
        assert_eq!(add.floor_multiple, Some(4.0));

        let slow = CaseResult::new(
            "ADD",
            8,
            true,
            vec![
                side("trestle", &[&[1000]]),
                side("trestle-daemon", &[&[1100]]),
            ],
        );
        let md = report(vec![add.clone(), slow.clone()], IpamMode::Both, false).markdown();
        assert!(
            md.contains("| ADD | 1 | true | 2.00 | 2.00 | 0.50x | 500 | 500 | 2.00x | 2.00x |"),
            "{md}"
        );
        assert!(
            md.contains("| ADD | true | 1.000 | 1.000 | trestle-daemon | 2.000 | 2.00x |"),
            "{md}"
        );
        assert!(
            md.contains("within 2x of the kernel floor: met (c=1 ipMasq=true 2.00x)"),
            "{md}"
        );
        assert!(
            md.contains(
                "no slower than embedded at every concurrency: missed (c=1 ipMasq=true 0.50x, c=8 ipMasq=true 1.10x)"
            ),
            "{md}"
        );
        let smoke = report(vec![add, slow], IpamMode::Both, true).markdown();
        assert!(
            smoke.contains("not judged (c=1 ipMasq=true 2.00x)"),
            "{smoke}"
        );
        assert!(!smoke.contains("missed"), "{smoke}");
    }

    #[test]
    fn verdicts_and_ratios_format() {
        assert_eq!(times(Some(4.0), 1), "4.0x");
        assert_eq!(times(Some(0.456), 2), "0.46x");
        assert_eq!(times(None, 2), "");
        assert_eq!(verdict(&[], 2.0, false), "not measured");
        let v = [("c=1".to_string(), 2.0), ("c=8".to_string(), 1.5)];
        assert_eq!(verdict(&v, 2.0, false), "met (c=1 2.00x, c=8 1.50x)");
        assert_eq!(verdict(&v, 1.9, false), "missed (c=1 2.00x, c=8 1.50x)");
    }
}
