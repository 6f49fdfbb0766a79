//! What a node's kernel holds of trestle's routing, read through netlink and laid out the way `ip route`,
//! `ip neigh`, `ip -d link` and `bridge fdb` print it, so the reader sees what an admin would type and get.
//! Reading ([`NodeState::read`]) is separate from the layout, which has no I/O.

use std::fmt::Write;
use std::net::IpAddr;

use trestle_netlink::{format_mac, FdbEntry, Link, Neighbour, Netlink, Route, VxlanInfo};

use super::machine::{BRIDGE, VXLAN};

/// The protocol number trestle's routes carry (unassigned in `rtnetlink.h`).
pub const PROTO: u8 = 116;

/// `RTN_UNREACHABLE`.
const UNREACHABLE: u8 = 7;

/// A node's routing state, read in its namespace.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// Every link (to name the routes' devices).
    pub links: Vec<Link>,
    /// The routes of protocol 116.
    pub routes: Vec<Route>,
    /// The VXLAN device and its settings, if trestled made it.
    pub vxlan: Option<(Link, Option<VxlanInfo>)>,
    /// The neighbour entries of the VXLAN device.
    pub neighbours: Vec<Neighbour>,
    /// The forwarding database of the VXLAN device.
    pub fdb: Vec<FdbEntry>,
    /// `net.ipv4.conf.cbr0.proxy_arp`, when the bridge exists.
    pub proxy_arp: Option<String>,
}

impl NodeState {
    /// Reads the calling thread's namespace (run it inside the node).
    pub fn read() -> Result<NodeState, trestle_netlink::Error> {
        let mut nl = Netlink::open()?;
        let links = nl.links()?;
        // In the kernel's order, which is the order `ip route` prints.
        let routes: Vec<Route> = nl
            .routes(None)?
            .into_iter()
            .filter(|r| r.protocol == PROTO)
            .collect();
        let vxlan = links.iter().find(|l| l.name == VXLAN).cloned();
        let (vxlan, neighbours, fdb) = match vxlan {
            Some(link) => {
                let info = nl.vxlan_info(link.index)?;
                let neighbours = nl.neighbours(None, Some(link.index))?;
                let fdb = nl.fdb(link.index)?;
                (Some((link, info)), neighbours, fdb)
            }
            None => (None, Vec::new(), Vec::new()),
        };
        let proxy_arp = trestle_netlink::sysctl::get(&format!("net/ipv4/conf/{BRIDGE}/proxy_arp"))
            .ok()
            .map(|v| v.trim().to_owned());
        Ok(NodeState {
            links,
            routes,
            vxlan,
            neighbours,
            fdb,
            proxy_arp,
        })
    }

    /// A link's name by index.
    pub fn link_name(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("if{index}"), |l| l.name.clone())
    }

    /// `ip route | grep 'proto 116'`.
    pub fn routes_text(&self) -> String {
        lines(
            self.routes
                .iter()
                .map(|r| route_line(r, |i| self.link_name(i))),
        )
    }

    /// `ip neigh show dev trestle.vxlan`.
    pub fn neighbours_text(&self) -> String {
        lines(self.neighbours.iter().map(neighbour_line))
    }

    /// `bridge fdb show dev trestle.vxlan`.
    pub fn fdb_text(&self) -> String {
        lines(self.fdb.iter().map(fdb_line))
    }

    /// `ip -d link show trestle.vxlan`, the lines that matter here.
    pub fn vxlan_text(&self) -> String {
        match &self.vxlan {
            Some((link, info)) => vxlan_lines(link, info.as_ref(), |i| self.link_name(i)),
            None => format!("Device \"{VXLAN}\" does not exist.\n"),
        }
    }

    /// The route to `dst`'s block: the unicast route of protocol 116 whose destination holds `dst`.
    pub fn route_to(&self, dst: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.kind != UNREACHABLE && r.dst.contains(&dst))
            .max_by_key(|r| r.dst.prefix_len())
    }

    /// The pool's unreachable route, if there is one.
    pub fn unreachable(&self) -> Option<&Route> {
        self.routes.iter().find(|r| r.kind == UNREACHABLE)
    }

    /// Whether `route` leaves by the VXLAN device.
    pub fn via_vxlan(&self, route: &Route) -> bool {
        route.oif.is_some_and(|i| self.link_name(i) == VXLAN)
    }
}

fn lines(it: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    for l in it {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// One route as iproute2 prints it: type, destination, `via`, `dev`, `proto`, `scope`, `metric`, flags, metrics.
pub fn route_line(r: &Route, link_name: impl Fn(u32) -> String) -> String {
    let mut s = String::new();
    match r.kind {
        1 => {}
        6 => s.push_str("blackhole "),
        UNREACHABLE => s.push_str("unreachable "),
        8 => s.push_str("prohibit "),
        k => {
            let _ = write!(s, "type{k} ");
        }
    }
    if r.dst.prefix_len() == 0 {
        s.push_str("default");
    } else {
        let _ = write!(s, "{}", r.dst);
    }
    if let Some(gw) = r.gateway {
        let _ = write!(s, " via {gw}");
    }
    if let Some(oif) = r.oif {
        let _ = write!(s, " dev {}", link_name(oif));
    }
    match r.protocol {
        // iproute2 leaves out the protocol of `ip route add` (boot).
        3 => {}
        2 => s.push_str(" proto kernel"),
        4 => s.push_str(" proto static"),
        p => {
            let _ = write!(s, " proto {p}");
        }
    }
    match r.scope {
        0 => {}
        253 => s.push_str(" scope link"),
        254 => s.push_str(" scope host"),
        n => {
            let _ = write!(s, " scope {n}");
        }
    }
    if let Some(m) = r.priority {
        let _ = write!(s, " metric {m}");
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    if let Some(mtu) = r.mtu {
        let _ = write!(s, " mtu {mtu}");
    }
    s
}

/// `NUD_*` states by name, as `ip neigh` prints them.
fn nud(state: u16) -> String {
    const NAMES: [(u16, &str); 8] = [
        (0x01, "INCOMPLETE"),
        (0x02, "REACHABLE"),
        (0x04, "STALE"),
        (0x08, "DELAY"),
        (0x10, "PROBE"),
        (0x20, "FAILED"),
        (0x40, "NOARP"),
        (0x80, "PERMANENT"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| state & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "NONE".into()
    } else {
        names.join(" ")
    }
}

/// One neighbour entry as `ip neigh show dev DEV` prints it (the device left out, as the filter names it).
pub fn neighbour_line(n: &Neighbour) -> String {
    let mac = n
        .mac
        .map(|m| format!(" lladdr {}", format_mac(m)))
        .unwrap_or_default();
    format!("{}{mac} {}", n.ip, nud(n.state))
}

/// One FDB entry as `bridge fdb show dev DEV` prints it (the device left out, as the filter names it).
pub fn fdb_line(e: &FdbEntry) -> String {
    let mut s = format_mac(e.mac);
    if let Some(v) = e.vlan {
        let _ = write!(s, " vlan {v}");
    }
    if let Some(dst) = e.dst {
        let _ = write!(s, " dst {dst}");
    }
    if let Some(p) = e.port {
        let _ = write!(s, " port {p}");
    }
    if let Some(v) = e.vni {
        let _ = write!(s, " vni {v}");
    }
    if e.flags & libc::NTF_SELF != 0 {
        s.push_str(" self");
    }
    if e.flags & libc::NTF_MASTER != 0 {
        s.push_str(" master");
    }
    if e.state & libc::NUD_PERMANENT != 0 {
        s.push_str(" permanent");
    } else if e.state & libc::NUD_NOARP != 0 {
        s.push_str(" static");
    }
    s
}

/// The VXLAN device's link line, its MAC and its VXLAN settings, as `ip -d link show` prints them.
pub fn vxlan_lines(
    link: &Link,
    info: Option<&VxlanInfo>,
    link_name: impl Fn(u32) -> String,
) -> String {
    let mut flags = Vec::new();
    if link.up {
        flags.push("UP");
    }
    // IFF_LOWER_UP is the carrier, which a VXLAN device has while up (its operational state stays "unknown").
    if link.carrier {
        flags.push("LOWER_UP");
    }
    let mut out = format!(
        "{}: {}: <{}> mtu {}\n",
        link.index,
        link.name,
        flags.join(","),
        link.mtu
    );
    if let Some(mac) = link.mac {
        let _ = writeln!(out, "    link/ether {}", format_mac(mac));
    }
    if let Some(i) = info {
        let _ = write!(out, "    vxlan id {}", i.vni);
        if let Some(local) = i.local {
            let _ = write!(out, " local {local}");
        }
        if let Some(dev) = i.underlay {
            let _ = write!(out, " dev {}", link_name(dev));
        }
        let _ = write!(out, " dstport {}", i.port);
        out.push_str(if i.learning { "\n" } else { " nolearning\n" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(i: u32) -> String {
        match i {
            2 => "eth0".into(),
            5 => VXLAN.into(),
            _ => format!("if{i}"),
        }
    }

    #[test]
    fn routes_read_like_iproute2() {
        let mut direct = Route::new("10.244.0.64/26".parse().unwrap());
        direct.gateway = Some("192.168.1.12".parse().unwrap());
        direct.oif = Some(2);
        direct.protocol = PROTO;
        direct.priority = Some(1024);
        assert_eq!(
            route_line(&direct, names),
            "10.244.0.64/26 via 192.168.1.12 dev eth0 proto 116 metric 1024"
        );
        let mut tunnel = direct;
        tunnel.dst = "10.244.0.128/26".parse().unwrap();
        tunnel.gateway = Some("192.168.2.13".parse().unwrap());
        tunnel.oif = Some(5);
        tunnel.onlink = true;
        tunnel.mtu = Some(1450);
        assert_eq!(
            route_line(&tunnel, names),
            "10.244.0.128/26 via 192.168.2.13 dev trestle.vxlan proto 116 metric 1024 onlink mtu 1450"
        );
        let mut pool = Route::new("10.244.0.0/16".parse().unwrap());
        pool.kind = UNREACHABLE;
        pool.protocol = PROTO;
        pool.priority = Some(4242);
        assert_eq!(
            route_line(&pool, names),
            "unreachable 10.244.0.0/16 proto 116 metric 4242"
        );
        let mut default = Route::new("0.0.0.0/0".parse().unwrap());
        default.gateway = Some("192.168.1.1".parse().unwrap());
        default.oif = Some(2);
        assert_eq!(
            route_line(&default, names),
            "default via 192.168.1.1 dev eth0"
        );
    }

    #[test]
    fn neighbours_and_fdb_read_like_iproute2() {
        let n = Neighbour {
            index: 5,
            ip: "192.168.2.13".parse().unwrap(),
            mac: Some([0x0a, 1, 2, 3, 4, 5]),
            state: 0x80,
            flags: 0,
            kind: 1,
        };
        assert_eq!(
            neighbour_line(&n),
            "192.168.2.13 lladdr 0a:01:02:03:04:05 PERMANENT"
        );
        let e = FdbEntry {
            index: 5,
            mac: [0x0a, 1, 2, 3, 4, 5],
            dst: Some("192.168.2.13".parse().unwrap()),
            vni: None,
            port: None,
            vlan: None,
            master: None,
            flags: libc::NTF_SELF,
            state: libc::NUD_PERMANENT,
        };
        assert_eq!(
            fdb_line(&e),
            "0a:01:02:03:04:05 dst 192.168.2.13 self permanent"
        );
    }

    #[test]
    fn the_vxlan_device_shows_its_settings() {
        let link = Link {
            index: 5,
            name: VXLAN.into(),
            kind: Some("vxlan".into()),
            mac: Some([0x0a, 1, 2, 3, 4, 5]),
            mtu: 1450,
            up: true,
            oper_up: false,
            carrier: true,
            master: None,
            promisc: false,
            peer_index: None,
            link_netnsid: None,
            group: 0,
        };
        let info = VxlanInfo {
            vni: 4096,
            port: 4789,
            local: Some("192.168.1.11".parse().unwrap()),
            underlay: Some(2),
            learning: false,
        };
        assert_eq!(
            vxlan_lines(&link, Some(&info), names),
            "5: trestle.vxlan: <UP,LOWER_UP> mtu 1450\n    link/ether 0a:01:02:03:04:05\n    \
             vxlan id 4096 local 192.168.1.11 dev eth0 dstport 4789 nolearning\n"
        );
    }
}
