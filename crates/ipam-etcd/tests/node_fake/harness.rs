//! Nodes on a `FakeKv`, an ADD as trestled does it, and checks against what etcd records.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trestle_ipam_core::Range;
use trestle_ipam_etcd::kv::fake::FakeKv;
use trestle_ipam_etcd::{
    AllocationError, Attempt, Block, ClusterError, Keys, Node, NodeSettings, Pool,
};

pub const NET: &str = "net";
pub const PREFIX: &str = "/t/";

/// A test node.
pub type FakeNode = Arc<Node<FakeKv>>;

/// 10.0.0.0/24 in blocks of 16 (a chunk of 8).
pub fn range() -> Range {
    subnet("10.0.0.0/24")
}

pub fn subnet(s: &str) -> Range {
    Range::new(s.parse().expect("subnet"), None, None, None).expect("range")
}

pub fn settings(name: &str) -> NodeSettings {
    let mut s = NodeSettings::new(name, PREFIX, &format!("boot-of-{name}"));
    s.lease_ttl = Duration::from_secs(10);
    s.block_v4 = 28;
    s
}

/// The pool's record written ahead, so the first growth writes nothing but its claim.
pub fn pool_record(kv: &FakeKv, range: &Range) -> Pool {
    let pool = Pool::new(range, 28).expect("pool");
    let key = Keys::new(PREFIX).pool(NET, &pool.id());
    kv.set(&key, &serde_json::to_vec(&pool).expect("json"));
    pool
}

/// Polls `ok` until it holds; fails after 20 s (never reached unless the behaviour is wrong).
pub async fn until(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node over `kv`, running, its lease valid.
pub async fn started(kv: &FakeKv, s: NodeSettings) -> FakeNode {
    let node = Node::new(kv.clone(), s);
    tokio::spawn(node.clone().run());
    until("the node's registration", || node.lease_valid()).await;
    node
}

/// One ADD as trestled makes it (the library's loop, [`Node::allocate`]): refused without a valid
/// lease, else an address the node holds that `given` has not handed out, growing the holdings
/// while there is none.
pub async fn add(
    node: &FakeNode,
    range: &Range,
    given: &mut BTreeSet<IpAddr>,
) -> Result<IpAddr, ClusterError> {
    let mut attempts = 0;
    let added = node
        .allocate(NET, None, || {
            attempts += 1;
            assert!(attempts <= 20, "no address after 20 growths");
            std::future::ready(if !node.lease_valid() {
                Err(ClusterError::LeaseUncertain)
            } else if let Some(ip) = node.pick(NET, range, &mut |ip| !given.contains(&ip)) {
                given.insert(ip);
                Ok(Attempt::Done(ip, vec![]))
            } else {
                Ok(Attempt::Grow(vec![range.clone()], None))
            })
        })
        .await;
    added.map_err(|e| match e {
        AllocationError::Attempt(e) | AllocationError::Grow(e) => e,
        AllocationError::Late => unreachable!("no deadline"),
    })
}

/// The block records in etcd, by start.
pub fn blocks(kv: &FakeKv, pool: &Pool) -> Vec<(IpAddr, Block)> {
    let prefix = Keys::new(PREFIX).blocks(NET, &pool.id());
    kv.keys(&prefix)
        .into_iter()
        .map(|kv| {
            let start = Keys::last(&kv.key).parse().expect("block key");
            let b = Block::decode(&kv.value, pool.block_len()).expect("block record");
            (start, b)
        })
        .collect()
}

/// True if etcd records `ip` as `node`'s: held in its block, or in its foreign set.
pub fn etcd_gives(kv: &FakeKv, pool: &Pool, node: &str, ip: IpAddr) -> bool {
    let Some((start, i)) = pool.block_of(ip) else {
        return false;
    };
    blocks(kv, pool).into_iter().any(|(s, b)| {
        s == start
            && ((b.owner == node && b.held.get(i)) || b.foreign.get(node).is_some_and(|f| f.get(i)))
    })
}

/// Every address `node` may hand out now (what `pick` could return).
pub fn pickable(node: &FakeNode, range: &Range) -> BTreeSet<IpAddr> {
    let mut all = BTreeSet::new();
    node.pick(NET, range, &mut |ip| {
        all.insert(ip);
        false
    });
    all
}

/// Asserts that everything `node` handed out or may hand out is its own in etcd.
pub fn agrees_with_etcd(kv: &FakeKv, pool: &Pool, node: &FakeNode, given: &BTreeSet<IpAddr>) {
    for ip in given.iter().chain(&pickable(node, &pool_range(pool))) {
        assert!(
            etcd_gives(kv, pool, node.name(), *ip),
            "{} hands out {ip}, which etcd does not record as its own",
            node.name()
        );
    }
}

fn pool_range(pool: &Pool) -> Range {
    Range::new(pool.subnet, None, None, None).expect("range")
}

pub fn conflicts(node: &FakeNode) -> u64 {
    node.stats.conflicts.load(Ordering::Relaxed)
}

pub fn claims(node: &FakeNode) -> u64 {
    node.stats.claims.load(Ordering::Relaxed)
}
