use super::nft::{Ex, BASE_TRANSPORT, META_L4PROTO};
use super::*;
use crate::attr::Attrs;
use crate::nf::{BASE_NETWORK, CMP_EQ, META_NFPROTO};
use crate::sock::Msg;

const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

fn peers(port: u16, v4: &[&str], v6: &[&str]) -> VxlanPeers {
    VxlanPeers {
        port,
        v4: v4.iter().map(|s| s.parse().unwrap()).collect(),
        v6: v6.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

/// `(NFT_MSG_* type, flags, operation)` of each message.
fn kinds(msgs: &[Msg]) -> Vec<(u16, u16, &'static str)> {
    msgs.iter().map(|m| (m.kind, m.flags, m.op)).collect()
}

/// The expressions of a rule message: name and data attributes.
fn exprs(rule: &Msg) -> Vec<(String, Vec<u8>)> {
    let list = Attrs::new(&rule.attrs).get(NFTA_RULE_EXPRESSIONS).unwrap();
    Attrs::new(list)
        .map(|(_, e)| {
            let e = Attrs::new(e);
            (
                e.get_str(NFTA_EXPR_NAME).unwrap().to_owned(),
                e.get(NFTA_EXPR_DATA).unwrap().to_vec(),
            )
        })
        .collect()
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[test]
fn wanted_sorts_and_dedups_and_reads_back() {
    let w = Wanted::new(&peers(
        4789,
        &["10.0.0.20", "10.0.0.3", "10.0.0.20"],
        &["fd00::2", "fd00::1"],
    ));
    assert_eq!(w.keys[0], [vec![10, 0, 0, 3], vec![10, 0, 0, 20]]);
    assert_eq!(w.keys[1].len(), 2);
    assert_eq!(
        w.peers(),
        peers(4789, &["10.0.0.3", "10.0.0.20"], &["fd00::1", "fd00::2"])
    );
}

#[test]
fn create_is_one_batch_of_everything_in_order() {
    let w = Wanted::new(&peers(4789, &["10.0.0.1", "10.0.0.2"], &[]));
    let msgs = plan(&Installed::Absent, &w);
    let ops: Vec<&str> = msgs.iter().map(|m| m.op).collect();
    assert_eq!(
        ops,
        [
            "add table",
            "add set",
            "add set",
            "add chain",
            "add rule",
            "add rule",
            "add chain",
            "add rule",
            "add rule",
            "add chain",
            "add rule",
            "add rule",
            // No element message for the empty IPv6 set.
            "add element",
        ]
    );
    // Table, sets and chains are created exclusively (NLM_F_CREATE | NLM_F_EXCL); rules appended.
    for (kind, flags, op) in kinds(&msgs) {
        let want = match op {
            "add rule" => 0xc00,
            "add element" => 0x400,
            _ => 0x600,
        };
        assert_eq!(flags, want, "{op} ({kind})");
    }
    // A damaged table, or one for another port, is replaced in the same batch.
    for installed in [
        Installed::Damaged("x"),
        Installed::Intact(Wanted::new(&peers(8472, &["10.0.0.1", "10.0.0.2"], &[]))),
    ] {
        let replace = plan(&installed, &w);
        assert_eq!(replace[0].op, "delete table");
        assert_eq!(kinds(&replace[1..]), kinds(&msgs));
    }
}

#[test]
fn element_changes_flush_and_refill_only_the_changed_sets() {
    let installed = Installed::Intact(Wanted::new(&peers(4789, &["10.0.0.1"], &["fd00::1"])));
    let same = Wanted::new(&peers(4789, &["10.0.0.1", "10.0.0.1"], &["fd00::1"]));
    assert!(plan(&installed, &same).is_empty(), "the steady state");

    let v4 = Wanted::new(&peers(4789, &["10.0.0.2", "10.0.0.1"], &["fd00::1"]));
    let msgs = plan(&installed, &v4);
    assert_eq!(
        kinds(&msgs),
        [(14, 0, "flush set"), (12, 0x400, "add element")]
    );
    // The flush names the set and carries no element list (which is what makes it a flush).
    let flush = Attrs::new(&msgs[0].attrs);
    assert_eq!(flush.get_str(1), Some(TABLE));
    assert_eq!(flush.get_str(2), Some("nodes4"));
    assert_eq!(flush.get(3), None);
    assert_eq!(
        nft::parse_elems(&msgs[1].attrs),
        [vec![10, 0, 0, 1], vec![10, 0, 0, 2]]
    );
    // Elements of an existing set are named without a transaction id.
    assert_eq!(Attrs::new(&msgs[1].attrs).get(4), None);

    // Emptied: only the flush.
    let empty6 = Wanted::new(&peers(4789, &["10.0.0.1"], &[]));
    let msgs = plan(&installed, &empty6);
    assert_eq!(kinds(&msgs), [(14, 0, "flush set")]);
    assert_eq!(Attrs::new(&msgs[0].attrs).get_str(2), Some("nodes6"));
}

#[test]
fn rules_are_the_documented_expressions() {
    let names = |m: &Msg| -> Vec<String> { exprs(m).into_iter().map(|(n, _)| n).collect() };
    let head = [
        "meta", "cmp", "meta", "cmp", "payload", "cmp", "payload", "lookup",
    ];
    for chain in &CHAINS {
        for rule in &chain.rules {
            let m = nft::new_rule(chain, rule, 4789, true);
            let mut want: Vec<&str> = head.to_vec();
            match rule.action {
                Action::Notrack => want.push("notrack"),
                Action::CountDrop => want.extend(["counter", "immediate"]),
            }
            assert_eq!(names(&m), want, "{}", chain.name);
            let x = exprs(&m);
            let data = |i: usize| Attrs::new(&x[i].1);
            // meta nfproto ipv4|ipv6, meta l4proto udp.
            assert_eq!(data(0).get(2), Some(&be32(15)[..]));
            assert_eq!(data(2).get(2), Some(&be32(16)[..]));
            let cmp_value = |i: usize| Attrs::new(data(i).get(3).unwrap()).get(1).unwrap().to_vec();
            assert_eq!(cmp_value(1), [rule.family.nfproto()]);
            assert_eq!(cmp_value(3), [17]);
            // udp dport: transport header (2), offset 2, 2 bytes, big-endian port.
            assert_eq!(data(4).get(2), Some(&be32(2)[..]));
            assert_eq!(data(4).get(3), Some(&be32(2)[..]));
            assert_eq!(data(4).get(4), Some(&be32(2)[..]));
            assert_eq!(cmp_value(5), [0x12, 0xb5]);
            // ip[6] saddr|daddr from the network header (1).
            let (saddr, daddr) = rule.family.addr_offsets();
            let offset = if rule.source { saddr } else { daddr };
            assert_eq!(data(6).get(2), Some(&be32(1)[..]));
            assert_eq!(data(6).get(3), Some(&be32(offset)[..]));
            assert_eq!(data(6).get(4), Some(&be32(rule.family.addr_len())[..]));
            // lookup: set name, register 1, the set's transaction id, NFT_LOOKUP_F_INV for `!=` only.
            let set = nft::set_of(rule.family);
            let lookup = data(7);
            assert_eq!(lookup.get_str(1), Some(set.name));
            assert_eq!(lookup.get(2), Some(&be32(1)[..]));
            assert_eq!(lookup.get(4), Some(&be32(set.id)[..]));
            let inv = u32::from(chain.name == "input");
            assert_eq!(lookup.get(5), Some(&be32(inv)[..]), "{}", chain.name);
            if rule.action == Action::CountDrop {
                // immediate: verdict register, NF_DROP, no chain.
                let imm = data(9);
                assert_eq!(imm.get(1), Some(&be32(0)[..]));
                let verdict = Attrs::new(Attrs::new(imm.get(2).unwrap()).get(2).unwrap());
                assert_eq!(verdict.get(1), Some(&be32(0)[..]));
                assert_eq!(verdict.get(2), None);
            } else {
                assert!(x[8].1.is_empty(), "notrack has no attributes");
            }
            // Against an existing set (not in the batch) the lookup has no id.
            let later = nft::new_rule(chain, rule, 4789, false);
            assert_eq!(Attrs::new(&exprs(&later)[7].1).get(4), None);
        }
    }
}

#[test]
fn rules_parse_back_and_are_recognised_by_port() {
    let rules: Vec<nft::ParsedRule> = CHAINS
        .iter()
        .flat_map(|c| c.rules.iter().map(move |r| nft::new_rule(c, r, 8472, true)))
        .map(|m| nft::parse_rule(&m.attrs).unwrap())
        .collect();
    assert_eq!(port_of(&rules), Some(8472));
    for chain in &CHAINS {
        assert!(rules_match(chain, &rules, 8472), "{}", chain.name);
        assert!(!rules_match(chain, &rules, 4789), "{}", chain.name);
    }
    let input: Vec<_> = rules
        .iter()
        .filter(|r| r.chain == "input")
        .cloned()
        .collect();
    assert_eq!(
        input[0].exprs.as_deref().unwrap(),
        [
            Ex::Meta(META_NFPROTO),
            Ex::Cmp(CMP_EQ, vec![2]),
            Ex::Meta(META_L4PROTO),
            Ex::Cmp(CMP_EQ, vec![17]),
            Ex::Payload {
                base: BASE_TRANSPORT,
                offset: 2,
                len: 2
            },
            Ex::Cmp(CMP_EQ, vec![0x21, 0x18]),
            Ex::Payload {
                base: BASE_NETWORK,
                offset: 12,
                len: 4
            },
            Ex::Lookup {
                set: "nodes4".into(),
                inverted: true
            },
            Ex::Counter,
            Ex::Drop,
        ]
    );
    // A request's counter has no values; a dump's has.
    assert_eq!(input[0].counter, None);
    // A missing rule, a rule too many, or another order is not the chain.
    let input_chain = &CHAINS[2];
    assert!(!rules_match(input_chain, &input[..1], 8472));
    let doubled: Vec<_> = input.iter().chain(&input).cloned().collect();
    assert!(!rules_match(input_chain, &doubled, 8472));
    let swapped: Vec<_> = input.iter().rev().cloned().collect();
    assert!(!rules_match(input_chain, &swapped, 8472));
}

#[test]
fn foreign_expressions_are_not_ours() {
    let chain = &CHAINS[0];
    let good = nft::new_rule(chain, &chain.rules[0], 4789, false);
    let mut a = crate::attr::AttrWriter::new();
    a.str(1, TABLE).str(2, chain.name).nested(4, |e| {
        crate::nft::expr(e, "log", |_| {});
    });
    let foreign = nft::parse_rule(&a.into_bytes()).unwrap();
    assert_eq!(foreign.exprs, None);
    let parsed = nft::parse_rule(&good.attrs).unwrap();
    assert!(!rules_match(chain, &[foreign, parsed.clone()], 4789));
    assert!(rules_match(
        chain,
        &[
            parsed,
            nft::parse_rule(&nft::new_rule(chain, &chain.rules[1], 4789, false).attrs).unwrap()
        ],
        4789
    ));
    // Another table's rule is not parsed at all.
    let mut a = crate::attr::AttrWriter::new();
    a.str(1, "filter").str(2, chain.name);
    assert_eq!(nft::parse_rule(&a.into_bytes()), None);
}

#[test]
fn counters_of_a_dump_are_read() {
    // A dumped counter: NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS as big-endian u64 (and a pad attribute).
    let mut a = crate::attr::AttrWriter::new();
    a.str(1, TABLE).str(2, "input").nested(4, |e| {
        crate::nft::expr(e, "counter", |d| {
            d.bytes(1, &1234u64.to_be_bytes())
                .bytes(2, &7u64.to_be_bytes())
                .bytes(3, &[]);
        });
    });
    let r = nft::parse_rule(&a.into_bytes()).unwrap();
    assert_eq!(r.counter, Some((7, 1234)));
    assert_eq!(r.exprs, Some(vec![Ex::Counter]));
}

#[test]
fn sets_and_chains_read_back_from_their_requests() {
    for set in &SETS {
        let m = nft::new_set(set);
        let a = Attrs::new(&m.attrs);
        assert_eq!(a.get(3), Some(&be32(0)[..]), "no flags");
        let (key_type, key_len) = match set.family {
            Family::V4 => (7, 4),  // nft's ipv4_addr
            Family::V6 => (8, 16), // nft's ipv6_addr
        };
        assert_eq!(a.get(4), Some(&be32(key_type)[..]));
        assert_eq!(a.get(5), Some(&be32(key_len)[..]));
        assert_eq!(a.get(10), Some(&be32(set.id)[..]));
        let dumped = nft::parse_set(&m.attrs).unwrap();
        assert!(nft::set_matches(set, &dumped));
        assert!(!nft::set_matches(&SETS[1 - (set.id as usize - 1)], &dumped));
    }
    for chain in &CHAINS {
        let dumped = nft::parse_chain(&nft::new_chain(chain).attrs).unwrap();
        assert!(nft::chain_matches(chain, &dumped), "{}", chain.name);
        for other in CHAINS.iter().filter(|c| c.name != chain.name) {
            assert!(!nft::chain_matches(other, &dumped));
        }
    }
    // Priority raw (-300) as the kernel's signed 32-bit value.
    let raw = nft::new_chain(&CHAINS[0]);
    let hook = Attrs::new(Attrs::new(&raw.attrs).get(4).unwrap());
    assert_eq!(hook.get(1), Some(&be32(0)[..]), "prerouting");
    assert_eq!(hook.get(2), Some(&[0xff, 0xff, 0xfe, 0xd4][..]));
}

#[test]
fn elements_round_trip() {
    let keys = vec![vec![10, 0, 0, 1], vec![192, 0, 2, 1]];
    let m = nft::new_elems(&SETS[0], &keys, true).remove(0);
    let a = Attrs::new(&m.attrs);
    assert_eq!(a.get_str(2), Some("nodes4"));
    assert_eq!(a.get(4), Some(&be32(1)[..]), "set id in a creating batch");
    assert_eq!(nft::parse_elems(&m.attrs), keys);
    assert!(nft::new_elems(&SETS[0], &[], true).is_empty());
    // Thousands of peers: several messages, each element list inside one netlink attribute.
    let many: Vec<Vec<u8>> = (0..5000u32)
        .map(|i| [0xfd; 12].iter().copied().chain(i.to_be_bytes()).collect())
        .collect();
    let msgs = nft::new_elems(&SETS[1], &many, false);
    assert_eq!(msgs.len(), 5);
    assert!(msgs.iter().all(|m| m.attrs.len() < 65_536));
    let back: Vec<Vec<u8>> = msgs
        .iter()
        .flat_map(|m| nft::parse_elems(&m.attrs))
        .collect();
    assert_eq!(back, many);
    let v6: Ipv6Addr = "fd00::1".parse().unwrap();
    assert_eq!(
        nft::addrs(&[keys[0].clone(), v6.octets().to_vec()]),
        (vec![Ipv4Addr::new(10, 0, 0, 1)], vec![v6])
    );
}

/// The first position of `pat` in `hay` at or after `from`.
fn find(hay: &[u8], pat: &[u8], from: usize) -> usize {
    from + hay[from..]
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("pattern present")
}

/// The kernel behaviour the module documentation lists, in a namespace of the test's own.
#[test]
#[ignore = "privileged: needs root"]
fn kernel_behaviour_the_guard_relies_on() {
    let ns = trestle_netns::NetNs::new_anonymous().expect("create namespace");
    ns.run(|| {
        let mut sock = NfSocket::open().unwrap();
        let gen = || {
            let mut s = NfSocket::open().unwrap();
            crate::nft::parse_gen(&s.get(&crate::nft::get_gen()).unwrap().unwrap()).unwrap()
        };
        let want = Wanted::new(&peers(4789, &["10.0.0.1"], &["fd00::1"]));
        // Missing table: rule dumps are empty, set dumps fail; a rejected batch commits nothing.
        assert!(sock.dump(&nft::get_rules(None)).unwrap().is_empty());
        assert!(sock.dump(&nft::get_rules(Some(INPUT))).unwrap().is_empty());
        let enoent = |r: Result<Vec<Vec<u8>>, Error>| {
            matches!(r, Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT)
        };
        assert!(enoent(sock.dump(&nft::get_sets())));
        let g = gen();
        assert!(sock.batch(&[crate::nft::del_table(TABLE)]).is_err());
        assert_eq!(gen(), g);

        // Lookups resolve the set by name first, by id only when the name is not found.
        let with_lookups = |patch: &dyn Fn(&mut Vec<u8>)| {
            let mut msgs = create(&want);
            for m in msgs.iter_mut().filter(|m| m.op == "add rule") {
                patch(&mut m.attrs);
            }
            msgs
        };
        let wrong_name = with_lookups(&|a| {
            // NFTA_LOOKUP_SET, the first attribute of the lookup: "nodes4" or "nodes6" becomes "nodesX".
            let at = find(a, b"nodes", find(a, b"lookup\0", 0));
            a[at + 5] = b'X';
        });
        sock.batch(&wrong_name).unwrap();
        assert_eq!(read(&mut sock).unwrap(), Installed::Intact(want.clone()));
        sock.batch(&[crate::nft::del_table(TABLE)]).unwrap();
        let wrong_id = with_lookups(&|a| {
            // NFTA_LOOKUP_SET_ID: length 8, type 4, the set's id.
            let lookup = find(a, b"lookup\0", 0);
            let ids: Vec<usize> = [1u32, 2]
                .iter()
                .filter_map(|id| {
                    let attr = [&[8, 0, 4, 0][..], &id.to_be_bytes()].concat();
                    a[lookup..].windows(8).position(|w| w == attr)
                })
                .collect();
            assert_eq!(ids.len(), 1, "one lookup id per rule");
            let at = lookup + ids[0] + 4;
            a[at..at + 4].copy_from_slice(&99u32.to_be_bytes());
        });
        sock.batch(&wrong_id).unwrap();
        assert_eq!(read(&mut sock).unwrap(), Installed::Intact(want.clone()));

        // A flush and the re-adding of a flushed element in one batch keep it; a no-op batch commits nothing.
        let g = gen();
        let key = want.keys[0].clone();
        let same = [
            nft::flush_set(&SETS[0]),
            nft::new_elems(&SETS[0], &key, false).remove(0),
        ];
        sock.batch(&same).unwrap();
        assert_eq!(gen(), g.wrapping_add(1));
        assert_eq!(read(&mut sock).unwrap(), Installed::Intact(want.clone()));
        sock.batch(&same[1..]).unwrap();
        assert_eq!(gen(), g.wrapping_add(1), "an element already there");
        // NFTA_SET_ELEM_LIST_ELEMENTS (3) with no element: accepted, nothing changes.
        let mut empty = same[1].clone();
        let mut a = crate::attr::AttrWriter::new();
        a.str(1, TABLE).str(2, SETS[0].name).nested(3, |_| {});
        empty.attrs = a.into_bytes();
        sock.batch(&[empty]).unwrap();
        assert_eq!(gen(), g.wrapping_add(1), "an empty element list");
        assert_eq!(read(&mut sock).unwrap(), Installed::Intact(want.clone()));
        // Flushing a set that does not exist fails the batch.
        let missing = Set {
            name: "missing",
            family: Family::V4,
            id: 9,
        };
        assert!(sock.batch(&[nft::flush_set(&missing)]).is_err());
    })
    .unwrap();
}
