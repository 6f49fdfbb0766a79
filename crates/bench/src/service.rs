//! `trestlectl bench --ipam-service`: trestled on its own, through its gRPC API, as many plugins would use it at
//! once. A trestled the bench starts (from the bin dir, `--reuse-delay 0`, no host-local import, metrics on a free
//! local port) on one large network; then:
//!
//! 1. throughput: `clients` threads, each with its own connection (the plugin's client, `trestle_ipam::daemon`),
//!    do Allocate + Release pairs for `seconds`; pairs per second, and the latency of each call as the client sees
//!    it, Allocate and Release apart; store commits per request from `trestle_ipam_store_commits`;
//! 2. memory: `fill` allocations held at once, then trestled's `VmRSS`;
//! 3. restart: SIGTERM, wait, and a new trestled on the same store, timed from spawn to the first STATUS that says
//!    ready (the median of `restarts`); after each, List must show every allocation of the fill.

use super::report::{load_average, machine};
use super::stats::{median, summarise, Summary};
use super::trestled::{process_cpu_seconds, Trestled};
use super::Error;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use trestle_ipam::daemon::DaemonClient;
use trestle_ipam_api::convert::{allocate_request, PodMeta};
use trestle_ipam_api::v1;
use trestle_ipam_core::{Attachment, DaemonSettings, IpamConfig, Range, RangeSet};

/// The network of the service bench.
pub const NETWORK: &str = "servicebench";
/// Its range: large, so no address is ever short.
pub const SUBNET: &str = "10.128.0.0/10";

/// The targets of the issue.
pub mod targets {
    /// Allocate + Release pairs per second, at least.
    pub const PAIRS_PER_SEC: f64 = 20_000.0;
    /// trestled's VmRSS holding the fill, at most (KiB).
    pub const RSS_KIB: u64 = 32 * 1024;
    /// Spawn to the first ready STATUS after a restart, at most (ms, median).
    pub const RESTART_MS: f64 = 200.0;
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Directory holding `trestled`.
    pub bin_dir: PathBuf,
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// How long the clients run, seconds.
    pub seconds: f64,
    /// Allocations held for the memory and restart measurements.
    pub fill: usize,
    /// Restarts timed.
    pub restarts: usize,
    /// Output folder (`ipam-service.md`, `ipam-service.json`).
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
    /// A smoke run: numbers are not judged.
    pub smoke: bool,
}

/// CPU time over the throughput run, seconds, from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// Wall time of the run.
    pub wall_s: f64,
    /// CPUs of the machine.
    pub cpus: usize,
    /// trestled's user + system time.
    pub trestled_s: f64,
    /// The bench process's (the clients').
    pub clients_s: f64,
    /// Every other process's and the kernel's (busy time of `/proc/stat` less the two above).
    pub others_s: f64,
}

/// One restart.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// SIGTERM until the old daemon exited, ms.
    pub stop_ms: f64,
    /// Spawn until the new one's first ready STATUS, ms.
    pub ready_ms: f64,
    /// Allocations of the fill the new daemon lists.
    pub found: usize,
}

/// Everything the service bench measured.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    /// The command line.
    pub command: String,
    /// Kernel, CPUs.
    pub machine: String,
    /// `/proc/loadavg` at the start and at the end.
    pub load: Vec<String>,
    /// How trestled was started.
    pub trestled: String,
    /// Spawn until the first ready STATUS of the first start, ms.
    pub first_start_ms: f64,
    /// Clients.
    pub clients: usize,
    /// Wall time of the throughput run, seconds.
    pub seconds: f64,
    /// Allocate + Release pairs done.
    pub pairs: usize,
    /// Pairs per second.
    pub pairs_per_sec: f64,
    /// Latency of one Allocate.
    pub allocate: Summary,
    /// Latency of one Release.
    pub release: Summary,
    /// Where the CPU went during the throughput run.
    pub cpu: Option<CpuUse>,
    /// Store commits per request (Allocate or Release) during the throughput run.
    pub commits_per_request: Option<f64>,
    /// trestled's VmRSS before any request, KiB.
    pub rss_idle_kib: Option<u64>,
    /// After the throughput run (nothing held), KiB.
    pub rss_after_pairs_kib: Option<u64>,
    /// Allocations of the fill.
    pub fill: usize,
    /// Wall time of the fill, seconds.
    pub fill_s: f64,
    /// Store commits per allocation of the fill.
    pub commits_per_fill_allocation: Option<f64>,
    /// VmRSS holding the fill, KiB.
    pub rss_filled_kib: Option<u64>,
    /// VmRSS of the first restarted daemon (the fill loaded from the store), KiB.
    pub rss_restarted_kib: Option<u64>,
    /// The restarts.
    pub restarts: Vec<Restart>,
    /// Median of `ready_ms`.
    pub restart_ms_median: f64,
    /// Whether every restart listed every allocation of the fill.
    pub all_present: bool,
    /// Not judged.
    pub smoke: bool,
}

/// The bench network's IPAM config.
fn config() -> IpamConfig {
    let range = Range::new(SUBNET.parse().expect("a valid subnet"), None, None, None)
        .expect("a valid range");
    IpamConfig {
        network: NETWORK.into(),
        range_sets: vec![RangeSet::new(vec![range]).expect("one range")],
        routes: Vec::new(),
        data_dir: Default::default(),
        dns: Default::default(),
        requested: Vec::new(),
        daemon: None,
    }
}

fn peer() -> v1::Peer {
    trestle_ipam_api::version::peer("trestlectl-bench")
}

fn call_error(what: &str) -> impl FnOnce(trestle_ipam::daemon::CallError) -> Error + '_ {
    move |source| Error::Service {
        what: what.to_owned(),
        source: Box::new(source),
    }
}

/// A client of the daemon with one Allocate and one Release.
struct Client {
    daemon: DaemonClient,
    cfg: Arc<IpamConfig>,
}

impl Client {
    fn new(settings: &DaemonSettings, cfg: Arc<IpamConfig>) -> Client {
        Client {
            daemon: DaemonClient::new(settings.clone()),
            cfg,
        }
    }

    /// Connects (STATUS), so the timed calls find the connection made.
    fn connect(&mut self) -> Result<(), Error> {
        self.daemon
            .status(&v1::StatusRequest {
                client: Some(peer()),
                network: String::new(),
            })
            .map(drop)
            .map_err(call_error("STATUS"))
    }

    /// Allocates for container `id`; returns the address (without its prefix).
    fn allocate(&mut self, id: &str) -> Result<String, Error> {
        let req = allocate_request(
            &self.cfg,
            &Attachment::new(id, "eth0"),
            &PodMeta::default(),
            ("", 0),
            peer(),
        );
        let reply = self.daemon.allocate(&req).map_err(call_error("Allocate"))?;
        match reply.addresses.as_slice() {
            [one] => Ok(one.address.split('/').next().unwrap_or_default().to_owned()),
            other => Err(Error::ServiceCheck(format!(
                "Allocate for {id} answered {} addresses",
                other.len()
            ))),
        }
    }

    /// Releases container `id`; checks it freed exactly `ip`.
    fn release(&mut self, id: &str, ip: &str) -> Result<(), Error> {
        let req = v1::ReleaseRequest {
            client: Some(peer()),
            network: NETWORK.into(),
            attachment: Some(v1::Attachment {
                container_id: id.into(),
                ifname: "eth0".into(),
            }),
            queued_at_ns: 0,
        };
        let reply = self.daemon.release(&req).map_err(call_error("Release"))?;
        if reply.released != [ip] {
            return Err(Error::ServiceCheck(format!(
                "Release of {id} freed {:?}, not {ip}",
                reply.released
            )));
        }
        Ok(())
    }
}

/// The latencies of one client's pairs.
#[derive(Default)]
struct Pairs {
    allocate: Vec<Duration>,
    release: Vec<Duration>,
}

/// `clients` threads run `work(client, thread)` together once all have connected; returns their results and the
/// wall time from the common start to the last one's end.
fn together<T: Send>(
    settings: &DaemonSettings,
    clients: usize,
    work: impl Fn(&mut Client, usize) -> Result<T, Error> + Sync,
) -> Result<(Vec<T>, Duration), Error> {
    let cfg = Arc::new(config());
    let barrier = Barrier::new(clients + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                let (cfg, barrier, work) = (cfg.clone(), &barrier, &work);
                s.spawn(move || {
                    let mut client = Client::new(settings, cfg);
                    let connected = client.connect();
                    barrier.wait();
                    connected?;
                    work(&mut client, t)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<Result<T, Error>> = handles
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect();
        let wall = start.elapsed();
        Ok((
            results.into_iter().collect::<Result<Vec<T>, Error>>()?,
            wall,
        ))
    })
}

/// Busy time of all CPUs (clock ticks) from the first line of `/proc/stat`: user, nice, system, irq, softirq and
/// steal (idle and iowait left out; guest time is already in user).
pub fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum())
}

fn busy_seconds() -> Option<f64> {
    let ticks = busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// CPU readings at one moment: the machine's busy time, trestled's, the bench's.
fn cpu_now(d: &Trestled) -> Option<(f64, f64, f64)> {
    Some((
        busy_seconds()?,
        d.cpu_seconds()?,
        process_cpu_seconds("/proc/self/stat")?,
    ))
}

/// Runs the service bench and writes `ipam-service.md` and `ipam-service.json` into `out`.
pub fn run(opts: &ServiceOptions) -> Result<ServiceReport, Error> {
    let work = std::env::temp_dir().join(format!("trestle-ipam-bench-{}", std::process::id()));
    let result = run_in(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&opts.out)?;
        std::fs::write(opts.out.join("ipam-service.md"), report.markdown())?;
        let json = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
        std::fs::write(opts.out.join("ipam-service.json"), json)
    };
    write().map_err(|source| Error::WriteReport {
        path: opts.out.clone(),
        source,
    })?;
    Ok(report)
}

fn run_in(opts: &ServiceOptions, work: &std::path::Path) -> Result<ServiceReport, Error> {
    let load_start = load_average();
    let mut d = Trestled::new(
        opts.bin_dir.join("trestled"),
        work,
        &["--reuse-delay", "0", "--metrics-addr", "127.0.0.1:0"],
    )?;
    let first_start = d.start()?;
    let settings = d.settings();
    let rss_idle_kib = d.rss_kib();
    let clients = opts.clients.max(1);

    // 1. Throughput.
    eprintln!(
        "bench: {clients} clients, Allocate + Release pairs for {} s",
        opts.seconds
    );
    let commits_before = d.metric("trestle_ipam_store_commits");
    let cpu_before = cpu_now(&d);
    let run_for = Duration::from_secs_f64(opts.seconds.max(0.01));
    let (per_client, wall) = together(&settings, clients, |c, t| {
        let mut p = Pairs::default();
        let end = Instant::now() + run_for;
        let mut i = 0usize;
        while Instant::now() < end {
            let id = format!("pair-{t}-{i}");
            let start = Instant::now();
            let ip = c.allocate(&id)?;
            let allocated = Instant::now();
            c.release(&id, &ip)?;
            p.allocate.push(allocated - start);
            p.release.push(allocated.elapsed());
            i += 1;
        }
        Ok(p)
    })?;
    let cpu_after = cpu_now(&d);
    let commits_after = d.metric("trestle_ipam_store_commits");
    let allocate: Vec<Duration> = per_client.iter().flat_map(|p| p.allocate.clone()).collect();
    let release: Vec<Duration> = per_client.iter().flat_map(|p| p.release.clone()).collect();
    let pairs = allocate.len();
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| {
        let (trestled_s, clients_s) = (a.1 - b.1, a.2 - b.2);
        CpuUse {
            wall_s: wall.as_secs_f64(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            trestled_s,
            clients_s,
            others_s: ((a.0 - b.0) - trestled_s - clients_s).max(0.0),
        }
    });
    let commits_per_request = commits_before
        .zip(commits_after)
        .map(|(b, a)| per(a - b, (2 * pairs) as f64));
    let rss_after_pairs_kib = d.rss_kib();

    // 2. Memory, holding the fill.
    eprintln!("bench: filling trestled with {} allocations", opts.fill);
    let share = |t: usize| (t..opts.fill).step_by(clients).collect::<Vec<_>>();
    let commits_before = d.metric("trestle_ipam_store_commits");
    let (held, fill_wall) = together(&settings, clients, |c, t| {
        share(t)
            .into_iter()
            .map(|n| Ok((format!("fill-{n}"), c.allocate(&format!("fill-{n}"))?)))
            .collect::<Result<Vec<_>, Error>>()
    })?;
    let commits_after = d.metric("trestle_ipam_store_commits");
    let held: HashSet<(String, String)> = held.into_iter().flatten().collect();
    let distinct: HashSet<&String> = held.iter().map(|(_, ip)| ip).collect();
    if distinct.len() != opts.fill {
        return Err(Error::ServiceCheck(format!(
            "{} distinct addresses for {} allocations",
            distinct.len(),
            opts.fill
        )));
    }
    let commits_per_fill_allocation = commits_before
        .zip(commits_after)
        .map(|(b, a)| per(a - b, opts.fill as f64));
    let rss_filled_kib = d.rss_kib();

    // 3. Restarts on the same store.
    let mut restarts = Vec::new();
    let mut rss_restarted_kib = None;
    for r in 0..opts.restarts {
        eprintln!("bench: restart {}/{}", r + 1, opts.restarts);
        let stop = d.stop()?;
        let ready = d.start()?;
        if r == 0 {
            rss_restarted_kib = d.rss_kib();
        }
        let found = listed(&settings)?
            .iter()
            .filter(|a| held.contains(*a))
            .count();
        restarts.push(Restart {
            stop_ms: ms(stop),
            ready_ms: ms(ready),
            found,
        });
    }
    let trestled = d.command_line();
    d.stop()?;
    let restart_ms: Vec<f64> = restarts.iter().map(|r| r.ready_ms).collect();
    Ok(ServiceReport {
        command: opts.command.clone(),
        machine: machine(),
        load: vec![load_start, load_average()],
        trestled,
        first_start_ms: ms(first_start),
        clients,
        seconds: wall.as_secs_f64(),
        pairs,
        pairs_per_sec: per(pairs as f64, wall.as_secs_f64()),
        allocate: summarise(&allocate),
        release: summarise(&release),
        cpu,
        commits_per_request,
        rss_idle_kib,
        rss_after_pairs_kib,
        fill: opts.fill,
        fill_s: fill_wall.as_secs_f64(),
        commits_per_fill_allocation,
        rss_filled_kib,
        rss_restarted_kib,
        all_present: restarts.iter().all(|r| r.found == opts.fill),
        restart_ms_median: median(&restart_ms),
        restarts,
        smoke: opts.smoke,
    })
}

/// Every (container ID, address) the daemon lists on the bench network.
fn listed(settings: &DaemonSettings) -> Result<Vec<(String, String)>, Error> {
    let req = v1::ListRequest {
        client: Some(peer()),
        network: NETWORK.into(),
        ..Default::default()
    };
    let reply = DaemonClient::new(settings.clone())
        .list(&req)
        .map_err(call_error("List"))?;
    Ok(reply
        .allocations
        .into_iter()
        .map(|a| (a.attachment.unwrap_or_default().container_id, a.address))
        .collect())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `n / d`, 0 when `d` is 0.
fn per(n: f64, d: f64) -> f64 {
    if d > 0.0 {
        n / d
    } else {
        0.0
    }
}

/// "met" or "missed" (or, in a smoke run, "not judged").
fn judged(ok: bool, smoke: bool) -> &'static str {
    match (smoke, ok) {
        (true, _) => "not judged (smoke)",
        (false, true) => "met",
        (false, false) => "missed",
    }
}

fn kib(k: Option<u64>) -> String {
    k.map_or("unknown".into(), |k| {
        format!("{k} KiB ({:.1} MiB)", k as f64 / 1024.0)
    })
}

impl ServiceReport {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# trestled service bench\n\n- command: `{}`\n- machine: {}\n- load average (1, 5, 15 min) at start and \
             end (the end counts the bench's own load): {}\n- trestled: `{}` (reuse delay 0: every pair frees its address at once, as host-local would; \
             metrics on a free local port), ready {:.1} ms after spawn\n- network `{NETWORK}`, one range {SUBNET}\n",
            self.command,
            self.machine,
            self.load.join(" / "),
            self.trestled,
            self.first_start_ms,
        );
        let _ = writeln!(
            s,
            "## Throughput\n\n{} clients, each a thread with its own connection (trestle-ipam's daemon client, as the \
             plugin uses it), Allocate then Release of a new container ID, for {:.2} s: **{} pairs, {:.0} pairs/s** \
             (target ≥ {:.0}: {}).\n",
            self.clients,
            self.seconds,
            self.pairs,
            self.pairs_per_sec,
            targets::PAIRS_PER_SEC,
            judged(self.pairs_per_sec >= targets::PAIRS_PER_SEC, self.smoke),
        );
        s.push_str(
            "| call | n | p50 ms | p99 ms | max ms | mean ms |\n|---|---|---|---|---|---|\n",
        );
        for (name, l) in [("Allocate", &self.allocate), ("Release", &self.release)] {
            let _ = writeln!(
                s,
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                l.n, l.p50_ms, l.p99_ms, l.max_ms, l.mean_ms
            );
        }
        s.push_str("\nLatency is the client's: from the call until its reply is decoded, on a machine whose CPUs the clients share with the daemon.\n");
        if let Some(c) = &self.cpu {
            let pct = |x: f64| 100.0 * x / (c.wall_s * c.cpus.max(1) as f64).max(1e-9);
            let _ = writeln!(
                s,
                "\nCPU during the run ({} CPUs, {:.2} s): trestled {:.2} s ({:.0}% of the machine, {:.1} µs per \
                 pair), the clients {:.2} s ({:.0}%), everything else {:.2} s ({:.0}%).",
                c.cpus,
                c.wall_s,
                c.trestled_s,
                pct(c.trestled_s),
                per(c.trestled_s * 1e6, self.pairs as f64),
                c.clients_s,
                pct(c.clients_s),
                c.others_s,
                pct(c.others_s),
            );
        }
        let _ = writeln!(
            s,
            "\nStore commits per request (`trestle_ipam_store_commits`): {} during the run, {} per allocation of the fill.",
            self.commits_per_request
                .map_or("unknown".into(), |c| format!("{c:.3}")),
            self.commits_per_fill_allocation
                .map_or("unknown".into(), |c| format!("{c:.3}")),
        );
        let _ = writeln!(
            s,
            "\n## Memory\n\ntrestled's VmRSS: {} idle, {} after the run, **{} holding {} allocations** (target ≤ {} MiB: \
             {}; the fill took {:.2} s with {} clients), {} after a restart that loaded them from the store.",
            kib(self.rss_idle_kib),
            kib(self.rss_after_pairs_kib),
            kib(self.rss_filled_kib),
            self.fill,
            targets::RSS_KIB / 1024,
            judged(
                self.rss_filled_kib.is_some_and(|k| k <= targets::RSS_KIB),
                self.smoke
            ),
            self.fill_s,
            self.clients,
            kib(self.rss_restarted_kib),
        );
        let _ = writeln!(
            s,
            "\n## Restart\n\nSIGTERM, wait for the exit, start a new trestled on the same store; ready is spawn until \
             its first STATUS answer that says ready (polled every 0.5 ms). **Median {:.1} ms** over {} restarts \
             (target ≤ {:.0} ms: {}); every restart listed all {} allocations: {}.\n",
            self.restart_ms_median,
            self.restarts.len(),
            targets::RESTART_MS,
            judged(
                !self.restarts.is_empty() && self.restart_ms_median <= targets::RESTART_MS,
                self.smoke
            ),
            self.fill,
            if self.all_present { "yes" } else { "**no**" },
        );
        s.push_str("| restart | stop ms | ready ms | allocations listed |\n|---|---|---|---|\n");
        for (i, r) in self.restarts.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} | {} |",
                i + 1,
                r.stop_ms,
                r.ready_ms,
                r.found
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_idle_and_iowait_out() {
        let stat = "cpu  100 5 50 1000 40 3 2 7 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(busy_ticks(stat), Some(100 + 5 + 50 + 3 + 2 + 7));
        assert_eq!(busy_ticks("intr 1 2 3\n"), None);
    }

    #[test]
    fn rates_and_verdicts() {
        assert_eq!(per(50.0, 2.0), 25.0);
        assert_eq!(per(5.0, 0.0), 0.0);
        assert_eq!(judged(true, false), "met");
        assert_eq!(judged(false, false), "missed");
        assert_eq!(judged(false, true), "not judged (smoke)");
        assert_eq!(kib(Some(2048)), "2048 KiB (2.0 MiB)");
        assert_eq!(kib(None), "unknown");
    }

    #[test]
    fn the_bench_network_is_one_large_range() {
        let cfg = config();
        assert_eq!(cfg.range_sets.len(), 1);
        assert_eq!(cfg.range_sets[0].to_string().split('-').count(), 2);
    }

    #[test]
    fn the_report_states_every_target() {
        let lat = summarise(&[Duration::from_micros(500), Duration::from_micros(900)]);
        let mut r = ServiceReport {
            command: "trestlectl bench --ipam-service".into(),
            machine: "m".into(),
            load: vec!["1.00 0.50 0.20".into(), "2.00 1.00 0.40".into()],
            trestled: "trestled --reuse-delay 0".into(),
            first_start_ms: 12.0,
            clients: 32,
            seconds: 5.0,
            pairs: 110_000,
            pairs_per_sec: 22_000.0,
            allocate: lat.clone(),
            release: lat,
            cpu: Some(CpuUse {
                wall_s: 5.0,
                cpus: 2,
                trestled_s: 4.4,
                clients_s: 5.0,
                others_s: 0.5,
            }),
            commits_per_request: Some(0.25),
            rss_idle_kib: Some(4096),
            rss_after_pairs_kib: Some(8192),
            fill: 10_000,
            fill_s: 0.5,
            commits_per_fill_allocation: Some(0.125),
            rss_filled_kib: Some(40 * 1024),
            rss_restarted_kib: Some(10 * 1024),
            restarts: vec![
                Restart {
                    stop_ms: 3.0,
                    ready_ms: 150.0,
                    found: 10_000,
                },
                Restart {
                    stop_ms: 3.0,
                    ready_ms: 250.0,
                    found: 10_000,
                },
                Restart {
                    stop_ms: 3.0,
                    ready_ms: 190.0,
                    found: 10_000,
                },
            ],
            restart_ms_median: 190.0,
            all_present: true,
            smoke: false,
        };
        let md = r.markdown();
        for want in [
            "**110000 pairs, 22000 pairs/s** (target ≥ 20000: met)",
            "| Allocate | 2 | 0.500 | 0.900 | 0.900 | 0.700 |",
            "trestled 4.40 s (44% of the machine, 40.0 µs per pair), the clients 5.00 s (50%)",
            "0.250 during the run, 0.125 per allocation of the fill",
            "**40960 KiB (40.0 MiB) holding 10000 allocations** (target ≤ 32 MiB: missed",
            "**Median 190.0 ms** over 3 restarts (target ≤ 200 ms: met); every restart listed all 10000 allocations: yes",
            "| 2 | 3.0 | 250.0 | 10000 |",
        ] {
            assert!(md.contains(want), "{want}\n{md}");
        }
        r.smoke = true;
        assert!(!r.markdown().contains("missed"));
    }
}
