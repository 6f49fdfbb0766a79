//! `trestle`: the bridge CNI plugin, config-compatible with the reference `bridge` plugin (the README lists every
//! key). The binary is a thin `main` around [`Bridge`]; tests call the same commands in-process.
//!
//! - [`config`]: the config keys, their defaults and validation (before any change).
//! - `add`, `del`, `check`, `gc`: the commands. `result`: the L3 result and its validation (pure).
//! - `pair`: which veth pair is an attachment's; `links`: bridge and veth plumbing; `ns`: the two namespaces.
//! - `masq`: which attachments keep a network's masquerade; `reaper`: destroying parked pairs.
//! - [`error`]: the one mapping of the crates' errors to CNI codes.

mod add;
mod check;
pub mod config;
mod del;
pub mod error;
mod gc;
mod ipam;
pub mod links;
pub mod masq;
mod ns;
pub mod pair;
pub mod reaper;
mod result;

use cni_plugin::{Plugin, Request};
use cni_proto::{CniError, CniResult};
pub use reaper::Reaping;

/// The bridge plugin.
#[derive(Debug, Clone, Copy)]
pub struct Bridge {
    reaping: Reaping,
}

impl Bridge {
    /// As the binary runs it: DEL leaves destroying its pair to a detached reaper process (a fork, so only for a
    /// single-threaded process).
    pub const fn detached() -> Bridge {
        Bridge {
            reaping: Reaping::Detached,
        }
    }

    /// For callers in a multi-threaded process: DEL destroys its pair itself before returning.
    pub const fn inline() -> Bridge {
        Bridge {
            reaping: Reaping::Inline,
        }
    }
}

impl Plugin for Bridge {
    fn about(&self) -> String {
        format!("trestle bridge CNI plugin {}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add::add(req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del::del(req, self.reaping)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        check::check(req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        gc::gc(req)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = config::BridgeConfig::parse(&req.conf, "")?;
        ipam::status(req, &cfg)
    }
}
