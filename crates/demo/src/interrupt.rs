//! Ctrl-C (and SIGTERM, SIGHUP) during the demo: the handler only notes it; the demo sees the note at the next
//! step (or while it waits for Enter), deletes its pods and removes its containers as on any failure, and exits.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP. Without `SA_RESTART`, so a read of the terminal that the
/// signal lands in returns at once.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid empty one; the handler only stores to an atomic, which is
        // async-signal-safe. Children get the default action back at exec.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether a signal asked the demo (or `bench --fanout`) to stop.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
