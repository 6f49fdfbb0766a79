//! The one table from the daemon's gRPC status codes to CNI error codes.
//!
//! The daemon answers with the gRPC code that says what happened; the plugin maps it here,
//! once, to the code a runtime sees. trestle-ipam's own codes are 110-115 (the table lives with
//! the IPAM errors in `trestle-ipam-core`: [`trestle_ipam_core::code`]).

use tonic::Code;
use trestle_ipam_core::{code, ErrorKind};

/// The gRPC code the daemon answers an IPAM error with; [`cni_code`] maps it back to the
/// code the embedded plugin gives for the same error.
pub fn grpc_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidConfig | ErrorKind::Unsupported => Code::InvalidArgument,
        // An exhausted pool; the message names it.
        ErrorKind::Transient => Code::ResourceExhausted,
        ErrorKind::Conflict => Code::AlreadyExists,
        ErrorKind::BadRequest => Code::OutOfRange,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Io => Code::Internal,
    }
}

/// CNI 7: the network configuration is invalid.
pub const INVALID_CONFIG: u32 = 7;
/// CNI 11: try again later (daemon down, not ready, pool exhausted).
pub const TRY_AGAIN_LATER: u32 = 11;
/// CNI 50: STATUS, the plugin is not available.
pub const NOT_AVAILABLE: u32 = 50;

/// The CNI code for a gRPC status the daemon sent (or the transport produced).
pub fn cni_code(grpc: Code) -> u32 {
    match grpc {
        Code::InvalidArgument => INVALID_CONFIG,
        Code::AlreadyExists => code::CONFLICT,
        Code::OutOfRange => code::BAD_REQUEST,
        Code::NotFound => code::NOT_FOUND,
        Code::FailedPrecondition | Code::Unimplemented => code::INCOMPATIBLE,
        Code::PermissionDenied | Code::Unauthenticated => code::DENIED,
        Code::Internal | Code::DataLoss => code::STORE_IO,
        // Exhausted pools, a daemon that is down, starting, draining or overloaded, a deadline.
        Code::ResourceExhausted
        | Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Ok => TRY_AGAIN_LATER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_a_cni_code() {
        let table = [
            (Code::InvalidArgument, 7),
            (Code::AlreadyExists, 111),
            (Code::OutOfRange, 112),
            (Code::NotFound, 113),
            (Code::FailedPrecondition, 114),
            (Code::Unimplemented, 114),
            (Code::PermissionDenied, 115),
            (Code::Unauthenticated, 115),
            (Code::Internal, 110),
            (Code::DataLoss, 110),
            (Code::ResourceExhausted, 11),
            (Code::Unavailable, 11),
            (Code::DeadlineExceeded, 11),
            (Code::Aborted, 11),
            (Code::Cancelled, 11),
            (Code::Unknown, 11),
        ];
        for (grpc, cni) in table {
            assert_eq!(cni_code(grpc), cni, "{grpc:?}");
        }
    }

    #[test]
    fn an_ipam_error_keeps_its_embedded_code_through_the_daemon() {
        for kind in [
            ErrorKind::InvalidConfig,
            ErrorKind::Transient,
            ErrorKind::Conflict,
            ErrorKind::BadRequest,
            ErrorKind::NotFound,
            ErrorKind::Io,
        ] {
            assert_eq!(cni_code(grpc_code(kind)), kind.cni_code(), "{kind:?}");
        }
        // Unsupported (2) is found while parsing the config, in the plugin, before any call.
        assert_eq!(cni_code(grpc_code(ErrorKind::Unsupported)), 7);
    }
}
