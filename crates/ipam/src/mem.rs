//! An in-memory [`Store`] for tests and for callers that keep state elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::error::IpamError;
use crate::store::{Attachment, Reservation, Store};

/// A [`Store`] kept in memory. It checks the locking discipline: using it without the lock,
/// or locking it twice, panics, so allocator bugs show up in tests.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    reservations: BTreeMap<IpAddr, Attachment>,
    last: HashMap<usize, IpAddr>,
    locked: bool,
    /// How many times the lock was taken; lets tests assert one lock per operation.
    pub lock_count: usize,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Inserts a reservation directly (e.g. a legacy one, with an empty ifname).
    pub fn insert(&mut self, ip: IpAddr, owner: Attachment) {
        self.reservations.insert(ip, owner);
    }

    /// Sets the recorded last reservation of a range set.
    pub fn set_last_reserved(&mut self, set_index: usize, ip: IpAddr) {
        self.last.insert(set_index, ip);
    }

    /// The owner of `ip`, if reserved.
    pub fn owner(&self, ip: IpAddr) -> Option<&Attachment> {
        self.reservations.get(&ip)
    }

    /// Number of reservations.
    pub fn len(&self) -> usize {
        self.reservations.len()
    }

    /// True if nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.reservations.is_empty()
    }

    fn assert_locked(&self) {
        assert!(self.locked, "MemStore used without holding the lock");
    }
}

impl Store for MemStore {
    fn lock(&mut self) -> Result<(), IpamError> {
        assert!(!self.locked, "MemStore locked twice");
        self.locked = true;
        self.lock_count += 1;
        Ok(())
    }

    fn unlock(&mut self) -> Result<(), IpamError> {
        self.assert_locked();
        self.locked = false;
        Ok(())
    }

    fn reserve(
        &mut self,
        att: &Attachment,
        ip: IpAddr,
        set_index: usize,
    ) -> Result<bool, IpamError> {
        self.assert_locked();
        if self.reservations.contains_key(&ip) {
            return Ok(false);
        }
        let owner = Attachment::new(att.stored_id(), att.ifname.clone());
        self.reservations.insert(ip, owner);
        self.last.insert(set_index, ip);
        Ok(true)
    }

    fn last_reserved(&self, set_index: usize) -> Result<Option<IpAddr>, IpamError> {
        self.assert_locked();
        Ok(self.last.get(&set_index).copied())
    }

    fn release(&mut self, ip: IpAddr) -> Result<bool, IpamError> {
        self.assert_locked();
        Ok(self.reservations.remove(&ip).is_some())
    }

    fn list_matching(
        &self,
        filter: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Vec<Reservation>, IpamError> {
        self.assert_locked();
        Ok(self
            .reservations
            .iter()
            .filter(|(ip, _)| filter(**ip))
            .map(|(ip, owner)| Reservation {
                ip: *ip,
                owner: owner.clone(),
            })
            .collect())
    }
}
