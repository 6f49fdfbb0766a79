//! A progress bar on stderr (a line per update when stderr is not a terminal would flood logs, so then it prints
//! only the labels).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Progress over a known number of operations.
pub struct Progress {
    total: u64,
    done: AtomicU64,
    label: Mutex<String>,
    tty: bool,
}

impl Progress {
    /// A bar for `total` operations.
    pub fn new(total: u64) -> Progress {
        Progress {
            total: total.max(1),
            done: AtomicU64::new(0),
            label: Mutex::new(String::new()),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Names what runs now.
    pub fn label(&self, label: &str) {
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_owned();
        if !self.tty {
            eprintln!("bench: {label}");
        }
        self.draw();
    }

    /// One operation done.
    pub fn tick(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.draw();
    }

    fn draw(&self) {
        if !self.tty {
            return;
        }
        let done = self.done.load(Ordering::Relaxed).min(self.total);
        let width = 30;
        let filled = (done * width / self.total) as usize;
        let label = self.label.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>3}% {label:<40}",
            "#".repeat(filled),
            ".".repeat(width as usize - filled),
            done * 100 / self.total
        );
        let _ = err.flush();
    }

    /// Ends the bar's line.
    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
