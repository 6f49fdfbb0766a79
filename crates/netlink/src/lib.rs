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

mod addr;
mod bridge;
mod error;
mod link;
mod mac;
mod route;
mod socket;
pub mod sysctl;
mod types;

pub use error::Error;
pub use mac::{format_mac, parse_mac};
pub use types::{Address, BridgeVlan, Family, Link, PortOptions, Route, VethEnd};

/// A synchronous rtnetlink client bound to one network namespace.
pub struct Netlink {
    transport: socket::Transport,
}

impl Netlink {
    /// Opens a socket bound to the calling thread's network namespace.
    pub fn open() -> Result<Netlink, Error> {
        Ok(Netlink {
            transport: socket::Transport::open().map_err(Error::Io)?,
        })
    }
}
