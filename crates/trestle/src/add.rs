//! ADD: validate everything, reserve the address, then build the links; on any failure undo what was done.

use crate::config::BridgeConfig;
use crate::error::{self, code};
use crate::{ipam, links, FIREWALL_LOCK};
use cni_plugin::Request;
use cni_proto::{CniError, CniResult, ErrorCode, Interface, Route};
use ipnet::IpNet;
use std::net::IpAddr;
use trestle_firewall::Firewall;
use trestle_netlink::{format_mac, sysctl, Link, Netlink};
use trestle_netns::NetNs;

/// What ADD has changed so far, undone in reverse on failure.
#[derive(Default)]
struct Undo {
    ipam: bool,
    host_veth: Option<u32>,
    masquerade: bool,
}

/// Sockets and handles of one ADD.
struct Ctx<'a> {
    req: &'a Request,
    cfg: BridgeConfig,
    ns: NetNs,
    host: Netlink,
    cont: Netlink,
    /// The bridge as found before any change (`None`: ADD creates it).
    bridge: Option<Link>,
    /// The bridge's addresses as read by the conflict check (empty when not read).
    bridge_addrs: Vec<IpNet>,
}

/// Opens `CNI_NETNS` and refuses the plugin's own namespace (wiring the host itself as a pod would cut it off).
pub fn open_netns(path: &str) -> Result<NetNs, CniError> {
    let ns = NetNs::open(path).map_err(error::netns)?;
    if ns.is_current().map_err(error::netns)? {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {path} is the plugin's own network namespace"),
        ));
    }
    Ok(ns)
}

/// Opens a netlink socket in `ns`: only its creation happens inside (the socket keeps the namespace for life), on
/// this thread, which is back in the host namespace before anything else runs.
pub fn netlink_in(ns: &NetNs) -> Result<Netlink, CniError> {
    ns.run_on_this_thread(Netlink::socket)
        .map_err(error::netns)?
        .and_then(Netlink::from_socket)
        .map_err(|e| error::kernel("open container netlink socket", e))
}

/// The ADD command.
pub fn add(req: &Request) -> Result<CniResult, CniError> {
    let cfg = BridgeConfig::parse(&req.conf, &req.env.args)?;
    let ns = open_netns(&req.env.netns)?;
    let cont = netlink_in(&ns)?;
    let mut host = Netlink::open().map_err(|e| error::kernel("open netlink socket", e))?;
    let bridge = links::check_bridge_kind(&mut host, &cfg.bridge)?;
    let mut ctx = Ctx {
        req,
        cfg,
        ns,
        host,
        cont,
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
        .cont
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
        Some(r) => {
            undo.ipam = true;
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
    prepare_result(&ctx.cfg, &mut result);
    if ctx.cfg.is_gateway {
        check_bridge_addresses(ctx, &result)?;
    }
    let bridge = links::ensure_bridge(&mut ctx.host, &ctx.cfg, ctx.bridge.take())?;
    phase("bridge");
    let veth = links::create_veth(
        &mut ctx.host,
        &ctx.ns,
        &ctx.cfg,
        &ctx.req.env.container_id,
        &ctx.req.env.ifname,
    )?;
    undo.host_veth = Some(veth.index);
    phase("veth");
    links::attach_port(&mut ctx.host, &ctx.cfg, &bridge, &veth)?;
    let container = configure_container(ctx, &result)?;
    if ctx.cfg.is_gateway {
        configure_gateway(ctx, &bridge, &result)?;
    }
    phase("container and gateway");
    if ctx.cfg.ip_masq && !result.ips.is_empty() {
        let subnets: Vec<IpNet> = result.ips.iter().map(|ip| ip.address.trunc()).collect();
        // Shared by every pod of the subnet: after the first pod this is a lookup, not a transaction.
        firewall()?
            .ensure(&ctx.req.conf.name, &subnets)
            .map_err(error::firewall)?;
        undo.masquerade = true;
        phase("masquerade");
    }
    finish_result(ctx, &mut result, &bridge, &veth, &container);
    Ok(result)
}

/// Opens the nftables socket in the plugin's (host) namespace.
pub fn firewall() -> Result<Firewall, CniError> {
    Firewall::open(std::path::Path::new(FIREWALL_LOCK)).map_err(error::firewall)
}

/// Whether a pod still uses `bridge`, so the network's masquerade must stay: the bridge has carrier exactly while
/// one of its ports forwards. That is read from the bridge alone (one request, whatever the number of pods), and
/// it is current: the kernel sets it synchronously as ports come and go. An ADD's port forwards before that ADD
/// ensures the masquerade (both under the firewall lock), so a DEL seeing no carrier cannot strand a new pod.
pub fn bridge_in_use(host: &mut Netlink, bridge: &str) -> bool {
    match host.link_by_name(bridge) {
        Ok(Some(br)) => br.carrier,
        Ok(None) => false,
        // When in doubt, keep the rules: a rule too many is harmless, a pod without masquerade is not.
        Err(_) => true,
    }
}

/// Fills gateways (network+1 when IPAM gave none and the bridge is the gateway) and the default route.
fn prepare_result(cfg: &BridgeConfig, result: &mut CniResult) {
    if !cfg.is_gateway {
        return;
    }
    for ip in &mut result.ips {
        if ip.gateway.is_none() {
            ip.gateway = nth_host(&ip.address, 1);
        }
    }
    if !cfg.is_default_gateway {
        return;
    }
    for ip in result.ips.clone() {
        let default: IpNet = match ip.address {
            IpNet::V4(_) => "0.0.0.0/0".parse().expect("literal"),
            IpNet::V6(_) => "::/0".parse().expect("literal"),
        };
        let has_default = result
            .routes
            .iter()
            .any(|r| r.dst == default && r.gw.is_some());
        if !has_default {
            result.routes.push(Route {
                dst: default,
                gw: ip.gateway,
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            });
        }
    }
}

/// The `n`th address of the network containing `addr`.
fn nth_host(addr: &IpNet, n: u8) -> Option<IpAddr> {
    match addr.network() {
        IpAddr::V4(a) => Some(IpAddr::V4((u32::from(a) + u32::from(n)).into())),
        IpAddr::V6(a) => Some(IpAddr::V6((u128::from(a) + u128::from(n)).into())),
    }
}

/// The gateway addresses the bridge needs, with the pod subnet's prefix.
fn gateway_addrs(result: &CniResult) -> Vec<IpNet> {
    result
        .ips
        .iter()
        .filter_map(|ip| IpNet::new(ip.gateway?, ip.address.prefix_len()).ok())
        .collect()
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
    ctx.bridge_addrs = bridge_addresses(&mut ctx.host, bridge.index)?;
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

/// The addresses of `addrs` that stand in the way of gateway address `want`.
fn conflicting(addrs: &[IpNet], want: &IpNet) -> Vec<IpNet> {
    addrs
        .iter()
        .copied()
        .filter(|a| a != want && a.addr().is_ipv4() == want.addr().is_ipv4())
        .filter(|a| match a {
            IpNet::V4(_) => true,
            IpNet::V6(v6) => {
                // Link-local addresses are the kernel's, never a conflict.
                (v6.addr().segments()[0] & 0xffc0) != 0xfe80
                    && (a.contains(&want.addr()) || want.contains(&a.addr()))
            }
        })
        .collect()
}

/// Sysctls, addresses, link up and routes inside the container. Returns the container link.
fn configure_container(ctx: &mut Ctx, result: &CniResult) -> Result<Link, CniError> {
    let ifname = ctx.req.env.ifname.clone();
    let link = ctx
        .cont
        .link_by_name(&ifname)
        .map_err(|e| error::kernel("look up container interface", e))?
        .ok_or_else(|| CniError::plugin(code::KERNEL, format!("{ifname} vanished")))?;
    // Announce the (possibly reused) address when the link comes up, so neighbours drop stale ARP entries of a
    // previous pod. Set over netlink: a /proc/sys write would need a thread inside the pod's namespace.
    ctx.cont
        .set_ipv4_conf(link.index, &[(trestle_netlink::IPV4_DEVCONF_ARP_NOTIFY, 1)])
        .map_err(|e| error::kernel("set arp_notify", e))?;
    let dad = ctx.cfg.enable_dad;
    if result.ips.iter().any(|ip| ip.address.addr().is_ipv6()) {
        // IPv6 device settings cannot be set over netlink.
        ctx.ns
            .run(|| ipv6_sysctls(&ifname, dad))
            .map_err(error::netns)??;
    }
    for ip in &result.ips {
        ctx.cont
            .add_address(link.index, ip.address, !dad)
            .map_err(|e| error::kernel(&format!("add address {}", ip.address), e))?;
    }
    if !ctx.cfg.disable_container_interface {
        ctx.cont
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
    let v4 = route.dst.addr().is_ipv4();
    let gw = route.gw.or_else(|| {
        result
            .ips
            .iter()
            .find(|ip| ip.address.addr().is_ipv4() == v4)
            .and_then(|ip| ip.gateway)
    });
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
    ctx.cont
        .add_route(&r)
        .map_err(|e| error::kernel(&format!("add route {}", route.dst), e))
}

/// Gateway address on the bridge and forwarding on the host.
fn configure_gateway(ctx: &mut Ctx, bridge: &Link, result: &CniResult) -> Result<(), CniError> {
    for want in gateway_addrs(result) {
        if ctx.cfg.force_address {
            for old in conflicting(&bridge_addresses(&mut ctx.host, bridge.index)?, &want) {
                ctx.host
                    .del_address(bridge.index, old)
                    .map_err(|e| error::kernel("remove old bridge address", e))?;
            }
        }
        // After the first pod the bridge has its gateway address (as read by the conflict check): adding it
        // again would only take the kernel's rtnl lock to answer EEXIST.
        if !ctx.bridge_addrs.contains(&want) {
            match ctx.host.add_address(bridge.index, want, true) {
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
        ctx.host
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
        match ctx.host.delete_link(index) {
            Ok(()) | Err(trestle_netlink::Error::NotFound) => {}
            Err(e) => log::warn!("rollback: delete veth: {e}"),
        }
    }
    if undo.masquerade {
        let (name, bridge) = (&ctx.req.conf.name, &ctx.cfg.bridge);
        let host = &mut ctx.host;
        if let Err(e) = firewall().and_then(|mut f| {
            f.remove_if_unused(name, || bridge_in_use(host, bridge))
                .map_err(error::firewall)
        }) {
            log::warn!("rollback: {}", e.msg);
        }
    }
    if undo.ipam {
        if let Err(e) = ipam::del(ctx.req, ctx.cfg.ipam_type.as_deref()) {
            log::warn!("rollback: IPAM DEL: {}", e.msg);
        }
    }
}
