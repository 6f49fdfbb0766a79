//! Network namespace handles.
//!
//! `setns(2)` changes the namespace of the calling *thread* only. Running work on a throw-away helper thread that
//! enters the namespace and then exits means no thread of the caller is ever left in the wrong namespace, even if
//! the work panics or a switch back would fail (the Go reference plugins' `ns.Do` has the same shape).

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
        NetNs::open("/proc/thread-self/ns/net")
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

    /// Like [`NetNs::run`], but returns at once: the helper works while the caller goes on, and
    /// [`Pending::join`] waits for its value. Dropping the [`Pending`] lets the helper finish on its own.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<Pending<R>, Error> {
        let file = self.file.try_clone().map_err(|e| {
            Error::Enter(nix::Error::from_raw(
                e.raw_os_error().unwrap_or(libc::EBADF),
            ))
        })?;
        let handle = std::thread::Builder::new()
            .spawn(move || {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Error::Enter)?;
                Ok(f())
            })
            .map_err(|_| Error::Thread)?;
        Ok(Pending { handle })
    }

    /// Whether this is the namespace of the calling thread.
    pub fn is_current(&self) -> Result<bool, Error> {
        Ok(self.same_as(&NetNs::current()?))
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

/// A helper thread started by [`NetNs::spawn`].
#[derive(Debug)]
pub struct Pending<R> {
    handle: std::thread::JoinHandle<Result<R, Error>>,
}

impl<R> Pending<R> {
    /// Waits for the helper and returns its value.
    pub fn join(self) -> Result<R, Error> {
        self.handle.join().map_err(|_| Error::Thread)?
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
    fn spawn_enters_and_caller_stays() {
        let ns = NetNs::new_anonymous().unwrap();
        let before = NetNs::current().unwrap();
        let pending = ns.spawn(|| NetNs::current().unwrap()).unwrap();
        assert!(NetNs::current().unwrap().same_as(&before));
        assert!(pending.join().unwrap().same_as(&ns));
        let panicked = ns.spawn(|| panic!("boom")).unwrap();
        assert!(matches!(panicked.join(), Err(Error::Thread)));
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
