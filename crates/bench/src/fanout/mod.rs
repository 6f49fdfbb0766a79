//! `trestlectl bench --fanout`: the watch fan-out of cross-node routing on a real 3-member etcd on loopback.
//!
//! N simulated nodes (a host record and a block each, as `bench --routes --routes-simulated` writes them) are
//! followed by N followers in this process, each `trestle_routes::follow::follow` (the code trestled runs: the
//! whole root read in pages at one revision, then a watch from the next) over an etcd client of its own (its own
//! connection, to member `i % 3` first). All start at once; the bench times their first reads and samples the
//! members' memory and CPU. Then a writer commits block claims at a steady pace, and each claim is timed from
//! etcd's answer to every follower's published state holding it; midway, a member that is not the leader is
//! killed and started again, and every claim must still reach every follower (one that does not fails the run).

mod followers;
mod members;
mod report;

pub use report::FanoutReport;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use trestle_etcd_local::LocalCluster;
use trestle_ipam_etcd::client::Txn;
use trestle_ipam_etcd::{Etcd, EtcdConfig, Keys, Pool};

use super::routes::simulated;
use super::stats::summarise;
use followers::{Claim, Follower};
use members::Sampler;
use report::{MemberUse, Outage, TARGET_P99_MS};
use trestle_demo::interrupt;

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Followers (and simulated nodes).
    pub followers: usize,
    /// Block claims to time.
    pub claims: usize,
    /// Time between claims.
    pub interval: Duration,
    /// Each follower's etcd request deadline (trestled's `--etcd-timeout`, 1 s by default).
    pub request_timeout: Duration,
    /// A smoke run: its numbers are not judged.
    pub smoke: bool,
    /// Output folder.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

const PREFIX: &str = "/trestle-bench-fanout";
/// How long the followers may take to finish their first reads.
const FIRST_READ_WAIT: Duration = Duration::from_secs(300);
/// How long after the last claim the bench waits for every follower to have every claim.
const CONVERGE_WAIT: Duration = Duration::from_secs(30);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn interrupted() -> Result<(), String> {
    if interrupt::requested() {
        return Err("interrupted".into());
    }
    Ok(())
}

/// Runs the bench and writes `fanout.md` and `fanout.json` to the output folder. Whatever happens (an error, a
/// missed claim, Ctrl-C), the etcd members are killed and their directories removed before it returns.
pub fn run(opts: &FanoutOptions) -> Result<FanoutReport, String> {
    interrupt::install().map_err(err)?;
    let work = std::env::temp_dir().join(format!("trestle-bench-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(err)?;
    let result = run_in(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    super::write_report(&opts.out, "fanout", &report.markdown(), &report)?;
    if !report.complete() {
        return Err(format!(
            "{} claim arrivals missed, {} absent at the end (report written)",
            report.missed, report.absent_at_end
        ));
    }
    Ok(report)
}

fn run_in(opts: &FanoutOptions, work: &Path) -> Result<FanoutReport, String> {
    // A connection per follower here, and one per follower in the member serving it.
    members::raise_nofile(opts.followers as u64 * 2 + 512)?;
    let mut report = FanoutReport {
        command: opts.command.clone(),
        build: std::env::current_exe().map_or_else(
            |e| format!("unknown ({e})"),
            |p| super::binary::link_mode(&p),
        ),
        etcd_version: members::etcd_version(),
        machine: super::report::machine(),
        load: vec![super::report::load_average()],
        smoke: opts.smoke,
        followers: opts.followers,
        keys: opts.followers * 2 + 1,
        request_timeout_s: opts.request_timeout.as_secs_f64(),
        claims: opts.claims,
        interval_ms: opts.interval.as_millis() as u64,
        ..FanoutReport::default()
    };
    eprintln!("starting a 3-member etcd under {}", work.display());
    let dir = work.join("etcd");
    let mut etcd = LocalCluster::start(&dir, 3).map_err(err)?;
    let names: Vec<String> = etcd.members.iter().map(|m| m.name.clone()).collect();
    let sampler = Sampler::start(names.iter().map(|n| dir.join(n)).collect());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(err)?;
    // The writer has a runtime of its own, driven by this thread: were it on the followers' (busy) workers, etcd's
    // answer to a claim would wait behind them and start the clock late.
    let wrt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    let writer = {
        let _g = wrt.enter();
        Etcd::new(&EtcdConfig {
            endpoints: etcd.endpoints(),
            tls: None,
            timeout: Duration::from_secs(10),
        })
        .map_err(err)?
    };
    let t = Instant::now();
    wrt.block_on(simulated::write_to(&writer, opts.followers, PREFIX))?;
    report.populate_s = t.elapsed().as_secs_f64();
    eprintln!(
        "{} simulated nodes written in {:.1} s; starting {} followers",
        opts.followers, report.populate_s, opts.followers
    );

    // 1. Every follower's first read, all at once.
    let rss_before = sampler.rss();
    let _ = sampler.take_peaks();
    let (cpu0, self0) = (sampler.cpu(), self_cpu());
    let start = Instant::now();
    let fs = followers::start(
        &rt,
        &etcd.endpoints(),
        opts.followers,
        PREFIX,
        opts.request_timeout,
    )?;
    let first = wait_first_reads(&fs, start)?;
    report.first_read = summarise(&first);
    let counts = |f: &Follower| {
        (
            f.stats.reads.load(Ordering::Relaxed),
            f.stats.watches.load(Ordering::Relaxed),
            f.stats.failures.load(Ordering::Relaxed),
        )
    };
    let after_read: Vec<(u64, u64, u64)> = fs.iter().map(counts).collect();
    report.first_read_failures = after_read.iter().map(|c| c.2).sum();
    report.bench_cpu_read_s = self_cpu() - self0;
    let (cpu1, rss_read) = (sampler.cpu(), sampler.take_peaks());
    eprintln!(
        "first reads: p50 {:.0} ms, p99 {:.0} ms, all at {:.0} ms",
        report.first_read.p50_ms, report.first_read.p99_ms, report.first_read.max_ms
    );
    // The watches open right after each follower's first state: give the last ones a moment.
    std::thread::sleep(Duration::from_secs(1));
    let streams: Vec<Option<f64>> = (0..names.len())
        .map(|i| etcd.metric(i, "etcd_debugging_mvcc_watch_stream_total"))
        .collect();

    // 2. The claims, with a member down midway.
    let pool = simulated::pool()?;
    let leader = wrt.block_on(leader(&writer, names.len()));
    let down = (leader.unwrap_or(0) + 1) % names.len();
    let (kill_at, restart_at) = outage_window(opts.claims);
    let mut claims = Vec::with_capacity(opts.claims);
    let mut outage = Outage {
        member: names[down].clone(),
        killed_before_claim: kill_at,
        restarted_before_claim: restart_at,
        followers_on_it: fs.iter().filter(|f| f.member == down).count(),
        ..Outage::default()
    };
    let self1 = self_cpu();
    let begin = Instant::now();
    let mut killed: Option<Instant> = None;
    for k in 0..opts.claims {
        interrupted()?;
        if k == kill_at {
            eprintln!("claim {k}: killing member {}", names[down]);
            etcd.kill(down);
            killed = Some(Instant::now());
        }
        if k == restart_at {
            if let Some(at) = killed.take() {
                etcd.restart(down).map_err(err)?;
                etcd.wait_serving(Duration::from_secs(30)).map_err(err)?;
                outage.down_s = at.elapsed().as_secs_f64();
                eprintln!("claim {k}: member {} serves again", names[down]);
            }
        }
        let c = wrt.block_on(claim(&writer, &pool, k, opts.followers, killed.is_some()))?;
        claims.push(c);
        // A steady pace from the start, whatever each claim took.
        let next = begin + opts.interval * (k as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    if killed.is_some() {
        // Fewer claims than the window: the member comes back before the end all the same.
        etcd.restart(down).map_err(err)?;
        etcd.wait_serving(Duration::from_secs(30)).map_err(err)?;
    }
    let last = claims.last().map_or(0, |c| c.revision);
    wait_converged(&fs, last)?;
    report.claims_s = begin.elapsed().as_secs_f64();
    report.bench_cpu_claims_s = self_cpu() - self1;
    let (cpu2, rss_claims) = (sampler.cpu(), sampler.take_peaks());

    // 3. What arrived.
    let published: Vec<Vec<(i64, Instant)>> = fs
        .iter()
        .map(|f| {
            f.published
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
        .collect();
    let a = followers::arrivals(&claims, &published);
    report.latency = summarise(&a.all);
    report.latency_from_send = summarise(&a.from_send);
    report.follower_worst = summarise(&a.follower_worst);
    report.claim_worst_ms = a
        .claim_worst
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    report.round_trip = summarise(&claims.iter().map(|c| c.at - c.sent).collect::<Vec<_>>());
    report.cpu_per_follower_claim_ms = if claims.is_empty() {
        0.0
    } else {
        report.bench_cpu_claims_s * 1e3 / (claims.len() * fs.len()) as f64
    };
    report.latency_outage = summarise(&a.outage);
    report.target_met = a.missed == 0 && report.latency.p99_ms < TARGET_P99_MS;
    report.missed = a.missed;
    report.absent_at_end = fs
        .iter()
        .map(|f| followers::absent(f.cluster.borrow().as_deref(), &claims))
        .sum();
    // What the followers did during the claims (the outage): watches opened again, whole reads again.
    let now: Vec<(u64, u64, u64)> = fs.iter().map(counts).collect();
    outage.followers_rewatched = now
        .iter()
        .zip(&after_read)
        .filter(|(n, a)| n.1 > a.1)
        .count();
    outage.extra_reads = now.iter().zip(&after_read).map(|(n, a)| n.0 - a.0).sum();
    if opts.claims > 0 {
        report.outage = Some(outage);
    }
    report.members = names
        .iter()
        .enumerate()
        .map(|(i, name)| MemberUse {
            name: name.clone(),
            followers: fs.iter().filter(|f| f.member == i).count(),
            watch_streams: streams[i],
            rss_before_kib: rss_before[i],
            rss_read_peak_kib: rss_read[i],
            cpu_read_s: cpu1[i] - cpu0[i],
            rss_claims_peak_kib: rss_claims[i],
            cpu_claims_s: cpu2[i] - cpu1[i],
        })
        .collect();
    report.load.push(super::report::load_average());
    drop(fs);
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(sampler);
    etcd.kill_all();
    Ok(report)
}

/// The claims between which a member is down: from a third of the way to a third later (at least one claim
/// made while it is down, when there are two or more).
fn outage_window(claims: usize) -> (usize, usize) {
    let kill = claims / 3;
    let restart = (kill + claims.div_ceil(3)).max(kill + 1);
    (kill, restart)
}

/// CPU seconds this process has used.
fn self_cpu() -> f64 {
    super::trestled::process_cpu_seconds("/proc/self/stat").unwrap_or(0.0)
}

/// Waits until every follower has published its first state; the time each took from `start`.
fn wait_first_reads(fs: &[Follower], start: Instant) -> Result<Vec<Duration>, String> {
    loop {
        interrupted()?;
        let firsts: Vec<Option<Duration>> = fs
            .iter()
            .map(|f| {
                let p = f.published.lock().unwrap_or_else(|p| p.into_inner());
                p.first().map(|(_, at)| at.saturating_duration_since(start))
            })
            .collect();
        let done = firsts.iter().filter(|f| f.is_some()).count();
        if done == fs.len() {
            return Ok(firsts.into_iter().flatten().collect());
        }
        if start.elapsed() > FIRST_READ_WAIT {
            return Err(format!(
                "only {done} of {} followers finished their first read in {FIRST_READ_WAIT:?}",
                fs.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every follower has published `revision` or later, or [`CONVERGE_WAIT`] has passed (the rest is
/// counted as missed).
fn wait_converged(fs: &[Follower], revision: i64) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGE_WAIT;
    while Instant::now() < deadline {
        interrupted()?;
        // What the arrivals are read from (the follower's revision counter is set before its state is published).
        let behind = fs
            .iter()
            .filter(|f| {
                let p = f.published.lock().unwrap_or_else(|p| p.into_inner());
                p.last().is_none_or(|(r, _)| *r < revision)
            })
            .count();
        if behind == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("some followers are still behind revision {revision} after {CONVERGE_WAIT:?}");
    Ok(())
}

/// The index of the member that leads, if one answers.
async fn leader(etcd: &Etcd, members: usize) -> Option<usize> {
    let mut ids = Vec::new();
    let mut leader = 0;
    for i in 0..members {
        let (id, l) = etcd.status(i).await.ok()?;
        ids.push(id);
        leader = l;
    }
    ids.iter().position(|&id| id == leader)
}

/// Claim `k`: simulated node `k % nodes` claims the `k`th block of the pool's lower half (the simulated nodes'
/// own blocks are in its upper half), in one transaction as a node's claim is: the block if absent, and the
/// node's affinity key.
async fn claim(
    etcd: &Etcd,
    pool: &Pool,
    k: usize,
    nodes: usize,
    outage: bool,
) -> Result<Claim, String> {
    let keys = Keys::new(PREFIX);
    let owner = format!("sim-{}", k % nodes.max(1));
    let start = IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 8 * k as u32,
    ));
    let key = keys.block(simulated::NETWORK, &pool.id(), start);
    let txn = Txn::new()
        .if_absent(&key)
        .put(&key, simulated::block(pool, &owner), 0)
        .put(
            &keys.affinity(&owner, simulated::NETWORK, &pool.id(), start),
            Vec::new(),
            0,
        );
    let sent = Instant::now();
    let r = etcd.txn(txn).await.map_err(err)?;
    let at = Instant::now();
    if !r.succeeded {
        return Err(format!("claim {k}: block {start} already exists"));
    }
    Ok(Claim {
        revision: r.revision,
        sent,
        at,
        outage,
        start,
        owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_down_for_a_third_of_the_claims() {
        assert_eq!(outage_window(50), (16, 33));
        assert_eq!(outage_window(6), (2, 4));
        assert_eq!(outage_window(2), (0, 1));
        assert_eq!(outage_window(0), (0, 1));
    }
}
