//! Neighbours: the ARP/NDP cache, and the forwarding database of bridges and VXLAN devices (`AF_BRIDGE`
//! neighbours).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    AddressFamily, RouteNetlinkMessage as Msg,
};

use crate::{addr::family_of, Error, Family, FdbEntry, Neighbour, Netlink};

impl Netlink {
    /// Lists the ARP (IPv4) and NDP (IPv6) entries of one family or both, of one link when `index` is given
    /// (`ip neigh show [dev DEV]`); empty when that link does not exist. Proxy entries and the forwarding
    /// database are not included.
    pub fn neighbours(
        &mut self,
        family: Option<Family>,
        index: Option<u32>,
    ) -> Result<Vec<Neighbour>, Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match family {
            None => AddressFamily::Unspec,
            Some(Family::V4) => AddressFamily::Inet,
            Some(Family::V6) => AddressFamily::Inet6,
        };
        // With strict checking the kernel filters by NDA_IFINDEX, and refuses an index in the header.
        msg.attributes
            .extend(index.map(NeighbourAttribute::IfIndex));
        let replies = self
            .transport
            .dump("dump neighbours", Msg::GetNeighbour(msg))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                Msg::NewNeighbour(m) => neighbour_from_message(m),
                _ => None,
            })
            .filter(|n| index.is_none_or(|i| n.index == i))
            .collect())
    }

    /// Adds a permanent entry `ip` -> `mac` on link `index`, or turns the existing entry for `ip` into that one
    /// (`ip neigh replace IP lladdr MAC dev DEV nud permanent`). Asking twice is the same as asking once.
    pub fn replace_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), Error> {
        let msg = neighbour_message(index, ip, Some(mac));
        self.transport.ack(
            "replace neighbour",
            Msg::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Removes the entry for `ip` on link `index`, whatever its state (`ip neigh del IP dev DEV`).
    /// [`Error::NotFound`] when there is none (`ENOENT`) or the link does not exist.
    pub fn del_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<(), Error> {
        let msg = neighbour_message(index, ip, None);
        self.transport
            .ack("delete neighbour", Msg::DelNeighbour(msg), 0)
    }

    /// Lists the forwarding database entries of device `index` (`bridge fdb show dev DEV`): on a VXLAN device,
    /// one entry per MAC and remote destination; on a bridge port, the bridge's entries for that port too. Empty
    /// when the device does not exist.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        // In an AF_BRIDGE dump the header's index is the device filter (the kernel skips other devices).
        msg.header.ifindex = index;
        let replies = self.transport.dump("dump fdb", Msg::GetNeighbour(msg))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                Msg::NewNeighbour(m) => fdb_from_message(m),
                _ => None,
            })
            .filter(|e| e.index == index)
            .collect())
    }

    /// Makes device `index` (a VXLAN device) send frames for `mac` to the tunnel endpoint `dst`, with a
    /// permanent entry of its own database (`NTF_SELF`). For a unicast MAC any other destination is replaced
    /// (`bridge fdb replace MAC dev DEV dst DST self permanent`). The all-zero MAC (and multicast MACs) hold a
    /// list of destinations that broadcast and unknown frames are flooded to, which the kernel refuses to
    /// replace (`EOPNOTSUPP`): `dst` is added to that list instead (`bridge fdb append`). Either way asking twice
    /// is the same as asking once. [`Error::NotFound`] when the device does not exist; a device without a
    /// database of its own (a veth) takes `mac` into its unicast filter and ignores `dst`.
    pub fn replace_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), Error> {
        let msg = fdb_message(index, mac, dst);
        let how = if is_unicast(mac) {
            NLM_F_REPLACE
        } else {
            NLM_F_APPEND
        };
        self.transport.ack(
            "replace fdb entry",
            Msg::NewNeighbour(msg),
            NLM_F_CREATE | how,
        )
    }

    /// Removes the entry `mac` -> `dst` from device `index`'s own database (`bridge fdb del MAC dev DEV dst DST
    /// self`); other destinations of the same MAC stay. [`Error::NotFound`] when the device has no such entry.
    pub fn del_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), Error> {
        // The kernel answers success, and deletes nothing, when the MAC exists with other destinations only:
        // look first, so that a missing entry is reported as such.
        let present = self
            .fdb(index)?
            .iter()
            .any(|e| e.mac == mac && e.dst == Some(dst) && e.flags & libc::NTF_SELF != 0);
        if !present {
            return Err(Error::NotFound);
        }
        let msg = fdb_message(index, mac, dst);
        self.transport
            .ack("delete fdb entry", Msg::DelNeighbour(msg), 0)
    }
}

/// A request about the entry for `ip` on `index`, permanent and pointing at `mac` when given.
fn neighbour_message(index: u32, ip: IpAddr, mac: Option<[u8; 6]>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(ip);
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(ip.into()));
    if let Some(mac) = mac {
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    msg
}

/// A request about the permanent entry `mac` -> `dst` of `index`'s own database.
fn fdb_message(index: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(dst.into()));
    msg
}

/// Neither multicast (the group bit) nor all zeros: the MACs whose FDB entries the kernel lets us replace.
fn is_unicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// An ARP or NDP entry; `None` for other families or an entry without an address.
pub(crate) fn neighbour_from_message(msg: NeighbourMessage) -> Option<Neighbour> {
    let h = &msg.header;
    if !matches!(h.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attribute in msg.attributes {
        match attribute {
            NeighbourAttribute::Destination(dst) => ip = address(dst),
            NeighbourAttribute::LinkLayerAddress(lladdr) => mac = lladdr.try_into().ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        index: h.ifindex,
        ip: ip?,
        mac,
        state: h.state.into(),
        flags: h.flags.bits(),
        kind: h.kind.into(),
    })
}

/// A forwarding database entry; `None` for other families or an entry without a 6-byte MAC.
pub(crate) fn fdb_from_message(msg: NeighbourMessage) -> Option<FdbEntry> {
    let h = &msg.header;
    if h.family != AddressFamily::Bridge {
        return None;
    }
    let mut entry = FdbEntry {
        index: h.ifindex,
        mac: [0; 6],
        dst: None,
        vni: None,
        port: None,
        vlan: None,
        master: None,
        flags: h.flags.bits(),
        state: h.state.into(),
    };
    let mut mac = None;
    for attribute in msg.attributes {
        match attribute {
            NeighbourAttribute::LinkLayerAddress(lladdr) => mac = lladdr.try_into().ok(),
            NeighbourAttribute::Destination(dst) => entry.dst = address(dst),
            NeighbourAttribute::Vni(vni) => entry.vni = Some(vni),
            NeighbourAttribute::Port(port) => entry.port = Some(port),
            NeighbourAttribute::Vlan(vlan) => entry.vlan = Some(vlan),
            NeighbourAttribute::Controller(master) => entry.master = Some(master),
            _ => {}
        }
    }
    entry.mac = mac?;
    Some(entry)
}

/// An `NDA_DST` as an IP address. In `AF_BRIDGE` messages the family is not the address's, so the decoder
/// leaves it raw, and its length tells IPv4 from IPv6.
fn address(dst: NeighbourAddress) -> Option<IpAddr> {
    match dst {
        NeighbourAddress::Inet(a) => Some(a.into()),
        NeighbourAddress::Inet6(a) => Some(a.into()),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes)
                .ok()
                .map(|b| Ipv4Addr::from(b).into()),
            16 => <[u8; 16]>::try_from(bytes)
                .ok()
                .map(|b| Ipv6Addr::from(b).into()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The expected bytes are what iproute2 sends for the same command, minus the netlink header.

    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    fn bytes(msg: &NeighbourMessage) -> Vec<u8> {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    /// Emits and parses back, as a reply would arrive.
    fn reparse(msg: &NeighbourMessage) -> NeighbourMessage {
        NeighbourMessage::parse(&bytes(msg)[..]).unwrap()
    }

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];

    #[test]
    fn permanent_neighbour_request() {
        // ip neigh replace 10.244.1.0 lladdr 02:00:00:00:01:01 dev vx0 nud permanent (vx0 is index 4)
        let msg = neighbour_message(4, "10.244.1.0".parse().unwrap(), Some(MAC));
        let mut want = vec![2, 0, 0, 0, 4, 0, 0, 0, 0x80, 0, 0, 0];
        want.extend([8, 0, 1, 0, 10, 244, 1, 0]);
        want.extend([10, 0, 2, 0, 2, 0, 0, 0, 1, 1, 0, 0]);
        assert_eq!(bytes(&msg), want);
        assert_eq!(
            neighbour_from_message(reparse(&msg)),
            Some(Neighbour {
                index: 4,
                ip: "10.244.1.0".parse().unwrap(),
                mac: Some(MAC),
                state: libc::NUD_PERMANENT,
                flags: 0,
                kind: 0,
            })
        );
    }

    #[test]
    fn neighbour_delete_names_only_the_address() {
        let msg = neighbour_message(4, "fd00::1".parse().unwrap(), None);
        assert_eq!(msg.header.family, AddressFamily::Inet6);
        assert_eq!(msg.header.state, NeighbourState::None);
        let n = neighbour_from_message(reparse(&msg)).unwrap();
        assert_eq!((n.ip, n.mac), ("fd00::1".parse().unwrap(), None));
    }

    #[test]
    fn fdb_request_has_self_and_dst() {
        // bridge fdb replace 02:00:00:00:01:01 dev vx0 dst 192.0.2.1 self permanent
        let msg = fdb_message(4, MAC, "192.0.2.1".parse().unwrap());
        let mut want = vec![7, 0, 0, 0, 4, 0, 0, 0, 0x80, 0, 2, 0];
        want.extend([10, 0, 2, 0, 2, 0, 0, 0, 1, 1, 0, 0]);
        want.extend([8, 0, 1, 0, 192, 0, 2, 1]);
        assert_eq!(bytes(&msg), want);
        let entry = fdb_from_message(reparse(&msg)).unwrap();
        assert_eq!(
            entry,
            FdbEntry {
                index: 4,
                mac: MAC,
                dst: Some("192.0.2.1".parse().unwrap()),
                vni: None,
                port: None,
                vlan: None,
                master: None,
                flags: libc::NTF_SELF,
                state: libc::NUD_PERMANENT,
            }
        );
        // Not an ARP/NDP entry.
        assert_eq!(neighbour_from_message(reparse(&msg)), None);
    }

    #[test]
    fn fdb_reply_with_v6_dst_vni_and_port() {
        let mut msg = fdb_message(9, [0; 6], "2001:db8::1".parse().unwrap());
        msg.attributes.push(NeighbourAttribute::Vni(42));
        msg.attributes.push(NeighbourAttribute::Port(4789));
        // NDA_DST arrives as 16 raw bytes in an AF_BRIDGE message.
        let reply = reparse(&msg);
        assert!(reply.attributes.iter().any(|a| matches!(
            a,
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 16
        )));
        let entry = fdb_from_message(reply).unwrap();
        assert_eq!(entry.dst, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            (entry.vni, entry.port, entry.mac),
            (Some(42), Some(4789), [0; 6])
        );
    }

    #[test]
    fn unicast_macs() {
        assert!(is_unicast(MAC));
        assert!(!is_unicast([0; 6]));
        assert!(!is_unicast([0x01, 0, 0x5e, 0, 0, 1]));
        assert!(!is_unicast([0x33, 0x33, 0, 0, 0, 1]));
    }
}
