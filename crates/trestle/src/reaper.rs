//! Destroying parked veth pairs. Destroying a device waits for RCU grace periods (tens of milliseconds, partly
//! under the kernel's rtnl lock), so DEL parks its pair ([`crate::masq::DEAD_GROUP`]) and a detached child, the
//! reaper, destroys parked pairs after the runtime has its answer. One reaper per host namespace at a time: while
//! one runs, a DEL leaves its pair to it, so pairs parked by concurrent DELs go in the same batches (one
//! unregistration, one wait, however many pairs) and most DELs fork nothing. A pair whose reaper died is destroyed
//! by the next reaper, by a retried DEL, or by GC.

use crate::masq::DEAD_GROUP;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use trestle_netlink::Netlink;

/// How DEL gets its parked pair destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaping {
    /// A detached child process (or the running reaper) destroys it after DEL has answered: the plugin binary.
    Detached,
    /// DEL destroys it before answering: for callers that cannot fork (a multi-threaded process, such as an
    /// in-process test).
    Inline,
}

/// Where the claims live: root's own directory, so no other user can create, hold or remove a claim.
const CLAIM_DIR: &str = "/run/trestle/reaper";

/// How long a reaper gathers parked pairs before destroying them.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// Has this namespace's parked pairs destroyed, as `how` says.
pub fn finish(how: Reaping) {
    if how == Reaping::Inline {
        if let Ok(mut nl) = Netlink::open() {
            reap(&mut nl);
        }
        return;
    }
    let Some(claim) = Claim::take(Path::new(CLAIM_DIR)) else {
        // Another reaper holds the claim, so it has not made its last pass yet: that pass sees this pair.
        log::debug!("DEL: pair left to the running reaper");
        return;
    };
    // SAFETY: the plugin process is single-threaded here (namespace helper threads are scoped and joined, an
    // exec'd IPAM plugin has been waited for), and the only lock it holds is the claim, which the child is meant
    // to inherit.
    match unsafe { cni_plugin::detach::detach(|| reap_until_idle(claim)) } {
        Ok(()) => log::debug!("DEL: reaper started"),
        Err(e) => {
            // Without a child the work is done here: slower, never left undone.
            log::warn!("cannot detach the reaper: {e}");
            if let Ok(mut nl) = Netlink::open() {
                reap(&mut nl);
            }
        }
    }
}

/// The reaper's loop: destroys batches of parked pairs while DELs keep parking them, then lets the claim go and
/// makes one last pass for pairs parked by DELs that saw the claim held.
fn reap_until_idle(claim: Claim) {
    let Ok(mut nl) = Netlink::open() else {
        return;
    };
    loop {
        std::thread::sleep(BATCH_WINDOW);
        if !reap(&mut nl) {
            break;
        }
    }
    drop(claim);
    reap(&mut nl);
}

/// Destroys every parked veth pair of this namespace in one batch. Returns whether there were any.
pub fn reap(nl: &mut Netlink) -> bool {
    match nl.delete_group(DEAD_GROUP) {
        Ok(()) => true,
        Err(trestle_netlink::Error::NotFound) => false,
        Err(e) => {
            log::warn!("destroying parked veth pairs: {e}");
            false
        }
    }
}

/// The right to be this host namespace's reaper: an exclusive `flock` on `<dir>/<namespace inode>`, a file only
/// root can open (the directory is root's, mode 0700), released by the kernel when its holder exits, however it
/// exits. (An abstract unix socket name, used before, is a claim any local user can squat.)
#[derive(Debug)]
pub struct Claim {
    /// `None`: a private claim, taken when the shared one cannot be checked (a reaper too many only costs a fork).
    file: Option<(File, PathBuf)>,
}

impl Claim {
    /// Takes the claim in `dir`, or `None` when a reaper holds it.
    pub fn take(dir: &Path) -> Option<Claim> {
        match Self::try_take(dir) {
            Ok(claim) => claim,
            Err(e) => {
                log::warn!("reaper claim in {}: {e}", dir.display());
                Some(Claim { file: None })
            }
        }
    }

    fn try_take(dir: &Path) -> std::io::Result<Option<Claim>> {
        let path = dir.join(namespace_key()?);
        let file = open_private(dir, &path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Claim {
                file: Some((file, path)),
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((file, path)) = self.file.take() {
            // Unlink before unlocking: a DEL that opens the name afterwards makes a new file and a new reaper; one
            // that opened the old file and finds it locked knows this reaper's last pass is still to come.
            let _ = std::fs::remove_file(&path);
            // Explicitly: a descriptor shared with a forked child would otherwise keep the lock past this close.
            let _ = file.unlock();
        }
    }
}

/// The calling thread's network namespace, as a file name: its nsfs inode number.
fn namespace_key() -> std::io::Result<String> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(format!("netns-{}", ns.ino()))
}

/// Opens `path` (creating it and `dir`), provided `dir` is root's alone: the claim means nothing in a
/// directory where another user could make, hold or remove the file.
fn open_private(dir: &Path, path: &Path) -> std::io::Result<File> {
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of root's with mode 0700",
            dir.display()
        )));
    }
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test's with `mode`, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str, mode: u32) -> Dir {
            let path =
                std::env::temp_dir().join(format!("trestle-claim-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            Dir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn private_dir(tag: &str) -> Dir {
        Dir::new(tag, 0o700)
    }

    #[test]
    fn one_claim_per_namespace_released_on_drop() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // The directory check wants root's ownership: as another user every claim is private.
            let d = private_dir("user");
            assert!(Claim::take(d.path()).unwrap().file.is_none());
            return;
        }
        let d = private_dir("root");
        let first = Claim::take(d.path()).expect("free claim");
        assert!(first.file.is_some());
        assert!(Claim::take(d.path()).is_none(), "held claim taken twice");
        drop(first);
        let again = Claim::take(d.path()).expect("released claim");
        assert!(again.file.is_some());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        drop(again);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "claim file removed"
        );
    }

    #[test]
    fn a_directory_others_can_write_gives_a_private_claim() {
        let d = Dir::new("open", 0o777);
        let a = Claim::take(d.path()).unwrap();
        let b = Claim::take(d.path()).unwrap();
        assert!(a.file.is_none() && b.file.is_none());
    }
}
