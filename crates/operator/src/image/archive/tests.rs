use super::reader::{check_layout, entries};
use super::*;

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
