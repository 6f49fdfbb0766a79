//! Every version to every version: write in `from`, read back, write in `to`, read
//! back; the outcome is the composition of both versions' expected loss.

mod common;

use cni_proto::{CniResult, Version};
use common::{golden, project};

fn trip(r: &CniResult, v: Version) -> Option<CniResult> {
    match r.to_value(v) {
        Ok(value) => Some(CniResult::parse(&value, v).unwrap()),
        Err(e) => {
            assert_eq!(e.code, 1, "{v}: {e}");
            assert_eq!(e.msg, "cannot convert: no valid IP addresses");
            None
        }
    }
}

fn check_matrix(r: &CniResult, label: &str) {
    for from in Version::ALL {
        let at_from = trip(r, from);
        assert_eq!(at_from, project(r, from), "{label}: {from}");
        let Some(at_from) = at_from else { continue };
        for to in Version::ALL {
            let got = trip(&at_from, to);
            assert_eq!(got, project(&at_from, to), "{label}: {from} -> {to}");
            // Loss only accumulates: going through `from` first never keeps more.
            if let (Some(got), Some(direct)) = (&got, project(r, to)) {
                assert_eq!(
                    project(got, from),
                    project(&direct, from),
                    "{label}: {from} -> {to}"
                );
            }
            assert_eq!(
                at_from.convert(to).ok(),
                got,
                "{label}: convert {from} -> {to}"
            );
        }
    }
}

#[test]
fn full_result_through_every_pair() {
    let full = CniResult::parse(&golden("result-1.1.0.json"), Version::V1_1_0).unwrap();
    check_matrix(&full, "full");
}

#[test]
fn ipam_result_through_every_pair() {
    let ipam = CniResult::parse(&golden("ipam-1.0.0.json"), Version::V1_0_0).unwrap();
    check_matrix(&ipam, "ipam");
}

#[test]
fn single_family_results() {
    let full = CniResult::parse(&golden("result-1.1.0.json"), Version::V1_1_0).unwrap();
    for v4 in [true, false] {
        let mut r = full.clone();
        r.ips.retain(|ip| ip.address.addr().is_ipv4() == v4);
        check_matrix(&r, if v4 { "v4 only" } else { "v6 only" });
        // The other family's routes have no address to hang on in 0.2.0.
        let legacy = r.convert(Version::V0_2_0).unwrap();
        assert!(legacy.routes.iter().all(|rt| rt.dst.addr().is_ipv4() == v4));
        assert_eq!(legacy.routes.len(), 2);
    }
}

#[test]
fn no_ips_cannot_go_below_0_3_0() {
    let full = CniResult::parse(&golden("result-1.1.0.json"), Version::V1_1_0).unwrap();
    let mut r = full.clone();
    r.ips.clear();
    for v in Version::ALL {
        assert_eq!(r.to_value(v).is_ok(), v >= Version::V0_3_0, "{v}");
    }
    check_matrix(&r, "no ips");
}

#[test]
fn expected_loss_in_words() {
    let full = CniResult::parse(&golden("result-1.1.0.json"), Version::V1_1_0).unwrap();
    let v1 = full.convert(Version::V1_0_0).unwrap();
    assert_eq!(v1.ips, full.ips);
    assert_eq!(v1.interfaces[2].mtu, None);
    assert_eq!(v1.interfaces[2].sandbox, full.interfaces[2].sandbox);
    assert_eq!(v1.routes[0].priority, None);
    assert_eq!(full.convert(Version::V0_3_0).unwrap(), v1);
    let v02 = full.convert(Version::V0_2_0).unwrap();
    assert!(v02.interfaces.is_empty());
    let addrs: Vec<String> = v02.ips.iter().map(|ip| ip.address.to_string()).collect();
    assert_eq!(addrs, ["10.22.0.5/16", "2001:db8:1::5/64"]);
    assert!(v02.ips.iter().all(|ip| ip.interface.is_none()));
    let dsts: Vec<String> = v02.routes.iter().map(|rt| rt.dst.to_string()).collect();
    assert_eq!(dsts, ["0.0.0.0/0", "192.168.0.0/16", "::/0", "fd00:1::/64"]);
    assert_eq!(v02.dns, full.dns);
}
