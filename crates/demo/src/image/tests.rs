use super::*;
use trestle_operator::image::archive::reader::{check_layout, entries, Read};

#[test]
fn the_rootfs_holds_busybox_and_its_applets() {
    let rootfs = rootfs(b"not really busybox");
    let e = entries(&rootfs);
    let find = |n: &str| -> &Read {
        e.iter()
            .find(|x| x.name == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(find("bin/busybox").data, b"not really busybox");
    assert_eq!(find("bin/busybox").kind, b'0');
    for applet in APPLETS {
        let link = find(&format!("bin/{applet}"));
        assert_eq!((link.kind, link.link.as_str()), (b'2', "busybox"));
    }
    for dir in ["bin/", "proc/", "dev/", "sys/", "etc/", "tmp/"] {
        assert_eq!(find(dir).kind, b'5');
    }
}

#[test]
fn the_archive_is_a_docker_save_with_matching_digests() {
    let bytes = docker_archive(
        b"\x7fELF busybox",
        "localhost/trestle-demo-busybox:t1",
        "amd64",
    );
    let e = entries(&bytes);
    let config_name = e.iter().find(|x| x.name.ends_with(".json")).unwrap();
    let archive = trestle_operator::image::archive::Archive {
        image_id: format!("sha256:{}", config_name.name.trim_end_matches(".json")),
        layer_digest: format!(
            "sha256:{}",
            archive::hex_sha256(&rootfs(b"\x7fELF busybox"))
        ),
        bytes: bytes.clone(),
    };
    let (manifest, config, layer) = check_layout(&archive);
    assert_eq!(
        manifest[0]["RepoTags"][0],
        "localhost/trestle-demo-busybox:t1"
    );
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["/bin/sleep", "86400"])
    );
    assert_eq!(layer, rootfs(b"\x7fELF busybox"));
    // The same input, the same bytes: concurrent demos load the same image under their own tags.
    assert_eq!(
        bytes,
        docker_archive(
            b"\x7fELF busybox",
            "localhost/trestle-demo-busybox:t1",
            "amd64"
        )
    );
}

#[test]
fn the_machine_busybox_if_any_is_judged_right() {
    // Debian's busybox-static is static; the plain busybox package's is not. Either way the answer matches the
    // file's own program headers.
    if let Ok((path, bytes)) = busybox() {
        assert!(!has_interpreter(&bytes), "{}", path.display());
    }
    assert!(std::fs::read("/bin/sh")
        .map(|b| has_interpreter(&b))
        .unwrap_or(true));
}
