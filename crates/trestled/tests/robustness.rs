//! trestled under hostile load, as an operator would meet it: a connection flood past the
//! open-file limit, a client that sends half requests, and a client process that opens more
//! connections than its share. Real daemons on sockets of their own, the real plugin as the
//! client that must still be served.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{address, plugin, Node, NO_NETNS};

/// The daemon's metrics address, from its log (it binds port 0).
fn metrics_addr(node: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = node.log();
        if let Some(rest) = log.split("metrics on http://").nth(1) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no metrics address:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the metric line that starts with `prefix` (summed over its label sets).
fn metric(addr: &str, prefix: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Processes that each hold `per` idle connections to `socket` until released. Forked, so
/// that each is a client process of its own (the daemon's shares are per process); the
/// children only make system calls that are safe after a fork.
struct Flood {
    pids: Vec<libc::pid_t>,
    release: Option<std::os::fd::OwnedFd>,
}

impl Flood {
    fn start(socket: &std::path::Path, processes: usize, per: usize) -> Flood {
        let addr = sockaddr(socket);
        // Close-on-exec: a process that another test spawns meanwhile must not hold the
        // release pipe open (the children would then never hear it close).
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (ready_rx, ready_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut pids = Vec::new();
        for _ in 0..processes {
            // SAFETY: the child calls only async-signal-safe functions (socket, connect,
            // write, read, _exit) on memory prepared before the fork.
            match unsafe { libc::fork() } {
                // SAFETY: in the child, right after the fork, as flood_child requires.
                0 => unsafe { flood_child(&addr, per, (&rx, &tx), &ready_tx) },
                -1 => panic!("fork: {}", std::io::Error::last_os_error()),
                pid => pids.push(pid),
            }
        }
        drop((rx, ready_tx));
        // One byte from each child once its connections are made (or refused).
        let mut ready = std::fs::File::from(ready_rx);
        let mut buf = vec![0u8; processes];
        ready.read_exact(&mut buf).unwrap();
        Flood {
            pids,
            release: Some(tx),
        }
    }

    /// Lets the children go (their connections close with them) and reaps them; one still
    /// there after 10 s is killed (a reap never waits on it forever).
    fn stop(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        self.release.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in self.pids.drain(..) {
            let pid = nix::unistd::Pid::from_raw(pid);
            while let Ok(WaitStatus::StillAlive) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                if Instant::now() > deadline {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.stop();
    }
}

fn sockaddr(path: &std::path::Path) -> libc::sockaddr_un {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    assert!(bytes.len() < a.sun_path.len());
    for (d, s) in a.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    a
}

/// A flood child: `per` connections, a byte to say so, then wait for the release pipe (its
/// read end, and its write end to close here so that only the parent holds it) to close.
/// Every other descriptor the fork copied is closed first: those of tests running beside this
/// one (a plugin's output pipe, say) would otherwise stay open until the flood ends, and a test
/// waiting on them could wait on this one.
///
/// # Safety
/// Only after fork, in the child.
unsafe fn flood_child(
    addr: &libc::sockaddr_un,
    per: usize,
    (release, parent_end): (&std::os::fd::OwnedFd, &std::os::fd::OwnedFd),
    ready: &std::os::fd::OwnedFd,
) -> ! {
    use std::os::fd::AsRawFd;
    // SAFETY: async-signal-safe calls on valid pointers, per this function's contract.
    unsafe {
        libc::close(parent_end.as_raw_fd());
        let mut keep = [release.as_raw_fd() as u32, ready.as_raw_fd() as u32];
        keep.sort_unstable();
        let mut from = 3u32;
        for fd in keep {
            if fd > from {
                libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32);
            }
            from = fd + 1;
        }
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
        for _ in 0..per {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                break;
            }
            libc::connect(
                fd,
                (addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
        }
        libc::write(ready.as_raw_fd(), b"x".as_ptr().cast(), 1);
        let mut b = 0u8;
        libc::read(release.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
        libc::_exit(0)
    }
}

#[test]
fn eleven_hundred_idle_connections_under_a_1024_file_limit_never_stop_the_daemon() {
    let mut node = Node::new();
    node.nofile = Some(1024);
    node.args
        .extend(["--metrics-addr", "127.0.0.1:0"].map(String::from));
    node.start();
    let metrics = metrics_addr(&node);
    assert!(
        node.log().contains("up to 768 connections (64 per client)"),
        "a quarter of the 1,024 descriptors stays free:\n{}",
        node.log()
    );
    let conf = node.conf("flood", "10.56.0.0/24");
    // 20 processes x 55 connections: more than the descriptors the daemon has.
    let mut flood = Flood::start(&node.socket(), 20, 55);
    let start = Instant::now();
    let first = address(&plugin("ADD", "during-1", NO_NETNS, &conf));
    assert_eq!(
        plugin("STATUS", "", NO_NETNS, &conf).status.code(),
        Some(0),
        "STATUS during the flood"
    );
    let second = address(&plugin("ADD", "during-2", NO_NETNS, &conf));
    assert_ne!(first, second);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "served in {:?}",
        start.elapsed()
    );
    let held = metric(&metrics, "trestle_ipam_connections ");
    assert!(held <= 768.0, "{held} connections held, past the bound");
    let turned_away = metric(&metrics, "trestle_ipam_connections_evicted_total")
        + metric(&metrics, "trestle_ipam_connections_refused_total");
    assert!(turned_away >= 1100.0 - 768.0, "{turned_away}");
    eprintln!(
        "flood: {held} connections held, {turned_away} refused or evicted, the plugin served in {:?}",
        start.elapsed()
    );
    flood.stop();
    address(&plugin("ADD", "after", NO_NETNS, &conf));
    assert!(
        node.child.as_mut().unwrap().exited().is_none(),
        "still running:\n{}",
        node.log()
    );
    assert_eq!(node.stop().code(), Some(0), "a SIGTERM is a clean exit");
}

#[test]
fn one_process_holds_at_most_its_share_of_connections_and_the_rest_are_closed_at_once() {
    let mut node = Node::new();
    node.args
        .extend(["--metrics-addr", "127.0.0.1:0"].map(String::from));
    node.start();
    // The start's own client connection is gone first: the 100 below are all of this
    // process's connections.
    let metrics = metrics_addr(&node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&metrics, "trestle_ipam_connections ") != 0.0 {
        assert!(Instant::now() < deadline, "the start's connection stays");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut conns: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(node.socket()).unwrap())
        .collect();
    // An admitted connection that opens as an HTTP/2 client does (the daemon sorts its
    // connections by their first byte) hears the server's SETTINGS; a refused one is closed.
    let mut admitted = 0;
    let mut closed = 0;
    // All kept open until counted: a closed one would give its place to the next.
    for c in &mut conns {
        // A refused connection may be closed before this write: then it fails, which is fine.
        let _ = c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 9];
        match c.read(&mut b) {
            Ok(0) => closed += 1,
            Ok(_) => admitted += 1,
            Err(e) => panic!("neither served nor closed: {e}"),
        }
    }
    assert_eq!((admitted, closed), (64, 36));
    drop(conns);
    let conf = node.conf("share", "10.57.0.0/24");
    address(&plugin("ADD", "other", NO_NETNS, &conf));
}

/// The HTTP/2 request of a gRPC call whose message never arrives in full.
fn half_request(method: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://trestled/trestle.ipam.v1.Ipam/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

#[test]
fn a_client_holding_256_half_sent_requests_starves_nobody_and_its_streams_are_ended() {
    let mut node = Node::new();
    node.args.extend(["--read-timeout", "3"].map(String::from));
    node.start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let socket = node.socket();
    // 4 connections x 64 streams: on two, HEADERS alone; on the other two, HEADERS and then a
    // gRPC frame header promising 1,000 bytes and 10 of them.
    let pending = rt.block_on(async move {
        let mut pending = Vec::new();
        for n in 0..4 {
            let io = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let (mut client, conn) = h2::client::handshake(io).await.unwrap();
            tokio::spawn(conn);
            for _ in 0..64 {
                client = client.ready().await.unwrap();
                let (resp, mut body) = client
                    .send_request(half_request("Allocate"), false)
                    .unwrap();
                if n % 2 == 1 {
                    let mut frame = vec![0u8, 0, 0, 0x03, 0xe8];
                    frame.extend([0u8; 10]);
                    body.send_data(hyper::body::Bytes::from(frame), false)
                        .unwrap();
                }
                pending.push((resp, body));
            }
        }
        pending
    });
    assert_eq!(pending.len(), 256);
    let conf = node.conf("slow", "10.58.0.0/24");
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let t = Instant::now();
        address(&plugin("ADD", &format!("c{i}"), NO_NETNS, &conf));
        slowest = slowest.max(t.elapsed());
    }
    let t = Instant::now();
    assert_eq!(plugin("STATUS", "", NO_NETNS, &conf).status.code(), Some(0));
    slowest = slowest.max(t.elapsed());
    eprintln!(
        "beside 256 half-sent requests: 100 ADDs in {:?}, slowest {slowest:?}",
        start.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(3),
        "an ADD or STATUS took {slowest:?} beside the slow client ({:?} for all)",
        start.elapsed()
    );
    // Past the read deadline every half-sent request is answered with an error.
    let ended = rt.block_on(async move {
        let mut ended = 0;
        // One deadline for all: the read deadline is 3 s, and they all started together.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        for (resp, _body) in pending {
            let r = tokio::time::timeout_at(deadline, resp).await;
            let Ok(r) = r else { continue };
            let failed = match r {
                Err(_) => true,
                Ok(resp) => {
                    let status = resp.headers().get("grpc-status").cloned();
                    let mut body = resp.into_body();
                    let trailers = body.trailers().await.ok().flatten();
                    let code =
                        status.or_else(|| trailers.and_then(|t| t.get("grpc-status").cloned()));
                    code.is_some_and(|c| c != "0")
                }
            };
            if failed {
                ended += 1;
            }
        }
        ended
    });
    assert_eq!(ended, 256, "every half-sent request ended with an error");
    assert!(
        node.child.as_mut().unwrap().exited().is_none(),
        "still running"
    );
}
