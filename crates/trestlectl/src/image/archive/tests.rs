use super::*;

/// One entry of a ustar archive read back: name, type flag, link target, contents, mode, mtime, uid, gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub name: String,
    pub kind: u8,
    pub link: String,
    pub data: Vec<u8>,
    pub mode: u32,
    pub mtime: u64,
    pub owner: (u32, u32),
}

fn field(h: &[u8], at: usize, len: usize) -> String {
    let raw = &h[at..at + len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8(raw[..end].to_vec()).unwrap()
}

fn octal(h: &[u8], at: usize, len: usize) -> u64 {
    u64::from_str_radix(field(h, at, len).trim(), 8).unwrap()
}

/// Reads an archive back, checking every header's checksum and the end marker.
pub(crate) fn entries(tar: &[u8]) -> Vec<Read> {
    assert_eq!(tar.len() % 512, 0);
    let mut out = Vec::new();
    let mut at = 0;
    while tar[at..at + 512].iter().any(|&b| b != 0) {
        let h = &tar[at..at + 512];
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(sum, octal(h, 148, 7), "checksum of {}", field(h, 0, 100));
        assert_eq!(&h[257..263], b"ustar\0");
        let size = octal(h, 124, 11) as usize;
        out.push(Read {
            name: field(h, 0, 100),
            kind: h[156],
            link: field(h, 157, 100),
            data: tar[at + 512..at + 512 + size].to_vec(),
            mode: octal(h, 100, 7) as u32,
            mtime: octal(h, 136, 11),
            owner: (octal(h, 108, 7) as u32, octal(h, 116, 7) as u32),
        });
        at += 512 + size.next_multiple_of(512);
    }
    assert!(tar[at..].len() >= 1024 && tar[at..].iter().all(|&b| b == 0));
    out
}

/// The contents of `name` in `entries`.
pub(crate) fn get(entries: &[Read], name: &str) -> Vec<u8> {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .data
        .clone()
}

/// The layout `docker load` reads, checked digest by digest: the manifest names the config by its digest, the
/// config names the layer by its digest. Returns the manifest, the config and the layer.
pub(crate) fn check_layout(archive: &Archive) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
    let e = entries(&archive.bytes);
    let manifest: serde_json::Value = serde_json::from_slice(&get(&e, "manifest.json")).unwrap();
    assert_eq!(manifest.as_array().unwrap().len(), 1, "{manifest}");
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let config_bytes = get(&e, config_name);
    let config_digest = hex_sha256(&config_bytes);
    assert_eq!(config_name, format!("{config_digest}.json"));
    assert_eq!(archive.image_id, format!("sha256:{config_digest}"));
    let config: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
    let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
    let layer = get(&e, layer_name);
    let layer_digest = format!("sha256:{}", hex_sha256(&layer));
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([layer_digest])
    );
    assert_eq!(archive.layer_digest, layer_digest);
    assert_eq!(layer_name, format!("{}/layer.tar", &layer_digest[7..]));
    (manifest, config, layer)
}

fn sample_config() -> Config {
    Config {
        architecture: "arm64".into(),
        created: Some(rfc3339(0)),
        env: vec!["PATH=/usr/local/bin".into()],
        cmd: vec!["run".into()],
        labels: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
    }
}

#[test]
fn a_layer_is_sorted_and_owned_by_root_at_one_time() {
    let tar = layer(
        &[
            Entry::File {
                path: "usr/bin/x",
                mode: 0o755,
                data: b"x",
            },
            Entry::Dir {
                path: "usr/bin",
                mode: 0o755,
            },
            Entry::Symlink {
                path: "usr/bin/y",
                target: "x",
            },
            Entry::Dir {
                path: "tmp",
                mode: 0o1777,
            },
            Entry::Dir {
                path: "usr",
                mode: 0o755,
            },
        ],
        1_700_000_000,
    );
    let e = entries(&tar);
    let names: Vec<&str> = e.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["tmp/", "usr/", "usr/bin/", "usr/bin/x", "usr/bin/y"]
    );
    assert!(e
        .iter()
        .all(|r| r.mtime == 1_700_000_000 && r.owner == (0, 0)));
    assert_eq!((e[0].kind, e[0].mode), (b'5', 0o1777));
    assert_eq!(
        (e[3].kind, e[3].mode, e[3].data.as_slice()),
        (b'0', 0o755, &b"x"[..])
    );
    assert_eq!((e[4].kind, e[4].link.as_str()), (b'2', "x"));
}

#[test]
fn the_archive_is_a_docker_save_with_matching_digests() {
    let layer = layer(
        &[Entry::File {
            path: "bin/run",
            mode: 0o755,
            data: b"program",
        }],
        0,
    );
    let tags = vec!["localhost/x:1".to_owned(), "localhost/x:latest".to_owned()];
    let archive = docker_archive(&layer, &sample_config(), &tags, 0);
    let (manifest, config, got_layer) = check_layout(&archive);
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(tags));
    assert_eq!(got_layer, layer);
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["PATH=/usr/local/bin"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
    assert_eq!(
        config["config"]["Labels"],
        serde_json::json!({"b": "2", "a": "1"})
    );
    assert!(config["config"].get("Entrypoint").is_none());
}

#[test]
fn the_same_input_gives_the_same_bytes_and_id_and_any_change_another() {
    let build = |data: &[u8], config: &Config, mtime: u64| {
        let layer = layer(
            &[Entry::File {
                path: "bin/run",
                mode: 0o755,
                data,
            }],
            mtime,
        );
        docker_archive(&layer, config, &["localhost/x:1".to_owned()], mtime)
    };
    let config = sample_config();
    let first = build(b"program", &config, 0);
    assert_eq!(first, build(b"program", &config, 0));
    assert_ne!(first.image_id, build(b"programs", &config, 0).image_id);
    assert_ne!(first.image_id, build(b"program", &config, 1).image_id);
    let mut other = config.clone();
    other.cmd = vec!["other".into()];
    assert_ne!(first.image_id, build(b"program", &other, 0).image_id);
    // The tags are the manifest's, not the image's: another tag, the same image.
    let layer = layer(
        &[Entry::File {
            path: "bin/run",
            mode: 0o755,
            data: b"program",
        }],
        0,
    );
    let retagged = docker_archive(&layer, &config, &["localhost/y:2".to_owned()], 0);
    assert_eq!(first.image_id, retagged.image_id);
}

#[test]
fn empty_parts_of_the_config_are_left_out() {
    let config = Config {
        architecture: "amd64".into(),
        cmd: vec!["/bin/sleep".into(), "86400".into()],
        ..Config::default()
    };
    assert_eq!(
        String::from_utf8(config.to_json("ab")).unwrap(),
        r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sleep","86400"]},"rootfs":{"type":"layers","diff_ids":["sha256:ab"]}}"#
    );
}

#[test]
fn times_are_written_as_rfc3339_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
    assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
}

#[test]
fn a_time_past_what_ustar_holds_is_clamped() {
    let mut tar = Tar::with_mtime(u64::MAX);
    tar.dir("d");
    assert_eq!(entries(&tar.finish())[0].mtime, 0o777_7777_7777);
}
