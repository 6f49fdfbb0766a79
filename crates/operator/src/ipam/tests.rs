use super::render::*;
use super::*;

const NOW: i64 = 1_700_000_000_000;

fn alloc(address: &str, id: &str, pod: Option<Pod>, ago_s: Option<i64>) -> Allocation {
    Allocation {
        network: "trestle".into(),
        address: address.into(),
        container_id: id.into(),
        ifname: "eth0".into(),
        pod,
        netns: None,
        since_unix_ms: ago_s.map(|s| NOW - s * 1000),
    }
}

#[test]
fn ages_read_like_kubectl() {
    let at = |s: i64| age(Some(NOW - s * 1000), NOW);
    assert_eq!(at(0), "0s");
    assert_eq!(at(59), "59s");
    assert_eq!(at(60), "1m");
    assert_eq!(at(5 * 60 + 59), "5m");
    assert_eq!(at(3600), "1h");
    assert_eq!(at(47 * 3600 + 3599), "47h");
    assert_eq!(at(48 * 3600), "2d");
    assert_eq!(at(-30), "0s", "a future time is not negative");
    assert_eq!(age(None, NOW), "-");
    assert_eq!(age(Some(0), NOW), "-", "0 is proto3's unset");
    assert_eq!(age(Some(1), i64::MAX), "106751991167d", "no overflow");
}

#[test]
fn container_ids_shorten_like_docker() {
    let id = "0123456789abcdef0123456789abcdef";
    assert_eq!(short_id(id), "0123456789ab");
    assert_eq!(short_id("c1"), "c1");
    assert_eq!(short_id("0123456789ab"), "0123456789ab");
    assert_eq!(
        short_id("ééééééééééééé"),
        "éééééééééééé",
        "cut on a character"
    );
}

#[test]
fn pods_show_namespace_and_name() {
    let pod = |ns: &str, name: &str| Pod {
        namespace: ns.into(),
        name: name.into(),
        uid: "u".into(),
    };
    assert_eq!(pod_text(Some(&pod("default", "web-0"))), "default/web-0");
    assert_eq!(pod_text(Some(&pod("", "web-0"))), "web-0");
    assert_eq!(pod_text(Some(&pod("default", ""))), "-");
    assert_eq!(pod_text(None), "-");
}

#[test]
fn listing_is_readable_at_a_glance() {
    let l = Listing {
        source: SourceInfo {
            kind: SourceKind::Daemon,
            path: "/run/trestle/ipam.sock".into(),
            server: Some("trestled 0.1.0".into()),
            warnings: vec![],
        },
        pools: vec![Pool {
            network: "trestle".into(),
            range_sets: vec!["10.88.0.1-10.88.0.254".into()],
            used: 2,
            free: Some(251),
            cooling: Some(0),
            handed_over_to: None,
        }],
        allocations: vec![
            alloc(
                "10.88.0.2",
                "0123456789abcdef0123456789abcdef",
                Some(Pod {
                    namespace: "default".into(),
                    name: "web-0".into(),
                    uid: "u1".into(),
                }),
                Some(300),
            ),
            alloc("10.88.0.3", "c2", None, None),
        ],
    };
    let want = "\
trestled at /run/trestle/ipam.sock (trestled 0.1.0)

NETWORK  RANGES                 USED  FREE  COOLING
trestle  10.88.0.1-10.88.0.254  2     251   0

NETWORK  ADDRESS    CONTAINER     IFNAME  POD            SINCE
trestle  10.88.0.2  0123456789ab  eth0    default/web-0  5m
trestle  10.88.0.3  c2            eth0    -              -
";
    assert_eq!(render_listing(&l, NOW), want);
}

#[test]
fn data_dir_listing_marks_unknowns_and_handovers() {
    let l = Listing {
        source: SourceInfo {
            kind: SourceKind::DataDir,
            path: "/var/lib/cni/networks".into(),
            server: None,
            warnings: vec![],
        },
        pools: vec![Pool {
            network: "trestle".into(),
            range_sets: Vec::new(),
            used: 1,
            free: None,
            cooling: None,
            handed_over_to: Some("/run/trestle/ipam.sock".into()),
        }],
        allocations: vec![Allocation {
            ifname: String::new(),
            ..alloc("10.88.0.9", "legacy", None, Some(7200))
        }],
    };
    let text = render_listing(&l, NOW);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "dataDir /var/lib/cni/networks");
    assert_eq!(lines[3], "trestle  -       1     -     -");
    assert!(
        lines[4].starts_with("note: trestle was handed over to trestled at /run/trestle/ipam.sock")
    );
    assert_eq!(lines[7], "trestle  10.88.0.9  legacy     -       -    2h");
}

#[test]
fn empty_listings_say_so() {
    let mut l = Listing {
        source: SourceInfo {
            kind: SourceKind::DataDir,
            path: "/d".into(),
            server: None,
            warnings: vec![],
        },
        pools: Vec::new(),
        allocations: Vec::new(),
    };
    assert_eq!(render_listing(&l, NOW), "dataDir /d\n\nno networks\n");
    l.pools.push(Pool {
        network: "n".into(),
        range_sets: Vec::new(),
        used: 0,
        free: None,
        cooling: None,
        handed_over_to: None,
    });
    assert!(render_listing(&l, NOW).ends_with("\n\nno allocations\n"));
}

#[test]
fn json_field_names_are_stable() {
    let a = alloc("10.88.0.2", "c1", None, Some(1));
    let v = serde_json::to_value(&a).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "network",
            "address",
            "containerId",
            "ifName",
            "pod",
            "netns",
            "sinceUnixMs"
        ]
    );
    let r = Released {
        network: "n".into(),
        address: "10.0.0.2".into(),
        container_id: "c".into(),
        ifname: "eth0".into(),
    };
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        serde_json::json!({"network":"n","address":"10.0.0.2","containerId":"c","ifName":"eth0"})
    );
    assert_eq!(
        serde_json::to_value(SourceKind::DataDir).unwrap(),
        "dataDir"
    );
}

#[test]
fn released_lines_name_the_full_attachment() {
    let r = Released {
        network: "n".into(),
        address: "10.0.0.2".into(),
        container_id: "0123456789abcdef".into(),
        ifname: String::new(),
    };
    assert_eq!(
        render_released("n", &[r]),
        "released 10.0.0.2 of 0123456789abcdef/- in network n\n"
    );
    assert_eq!(render_released("n", &[]), "nothing released in network n\n");
}

#[test]
fn gc_needs_valid_attachments_or_all() {
    assert!(matches!(
        valid_attachments("n", &[], false),
        Err(Error::NoValid(_))
    ));
    assert!(valid_attachments("n", &[], true).unwrap().is_empty());
    let v = valid_attachments("n", &["c1".into(), "c2/net1".into()], false).unwrap();
    assert_eq!(
        v,
        [Attachment::new("c1", "eth0"), Attachment::new("c2", "net1")]
    );
    assert!(matches!(
        valid_attachments("n", &["c1/a b".into()], false),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn the_default_source_is_the_socket_if_it_exists() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("ipam.sock");
    let data = d.path().join("networks");
    let none = SourceArgs::default();
    assert_eq!(
        Source::resolve_with(&none, &sock, &data),
        Source::DataDir(data.clone())
    );
    std::fs::write(&sock, "").unwrap();
    assert_eq!(
        Source::resolve_with(&none, &sock, &data),
        Source::Daemon(sock.clone())
    );
    let explicit = SourceArgs {
        socket: None,
        data_dir: Some("/x".into()),
    };
    assert_eq!(
        Source::resolve_with(&explicit, &sock, &data),
        Source::DataDir("/x".into())
    );
}
