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
    /// The legacy (x_tables) `filter` table could not be read.
    #[error("cannot read the legacy {program} filter table")]
    LegacyRead {
        /// `iptables` or `ip6tables`, whichever family.
        program: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `iptables-legacy-restore` (or the IPv6 one) could not be run or refused the change.
    #[error("{program} failed: {detail}")]
    LegacyRestore {
        /// The program run.
        program: &'static str,
        /// Its exit status and what it printed, or why it could not start.
        detail: String,
    },
    /// A subnet's traffic would be dropped by the `FORWARD` chain of a `filter` table: trestle's accept rule (or
    /// the jump to them) is missing (CHECK found it).
    #[error("no forward accept for {subnet} of network {network} in the {backend} filter table")]
    ForwardMissing {
        /// The network checked.
        network: String,
        /// The subnet whose traffic is dropped.
        subnet: IpNet,
        /// `iptables-nft`, `ip6tables-nft`, `iptables-legacy` or `ip6tables-legacy`.
        backend: &'static str,
    },
    /// A forward chain of an nftables table trestle does not manage drops by policy, so the network's forwarded
    /// traffic may be dropped; trestle leaves other tables alone (CHECK reports it).
    #[error(
        "nftables chain {family} {table} {chain} drops forwarded packets by policy; add an accept for the pod \
         subnets to it, or set forwardAccept to false once the host's firewall lets them through"
    )]
    ForeignDrop {
        /// `ip`, `ip6` or `inet`.
        family: &'static str,
        /// The table.
        table: String,
        /// The base chain.
        chain: String,
    },
    /// The VXLAN guard's table exists but is not as trestle writes it (deleted or added to by hand, or a damaged
    /// write); `Firewall::sync_vxlan_guard` recreates it.
    #[error("table inet trestle-vxlan is not as trestle writes it: {0}")]
    VxlanGuardDamaged(&'static str),
}

/// A masquerade backend name that is not `"nftables"`, `"iptables"` or `"none"` (the value as given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown masquerade backend {0:?}: expected \"nftables\", \"iptables\" or \"none\"")]
pub struct UnknownBackend(pub String);
