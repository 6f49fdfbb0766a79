//! Work that must not hold up the runtime: a detached child process that runs after the plugin has answered.
//!
//! Two kernel costs are waits, not work: destroying a network device waits for RCU grace periods (tens of
//! milliseconds), and releasing an nf_tables netlink socket right after a transaction flushes the transaction's
//! deferred destruction, again an RCU wait. The runtime waits for the plugin process to exit and for its stdout
//! to close, so that work moves into a child that has let go of stdout and outlives the plugin.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Forks a child that lets go of the standard streams, runs `work`, waits until this process has exited, and
/// exits. Every descriptor open at the fork stays open in the child until then, so its last close (and whatever
/// kernel wait that implies) happens in the child, after the runtime has its answer. In this process `work` is
/// neither run nor dropped once the child exists: what it owns belongs to the child (dropping it here could, for
/// one, unlock a `flock` the child inherited, since both share the open file).
///
/// # Safety
/// The process must be single-threaded: the child starts with a copy of the heap and of every lock as the
/// forking thread saw them, and a lock held by another thread at that instant would never be released in the
/// child. Any `flock` the process holds stays held by the child's copy of the descriptor too; hold none unless
/// the child is meant to inherit it.
pub unsafe fn detach(work: impl FnOnce()) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees a single-threaded process (this function's contract), so the child starts
    // with a consistent heap and no lock held by a vanished thread.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(write_end);
            detach_stdio();
            work();
            wait_for_parent(&read_end);
            // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the parent.
            unsafe { libc::_exit(0) }
        }
        _ => {
            // The write end stays open until this process exits; that EOF is the child's signal. Leaking it is
            // deliberate: it must outlive every other descriptor of the parent.
            std::mem::forget(write_end);
            std::mem::forget(work);
            Ok(())
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null and leaves the parent's session, so the runtime's pipes close
/// when the plugin exits and signals to the plugin's process group do not reach the child.
fn detach_stdio() {
    // SAFETY: setsid and open/dup2/close on plain descriptors; failures leave the descriptor as it was, which
    // at worst keeps a pipe open a little longer.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

fn wait_for_parent(read_end: &OwnedFd) {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading into a 1-byte buffer from an open pipe.
        let n = unsafe { libc::read(read_end.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}
