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

/// The demo's surroundings.
#[derive(Debug)]
pub struct Isolation {
    /// The "host" namespace plugins run in; `None` means the machine's own.
    pub host: Option<NetNs>,
    machine: Option<MachineState>,
}

/// What the demo must put back when it ran in the machine's namespace.
#[derive(Debug)]
struct MachineState {
    ip_forward: String,
    state_dir_existed: bool,
}

impl Isolation {
    /// Prepares the surroundings. Isolated mode unshares the mount namespace, so call this single-threaded.
    pub fn set_up(machine_netns: bool) -> Result<Isolation, Box<dyn std::error::Error>> {
        let iso = if machine_netns {
            Isolation {
                host: None,
                machine: Some(machine_preflight()?),
            }
        } else {
            private_mounts()?;
            let host = NetNs::new_anonymous()?;
            host.run(|| -> Result<(), trestle_netlink::Error> {
                let mut nl = Netlink::open()?;
                if let Some(lo) = nl.link_by_name("lo")? {
                    nl.set_up(lo.index, true)?;
                }
                Ok(())
            })??;
            Isolation {
                host: Some(host),
                machine: None,
            }
        };
        std::fs::create_dir_all(RUN_DIR)?;
        Ok(iso)
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
fn machine_preflight() -> Result<MachineState, Box<dyn std::error::Error>> {
    let mut nl = Netlink::open()?;
    if nl.link_by_name(BRIDGE)?.is_some() {
        return Err(format!(
            "{BRIDGE} already exists in this namespace; remove it or run without --machine-netns"
        )
        .into());
    }
    let state_dir_existed = Path::new(STATE_DIR).exists();
    if state_dir_existed && has_reservations(Path::new(STATE_DIR)) {
        return Err(format!("{STATE_DIR} holds reservations; the demo will not touch them").into());
    }
    Ok(MachineState {
        ip_forward: sysctl::get("net/ipv4/ip_forward")?.trim().to_owned(),
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
fn private_mounts() -> Result<(), Box<dyn std::error::Error>> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let state_root: PathBuf = if Path::new("/var/lib/cni").is_dir() {
        "/var/lib/cni".into()
    } else {
        "/var/lib".into()
    };
    for target in [Path::new("/run"), state_root.as_path()] {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )?;
    }
    Ok(())
}
