//! Network namespace ids: the numbers by which one namespace names another (`IFLA_LINK_NETNSID`).

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_route::{
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage as Msg,
};

use crate::{Error, Netlink};

impl Netlink {
    /// The id this socket's namespace gives the namespace `ns` (an nsfs descriptor), or `None` when it has given
    /// it none. Ids are per namespace: a veth's `IFLA_LINK_NETNSID` is only meaningful compared with this, asked
    /// of the namespace the veth lives in. Asking allocates nothing.
    ///
    /// Like `ip netns identify`, the other way round.
    pub fn netns_id(&mut self, ns: BorrowedFd<'_>) -> Result<Option<i32>, Error> {
        let mut msg = NsidMessage::default();
        // The descriptor only has to stay open until the kernel has read the request, which `get` waits for.
        msg.attributes
            .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        let replies = self.transport.get("get netns id", Msg::GetNsId(msg))?;
        let id = replies.into_iter().find_map(|reply| match reply {
            Msg::NewNsId(m) => m.attributes.into_iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(id),
                _ => None,
            }),
            _ => None,
        });
        // NETNSA_NSID_NOT_ASSIGNED is -1.
        Ok(id.filter(|id| *id >= 0))
    }
}
