//! Pools, blocks and what a block's etcd value says, with no I/O: the geometry of a pool (a
//! host-local range cut into aligned blocks), the per-address bitmaps, and the block record.
//!
//! A block's record names its owner (the only node that allocates from `held` without asking)
//! and, per other node, the addresses that node holds in it (`foreign`: borrowed addresses, or
//! the holdings of a dead owner it was reclaimed from). An address is free for the taking only
//! if it is usable, not in `held` and not in any `foreign` set; every change is a
//! compare-and-swap on the record's revision, so two nodes never both take one address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use trestle_ipam_core::Range;

/// The largest block, in addresses: a bitmap of it is 512 bytes.
pub const MAX_BLOCK_ADDRESSES: u32 = 4096;

/// A set of addresses of one block, by index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u32,
}

impl Bitmap {
    /// An empty set over `len` addresses.
    pub fn new(len: u32) -> Bitmap {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// Its capacity.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True if nothing is set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The number of members.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// Membership; false outside the block.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Adds or removes `i` (ignored outside the block).
    pub fn set(&mut self, i: u32, on: bool) {
        if i >= self.len {
            return;
        }
        let w = &mut self.words[(i / 64) as usize];
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|i| self.get(*i))
    }

    /// `self ∪ other`.
    pub fn union(&self, other: &Bitmap) -> Bitmap {
        self.zip(other, |a, b| a | b)
    }

    /// `self \ other`.
    pub fn minus(&self, other: &Bitmap) -> Bitmap {
        self.zip(other, |a, b| a & !b)
    }

    /// `self ∩ other`.
    pub fn intersect(&self, other: &Bitmap) -> Bitmap {
        self.zip(other, |a, b| a & b)
    }

    fn zip(&self, other: &Bitmap, f: impl Fn(u64, u64) -> u64) -> Bitmap {
        let words = (0..self.words.len())
            .map(|i| f(self.words[i], other.words.get(i).copied().unwrap_or(0)))
            .collect();
        Bitmap {
            words,
            len: self.len,
        }
    }

    /// Lower-case hex, lowest address first (two digits per 8 addresses).
    pub fn to_hex(&self) -> String {
        let mut s = String::new();
        for byte in 0..self.len.div_ceil(8) {
            let w = self.words[(byte / 8) as usize];
            s.push_str(&format!("{:02x}", (w >> ((byte % 8) * 8)) as u8));
        }
        s
    }

    /// Parses [`Bitmap::to_hex`] over `len` addresses.
    pub fn from_hex(s: &str, len: u32) -> Option<Bitmap> {
        if s.len() != (len.div_ceil(8) * 2) as usize || !s.is_ascii() {
            return None;
        }
        let mut b = Bitmap::new(len);
        for (byte, pair) in s.as_bytes().chunks(2).enumerate() {
            let v = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
            b.words[byte / 8] |= u64::from(v) << ((byte % 8) * 8);
        }
        // Bits past the end would be addresses outside the block.
        (b.count() == b.iter().count() as u32).then_some(b)
    }
}

/// A pool: one range of a network's config, and its block size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The range's subnet.
    pub subnet: IpNet,
    /// First allocatable address.
    pub range_start: IpAddr,
    /// Last allocatable address.
    pub range_end: IpAddr,
    /// Never allocated.
    pub gateway: Option<IpAddr>,
    /// The blocks' prefix length.
    pub block_prefix: u8,
}

/// Why a pool cannot be cut into blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The block is larger than the subnet, or larger than [`MAX_BLOCK_ADDRESSES`].
    #[error("blockSize /{block} does not fit subnet {subnet} (at most {MAX_BLOCK_ADDRESSES} addresses, inside the subnet)")]
    BlockSize {
        /// The subnet.
        subnet: IpNet,
        /// The block prefix asked for.
        block: u8,
    },
    /// Another pool of the network covers some of the same addresses.
    #[error("pool {ours} overlaps pool {theirs} of the same network in etcd: every node must use the same ranges")]
    Overlap {
        /// This node's.
        ours: IpNet,
        /// etcd's.
        theirs: IpNet,
    },
    /// Another node created the pool with other settings.
    #[error("pool {subnet} exists in etcd with {field} {theirs}, this node's config says {ours}")]
    Mismatch {
        /// The pool.
        subnet: IpNet,
        /// The setting that differs.
        field: &'static str,
        /// etcd's value.
        theirs: String,
        /// Ours.
        ours: String,
    },
}

impl Pool {
    /// The pool of `range` with blocks of `/block_prefix`.
    pub fn new(range: &Range, block_prefix: u8) -> Result<Pool, PoolError> {
        let subnet = range.subnet.trunc();
        let max = subnet.max_prefix_len();
        let fits = block_prefix >= subnet.prefix_len()
            && block_prefix <= max
            && (max - block_prefix) <= 12;
        if !fits {
            return Err(PoolError::BlockSize {
                subnet,
                block: block_prefix,
            });
        }
        Ok(Pool {
            subnet,
            range_start: range.range_start,
            range_end: range.range_end,
            gateway: range.gateway,
            block_prefix,
        })
    }

    /// The first difference between `self` (ours) and `theirs` (etcd's).
    pub fn mismatch(&self, theirs: &Pool) -> Option<PoolError> {
        let diff = |field, a: String, b: String| {
            (a != b).then_some(PoolError::Mismatch {
                subnet: self.subnet,
                field,
                theirs: b,
                ours: a,
            })
        };
        let opt = |g: Option<IpAddr>| g.map_or("none".into(), |g| g.to_string());
        diff(
            "rangeStart",
            self.range_start.to_string(),
            theirs.range_start.to_string(),
        )
        .or_else(|| {
            diff(
                "rangeEnd",
                self.range_end.to_string(),
                theirs.range_end.to_string(),
            )
        })
        .or_else(|| diff("gateway", opt(self.gateway), opt(theirs.gateway)))
        .or_else(|| {
            diff(
                "blockSize",
                self.block_prefix.to_string(),
                theirs.block_prefix.to_string(),
            )
        })
    }

    /// Addresses per block.
    pub fn block_len(&self) -> u32 {
        1 << (self.subnet.max_prefix_len() - self.block_prefix)
    }

    /// The pool's key component: its subnet with `/` as `_`.
    pub fn id(&self) -> String {
        self.subnet.to_string().replace('/', "_")
    }

    /// Index of the first and last block that hold a usable address.
    pub fn block_span(&self) -> (u128, u128) {
        let shift = u32::from(self.subnet.max_prefix_len() - self.block_prefix);
        (
            to_u128(self.range_start) >> shift,
            to_u128(self.range_end) >> shift,
        )
    }

    /// The number of blocks.
    pub fn block_count(&self) -> u128 {
        let (a, b) = self.block_span();
        b - a + 1
    }

    /// The first address of the block with absolute index `n`.
    pub fn block_start(&self, n: u128) -> IpAddr {
        let shift = u32::from(self.subnet.max_prefix_len() - self.block_prefix);
        from_u128(n << shift, self.subnet.addr())
    }

    /// The block (its first address) that holds `ip`, if `ip` is usable in this pool.
    pub fn block_of(&self, ip: IpAddr) -> Option<(IpAddr, u32)> {
        if !self.usable(ip) {
            return None;
        }
        let len = u128::from(self.block_len());
        let v = to_u128(ip);
        Some((from_u128(v - v % len, ip), (v % len) as u32))
    }

    /// True if `ip` may ever be allocated: inside the range and not the gateway.
    pub fn usable(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.addr().is_ipv4()
            && to_u128(ip) >= to_u128(self.range_start)
            && to_u128(ip) <= to_u128(self.range_end)
            && Some(ip) != self.gateway
    }

    /// The usable addresses of the block starting at `start`.
    pub fn usable_in(&self, start: IpAddr) -> Bitmap {
        let mut b = Bitmap::new(self.block_len());
        for i in 0..self.block_len() {
            b.set(i, self.usable(self.address(start, i)));
        }
        b
    }

    /// Address `i` of the block starting at `start`.
    pub fn address(&self, start: IpAddr, i: u32) -> IpAddr {
        from_u128(to_u128(start) + u128::from(i), start)
    }

    /// How many addresses a node reserves at a time (half a block): a node's steady-state
    /// ADDs then touch etcd once per that many allocations at most.
    pub fn chunk(&self) -> u32 {
        (self.block_len() / 2).max(1)
    }

    /// The block index a node starts looking from: spread by its name, so competing nodes
    /// start far apart and rarely race for one block.
    pub fn seed(&self, node: &str) -> u128 {
        let (first, _) = self.block_span();
        first + u128::from(fnv1a(node.as_bytes())) % self.block_count()
    }

    /// The first block at or after `seed` (wrapping) whose start is not in `taken`.
    pub fn pick_free(&self, seed: u128, taken: &std::collections::BTreeSet<u128>) -> Option<u128> {
        let (first, last) = self.block_span();
        if taken.len() as u128 >= self.block_count() {
            return None;
        }
        let mut n = seed;
        // Walk the taken blocks from the seed: each step skips one, so this ends within
        // |taken| + 1 steps however large the pool.
        for _ in 0..=taken.len() {
            if !taken.contains(&n) {
                return Some(n);
            }
            n = if n == last { first } else { n + 1 };
        }
        None
    }

    /// The block index of a block start address.
    pub fn index_of(&self, start: IpAddr) -> u128 {
        to_u128(start) >> u32::from(self.subnet.max_prefix_len() - self.block_prefix)
    }
}

/// A block's record in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The node that allocates from `held`.
    pub owner: String,
    /// Addresses the owner may use without asking (in use, or reserved for its next ADDs).
    pub held: Bitmap,
    /// Addresses other nodes hold here, by node.
    pub foreign: BTreeMap<String, Bitmap>,
    /// Who wrote this version, with a nonce: a writer whose answer was lost recognises its
    /// own write when it reads the block back.
    pub writer: String,
    /// Wall-clock time of the write, ms since the epoch (shown to operators).
    pub at_ms: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    owner: String,
    held: String,
    #[serde(default)]
    foreign: BTreeMap<String, String>,
    writer: String,
    at_ms: i64,
}

impl Block {
    /// Addresses that no node holds.
    pub fn free(&self, usable: &Bitmap) -> Bitmap {
        let mut taken = self.held.clone();
        for f in self.foreign.values() {
            taken = taken.union(f);
        }
        usable.minus(&taken)
    }

    /// Every address some node holds.
    pub fn taken(&self) -> Bitmap {
        self.foreign
            .values()
            .fold(self.held.clone(), |acc, f| acc.union(f))
    }

    /// The JSON stored in etcd.
    pub fn encode(&self) -> Vec<u8> {
        let w = Wire {
            owner: self.owner.clone(),
            held: self.held.to_hex(),
            foreign: self
                .foreign
                .iter()
                .filter(|(_, b)| !b.is_empty())
                .map(|(n, b)| (n.clone(), b.to_hex()))
                .collect(),
            writer: self.writer.clone(),
            at_ms: self.at_ms,
        };
        serde_json::to_vec(&w).expect("plain data")
    }

    /// Parses [`Block::encode`] for a block of `len` addresses.
    pub fn decode(bytes: &[u8], len: u32) -> Option<Block> {
        let w: Wire = serde_json::from_slice(bytes).ok()?;
        let mut foreign = BTreeMap::new();
        for (n, h) in w.foreign {
            foreign.insert(n, Bitmap::from_hex(&h, len)?);
        }
        Some(Block {
            owner: w.owner,
            held: Bitmap::from_hex(&w.held, len)?,
            foreign,
            writer: w.writer,
            at_ms: w.at_ms,
        })
    }
}

/// 32-bit FNV-1a: a stable, well-spread hash of a node name.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, family: IpAddr) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

#[cfg(test)]
mod tests;
