//! `trestle-ipam`: the IPAM plugin, config- and disk-compatible with `host-local` (see the README). The library
//! is the whole plugin, so that `trestle` can run it in-process instead of executing the binary (same code, same
//! config, same state on disk: only the process start is saved).
//!
//! Two modes: embedded (the default) allocates from `dataDir` like host-local; daemon mode (`ipam.daemon`) asks
//! `trestled` over its socket ([`daemon`], [`remote`]). A `dataDir` network handed over to the daemon switches an
//! embedded configuration to daemon mode by itself.

pub mod daemon;
mod remote;

use cni_plugin::{Plugin, Request};
use cni_proto::{CniArgs, CniError, CniResult, Command, ErrorCode, IpConfig, Route, Version};
use trestle_ipam_core::{
    Allocation, Attachment, ConfigInput, DaemonSettings, DiskStore, IpamConfig, IpamError,
};

/// CNI_ARGS keys: `IP` is ours; `MAC` belongs to the main plugin that shares this environment.
const CNI_ARGS_KEYS: [&str; 2] = ["IP", "MAC"];

/// The IPAM plugin.
pub struct Ipam;

/// trestle-ipam's own error codes (110-115; the table lives with the errors in `trestle-ipam-core`).
pub use trestle_ipam_core::code;

/// The one place IPAM errors become CNI errors: the code from [`IpamError::cni_code`], the error's message in `msg`
/// and its causes (an I/O error under a state file, say) in `details`.
fn cni_error(e: IpamError) -> CniError {
    CniError::from_error(e.cni_code(), "", &e)
}

/// Where the addresses live for this request.
enum Backend {
    /// `dataDir`, embedded mode.
    Disk(DiskStore),
    /// `trestled`.
    Daemon(DaemonSettings),
}

fn parse(req: &Request) -> Result<(IpamConfig, Attachment), CniError> {
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
    let att = Attachment {
        container_id: req.env.container_id.clone(),
        ifname: req.env.ifname.clone(),
    };
    Ok((cfg, att))
}

fn load(req: &Request) -> Result<(IpamConfig, Backend, Attachment), CniError> {
    let (cfg, att) = parse(req)?;
    let backend = match &cfg.daemon {
        Some(d) => Backend::Daemon(d.clone()),
        None => match DiskStore::open(&cfg.data_dir, &cfg.network) {
            Ok(store) => Backend::Disk(store),
            Err(e) => Backend::Daemon(handed_over(e)?),
        },
    };
    Ok((cfg, backend, att))
}

/// The daemon a handed-over `dataDir` names, or the error as a CNI error.
fn handed_over(e: IpamError) -> Result<DaemonSettings, CniError> {
    match e {
        IpamError::ManagedByDaemon {
            socket,
            delete_queue,
            ..
        } => {
            let d = DaemonSettings::default();
            Ok(DaemonSettings {
                socket,
                delete_queue: delete_queue.unwrap_or(d.delete_queue),
                ..d
            })
        }
        e => Err(cni_error(e)),
    }
}

/// The result of an allocation.
fn result_of(alloc: Allocation) -> CniResult {
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
    result
}

impl Ipam {
    /// ADD, with the MTU trestled advises for pods (cluster routing), when it does. A plugin
    /// that runs this in-process uses it when its own config names no `mtu`.
    pub fn add_advised(&self, req: &Request) -> Result<(CniResult, Option<u32>), CniError> {
        let (cfg, backend, att) = load(req)?;
        let (alloc, mtu) = match backend {
            Backend::Disk(mut store) => match trestle_ipam_core::allocate(&cfg, &mut store, &att) {
                Ok(alloc) => (alloc, None),
                Err(e) => remote::add(req, &cfg, &att, &handed_over(e)?)?,
            },
            Backend::Daemon(d) => remote::add(req, &cfg, &att, &d)?,
        };
        Ok((result_of(alloc), mtu))
    }
}

impl Plugin for Ipam {
    fn about(&self) -> String {
        format!("trestle-ipam CNI IPAM plugin {}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.add_advised(req).map(|(result, _)| result)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, backend, att) = load(req)?;
        match backend {
            Backend::Disk(mut store) => match trestle_ipam_core::release(&cfg, &mut store, &att) {
                Ok(_) => Ok(()),
                Err(e) => remote::del(&cfg, &att, &handed_over(e)?),
            },
            Backend::Daemon(d) => remote::del(&cfg, &att, &d),
        }
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, backend, att) = load(req)?;
        match backend {
            Backend::Disk(mut store) => match trestle_ipam_core::check(&cfg, &mut store, &att) {
                Ok(_) => Ok(()),
                Err(e) => remote::check(&cfg, &att, &handed_over(e)?),
            },
            Backend::Daemon(d) => remote::check(&cfg, &att, &d),
        }
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, backend, _) = load(req)?;
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
        let mut store = match backend {
            Backend::Disk(store) => store,
            Backend::Daemon(d) => return remote::gc(&cfg, &valid, &d),
        };
        match trestle_ipam_core::gc(&cfg, &mut store, &valid) {
            Ok(freed) => {
                for (att, ip) in freed {
                    log::info!("gc: released {ip} of {}/{}", att.container_id, att.ifname);
                }
                Ok(())
            }
            Err(e) => remote::gc(&cfg, &valid, &handed_over(e)?),
        }
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        // Serviceable when the config is valid and the store can be opened (and so locked and written), or the
        // daemon says it is ready.
        let not_available = |e: CniError| CniError {
            code: if e.code == ErrorCode::InvalidConfig as u32 {
                e.code
            } else {
                ErrorCode::NotAvailable as u32
            },
            ..e
        };
        let (cfg, backend, _) = load(req).map_err(not_available)?;
        match backend {
            Backend::Disk(_) => Ok(()),
            Backend::Daemon(d) => remote::status(&cfg, &d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn ipam_errors_get_the_core_codes_and_their_causes_in_details() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let denied = std::io::Error::from_raw_os_error(13);
        let e = cni_error(IpamError::Io {
            op: "create",
            path: "/var/lib/cni/networks/n".into(),
            source: std::io::Error::from_raw_os_error(13),
        });
        assert_eq!(e.code, code::STORE_IO);
        assert_eq!(e.msg, "cannot create /var/lib/cni/networks/n");
        assert_eq!(e.details, Some(denied.to_string()));
        let cases = [
            (
                IpamError::InvalidConfig {
                    field: "ipam.ranges".into(),
                    reason: "no IP ranges specified".into(),
                },
                7,
            ),
            (
                IpamError::Unsupported {
                    field: "ipam.ranges".into(),
                    reason: "CNI version 0.2.0 does not support more than 1 address per family"
                        .into(),
                },
                2,
            ),
            (
                IpamError::Unavailable {
                    ip,
                    range: "10.1.2.1-10.1.2.254".into(),
                },
                code::CONFLICT,
            ),
            (IpamError::RequestedGateway { ip }, code::BAD_REQUEST),
            (IpamError::OutsideRanges(ip), code::BAD_REQUEST),
            (
                IpamError::NotFound {
                    container_id: "c".into(),
                },
                code::NOT_FOUND,
            ),
            (
                IpamError::Exhausted {
                    network: "n".into(),
                    set_index: 0,
                    range: "10.1.2.1-10.1.2.2".into(),
                },
                11,
            ),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            let e = cni_error(err);
            assert_eq!(
                (e.code, e.msg.as_str(), e.details),
                (want, text.as_str(), None)
            );
        }
        assert_eq!(
            (
                code::STORE_IO,
                code::CONFLICT,
                code::BAD_REQUEST,
                code::NOT_FOUND
            ),
            (110, 111, 112, 113)
        );
    }
}
