//! The cluster as etcd last said it: a mirror of the keys under `<prefix>/v1/` kept at one
//! revision, and the parts routing needs read out of it (host records, pools, blocks).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use trestle_ipam_etcd::watch::Change;
use trestle_ipam_etcd::{Block, Keys, Pool};

use crate::host::HostRecord;

/// The keys under the root and their values, at one revision, each decoded once, when it
/// arrives (a pool's blocks again when the pool's record changes): a change costs the parse of
/// what changed, not of the whole cluster.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    data: BTreeMap<String, Vec<u8>>,
    decoded: BTreeMap<String, Decoded>,
    /// The revision everything here is as of.
    pub revision: i64,
}

/// What a key holds, for routing.
#[derive(Debug, Clone)]
enum Decoded {
    Host(Arc<HostRecord>),
    Pool(Pool),
    Block(Arc<ClusterBlock>),
    /// A record routing needs that cannot be read.
    Unreadable,
    /// A key routing does not look at (`nodes/`, `affinity/`...).
    Other,
}

impl Mirror {
    /// A mirror of `kvs` (relative keys and values) read at `revision`.
    pub fn new(kvs: impl IntoIterator<Item = (String, Vec<u8>)>, revision: i64) -> Mirror {
        let mut m = Mirror {
            data: kvs.into_iter().collect(),
            decoded: BTreeMap::new(),
            revision,
        };
        // Pools first: a block is read with its pool's geometry.
        let keys: Vec<String> = m.data.keys().cloned().collect();
        for k in keys.iter().filter(|k| k.starts_with("pools/")) {
            m.decode(k);
        }
        for k in keys.iter().filter(|k| !k.starts_with("pools/")) {
            m.decode(k);
        }
        m
    }

    /// Applies one watch batch; a change at or before the mirror's revision (a repeated
    /// answer) is skipped. Returns whether anything changed.
    pub fn apply(&mut self, keys: &Keys, changes: &[Change]) -> bool {
        let mut changed = false;
        for c in changes {
            if c.revision() <= self.revision {
                continue;
            }
            let Some(key) = keys.relative(c.key()) else {
                continue;
            };
            match c {
                Change::Put(kv) => {
                    self.data.insert(key.to_string(), kv.value.clone());
                }
                Change::Delete { .. } => {
                    self.data.remove(key);
                }
            }
            self.decode(key);
            if let Some(pool) = key.strip_prefix("pools/") {
                let dir = format!("blocks/{pool}/");
                let blocks: Vec<String> =
                    self.under(&dir).map(|(k, _)| format!("{dir}{k}")).collect();
                for b in blocks {
                    self.decode(&b);
                }
            }
            changed = true;
        }
        if let Some(last) = changes.iter().map(Change::revision).max() {
            self.revision = self.revision.max(last);
        }
        changed
    }

    /// Decodes `key` again from what the mirror holds (or forgets it, if it holds nothing).
    fn decode(&mut self, key: &str) {
        let Some(value) = self.data.get(key) else {
            self.decoded.remove(key);
            return;
        };
        let d = if key.starts_with("hosts/") {
            HostRecord::decode(value).map_or(Decoded::Unreadable, |h| Decoded::Host(Arc::new(h)))
        } else if key.starts_with("pools/") {
            serde_json::from_slice::<Pool>(value).map_or(Decoded::Unreadable, Decoded::Pool)
        } else if let Some(rest) = key.strip_prefix("blocks/") {
            self.block(rest, value)
                .map_or(Decoded::Unreadable, |b| Decoded::Block(Arc::new(b)))
        } else {
            Decoded::Other
        };
        self.decoded.insert(key.to_string(), d);
    }

    /// `blocks/<net>/<pool>/<start>`'s record, read with its pool's geometry.
    fn block(&self, rest: &str, value: &[u8]) -> Option<ClusterBlock> {
        let (pool_id, start) = rest.rsplit_once('/')?;
        let Some(Decoded::Pool(pool)) = self.decoded.get(&format!("pools/{pool_id}")) else {
            return None;
        };
        let start: IpAddr = start.parse().ok()?;
        Some(ClusterBlock {
            net: IpNet::new(start, pool.block_prefix).ok()?,
            block: Block::decode(value, pool.block_len())?,
            pool: pool.clone(),
        })
    }

    /// The keys under `dir` (`nodes/`, say), relative to it.
    pub fn keys_under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.under(dir).map(|(k, _)| k)
    }

    fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.data
            .range(dir.to_string()..)
            .take_while(move |(k, _)| k.starts_with(dir))
            .map(move |(k, v)| (&k[dir.len()..], v.as_slice()))
    }

    /// What routing needs of it. Host records and blocks are shared with the mirror, not
    /// copied: a follower publishes a state per change, and at a thousand nodes deep copies
    /// cost it most of a millisecond of CPU each time.
    pub fn cluster(&self) -> Cluster {
        let mut c = Cluster {
            revision: self.revision,
            ..Cluster::default()
        };
        for (key, d) in &self.decoded {
            match d {
                Decoded::Host(h) => {
                    let node = key.strip_prefix("hosts/").unwrap_or(key);
                    c.hosts.insert(node.to_string(), Arc::clone(h));
                }
                Decoded::Pool(p) => c.pools.push(p.clone()),
                Decoded::Block(b) => c.blocks.push(Arc::clone(b)),
                Decoded::Unreadable => c.unreadable.push(key.clone()),
                Decoded::Other => {}
            }
        }
        c
    }
}

/// One block and its pool.
#[derive(Debug, Clone)]
pub struct ClusterBlock {
    /// The block's addresses.
    pub net: IpNet,
    /// Its pool.
    pub pool: Pool,
    /// Its record.
    pub block: Block,
}

impl ClusterBlock {
    /// The addresses `node` holds here without owning the block.
    pub fn foreign_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        self.block
            .foreign
            .get(node)
            .into_iter()
            .flat_map(move |bits| {
                bits.iter()
                    .map(move |i| self.pool.address(self.net.addr(), i))
            })
    }
}

/// What the routes follow.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// The etcd revision it is as of.
    pub revision: i64,
    /// Host records by node.
    pub hosts: BTreeMap<String, Arc<HostRecord>>,
    /// Every pool of every network.
    pub pools: Vec<Pool>,
    /// Every block with an owner.
    pub blocks: Vec<Arc<ClusterBlock>>,
    /// Keys that could not be read (reported, never routed).
    pub unreadable: Vec<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use trestle_ipam_etcd::kv::Kv as _;
    use trestle_ipam_etcd::Bitmap;

    /// A pool of 10.244.0.0/16 in /26 blocks.
    pub(crate) fn pool() -> Pool {
        Pool {
            subnet: "10.244.0.0/16".parse().unwrap(),
            range_start: "10.244.0.1".parse().unwrap(),
            range_end: "10.244.255.254".parse().unwrap(),
            gateway: Some("10.244.0.1".parse().unwrap()),
            block_prefix: 26,
        }
    }

    /// A block record of `owner` holding index 1, and `foreign` holdings.
    pub(crate) fn block(owner: &str, foreign: &[(&str, u32)]) -> Vec<u8> {
        let mut held = Bitmap::new(64);
        held.set(1, true);
        let mut f = BTreeMap::new();
        for (node, i) in foreign {
            let b: &mut Bitmap = f.entry(node.to_string()).or_insert_with(|| Bitmap::new(64));
            b.set(*i, true);
        }
        Block {
            owner: owner.into(),
            held,
            foreign: f,
            writer: "w".into(),
            at_ms: 0,
        }
        .encode()
    }

    #[test]
    fn reads_hosts_pools_and_blocks() {
        let p = pool();
        let m = Mirror::new(
            [
                (
                    "pools/net/10.244.0.0_16".to_string(),
                    serde_json::to_vec(&p).unwrap(),
                ),
                (
                    "blocks/net/10.244.0.0_16/10.244.0.64".into(),
                    block("b", &[("c", 3)]),
                ),
                (
                    "blocks/net/10.244.0.0_16/10.244.9.0".into(),
                    b"junk".to_vec(),
                ),
                ("blocks/net/other/10.1.0.0".into(), block("b", &[])),
                ("hosts/a".into(), b"{".to_vec()),
                ("nodes/a".into(), b"ignored".to_vec()),
            ],
            7,
        );
        let c = m.cluster();
        assert_eq!(c.revision, 7);
        assert_eq!(c.pools, vec![p]);
        assert_eq!(c.blocks.len(), 1);
        let b = &c.blocks[0];
        assert_eq!(b.net, "10.244.0.64/26".parse::<IpNet>().unwrap());
        assert_eq!(b.block.owner, "b");
        assert_eq!(
            b.foreign_of("c").collect::<Vec<_>>(),
            vec!["10.244.0.67".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(b.foreign_of("b").count(), 0);
        assert_eq!(
            c.unreadable,
            vec![
                "blocks/net/10.244.0.0_16/10.244.9.0".to_string(),
                "blocks/net/other/10.1.0.0".into(),
                "hosts/a".into(),
            ]
        );
    }

    #[tokio::test]
    async fn a_pool_that_arrives_after_its_blocks_makes_them_readable() {
        let keys = Keys::new("/t");
        let kv = trestle_ipam_etcd::kv::fake::FakeKv::new();
        let mut w = kv.watch_from("/t/v1/", 1).await.unwrap();
        let mut m = Mirror::new(
            [(
                "blocks/net/10.244.0.0_16/10.244.0.64".to_string(),
                block("b", &[]),
            )],
            1,
        );
        assert_eq!(m.cluster().unreadable.len(), 1);
        kv.set(
            "/t/v1/pools/net/10.244.0.0_16",
            &serde_json::to_vec(&pool()).unwrap(),
        );
        assert!(m.apply(&keys, &w.next().await.unwrap()));
        let c = m.cluster();
        assert!(c.unreadable.is_empty(), "{:?}", c.unreadable);
        assert_eq!(c.blocks.len(), 1);
        // A block that goes is gone from the cluster too.
        kv.set(
            "/t/v1/blocks/net/10.244.0.0_16/10.244.0.64",
            &block("b", &[]),
        );
        kv.remove("/t/v1/blocks/net/10.244.0.0_16/10.244.0.64");
        let mut changes = Vec::new();
        for _ in 0..2 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), w.next());
            changes.extend(next.await.expect("a change").unwrap());
        }
        m.apply(&keys, &changes);
        assert!(m.cluster().blocks.is_empty());
    }

    #[tokio::test]
    async fn apply_skips_what_it_has_seen() {
        let keys = Keys::new("/t");
        let kv = trestle_ipam_etcd::kv::fake::FakeKv::new();
        let mut w = kv.watch_from("/t/v1/", 1).await.unwrap();
        kv.set("/t/v1/hosts/a", b"1");
        kv.set("/t/v1/hosts/b", b"2");
        kv.remove("/t/v1/hosts/a");
        let mut m = Mirror::default();
        let mut all = Vec::new();
        for _ in 0..3 {
            all.extend(w.next().await.unwrap());
        }
        assert!(m.apply(&keys, &all));
        assert_eq!(m.revision, 4);
        assert_eq!(m.under("hosts/").count(), 1);
        // The same batch again (a repeated answer) changes nothing.
        assert!(!m.apply(&keys, &all));
        assert_eq!(
            m.under("hosts/").collect::<Vec<_>>(),
            vec![("b", &b"2"[..])]
        );
    }
}
