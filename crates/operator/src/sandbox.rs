//! Pod sandboxes the way a CRI runtime makes them: a "pause" process holding a fresh network namespace, and
//! "container" processes that join it.

use crate::runtime::enter_on_exec;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use trestle_netns::NetNs;

/// A running pause process and its network namespace.
#[derive(Debug)]
pub struct Pause {
    child: Child,
}

impl Pause {
    /// Starts `<exe> pause` with a network namespace of its own, created inside (a child of) `host`'s.
    pub fn start(exe: &std::path::Path, host: Option<&NetNs>) -> std::io::Result<Pause> {
        Pause::spawn(exe, host, false)
    }

    /// Like [`Pause::start`], but in a process group of its own, so a Ctrl-C at the terminal leaves the sandbox to
    /// the caller (which DELs before it stops it, as a runtime does), and killed when the calling thread exits, so
    /// a caller that dies, even by SIGKILL, takes it along. Call it from a thread that lives as long as the sandbox
    /// should (the main thread).
    pub fn start_detached(exe: &std::path::Path, host: Option<&NetNs>) -> std::io::Result<Pause> {
        Pause::spawn(exe, host, true)
    }

    fn spawn(
        exe: &std::path::Path,
        host: Option<&NetNs>,
        detached: bool,
    ) -> std::io::Result<Pause> {
        let mut cmd = Command::new(exe);
        cmd.arg("pause")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(ns) = host {
            enter_on_exec(&mut cmd, ns);
        }
        // SAFETY: runs in the forked child before exec; unshare(2) is async-signal-safe. The child is
        // single-threaded there, which unshare of a network namespace does not even require.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if detached {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            die_with_parent(&mut cmd);
        }
        Ok(Pause {
            child: cmd.spawn()?,
        })
    }

    /// The pause process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The namespace path a runtime passes as `CNI_NETNS`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Opens the sandbox namespace.
    pub fn netns(&self) -> Result<NetNs, trestle_netns::Error> {
        NetNs::open(self.netns_path())
    }

    /// Stops the pause process: its namespace dies with the last holder.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.kill()
    }

    fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The body of `trestlectl pause`: sleep until killed, like the pause container's `pause()` loop.
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: pause(2) has no preconditions; it returns only when a signal handler ran.
        unsafe {
            libc::pause();
        }
    }
}

/// Why `trestlectl pause --netns` could not make its sandbox.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// unshare(2) refused (it needs CAP_SYS_ADMIN).
    #[error("cannot unshare a network namespace (run as root)")]
    Unshare(#[source] nix::Error),
    /// `lo` could not be set up.
    #[error("cannot set lo up in the new network namespace")]
    Lo(#[source] trestle_netlink::Error),
}

/// The body of `trestlectl pause --netns`: moves this process into a new network namespace with `lo` up, as a
/// runtime makes a pod's sandbox, then sleeps until killed. Its `/proc/<pid>/ns/net` is then the pod's namespace
/// to ADD to. Call it while single-threaded: unshare(2) moves only the calling thread, and the namespace that
/// `/proc/<pid>/ns/net` shows is the main thread's.
pub fn pause_in_new_netns() -> Result<std::convert::Infallible, PauseError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(PauseError::Unshare)?;
    set_lo_up().map_err(PauseError::Lo)?;
    pause_forever()
}

/// Sets the current namespace's `lo` up (a new namespace's is down, and a pod expects to reach itself).
fn set_lo_up() -> Result<(), trestle_netlink::Error> {
    let mut nl = trestle_netlink::Netlink::open()?;
    if let Some(lo) = nl.link_by_name("lo")? {
        nl.set_up(lo.index, true)?;
    }
    Ok(())
}

/// Runs `<exe> <args>` as a second container of the pod: the process joins the sandbox's namespace before exec.
pub fn run_in_pod(
    exe: &std::path::Path,
    sandbox: &NetNs,
    args: &[&str],
) -> std::io::Result<String> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
    enter_on_exec(&mut cmd, sandbox);
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{} {} exited with {}",
            exe.display(),
            args.join(" "),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes the child of `cmd` get SIGKILL when the thread that spawns it exits (its parent, killed or not).
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: prctl(2), getppid(2) and _exit(2) are async-signal-safe system calls, fine between fork and exec. A
    // parent that died before prctl took effect is seen by getppid, and the child goes at once.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
