//! Network namespace handles.
//!
//! `setns(2)` changes the namespace of the calling *thread* only. Running work on a throw-away helper thread that
//! enters the namespace and then exits means no thread of the caller is ever left in the wrong namespace, even if
//! the work panics or a switch back would fail (the Go reference plugins' `ns.Do` has the same shape). One step is
//! cheaper done on the calling thread: creating a socket, which keeps its namespace for life
//! ([`NetNs::run_on_this_thread`]); that thread is always brought back, or the process ends.

mod named;

pub use named::NamedNetNs;

use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace path could not be opened.
    #[error("cannot open network namespace {path}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path does not exist.
    #[error("network namespace {0} does not exist")]
    NotFound(PathBuf),
    /// The path is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotNetNs(PathBuf),
    /// Entering the namespace failed.
    #[error("cannot enter network namespace")]
    Enter(#[source] nix::Error),
    /// Creating a namespace failed.
    #[error("cannot create network namespace")]
    Create(#[source] nix::Error),
    /// Bind-mounting or unmounting a named namespace failed.
    #[error("cannot {op} {path}")]
    Mount {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The helper thread could not be spawned or it panicked.
    #[error("namespace helper thread failed")]
    Thread,
}

/// The calling thread's network namespace, as a path.
const THREAD_NS: &str = "/proc/thread-self/ns/net";

/// `NSFS_MAGIC` from `linux/magic.h`: the filesystem type of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open handle on a network namespace. The namespace stays alive while the handle is open.
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// Opens the network namespace at `path` (for example `/run/netns/x` or `/proc/PID/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, Error> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(path.to_owned()),
            _ => Error::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| Error::Open {
            path: path.to_owned(),
            source: e.into(),
        })?;
        // A bind-mounted namespace reports nsfs; /proc/PID/ns/net is a magic link that opens nsfs too. Anything
        // else (a regular file left behind by a crashed runtime, say) is not a namespace.
        #[allow(clippy::unnecessary_cast)]
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(Error::NotNetNs(path.to_owned()));
        }
        Ok(NetNs { file })
    }

    /// The calling thread's network namespace.
    pub fn current() -> Result<NetNs, Error> {
        NetNs::open(THREAD_NS)
    }

    /// Creates a fresh, unnamed network namespace that lives as long as the handle.
    pub fn new_anonymous() -> Result<NetNs, Error> {
        std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(Error::Create)?;
                NetNs::current()
            })
            .join()
            .map_err(|_| Error::Thread)?
        })
    }

    /// Borrows the namespace file descriptor (for `IFLA_NET_NS_FD`, `setns`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a helper thread that has entered this namespace, and returns its value. The helper exits
    /// afterwards, so the caller's threads never change namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Error::Enter)?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Thread)?
        })
    }

    /// Runs `f` with the calling thread inside this namespace, and brings the thread back before returning (also
    /// when `f` panics). For one short step whose result keeps its namespace, such as creating a socket: a helper
    /// thread ([`NetNs::run`]) costs ~90 µs here, and on an idle VM the wake-up of another CPU, against two
    /// `setns(2)` calls. Should the thread fail to go back, the process aborts rather than carry on in the wrong
    /// namespace.
    pub fn run_on_this_thread<R>(&self, f: impl FnOnce() -> R) -> Result<R, Error> {
        let home = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Error::Enter)?;
        let _back = GoBack(home.file);
        Ok(f())
    }

    /// Whether this is the namespace of the calling thread. A `stat` of the thread's namespace link is enough
    /// (it names the nsfs inode), so ADD's check that it was not handed the host's namespace opens nothing.
    pub fn is_current(&self) -> Result<bool, Error> {
        let current = std::fs::metadata(THREAD_NS).map_err(|source| Error::Open {
            path: THREAD_NS.into(),
            source,
        })?;
        Ok(self
            .file
            .metadata()
            .is_ok_and(|m| m.dev() == current.dev() && m.ino() == current.ino()))
    }

    /// Whether two handles name the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Moves the calling thread into this namespace for good. Only for a dedicated thread or a child process
    /// that will never go back (for example a "container" process joining a pod sandbox).
    pub fn enter_current_thread(&self) -> Result<(), Error> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Error::Enter)
    }
}

/// Returns the calling thread to the namespace it came from when dropped (see [`NetNs::run_on_this_thread`]).
struct GoBack(File);

impl Drop for GoBack {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Nothing may run on in a pod's namespace believing it is the host's.
            eprintln!("cannot return to the original network namespace ({e}): aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_a_regular_file_is_rejected() {
        let err = NetNs::open("/proc/self/status").unwrap_err();
        assert!(matches!(err, Error::NotNetNs(_)), "{err:?}");
    }

    #[test]
    fn opening_a_missing_path_is_not_found() {
        let err = NetNs::open("/nonexistent/trestle/ns").unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    }

    #[test]
    fn current_is_current() {
        let ns = NetNs::current().unwrap();
        assert!(ns.is_current().unwrap());
    }

    #[test]
    #[ignore = "privileged: needs root"]
    fn run_enters_and_caller_stays() {
        let ns = NetNs::new_anonymous().unwrap();
        let before = NetNs::current().unwrap();
        assert!(!ns.same_as(&before));
        let inside = ns.run(|| NetNs::current().unwrap()).unwrap();
        assert!(inside.same_as(&ns));
        assert!(NetNs::current().unwrap().same_as(&before));
    }

    #[test]
    #[ignore = "privileged: needs root"]
    fn run_on_this_thread_enters_and_comes_back() {
        let ns = NetNs::new_anonymous().unwrap();
        let before = NetNs::current().unwrap();
        let inside = ns.run_on_this_thread(|| NetNs::current().unwrap()).unwrap();
        assert!(inside.same_as(&ns));
        assert!(NetNs::current().unwrap().same_as(&before));
        // A socket made inside keeps the namespace it was made in: the same as one made by a helper thread.
        let udp = || std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let here = netns_cookie(&ns.run_on_this_thread(udp).unwrap());
        assert_eq!(here, netns_cookie(&ns.run(udp).unwrap()));
        assert_ne!(here, netns_cookie(&udp()));
    }

    /// The kernel's cookie for the namespace a socket lives in (`SO_NETNS_COOKIE`, asm-generic/socket.h).
    fn netns_cookie(sock: &impl std::os::fd::AsRawFd) -> u64 {
        const SO_NETNS_COOKIE: libc::c_int = 71;
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `cookie` and `len` are valid for writes of the sizes passed; the fd is open.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        cookie
    }

    #[test]
    #[ignore = "privileged: needs root"]
    fn run_on_this_thread_comes_back_when_f_panics() {
        let ns = NetNs::new_anonymous().unwrap();
        let before = NetNs::current().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ns.run_on_this_thread(|| panic!("boom"))
        }));
        assert!(r.is_err());
        assert!(NetNs::current().unwrap().same_as(&before));
    }

    #[test]
    #[ignore = "privileged: needs root"]
    fn panic_in_run_is_an_error_and_caller_stays() {
        let ns = NetNs::new_anonymous().unwrap();
        let before = NetNs::current().unwrap();
        let r = ns.run(|| panic!("boom"));
        assert!(matches!(r, Err(Error::Thread)));
        assert!(NetNs::current().unwrap().same_as(&before));
    }
}
