//! Forward accept: trestle's networks' traffic passes a host `FORWARD` policy of `DROP` (what Docker sets, with
//! `br_netfilter` sending bridged frames through it too). The rules and their layout are in [`rules`]; they go into
//! the iptables `filter` table of whichever backend holds one whose `FORWARD` drops: nf_tables as iptables-nft
//! writes it ([`nft`]), legacy x_tables ([`legacy`]), or both. A plain nftables chain that drops forwarded
//! packets in a table of someone else's is reported, never edited.
//!
//! Rules are per network and subnet, never per pod: added by the first ADD that needs them, removed by the DEL
//! of the network's last attachment (or GC), under the same lock as the masquerade, with the same "in use"
//! protocol (see [`Firewall::remove_if_unused`]). An ADD or DEL in a namespace without any `filter` table costs
//! one netlink request (a dump of every chain) and one read of `/proc/thread-self/net/ip_tables_names` per
//! family, and takes no lock; where there are tables, an ADD that finds everything in place only reads.

mod chains;
pub(crate) mod legacy;
pub(crate) mod nft;
pub(crate) mod rules;

use self::rules::{first_missing, plan_ensure, plan_remove, wanted, Op, View};
use crate::names::{distinct_subnets, Family};
use crate::sock::NfSocket;
use crate::{Error, Firewall};
use ipnet::IpNet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

pub use self::chains::ForeignChain;

/// How often an nf_tables change is planned again when the table changed under it (another program's write).
const ATTEMPTS: usize = 3;

impl Firewall {
    /// ADD: makes sure the traffic of each of `subnets` (host bits ignored) of `network` passes every iptables
    /// `filter` table whose `FORWARD` drops, adding only what is missing (nothing is committed when all is in
    /// place). Returns the forward chains of other nftables tables that drop by policy, for the caller to report.
    ///
    /// Call it after the pod is visible to the `in_use` of a concurrent [`Firewall::remove_forward_if_unused`].
    pub fn ensure_forward(
        &mut self,
        network: &str,
        subnets: &[IpNet],
    ) -> Result<Vec<ForeignChain>, Error> {
        let subnets = distinct_subnets(subnets);
        if subnets.is_empty() {
            return Ok(Vec::new());
        }
        let families: Vec<Family> = [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| !of_family(&subnets, *f).is_empty())
            .collect();
        // Where no filter table of the subnets' families exists there is nothing to add, and nothing a concurrent
        // DEL could take away: no lock, one request (the common case of a host without iptables).
        let chains = chains::chains(&mut self.sock)?;
        if !self.any_filter(&chains, &families)? {
            return Ok(chains.foreign_drops());
        }
        let netns = self.netns.clone();
        self.locked_with_fd(|sock, lock| {
            let chains = chains::chains(sock)?;
            for family in families {
                let want = wanted(network, &of_family(&subnets, family));
                if want.is_empty() {
                    continue;
                }
                if chains.relevant(family) {
                    change_nft(sock, family, &chains, |view| plan_ensure(view, &want))?;
                }
                in_netns(&netns, || match legacy::read(family)? {
                    Some(view) => legacy::apply(family, &plan_ensure(&view, &want), lock),
                    None => Ok(()),
                })??;
            }
            Ok(chains.foreign_drops())
        })
    }

    /// DEL: under the lock, unless nothing of `network` is in any `filter` table, calls `in_use()` and, when it
    /// returns false, deletes the network's rules (and the chain and its jump with the last network's). Returns
    /// whether anything was deleted. `in_use` is not called when there is nothing to delete.
    pub fn remove_forward_if_unused(
        &mut self,
        network: &str,
        in_use: impl FnOnce() -> bool,
    ) -> Result<bool, Error> {
        let both = [Family::V4, Family::V6];
        let chains = chains::chains(&mut self.sock)?;
        if !self.any_filter(&chains, &both)? {
            return Ok(false);
        }
        let netns = self.netns.clone();
        self.locked_with_fd(|sock, lock| {
            let chains = chains::chains(sock)?;
            let mut nft_families = Vec::new();
            let mut legacy_ops = Vec::new();
            for family in [Family::V4, Family::V6] {
                if !chains.relevant(family) {
                    continue;
                }
                if let Some(view) = nft::read(sock, family, &chains)? {
                    if !plan_remove(&view, network).is_empty() {
                        nft_families.push(family);
                    }
                }
            }
            for family in [Family::V4, Family::V6] {
                if let Some(view) = in_netns(&netns, || legacy::read(family))?? {
                    let ops = plan_remove(&view, network);
                    if !ops.is_empty() {
                        legacy_ops.push((family, ops));
                    }
                }
            }
            if (nft_families.is_empty() && legacy_ops.is_empty()) || in_use() {
                return Ok(false);
            }
            for family in nft_families {
                change_nft(sock, family, &chains, |view| plan_remove(view, network))?;
            }
            for (family, ops) in legacy_ops {
                in_netns(&netns, || legacy::apply(family, &ops, lock))??;
            }
            log::debug!("forward accept of {network}: removed");
            Ok(true)
        })
    }

    /// GC of a network without valid attachments: deletes its forward rules, if any. Returns whether anything
    /// was deleted.
    pub fn remove_forward(&mut self, network: &str) -> Result<bool, Error> {
        self.remove_forward_if_unused(network, || false)
    }

    /// CHECK: succeeds if every `filter` table whose `FORWARD` drops lets each of `subnets` (host bits ignored)
    /// of `network` through, and no other nftables table drops forwarded packets by policy;
    /// [`Error::ForwardMissing`] or [`Error::ForeignDrop`] otherwise. Read-only, so it takes no lock.
    pub fn check_forward(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), Error> {
        let subnets = distinct_subnets(subnets);
        let chains = chains::chains(&mut self.sock)?;
        for family in [Family::V4, Family::V6] {
            let want = wanted(network, &of_family(&subnets, family));
            let missing = |backend| {
                move |rule: &rules::Rule| Error::ForwardMissing {
                    network: network.to_owned(),
                    subnet: rule.subnet,
                    backend,
                }
            };
            if let Some(view) = nft::read(&mut self.sock, family, &chains)? {
                if let Some(rule) = first_missing(&view, &want) {
                    return Err(missing(nft::backend_name(family))(rule));
                }
            }
            if let Some(view) = in_netns(&self.netns, || legacy::read(family))?? {
                if let Some(rule) = first_missing(&view, &want) {
                    return Err(missing(legacy_name(family))(rule));
                }
            }
        }
        match chains.foreign_drops().into_iter().next() {
            Some(f) if !subnets.is_empty() => Err(Error::ForeignDrop {
                family: f.family,
                table: f.table,
                chain: f.chain,
            }),
            _ => Ok(()),
        }
    }

    /// The forward filters of this namespace and trestle's rules in them (read-only, no lock).
    pub fn forward_state(&mut self) -> Result<ForwardState, Error> {
        let mut state = ForwardState::default();
        let chains = chains::chains(&mut self.sock)?;
        for family in [Family::V4, Family::V6] {
            if let Some(view) = nft::read(&mut self.sock, family, &chains)? {
                state.add(nft::backend_name(family), view);
            }
            if let Some(view) = in_netns(&self.netns, || legacy::read(family))?? {
                state.add(legacy_name(family), view);
            }
        }
        Ok(state)
    }

    /// Whether any `filter` table of `families` exists, in nf_tables (`chains`) or legacy x_tables.
    fn any_filter(&self, chains: &chains::Chains, families: &[Family]) -> Result<bool, Error> {
        if families.iter().any(|f| chains.relevant(*f)) {
            return Ok(true);
        }
        for family in families {
            if in_netns(&self.netns, || legacy::present(*family))?? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// [`Firewall::locked`], the closure also getting the lock file (held) for a child process to inherit.
    fn locked_with_fd<R>(
        &mut self,
        f: impl FnOnce(&mut NfSocket, BorrowedFd) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let lock = self.lock.try_clone().map_err(Error::Io)?;
        self.locked(|sock| f(sock, lock.as_fd()))
    }
}

/// What [`Firewall::forward_state`] reports: which `filter` tables drop forwarded packets, and trestle's rules in
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardState {
    /// The backends (`iptables-nft`, `ip6tables-legacy`, ...) whose `FORWARD` policy is `DROP`.
    pub dropping: Vec<&'static str>,
    /// The subnets trestle lets through, per backend, with the rules' comment (`trestle <network> <subnet>`).
    pub subnets: Vec<(&'static str, IpNet, String)>,
}

impl ForwardState {
    /// Adds what `backend`'s table holds.
    fn add<H>(&mut self, backend: &'static str, view: View<H>) {
        if view.drops {
            self.dropping.push(backend);
        }
        for (rule, _) in view.rules {
            if rule.kind == rules::Kind::From {
                self.subnets.push((backend, rule.subnet, rule.comment));
            }
        }
    }
}

/// Runs `f` in the namespace `netns` is: on this thread when it is already there (the plugin's case), else on a
/// thread that enters it.
fn in_netns<R: Send>(netns: &File, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
    let here = std::fs::metadata("/proc/thread-self/ns/net").map_err(Error::Io)?;
    let there = netns.metadata().map_err(Error::Io)?;
    if (here.dev(), here.ino()) == (there.dev(), there.ino()) {
        return Ok(f());
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace descriptor changes only this thread, which ends after `f`.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Io(std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn of_family(subnets: &[IpNet], family: Family) -> Vec<IpNet> {
    subnets
        .iter()
        .copied()
        .filter(|s| Family::of(s.addr()) == family)
        .collect()
}

/// Which legacy table, as its programs are named.
fn legacy_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-legacy",
        Family::V6 => "ip6tables-legacy",
    }
}

/// Whether a batch that failed with `errno` is worth planning again: the table changed under it (a rule or chain
/// gone or already there), or the chain it deletes is still jumped to by someone else's rule.
fn retryable(errno: i32, ops: &[Op<u64>]) -> bool {
    match errno {
        libc::ENOENT | libc::EEXIST => true,
        libc::EBUSY => ops.contains(&Op::DeleteChain),
        _ => false,
    }
}

/// Reads `family`'s iptables-nft `filter` table, plans with `plan` and commits the plan in one batch. When the
/// batch fails because the table changed meanwhile (another program's write), it is planned again from a fresh
/// read; when the chain cannot be deleted because something else still jumps to it (EBUSY), it is kept, with its
/// jump.
fn change_nft(
    sock: &mut NfSocket,
    family: Family,
    chains: &chains::Chains,
    plan: impl Fn(&View<u64>) -> Vec<Op<u64>>,
) -> Result<(), Error> {
    let mut chains = chains.clone();
    let mut keep_chain = false;
    for attempt in 1..=ATTEMPTS {
        let Some(view) = nft::read(sock, family, &chains)? else {
            return Ok(());
        };
        let mut ops = plan(&view);
        if keep_chain {
            ops.retain(|op| !matches!(op, Op::DeleteChain | Op::DeleteJump(_)));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let msgs: Vec<_> = ops.iter().map(|op| nft::op_msg(family, op)).collect();
        match sock.batch(&msgs) {
            Ok(()) => {
                log::debug!(
                    "{}: {} forward change(s)",
                    nft::backend_name(family),
                    ops.len()
                );
                return Ok(());
            }
            Err(Error::Kernel { errno, .. }) if attempt < ATTEMPTS && retryable(errno, &ops) => {
                keep_chain |= errno == libc::EBUSY;
                chains = chains::chains(sock)?;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}
