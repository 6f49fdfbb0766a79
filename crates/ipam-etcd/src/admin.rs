//! What operators read and do: the cluster's blocks per node, and releasing a dead node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::block::{Block, Pool};
use crate::client::{Etcd, Txn};
use crate::keys::Keys;
use crate::node::{ClusterError, Expired};
use trestle_ipam_core::unix_ms;

/// The cluster as etcd records it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Pools.
    pub pools: Vec<PoolView>,
    /// Nodes that own blocks, hold addresses or are registered.
    pub nodes: Vec<NodeView>,
}

/// One pool.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// The network.
    pub network: String,
    /// Its geometry.
    pub pool: Pool,
    /// Blocks in all.
    pub blocks_total: u128,
    /// Blocks claimed.
    pub blocks_claimed: usize,
    /// Usable addresses in the claimed blocks.
    pub usable_claimed: u64,
    /// Addresses held by some node (in use, or reserved for its next ADDs).
    pub held: u64,
    /// Of those, held by a node other than the block's owner.
    pub borrowed: u64,
    /// The blocks.
    pub block_list: Vec<BlockView>,
}

/// One block.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockView {
    /// `start/prefix`.
    pub cidr: String,
    /// Owner.
    pub owner: String,
    /// Addresses the owner holds.
    pub held: u32,
    /// Addresses others hold, by node.
    pub foreign: BTreeMap<String, u32>,
    /// Usable addresses.
    pub usable: u32,
}

/// One node.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its lease is alive.
    pub alive: bool,
    /// When another node first saw its lease gone (ms since the epoch), if it did.
    pub expired_since_ms: Option<i64>,
    /// Blocks it owns.
    pub blocks: usize,
    /// Addresses it holds in its own blocks.
    pub held: u64,
    /// Addresses it holds in other nodes' blocks.
    pub borrowed: u64,
}

/// Reads the whole cluster state (a handful of range requests).
pub async fn view(etcd: &Etcd, prefix: &str) -> Result<ClusterView, ClusterError> {
    let keys = Keys::new(prefix);
    let live: BTreeSet<String> = etcd
        .list(&keys.nodes(), true)
        .await?
        .iter()
        .map(|kv| Keys::last(&kv.key))
        .collect();
    let mut expired: BTreeMap<String, i64> = BTreeMap::new();
    for kv in etcd.list(&keys.expired(""), false).await? {
        if let Ok(e) = serde_json::from_slice::<Expired>(&kv.value) {
            expired.insert(Keys::last(&kv.key), e.noticed_ms);
        }
    }
    let mut nodes: BTreeMap<String, NodeView> = BTreeMap::new();
    let node = |nodes: &mut BTreeMap<String, NodeView>, n: &str| {
        nodes.entry(n.to_string()).or_insert_with(|| NodeView {
            name: n.to_string(),
            alive: live.contains(n),
            expired_since_ms: expired.get(n).copied().filter(|_| !live.contains(n)),
            blocks: 0,
            held: 0,
            borrowed: 0,
        });
    };
    for n in &live {
        node(&mut nodes, n);
    }
    let mut pools = Vec::new();
    for pkv in etcd.list(&keys.pools(), false).await? {
        let Some((net, pid)) = keys.parse_pool(&pkv.key) else {
            continue;
        };
        let Ok(pool) = serde_json::from_slice::<Pool>(&pkv.value) else {
            continue;
        };
        let mut pv = PoolView {
            network: net.clone(),
            blocks_total: pool.block_count(),
            blocks_claimed: 0,
            usable_claimed: 0,
            held: 0,
            borrowed: 0,
            block_list: Vec::new(),
            pool: pool.clone(),
        };
        for bkv in etcd.list(&keys.blocks(&net, &pid), false).await? {
            let Ok(start) = Keys::last(&bkv.key).parse::<IpAddr>() else {
                continue;
            };
            let Some(b) = Block::decode(&bkv.value, pool.block_len()) else {
                continue;
            };
            let usable = pool.usable_in(start);
            pv.blocks_claimed += 1;
            pv.usable_claimed += u64::from(usable.count());
            pv.held += u64::from(b.taken().count());
            node(&mut nodes, &b.owner);
            let o = nodes.get_mut(&b.owner).expect("inserted");
            o.blocks += 1;
            o.held += u64::from(b.held.count());
            let mut foreign = BTreeMap::new();
            for (n, f) in &b.foreign {
                node(&mut nodes, n);
                nodes.get_mut(n).expect("inserted").borrowed += u64::from(f.count());
                pv.borrowed += u64::from(f.count());
                foreign.insert(n.clone(), f.count());
            }
            pv.block_list.push(BlockView {
                cidr: format!("{start}/{}", pool.block_prefix),
                owner: b.owner.clone(),
                held: b.held.count(),
                foreign,
                usable: usable.count(),
            });
        }
        pools.push(pv);
    }
    // Expired nodes that hold nothing any more are still shown until released.
    for n in expired.keys() {
        if !live.contains(n) {
            node(&mut nodes, n);
        }
    }
    Ok(ClusterView {
        pools,
        nodes: nodes.into_values().collect(),
    })
}

/// What [`release_node`] freed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    /// Blocks deleted (the node owned them).
    pub blocks: usize,
    /// Addresses given up in other nodes' blocks.
    pub addresses: u64,
    /// Its host record was deleted (peers stop routing to it).
    pub host_record: bool,
}

/// Why a node cannot be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Its lease is alive.
    #[error(
        "node {0} is alive (its lease is valid): only a dead node's addresses can be released"
    )]
    Alive(String),
    /// etcd failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// An error if `node`'s registration (`key`) exists.
async fn refuse_alive(etcd: &Etcd, key: &str, node: &str) -> Result<(), ReleaseError> {
    match etcd.get(key).await.map_err(ClusterError::from)? {
        Some(_) => Err(ReleaseError::Alive(node.to_string())),
        None => Ok(()),
    }
}

/// Frees everything `node` holds: its blocks (with whatever it held in them) and its
/// addresses in other nodes' blocks. The operator asserts the node and its pods are gone; a
/// live node is refused, and every step re-checks that it has not come back.
pub async fn release_node(etcd: &Etcd, prefix: &str, node: &str) -> Result<Released, ReleaseError> {
    let keys = Keys::new(prefix);
    let node_key = keys.node(node);
    refuse_alive(etcd, &node_key, node).await?;
    let mut out = Released::default();
    // A block kept for others' addresses stays the dead node's until reclaimed: its expiry
    // record (when the grace started) stays too.
    let mut kept = false;
    let mut index = etcd
        .list(&keys.affinities(Some(node)), true)
        .await
        .map_err(ClusterError::from)?;
    index.extend(
        etcd.list(&keys.borrowings(Some(node)), true)
            .await
            .map_err(ClusterError::from)?,
    );
    for kv in index {
        let Some((_, net, pid, start)) = keys.parse_index(&kv.key) else {
            continue;
        };
        let index_key = String::from_utf8_lossy(&kv.key).to_string();
        let Some(pkv) = etcd
            .get(&keys.pool(&net, &pid))
            .await
            .map_err(ClusterError::from)?
        else {
            // No pool, so no block of it: the index entry is all that is left.
            etcd.txn(Txn::new().delete(&index_key))
                .await
                .map_err(ClusterError::from)?;
            continue;
        };
        let Ok(pool) = serde_json::from_slice::<Pool>(&pkv.value) else {
            continue;
        };
        let bkey = keys.block(&net, &pid, start);
        for _ in 0..5 {
            let Some(bkv) = etcd.get(&bkey).await.map_err(ClusterError::from)? else {
                etcd.txn(Txn::new().delete(&index_key))
                    .await
                    .map_err(ClusterError::from)?;
                break;
            };
            let Some(mut b) = Block::decode(&bkv.value, pool.block_len()) else {
                return Err(ClusterError::Corrupt(bkey).into());
            };
            let mut txn = Txn::new()
                .if_mod(&bkey, bkv.mod_revision)
                .if_absent(&node_key);
            let mut freed = 0u64;
            let owned = b.owner == node;
            if owned && b.foreign.values().all(|f| f.is_empty()) {
                txn = txn
                    .delete(&bkey)
                    .delete(&keys.affinity(node, &net, &pid, start));
                freed += u64::from(b.held.count());
            } else {
                if b.owner == node {
                    // Others hold addresses here: the block stays, owned by nobody live, so
                    // the next node short of blocks reclaims it; the dead node's part is freed.
                    freed += u64::from(b.held.count());
                    b.held = crate::block::Bitmap::new(pool.block_len());
                }
                if let Some(f) = b.foreign.remove(node) {
                    freed += u64::from(f.count());
                }
                b.writer = format!("release-node:{node}:{}", unix_ms());
                b.at_ms = unix_ms();
                txn = txn.put(&bkey, b.encode(), 0);
            }
            // A kept block keeps its affinity index: reclaim finds blocks of dead nodes by it.
            let txn = txn.delete(&keys.borrowed(node, &net, &pid, start));
            let done = etcd.txn(txn).await.map_err(ClusterError::from)?;
            if done.succeeded {
                if owned {
                    out.blocks += 1;
                }
                kept |= owned && !b.foreign.values().all(|f| f.is_empty());
                out.addresses += freed;
                break;
            }
            refuse_alive(etcd, &node_key, node).await?;
        }
    }
    if !kept {
        etcd.txn(Txn::new().if_absent(&node_key).delete(&keys.expired(node)))
            .await
            .map_err(ClusterError::from)?;
    }
    // The node is gone for good: peers drop what routes to it (a block kept for others'
    // addresses keeps their host routes, which need no record of this node).
    let host = etcd
        .txn(Txn::new().if_absent(&node_key).delete(&keys.host(node)))
        .await
        .map_err(ClusterError::from)?;
    if !host.succeeded {
        return Err(ReleaseError::Alive(node.to_string()));
    }
    out.host_record = true;
    Ok(out)
}
