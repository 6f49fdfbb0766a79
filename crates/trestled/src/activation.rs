//! The socket and the single-instance lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How the daemon got its listening socket.
#[derive(Debug)]
pub enum Listener {
    /// Passed by systemd (or another activator) as fd 3: it outlives the daemon, so clients
    /// that connect during a restart wait in its backlog.
    Activated(std::os::unix::net::UnixListener),
    /// Bound by the daemon at this path (removed again at exit).
    Bound(std::os::unix::net::UnixListener, PathBuf, u64),
}

impl Listener {
    /// The listening socket.
    pub fn try_clone(&self) -> std::io::Result<std::os::unix::net::UnixListener> {
        match self {
            Listener::Activated(l) | Listener::Bound(l, ..) => l.try_clone(),
        }
    }

    /// The path clients connect to (for an activated socket, the one systemd bound).
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Listener::Bound(_, path, _) => Some(path.clone()),
            Listener::Activated(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf)),
        }
    }
}

/// systemd's first passed descriptor.
const SD_LISTEN_FDS_START: i32 = 3;

/// The activated socket, if `LISTEN_FDS`/`LISTEN_PID` pass one to this process. Call it
/// while the process has one thread: it changes the environment.
pub fn from_environment() -> Option<std::os::unix::net::UnixListener> {
    let fds: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    if fds < 1 || !pid_ok {
        return None;
    }
    if !is_socket(SD_LISTEN_FDS_START) {
        log::warn!("LISTEN_FDS is set but fd 3 is not a socket: binding the socket instead");
        return None;
    }
    // SAFETY: fd 3 was passed to this process for it to own (sd_listen_fds(3) convention);
    // nothing else in the process uses it.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(SD_LISTEN_FDS_START) };
    // Children (none today) must not inherit the activation.
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    Some(listener)
}

/// True if `fd` is an open socket (taking ownership of anything else would be a bug).
fn is_socket(fd: i32) -> bool {
    // SAFETY: the descriptor is only looked at, not owned; an fd that is not open makes
    // fstat fail (EBADF), which answers false.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(fd).is_ok_and(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK)
}

/// Binds `path` with `mode` (and `gid` as its group). A stale socket file is replaced, but
/// never one that a live daemon (of another state directory) still answers on. Call it while
/// the process has one thread: it changes the umask for the bind.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> std::io::Result<Listener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another daemon serves this socket",
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Bound with a restrictive umask-free mode from the start, then set exactly: a client
    // never finds the socket more open than configured.
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    umask(old);
    let listener = bound?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let ino = std::fs::metadata(path)?.ino();
    Ok(Listener::Bound(listener, path.to_path_buf(), ino))
}

/// Removes a socket the daemon bound, if it is still that socket.
pub fn unbind(listener: &Listener) {
    if let Listener::Bound(_, path, ino) = listener {
        if std::fs::metadata(path).is_ok_and(|m| m.ino() == *ino) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The single-instance lock of a state directory, held for the daemon's life.
pub struct InstanceLock(#[allow(dead_code)] File);

/// Takes `<dir>/trestled.lock`, or explains who holds it.
pub fn lock_instance(dir: &Path) -> Result<InstanceLock, String> {
    let path = dir.join("trestled.lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(format!(
                "another trestled (pid {}) serves the store in {}",
                pid.trim(),
                dir.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("cannot lock {}: {e}", path.display()))
        }
    }
    let _ = f
        .set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| write!(f, "{}", std::process::id()));
    Ok(InstanceLock(f))
}
