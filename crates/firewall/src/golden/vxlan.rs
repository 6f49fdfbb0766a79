//! Golden tests of the VXLAN guard's messages (`tests/golden/vxlan-*.hex`): the batches of a first sync, of a
//! change of peers and of a change of port, and the read requests. The checked-in bytes decode (independently of
//! the encoder) to the layout documented in `src/vxlan.rs`, name every set by one transaction id when the batch
//! creates it, and, replayed to the kernel (privileged), list as that layout with the synced elements.

use super::decode::{decode, split_messages, Decoded};
use super::{decoded_nft, read_fixture, replay, seq_from, FIRST_SEQ};
use crate::sock::{encode_batch, encode_request, DUMP_FLAGS, GET_FLAGS};
use crate::VxlanPeers;
use std::collections::BTreeMap;

const TABLE: &str = "trestle-vxlan";

/// A sync of each fixture, from the state the previous one left.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    Create,
    Update,
    Port,
}

fn peers(step: Step) -> VxlanPeers {
    let (port, v4, v6): (u16, &[&str], &[&str]) = match step {
        Step::Create => (4789, &["192.0.2.2", "192.0.2.1"], &["2001:db8::1"]),
        Step::Update => (4789, &["192.0.2.2", "192.0.2.3"], &[]),
        Step::Port => (8472, &["192.0.2.2", "192.0.2.3"], &[]),
    };
    VxlanPeers {
        port,
        v4: v4.iter().map(|s| s.parse().unwrap()).collect(),
        v6: v6.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

/// The batch `sync_vxlan_guard` sends for `step`.
pub(super) fn batch(step: Step) -> Vec<u8> {
    let installed = match step {
        Step::Create => None,
        Step::Update => Some(peers(Step::Create)),
        Step::Port => Some(peers(Step::Update)),
    };
    let msgs = crate::vxlan::sync_batch(installed.as_ref(), &peers(step));
    encode_batch(&msgs, seq_from(FIRST_SEQ)).bytes
}

/// The requests of a sync's read, then of `vxlan_guard_drops`.
pub(super) fn requests() -> Vec<u8> {
    let mut seq = seq_from(FIRST_SEQ);
    crate::vxlan::read_requests()
        .iter()
        .flat_map(|(msg, dump)| {
            encode_request(msg, if *dump { DUMP_FLAGS } else { GET_FLAGS }, seq())
        })
        .collect()
}

/// The layout block of `src/vxlan.rs`'s documentation as the messages creating it, in nft syntax, for `port`:
/// `set` lines become sets, `chain` lines chains, the indented lines their rules, with the `meta nfproto` and
/// `meta l4proto` the documentation says nft leaves out.
fn documented_create(port: u16) -> Vec<String> {
    let doc = include_str!("../vxlan.rs");
    let block: Vec<&str> = doc
        .lines()
        .map_while(|l| l.strip_prefix("//!"))
        .skip_while(|l| *l != " ```text")
        .skip(1)
        .take_while(|l| *l != " ```")
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    assert!(!block.is_empty(), "vxlan.rs documents the layout");
    let mut out = Vec::new();
    let mut chain = "";
    for line in block {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("set ") {
            out.push(format!(
                "add set inet {TABLE} {} {{ type {}; }}",
                words[1], words[4]
            ));
        } else if line.starts_with("chain ") {
            chain = words[1];
            let (_, spec) = line.split_once("{ ").expect("chain spec");
            out.push(format!("add chain inet {TABLE} {chain} {{ {spec} }}"));
        } else {
            let rule = line
                .trim()
                .trim_end_matches(" }")
                .replace('P', &port.to_string());
            let nfproto = if rule.contains(" ip6 ") {
                "ipv6"
            } else {
                "ipv4"
            };
            out.push(format!(
                "add rule inet {TABLE} {chain} meta nfproto {nfproto} meta l4proto udp {rule}"
            ));
        }
    }
    out
}

fn decoded(file: &str) -> Vec<Decoded> {
    split_messages(&read_fixture(file))
        .into_iter()
        .map(decode)
        .collect()
}

#[test]
fn create_fixture_decodes_to_the_documented_layout() {
    let mut want = vec![
        "begin nf_tables transaction".to_owned(),
        format!(
            "add table inet {TABLE} {{ comment \"{}\" }}",
            crate::vxlan::COMMENT
        ),
    ];
    want.extend(documented_create(4789));
    want.extend([
        format!("add element inet {TABLE} nodes4 {{ 192.0.2.1, 192.0.2.2 }}"),
        format!("add element inet {TABLE} nodes6 {{ 2001:db8::1 }}"),
        "commit".to_owned(),
    ]);
    assert_eq!(decoded_nft("vxlan-create.hex"), want);
    // Six rules, two per chain, each the family's pair of `meta nfproto` and the address field.
    assert_eq!(want.iter().filter(|l| l.starts_with("add rule")).count(), 6);
}

#[test]
fn sets_created_in_a_batch_are_named_by_one_id_each() {
    let msgs = decoded("vxlan-create.hex");
    let mut ids = BTreeMap::new();
    for m in &msgs {
        for (set, id) in &m.set_ids {
            if m.header.contains("NFT_MSG_NEWSET ") {
                assert!(
                    ids.insert(set.clone(), *id).is_none(),
                    "{set} created twice"
                );
            } else {
                assert_eq!(ids.get(set), Some(id), "{}: {set} by another id", m.nft);
            }
        }
    }
    assert_eq!(ids.len(), 2);
    assert_ne!(ids["nodes4"], ids["nodes6"]);
    // Every lookup and element list of the batch carries the id.
    let referring = msgs
        .iter()
        .filter(|m| m.nft.contains('@') || m.nft.starts_with("add element"))
        .count();
    let with_id = msgs
        .iter()
        .filter(|m| !m.set_ids.is_empty() && !m.header.contains("NFT_MSG_NEWSET "))
        .count();
    assert_eq!((referring, with_id), (8, 8));
}

#[test]
fn update_and_port_fixtures_decode() {
    assert_eq!(
        decoded_nft("vxlan-update.hex"),
        [
            "begin nf_tables transaction".to_owned(),
            format!("flush set inet {TABLE} nodes4"),
            format!("add element inet {TABLE} nodes4 {{ 192.0.2.2, 192.0.2.3 }}"),
            format!("flush set inet {TABLE} nodes6"),
            "commit".to_owned(),
        ]
    );
    // Existing sets are named without transaction ids.
    assert!(decoded("vxlan-update.hex")
        .iter()
        .all(|m| m.set_ids.is_empty()));

    let port = decoded_nft("vxlan-port.hex");
    assert_eq!(port[1], format!("delete table inet {TABLE}"));
    let mut want = vec![format!(
        "add table inet {TABLE} {{ comment \"{}\" }}",
        crate::vxlan::COMMENT
    )];
    want.extend(documented_create(8472));
    want.push(format!(
        "add element inet {TABLE} nodes4 {{ 192.0.2.2, 192.0.2.3 }}"
    ));
    assert_eq!(port[2..port.len() - 1], want);

    assert_eq!(
        decoded_nft("vxlan-requests.hex"),
        [
            format!("get table inet {TABLE}"),
            format!("list sets of table inet {TABLE}"),
            "list chains inet".to_owned(),
            format!("list rules of table inet {TABLE}"),
            format!("list set inet {TABLE} nodes4"),
            format!("list set inet {TABLE} nodes6"),
            format!("get table inet {TABLE}"),
            format!("list chain inet {TABLE} input"),
        ]
    );
}

/// What `nft list ruleset` prints with the guard for `port` and the sets' elements.
fn listed(port: u16, elems4: &str, elems6: &str) -> String {
    let elements = |e: &str| match e {
        "" => String::new(),
        e => format!("\t\telements = {{ {e} }}\n"),
    };
    let rules = |a: &str, b: &str, action: &str| {
        format!("\t\tudp dport {port} ip {a} {action}\n\t\tudp dport {port} ip6 {b} {action}\n")
    };
    format!(
        "table inet {TABLE} {{\n\tcomment \"{}\"\n\
         \tset nodes4 {{\n\t\ttype ipv4_addr\n{}\t}}\n\n\
         \tset nodes6 {{\n\t\ttype ipv6_addr\n{}\t}}\n\n\
         \tchain raw-pre {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n{}\t}}\n\n\
         \tchain raw-out {{\n\t\ttype filter hook output priority raw; policy accept;\n{}\t}}\n\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{}\t}}\n}}\n",
        crate::vxlan::COMMENT,
        elements(elems4),
        elements(elems6),
        rules("saddr @nodes4", "saddr @nodes6", "notrack"),
        rules("daddr @nodes4", "daddr @nodes6", "notrack"),
        rules(
            "saddr != @nodes4",
            "saddr != @nodes6",
            "counter packets 0 bytes 0 drop"
        ),
    )
}

#[test]
#[ignore = "privileged: needs root and nft"]
fn vxlan_fixtures_replayed_to_the_kernel_list_as_the_documented_layout() {
    let ns = replay::Ns::new();
    ns.replay("vxlan-create.hex");
    assert_eq!(
        ns.ruleset(),
        listed(4789, "192.0.2.1, 192.0.2.2", "2001:db8::1")
    );
    ns.replay("vxlan-update.hex");
    assert_eq!(ns.ruleset(), listed(4789, "192.0.2.2, 192.0.2.3", ""));
    // Every request is answered: one table, two sets, the chains, six rules, elements, the table, two rules.
    let objects = ns.replay("vxlan-requests.hex");
    assert_eq!(objects.len(), 8);
    assert_eq!(objects[..4], [1, 2, 3, 6]);
    assert_eq!(objects[6..], [1, 2]);
    ns.replay("vxlan-port.hex");
    assert_eq!(ns.ruleset(), listed(8472, "192.0.2.2, 192.0.2.3", ""));
}
