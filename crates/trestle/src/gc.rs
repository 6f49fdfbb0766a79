//! GC (cni-spec.md §6, 1.1.0): every attachment of this network not in `cni.dev/valid-attachments` loses its
//! addresses (through IPAM GC); parked pairs left by a killed DEL or reaper are destroyed; the network's
//! masquerade and forward accept go when no attachment is valid. Keeps going past errors and reports the first.

use crate::config::BridgeConfig;
use crate::masq::{self, DEAD_GROUP};
use crate::{error, ipam, pair, reaper};
use cni_plugin::Request;
use cni_proto::CniError;
use trestle_netlink::Netlink;

/// The GC command.
pub fn gc(req: &Request) -> Result<(), CniError> {
    let cfg = BridgeConfig::parse(&req.conf, "")?;
    let valid = req.conf.valid_attachments()?.unwrap_or_default();
    let mut first_err = None;
    if let Err(e) = reap_parked() {
        first_err.get_or_insert(e);
    }
    // Masquerade and forward accept are per network, not per pod: they go when no attachment of the network is
    // valid any more (forward accept whatever forwardAccept says now: an earlier config may have made it).
    if valid.is_empty() {
        if let Err(e) = remove_rules(&req.conf.name, cfg.masq_backend) {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = ipam::gc(req, &cfg) {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

/// Removes the masquerade and the forward accept of `network`.
fn remove_rules(network: &str, kind: trestle_firewall::BackendKind) -> Result<(), CniError> {
    let mut fw = masq::HostFirewall::open(kind)?;
    let masquerade = fw.remove(network).map(|removed| {
        if removed {
            log::info!("gc: masquerade of {network} removed");
        }
    });
    let forward = fw.remove_forward(network).map(|removed| {
        if removed {
            log::info!("gc: forward accept of {network} removed");
        }
    });
    masquerade.and(forward)
}

/// Destroys the parked pairs of the plugin's namespace: in one batch when every member of [`DEAD_GROUP`] is a
/// host end trestle parked (a veth with a trestle host name), else one by one, leaving the strangers alone.
fn reap_parked() -> Result<(), CniError> {
    let mut nl = Netlink::open().map_err(|e| error::kernel("open netlink socket", e))?;
    let parked: Vec<_> = nl
        .links()
        .map_err(|e| error::kernel("list links", e))?
        .into_iter()
        .filter(|l| l.group == DEAD_GROUP)
        .collect();
    let (ours, strangers): (Vec<_>, Vec<_>) = parked
        .into_iter()
        .partition(|l| l.kind.as_deref() == Some("veth") && pair::is_host_name(&l.name));
    if ours.is_empty() {
        return Ok(());
    }
    if strangers.is_empty() {
        reaper::reap(&mut nl);
    } else {
        for l in &strangers {
            log::warn!(
                "gc: {} is in trestle's parked group but not a trestle veth: left alone",
                l.name
            );
        }
        for l in &ours {
            match nl.delete_link(l.index) {
                Ok(()) | Err(trestle_netlink::Error::NotFound) => {}
                Err(e) => return Err(error::kernel("delete parked veth", e)),
            }
        }
    }
    log::info!("gc: destroyed {} parked veth pairs", ours.len());
    Ok(())
}
