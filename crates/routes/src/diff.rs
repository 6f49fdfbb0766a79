//! From a plan to kernel entries, and from what the kernel holds to the changes that make it
//! so (no I/O). Only entries trestle owns are ever deleted: routes of its protocol number, and
//! permanent neighbour and FDB entries of its own VXLAN device.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use trestle_netlink::{FdbEntry, Neighbour, Route};

use crate::plan::{Plan, Via};

/// The route protocol number of trestle's routes (`proto 116` in `ip route`): what marks them
/// as its own. Calico uses 80, BIRD 186-189; 116 is unassigned in `rtnetlink.h`.
pub const ROUTE_PROTO: u8 = 116;
/// The metric of routes to pods. IPv6 would make 0 into 1024 anyway: one value for both.
pub const ROUTE_METRIC: u32 = 1024;
/// The metric of a pool's unreachable route: above the bridge's own prefix route (0 for
/// IPv4, 256 for IPv6), so addresses of local pods still go to the bridge.
pub const UNREACHABLE_METRIC: u32 = 4242;

const RTN_UNICAST: u8 = 1;
const RTN_UNREACHABLE: u8 = 7;
const SCOPE_LINK: u8 = 253;
/// `NUD_PERMANENT`.
pub const NUD_PERMANENT: u16 = 0x80;
/// `NTF_SELF`: an entry of the device's own forwarding database.
const NTF_SELF: u8 = 0x02;

/// The interfaces entries are bound to.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// The IPv4 underlay's interface.
    pub underlay_v4: Option<u32>,
    /// The IPv6 underlay's interface.
    pub underlay_v6: Option<u32>,
    /// trestle's VXLAN device, when it exists.
    pub vxlan: Option<u32>,
    /// Local interfaces holding pool addresses (bridges), by pool.
    pub pool_links: BTreeMap<IpNet, u32>,
}

/// The kernel entries a plan stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Routes by (destination, metric).
    pub routes: BTreeMap<(IpNet, u32), Route>,
    /// Neighbour entries of the VXLAN device: next hop to VTEP MAC.
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// FDB entries of the VXLAN device: VTEP MAC to underlay address.
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
}

impl Wanted {
    /// The entries of `plan` on `links`; destinations whose interface is missing are left out
    /// (a VXLAN route before the device exists, a borrowed address before the bridge does).
    pub fn new(plan: &Plan, links: &Links) -> Wanted {
        let mut w = Wanted::default();
        for (dst, via) in &plan.routes {
            if let Some(r) = route(*dst, *via, plan, links) {
                w.routes.insert((*dst, ROUTE_METRIC), r);
            }
        }
        for pool in &plan.pools {
            let mut r = base(*pool, UNREACHABLE_METRIC);
            r.kind = RTN_UNREACHABLE;
            w.routes.insert((*pool, UNREACHABLE_METRIC), r);
        }
        if links.vxlan.is_some() {
            for t in &plan.tunnels {
                w.neighbours.insert(t.gateway, t.mac);
                w.fdb.insert(t.mac, t.remote);
            }
        }
        w
    }
}

fn base(dst: IpNet, metric: u32) -> Route {
    let mut r = Route::new(dst.trunc());
    r.protocol = ROUTE_PROTO;
    r.priority = Some(metric);
    r
}

fn route(dst: IpNet, via: Via, plan: &Plan, links: &Links) -> Option<Route> {
    let mut r = base(dst, ROUTE_METRIC);
    match via {
        Via::Direct(gw) => {
            r.gateway = Some(gw);
            r.oif = if gw.is_ipv4() {
                links.underlay_v4
            } else {
                links.underlay_v6
            };
            r.oif?;
        }
        Via::Vxlan(gw) => {
            r.gateway = Some(gw);
            r.oif = Some(links.vxlan?);
            r.onlink = true;
            r.mtu = plan.vxlan_mtu;
        }
        Via::Local => {
            let (_, link) = links.pool_links.iter().find(|(p, _)| p.contains(&dst))?;
            r.oif = Some(*link);
            r.scope = SCOPE_LINK;
        }
    }
    Some(r)
}

/// What the kernel holds of trestle's.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Routes of [`ROUTE_PROTO`] in the main table.
    pub routes: Vec<Route>,
    /// Neighbour entries of the VXLAN device.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries of the VXLAN device.
    pub fdb: Vec<FdbEntry>,
}

impl Held {
    /// What the kernel holds once `applied` was brought in whole and nobody touched it since:
    /// the base of an incremental pass, which then needs no dump of the kernel (a deletion by
    /// someone else wakes a full pass, which reads the kernel).
    pub fn assumed(applied: &Wanted, vxlan: Option<u32>) -> Held {
        let index = vxlan.unwrap_or(0);
        Held {
            routes: applied.routes.values().copied().collect(),
            neighbours: applied
                .neighbours
                .iter()
                .map(|(ip, mac)| permanent_neighbour(index, *ip, *mac))
                .collect(),
            fdb: applied
                .fdb
                .iter()
                .map(|(mac, dst)| permanent_fdb(index, *mac, *dst))
                .collect(),
        }
    }
}

/// A permanent neighbour entry of device `index`, as the kernel lists the ones trestle sets.
pub(crate) fn permanent_neighbour(index: u32, ip: IpAddr, mac: [u8; 6]) -> Neighbour {
    Neighbour {
        index,
        ip,
        mac: Some(mac),
        state: NUD_PERMANENT,
        flags: 0,
        kind: RTN_UNICAST,
    }
}

/// A permanent entry of device `index`'s own forwarding database, as the kernel lists the ones trestle sets.
pub(crate) fn permanent_fdb(index: u32, mac: [u8; 6], dst: IpAddr) -> FdbEntry {
    FdbEntry {
        index,
        mac,
        dst: Some(dst),
        vni: None,
        port: None,
        vlan: None,
        master: None,
        flags: NTF_SELF,
        state: NUD_PERMANENT,
    }
}

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Add or replace an FDB entry.
    SetFdb([u8; 6], IpAddr),
    /// Add or replace a neighbour entry.
    SetNeighbour(IpAddr, [u8; 6]),
    /// Add or replace a route.
    SetRoute(Route),
    /// Delete a route.
    DelRoute(Route),
    /// Delete a neighbour entry.
    DelNeighbour(IpAddr),
    /// Delete an FDB entry.
    DelFdb([u8; 6], IpAddr),
}

/// The changes from `held` to `want`: additions first (FDB, neighbours, routes: a route never
/// points at a next hop the tunnel cannot resolve), then removals in the reverse order.
pub fn diff(want: &Wanted, held: &Held) -> Vec<Op> {
    let mut ops = Vec::new();
    let fdb: BTreeMap<[u8; 6], IpAddr> = held
        .fdb
        .iter()
        .filter(|e| e.state & NUD_PERMANENT != 0)
        .filter_map(|e| Some((e.mac, e.dst?)))
        .collect();
    let neigh: BTreeMap<IpAddr, Option<[u8; 6]>> = held
        .neighbours
        .iter()
        .filter(|n| n.state & NUD_PERMANENT != 0)
        .map(|n| (n.ip, n.mac))
        .collect();
    let routes: BTreeMap<(IpNet, u32), &Route> = held
        .routes
        .iter()
        .map(|r| ((r.dst, r.priority.unwrap_or(0)), r))
        .collect();
    for (mac, dst) in &want.fdb {
        if fdb.get(mac) != Some(dst) {
            ops.push(Op::SetFdb(*mac, *dst));
        }
    }
    for (ip, mac) in &want.neighbours {
        if neigh.get(ip) != Some(&Some(*mac)) {
            ops.push(Op::SetNeighbour(*ip, *mac));
        }
    }
    for (key, r) in &want.routes {
        if !routes.get(key).is_some_and(|h| same(r, h)) {
            ops.push(Op::SetRoute(*r));
        }
    }
    for (key, r) in &routes {
        if !want.routes.contains_key(key) {
            ops.push(Op::DelRoute(**r));
        }
    }
    for ip in neigh.keys() {
        if !want.neighbours.contains_key(ip) {
            ops.push(Op::DelNeighbour(*ip));
        }
    }
    for e in &held.fdb {
        if let Some(dst) = e.dst {
            if want.fdb.get(&e.mac) != Some(&dst) && e.state & NUD_PERMANENT != 0 {
                ops.push(Op::DelFdb(e.mac, dst));
            }
        }
    }
    ops
}

/// Whether the kernel's route is the wanted one, in what trestle sets (the kernel reports an
/// IPv6 unreachable route on `lo`, and fills in what was left to it).
fn same(want: &Route, have: &Route) -> bool {
    want.kind == have.kind
        && want.gateway == have.gateway
        && want.onlink == have.onlink
        && want.mtu == have.mtu
        && (want.oif.is_none() || want.oif == have.oif)
        && (want.kind != RTN_UNICAST || want.scope == have.scope)
}

#[cfg(test)]
mod tests;
