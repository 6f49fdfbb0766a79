//! Configuration parsing against host-local's rules.

mod common;

use common::{ip, parse, with_ranges};
use serde_json::json;
use std::path::PathBuf;
use trestle_ipam_core::{ConfigInput, ErrorKind, IpamConfig, IpamError, DEFAULT_DATA_DIR};

fn reason(err: IpamError) -> String {
    match err {
        IpamError::InvalidConfig { reason, .. } | IpamError::Unsupported { reason, .. } => reason,
        other => panic!("not a config error: {other:?}"),
    }
}

#[test]
fn full_config() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.0.0.53\nsearch a.example\n").unwrap();
    let stdin = json!({
        "cniVersion": "1.1.0", "name": "net1",
        "ipam": {
            "type": "trestle-ipam",
            "dataDir": "/run/x",
            "resolvConf": resolv,
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.2.9", "mtu": 1400}],
            "ranges": [
                [{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.20",
                  "gateway": "10.1.2.254"}],
                [{"subnet": "2001:db8::/64"}]
            ]
        }
    });
    let cfg = parse(&stdin).unwrap();
    assert_eq!(cfg.network, "net1");
    assert_eq!(cfg.data_dir, PathBuf::from("/run/x"));
    assert_eq!(cfg.state_dir(), PathBuf::from("/run/x/net1"));
    assert_eq!(cfg.range_sets.len(), 2);
    let r = &cfg.range_sets[0].0[0];
    assert_eq!(
        (r.range_start, r.range_end),
        (ip("10.1.2.10"), ip("10.1.2.20"))
    );
    assert_eq!(r.gateway, Some(ip("10.1.2.254")));
    assert_eq!(cfg.range_sets[1].0[0].gateway, Some(ip("2001:db8::1")));
    assert_eq!(cfg.routes.len(), 2);
    assert_eq!(cfg.routes[0].gw, None);
    assert_eq!(cfg.routes[1].gw, Some(ip("10.1.2.9")));
    assert_eq!(cfg.routes[1].mtu, Some(1400));
    assert_eq!(cfg.dns.nameservers, ["10.0.0.53"]);
    assert_eq!(cfg.dns.search, ["a.example"]);
}

#[test]
fn defaults() {
    let cfg = parse(&with_ranges(json!([[{"subnet": "10.1.2.0/24"}]]))).unwrap();
    assert_eq!(cfg.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert!(cfg.dns.is_empty() && cfg.routes.is_empty() && cfg.requested.is_empty());
}

#[test]
fn set_order_runtime_legacy_ranges() {
    let stdin = json!({
        "cniVersion": "1.0.0", "name": "n",
        "runtimeConfig": {"ipRanges": [[{"subnet": "10.3.0.0/16"}]]},
        "ipam": {"subnet": "10.2.0.0/16", "rangeStart": "10.2.0.5",
                 "ranges": [[{"subnet": "10.1.0.0/16"}]]}
    });
    let cfg = parse(&stdin).unwrap();
    let subnets: Vec<String> = cfg
        .range_sets
        .iter()
        .map(|s| s.0[0].subnet.to_string())
        .collect();
    assert_eq!(subnets, ["10.3.0.0/16", "10.2.0.0/16", "10.1.0.0/16"]);
    assert_eq!(cfg.range_sets[1].0[0].range_start, ip("10.2.0.5"));
}

#[test]
fn legacy_fields_without_subnet_are_ignored() {
    let stdin = json!({"name": "n", "ipam": {"rangeStart": "10.2.0.5",
                                            "ranges": [[{"subnet": "10.1.0.0/16"}]]}});
    assert_eq!(parse(&stdin).unwrap().range_sets.len(), 1);
}

#[test]
fn missing_ipam_or_ranges() {
    let err = parse(&json!({"name": "n"})).unwrap_err();
    assert!(err.is_invalid_config());
    assert_eq!(reason(err), "IPAM config missing 'ipam' key");
    let err = parse(&json!({"name": "n", "ipam": {"type": "x"}})).unwrap_err();
    assert_eq!(reason(err), "no IP ranges specified");
    let err = parse(&with_ranges(json!([[]]))).unwrap_err();
    assert_eq!(reason(err), "empty range set");
}

#[test]
fn bad_network_names() {
    for name in [
        json!(""),
        json!("../etc"),
        json!("a/b"),
        json!(".hidden"),
        json!(5),
    ] {
        let stdin = json!({"name": name, "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}]]}});
        let err = parse(&stdin).unwrap_err();
        assert!(
            matches!(err, IpamError::InvalidConfig { ref field, .. } if field == "name"),
            "{name}: {err}"
        );
    }
}

#[test]
fn range_errors_name_the_field() {
    let cases = [
        (
            json!([[{"subnet": "10.1.2.3/24"}]]),
            "ipam.ranges[0][0]",
            "host bits set",
        ),
        (
            json!([[{"subnet": "10.1.2.0/31"}]]),
            "ipam.ranges[0][0]",
            "too small to allocate from",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24"}, {"subnet": "nope"}]]),
            "ipam.ranges[0][1].subnet",
            "invalid CIDR",
        ),
        (
            json!([[{"rangeStart": "10.1.2.3"}]]),
            "ipam.ranges[0][0].subnet",
            "missing",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}]]),
            "ipam.ranges[0][0]",
            "not in network",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24", "rangeEnd": "x"}]]),
            "ipam.ranges[0][0].rangeEnd",
            "invalid IP",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24", "gateway": "10.1.3.1"}]]),
            "ipam.ranges[0][0]",
            "gateway 10.1.3.1 not in network",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24"}, {"subnet": "fd00::/64"}]]),
            "ipam.ranges[0]",
            "mixed address families",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.0/25"}]]),
            "ipam.ranges[0]",
            "overlap",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.100"}]]),
            "ipam.ranges",
            "range set 0 overlaps with 1",
        ),
    ];
    for (ranges, want_field, want_reason) in cases {
        let err = parse(&with_ranges(ranges.clone())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert_eq!(err.cni_code(), 7);
        match err {
            IpamError::InvalidConfig { field, reason } => {
                assert_eq!(field, want_field, "{ranges}");
                assert!(reason.contains(want_reason), "{ranges}: {reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn non_overlapping_ranges_in_one_subnet_are_fine() {
    let ranges = json!([[{"subnet": "10.1.2.0/24", "rangeEnd": "10.1.2.99"}],
                        [{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.100"}]]);
    assert_eq!(parse(&with_ranges(ranges)).unwrap().range_sets.len(), 2);
}

#[test]
fn one_set_per_family_below_0_3_0() {
    let stdin = json!({"cniVersion": "0.2.0", "name": "n", "ipam": {"ranges": [
        [{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]}});
    let input = |multi| ConfigInput {
        stdin: &stdin,
        cni_args_ips: vec![],
        multiple_sets_per_family: multi,
    };
    let err = IpamConfig::parse(input(false)).unwrap_err();
    assert_eq!(err.cni_code(), 2);
    assert_eq!(
        reason(err),
        "CNI version 0.2.0 does not support more than 1 address per family"
    );
    assert!(IpamConfig::parse(input(true)).is_ok());
    // One set per family (dual stack) is fine on old versions.
    let stdin = json!({"cniVersion": "0.2.0", "name": "n", "ipam": {"ranges": [
        [{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]}});
    assert!(IpamConfig::parse(ConfigInput {
        stdin: &stdin,
        cni_args_ips: vec![],
        multiple_sets_per_family: false
    })
    .is_ok());
}

#[test]
fn requested_ips_in_order_without_repeats() {
    let stdin = json!({
        "cniVersion": "1.0.0", "name": "n",
        "args": {"cni": {"ips": ["10.1.0.7", "fd00::7/64"]}},
        "runtimeConfig": {"ips": ["10.1.0.8/24", "10.1.0.5", "::ffff:10.1.0.9"]},
        "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}]]}
    });
    let cfg = IpamConfig::parse(ConfigInput {
        stdin: &stdin,
        cni_args_ips: vec![ip("10.1.0.5")],
        multiple_sets_per_family: true,
    })
    .unwrap();
    let want: Vec<_> = ["10.1.0.5", "10.1.0.7", "fd00::7", "10.1.0.8", "10.1.0.9"]
        .map(ip)
        .into();
    assert_eq!(cfg.requested, want);
    let bad = json!({"name": "n", "runtimeConfig": {"ips": ["nope"]},
                     "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}]]}});
    let err = parse(&bad).unwrap_err();
    assert!(
        matches!(err, IpamError::InvalidConfig { ref field, .. } if field == "runtimeConfig.ips"),
        "{err}"
    );
}

#[test]
fn empty_strings_mean_unset_like_go() {
    let cfg = parse(&with_ranges(
        json!([[{"subnet": "10.1.0.0/24", "rangeStart": "", "gateway": ""}]]),
    ))
    .unwrap();
    let r = &cfg.range_sets[0].0[0];
    assert_eq!(
        (r.range_start, r.gateway),
        (ip("10.1.0.1"), Some(ip("10.1.0.1")))
    );
}

#[test]
fn missing_resolv_conf_is_io_error() {
    let stdin = json!({"name": "n", "ipam": {"resolvConf": "/nonexistent/resolv",
                                            "ranges": [[{"subnet": "10.1.0.0/24"}]]}});
    assert!(matches!(parse(&stdin).unwrap_err(), IpamError::Io { .. }));
}
