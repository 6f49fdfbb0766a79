//! trestled's gRPC API, `trestle.ipam.v1` (the `.proto` is in `proto/`): the generated
//! messages, client and server ([`v1`]), the version rule ([`version`]), the validation that
//! turns a request into `trestle-ipam-core` types ([`convert`]), the one table from gRPC
//! status codes to CNI error codes ([`codes`]), and the framing of the same messages that the
//! plugins use instead of HTTP/2 ([`frame`]).
//!
//! No I/O and no privileges: the daemon and the plugin add the transport.

pub mod codes;
pub mod convert;
pub mod frame;
pub mod version;

/// The generated `trestle.ipam.v1` messages, `ipam_client` and `ipam_server`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("trestle.ipam.v1");
}

pub use convert::{AllocateInput, FieldError};
pub use version::{API_MAJOR, API_MINOR, MIN_CLIENT_MINOR};

/// The largest request a daemon decodes: a GC's list of valid attachments is the big one
/// (100,000 attachments of ~80 bytes fit).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
