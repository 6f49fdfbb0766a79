//! `ipam` on a host-local `dataDir`: read directly for `show`, changed under the directory's lock for `release`
//! and `gc`.

use super::*;

/// Reads the files without taking the lock or opening the store: `show` must work on a directory it may not write,
/// and must not create a network's directory or drop a previous boot's reservations (what opening the store does).
pub(super) fn show_data_dir(dir: &Path, network: Option<&str>) -> Result<Listing, Error> {
    let names = match network {
        Some(n) => {
            network_dir(dir, n)?;
            vec![n.to_owned()]
        }
        None => network_names(dir)?,
    };
    let mut listing = Listing {
        source: SourceInfo {
            kind: SourceKind::DataDir,
            path: dir.display().to_string(),
            server: None,
            warnings: vec![],
        },
        pools: Vec::new(),
        allocations: Vec::new(),
    };
    for name in names {
        let (pool, allocations) = read_network(dir, &name)?;
        listing.pools.push(pool);
        listing.allocations.extend(allocations);
    }
    Ok(listing)
}

/// `<dir>/<network>`, which must exist: release and gc never create a network by a typo.
pub(super) fn network_dir(dir: &Path, network: &str) -> Result<PathBuf, Error> {
    let path = dir.join(network);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(Error::NoNetwork {
            dir: dir.to_owned(),
            network: network.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Say which of the two is missing: a wrong --data-dir is the likelier mistake.
            if let Err(source) = std::fs::metadata(dir) {
                return Err(Error::Read {
                    path: dir.to_owned(),
                    source,
                });
            }
            Err(Error::NoNetwork {
                dir: dir.to_owned(),
                network: network.to_owned(),
            })
        }
        Err(source) => Err(Error::Read { path, source }),
    }
}

/// The network directories of a dataDir, sorted.
pub(super) fn network_names(dir: &Path) -> Result<Vec<String>, Error> {
    let read_err = |source| Error::Read {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && cni_proto::validate_network_name(&name).is_ok() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// One network's pool and reservations.
pub(super) fn read_network(dir: &Path, network: &str) -> Result<(Pool, Vec<Allocation>), Error> {
    let net_dir = dir.join(network);
    let read_err = |path: &Path, source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let mut allocations = Vec::new();
    for entry in std::fs::read_dir(&net_dir).map_err(|e| read_err(&net_dir, e))? {
        let entry = entry.map_err(|e| read_err(&net_dir, e))?;
        let Some(ip) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let path = entry.path();
        match read_reservation(&path) {
            Ok(Some((owner, since))) => allocations.push(Allocation {
                network: network.to_owned(),
                address: ip.to_string(),
                container_id: owner.container_id,
                ifname: owner.ifname,
                pod: None,
                netns: None,
                since_unix_ms: since,
            }),
            Ok(None) => {}
            Err(e) => return Err(read_err(&path, e)),
        }
    }
    let handed_over_to = match std::fs::read(net_dir.join(HANDOVER_FILE)) {
        // Its first line is the socket (a second one, if any, the delete queue).
        Ok(b) => Some(
            String::from_utf8_lossy(&b)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(read_err(&net_dir.join(HANDOVER_FILE), e)),
    };
    let pool = Pool {
        network: network.to_owned(),
        range_sets: Vec::new(),
        used: allocations.len() as u64,
        free: None,
        cooling: None,
        handed_over_to,
    };
    Ok((pool, allocations))
}

/// A reservation file's owner and mtime; `None` if it is not a file or vanished (released meanwhile). An unreadable
/// one is an error, not skipped as host-local skips it: an operator must not be shown a partial list as complete.
pub(super) fn read_reservation(path: &Path) -> std::io::Result<Option<(Attachment, Option<i64>)>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let content = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let since = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok());
    Ok(Some((
        trestle_ipam_core::parse_owner(&String::from_utf8_lossy(&content)),
        since,
    )))
}

/// Opens a network's store; the directory must exist.
pub(super) fn open_store(dir: &Path, network: &str) -> Result<DiskStore, Error> {
    network_dir(dir, network)?;
    DiskStore::open(dir, network).map_err(|e| store_error(dir, e))
}

pub(super) fn store_error(dir: &Path, e: IpamError) -> Error {
    match e {
        IpamError::ManagedByDaemon {
            network, socket, ..
        } => Error::HandedOver {
            dir: dir.to_owned(),
            network,
            socket,
        },
        source => Error::Store {
            dir: dir.to_owned(),
            source,
        },
    }
}

/// Runs `f` under the store's lock (the one every host-local and trestle-ipam process takes), unlocking on every
/// path.
pub(super) fn locked<R>(
    store: &mut DiskStore,
    f: impl FnOnce(&mut DiskStore) -> Result<R, IpamError>,
) -> Result<R, IpamError> {
    store.lock()?;
    let out = f(store);
    // The lock also goes with the descriptor when the process exits; the work itself is done.
    let _ = store.unlock();
    out
}

pub(super) fn release_data_dir(
    dir: &Path,
    network: &str,
    att: &Attachment,
) -> Result<Vec<Released>, Error> {
    let mut store = open_store(dir, network)?;
    let freed = locked(&mut store, |s| {
        // The owners as recorded, read first: a legacy reservation freed for `att` has no ifname.
        let before = s.list()?;
        let ips = s.release_by_attachment(att)?;
        Ok(ips
            .into_iter()
            .map(|ip| released_of(network, ip, &before))
            .collect())
    });
    freed.map_err(|e| store_error(dir, e))
}

pub(super) fn released_of(network: &str, ip: IpAddr, known: &[Reservation]) -> Released {
    let owner = known
        .iter()
        .find(|r| r.ip == ip)
        .map(|r| r.owner.clone())
        // Not possible: the listing was taken under the same lock as the release.
        .unwrap_or_else(|| Attachment::new("", ""));
    Released {
        network: network.to_owned(),
        address: ip.to_string(),
        container_id: owner.container_id,
        ifname: owner.ifname,
    }
}

/// `trestle_ipam_core::gc_store`: under the lock, frees every reservation that belongs to no valid attachment
/// (exactly, or as a legacy ID-only reservation of a valid attachment's container), then prunes the index.
/// Continues past a failed release, and reports what it freed with the first failure.
pub(super) fn gc_data_dir(
    dir: &Path,
    network: &str,
    valid: &[Attachment],
) -> Result<Vec<Released>, Error> {
    let mut store = open_store(dir, network)?;
    let (freed, first_err) =
        trestle_ipam_core::gc_store(&mut store, valid).map_err(|e| store_error(dir, e))?;
    let freed: Vec<Released> = freed
        .into_iter()
        .map(|(owner, ip)| Released {
            network: network.to_owned(),
            address: ip.to_string(),
            container_id: owner.container_id,
            ifname: owner.ifname,
        })
        .collect();
    match first_err {
        None => Ok(freed),
        Some(e) => Err(Error::Incomplete {
            released: freed,
            source: Box::new(store_error(dir, e)),
        }),
    }
}

// ---- text output ----
