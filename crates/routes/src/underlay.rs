//! Which address of this node its peers use: the one given (`--node-ip`), else the first global
//! address of the interface given (`--node-interface`), else of the interface the family's
//! default route leaves by. Read through netlink, once per family.

use std::net::IpAddr;

use ipnet::IpNet;
use trestle_netlink::{Address, Family, Link, Netlink};

use crate::host::Underlay;
use crate::Error;

/// What the operator said about the underlay.
#[derive(Debug, Clone, Default)]
pub struct UnderlayChoice {
    /// Addresses to use (at most one per family).
    pub node_ips: Vec<IpAddr>,
    /// The interface to take addresses from.
    pub interface: Option<String>,
}

/// The node's underlay per family (IPv4, IPv6); at least one, else an error.
pub fn detect(
    nl: &mut Netlink,
    choice: &UnderlayChoice,
) -> Result<(Option<Underlay>, Option<Underlay>), Error> {
    let links = nl.links()?;
    let addrs = nl.addresses(None)?;
    let routes = nl.routes(None)?;
    let mut found = [None, None];
    for (slot, family) in found.iter_mut().zip([Family::V4, Family::V6]) {
        let v4 = family == Family::V4;
        let given = choice.node_ips.iter().find(|ip| ip.is_ipv4() == v4);
        let address = if let Some(ip) = given {
            let a = addrs.iter().find(|a| a.address.addr() == *ip);
            Some(*a.ok_or(Error::NodeIpMissing(*ip))?)
        } else {
            let index = match &choice.interface {
                Some(name) => Some(
                    links
                        .iter()
                        .find(|l| &l.name == name)
                        .ok_or_else(|| Error::InterfaceMissing(name.clone()))?
                        .index,
                ),
                None => routes
                    .iter()
                    .find(|r| r.family() == family && r.dst.prefix_len() == 0 && r.table == 254)
                    .and_then(|r| r.oif),
            };
            index.and_then(|i| global(&addrs, i, v4))
        };
        *slot = address.and_then(|a| underlay(&links, a));
    }
    let [v4, v6] = found;
    if v4.is_none() && v6.is_none() {
        return Err(Error::NoUnderlay);
    }
    Ok((v4, v6))
}

/// The first global address of `index` in the family.
fn global(addrs: &[Address], index: u32, v4: bool) -> Option<Address> {
    addrs
        .iter()
        .find(|a| a.index == index && a.scope == 0 && a.address.addr().is_ipv4() == v4)
        .copied()
}

fn underlay(links: &[Link], a: Address) -> Option<Underlay> {
    let link = links.iter().find(|l| l.index == a.index)?;
    Some(Underlay {
        address: IpNet::new(a.address.addr(), a.address.prefix_len()).ok()?,
        interface: link.name.clone(),
        mtu: link.mtu,
    })
}
