use super::*;

/// One entry of a ustar archive: name, type flag, link target, contents.
type Entry = (String, u8, String, Vec<u8>);

fn field(h: &[u8], at: usize, len: usize) -> String {
    let raw = &h[at..at + len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8(raw[..end].to_vec()).unwrap()
}

/// Reads an archive back, checking every header's checksum and the end marker.
fn entries(tar: &[u8]) -> Vec<Entry> {
    assert_eq!(tar.len() % 512, 0);
    let mut out = Vec::new();
    let mut at = 0;
    while tar[at..at + 512].iter().any(|&b| b != 0) {
        let h = &tar[at..at + 512];
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        let stored = u32::from_str_radix(field(h, 148, 7).trim(), 8).unwrap();
        assert_eq!(sum, stored, "checksum of {}", field(h, 0, 100));
        assert_eq!(&h[257..263], b"ustar\0");
        let size = usize::from_str_radix(&field(h, 124, 11), 8).unwrap();
        let data = tar[at + 512..at + 512 + size].to_vec();
        out.push((field(h, 0, 100), h[156], field(h, 157, 100), data));
        at += 512 + size.next_multiple_of(512);
    }
    assert!(tar[at..].len() >= 1024 && tar[at..].iter().all(|&b| b == 0));
    out
}

#[test]
fn the_rootfs_holds_busybox_and_its_applets() {
    let rootfs = rootfs(b"not really busybox");
    let e = entries(&rootfs);
    let find = |n: &str| {
        e.iter()
            .find(|x| x.0 == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(find("bin/busybox").3, b"not really busybox");
    assert_eq!(find("bin/busybox").1, b'0');
    for applet in APPLETS {
        let link = find(&format!("bin/{applet}"));
        assert_eq!((link.1, link.2.as_str()), (b'2', "busybox"));
    }
    for dir in ["bin/", "proc/", "dev/", "sys/", "etc/", "tmp/"] {
        assert_eq!(find(dir).1, b'5');
    }
}

#[test]
fn the_archive_is_a_docker_save_with_matching_digests() {
    let archive = docker_archive(
        b"\x7fELF busybox",
        "localhost/trestle-demo-busybox:t1",
        "amd64",
    );
    let e = entries(&archive);
    let get = |n: &str| e.iter().find(|x| x.0 == n).map(|x| x.3.clone()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&get("manifest.json")).unwrap();
    assert_eq!(
        manifest[0]["RepoTags"][0],
        "localhost/trestle-demo-busybox:t1"
    );
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let config_bytes = get(config_name);
    assert_eq!(config_name, format!("{}.json", hex_sha256(&config_bytes)));
    let config: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
    let layer = get(layer_name);
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", hex_sha256(&layer))
    );
    assert_eq!(layer, rootfs(b"\x7fELF busybox"));
    // The same input, the same bytes: concurrent demos load the same image under their own tags.
    assert_eq!(
        archive,
        docker_archive(
            b"\x7fELF busybox",
            "localhost/trestle-demo-busybox:t1",
            "amd64"
        )
    );
}

/// A 64-bit little-endian ELF header with program headers of the given types.
fn elf(types: &[u32]) -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56 * types.len()];
    e[..6].copy_from_slice(b"\x7fELF\x02\x01");
    e[32..40].copy_from_slice(&64u64.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
    for (i, t) in types.iter().enumerate() {
        e[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
    }
    e
}

#[test]
fn a_program_interpreter_means_dynamic() {
    assert!(!has_interpreter(&elf(&[1, 1, 4])));
    assert!(has_interpreter(&elf(&[6, 3, 1])));
    assert!(!has_interpreter(b"#!/bin/sh\n"));
    // Program headers that point past the end are not read.
    let mut cut = elf(&[1, 3]);
    cut.truncate(100);
    assert!(!has_interpreter(&cut));
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
