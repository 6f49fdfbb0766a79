//! Where the demo runs: a private "host" namespace (default), or the machine's own one with the state restored
//! afterwards.

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::{Path, PathBuf};
use trestle_netlink::{sysctl, Netlink};
use trestle_netns::NetNs;

/// The bridge of the classic config.
pub const BRIDGE: &str = "cni_bridge0";
/// host-local's (and trestle-ipam's) default state directory for the classic network.
pub const STATE_DIR: &str = "/var/lib/cni/networks/mybridge";
/// Where the demo writes its config.
pub const RUN_DIR: &str = "/run/trestle-demo";

/// Why the demo's surroundings could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Machine mode: the classic bridge already exists, and the demo would delete it.
    #[error("{BRIDGE} already exists in this namespace; remove it or run without --machine-netns")]
    BridgeExists,
    /// Machine mode: the classic network's state directory holds reservations.
    #[error("{STATE_DIR} holds reservations; the demo will not touch them")]
    Reservations,
    /// A netlink request failed.
    #[error("{what}")]
    Netlink {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_netlink::Error,
    },
    /// The private host namespace could not be made or entered.
    #[error("{what}")]
    Netns {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: trestle_netns::Error,
    },
    /// `net.ipv4.ip_forward` could not be read.
    #[error("cannot read net.ipv4.ip_forward")]
    IpForward(#[source] std::io::Error),
    /// The private mount namespace could not be made.
    #[error("cannot unshare the mount namespace")]
    Unshare(#[source] nix::Error),
    /// A mount of the private mount namespace failed.
    #[error("{what} {}", .target.display())]
    Mount {
        /// What was mounted.
        what: &'static str,
        /// Where.
        target: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install the Ctrl-C handler")]
    Signals(#[source] std::io::Error),
    /// The machine's mount namespace could not be kept for the runtime's clients.
    #[error("cannot open /proc/self/ns/mnt")]
    MountNs(#[source] std::io::Error),
    /// The demo's run directory could not be created.
    #[error("cannot create {RUN_DIR}")]
    RunDir(#[source] std::io::Error),
}

/// The demo's surroundings.
#[derive(Debug)]
pub struct Isolation {
    /// The "host" namespace plugins run in; `None` means the machine's own.
    pub host: Option<NetNs>,
    machine: Option<MachineState>,
    /// The machine's mount namespace, kept before the private one was made: a container runtime's client runs
    /// there, where its socket and state are.
    machine_mnt: Option<std::os::fd::OwnedFd>,
}

/// What the demo must put back when it ran in the machine's namespace.
#[derive(Debug)]
struct MachineState {
    ip_forward: String,
    state_dir_existed: bool,
}

impl Isolation {
    /// Prepares the surroundings. Isolated mode unshares the mount namespace, so call this single-threaded.
    pub fn set_up(machine_netns: bool) -> Result<Isolation, Error> {
        let iso = if machine_netns {
            Isolation {
                host: None,
                machine: Some(machine_preflight()?),
                machine_mnt: None,
            }
        } else {
            let machine_mnt = std::fs::File::open("/proc/self/ns/mnt")
                .map(std::os::fd::OwnedFd::from)
                .map_err(Error::MountNs)?;
            private_mounts()?;
            let host = NetNs::new_anonymous().map_err(|source| Error::Netns {
                what: "cannot create the private host namespace",
                source,
            })?;
            host.run(|| -> Result<(), trestle_netlink::Error> {
                let mut nl = Netlink::open()?;
                if let Some(lo) = nl.link_by_name("lo")? {
                    nl.set_up(lo.index, true)?;
                }
                Ok(())
            })
            .map_err(|source| Error::Netns {
                what: "cannot enter the private host namespace",
                source,
            })?
            .map_err(|source| Error::Netlink {
                what: "cannot set lo up in the private host namespace",
                source,
            })?;
            Isolation {
                host: Some(host),
                machine: None,
                machine_mnt: Some(machine_mnt),
            }
        };
        std::fs::create_dir_all(RUN_DIR).map_err(Error::RunDir)?;
        Ok(iso)
    }

    /// The machine's mount namespace when the demo runs in a private one.
    pub fn machine_mount_ns(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.machine_mnt.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether the demo runs in a private namespace.
    pub fn isolated(&self) -> bool {
        self.host.is_some()
    }

    /// Runs `f` in the host namespace (the private one, or the caller's).
    pub fn in_host<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.host {
            Some(ns) => ns.run(f).expect("demo host namespace helper thread"),
            None => f(),
        }
    }

    /// Puts the machine back as it was (machine mode); the private namespaces die with the process otherwise.
    pub fn tear_down(&self) {
        let _ = std::fs::remove_dir_all(RUN_DIR);
        let Some(state) = &self.machine else {
            return;
        };
        if let Ok(mut nl) = Netlink::open() {
            if let Ok(Some(br)) = nl.link_by_name(BRIDGE) {
                let _ = nl.delete_link(br.index);
            }
        }
        let _ = sysctl::set("net/ipv4/ip_forward", &state.ip_forward);
        if !state.state_dir_existed {
            let _ = std::fs::remove_dir_all(STATE_DIR);
        }
    }
}

/// Refuses to run over an existing `cni_bridge0` or `mybridge` state: the demo would otherwise delete them.
fn machine_preflight() -> Result<MachineState, Error> {
    let mut nl = Netlink::open().map_err(|source| Error::Netlink {
        what: "cannot open netlink",
        source,
    })?;
    let existing = nl.link_by_name(BRIDGE).map_err(|source| Error::Netlink {
        what: "cannot look up the bridge",
        source,
    })?;
    if existing.is_some() {
        return Err(Error::BridgeExists);
    }
    let state_dir_existed = Path::new(STATE_DIR).exists();
    if state_dir_existed && has_reservations(Path::new(STATE_DIR)) {
        return Err(Error::Reservations);
    }
    Ok(MachineState {
        ip_forward: sysctl::get("net/ipv4/ip_forward")
            .map_err(Error::IpForward)?
            .trim()
            .to_owned(),
        state_dir_existed,
    })
}

/// Whether a host-local style directory holds an address reservation (a file named by an IP).
pub fn has_reservations(dir: &Path) -> bool {
    reservations(dir).is_some_and(|r| !r.is_empty())
}

/// The reservation files (named by an IP address) of a host-local style directory.
pub fn reservations(dir: &Path) -> Option<Vec<String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    names.sort();
    Some(names)
}

/// A private mount namespace with tmpfs over `/run` and the IPAM state root, so nothing the demo writes
/// (namespace mounts, lock files, reservations) reaches the machine.
fn private_mounts() -> Result<(), Error> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(Error::Unshare)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| Error::Mount {
        what: "cannot make private (recursively) the mounts under",
        target: "/".into(),
        source,
    })?;
    let state_root: PathBuf = if Path::new("/var/lib/cni").is_dir() {
        "/var/lib/cni".into()
    } else {
        "/var/lib".into()
    };
    let mut targets = vec![PathBuf::from("/run"), state_root];
    // Where /var/run is a directory of its own rather than a link to /run, it gets a tmpfs too: the runtime mode
    // links a container's namespace under /var/run/netns, which must not reach the machine.
    let var_run = Path::new("/var/run");
    if var_run.is_dir() && std::fs::canonicalize(var_run).is_ok_and(|p| p != Path::new("/run")) {
        targets.push(var_run.to_owned());
    }
    for target in &targets {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(|source| Error::Mount {
            what: "cannot mount a tmpfs over",
            target: target.to_owned(),
            source,
        })?;
    }
    Ok(())
}
