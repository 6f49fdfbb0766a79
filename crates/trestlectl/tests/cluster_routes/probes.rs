//! What the restart tests watch: kernel deletions of trestle's entries, and a 1 kHz UDP probe between pods.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trestle_netns::NetNs;

/// Kernel deletions of trestle's entries seen in a namespace while it runs.
pub(crate) struct Deletions {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Deletions {
    pub(crate) fn watch(ns: &NetNs) -> Deletions {
        use std::sync::atomic::{AtomicBool, Ordering};
        use trestle_netlink::{Event, Monitor};
        let mut monitor = ns.run(Monitor::open).unwrap().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match monitor.recv_timeout(Duration::from_millis(50)) {
                    Ok(Some(Event::Route {
                        route,
                        deleted: true,
                    })) if route.protocol == 116 => seen.push(format!("route {}", route.dst)),
                    Ok(Some(Event::Neighbour {
                        neighbour,
                        deleted: true,
                    })) => seen.push(format!("neighbour {}", neighbour.ip)),
                    Ok(Some(Event::Fdb {
                        entry,
                        deleted: true,
                    })) if entry.dst.is_some() => seen.push(format!("fdb {:?}", entry.dst)),
                    Ok(Some(Event::Link {
                        link,
                        deleted: true,
                    })) => seen.push(format!("link {}", link.name)),
                    Ok(Some(Event::Overrun)) => seen.push("overrun".into()),
                    _ => {}
                }
            }
            seen
        });
        Deletions {
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn finish(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// UDP datagrams from one pod to another, one a millisecond, numbered: how many were sent and which arrived.
pub(crate) struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<std::collections::BTreeSet<u64>>,
}

impl Probe {
    pub(crate) fn start(from: &NetNs, to: &NetNs, to_ip: &str, port: u16) -> Probe {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        let addr: SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
        let rx = to.run(|| UdpSocket::bind(addr)).unwrap().unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // Room for seconds of datagrams: a receiver thread descheduled on a busy machine must not lose any to a
        // full socket buffer (the default holds a few hundred), which would look like a loss on the path.
        let bytes: libc::c_int = 16 << 20;
        // SAFETY: `bytes` is a valid c_int for the duration of the call; the socket is open.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&rx),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let tx = from.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut n = 0u64;
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) {
                tx.send_to(&n.to_be_bytes(), addr).unwrap();
                n += 1;
                // Paced against the clock, so a late wake sends the ones it owes at once.
                let next = start + Duration::from_millis(n);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            n
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
        Probe {
            stop,
            sender,
            receiver,
        }
    }

    /// Stops; the sequence numbers that never arrived, of how many sent.
    pub(crate) fn finish(self) -> (Vec<u64>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.sender.join().unwrap();
        let got = self.receiver.join().unwrap();
        ((0..sent).filter(|n| !got.contains(n)).collect(), sent)
    }
}
