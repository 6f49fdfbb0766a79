//! Arbitrary canonical results survive a trip through each version, minus exactly
//! that version's expected loss.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni_proto::{CniResult, Dns, Interface, IpConfig, Route, Version};
use common::project;
use ipnet::IpNet;
use proptest::prelude::*;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    (ip(), any::<u8>()).prop_map(|(a, p)| {
        let max = if a.is_ipv4() { 33 } else { 129 };
        IpNet::new(a, p % max).unwrap()
    })
}

/// Non-empty, since `""` means "unset" on the wire.
fn text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("\\PC{1,12}")
}

/// Non-zero, since 0 means "unset" on the wire for these fields.
fn nonzero() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(1u32..)
}

fn interface() -> impl Strategy<Value = Interface> {
    ("[a-z0-9]{1,15}", text(), text(), nonzero(), text(), text()).prop_map(
        |(name, mac, sandbox, mtu, socket_path, pci_id)| Interface {
            name,
            mac,
            sandbox,
            mtu,
            socket_path,
            pci_id,
        },
    )
}

fn ip_config() -> impl Strategy<Value = IpConfig> {
    (
        net(),
        proptest::option::of(ip()),
        proptest::option::of(0usize..8),
    )
        .prop_map(|(address, gateway, interface)| IpConfig {
            address,
            gateway,
            interface,
        })
}

fn route() -> impl Strategy<Value = Route> {
    let extra = (
        nonzero(),
        nonzero(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u8>()),
    );
    (net(), proptest::option::of(ip()), nonzero(), extra).prop_map(
        |(dst, gw, mtu, (advmss, priority, table, scope))| Route {
            dst,
            gw,
            mtu,
            advmss,
            priority,
            table,
            scope,
        },
    )
}

fn dns() -> impl Strategy<Value = Dns> {
    let list = || proptest::collection::vec("\\PC{1,10}", 0..3);
    (list(), text(), list(), list()).prop_map(|(nameservers, domain, search, options)| Dns {
        nameservers,
        domain,
        search,
        options,
    })
}

fn result() -> impl Strategy<Value = CniResult> {
    (
        proptest::collection::vec(interface(), 0..4),
        proptest::collection::vec(ip_config(), 0..5),
        proptest::collection::vec(route(), 0..5),
        dns(),
    )
        .prop_map(|(interfaces, ips, routes, dns)| CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn survives_each_version_minus_its_loss(r in result()) {
        for v in Version::ALL {
            let got = r.to_json(v).map(|text| CniResult::parse_json(text.as_bytes(), v).unwrap());
            match project(&r, v) {
                Some(expected) => prop_assert_eq!(got.unwrap(), expected, "{}", v),
                None => prop_assert_eq!(got.unwrap_err().code, 1),
            }
        }
    }

    #[test]
    fn exact_at_1_1_0(r in result()) {
        let back = CniResult::parse(&r.to_value(Version::V1_1_0).unwrap(), Version::V1_1_0).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn emitted_shape_has_only_that_versions_keys(r in result()) {
        for v in Version::ALL {
            let Ok(value) = r.to_value(v) else { continue };
            let text = value.to_string();
            prop_assert_eq!(value["cniVersion"].as_str(), Some(v.as_str()));
            let legacy = v < Version::V0_3_0;
            prop_assert_eq!(value.get("ip4").is_some() || value.get("ip6").is_some(), legacy);
            prop_assert!(!legacy || value.get("ips").is_none() && value.get("interfaces").is_none());
            if v < Version::V1_1_0 {
                prop_assert!(no_v11_keys(&value), "{}", text);
            }
            let labelled = value.get("ips").and_then(|ips| ips.as_array())
                .is_some_and(|ips| ips.iter().all(|ip| ip.get("version").is_some()));
            if let Some(ips) = value.get("ips").and_then(|i| i.as_array()) {
                if !ips.is_empty() {
                    prop_assert_eq!(labelled, v < Version::V1_0_0);
                }
            }
            // 0.x always writes dns; 1.x only when non-empty.
            prop_assert_eq!(value.get("dns").is_some(), v < Version::V1_0_0 || !r.dns.is_empty());
        }
    }
}

fn no_v11_keys(v: &serde_json::Value) -> bool {
    const KEYS: [&str; 7] = [
        "mtu",
        "advmss",
        "priority",
        "table",
        "scope",
        "socketPath",
        "pciID",
    ];
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .all(|(k, v)| !KEYS.contains(&k.as_str()) && no_v11_keys(v)),
        serde_json::Value::Array(a) => a.iter().all(no_v11_keys),
        _ => true,
    }
}
