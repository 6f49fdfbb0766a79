//! Change notifications: a second socket subscribed to the kernel's link, address, route and neighbour groups.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::LinkMessage, neighbour::NeighbourMessage, AddressFamily, RouteNetlinkMessage as Msg,
};
use netlink_sys::Socket;

use crate::{
    addr::address_from_message,
    neigh::{fdb_from_message, neighbour_from_message},
    route::route_from_message,
    socket::HEADER_LEN,
    Address, Error, FdbEntry, Link, Neighbour, Netlink, Route, Unbound,
};

/// Large enough for any single notification: the kernel sizes each one to its message (a link with its
/// statistics is the largest, a few KiB).
const BUF_LEN: usize = 64 * 1024;

/// The receive buffer asked for at open: room for thousands of notifications, so that a burst (a peer node
/// coming up with hundreds of routes) does not overrun a reader that is busy for a moment.
const DEFAULT_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// The groups a [`Monitor`] joins (`RTNLGRP_*`, `linux/rtnetlink.h`).
const GROUPS: [u32; 6] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_NEIGH,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV6_IFADDR,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
];

/// One change reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A link appeared or changed (`RTM_NEWLINK`: flags such as up/down and carrier, name, MTU...), or was
    /// deleted. Taking a link down removes its IPv4 routes WITHOUT a route event (IPv6 ones are reported):
    /// read the routes again when a link goes down.
    Link {
        /// The link as reported.
        link: Link,
        /// `RTM_DELLINK`: the link is gone.
        deleted: bool,
    },
    /// An address was added, changed or removed.
    Address {
        /// The address as reported.
        address: Address,
        /// `RTM_DELADDR`.
        deleted: bool,
    },
    /// A route was added, replaced or removed, in any table.
    Route {
        /// The route as reported.
        route: Route,
        /// `RTM_DELROUTE`.
        deleted: bool,
    },
    /// An ARP or NDP entry was added, changed state or was removed.
    Neighbour {
        /// The entry as reported.
        neighbour: Neighbour,
        /// `RTM_DELNEIGH`.
        deleted: bool,
    },
    /// A forwarding database entry of a bridge or VXLAN device was added or removed.
    Fdb {
        /// The entry as reported.
        entry: FdbEntry,
        /// `RTM_DELNEIGH`.
        deleted: bool,
    },
    /// Notifications were lost because the socket's receive buffer was full (`ENOBUFS`), or one did not fit the
    /// read buffer: the state read so far may be stale, so read it all again. Events after this one are
    /// current again.
    Overrun,
    /// A notification of another kind (for instance the bridge-port view of a link, or a multicast route).
    Other {
        /// Its `nlmsg_type`.
        message_type: u16,
    },
}

/// A `NETLINK_ROUTE` socket subscribed to link, address, IPv4/IPv6 route and neighbour (ARP, NDP and FDB)
/// changes of the namespace it was opened in. Made for a dedicated thread that blocks in [`Monitor::recv`], or
/// for a loop that polls it ([`Monitor::recv_timeout`], or its descriptor).
///
/// A typical controller opens the monitor first, then reads the full state with [`Netlink`] dumps, then
/// applies events; on [`Event::Overrun`] it reads the full state again.
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
    /// Events of a datagram already read, not handed out yet.
    pending: VecDeque<Result<Event, Error>>,
}

impl Monitor {
    /// Opens a monitor on the calling thread's network namespace.
    pub fn open() -> Result<Monitor, Error> {
        Monitor::from_socket(Netlink::socket()?)
    }

    /// Sets up a socket made by [`Netlink::socket`] (on a thread inside some namespace) as a monitor of that
    /// namespace.
    pub fn from_socket(socket: Unbound) -> Result<Monitor, Error> {
        let mut socket = socket.0;
        socket.bind_auto().map_err(Error::Io)?;
        for group in GROUPS {
            socket.add_membership(group).map_err(Error::Io)?;
        }
        let monitor = Monitor {
            socket,
            buf: vec![0; BUF_LEN],
            pending: VecDeque::new(),
        };
        // A smaller buffer only means earlier overruns, which the caller handles anyway.
        if let Err(e) = monitor.set_receive_buffer(DEFAULT_RECEIVE_BUFFER) {
            log::debug!("netlink monitor: cannot grow the receive buffer: {e}");
        }
        Ok(monitor)
    }

    /// Sets the socket's receive buffer, where notifications wait to be read; when it is full the kernel drops
    /// them and the next read reports [`Event::Overrun`]. Beyond `net.core.rmem_max` only with `CAP_NET_ADMIN`
    /// (`SO_RCVBUFFORCE`); without it the size is capped there.
    pub fn set_receive_buffer(&self, bytes: usize) -> Result<(), Error> {
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        match force_receive_buffer(self.socket.as_raw_fd(), size) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                self.socket.set_rx_buf_sz(size).map_err(Error::Io)
            }
            other => other.map_err(Error::Io),
        }
    }

    /// Waits for the next event. An error concerns one notification (one that could not be decoded: treat it
    /// like [`Event::Overrun`]) or the socket; the next call goes on with the next notification.
    pub fn recv(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            self.read(0)?;
        }
    }

    /// Like [`Monitor::recv`], waiting at most `timeout`; `Ok(None)` when nothing came. A zero timeout only
    /// takes what has already arrived.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        // A timeout too large for the clock waits forever.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event.map(Some);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !self.wait_readable(left)? {
                return Ok(None);
            }
            self.read(libc::MSG_DONTWAIT)?;
        }
    }

    /// Waits until the socket has something to read, for at most `timeout` (forever when `None`); false when
    /// the time ran out. A signal counts as readable: the caller reads without blocking and comes back.
    fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        let ms = timeout.map_or(-1, |t| {
            // Round up, so that a short wait does not become a busy loop of zero-length polls.
            let ms = t.as_micros().div_ceil(1000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        });
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fd` is one initialised pollfd that lives across the call, matching the count of 1; its
        // descriptor is the socket's, open as long as `self` is borrowed.
        let rc = unsafe { libc::poll(&mut fd, 1, ms) };
        match rc {
            // POLLERR too: a pending ENOBUFS is reported by the read.
            1.. => Ok(true),
            0 => Ok(false),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => Ok(true),
                e => Err(Error::Io(e)),
            },
        }
    }

    /// Reads one datagram, if there is one, and queues its events.
    fn read(&mut self, flags: libc::c_int) -> Result<(), Error> {
        // MSG_TRUNC makes the read report the real size of a datagram that did not fit.
        match self
            .socket
            .recv_from(&mut &mut self.buf[..], flags | libc::MSG_TRUNC)
        {
            Ok((n, _)) if n > self.buf.len() => {
                log::warn!("netlink monitor: notification of {n} bytes truncated");
                self.pending.push_back(Ok(Event::Overrun));
            }
            // Only the kernel (port 0) speaks for the kernel; anything else is ignored.
            Ok((_, from)) if from.port_number() != 0 => {
                log::debug!(
                    "netlink monitor: ignoring a message from port {}",
                    from.port_number()
                );
            }
            Ok((n, _)) => parse_datagram(&self.buf[..n], &mut self.pending),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.pending.push_back(Ok(Event::Overrun));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(Error::Io(e)),
        }
        Ok(())
    }
}

impl AsRawFd for Monitor {
    /// The socket, for an outside poll loop: readable when [`Monitor::recv_timeout`] with a zero timeout has
    /// something. Drain that way before polling again, since one datagram may hold several events.
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// `SO_RCVBUFFORCE`: `SO_RCVBUF` without the `net.core.rmem_max` cap, for `CAP_NET_ADMIN`.
fn force_receive_buffer(fd: RawFd, size: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value points at `size`, a c_int alive for the whole call, with its exact length; the
    // kernel only reads it. `fd` is the caller's open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Queues the events of the messages of one datagram.
fn parse_datagram(bytes: &[u8], out: &mut VecDeque<Result<Event, Error>>) {
    let mut offset = 0;
    while offset + HEADER_LEN <= bytes.len() {
        let rest = &bytes[offset..];
        let header = match NetlinkBuffer::new_checked(rest) {
            Ok(header) => header,
            Err(e) => {
                out.push_back(Err(Error::Decode(e)));
                return;
            }
        };
        let len = header.length() as usize;
        // The rest of the datagram cannot be framed without this length.
        if len < HEADER_LEN || len > rest.len() {
            out.push_back(Err(Error::Unexpected("monitor")));
            return;
        }
        offset += (len + 3) & !3;
        out.push_back(parse_message(header.message_type(), &rest[..len]));
    }
}

/// The event of one message. Only the kinds we subscribed to are decoded: the decoder refuses types it does not
/// know, and those are no loss to us.
fn parse_message(message_type: u16, bytes: &[u8]) -> Result<Event, Error> {
    let other = Event::Other { message_type };
    let known = matches!(
        message_type,
        libc::RTM_NEWLINK
            | libc::RTM_DELLINK
            | libc::RTM_NEWADDR
            | libc::RTM_DELADDR
            | libc::RTM_NEWROUTE
            | libc::RTM_DELROUTE
            | libc::RTM_NEWNEIGH
            | libc::RTM_DELNEIGH
    );
    if !known {
        return Ok(other);
    }
    let msg = NetlinkMessage::<Msg>::deserialize(bytes).map_err(Error::Decode)?;
    let event = match msg.payload {
        NetlinkPayload::InnerMessage(m) => event(m),
        _ => None,
    };
    Ok(event.unwrap_or(other))
}

/// The event of a decoded message; `None` for those [`Event`] has no variant for.
fn event(msg: Msg) -> Option<Event> {
    match msg {
        Msg::NewLink(m) => link_event(m, false),
        Msg::DelLink(m) => link_event(m, true),
        Msg::NewAddress(m) => address_from_message(m).map(|address| Event::Address {
            address,
            deleted: false,
        }),
        Msg::DelAddress(m) => address_from_message(m).map(|address| Event::Address {
            address,
            deleted: true,
        }),
        Msg::NewRoute(m) => route_from_message(m).map(|route| Event::Route {
            route,
            deleted: false,
        }),
        Msg::DelRoute(m) => route_from_message(m).map(|route| Event::Route {
            route,
            deleted: true,
        }),
        Msg::NewNeighbour(m) => neighbour_event(m, false),
        Msg::DelNeighbour(m) => neighbour_event(m, true),
        _ => None,
    }
}

fn link_event(msg: LinkMessage, deleted: bool) -> Option<Event> {
    // The bridge reports its ports' bridge state in AF_BRIDGE link messages, and an AF_BRIDGE RTM_DELLINK when a
    // port merely leaves its bridge: not the device's life.
    if msg.header.interface_family == AddressFamily::Bridge {
        return None;
    }
    Some(Event::Link {
        link: Link::from_message(msg),
        deleted,
    })
}

fn neighbour_event(msg: NeighbourMessage, deleted: bool) -> Option<Event> {
    if msg.header.family == AddressFamily::Bridge {
        fdb_from_message(msg).map(|entry| Event::Fdb { entry, deleted })
    } else {
        neighbour_from_message(msg).map(|neighbour| Event::Neighbour { neighbour, deleted })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use netlink_packet_core::{NetlinkHeader, NLM_F_CREATE};
    use netlink_packet_route::{
        link::LinkFlags,
        neighbour::{NeighbourAttribute, NeighbourState},
        route::{RouteAttribute, RouteFlags, RouteMessage},
    };

    use super::*;
    use crate::link::message;

    /// One message as the kernel sends it: header and payload.
    fn packet(msg: Msg) -> Vec<u8> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_CREATE;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }

    fn events(bytes: &[u8]) -> Vec<Event> {
        let mut out = VecDeque::new();
        parse_datagram(bytes, &mut out);
        out.into_iter().map(Result::unwrap).collect()
    }

    #[test]
    fn link_up_and_delete() {
        let mut up = message(5);
        up.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        let mut datagram = packet(Msg::NewLink(up));
        datagram.extend(packet(Msg::DelLink(message(5))));
        let got = events(&datagram);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(&got[0], Event::Link { link, deleted: false } if link.index == 5 && link.up && link.carrier),
            "{got:?}"
        );
        assert!(
            matches!(&got[1], Event::Link { link, deleted: true } if link.index == 5 && !link.up)
        );
    }

    #[test]
    fn bridge_port_view_is_other() {
        let mut msg = message(5);
        msg.header.interface_family = AddressFamily::Bridge;
        assert_eq!(
            events(&packet(Msg::DelLink(msg))),
            vec![Event::Other {
                message_type: libc::RTM_DELLINK
            }]
        );
    }

    #[test]
    fn route_add_and_delete() {
        let mut route = Route::new("10.244.1.0/26".parse().unwrap());
        route.gateway = Some("10.244.1.0".parse().unwrap());
        route.oif = Some(5);
        route.onlink = true;
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 26;
        msg.header.table = 254;
        msg.header.protocol = route.protocol.into();
        msg.header.kind = route.kind.into();
        msg.header.flags = RouteFlags::Onlink;
        let ip: Ipv4Addr = "10.244.1.0".parse().unwrap();
        msg.attributes = vec![
            RouteAttribute::Table(254),
            RouteAttribute::Destination(ip.into()),
            RouteAttribute::Gateway(ip.into()),
            RouteAttribute::Oif(5),
        ];
        let mut datagram = packet(Msg::NewRoute(msg.clone()));
        datagram.extend(packet(Msg::DelRoute(msg)));
        assert_eq!(
            events(&datagram),
            vec![
                Event::Route {
                    route,
                    deleted: false
                },
                Event::Route {
                    route,
                    deleted: true
                }
            ]
        );
    }

    #[test]
    fn neighbour_and_fdb() {
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        neigh.header.ifindex = 4;
        neigh.header.state = NeighbourState::Permanent;
        let ip: IpAddr = "10.244.1.0".parse().unwrap();
        neigh.attributes = vec![NeighbourAttribute::Destination(ip.into())];
        let mut fdb = neigh.clone();
        fdb.header.family = AddressFamily::Bridge;
        fdb.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 1, 1]));
        let mut datagram = packet(Msg::DelNeighbour(neigh));
        datagram.extend(packet(Msg::NewNeighbour(fdb)));
        let got = events(&datagram);
        assert!(
            matches!(&got[0], Event::Neighbour { neighbour, deleted: true }
                if neighbour.index == 4 && neighbour.state == libc::NUD_PERMANENT && neighbour.mac.is_none()),
            "{got:?}"
        );
        assert!(
            matches!(&got[1], Event::Fdb { entry, deleted: false }
                if entry.mac == [2, 0, 0, 0, 1, 1] && entry.dst == Some(ip)),
            "{got:?}"
        );
    }

    #[test]
    fn unknown_types_are_other_and_bad_messages_are_errors() {
        // RTM_NEWNETCONF (80), which the decoder does not know.
        let mut netconf = packet(Msg::DelLink(message(1)));
        netconf[4..6].copy_from_slice(&80u16.to_ne_bytes());
        assert_eq!(events(&netconf), vec![Event::Other { message_type: 80 }]);

        // A link message cut short inside its header, followed by a good one: the error stays one event.
        let mut bad = packet(Msg::NewLink(message(1)));
        bad.truncate(HEADER_LEN + 4);
        bad[..4].copy_from_slice(&((HEADER_LEN + 4) as u32).to_ne_bytes());
        bad.extend(packet(Msg::NewLink(message(2))));
        let mut out = VecDeque::new();
        parse_datagram(&bad, &mut out);
        assert!(matches!(out[0], Err(Error::Decode(_))), "{out:?}");
        assert!(matches!(&out[1], Ok(Event::Link { link, .. }) if link.index == 2));

        // A length running past the datagram ends its parse.
        let mut out = VecDeque::new();
        parse_datagram(&bad[..HEADER_LEN], &mut out);
        assert!(matches!(out.pop_front(), Some(Err(Error::Decode(_)))));
        assert!(out.is_empty());
    }

    #[test]
    fn monitor_can_move_to_a_thread() {
        fn is_send<T: Send>() {}
        is_send::<Monitor>();
    }
}
