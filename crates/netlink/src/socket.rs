//! Request/reply transport: one netlink socket, one reusable buffer.

use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::Error;

/// Large enough for any single rtnetlink reply we ask for: the kernel sizes
/// dump chunks from the largest receive buffer seen, capped at 32 KiB.
const BUF_LEN: usize = 32 * 1024;

/// How often a dump interrupted by concurrent changes is started again.
const DUMP_TRIES: u32 = 5;

/// Size of `struct nlmsghdr`; shorter messages are malformed.
pub(crate) const HEADER_LEN: usize = 16;

/// The socket, the buffer used for both sending and receiving, and the
/// sequence counter.
pub(crate) struct Transport {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
}

/// What one request produced.
struct Replies {
    messages: Vec<RouteNetlinkMessage>,
    interrupted: bool,
}

impl Transport {
    /// Opens a route socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Transport> {
        Transport::from_socket(Socket::new(NETLINK_ROUTE)?)
    }

    /// Creates a route socket in the calling thread's network namespace and nothing else.
    pub(crate) fn create() -> io::Result<Socket> {
        Socket::new(NETLINK_ROUTE)
    }

    /// Sets up a socket made by [`Transport::create`], on any thread: its namespace was fixed at creation.
    pub(crate) fn from_socket(mut socket: Socket) -> io::Result<Transport> {
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Strict checking makes the kernel reject malformed requests and
        // honour the header filters of dumps instead of ignoring them.
        socket.set_netlink_get_strict_chk(true)?;
        Ok(Transport {
            socket,
            buf: vec![0; BUF_LEN],
            seq: 0,
        })
    }

    /// Sends a request that only expects an ACK.
    pub(crate) fn ack(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), Error> {
        self.exchange(op, msg, flags).map(drop)
    }

    /// Sends a non-dump request and returns the replies before its ACK.
    pub(crate) fn get(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.exchange(op, msg, 0).map(|r| r.messages)
    }

    /// Dumps, starting again when the kernel flags the dump as inconsistent.
    pub(crate) fn dump(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        for _ in 0..DUMP_TRIES {
            let replies = self.exchange(op, msg.clone(), NLM_F_DUMP)?;
            if !replies.interrupted {
                return Ok(replies.messages);
            }
            log::debug!("netlink {op}: dump interrupted, retrying");
        }
        Err(Error::DumpInterrupted(DUMP_TRIES))
    }

    /// Dumps until `found` holds for a reply; whether it did. Consumes the transport: a dump cannot be stopped on
    /// its socket (the kernel makes each next chunk when the previous one is read, and a new request meets the
    /// unfinished dump), only by closing the socket, which ends it in the kernel. Each chunk the kernel did not make
    /// is work saved: filling a veth's reply walks every namespace id of the host.
    pub(crate) fn dump_until(
        mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        mut found: impl FnMut(RouteNetlinkMessage) -> bool,
    ) -> Result<bool, Error> {
        for _ in 0..DUMP_TRIES {
            let seq = self.next_seq();
            self.send(msg.clone(), NLM_F_DUMP, seq)?;
            let mut replies = Replies {
                messages: Vec::new(),
                interrupted: false,
            };
            loop {
                let len = self.recv()?;
                let done = self.parse_chunk(op, seq, len, &mut replies)?;
                // A reply of an inconsistent dump still names a link that existed during it.
                // Each reply is handed over, not copied; the rest of a chunk goes unread.
                if replies.messages.drain(..).any(&mut found) {
                    return Ok(true);
                }
                if done {
                    break;
                }
            }
            // Not found, but an interrupted dump may have missed the one that would have been.
            if !replies.interrupted {
                return Ok(false);
            }
            log::debug!("netlink {op}: dump interrupted, retrying");
        }
        Err(Error::DumpInterrupted(DUMP_TRIES))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` with an ACK request and reads until the ACK, an error or
    /// the end of a dump.
    fn exchange(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Replies, Error> {
        let seq = self.next_seq();
        self.send(msg, flags, seq)?;
        let mut replies = Replies {
            messages: Vec::new(),
            interrupted: false,
        };
        loop {
            let len = self.recv()?;
            if self.parse_chunk(op, seq, len, &mut replies)? {
                return Ok(replies);
            }
        }
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Result<(), Error> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let len = packet.buffer_len();
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        packet.serialize(&mut self.buf[..len]);
        let sent = self.socket.send(&self.buf[..len], 0).map_err(Error::Io)?;
        if sent != len {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                "short netlink send",
            )));
        }
        Ok(())
    }

    /// Receives one datagram into the buffer and returns its length.
    fn recv(&mut self) -> Result<usize, Error> {
        loop {
            // MSG_TRUNC makes recv report the real size of a datagram that
            // did not fit, so truncation is detected instead of misparsed.
            match self.socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => return Err(Error::Truncated(n)),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Parses the messages of one datagram; returns true once the request
    /// is complete.
    fn parse_chunk(
        &self,
        op: &'static str,
        seq: u32,
        len: usize,
        replies: &mut Replies,
    ) -> Result<bool, Error> {
        let mut offset = 0;
        while offset + HEADER_LEN <= len {
            let bytes = &self.buf[offset..len];
            let header = NetlinkBuffer::new_checked(bytes).map_err(Error::Decode)?;
            let msg_len = header.length() as usize;
            if msg_len < HEADER_LEN || msg_len > bytes.len() {
                return Err(Error::Unexpected(op));
            }
            offset += (msg_len + 3) & !3;
            // Replies to an earlier request abandoned on error may still be
            // queued; they carry an older sequence number.
            if header.sequence_number() != seq {
                log::debug!(
                    "netlink {op}: skipping reply to sequence {}",
                    header.sequence_number()
                );
                continue;
            }
            replies.interrupted |= header.flags() & NLM_F_DUMP_INTR != 0;
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..msg_len])
                .map_err(Error::Decode)?;
            if Self::consume(op, msg.payload, replies)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Files one reply; returns true when it ends the request.
    fn consume(
        op: &'static str,
        payload: NetlinkPayload<RouteNetlinkMessage>,
        replies: &mut Replies,
    ) -> Result<bool, Error> {
        match payload {
            NetlinkPayload::InnerMessage(m) => {
                replies.messages.push(m);
                Ok(false)
            }
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(code) => Err(Error::from_errno(op, code.get().abs())),
            },
            // A dump that failed midway reports its errno in NLMSG_DONE.
            NetlinkPayload::Done(d) if d.code < 0 => Err(Error::from_errno(op, -d.code)),
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Noop => Ok(false),
            _ => Err(Error::Unexpected(op)),
        }
    }
}
