//! The crate's error type and its mapping to CNI error codes: the one table `trestle-ipam` answers with.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

/// Everything that can go wrong in configuration parsing, allocation and storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// The network configuration is invalid (CNI code 7).
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// JSON path of the offending key, e.g. `ipam.ranges[0][1].subnet`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration uses something this CNI version does not support (CNI code 2).
    #[error("unsupported {field}: {reason}")]
    Unsupported {
        /// JSON path of the offending key.
        field: String,
        /// Why it is unsupported.
        reason: String,
    },
    /// A range set has no free address left.
    ///
    /// The message keeps host-local's wording (`no IP addresses available in range set: …`),
    /// which operators and scripts grep for, and adds the network name.
    #[error(
        "failed to allocate for range {set_index}: no IP addresses available in range set: \
         {range} (network {network})"
    )]
    Exhausted {
        /// Network name.
        network: String,
        /// Index of the exhausted range set.
        set_index: usize,
        /// The set as `start-end[,start-end…]`.
        range: String,
    },
    /// A requested address is already reserved.
    #[error("requested IP address {ip} is not available in range set {range}")]
    Unavailable {
        /// The requested address.
        ip: IpAddr,
        /// The set it belongs to, as `start-end[,…]`.
        range: String,
    },
    /// A requested address is the gateway of its range.
    #[error("requested ip {ip} is subnet's gateway")]
    RequestedGateway {
        /// The requested address.
        ip: IpAddr,
    },
    /// A requested address lies in no range of any set.
    #[error("requested IP address {0} is outside every range set")]
    OutsideRanges(IpAddr),
    /// More addresses were requested than can be used (two in one set).
    #[error("failed to allocate all requested IPs: {}", join_ips(.0))]
    UnusedRequests(Vec<IpAddr>),
    /// The attachment already holds an address in a set (CNI forbids a second ADD).
    #[error("{ip} has been allocated to {container_id}, duplicate allocation is not allowed")]
    Duplicate {
        /// The address already held.
        ip: IpAddr,
        /// The container holding it.
        container_id: String,
    },
    /// CHECK found no reservation for the attachment.
    #[error("failed to find address added by container {container_id}")]
    NotFound {
        /// The container that was checked.
        container_id: String,
    },
    /// The network's `dataDir` was handed over to `trestled` (see [`crate::HANDOVER_FILE`]):
    /// the embedded plugin must ask the daemon instead of allocating from the directory.
    #[error("network {network} is managed by trestled at {}", socket.display())]
    ManagedByDaemon {
        /// Network name.
        network: String,
        /// The daemon's socket, as the handover file records it.
        socket: PathBuf,
        /// Its delete queue, if the handover file records it.
        delete_queue: Option<PathBuf>,
    },
    /// A state file or directory could not be accessed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// The operation, e.g. `create` or `read`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn join_ips(ips: &[IpAddr]) -> String {
    let parts: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    parts.join(" ")
}

/// trestle-ipam's own CNI error codes (the spec reserves 0-99; the bridge plugin's are 100-104, and it passes IPAM
/// errors through unchanged, so these must not collide with them).
pub mod code {
    /// The state directory could not be read or written.
    pub const STORE_IO: u32 = 110;
    /// A requested address is taken, or the attachment already holds one.
    pub const CONFLICT: u32 = 111;
    /// A requested address cannot be served by this configuration.
    pub const BAD_REQUEST: u32 = 112;
    /// CHECK found no reservation for the attachment.
    pub const NOT_FOUND: u32 = 113;
    /// The plugin and `trestled` speak incompatible API versions.
    pub const INCOMPATIBLE: u32 = 114;
    /// `trestled` refused the caller (peer credentials).
    pub const DENIED: u32 = 115;
}

/// Coarse classification of an [`IpamError`], for the plugin edge to pick a CNI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Invalid network configuration: CNI code 7.
    InvalidConfig,
    /// Unsupported configuration field: CNI code 2.
    Unsupported,
    /// May succeed later (a full pool frees up after DEL/GC, an interrupted lock): CNI code 11.
    Transient,
    /// A requested address conflicts with an existing reservation, or a duplicate ADD: [`code::CONFLICT`].
    Conflict,
    /// A requested address cannot be honoured by this configuration: [`code::BAD_REQUEST`].
    BadRequest,
    /// CHECK found nothing: [`code::NOT_FOUND`].
    NotFound,
    /// The state directory could not be accessed: [`code::STORE_IO`].
    Io,
}

impl ErrorKind {
    /// The CNI error code trestle-ipam answers with for this kind: a spec code (7, 2, 11) or one of [`code`].
    pub fn cni_code(self) -> u32 {
        match self {
            ErrorKind::InvalidConfig => 7,
            ErrorKind::Unsupported => 2,
            // An exhausted pool frees up after DEL or GC: the runtime may retry later.
            ErrorKind::Transient => 11,
            ErrorKind::Io => code::STORE_IO,
            ErrorKind::Conflict => code::CONFLICT,
            ErrorKind::BadRequest => code::BAD_REQUEST,
            ErrorKind::NotFound => code::NOT_FOUND,
        }
    }
}

impl IpamError {
    /// True for errors in the network configuration itself (CNI code 7).
    pub fn is_invalid_config(&self) -> bool {
        matches!(self, IpamError::InvalidConfig { .. })
    }

    /// The error's [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            IpamError::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            IpamError::Unsupported { .. } => ErrorKind::Unsupported,
            IpamError::Exhausted { .. } => ErrorKind::Transient,
            IpamError::Unavailable { .. } | IpamError::Duplicate { .. } => ErrorKind::Conflict,
            IpamError::RequestedGateway { .. }
            | IpamError::OutsideRanges(_)
            | IpamError::UnusedRequests(_) => ErrorKind::BadRequest,
            IpamError::NotFound { .. } => ErrorKind::NotFound,
            // Only seen if the daemon it names cannot be asked either.
            IpamError::ManagedByDaemon { .. } => ErrorKind::Transient,
            IpamError::Io { source, .. } if is_transient_io(source) => ErrorKind::Transient,
            IpamError::Io { .. } => ErrorKind::Io,
        }
    }

    /// Shorthand for `self.kind().cni_code()`.
    pub fn cni_code(&self) -> u32 {
        self.kind().cni_code()
    }

    /// An I/O error on `path` during `op`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IpamError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        IpamError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn is_transient_io(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::ResourceBusy
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_code_table_spec_codes_then_trestle_ipams_own() {
        let table = [
            (ErrorKind::InvalidConfig, 7),
            (ErrorKind::Unsupported, 2),
            (ErrorKind::Transient, 11),
            (ErrorKind::Io, 110),
            (ErrorKind::Conflict, 111),
            (ErrorKind::BadRequest, 112),
            (ErrorKind::NotFound, 113),
        ];
        for (kind, code) in table {
            assert_eq!(kind.cni_code(), code, "{kind:?}");
        }
        let busy = IpamError::io("lock", "/x", io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(busy.cni_code(), 11, "a busy lock may succeed later");
        let denied = IpamError::io("create", "/x", io::Error::from_raw_os_error(13));
        assert_eq!(denied.cni_code(), code::STORE_IO);
    }

    #[test]
    fn io_error_prints_its_source_only_as_source() {
        use std::error::Error as _;
        let e = IpamError::io("create", "/var/lib/x", io::Error::from_raw_os_error(13));
        assert_eq!(e.to_string(), "cannot create /var/lib/x");
        assert_eq!(
            e.source().unwrap().to_string(),
            io::Error::from_raw_os_error(13).to_string()
        );
    }
}
