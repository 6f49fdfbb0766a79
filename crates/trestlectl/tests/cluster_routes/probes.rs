//! What the restart tests watch besides the 1 kHz probe (trestlectl::probe::Stream): kernel deletions of trestle's entries.

use std::time::Duration;

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
