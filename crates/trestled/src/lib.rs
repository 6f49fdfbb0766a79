//! `trestled`: the node IPAM service. It serves `trestle.ipam.v1` (see `trestle-ipam-api`) on
//! a unix socket, keeps every allocation in memory and in a redb store, applies the node's
//! delete queue, repairs leaks continuously and exports metrics. See docs/ipam-service.md.

// tonic's service API returns `Status` by value (176 bytes), and redb's errors are as large;
// boxing them at every call would only move the allocation around.
#![allow(clippy::result_large_err)]

mod activation;
pub mod clock;
mod cluster;
pub mod conflist;
pub mod conn;
pub mod daemon;
pub mod frames;
mod import;
pub mod intake;
pub mod list;
pub mod logger;
pub mod metrics;
pub mod recovery;
pub mod repair;
pub mod service;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use trestle_ipam_api::v1::ipam_server::IpamServer;
use trestle_ipam_core::{BootIdSource, DeleteQueue};

use crate::activation::Listener;
use crate::daemon::{Daemon, HostLocal};
use crate::repair::RepairSettings;
use crate::service::{Access, Service};
use crate::state::State;

/// trestled's command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "trestled",
    version,
    about = "trestle's node IPAM service",
    args_override_self = true
)]
pub struct Options {
    /// The unix socket to serve on (ignored when systemd passes one: LISTEN_FDS).
    #[arg(long, default_value = trestle_ipam_core::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The socket's mode, octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// A group (name or number) whose members may also use the socket; sets its group.
    #[arg(long, value_parser = parse_group)]
    pub socket_group: Option<u32>,
    /// The store's directory (tmpfs by default: allocations are void after a reboot anyway).
    #[arg(long, default_value = "/run/trestle/ipam")]
    pub state_dir: PathBuf,
    /// The node's delete queue (the plugins' `ipam.daemon.deleteQueue`).
    #[arg(long, default_value = trestle_ipam_core::DEFAULT_QUEUE_DIR)]
    pub delete_queue: PathBuf,
    /// host-local's dataDir to import networks from, and hand them over; "" for none.
    #[arg(long, default_value = trestle_ipam_core::DEFAULT_DATA_DIR, value_parser = any_path)]
    pub host_local_dir: PathBuf,
    /// Seconds a released address waits before it is handed out again.
    #[arg(long, default_value_t = 30.0)]
    pub reuse_delay: f64,
    /// Seconds an allocation whose namespace is gone waits before it is released.
    #[arg(long, default_value_t = 60.0)]
    pub netns_grace: f64,
    /// Seconds between leak-repair rounds.
    #[arg(long, default_value_t = 10.0)]
    pub repair_interval: f64,
    /// Serve Prometheus metrics, /readyz and /healthz here (off unless set).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Requests served at once, over all connections (one client process may hold half).
    #[arg(long, default_value_t = 256)]
    pub max_concurrency: usize,
    /// Connections held at once; lowered to fit the open-file limit (raised to its hard
    /// limit at start), of which a quarter stays free.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections one client process may hold.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_client: usize,
    /// Seconds a request's message may take to arrive after its headers.
    #[arg(long, default_value_t = 10.0)]
    pub read_timeout: f64,
    /// Seconds a damaged store's rebuild waits before it looks (tests lengthen it).
    #[arg(long, default_value_t = 2.0, hide = true)]
    pub rebuild_settle: f64,
    /// The runtimes' CNI result cache, read to rebuild a damaged store (libcni's cacheDir).
    #[arg(long, default_value = "/var/lib/cni/results", value_parser = any_path)]
    pub cni_cache_dir: PathBuf,
    /// Read the boot ID from this file instead of the kernel (tests simulate reboots with it).
    #[arg(long, hide = true)]
    pub boot_id_file: Option<PathBuf>,
    /// Where the address space lives: `embedded` (this node alone) or `etcd` (one address
    /// space for the cluster, in per-node blocks; see docs/cluster-ipam.md).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "etcd"])]
    pub store: String,
    /// etcd endpoints, comma-separated (`host:port` or URLs).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// The key prefix of the cluster's records.
    #[arg(long, default_value = "/trestle")]
    pub etcd_prefix: String,
    /// CA certificate (PEM) of etcd's servers: TLS on.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), for etcd's `--client-cert-auth`.
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Seconds one etcd request may take, failover included.
    #[arg(long, default_value_t = 1.0)]
    pub etcd_timeout: f64,
    /// This node's name in the cluster (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Seconds of the node's etcd lease: after it lapses the node stops handing out addresses.
    #[arg(long, default_value_t = 15)]
    pub lease_ttl: u64,
    /// Seconds after a node's lease is gone before others may reclaim its blocks.
    #[arg(long, default_value_t = 300.0)]
    pub reclaim_grace: f64,
    /// Seconds a block stays empty (or a reservation oversized) before it goes back.
    #[arg(long, default_value_t = 600.0)]
    pub block_release_grace: f64,
    /// The block prefix length of a pool this node creates: `SUBNET=LEN`, repeatable
    /// (defaults: /26 for IPv4, /122 for IPv6). A pool's size is fixed by its creator.
    #[arg(long, value_parser = parse_block_size)]
    pub block_size: Vec<(ipnet::IpNet, u8)>,
    /// Never borrow addresses from other nodes' blocks (a full node's ADD fails instead).
    #[arg(long)]
    pub strict_affinity: bool,
    /// How other nodes' pods are reached in etcd mode: `auto` (directly on a shared underlay
    /// subnet, VXLAN across subnets), `direct`, `vxlan`, or `none` (routes come from elsewhere).
    /// See docs/cluster-networking.md.
    #[arg(long, default_value = "auto", value_parser = ["auto", "direct", "vxlan", "none"])]
    pub routing: String,
    /// This node's underlay address peers reach it at (one per family; repeatable). Default:
    /// the first global address of `--node-interface`, else of the default route's interface.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<std::net::IpAddr>,
    /// The interface whose addresses are the node's underlay.
    #[arg(long)]
    pub node_interface: Option<String>,
    /// The UDP port of VXLAN between nodes.
    #[arg(long, default_value_t = 4789)]
    pub vxlan_port: u16,
    /// The VXLAN network identifier between nodes.
    #[arg(long, default_value_t = 4096)]
    pub vxlan_vni: u32,
    /// The name of the VXLAN device.
    #[arg(long, default_value = "trestle.vxlan")]
    pub vxlan_device: String,
    /// Transmit checksum offload of the VXLAN device: `auto` turns it off on kernels up to 5.7,
    /// whose NAT bug corrupts checksums of offloaded VXLAN packets (the 63-second stall).
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub vxlan_checksum_offload: String,
    /// Leave VXLAN between nodes to conntrack and accept it from anywhere (default: a table
    /// `inet trestle-vxlan` keeps it untracked and drops it unless it comes from a node).
    #[arg(long)]
    pub no_vxlan_guard: bool,
    /// Seconds between full reads of the kernel's routes (repairs without a notification).
    #[arg(long, default_value_t = 30.0)]
    pub routes_resync: f64,
    /// Seconds between cluster housekeeping rounds (block release, shrink, returns).
    #[arg(long, default_value_t = 5.0, hide = true)]
    pub cluster_interval: f64,
    /// Once the daemon is ready, write this file's contents (a CNI conflist) to
    /// `--cni-conflist-path`, atomically, and keep it so; never removed on stop.
    #[arg(long, requires = "cni_conflist_path", value_name = "FILE")]
    pub cni_conflist_source: Option<PathBuf>,
    /// The conflist the runtime reads, e.g. /etc/cni/net.d/05-trestle.conflist.
    #[arg(long, requires = "cni_conflist_source", value_name = "FILE")]
    pub cni_conflist_path: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info", env = "TRESTLED_LOG", value_parser = parse_level)]
    pub log_level: log::LevelFilter,
}

/// clap's own path parser refuses "", which here means "none".
fn any_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| format!("{s:?} is not a log level"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode"))
}

fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group {s:?}")),
        Err(e) => Err(format!("group {s:?}: {e}")),
    }
}

fn parse_block_size(s: &str) -> Result<(ipnet::IpNet, u8), String> {
    let (net, len) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SUBNET=LEN"))?;
    let net: ipnet::IpNet = net.parse().map_err(|e| format!("{net:?}: {e}"))?;
    let len: u8 = len
        .trim_start_matches('/')
        .parse()
        .map_err(|_| format!("{len:?} is not a prefix length"))?;
    Ok((net, len))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The router of cross-node routes, in etcd mode unless `--routing none`.
fn start_router(
    opts: &Options,
    node: Option<&trestle_ipam_etcd::Node>,
) -> Result<Option<trestle_routes::Router>, String> {
    let Some(node) = node else {
        return Ok(None);
    };
    let mode = match opts.routing.as_str() {
        "none" => return Ok(None),
        m => m.parse::<trestle_routes::Mode>()?,
    };
    let cfg = trestle_routes::RouterConfig {
        name: node.name().to_string(),
        mode,
        vxlan: trestle_routes::VxlanSettings {
            name: opts.vxlan_device.clone(),
            vni: opts.vxlan_vni,
            port: opts.vxlan_port,
            checksum_off: opts
                .vxlan_checksum_offload
                .parse::<trestle_routes::offload::ChecksumOffload>()?
                .turn_off(&trestle_routes::offload::kernel_release()),
            guard: !opts.no_vxlan_guard,
        },
        underlay: trestle_routes::UnderlayChoice {
            node_ips: opts.node_ips.clone(),
            interface: opts.node_interface.clone(),
        },
        resync: seconds(opts.routes_resync).max(Duration::from_millis(100)),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let keys = trestle_ipam_etcd::Keys::new(&opts.etcd_prefix);
    trestle_routes::Router::start(node.etcd().clone(), keys, cfg)
        .map(Some)
        .map_err(|e| format!("routing: {e}"))
}

/// The etcd node, in etcd mode.
fn cluster_node(
    opts: &Options,
    boot_id: &str,
) -> Result<Option<Arc<trestle_ipam_etcd::Node>>, String> {
    if opts.store != "etcd" {
        return Ok(None);
    }
    let etcd = trestle_ipam_etcd::Etcd::new(&trestle_ipam_etcd::EtcdConfig {
        endpoints: opts.etcd_endpoints.clone(),
        tls: trestle_ipam_etcd::TlsFiles::from_flags(
            opts.etcd_ca.as_ref(),
            opts.etcd_cert.as_ref(),
            opts.etcd_key.as_ref(),
        ),
        timeout: seconds(opts.etcd_timeout).max(Duration::from_millis(50)),
    })
    .map_err(|e| e.to_string())?;
    let name = opts.node_name.clone().unwrap_or_else(hostname);
    if name.is_empty() || name.contains('/') {
        return Err(format!(
            "--node-name {name:?}: must be non-empty, without '/'"
        ));
    }
    // A restart of this daemon (same boot, same state directory) takes its registration over;
    // anything else with the same name waits for that registration's lease to lapse.
    if boot_id == "unknown" {
        return Err(
            "--store etcd needs the boot ID (/proc/sys/kernel/random/boot_id): without it a \
                    restart cannot be told from another machine with the same name"
                .into(),
        );
    }
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let instance = format!("{}:{boot_id}:{}", machine.trim(), opts.state_dir.display());
    let mut s = trestle_ipam_etcd::NodeSettings::new(&name, &opts.etcd_prefix, &instance);
    s.lease_ttl = Duration::from_secs(opts.lease_ttl.max(2));
    s.reclaim_grace = seconds(opts.reclaim_grace);
    s.release_grace = seconds(opts.block_release_grace);
    s.strict_affinity = opts.strict_affinity;
    s.block_sizes = opts.block_size.clone();
    Ok(Some(trestle_ipam_etcd::Node::new(etcd, s)))
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Runs the daemon until SIGTERM or SIGINT. Errors are start-up failures (and a server that
/// stopped unasked): the caller exits non-zero.
pub fn run(opts: Options) -> Result<(), String> {
    // Process-wide state is settled while this is the only thread: the environment
    // (activation's variables), the umask (bind) and the open-file limit.
    let nofile = raise_open_file_limit();
    // A conflist that could never be written is a configuration error: refuse it before serving.
    if let Some(t) = conflist_target(&opts) {
        t.load().map_err(|e| conflist_error(&e))?;
    }
    private_dir(&opts.state_dir)?;
    private_dir(&opts.delete_queue)?;
    let instance = activation::lock_instance(&opts.state_dir)?;
    // Listening before the store is loaded: a client that connects meanwhile waits in the
    // backlog instead of finding no socket.
    let listener = match activation::from_environment() {
        Some(l) => Listener::Activated(l),
        None => activation::bind(&opts.socket, opts.socket_mode, opts.socket_group)
            .map_err(|e| format!("cannot bind {}: {e}", opts.socket.display()))?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // On a worker, not on the main thread that block_on drives: the accept loop then runs
    // where the requests run, instead of handing every new connection across threads.
    let served = rt
        .block_on(async { tokio::spawn(serve(opts, listener, nofile)).await })
        .map_err(|e| format!("trestled panicked: {e}"))?;
    // The runtime goes first: dropping it waits for blocking work still running (an import,
    // a rebuild's scan), and only then may another daemon take the state directory.
    drop(rt);
    drop(instance);
    served
}

/// Raises the soft open-file limit to the hard one (systemd's default soft limit is 1,024,
/// which a few hundred connections and a store exhaust); the limit in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

async fn serve(opts: Options, listener: Listener, nofile: u64) -> Result<(), String> {
    let socket = listener.path().unwrap_or_else(|| opts.socket.clone());
    let boot = match &opts.boot_id_file {
        Some(f) => BootIdSource::File(f.clone()),
        None => BootIdSource::Kernel,
    };
    let boot_id = boot.current().unwrap_or_else(|| "unknown".into());
    let mut state = State {
        reuse_delay_ns: seconds(opts.reuse_delay).as_nanos() as u64,
        ..State::default()
    };
    let path = opts.state_dir.join("ipam.redb");
    let (db, opened, state) = {
        let (path, boot_id) = (path.clone(), boot_id.clone());
        tokio::task::spawn_blocking(move || {
            store::open(&path, &boot_id, &mut state).map(|(db, o)| (db, o, state))
        })
        .await
        .map_err(|e| format!("opening the store: {e}"))?
        .map_err(|e| e.to_string())?
    };
    metrics::reclaimed("earlier-boot", opened.dropped_earlier_boot);
    let store_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = store::Writer::new(db, path, store_ok.clone());
    // Imported host-local allocations are the node's alone, never entered in etcd: in etcd mode
    // there is no import (drain a node before switching its store).
    let import = !opts.host_local_dir.as_os_str().is_empty() && opts.store != "etcd";
    let host_local = import.then(|| HostLocal {
        dir: opts.host_local_dir.clone(),
        handover: trestle_ipam_core::Handover {
            socket: socket.clone(),
            delete_queue: Some(opts.delete_queue.clone()),
        },
        boot: boot.clone(),
    });
    let cluster = cluster_node(&opts, &boot_id)?;
    let mut daemon = Daemon::new(state, (writer, store_ok), boot_id, host_local);
    if let Some(node) = &cluster {
        // An ADD that must grow the node's blocks answers "try again later" past this.
        let grow = seconds(opts.etcd_timeout * 1.5).max(Duration::from_millis(100));
        daemon = daemon.with_cluster(node.clone(), grow);
        log::info!(
            "cluster store: etcd {} as node {}",
            opts.etcd_endpoints.join(","),
            node.name()
        );
    }
    let router = start_router(&opts, cluster.as_deref())?;
    if let Some(r) = router {
        let _ = daemon.routes.set(r);
    }
    let daemon = Arc::new(daemon);
    // Not ready for Allocate until the rebuild is done (in etcd mode it needs the node's
    // blocks, known once the node has registered: so in the background).
    daemon.recovering.store(opened.damaged, Ordering::Release);
    daemon.publish_all();
    daemon.import_all().await.map_err(|e| e.to_string())?;
    let queue = DeleteQueue::new(&opts.delete_queue);
    // Before serving: a DEL queued while the daemon was down is applied before any Allocate.
    repair::apply_queue(&daemon, &queue).await;

    let std_listener = listener.try_clone().map_err(|e| format!("listener: {e}"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let tokio_listener =
        tokio::net::UnixListener::from_std(std_listener).map_err(|e| format!("listener: {e}"))?;
    let uid = nix::unistd::geteuid().as_raw();
    let limits = conn::limits_for(
        nofile,
        opts.max_connections,
        opts.max_connections_per_client,
    );
    let admission = conn::Admission::new(limits, uid);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (accepted_tx, accepted) = tokio::sync::mpsc::channel(16);
    let mut tasks = spawn_background(&daemon, &opts, queue);
    if opened.damaged {
        let hold = seconds(opts.netns_grace.max(opts.reuse_delay));
        tasks.push(tokio::spawn(recovery::recover(
            daemon.clone(),
            opts.cni_cache_dir.clone(),
            hold,
            seconds(opts.rebuild_settle),
        )));
    }
    tasks.push(tokio::spawn(conn::accept_loop(
        conn::Listener::new(tokio_listener),
        admission,
        accepted_tx,
    )));
    daemon.ready.store(true, Ordering::Release);
    log::info!(
        "trestled {} serving on {} ({}), store {}, up to {} connections ({} per client)",
        env!("CARGO_PKG_VERSION"),
        socket.display(),
        if matches!(listener, Listener::Activated(_)) {
            "socket-activated"
        } else {
            "bound"
        },
        opts.state_dir.display(),
        limits.total,
        limits.per_client,
    );

    let access = Access {
        uid,
        gid: opts.socket_group,
    };
    let slots = intake::Slots::new(opts.max_concurrency, SLOT_WAIT);
    let service = Service::new(daemon.clone(), slots);
    let read_timeout = seconds(opts.read_timeout).max(Duration::from_millis(10));
    // The plugins' frames and gRPC share the socket: each connection goes where its first byte says.
    let frames = frames::Frames::new(service.clone(), access, read_timeout);
    tasks.push(tokio::spawn(frames.clone().sort(accepted, tx)));
    let server =
        IpamServer::new(service).max_decoding_message_size(trestle_ipam_api::MAX_MESSAGE_BYTES);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(64)
        .layer(intake::IntakeLayer { read_timeout })
        .add_service(InterceptedService::new(server, move |r| access.check(r)))
        .serve_with_incoming_shutdown(
            ReceiverStream::new(rx),
            shutdown(daemon.clone(), stop.clone()),
        )
        .await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    frames.drain().await;
    activation::unbind(&listener);
    // In-flight requests are done (tonic and the frame server drained them): commit whatever is
    // still queued.
    daemon.stop_store().await;
    drop(daemon);
    served.map_err(|e| format!("serving: {e}"))?;
    if !stop.load(Ordering::Acquire) {
        return Err("the server stopped although nobody asked it to".into());
    }
    log::info!("trestled stopped");
    Ok(())
}

/// How long a request whose message has arrived waits for a slot before it hears "busy".
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// Creates `dir` if needed and makes it the daemon's alone (0700): the store holds pod names,
/// and whoever can write the delete queue can free any pod's address.
fn private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn spawn_background(
    daemon: &Arc<Daemon>,
    opts: &Options,
    queue: DeleteQueue,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let settings = RepairSettings {
        interval: seconds(opts.repair_interval).max(Duration::from_millis(10)),
        grace: seconds(opts.netns_grace),
    };
    tasks.push(tokio::spawn(repair::run(daemon.clone(), settings)));
    let d = daemon.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            d.probe_store().await;
            d.retry_imports().await;
            repair::apply_queue(&d, &queue).await;
        }
    }));
    if let Some(node) = daemon.cluster().cloned() {
        tasks.push(tokio::spawn(node.clone().run()));
        let every = seconds(opts.cluster_interval).max(Duration::from_millis(100));
        tasks.push(tokio::spawn(cluster::housekeeping(
            daemon.clone(),
            node,
            every,
        )));
    }
    if daemon.routes.get().is_some() {
        tasks.push(tokio::spawn(cluster::publish_routes(daemon.clone())));
    }
    if let Some(target) = conflist_target(opts) {
        tasks.push(tokio::spawn(conflist::keep(daemon.clone(), target)));
    }
    if let Some(addr) = opts.metrics_addr {
        let d = daemon.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, d).await {
                log::error!("metrics on {addr}: {e}");
            }
        }));
    }
    tasks
}

fn conflist_error(e: &conflist::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// The conflist to keep written, when asked for.
fn conflist_target(opts: &Options) -> Option<conflist::Target> {
    Some(conflist::Target {
        source: opts.cni_conflist_source.clone()?,
        path: opts.cni_conflist_path.clone()?,
    })
}

/// Resolves at SIGTERM or SIGINT, after marking the daemon not ready (STATUS and /readyz say
/// so while in-flight requests finish).
async fn shutdown(daemon: Arc<Daemon>, asked: Arc<std::sync::atomic::AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    log::info!("stopping: finishing in-flight requests");
    asked.store(true, Ordering::Release);
    daemon.ready.store(false, Ordering::Release);
}
