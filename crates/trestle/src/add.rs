//! ADD: validate everything, reserve the address, validate the IPAM result, then build the links; on any failure
//! undo what was done.

use crate::config::BridgeConfig;
use crate::error::{self, code};
use crate::ns::Sides;
use crate::result::{conflicting, gateway_addrs};
use crate::{ipam, links, masq, ns, result};
use cni_plugin::Request;
use cni_proto::{CniError, CniResult, Interface, Route};
use ipnet::IpNet;
use trestle_netlink::{format_mac, sysctl, Link, Netlink};

/// What ADD has changed so far, undone in reverse on failure.
#[derive(Default)]
struct Undo {
    ipam: bool,
    host_veth: Option<u32>,
    masquerade: bool,
    forward: bool,
}

/// Sockets and handles of one ADD.
struct Ctx<'a> {
    req: &'a Request,
    cfg: BridgeConfig,
    sides: Sides,
    /// The bridge as found before any change (`None`: ADD creates it).
    bridge: Option<Link>,
    /// The bridge's addresses as read by the conflict check (empty when not read).
    bridge_addrs: Vec<IpNet>,
}

/// The ADD command.
pub fn add(req: &Request) -> Result<CniResult, CniError> {
    let cfg = BridgeConfig::parse(&req.conf, &req.env.args)?;
    let mut sides = Sides::open(ns::open_pod_netns(&req.env.netns)?)?;
    let bridge = links::check_bridge_kind(&mut sides.host, &cfg.bridge)?;
    let mut ctx = Ctx {
        req,
        cfg,
        sides,
        bridge,
        bridge_addrs: Vec::new(),
    };
    preflight(&mut ctx)?;
    let mut undo = Undo::default();
    match build(&mut ctx, &mut undo) {
        Ok(result) => Ok(result),
        Err(e) => {
            rollback(&mut ctx, undo);
            Err(e)
        }
    }
}

/// Checks that need no change: the container interface must not exist (the bridge name, free or a bridge, is
/// checked when the bridge is looked up).
fn preflight(ctx: &mut Ctx) -> Result<(), CniError> {
    let ifname = &ctx.req.env.ifname;
    let existing = ctx
        .sides
        .pod
        .link_by_name(ifname)
        .map_err(|e| error::kernel("look up container interface", e))?;
    if existing.is_some() {
        return Err(CniError::plugin(
            code::INTERFACE_EXISTS,
            format!(
                "interface {ifname:?} already exists in {}",
                ctx.req.env.netns
            ),
        ));
    }
    Ok(())
}

fn build(ctx: &mut Ctx, undo: &mut Undo) -> Result<CniResult, CniError> {
    let start = std::time::Instant::now();
    let phase = |name: &str| log::debug!("ADD {name} done at {:?}", start.elapsed());
    let mut result = match ipam::add(ctx.req, &ctx.cfg)? {
        Some((r, advised)) => {
            undo.ipam = true;
            // The config's own `mtu` wins; else what the daemon knows the cluster's paths take.
            if ctx.cfg.mtu.is_none() {
                ctx.cfg.mtu = advised;
            }
            r
        }
        None => CniResult::default(),
    };
    if ctx.cfg.ipam_type.is_some() && result.ips.is_empty() {
        return Err(CniError::plugin(
            code::KERNEL,
            "IPAM plugin returned no IP configuration".to_owned(),
        ));
    }
    phase("ipam");
    result::prepare(&ctx.cfg, &mut result);
    // Everything the kernel could refuse is refused here, before the first link changes.
    result::validate(&ctx.cfg, &result)?;
    if ctx.cfg.is_gateway {
        check_bridge_addresses(ctx, &result)?;
    }
    let host = &mut ctx.sides.host;
    let bridge = links::ensure_bridge(host, &ctx.cfg, ctx.bridge.take())?;
    phase("bridge");
    let masquerade = ctx.cfg.ip_masq && !result.ips.is_empty();
    let group = masq::group_for(&ctx.req.conf.name, masquerade);
    let attachment = (
        ctx.req.env.container_id.as_str(),
        ctx.req.env.ifname.as_str(),
    );
    let veth = links::create_veth(host, &ctx.sides.pod_ns, &ctx.cfg, attachment, group)?;
    undo.host_veth = Some(veth.index);
    phase("veth");
    links::attach_port(host, &ctx.cfg, &bridge, &veth)?;
    let container = configure_container(ctx, &result)?;
    if ctx.cfg.is_gateway {
        configure_gateway(ctx, &bridge, &result)?;
    }
    phase("container and gateway");
    let forward = ctx.cfg.forward_accept && !result.ips.is_empty();
    if masquerade || forward {
        let subnets: Vec<IpNet> = result.ips.iter().map(|ip| ip.address.trunc()).collect();
        let mut fw = masq::HostFirewall::open(ctx.cfg.masq_backend)?;
        let name = &ctx.req.conf.name;
        // Shared by every pod of the subnet: after the first pod these are lookups, not transactions. The port
        // is on the bridge, in its group, so a concurrent DEL sees it as a user (see `masq`). Each is marked for
        // rollback before it is made: forward accept may commit for one family or backend and fail for another.
        if masquerade {
            undo.masquerade = true;
            fw.ensure_masquerade(name, &subnets)?;
            phase("masquerade");
        }
        if forward {
            undo.forward = true;
            fw.ensure_forward(name, &subnets)?;
            phase("forward accept");
        }
    }
    finish_result(ctx, &mut result, &bridge, &veth, &container);
    Ok(result)
}

/// Refuses (before any change) a bridge that carries a different address, unless `forceAddress` (the reference's
/// rule: one IPv4 address; IPv6 addresses may coexist when their subnets do not overlap).
fn check_bridge_addresses(ctx: &mut Ctx, result: &CniResult) -> Result<(), CniError> {
    if ctx.cfg.force_address {
        return Ok(());
    }
    let Some(bridge) = &ctx.bridge else {
        return Ok(());
    };
    ctx.bridge_addrs = bridge_addresses(&mut ctx.sides.host, bridge.index)?;
    for want in gateway_addrs(result) {
        if let Some(conflict) = conflicting(&ctx.bridge_addrs, &want).first() {
            return Err(CniError::plugin(
                code::BRIDGE_CONFLICT,
                format!(
                    "{:?} already has an IP address {conflict} different from {want}",
                    ctx.cfg.bridge
                ),
            ));
        }
    }
    Ok(())
}

fn bridge_addresses(host: &mut Netlink, index: u32) -> Result<Vec<IpNet>, CniError> {
    let addrs = host
        .addresses(Some(index))
        .map_err(|e| error::kernel("list bridge addresses", e))?;
    Ok(addrs.into_iter().map(|a| a.address).collect())
}

/// Sysctls, addresses, link up and routes inside the container. Returns the container link.
fn configure_container(ctx: &mut Ctx, result: &CniResult) -> Result<Link, CniError> {
    let ifname = ctx.req.env.ifname.clone();
    let link = ctx
        .sides
        .pod
        .link_by_name(&ifname)
        .map_err(|e| error::kernel("look up container interface", e))?
        .ok_or_else(|| CniError::plugin(code::KERNEL, format!("{ifname} vanished")))?;
    // Announce the (possibly reused) address when the link comes up, so neighbours drop stale ARP entries of a
    // previous pod. Set over netlink: a /proc/sys write would need a thread inside the pod's namespace.
    ctx.sides
        .pod
        .set_ipv4_conf(link.index, &[(trestle_netlink::IPV4_DEVCONF_ARP_NOTIFY, 1)])
        .map_err(|e| error::kernel("set arp_notify", e))?;
    let dad = ctx.cfg.enable_dad;
    if result.ips.iter().any(|ip| ip.address.addr().is_ipv6()) {
        // IPv6 device settings cannot be set over netlink.
        ctx.sides
            .pod_ns
            .run(|| ipv6_sysctls(&ifname, dad))
            .map_err(error::netns)??;
    }
    for ip in &result.ips {
        ctx.sides
            .pod
            .add_address(link.index, ip.address, !dad)
            .map_err(|e| error::kernel(&format!("add address {}", ip.address), e))?;
    }
    if !ctx.cfg.disable_container_interface {
        ctx.sides
            .pod
            .set_up(link.index, true)
            .map_err(|e| error::kernel("set container interface up", e))?;
    }
    for route in &result.routes {
        add_container_route(ctx, link.index, route, result)?;
    }
    Ok(link)
}

fn ipv6_sysctls(ifname: &str, dad: bool) -> Result<(), CniError> {
    let key = format!("net/ipv6/conf/{ifname}/accept_dad");
    sysctl::set(&key, if dad { "1" } else { "0" }).map_err(|e| error::sysctl(&key, e))?;
    if dad {
        // Older kernels lack enhanced DAD; it only makes DAD smarter, so its absence is fine.
        let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
    }
    Ok(())
}

fn add_container_route(
    ctx: &mut Ctx,
    oif: u32,
    route: &Route,
    result: &CniResult,
) -> Result<(), CniError> {
    let gw = result::effective_gateway(result, route);
    let mut r = trestle_netlink::Route::new(route.dst);
    r.gateway = gw;
    r.oif = Some(oif);
    r.priority = route.priority;
    r.mtu = route.mtu;
    r.advmss = route.advmss;
    if let Some(t) = route.table {
        r.table = t;
    }
    r.scope = route.scope.unwrap_or(if gw.is_some() { 0 } else { 253 });
    ctx.sides
        .pod
        .add_route(&r)
        .map_err(|e| error::kernel(&format!("add route {}", route.dst), e))
}

/// Gateway address on the bridge and forwarding on the host.
fn configure_gateway(ctx: &mut Ctx, bridge: &Link, result: &CniResult) -> Result<(), CniError> {
    for want in gateway_addrs(result) {
        if ctx.cfg.force_address {
            for old in conflicting(&bridge_addresses(&mut ctx.sides.host, bridge.index)?, &want) {
                ctx.sides
                    .host
                    .del_address(bridge.index, old)
                    .map_err(|e| error::kernel("remove old bridge address", e))?;
            }
        }
        // After the first pod the bridge has its gateway address (as read by the conflict check): adding it
        // again would only take the kernel's rtnl lock to answer EEXIST.
        if !ctx.bridge_addrs.contains(&want) {
            match ctx.sides.host.add_address(bridge.index, want, true) {
                Ok(()) | Err(trestle_netlink::Error::Exists) => {}
                Err(e) => return Err(error::kernel("add gateway address to bridge", e)),
            }
        }
        let key = if want.addr().is_ipv4() {
            "net/ipv4/ip_forward"
        } else {
            "net/ipv6/conf/all/forwarding"
        };
        if sysctl::get(key).map(|v| v.trim() != "1").unwrap_or(true) {
            sysctl::set(key, "1").map_err(|e| error::sysctl(key, e))?;
        }
    }
    if ctx.cfg.vlan != 0 {
        // The gateway lives on the bridge device itself, so it must be a member of the pods' VLAN.
        ctx.sides
            .host
            .bridge_vlan_add(bridge.index, ctx.cfg.vlan, true, true, true)
            .map_err(|e| error::kernel("add vlan to bridge", e))?;
    }
    Ok(())
}

fn finish_result(ctx: &Ctx, result: &mut CniResult, bridge: &Link, veth: &Link, cont: &Link) {
    let iface = |l: &Link, sandbox: Option<String>| Interface {
        name: l.name.clone(),
        mac: l.mac.map(format_mac),
        sandbox,
        ..Interface::default()
    };
    result.interfaces = vec![
        iface(bridge, None),
        iface(veth, None),
        iface(cont, Some(ctx.req.env.netns.clone())),
    ];
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }
    if let Some(dns) = ctx.req.conf.dns.as_ref() {
        let set = !dns.nameservers.is_empty()
            || dns.domain.is_some()
            || !dns.search.is_empty()
            || !dns.options.is_empty();
        if set {
            result.dns = dns.clone();
        }
    }
}

/// Best-effort undo, in reverse order; failures are logged because the ADD error is what the runtime must see.
fn rollback(ctx: &mut Ctx, undo: Undo) {
    if let Some(index) = undo.host_veth {
        match ctx.sides.host.delete_link(index) {
            Ok(()) | Err(trestle_netlink::Error::NotFound) => {}
            Err(e) => log::warn!("rollback: delete veth: {e}"),
        }
    }
    if undo.masquerade || undo.forward {
        // The veth is deleted above: no port of this attachment is left to ignore.
        let bridge = masq::Bridge {
            name: &ctx.cfg.bridge,
            index: None,
            own: &[],
        };
        let name = &ctx.req.conf.name;
        let host = &mut ctx.sides.host;
        let undone = masq::HostFirewall::open(ctx.cfg.masq_backend).and_then(|mut fw| {
            let masquerade = match undo.masquerade {
                true => fw.remove_if_unused(host, name, &bridge).map(drop),
                false => Ok(()),
            };
            let forward = match undo.forward {
                true => fw.remove_forward_if_unused(host, name, &bridge).map(drop),
                false => Ok(()),
            };
            masquerade.and(forward)
        });
        if let Err(e) = undone {
            log::warn!("rollback: {}", e.msg);
        }
    }
    if undo.ipam {
        if let Err(e) = ipam::del(ctx.req, ctx.cfg.ipam_type.as_deref()) {
            log::warn!("rollback: IPAM DEL: {}", e.msg);
        }
    }
}
