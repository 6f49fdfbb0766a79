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
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ready = daemon.not_ready().is_none();
                async move { Ok::<_, std::convert::Infallible>(route(&req, ready)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

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
