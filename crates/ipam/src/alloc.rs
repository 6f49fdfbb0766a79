//! Allocation, release, CHECK and GC on top of a [`Store`].

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{IpamConfig, RouteConfig};
use crate::dns::DnsConfig;
use crate::error::IpamError;
use crate::ipmath::{next, to_u128};
use crate::range::{Range, RangeSet};
use crate::store::{Attachment, Store};

/// The outcome of [`allocate`]: what the plugin returns as its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// One address per range set, in set order.
    pub ips: Vec<AllocatedIp>,
    /// The configured routes.
    pub routes: Vec<RouteConfig>,
    /// The configured DNS settings.
    pub dns: DnsConfig,
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedIp {
    /// The address with its subnet's prefix length.
    pub address: IpNet,
    /// The gateway of its range.
    pub gateway: Option<IpAddr>,
}

/// Allocates one address per range set for `att`, holding the store lock across the whole
/// allocation. Requested addresses (`cfg.requested`) are used for the set that contains them;
/// other sets allocate round-robin. On any failure the addresses reserved so far are freed.
pub fn allocate(
    cfg: &IpamConfig,
    store: &mut impl Store,
    att: &Attachment,
) -> Result<Allocation, IpamError> {
    let requested = assign_requested(cfg)?;
    let ips = locked(store, |s| allocate_locked(cfg, s, att, &requested))?;
    Ok(Allocation {
        ips,
        routes: cfg.routes.clone(),
        dns: cfg.dns.clone(),
    })
}

/// Frees every address of `att` (DEL). Idempotent: releasing nothing is success. Returns the
/// freed addresses.
pub fn release(
    cfg: &IpamConfig,
    store: &mut impl Store,
    att: &Attachment,
) -> Result<Vec<IpAddr>, IpamError> {
    let freed = locked(store, |s| s.release_by_attachment(att))?;
    log::debug!("{}: released {freed:?} of {att}", cfg.network);
    Ok(freed)
}

/// CHECK: the addresses held by `att`; an error if it holds none.
pub fn check(
    cfg: &IpamConfig,
    store: &mut impl Store,
    att: &Attachment,
) -> Result<Vec<IpAddr>, IpamError> {
    let held = locked(store, |s| s.get_by_attachment(att))?;
    if held.is_empty() {
        log::debug!("{}: {att} holds no address", cfg.network);
        return Err(IpamError::NotFound {
            container_id: att.container_id.clone(),
        });
    }
    Ok(held)
}

/// GC: frees every reservation whose owner is not in `valid` and returns what it freed.
/// A legacy (ID-only) reservation stays if any valid attachment has its container ID.
/// Afterwards the store prunes its index (see [`Store::prune_index`]); it reads every
/// reservation regardless of any index. Continues past failures and then returns the first one.
pub fn gc(
    cfg: &IpamConfig,
    store: &mut impl Store,
    valid: &[Attachment],
) -> Result<Vec<(Attachment, IpAddr)>, IpamError> {
    let (freed, first_err) = gc_store(store, valid)?;
    log::debug!("{}: gc freed {freed:?}", cfg.network);
    first_err.map_or(Ok(freed), Err)
}

/// [`gc`] without a configuration (an operator's repair): what it freed, and the first failure
/// it continued past. The outer error is one that stopped it before anything was freed.
pub fn gc_store(store: &mut impl Store, valid: &[Attachment]) -> Result<GcOutcome, IpamError> {
    locked(store, |s| {
        let stale: Vec<_> = s
            .list()?
            .into_iter()
            .filter(|r| !valid.iter().any(|v| r.belongs_to(v)))
            .collect();
        let mut freed = Vec::new();
        let mut first_err = None;
        for r in stale {
            match s.release(r.ip) {
                Ok(true) => freed.push((r.owner, r.ip)),
                Ok(false) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Err(e) = s.prune_index() {
            log::warn!("cannot prune index: {e}");
            first_err.get_or_insert(e);
        }
        Ok((freed, first_err))
    })
}

/// What [`gc_store`] freed (owner and address), and the first failure it continued past.
pub type GcOutcome = (Vec<(Attachment, IpAddr)>, Option<IpamError>);

/// Runs `f` under the store lock, unlocking on every path.
fn locked<S: Store, R>(
    store: &mut S,
    f: impl FnOnce(&mut S) -> Result<R, IpamError>,
) -> Result<R, IpamError> {
    store.lock()?;
    let out = f(store);
    if let Err(e) = store.unlock() {
        // The lock goes away with the file descriptor anyway; the work itself is done.
        log::warn!("cannot unlock store: {e}");
    }
    out
}

/// Maps requested addresses to range sets before anything is reserved, so a bad request
/// fails without touching the store: one per set, never a gateway, none left over.
pub fn assign_requested(cfg: &IpamConfig) -> Result<Vec<Option<IpAddr>>, IpamError> {
    let mut per_set = vec![None; cfg.range_sets.len()];
    let mut unused = Vec::new();
    for &ip in &cfg.requested {
        let Some(index) = cfg.range_sets.iter().position(|s| s.contains(ip)) else {
            return Err(IpamError::OutsideRanges(ip));
        };
        let range = cfg.range_sets[index]
            .range_for(ip)
            .expect("set contains ip");
        if range.gateway == Some(ip) {
            return Err(IpamError::RequestedGateway { ip });
        }
        match &mut per_set[index] {
            slot @ None => *slot = Some(ip),
            Some(_) => unused.push(ip),
        }
    }
    if !unused.is_empty() {
        return Err(IpamError::UnusedRequests(unused));
    }
    Ok(per_set)
}

fn allocate_locked<S: Store>(
    cfg: &IpamConfig,
    store: &mut S,
    att: &Attachment,
    requested: &[Option<IpAddr>],
) -> Result<Vec<AllocatedIp>, IpamError> {
    check_duplicate(cfg, store, att, requested)?;
    let mut done: Vec<AllocatedIp> = Vec::new();
    for (index, set) in cfg.range_sets.iter().enumerate() {
        let result = match requested[index] {
            Some(ip) => reserve_requested(store, att, set, index, ip),
            None => reserve_next(cfg, store, att, set, index),
        };
        match result {
            Ok(ip) => done.push(ip),
            Err(e) => {
                rollback(store, &done);
                return Err(e);
            }
        }
    }
    let ips: Vec<IpAddr> = done.iter().map(|a| a.address.addr()).collect();
    if let Err(e) = store.record_attachment(att, &ips) {
        // Only the index is incomplete: lookups fall back to reading the reservations.
        log::warn!("cannot index {att}: {e}");
    }
    Ok(done)
}

/// host-local refuses a second allocation for the same attachment in a set that has no
/// requested address. Only reservations inside those sets count (and a scanning store reads
/// only their files).
fn check_duplicate<S: Store>(
    cfg: &IpamConfig,
    store: &S,
    att: &Attachment,
    requested: &[Option<IpAddr>],
) -> Result<(), IpamError> {
    let sets: Vec<&RangeSet> = cfg
        .range_sets
        .iter()
        .zip(requested)
        .filter(|(_, req)| req.is_none())
        .map(|(set, _)| set)
        .collect();
    if sets.is_empty() {
        return Ok(());
    }
    let in_sets = |ip: IpAddr| sets.iter().any(|s| s.contains(ip));
    match store.find_attachment(att, &in_sets)?.first() {
        Some(&ip) => Err(IpamError::Duplicate {
            ip,
            container_id: att.container_id.clone(),
        }),
        None => Ok(()),
    }
}

fn rollback<S: Store>(store: &mut S, done: &[AllocatedIp]) {
    for ip in done {
        if let Err(e) = store.release(ip.address.addr()) {
            log::warn!("cannot roll back {}: {e}", ip.address.addr());
        }
    }
}

fn allocated(range: &Range, ip: IpAddr) -> AllocatedIp {
    AllocatedIp {
        address: IpNet::new(ip, range.subnet.prefix_len()).expect("prefix from a valid subnet"),
        gateway: range.gateway,
    }
}

fn reserve_requested<S: Store>(
    store: &mut S,
    att: &Attachment,
    set: &RangeSet,
    index: usize,
    ip: IpAddr,
) -> Result<AllocatedIp, IpamError> {
    let range = set.range_for(ip).expect("assigned to the containing set");
    if !store.reserve(att, ip, index)? {
        return Err(IpamError::Unavailable {
            ip,
            range: set.to_string(),
        });
    }
    Ok(allocated(range, ip))
}

fn reserve_next<S: Store>(
    cfg: &IpamConfig,
    store: &mut S,
    att: &Attachment,
    set: &RangeSet,
    index: usize,
) -> Result<AllocatedIp, IpamError> {
    let last = store.last_reserved(index).unwrap_or_else(|e| {
        // host-local logs and carries on: only round-robin fairness is lost.
        log::warn!("cannot read last reserved IP of set {index}: {e}");
        None
    });
    for (range, ip) in RangeIter::new(set, last) {
        if store.reserve(att, ip, index)? {
            return Ok(allocated(range, ip));
        }
    }
    Err(IpamError::Exhausted {
        network: cfg.network.clone(),
        set_index: index,
        range: set.to_string(),
    })
}

/// host-local's round-robin `RangeIter`: starts after the set's last reserved address (or at
/// the first range's start), walks each range to its end, moves to the next range, wraps
/// around, skips gateways, and stops on returning to where it started.
struct RangeIter<'a> {
    set: &'a RangeSet,
    range_index: usize,
    cur: Option<IpAddr>,
    start: Option<IpAddr>,
}

impl<'a> RangeIter<'a> {
    fn new(set: &'a RangeSet, last_reserved: Option<IpAddr>) -> RangeIter<'a> {
        let resume =
            last_reserved.and_then(|ip| set.0.iter().position(|r| r.contains(ip)).map(|i| (i, ip)));
        match resume {
            Some((range_index, ip)) => RangeIter {
                set,
                range_index,
                cur: Some(ip),
                start: None,
            },
            None => RangeIter {
                set,
                range_index: 0,
                cur: None,
                start: None,
            },
        }
    }

    /// Advances the cursor by one address; `None` once back at the start.
    fn step(&mut self) -> Option<IpAddr> {
        let range = &self.set.0[self.range_index];
        let ip = match self.cur {
            None => {
                self.cur = Some(range.range_start);
                self.start = self.cur;
                return self.cur;
            }
            Some(cur) if to_u128(cur) == to_u128(range.range_end) => {
                self.range_index = (self.range_index + 1) % self.set.0.len();
                self.set.0[self.range_index].range_start
            }
            Some(cur) => next(cur),
        };
        self.cur = Some(ip);
        match self.start {
            None => self.start = Some(ip),
            Some(start) if start == ip => return None,
            Some(_) => {}
        }
        Some(ip)
    }
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = (&'a Range, IpAddr);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let ip = self.step()?;
            let range = &self.set.0[self.range_index];
            if range.gateway != Some(ip) {
                return Some((range, ip));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(subnet: &str, start: &str, end: &str) -> Range {
        let opt = |s: &str| (!s.is_empty()).then(|| ip(s));
        Range::new(subnet.parse().unwrap(), opt(start), opt(end), None).unwrap()
    }

    fn walk(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        RangeIter::new(set, last.map(ip))
            .map(|(_, ip)| ip.to_string())
            .collect()
    }

    #[test]
    fn iter_from_start_skips_gateway() {
        let set = RangeSet(vec![range("10.0.0.0/29", "", "")]);
        assert_eq!(
            walk(&set, None),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
    }

    #[test]
    fn iter_resumes_after_last_and_wraps_across_ranges() {
        let set = RangeSet(vec![
            range("10.0.0.0/29", "10.0.0.4", ""),
            range("10.0.1.0/29", "", "10.0.1.3"),
        ]);
        assert_eq!(
            walk(&set, Some("10.0.0.5")),
            ["10.0.0.6", "10.0.1.2", "10.0.1.3", "10.0.0.4", "10.0.0.5"]
        );
        // The last reserved address ends the walk; a cursor outside the set restarts it.
        assert_eq!(walk(&set, Some("10.0.1.3")).first().unwrap(), "10.0.0.4");
        assert_eq!(walk(&set, Some("192.168.0.1")).first().unwrap(), "10.0.0.4");
    }

    #[test]
    fn iter_with_gateway_as_start_terminates() {
        let gw_only = Range::new(
            "10.0.0.0/30".parse().unwrap(),
            None,
            Some(ip("10.0.0.1")),
            None,
        )
        .unwrap();
        let set = RangeSet(vec![gw_only]);
        assert!(walk(&set, None).is_empty());
        assert!(walk(&set, Some("10.0.0.1")).is_empty());
    }
}
