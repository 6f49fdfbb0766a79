//! The gRPC face of the daemon: version check, validation, the call, the answer, metrics.

use std::sync::Arc;
use std::time::Instant;

use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Request, Response, Status};
use trestle_ipam_api::codes::grpc_code;
use trestle_ipam_api::convert::{
    self, attachment_to_proto, dns_to_proto, route_to_proto, FieldError,
};
use trestle_ipam_api::v1::{self, ipam_server::Ipam};
use trestle_ipam_api::version;

use crate::daemon::{Daemon, OpError};
use crate::metrics;
use crate::state::Record;

/// The service: a handle on the daemon.
#[derive(Clone)]
pub struct Service(pub Arc<Daemon>);

fn server() -> Option<v1::Peer> {
    Some(version::peer("trestled"))
}

fn refuse_version(client: Option<&v1::Peer>) -> Result<(), Status> {
    match version::refusal(client) {
        None => Ok(()),
        Some(msg) => Err(Status::failed_precondition(msg)),
    }
}

fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn op_status(e: OpError) -> Status {
    match &e {
        OpError::Ipam(ipam) => Status::new(grpc_code(ipam.kind()), e.to_string()),
        OpError::Store(_) => Status::internal(e.to_string()),
        OpError::NotReady(_) => Status::unavailable(e.to_string()),
        OpError::Cluster(trestle_ipam_etcd::ClusterError::Pool(_)) => {
            Status::invalid_argument(e.to_string())
        }
        // The daemon's considered "try again later" (CNI 11), not a daemon that is down: ABORTED, which the
        // plugin does not resend until its deadline, so the runtime hears it at once.
        OpError::Cluster(_) => Status::aborted(e.to_string()),
    }
}

/// Times a call and counts its outcome.
async fn timed<T>(
    method: &'static str,
    f: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let r = f.await;
    let code = r.as_ref().err().map(Status::code);
    metrics::request(method, start.elapsed().as_secs_f64(), code);
    if let Err(s) = &r {
        if s.code() != Code::NotFound {
            log::warn!("{method}: {}", s.message());
        }
    }
    r.map(Response::new)
}

fn allocation(network: &str, ip: std::net::IpAddr, r: &Record) -> v1::Allocation {
    v1::Allocation {
        network: network.to_string(),
        address: ip.to_string(),
        attachment: Some(attachment_to_proto(&r.attachment())),
        pod: Some(v1::Pod {
            namespace: r.pod_namespace.clone(),
            name: r.pod_name.clone(),
            uid: r.pod_uid.clone(),
        }),
        netns: r.netns.clone(),
        netns_inode: r.netns_inode,
        since_unix_ms: r.since_unix_ms,
        set_index: r.set_index,
    }
}

#[tonic::async_trait]
impl Ipam for Service {
    async fn hello(
        &self,
        req: Request<v1::HelloRequest>,
    ) -> Result<Response<v1::HelloReply>, Status> {
        timed("hello", async {
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            Ok(v1::HelloReply {
                server: server(),
                min_client_minor: version::MIN_CLIENT_MINOR,
                ready: self.0.not_ready().is_none(),
                boot_id: self.0.boot_id.clone(),
            })
        })
        .await
    }

    async fn allocate(
        &self,
        req: Request<v1::AllocateRequest>,
    ) -> Result<Response<v1::AllocateReply>, Status> {
        timed("allocate", async {
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let input = convert::allocate_input(&req).map_err(invalid)?;
            let a = self.0.allocate(&input).await.map_err(op_status)?;
            let ips: Vec<String> = a
                .allocation
                .ips
                .iter()
                .map(|i| i.address.to_string())
                .collect();
            log::info!(
                "allocate network={} container={} ifname={} pod={}/{} addresses={} existing={}",
                input.config.network,
                input.attachment.container_id,
                input.attachment.ifname,
                input.pod.namespace,
                input.pod.name,
                ips.join(","),
                a.existing
            );
            Ok(v1::AllocateReply {
                server: server(),
                addresses: a
                    .allocation
                    .ips
                    .iter()
                    .enumerate()
                    .map(|(i, ip)| v1::Address {
                        address: ip.address.to_string(),
                        gateway: ip.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        set_index: i as u32,
                    })
                    .collect(),
                routes: a.allocation.routes.iter().map(route_to_proto).collect(),
                dns: Some(dns_to_proto(&a.allocation.dns)),
                existing: a.existing,
            })
        })
        .await
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseReply>, Status> {
        timed("release", async {
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let network = convert::network(&req.network).map_err(invalid)?;
            let att =
                convert::attachment(req.attachment.as_ref(), "attachment").map_err(invalid)?;
            let before = (req.queued_at_ns > 0).then_some(req.queued_at_ns);
            let freed = self
                .0
                .release(&network, &att, before)
                .await
                .map_err(op_status)?;
            let shown: Vec<String> = freed.iter().map(ToString::to_string).collect();
            log::info!(
                "release network={network} container={} ifname={} addresses={}",
                att.container_id,
                att.ifname,
                shown.join(",")
            );
            Ok(v1::ReleaseReply {
                server: server(),
                released: shown,
            })
        })
        .await
    }

    async fn check(
        &self,
        req: Request<v1::CheckRequest>,
    ) -> Result<Response<v1::CheckReply>, Status> {
        timed("check", async {
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let network = convert::network(&req.network).map_err(invalid)?;
            let att =
                convert::attachment(req.attachment.as_ref(), "attachment").map_err(invalid)?;
            let held = self.0.check(&network, &att).map_err(op_status)?;
            Ok(v1::CheckReply {
                server: server(),
                addresses: held.iter().map(ToString::to_string).collect(),
            })
        })
        .await
    }

    async fn gc(&self, req: Request<v1::GcRequest>) -> Result<Response<v1::GcReply>, Status> {
        timed("gc", async {
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let network = convert::network(&req.network).map_err(invalid)?;
            let valid = convert::valid_attachments(&req.valid).map_err(invalid)?;
            let freed = self.0.gc(&network, &valid).await.map_err(op_status)?;
            for (ip, r) in &freed {
                log::info!(
                    "gc network={network} container={} ifname={} address={ip}",
                    r.container_id,
                    r.ifname
                );
            }
            Ok(v1::GcReply {
                server: server(),
                released: freed
                    .iter()
                    .map(|(ip, r)| allocation(&network, *ip, r))
                    .collect(),
            })
        })
        .await
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        timed("status", async {
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let why = self.0.not_ready();
            Ok(v1::StatusReply {
                server: server(),
                ready: why.is_none(),
                reason: why
                    .map(|w| format!("trestled is not ready: {w}"))
                    .unwrap_or_default(),
            })
        })
        .await
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<Response<v1::ListReply>, Status> {
        timed("list", async {
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            if !req.network.is_empty() {
                convert::network(&req.network).map_err(invalid)?;
            }
            let st = self.0.lock();
            let mut reply = v1::ListReply {
                server: server(),
                ..Default::default()
            };
            for (name, pool) in st
                .pools
                .iter()
                .filter(|(n, _)| req.network.is_empty() || **n == req.network)
            {
                reply.pools.push(v1::Pool {
                    network: name.clone(),
                    range_sets: pool.range_sets.clone(),
                    used: pool.by_ip.len() as u64,
                    free: u64::try_from(pool.free()).unwrap_or(u64::MAX),
                    cooling: pool.cooling.len() as u64,
                });
                reply
                    .allocations
                    .extend(pool.by_ip.iter().map(|(ip, r)| allocation(name, *ip, r)));
            }
            Ok(reply)
        })
        .await
    }
}

/// True if process `pid` has `gid` among its supplementary groups (SO_PEERCRED carries only
/// the primary one).
fn in_group(pid: Option<i32>, gid: u32) -> bool {
    let Some(pid) = pid else { return false };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

/// Who may call: root, the daemon's own user, and members (primary or supplementary) of
/// `group`.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The daemon's effective user.
    pub uid: u32,
    /// `--socket-group`, if set.
    pub gid: Option<u32>,
}

impl Access {
    /// The interceptor: checks the caller's peer credentials (SO_PEERCRED, taken by the kernel
    /// at connect time, so a client cannot forge them).
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred);
        let Some(cred) = cred else {
            return Err(Status::permission_denied(
                "no peer credentials on this connection",
            ));
        };
        let allowed = cred.uid() == 0
            || cred.uid() == self.uid
            || self
                .gid
                .is_some_and(|g| g == cred.gid() || in_group(cred.pid(), g));
        if allowed {
            Ok(req)
        } else {
            Err(Status::permission_denied(format!(
                "uid {} gid {} may not use trestled",
                cred.uid(),
                cred.gid()
            )))
        }
    }
}
