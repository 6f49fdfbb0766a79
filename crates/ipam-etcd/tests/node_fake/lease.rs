//! The node's lease: fencing after it is lost, keep-alives failing, the TTL etcd granted.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use trestle_ipam_etcd::kv::fake::FakeKv;
use trestle_ipam_etcd::{Bitmap, Block, ClusterError, Keys};

use crate::harness::*;

const SECOND: u64 = 1_000_000_000;

fn fencings(node: &FakeNode) -> u64 {
    node.stats.fencings.load(Ordering::Relaxed)
}

/// The node's only lease.
fn lease(kv: &FakeKv) -> i64 {
    let leases = kv.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases[0]
}

#[tokio::test]
async fn a_lost_lease_refuses_old_writes_and_fences_before_allocating_again() {
    let kv = FakeKv::new();
    let pool = pool_record(&kv, &range());
    let mut s = settings("a");
    // Keep-alives every second: the loss is noticed soon.
    s.lease_ttl = Duration::from_secs(3);
    let node = started(&kv, s).await;
    let mut given = BTreeSet::new();
    for _ in 0..pool.chunk() {
        add(&node, &range(), &mut given).await.expect("address");
    }
    let before = blocks(&kv, &pool);
    // The next ADD extends the block: its write is prepared under this registration...
    kv.hold_txns(true);
    let held = {
        let (node, mut given) = (node.clone(), given.clone());
        tokio::spawn(async move { add(&node, &range(), &mut given).await })
    };
    until("the extension at etcd", || kv.held_txns() == 1).await;
    // ... and the lease expires before it arrives.
    assert!(kv.expire_lease(lease(&kv)));
    // Counted once the node has stopped counting on the lease.
    until("the loss noticed", || fencings(&node) == 1).await;
    assert!(!node.lease_valid());
    let r = add(&node, &range(), &mut given.clone()).await;
    assert!(matches!(r, Err(ClusterError::LeaseUncertain)), "{r:?}");
    // While fenced, etcd gains a block of this node's it never knew (an orphan, say).
    let orphan = ["10.0.0.240", "10.0.0.224"]
        .map(|ip| ip.parse().expect("ip"))
        .into_iter()
        .find(|ip| *ip != before[0].0)
        .expect("a block not claimed");
    let keys = Keys::new(PREFIX);
    let mut bits = Bitmap::new(pool.block_len());
    bits.set(3, true);
    let record = Block {
        owner: "a".into(),
        held: bits,
        foreign: Default::default(),
        writer: "someone".into(),
        at_ms: 0,
    };
    kv.set(&keys.block(NET, &pool.id(), orphan), &record.encode());
    kv.set(&keys.affinity("a", NET, &pool.id(), orphan), b"");
    kv.hold_txns(false);
    let r = held.await.expect("the ADD");
    assert!(matches!(r, Err(ClusterError::LeaseUncertain)), "{r:?}");
    let now = blocks(&kv, &pool);
    assert!(now.contains(&before[0]), "the old write is refused");
    until("the re-registration", || node.lease_valid()).await;
    assert_eq!(fencings(&node), 1);
    assert_eq!(node.usage()[0].blocks, 2, "holdings rebuilt from etcd");
    agrees_with_etcd(&kv, &pool, &node, &given);
    add(&node, &range(), &mut given).await.expect("address");
    agrees_with_etcd(&kv, &pool, &node, &given);
}

#[tokio::test]
async fn failing_keepalives_stop_allocation_before_etcd_could_expire_the_lease() {
    let kv = FakeKv::new();
    let mut s = settings("a");
    s.lease_ttl = Duration::from_secs(2);
    let node = started(&kv, s).await;
    let id = lease(&kv);
    // One renewal by the keep-alive loop first: its deadline is the one that lapses.
    let granted = kv.lease_deadline(id);
    until("a renewal", || kv.lease_deadline(id) != granted).await;
    kv.fail_keepalives(u32::MAX);
    until("the deadline", || !node.lease_valid()).await;
    let r = add(&node, &range(), &mut BTreeSet::new()).await;
    assert!(matches!(r, Err(ClusterError::LeaseUncertain)), "{r:?}");
    // The node counted from before etcd renewed, less its margin (half a second at least).
    let etcd = kv.lease_deadline(id).expect("the lease, still in etcd");
    let ours = node.lease_deadline();
    assert!(ours + SECOND / 2 <= etcd, "{ours} vs etcd's {etcd}");
    assert_eq!(fencings(&node), 0);
}

#[tokio::test]
async fn the_margin_follows_the_ttl_etcd_granted() {
    let kv = FakeKv::new();
    // etcd raises a TTL below its minimum: 30 s granted for 2 asked.
    kv.grant_ttl(Some(30));
    let mut s = settings("a");
    s.lease_ttl = Duration::from_secs(2);
    let node = started(&kv, s).await;
    let ours = node.lease_deadline();
    let etcd = kv.lease_deadline(lease(&kv)).expect("lease");
    assert!(
        ours + 3 * SECOND <= etcd,
        "a tenth of 30 s: {ours} vs {etcd}"
    );
}

#[tokio::test]
async fn a_keepalive_answered_lease_not_found_starts_over() {
    let kv = FakeKv::new();
    let mut s = settings("a");
    s.lease_ttl = Duration::from_secs(2);
    let node = started(&kv, s).await;
    kv.refuse_keepalives(1);
    until("the re-registration", || fencings(&node) >= 1).await;
    until("a valid lease", || node.lease_valid()).await;
}

#[tokio::test]
async fn a_lease_found_gone_right_after_registering_is_not_counted_on() {
    let kv = FakeKv::new();
    // The renewal after the first registration's fencing is answered LeaseNotFound.
    kv.refuse_keepalives(1);
    let node = started(&kv, settings("a")).await;
    assert_eq!(kv.grants(), 2, "registered again, with a new lease");
    assert_eq!(fencings(&node), 0);
    let key = Keys::new(PREFIX).node("a");
    let reg = kv.value(&key).expect("registration");
    assert_eq!(kv.leases(), vec![reg.lease]);
}

#[tokio::test]
async fn an_unreadable_pool_record_does_not_stop_fencing() {
    let kv = FakeKv::new();
    let pool = pool_record(&kv, &range());
    let other = subnet("10.0.9.0/24");
    pool_record(&kv, &other);
    let mut s = settings("a");
    s.lease_ttl = Duration::from_secs(3);
    let node = started(&kv, s).await;
    let mut given = BTreeSet::new();
    add(&node, &range(), &mut given).await.expect("address");
    add(&node, &other, &mut BTreeSet::new())
        .await
        .expect("address");
    let key = Keys::new(PREFIX).pool(NET, &pool.id());
    kv.set(&key, b"garbage");
    assert!(kv.expire_lease(lease(&kv)));
    until("the re-registration", || {
        fencings(&node) >= 1 && node.lease_valid()
    })
    .await;
    assert!(
        pickable(&node, &range()).is_empty(),
        "nothing of the unreadable pool"
    );
    let r = add(&node, &range(), &mut given).await;
    assert!(
        matches!(r, Err(ClusterError::Corrupt(ref k)) if *k == key),
        "{r:?}"
    );
    add(&node, &other, &mut BTreeSet::new())
        .await
        .expect("the other pool still serves");
}

#[tokio::test]
async fn a_return_of_unknown_outcome_is_not_used_again_until_etcd_says_so() {
    for applied in [true, false] {
        let kv = FakeKv::new();
        // One block: a owns it, b borrows from it.
        let r = subnet("10.0.1.0/28");
        let pool = pool_record(&kv, &r);
        let a = started(&kv, settings("a")).await;
        add(&a, &r, &mut BTreeSet::new())
            .await
            .expect("a's address");
        let mut s = settings("b");
        s.lease_ttl = Duration::from_secs(3);
        let b = started(&kv, s).await;
        let ip = add(&b, &r, &mut BTreeSet::new()).await.expect("borrowed");
        assert!(etcd_gives(&kv, &pool, "b", ip));
        // The return is held at etcd, then applies (or not) with its answer and read-back lost.
        kv.hold_txns(true);
        let housekeeping = {
            let b = b.clone();
            tokio::spawn(async move { b.housekeep(|| b.plan(&|_, _| false)).await })
        };
        until("the return at etcd", || kv.held_txns() == 1).await;
        if applied {
            kv.lose_answers(1);
        } else {
            kv.fail_txns(1);
        }
        kv.fail_gets(1);
        kv.hold_txns(false);
        housekeeping.await.expect("housekeeping");
        assert_eq!(etcd_gives(&kv, &pool, "b", ip), !applied);
        assert!(!pickable(&b, &r).contains(&ip), "{applied}: maybe returned");
        // A fencing reads etcd: what it still gives b is b's again.
        let reg = kv
            .value(&Keys::new(PREFIX).node("b"))
            .expect("b's registration");
        assert!(kv.expire_lease(reg.lease));
        until("b fenced", || fencings(&b) == 1 && b.lease_valid()).await;
        assert_eq!(pickable(&b, &r).contains(&ip), !applied, "{applied}");
        agrees_with_etcd(&kv, &pool, &b, &BTreeSet::new());
    }
}
