//! A small synchronous rtnetlink client for short-lived CNI binaries.
//!
//! One [`Netlink`] owns one `NETLINK_ROUTE` socket and one reusable buffer.
//! Every request asks for an ACK and maps the kernel's errno
//! ([`Error::Exists`], [`Error::NotFound`], [`Error::Busy`], else
//! [`Error::Kernel`]); dumps are read until `NLMSG_DONE` and started again
//! when the kernel marks them interrupted.
//!
//! A netlink socket acts on the network namespace of the thread that opened
//! it, for its whole life. To work inside a container namespace, open the
//! socket on a thread inside that namespace, then use it from anywhere.
//!
//! A [`Monitor`] is a second socket that only listens: it reports link, address, route, neighbour and
//! forwarding database changes as [`Event`]s, for long-running controllers.

mod addr;
mod bridge;
mod error;
mod link;
mod mac;
mod monitor;
mod neigh;
mod nsid;
mod route;
mod socket;
pub mod sysctl;
mod types;
mod vxlan;

pub use error::Error;
pub use link::IPV4_DEVCONF_ARP_NOTIFY;
pub use mac::{format_mac, parse_mac};
pub use monitor::{Event, Monitor};
pub use types::{
    Address, BridgeVlan, Family, FdbEntry, Link, Neighbour, PortOptions, Route, VethEnd, VxlanInfo,
    VxlanSpec,
};

/// A synchronous rtnetlink client bound to one network namespace.
pub struct Netlink {
    transport: socket::Transport,
}

/// A route socket created in some network namespace and not set up yet (see [`Netlink::socket`]).
pub struct Unbound(netlink_sys::Socket);

impl Netlink {
    /// Opens a socket bound to the calling thread's network namespace.
    pub fn open() -> Result<Netlink, Error> {
        Ok(Netlink {
            transport: socket::Transport::open().map_err(Error::Io)?,
        })
    }

    /// Creates a socket in the calling thread's network namespace, and does nothing else: creation is the only
    /// step that depends on the thread's namespace, so a thread enters a container namespace for just this one
    /// system call (no allocation, nothing that could block) and finishes with [`Netlink::from_socket`] at home.
    pub fn socket() -> Result<Unbound, Error> {
        socket::Transport::create().map(Unbound).map_err(Error::Io)
    }

    /// Sets up a socket made by [`Netlink::socket`]; it keeps acting on the namespace it was created in.
    pub fn from_socket(socket: Unbound) -> Result<Netlink, Error> {
        Ok(Netlink {
            transport: socket::Transport::from_socket(socket.0).map_err(Error::Io)?,
        })
    }
}
