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
    let doomed = cut_off(req)?;
    let mut first_err = None;
    if ip_masq {
        // The network's masquerade is shared by its pods: it goes when the bridge has no port left. The pod is
        // already off the bridge (cut_off), so its own port does not count.
        let removed = Netlink::open()
            .map_err(|e| error::kernel("open netlink socket", e))
            .and_then(|mut host| {
                firewall()?
                    .remove_if_unused(&req.conf.name, || bridge_in_use(&mut host, &bridge))
                    .map_err(error::firewall)
            });
        if let Err(e) = removed {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = ipam::del(req, ipam_type.as_deref()) {
        first_err.get_or_insert(e);
    }
    finish(doomed);
    first_err.map_or(Ok(()), Err)
}

/// Hands the slow kernel work to a detached child: destroying the cut-off veth pair, which waits for RCU grace
/// periods (tens of milliseconds). The child also reaps pairs a crashed DEL left.
fn finish(doomed: Option<u32>) {
    let Some(index) = doomed else {
        return;
    };
    let spawned = cni_plugin::detach::detach(move || {
        if let Ok(mut nl) = Netlink::open() {
            let _ = nl.delete_link(index);
            reap_dead_links(&mut nl);
        }
    });
    if let Err(e) = spawned {
        // Without a child the work is done here: slower, never left undone.
        log::warn!("cannot detach cleanup: {e}");
        if let Ok(mut nl) = Netlink::open() {
            let _ = nl.delete_link(index);
        }
    }
}

/// Deletes every veth a DEL cut off but did not get to destroy (its child was killed, the node crashed).
pub fn reap_dead_links(nl: &mut Netlink) -> usize {
    let Ok(links) = nl.links() else {
        return 0;
    };
    links
        .iter()
        .filter(|l| l.name.starts_with(DEAD_PREFIX))
        .filter(|l| nl.delete_link(l.index).is_ok())
        .count()
}

/// Name prefix of cut-off veth ends awaiting destruction.
pub const DEAD_PREFIX: &str = "trdead";

fn lenient_ipam_type(conf: &cni_proto::NetConf) -> Option<String> {
    let ty = conf.ipam.as_ref()?.get("type")?.as_str()?;
    (!ty.is_empty() && !ty.contains('/')).then(|| ty.to_owned())
}

/// Cuts the pod off: its interface goes down and is renamed out of the way (so `CNI_IFNAME` is free for a new ADD
/// at once), and the host end leaves the bridge and is renamed `trdead<index>`. Returns the host end's index for
/// the detached destruction. Success with nothing to do when the netns or the link is gone.
fn cut_off(req: &Request) -> Result<Option<u32>, CniError> {
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
    let Some(link) = cont
        .link_by_name(&req.env.ifname)
        .map_err(|e| error::kernel("look up container interface", e))?
    else {
        return Ok(None);
    };
    let mut host = Netlink::open().map_err(|e| error::kernel("open netlink socket", e))?;
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
    let dead = format!("{DEAD_PREFIX}{:x}", peer.index);
    let tolerate = |r: Result<(), trestle_netlink::Error>| match r {
        Ok(()) | Err(trestle_netlink::Error::NotFound) => Ok(()),
        Err(e) => Err(error::kernel("cut off container interface", e)),
    };
    // Down before renaming: older kernels refuse to rename an up device.
    tolerate(cont.set_up(link.index, false))?;
    tolerate(cont.set_name(link.index, &dead))?;
    tolerate(host.set_master(peer.index, None))?;
    tolerate(host.set_up(peer.index, false))?;
    tolerate(host.set_name(peer.index, &dead))?;
    Ok(Some(peer.index))
}

/// The GC command: every attachment of this network not in `cni.dev/valid-attachments` loses (through IPAM GC) its
/// addresses; cut-off pairs left by a crash are destroyed; the network's masquerade goes when no attachment is
/// valid. Keeps going past errors and reports the first.
pub fn gc(req: &Request) -> Result<(), CniError> {
    let cfg = BridgeConfig::parse(&req.conf, "")?;
    let valid = req.conf.valid_attachments()?.unwrap_or_default();
    let mut first_err = None;
    if let Ok(mut nl) = Netlink::open() {
        let reaped = reap_dead_links(&mut nl);
        if reaped > 0 {
            log::info!("gc: destroyed {reaped} cut-off veth pairs");
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
