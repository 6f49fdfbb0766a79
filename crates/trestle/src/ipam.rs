//! Delegation to the IPAM plugin named by `ipam.type` (cni-spec.md §7). When that is `trestle-ipam`, its code
//! runs in-process: the same library the binary runs, with the same request and the same state directory, so the
//! result is identical and only a process start is saved. `TRESTLE_IPAM_EXEC=1` forces the binary instead.

use crate::config::BridgeConfig;
use cni_plugin::{delegate, Plugin, Request};
use cni_proto::{CniError, CniResult, Command};

/// The IPAM plugin trestle can run in-process.
const EMBEDDED: &str = "trestle-ipam";

fn embedded(ty: &str) -> bool {
    ty == EMBEDDED && std::env::var_os("TRESTLE_IPAM_EXEC").is_none_or(|v| v != "1")
}

fn run(req: &Request, cfg: &BridgeConfig, cmd: Command) -> Result<Option<CniResult>, CniError> {
    run_type(req, cfg.ipam_type.as_deref(), cmd)
}

fn run_type(req: &Request, ty: Option<&str>, cmd: Command) -> Result<Option<CniResult>, CniError> {
    let Some(ty) = ty else {
        return Ok(None);
    };
    if embedded(ty) {
        return run_embedded(req, cmd);
    }
    let plugin = delegate::find_plugin(ty, &req.env.path)?;
    delegate::exec(&plugin, cmd, &req.stdin, req.conf.cni_version)
}

fn run_embedded(req: &Request, cmd: Command) -> Result<Option<CniResult>, CniError> {
    let ipam = trestle_ipam::Ipam;
    match cmd {
        Command::Add => ipam.add(req).map(Some),
        Command::Del => ipam.del(req).map(|_| None),
        Command::Check => ipam.check(req).map(|_| None),
        Command::Gc => ipam.gc(req).map(|_| None),
        Command::Status => ipam.status(req).map(|_| None),
        Command::Version => Ok(None),
    }
}

/// IPAM ADD. `None` when the config has no IPAM (L2 only); with the MTU trestled advises for
/// pods when trestle-ipam runs in-process and asks a daemon that routes between nodes.
pub fn add(
    req: &Request,
    cfg: &BridgeConfig,
) -> Result<Option<(CniResult, Option<u32>)>, CniError> {
    match cfg.ipam_type.as_deref() {
        Some(ty) if embedded(ty) => trestle_ipam::Ipam.add_advised(req).map(Some),
        _ => Ok(run(req, cfg, Command::Add)?.map(|r| (r, None))),
    }
}

/// IPAM DEL with the plugin named by `ty`.
pub fn del(req: &Request, ty: Option<&str>) -> Result<(), CniError> {
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
