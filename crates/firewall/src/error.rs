//! The crate's error type.

use ipnet::IpNet;
use std::path::PathBuf;

/// Errors of masquerade management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the kernel over the netlink socket failed.
    #[error("nftables netlink I/O failed")]
    Io(#[source] std::io::Error),
    /// The kernel rejected a request.
    #[error("nftables {op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The operation that failed, such as `add chain`.
        op: &'static str,
        /// The positive errno the kernel returned.
        errno: i32,
    },
    /// The kernel sent something this crate does not understand.
    #[error("malformed nftables netlink reply: {0}")]
    Protocol(&'static str),
    /// A subnet is not masqueraded: its chain or its rule is missing (CHECK found it).
    #[error("no masquerade for {subnet} of network {network}")]
    Missing {
        /// The network checked.
        network: String,
        /// The subnet without masquerade.
        subnet: IpNet,
    },
}

/// A masquerade backend name that is not `"nftables"`, `"iptables"` or `"none"` (the value as given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown masquerade backend {0:?}: expected \"nftables\", \"iptables\" or \"none\"")]
pub struct UnknownBackend(pub String);
