//! `trestlectl bench --routes`: how long a block claimed in etcd takes to become a route in every other node's
//! kernel. Real nodes (network namespaces on two underlay segments, half of the peers direct and half over VXLAN),
//! a real etcd and one real trestled per node, as in `trestlectl demo --cluster`; the bench allocates addresses
//! through the `trestle-ipam` plugin so that nodes claim blocks (of 8 addresses, to claim many), and times each
//! block from the bench's own etcd watch notification of its commit to the route's notification in each peer's
//! kernel (a netlink monitor per node). One clock: everything runs on this machine.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Serialize;
use trestle_netlink::{Event, Monitor};
use trestle_netns::NetNs;

use trestle_demo::cluster::machine::{self, Node, Segment, Service};
use trestle_operator::runtime::Invocation;

pub(crate) mod simulated;
pub use simulated::Load;

/// What to run.
#[derive(Debug, Clone)]
pub struct RoutesOptions {
    /// Nodes (namespaces with a trestled each).
    pub nodes: usize,
    /// Addresses allocated per node (a block holds 8).
    pub allocations: usize,
    /// Simulated nodes written into etcd first (a host record and a block each).
    pub simulated: usize,
    /// Directory of `trestled` and `trestle-ipam`.
    pub bin_dir: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct RoutesReport {
    /// The command line.
    pub command: String,
    /// Nodes.
    pub nodes: usize,
    /// Blocks claimed.
    pub blocks: usize,
    /// Route arrivals timed (blocks x peers).
    pub samples: usize,
    /// Milliseconds from the commit's watch notification to the route in a peer's kernel, all peers.
    pub all: Percentiles,
    /// The same, peers on the owner's segment (direct routes).
    pub direct: Percentiles,
    /// The same, peers on the other segment (VXLAN routes).
    pub vxlan: Percentiles,
    /// What the simulated nodes cost a real one.
    pub load: Load,
}

/// p50, p90, p99 and max, in ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(mut ms: Vec<f64>) -> Percentiles {
        if ms.is_empty() {
            return Percentiles::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| super::stats::quantile(&ms, q);
        Percentiles {
            n: ms.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        }
    }
}

impl RoutesReport {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                p.n, p.p50, p.p90, p.p99, p.max
            )
        };
        format!(
            "# Route convergence\n\n`{}`\n\n{} nodes on two segments, {} blocks claimed; milliseconds from the \
             bench's etcd watch notification of a block's commit to the route in each other node's kernel.\n\n\
             | peers | samples | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n{}{}{}",
            self.command,
            self.nodes,
            self.blocks,
            row("all", &self.all),
            row("direct (same segment)", &self.direct),
            row("VXLAN (other segment)", &self.vxlan),
        ) + &self.load_markdown()
    }

    fn load_markdown(&self) -> String {
        let l = &self.load;
        if l.simulated == 0 {
            return String::new();
        }
        let first = Percentiles::of(l.first_sync_ms.clone());
        format!(
            "\n{} simulated nodes (a host record and a block each, written in {:.1} s) besides the real ones. Per \
             real node: {} routes, {} neighbour and {} FDB entries of trestle's; trestled's resident memory {} KiB \
             (the largest); its first pass, from start to every simulated node's route in its kernel: median \
             {:.0} ms, largest {:.0} ms.\n",
            l.simulated, l.write_s, l.routes, l.neighbours, l.fdb, l.rss_kib, first.p50, first.max
        )
    }
}

type Seen = Arc<Mutex<BTreeMap<(usize, IpNet), Instant>>>;

/// Runs the bench (as root) and writes routes.md and routes.json to the output folder.
pub fn run(opts: &RoutesOptions) -> Result<RoutesReport, String> {
    let work = std::env::temp_dir().join(format!("trestle-bench-routes-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = run_in(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    super::write_report(&opts.out, "routes", &report.markdown(), &report)?;
    Ok(report)
}

fn run_in(opts: &RoutesOptions, work: &Path) -> Result<RoutesReport, String> {
    let etcd_bin = trestle_etcd_local::etcd_binary()
        .ok_or("etcd not found: install Debian's etcd-server (apt-get install etcd-server)")?;
    let world = NetNs::new_anonymous().map_err(|e| e.to_string())?;
    let segments = [Segment::number(1), Segment::number(2)];
    world
        .run(|| -> Result<(), String> {
            let mut nl = trestle_netlink::Netlink::open().map_err(|e| e.to_string())?;
            let lo = nl
                .link_by_name("lo")
                .map_err(|e| e.to_string())?
                .ok_or("no lo")?;
            nl.set_up(lo.index, true).map_err(|e| e.to_string())?;
            for s in &segments {
                s.create().map_err(|e| e.to_string())?;
            }
            trestle_netlink::sysctl::set("net/ipv4/ip_forward", "1").map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())??;
    let mut etcd = Service::spawn(
        "etcd",
        machine::etcd_command(&etcd_bin, &work.join("etcd")),
        &world,
        &work.join("etcd.log"),
    )
    .map_err(|e| e.to_string())?;
    machine::wait_serving(&world, machine::ETCD, &mut etcd, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    let write_s = simulated::populate(&world, opts.simulated, machine::PREFIX)?;
    let mut nodes = Vec::new();
    for i in 0..opts.nodes {
        let seg = &segments[i % 2];
        let ip = Ipv4Addr::new(192, 168, seg.address.addr().octets()[2], 10 + i as u8);
        let mut n =
            Node::create(&world, &format!("n{i}"), seg, ip, work).map_err(|e| e.to_string())?;
        n.extra_args = ["--block-size", "10.244.0.0/16=29"]
            .map(String::from)
            .to_vec();
        n.start_daemon(&opts.bin_dir).map_err(|e| e.to_string())?;
        nodes.push(n);
    }
    for n in &mut nodes {
        n.wait_daemon(Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
    }
    let load = measure_load(opts, &nodes, write_s)?;
    let stop = Arc::new(AtomicBool::new(false));
    let routes: Seen = Arc::default();
    let monitors = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| watch_routes(i, &n.ns, routes.clone(), stop.clone()))
        .collect::<Result<Vec<_>, String>>()?;
    let commits: Arc<Mutex<BTreeMap<IpNet, (String, Instant)>>> = Arc::default();
    let all_routed = |c: &BTreeMap<IpNet, (String, Instant)>,
                      r: &BTreeMap<(usize, IpNet), Instant>| {
        c.iter().all(|(net, (owner, _))| {
            (0..nodes.len()).all(|i| nodes[i].name == *owner || r.contains_key(&(i, *net)))
        })
    };
    let allocated = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_commits(&world, commits.clone(), stop.clone()));
        // Give the watch a moment to be created before the first claim.
        std::thread::sleep(Duration::from_millis(300));
        let allocated = allocate(opts, &nodes);
        // Nodes keep claiming ahead in the background after the last ADD: done once every claim seen is routed
        // and no claim came for half a second.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut seen, mut quiet_since) = (usize::MAX, Instant::now());
        while allocated.is_ok() && Instant::now() < deadline {
            let claims = commits.lock().unwrap().len();
            if claims != seen {
                (seen, quiet_since) = (claims, Instant::now());
            }
            let routed = all_routed(&commits.lock().unwrap(), &routes.lock().unwrap());
            if routed && quiet_since.elapsed() > Duration::from_millis(500) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        allocated
    });
    for m in monitors {
        let _ = m.join();
    }
    allocated?;
    let report = summarise(
        opts,
        &nodes,
        &commits.lock().unwrap(),
        &routes.lock().unwrap(),
    )
    .map(|r| RoutesReport { load, ..r });
    for n in &mut nodes {
        if let Some(d) = n.daemon.as_mut() {
            let _ = d.stop(Duration::from_secs(5));
        }
    }
    let _ = etcd.stop(Duration::from_secs(5));
    report
}

/// Records when each route of trestle's first appears in node `i`'s kernel.
fn watch_routes(
    i: usize,
    ns: &NetNs,
    seen: Seen,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let mut monitor = ns
        .run(Monitor::open)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Some(Event::Route {
                route,
                deleted: false,
            })) = monitor.recv_timeout(Duration::from_millis(50))
            {
                if route.protocol == trestle_routes::diff::ROUTE_PROTO {
                    let at = Instant::now();
                    seen.lock().unwrap().entry((i, route.dst)).or_insert(at);
                }
            }
        }
    }))
}

/// Records when the bench hears of each new block's commit, and its owner; returns once `stop` is set.
fn watch_commits(
    world: &NetNs,
    commits: Arc<Mutex<BTreeMap<IpNet, (String, Instant)>>>,
    stop: Arc<AtomicBool>,
) {
    // The client connects from the runtime's thread, inside the world, where etcd listens.
    let _ = world.run(|| {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(follow_blocks(commits, stop));
        }
    });
}

async fn follow_blocks(
    commits: Arc<Mutex<BTreeMap<IpNet, (String, Instant)>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(etcd) = trestle_ipam_etcd::Etcd::new(&trestle_ipam_etcd::EtcdConfig {
        endpoints: vec![machine::ETCD.to_string()],
        tls: None,
        timeout: Duration::from_secs(5),
    }) else {
        return;
    };
    let prefix = format!("{}/v1/blocks/", machine::PREFIX);
    let Ok(mut w) = etcd.watch(&prefix, 1).await else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(batch)) = tokio::time::timeout(Duration::from_millis(100), w.next()).await else {
            continue;
        };
        let at = Instant::now();
        for c in batch {
            let trestle_ipam_etcd::watch::Change::Put(kv) = c else {
                continue;
            };
            let key = String::from_utf8_lossy(&kv.key).to_string();
            let (Some(start), Ok(v)) = (
                key.rsplit('/')
                    .next()
                    .and_then(|s| s.parse::<IpAddr>().ok()),
                serde_json::from_slice::<serde_json::Value>(&kv.value),
            ) else {
                continue;
            };
            let owner = v["owner"].as_str().unwrap_or_default().to_string();
            // The simulated nodes' blocks were there before the real nodes started: not claims.
            if owner.starts_with("sim-") {
                continue;
            }
            if let Ok(net) = IpNet::new(start, simulated::BLOCK) {
                commits.lock().unwrap().entry(net).or_insert((owner, at));
            }
        }
    }
}

/// Allocates through each node's daemon, round robin, so nodes claim blocks one after another.
fn allocate(opts: &RoutesOptions, nodes: &[Node]) -> Result<(), String> {
    for k in 0..opts.allocations {
        for n in nodes {
            let conf = serde_json::json!({
                "cniVersion": "1.1.0", "name": "podnet", "type": "trestle-ipam",
                "ipam": {"type": "trestle-ipam",
                         "daemon": {"socket": n.dir.join("ipam.sock"), "deleteQueue": n.dir.join("queue")},
                         "ranges": [[{"subnet": machine::POOL, "gateway": machine::GATEWAY}]]}
            })
            .to_string();
            let inv = Invocation::new(
                &opts.bin_dir.join("trestle-ipam"),
                "ADD",
                &format!("bench-{}-{k}", n.name),
                "/nonexistent/trestle-bench-netns",
                "eth0",
            );
            let (out, _) = machine::add_with_retry(&inv, &conf, &n.ns, Duration::from_secs(20))
                .map_err(|e| e.to_string())?;
            if !out.success {
                return Err(format!(
                    "ADD on {}: {}\n{}",
                    n.name,
                    out.stdout,
                    n.daemon_log()
                ));
            }
        }
    }
    Ok(())
}

/// Waits until every real node's first routing pass is done; what it took (from the node's own log: its start,
/// and the line its dataplane writes after the pass) and what the node holds then.
fn measure_load(opts: &RoutesOptions, nodes: &[Node], write_s: f64) -> Result<Load, String> {
    let mut load = Load {
        simulated: opts.simulated,
        write_s,
        ..Load::default()
    };
    if opts.simulated == 0 {
        return Ok(load);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in nodes {
        let log = n.dir.join("trestled.log");
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(ms) = first_pass_ms(&text) {
                load.first_sync_ms.push(ms);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: no first routing pass in 120 s\n{}",
                    n.name,
                    n.daemon_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for n in nodes {
        let (routes, neighbours, fdb) = simulated::entries_in(&n.ns);
        load.routes = load.routes.max(routes);
        load.neighbours = load.neighbours.max(neighbours);
        load.fdb = load.fdb.max(fdb);
        let pid = n.daemon.as_ref().map_or(0, |d| d.pid());
        load.rss_kib = load.rss_kib.max(simulated::rss_kib(pid));
    }
    Ok(load)
}

/// Milliseconds from trestled's first log line to its "routes: first sync" line (both carry a wall-clock time).
fn first_pass_ms(log: &str) -> Option<f64> {
    let at = |line: &str| {
        let t = line.split(' ').next()?.strip_suffix('Z')?;
        let (_, time) = t.split_once('T')?;
        let mut parts = time.split(':');
        let (h, m, s): (f64, f64, f64) = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        Some((h * 3600.0 + m * 60.0 + s) * 1e3)
    };
    let start = at(log.lines().next()?)?;
    let synced = at(log.lines().find(|l| l.contains("routes: first sync"))?)?;
    Some(synced - start)
}

fn summarise(
    opts: &RoutesOptions,
    nodes: &[Node],
    commits: &BTreeMap<IpNet, (String, Instant)>,
    routes: &BTreeMap<(usize, IpNet), Instant>,
) -> Result<RoutesReport, String> {
    if commits.is_empty() {
        return Err("no block commit was seen in etcd's watch".into());
    }
    let (mut all, mut direct, mut vxlan) = (Vec::new(), Vec::new(), Vec::new());
    let segment = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.segment.name.clone())
    };
    for (net, (owner, at)) in commits {
        for (i, n) in nodes.iter().enumerate() {
            if &n.name == owner {
                continue;
            }
            let Some(route) = routes.get(&(i, *net)) else {
                return Err(format!(
                    "no route to {net} (of {owner}) in {} after 30 s",
                    n.name
                ));
            };
            let ms = route.saturating_duration_since(*at).as_secs_f64() * 1e3;
            all.push(ms);
            if segment(owner) == Some(n.segment.name.clone()) {
                direct.push(ms);
            } else {
                vxlan.push(ms);
            }
        }
    }
    Ok(RoutesReport {
        command: opts.command.clone(),
        nodes: nodes.len(),
        blocks: commits.len(),
        samples: all.len(),
        all: Percentiles::of(all),
        direct: Percentiles::of(direct),
        vxlan: Percentiles::of(vxlan),
        load: Load::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pass_from_the_log() {
        let log = "2026-12-07T00:35:16.930Z INFO  cluster store: etcd\n\
                   2026-12-07T00:35:17.105Z INFO  routes: first sync at etcd revision 20\n";
        assert!((first_pass_ms(log).unwrap() - 175.0).abs() < 0.01);
        assert_eq!(first_pass_ms("2026-12-07T00:35:16.930Z INFO x\n"), None);
    }

    #[test]
    fn percentiles_by_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.n, p.p50, p.p90, p.p99, p.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Percentiles::of(vec![]).n, 0);
        assert_eq!(Percentiles::of(vec![3.0]).p99, 3.0);
    }
}
