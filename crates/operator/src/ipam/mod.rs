//! `trestlectl ipam show|release|gc`: an operator's view of the node's IP address allocations, and repairs by hand.
//!
//! Two sources. trestled, over its socket (the List, Release and Gc RPCs of `trestle.ipam.v1`); or a host-local
//! `dataDir`, read directly for `show` and changed under the same lock host-local and trestle-ipam take for
//! `release` and `gc`, so a repair never races a plugin. Without `--socket` or `--data-dir` the daemon's default
//! socket is used when it exists, else the default `dataDir`.

use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) mod cluster;

use serde::Serialize;
use trestle_ipam::daemon::{CallError, DaemonClient};
use trestle_ipam_api::v1;
use trestle_ipam_api::version::peer;
use trestle_ipam_core::{
    Attachment, DaemonSettings, DiskStore, IpamError, Reservation, Store, DEFAULT_DATA_DIR,
    DEFAULT_SOCKET, HANDOVER_FILE,
};

/// Where allocations are read and released.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// trestled's socket (default: /run/trestle/ipam.sock when it exists, else the dataDir).
    #[arg(long, value_name = "PATH", conflicts_with = "data_dir")]
    pub socket: Option<PathBuf>,
    /// A host-local dataDir, read and changed directly (default: /var/lib/cni/networks).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The `trestlectl ipam` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Pools (used, free, cooling addresses) and every allocation.
    Show {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
        /// Print JSON (full container IDs, stable field names).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: SourceArgs,
        /// The cluster instead of this node: blocks per node, held and borrowed addresses, expired nodes.
        #[command(flatten)]
        etcd: cluster::EtcdArgs,
    },
    /// Release everything a dead cluster node holds in etcd (its blocks and borrowed addresses). Asks for
    /// confirmation: its pods must be gone, or their addresses will be handed out again.
    ReleaseNode {
        /// The node's name.
        node: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// Print what was released as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: cluster::EtcdArgs,
    },
    /// Release every address of one attachment.
    Release {
        /// The network name.
        #[arg(long)]
        network: String,
        /// The container ID (CNI_CONTAINERID), in full.
        #[arg(long)]
        container: String,
        /// The interface (CNI_IFNAME).
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Print what was released as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Release every address of a network whose attachment is not named valid (CNI GC semantics).
    Gc {
        /// The network name.
        #[arg(long)]
        network: String,
        /// An attachment still in use, CONTAINER[/IFNAME] (default interface eth0); repeat or list several.
        #[arg(long = "valid", value_name = "CONTAINER[/IFNAME]", num_args = 1..)]
        valid: Vec<String>,
        /// No attachment is valid: release every address of the network.
        #[arg(long, conflicts_with = "valid")]
        all: bool,
        /// Print what was released as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
}

impl Command {
    /// The subcommand's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Show { .. } => "show",
            Command::ReleaseNode { .. } => "release-node",
            Command::Release { .. } => "release",
            Command::Gc { .. } => "gc",
        }
    }
}

/// Where the allocations are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// trestled, at this socket.
    Daemon(PathBuf),
    /// A host-local dataDir.
    DataDir(PathBuf),
}

impl Source {
    /// The source the arguments name, or the default one.
    pub fn resolve(args: &SourceArgs) -> Source {
        Source::resolve_with(args, Path::new(DEFAULT_SOCKET), Path::new(DEFAULT_DATA_DIR))
    }

    fn resolve_with(args: &SourceArgs, socket: &Path, data_dir: &Path) -> Source {
        match (&args.socket, &args.data_dir) {
            (Some(s), _) => Source::Daemon(s.clone()),
            (None, Some(d)) => Source::DataDir(d.clone()),
            // A socket file counts even when nothing listens: a node whose daemon is down gets a clear connect error
            // instead of a quiet switch to dataDir files the daemon may have taken over.
            (None, None) if socket.symlink_metadata().is_ok() => Source::Daemon(socket.to_owned()),
            (None, None) => Source::DataDir(data_dir.to_owned()),
        }
    }
}

/// Why an `ipam` command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answered on the socket.
    #[error("cannot connect to trestled at {}: {reason}", socket.display())]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// The last connect error.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("trestled at {}: {message}", socket.display())]
    Daemon {
        /// The socket.
        socket: PathBuf,
        /// Its message.
        message: String,
    },
    /// The daemon has no pool of that name.
    #[error("trestled at {} has no network {network:?}", socket.display())]
    UnknownNetwork {
        /// The socket.
        socket: PathBuf,
        /// The network asked for.
        network: String,
    },
    /// The dataDir has no directory for that network.
    #[error("no network {network:?} in dataDir {}", dir.display())]
    NoNetwork {
        /// The dataDir.
        dir: PathBuf,
        /// The network asked for.
        network: String,
    },
    /// The network's directory belongs to trestled now.
    #[error(
        "network {network} in dataDir {} was handed over to trestled at {}: use --socket {}",
        dir.display(), socket.display(), socket.display()
    )]
    HandedOver {
        /// The dataDir.
        dir: PathBuf,
        /// The network.
        network: String,
        /// The daemon's socket, as the handover file records it.
        socket: PathBuf,
    },
    /// The store refused or failed.
    #[error("dataDir {}", dir.display())]
    Store {
        /// The dataDir.
        dir: PathBuf,
        /// The store's error.
        #[source]
        source: IpamError,
    },
    /// A dataDir file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A command-line value is not a valid network name, container ID or interface name.
    #[error("{arg} {value:?}: {reason}")]
    Invalid {
        /// The option.
        arg: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `gc` without `--valid` or `--all`.
    #[error(
        "refusing to release every address of network {0}: name the attachments still in use with \
         --valid CONTAINER[/IFNAME], or pass --all"
    )]
    NoValid(String),
    /// Some addresses were released before a failure.
    #[error("released {} address(es), then failed", released.len())]
    Incomplete {
        /// What was released.
        released: Vec<Released>,
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// stdout could not be written.
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    /// The cluster store failed or refused.
    #[error("{0}")]
    Cluster(String),
}

/// What `show` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// Where it was read.
    pub source: SourceInfo,
    /// One per network.
    pub pools: Vec<Pool>,
    /// Every allocation, by network and address.
    pub allocations: Vec<Allocation>,
}

/// The source of a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceInfo {
    /// `daemon` or `dataDir`.
    pub kind: SourceKind,
    /// The socket or the dataDir.
    pub path: String,
    /// The daemon's software and version, as it names itself.
    pub server: Option<String>,
    /// What the daemon says an operator should know (STATUS warnings: an untrusted delete
    /// queue, a failed import).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The two kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceKind {
    /// trestled.
    Daemon,
    /// A host-local dataDir.
    DataDir,
}

/// One network's addresses.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The network name.
    pub network: String,
    /// The range sets last allocated from, `start-end[,start-end]` per set (the daemon only: a dataDir does not
    /// record its ranges).
    pub range_sets: Vec<String>,
    /// Addresses allocated.
    pub used: u64,
    /// Addresses neither used nor cooling; unknown for a dataDir.
    pub free: Option<u64>,
    /// Released addresses waiting out the reuse delay; unknown for a dataDir.
    pub cooling: Option<u64>,
    /// For a dataDir network handed over to trestled: the daemon's socket (its files may be stale).
    pub handed_over_to: Option<String>,
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The network name.
    pub network: String,
    /// The address, without prefix length.
    pub address: String,
    /// The full container ID.
    pub container_id: String,
    /// The interface; empty for a legacy (container ID only) host-local reservation.
    #[serde(rename = "ifName")]
    pub ifname: String,
    /// The Kubernetes pod, when the runtime passed K8S_POD_* (the daemon only).
    pub pod: Option<Pod>,
    /// CNI_NETNS of the ADD (the daemon only).
    pub netns: Option<String>,
    /// When it was allocated, ms since the Unix epoch (a dataDir: the reservation file's mtime).
    pub since_unix_ms: Option<i64>,
}

/// Kubernetes pod metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// An address `release` or `gc` freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    /// The network name.
    pub network: String,
    /// The address.
    pub address: String,
    /// Its container ID.
    pub container_id: String,
    /// Its interface (empty for a legacy reservation).
    #[serde(rename = "ifName")]
    pub ifname: String,
}

/// Runs one `ipam` subcommand, writing its output to `out`.
pub fn run(cmd: &Command, out: &mut dyn Write) -> Result<(), Error> {
    let text = match cmd {
        Command::Show { json, etcd, .. } if etcd.endpoints.is_some() => cluster::show(etcd, *json)?,
        Command::ReleaseNode {
            node,
            yes,
            json,
            etcd,
        } => cluster::release_node(etcd, node, *yes, *json)?,
        Command::Show {
            network,
            json,
            source,
            ..
        } => {
            let listing = show(&Source::resolve(source), network.as_deref())?;
            if *json {
                to_json(&listing)
            } else {
                render_listing(&listing, now_ms())
            }
        }
        Command::Release {
            network,
            container,
            ifname,
            json,
            source,
        } => {
            let att = Attachment::new(container.clone(), ifname.clone());
            let released = release(&Source::resolve(source), network, &att)?;
            released_output(network, &released, *json)
        }
        Command::Gc {
            network,
            valid,
            all,
            json,
            source,
        } => {
            let valid = valid_attachments(network, valid, *all)?;
            match gc(&Source::resolve(source), network, &valid) {
                Ok(released) => released_output(network, &released, *json),
                Err(Error::Incomplete { released, source }) => {
                    // What was freed is gone either way: say so before the error.
                    write_out(out, &released_output(network, &released, *json))?;
                    return Err(Error::Incomplete { released, source });
                }
                Err(e) => return Err(e),
            }
        }
    };
    write_out(out, &text)
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Plain structs of strings and numbers always serialise.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn released_output(network: &str, released: &[Released], json: bool) -> String {
    if json {
        to_json(&released)
    } else {
        render_released(network, released)
    }
}

/// The valid attachments of `gc`, refusing an empty list unless `all` says it is meant.
pub fn valid_attachments(
    network: &str,
    valid: &[String],
    all: bool,
) -> Result<Vec<Attachment>, Error> {
    if valid.is_empty() && !all {
        return Err(Error::NoValid(network.to_owned()));
    }
    valid
        .iter()
        .map(|v| {
            let a = crate::attach::parse_valid(v);
            let att = Attachment::new(a.container_id, a.ifname);
            validate_attachment(&att, ["--valid", "--valid"])?;
            Ok(att)
        })
        .collect()
}

fn invalid(arg: &'static str, value: &str, e: cni_proto::CniError) -> Error {
    Error::Invalid {
        arg,
        value: value.to_owned(),
        reason: e.msg,
    }
}

fn validate_network(network: &str) -> Result<(), Error> {
    cni_proto::validate_network_name(network).map_err(|e| invalid("--network", network, e))
}

/// The daemon rejects what CNI rejects; checking here gives the same answer for a dataDir and a message naming
/// the option.
fn validate_attachment(att: &Attachment, args: [&'static str; 2]) -> Result<(), Error> {
    cni_proto::validate_container_id(&att.container_id)
        .map_err(|e| invalid(args[0], &att.container_id, e))?;
    cni_proto::validate_ifname(&att.ifname).map_err(|e| invalid(args[1], &att.ifname, e))
}

/// Pools and allocations, of one network or all.
pub fn show(source: &Source, network: Option<&str>) -> Result<Listing, Error> {
    if let Some(n) = network {
        validate_network(n)?;
    }
    let mut listing = match source {
        Source::Daemon(socket) => show_daemon(socket, network)?,
        Source::DataDir(dir) => show_data_dir(dir, network)?,
    };
    listing.pools.sort_by(|a, b| a.network.cmp(&b.network));
    listing.allocations.sort_by_key(|a| {
        (
            a.network.clone(),
            a.address.parse::<IpAddr>().ok(),
            a.address.clone(),
        )
    });
    Ok(listing)
}

/// Releases every address of `att` in `network`.
pub fn release(source: &Source, network: &str, att: &Attachment) -> Result<Vec<Released>, Error> {
    validate_network(network)?;
    validate_attachment(att, ["--container", "--ifname"])?;
    match source {
        Source::Daemon(socket) => release_daemon(socket, network, att),
        Source::DataDir(dir) => release_data_dir(dir, network, att),
    }
}

/// Releases every address of `network` whose attachment is not in `valid`. An empty `valid` releases everything:
/// callers refuse that unless it is meant (see [`valid_attachments`]).
pub fn gc(source: &Source, network: &str, valid: &[Attachment]) -> Result<Vec<Released>, Error> {
    validate_network(network)?;
    match source {
        Source::Daemon(socket) => gc_daemon(socket, network, valid),
        Source::DataDir(dir) => gc_data_dir(dir, network, valid),
    }
}

// ---- trestled ----

mod daemon;
mod datadir;
mod render;
#[cfg(test)]
mod tests;

use daemon::*;
use datadir::*;
pub use render::{age, now_ms, render_listing, render_released, short_id};
