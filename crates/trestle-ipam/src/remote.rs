//! The plugin's commands in daemon mode.

use std::os::unix::fs::MetadataExt;

use cni_plugin::Request;
use cni_proto::{CniError, ErrorCode};
use tonic::Code;
use trestle_ipam_api::codes::{cni_code, NOT_AVAILABLE};
use trestle_ipam_api::convert::{self, allocate_request, attachment_to_proto, PodMeta};
use trestle_ipam_api::v1;
use trestle_ipam_api::version::peer;
use trestle_ipam_core::{
    boottime_ns, code, AllocatedIp, Allocation, Attachment, DaemonSettings, DeleteQueue,
    IpamConfig, QueuedRelease,
};

use crate::daemon::{CallError, DaemonClient};

fn client() -> Option<v1::Peer> {
    Some(peer("trestle-ipam"))
}

/// An error with a code of any range (a spec code from the table, or one of trestle-ipam's).
fn coded(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: None,
    }
}

/// The one place a failed call becomes a CNI error: the code from the gRPC code's table.
fn cni_error(e: CallError) -> CniError {
    coded(cni_code(e.code()), e.to_string())
}

/// ADD: Allocate; with the MTU the daemon advises for pods, if it does.
pub fn add(
    req: &Request,
    cfg: &IpamConfig,
    att: &Attachment,
    d: &DaemonSettings,
) -> Result<(Allocation, Option<u32>), CniError> {
    let netns_inode = std::fs::metadata(&req.env.netns)
        .map(|m| m.ino())
        .unwrap_or(0);
    let request = allocate_request(
        cfg,
        att,
        &pod_meta(&req.env.args),
        (&req.env.netns, netns_inode),
        peer("trestle-ipam"),
    );
    let reply = DaemonClient::new(d.clone())
        .allocate(&request)
        .map_err(cni_error)?;
    let mtu = (reply.mtu != 0).then_some(reply.mtu);
    let alloc = allocation(reply).map_err(|e| {
        coded(
            code::INCOMPATIBLE,
            format!("unreadable reply from trestled at {}", d.socket.display()),
        )
        .with_details(e)
    })?;
    Ok((alloc, mtu))
}

fn allocation(reply: v1::AllocateReply) -> Result<Allocation, String> {
    let ips = reply
        .addresses
        .iter()
        .map(|a| {
            let address = a
                .address
                .parse()
                .map_err(|_| format!("address {:?}", a.address))?;
            let gateway = match a.gateway.as_str() {
                "" => None,
                g => Some(g.parse().map_err(|_| format!("gateway {g:?}"))?),
            };
            Ok(AllocatedIp { address, gateway })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Allocation {
        ips,
        routes: convert::routes(&reply.routes).map_err(|e| e.to_string())?,
        dns: convert::dns(reply.dns.as_ref()).map_err(|e| e.to_string())?,
    })
}

/// DEL: Release, or if the daemon cannot take it, the delete queue. Fails only if neither
/// works (the queue directory cannot be written).
pub fn del(cfg: &IpamConfig, att: &Attachment, d: &DaemonSettings) -> Result<(), CniError> {
    // Taken before the call: the queued release must cover an allocation the daemon made
    // for an ADD that raced this DEL's failed attempt.
    let queued_at_ns = boottime_ns();
    let request = v1::ReleaseRequest {
        client: client(),
        network: cfg.network.clone(),
        attachment: Some(attachment_to_proto(att)),
        queued_at_ns: 0,
    };
    let err = match DaemonClient::new(d.clone()).release(&request) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let entry = QueuedRelease {
        network: cfg.network.clone(),
        container_id: att.stored_id().to_string(),
        ifname: att.ifname.clone(),
        queued_at_ns,
    };
    let queue = DeleteQueue::new(&d.delete_queue);
    match queue.push(&entry) {
        Ok(path) => {
            log::warn!("{err}; release of {att} queued in {}", path.display());
            Ok(())
        }
        Err(qe) => Err(coded(
            code::STORE_IO,
            format!("{err}, and cannot queue the release"),
        )
        .with_details(cni_proto::error_chain(&qe))),
    }
}

/// CHECK: Check.
pub fn check(cfg: &IpamConfig, att: &Attachment, d: &DaemonSettings) -> Result<(), CniError> {
    let request = v1::CheckRequest {
        client: client(),
        network: cfg.network.clone(),
        attachment: Some(attachment_to_proto(att)),
    };
    DaemonClient::new(d.clone())
        .check(&request)
        .map(|_| ())
        .map_err(cni_error)
}

/// GC: Gc with the valid attachments.
pub fn gc(cfg: &IpamConfig, valid: &[Attachment], d: &DaemonSettings) -> Result<(), CniError> {
    let request = v1::GcRequest {
        client: client(),
        network: cfg.network.clone(),
        valid: valid.iter().map(attachment_to_proto).collect(),
    };
    let reply = DaemonClient::new(d.clone())
        .gc(&request)
        .map_err(cni_error)?;
    for a in reply.released {
        let att = a.attachment.unwrap_or_default();
        log::info!(
            "gc: trestled released {} of {}/{}",
            a.address,
            att.container_id,
            att.ifname
        );
    }
    Ok(())
}

/// STATUS: code 50 unless the daemon answers that it is ready, 51 when it says existing pods may
/// have limited connectivity.
pub fn status(cfg: &IpamConfig, d: &DaemonSettings) -> Result<(), CniError> {
    let request = v1::StatusRequest {
        client: client(),
        network: cfg.network.clone(),
    };
    let reply = DaemonClient::new(d.clone()).status(&request);
    match reply {
        Ok(r) if r.ready && r.limited.is_empty() => Ok(()),
        Ok(r) if r.ready => Err(CniError::new(
            ErrorCode::LimitedConnectivity,
            format!("trestled at {}: {}", d.socket.display(), r.limited),
        )),
        Ok(r) => Err(coded(
            NOT_AVAILABLE,
            format!("trestled at {}: {}", d.socket.display(), r.reason),
        )),
        Err(e @ CallError::Down { .. }) => {
            Err(CniError::new(ErrorCode::NotAvailable, e.to_string()))
        }
        Err(e) if matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded) => {
            Err(CniError::new(ErrorCode::NotAvailable, e.to_string()))
        }
        Err(e) => Err(cni_error(e)),
    }
}

/// Pod metadata from `CNI_ARGS`, read leniently: it only labels the allocation.
fn pod_meta(args: &str) -> PodMeta {
    let mut pod = PodMeta::default();
    for (k, v) in args.split(';').filter_map(|p| p.split_once('=')) {
        match k {
            "K8S_POD_NAMESPACE" => pod.namespace = v.to_string(),
            "K8S_POD_NAME" => pod.name = v.to_string(),
            "K8S_POD_UID" => pod.uid = v.to_string(),
            _ => {}
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metadata_comes_from_cni_args() {
        let pod = pod_meta("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1;IP=10.0.0.9");
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
            ("default", "web-0", "u1")
        );
        assert_eq!(pod_meta("garbage;;=x"), PodMeta::default());
    }

    #[test]
    fn a_down_daemon_is_code_11_and_names_the_socket() {
        let e = cni_error(CallError::Down {
            absent: true,
            socket: "/run/x.sock".into(),
            reason: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(e.code, 11);
        assert_eq!(
            e.msg,
            format!(
                "trestled is not running at /run/x.sock: {}",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )
        );
    }
}
