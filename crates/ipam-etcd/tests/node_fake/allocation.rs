//! The allocation loop itself ([`Node::allocate`]): its deadline, and the growth ahead it
//! starts after an answer.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use trestle_ipam_etcd::kv::fake::FakeKv;
use trestle_ipam_etcd::{AllocationError, Attempt, ClusterError};

use crate::harness::*;

/// `f`, failing the test (rather than hanging it) if it takes past 20 s.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("the allocation loop returned")
}

/// An attempt that always needs a growth.
async fn needs_growth() -> Result<Attempt<()>, ClusterError> {
    Ok(Attempt::Grow(vec![range()], None))
}

#[tokio::test]
async fn a_growth_etcd_does_not_answer_ends_at_the_deadline() {
    let kv = FakeKv::new();
    pool_record(&kv, &range());
    let node = started(&kv, settings("a")).await;
    kv.hold_txns(true);
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_millis(200);
    let r = bounded(node.allocate(NET, Some(deadline), needs_growth)).await;
    assert!(matches!(r, Err(AllocationError::Late)), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(claims(&node), 0);
    kv.hold_txns(false);
    // Nothing stays stuck: the next ADD gets its address.
    add(&node, &range(), &mut BTreeSet::new())
        .await
        .expect("an address");
}

#[tokio::test]
async fn holdings_that_run_low_are_grown_after_the_answer_not_before() {
    let kv = FakeKv::new();
    let pool = pool_record(&kv, &range());
    let node = started(&kv, settings("a")).await;
    let mut given = BTreeSet::new();
    add(&node, &range(), &mut given).await.expect("an address");
    let grown =
        || node.stats.claims.load(Ordering::Relaxed) + node.stats.extends.load(Ordering::Relaxed);
    let before = grown();
    // An attempt that allocates and says the range runs low: answered at once, grown after.
    kv.hold_txns(true);
    let r = bounded(node.allocate(NET, None, || async {
        Ok::<_, ClusterError>(Attempt::Done("done", vec![range()]))
    }))
    .await;
    assert_eq!(r.unwrap(), "done");
    assert_eq!(grown(), before, "not grown before the answer");
    kv.hold_txns(false);
    until("the growth ahead", || grown() > before).await;
    agrees_with_etcd(&kv, &pool, &node, &given);
}
