//! The stream tonic serves: a unix connection that knows its peer and its place among the
//! admitted connections, and reads as closed (and fails writes) once that place was given up.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::admission::{ConnState, Peer, Ticket};

/// What a request learns of its connection (a request extension).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's credentials.
    pub peer: Arc<Peer>,
    /// The connection's shared state (requests in flight).
    pub state: Arc<ConnState>,
    /// tonic's own connection info.
    pub uds: UdsConnectInfo,
}

/// An admitted connection.
pub struct Conn {
    io: UnixStream,
    info: ConnInfo,
    ticket: Ticket,
}

impl Conn {
    /// Wraps an admitted `io`.
    pub fn new(io: UnixStream, peer: Peer, ticket: Ticket) -> Conn {
        let uds = io.connect_info();
        let info = ConnInfo {
            peer: Arc::new(peer),
            state: ticket.state().clone(),
            uds,
        };
        Conn { io, info, ticket }
    }

    /// What requests on this connection learn of it.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// The first byte the peer sent, left unread (`None` at end of stream, or once the
    /// connection was given up).
    pub async fn peek_first(&self) -> io::Result<Option<u8>> {
        loop {
            if self.ticket.state().evicted() {
                return Ok(None);
            }
            self.io.readable().await?;
            let mut byte = 0u8;
            let peeked = self.io.try_io(tokio::io::Interest::READABLE, || {
                // SAFETY: recv into one byte of our own, on the stream's open descriptor;
                // MSG_PEEK leaves the byte for whoever reads the stream next.
                let n = unsafe {
                    libc::recv(
                        self.io.as_raw_fd(),
                        (&mut byte as *mut u8).cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match peeked {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(byte)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let state = this.ticket.state();
        // Parked before the check: an eviction after it wakes this task.
        state.park(cx.waker());
        if state.evicted() {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            state.touched(this.ticket.admission().now_ms());
        }
        r
    }
}

impl Conn {
    /// Before a write: an evicted connection fails it (so a peer that never reads cannot keep
    /// it open); otherwise the task is remembered for an eviction to wake.
    fn check_write(&self, cx: &Context<'_>) -> io::Result<()> {
        let state = self.ticket.state();
        state.park(cx.waker());
        if state.evicted() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            let now = self.ticket.admission().now_ms();
            self.ticket.state().touched(now);
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_write(cx)?;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_write(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ticket.state().evicted() {
            // Nothing more will be sent: the descriptor closes when hyper drops it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_write(cx)?;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
