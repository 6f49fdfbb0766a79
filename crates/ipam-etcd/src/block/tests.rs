use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn pool(subnet: &str, block: u8) -> Pool {
    let range = Range::new(subnet.parse().unwrap(), None, None, None).unwrap();
    Pool::new(&range, block).unwrap()
}

#[test]
fn a_v4_pool_is_cut_into_aligned_blocks_without_network_gateway_or_broadcast() {
    let p = pool("10.22.0.0/16", 26);
    assert_eq!(p.block_len(), 64);
    assert_eq!(p.block_count(), 1024);
    assert_eq!(p.id(), "10.22.0.0_16");
    let first = p.block_start(p.block_span().0);
    assert_eq!(first, "10.22.0.0".parse::<IpAddr>().unwrap());
    let usable = p.usable_in(first);
    // .0 is the network, .1 the gateway.
    assert_eq!(usable.count(), 62);
    assert!(!usable.get(0) && !usable.get(1) && usable.get(2));
    let last = p.block_start(p.block_span().1);
    assert_eq!(last, "10.22.255.192".parse::<IpAddr>().unwrap());
    // .255 is the broadcast address.
    assert_eq!(p.usable_in(last).count(), 63);
    assert_eq!(
        p.block_of("10.22.1.70".parse().unwrap()),
        Some(("10.22.1.64".parse().unwrap(), 6))
    );
    assert_eq!(
        p.block_of("10.22.0.1".parse().unwrap()),
        None,
        "the gateway"
    );
    assert_eq!(p.block_of("10.23.0.5".parse().unwrap()), None, "outside");
    assert_eq!(p.chunk(), 32);
}

#[test]
fn a_v6_pool_has_two_to_the_58_blocks_and_still_picks_one() {
    let p = pool("fd00:10::/64", 122);
    assert_eq!(p.block_len(), 64);
    assert_eq!(p.block_count(), 1 << 58);
    let seed = p.seed("node-a");
    let taken: BTreeSet<u128> = [seed, seed + 1].into_iter().collect();
    assert_eq!(p.pick_free(seed, &taken), Some(seed + 2));
    assert_eq!(
        p.block_of("fd00:10::1".parse().unwrap()),
        None,
        "the gateway"
    );
    assert!(p.usable("fd00:10::ffff:ffff:ffff:ffff".parse().unwrap()));
}

#[test]
fn block_sizes_outside_the_subnet_or_too_large_are_refused() {
    let range = Range::new("10.0.0.0/24".parse().unwrap(), None, None, None).unwrap();
    assert!(Pool::new(&range, 23).is_err(), "larger than the subnet");
    assert!(Pool::new(&range, 33).is_err());
    let wide = Range::new("10.0.0.0/8".parse().unwrap(), None, None, None).unwrap();
    assert!(Pool::new(&wide, 19).is_err(), "8192 addresses");
    assert!(Pool::new(&wide, 20).is_ok());
    let e = Pool::new(&range, 23).unwrap_err().to_string();
    assert!(e.contains("blockSize /23"), "{e}");
}

#[test]
fn a_mismatch_names_the_field() {
    let a = pool("10.0.0.0/16", 26);
    let mut b = a.clone();
    assert!(a.mismatch(&b).is_none());
    b.block_prefix = 24;
    let e = a.mismatch(&b).unwrap().to_string();
    assert!(e.contains("blockSize 24") && e.contains("says 26"), "{e}");
    let mut c = a.clone();
    c.gateway = None;
    assert!(a.mismatch(&c).unwrap().to_string().contains("gateway none"));
}

#[test]
fn seeds_spread_node_names_over_the_pool() {
    let p = pool("10.0.0.0/16", 26);
    let seeds: BTreeSet<u128> = (0..100).map(|i| p.seed(&format!("node-{i}"))).collect();
    // 100 names over 1024 blocks: a hash this good collides a handful of times at most.
    assert!(seeds.len() > 90, "{} distinct", seeds.len());
    assert_eq!(p.seed("node-7"), p.seed("node-7"), "stable");
}

#[test]
fn pick_free_wraps_and_reports_a_full_pool() {
    let p = pool("10.0.0.0/28", 30);
    assert_eq!(p.block_count(), 4);
    let (first, last) = p.block_span();
    let taken: BTreeSet<u128> = [last, first].into_iter().collect();
    assert_eq!(p.pick_free(last, &taken), Some(first + 1));
    let all: BTreeSet<u128> = (first..=last).collect();
    assert_eq!(p.pick_free(first, &all), None);
}

#[test]
fn a_block_record_round_trips_and_free_excludes_every_holder() {
    let p = pool("10.0.0.0/24", 26);
    let start = p.block_start(p.block_span().0);
    let usable = p.usable_in(start);
    let mut held = Bitmap::new(64);
    held.set(2, true);
    held.set(3, true);
    let mut borrowed = Bitmap::new(64);
    borrowed.set(10, true);
    let b = Block {
        owner: "a".into(),
        held,
        foreign: [
            ("b".to_string(), borrowed),
            ("c".to_string(), Bitmap::new(64)),
        ]
        .into_iter()
        .collect(),
        writer: "a:1".into(),
        at_ms: 5,
    };
    let bytes = b.encode();
    let back = Block::decode(&bytes, 64).unwrap();
    // An empty foreign set is not written.
    assert_eq!(back.foreign.len(), 1);
    assert_eq!(back.held, b.held);
    let free = back.free(&usable);
    assert_eq!(free.count(), 62 - 3);
    assert!(!free.get(2) && !free.get(10) && free.get(4));
    assert_eq!(back.taken().count(), 3);
    assert!(Block::decode(&bytes, 128).is_none(), "another block size");
    assert!(Block::decode(b"{}", 64).is_none());
}

#[test]
fn hex_with_bits_past_the_end_is_refused() {
    assert!(Bitmap::from_hex("0f", 4).is_some());
    assert!(Bitmap::from_hex("1f", 4).is_none());
    assert!(Bitmap::from_hex("zz", 8).is_none());
    assert!(Bitmap::from_hex("00", 16).is_none());
}

proptest! {
    #[test]
    fn bitmaps_round_trip_through_hex(len in 1u32..300, bits in proptest::collection::vec(0u32..300, 0..40)) {
        let mut b = Bitmap::new(len);
        for i in &bits { b.set(*i, true); }
        let back = Bitmap::from_hex(&b.to_hex(), len).unwrap();
        prop_assert_eq!(&back, &b);
        prop_assert_eq!(b.count() as usize, bits.iter().filter(|i| **i < len).collect::<BTreeSet<_>>().len());
    }

    #[test]
    fn set_algebra_holds(len in 1u32..200, xs in proptest::collection::vec(0u32..200, 0..30), ys in proptest::collection::vec(0u32..200, 0..30)) {
        let mut a = Bitmap::new(len);
        let mut b = Bitmap::new(len);
        for i in &xs { a.set(*i, true); }
        for i in &ys { b.set(*i, true); }
        for i in 0..len {
            prop_assert_eq!(a.union(&b).get(i), a.get(i) || b.get(i));
            prop_assert_eq!(a.minus(&b).get(i), a.get(i) && !b.get(i));
            prop_assert_eq!(a.intersect(&b).get(i), a.get(i) && b.get(i));
        }
    }

    #[test]
    fn pick_free_never_returns_a_taken_block(taken in proptest::collection::btree_set(0u128..64, 0..64), seed in 0u128..64) {
        let p = pool("10.0.0.0/24", 30);
        let first = p.block_span().0;
        let taken: BTreeSet<u128> = taken.into_iter().map(|t| first + t).collect();
        let got = p.pick_free(first + seed, &taken);
        match got {
            Some(n) => prop_assert!(!taken.contains(&n) && (first..first + 64).contains(&n)),
            None => prop_assert_eq!(taken.len(), 64),
        }
    }
}
