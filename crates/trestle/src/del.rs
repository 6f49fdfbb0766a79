//! DEL: idempotent and tolerant (cni-spec.md §6). DEL cuts the pod off before it releases the address, so an
//! address is never handed out while the old pod can still use it; it acts on the host side only for a pair it
//! has proved to be this attachment's (see [`crate::pair`]), and a retry finishes what a killed DEL began.

use crate::config::BridgeConfig;
use crate::error;
use crate::ipam;
use crate::masq::{self, DEAD_GROUP};
use crate::ns::{self, Sides};
use crate::pair::{self, Candidate};
use crate::reaper::{self, Reaping};
use cni_plugin::Request;
use cni_proto::CniError;
use trestle_firewall::BackendKind;
use trestle_netlink::{Link, Netlink};
use trestle_netns::NetNs;

/// What DEL needs of the config. A runtime DELs even after a failed ADD and retries a failed DEL: a config that
/// ADD refused must not make DEL fail forever. Such a config still names its IPAM plugin and bridge, and
/// masquerade removal is idempotent, so DEL then cleans up everything it could have made. CNI_ARGS only choose a
/// MAC, which DEL does not need.
struct Target {
    ip_masq: bool,
    backend: BackendKind,
    ipam_type: Option<String>,
    bridge: String,
}

impl Target {
    fn of(req: &Request) -> Target {
        match BridgeConfig::parse(&req.conf, "") {
            Ok(cfg) => Target {
                ip_masq: cfg.ip_masq,
                backend: cfg.masq_backend,
                ipam_type: cfg.ipam_type,
                bridge: cfg.bridge,
            },
            Err(e) => {
                log::warn!(
                    "DEL with a config ADD would refuse ({}): cleaning up everything",
                    e.msg
                );
                let bridge = req.conf.raw.get("bridge").and_then(|b| b.as_str());
                let bridge = bridge
                    .filter(|b| !b.is_empty())
                    .unwrap_or(crate::config::DEFAULT_BRIDGE);
                let backend = req.conf.raw.get("ipMasqBackend").and_then(|b| b.as_str());
                Target {
                    ip_masq: true,
                    backend: backend.and_then(|b| b.parse().ok()).unwrap_or_default(),
                    ipam_type: lenient_ipam_type(&req.conf),
                    bridge: bridge.to_owned(),
                }
            }
        }
    }
}

/// The DEL command; `reaping` says who destroys the parked pair.
pub fn del(req: &Request, reaping: Reaping) -> Result<(), CniError> {
    let target = Target::of(req);
    let start = std::time::Instant::now();
    log::debug!(
        "DEL {} {}: prevResult {}",
        req.env.container_id,
        req.env.ifname,
        prev_addresses(req)
    );
    let cut = cut_off(req, &target.bridge)?;
    log::debug!("DEL cut off at {:?}", start.elapsed());
    let parked = cut.as_ref().is_some_and(|c| c.parked);
    let mut first_err = None;
    // Whatever forwardAccept says now: rules an earlier config made must not outlive the network.
    if let Err(e) = remove_firewall(req, &target, cut) {
        first_err.get_or_insert(e);
    }
    if let Err(e) = ipam::del(req, target.ipam_type.as_deref()) {
        first_err.get_or_insert(e);
    }
    log::debug!("DEL released at {:?}", start.elapsed());
    if parked {
        reaper::finish(reaping);
    }
    first_err.map_or(Ok(()), Err)
}

/// The network's masquerade and forward accept are shared by its attachments: each goes when none that needs it
/// is left. The pod is already off the bridge (cut_off), so its own port does not count. `cut` brings cut_off's
/// socket and the bridge index it found, when it has them.
fn remove_firewall(req: &Request, target: &Target, cut: Option<CutOff>) -> Result<(), CniError> {
    // Cut off, the pod's port has left the bridge; not cut off (its namespace gone or not given), a port of
    // this attachment may still be there, dying with the namespace.
    let (mut host, index, own) = match cut {
        Some(c) => (c.host, c.bridge, Vec::new()),
        None => (
            ns::host_netlink()?,
            None,
            pair::host_names(&req.env.container_id, &req.env.ifname),
        ),
    };
    let bridge = masq::Bridge {
        name: &target.bridge,
        index,
        own: &own,
    };
    let mut fw = masq::HostFirewall::open(target.backend)?;
    let masquerade = match target.ip_masq {
        true => fw
            .remove_if_unused(&mut host, &req.conf.name, &bridge)
            .map(drop),
        false => Ok(()),
    };
    let forward = fw
        .remove_forward_if_unused(&mut host, &req.conf.name, &bridge)
        .map(drop);
    masquerade.and(forward)
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

/// What [`cut_off`] did, and its plugin-namespace socket, which the masquerade check reuses.
struct CutOff {
    host: Netlink,
    /// The network bridge's index, when cut_off looked it up.
    bridge: Option<u32>,
    /// A pair went to [`DEAD_GROUP`] and awaits the reaper.
    parked: bool,
}

/// Cuts the pod off. The pod link of this attachment (`CNI_IFNAME`, or else a `trdead` link a killed DEL left) that
/// is proved to be its pair is cut off: the pod's end goes down (taking the host end's carrier with it) and is
/// renamed out of the way (so `CNI_IFNAME` is free for a new ADD at once), and the host end leaves the bridge for
/// [`DEAD_GROUP`]. Any other such link is deleted inside the pod's namespace, which cannot touch a host link.
/// Success with nothing to do when the netns or the links are gone.
fn cut_off(req: &Request, bridge: &str) -> Result<Option<CutOff>, CniError> {
    if req.env.netns.is_empty() {
        return Ok(None);
    }
    let pod_ns = match NetNs::open(&req.env.netns) {
        Ok(ns) => ns,
        Err(trestle_netns::Error::NotFound(_)) | Err(trestle_netns::Error::NotNetNs(_)) => {
            // The namespace is gone and took the veth pair with it.
            return Ok(None);
        }
        Err(e) => return Err(error::netns(e)),
    };
    let mut sides = Sides::open(pod_ns)?;
    let names = pair::host_names(&req.env.container_id, &req.env.ifname);
    let mine = pod_links(&mut sides, &req.env.ifname, &names)?;
    let mut parked = false;
    let mut bridge_index = None;
    if !mine.is_empty() {
        let ids = sides.ids()?;
        bridge_index = crate::links::check_bridge_kind(&mut sides.host, bridge)
            .ok()
            .flatten()
            .map(|b| b.index);
        for link in &mine {
            parked |= cut_one(&mut sides, link, &ids, &names, bridge_index)?;
        }
    }
    Ok(Some(CutOff {
        host: sides.host,
        bridge: bridge_index,
        parked,
    }))
}

/// The pod's links of this attachment: `CNI_IFNAME` (one lookup, the usual case) or, when it is gone, the
/// `trdead` links a killed DEL left (one listing of the pod's few links).
fn pod_links(sides: &mut Sides, ifname: &str, names: &[String]) -> Result<Vec<Link>, CniError> {
    let found = sides
        .pod
        .link_by_name(ifname)
        .map_err(|e| error::kernel("look up pod interface", e))?;
    if let Some(link) = found {
        return Ok(vec![link]);
    }
    let dead: Vec<String> = names.iter().map(|n| pair::dead_name(n)).collect();
    Ok(sides
        .pod
        .links()
        .map_err(|e| error::kernel("list pod interfaces", e))?
        .into_iter()
        .filter(|l| dead.contains(&l.name))
        .collect())
}

/// Cuts off one pod link (see [`cut_off`]); returns whether a pair was parked.
fn cut_one(
    sides: &mut Sides,
    link: &Link,
    ids: &crate::ns::NsIds,
    names: &[String],
    bridge: Option<u32>,
) -> Result<bool, CniError> {
    let host_end = sides.host_peer(link)?;
    let candidate = Candidate {
        pod: link,
        host: host_end.as_ref(),
    };
    let tolerate = |r: Result<(), trestle_netlink::Error>| match r {
        Ok(()) | Err(trestle_netlink::Error::NotFound) => Ok(()),
        Err(e) => Err(error::kernel("cut off pod interface", e)),
    };
    let host_end = match (pair::prove(&candidate, ids, names, bridge), host_end) {
        (Ok(_), Some(h)) => h,
        (proof, _) => {
            let why = proof
                .err()
                .map_or_else(|| "no host end".to_owned(), |f| f.to_string());
            log::info!("DEL: deleting {} inside the pod only: {why}", link.name);
            tolerate(sides.pod.delete_link(link.index))?;
            return Ok(false);
        }
    };
    let dead = pair::dead_name(&host_end.name);
    if link.name != dead {
        // Down before renaming: older kernels refuse to rename an up device.
        tolerate(sides.pod.set_up(link.index, false))?;
        tolerate(sides.pod.set_name(link.index, &dead))?;
    }
    tolerate(sides.host.park(host_end.index, DEAD_GROUP))?;
    log::debug!("DEL parked {} ({})", host_end.name, link.name);
    Ok(true)
}

fn lenient_ipam_type(conf: &cni_proto::NetConf) -> Option<String> {
    let ty = conf.ipam.as_ref()?.get("type")?.as_str()?;
    (!ty.is_empty() && !ty.contains('/')).then(|| ty.to_owned())
}
