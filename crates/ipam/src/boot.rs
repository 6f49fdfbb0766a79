//! Reboot detection for [`DiskStore`](crate::DiskStore).
//!
//! host-local's files outlive a reboot when `dataDir` is on persistent storage, yet no
//! attachment survives one: every network namespace died with the old kernel. Runtimes do not
//! always DEL the dead sandboxes, so each reboot leaks addresses until the pool is exhausted
//! ("no IP addresses available in range set", plugins#252, #697). The store therefore records
//! the kernel boot ID in `<dir>/.trestle-boot` (a dot-file: host-local only treats names that
//! parse as IPs as reservations) and drops every reservation when it changes.

use std::path::{Path, PathBuf};

use crate::error::IpamError;

/// The kernel's per-boot random UUID.
pub const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Name of the file, inside the network's state directory, that records the boot ID.
pub const BOOT_FILE: &str = ".trestle-boot";

/// Where the current boot ID comes from; injectable so tests can simulate a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootIdSource {
    /// [`KERNEL_BOOT_ID`]. If it cannot be read, reboot detection is skipped with a warning.
    Kernel,
    /// Read from this file (same fallback as [`BootIdSource::Kernel`]).
    File(PathBuf),
    /// This fixed value.
    Fixed(String),
    /// No reboot detection: behave exactly like host-local.
    Disabled,
}

impl BootIdSource {
    /// The current boot ID, or `None` if detection is disabled or unavailable.
    pub fn current(&self) -> Option<String> {
        let path = match self {
            BootIdSource::Disabled => return None,
            BootIdSource::Fixed(id) => return Some(id.trim().to_string()),
            BootIdSource::Kernel => Path::new(KERNEL_BOOT_ID),
            BootIdSource::File(path) => path.as_path(),
        };
        match std::fs::read_to_string(path) {
            Ok(id) if !id.trim().is_empty() => Some(id.trim().to_string()),
            Ok(_) => {
                log::warn!("{} is empty; reboot detection disabled", path.display());
                None
            }
            Err(e) => {
                log::warn!(
                    "cannot read {}: {e}; reboot detection disabled",
                    path.display()
                );
                None
            }
        }
    }
}

/// What the recorded boot ID says about the reservations in the directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BootCheck {
    /// Same boot (or detection disabled): nothing to do.
    Same,
    /// No boot ID recorded yet. The directory may hold live reservations written by host-local
    /// during this boot, so they are kept; the ID is recorded from now on.
    FirstUse(String),
    /// The machine rebooted since the last recorded use: every reservation is stale.
    Rebooted(String),
}

/// Compares the current boot ID with the one recorded in `dir`.
pub(crate) fn check(dir: &Path, source: &BootIdSource) -> Result<BootCheck, IpamError> {
    let Some(current) = source.current() else {
        return Ok(BootCheck::Same);
    };
    let path = dir.join(BOOT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(recorded) if recorded.trim() == current => Ok(BootCheck::Same),
        Ok(_) => Ok(BootCheck::Rebooted(current)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootCheck::FirstUse(current)),
        Err(e) => Err(IpamError::io("read", path, e)),
    }
}
