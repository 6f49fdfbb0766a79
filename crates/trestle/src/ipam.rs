//! Delegation to the IPAM plugin named by `ipam.type` (cni-spec.md §7).

use crate::config::BridgeConfig;
use cni_plugin::{delegate, Request};
use cni_proto::{CniError, CniResult, Command};

fn run(req: &Request, cfg: &BridgeConfig, cmd: Command) -> Result<Option<CniResult>, CniError> {
    run_type(req, cfg.ipam_type.as_deref(), cmd)
}

fn run_type(req: &Request, ty: Option<&str>, cmd: Command) -> Result<Option<CniResult>, CniError> {
    let Some(ty) = ty else {
        return Ok(None);
    };
    let plugin = delegate::find_plugin(ty, &req.env.path)?;
    delegate::exec(&plugin, cmd, &req.stdin, req.conf.cni_version)
}

/// IPAM ADD. `None` when the config has no IPAM (L2 only).
pub fn add(req: &Request, cfg: &BridgeConfig) -> Result<Option<CniResult>, CniError> {
    run(req, cfg, Command::Add)
}

/// IPAM DEL.
pub fn del(req: &Request, cfg: &BridgeConfig) -> Result<(), CniError> {
    run(req, cfg, Command::Del).map(|_| ())
}

/// IPAM DEL with the plugin named by `ty` (when the rest of the config could not be parsed).
pub fn del_type(req: &Request, ty: Option<&str>) -> Result<(), CniError> {
    run_type(req, ty, Command::Del).map(|_| ())
}

/// IPAM CHECK.
pub fn check(req: &Request, cfg: &BridgeConfig) -> Result<(), CniError> {
    run(req, cfg, Command::Check).map(|_| ())
}

/// IPAM GC (stdin carries the valid attachments).
pub fn gc(req: &Request, cfg: &BridgeConfig) -> Result<(), CniError> {
    run(req, cfg, Command::Gc).map(|_| ())
}

/// IPAM STATUS.
pub fn status(req: &Request, cfg: &BridgeConfig) -> Result<(), CniError> {
    run(req, cfg, Command::Status).map(|_| ())
}
