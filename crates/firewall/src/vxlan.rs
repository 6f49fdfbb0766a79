//! The VXLAN guard: trestled's cross-node VXLAN (UDP port P, 4789 by default) between the cluster's nodes is
//! kept out of conntrack, and accepted only from the nodes' underlay addresses.
//!
//! # Layout
//! One table of its own, `inet trestle-vxlan` (commented [`COMMENT`]), which nothing else in trestle touches:
//! ```text
//! set nodes4 { type ipv4_addr }    the peers' IPv4 underlay addresses
//! set nodes6 { type ipv6_addr }    the peers' IPv6 underlay addresses
//! chain raw-pre { type filter hook prerouting priority raw; policy accept;
//!     udp dport P ip saddr @nodes4 notrack
//!     udp dport P ip6 saddr @nodes6 notrack }
//! chain raw-out { type filter hook output priority raw; policy accept;
//!     udp dport P ip daddr @nodes4 notrack
//!     udp dport P ip6 daddr @nodes6 notrack }
//! chain input { type filter hook input priority filter; policy accept;
//!     udp dport P ip saddr != @nodes4 counter drop
//!     udp dport P ip6 saddr != @nodes6 counter drop }
//! ```
//! Each rule is `meta nfproto ipv4|ipv6 meta l4proto udp` (what nft leaves out of its listing as implied), the
//! destination port from the transport header, a lookup of the address in the family's set, and the action.
//! Tracking VXLAN between nodes fills the conntrack table with one entry per flow hash and gains nothing (the
//! inner packets are what the firewall looks at); VXLAN from anything but a node (a pod, whose addresses are
//! never node addresses, or the outside) is dropped and counted.
//!
//! # Updates
//! [`Firewall::sync_vxlan_guard`] reads what is installed (the table, its sets, chains and rules, and the
//! elements of both sets) and commits at most one batch:
//! - nothing when the table holds exactly the wanted layout, port and peers: the steady state commits nothing
//!   (see the crate documentation for why commits are avoided);
//! - when only peers changed, per changed set a flush (`NFT_MSG_DELSETELEM` without elements) and the new
//!   elements (`NFT_MSG_NEWSETELEM`), so the committed sets go from the old peers to the new ones in one step
//!   and are never empty in between;
//! - when the table is missing, or differs in any other way (another port, a rule or chain deleted or added by
//!   hand), the table is deleted (if present) and created again with everything in it, elements included, in
//!   one batch. This resets the drop counter.
//!
//! # Locking
//! The guard takes no lock: the lock file serialises the bridge plugin's processes on the tables they share,
//! while this table is written by one trestled per node only, and taking the lock would make trestled wait on
//! plugin invocations for nothing. A second writer all the same (an old trestled still running during a
//! restart) cannot corrupt the table: every change is one transaction planned from a read, creations are
//! exclusive, and a batch that fails because the table changed since the read (`EEXIST`, `ENOENT`) is planned
//! again from a fresh read; the last writer's peers win.
//!
//! The table's name starts like the masquerade tables' (`trestle-<id>`), but holds no `masq-` chain, so
//! [`Firewall::list`] reports nothing of it, and no network id is `vxlan`.
//!
//! # Kernel behaviour relied on
//! Kernel 6.18 when written; checked by the privileged `kernel_behaviour_the_guard_relies_on` (`vxlan/tests.rs`)
//! and `tests/vxlan_guard.rs`.
//! - `NFT_MSG_DELSETELEM` without `NFTA_SET_ELEM_LIST_ELEMENTS` flushes the set. Adding, in the same batch, an
//!   element the flush removed is not a duplicate (the flushed element is inactive in the next generation), so
//!   peers present before and after stay in the set throughout. (An empty element list is accepted as a no-op;
//!   the guard sends no `NEWSETELEM` for an empty set.)
//! - A lookup's set is found by `NFTA_LOOKUP_SET` (the name, required) first, also when the same batch creates
//!   the set; `NFTA_LOOKUP_SET_ID` is only the fallback when the name is not found (and, by the kernel source,
//!   `NFTA_SET_ELEM_LIST_SET_ID` likewise). A wrong id next to the right name goes unnoticed, so the golden
//!   tests check the ids; with a wrong name the id alone finds the set.
//! - A batch whose messages change nothing (an element already present, added without `NLM_F_EXCL`) and a
//!   batch the kernel rejects leave the ruleset generation alone; one that changes anything increments it.
//! - Rule handles count per table, so a recreated table reuses them (its table handle is new); its counters
//!   start at zero.
//! - A rule dump of a missing table or chain is empty rather than an error; a set dump of a missing table fails
//!   with `ENOENT`.

mod nft;
#[cfg(test)]
mod tests;

use self::nft::{Action, ParsedRule, RuleSpec};
use crate::names::Family;
use crate::sock::NfSocket;
use crate::{Error, Firewall};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The guard's table (family inet).
const TABLE: &str = "trestle-vxlan";
/// The table's comment.
pub(crate) const COMMENT: &str = "trestle: VXLAN only between cluster nodes";
/// How often a sync is planned again when its batch finds the table changed since it was read.
const ATTEMPTS: usize = 3;
/// `NF_INET_PRE_ROUTING`, `NF_INET_LOCAL_IN`, `NF_INET_LOCAL_OUT`.
const HOOK_PREROUTING: u32 = 0;
const HOOK_INPUT: u32 = 1;
const HOOK_OUTPUT: u32 = 3;
/// `NF_IP_PRI_RAW` (nft's `raw`), before conntrack (-200); `NF_IP_PRI_FILTER` (nft's `filter`).
const PRIORITY_RAW: i32 = -300;
const PRIORITY_FILTER: i32 = 0;

/// A set of peer addresses.
#[derive(Debug)]
struct Set {
    name: &'static str,
    family: Family,
    /// `NFTA_SET_ID`: names the set within a batch that creates it.
    id: u32,
}

/// The sets, IPv4 first.
const SETS: [Set; 2] = [
    Set {
        name: "nodes4",
        family: Family::V4,
        id: 1,
    },
    Set {
        name: "nodes6",
        family: Family::V6,
        id: 2,
    },
];

/// A base chain of the table and its two rules (IPv4, IPv6).
#[derive(Debug)]
struct Chain {
    name: &'static str,
    /// `NF_INET_*`.
    hook: u32,
    priority: i32,
    rules: [RuleSpec; 2],
}

const fn rules(source: bool, inverted: bool, action: Action) -> [RuleSpec; 2] {
    [
        RuleSpec {
            family: Family::V4,
            source,
            inverted,
            action,
        },
        RuleSpec {
            family: Family::V6,
            source,
            inverted,
            action,
        },
    ]
}

/// The chains, in the order they are created.
const CHAINS: [Chain; 3] = [
    Chain {
        name: "raw-pre",
        hook: HOOK_PREROUTING,
        priority: PRIORITY_RAW,
        rules: rules(true, false, Action::Notrack),
    },
    Chain {
        name: "raw-out",
        hook: HOOK_OUTPUT,
        priority: PRIORITY_RAW,
        rules: rules(false, false, Action::Notrack),
    },
    Chain {
        name: INPUT,
        hook: HOOK_INPUT,
        priority: PRIORITY_FILTER,
        rules: rules(true, true, Action::CountDrop),
    },
];
/// The chain whose rules drop and count.
const INPUT: &str = "input";

/// The nodes VXLAN may come from and go to: the VXLAN UDP port and the nodes' underlay addresses. Order and
/// duplicates do not matter; [`Firewall::vxlan_guard`] returns the addresses sorted and distinct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanPeers {
    /// The VXLAN destination port (4789 by IANA).
    pub port: u16,
    /// IPv4 underlay addresses of the nodes.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 underlay addresses of the nodes.
    pub v6: Vec<Ipv6Addr>,
}

/// What the guard's drop rules have counted: VXLAN datagrams from addresses that are not nodes'. Both families
/// together, since the table was (last) created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VxlanDrops {
    /// Packets dropped.
    pub packets: u64,
    /// Their bytes (as counted at the IP layer).
    pub bytes: u64,
}

/// What a sync wants: the port and, per entry of [`SETS`], the keys, sorted and distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    port: u16,
    keys: [Vec<Vec<u8>>; 2],
}

impl Wanted {
    fn new(peers: &VxlanPeers) -> Wanted {
        let sorted = |mut keys: Vec<Vec<u8>>| {
            keys.sort();
            keys.dedup();
            keys
        };
        Wanted {
            port: peers.port,
            keys: [
                sorted(peers.v4.iter().map(|a| a.octets().to_vec()).collect()),
                sorted(peers.v6.iter().map(|a| a.octets().to_vec()).collect()),
            ],
        }
    }

    fn peers(&self) -> VxlanPeers {
        let (v4, _) = nft::addrs(&self.keys[0]);
        let (_, v6) = nft::addrs(&self.keys[1]);
        VxlanPeers {
            port: self.port,
            v4,
            v6,
        }
    }
}

/// What the namespace holds of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Installed {
    /// No table.
    Absent,
    /// The table, holding exactly the layout for a port, with these elements.
    Intact(Wanted),
    /// The table, differing from the layout in the way named.
    Damaged(&'static str),
}

impl Firewall {
    /// Makes the VXLAN guard hold exactly `peers`: one table `inet trestle-vxlan` with the sets `nodes4` and
    /// `nodes6`, VXLAN (`udp dport <port>`) from and to their addresses not tracked by conntrack (chains
    /// `raw-pre` and `raw-out`, priority raw), and VXLAN to this host from any other address counted and dropped
    /// (chain `input`). Reads what is installed and commits at most one transaction: nothing when the table
    /// already holds exactly this; a flush and refill of the sets whose peers changed (never empty in between);
    /// otherwise (no table, another port, a table changed by hand) the whole table deleted and recreated, which
    /// resets the drop counter. Returns whether a transaction was committed.
    ///
    /// Takes no lock: only one trestled per node writes this table, and nothing else in trestle touches it. A
    /// concurrent writer all the same makes the kernel reject a stale batch (`EEXIST`, `ENOENT`), which is then
    /// planned again from a fresh read; the last writer's peers win.
    pub fn sync_vxlan_guard(&mut self, peers: &VxlanPeers) -> Result<bool, Error> {
        let want = Wanted::new(peers);
        for attempt in 1..=ATTEMPTS {
            let installed = read(&mut self.sock)?;
            let msgs = plan(&installed, &want);
            if msgs.is_empty() {
                return Ok(false);
            }
            match self.sock.batch(&msgs) {
                Ok(()) => {
                    log::debug!("{TABLE}: {} message(s) committed", msgs.len());
                    return Ok(true);
                }
                Err(Error::Kernel { errno, .. })
                    if attempt < ATTEMPTS && matches!(errno, libc::EEXIST | libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Deletes the VXLAN guard's table, if there is one; returns whether one was deleted.
    pub fn remove_vxlan_guard(&mut self) -> Result<bool, Error> {
        if self.sock.get(&crate::nft::get_table(TABLE))?.is_none() {
            return Ok(false);
        }
        crate::delete_table(&mut self.sock, TABLE)
    }

    /// What the VXLAN guard holds: `None` without its table; its port and peers when the table is exactly as
    /// [`Firewall::sync_vxlan_guard`] writes it; [`Error::VxlanGuardDamaged`] otherwise (a sync repairs it).
    pub fn vxlan_guard(&mut self) -> Result<Option<VxlanPeers>, Error> {
        match read(&mut self.sock)? {
            Installed::Absent => Ok(None),
            Installed::Intact(got) => Ok(Some(got.peers())),
            Installed::Damaged(why) => Err(Error::VxlanGuardDamaged(why)),
        }
    }

    /// The drop counters of the guard's `input` chain (VXLAN from addresses that are not nodes'), for a metric;
    /// `None` without the table. Two requests, read-only.
    pub fn vxlan_guard_drops(&mut self) -> Result<Option<VxlanDrops>, Error> {
        if self.sock.get(&crate::nft::get_table(TABLE))?.is_none() {
            return Ok(None);
        }
        let rules = match dump_rules(&mut self.sock, Some(INPUT))? {
            Some(rules) => rules,
            None => return Err(Error::VxlanGuardDamaged("chain input is missing")),
        };
        let input = CHAINS
            .iter()
            .find(|c| c.name == INPUT)
            .expect("the input chain");
        let ours = port_of(&rules).filter(|port| rules_match(input, &rules, *port));
        if ours.is_none() {
            return Err(Error::VxlanGuardDamaged("the rules of chain input differ"));
        }
        Ok(Some(rules.iter().filter_map(|r| r.counter).fold(
            VxlanDrops::default(),
            |sum, (packets, bytes)| VxlanDrops {
                packets: sum.packets + packets,
                bytes: sum.bytes + bytes,
            },
        )))
    }
}

/// A dump that finds its table (or set, or chain) gone answers `None`: the table was deleted meanwhile.
fn dump_present(
    sock: &mut NfSocket,
    msg: &crate::sock::Msg,
) -> Result<Option<Vec<Vec<u8>>>, Error> {
    match sock.dump(msg) {
        Ok(objects) => Ok(Some(objects)),
        Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

fn dump_rules(sock: &mut NfSocket, chain: Option<&str>) -> Result<Option<Vec<ParsedRule>>, Error> {
    Ok(dump_present(sock, &nft::get_rules(chain))?
        .map(|rules| rules.iter().filter_map(|r| nft::parse_rule(r)).collect()))
}

/// Reads the guard: the table, then (one dump each) its sets, the inet chains, its rules and, when everything
/// else is as written, the elements of both sets.
fn read(sock: &mut NfSocket) -> Result<Installed, Error> {
    if sock.get(&crate::nft::get_table(TABLE))?.is_none() {
        return Ok(Installed::Absent);
    }
    let Some(sets) = dump_present(sock, &nft::get_sets())? else {
        return Ok(Installed::Absent);
    };
    let sets: Vec<_> = sets.iter().filter_map(|s| nft::parse_set(s)).collect();
    if sets.len() != SETS.len()
        || !SETS
            .iter()
            .all(|s| sets.iter().any(|d| nft::set_matches(s, d)))
    {
        return Ok(Installed::Damaged("its sets differ"));
    }
    let chains: Vec<_> = sock
        .dump(&crate::nft::get_chains())?
        .iter()
        .filter_map(|c| nft::parse_chain(c))
        .collect();
    if chains.len() != CHAINS.len()
        || !CHAINS
            .iter()
            .all(|c| chains.iter().any(|d| nft::chain_matches(c, d)))
    {
        return Ok(Installed::Damaged("its chains differ"));
    }
    let Some(rules) = dump_rules(sock, None)? else {
        return Ok(Installed::Absent);
    };
    let Some(port) = port_of(&rules).filter(|p| CHAINS.iter().all(|c| rules_match(c, &rules, *p)))
    else {
        return Ok(Installed::Damaged("its rules differ"));
    };
    let mut keys: [Vec<Vec<u8>>; 2] = Default::default();
    for (set, keys) in SETS.iter().zip(&mut keys) {
        let Some(dumped) = dump_present(sock, &nft::get_elems(set))? else {
            return Ok(Installed::Absent);
        };
        *keys = dumped.iter().flat_map(|m| nft::parse_elems(m)).collect();
        keys.sort();
        keys.dedup();
    }
    Ok(Installed::Intact(Wanted { port, keys }))
}

/// The port the first rule of `rules` matches, if it has the guard's shape.
fn port_of(rules: &[ParsedRule]) -> Option<u16> {
    let exprs = rules.first()?.exprs.as_ref()?;
    exprs.windows(2).find_map(|w| match w {
        [nft::Ex::Payload {
            base: nft::BASE_TRANSPORT,
            ..
        }, nft::Ex::Cmp(crate::nf::CMP_EQ, port)] => {
            Some(u16::from_be_bytes(port.as_slice().try_into().ok()?))
        }
        _ => None,
    })
}

/// Whether `chain`'s rules among `rules` are exactly its two rules for `port`, in order.
fn rules_match(chain: &Chain, rules: &[ParsedRule], port: u16) -> bool {
    let got: Vec<Option<&Vec<nft::Ex>>> = rules
        .iter()
        .filter(|r| r.chain == chain.name)
        .map(|r| r.exprs.as_ref())
        .collect();
    let want: Vec<Vec<nft::Ex>> = chain
        .rules
        .iter()
        .map(|r| nft::rule_exprs(r, port))
        .collect();
    got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| *g == Some(w))
}

/// The batch taking the namespace from `installed` to `want`; empty when nothing is to change.
fn plan(installed: &Installed, want: &Wanted) -> Vec<crate::sock::Msg> {
    match installed {
        Installed::Intact(got) if got.port == want.port => SETS
            .iter()
            .zip(got.keys.iter().zip(&want.keys))
            .filter(|(_, (got, want))| got != want)
            .flat_map(|(set, (_, want))| {
                std::iter::once(nft::flush_set(set)).chain(nft::new_elems(set, want, false))
            })
            .collect(),
        Installed::Absent => create(want),
        Installed::Intact(_) | Installed::Damaged(_) => {
            let mut msgs = vec![crate::nft::del_table(TABLE)];
            msgs.extend(create(want));
            msgs
        }
    }
}

/// The messages creating the whole table for `want`: table, sets, chains, rules, elements. The rules and the
/// elements name the sets by name and by transaction id.
fn create(want: &Wanted) -> Vec<crate::sock::Msg> {
    let mut msgs = vec![nft::new_table(COMMENT)];
    msgs.extend(SETS.iter().map(nft::new_set));
    for chain in &CHAINS {
        msgs.push(nft::new_chain(chain));
        msgs.extend(
            chain
                .rules
                .iter()
                .map(|r| nft::new_rule(chain, r, want.port, true)),
        );
    }
    for (set, keys) in SETS.iter().zip(&want.keys) {
        msgs.extend(nft::new_elems(set, keys, true));
    }
    msgs
}

/// The batch [`Firewall::sync_vxlan_guard`] sends to a namespace holding the guard for `installed` (`None`: no
/// table), for the golden tests.
#[cfg(test)]
pub(crate) fn sync_batch(
    installed: Option<&VxlanPeers>,
    peers: &VxlanPeers,
) -> Vec<crate::sock::Msg> {
    let installed = installed.map_or(Installed::Absent, |p| Installed::Intact(Wanted::new(p)));
    plan(&installed, &Wanted::new(peers))
}

/// The requests of [`read`] (of an intact table) and then of [`Firewall::vxlan_guard_drops`], each with whether
/// it is a dump, for the golden tests.
#[cfg(test)]
pub(crate) fn read_requests() -> Vec<(crate::sock::Msg, bool)> {
    vec![
        (crate::nft::get_table(TABLE), false),
        (nft::get_sets(), true),
        (crate::nft::get_chains(), true),
        (nft::get_rules(None), true),
        (nft::get_elems(&SETS[0]), true),
        (nft::get_elems(&SETS[1]), true),
        (crate::nft::get_table(TABLE), false),
        (nft::get_rules(Some(INPUT)), true),
    ]
}
