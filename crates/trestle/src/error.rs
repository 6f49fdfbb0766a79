//! Mapping of the crates' typed errors to CNI error codes, done once, here at the edge: the message says what
//! failed and the top error; the causes below it go to the error's `details`, each once.

use cni_proto::{CniError, ErrorCode};

/// trestle's plugin-specific codes (the spec reserves 0-99); the README's error table lists them.
pub mod code {
    /// A kernel (netlink or sysctl) operation failed.
    pub const KERNEL: u32 = 100;
    /// `CNI_IFNAME` already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The bridge device conflicts with the config (not a bridge, or another address).
    pub const BRIDGE_CONFLICT: u32 = 102;
    /// The masquerade or forward rules could not be applied.
    pub const FIREWALL: u32 = 103;
    /// CHECK found the live state differs from the ADD result.
    pub const CHECK_FAILED: u32 = 104;
    /// The bridge has the kernel's maximum number of ports.
    pub const BRIDGE_FULL: u32 = 105;
}

/// Converts a netlink failure during `what`.
pub fn kernel(what: &str, e: trestle_netlink::Error) -> CniError {
    CniError::from_error(code::KERNEL, what, &e)
}

/// Converts a namespace failure.
pub fn netns(e: trestle_netns::Error) -> CniError {
    match e {
        trestle_netns::Error::NotFound(p) | trestle_netns::Error::NotNetNs(p) => CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {} is not a network namespace", p.display()),
        ),
        other => CniError::from_error(code::KERNEL, "", &other),
    }
}

/// Converts a firewall failure; what CHECK finds missing is a CHECK failure, not a firewall that failed.
pub fn firewall(e: trestle_firewall::Error) -> CniError {
    use trestle_firewall::Error as E;
    let code = match e {
        E::Missing { .. } | E::ForwardMissing { .. } | E::ForeignDrop { .. } => code::CHECK_FAILED,
        _ => code::FIREWALL,
    };
    CniError::from_error(code, "firewall", &e)
}

/// A sysctl write failure.
pub fn sysctl(key: &str, e: std::io::Error) -> CniError {
    CniError::from_error(code::KERNEL, &format!("sysctl {key}"), &e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_go_to_details_once() {
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = kernel("open netlink socket", trestle_netlink::Error::Io(io));
        assert_eq!(e.code, code::KERNEL);
        assert_eq!(e.msg, "open netlink socket: netlink socket I/O");
        let details = e.details.as_deref().unwrap_or_default();
        assert!(details.contains("Permission denied"), "{details}");
        let all = format!("{} {details}", e.msg);
        assert_eq!(all.matches("Permission denied").count(), 1, "{all}");
        let e = kernel("create veth", trestle_netlink::Error::Exists);
        assert_eq!(
            (e.msg.as_str(), e.details),
            ("create veth: already exists", None)
        );
    }
}
