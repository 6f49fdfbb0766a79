//! Golden results in every version: parse -> canonical -> emit reproduces the file,
//! and the 1.1.0 file written in each version gives that version's file.

mod common;

use cni_proto::{CniResult, Version};
use common::golden;

#[test]
fn every_golden_round_trips_in_its_own_version() {
    for v in Version::ALL {
        let name = format!("result-{v}.json");
        let text = golden(&name);
        let r = CniResult::parse(&text, v).unwrap();
        assert_eq!(r.to_value(v).unwrap(), text, "{name}");
        // The inner cniVersion decides the shape, whatever the caller assumes.
        for assumed in Version::ALL {
            assert_eq!(
                CniResult::parse(&text, assumed).unwrap(),
                r,
                "{name} as {assumed}"
            );
        }
    }
}

#[test]
fn the_full_result_written_in_each_version_matches_its_golden() {
    let full = CniResult::parse(&golden("result-1.1.0.json"), Version::V1_1_0).unwrap();
    assert_eq!(full.interfaces.len(), 3);
    assert_eq!(full.ips.len(), 4);
    assert_eq!(full.routes.len(), 4);
    for v in Version::ALL {
        assert_eq!(
            full.to_value(v).unwrap(),
            golden(&format!("result-{v}.json")),
            "{v}"
        );
    }
}

#[test]
fn emitted_text_keeps_go_key_order() {
    let full = CniResult::parse(&golden("result-1.1.0.json"), Version::V1_1_0).unwrap();
    let text = full.to_json(Version::V0_4_0).unwrap();
    assert!(text.starts_with(r#"{"cniVersion":"0.4.0","interfaces":[{"name":"cni0","#));
    assert!(text.contains(
        r#"{"version":"4","interface":2,"address":"10.22.0.5/16","gateway":"10.22.0.1"}"#
    ));
    assert!(text.ends_with(r#""options":["ndots:5"]}}"#), "{text}");
    let text = full.to_json(Version::V1_1_0).unwrap();
    assert!(text.contains(
        r#"{"dst":"0.0.0.0/0","gw":"10.22.0.1","mtu":1400,"advmss":1360,"priority":100,"table":100,"scope":0}"#
    ));
}

#[test]
fn abbreviated_ipam_results_and_empty_dns() {
    let files = [
        ("ipam-0.2.0.json", Version::V0_2_0),
        ("ipam-0.4.0.json", Version::V0_4_0),
        ("ipam-1.0.0.json", Version::V1_0_0),
    ];
    let parsed: Vec<CniResult> = files
        .iter()
        .map(|(name, v)| CniResult::parse(&golden(name), *v).unwrap())
        .collect();
    // All three carry the same information.
    assert!(parsed.windows(2).all(|w| w[0] == w[1]));
    assert!(parsed[0].dns.is_empty() && parsed[0].interfaces.is_empty());
    for (name, v) in files {
        // 0.x writes "dns":{}, 1.x leaves it out.
        assert_eq!(parsed[0].to_value(v).unwrap(), golden(name), "{name}");
    }
}
