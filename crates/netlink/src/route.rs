//! Routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteScope},
    AddressFamily, RouteNetlinkMessage as Msg,
};

use crate::{addr::family_of, Error, Family, Netlink, Route};

/// `RT_TABLE_UNSPEC`: in a header, "see `RTA_TABLE`".
const TABLE_UNSPEC: u8 = 0;

impl Netlink {
    /// Lists the routes of one family, or of both, from every table
    /// (`ip route show table all`); callers filter.
    pub fn routes(&mut self, family: Option<Family>) -> Result<Vec<Route>, Error> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match family {
            None => AddressFamily::Unspec,
            Some(Family::V4) => AddressFamily::Inet,
            Some(Family::V6) => AddressFamily::Inet6,
        };
        let replies = self.transport.dump("dump routes", Msg::GetRoute(msg))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                Msg::NewRoute(m) => route_from_message(m),
                _ => None,
            })
            .collect())
    }

    /// Adds a route; [`Error::Exists`] when an identical one exists
    /// (`ip route add`).
    pub fn add_route(&mut self, route: &Route) -> Result<(), Error> {
        let msg = route_message(route);
        self.transport
            .ack("add route", Msg::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Adds a route, or replaces the one with the same destination, table and priority (for IPv4 also TOS), so
    /// that asking twice is the same as asking once (`ip route replace`). Replacing swaps the whole route:
    /// gateway, device, metrics, protocol and flags all come from `route`.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        let msg = route_message(route);
        self.transport.ack(
            "replace route",
            Msg::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the route matching `dst`, `table`, `kind` and, when set,
    /// `gateway`, `oif` and `priority`; scope, protocol and `onlink` are not
    /// compared (like `ip route del`). [`Error::NotFound`] when none matches
    /// (`ESRCH`).
    pub fn del_route(&mut self, route: &Route) -> Result<(), Error> {
        let mut msg = route_message(route);
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = 0.into();
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Metrics(_)));
        self.transport
            .ack("delete route", Msg::DelRoute(msg), 0)
            .map_err(|e| e.not_found_on(libc::ESRCH))
    }
}

fn route_message(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = family_of(route.dst.addr());
    h.destination_prefix_length = route.dst.prefix_len();
    // Tables above 255 only fit RTA_TABLE (iproute2 does the same).
    h.table = u8::try_from(route.table).unwrap_or(TABLE_UNSPEC);
    h.protocol = route.protocol.into();
    h.scope = route.scope.into();
    h.kind = route.kind.into();
    if route.onlink {
        h.flags = RouteFlags::Onlink;
    }
    let a = &mut msg.attributes;
    a.push(RouteAttribute::Table(route.table));
    if route.dst.prefix_len() > 0 {
        a.push(RouteAttribute::Destination(route.dst.network().into()));
    }
    a.extend(route.gateway.map(|g| RouteAttribute::Gateway(g.into())));
    a.extend(route.oif.map(RouteAttribute::Oif));
    a.extend(route.priority.map(RouteAttribute::Priority));
    let metrics: Vec<_> = [
        route.mtu.map(RouteMetric::Mtu),
        route.advmss.map(RouteMetric::Advmss),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !metrics.is_empty() {
        a.push(RouteAttribute::Metrics(metrics));
    }
    msg
}

pub(crate) fn route_from_message(msg: RouteMessage) -> Option<Route> {
    let h = &msg.header;
    let unspecified: IpAddr = match h.address_family {
        AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
        AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
        _ => return None,
    };
    let mut route = Route::new(IpNet::new(unspecified, h.destination_prefix_length).ok()?);
    route.table = h.table.into();
    route.scope = h.scope.into();
    route.protocol = h.protocol.into();
    route.kind = h.kind.into();
    // Dumps copy the next hop's flags into the header (single-path routes), RTNH_F_ONLINK among them.
    route.onlink = h.flags.contains(RouteFlags::Onlink);
    for attribute in msg.attributes {
        apply(&mut route, attribute)?;
    }
    Some(route)
}

/// Copies one attribute into `route`; `None` for a destination that does
/// not fit the header's prefix length.
fn apply(route: &mut Route, attribute: RouteAttribute) -> Option<()> {
    match attribute {
        RouteAttribute::Destination(dst) => {
            route.dst = IpNet::new(ip(dst)?, route.dst.prefix_len()).ok()?
        }
        RouteAttribute::Gateway(gw) => route.gateway = ip(gw),
        RouteAttribute::Oif(oif) => route.oif = Some(oif),
        RouteAttribute::Table(table) => route.table = table,
        RouteAttribute::Priority(p) => route.priority = Some(p),
        RouteAttribute::Metrics(metrics) => {
            for metric in metrics {
                match metric {
                    RouteMetric::Mtu(mtu) => route.mtu = Some(mtu),
                    RouteMetric::Advmss(mss) => route.advmss = Some(mss),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Some(())
}

fn ip(addr: RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(a.into()),
        RouteAddress::Inet6(a) => Some(a.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_route() -> Route {
        let mut r = Route::new("10.9.0.0/16".parse().unwrap());
        r.gateway = Some("10.0.0.1".parse().unwrap());
        r.oif = Some(4);
        r.table = 1000;
        r.scope = 0;
        r.priority = Some(50);
        r.mtu = Some(1400);
        r.advmss = Some(1360);
        r
    }

    #[test]
    fn message_round_trip() {
        let route = full_route();
        let msg = route_message(&route);
        assert_eq!(msg.header.table, TABLE_UNSPEC);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        assert_eq!(route_from_message(msg), Some(route));
    }

    #[test]
    fn onlink_round_trip() {
        let mut route = Route::new("10.244.1.0/26".parse().unwrap());
        route.gateway = Some("10.244.1.0".parse().unwrap());
        route.oif = Some(5);
        route.protocol = 0x54;
        route.mtu = Some(1450);
        route.onlink = true;
        let msg = route_message(&route);
        // RTNH_F_ONLINK is 4 in rtm_flags, as `ip route add ... onlink` sends it.
        assert_eq!(msg.header.flags.bits(), 4);
        assert_eq!(route_from_message(msg), Some(route));
        let mut plain = route;
        plain.onlink = false;
        assert!(route_message(&plain).header.flags.is_empty());
    }

    #[test]
    fn onlink_is_read_among_other_next_hop_flags() {
        let mut route = Route::new("2001:db8:1::/64".parse().unwrap());
        route.gateway = Some("2001:db8:1::".parse().unwrap());
        route.oif = Some(5);
        let mut msg = route_message(&route);
        msg.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
        assert!(route_from_message(msg).unwrap().onlink);
    }

    #[test]
    fn default_route_has_no_destination() {
        let route = Route::new("::/0".parse().unwrap());
        let msg = route_message(&route);
        assert_eq!(msg.header.address_family, AddressFamily::Inet6);
        assert_eq!(msg.header.table, 254);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert_eq!(route_from_message(msg), Some(route));
    }

    #[test]
    fn destination_is_the_network() {
        let msg = route_message(&Route::new("10.1.2.3/8".parse().unwrap()));
        assert!(msg.attributes.contains(&RouteAttribute::Destination(
            Ipv4Addr::new(10, 0, 0, 0).into()
        )));
    }
}
