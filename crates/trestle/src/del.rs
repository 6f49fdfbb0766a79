//! DEL and GC: idempotent and tolerant (cni-spec.md §6). DEL cuts the pod off before it releases the address, so
//! an address is never handed out while the old pod can still use it.

use crate::add::{bridge_in_use, firewall, netlink_in};
use crate::config::BridgeConfig;
use crate::error;
use crate::ipam;
use cni_plugin::Request;
use cni_proto::CniError;
use trestle_netlink::Netlink;
use trestle_netns::NetNs;

/// The DEL command.
pub fn del(req: &Request) -> Result<(), CniError> {
    // A runtime DELs even after a failed ADD and retries a failed DEL: a config that ADD refused must not make DEL
    // fail forever. Such a config still names its IPAM plugin, and masquerade removal is idempotent, so DEL then
    // cleans up everything it could have made. CNI_ARGS only choose a MAC, which DEL does not need.
    let (ip_masq, ipam_type, bridge) = match BridgeConfig::parse(&req.conf, "") {
        Ok(cfg) => (cfg.ip_masq, cfg.ipam_type, cfg.bridge),
        Err(e) => {
            log::warn!(
                "DEL with a config ADD would refuse ({}): cleaning up everything",
                e.msg
            );
            let bridge = req.conf.raw.get("bridge").and_then(|b| b.as_str());
            let bridge = bridge
                .filter(|b| !b.is_empty())
                .unwrap_or(crate::config::DEFAULT_BRIDGE);
            (true, lenient_ipam_type(&req.conf), bridge.to_owned())
        }
    };
    let start = std::time::Instant::now();
    log::debug!(
        "DEL {} {}: prevResult {}",
        req.env.container_id,
        req.env.ifname,
        prev_addresses(req)
    );
    let (doomed, host) = match cut_off(req)? {
        Some(parked) => (Some(parked.host_end), Some(parked.host)),
        None => (None, None),
    };
    log::debug!("DEL cut off at {:?}", start.elapsed());
    let mut first_err = None;
    if ip_masq {
        if let Err(e) = remove_masquerade(req, &bridge, host) {
            first_err.get_or_insert(e);
        }
    } else {
        // Not inherited by the reaper `finish` may fork.
        drop(host);
    }
    if let Err(e) = ipam::del(req, ipam_type.as_deref()) {
        first_err.get_or_insert(e);
    }
    log::debug!("DEL released at {:?}", start.elapsed());
    finish(doomed);
    first_err.map_or(Ok(()), Err)
}

/// The network's masquerade is shared by its pods: it goes when the bridge has no port left. The pod is already off
/// the bridge (cut_off), so its own port does not count. `host` is cut_off's socket, when it opened one.
fn remove_masquerade(req: &Request, bridge: &str, host: Option<Netlink>) -> Result<(), CniError> {
    let mut host = host
        .map_or_else(Netlink::open, Ok)
        .map_err(|e| error::kernel("open netlink socket", e))?;
    firewall()?
        .remove_if_unused(&req.conf.name, || bridge_in_use(&mut host, bridge))
        .map(drop)
        .map_err(error::firewall)
}

/// The addresses of `prevResult`, for the log: shows which runtime state (the result cache) DEL was given.
fn prev_addresses(req: &Request) -> String {
    match req.conf.prev_result() {
        Ok(Some(r)) => {
            let ips: Vec<String> = r.ips.iter().map(|ip| ip.address.to_string()).collect();
            format!("[{}]", ips.join(", "))
        }
        Ok(None) => "none".into(),
        Err(e) => format!("unreadable ({})", e.msg),
    }
}

/// Hands the slow kernel work to a detached child: destroying the parked veth pairs, which waits for RCU grace
/// periods (tens of milliseconds, holding the kernel's rtnl lock at times). One reaper per host namespace at a
/// time: while one runs, a DEL leaves its pair to it, so pairs parked by concurrent DELs go in the same batches
/// (one unregistration, one wait, however many pairs) and a DEL forks nothing. A pair whose reaper died is
/// destroyed by the next reaper or by GC.
fn finish(doomed: Option<u32>) {
    if doomed.is_none() {
        return;
    }
    let Some(claim) = ReaperClaim::take() else {
        // Another reaper holds the claim, so it has not made its last pass yet: that pass sees this pair.
        log::debug!("DEL: pair left to the running reaper");
        return;
    };
    match cni_plugin::detach::detach(|| reap_until_idle(claim)) {
        Ok(()) => log::debug!("DEL: reaper started"),
        Err(e) => {
            // Without a child the work is done here: slower, never left undone.
            log::warn!("cannot detach cleanup: {e}");
            if let Ok(mut nl) = Netlink::open() {
                reap_dead_links(&mut nl);
            }
        }
    }
}

/// The reaper's loop: destroys batches of parked pairs while DELs keep parking them, then lets the claim go and
/// makes one last pass for pairs parked by DELs that saw the claim held.
fn reap_until_idle(claim: ReaperClaim) {
    let Ok(mut nl) = Netlink::open() else {
        return;
    };
    loop {
        std::thread::sleep(BATCH_WINDOW);
        if !reap_dead_links(&mut nl) {
            break;
        }
    }
    drop(claim);
    reap_dead_links(&mut nl);
}

/// The right to be this host namespace's reaper: an abstract unix socket name, which is scoped to the network
/// namespace and released by the kernel when its holder exits, however it exits.
struct ReaperClaim(#[allow(dead_code)] std::os::unix::net::UnixDatagram);

impl ReaperClaim {
    /// Takes the claim, or `None` when a reaper holds it. When the claim cannot be checked at all, take a
    /// private one: a reaper too many only costs a fork.
    fn take() -> Option<ReaperClaim> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let addr = SocketAddr::from_abstract_name(b"trestle-reaper").ok()?;
        match UnixDatagram::bind_addr(&addr) {
            Ok(sock) => Some(ReaperClaim(sock)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
            Err(e) => {
                log::warn!("reaper claim: {e}");
                UnixDatagram::unbound().ok().map(ReaperClaim)
            }
        }
    }
}

/// How long a detached child gathers parked pairs before destroying them.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// Destroys every parked veth pair of this namespace in one batch. Returns whether there were any.
pub fn reap_dead_links(nl: &mut Netlink) -> bool {
    match nl.delete_group(DEAD_GROUP) {
        Ok(()) => true,
        Err(trestle_netlink::Error::NotFound) => false,
        Err(e) => {
            log::warn!("destroying parked veth pairs: {e}");
            false
        }
    }
}

/// Link group of host veth ends that DEL has cut off and that await destruction ("tr" and 1).
pub const DEAD_GROUP: u32 = 0x7472_0001;

/// Name the container end takes when it is cut off, freeing `CNI_IFNAME` at once.
const DEAD_PREFIX: &str = "trdead";

/// Cuts the pod off: its interface goes down (taking the host end's carrier with it) and is renamed out of the
/// way (so `CNI_IFNAME` is free for a new ADD at once), and the host end leaves the bridge and joins
/// [`DEAD_GROUP`]. Success with nothing to do when the netns or the link is gone.
fn cut_off(req: &Request) -> Result<Option<Parked>, CniError> {
    if req.env.netns.is_empty() {
        return Ok(None);
    }
    let ns = match NetNs::open(&req.env.netns) {
        Ok(ns) => ns,
        Err(trestle_netns::Error::NotFound(_)) | Err(trestle_netns::Error::NotNetNs(_)) => {
            // The namespace is gone and took the veth pair with it.
            return Ok(None);
        }
        Err(e) => return Err(error::netns(e)),
    };
    let mut cont = netlink_in(&ns)?;
    let mut host = Netlink::open().map_err(|e| error::kernel("open netlink socket", e))?;
    let Some(link) = cont
        .link_by_name(&req.env.ifname)
        .map_err(|e| error::kernel("look up container interface", e))?
    else {
        return Ok(None);
    };
    let peer = match link.peer_index {
        Some(p) if link.kind.as_deref() == Some("veth") => host
            .link_by_index(p)
            .map_err(|e| error::kernel("look up host veth", e))?,
        _ => None,
    };
    let Some(peer) = peer else {
        // Not a pair we can detach (or its host end is elsewhere): delete it here.
        return match cont.delete_link(link.index) {
            Ok(()) | Err(trestle_netlink::Error::NotFound) => Ok(None),
            Err(e) => Err(error::kernel("delete container interface", e)),
        };
    };
    log::debug!("DEL found the pair");
    let dead = format!("{DEAD_PREFIX}{:x}", peer.index);
    let tolerate = |r: Result<(), trestle_netlink::Error>| match r {
        Ok(()) | Err(trestle_netlink::Error::NotFound) => Ok(()),
        Err(e) => Err(error::kernel("cut off container interface", e)),
    };
    // Down before renaming: older kernels refuse to rename an up device.
    tolerate(cont.set_up(link.index, false))?;
    tolerate(cont.set_name(link.index, &dead))?;
    tolerate(host.park(peer.index, DEAD_GROUP))?;
    Ok(Some(Parked {
        host_end: peer.index,
        host,
    }))
}

/// A pair [`cut_off`] parked, and its host-namespace socket, which the masquerade check reuses.
struct Parked {
    host_end: u32,
    host: Netlink,
}

/// The GC command: every attachment of this network not in `cni.dev/valid-attachments` loses (through IPAM GC) its
/// addresses; cut-off pairs left by a crash are destroyed; the network's masquerade goes when no attachment is
/// valid. Keeps going past errors and reports the first.
pub fn gc(req: &Request) -> Result<(), CniError> {
    let cfg = BridgeConfig::parse(&req.conf, "")?;
    let valid = req.conf.valid_attachments()?.unwrap_or_default();
    let mut first_err = None;
    if let Ok(mut nl) = Netlink::open() {
        if reap_dead_links(&mut nl) {
            log::info!("gc: destroyed parked veth pairs");
        }
    }
    // Masquerade is per network, not per pod: it goes when no attachment of the network is valid any more.
    if valid.is_empty() {
        match firewall().and_then(|mut f| f.remove(&req.conf.name).map_err(error::firewall)) {
            Ok(true) => log::info!("gc: masquerade of {} removed", req.conf.name),
            Ok(false) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Err(e) = ipam::gc(req, &cfg) {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

fn lenient_ipam_type(conf: &cni_proto::NetConf) -> Option<String> {
    let ty = conf.ipam.as_ref()?.get("type")?.as_str()?;
    (!ty.is_empty() && !ty.contains('/')).then(|| ty.to_owned())
}
