//! `trestlectl bench --cluster`: cluster IPAM at scale against a real 3-member etcd on loopback.
//!
//! Two parts. The scale part simulates `nodes` nodes in this process, each a real
//! `trestle_ipam_etcd::Node` (its own registration, lease and blocks; the same code `trestled`
//! runs, minus its socket and local store), filling `pods` pods per node, then churning half of
//! them; it counts etcd requests per allocation from the client and from etcd itself (raft
//! proposals committed). The plugin part starts a real `trestled --store etcd` beside them and
//! times ADDs through the real `trestle-ipam` plugin binary at concurrency 1 and 32, with the
//! embedded `trestle-ipam` and the reference `host-local` timed in the same run.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use trestle_etcd_local::LocalCluster;
use trestle_ipam_core::Range;
use trestle_ipam_etcd::{Attempt, Etcd, EtcdConfig, Node, NodeSettings};

use super::stats::{summarise, Summary};
use super::trestled::Trestled;

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Simulated nodes.
    pub nodes: usize,
    /// Pods per simulated node.
    pub pods: usize,
    /// ADDs per concurrency level through the plugin.
    pub plugin_adds: usize,
    /// Directory of `trestle-ipam` and `trestled`.
    pub bin_dir: PathBuf,
    /// The reference `host-local`, if any.
    pub reference: Option<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// etcd requests over a phase.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requests {
    /// Allocations made.
    pub allocations: u64,
    /// Reads sent.
    pub reads: u64,
    /// Writes sent (transactions that may write, lease grants and revokes).
    pub writes: u64,
    /// Lease keep-alives sent.
    pub keepalives: u64,
    /// Raft proposals etcd committed (its own count of writes, keep-alives excluded).
    pub proposals: u64,
    /// Reads per allocation.
    pub reads_per_allocation: f64,
    /// Writes per allocation.
    pub writes_per_allocation: f64,
    /// Proposals per allocation.
    pub proposals_per_allocation: f64,
}

/// One plugin case.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginCase {
    /// `trestle-ipam (trestled, etcd)`, `trestle-ipam (embedded)` or `host-local (reference)`.
    pub side: String,
    /// Concurrent ADDs.
    pub concurrency: usize,
    /// ADD latency through the plugin binary.
    pub add: Summary,
    /// The daemon's etcd requests (daemon side only).
    pub requests: Option<Requests>,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    /// The command line.
    pub command: String,
    /// Simulated nodes and pods per node.
    pub nodes: usize,
    /// Pods per node.
    pub pods: usize,
    /// The pool and its block size.
    pub pool: String,
    /// Registration: every node's lease grant and registration transaction (and fencing).
    pub registration: Requests,
    /// Fill: every node allocates its pods.
    pub fill: Requests,
    /// Fill wall time, seconds.
    pub fill_seconds: f64,
    /// In-process allocation latency during the fill (no plugin, no gRPC).
    pub fill_latency: Summary,
    /// Churn: every node releases half its pods and allocates as many again.
    pub churn: Requests,
    /// The whole run: registration, fill and churn.
    pub total: Requests,
    /// Blocks claimed at the end.
    pub blocks: usize,
    /// etcd keys under the prefix at the end.
    pub keys: usize,
    /// etcd's database size at the end, bytes (member 1's `etcd_mvcc_db_total_size_in_bytes`).
    pub db_bytes: f64,
    /// Through the plugin.
    pub plugin: Vec<PluginCase>,
}

const NET: &str = "bench-cluster";
const SUBNET: &str = "10.128.0.0/12";
const PREFIX: &str = "/trestle-bench";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs the bench and writes `cluster.md` and `cluster.json` to the output folder.
pub fn run(opts: &ClusterOptions) -> Result<ClusterReport, String> {
    let work = tempdir()?;
    let result = run_in(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    super::write_report(&opts.out, "cluster", &report.markdown(), &report)?;
    Ok(report)
}

fn tempdir() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("trestle-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(err)?;
    Ok(d)
}

fn run_in(opts: &ClusterOptions, work: &Path) -> Result<ClusterReport, String> {
    eprintln!("starting a 3-member etcd under {}", work.display());
    let etcd = LocalCluster::start(&work.join("etcd"), 3).map_err(err)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(err)?;
    let range = Range::new(SUBNET.parse().map_err(err)?, None, None, None).map_err(err)?;
    let client = client(&rt, &etcd.endpoints())?;
    let proposals = |c: &LocalCluster| {
        c.metric(0, "etcd_server_proposals_committed_total")
            .unwrap_or(0.0) as u64
    };
    let (start, ps) = (client.counters.snapshot(), proposals(&etcd));
    let nodes = rt.block_on(register(&client, opts.nodes))?;
    eprintln!("{} simulated nodes registered", nodes.len());
    let (before, p0) = (client.counters.snapshot(), proposals(&etcd));
    let registration = requests(start, before, p0 - ps, 0);
    let t = Instant::now();
    let (locals, latencies) = rt.block_on(fill(&nodes, &range, opts.pods))?;
    let fill_seconds = t.elapsed().as_secs_f64();
    let (mid, p1) = (client.counters.snapshot(), proposals(&etcd));
    let fill = requests(before, mid, p1 - p0, (opts.nodes * opts.pods) as u64);
    eprintln!(
        "fill: {} allocations in {fill_seconds:.1} s, {:.4} writes/allocation",
        fill.allocations, fill.writes_per_allocation
    );
    let churned = rt.block_on(churn(&nodes, &locals, &range, opts.pods / 2))?;
    let (after, p2) = (client.counters.snapshot(), proposals(&etcd));
    let churn = requests(mid, after, p2 - p1, churned);
    let total = requests(start, after, p2 - ps, fill.allocations + churned);
    let (blocks, keys) = rt.block_on(async {
        let blocks = client
            .list(&format!("{PREFIX}/v1/blocks/"), true)
            .await
            .map_err(err)?
            .len();
        let keys = client
            .list(&format!("{PREFIX}/"), true)
            .await
            .map_err(err)?
            .len();
        Ok::<_, String>((blocks, keys))
    })?;
    let db_bytes = etcd
        .metric(0, "etcd_mvcc_db_total_size_in_bytes")
        .unwrap_or(0.0);
    let plugin = plugin_cases(opts, work, &etcd)?;
    drop(nodes);
    Ok(ClusterReport {
        command: opts.command.clone(),
        nodes: opts.nodes,
        pods: opts.pods,
        pool: format!("{SUBNET}, blocks /26"),
        registration,
        fill,
        fill_seconds,
        fill_latency: summarise(&latencies),
        churn,
        total,
        blocks,
        keys,
        db_bytes,
        plugin,
    })
}

/// A client of the bench's etcd (its channels are made inside `rt`).
fn client(rt: &tokio::runtime::Runtime, endpoints: &[String]) -> Result<Etcd, String> {
    let _g = rt.enter();
    Etcd::new(&EtcdConfig {
        endpoints: endpoints.to_vec(),
        tls: None,
        timeout: Duration::from_secs(5),
    })
    .map_err(err)
}

async fn register(client: &Etcd, n: usize) -> Result<Vec<Arc<Node>>, String> {
    let nodes: Vec<Arc<Node>> = (0..n)
        .map(|i| {
            let mut s = NodeSettings::new(&format!("sim-{i:04}"), PREFIX, "bench");
            s.lease_ttl = Duration::from_secs(30);
            Node::new(client.clone(), s)
        })
        .collect();
    for node in &nodes {
        tokio::spawn(node.clone().run());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !nodes.iter().all(|n| n.lease_valid()) {
        if Instant::now() > deadline {
            return Err("simulated nodes did not register within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(nodes)
}

type Local = Arc<Mutex<HashSet<IpAddr>>>;

/// One allocation as trestled makes it: pick from the node's holdings, grow them if empty.
async fn allocate(node: &Arc<Node>, local: &Local, range: &Range) -> Result<IpAddr, String> {
    // trestled's loop (`Node::allocate`), with a set of its own instead of trestled's state.
    node.allocate(NET, None, || {
        let mut used = local.lock().unwrap_or_else(|p| p.into_inner());
        let attempt = match node.pick(NET, range, &mut |ip| !used.contains(&ip)) {
            Some(ip) => {
                used.insert(ip);
                let low = node.running_low(NET, range, &mut |ip| !used.contains(&ip));
                Attempt::Done(ip, if low { vec![range.clone()] } else { vec![] })
            }
            None => Attempt::Grow(vec![range.clone()], None),
        };
        std::future::ready(Ok::<_, String>(attempt))
    })
    .await
    .map_err(err)
}

async fn fill(
    nodes: &[Arc<Node>],
    range: &Range,
    pods: usize,
) -> Result<(Vec<Local>, Vec<Duration>), String> {
    let locals: Vec<Local> = nodes
        .iter()
        .map(|_| Arc::new(Mutex::new(HashSet::new())))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    // Every node fills at once, each ADD after the other, as pods arrive on each node.
    for (node, local) in nodes.iter().zip(&locals) {
        let (node, local, range) = (node.clone(), local.clone(), range.clone());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(pods);
            for _ in 0..pods {
                let t = Instant::now();
                allocate(&node, &local, &range).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, String>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(err)??);
    }
    Ok((locals, all))
}

async fn churn(
    nodes: &[Arc<Node>],
    locals: &[Local],
    range: &Range,
    n: usize,
) -> Result<u64, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (node, local) in nodes.iter().zip(locals) {
        let (node, local, range) = (node.clone(), local.clone(), range.clone());
        tasks.spawn(async move {
            // DEL needs no etcd: the address goes back to the node's reservation.
            {
                let mut used = local.lock().unwrap_or_else(|p| p.into_inner());
                let gone: Vec<IpAddr> = used.iter().take(n).copied().collect();
                for ip in gone {
                    used.remove(&ip);
                }
            }
            for _ in 0..n {
                allocate(&node, &local, &range).await?;
            }
            Ok::<_, String>(n as u64)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.map_err(err)??;
    }
    Ok(total)
}

fn requests(
    a: (u64, u64, u64, u64),
    b: (u64, u64, u64, u64),
    proposals: u64,
    allocations: u64,
) -> Requests {
    let per = |x: u64| {
        if allocations == 0 {
            0.0
        } else {
            x as f64 / allocations as f64
        }
    };
    Requests {
        allocations,
        reads: b.0 - a.0,
        writes: b.1 - a.1,
        keepalives: b.2 - a.2,
        proposals,
        reads_per_allocation: per(b.0 - a.0),
        writes_per_allocation: per(b.1 - a.1),
        proposals_per_allocation: per(proposals),
    }
}

/// ADD latency through the plugin binaries.
fn plugin_cases(
    opts: &ClusterOptions,
    work: &Path,
    etcd: &LocalCluster,
) -> Result<Vec<PluginCase>, String> {
    let eps = etcd.endpoints().join(",");
    let mut daemon = Trestled::new(
        opts.bin_dir.join("trestled"),
        &work.join("trestled"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &eps,
            "--etcd-prefix",
            PREFIX,
            "--node-name",
            "bench-real",
            // The bench's daemon runs in the machine's namespace: no routes there.
            "--routing",
            "none",
            "--metrics-addr",
            "127.0.0.1:0",
            "--cluster-interval",
            "0.1",
            "--reuse-delay",
            "0",
        ],
    )
    .map_err(err)?;
    daemon.start().map_err(err)?;
    let s = daemon.settings();
    let conf_daemon = serde_json::json!({
        "cniVersion": "1.1.0", "name": NET, "type": "trestle-ipam",
        "ipam": {"type": "trestle-ipam", "daemon": {"socket": s.socket, "deleteQueue": s.delete_queue},
                 "ranges": [[{"subnet": SUBNET}]]}
    });
    let ipam_bin = opts.bin_dir.join("trestle-ipam");
    let mut cases = Vec::new();
    let counters = |d: &Trestled| {
        let get = |w: &str| {
            d.metric(&format!(
                "trestle_ipam_cluster{{node=\"bench-real\",what=\"{w}\"}}"
            ))
            .unwrap_or(0.0) as u64
        };
        (
            get("etcd_reads"),
            get("etcd_writes"),
            get("etcd_keepalives"),
            0,
        )
    };
    for c in [1usize, 32] {
        std::thread::sleep(Duration::from_millis(300));
        let before = counters(&daemon);
        let p0 = etcd
            .metric(0, "etcd_server_proposals_committed_total")
            .unwrap_or(0.0) as u64;
        let add = timed_adds(
            &ipam_bin,
            &conf_daemon,
            opts.plugin_adds,
            c,
            &format!("d{c}"),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let after = counters(&daemon);
        let p1 = etcd
            .metric(0, "etcd_server_proposals_committed_total")
            .unwrap_or(0.0) as u64;
        dels(&ipam_bin, &conf_daemon, opts.plugin_adds, &format!("d{c}"))?;
        cases.push(PluginCase {
            side: "trestle-ipam (trestled, etcd)".into(),
            concurrency: c,
            add,
            requests: Some(requests(
                before,
                after,
                p1.saturating_sub(p0),
                opts.plugin_adds as u64,
            )),
        });
    }
    daemon.stop().map_err(err)?;
    let data = work.join("data");
    let embedded = serde_json::json!({
        "cniVersion": "1.1.0", "name": NET, "type": "trestle-ipam",
        "ipam": {"type": "trestle-ipam", "dataDir": data.join("trestle"), "ranges": [[{"subnet": SUBNET}]]}
    });
    let mut sides = vec![(
        "trestle-ipam (embedded)".to_string(),
        ipam_bin.clone(),
        embedded,
    )];
    if let Some(r) = &opts.reference {
        let reference = serde_json::json!({
            "cniVersion": "1.0.0", "name": NET, "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": data.join("host-local"), "ranges": [[{"subnet": SUBNET}]]}
        });
        sides.push((
            "host-local (reference)".to_string(),
            r.join("host-local"),
            reference,
        ));
    }
    for (side, bin, conf) in sides {
        for c in [1usize, 32] {
            let add = timed_adds(&bin, &conf, opts.plugin_adds, c, &format!("e{c}"))?;
            dels(&bin, &conf, opts.plugin_adds, &format!("e{c}"))?;
            cases.push(PluginCase {
                side: side.clone(),
                concurrency: c,
                add,
                requests: None,
            });
        }
    }
    Ok(cases)
}

fn exec(bin: &Path, command: &str, id: &str, conf: &serde_json::Value) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/nonexistent/bench-netns")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())
        .map_err(err)?;
    let out = child.wait_with_output().map_err(err)?;
    if !out.status.success() {
        return Err(format!(
            "{} {command} {id}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(())
}

fn timed_adds(
    bin: &Path,
    conf: &serde_json::Value,
    n: usize,
    c: usize,
    tag: &str,
) -> Result<Summary, String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let lat = Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for _ in 0..c {
            handles.push(s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                let t = Instant::now();
                exec(bin, "ADD", &format!("{tag}-{i}"), conf)?;
                lat.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t.elapsed());
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect::<Result<Vec<()>, String>>()
    })?;
    Ok(summarise(&lat.into_inner().unwrap_or_default()))
}

fn dels(bin: &Path, conf: &serde_json::Value, n: usize, tag: &str) -> Result<(), String> {
    for i in 0..n {
        exec(bin, "DEL", &format!("{tag}-{i}"), conf)?;
    }
    Ok(())
}

impl ClusterReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let r = |name: &str, q: &Requests| {
            format!(
                "| {name} | {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.4} |\n",
                q.allocations,
                q.reads,
                q.writes,
                q.keepalives,
                q.proposals,
                q.reads_per_allocation,
                q.writes_per_allocation,
                q.proposals_per_allocation
            )
        };
        let mut s = format!(
            "# Cluster IPAM bench\n\n`{}`\n\n{} simulated nodes x {} pods on a real 3-member etcd (loopback), pool {}.\n\n",
            self.command, self.nodes, self.pods, self.pool
        );
        s.push_str("## etcd requests\n\n| phase | allocations | reads | writes | keep-alives | raft proposals | reads/alloc | writes/alloc | proposals/alloc |\n|---|---|---|---|---|---|---|---|---|\n");
        s.push_str(&r("registration (no allocation)", &self.registration));
        s.push_str(&r("fill", &self.fill));
        s.push_str(&r("churn (release half, allocate again)", &self.churn));
        s.push_str(&r("whole run", &self.total));
        s.push_str(&format!(
            "\nFill: {:.1} s wall; in-process allocation latency p50 {:.3} ms, p99 {:.3} ms (no plugin, no gRPC).\n\
             At the end: {} blocks claimed, {} keys under the prefix, etcd database {:.1} MiB.\n\n",
            self.fill_seconds, self.fill_latency.p50_ms, self.fill_latency.p99_ms,
            self.blocks, self.keys, self.db_bytes / 1048576.0
        ));
        s.push_str("## ADD through the plugin binary\n\n| side | concurrency | ADDs | p50 ms | p99 ms | etcd reads/alloc | etcd writes/alloc |\n|---|---|---|---|---|---|---|\n");
        for c in &self.plugin {
            let (rd, wr) = c.requests.as_ref().map_or(("-".into(), "-".into()), |q| {
                (
                    format!("{:.3}", q.reads_per_allocation),
                    format!("{:.3}", q.writes_per_allocation),
                )
            });
            s.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2} | {rd} | {wr} |\n",
                c.side, c.concurrency, c.add.n, c.add.p50_ms, c.add.p99_ms
            ));
        }
        s
    }
}
