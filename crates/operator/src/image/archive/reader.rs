//! Reads the archives [`super`] writes back, checking them as `docker load` would: the tests of this crate's image
//! and of the demo's busybox image use it.

use super::*;

/// One entry of a ustar archive read back: name, type flag, link target, contents, mode, mtime, uid, gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
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
pub fn entries(tar: &[u8]) -> Vec<Read> {
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
pub fn get(entries: &[Read], name: &str) -> Vec<u8> {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .data
        .clone()
}

/// The layout `docker load` reads, checked digest by digest: the manifest names the config by its digest, the
/// config names the layer by its digest. Returns the manifest, the config and the layer.
pub fn check_layout(archive: &Archive) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
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
