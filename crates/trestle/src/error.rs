//! Mapping of the crates' typed errors to CNI error codes, done once, here at the edge.

use cni_proto::{CniError, ErrorCode};

/// trestle's plugin-specific codes (the spec reserves 0-99).
pub mod code {
    /// A kernel (netlink or sysctl) operation failed.
    pub const KERNEL: u32 = 100;
    /// `CNI_IFNAME` already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The bridge device conflicts with the config (not a bridge, or another address).
    pub const BRIDGE_CONFLICT: u32 = 102;
    /// The masquerade rules could not be applied.
    pub const FIREWALL: u32 = 103;
    /// CHECK found the live state differs from the ADD result.
    pub const CHECK_FAILED: u32 = 104;
}

/// Converts a netlink failure during `what`.
pub fn kernel(what: &str, e: trestle_netlink::Error) -> CniError {
    CniError::plugin(code::KERNEL, format!("{what}: {e}"))
}

/// Converts a namespace failure.
pub fn netns(e: trestle_netns::Error) -> CniError {
    match e {
        trestle_netns::Error::NotFound(p) | trestle_netns::Error::NotNetNs(p) => CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {} is not a network namespace", p.display()),
        ),
        other => CniError::plugin(code::KERNEL, chain(&other)),
    }
}

/// Converts a firewall failure.
pub fn firewall(e: trestle_firewall::Error) -> CniError {
    CniError::plugin(code::FIREWALL, format!("masquerade: {}", chain(&e)))
}

/// A sysctl write failure.
pub fn sysctl(key: &str, e: std::io::Error) -> CniError {
    CniError::plugin(code::KERNEL, format!("sysctl {key}: {e}"))
}

/// The error and its sources, each once, joined by ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
