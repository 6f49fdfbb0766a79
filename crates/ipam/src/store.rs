//! The storage abstraction the allocator works against.

use std::fmt;
use std::net::IpAddr;

use crate::error::IpamError;

/// One container interface: the key a reservation belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`. Empty for reservations written by old host-local releases, which
    /// stored only the container ID ("legacy" reservations).
    pub ifname: String,
}

impl Attachment {
    /// Builds an attachment.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// The container ID as host-local stores it (whitespace-trimmed).
    pub fn stored_id(&self) -> &str {
        self.container_id.trim()
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// A reserved address and its owner as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The reserved address.
    pub ip: IpAddr,
    /// Its owner; `ifname` is empty for legacy (ID-only) reservations.
    pub owner: Attachment,
}

impl Reservation {
    /// True for a reservation that recorded only a container ID.
    pub fn is_legacy(&self) -> bool {
        self.owner.ifname.is_empty()
    }

    /// True if it was made for exactly this (container ID, ifname).
    pub fn matches_exact(&self, att: &Attachment) -> bool {
        !self.is_legacy()
            && self.owner.container_id == att.stored_id()
            && self.owner.ifname == att.ifname
    }

    /// True if it is a legacy reservation of this attachment's container.
    pub fn matches_legacy(&self, att: &Attachment) -> bool {
        self.is_legacy() && self.owner.container_id == att.stored_id()
    }

    /// True if it belongs to the attachment, exactly or as a legacy reservation.
    pub fn belongs_to(&self, att: &Attachment) -> bool {
        self.matches_exact(att) || self.matches_legacy(att)
    }
}

/// Reservation storage, modelled on host-local's `backend.Store`.
///
/// Callers hold [`Store::lock`] around every sequence of calls that must be atomic (a whole
/// allocation, release or GC); the methods themselves do not lock.
pub trait Store {
    /// Takes the store's exclusive lock, blocking until it is available.
    fn lock(&mut self) -> Result<(), IpamError>;

    /// Releases the lock taken by [`Store::lock`].
    fn unlock(&mut self) -> Result<(), IpamError>;

    /// Reserves `ip` for `att` and records it as the last reservation of range set
    /// `set_index`. Returns `false` if the address is already reserved.
    fn reserve(
        &mut self,
        att: &Attachment,
        ip: IpAddr,
        set_index: usize,
    ) -> Result<bool, IpamError>;

    /// The last address reserved in range set `set_index`, if recorded.
    fn last_reserved(&self, set_index: usize) -> Result<Option<IpAddr>, IpamError>;

    /// Frees `ip`. Returns `false` if it was not reserved.
    fn release(&mut self, ip: IpAddr) -> Result<bool, IpamError>;

    /// All reservations whose address satisfies `filter`, sorted by address. The filter lets
    /// a store skip reading owners it does not need (see `DiskStore`).
    fn list_matching(&self, filter: &dyn Fn(IpAddr) -> bool)
        -> Result<Vec<Reservation>, IpamError>;

    /// All reservations, sorted by address.
    fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        self.list_matching(&|_| true)
    }

    /// Addresses held by `att` whose address satisfies `filter`, exactly or through a legacy
    /// (ID-only) reservation, sorted. The default reads every matching reservation; a store
    /// may answer from an index (see `DiskStore`).
    fn find_attachment(
        &self,
        att: &Attachment,
        filter: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, IpamError> {
        find_by_scan(self, att, filter)
    }

    /// Addresses held by `att`, exactly or through a legacy (ID-only) reservation, like
    /// host-local's `GetByID`.
    fn get_by_attachment(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        self.find_attachment(att, &|_| true)
    }

    /// Frees every address of `att` like host-local's `ReleaseByID`: the exact
    /// (ID, ifname) reservations, or if there are none, the legacy ID-only ones. Tries every
    /// address even after a failure; returns the freed addresses or the first error.
    fn release_by_attachment(&mut self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        release_by_scan(self, att)
    }

    /// Records that `ips`, all just reserved through [`Store::reserve`] in this locked
    /// operation, belong to `att`; called once per successful allocation. A store that keeps
    /// no index does nothing (the default). The reservations stand even if this fails.
    fn record_attachment(&mut self, _att: &Attachment, _ips: &[IpAddr]) -> Result<(), IpamError> {
        Ok(())
    }

    /// Drops whatever derived state (an index) no longer matches the reservations; called by
    /// GC under the lock after it freed what it had to. The default does nothing.
    fn prune_index(&mut self) -> Result<(), IpamError> {
        Ok(())
    }
}

/// [`Store::find_attachment`] by reading every reservation that passes `filter`.
pub(crate) fn find_by_scan<S: Store + ?Sized>(
    store: &S,
    att: &Attachment,
    filter: &dyn Fn(IpAddr) -> bool,
) -> Result<Vec<IpAddr>, IpamError> {
    Ok(store
        .list_matching(filter)?
        .iter()
        .filter(|r| r.belongs_to(att))
        .map(|r| r.ip)
        .collect())
}

/// [`Store::release_by_attachment`] by reading every reservation.
pub(crate) fn release_by_scan<S: Store + ?Sized>(
    store: &mut S,
    att: &Attachment,
) -> Result<Vec<IpAddr>, IpamError> {
    let all = store.list()?;
    let mut mine: Vec<IpAddr> = all
        .iter()
        .filter(|r| r.matches_exact(att))
        .map(|r| r.ip)
        .collect();
    if mine.is_empty() {
        mine = all
            .iter()
            .filter(|r| r.matches_legacy(att))
            .map(|r| r.ip)
            .collect();
    }
    release_all(store, &mine)
}

/// Releases each address, continuing past failures; returns those actually freed.
pub(crate) fn release_all<S: Store + ?Sized>(
    store: &mut S,
    ips: &[IpAddr],
) -> Result<Vec<IpAddr>, IpamError> {
    let mut freed = Vec::new();
    let mut first_err = None;
    for &ip in ips {
        match store.release(ip) {
            Ok(true) => freed.push(ip),
            Ok(false) => {}
            Err(e) => {
                log::warn!("cannot release {ip}: {e}");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(freed),
    }
}
