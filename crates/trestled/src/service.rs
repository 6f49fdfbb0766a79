//! The gRPC face of the daemon: version check, validation, the call, the answer, metrics.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Request, Response, Status};
use trestle_ipam_api::codes::grpc_code;
use trestle_ipam_api::convert::{self, dns_to_proto, route_to_proto, FieldError};
use trestle_ipam_api::v1::{self, ipam_server::Ipam};
use trestle_ipam_api::version;

use crate::conn::ConnInfo;
use crate::daemon::{Daemon, OpError};
use crate::intake::{Slot, Slots};
use crate::metrics;

/// The service: a handle on the daemon, and the request slots.
#[derive(Clone)]
pub struct Service {
    daemon: Arc<Daemon>,
    slots: Arc<Slots>,
}

impl Service {
    /// Serves `daemon`, each request holding one of `slots` once its message has arrived.
    pub fn new(daemon: Arc<Daemon>, slots: Arc<Slots>) -> Service {
        Service { daemon, slots }
    }

    /// A slot for `req`, whose message tonic has read in full by now.
    async fn slot<T>(&self, req: &Request<T>) -> Result<Slot, Status> {
        let pid = req
            .extensions()
            .get::<ConnInfo>()
            .map(|i| i.peer.pid)
            .unwrap_or(0);
        self.slots.take(pid).await
    }
}

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

#[tonic::async_trait]
impl Ipam for Service {
    async fn hello(
        &self,
        req: Request<v1::HelloRequest>,
    ) -> Result<Response<v1::HelloReply>, Status> {
        timed("hello", async {
            let _slot = self.slot(&req).await?;
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            Ok(v1::HelloReply {
                server: server(),
                min_client_minor: version::MIN_CLIENT_MINOR,
                ready: self.daemon.not_ready().is_none(),
                boot_id: self.daemon.boot_id.clone(),
            })
        })
        .await
    }

    async fn allocate(
        &self,
        req: Request<v1::AllocateRequest>,
    ) -> Result<Response<v1::AllocateReply>, Status> {
        timed("allocate", async {
            let _slot = self.slot(&req).await?;
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let input = convert::allocate_input(&req).map_err(invalid)?;
            let a = self.daemon.allocate(&input).await.map_err(op_status)?;
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
                routes: a
                    .allocation
                    .routes
                    .iter()
                    .chain(&self.daemon.cluster_routes(&a.allocation.ips))
                    .map(route_to_proto)
                    .collect(),
                dns: Some(dns_to_proto(&a.allocation.dns)),
                existing: a.existing,
                mtu: self.daemon.pod_mtu().unwrap_or(0),
            })
        })
        .await
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseReply>, Status> {
        timed("release", async {
            let _slot = self.slot(&req).await?;
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let network = convert::network(&req.network).map_err(invalid)?;
            let att =
                convert::attachment(req.attachment.as_ref(), "attachment").map_err(invalid)?;
            let before = (req.queued_at_ns > 0).then_some(req.queued_at_ns);
            let freed = self
                .daemon
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
            let _slot = self.slot(&req).await?;
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let network = convert::network(&req.network).map_err(invalid)?;
            let att =
                convert::attachment(req.attachment.as_ref(), "attachment").map_err(invalid)?;
            let held = self.daemon.check(&network, &att).map_err(op_status)?;
            Ok(v1::CheckReply {
                server: server(),
                addresses: held.iter().map(ToString::to_string).collect(),
            })
        })
        .await
    }

    async fn gc(&self, req: Request<v1::GcRequest>) -> Result<Response<v1::GcReply>, Status> {
        timed("gc", async {
            let _slot = self.slot(&req).await?;
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let network = convert::network(&req.network).map_err(invalid)?;
            let valid = convert::valid_attachments(&req.valid).map_err(invalid)?;
            let freed = self.daemon.gc(&network, &valid).await.map_err(op_status)?;
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
                    .map(|(ip, r)| crate::list::allocation(&network, *ip, r))
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
            let _slot = self.slot(&req).await?;
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            let why = self.daemon.not_ready();
            Ok(v1::StatusReply {
                server: server(),
                ready: why.is_none(),
                reason: why
                    .map(|w| format!("trestled is not ready: {w}"))
                    .unwrap_or_default(),
                warnings: self.daemon.warnings(),
                limited: self.daemon.limited().unwrap_or_default(),
            })
        })
        .await
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<Response<v1::ListReply>, Status> {
        timed("list", async {
            let _slot = self.slot(&req).await?;
            let req = req.into_inner();
            refuse_version(req.client.as_ref())?;
            if !req.network.is_empty() {
                convert::network(&req.network).map_err(invalid)?;
            }
            let after = crate::list::parse_token(&req.page_token).map_err(invalid_token)?;
            Ok(crate::list::list(
                &self.daemon,
                &req.network,
                after,
                req.page_size,
            ))
        })
        .await
    }
}

fn invalid_token(e: crate::list::BadToken) -> Status {
    Status::invalid_argument(e.to_string())
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
    /// The interceptor: checks the caller's peer credentials (`SO_PEERCRED` and
    /// `SO_PEERGROUPS`, taken by the kernel at connect time, so a client cannot forge them).
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(info) = req.extensions().get::<ConnInfo>() else {
            return Err(Status::permission_denied(
                "no peer credentials on this connection",
            ));
        };
        if self.allows(&info.peer) {
            Ok(req)
        } else {
            Err(Status::permission_denied(format!(
                "uid {} gid {} may not use trestled",
                info.peer.uid, info.peer.gid
            )))
        }
    }

    /// True for root, the daemon's own user and members (primary or supplementary) of the
    /// group.
    pub fn allows(&self, peer: &crate::conn::Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.uid
            || self
                .gid
                .is_some_and(|g| g == peer.gid || peer.groups.contains(&g))
    }
}
