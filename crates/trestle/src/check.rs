//! CHECK: compare the live state with the ADD result in `prevResult` (cni-spec.md §6).

use crate::config::BridgeConfig;
use crate::error::{self, code};
use crate::ns::Sides;
use crate::pair::{self, Candidate, Port};
use crate::{ipam, masq, ns};
use cni_plugin::Request;
use cni_proto::{CniError, CniResult, ErrorCode};
use trestle_netlink::{format_mac, Link, Netlink};

fn failed(msg: String) -> CniError {
    CniError::plugin(code::CHECK_FAILED, msg)
}

/// The CHECK command.
pub fn check(req: &Request) -> Result<(), CniError> {
    let cfg = BridgeConfig::parse(&req.conf, &req.env.args)?;
    let prev = req.conf.prev_result()?.ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "required prevResult missing".to_owned(),
        )
    })?;
    ipam::check(req, &cfg)?;
    let mut sides = Sides::open(ns::open_pod_netns(&req.env.netns)?)?;
    let bridge = check_bridge(&mut sides.host, &cfg)?;
    let link = check_container_link(&mut sides.pod, req, &prev)?;
    check_pair(&mut sides, req, &link, &bridge)?;
    check_addresses(&mut sides.pod, &link, &prev)?;
    check_routes(&mut sides.pod, &link, &prev)?;
    if cfg.ip_masq || cfg.forward_accept {
        let subnets: Vec<ipnet::IpNet> = prev.ips.iter().map(|ip| ip.address.trunc()).collect();
        let mut fw = masq::HostFirewall::open(cfg.masq_backend)?;
        if cfg.ip_masq {
            fw.check(&req.conf.name, &subnets)?;
        }
        if cfg.forward_accept {
            fw.check_forward(&req.conf.name, &subnets)?;
        }
    }
    Ok(())
}

fn check_bridge(host: &mut Netlink, cfg: &BridgeConfig) -> Result<Link, CniError> {
    let bridge = crate::links::check_bridge_kind(host, &cfg.bridge)?
        .ok_or_else(|| failed(format!("bridge {:?} does not exist", cfg.bridge)))?;
    if cfg.promisc_mode && !bridge.promisc {
        return Err(failed(format!(
            "bridge {:?} is not promiscuous",
            cfg.bridge
        )));
    }
    Ok(bridge)
}

fn check_container_link(
    cont: &mut Netlink,
    req: &Request,
    prev: &CniResult,
) -> Result<Link, CniError> {
    let ifname = &req.env.ifname;
    let link = cont
        .link_by_name(ifname)
        .map_err(|e| error::kernel("look up container interface", e))?
        .ok_or_else(|| {
            failed(format!(
                "interface {ifname:?} not found in {}",
                req.env.netns
            ))
        })?;
    let expected = prev
        .interfaces
        .iter()
        .find(|i| &i.name == ifname && i.sandbox.as_deref() == Some(req.env.netns.as_str()));
    if let (Some(want), Some(have)) = (expected.and_then(|i| i.mac.as_deref()), link.mac) {
        if !want.eq_ignore_ascii_case(&format_mac(have)) {
            return Err(failed(format!(
                "interface {ifname:?} has MAC {} instead of {want}",
                format_mac(have)
            )));
        }
    }
    if link.kind.as_deref() != Some("veth") {
        return Err(failed(format!("interface {ifname:?} is not a veth")));
    }
    Ok(link)
}

/// The interface must be this attachment's veth, its host end a port of the bridge (see [`crate::pair`]).
fn check_pair(
    sides: &mut Sides,
    req: &Request,
    link: &Link,
    bridge: &Link,
) -> Result<(), CniError> {
    let ids = sides.ids()?;
    let host_end = sides.host_peer(link)?;
    let names = pair::host_names(&req.env.container_id, &req.env.ifname);
    let candidate = Candidate {
        pod: link,
        host: host_end.as_ref(),
    };
    match pair::prove(&candidate, &ids, &names, Some(bridge.index)) {
        Ok(Port::Of(_)) => Ok(()),
        Ok(Port::Detached) => Err(failed(format!(
            "the host end of {} is not a port of {}",
            link.name, bridge.name
        ))),
        Err(why) => Err(failed(format!(
            "{} is not this attachment's veth: {why}",
            link.name
        ))),
    }
}

fn check_addresses(cont: &mut Netlink, link: &Link, prev: &CniResult) -> Result<(), CniError> {
    let have = cont
        .addresses(Some(link.index))
        .map_err(|e| error::kernel("list container addresses", e))?;
    for ip in &prev.ips {
        if !have.iter().any(|a| a.address == ip.address) {
            return Err(failed(format!(
                "address {} missing on {}",
                ip.address, link.name
            )));
        }
    }
    Ok(())
}

fn check_routes(cont: &mut Netlink, link: &Link, prev: &CniResult) -> Result<(), CniError> {
    let have = cont
        .routes(None)
        .map_err(|e| error::kernel("list container routes", e))?;
    for want in &prev.routes {
        let table = want.table.unwrap_or(254);
        let found = have.iter().any(|r| {
            r.dst == want.dst
                && r.table == table
                && r.oif.is_none_or(|o| o == link.index)
                && want.gw.is_none_or(|g| r.gateway == Some(g))
        });
        if !found {
            return Err(failed(format!("route to {} missing", want.dst)));
        }
    }
    Ok(())
}
