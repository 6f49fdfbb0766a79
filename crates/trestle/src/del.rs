//! DEL and GC: idempotent and tolerant (cni-spec.md §6). DEL cuts the pod off before it releases the address, so
//! an address is never handed out while the old pod can still use it.

use crate::add::{attachment, firewall, netlink_in};
use crate::config::BridgeConfig;
use crate::error;
use crate::ipam;
use cni_plugin::Request;
use cni_proto::CniError;
use trestle_firewall::Attachment;
use trestle_netns::NetNs;

/// The DEL command.
pub fn del(req: &Request) -> Result<(), CniError> {
    // A runtime DELs even after a failed ADD and retries a failed DEL: a config that ADD refused must not make DEL
    // fail forever. Such a config still names its IPAM plugin, and masquerade removal is idempotent, so DEL then
    // cleans up everything it could have made. CNI_ARGS only choose a MAC, which DEL does not need.
    let (ip_masq, ipam_type) = match BridgeConfig::parse(&req.conf, "") {
        Ok(cfg) => (cfg.ip_masq, cfg.ipam_type),
        Err(e) => {
            log::warn!(
                "DEL with a config ADD would refuse ({}): cleaning up everything",
                e.msg
            );
            (true, lenient_ipam_type(&req.conf))
        }
    };
    cut_off(req)?;
    let mut first_err = None;
    if ip_masq {
        if let Err(e) = firewall().and_then(|mut f| {
            f.remove_pod(&req.conf.name, &attachment(req))
                .map_err(error::firewall)
        }) {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = ipam::del_type(req, ipam_type.as_deref()) {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

fn lenient_ipam_type(conf: &cni_proto::NetConf) -> Option<String> {
    let ty = conf.ipam.as_ref()?.get("type")?.as_str()?;
    (!ty.is_empty() && !ty.contains('/')).then(|| ty.to_owned())
}

/// Removes the container interface (and with it the host end). Success when the netns or the link is gone.
fn cut_off(req: &Request) -> Result<(), CniError> {
    if req.env.netns.is_empty() {
        return Ok(());
    }
    let ns = match NetNs::open(&req.env.netns) {
        Ok(ns) => ns,
        Err(trestle_netns::Error::NotFound(_)) | Err(trestle_netns::Error::NotNetNs(_)) => {
            // The namespace is gone and took the veth pair with it.
            return Ok(());
        }
        Err(e) => return Err(error::netns(e)),
    };
    let mut cont = netlink_in(&ns)?;
    let Some(link) = cont
        .link_by_name(&req.env.ifname)
        .map_err(|e| error::kernel("look up container interface", e))?
    else {
        return Ok(());
    };
    match cont.delete_link(link.index) {
        Ok(()) | Err(trestle_netlink::Error::NotFound) => Ok(()),
        Err(e) => Err(error::kernel("delete container interface", e)),
    }
}

/// The GC command: every attachment of this network not in `cni.dev/valid-attachments` loses its masquerade
/// elements and (through IPAM GC) its addresses. Keeps going past errors and reports the first.
pub fn gc(req: &Request) -> Result<(), CniError> {
    let cfg = BridgeConfig::parse(&req.conf, "")?;
    let valid: Vec<Attachment> = req
        .conf
        .valid_attachments()?
        .unwrap_or_default()
        .into_iter()
        .map(|a| Attachment {
            container_id: a.container_id,
            ifname: a.ifname,
        })
        .collect();
    let mut first_err = None;
    match firewall().and_then(|mut f| f.gc(&req.conf.name, &valid).map_err(error::firewall)) {
        Ok(removed) => {
            for (att, ip) in removed {
                log::info!(
                    "gc: masquerade of {ip} ({}/{}) removed",
                    att.container_id,
                    att.ifname
                );
            }
        }
        Err(e) => {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = ipam::gc(req, &cfg) {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}
