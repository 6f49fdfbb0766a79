//! `trestle`: the bridge CNI plugin. Config-compatible with the reference `bridge` plugin; see the README for
//! every key.

mod add;
mod check;
mod config;
mod del;
mod error;
mod ipam;
mod links;

use cni_plugin::{Plugin, Request};
use cni_proto::{CniError, CniResult};

/// Where concurrent plugin processes serialise their nftables updates.
pub const FIREWALL_LOCK: &str = "/run/trestle/firewall.lock";

/// A plugin process lives milliseconds: see `cni_plugin::arena` for why it allocates from a bump region.
#[global_allocator]
static ALLOC: cni_plugin::arena::Arena = cni_plugin::arena::Arena::new();

struct Bridge;

impl Plugin for Bridge {
    fn about(&self) -> String {
        format!("trestle bridge CNI plugin {}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add::add(req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del::del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        check::check(req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        del::gc(req)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = config::BridgeConfig::parse(&req.conf, "")?;
        ipam::status(req, &cfg)
    }
}

fn main() {
    cni_plugin::run(&Bridge)
}
