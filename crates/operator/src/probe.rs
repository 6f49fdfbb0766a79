//! Connectivity probes done in-process (no external `ping`): ICMP echo over a raw socket and a TCP exchange.
//! Both run in whatever network namespace the calling thread is in; callers use `NetNs::run`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Sends one ICMP echo request to `dst` and waits up to `timeout` for the matching reply. Returns the round trip.
pub fn ping(dst: Ipv4Addr, seq: u16, timeout: Duration) -> std::io::Result<Duration> {
    echo(dst, seq, b"trestle demo", false, timeout)
}

/// Like [`ping`], with `payload` bytes of ICMP payload and Don't Fragment set: a packet larger than the path's
/// MTU fails at once (`EMSGSIZE`) when the route's MTU says so, and is lost when a hop drops it. The IP packet is
/// `payload + 28` bytes.
pub fn ping_df(
    dst: Ipv4Addr,
    seq: u16,
    payload: usize,
    timeout: Duration,
) -> std::io::Result<Duration> {
    echo(dst, seq, &vec![0x5a; payload], true, timeout)
}

fn echo(
    dst: Ipv4Addr,
    seq: u16,
    payload: &[u8],
    df: bool,
    timeout: Duration,
) -> std::io::Result<Duration> {
    let sock = raw_icmp_socket()?;
    if df {
        let on: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: `on` is a valid c_int for the duration of the call; the fd is open. PROBE sets DF and ignores
        // the path MTU the kernel may have cached, so the packet meets the route's MTU and every hop's.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let id = (std::process::id() & 0xffff) as u16;
    let packet = echo_request(id, seq, payload);
    let addr = sockaddr(dst);
    let start = Instant::now();
    // SAFETY: `packet` and `addr` are valid for the lengths given and outlive the call; the fd is open.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    wait_reply(&sock, dst, id, seq, start, timeout)
}

fn raw_icmp_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is a valid timeval for the duration of the call.
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
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Reads until the echo reply with our id and sequence arrives from `dst`; a raw socket sees every ICMP packet.
fn wait_reply(
    sock: &OwnedFd,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    start: Instant,
    timeout: Duration,
) -> std::io::Result<Duration> {
    let mut buf = vec![0u8; 65536];
    while start.elapsed() < timeout {
        // SAFETY: `buf` is writable for its whole length; the fd is open.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        }
        if is_our_reply(&buf[..n as usize], dst, id, seq) {
            return Ok(start.elapsed());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no echo reply from {dst}"),
    ))
}

fn is_our_reply(pkt: &[u8], dst: Ipv4Addr, id: u16, seq: u16) -> bool {
    if pkt.len() < 20 {
        return false;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let Some(icmp) = pkt.get(ihl..ihl + 8) else {
        return false;
    };
    src == dst
        && icmp[0] == 0
        && u16::from_be_bytes([icmp[4], icmp[5]]) == id
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

/// An ICMP echo request with a correct checksum.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Binds a TCP listener (call inside the server's namespace).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Accepts one connection, reads a line and answers `echo: <line>`. Returns the peer address.
pub fn serve_once(listener: &TcpListener, timeout: Duration) -> std::io::Result<SocketAddr> {
    listener.set_nonblocking(false)?;
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true)?;
    let (mut stream, peer) = loop {
        match listener.accept() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    stream.write_all(b"echo: ")?;
    stream.write_all(&buf[..n])?;
    Ok(peer)
}

/// Connects to `addr`, sends `msg` and returns the answer.
pub fn exchange(addr: SocketAddr, msg: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(msg.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// UDP datagrams from one network namespace to another, one a millisecond, numbered: how many were sent and which
/// arrived. A route that is missing even for a moment shows as a gap.
pub struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<std::io::Result<u64>>,
    receiver: std::thread::JoinHandle<std::collections::BTreeSet<u64>>,
}

impl Stream {
    /// Starts sending from `from` to `to_ip:port`, received in `to`.
    pub fn start(
        from: &trestle_netns::NetNs,
        to: &trestle_netns::NetNs,
        to_ip: Ipv4Addr,
        port: u16,
    ) -> std::io::Result<Stream> {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        let addr = SocketAddr::from((to_ip, port));
        let rx = to
            .run(|| UdpSocket::bind(addr))
            .map_err(std::io::Error::other)??;
        rx.set_read_timeout(Some(Duration::from_millis(100)))?;
        // Room for seconds of datagrams: a receiver thread descheduled on a busy machine must not lose any to a
        // full socket buffer (the default holds a few hundred), which would look like a loss on the path.
        let bytes: libc::c_int = 16 << 20;
        // SAFETY: `bytes` is a valid c_int for the duration of the call; the socket is open.
        let rc = unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tx = from
            .run(|| UdpSocket::bind("0.0.0.0:0"))
            .map_err(std::io::Error::other)??;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut n = 0u64;
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) {
                tx.send_to(&n.to_be_bytes(), addr)?;
                n += 1;
                // Paced against the clock, so a late wake sends the ones it owes at once.
                let next = start + Duration::from_millis(n);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(n)
        });
        let s = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut got = std::collections::BTreeSet::new();
            let mut buf = [0u8; 8];
            let mut quiet_after_stop = 0;
            loop {
                match rx.recv(&mut buf) {
                    Ok(8) => {
                        got.insert(u64::from_be_bytes(buf));
                    }
                    _ if s.load(Ordering::Relaxed) => {
                        quiet_after_stop += 1;
                        if quiet_after_stop > 3 {
                            return got;
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Stream {
            stop,
            sender,
            receiver,
        })
    }

    /// Stops; the sequence numbers that never arrived, of how many sent. An error if sending failed (a route
    /// missing makes `sendto` fail with `ENETUNREACH`, which is a loss too).
    pub fn finish(self) -> std::io::Result<(Vec<u64>, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self
            .sender
            .join()
            .map_err(|_| std::io::Error::other("the sender panicked"))??;
        let got = self
            .receiver
            .join()
            .map_err(|_| std::io::Error::other("the receiver panicked"))?;
        Ok(((0..sent).filter(|n| !got.contains(n)).collect(), sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_packet() {
        // Echo request id=1 seq=1 without payload: 08 00 f7 fd 00 01 00 01.
        let p = echo_request(1, 1, b"");
        assert_eq!(p, vec![8, 0, 0xf7, 0xfd, 0, 1, 0, 1]);
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn reply_matching() {
        let mut pkt = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        pkt.extend_from_slice(&[0, 0, 0, 0, 0, 7, 0, 3]);
        let src = Ipv4Addr::new(10, 0, 0, 2);
        assert!(is_our_reply(&pkt, src, 7, 3));
        assert!(!is_our_reply(&pkt, src, 7, 4));
        assert!(!is_our_reply(&pkt, Ipv4Addr::new(10, 0, 0, 3), 7, 3));
        assert!(!is_our_reply(&pkt[..20], src, 7, 3));
    }

    #[test]
    #[ignore = "privileged: needs root"]
    fn ping_loopback_in_fresh_namespace() {
        let ns = trestle_netns::NetNs::new_anonymous().unwrap();
        let rtt = ns
            .run(|| {
                let mut nl = trestle_netlink::Netlink::open().unwrap();
                let lo = nl.link_by_name("lo").unwrap().unwrap();
                nl.set_up(lo.index, true).unwrap();
                ping(Ipv4Addr::LOCALHOST, 1, Duration::from_secs(2))
            })
            .unwrap();
        assert!(rtt.is_ok(), "{rtt:?}");
    }
}
