//! What this node's kernel should hold for the cluster, worked out from etcd's view alone (no
//! I/O): a route per block another node owns, a host route per address a node holds in a block
//! it does not own, the neighbour and FDB entries of each peer reached over VXLAN, and an
//! unreachable route per pool so that no pool address leaves by the default route.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::Cluster;
use crate::host::{vtep_link_local, HostRecord};

/// How peers are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Directly when the peer shares an underlay subnet with this node, else over VXLAN.
    Auto,
    /// Always directly (every node on one L2 segment).
    Direct,
    /// Always over VXLAN.
    Vxlan,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "direct" => Ok(Mode::Direct),
            "vxlan" => Ok(Mode::Vxlan),
            _ => Err(format!("{s:?}: expected auto, direct or vxlan")),
        }
    }
}

/// Where a destination goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Through the peer's underlay address, on this node's underlay interface of that family.
    Direct(IpAddr),
    /// Through the VXLAN device, to this on-link next hop (the peer's VTEP address).
    Vxlan(IpAddr),
    /// To this node's own pods (an address it holds in another node's block): the interface
    /// that holds the pool's addresses.
    Local,
}

/// One peer reached over VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tunnel {
    /// The next hop routes name on the VXLAN device.
    pub gateway: IpAddr,
    /// The peer's VTEP MAC (the permanent neighbour entry of `gateway`).
    pub mac: [u8; 6],
    /// The peer's underlay address (the FDB entry of `mac`).
    pub remote: IpAddr,
}

/// A peer this node cannot reach, and why (shown to operators, logged once).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unreachable {
    /// The peer.
    pub node: String,
    /// Why.
    pub why: &'static str,
}

/// The desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Destinations of other nodes' pods (and this node's borrowed addresses), by prefix.
    pub routes: BTreeMap<IpNet, Via>,
    /// Peers over VXLAN.
    pub tunnels: Vec<Tunnel>,
    /// The MTU of a path over VXLAN: the smallest of the cluster's, so a pod's packet fits
    /// every node's underlay.
    pub vxlan_mtu: Option<u32>,
    /// The MTU pods should have: the VXLAN path's unless every node is reached directly
    /// (`--routing direct`), then the smallest underlay's. One value for the whole cluster,
    /// so a pod made before a node on another segment joins still fits.
    pub pod_mtu: Option<u32>,
    /// Every pool: an unreachable route each, below the routes of pods.
    pub pools: Vec<IpNet>,
    /// Peers without a way to reach them.
    pub unreachable: Vec<Unreachable>,
    /// How each peer is reached: `true` over VXLAN.
    pub peers: BTreeMap<String, bool>,
}

/// This node.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its host record.
    pub host: &'a HostRecord,
    /// The mode.
    pub mode: Mode,
}

impl Plan {
    /// The plan for `me` in `cluster`.
    pub fn new(me: &Me<'_>, cluster: &Cluster) -> Plan {
        let mut plan = Plan {
            pools: pools(cluster),
            vxlan_mtu: cluster
                .hosts
                .values()
                .map(|h| &**h)
                .chain([me.host])
                .filter_map(HostRecord::vxlan_mtu)
                .min(),
            ..Plan::default()
        };
        plan.pod_mtu = pod_mtu(me, cluster);
        let mut tunnels = BTreeMap::new();
        for b in &cluster.blocks {
            if b.block.owner != me.name {
                plan.route(me, cluster, b.net, &b.block.owner, &mut tunnels);
            }
            for (node, _) in b.block.foreign.iter() {
                for ip in b.foreign_of(node) {
                    let host = IpNet::from(ip);
                    if node == me.name {
                        plan.routes.insert(host, Via::Local);
                    } else {
                        plan.route(me, cluster, host, node, &mut tunnels);
                    }
                }
            }
        }
        plan.tunnels = tunnels.into_values().collect();
        plan.tunnels.sort();
        plan.tunnels.dedup();
        plan.unreachable.sort();
        plan.unreachable.dedup();
        plan
    }

    /// Routes `dst` to `peer`, or notes why it cannot.
    fn route(
        &mut self,
        me: &Me<'_>,
        cluster: &Cluster,
        dst: IpNet,
        peer: &str,
        tunnels: &mut BTreeMap<(String, bool), Tunnel>,
    ) {
        let Some(theirs) = cluster.hosts.get(peer) else {
            self.unreachable.push(Unreachable {
                node: peer.into(),
                why: "no host record (not running trestle's router yet?)",
            });
            return;
        };
        match via(me, theirs, dst) {
            Ok((v, tunnel)) => {
                if let Some(t) = tunnel {
                    tunnels.insert((peer.to_string(), dst.addr().is_ipv4()), t);
                }
                self.peers.insert(peer.to_string(), tunnel.is_some());
                self.routes.insert(dst, v);
            }
            Err(why) => self.unreachable.push(Unreachable {
                node: peer.into(),
                why,
            }),
        }
    }
}

/// How `dst`, on the node of host record `theirs`, is reached from `me`.
fn via(
    me: &Me<'_>,
    theirs: &HostRecord,
    dst: IpNet,
) -> Result<(Via, Option<Tunnel>), &'static str> {
    let v4 = dst.addr().is_ipv4();
    let direct = match (me.host.underlay(v4), theirs.underlay(v4)) {
        (Some(mine), Some(peer)) => match me.mode {
            Mode::Direct => Some(peer.ip()),
            Mode::Auto if mine.shares_subnet(peer) => Some(peer.ip()),
            _ => None,
        },
        _ => None,
    };
    if let Some(gw) = direct {
        return Ok((Via::Direct(gw), None));
    }
    if me.mode == Mode::Direct {
        return Err("direct routing needs an underlay address of the pods' family on both nodes");
    }
    let (Some(mine), Some(remote), Some(mac)) = (
        me.host.vxlan_underlay(),
        theirs.vxlan_underlay(),
        theirs.mac(),
    ) else {
        return Err("no VXLAN underlay or VTEP MAC in its host record");
    };
    if mine.ip().is_ipv4() != remote.ip().is_ipv4() {
        return Err("its VXLAN underlay is of another family than this node's");
    }
    // IPv4 pods' next hop is the peer's underlay address itself, as an on-link gateway of the
    // VXLAN device (its neighbour entry lives on that device, apart from the underlay's); IPv6
    // pods' is a link-local address made from the peer's VTEP MAC, whatever the underlay.
    let gateway = if v4 {
        if !remote.ip().is_ipv4() {
            return Err("IPv4 pods over VXLAN need an IPv4 underlay");
        }
        remote.ip()
    } else {
        vtep_link_local(mac)
    };
    let tunnel = Tunnel {
        gateway,
        mac,
        remote: remote.ip(),
    };
    Ok((Via::Vxlan(gateway), Some(tunnel)))
}

/// See [`Plan::pod_mtu`].
pub fn pod_mtu(me: &Me<'_>, cluster: &Cluster) -> Option<u32> {
    let hosts = cluster.hosts.values().map(|h| &**h).chain([me.host]);
    if me.mode == Mode::Direct {
        hosts
            .flat_map(|h| [h.v4.as_ref(), h.v6.as_ref()])
            .flatten()
            .map(|u| u.mtu)
            .min()
    } else {
        hosts.filter_map(HostRecord::vxlan_mtu).min()
    }
}

fn pools(cluster: &Cluster) -> Vec<IpNet> {
    let mut pools: Vec<IpNet> = cluster.pools.iter().map(|p| p.subnet.trunc()).collect();
    pools.sort();
    pools.dedup();
    pools
}

#[cfg(test)]
mod tests;
