//! Migration from embedded mode: importing host-local / trestle-ipam `dataDir`s.
//!
//! For each network the daemon takes over, it opens the directory the way trestle-ipam does
//! (under its lock, dropping reservations of an earlier boot), reads every reservation and
//! writes the handover file ([`trestle_ipam_core::HANDOVER_FILE`]) under the same lock. From
//! then on trestle-ipam in embedded mode sends that network to the daemon, so the two never
//! allocate from one range at the same time. (The reference host-local knows nothing of the
//! handover file: do not run it on a network the daemon serves.)

use std::net::IpAddr;
use std::path::Path;

use trestle_ipam_core::{DiskStore, IpamError};

use crate::daemon::HostLocal;
use crate::state::Record;

/// The network directories under `dir` (names that are valid network names).
pub fn networks(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| trestle_ipam_api::convert::network(n).is_ok())
        .collect();
    names.sort();
    names
}

/// Hands `network`'s directory over and returns its reservations as allocations. The caller
/// records the import in the store in the same commit as the allocations and never imports a
/// network twice: a directory handed over before (the files stay as they were) reads the same.
pub fn hand_over(hl: &HostLocal, network: &str) -> Result<Vec<(IpAddr, Record)>, IpamError> {
    let mut store = DiskStore::open_with(&hl.dir, network, &hl.boot)?;
    let found = store.hand_over(&hl.handover)?;
    let now = crate::clock::unix_ms();
    if !found.is_empty() {
        log::info!(
            "imported {} reservations of network {network} from {}",
            found.len(),
            hl.dir.display()
        );
    }
    Ok(found
        .into_iter()
        .map(|r| (r.ip, Record::imported(r.owner, now)))
        .collect())
}
