//! Forward accept: trestle's networks' traffic passes a host `FORWARD` policy of `DROP` (what Docker sets, with
//! `br_netfilter` sending bridged frames through it too). The rules and their layout are in [`rules`]; they go into
//! the iptables `filter` table of whichever backend holds one whose `FORWARD` drops: nf_tables as iptables-nft
//! writes it ([`nft`]), legacy x_tables ([`legacy`]), or both. A plain nftables chain that drops forwarded
//! packets in a table of someone else's is reported, never edited.
//!
//! Rules are per network and subnet, never per pod: added by the first ADD that needs them, removed by the DEL
//! of the network's last attachment (or GC), under the same lock as the masquerade, with the same "in use"
//! protocol (see [`Firewall::remove_if_unused`]). An ADD only reads (a few netlink requests) when everything is in
//! place.

pub(crate) mod legacy;
pub(crate) mod nft;
pub(crate) mod rules;

use self::rules::{first_missing, plan_ensure, plan_remove, wanted, Op};
use crate::names::{distinct_subnets, Family};
use crate::sock::NfSocket;
use crate::{Error, Firewall};
use ipnet::IpNet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

pub use self::nft::ForeignChain;

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
        let netns = self.netns.clone();
        self.locked(|sock| {
            for family in [Family::V4, Family::V6] {
                let want = wanted(network, &of_family(&subnets, family));
                if want.is_empty() {
                    continue;
                }
                change_nft(sock, family, |view| plan_ensure(view, &want))?;
                in_netns(&netns, || match legacy::read(family)? {
                    Some(view) => legacy::apply(family, &plan_ensure(&view, &want)),
                    None => Ok(()),
                })??;
            }
            nft::foreign_drops(sock)
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
        let netns = self.netns.clone();
        self.locked(|sock| {
            let mut nft_views = Vec::new();
            let mut legacy_ops = Vec::new();
            for family in [Family::V4, Family::V6] {
                if let Some(view) = nft::read(sock, family)? {
                    if !plan_remove(&view, network).is_empty() {
                        nft_views.push(family);
                    }
                }
                if let Some(view) = in_netns(&netns, || legacy::read(family))?? {
                    let ops = plan_remove(&view, network);
                    if !ops.is_empty() {
                        legacy_ops.push((family, ops));
                    }
                }
            }
            if (nft_views.is_empty() && legacy_ops.is_empty()) || in_use() {
                return Ok(false);
            }
            for family in nft_views {
                change_nft(sock, family, |view| plan_remove(view, network))?;
            }
            for (family, ops) in legacy_ops {
                in_netns(&netns, || legacy::apply(family, &ops))??;
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
        for family in [Family::V4, Family::V6] {
            let want = wanted(network, &of_family(&subnets, family));
            let missing = |backend| {
                move |rule: &rules::Rule| Error::ForwardMissing {
                    network: network.to_owned(),
                    subnet: rule.subnet,
                    backend,
                }
            };
            if let Some(view) = nft::read(&mut self.sock, family)? {
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
        if subnets.is_empty() {
            return Ok(());
        }
        match nft::foreign_drops(&mut self.sock)?.into_iter().next() {
            Some(f) => Err(Error::ForeignDrop {
                family: f.family,
                table: f.table,
                chain: f.chain,
            }),
            None => Ok(()),
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

/// What [`Firewall::forward_state`] reports: which `filter` tables drop forwarded packets, and trestle's rules in
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardState {
    /// The backends (`iptables-nft`, `ip6tables-legacy`, ...) whose `FORWARD` policy is `DROP`.
    pub dropping: Vec<&'static str>,
    /// The subnets trestle lets through, per backend, with the rules' comment (`trestle <network> <subnet>`).
    pub subnets: Vec<(&'static str, IpNet, String)>,
}

impl Firewall {
    /// The forward filters of this namespace and trestle's rules in them (read-only, no lock).
    pub fn forward_state(&mut self) -> Result<ForwardState, Error> {
        let mut state = ForwardState::default();
        for family in [Family::V4, Family::V6] {
            let nft =
                nft::read(&mut self.sock, family)?.map(|v| (nft::backend_name(family), strip(v)));
            let legacy = in_netns(&self.netns, || legacy::read(family))??
                .map(|v| (legacy_name(family), strip(v)));
            for (backend, view) in nft.into_iter().chain(legacy) {
                if view.drops {
                    state.dropping.push(backend);
                }
                for (rule, ()) in view.rules {
                    if rule.kind == rules::Kind::From {
                        state.subnets.push((backend, rule.subnet, rule.comment));
                    }
                }
            }
        }
        Ok(state)
    }
}

/// A view without its handles.
fn strip<H>(view: rules::View<H>) -> rules::View<()> {
    rules::View {
        drops: view.drops,
        chain: view.chain,
        jumps: view.jumps.into_iter().map(drop).collect(),
        rules: view.rules.into_iter().map(|(r, _)| (r, ())).collect(),
        foreign: view.foreign,
    }
}

fn of_family(subnets: &[IpNet], family: Family) -> Vec<IpNet> {
    subnets
        .iter()
        .copied()
        .filter(|s| Family::of(s.addr()) == family)
        .collect()
}

/// Reads `family`'s iptables-nft `filter` table, plans with `plan` and commits the plan in one batch; planned
/// again from a fresh read when the batch fails because the table changed meanwhile.
fn change_nft(
    sock: &mut NfSocket,
    family: Family,
    plan: impl Fn(&rules::View<u64>) -> Vec<Op<u64>>,
) -> Result<(), Error> {
    for attempt in 1..=ATTEMPTS {
        let Some(view) = nft::read(sock, family)? else {
            return Ok(());
        };
        let ops = plan(&view);
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
            Err(Error::Kernel { errno, .. })
                if attempt < ATTEMPTS
                    && matches!(errno, libc::ENOENT | libc::EBUSY | libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Which legacy table, as its programs are named.
fn legacy_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-legacy",
        Family::V6 => "ip6tables-legacy",
    }
}
