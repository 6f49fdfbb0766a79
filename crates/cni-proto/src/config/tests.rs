use serde_json::json;

use super::*;

fn req(cmd: Command, v: Value) -> Result<NetConf, CniError> {
    parse_request(cmd, v.to_string().as_bytes())
}

fn code(cmd: Command, v: Value) -> u32 {
    req(cmd, v).unwrap_err().code
}

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "net1", "type": "trestle"})
}

#[test]
fn a_full_config() {
    let v = json!({
        "cniVersion": "1.1.0", "name": "mynet", "type": "trestle", "bridge": "br0",
        "ipam": {"type": "trestle-ipam", "subnet": "10.1.0.0/16"},
        "dns": {"nameservers": ["10.1.0.1"], "search": ["x"]},
        "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.5/16"}]},
        "runtimeConfig": {"ips": ["10.1.0.9/16"], "mac": "c2:11:22:33:44:55",
                          "dns": {"servers": ["1.1.1.1"], "searches": ["s"], "options": ["o"]},
                          "ipRanges": [[{"subnet": "10.2.0.0/24"}]], "portMappings": []},
        "args": {"cni": {"ips": ["10.1.0.7"], "mac": "aa:bb:cc:dd:ee:ff", "labels": []}}
    });
    let c = req(Command::Add, v.clone()).unwrap();
    assert_eq!(c.cni_version, Version::V1_1_0);
    assert_eq!(
        (c.name.as_str(), c.plugin_type.as_str()),
        ("mynet", "trestle")
    );
    assert_eq!(c.ipam.as_ref().unwrap()["type"], json!("trestle-ipam"));
    assert_eq!(c.dns.as_ref().unwrap().nameservers, ["10.1.0.1"]);
    assert_eq!(c.runtime_config.ips, ["10.1.0.9/16"]);
    assert_eq!(c.runtime_config.mac.as_deref(), Some("c2:11:22:33:44:55"));
    assert_eq!(
        c.runtime_config.dns,
        Some(RuntimeDns {
            servers: vec!["1.1.1.1".into()],
            searches: vec!["s".into()],
            options: vec!["o".into()],
        })
    );
    assert_eq!(
        c.runtime_config.ip_ranges,
        Some(json!([[{"subnet": "10.2.0.0/24"}]]))
    );
    assert_eq!(c.args_cni_ips(), ["10.1.0.7"]);
    assert_eq!(c.args_cni_mac().as_deref(), Some("aa:bb:cc:dd:ee:ff"));
    assert_eq!(c.raw["bridge"], json!("br0"));
    assert_eq!(Value::Object(c.raw.clone()), v);
    let prev = c.prev_result().unwrap().unwrap();
    assert_eq!(prev.ips[0].address.to_string(), "10.1.0.5/16");
}

#[test]
fn minimal_config_defaults() {
    let c = req(Command::Del, json!({"name": "n"})).unwrap();
    assert_eq!(c.cni_version, Version::V0_1_0);
    assert_eq!(c.plugin_type, "");
    assert!(c.ipam.is_none() && c.dns.is_none() && c.prev_result.is_none() && c.args.is_none());
    assert_eq!(c.runtime_config, RuntimeConfig::default());
    assert_eq!(c.prev_result().unwrap(), None);
    assert!(c.args_cni_ips().is_empty());
    assert_eq!(c.args_cni_mac(), None);
    // Explicit nulls are the same as absent.
    let c = req(
        Command::Add,
        json!({"name": "n", "cniVersion": "", "prevResult": null, "runtimeConfig": null,
               "args": null, "ipam": null, "dns": null}),
    )
    .unwrap();
    assert_eq!(c.cni_version, Version::V0_1_0);
    assert_eq!(c.prev_result, None);
}

#[test]
fn bad_json_is_code_6() {
    for stdin in [
        &b""[..],
        b"{",
        b"not json",
        b"[]",
        b"\"x\"",
        b"12",
        b"{\"name\":\"a\"} x",
    ] {
        let e = parse_request(Command::Add, stdin).unwrap_err();
        assert_eq!(e.code, 6, "{:?}", String::from_utf8_lossy(stdin));
        assert_eq!(e.msg, "failed to decode network config");
    }
}

#[test]
fn names_are_code_7() {
    for bad in [
        json!({"cniVersion": "1.0.0"}),
        json!({"name": ""}),
        json!(null),
    ] {
        let e = req(Command::Add, bad).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (7, "missing network name"));
    }
    for name in ["-x", "a/b", "a b", "../etc", "ä"] {
        let e = req(Command::Add, json!({"name": name})).unwrap_err();
        assert_eq!(e.code, 7, "{name}");
        assert_eq!(e.details.as_deref(), Some(name));
    }
    // A non-string name cannot be decoded at all.
    assert_eq!(code(Command::Add, json!({"name": 5})), 6);
    // The name is checked before the version.
    assert_eq!(
        code(Command::Add, json!({"name": "", "cniVersion": "9.9.9"})),
        7
    );
}

#[test]
fn unsupported_versions_are_code_1() {
    for v in ["9.9.9", "0.5.0", "1.0", "v1.0.0", "1.1.0-rc1", "banana"] {
        let e = req(Command::Add, conf(v)).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (1, "incompatible CNI versions"),
            "{v}"
        );
        assert_eq!(
            e.details.unwrap(),
            format!(
                "config is {v:?}, plugin supports [\"0.1.0\" \"0.2.0\" \"0.3.0\" \"0.3.1\" \
                 \"0.4.0\" \"1.0.0\" \"1.1.0\"]"
            )
        );
    }
    assert_eq!(code(Command::Add, json!({"name": "n", "cniVersion": 1})), 6);
}

#[test]
fn command_minimum_versions() {
    let cases: [(Command, Version); 3] = [
        (Command::Check, Version::V0_4_0),
        (Command::Gc, Version::V1_1_0),
        (Command::Status, Version::V1_1_0),
    ];
    for (cmd, min) in cases {
        for v in Version::ALL {
            let got = req(cmd, conf(v.as_str()));
            if v >= min {
                assert_eq!(got.unwrap().cni_version, v);
            } else {
                let e = got.unwrap_err();
                assert_eq!(e.code, 1, "{cmd} at {v}");
                assert_eq!(e.msg, format!("config version does not allow {cmd}"));
            }
        }
        // Missing version means 0.1.0, too old for all three.
        assert_eq!(code(cmd, json!({"name": "n"})), 1);
        // Newer than anything we speak.
        let e = req(cmd, conf("2.0.0")).unwrap_err();
        assert_eq!(
            (e.code, e.msg),
            (1, format!("plugin version does not allow {cmd}"))
        );
        // Comparable but not an exact match: the generic incompatibility.
        assert_eq!(
            req(cmd, conf("1.1")).unwrap_err().msg,
            "incompatible CNI versions"
        );
        // Too malformed to compare: decoding failure, as in Go.
        assert_eq!(code(cmd, conf("x.y.z")), 6);
        assert_eq!(code(cmd, conf("1.1.0.0")), 6);
    }
    // ADD, DEL and VERSION accept every version.
    for cmd in [Command::Add, Command::Del, Command::Version] {
        for v in Version::ALL {
            assert_eq!(req(cmd, conf(v.as_str())).unwrap().cni_version, v);
        }
    }
    // The spec's own examples.
    assert_eq!(code(Command::Check, conf("0.3.1")), 1);
    assert_eq!(code(Command::Gc, conf("1.0.0")), 1);
}

#[test]
fn wrong_types_of_known_keys_are_code_6() {
    let cases = [
        ("type", json!(1)),
        ("ipam", json!("host-local")),
        ("dns", json!({"nameservers": "1.1.1.1"})),
        ("runtimeConfig", json!({"ips": "10.0.0.1"})),
        ("runtimeConfig", json!({"mac": 5})),
        ("runtimeConfig", json!({"dns": {"servers": [1]}})),
        ("runtimeConfig", json!([])),
        ("args", json!([])),
        ("args", json!({"cni": {"ips": "10.0.0.1"}})),
        ("args", json!({"cni": {"mac": ["x"]}})),
        ("args", json!({"cni": 3})),
        ("ipam", json!([])),
        ("dns", json!([])),
        ("runtimeConfig", json!({"dns": [[]]})),
        ("args", json!({"cni": [["10.0.0.1"]]})),
    ];
    for (key, value) in cases {
        let mut v = conf("1.0.0");
        v[key] = value.clone();
        let e = req(Command::Add, v).unwrap_err();
        assert_eq!(e.code, 6, "{key}: {value}");
        assert!(e.msg.contains(key.split('.').next().unwrap()), "{}", e.msg);
    }
    // Unknown keys, and unknown args namespaces, are passed through untouched.
    let mut v = conf("1.0.0");
    v["args"] = json!({"other": [1, 2], "cni": {"labels": [{"key": "a", "value": "b"}]}});
    v["capabilities"] = json!({"portMappings": true});
    assert!(req(Command::Add, v).is_ok());
}

#[test]
fn prev_result_is_read_in_the_config_version() {
    let mut v = conf("0.2.0");
    v["prevResult"] = json!({"ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1"}});
    let c = req(Command::Add, v.clone()).unwrap();
    let prev = c.prev_result().unwrap().unwrap();
    assert_eq!(prev.ips.len(), 1);
    assert_eq!(prev.ips[0].gateway, Some("10.0.0.1".parse().unwrap()));
    // Its own cniVersion wins.
    v["cniVersion"] = json!("1.0.0");
    v["prevResult"]["cniVersion"] = json!("0.2.0");
    assert_eq!(
        req(Command::Add, v.clone()).unwrap().prev_result().unwrap(),
        Some(prev)
    );
    // A broken prevResult is reported when asked for, not at parse time.
    v["prevResult"] = json!({"ips": "x"});
    let c = req(Command::Add, v).unwrap();
    assert_eq!(c.prev_result().unwrap_err().code, 6);
}

#[test]
fn empty_args_mac_is_unset() {
    let mut v = conf("1.0.0");
    v["args"] = json!({"cni": {"mac": ""}});
    assert_eq!(req(Command::Add, v).unwrap().args_cni_mac(), None);
}

#[test]
fn gc_attachments() {
    let mut v = conf("1.1.0");
    let list =
        json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]);
    v["cni.dev/valid-attachments"] = list.clone();
    let c = req(Command::Gc, v).unwrap();
    let got = c.valid_attachments().unwrap().unwrap();
    assert_eq!(
        got,
        vec![
            Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            },
            Attachment {
                container_id: "c2".into(),
                ifname: "net1".into()
            },
        ]
    );
    // The legacy key is used when the new one is absent.
    let mut v = conf("1.1.0");
    v["cni.dev/attachments"] = list;
    assert_eq!(
        req(Command::Gc, v)
            .unwrap()
            .valid_attachments()
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    // Neither: None (not "delete everything"); an empty list is Some(empty).
    let c = req(Command::Gc, conf("1.1.0")).unwrap();
    assert_eq!(c.valid_attachments().unwrap(), None);
    let mut v = conf("1.1.0");
    v["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(
        req(Command::Gc, v).unwrap().valid_attachments().unwrap(),
        Some(vec![])
    );
    let mut v = conf("1.1.0");
    v["cni.dev/valid-attachments"] = json!([{"containerID": "c1"}]);
    assert_eq!(
        req(Command::Gc, v)
            .unwrap()
            .valid_attachments()
            .unwrap_err()
            .code,
        6
    );
    let mut v = conf("1.1.0");
    v["cni.dev/valid-attachments"] = json!([["c1", "eth0"]]);
    assert_eq!(
        req(Command::Gc, v)
            .unwrap()
            .valid_attachments()
            .unwrap_err()
            .code,
        6
    );
}
