//! Block writes whose answers are lost, repeated or never known, and two nodes racing.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use trestle_ipam_etcd::kv::fake::FakeKv;
use trestle_ipam_etcd::{ClusterError, Keys};

use crate::harness::*;

#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_recognised_and_held_once() {
    let kv = FakeKv::new();
    let pool = pool_record(&kv, &range());
    let node = started(&kv, settings("a")).await;
    kv.lose_answers(1);
    let mut given = BTreeSet::new();
    add(&node, &range(), &mut given)
        .await
        .expect("an address despite the lost answer");
    assert_eq!(claims(&node), 1);
    assert_eq!(conflicts(&node), 0, "its own write is no one else's");
    assert_eq!(blocks(&kv, &pool).len(), 1, "no second block claimed");
    // The rest of the chunk comes from that block, each address once, with no write.
    let revision = kv.revision();
    for _ in 1..pool.chunk() {
        add(&node, &range(), &mut given).await.expect("address");
    }
    assert_eq!(kv.revision(), revision);
    assert_eq!(given.len(), pool.chunk() as usize);
    assert_eq!(node.usage()[0].blocks, 1);
    assert_eq!(node.usage()[0].held, pool.chunk());
    agrees_with_etcd(&kv, &pool, &node, &given);
}

#[tokio::test]
async fn a_claim_of_unknown_outcome_fails_the_add_and_hands_out_nothing_unrecorded() {
    for applied in [true, false] {
        let kv = FakeKv::new();
        let pool = pool_record(&kv, &range());
        let node = started(&kv, settings("a")).await;
        if applied {
            kv.lose_answers(1);
        } else {
            kv.fail_txns(1);
        }
        kv.fail_gets(1);
        let mut given = BTreeSet::new();
        let r = add(&node, &range(), &mut given).await;
        assert!(matches!(r, Err(ClusterError::Etcd(_))), "{applied}: {r:?}");
        assert!(pickable(&node, &range()).is_empty(), "{applied}");
        assert_eq!(blocks(&kv, &pool).len(), usize::from(applied));
        // The store is back: ADDs get addresses, every one of them this node's in etcd.
        for _ in 0..pool.chunk() + 2 {
            add(&node, &range(), &mut given).await.expect("address");
        }
        agrees_with_etcd(&kv, &pool, &node, &given);
    }
}

#[tokio::test]
async fn a_repeated_delivery_applies_once_and_is_no_conflict() {
    let kv = FakeKv::new();
    let pool = pool_record(&kv, &range());
    let node = started(&kv, settings("a")).await;
    kv.repeat_txns(1);
    let mut given = BTreeSet::new();
    add(&node, &range(), &mut given).await.expect("address");
    let recorded = blocks(&kv, &pool);
    assert_eq!(recorded.len(), 1);
    let key = Keys::new(PREFIX).block(NET, &pool.id(), recorded[0].0);
    assert_eq!(kv.value(&key).expect("block").version, 1, "applied once");
    assert_eq!(claims(&node), 1);
    assert_eq!(conflicts(&node), 0);
    agrees_with_etcd(&kv, &pool, &node, &given);
}

/// A node holding a whole block (two chunks) of which only `keep` is in use.
async fn oversized(kv: &FakeKv) -> (FakeNode, BTreeSet<IpAddr>, IpAddr) {
    let mut s = settings("a");
    s.release_grace = Duration::ZERO;
    let node = started(kv, s).await;
    let mut given = BTreeSet::new();
    let keep = add(&node, &range(), &mut given).await.expect("address");
    while node.usage()[0].held <= 8 {
        add(&node, &range(), &mut given).await.expect("address");
    }
    (node, given, keep)
}

#[tokio::test]
async fn a_shrink_of_unknown_outcome_gives_nothing_up_twice() {
    for applied in [true, false] {
        let kv = FakeKv::new();
        let pool = pool_record(&kv, &range());
        let (node, given, keep) = oversized(&kv).await;
        if applied {
            kv.lose_answers(1);
        } else {
            kv.fail_txns(1);
        }
        kv.fail_gets(1);
        let before = blocks(&kv, &pool)[0].1.held.count();
        // Everything but `keep` was freed locally: the shrink gives up all but a chunk more.
        node.housekeep(|| node.plan(&|_, ip| ip == keep)).await;
        let may = pickable(&node, &range());
        assert!(may.len() <= pool.chunk() as usize + 1, "{applied}: {may:?}");
        // Whether or not it applied, nothing it may have given up is handed out.
        agrees_with_etcd(&kv, &pool, &node, &BTreeSet::new());
        let shrunk = blocks(&kv, &pool)[0].1.held.count();
        assert_eq!(shrunk < before, applied, "{given:?}");
        // The next round settles it; the holdings then agree with etcd.
        node.housekeep(|| node.plan(&|_, ip| ip == keep)).await;
        let held = blocks(&kv, &pool)[0].1.held.count();
        assert_eq!(held, pool.chunk() + 1, "{applied}");
        assert_eq!(pickable(&node, &range()).len(), held as usize);
        agrees_with_etcd(&kv, &pool, &node, &BTreeSet::new());
    }
}

#[tokio::test]
async fn a_release_of_unknown_outcome_keeps_the_block_out_of_use() {
    for applied in [true, false] {
        let kv = FakeKv::new();
        let pool = pool_record(&kv, &range());
        let mut s = settings("a");
        s.release_grace = Duration::ZERO;
        let node = started(&kv, s).await;
        let mut given = BTreeSet::new();
        let mut last = None;
        while node.usage().first().map_or(0, |u| u.blocks) < 2 {
            last = Some(add(&node, &range(), &mut given).await.expect("address"));
        }
        let start = |ip: IpAddr| pool.block_of(ip).map(|(s, _)| s);
        let second = start(last.expect("an address"));
        if applied {
            kv.lose_answers(1);
        } else {
            kv.fail_txns(1);
        }
        kv.fail_gets(1);
        // Only the second block is in use: the first goes back.
        let in_use = |_: &str, ip: IpAddr| start(ip) == second;
        node.housekeep(|| node.plan(&in_use)).await;
        assert_eq!(blocks(&kv, &pool).len(), if applied { 1 } else { 2 });
        let may = pickable(&node, &range());
        assert!(
            may.iter().all(|ip| start(*ip) == second),
            "{applied}: {may:?}"
        );
        agrees_with_etcd(&kv, &pool, &node, &BTreeSet::new());
        // The next round settles it.
        node.housekeep(|| node.plan(&in_use)).await;
        assert_eq!(blocks(&kv, &pool).len(), 1, "{applied}");
        assert_eq!(node.usage()[0].blocks, 1, "{applied}");
        agrees_with_etcd(&kv, &pool, &node, &BTreeSet::new());
    }
}

#[tokio::test]
async fn two_nodes_racing_for_one_block_never_share_an_address() {
    let kv = FakeKv::new();
    // One block of 16: both nodes want it.
    let r = subnet("10.0.1.0/28");
    let pool = pool_record(&kv, &r);
    let a = started(&kv, settings("a")).await;
    let b = started(&kv, settings("b")).await;
    kv.hold_txns(true);
    let first = |n: FakeNode| {
        let r = r.clone();
        tokio::spawn(async move {
            let mut given = BTreeSet::new();
            add(&n, &r, &mut given).await.expect("address");
            given
        })
    };
    let (ta, tb) = (first(a.clone()), first(b.clone()));
    until("both claims at etcd", || kv.held_txns() == 2).await;
    kv.hold_txns(false);
    let (mut ga, mut gb) = (ta.await.expect("a"), tb.await.expect("b"));
    let recorded = blocks(&kv, &pool);
    assert_eq!(recorded.len(), 1);
    assert_eq!(claims(&a) + claims(&b), 1, "exactly one owns it");
    let owner = recorded[0].1.owner.clone();
    let loser = if owner == "a" { &b } else { &a };
    assert_eq!(conflicts(loser), 1);
    // The rest of the block, alternately, until neither gets more.
    let mut open = (true, true);
    while open.0 || open.1 {
        if open.0 {
            open.0 = add(&a, &r, &mut ga).await.is_ok();
        }
        if open.1 {
            open.1 = add(&b, &r, &mut gb).await.is_ok();
        }
    }
    assert!(ga.is_disjoint(&gb), "{ga:?} / {gb:?}");
    assert!(pickable(&a, &r).is_disjoint(&pickable(&b, &r)));
    agrees_with_etcd(&kv, &pool, &a, &ga);
    agrees_with_etcd(&kv, &pool, &b, &gb);
    let usable = pool.usable_in(recorded[0].0).count() as usize;
    assert_eq!(
        ga.len() + gb.len(),
        usable,
        "the block's addresses, all handed out"
    );
}

#[tokio::test]
async fn an_unreadable_pool_record_is_corrupt_not_a_loop() {
    let kv = FakeKv::new();
    let key = Keys::new(PREFIX).pool(NET, "10.0.0.0_24");
    kv.set(&key, b"not a pool");
    let node = started(&kv, settings("a")).await;
    let (r, mut given) = (range(), BTreeSet::new());
    let r = tokio::time::timeout(Duration::from_secs(10), add(&node, &r, &mut given)).await;
    assert!(
        matches!(r, Ok(Err(ClusterError::Corrupt(ref k))) if *k == key),
        "{r:?}"
    );
}
