//! `trestle-ipam`: the IPAM plugin, config- and disk-compatible with `host-local` (see the README). The library
//! is the whole plugin, so that `trestle` can run it in-process instead of executing the binary (same code, same
//! config, same state on disk: only the process start is saved).

use cni_plugin::{Plugin, Request};
use cni_proto::{CniArgs, CniError, CniResult, Command, ErrorCode, IpConfig, Route, Version};
use trestle_ipam_core::{Attachment, ConfigInput, DiskStore, ErrorKind, IpamConfig, IpamError};

/// CNI_ARGS keys: `IP` is ours; `MAC` belongs to the main plugin that shares this environment.
const CNI_ARGS_KEYS: [&str; 2] = ["IP", "MAC"];

/// The IPAM plugin.
pub struct Ipam;

/// trestle-ipam's own error codes (distinct from the bridge plugin's 100-104, since the bridge passes IPAM
/// errors through unchanged).
pub mod code {
    /// The state directory could not be read or written.
    pub const STORE_IO: u32 = 110;
    /// A requested address is taken, or the attachment already holds one.
    pub const CONFLICT: u32 = 111;
    /// A requested address cannot be served by this configuration.
    pub const BAD_REQUEST: u32 = 112;
    /// CHECK found no reservation for the attachment.
    pub const NOT_FOUND: u32 = 113;
}

/// The one place IPAM errors become CNI codes.
fn cni_error(e: IpamError) -> CniError {
    let msg = chain(&e);
    match e.kind() {
        ErrorKind::InvalidConfig => CniError::new(ErrorCode::InvalidConfig, msg),
        ErrorKind::Unsupported => CniError::new(ErrorCode::UnsupportedField, msg),
        // An exhausted pool frees up after DEL or GC: the runtime may retry later.
        ErrorKind::Transient => CniError::new(ErrorCode::TryAgainLater, msg),
        ErrorKind::Io => CniError::plugin(code::STORE_IO, msg),
        ErrorKind::Conflict => CniError::plugin(code::CONFLICT, msg),
        ErrorKind::BadRequest => CniError::plugin(code::BAD_REQUEST, msg),
        ErrorKind::NotFound => CniError::plugin(code::NOT_FOUND, msg),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn load(req: &Request) -> Result<(IpamConfig, DiskStore, Attachment), CniError> {
    // GC and STATUS carry no CNI_ARGS meaning; ADD/DEL/CHECK parse them strictly.
    let cni_args_ips = match req.env.command {
        Command::Add | Command::Del | Command::Check => {
            CniArgs::parse(&req.env.args, &CNI_ARGS_KEYS)?.ips()?
        }
        _ => Vec::new(),
    };
    let stdin = serde_json::Value::Object(req.conf.raw.clone());
    let input = ConfigInput {
        stdin: &stdin,
        cni_args_ips,
        multiple_sets_per_family: req.conf.cni_version >= Version::V0_3_0,
    };
    let cfg = IpamConfig::parse(input).map_err(cni_error)?;
    let store = DiskStore::open(&cfg.data_dir, &cfg.network).map_err(cni_error)?;
    let att = Attachment {
        container_id: req.env.container_id.clone(),
        ifname: req.env.ifname.clone(),
    };
    Ok((cfg, store, att))
}

impl Plugin for Ipam {
    fn about(&self) -> String {
        format!("trestle-ipam CNI IPAM plugin {}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let (cfg, mut store, att) = load(req)?;
        let alloc = trestle_ipam_core::allocate(&cfg, &mut store, &att).map_err(cni_error)?;
        let mut result = CniResult {
            ips: alloc
                .ips
                .iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: None,
                })
                .collect(),
            routes: alloc
                .routes
                .iter()
                .map(|r| Route {
                    dst: r.dst,
                    gw: r.gw,
                    mtu: r.mtu,
                    advmss: r.advmss,
                    priority: r.priority,
                    table: r.table,
                    scope: r.scope.and_then(|s| u8::try_from(s).ok()),
                })
                .collect(),
            ..CniResult::default()
        };
        result.dns.nameservers = alloc.dns.nameservers;
        result.dns.domain = alloc.dns.domain;
        result.dns.search = alloc.dns.search;
        result.dns.options = alloc.dns.options;
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, mut store, att) = load(req)?;
        trestle_ipam_core::release(&cfg, &mut store, &att)
            .map(|_| ())
            .map_err(cni_error)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, mut store, att) = load(req)?;
        trestle_ipam_core::check(&cfg, &mut store, &att)
            .map(|_| ())
            .map_err(cni_error)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, mut store, _) = load(req)?;
        let valid: Vec<Attachment> = req
            .conf
            .valid_attachments()?
            .unwrap_or_default()
            .into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        let freed = trestle_ipam_core::gc(&cfg, &mut store, &valid).map_err(cni_error)?;
        for (att, ip) in freed {
            log::info!("gc: released {ip} of {}/{}", att.container_id, att.ifname);
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        // Serviceable when the config is valid and the store can be opened (and so locked and written).
        load(req).map(|_| ()).map_err(|e| CniError {
            code: if e.code == ErrorCode::InvalidConfig as u32 {
                e.code
            } else {
                ErrorCode::NotAvailable as u32
            },
            ..e
        })
    }
}
