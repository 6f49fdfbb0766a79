//! The daemon's connections: an accept loop that never gives up (accept errors such as
//! EMFILE are transient: it backs off and goes on), admission under bounds (see
//! [`admission`]), and the stream type tonic serves, which carries its peer's credentials and
//! closes when its connection is given up.

pub mod admission;
mod stream;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::metrics;
pub use admission::{Admission, ConnState, Limits, Peer, Refusal};
pub use stream::{Conn, ConnInfo};

/// Where connections come from: the real listener, or a fake that fails on demand.
pub trait Acceptor: Send {
    /// The next connection.
    fn accept(&mut self) -> impl std::future::Future<Output = io::Result<UnixStream>> + Send;
    /// Out of descriptors: closes one pending connection at once (instead of leaving it in
    /// the backlog until descriptors come back), if it can.
    fn shed(&mut self) -> bool;
}

/// The real listener, with a spare descriptor kept open for [`Acceptor::shed`].
pub struct Listener {
    listener: tokio::net::UnixListener,
    spare: Option<std::fs::File>,
}

impl Listener {
    /// Serves `listener` (non-blocking already).
    pub fn new(listener: tokio::net::UnixListener) -> Listener {
        Listener {
            listener,
            spare: std::fs::File::open("/dev/null").ok(),
        }
    }
}

impl Acceptor for Listener {
    async fn accept(&mut self) -> io::Result<UnixStream> {
        let accepted = self.listener.accept().await.map(|(s, _)| s);
        // A spare that could not be reopened after a shed (another thread took the descriptor)
        // is tried again once accepting works.
        if accepted.is_ok() && self.spare.is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
        }
        accepted
    }

    fn shed(&mut self) -> bool {
        // The spare descriptor makes room for exactly one accept, whose connection is closed
        // at once: its client hears "closed" now rather than waiting in the backlog.
        if self.spare.take().is_none() {
            return false;
        }
        // SAFETY: accept4 on the listener's own open descriptor, with null address buffers
        // (the peer's address is not wanted); the new descriptor, if any, is closed below.
        let fd = unsafe {
            libc::accept4(
                self.listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just returned by accept4 and is owned by nobody else.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
        self.spare = std::fs::File::open("/dev/null").ok();
        fd >= 0
    }
}

/// True for accept errors that pass: out of descriptors or memory, or a client that went
/// away before its connection was accepted. Anything else is reported as an error, but the
/// loop goes on all the same: a daemon that stops accepting is a node without IPAM.
pub fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPROTO
                | libc::EPERM
        )
    )
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The peer credentials of a connection: `SO_PEERCRED`, and the supplementary groups from
/// `SO_PEERGROUPS`, both recorded by the kernel at connect time.
pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    Ok(Peer {
        pid: cred.pid().unwrap_or(0),
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(stream.as_raw_fd())?,
    })
}

fn peer_groups(fd: i32) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of gid_t, and the kernel writes at most `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the buffer was short; `len` says how long it must be.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// Accept errors in a row, and how long to wait after the next.
struct Backoff {
    errors: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MOST: Duration = Duration::from_secs(1);

    fn delay(&self) -> Duration {
        let shift = self.errors.saturating_sub(1).min(8) as u32;
        (Self::FIRST * 2u32.pow(shift)).min(Self::MOST)
    }
}

/// Accepts until the server stops listening (`tx` closed), admitting each connection under
/// `admission` and handing it to the server; an accept error only pauses it.
pub async fn accept_loop<A: Acceptor>(
    mut acceptor: A,
    admission: Arc<Admission>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let mut backoff = Backoff { errors: 0 };
    loop {
        let stream = tokio::select! {
            s = acceptor.accept() => s,
            _ = tx.closed() => return,
        };
        match stream {
            Ok(stream) => {
                if backoff.errors > 0 {
                    log::info!("accepting again after {} accept errors", backoff.errors);
                    backoff.errors = 0;
                }
                let Some(conn) = admit(stream, &admission) else {
                    continue;
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                backoff.errors += 1;
                metrics::accept_error(&e);
                // One line a burst: a flood must not become a flood of log lines.
                if backoff.errors == 1 {
                    if transient(&e) {
                        log::warn!("accept: {e}: backing off, still serving");
                    } else {
                        log::error!("accept: {e}: backing off, still serving");
                    }
                }
                if out_of_descriptors(&e) && acceptor.shed() {
                    metrics::connection_refused("descriptors");
                }
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

/// Admits `stream`, or closes it at once (counted) when its peer is over a bound.
fn admit(stream: UnixStream, admission: &Arc<Admission>) -> Option<Conn> {
    let peer = match peer_of(&stream) {
        Ok(p) => p,
        Err(e) => {
            log::debug!("connection without peer credentials: {e}");
            metrics::connection_refused("no-credentials");
            return None;
        }
    };
    match admission.admit(&peer) {
        Ok((ticket, evicted)) => {
            if evicted.is_some() {
                metrics::connection_evicted();
            }
            Some(Conn::new(stream, peer, ticket))
        }
        Err(why) => {
            log::debug!(
                "refused a connection of pid {} uid {}: {}",
                peer.pid,
                peer.uid,
                why.label()
            );
            metrics::connection_refused(why.label());
            None
        }
    }
}

/// The connection bounds for an open-file limit of `nofile`: a quarter of the descriptors
/// stay for the store, etcd, the metrics endpoint and leak repair's scans (at least 64), and
/// `configured` lowers it further.
pub fn limits_for(nofile: u64, configured: usize, per_client: usize) -> Limits {
    let reserve = (nofile / 4).max(64);
    let room = nofile.saturating_sub(reserve).max(1) as usize;
    let total = configured.min(room).max(1);
    Limits {
        total,
        per_client: per_client.clamp(1, total),
        per_user: (total / 2).max(1),
    }
}

#[cfg(test)]
mod tests;
