//! Many plugin invocations at once on one network: the end state must be exact.

mod common;

use common::TestNs;
use ipnet::IpNet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use trestle_firewall::network_id;

const PODS: usize = 60;
const NETWORK: &str = "conc";

fn subnets() -> Vec<IpNet> {
    vec![
        "10.20.0.0/24".parse().unwrap(),
        "fd20::/64".parse().unwrap(),
    ]
}

#[test]
#[ignore = "privileged: needs root"]
fn sixty_concurrent_ensures_and_removals_end_exact() {
    let t = TestNs::new("conc");
    let table = format!("trestle-{}", network_id(NETWORK));
    // Each thread is a separate "plugin process": its own socket and its own open lock file. Half of them are
    // then DELs of pods whose network is still in use, racing the other half's ensures. The barrier makes them all
    // find the network missing at once.
    let start = Barrier::new(PODS);
    std::thread::scope(|s| {
        for i in 0..PODS {
            let (t, start) = (&t, &start);
            s.spawn(move || {
                let mut fw = t.firewall();
                start.wait();
                fw.ensure(NETWORK, &subnets()).unwrap();
                if i % 2 == 0 {
                    assert!(!fw.remove_if_unused(NETWORK, || true).unwrap());
                }
            });
        }
    });
    assert_eq!(
        t.chains(),
        [
            (table.clone(), "masq-10.20.0.0/24".to_owned()),
            (table.clone(), "masq-fd20__/64".to_owned()),
        ]
    );
    assert_eq!(
        t.rule_comments(&table, "masq-10.20.0.0/24"),
        ["trestle conc 10.20.0.0/24"]
    );
    assert_eq!(
        t.rule_comments(&table, "masq-fd20__/64"),
        ["trestle conc fd20::/64"]
    );
    t.firewall().check(NETWORK, &subnets()).unwrap();

    // The last pods go at once: every call succeeds, exactly one finds the table to delete.
    let deleted = AtomicUsize::new(0);
    let start = Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (t, deleted, start) = (&t, &deleted, &start);
            s.spawn(move || {
                let mut fw = t.firewall();
                start.wait();
                if fw.remove_if_unused(NETWORK, || false).unwrap() {
                    deleted.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(deleted.load(Ordering::SeqCst), 1);
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}
