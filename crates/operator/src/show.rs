//! A namespace's network state read through netlink and laid out like `ip addr` and `route -n`, so a person
//! following the demo sees what they would see with the classic tools.

use ipnet::IpNet;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use trestle_netlink::{format_mac, Address, Family, Link, Netlink, Route};

/// `ip addr show [name]`-style text.
pub fn ip_addr(nl: &mut Netlink, only: Option<&str>) -> Result<String, trestle_netlink::Error> {
    let links = nl.links()?;
    let addrs = nl.addresses(None)?;
    let mut out = String::new();
    for link in links.iter().filter(|l| only.is_none_or(|n| n == l.name)) {
        write_link(&mut out, link, &addrs);
    }
    Ok(out)
}

fn write_link(out: &mut String, link: &Link, addrs: &[Address]) {
    let mut flags = Vec::new();
    if link.up {
        flags.push("UP");
    }
    if link.oper_up {
        flags.push("LOWER_UP");
    }
    let kind = link
        .kind
        .as_deref()
        .map(|k| format!(" ({k})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{}: {}: <{}> mtu {}{kind}",
        link.index,
        link.name,
        flags.join(","),
        link.mtu
    );
    if let Some(mac) = link.mac {
        let _ = writeln!(out, "    link/ether {}", format_mac(mac));
    }
    for a in addrs.iter().filter(|a| a.index == link.index) {
        let fam = if a.address.addr().is_ipv4() {
            "inet"
        } else {
            "inet6"
        };
        let _ = writeln!(
            out,
            "    {fam} {} scope {} {}",
            a.address,
            scope_name(a.scope),
            link.name
        );
    }
}

fn scope_name(scope: u8) -> &'static str {
    match scope {
        0 => "global",
        253 => "link",
        254 => "host",
        _ => "other",
    }
}

/// The IPv4 main-table unicast routes, sorted by destination, as `route -n` prints them.
pub fn route_n(nl: &mut Netlink) -> Result<String, trestle_netlink::Error> {
    let links = nl.links()?;
    let mut routes: Vec<Route> = nl
        .routes(Some(Family::V4))?
        .into_iter()
        .filter(|r| r.table == 254 && r.kind == 1)
        .collect();
    routes.sort_by_key(|r| (u32::from(ipv4(r.dst.network())), r.dst.prefix_len()));
    let mut out = String::from(
        "Kernel IP routing table\nDestination     Gateway         Genmask         Flags Metric Ref    Use Iface\n",
    );
    for r in &routes {
        let iface = r
            .oif
            .and_then(|i| links.iter().find(|l| l.index == i))
            .map_or("*", |l| l.name.as_str());
        let _ = writeln!(
            out,
            "{:<15} {:<15} {:<15} {:<5} {:<6} {:<6} {:>3} {iface}",
            ipv4(r.dst.network()).to_string(),
            r.gateway.map_or(Ipv4Addr::UNSPECIFIED, ipv4).to_string(),
            ipv4(r.dst.netmask()).to_string(),
            route_flags(r),
            r.priority.unwrap_or(0),
            0,
            0
        );
    }
    Ok(out)
}

fn ipv4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

fn route_flags(r: &Route) -> String {
    let mut f = String::from("U");
    if r.gateway.is_some() {
        f.push('G');
    }
    if matches!(r.dst, IpNet::V4(n) if n.prefix_len() == 32) {
        f.push('H');
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_like_route_n() {
        let mut r = Route::new("1.1.1.1/32".parse().unwrap());
        r.gateway = Some("10.15.20.1".parse().unwrap());
        assert_eq!(route_flags(&r), "UGH");
        let r = Route::new("10.15.20.0/24".parse().unwrap());
        assert_eq!(route_flags(&r), "U");
    }
}
