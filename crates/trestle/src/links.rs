//! Bridge and veth plumbing on the host side.

use crate::config::BridgeConfig;
use crate::error::{self, code};
use crate::pair;
use cni_proto::CniError;
use trestle_netlink::{Link, Netlink, PortOptions, VethEnd};
use trestle_netns::NetNs;

/// Fails when `name` exists and is not a bridge (checked before ADD changes anything).
pub fn check_bridge_kind(host: &mut Netlink, name: &str) -> Result<Option<Link>, CniError> {
    let link = host
        .link_by_name(name)
        .map_err(|e| error::kernel("look up bridge", e))?;
    match link {
        Some(l) if l.kind.as_deref() != Some("bridge") => Err(CniError::plugin(
            code::BRIDGE_CONFLICT,
            format!("{name:?} already exists but is not a bridge"),
        )),
        other => Ok(other),
    }
}

/// Returns the bridge, creating it (up, MAC pinned, `accept_ra` off) when missing. `found` is the bridge as
/// [`check_bridge_kind`] found it. Concurrent plugins may race to create it: EEXIST means another one won, which
/// is fine.
pub fn ensure_bridge(
    host: &mut Netlink,
    cfg: &BridgeConfig,
    found: Option<Link>,
) -> Result<Link, CniError> {
    if let Some(link) = found {
        return finish_bridge(host, cfg, link);
    }
    match host.create_bridge(&cfg.bridge, cfg.mtu, cfg.vlan != 0) {
        Ok(()) | Err(trestle_netlink::Error::Exists) => {}
        Err(e) => return Err(error::kernel("create bridge", e)),
    }
    let link = check_bridge_kind(host, &cfg.bridge)?.ok_or_else(|| {
        CniError::plugin(
            code::KERNEL,
            format!("bridge {:?} vanished after creation", cfg.bridge),
        )
    })?;
    // A bridge takes the lowest MAC of its ports, so its MAC (and the pods' ARP entries for the gateway) would
    // change as pods come and go. Setting it explicitly pins it.
    if let Some(mac) = link.mac {
        host.set_mac(link.index, mac)
            .map_err(|e| error::kernel("pin bridge MAC", e))?;
    }
    // The bridge must not learn routes from router advertisements of pods.
    let _ = trestle_netlink::sysctl::set(&format!("net/ipv6/conf/{}/accept_ra", cfg.bridge), "0");
    finish_bridge(host, cfg, link)
}

fn finish_bridge(host: &mut Netlink, cfg: &BridgeConfig, link: Link) -> Result<Link, CniError> {
    if cfg.promisc_mode && !link.promisc {
        host.set_promisc(link.index, true)
            .map_err(|e| error::kernel("set bridge promiscuous", e))?;
    }
    if cfg.vlan != 0 {
        host.set_vlan_filtering(link.index, true)
            .map_err(|e| error::kernel("enable vlan filtering", e))?;
    }
    if !link.up {
        host.set_up(link.index, true)
            .map_err(|e| error::kernel("set bridge up", e))?;
    }
    Ok(link)
}

/// Creates the veth pair, its pod end born as `ifname` inside `ns`, its host end in link `group`. Returns the
/// host end.
pub fn create_veth(
    host: &mut Netlink,
    ns: &NetNs,
    cfg: &BridgeConfig,
    (container_id, ifname): (&str, &str),
    group: u32,
) -> Result<Link, CniError> {
    let peer = VethEnd {
        name: ifname.to_owned(),
        mtu: cfg.mtu,
        mac: cfg.mac,
        group: None,
    };
    for attempt in 0..pair::NAME_ATTEMPTS {
        let name = pair::host_name(container_id, ifname, attempt);
        let end = VethEnd {
            name: name.clone(),
            mtu: cfg.mtu,
            mac: None,
            group: Some(group),
        };
        match host.create_veth(&end, &peer, ns.fd()) {
            Ok(()) => {
                return host
                    .link_by_name(&name)
                    .map_err(|e| error::kernel("look up host veth", e))?
                    .ok_or_else(|| CniError::plugin(code::KERNEL, format!("{name} vanished")));
            }
            // Either the host name collides (try the next) or the container name exists (checked up front,
            // so only a concurrent ADD of the same attachment, which the spec forbids).
            Err(trestle_netlink::Error::Exists) => continue,
            Err(e) => return Err(error::kernel("create veth", e)),
        }
    }
    Err(CniError::plugin(
        code::KERNEL,
        format!(
            "no free host veth name after {} attempts",
            pair::NAME_ATTEMPTS
        ),
    ))
}

/// The kernel's limit of ports per bridge: port numbers have 10 bits (`BR_MAX_PORTS`) and 0 is reserved, so the
/// 1024th port fails with `EXFULL`.
pub const MAX_PORTS: u32 = 1023;

/// Maps a failure to enslave a port; `EXFULL` is the bridge's port limit, which a user can act on.
fn attach_error(bridge: &Link, e: trestle_netlink::Error) -> CniError {
    if e.errno() == Some(libc::EXFULL) {
        return CniError::plugin(
            code::BRIDGE_FULL,
            format!(
                "bridge {:?} has the kernel's maximum of {MAX_PORTS} ports: spread the pods over more \
                 networks, each with its own bridge",
                bridge.name
            ),
        );
    }
    error::kernel("attach veth to bridge", e)
}

/// Attaches the host end to the bridge with the port settings, then brings it up (without an IPv6 link-local
/// address: see [`Netlink::set_port_up`]).
pub fn attach_port(
    host: &mut Netlink,
    cfg: &BridgeConfig,
    bridge: &Link,
    veth: &Link,
) -> Result<(), CniError> {
    if cfg.hairpin_mode || cfg.port_isolation || cfg.vlan != 0 {
        // Port options need the port on the bridge; it forwards only once it is up, below.
        host.set_master(veth.index, Some(bridge.index))
            .map_err(|e| attach_error(bridge, e))?;
    }
    if cfg.hairpin_mode || cfg.port_isolation {
        let opts = PortOptions {
            hairpin: cfg.hairpin_mode.then_some(true),
            isolated: cfg.port_isolation.then_some(true),
        };
        host.set_bridge_port(veth.index, &opts)
            .map_err(|e| error::kernel("set bridge port options", e))?;
    }
    if cfg.vlan != 0 {
        host.bridge_vlan_add(veth.index, cfg.vlan, true, true, false)
            .map_err(|e| error::kernel("set port vlan", e))?;
        if !cfg.preserve_default_vlan {
            host.bridge_vlan_del(veth.index, 1, false)
                .map_err(|e| error::kernel("remove default vlan", e))?;
        }
    }
    host.set_port_up(veth.index, bridge.index)
        .map_err(|e| attach_error(bridge, e))
}
