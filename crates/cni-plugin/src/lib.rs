//! The process side of a CNI plugin: read the `CNI_*` environment and stdin, dispatch to the plugin, print the
//! result or the error object on stdout, log to stderr or a file, and delegate to other plugins (IPAM) found on
//! `CNI_PATH`. All protocol rules live in `cni-proto`; this crate only does the I/O.

pub mod arena;
pub mod delegate;
pub mod detach;
pub mod logging;
mod skel;

pub use skel::{run, run_from_c_main, Plugin, Request};
