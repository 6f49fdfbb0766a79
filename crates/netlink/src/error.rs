//! The crate's error type and the errno mapping shared by every request.

use netlink_packet_core::DecodeError;

/// Errors from [`crate::Netlink`] requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object already exists (`EEXIST`).
    #[error("already exists")]
    Exists,
    /// The link, address or route does not exist (`ENODEV`, `ENOENT`; see
    /// each method for operation-specific codes such as `ESRCH`).
    #[error("not found")]
    NotFound,
    /// The device or resource is busy (`EBUSY`).
    #[error("device or resource busy")]
    Busy,
    /// The kernel refused a request with another errno.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The request, e.g. `"create veth"`.
        op: &'static str,
        /// The positive errno the kernel answered with.
        errno: i32,
    },
    /// Opening, reading from or writing to the netlink socket failed; the OS error is the source.
    #[error("netlink socket I/O")]
    Io(#[source] std::io::Error),
    /// A reply could not be decoded; the decoder's error is the source.
    #[error("cannot decode netlink reply")]
    Decode(#[source] DecodeError),
    /// A reply did not fit the receive buffer.
    #[error("netlink reply of {0} bytes truncated")]
    Truncated(usize),
    /// A dump was interrupted by concurrent changes on every try.
    #[error("dump interrupted {0} times by concurrent changes")]
    DumpInterrupted(u32),
    /// The kernel answered with a message the request does not expect.
    #[error("unexpected netlink reply to {0}")]
    Unexpected(&'static str),
    /// An interface name is empty, too long, or contains `/`, whitespace or NUL.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
}

impl Error {
    /// The errno behind this error, if it came from the kernel or the socket.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Exists => Some(libc::EEXIST),
            Error::NotFound => Some(libc::ENOENT),
            Error::Busy => Some(libc::EBUSY),
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// Maps a positive kernel errno for request `op` to an error.
    pub(crate) fn from_errno(op: &'static str, errno: i32) -> Error {
        match errno {
            libc::EEXIST => Error::Exists,
            libc::ENODEV | libc::ENOENT => Error::NotFound,
            libc::EBUSY => Error::Busy,
            _ => Error::Kernel { op, errno },
        }
    }

    /// Turns `errno` into [`Error::NotFound`], for requests whose "missing"
    /// answer is not `ENODEV`/`ENOENT` (`EADDRNOTAVAIL` for addresses,
    /// `ESRCH` for routes).
    pub(crate) fn not_found_on(self, errno: i32) -> Error {
        match self {
            Error::Kernel { errno: e, .. } if e == errno => Error::NotFound,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert!(matches!(
            Error::from_errno("x", libc::EEXIST),
            Error::Exists
        ));
        assert!(matches!(
            Error::from_errno("x", libc::ENODEV),
            Error::NotFound
        ));
        assert!(matches!(
            Error::from_errno("x", libc::ENOENT),
            Error::NotFound
        ));
        assert!(matches!(Error::from_errno("x", libc::EBUSY), Error::Busy));
        let e = Error::from_errno("add route", libc::ENETUNREACH);
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
        assert_eq!(
            e.to_string(),
            format!(
                "add route: {}",
                std::io::Error::from_raw_os_error(libc::ENETUNREACH)
            )
        );
        assert!(std::error::Error::source(&e).is_none());
        let e = Error::from_errno("del route", libc::ESRCH).not_found_on(libc::ESRCH);
        assert!(matches!(e, Error::NotFound));
        let e = Error::from_errno("del route", libc::EPERM).not_found_on(libc::ESRCH);
        assert_eq!(e.errno(), Some(libc::EPERM));
    }

    #[test]
    fn socket_and_decode_errors_keep_their_cause_as_source() {
        use std::error::Error as _;
        let e = Error::Io(std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.to_string(), "netlink socket I/O");
        let cause = e.source().expect("the OS error is the source");
        assert_eq!(
            cause.to_string(),
            std::io::Error::from_raw_os_error(libc::EACCES).to_string()
        );
        assert_eq!(e.errno(), Some(libc::EACCES));
        let e = Error::Decode(DecodeError::from("short buffer"));
        assert_eq!(e.to_string(), "cannot decode netlink reply");
        assert_eq!(e.source().unwrap().to_string(), "short buffer");
    }
}
