//! Container images as `docker save` archives, made in memory: files → layer tar → image config → manifest →
//! archive. `docker load`, `podman load` and `ctr images import` all read the result. No I/O here, and no clock:
//! the same files and settings always give the same bytes, so the same image ID (the config's digest), which is
//! what makes an image reproducible.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// One entry of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A directory (`path` without a trailing slash).
    Dir {
        /// Where, relative to the root.
        path: &'a str,
        /// Permission bits (e.g. `0o755`, `0o1777`).
        mode: u32,
    },
    /// A regular file.
    File {
        /// Where, relative to the root.
        path: &'a str,
        /// Permission bits.
        mode: u32,
        /// Its contents.
        data: &'a [u8],
    },
    /// A symbolic link.
    Symlink {
        /// Where, relative to the root.
        path: &'a str,
        /// What it points at.
        target: &'a str,
    },
}

impl Entry<'_> {
    /// Where the entry is, relative to the root.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// Every directory above `paths` (relative, `/`-separated), each once, in order: what a layer needs before files
/// at those paths.
pub fn parent_dirs<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for p in paths {
        let mut dir = std::path::Path::new(p).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            dir = d.parent();
        }
    }
    dirs.into_iter().collect()
}

/// A layer's tar: the entries sorted by path (so a directory precedes what it holds, and the order never depends
/// on the caller's), owned by root, all with modification time `mtime` (seconds since the epoch).
pub fn layer(entries: &[Entry<'_>], mtime: u64) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    let mut tar = Tar::with_mtime(mtime);
    for entry in sorted {
        match entry {
            Entry::Dir { path, mode } => tar.dir_with_mode(path, mode),
            Entry::File { path, mode, data } => tar.file(path, mode, data),
            Entry::Symlink { path, target } => tar.symlink(path, target),
        }
    }
    tar.finish()
}

/// What the image config says besides its layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The platform's architecture in OCI terms ([`oci_arch`]).
    pub architecture: String,
    /// `created`, RFC 3339 ([`rfc3339`]); left out when `None`.
    pub created: Option<String>,
    /// The environment, `NAME=value`; left out when empty.
    pub env: Vec<String>,
    /// The default command; left out when empty.
    pub cmd: Vec<String>,
    /// Labels, in the order given; left out when empty.
    pub labels: Vec<(String, String)>,
}

impl Config {
    /// The config JSON of an image whose one layer has the digest `layer_digest` (hex). The keys keep the order
    /// written here (serde_json's `preserve_order`), so the bytes are fixed.
    pub fn to_json(&self, layer_digest: &str) -> Vec<u8> {
        let mut run = Map::new();
        if !self.env.is_empty() {
            run.insert("Env".into(), json!(self.env));
        }
        if !self.cmd.is_empty() {
            run.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.labels.is_empty() {
            let labels: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            run.insert("Labels".into(), Value::Object(labels));
        }
        let mut config = Map::new();
        config.insert("architecture".into(), json!(self.architecture));
        config.insert("os".into(), json!("linux"));
        if let Some(created) = &self.created {
            config.insert("created".into(), json!(created));
        }
        config.insert("config".into(), Value::Object(run));
        config.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}),
        );
        serde_json::to_vec(&Value::Object(config)).expect("JSON serialises")
    }
}

/// A `docker save` archive and what identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The archive.
    pub bytes: Vec<u8>,
    /// The image ID, `sha256:<hex>`: the digest of the config, which is how Docker names the image.
    pub image_id: String,
    /// The layer's digest, `sha256:<hex>` (its `diff_id`).
    pub layer_digest: String,
}

/// The `docker save` archive of a one-layer image tagged with every reference of `tags`: the config, the layer in
/// a directory named after its digest, and `manifest.json`. Entries have modification time `mtime`.
pub fn docker_archive(layer: &[u8], config: &Config, tags: &[String], mtime: u64) -> Archive {
    let layer_digest = hex_sha256(layer);
    let config_json = config.to_json(&layer_digest);
    let config_digest = hex_sha256(&config_json);
    let config_name = format!("{config_digest}.json");
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = json!([{"Config": config_name, "RepoTags": tags, "Layers": [layer_name]}]);
    let manifest = serde_json::to_vec(&manifest).expect("JSON serialises");
    let mut tar = Tar::with_mtime(mtime);
    tar.file(&config_name, 0o644, &config_json);
    tar.dir(&layer_digest);
    tar.file(&layer_name, 0o644, layer);
    tar.file("manifest.json", 0o644, &manifest);
    Archive {
        bytes: tar.finish(),
        image_id: format!("sha256:{config_digest}"),
        layer_digest: format!("sha256:{layer_digest}"),
    }
}

/// The image's platform architecture in OCI terms (Go's `GOARCH`), which runtimes match against their own.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Seconds since the epoch as RFC 3339 in UTC (`1970-01-01T00:00:00Z`), the form image configs carry.
pub fn rfc3339(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`, for days on
/// or after the epoch): eras of 400 years, each starting on March 1st so that leap days end a year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The SHA-256 of `data`, in lower-case hex.
pub fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A ustar archive written in memory. Names are short (under 100 bytes) and entries owned by root with one fixed
/// modification time, so the same input always gives the same bytes.
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
    mtime: u64,
}

impl Tar {
    /// An archive whose entries all have modification time `mtime` (seconds since the epoch).
    pub fn with_mtime(mtime: u64) -> Tar {
        Tar {
            buf: Vec::new(),
            mtime,
        }
    }

    /// Adds a directory with mode 0755.
    pub fn dir(&mut self, path: &str) {
        self.dir_with_mode(path, 0o755);
    }

    /// Adds a directory.
    pub fn dir_with_mode(&mut self, path: &str, mode: u32) {
        self.header(&format!("{path}/"), mode, 0, b'5', "");
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.header(path, mode, data.len() as u64, b'0', "");
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().next_multiple_of(512), 0);
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.header(path, 0o777, 0, b'2', target);
    }

    /// The archive, with its end-of-archive marker (two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 1024, 0);
        self.buf
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, kind: u8, link: &str) {
        assert!(name.len() < 100 && link.len() < 100, "tar name too long");
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, bytes: &[u8]| {
            h[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut h, 0, name.as_bytes());
        put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, b"0000000\0"); // uid
        put(&mut h, 116, b"0000000\0"); // gid
        put(&mut h, 124, format!("{size:011o}\0").as_bytes());
        // Eleven octal digits hold times up to the year 2242; later ones are clamped rather than overflowing.
        let mtime = self.mtime.min(0o777_7777_7777);
        put(&mut h, 136, format!("{mtime:011o}\0").as_bytes());
        h[156] = kind;
        put(&mut h, 157, link.as_bytes());
        put(&mut h, 257, b"ustar\0"); // magic
        put(&mut h, 263, b"00"); // version
        put(&mut h, 265, b"root");
        put(&mut h, 297, b"root");
        // The checksum is computed with its own field as spaces.
        put(&mut h, 148, b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        self.buf.extend_from_slice(&h);
    }
}

#[cfg(any(test, feature = "archive-reader"))]
pub mod reader;
#[cfg(test)]
mod tests;
