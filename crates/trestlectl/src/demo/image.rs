//! The demo's container image, made on the spot because no registry may be reachable: a one-layer image holding
//! a static busybox and the applets the demo runs (`sleep`, `ip`, `ping`, ...), written as a `docker save`
//! archive, which `docker load`, `podman load` and `ctr images import` all read. Building it has no I/O.

use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The busybox applets linked in the image.
pub const APPLETS: &[&str] = &[
    "sh", "sleep", "ip", "ping", "ifconfig", "cat", "ls", "hostname",
];

/// Where Debian's `busybox-static` (and most distributions' busybox) installs it.
const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"];

/// Why no image could be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No busybox on the machine.
    #[error("no busybox found (looked in {}): install a static one (Debian: apt-get install busybox-static)", BUSYBOX_PATHS.join(", "))]
    NoBusybox,
    /// A busybox that needs a dynamic loader, which an image of one file does not hold.
    #[error("{} is linked dynamically; the image needs a static busybox (Debian: apt-get install busybox-static)", .0.display())]
    Dynamic(PathBuf),
    /// Reading busybox failed.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Finds a static busybox and reads it.
pub fn busybox() -> Result<(PathBuf, Vec<u8>), Error> {
    let path = BUSYBOX_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(Error::NoBusybox)?;
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    if has_interpreter(&bytes) {
        return Err(Error::Dynamic(path.to_owned()));
    }
    Ok((path.to_owned(), bytes))
}

/// Whether an ELF executable names a program interpreter (`PT_INTERP`), i.e. needs a dynamic loader. Anything
/// this cannot parse counts as static: the runtime will say so if it is not.
pub fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false; // Not a 64-bit little-endian ELF.
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let at = phoff.saturating_add(i * phentsize);
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) == PT_INTERP)
    })
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

/// A `docker save` archive of one image named `reference` (e.g. `localhost/trestle-demo-busybox:1a2b`) whose only
/// layer is busybox with [`APPLETS`]; its default command sleeps.
pub fn docker_archive(busybox: &[u8], reference: &str, arch: &str) -> Vec<u8> {
    let layer = rootfs(busybox);
    let layer_digest = hex_sha256(&layer);
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Cmd":["/bin/sleep","86400"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_digest}"]}}}}"#
    );
    let config_name = format!("{}.json", hex_sha256(config.as_bytes()));
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["{reference}"],"Layers":["{layer_name}"]}}]"#
    );
    let mut tar = Tar::default();
    tar.file(&config_name, 0o644, config.as_bytes());
    tar.dir(&layer_digest);
    tar.file(&layer_name, 0o644, &layer);
    tar.file("manifest.json", 0o644, manifest.as_bytes());
    tar.finish()
}

/// The image's root filesystem as a tar: /bin/busybox, its applet links, and the directories runtimes mount on.
pub fn rootfs(busybox: &[u8]) -> Vec<u8> {
    let mut tar = Tar::default();
    for dir in ["bin", "dev", "etc", "proc", "sys", "tmp", "root"] {
        tar.dir(dir);
    }
    tar.file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        tar.symlink(&format!("bin/{applet}"), "busybox");
    }
    tar.finish()
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A ustar archive written in memory. Names are short (under 100 bytes) and entries owned by root with mtime 0,
/// so the same input always gives the same bytes (and the same image ID).
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    /// Adds a directory.
    pub fn dir(&mut self, path: &str) {
        self.header(&format!("{path}/"), 0o755, 0, b'5', "");
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
        put(&mut h, 136, b"00000000000\0"); // mtime
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

#[cfg(test)]
mod tests;
