//! The measurements of `bench --datapath`, each between two network namespaces: one TCP stream's throughput with the
//! machine's busy CPU time over it, and a TCP 1-byte request/response ping-pong's round trips. Plain std sockets,
//! each made by a thread entered into its namespace (a socket keeps the namespace it was made in).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;
use trestle_netns::NetNs;

use super::Error;

/// The throughput stream's port, on the receiving pod's address.
const STREAM_PORT: u16 = 5201;
/// The ping-pong's port.
const PING_PORT: u16 = 5202;
/// One write of the sender: large, so the syscall cost per byte is small and the path is what is measured.
const WRITE: usize = 1 << 20;
/// Round trips before the timed ones: the first ones pay for ARP, route lookups and cold caches.
const WARMUP: usize = 200;

/// One end of a measured path: a pod's namespace and its address.
#[derive(Debug)]
pub struct End<'a> {
    /// The namespace.
    pub ns: &'a NetNs,
    /// Its address on eth0.
    pub ip: Ipv4Addr,
}

/// One throughput run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stream {
    /// Bytes the receiver read.
    pub bytes: u64,
    /// Seconds from the first write to the receiver's end of stream.
    pub seconds: f64,
    /// Machine-wide busy CPU seconds over the same interval (/proc/stat, every CPU, every process).
    pub busy_cpu_s: f64,
}

impl Stream {
    /// Gbit/s.
    pub fn gbps(&self) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }

    /// Busy CPU seconds per Gbit moved.
    pub fn cpu_per_gbit(&self) -> f64 {
        let gbit = self.bytes as f64 * 8.0 / 1e9;
        if gbit <= 0.0 {
            return 0.0;
        }
        self.busy_cpu_s / gbit
    }
}

/// One TCP stream from `from` to `to` for `secs`, the sender writing 1 MiB at a time.
pub fn stream(from: &End, to: &End, secs: Duration) -> Result<Stream, Error> {
    let addr = SocketAddr::from((to.ip, STREAM_PORT));
    let listener = bind(to.ns, addr)?;
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            to.ns.run(|| -> std::io::Result<(u64, Instant)> {
                let (mut conn, _) = listener.accept()?;
                let mut buf = vec![0u8; 256 << 10];
                let mut bytes = 0u64;
                loop {
                    match conn.read(&mut buf)? {
                        0 => return Ok((bytes, Instant::now())),
                        n => bytes += n as u64,
                    }
                }
            })
        });
        let sent = from.ns.run(|| -> std::io::Result<(Instant, CpuTimes)> {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            let buf = vec![0x5au8; WRITE];
            let (start, cpu) = (Instant::now(), CpuTimes::now()?);
            while start.elapsed() < secs && !trestle_demo::interrupt::requested() {
                conn.write_all(&buf)?;
            }
            conn.shutdown(Shutdown::Write)?;
            Ok((start, cpu))
        });
        if !matches!(sent, Ok(Ok(_))) {
            unblock_accept(to.ns, addr);
        }
        let received = receiver.join().map_err(|_| Error::Thread)?;
        let cpu_end = CpuTimes::now().map_err(|e| io(addr, "reading /proc/stat", e))?;
        let (start, cpu_start) = flatten(sent, addr, "sending")?;
        let (bytes, end) = flatten(received, addr, "receiving")?;
        Ok(Stream {
            bytes,
            seconds: end.saturating_duration_since(start).as_secs_f64(),
            busy_cpu_s: cpu_end.busy_seconds_since(&cpu_start),
        })
    })
}

/// `count` round trips of 1 byte each way from `from` to `to` (TCP_NODELAY both ends), in microseconds.
pub fn ping_pong(from: &End, to: &End, count: usize) -> Result<Vec<f64>, Error> {
    let addr = SocketAddr::from((to.ip, PING_PORT));
    let listener = bind(to.ns, addr)?;
    std::thread::scope(|s| {
        let echo = s.spawn(|| {
            to.ns.run(|| -> std::io::Result<()> {
                let (mut conn, _) = listener.accept()?;
                conn.set_nodelay(true)?;
                let mut b = [0u8; 1];
                while conn.read(&mut b)? == 1 {
                    conn.write_all(&b)?;
                }
                Ok(())
            })
        });
        let timed = from.ns.run(|| -> std::io::Result<Vec<f64>> {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            conn.set_nodelay(true)?;
            // A lost echo must not hang the bench.
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut us = Vec::with_capacity(count);
            let mut b = [1u8; 1];
            for i in 0..WARMUP + count {
                if trestle_demo::interrupt::requested() {
                    break;
                }
                let t = Instant::now();
                conn.write_all(&b)?;
                conn.read_exact(&mut b)?;
                if i >= WARMUP {
                    us.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            conn.shutdown(Shutdown::Write)?;
            Ok(us)
        });
        if !matches!(timed, Ok(Ok(_))) {
            unblock_accept(to.ns, addr);
        }
        let echoed = echo.join().map_err(|_| Error::Thread)?;
        let us = flatten(timed, addr, "ping-pong")?;
        flatten(echoed, addr, "echoing")?;
        Ok(us)
    })
}

/// Waits until `to` accepts a TCP connection from `from` (trestled's routes arrive after the pods), up to `timeout`.
pub fn wait_reachable(from: &End, to: &End, timeout: Duration) -> Result<Duration, Error> {
    let addr = SocketAddr::from((to.ip, PING_PORT));
    let listener = bind(to.ns, addr)?;
    let start = Instant::now();
    loop {
        let ok = from
            .ns
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
            .map_err(Error::Netns)?;
        if ok {
            // The accepted connection is dropped with the listener.
            drop(listener);
            return Ok(start.elapsed());
        }
        if trestle_demo::interrupt::requested() {
            return Err(Error::Interrupted);
        }
        if start.elapsed() > timeout {
            return Err(Error::Unreachable {
                from: from.ip,
                to: to.ip,
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client that failed before (or while) connecting leaves the server's thread in accept: one connection of its
/// own, closed at once, lets it through (it then reads the end of the stream). Harmless if it was connected.
fn unblock_accept(ns: &NetNs, addr: SocketAddr) {
    let _ = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
}

fn bind(ns: &NetNs, addr: SocketAddr) -> Result<TcpListener, Error> {
    ns.run(|| TcpListener::bind(addr))
        .map_err(Error::Netns)?
        .map_err(|e| io(addr, "listening", e))
}

fn flatten<T>(
    r: Result<std::io::Result<T>, trestle_netns::Error>,
    addr: SocketAddr,
    what: &'static str,
) -> Result<T, Error> {
    r.map_err(Error::Netns)?.map_err(|e| io(addr, what, e))
}

fn io(addr: SocketAddr, what: &'static str, source: std::io::Error) -> Error {
    Error::Traffic { addr, what, source }
}

/// The machine's CPU time counters (the `cpu` line of /proc/stat), in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// Ticks doing anything: user, nice, system, irq, softirq, steal (guest time is inside user already).
    pub busy: u64,
    /// Ticks idle or waiting for I/O.
    pub idle: u64,
}

impl CpuTimes {
    /// Reads /proc/stat now.
    pub fn now() -> std::io::Result<CpuTimes> {
        let text = std::fs::read_to_string("/proc/stat")?;
        CpuTimes::parse(&text).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no cpu line in /proc/stat")
        })
    }

    /// The aggregate `cpu` line of /proc/stat's text.
    pub fn parse(text: &str) -> Option<CpuTimes> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]: guest is counted in user already.
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        if f.len() < 4 {
            return None;
        }
        Some(CpuTimes {
            busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
            idle: at(3) + at(4),
        })
    }

    /// Busy CPU seconds from `earlier` to this reading.
    pub fn busy_seconds_since(&self, earlier: &CpuTimes) -> f64 {
        self.busy.saturating_sub(earlier.busy) as f64 / clock_ticks()
    }
}

/// Clock ticks per second (`USER_HZ`), the unit of /proc/stat.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The median of a few per-round values (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::quantile;

    #[test]
    fn cpu_line_of_proc_stat() {
        let text = "cpu  100 5 50 1000 20 3 7 2 40 0\ncpu0 50 2 25 500 10 1 3 1 20 0\nintr 1 2\n";
        let t = CpuTimes::parse(text).unwrap();
        assert_eq!((t.busy, t.idle), (100 + 5 + 50 + 3 + 7 + 2, 1020));
        // Old kernels have only four fields.
        assert_eq!(
            CpuTimes::parse("cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, idle: 4 })
        );
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4\n"), None);
        assert_eq!(CpuTimes::parse("cpu 1 x 3 4\n"), None);
        let later = CpuTimes {
            busy: t.busy + 1000,
            ..t
        };
        assert!((later.busy_seconds_since(&t) - 1000.0 / clock_ticks()).abs() < 1e-9);
        assert_eq!(t.busy_seconds_since(&later), 0.0, "no negative time");
    }

    #[test]
    fn rates_of_a_stream() {
        let s = Stream {
            bytes: 1_250_000_000,
            seconds: 2.0,
            busy_cpu_s: 3.0,
        };
        assert!((s.gbps() - 5.0).abs() < 1e-9);
        assert!((s.cpu_per_gbit() - 0.3).abs() < 1e-9);
        assert_eq!(Stream::default().gbps(), 0.0);
        assert_eq!(Stream::default().cpu_per_gbit(), 0.0);
    }

    #[test]
    fn percentiles_and_medians() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 500.0);
        assert_eq!(quantile(&v, 0.99), 990.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
