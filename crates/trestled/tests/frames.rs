//! The plugins' transport on the real daemon: frames and gRPC on one socket, one state; what a
//! hostile or broken frame client gets; a drain that closes idle frame connections.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{allocate_req, config, Node};
use prost::Message;
use trestle_ipam_api::frame::{self, Method, HEADER_LEN, MAGIC};
use trestle_ipam_api::v1::{self, ipam_client::IpamClient};

/// A frame connection opened by hand, with a deadline on every read.
fn open(node: &Node) -> UnixStream {
    let s = UnixStream::connect(node.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads one answer: its tag and body (after the opening, on a connection's first answer).
fn answer(s: &mut UnixStream, first: bool) -> (u8, Vec<u8>) {
    if first {
        let mut opening = [0u8; MAGIC.len()];
        s.read_exact(&mut opening).unwrap();
        assert_eq!(opening, MAGIC);
    }
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let head = frame::header(head).unwrap();
    let mut body = vec![0u8; head.len];
    s.read_exact(&mut body).unwrap();
    (head.tag, body)
}

/// True once the daemon has closed `s`, waiting for it at most 20 s: end of stream, or a reset
/// when the daemon left bytes of ours unread.
fn closed(s: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn grpc<T>(node: &Node, f: impl AsyncFnOnce(IpamClient<tonic::transport::Channel>) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = node.socket();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://x.invalid")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let p = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        f(IpamClient::new(channel)).await
    })
}

#[test]
fn frames_and_grpc_share_the_socket_and_what_they_change() {
    let mut node = Node::new();
    node.start();
    let cfg = config("both", "10.58.0.0/24");
    let mut frames = node.client();
    let given = frames.allocate(&allocate_req(&cfg, "a")).unwrap();
    let listed = grpc(&node, async |mut c| {
        c.list(v1::ListRequest::default())
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(listed.allocations.len(), 1);
    let address = given.addresses[0].address.split('/').next().unwrap();
    assert_eq!(listed.allocations[0].address, address);
    // gRPC frees what frames allocated; frames sees it gone, on the connection it kept.
    let release = v1::ReleaseRequest {
        client: Some(trestle_ipam_api::version::peer("test")),
        network: "both".into(),
        attachment: Some(v1::Attachment {
            container_id: "a".into(),
            ifname: "eth0".into(),
        }),
        queued_at_ns: 0,
    };
    let freed = grpc(&node, async |mut c| {
        c.release(release).await.unwrap().into_inner()
    });
    assert_eq!(freed.released, [address]);
    let listed = frames.list(&v1::ListRequest::default()).unwrap();
    assert!(listed.allocations.is_empty(), "{listed:?}");
    assert_eq!(node.stop().code(), Some(0));
}

#[test]
fn a_broken_or_hostile_frame_client_gets_an_answer_or_a_closed_connection() {
    let mut node = Node::new();
    node.args
        .extend(["--read-timeout", "0.3"].map(String::from));
    node.start();

    // A method nobody has: UNIMPLEMENTED, and the connection serves on.
    let mut s = open(&node);
    let mut unknown = frame::request(Method::Status, &v1::StatusRequest::default());
    unknown[4] = 99;
    s.write_all(&[&MAGIC[..], &unknown].concat()).unwrap();
    assert_eq!(answer(&mut s, true).0, tonic::Code::Unimplemented as u8);
    // A body that is not the method's message: INTERNAL, as tonic answers it.
    let mut garbage = vec![0, 0, 0, 2, Method::Allocate as u8];
    garbage.extend_from_slice(&[0xff, 0xff]);
    s.write_all(&garbage).unwrap();
    let (tag, text) = answer(&mut s, false);
    assert_eq!(tag, tonic::Code::Internal as u8);
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "undecodable allocate message"
    );
    // A good request on the same connection.
    s.write_all(&frame::request(
        Method::Status,
        &v1::StatusRequest::default(),
    ))
    .unwrap();
    let (tag, body) = answer(&mut s, false);
    assert_eq!(tag, 0);
    assert!(v1::StatusReply::decode(&body[..]).unwrap().ready);
    // A length past the limit: said, and the connection closed without reading on.
    s.write_all(&[0xff, 0xff, 0xff, 0xff, Method::Gc as u8])
        .unwrap();
    assert_eq!(
        answer(&mut s, false).0,
        tonic::Code::ResourceExhausted as u8
    );
    assert!(closed(&mut s));

    // A body that stops halfway: closed once the read timeout passes, nothing answered.
    let mut s = open(&node);
    let whole = frame::request(Method::Status, &v1::StatusRequest::default());
    let mut half = MAGIC.to_vec();
    half.extend_from_slice(&[0, 0, 0, 40, Method::Status as u8, 1, 2]);
    s.write_all(&half).unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );

    // An opening that is not this protocol's, and a connection that says nothing: closed.
    let mut s = open(&node);
    s.write_all(b"\0nothing").unwrap();
    s.write_all(&whole).unwrap();
    assert!(closed(&mut s));
    let mut s = open(&node);
    assert!(closed(&mut s));

    // Through it all the daemon served, and serves.
    let cfg = config("hostile", "10.59.0.0/24");
    node.client()
        .allocate(&allocate_req(&cfg, "after"))
        .unwrap();
    assert_eq!(node.stop().code(), Some(0));
}

/// A stop does not wait for frame connections that idle: they are closed, the daemon exits
/// cleanly, and the client's next call reaches the next daemon.
#[test]
fn a_stop_closes_idle_frame_connections_and_the_client_reconnects() {
    let mut node = Node::new();
    node.start();
    let cfg = config("drain", "10.60.0.0/24");
    let mut client = node.client();
    let first = client.allocate(&allocate_req(&cfg, "a")).unwrap();
    let start = Instant::now();
    assert_eq!(node.stop().code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    node.start();
    let again = client.allocate(&allocate_req(&cfg, "a")).unwrap();
    assert_eq!(again.addresses, first.addresses);
    assert!(again.existing);
    assert_eq!(node.stop().code(), Some(0));
}
