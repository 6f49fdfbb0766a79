//! Interface addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    AddressFamily, RouteNetlinkMessage as Msg,
};

use crate::{Address, Error, Netlink};

impl Netlink {
    /// Lists addresses of both families, of one link when `index` is given.
    /// [`Error::NotFound`] when that link does not exist.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, Error> {
        let mut msg = AddressMessage::default();
        // With strict checking the kernel filters the dump by index itself.
        msg.header.index = index.unwrap_or(0);
        let replies = self
            .transport
            .dump("dump addresses", Msg::GetAddress(msg))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                Msg::NewAddress(m) => address_from_message(m),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// Adds an address with universe scope; [`Error::Exists`] when the link
    /// already has it. IPv4 addresses get the subnet broadcast like
    /// `ip addr add ADDR brd + dev DEV`; `nodad` (IPv6 only) skips duplicate
    /// address detection so the address is usable at once.
    pub fn add_address(&mut self, index: u32, addr: IpNet, nodad: bool) -> Result<(), Error> {
        let mut msg = address_message(index, addr);
        if let IpNet::V4(net) = addr {
            // /31 and /32 have no broadcast address (RFC 3021).
            if net.prefix_len() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(net.broadcast()));
            }
        }
        if nodad && addr.addr().is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.transport.ack(
            "add address",
            Msg::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Removes an address; [`Error::NotFound`] when the link does not hold
    /// it (`EADDRNOTAVAIL`) or does not exist.
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error> {
        let msg = address_message(index, addr);
        self.transport
            .ack("delete address", Msg::DelAddress(msg), 0)
            .map_err(|e| e.not_found_on(libc::EADDRNOTAVAIL))
    }
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(addr.addr());
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    // Both, like iproute2: IFA_LOCAL is the address, IFA_ADDRESS the
    // (same) peer; the kernel reads one or the other per family.
    msg.attributes.push(AddressAttribute::Local(addr.addr()));
    msg.attributes.push(AddressAttribute::Address(addr.addr()));
    msg
}

pub(crate) fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

pub(crate) fn address_from_message(msg: AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut flags = u32::from(msg.header.flags.bits());
    for attribute in msg.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    let ip = local.or(address)?;
    Some(Address {
        index: msg.header.index,
        address: IpNet::new(ip, msg.header.prefix_len).ok()?,
        scope: msg.header.scope.into(),
        flags,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;

    #[test]
    fn v4_message_has_local_and_address() {
        let msg = address_message(3, "10.1.2.3/24".parse().unwrap());
        assert_eq!(msg.header.family, AddressFamily::Inet);
        assert_eq!(msg.header.prefix_len, 24);
        assert_eq!(msg.header.index, 3);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            msg.attributes,
            vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)]
        );
        // ifaddrmsg (8) + two 8-byte attributes.
        assert_eq!(msg.buffer_len(), 24);
    }

    #[test]
    fn reads_local_before_address() {
        let mut msg = address_message(4, "10.0.0.1/32".parse().unwrap());
        msg.attributes[1] = AddressAttribute::Address("10.0.0.2".parse().unwrap());
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Permanent));
        let a = address_from_message(msg).unwrap();
        assert_eq!(a.address, "10.0.0.1/32".parse::<IpNet>().unwrap());
        assert_eq!(a.flags, 0x80);
        assert_eq!(a.index, 4);
    }
}
