//! Many plugin invocations at once on one network: the end state must be exact.

mod common;

use common::TestNs;
use std::collections::BTreeSet;
use trestle_firewall::{network_id, Attachment};

const PODS: usize = 60;

fn attachment(i: usize) -> Attachment {
    Attachment::new(format!("pod{i:03}"), "eth0")
}

fn v4(i: usize) -> String {
    // Two subnets, so chains appear and disappear while other pods come and go.
    format!("10.{}.0.{}", 20 + i % 2, i + 2)
}

#[test]
#[ignore = "privileged: needs root"]
fn sixty_concurrent_adds_and_removes_end_exact() {
    let t = TestNs::new("conc");
    // Each thread is a separate "plugin process": its own socket and its own open lock file.
    std::thread::scope(|s| {
        for i in 0..PODS {
            let t = &t;
            s.spawn(move || {
                let mut fw = t.firewall();
                let addrs = [
                    format!("{}/24", v4(i)).parse().unwrap(),
                    format!("fd20::{:x}/64", i + 2).parse().unwrap(),
                ];
                fw.add_pod("conc", &attachment(i), &addrs).unwrap();
                // Every third pod is deleted again straight away, racing the others' adds.
                if i % 3 == 0 {
                    assert_eq!(fw.remove_pod("conc", &attachment(i)).unwrap().len(), 2);
                }
            });
        }
    });
    let table = format!("trestle-{}", network_id("conc"));
    let got: BTreeSet<(String, String)> = t.elements(&table, "pods4").into_iter().collect();
    let want: BTreeSet<(String, String)> = (0..PODS)
        .filter(|i| i % 3 != 0)
        .map(|i| (v4(i), attachment(i).to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(t.elements(&table, "pods6").len(), want.len());
    let text = t.ruleset();
    assert_eq!(text.matches("masquerade").count(), 3, "{text}");

    std::thread::scope(|s| {
        for i in (0..PODS).filter(|i| i % 3 != 0) {
            let t = &t;
            s.spawn(move || {
                let mut fw = t.firewall();
                assert_eq!(fw.remove_pod("conc", &attachment(i)).unwrap().len(), 2);
            });
        }
    });
    assert!(t.ruleset_json().is_empty(), "{}", t.ruleset());
}
