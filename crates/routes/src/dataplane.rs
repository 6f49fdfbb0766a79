//! The thread that keeps the kernel as the plan says. It owns one netlink socket and wakes for
//! a new state of the cluster, for a kernel change that may have undone its work (a route of
//! its protocol deleted, a link going down or up, an address changing, notifications lost),
//! and every `resync` in any case. A full pass reads what trestle holds in the kernel and applies
//! the difference; a change of the cluster alone, on a kernel that holds what the last pass
//! applied, writes only the difference between the two plans (an incremental pass). It does
//! nothing at all before the first whole state of the cluster: an entry of a previous run stays
//! until the cluster is known not to want it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use trestle_netlink::{Event, Link, Monitor, Netlink, VxlanInfo, VxlanSpec};

use crate::cluster::Cluster;
use crate::diff::{diff, Held, Links, Op, Wanted, ROUTE_PROTO};
use crate::host::HostRecord;
use crate::plan::{Me, Mode, Plan};
use crate::Error;

/// `IPV4_DEVCONF_PROXY_ARP` (`linux/ip.h`).
const DEVCONF_PROXY_ARP: u16 = 3;
/// `IPV4_DEVCONF_RP_FILTER`.
const DEVCONF_RP_FILTER: u16 = 8;
const TABLE_MAIN: u32 = 254;

/// The VXLAN device's settings.
#[derive(Debug, Clone)]
pub struct VxlanSettings {
    /// Its name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Turn its transmit checksum offload off (see [`crate::offload`]).
    pub checksum_off: bool,
    /// Keep VXLAN out of conntrack and accept it only from the nodes (trestle-firewall's VXLAN guard).
    pub guard: bool,
}

/// What the router does, for metrics and operators.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// The etcd revision the kernel was last brought to.
    pub applied_revision: AtomicI64,
    /// Wall clock of that, ms.
    pub applied_ms: AtomicI64,
    /// Routes, neighbour and FDB entries trestle holds in the kernel now.
    pub routes: AtomicU64,
    /// Neighbour entries.
    pub neighbours: AtomicU64,
    /// FDB entries.
    pub fdb: AtomicU64,
    /// Changes applied to the kernel.
    pub changes: AtomicU64,
    /// Changes that put back an entry trestle had made and someone removed.
    pub repairs: AtomicU64,
    /// Changes the kernel refused.
    pub errors: AtomicU64,
    /// Changes the kernel refused in the last pass.
    pub failing: AtomicU64,
    /// Passes that read the kernel back (the first, on kernel changes, periodic, after a failure).
    pub full_passes: AtomicU64,
    /// Passes that applied a change of the cluster from what the last pass left, reading nothing.
    pub incremental_passes: AtomicU64,
    /// VXLAN packets dropped for coming from no node (since the guard's table was made).
    pub vxlan_drops: AtomicU64,
    /// The last plan: peers and how they are reached, and those that cannot be.
    pub plan: Mutex<Option<Arc<Plan>>>,
}

impl RouteStats {
    /// The last plan, if one was applied.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A reason to look at the kernel again.
#[derive(Debug)]
pub enum Wake {
    /// A new state of the cluster.
    Cluster(Arc<Cluster>),
    /// Something changed in the kernel.
    Kernel,
    /// Stop.
    Stop,
}

/// The dataplane's fixed inputs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub name: String,
    /// This node's host record (its underlay).
    pub host: HostRecord,
    /// The mode.
    pub mode: Mode,
    /// The VXLAN device.
    pub vxlan: VxlanSettings,
    /// How often the kernel is read again without a reason.
    pub resync: Duration,
    /// How the underlay was chosen, to read it again when interfaces change.
    pub underlay: crate::UnderlayChoice,
    /// Where a changed host record goes (the task that publishes it).
    pub host_tx: tokio::sync::watch::Sender<HostRecord>,
}

struct Dataplane {
    nl: Netlink,
    s: Settings,
    stats: Arc<RouteStats>,
    /// What was applied last: an entry of it missing later was removed by someone else.
    last: Wanted,
    /// Links whose ARP proxying is set.
    proxied: BTreeSet<u32>,
    unreachable: BTreeSet<String>,
    /// Whether a state of the cluster has been applied since the start.
    synced: bool,
    /// The VXLAN device whose checksum offload was turned off.
    offload_off: Option<u32>,
    /// The netfilter socket of the VXLAN guard, opened at its first use.
    firewall: Option<trestle_firewall::Firewall>,
    /// The peers the guard was last brought to.
    guarded: Option<trestle_firewall::VxlanPeers>,
    /// What the last pass found of the interfaces, and for which plan: an incremental pass
    /// reuses them while they fit.
    links: Option<(Links, Vec<IpNet>, Option<u32>)>,
    /// The kernel is as `last` says: the last pass had every change accepted, and no kernel
    /// notification came since (which would make the next pass a full one anyway).
    trusted: bool,
}

/// Runs the dataplane on this thread until [`Wake::Stop`] (or every sender is gone).
pub fn run(s: Settings, wakes: Receiver<Wake>, stats: Arc<RouteStats>) -> Result<(), Error> {
    let mut d = Dataplane {
        nl: Netlink::open()?,
        s,
        stats,
        last: Wanted::default(),
        proxied: BTreeSet::new(),
        unreachable: BTreeSet::new(),
        synced: false,
        offload_off: None,
        firewall: None,
        guarded: None,
        links: None,
        trusted: false,
    };
    let mut cluster: Option<Arc<Cluster>> = None;
    loop {
        let first = match wakes.recv_timeout(d.s.resync) {
            Ok(w) => Some(w),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // Everything already queued is one reason to look. Only a kernel change or the periodic pass
        // reads the underlay and the guard again: a change of the cluster alone cannot move them.
        let mut kernel = first.is_none();
        for w in first.into_iter().chain(wakes.try_iter()) {
            match w {
                Wake::Cluster(c) => cluster = Some(c),
                Wake::Kernel => kernel = true,
                Wake::Stop => return Ok(()),
            }
        }
        if let Some(c) = &cluster {
            let full = kernel || !d.synced;
            if let Err(e) = d.reconcile(c, full) {
                d.stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("routes: cannot read the kernel's state: {e}");
            }
        }
    }
}

/// Forwards the kernel's notifications that may call for a look, until the receiver is gone.
/// The monitor is opened by the caller, in the namespace to watch.
pub fn watch_kernel(mut monitor: Monitor, wakes: Sender<Wake>) {
    loop {
        let wake = match monitor.recv() {
            Ok(Event::Route { route, deleted }) => deleted && route.protocol == ROUTE_PROTO,
            Ok(Event::Neighbour { deleted, .. } | Event::Fdb { deleted, .. }) => deleted,
            Ok(Event::Link { .. } | Event::Address { .. } | Event::Overrun) => true,
            Ok(Event::Other { .. }) => false,
            Err(e) => {
                log::warn!("routes: kernel notifications failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                true
            }
        };
        if wake && wakes.send(Wake::Kernel).is_err() {
            return;
        }
    }
}

impl Dataplane {
    /// Reads the underlay again: an address or MTU that changed goes into the host record (and to
    /// etcd). A family whose address is gone for now keeps its record: a flapping uplink must not
    /// withdraw this node's routes everywhere; a restart drops it.
    fn redetect(&mut self) {
        let Ok((v4, v6)) = crate::underlay::detect(&mut self.nl, &self.s.underlay) else {
            return;
        };
        let mut host = self.s.host.clone();
        for (slot, new) in [(&mut host.v4, v4), (&mut host.v6, v6)] {
            if new.is_some() {
                *slot = new;
            }
        }
        if host != self.s.host {
            log::info!(
                "routes: the underlay changed: {:?} {:?} (was {:?} {:?})",
                host.v4,
                host.v6,
                self.s.host.v4,
                self.s.host.v6
            );
            self.s.host = host.clone();
            self.s.host_tx.send_replace(host);
        }
    }

    /// One pass; `full` also reads the underlay again and checks the guard's table.
    fn reconcile(&mut self, cluster: &Cluster, full: bool) -> Result<(), Error> {
        if full {
            self.redetect();
        }
        let me = Me {
            name: &self.s.name,
            host: &self.s.host,
            mode: self.s.mode,
        };
        let plan = Plan::new(&me, cluster);
        self.report(&plan);
        // A change of the cluster alone, on a kernel known to hold what the last pass applied:
        // only the difference between the two plans is written, and nothing is read back (a
        // dump of the kernel is O(cluster) per change). Kernel notifications, the periodic pass
        // and any refused change bring back a full pass.
        let cached = match &self.links {
            Some((l, pools, mtu))
                if !full
                    && self.trusted
                    && *pools == plan.pools
                    && *mtu == plan.vxlan_mtu
                    && (plan.tunnels.is_empty() || l.vxlan.is_some()) =>
            {
                Some(l.clone())
            }
            _ => None,
        };
        // Until this pass has applied everything, the kernel is not known to be as `last` says.
        self.trusted = false;
        let (links, held) = match cached {
            Some(links) => {
                let held = Held::assumed(&self.last, links.vxlan);
                self.stats
                    .incremental_passes
                    .fetch_add(1, Ordering::Relaxed);
                (links, held)
            }
            None => {
                let links = self.links(&plan)?;
                let held = self.held(links.vxlan)?;
                self.stats.full_passes.fetch_add(1, Ordering::Relaxed);
                (links, held)
            }
        };
        let want = Wanted::new(&plan, &links);
        let ops = diff(&want, &held);
        let changes = ops.len();
        let mut failing = 0;
        for op in ops {
            failing += u64::from(!self.apply(op, links.vxlan));
        }
        self.trusted = failing == 0;
        failing += u64::from(!self.guard(cluster, full));
        self.stats.failing.store(failing, Ordering::Relaxed);
        self.links = Some((links, plan.pools.clone(), plan.vxlan_mtu));
        if !self.synced {
            self.synced = true;
            log::info!(
                "routes: first sync at etcd revision {}: {} routes, {} neighbour and {} FDB entries ({changes} changes)",
                cluster.revision,
                want.routes.len(),
                want.neighbours.len(),
                want.fdb.len()
            );
        }
        self.stats
            .applied_revision
            .store(cluster.revision, Ordering::Relaxed);
        self.stats.applied_ms.store(now_ms(), Ordering::Relaxed);
        self.stats
            .routes
            .store(want.routes.len() as u64, Ordering::Relaxed);
        self.stats
            .neighbours
            .store(want.neighbours.len() as u64, Ordering::Relaxed);
        self.stats
            .fdb
            .store(want.fdb.len() as u64, Ordering::Relaxed);
        *self.stats.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(plan));
        self.last = want;
        Ok(())
    }

    /// The interfaces the plan's entries go on, read from the kernel; the VXLAN device made or
    /// adopted when the plan has tunnels, the pools' bridges found (and ARP-proxying).
    fn links(&mut self, plan: &Plan) -> Result<Links, Error> {
        let all = self.nl.links()?;
        let mut links = Links {
            underlay_v4: index_of(&all, self.s.host.v4.as_ref().map(|u| &u.interface)),
            underlay_v6: index_of(&all, self.s.host.v6.as_ref().map(|u| &u.interface)),
            vxlan: None,
            pool_links: BTreeMap::new(),
        };
        if !plan.tunnels.is_empty() {
            links.vxlan = self.vxlan(&all, &links, plan.vxlan_mtu);
        } else {
            links.vxlan = all
                .iter()
                .find(|l| l.name == self.s.vxlan.name)
                .map(|l| l.index);
        }
        links.pool_links = self.pool_links(&plan.pools, links.vxlan)?;
        Ok(links)
    }

    /// Brings the VXLAN guard to the cluster's nodes (removes it with `--routing direct`, where no
    /// VXLAN runs); false when that failed.
    fn guard(&mut self, cluster: &Cluster, full: bool) -> bool {
        if !self.s.vxlan.guard {
            return true;
        }
        let peers = self.peers(cluster);
        // The table is read back (and repaired) on kernel changes and periodic passes; otherwise
        // only a change of the nodes' addresses is worth a look.
        if !full && self.guarded.as_ref() == Some(&peers) {
            return true;
        }
        if self.firewall.is_none() {
            match trestle_firewall::Firewall::open(std::path::Path::new(
                trestle_firewall::LOCK_PATH,
            )) {
                Ok(f) => self.firewall = Some(f),
                Err(e) => {
                    log::warn!("routes: VXLAN guard: {e}");
                    return false;
                }
            }
        }
        let fw = self.firewall.as_mut().expect("opened above");
        let r = if self.s.mode == Mode::Direct {
            fw.remove_vxlan_guard().map(drop)
        } else {
            fw.sync_vxlan_guard(&peers)
                .and_then(|_| fw.vxlan_guard_drops())
                .map(|d| {
                    let packets = d.map_or(0, |d| d.packets);
                    self.stats.vxlan_drops.store(packets, Ordering::Relaxed);
                })
        };
        match r {
            Ok(()) => {
                self.guarded = Some(peers);
                true
            }
            Err(e) => {
                self.guarded = None;
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("routes: VXLAN guard: {e}");
                // A socket in a bad state is opened again next time.
                self.firewall = None;
                false
            }
        }
    }

    /// The nodes VXLAN may come from: every host record's VXLAN underlay.
    fn peers(&self, cluster: &Cluster) -> trestle_firewall::VxlanPeers {
        let mut peers = trestle_firewall::VxlanPeers {
            port: self.s.vxlan.port,
            ..Default::default()
        };
        for u in cluster.hosts.values().filter_map(|h| h.vxlan_underlay()) {
            match u.ip() {
                std::net::IpAddr::V4(a) => peers.v4.push(a),
                std::net::IpAddr::V6(a) => peers.v6.push(a),
            }
        }
        peers
    }

    /// Logs each peer that becomes unreachable once, and when it is reachable again.
    fn report(&mut self, plan: &Plan) {
        let now: BTreeSet<String> = plan.unreachable.iter().map(|u| u.node.clone()).collect();
        for u in &plan.unreachable {
            if !self.unreachable.contains(&u.node) {
                log::warn!("routes: node {} cannot be reached: {}", u.node, u.why);
            }
        }
        for n in self.unreachable.difference(&now) {
            log::info!("routes: node {n} is reachable again (or gone)");
        }
        self.unreachable = now;
    }

    fn held(&mut self, vxlan: Option<u32>) -> Result<Held, Error> {
        let routes = self
            .nl
            .routes(None)?
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTO && r.table == TABLE_MAIN)
            .collect();
        let (neighbours, fdb) = match vxlan {
            Some(i) => (self.nl.neighbours(None, Some(i))?, self.nl.fdb(i)?),
            None => (Vec::new(), Vec::new()),
        };
        Ok(Held {
            routes,
            neighbours,
            fdb,
        })
    }

    /// Applies one change; false when the kernel refused it.
    fn apply(&mut self, op: Op, vxlan: Option<u32>) -> bool {
        let repair = match &op {
            Op::SetRoute(r) => self
                .last
                .routes
                .get(&(r.dst, r.priority.unwrap_or(0)))
                .is_some_and(|l| l == r),
            Op::SetNeighbour(ip, mac) => self.last.neighbours.get(ip) == Some(mac),
            Op::SetFdb(mac, dst) => self.last.fdb.get(mac) == Some(dst),
            _ => false,
        };
        let vx = vxlan.unwrap_or(0);
        let r = match &op {
            Op::SetFdb(mac, dst) => self.nl.replace_fdb(vx, *mac, *dst),
            Op::SetNeighbour(ip, mac) => self.nl.replace_neighbour(vx, *ip, *mac),
            Op::SetRoute(r) => self.nl.replace_route(r),
            Op::DelRoute(r) => self.nl.del_route(r),
            Op::DelNeighbour(ip) => self.nl.del_neighbour(vx, *ip),
            Op::DelFdb(mac, dst) => self.nl.del_fdb(vx, *mac, *dst),
        };
        match r {
            Ok(()) | Err(trestle_netlink::Error::NotFound) => {
                self.stats.changes.fetch_add(1, Ordering::Relaxed);
                if repair {
                    self.stats.repairs.fetch_add(1, Ordering::Relaxed);
                    log::info!("routes: put back {op:?} (removed by someone else)");
                }
                true
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("routes: {op:?}: {e}");
                false
            }
        }
    }

    /// The VXLAN device, made or adopted as the settings want it, up, with the cluster's MTU.
    fn vxlan(&mut self, all: &[Link], links: &Links, mtu: Option<u32>) -> Option<u32> {
        let u = self.s.host.vxlan_underlay()?;
        let underlay = if u.ip().is_ipv4() {
            links.underlay_v4
        } else {
            links.underlay_v6
        };
        let spec = VxlanSpec {
            name: self.s.vxlan.name.clone(),
            vni: self.s.vxlan.vni,
            port: self.s.vxlan.port,
            local: Some(u.ip()),
            underlay,
            learning: false,
            mtu,
            mac: self.s.host.mac(),
        };
        match self.ensure_vxlan(all, &spec) {
            Ok(i) => Some(i),
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("routes: VXLAN device {}: {e}", spec.name);
                None
            }
        }
    }

    fn ensure_vxlan(&mut self, all: &[Link], spec: &VxlanSpec) -> Result<u32, Error> {
        let existing = all.iter().find(|l| l.name == spec.name);
        let index = match existing {
            Some(l) if self.nl.vxlan_info(l.index)? == Some(VxlanInfo::from(spec)) => {
                if spec.mtu.is_some_and(|m| m != l.mtu) {
                    self.nl.set_mtu(l.index, spec.mtu.unwrap_or(l.mtu))?;
                }
                if spec.mac.is_some_and(|m| Some(m) != l.mac) {
                    self.nl.set_mac(l.index, spec.mac.unwrap_or_default())?;
                }
                l.index
            }
            Some(l) => {
                log::info!(
                    "routes: VXLAN device {} has other settings: made again",
                    l.name
                );
                self.nl.delete_link(l.index)?;
                self.nl.create_vxlan(spec)?
            }
            None => self.nl.create_vxlan(spec)?,
        };
        if self.s.vxlan.checksum_off && self.offload_off != Some(index) {
            match crate::offload::tx_checksum_off(&spec.name) {
                Ok(()) => {
                    log::info!("routes: transmit checksum offload of {} off", spec.name);
                    self.offload_off = Some(index);
                }
                Err(e) => log::warn!(
                    "routes: cannot turn checksum offload of {} off: {e}",
                    spec.name
                ),
            }
        }
        if !existing.is_some_and(|l| l.up) {
            self.nl.set_up(index, true)?;
            // Replies from a peer come back on this device, and the underlay's reverse path is
            // another: strict reverse-path filtering would drop them.
            self.nl.set_ipv4_conf(index, &[(DEVCONF_RP_FILTER, 0)])?;
        }
        Ok(index)
    }

    /// Per pool, the local interface holding one of its addresses (the bridge of its pods);
    /// IPv4 ones answer ARP for the pool's other addresses (pods reach other nodes' pods as if
    /// on one segment), at once.
    fn pool_links(
        &mut self,
        pools: &[IpNet],
        vxlan: Option<u32>,
    ) -> Result<BTreeMap<IpNet, u32>, Error> {
        let addrs = self.nl.addresses(None)?;
        let mut out = BTreeMap::new();
        for pool in pools {
            let Some(a) = addrs.iter().find(|a| {
                Some(a.index) != vxlan && a.scope == 0 && pool.contains(&a.address.addr())
            }) else {
                continue;
            };
            out.insert(*pool, a.index);
            if pool.addr().is_ipv4() && !self.proxied.contains(&a.index) {
                self.proxy_arp(a.index);
            }
        }
        Ok(out)
    }

    fn proxy_arp(&mut self, index: u32) {
        let name = match self.nl.link_by_index(index) {
            Ok(Some(l)) => l.name,
            _ => return,
        };
        let r = self
            .nl
            .set_ipv4_conf(index, &[(DEVCONF_PROXY_ARP, 1)])
            .map_err(Error::from)
            // Proxied answers are otherwise delayed by up to 0.8 s (proxy_delay), at random.
            .and_then(|()| {
                trestle_netlink::sysctl::set(&format!("net/ipv4/neigh/{name}/proxy_delay"), "0")
                    .map_err(Error::Sysctl)
            });
        match r {
            Ok(()) => {
                self.proxied.insert(index);
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("routes: ARP proxy on {name}: {e}");
            }
        }
    }
}

fn index_of(links: &[Link], name: Option<&String>) -> Option<u32> {
    let name = name?;
    links.iter().find(|l| &l.name == name).map(|l| l.index)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
