//! The plugins' transport: `trestle.ipam.v1` in the frames of [`trestle_ipam_api::frame`], on
//! the same socket as gRPC.
//!
//! Every admitted connection is sorted by its first byte: HTTP/2 goes to tonic, a frame
//! client is served here by the same [`Service`] (so validation, version rule, slots, metrics
//! and logs are the gRPC ones). What gRPC's layers did is done here too: the caller's
//! credentials are checked ([`Access`]), a request's body must arrive within the read timeout,
//! a request counts as in flight on its connection (an idle one may be given up, see
//! [`crate::conn::admission`]), and a drain lets in-flight requests answer while idle
//! connections close.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Request, Response, Status};
use trestle_ipam_api::frame::{self, FrameError, Method, HEADER_LEN, MAGIC};
use trestle_ipam_api::v1::ipam_server::Ipam;

use crate::conn::{Conn, ConnInfo};
use crate::intake::InFlight;
use crate::service::{Access, Service};

/// The frame server: what serving needs, and the drain signal its connections watch.
pub struct Frames {
    service: Service,
    access: Access,
    read_timeout: Duration,
    stop: watch::Sender<bool>,
}

impl Frames {
    /// Serves frame clients with `service`, to callers `access` allows, each request's body
    /// given `read_timeout` to arrive (as is a new connection's first byte).
    pub fn new(service: Service, access: Access, read_timeout: Duration) -> Arc<Frames> {
        Arc::new(Frames {
            service,
            access,
            read_timeout,
            stop: watch::channel(false).0,
        })
    }

    /// Sorts each connection of `accepted`: HTTP/2 to `grpc`, frame clients served here.
    /// Returns when `accepted` ends.
    pub async fn sort(
        self: Arc<Self>,
        mut accepted: mpsc::Receiver<io::Result<Conn>>,
        grpc: mpsc::Sender<io::Result<Conn>>,
    ) {
        while let Some(conn) = accepted.recv().await {
            let Ok(conn) = conn else { continue };
            let me = self.clone();
            let grpc = grpc.clone();
            // Subscribed now, so a drain waits for this connection from its first byte on.
            let mut stop = self.stop.subscribe();
            tokio::spawn(async move {
                let first = tokio::select! {
                    first = tokio::time::timeout(me.read_timeout, conn.peek_first()) => first,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match first {
                    Ok(Ok(Some(b))) if b == MAGIC[0] => me.serve(conn, stop).await,
                    // tonic reads the preface itself; a closed channel means it stopped.
                    Ok(Ok(Some(_))) => drop(grpc.send(Ok(conn)).await),
                    // Silent past the read timeout, closed, or failed: nothing to serve.
                    _ => {}
                }
            });
        }
    }

    /// Stops serving: idle connections close, in-flight requests answer first. Returns once
    /// every frame connection is closed.
    pub async fn drain(&self) {
        self.stop.send_replace(true);
        self.stop.closed().await;
    }

    /// Serves one frame connection until its peer closes it, it fails, or a drain.
    async fn serve(&self, mut conn: Conn, mut stop: watch::Receiver<bool>) {
        let info = conn.info().clone();
        let mut opening = [0u8; MAGIC.len()];
        match tokio::time::timeout(self.read_timeout, conn.read_exact(&mut opening)).await {
            Ok(Ok(_)) if opening == MAGIC => {}
            _ => return,
        }
        let mut answered = false;
        loop {
            let mut head = [0u8; HEADER_LEN];
            // Between requests the connection may idle (admission gives it up under pressure).
            tokio::select! {
                r = conn.read_exact(&mut head) => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            let _busy = InFlight::new(info.state.clone());
            let (answer, close) = match frame::header(head) {
                Ok(h) => match self.body(&mut conn, h.len).await {
                    Some(body) => (self.answer(&info, h.tag, &body).await, false),
                    None => return,
                },
                // The body is not read: the connection closes after saying why.
                Err(e) => (frame::error(Code::ResourceExhausted, &e.to_string()), true),
            };
            let mut out = Vec::with_capacity(MAGIC.len() + answer.len());
            if !answered {
                out.extend_from_slice(&MAGIC);
                answered = true;
            }
            out.extend_from_slice(&answer);
            if conn.write_all(&out).await.is_err() || close {
                return;
            }
        }
    }

    /// A request's body, if it arrives whole within the read timeout. The buffer grows as bytes
    /// arrive: a header that announces 8 MiB and sends nothing holds no 8 MiB.
    async fn body(&self, conn: &mut Conn, len: usize) -> Option<Vec<u8>> {
        let mut body = Vec::with_capacity(len.min(64 << 10));
        let mut limited = conn.take(len as u64);
        match tokio::time::timeout(self.read_timeout, limited.read_to_end(&mut body)).await {
            Ok(Ok(n)) if n == len => Some(body),
            _ => None,
        }
    }

    /// The answer frame to a request.
    async fn answer(&self, info: &ConnInfo, tag: u8, body: &[u8]) -> Vec<u8> {
        let Some(method) = Method::from_tag(tag) else {
            return frame::error(Code::Unimplemented, &format!("no method {tag}"));
        };
        if !self.access.allows(&info.peer) {
            let p = &info.peer;
            let msg = format!("uid {} gid {} may not use trestled", p.uid, p.gid);
            return frame::error(Code::PermissionDenied, &msg);
        }
        let s = &self.service;
        match method {
            Method::Hello => reply(decode(info, method, body).map(|r| s.hello(r))).await,
            Method::Allocate => reply(decode(info, method, body).map(|r| s.allocate(r))).await,
            Method::Release => reply(decode(info, method, body).map(|r| s.release(r))).await,
            Method::Check => reply(decode(info, method, body).map(|r| s.check(r))).await,
            Method::Gc => reply(decode(info, method, body).map(|r| s.gc(r))).await,
            Method::Status => reply(decode(info, method, body).map(|r| s.status(r))).await,
            Method::List => reply(decode(info, method, body).map(|r| s.list(r))).await,
        }
    }
}

/// A request as the service takes it: the message, with its connection's credentials.
fn decode<M: prost::Message + Default>(
    info: &ConnInfo,
    method: Method,
    body: &[u8],
) -> Result<Request<M>, FrameError> {
    let mut req = Request::new(frame::decode(method, body)?);
    req.extensions_mut().insert(info.clone());
    Ok(req)
}

/// Runs the service's call (if the request could be read) and frames what it answers.
async fn reply<M: prost::Message, F>(call: Result<F, FrameError>) -> Vec<u8>
where
    F: std::future::Future<Output = Result<Response<M>, Status>>,
{
    let call = match call {
        Ok(c) => c,
        // What tonic answers for a message it cannot decode.
        Err(e) => return frame::error(Code::Internal, &e.to_string()),
    };
    match call.await {
        Ok(r) => frame::reply(r.get_ref()),
        // The service logged it (as it does for gRPC).
        Err(s) => frame::error(s.code(), s.message()),
    }
}
