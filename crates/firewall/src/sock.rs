//! The NETLINK_NETFILTER transport: nf_tables batches (one transaction each) and dump/get requests.

use crate::Error;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use std::os::fd::AsRawFd;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// How often a dump that the kernel flagged as interrupted (the ruleset changed meanwhile) is retried.
const DUMP_ATTEMPTS: usize = 5;
/// Flags of a [`NfSocket::get`] request: one object, or an error acknowledgement when there is none.
pub(crate) const GET_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// Flags of a [`NfSocket::dump`] request: every matching object, then `NLMSG_DONE`.
pub(crate) const DUMP_FLAGS: u16 = NLM_F_REQUEST | NLM_F_DUMP;
/// Safety net against a kernel that never answers; nf_tables replies within milliseconds.
const RECV_TIMEOUT_SECS: libc::time_t = 30;

/// One nf_tables request message: `NFT_MSG_*` type, extra `NLM_F_*` flags, family and attributes.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    /// `NFT_MSG_*`.
    pub(crate) kind: u16,
    /// Flags beyond `NLM_F_REQUEST | NLM_F_ACK`, such as `NLM_F_CREATE`.
    pub(crate) flags: u16,
    /// `NFPROTO_*` of the table.
    pub(crate) family: u8,
    /// Encoded attributes.
    pub(crate) attrs: Vec<u8>,
    /// Human name of the operation, for errors.
    pub(crate) op: &'static str,
}

/// A dumped object: the `NFPROTO_*` family of its table and its attributes.
pub(crate) type Object = (u8, Vec<u8>);

/// A netfilter netlink socket, bound to the network namespace it was created in.
pub(crate) struct NfSocket {
    sock: Socket,
    seq: u32,
}

impl NfSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<NfSocket, Error> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(Error::Io)?;
        sock.bind_auto().map_err(Error::Io)?;
        // Acks then echo only the request header, not the whole request: a large batch cannot overflow the
        // receive buffer with its own acknowledgements.
        sock.set_cap_ack(true).map_err(Error::Io)?;
        set_recv_timeout(&sock)?;
        // Sequence numbers only need to be unique per socket; seeding from the clock keeps replies to an earlier
        // socket with the same port id (impossible in practice, cheap to rule out) from matching.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NfSocket { sock, seq })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msgs` as one batch, which the kernel applies as a single transaction (all or nothing), and waits
    /// for every message's acknowledgement. An empty list sends nothing.
    pub(crate) fn batch(&mut self, msgs: &[Msg]) -> Result<(), Error> {
        if msgs.is_empty() {
            return Ok(());
        }
        let EncodedBatch {
            bytes,
            begin_seq,
            mut pending,
        } = encode_batch(msgs, || self.next_seq());
        self.send(&bytes)?;
        while !pending.is_empty() {
            for reply in self.recv()? {
                let Reply::Error { seq, errno } = reply else {
                    continue;
                };
                if seq == begin_seq && errno != 0 {
                    return Err(Error::Kernel {
                        op: "begin batch",
                        errno,
                    });
                }
                let Some(i) = pending.iter().position(|(s, _)| *s == seq) else {
                    // A stray reply to an earlier request that failed before all its replies were read.
                    continue;
                };
                let (_, op) = pending.swap_remove(i);
                if errno != 0 {
                    // The kernel reports the first failure first; the whole transaction is aborted.
                    return Err(Error::Kernel { op, errno });
                }
            }
        }
        Ok(())
    }

    /// Runs a dump (`NLM_F_DUMP`) and returns the attributes of every object in it. A dump that the kernel
    /// flags as interrupted by a concurrent change is retried.
    pub(crate) fn dump(&mut self, msg: &Msg) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self
            .dump_families(msg)?
            .into_iter()
            .map(|(_, attrs)| attrs)
            .collect())
    }

    /// [`NfSocket::dump`], each object with the `NFPROTO_*` family of its table: a dump of family
    /// `NFPROTO_UNSPEC` covers every family in one request.
    pub(crate) fn dump_families(&mut self, msg: &Msg) -> Result<Vec<Object>, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let (objects, interrupted) = self.request(msg, DUMP_FLAGS)?;
            if !interrupted {
                return Ok(objects);
            }
        }
        Err(Error::Kernel {
            op: msg.op,
            errno: libc::EINTR,
        })
    }

    /// Fetches a single object; `None` if it does not exist.
    pub(crate) fn get(&mut self, msg: &Msg) -> Result<Option<Vec<u8>>, Error> {
        match self.request(msg, GET_FLAGS) {
            Ok((mut objects, _)) => Ok(objects.pop().map(|(_, attrs)| attrs)),
            Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one request and collects the objects of its reply until `NLMSG_DONE` or its acknowledgement.
    fn request(&mut self, msg: &Msg, flags: u16) -> Result<(Vec<Object>, bool), Error> {
        let seq = self.next_seq();
        self.send(&encode_request(msg, flags, seq))?;
        let (mut objects, mut interrupted) = (Vec::new(), false);
        loop {
            for reply in self.recv()? {
                match reply {
                    Reply::Object {
                        seq: s,
                        flags,
                        family,
                        attrs,
                    } if s == seq => {
                        interrupted |= flags & NLM_F_DUMP_INTR != 0;
                        objects.push((family, attrs));
                    }
                    Reply::Done { seq: s } if s == seq => return Ok((objects, interrupted)),
                    Reply::Error { seq: s, errno } if s == seq => {
                        if errno != 0 {
                            return Err(Error::Kernel { op: msg.op, errno });
                        }
                        return Ok((objects, interrupted));
                    }
                    _ => {}
                }
            }
        }
    }

    fn send(&self, buf: &[u8]) -> Result<(), Error> {
        let sent = self.sock.send(buf, 0).map_err(Error::Io)?;
        if sent != buf.len() {
            return Err(Error::Protocol("short netlink send"));
        }
        Ok(())
    }

    /// Reads one datagram and splits it into messages.
    fn recv(&self) -> Result<Vec<Reply>, Error> {
        let (data, _) = self.sock.recv_from_full().map_err(Error::Io)?;
        parse_replies(&data)
    }
}

/// A batch as it goes on the wire, with the sequence numbers its acknowledgements are matched by.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    /// `NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END`: one datagram.
    pub(crate) bytes: Vec<u8>,
    /// Sequence number of the begin marker, which the kernel answers when it rejects the batch as a whole.
    begin_seq: u32,
    /// Sequence number and operation name of each message, in order.
    pending: Vec<(u32, &'static str)>,
}

/// Encodes `msgs` as one batch, numbering the begin marker, each message and the end marker with successive
/// calls of `next_seq`. Pure, so that the golden tests see exactly the bytes [`NfSocket::batch`] sends.
pub(crate) fn encode_batch(msgs: &[Msg], mut next_seq: impl FnMut() -> u32) -> EncodedBatch {
    let mut bytes = Vec::new();
    let begin_seq = next_seq();
    push_batch_marker(&mut bytes, NFNL_MSG_BATCH_BEGIN, begin_seq);
    let mut pending = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let seq = next_seq();
        push_msg(&mut bytes, msg, NLM_F_REQUEST | NLM_F_ACK | msg.flags, seq);
        pending.push((seq, msg.op));
    }
    push_batch_marker(&mut bytes, NFNL_MSG_BATCH_END, next_seq());
    EncodedBatch {
        bytes,
        begin_seq,
        pending,
    }
}

/// Encodes a single (non-batched) request with `flags` ([`GET_FLAGS`] or [`DUMP_FLAGS`]) and `seq`, as
/// [`NfSocket::get`] and [`NfSocket::dump`] send it.
pub(crate) fn encode_request(msg: &Msg, flags: u16, seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    push_msg(&mut buf, msg, flags, seq);
    buf
}

fn set_recv_timeout(sock: &Socket) -> Result<(), Error> {
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: the fd is a live socket owned by `sock`, and `tv` is a valid timeval whose size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A reply message from the kernel.
#[derive(Debug, PartialEq)]
enum Reply {
    /// `NLMSG_ERROR`: an acknowledgement (`errno` 0) or a failure (positive errno).
    Error { seq: u32, errno: i32 },
    /// `NLMSG_DONE`: the end of a dump.
    Done { seq: u32 },
    /// An object: its `nfgenmsg`'s family and the attributes after it.
    Object {
        seq: u32,
        flags: u16,
        family: u8,
        attrs: Vec<u8>,
    },
}

fn parse_replies(mut data: &[u8]) -> Result<Vec<Reply>, Error> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(Error::Protocol("bad message length"));
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let flags = u16::from_ne_bytes([data[6], data[7]]);
        let seq = u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes"));
        let body = &data[NLMSG_HDRLEN..len];
        out.push(match kind {
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .ok_or(Error::Protocol("short error message"))?;
                let code = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
                Reply::Error { seq, errno: -code }
            }
            NLMSG_DONE => Reply::Done { seq },
            _ => Reply::Object {
                seq,
                flags,
                family: body.first().copied().unwrap_or_default(),
                attrs: body.get(NFGENMSG_LEN..).unwrap_or_default().to_vec(),
            },
        });
        data = &data[crate::attr::align4(len).min(data.len())..];
    }
    Ok(out)
}

fn push_header(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    payload: &[u8],
) {
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN + payload.len()) as u32;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version (NFNETLINK_V0), resource id in network byte order.
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(payload);
    buf.resize(crate::attr::align4(buf.len()), 0);
}

fn push_msg(buf: &mut Vec<u8>, msg: &Msg, flags: u16, seq: u32) {
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg.kind;
    push_header(buf, kind, flags, seq, msg.family, 0, &msg.attrs);
}

fn push_batch_marker(buf: &mut Vec<u8>, kind: u16, seq: u32) {
    push_header(
        buf,
        kind,
        NLM_F_REQUEST,
        seq,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_marker_layout() {
        let mut buf = Vec::new();
        push_batch_marker(&mut buf, NFNL_MSG_BATCH_BEGIN, 7);
        assert_eq!(buf.len(), 20);
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), 0x10);
        assert_eq!(&buf[16..20], &[0, 0, 0, 10]);
    }

    #[test]
    fn parses_error_done_and_object() {
        let mut data = Vec::new();
        for (kind, body) in [
            (NLMSG_ERROR, (-2i32).to_ne_bytes().to_vec()),
            (NLMSG_DONE, 0i32.to_ne_bytes().to_vec()),
            (0x0a0c, vec![1, 0, 0, 0, 8, 0, 1, 0, b'x', 0, 0, 0]),
        ] {
            let len = (NLMSG_HDRLEN + body.len()) as u32;
            data.extend_from_slice(&len.to_ne_bytes());
            data.extend_from_slice(&kind.to_ne_bytes());
            data.extend_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
            data.extend_from_slice(&5u32.to_ne_bytes());
            data.extend_from_slice(&0u32.to_ne_bytes());
            data.extend_from_slice(&body);
        }
        let replies = parse_replies(&data).unwrap();
        assert_eq!(replies[0], Reply::Error { seq: 5, errno: 2 });
        assert_eq!(replies[1], Reply::Done { seq: 5 });
        assert_eq!(
            replies[2],
            Reply::Object {
                seq: 5,
                flags: NLM_F_DUMP_INTR,
                family: 1,
                attrs: vec![8, 0, 1, 0, b'x', 0, 0, 0]
            }
        );
    }
}
