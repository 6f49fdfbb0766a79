//! Prometheus metrics, and the opt-in HTTP endpoint that serves them with `/readyz` and
//! `/healthz`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    in_use: Family<Labels, Gauge>,
    free: Family<Labels, Gauge>,
    cooling: Family<Labels, Gauge>,
    latency: Family<Labels, Histogram>,
    errors: Family<Labels, Counter>,
    candidates: Counter,
    reclaimed: Family<Labels, Counter>,
    reconciliations: Counter,
    commits: Counter,
    commit_failures: Counter,
    batch: Histogram,
    cluster: Family<Labels, Gauge>,
    routes: Family<Labels, Gauge>,
    accept_errors: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    evicted: Counter,
    connections: Gauge,
    slow_requests: Counter,
    slots_refused: Family<Labels, Counter>,
    problems: Family<Labels, Gauge>,
    recovered: Family<Labels, Counter>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("trestle_ipam");
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
        });
        let m = Metrics {
            registry: Registry::default(),
            in_use: Family::default(),
            free: Family::default(),
            cooling: Family::default(),
            latency,
            errors: Family::default(),
            candidates: Counter::default(),
            reclaimed: Family::default(),
            reconciliations: Counter::default(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            cluster: Family::default(),
            routes: Family::default(),
            accept_errors: Family::default(),
            refused: Family::default(),
            evicted: Counter::default(),
            connections: Gauge::default(),
            slow_requests: Counter::default(),
            slots_refused: Family::default(),
            problems: Family::default(),
            recovered: Family::default(),
        };
        registry.register(
            "addresses_in_use",
            "Allocated addresses per network",
            m.in_use.clone(),
        );
        registry.register(
            "addresses_free",
            "Allocatable addresses per network (saturating)",
            m.free.clone(),
        );
        registry.register(
            "addresses_cooling",
            "Released addresses waiting out the reuse delay",
            m.cooling.clone(),
        );
        registry.register(
            "request_seconds",
            "Time to answer a request, by method",
            m.latency.clone(),
        );
        registry.register(
            "errors",
            "Requests answered with an error, by method and gRPC code",
            m.errors.clone(),
        );
        registry.register(
            "reclaim_candidates",
            "Allocations whose network namespace was found gone",
            m.candidates.clone(),
        );
        registry.register(
            "reclaimed",
            "Allocations released by the daemon itself, by reason",
            m.reclaimed.clone(),
        );
        registry.register(
            "reconciliations",
            "Leak-repair rounds",
            m.reconciliations.clone(),
        );
        registry.register("store_commits", "Store commits", m.commits.clone());
        registry.register(
            "store_commit_failures",
            "Store commits that failed",
            m.commit_failures.clone(),
        );
        registry.register(
            "store_commit_batch",
            "Requests per store commit",
            m.batch.clone(),
        );
        registry.register(
            "cluster",
            "Cluster IPAM (etcd store): lease_valid, per pool blocks/held/borrowed, etcd \
             requests by kind, and what the node did (claims, extends, reclaims, borrows, \
             releases, shrinks, fencings, conflicts), all labelled with the node",
            m.cluster.clone(),
        );
        registry.register(
            "routes",
            "Cross-node routes: etcd revision seen and applied to the kernel (their difference is \
             the convergence lag), entries trestle holds (routes, neighbours, fdb), changes, \
             repairs of entries someone else removed, refused changes, full and incremental \
             passes, peers by how they are reached (direct, vxlan, unreachable), etcd reads, watches and failures",
            m.routes.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts of the gRPC socket, by errno (the daemon backs off and goes on)",
            m.accept_errors.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once, by reason (per-client, per-user, full, descriptors)",
            m.refused.clone(),
        );
        registry.register(
            "connections_evicted",
            "Idle connections given up for a newcomer at the connection bound",
            m.evicted.clone(),
        );
        registry.register("connections", "Connections held", m.connections.clone());
        registry.register(
            "slow_requests",
            "Requests whose message did not arrive within --read-timeout",
            m.slow_requests.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused a slot, by reason (client-share, busy)",
            m.slots_refused.clone(),
        );
        registry.register(
            "problem",
            "1 while a condition an operator must fix holds, by problem \
             (delete_queue_untrusted, store_recovered, import_failed)",
            m.problems.clone(),
        );
        registry.register(
            "recovered_allocations",
            "Allocations rebuilt after a damaged store, by source (cni-cache, namespace, \
             etcd-hold)",
            m.recovered.clone(),
        );
        Metrics { registry, ..m }
    })
}

/// Records a request's latency, and its error code if it failed.
pub fn request(method: &'static str, seconds: f64, error: Option<tonic::Code>) {
    let m = metrics();
    m.latency
        .get_or_create(&vec![("method", method.to_string())])
        .observe(seconds);
    if let Some(code) = error {
        m.errors
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", format!("{code:?}")),
            ])
            .inc();
    }
}

/// Sets a network's usage gauges.
pub fn pool(network: &str, used: usize, free: u128, cooling: usize) {
    let m = metrics();
    let l = vec![("network", network.to_string())];
    m.in_use.get_or_create(&l).set(used as i64);
    m.free
        .get_or_create(&l)
        .set(i64::try_from(free).unwrap_or(i64::MAX));
    m.cooling.get_or_create(&l).set(cooling as i64);
}

/// Counts allocations found with their namespace gone.
pub fn candidates(n: usize) {
    metrics().candidates.inc_by(n as u64);
}

/// Counts allocations the daemon released itself (`netns-gone`, `earlier-boot`, `gc`, `queue`).
pub fn reclaimed(reason: &'static str, n: usize) {
    metrics()
        .reclaimed
        .get_or_create(&vec![("reason", reason.to_string())])
        .inc_by(n as u64);
}

/// Counts a leak-repair round.
pub fn reconciliation() {
    metrics().reconciliations.inc();
}

/// Records a store commit of `batch` requests.
pub fn commit(batch: usize, ok: bool) {
    let m = metrics();
    m.commits.inc();
    m.batch.observe(batch as f64);
    if !ok {
        m.commit_failures.inc();
    }
}

/// Counts a failed accept.
pub fn accept_error(e: &std::io::Error) {
    let errno = e
        .raw_os_error()
        .map(|n| nix::errno::Errno::from_raw(n).to_string())
        .unwrap_or_else(|| format!("{:?}", e.kind()));
    let errno = errno.split(':').next().unwrap_or_default().to_string();
    metrics()
        .accept_errors
        .get_or_create(&vec![("errno", errno)])
        .inc();
}

/// Counts a connection closed at once.
pub fn connection_refused(reason: &'static str) {
    metrics()
        .refused
        .get_or_create(&vec![("reason", reason.to_string())])
        .inc();
}

/// Counts an idle connection given up.
pub fn connection_evicted() {
    metrics().evicted.inc();
}

/// Sets the connections held.
pub fn connections(n: usize) {
    metrics().connections.set(n as i64);
}

/// Counts a request whose message came too late.
pub fn slow_request() {
    metrics().slow_requests.inc();
}

/// Counts a request refused a slot.
pub fn slot_refused(reason: &'static str) {
    metrics()
        .slots_refused
        .get_or_create(&vec![("reason", reason.to_string())])
        .inc();
}

/// Sets whether `problem` holds.
pub fn problem(problem: &'static str, holds: bool) {
    metrics()
        .problems
        .get_or_create(&vec![("problem", problem.to_string())])
        .set(i64::from(holds));
}

/// Counts allocations rebuilt from `source` after a damaged store.
pub fn recovered(source: &'static str, n: usize) {
    metrics()
        .recovered
        .get_or_create(&vec![("source", source.to_string())])
        .inc_by(n as u64);
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &metrics().registry).expect("writing to a String cannot fail");
    out
}

/// Serves `/metrics`, `/readyz` (200 while the daemon serves Allocate, else 503) and `/healthz` on `addr` until
/// the process ends.
pub async fn serve(addr: SocketAddr, daemon: Arc<crate::daemon::Daemon>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    log::info!("metrics on http://{}", listener.local_addr()?);
    // Scrapers and probes need a handful; past the bound a connection is closed at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ready = daemon.not_ready().is_none();
                async move { Ok::<_, std::convert::Infallible>(route(&req, ready)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(io, svc);
            // A connection lasts a few requests' time at most: a scraper reconnects.
            let _ = tokio::time::timeout(METRICS_CONNECTION_LIFE, conn).await;
            drop(permit);
        });
    }
}

/// Connections the metrics endpoint serves at once.
const METRICS_CONNECTIONS: usize = 16;
/// How long a request's headers may take.
const METRICS_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one connection is served.
const METRICS_CONNECTION_LIFE: std::time::Duration = std::time::Duration::from_secs(60);

fn route(req: &Request<hyper::body::Incoming>, ready: bool) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, render()),
        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" if ready => (StatusCode::OK, "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store not ready\n".to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// Publishes the cluster node's state: `what` names the figure, `labels` add pool labels.
pub fn cluster(node: &str, what: &str, labels: &[(&'static str, String)], value: i64) {
    let mut l: Labels = vec![("node", node.to_string()), ("what", what.to_string())];
    l.extend(labels.iter().cloned());
    metrics().cluster.get_or_create(&l).set(value);
}

/// Publishes a figure of the cross-node routes.
pub fn routes(what: &str, labels: &[(&'static str, String)], value: i64) {
    let mut l: Labels = vec![("what", what.to_string())];
    l.extend(labels.iter().cloned());
    metrics().routes.get_or_create(&l).set(value);
}
