//! The plugin's transport: the `trestle.ipam.v1` messages of the gRPC service, each in a
//! length-prefixed frame on the daemon's unix socket, without HTTP/2.
//!
//! A one-shot plugin process pays for every step of a gRPC call it makes once: an async
//! runtime, the HTTP/2 handshake and its settings exchange, headers, and a codec. Here a call
//! is one write and one read on each side. gRPC stays on the same socket for tools and other
//! clients: the daemon tells the two apart by the first byte (HTTP/2's client preface begins
//! with `P`, this protocol's [`MAGIC`] with a zero byte).
//!
//! The wire:
//! - the client opens with [`MAGIC`]; the daemon answers its first frame with [`MAGIC`] before
//!   it (a client that reads anything else is talking to a daemon that does not know this
//!   protocol, and says so instead of waiting for a frame that never comes);
//! - then, one request at a time, a request frame and its answer frame, each a header of
//!   [`HEADER_LEN`] bytes (the body's length, `u32` big-endian, and a tag byte) and the body;
//! - a request's tag is its [`Method`], its body the request message; an answer's tag is 0
//!   with the reply message, or a gRPC status code with the error's message in UTF-8.
//!
//! No I/O here: the daemon and the plugin add it.

use prost::Message;
use tonic::Code;

use crate::MAX_MESSAGE_BYTES;

/// The first bytes a client sends on a connection, and the first the daemon answers with.
pub const MAGIC: [u8; 8] = *b"\0trestle";

/// A frame's header: the body's length (`u32`, big-endian) and the tag.
pub const HEADER_LEN: usize = 5;

/// The calls of `trestle.ipam.v1`, by their tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    /// `Hello`.
    Hello = 1,
    /// `Allocate`.
    Allocate = 2,
    /// `Release`.
    Release = 3,
    /// `Check`.
    Check = 4,
    /// `Gc`.
    Gc = 5,
    /// `Status`.
    Status = 6,
    /// `List`.
    List = 7,
}

impl Method {
    /// The method of a request's tag, if it is one.
    pub fn from_tag(tag: u8) -> Option<Method> {
        Some(match tag {
            1 => Method::Hello,
            2 => Method::Allocate,
            3 => Method::Release,
            4 => Method::Check,
            5 => Method::Gc,
            6 => Method::Status,
            7 => Method::List,
            _ => return None,
        })
    }

    /// The name metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Method::Hello => "hello",
            Method::Allocate => "allocate",
            Method::Release => "release",
            Method::Check => "check",
            Method::Gc => "gc",
            Method::Status => "status",
            Method::List => "list",
        }
    }
}

/// A frame that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body is longer than [`MAX_MESSAGE_BYTES`].
    #[error("a frame of {0} bytes is over the limit of {MAX_MESSAGE_BYTES}")]
    TooLong(usize),
    /// The body is not the message its tag says.
    #[error("undecodable {0} message")]
    Undecodable(&'static str),
    /// An answer's tag is no gRPC code.
    #[error("unknown answer tag {0}")]
    BadTag(u8),
    /// An error's message is not UTF-8.
    #[error("an error message that is not UTF-8")]
    NotText,
}

/// A frame's header, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The tag: a [`Method`] in a request, a gRPC code (0 for success) in an answer.
    pub tag: u8,
    /// How many bytes of body follow.
    pub len: usize,
}

/// Reads a header, refusing a body over [`MAX_MESSAGE_BYTES`].
pub fn header(bytes: [u8; HEADER_LEN]) -> Result<Header, FrameError> {
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLong(len));
    }
    Ok(Header { tag: bytes[4], len })
}

fn frame(tag: u8, body_len: usize, write_body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    // Bodies are bounded far below 4 GiB by their makers (requests and replies of this API).
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.push(tag);
    write_body(&mut out);
    debug_assert_eq!(out.len(), HEADER_LEN + body_len);
    out
}

/// A request frame.
pub fn request(method: Method, msg: &impl Message) -> Vec<u8> {
    let len = msg.encoded_len();
    frame(method as u8, len, |out| {
        msg.encode_raw(out);
    })
}

/// A successful answer's frame.
pub fn reply(msg: &impl Message) -> Vec<u8> {
    let len = msg.encoded_len();
    frame(0, len, |out| msg.encode_raw(out))
}

/// An error answer's frame (`code` is never `Ok`: an error without a code is `Unknown`).
pub fn error(code: Code, message: &str) -> Vec<u8> {
    let tag = match code {
        Code::Ok => Code::Unknown as u8,
        c => c as u8,
    };
    frame(tag, message.len(), |out| {
        out.extend_from_slice(message.as_bytes())
    })
}

/// A request's message from its body.
pub fn decode<M: Message + Default>(method: Method, body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(|_| FrameError::Undecodable(method.name()))
}

/// An answer: the reply message, or the daemon's error (its code and message).
pub fn answer<M: Message + Default>(
    method: Method,
    head: Header,
    body: &[u8],
) -> Result<Result<M, (Code, String)>, FrameError> {
    if head.tag == 0 {
        return decode(method, body).map(Ok);
    }
    if head.tag > Code::Unauthenticated as u8 {
        return Err(FrameError::BadTag(head.tag));
    }
    let text = std::str::from_utf8(body).map_err(|_| FrameError::NotText)?;
    Ok(Err((Code::from(i32::from(head.tag)), text.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn split(frame: &[u8]) -> (Header, &[u8]) {
        let head = header(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(head.len, frame.len() - HEADER_LEN);
        (head, &frame[HEADER_LEN..])
    }

    #[test]
    fn a_request_and_its_reply_travel_whole() {
        let req = v1::ReleaseRequest {
            network: "net".into(),
            queued_at_ns: 42,
            ..Default::default()
        };
        let f = request(Method::Release, &req);
        let (head, body) = split(&f);
        assert_eq!(Method::from_tag(head.tag), Some(Method::Release));
        assert_eq!(decode::<v1::ReleaseRequest>(Method::Release, body), Ok(req));

        let rep = v1::ReleaseReply {
            released: vec!["10.0.0.2".into()],
            ..Default::default()
        };
        let f = reply(&rep);
        let (head, body) = split(&f);
        assert_eq!(answer(Method::Release, head, body), Ok(Ok(rep)));
    }

    #[test]
    fn an_error_keeps_its_code_and_message() {
        let f = error(Code::ResourceExhausted, "pool exhausted");
        let (head, body) = split(&f);
        assert_eq!(
            answer::<v1::AllocateReply>(Method::Allocate, head, body),
            Ok(Err((Code::ResourceExhausted, "pool exhausted".into())))
        );
        // An error said without a code is not mistaken for success.
        let (head, _) = split(&error(Code::Ok, ""));
        assert_eq!(head.tag, Code::Unknown as u8);
    }

    #[test]
    fn bad_frames_are_refused_not_trusted() {
        let mut long = [0u8; HEADER_LEN];
        long[..4].copy_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        assert_eq!(
            header(long),
            Err(FrameError::TooLong(MAX_MESSAGE_BYTES + 1))
        );
        let head = Header { tag: 99, len: 0 };
        assert_eq!(
            answer::<v1::CheckReply>(Method::Check, head, b""),
            Err(FrameError::BadTag(99))
        );
        let head = Header {
            tag: Code::Internal as u8,
            len: 1,
        };
        assert_eq!(
            answer::<v1::CheckReply>(Method::Check, head, &[0xff]),
            Err(FrameError::NotText)
        );
        assert_eq!(
            decode::<v1::AllocateRequest>(Method::Allocate, &[0xff, 0xff]),
            Err(FrameError::Undecodable("allocate"))
        );
        assert_eq!(Method::from_tag(0), None);
        assert_eq!(Method::from_tag(8), None);
        // HTTP/2's client preface and this protocol's opening differ in the first byte.
        assert_ne!(MAGIC[0], b"PRI * HTTP/2.0"[0]);
    }
}
