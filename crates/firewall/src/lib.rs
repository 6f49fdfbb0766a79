//! IP masquerade for the bridge plugin's `ipMasq`, through nf_tables over an in-process NETLINK_NETFILTER
//! socket (no `nft` or `iptables` process).
//!
//! Semantics (as the reference bridge plugin): traffic from a pod address to a destination outside the pod's
//! subnet is masqueraded; multicast (224.0.0.0/4, ff00::/8) is exempt; IPv4 and IPv6.
//!
//! # Layout
//! One table per network, `inet trestle-<id>` (`<id>`: 12 hex digits of SHA-256 of the network name; the name
//! itself is the table's comment), holding:
//! - sets `pods4` / `pods6` of pod addresses; each element's userdata names its attachment
//!   (`<containerID>/<ifname>`, shown by `nft` as the comment) and records the pod's prefix length;
//! - one base chain per pod subnet, `masq-<subnet>` (nat, postrouting, srcnat), with one rule
//!   `ip saddr @pods4 ip saddr <subnet> ip daddr != <subnet> ip daddr != 224.0.0.0/4 masquerade`.
//!
//! Why this shape: a table per network makes the last removal one `delete table`, with no need to know what
//! other networks own; a chain per subnet makes adding a pod a blind, idempotent batch (create-if-missing, flush,
//! write the one rule) that needs no dump; the `saddr <subnet>` match keeps one subnet's rule from masquerading
//! pods of another subnet of the same network. Pods share the rules, so a pod costs one set element.
//!
//! # Transactions and concurrency
//! Every change is one netlink batch, which the kernel applies atomically. `add_pod` sends one batch and no
//! dump. `remove_pod` and `gc` dump the two pod sets, then send one batch. Operations of all processes are
//! serialised by an exclusive `flock` on a lock file, held around the dump and the batch, so a removal cannot
//! delete a table that a concurrent addition has just put a pod into.

mod attachment;
mod attr;
mod error;
mod names;
mod nft;
mod plan;
mod sock;

pub use attachment::Attachment;
pub use error::Error;
pub use names::network_id;

use ipnet::IpNet;
use names::{chain_name, table_name, Family, TABLE_PREFIX};
use nft::Element;
use sock::NfSocket;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One masqueraded pod address, as [`Firewall::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqEntry {
    /// The network id ([`network_id`] of its name).
    pub network_id: String,
    /// The network name, from the table comment (absent on kernels before 5.13, which drop table comments).
    pub network: Option<String>,
    /// The owning attachment; `None` for an element this crate did not write.
    pub attachment: Option<Attachment>,
    /// The pod address.
    pub addr: IpAddr,
    /// The pod subnet, if recorded.
    pub subnet: Option<IpNet>,
}

/// Masquerade management in one network namespace.
pub struct Firewall {
    sock: NfSocket,
    lock: File,
    lock_path: PathBuf,
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
        })
    }

    /// Masquerades the pod `att` of `network`: each of `addrs` (pod address with its subnet prefix) to
    /// destinations outside that subnet. Idempotent; an address still owned by a stale attachment is taken over.
    pub fn add_pod(
        &mut self,
        network: &str,
        att: &Attachment,
        addrs: &[IpNet],
    ) -> Result<(), Error> {
        att.validate()?;
        let msgs = plan::add_batch(network, &table_name(network), att, addrs);
        self.locked(|sock| sock.batch(&msgs))
    }

    /// Stops masquerading the pod `att` of `network` and returns the addresses it had. The network's chains,
    /// sets and table go with its last pod. Removing a pod that is not there succeeds with no addresses.
    pub fn remove_pod(&mut self, network: &str, att: &Attachment) -> Result<Vec<IpAddr>, Error> {
        let removed = self.remove_where(network, |e| e.att.as_ref() == Some(att))?;
        Ok(removed.into_iter().map(|e| e.addr).collect())
    }

    /// Succeeds if every address in `addrs` is masqueraded for `att`: its element exists with `att` as owner
    /// and its subnet chain exists. Otherwise [`Error::Missing`] names the first address that is not.
    pub fn check_pod(
        &mut self,
        network: &str,
        att: &Attachment,
        addrs: &[IpAddr],
    ) -> Result<(), Error> {
        let table = table_name(network);
        let elements = read_elements(&mut self.sock, &table)?.unwrap_or_default();
        for addr in addrs {
            let covered = match elements.iter().find(|e| e.addr == *addr) {
                Some(e) if e.att.as_ref() == Some(att) => match e.subnet() {
                    Some(subnet) => self
                        .sock
                        .get(&nft::get_chain(&table, &chain_name(subnet)))?
                        .is_some(),
                    None => false,
                },
                _ => false,
            };
            if !covered {
                return Err(Error::Missing {
                    attachment: att.clone(),
                    addr: *addr,
                });
            }
        }
        Ok(())
    }

    /// Removes the elements of every attachment of `network` that is not in `valid` (then cleans up as
    /// [`Firewall::remove_pod`] does) and returns what was removed. Elements this crate did not write are kept.
    pub fn gc(
        &mut self,
        network: &str,
        valid: &[Attachment],
    ) -> Result<Vec<(Attachment, IpAddr)>, Error> {
        let stale = |e: &Element| e.att.as_ref().is_some_and(|a| !valid.contains(a));
        let removed = self.remove_where(network, stale)?;
        Ok(removed
            .into_iter()
            .filter_map(|e| Some((e.att?, e.addr)))
            .collect())
    }

    /// Every masqueraded address of every network in this namespace.
    pub fn list(&mut self) -> Result<Vec<MasqEntry>, Error> {
        let mut out = Vec::new();
        for attrs in self.sock.dump(&nft::get_tables())? {
            let Some((table, network)) = nft::parse_table(&attrs) else {
                continue;
            };
            let Some(id) = table.strip_prefix(TABLE_PREFIX) else {
                continue;
            };
            for e in read_elements(&mut self.sock, &table)?.unwrap_or_default() {
                out.push(MasqEntry {
                    network_id: id.to_owned(),
                    network: network.clone(),
                    subnet: e.subnet(),
                    attachment: e.att,
                    addr: e.addr,
                });
            }
        }
        Ok(out)
    }

    fn remove_where(
        &mut self,
        network: &str,
        doomed: impl Fn(&Element) -> bool,
    ) -> Result<Vec<Element>, Error> {
        let table = table_name(network);
        self.locked(|sock| {
            let Some(existing) = read_elements(sock, &table)? else {
                return Ok(Vec::new());
            };
            let removal = plan::plan_removal(&existing, doomed);
            sock.batch(&plan::removal_batch(&table, &removal))?;
            log::debug!(
                "{table}: removed {} elements, {} chains, table dropped: {}",
                removal.doomed.len(),
                removal.chains.len(),
                removal.drop_table
            );
            Ok(removal.doomed)
        })
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

/// All elements of the network table's pod sets; `None` if the table does not exist.
fn read_elements(sock: &mut NfSocket, table: &str) -> Result<Option<Vec<Element>>, Error> {
    let mut found = None;
    for family in Family::ALL {
        match sock.dump(&nft::get_elems(table, family)) {
            Ok(objects) => found
                .get_or_insert_with(Vec::new)
                .extend(objects.iter().flat_map(|o| nft::parse_elems(o))),
            // No table, or a table with only the other family's set.
            Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}
