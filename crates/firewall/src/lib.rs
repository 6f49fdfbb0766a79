//! The bridge plugin's host firewall, through nf_tables over an in-process NETLINK_NETFILTER socket (no `nft` or
//! `iptables` process): IP masquerade for `ipMasq`, described here, and forward accept for `forwardAccept` (the
//! rules that let a network's traffic through an iptables `FORWARD` policy of `DROP`, as Docker leaves a host:
//! see [`Firewall::ensure_forward`] and the `forward` module; a legacy x_tables table, the one exception, is read
//! in-process and changed by one `iptables-legacy-restore` per network change).
//!
//! It also holds trestled's VXLAN guard, a table of its own (`inet trestle-vxlan`) that keeps the VXLAN between
//! nodes out of conntrack and drops VXLAN from anything but a node: see [`Firewall::sync_vxlan_guard`] and the
//! `vxlan` module, which documents its layout, updates and why it takes no lock.
//!
//! Semantics (as the reference bridge plugin): traffic from a pod subnet to a destination outside that subnet is
//! masqueraded; multicast (224.0.0.0/4, ff00::/8) is exempt; IPv4 and IPv6.
//!
//! # Layout
//! One table per network, `inet trestle-<id>` (`<id>`: 12 hex digits of SHA-256 of the network name; the name
//! itself is the table's comment), holding one base chain per pod subnet, `masq-<subnet>` (nat, postrouting,
//! srcnat; ':' written as '_'), with exactly one rule, shared by every pod of the subnet:
//! `meta nfproto ipv4 ip saddr <subnet> ip daddr != <subnet> ip daddr != 224.0.0.0/4 masquerade`
//! (IPv6: `ff00::/8`), commented `trestle <network> <subnet>`. Nothing in the ruleset is per pod.
//!
//! # Why no per-pod state
//! Every committed nf_tables transaction queues deferred destruction work, and when any NETLINK_NETFILTER socket
//! is released afterwards (every plugin process exits) the kernel flushes that work, waiting an RCU grace period
//! (~7 ms measured) while holding the namespace's nftables `commit_mutex`; nf_tables' netdev notifier takes the
//! same mutex under rtnl, so the next pod's veth creation stalled 5-12 ms. Per-pod set elements made every ADD
//! and DEL commit, costing ~10 ms per ADD under load; with per-subnet rules the steady state commits nothing.
//!
//! # Operations and concurrency
//! - [`Firewall::ensure`] (ADD): a `get` per subnet chain; only a missing chain costs a transaction, one batch
//!   creating table, chain and rule together. It never looks inside an existing chain, so a chain whose rule was
//!   deleted by hand stays broken: [`Firewall::check`] (CHECK) reports it.
//! - [`Firewall::remove_if_unused`] (DEL): deletes the network's table once its caller sees no pod left.
//! - [`Firewall::remove`] (GC of a network without valid attachments) and [`Firewall::list`].
//!
//! `ensure`, `remove_if_unused` and `remove` of all processes are serialised by an exclusive `flock` on a lock
//! file, normally [`LOCK_PATH`]. A DEL decides "unused" (its `in_use` callback, typically looking at the bridge's
//! ports) and deletes the table under that lock, so an ADD that attached its pod before calling `ensure` either
//! sees the table deleted and recreates it, or is seen as a user and keeps it.
//!
//! # Backends
//! The bridge plugin reaches these operations through the object-safe [`Backend`] trait, so a config's
//! `ipMasqBackend` can select another implementation: [`open_backend`] opens the one a [`BackendKind`] names.
//! `"nftables"` and `"iptables"` select [`Firewall`] (on every supported kernel iptables is nf_tables
//! underneath); `"none"` selects [`NoneBackend`], which installs nothing, for hosts whose firewall is managed by
//! someone else. [`Firewall`] keeps its inherent methods (with a generic `in_use`) and [`Firewall::list`].
//!
//! # Wire format
//! The netlink messages are built by pure functions, separate from the socket, and `tests/golden/*.hex` holds
//! the exact bytes of every request kind (`ensure`'s batch for an IPv4, an IPv6 and two subnets, `remove`'s
//! batch, the get and dump requests, and the VXLAN guard's batches and requests in `vxlan-*.hex`); `src/golden.rs`
//! compares, decodes them back to the nft text above (and to the guard's documented layout), and says how they
//! were validated against the kernel. `TRESTLE_BLESS=1 cargo test -p trestle-firewall golden` rewrites them after
//! an intended change.

mod attr;
mod backend;
mod error;
mod forward;
// The fixtures hold netlink headers in host byte order, as they were written on a little-endian host.
#[cfg(all(test, target_endian = "little"))]
mod golden;
mod names;
mod nf;
mod nft;
mod none;
mod sock;
mod vxlan;

pub use backend::{open_backend, Backend, BackendKind};
pub use error::{Error, UnknownBackend};
pub use forward::{ForeignChain, ForwardState};
pub use names::network_id;
pub use none::NoneBackend;
pub use vxlan::{VxlanDrops, VxlanPeers};

use ipnet::IpNet;
use names::{chain_name, distinct_subnets, parse_chain_name, table_name, TABLE_PREFIX};
use sock::NfSocket;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock file serialising [`Firewall::ensure`], [`Firewall::remove_if_unused`] and [`Firewall::remove`] of
/// every plugin process on the host; pass it to [`Firewall::open`] or [`open_backend`].
///
/// A file lock because the plugin is a short-lived process per ADD/DEL with no daemon to arbitrate: an `flock`
/// needs no cooperation beyond opening the same path, and the kernel releases it when its holder exits, so a
/// killed plugin cannot leave the lock stuck. Under `/run` because it is a tmpfs emptied at boot, like the
/// nf_tables ruleset it guards, so nothing stale survives a reboot, and it is the host-wide runtime directory
/// that every runtime's plugin invocation sees (a private mount namespace over `/run`, as the demo uses, gets a
/// private lock with it).
pub const LOCK_PATH: &str = "/run/trestle/firewall.lock";

/// One masqueraded subnet, as [`Firewall::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqEntry {
    /// The network id ([`network_id`] of its name).
    pub network_id: String,
    /// The network name, from the table comment (absent on kernels before 5.13, which drop table comments, and
    /// for names longer than nft's comment limit).
    pub network: Option<String>,
    /// The masqueraded subnet (from its chain's name).
    pub subnet: IpNet,
}

/// Masquerade management in one network namespace.
pub struct Firewall {
    sock: NfSocket,
    lock: File,
    lock_path: PathBuf,
    /// The namespace the socket was opened in: legacy x_tables are reached through the calling thread's
    /// namespace (a raw socket, `/proc/thread-self/net`, a child process), so they are read and changed in this
    /// one whatever thread calls.
    netns: std::sync::Arc<File>,
}

impl Firewall {
    /// Opens a netfilter netlink socket in the calling thread's network namespace (the socket stays bound to it)
    /// and the lock file at `lock_path`, creating it and its directory if needed.
    pub fn open(lock_path: &Path) -> Result<Firewall, Error> {
        let lock_err = |source| Error::Lock {
            path: lock_path.to_owned(),
            source,
        };
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(lock_err)?;
        }
        let lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path)
            .map_err(lock_err)?;
        Ok(Firewall {
            sock: NfSocket::open()?,
            lock,
            lock_path: lock_path.to_owned(),
            netns: std::sync::Arc::new(File::open("/proc/thread-self/ns/net").map_err(Error::Io)?),
        })
    }

    /// Ensures each of `subnets` (host bits are ignored) of `network` is masqueraded. Under the lock, one chain
    /// `get` per subnet; only if a chain is missing, one batch creating the table (if missing), the missing chains
    /// and their rules. When every chain exists, nothing is committed. An existing chain is trusted to hold its
    /// rule (chain and rule are only ever created together); [`Firewall::check`] verifies the rule.
    ///
    /// Call it after the pod is visible to the `in_use` of a concurrent [`Firewall::remove_if_unused`].
    pub fn ensure(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), Error> {
        let subnets = distinct_subnets(subnets);
        if subnets.is_empty() {
            return Ok(());
        }
        let table = table_name(network);
        self.locked(|sock| {
            let mut missing = Vec::new();
            for subnet in subnets {
                if sock
                    .get(&nft::get_chain(&table, &chain_name(subnet)))?
                    .is_none()
                {
                    missing.push(subnet);
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            log::debug!("{table}: creating masquerade for {missing:?}");
            sock.batch(&nft::ensure_msgs(&table, network, &missing))
        })
    }

    /// Under the lock: unless `network` has no table, calls `in_use()` and, when it returns false, deletes the
    /// network's table in one batch. Returns whether a table was deleted. `in_use` is not called when there is no
    /// table to delete.
    pub fn remove_if_unused(
        &mut self,
        network: &str,
        in_use: impl FnOnce() -> bool,
    ) -> Result<bool, Error> {
        let table = table_name(network);
        self.locked(|sock| {
            if sock.get(&nft::get_table(&table))?.is_none() || in_use() {
                return Ok(false);
            }
            delete_table(sock, &table)
        })
    }

    /// Deletes `network`'s table, if there is one (for GC when no attachment of the network is valid). Returns
    /// whether a table was deleted.
    pub fn remove(&mut self, network: &str) -> Result<bool, Error> {
        self.remove_if_unused(network, || false)
    }

    /// Succeeds if every subnet of `subnets` (host bits are ignored) has its chain holding its masquerade rule;
    /// otherwise [`Error::Missing`] names the first subnet that has not. Read-only, so it takes no lock.
    pub fn check(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), Error> {
        let table = table_name(network);
        for subnet in distinct_subnets(subnets) {
            let chain = chain_name(subnet);
            let rules = match self.sock.dump(&nft::get_rules(&table, &chain)) {
                Ok(rules) => rules,
                Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => Vec::new(),
                Err(e) => return Err(e),
            };
            if !rules
                .iter()
                .any(|r| nft::is_masq_rule(r, &table, &chain, network, subnet))
            {
                return Err(Error::Missing {
                    network: network.to_owned(),
                    subnet,
                });
            }
        }
        Ok(())
    }

    /// Every masqueraded subnet of every trestle network in this namespace: the subnet chains of the tables named
    /// `trestle-<id>`.
    pub fn list(&mut self) -> Result<Vec<MasqEntry>, Error> {
        let mut tables = BTreeMap::new();
        for attrs in self.sock.dump(&nft::get_tables())? {
            if let Some((table, network)) = nft::parse_table(&attrs) {
                if let Some(id) = table.strip_prefix(TABLE_PREFIX) {
                    tables.insert(table.clone(), (id.to_owned(), network));
                }
            }
        }
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for attrs in self.sock.dump(&nft::get_chains())? {
            let Some((table, chain)) = nft::parse_chain(&attrs) else {
                continue;
            };
            if let (Some((id, network)), Some(subnet)) =
                (tables.get(&table), parse_chain_name(&chain))
            {
                out.push(MasqEntry {
                    network_id: id.clone(),
                    network: network.clone(),
                    subnet,
                });
            }
        }
        Ok(out)
    }

    /// The namespace's nf_tables ruleset generation, which every committed transaction increments. It shows
    /// whether an operation committed anything.
    pub fn generation(&mut self) -> Result<u32, Error> {
        let reply = self.sock.get(&nft::get_gen())?;
        reply
            .as_deref()
            .and_then(nft::parse_gen)
            .ok_or(Error::Protocol("no generation id"))
    }

    /// Runs `f` holding the lock file's exclusive lock.
    fn locked<R>(&mut self, f: impl FnOnce(&mut NfSocket) -> Result<R, Error>) -> Result<R, Error> {
        let lock_err = |source| Error::Lock {
            path: self.lock_path.clone(),
            source,
        };
        self.lock.lock().map_err(lock_err)?;
        let result = f(&mut self.sock);
        // Closing the file would release the lock too; unlocking now lets the next process in without waiting
        // for this handle to be dropped.
        let unlocked = self.lock.unlock().map_err(lock_err);
        let value = result?;
        unlocked?;
        Ok(value)
    }
}

/// Deletes `table`; `false` if it was already gone (deleted by someone not taking the lock).
fn delete_table(sock: &mut NfSocket, table: &str) -> Result<bool, Error> {
    match sock.batch(&[nft::del_table(table)]) {
        Ok(()) => {
            log::debug!("{table}: deleted");
            Ok(true)
        }
        Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}
