//! The CNI protocol (spec 0.1.0 to 1.1.0) as pure data: versions, commands, the
//! `CNI_*` environment, `CNI_ARGS`, the stdin config, results in every version's
//! shape, and error objects. No I/O: callers pass in what they read.

pub mod args;
pub mod command;
pub mod config;
pub mod env;
pub mod error;
pub mod result;
mod validate;
pub mod version;
pub mod version_info;

pub use args::{CniArgs, K8S_KEYS};
pub use command::Command;
pub use config::{parse_request, Attachment, NetConf, RuntimeConfig, RuntimeDns};
pub use env::Env;
pub use error::{error_chain, CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use validate::{validate_container_id, validate_ifname, validate_network_name, MAX_IFNAME_LEN};
pub use version::Version;
pub use version_info::{requested_version, version_reply};
