//! `ipam` against trestled: the List, Release and Gc RPCs.

use super::*;

pub(super) fn client() -> Option<v1::Peer> {
    Some(peer("trestlectl"))
}

pub(super) fn daemon(socket: &Path) -> DaemonClient {
    DaemonClient::new(DaemonSettings {
        socket: socket.to_owned(),
        ..DaemonSettings::default()
    })
}

pub(super) fn call_error(e: CallError) -> Error {
    match e {
        // The plugin's client says each cause once already.
        CallError::Down { socket, reason, .. } => Error::Unreachable {
            socket,
            reason: reason.to_string(),
        },
        CallError::Status {
            socket,
            code,
            message,
        } => {
            let message = match message.as_str() {
                "" => code.to_string(),
                _ => message,
            };
            Error::Daemon { socket, message }
        }
    }
}

pub(super) fn show_daemon(socket: &Path, network: Option<&str>) -> Result<Listing, Error> {
    let mut d = daemon(socket);
    let mut pools = Vec::new();
    let mut allocations = Vec::new();
    let mut server = None;
    let mut token = String::new();
    // Page by page: the daemon holds its lock for one page at a time.
    loop {
        let request = v1::ListRequest {
            client: client(),
            network: network.unwrap_or_default().to_owned(),
            page_size: LIST_PAGE,
            page_token: std::mem::take(&mut token),
        };
        let reply = d.list(&request).map_err(call_error)?;
        server = server.or(reply.server.map(|p| p.software));
        pools.extend(reply.pools.into_iter().map(pool_of));
        allocations.extend(reply.allocations.into_iter().map(allocation_of));
        if reply.next_page_token.is_empty() {
            break;
        }
        token = reply.next_page_token;
    }
    if let Some(n) = network.filter(|_| pools.is_empty()) {
        return Err(Error::UnknownNetwork {
            socket: socket.to_owned(),
            network: n.to_owned(),
        });
    }
    let status = v1::StatusRequest {
        client: client(),
        network: String::new(),
    };
    let warnings = d.status(&status).map_err(call_error)?.warnings;
    Ok(Listing {
        source: SourceInfo {
            kind: SourceKind::Daemon,
            path: socket.display().to_string(),
            server,
            warnings,
        },
        pools,
        allocations,
    })
}

/// Allocations per List page.
const LIST_PAGE: u32 = 1000;

pub(super) fn pool_of(p: v1::Pool) -> Pool {
    Pool {
        network: p.network,
        range_sets: p.range_sets,
        used: p.used,
        free: Some(p.free),
        cooling: Some(p.cooling),
        handed_over_to: None,
    }
}

pub(super) fn allocation_of(a: v1::Allocation) -> Allocation {
    let att = a.attachment.unwrap_or_default();
    // proto3 has no absent message fields on the wire that matter here: all-empty means "not Kubernetes".
    let pod = a
        .pod
        .filter(|p| !(p.namespace.is_empty() && p.name.is_empty() && p.uid.is_empty()))
        .map(|p| Pod {
            namespace: p.namespace,
            name: p.name,
            uid: p.uid,
        });
    Allocation {
        network: a.network,
        address: a.address,
        container_id: att.container_id,
        ifname: att.ifname,
        pod,
        netns: Some(a.netns).filter(|n| !n.is_empty()),
        since_unix_ms: Some(a.since_unix_ms).filter(|t| *t > 0),
    }
}

pub(super) fn release_daemon(
    socket: &Path,
    network: &str,
    att: &Attachment,
) -> Result<Vec<Released>, Error> {
    let request = v1::ReleaseRequest {
        client: client(),
        network: network.to_owned(),
        attachment: Some(v1::Attachment {
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
        }),
        queued_at_ns: 0,
    };
    let reply = daemon(socket).release(&request).map_err(call_error)?;
    Ok(reply
        .released
        .into_iter()
        .map(|address| Released {
            network: network.to_owned(),
            address,
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
        })
        .collect())
}

pub(super) fn gc_daemon(
    socket: &Path,
    network: &str,
    valid: &[Attachment],
) -> Result<Vec<Released>, Error> {
    let request = v1::GcRequest {
        client: client(),
        network: network.to_owned(),
        valid: valid
            .iter()
            .map(|a| v1::Attachment {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect(),
    };
    let reply = daemon(socket).gc(&request).map_err(call_error)?;
    Ok(reply
        .released
        .into_iter()
        .map(|a| {
            let att = a.attachment.unwrap_or_default();
            Released {
                network: network.to_owned(),
                address: a.address,
                container_id: att.container_id,
                ifname: att.ifname,
            }
        })
        .collect())
}

// ---- dataDir ----
