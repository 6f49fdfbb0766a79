//! Daemon mode: the plugin asks `trestled` over its unix socket, in the frames of
//! [`trestle_ipam_api::frame`] (one write and one read a call, no runtime, no HTTP/2).
//!
//! Each call connects (retrying for `connectTimeoutMs` while the socket is missing or refuses,
//! which is how a daemon restart without socket activation looks), then sends the request with
//! the operation's deadline (`timeoutMs`), reconnecting and resending while the daemon answers
//! UNAVAILABLE (it is starting or draining) or the connection is lost. Every request is safe to
//! resend: Allocate returns what the attachment already holds, Release of nothing is success.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Code;
use trestle_ipam_api::frame::{self, FrameError, Method, HEADER_LEN, MAGIC};
use trestle_ipam_api::v1;
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
        reason: std::io::Error,
    },
    /// The daemon answered with an error, or the exchange failed (code `Unavailable` for a
    /// lost connection, `DeadlineExceeded` for no answer in time).
    #[error("trestled at {}: {message}", socket.display())]
    Status {
        /// The socket.
        socket: PathBuf,
        /// The gRPC code of the error.
        code: Code,
        /// What the daemon (or the transport) said.
        message: String,
    },
}

impl CallError {
    /// The gRPC code, `Unavailable` when the daemon is down.
    pub fn code(&self) -> Code {
        match self {
            CallError::Down { .. } => Code::Unavailable,
            CallError::Status { code, .. } => *code,
        }
    }

    /// What the daemon or the transport said, without the socket.
    pub fn message(&self) -> String {
        match self {
            CallError::Down { reason, .. } => reason.to_string(),
            CallError::Status { message, .. } => message.clone(),
        }
    }
}

/// trestle-ipam's client of `trestled`: one connection, kept between calls.
pub struct DaemonClient {
    settings: DaemonSettings,
    conn: Option<UnixStream>,
}

impl DaemonClient {
    /// Prepares calls to the daemon of `settings` (connects on the first call).
    pub fn new(settings: DaemonSettings) -> DaemonClient {
        DaemonClient {
            settings,
            conn: None,
        }
    }

    /// `Hello`.
    pub fn hello(&mut self, r: &v1::HelloRequest) -> Result<v1::HelloReply, CallError> {
        self.call(Method::Hello, r)
    }

    /// `Allocate`.
    pub fn allocate(&mut self, r: &v1::AllocateRequest) -> Result<v1::AllocateReply, CallError> {
        self.call(Method::Allocate, r)
    }

    /// `Release`.
    pub fn release(&mut self, r: &v1::ReleaseRequest) -> Result<v1::ReleaseReply, CallError> {
        self.call(Method::Release, r)
    }

    /// `Check`.
    pub fn check(&mut self, r: &v1::CheckRequest) -> Result<v1::CheckReply, CallError> {
        self.call(Method::Check, r)
    }

    /// `Gc`.
    pub fn gc(&mut self, r: &v1::GcRequest) -> Result<v1::GcReply, CallError> {
        self.call(Method::Gc, r)
    }

    /// `Status`.
    pub fn status(&mut self, r: &v1::StatusRequest) -> Result<v1::StatusReply, CallError> {
        self.call(Method::Status, r)
    }

    /// `List`.
    pub fn list(&mut self, r: &v1::ListRequest) -> Result<v1::ListReply, CallError> {
        self.call(Method::List, r)
    }

    /// Runs one request, resending it while the daemon is unavailable and time remains.
    fn call<R: Message + Default>(
        &mut self,
        method: Method,
        request: &impl Message,
    ) -> Result<R, CallError> {
        let deadline = Instant::now() + Duration::from_millis(self.settings.timeout_ms);
        let connect_budget = Duration::from_millis(self.settings.connect_timeout_ms);
        let request = frame::request(method, request);
        loop {
            let (mut stream, fresh) = match self.conn.take() {
                Some(s) => (s, false),
                None => (self.connect(connect_budget.min(remaining(deadline)))?, true),
            };
            let (code, message) = match exchange(&mut stream, fresh, &request, method, deadline) {
                Ok(Ok(reply)) => {
                    self.conn = Some(stream);
                    return Ok(reply);
                }
                Ok(Err((code, message))) => {
                    // The daemon answered whole: the connection serves the next call.
                    self.conn = Some(stream);
                    (code, message)
                }
                Err(e) => e.status(),
            };
            let retry = matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled);
            if !retry || remaining(deadline).is_zero() {
                return Err(CallError::Status {
                    socket: self.settings.socket.clone(),
                    code,
                    message,
                });
            }
            if code == Code::Unavailable {
                // Starting or draining: a new connection, maybe to the next daemon.
                self.conn = None;
            }
            std::thread::sleep(Duration::from_millis(20).min(remaining(deadline)));
        }
    }

    /// Connects, retrying while nothing listens (a restart) until `budget` is spent.
    fn connect(&self, budget: Duration) -> Result<UnixStream, CallError> {
        let socket = &self.settings.socket;
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            // Non-blocking: every wait is a poll with the call's deadline (see `wait`).
            let e = match UnixStream::connect(socket).and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(s)
            }) {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            let absent = nothing_listens(&e);
            if !absent || start.elapsed() + pause >= budget {
                return Err(CallError::Down {
                    absent,
                    socket: socket.clone(),
                    reason: e,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// True if nothing listens: no socket file, or nobody accepting.
fn nothing_listens(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// How an exchange failed before a whole answer came.
#[derive(Debug)]
enum Exchange {
    /// The connection failed or closed.
    Io(io::Error),
    /// The deadline passed.
    Late,
    /// The daemon does not speak this protocol (an older trestled: it expects HTTP/2).
    Foreign,
    /// The answer could not be read.
    Frame(FrameError),
}

impl Exchange {
    fn status(self) -> (Code, String) {
        match self {
            Exchange::Io(e) => (Code::Unavailable, format!("connection lost: {e}")),
            Exchange::Late => (
                Code::DeadlineExceeded,
                "no answer before the deadline".into(),
            ),
            Exchange::Foreign => (
                Code::FailedPrecondition,
                "does not speak the plugins' protocol (a trestled older than this plugin?)".into(),
            ),
            Exchange::Frame(e) => (Code::Internal, e.to_string()),
        }
    }
}

/// Sends `request` (after [`MAGIC`] on a `fresh` connection) and reads the answer, all before
/// `deadline`.
fn exchange<R: Message + Default>(
    stream: &mut UnixStream,
    fresh: bool,
    request: &[u8],
    method: Method,
    deadline: Instant,
) -> Result<Result<R, (Code, String)>, Exchange> {
    if fresh {
        // One write: the opening and the request go out together.
        let mut first = Vec::with_capacity(MAGIC.len() + request.len());
        first.extend_from_slice(&MAGIC);
        first.extend_from_slice(request);
        write_all(stream, &first, deadline)?;
    } else {
        write_all(stream, request, deadline)?;
    }
    // The opening, the header and (mostly) the body come in one read.
    let opening = if fresh { MAGIC.len() } else { 0 };
    let mut buf = Vec::with_capacity(4096);
    read_at_least(stream, &mut buf, opening + HEADER_LEN, deadline)?;
    if buf[..opening] != MAGIC[..opening] {
        return Err(Exchange::Foreign);
    }
    let head: [u8; HEADER_LEN] = buf[opening..opening + HEADER_LEN]
        .try_into()
        .expect("a header's length");
    let header = frame::header(head).map_err(Exchange::Frame)?;
    let end = opening + HEADER_LEN + header.len;
    read_at_least(stream, &mut buf, end, deadline)?;
    frame::answer(method, header, &buf[opening + HEADER_LEN..end]).map_err(Exchange::Frame)
}

/// Writes all of `bytes` on the non-blocking `stream`, waiting for room until `deadline`.
fn write_all(stream: &mut UnixStream, mut bytes: &[u8], deadline: Instant) -> Result<(), Exchange> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(Exchange::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(stream, libc::POLLOUT, deadline)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Exchange::Io(e)),
        }
    }
    Ok(())
}

/// Reads from the non-blocking `stream` into `buf` until it holds `len` bytes (or more, if the
/// daemon sent more), waiting until `deadline`.
fn read_at_least(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    len: usize,
    deadline: Instant,
) -> Result<(), Exchange> {
    while buf.len() < len {
        wait(stream, libc::POLLIN, deadline)?;
        let have = buf.len();
        buf.resize(have.max(len).max(buf.capacity()), 0);
        let r = stream.read(&mut buf[have..]);
        buf.truncate(have + *r.as_ref().unwrap_or(&0));
        match r {
            Ok(0) => return Err(Exchange::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(Exchange::Io(e)),
        }
    }
    Ok(())
}

/// Waits until `stream` is ready for `events` or `deadline` passes.
///
/// poll, not a blocking read: a task asleep in a unix socket's read is woken each time the
/// peer reads from it too (the kernel wakes every sleeper on the socket when its send buffer
/// drains), and poll's wake-up is filtered by the events asked for. A call then sleeps once.
fn wait(stream: &UnixStream, events: libc::c_short, deadline: Instant) -> Result<(), Exchange> {
    loop {
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(Exchange::Late);
        }
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events,
            revents: 0,
        };
        // Rounded up: a deadline under a millisecond away is waited for, not spun on.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd of ours, for the stream's open descriptor.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            n if n > 0 => return Ok(()),
            0 => {}
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Exchange::Io(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::Path;

    fn settings(socket: &Path, timeout_ms: u64) -> DaemonSettings {
        DaemonSettings {
            socket: socket.to_path_buf(),
            timeout_ms,
            connect_timeout_ms: 50,
            ..DaemonSettings::default()
        }
    }

    #[test]
    fn a_missing_socket_is_a_daemon_that_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let e = DaemonClient::new(settings(&socket, 200))
            .status(&v1::StatusRequest::default())
            .unwrap_err();
        assert!(matches!(e, CallError::Down { absent: true, .. }), "{e:?}");
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.to_string().starts_with("trestled is not running at "),
            "{e}"
        );
    }

    /// A daemon that answers with anything but the opening is named, not waited for.
    #[test]
    fn a_daemon_that_speaks_only_http2_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("h2.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // An HTTP/2 server's first frame: SETTINGS, empty.
            s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let e = DaemonClient::new(settings(&socket, 2_000))
            .status(&v1::StatusRequest::default())
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.to_string().contains("older than this plugin"), "{e}");
        server.join().unwrap();
    }

    /// A daemon that reads and never answers costs the deadline, no more.
    #[test]
    fn a_silent_daemon_is_a_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mute.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let start = Instant::now();
        let e = DaemonClient::new(settings(&socket, 300))
            .status(&v1::StatusRequest::default())
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(e);
        server.join().unwrap();
    }
}
