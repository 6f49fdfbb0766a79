//! Daemon mode: the plugin asks `trestled` over its unix socket.
//!
//! Each call connects (retrying for `connectTimeoutMs` while the socket is missing or refuses,
//! which is how a daemon restart without socket activation looks), then sends the request with
//! the operation's deadline (`timeoutMs`), reconnecting and resending while the daemon answers
//! UNAVAILABLE (it is starting or draining). Every request is safe to resend: Allocate returns
//! what the attachment already holds, Release of nothing is success.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use trestle_ipam_api::v1::ipam_client::IpamClient;
use trestle_ipam_core::DaemonSettings;

/// Why a call got no answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing accepted a connection on the socket within the connect timeout.
    #[error("{} at {}: {reason}", if *.absent { "trestled is not running" } else { "cannot connect to trestled" }, socket.display())]
    Down {
        /// True when the socket is missing or refuses connections (nothing listens), false
        /// for other failures (a socket mode that refuses this user, say).
        absent: bool,
        /// The socket.
        socket: PathBuf,
        /// The last connect error.
        reason: String,
    },
    /// The daemon (or the transport) answered with an error status.
    #[error("trestled at {}: {}", socket.display(), status.message())]
    Status {
        /// The socket.
        socket: PathBuf,
        /// The status (boxed: it is large, and errors travel far).
        status: Box<Status>,
    },
}

impl CallError {
    /// The gRPC code, `Unavailable` when the daemon is down.
    pub fn code(&self) -> Code {
        match self {
            CallError::Down { .. } => Code::Unavailable,
            CallError::Status { status, .. } => status.code(),
        }
    }
}

/// trestle-ipam's client of `trestled`: a connection to the daemon, with the runtime that drives it.
pub struct DaemonClient {
    rt: tokio::runtime::Runtime,
    settings: DaemonSettings,
    client: Option<IpamClient<Channel>>,
}

impl DaemonClient {
    /// Prepares calls to the daemon of `settings` (connects on the first call).
    pub fn new(settings: DaemonSettings) -> DaemonClient {
        // One thread: a plugin process makes one call at a time.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime only needs a timer and an epoll descriptor");
        DaemonClient {
            rt,
            settings,
            client: None,
        }
    }

    /// Runs one request, resending it while the daemon is unavailable and time remains.
    pub fn call<T, F, Fut>(&mut self, f: F) -> Result<T, CallError>
    where
        F: Fn(IpamClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(self.settings.timeout_ms);
        let socket = self.settings.socket.clone();
        let connect_budget = Duration::from_millis(self.settings.connect_timeout_ms);
        let mut cached = self.client.take();
        let result = self.rt.block_on(async {
            loop {
                let client = match cached.take() {
                    Some(c) => c,
                    None => connect(&socket, connect_budget.min(remaining(deadline))).await?,
                };
                let status =
                    match tokio::time::timeout(remaining(deadline), f(client.clone())).await {
                        Ok(Ok(resp)) => return Ok((resp.into_inner(), client)),
                        Ok(Err(status)) => status,
                        Err(_) => Status::deadline_exceeded("no answer before the deadline"),
                    };
                let retry = matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                );
                if !retry || remaining(deadline).is_zero() {
                    return Err(CallError::Status {
                        socket: socket.clone(),
                        status: Box::new(status),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20).min(remaining(deadline))).await;
            }
        });
        result.map(|(reply, client)| {
            self.client = Some(client);
            reply
        })
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Connects, retrying while nothing listens (a restart) until `budget` is spent.
async fn connect(socket: &Path, budget: Duration) -> Result<IpamClient<Channel>, CallError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let path = socket.to_path_buf();
        // The URI is required by the API and ignored by the connector.
        let attempt = Endpoint::from_static("http://trestled.invalid")
            .connect_timeout(budget.max(Duration::from_millis(1)))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await;
        match attempt {
            Ok(channel) => {
                return Ok(IpamClient::new(channel)
                    .max_decoding_message_size(trestle_ipam_api::MAX_MESSAGE_BYTES))
            }
            Err(e) => {
                let reason = error_text(&e);
                if start.elapsed() + pause >= budget {
                    return Err(CallError::Down {
                        absent: nothing_listens(&e),
                        socket: socket.to_path_buf(),
                        reason,
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// True if the innermost cause says nothing listens: no socket file, or nobody accepting.
fn nothing_listens(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            );
        }
        src = s.source();
    }
    false
}

/// A transport error and its causes, innermost last, each said once (tonic's transport error
/// repeats its source in its own message).
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if parts.last().is_some_and(|p| p.ends_with(&text)) {
            // Already said by the outer error.
        } else {
            parts.push(text);
        }
        src = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("transport error: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once_and_absence_is_recognised() {
        let e = Outer(std::io::Error::from(std::io::ErrorKind::NotFound));
        let inner = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        assert_eq!(error_text(&e), format!("transport error: {inner}"));
        assert!(nothing_listens(&e));
        // EACCES: a socket mode that refuses this user.
        let denied = Outer(std::io::Error::from_raw_os_error(13));
        assert!(!nothing_listens(&denied));
        assert!(
            error_text(&denied).ends_with("(os error 13)"),
            "{}",
            error_text(&denied)
        );
    }
}
