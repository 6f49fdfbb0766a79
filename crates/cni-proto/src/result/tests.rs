use serde_json::json;

use super::*;

fn parse(v: Value, version: Version) -> Result<CniResult, CniError> {
    CniResult::parse(&v, version)
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

#[test]
fn rejects_non_objects_and_bad_types_with_code_6() {
    let bad: [(Value, Version); 25] = [
        (json!([]), Version::V1_0_0),
        (json!("x"), Version::V1_0_0),
        (json!(null), Version::V0_2_0),
        (json!({"cniVersion": 1}), Version::V1_0_0),
        (json!({"ips": [{"address": "10.0.0.1"}]}), Version::V1_0_0),
        (
            json!({"ips": [{"address": "10.0.0.1/33"}]}),
            Version::V1_0_0,
        ),
        (
            json!({"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]}),
            Version::V1_0_0,
        ),
        (
            json!({"ips": [{"address": "10.0.0.1/24", "interface": -1}]}),
            Version::V1_0_0,
        ),
        (json!({"ips": [{"gateway": "10.0.0.1"}]}), Version::V1_0_0),
        (json!({"interfaces": [{"mac": "aa"}]}), Version::V1_1_0),
        (
            json!({"interfaces": [{"name": "a", "mtu": -5}]}),
            Version::V1_1_0,
        ),
        (json!({"routes": [{"gw": "10.0.0.1"}]}), Version::V1_0_0),
        (
            json!({"routes": [{"dst": "0.0.0.0/0", "scope": 256}]}),
            Version::V1_1_0,
        ),
        (json!({"ips": {}}), Version::V0_4_0),
        (json!({"dns": {"nameservers": "x"}}), Version::V0_4_0),
        (json!({"ip4": {"gateway": "10.0.0.1"}}), Version::V0_2_0),
        (
            json!({"ip4": {"ip": "10.0.0.1/24", "routes": [{}]}}),
            Version::V0_1_0,
        ),
        // Arrays where Go expects objects (serde alone would read them as tuples).
        (json!({"interfaces": [["eth0"]]}), Version::V1_0_0),
        (json!({"ips": [["10.0.0.1/24"]]}), Version::V1_0_0),
        (
            json!({"cniVersion": "0.3.0", "ip": [["10.0.0.1/24"]]}),
            Version::V1_0_0,
        ),
        (json!({"routes": [["0.0.0.0/0"]]}), Version::V1_0_0),
        (json!({"dns": [["1.1.1.1"]]}), Version::V0_4_0),
        (json!({"ip4": ["10.0.0.1/24"]}), Version::V0_2_0),
        (
            json!({"ip6": {"ip": "::1/64", "routes": [["::/0"]]}}),
            Version::V0_2_0,
        ),
        (json!({"dns": []}), Version::V0_1_0),
    ];
    for (v, version) in bad {
        let e = parse(v.clone(), version).unwrap_err();
        assert_eq!(e.code, 6, "{v}: {e}");
        assert_eq!(e.msg, "failed to decode result");
    }
}

#[test]
fn unknown_inner_version_is_code_1() {
    let e = parse(json!({"cniVersion": "0.5.0"}), Version::V1_0_0).unwrap_err();
    assert_eq!(e.code, 1);
    assert_eq!(e.msg, r#"unsupported CNI result version "0.5.0""#);
}

#[test]
fn inner_version_wins_and_empty_or_null_defers_to_the_caller() {
    let legacy = json!({"ip4": {"ip": "10.0.0.2/24"}});
    let one = CniResult {
        ips: vec![IpConfig {
            address: net("10.0.0.2/24"),
            gateway: None,
            interface: None,
        }],
        ..CniResult::default()
    };
    assert_eq!(parse(legacy.clone(), Version::V0_2_0).unwrap(), one);
    // Read as 1.0.0 the same keys mean nothing.
    assert_eq!(
        parse(legacy.clone(), Version::V1_0_0).unwrap(),
        CniResult::default()
    );
    let mut tagged = legacy.clone();
    tagged["cniVersion"] = json!("0.1.0");
    assert_eq!(parse(tagged, Version::V1_1_0).unwrap(), one);
    for empty in [json!(""), json!(null)] {
        let mut t = legacy.clone();
        t["cniVersion"] = empty;
        assert_eq!(parse(t, Version::V0_2_0).unwrap(), one);
    }
}

#[test]
fn reading_is_lenient_like_go() {
    let v = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": "", "sandbox": "", "mtu": 0, "socketPath": null,
                        "pciID": "", "extra": true}],
        "ips": [{"version": "6", "address": "10.0.0.2/24", "gateway": "", "interface": null}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "", "mtu": 0, "advmss": 0, "priority": 0,
                    "table": 0, "scope": 0}],
        "dns": null,
        "unknown": {"a": 1}
    });
    let r = parse(v, Version::V1_1_0).unwrap();
    assert_eq!(
        r.interfaces,
        vec![Interface {
            name: "eth0".into(),
            ..Interface::default()
        }]
    );
    // The label is ignored: the address says v4.
    assert_eq!(
        r.ips,
        vec![IpConfig {
            address: net("10.0.0.2/24"),
            gateway: None,
            interface: None
        }]
    );
    // table and scope 0 are meaningful; mtu/advmss/priority 0 mean unset.
    assert_eq!(
        r.routes,
        vec![Route {
            dst: net("0.0.0.0/0"),
            gw: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: Some(0),
            scope: Some(0)
        }]
    );
    assert!(r.dns.is_empty());
    let out = r.to_value(Version::V0_4_0).unwrap();
    assert_eq!(out["ips"][0]["version"], json!("4"));
    assert_eq!(out["interfaces"][0], json!({"name": "eth0"}));
}

#[test]
fn null_lists_and_the_0_3_0_ip_typo() {
    let r = parse(
        json!({"interfaces": null, "ips": null, "routes": null, "dns": {"search": null}}),
        Version::V0_4_0,
    )
    .unwrap();
    assert_eq!(r, CniResult::default());
    let typo = json!({"cniVersion": "0.3.0", "ip": [{"version": "4", "address": "10.0.0.2/24"}]});
    assert_eq!(parse(typo, Version::V0_3_0).unwrap().ips.len(), 1);
    // Written as 0.3.0 it uses "ips", like every implementation.
    let out = CniResult::parse_json(br#"{"ips":[{"address":"10.0.0.2/24"}]}"#, Version::V1_0_0)
        .unwrap()
        .to_value(Version::V0_3_0)
        .unwrap();
    assert!(out.get("ips").is_some() && out.get("ip").is_none());
}

#[test]
fn host_bits_and_prefixes_are_kept() {
    let r = parse(
        json!({"ips": [{"address": "10.1.2.3/8"}, {"address": "2001:db8::7/128"}],
               "routes": [{"dst": "10.9.9.9/8"}]}),
        Version::V1_0_0,
    )
    .unwrap();
    let out = r.to_value(Version::V1_0_0).unwrap();
    assert_eq!(out["ips"][0]["address"], json!("10.1.2.3/8"));
    assert_eq!(out["ips"][1]["address"], json!("2001:db8::7/128"));
    assert_eq!(out["routes"][0]["dst"], json!("10.9.9.9/8"));
}

#[test]
fn zero_fields_are_not_written() {
    let r = CniResult {
        interfaces: vec![Interface {
            name: "x".into(),
            mac: Some(String::new()),
            mtu: Some(0),
            ..Interface::default()
        }],
        routes: vec![Route {
            dst: net("::/0"),
            gw: None,
            mtu: Some(0),
            advmss: Some(0),
            priority: Some(0),
            table: Some(0),
            scope: Some(253),
        }],
        dns: Dns {
            domain: Some(String::new()),
            ..Dns::default()
        },
        ..CniResult::default()
    };
    let out = r.to_value(Version::V1_1_0).unwrap();
    assert_eq!(
        out,
        json!({"cniVersion": "1.1.0", "interfaces": [{"name": "x"}],
               "routes": [{"dst": "::/0", "table": 0, "scope": 253}]})
    );
    assert_eq!(
        r.to_value(Version::V0_3_1).unwrap(),
        json!({"cniVersion": "0.3.1", "interfaces": [{"name": "x"}],
               "routes": [{"dst": "::/0"}], "dns": {}})
    );
}

#[test]
fn legacy_write_needs_an_address() {
    let r = CniResult {
        routes: vec![Route {
            dst: net("0.0.0.0/0"),
            gw: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }],
        ..CniResult::default()
    };
    for v in [Version::V0_1_0, Version::V0_2_0] {
        let e = r.to_json(v).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (1, "cannot convert: no valid IP addresses")
        );
        assert_eq!(e.error_code(), Some(ErrorCode::IncompatibleVersion));
    }
}

#[test]
fn parse_json_decodes_bytes() {
    assert_eq!(
        CniResult::parse_json(b"nope", Version::V1_0_0)
            .unwrap_err()
            .code,
        6
    );
    let r = CniResult::parse_json(br#"{"cniVersion":"1.0.0"}"#, Version::V1_1_0).unwrap();
    assert_eq!(r, CniResult::default());
}

#[test]
fn dns_is_empty() {
    assert!(Dns::default().is_empty());
    assert!(Dns {
        domain: Some(String::new()),
        ..Dns::default()
    }
    .is_empty());
    for d in [
        Dns {
            nameservers: vec!["1.1.1.1".into()],
            ..Dns::default()
        },
        Dns {
            domain: Some("x".into()),
            ..Dns::default()
        },
        Dns {
            search: vec!["x".into()],
            ..Dns::default()
        },
        Dns {
            options: vec!["x".into()],
            ..Dns::default()
        },
    ] {
        assert!(!d.is_empty());
    }
}
