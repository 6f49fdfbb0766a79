use super::*;
use base64::Engine;

fn rt(cid: &str) -> RuntimeConf {
    RuntimeConf {
        container_id: cid.into(),
        netns: "/var/run/netns/x".into(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        capability_args: Map::new(),
    }
}

fn entry(cid: &str) -> CachedAttachment {
    CachedAttachment {
        kind: CACHE_KIND.into(),
        container_id: cid.into(),
        config: br#"{"name":"net"}"#.to_vec(),
        ifname: "eth0".into(),
        network: "net".into(),
        netns: "/var/run/netns/x".into(),
        cni_args: vec![("IgnoreUnknown".into(), "1".into())],
        capability_args: Map::new(),
        result: Some(serde_json::json!({"cniVersion":"1.0.0","ips":[]})),
    }
}

/// A file as libcni 1.2 writes it (json.Marshal of cachedInfo), byte for byte.
const GO_FILE: &str = r#"{"kind":"cniCacheV1","containerId":"abc","config":"eyJuYW1lIjoibmV0In0=","ifName":"eth0","networkName":"net","netns":"/var/run/netns/x","cniArgs":[["IgnoreUnknown","1"]],"result":{"cniVersion":"1.0.0","ips":[]}}"#;

#[test]
fn file_format_is_libcnis() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path());
    let path = c.write(&entry("abc")).unwrap();
    assert_eq!(path, d.path().join("results/net-abc-eth0"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), GO_FILE);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&d.path().join("results")), 0o700);
    match c.read("net", &rt("abc")).unwrap().unwrap() {
        Entry::Current(a) => assert_eq!(*a, entry("abc")),
        Entry::Legacy(_) => panic!("current file read as legacy"),
    }
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode("eyJuYW1lIjoibmV0In0=")
            .unwrap(),
        br#"{"name":"net"}"#
    );
}

#[test]
fn legacy_and_broken_files() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path());
    std::fs::create_dir_all(c.results_dir()).unwrap();
    std::fs::write(
        c.results_dir().join("net-old-eth0"),
        r#"{"cniVersion":"0.3.1","ips":[]}"#,
    )
    .unwrap();
    assert!(matches!(
        c.read("net", &rt("old")).unwrap(),
        Some(Entry::Legacy(_))
    ));
    std::fs::write(c.results_dir().join("net-bad-eth0"), "{").unwrap();
    assert!(c.read("net", &rt("bad")).is_err());
    assert!(c.read("net", &rt("none")).unwrap().is_none());
    // Listing passes over both.
    c.write(&entry("abc")).unwrap();
    let all = c.attachments(None).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].runtime_conf(), rt("abc"));
}

#[test]
fn listing_filters_by_container_and_remove_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path());
    for id in ["b", "a", "c"] {
        c.write(&entry(id)).unwrap();
    }
    let ids: Vec<_> = c
        .attachments(None)
        .unwrap()
        .into_iter()
        .map(|a| a.container_id)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(c.attachments(Some("b")).unwrap().len(), 1);
    c.remove("net", &rt("b"));
    c.remove("net", &rt("b"));
    assert_eq!(c.attachments(Some("b")).unwrap().len(), 0);
}

#[test]
fn path_needs_all_parts() {
    let c = Cache::new("/tmp");
    assert!(c.path("", "a", "eth0").is_err());
    assert!(c.path("n", "", "eth0").is_err());
    assert!(c.path("n", "a", "").is_err());
}

#[test]
fn go_null_config_reads_as_empty() {
    let a: CachedAttachment = serde_json::from_str(
        r#"{"kind":"cniCacheV1","containerId":"x","config":null,"ifName":"eth0","networkName":"n"}"#,
    )
    .unwrap();
    assert!(a.config.is_empty());
}
