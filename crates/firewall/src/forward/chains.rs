//! Every chain of the namespace's nf_tables ruleset from one dump: what forward accept asks of it before it
//! looks at any rule (does iptables-nft's `FORWARD` exist and drop, does trestle's chain exist, does another
//! table's forward chain drop).

use super::rules::{CHAIN, FORWARD};
use crate::attr::Attrs;
use crate::names::Family;
use crate::sock::{Msg, NfSocket};
use crate::Error;

const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `NF_DROP`, as a chain policy.
const NF_DROP: u32 = 0;
/// `NF_INET_FORWARD`.
const HOOK_FORWARD: u32 = 2;
/// The table iptables-nft keeps its `filter` chains in.
pub(crate) const TABLE: &str = "filter";

/// A big-endian `u32` attribute, as nf_tables encodes integers.
pub(super) fn be32(raw: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(raw.try_into().ok()?))
}

/// One chain of any table, as a chain dump tells it.
#[derive(Debug, Clone)]
pub(crate) struct ChainInfo {
    pub(crate) family: u8,
    table: String,
    name: String,
    /// `NF_INET_*` of a base chain.
    hook: Option<u32>,
    /// A base chain whose policy is drop.
    pub(crate) drops: bool,
}

/// Every chain of the namespace, from one dump of all families: whether iptables-nft's `FORWARD` chains exist
/// and drop, whether [`CHAIN`] exists, and which other forward chains drop (one request where an ADD that finds
/// nothing to do would otherwise need one per question).
#[derive(Debug, Clone)]
pub(crate) struct Chains(Vec<ChainInfo>);

impl Chains {
    pub(crate) fn find(&self, family: Family, name: &str) -> Option<&ChainInfo> {
        self.0
            .iter()
            .find(|c| c.family == family.nfproto() && c.table == TABLE && c.name == name)
    }

    /// Whether `family`'s `filter` table has anything trestle reads: a `FORWARD` chain or [`CHAIN`].
    pub(crate) fn relevant(&self, family: Family) -> bool {
        self.find(family, FORWARD).is_some() || self.find(family, CHAIN).is_some()
    }

    /// The forward base chains with a policy of drop outside iptables-nft's own `filter FORWARD` chains.
    pub(crate) fn foreign_drops(&self) -> Vec<ForeignChain> {
        self.0
            .iter()
            .filter(|c| c.hook == Some(HOOK_FORWARD) && c.drops)
            .filter(|c| {
                let iptables = c.family != NFPROTO_INET && c.table == TABLE && c.name == FORWARD;
                !iptables
            })
            .filter_map(|c| {
                let family = match c.family {
                    NFPROTO_IPV4 => "ip",
                    NFPROTO_IPV6 => "ip6",
                    NFPROTO_INET => "inet",
                    _ => return None,
                };
                Some(ForeignChain {
                    family,
                    table: c.table.clone(),
                    chain: c.name.clone(),
                })
            })
            .collect()
    }
}

/// Dumps every chain of every table.
pub(crate) fn chains(sock: &mut NfSocket) -> Result<Chains, Error> {
    let dump = Msg {
        kind: NFT_MSG_GETCHAIN,
        flags: 0,
        family: NFPROTO_UNSPEC,
        attrs: Vec::new(),
        op: "list chains",
    };
    let mut out = Vec::new();
    for (family, chain) in sock.dump_families(&dump)? {
        let a = Attrs::new(&chain);
        let (Some(table), Some(name)) = (a.get_str(NFTA_CHAIN_TABLE), a.get_str(NFTA_CHAIN_NAME))
        else {
            continue;
        };
        out.push(ChainInfo {
            family,
            table: table.to_owned(),
            name: name.to_owned(),
            hook: a
                .get(NFTA_CHAIN_HOOK)
                .and_then(|h| Attrs::new(h).get(NFTA_HOOK_HOOKNUM))
                .and_then(be32),
            drops: a.get(NFTA_CHAIN_POLICY).and_then(be32) == Some(NF_DROP),
        });
    }
    Ok(Chains(out))
}

/// A base chain of an nftables table trestle does not manage that hooks forward and drops by policy: the
/// administrator's, left alone and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignChain {
    /// `ip`, `ip6` or `inet`.
    pub family: &'static str,
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
}
