//! The demo's container image, made on the spot because no registry may be reachable: a one-layer image holding
//! a static busybox and the applets the demo runs (`sleep`, `ip`, `ping`, ...), written as a `docker save`
//! archive ([`trestle_operator::image::archive`]), which `docker load`, `podman load` and `ctr images import` all read. Building
//! it has no I/O.

use std::path::{Path, PathBuf};
use trestle_operator::image::archive::{self, Entry};

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
    trestle_operator::binary::interpreter(elf).is_some()
}

/// A `docker save` archive of one image named `reference` (e.g. `localhost/trestle-demo-busybox:1a2b`) whose only
/// layer is busybox with [`APPLETS`]; its default command sleeps.
pub fn docker_archive(busybox: &[u8], reference: &str, arch: &str) -> Vec<u8> {
    let config = archive::Config {
        architecture: arch.to_owned(),
        cmd: vec!["/bin/sleep".into(), "86400".into()],
        ..archive::Config::default()
    };
    archive::docker_archive(&rootfs(busybox), &config, &[reference.to_owned()], 0).bytes
}

/// The image's root filesystem as a tar: /bin/busybox, its applet links, and the directories runtimes mount on.
pub fn rootfs(busybox: &[u8]) -> Vec<u8> {
    let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries: Vec<Entry<'_>> = ["bin", "dev", "etc", "proc", "sys", "tmp", "root"]
        .into_iter()
        .map(|path| Entry::Dir { path, mode: 0o755 })
        .collect();
    entries.push(Entry::File {
        path: "bin/busybox",
        mode: 0o755,
        data: busybox,
    });
    entries.extend(links.iter().map(|path| Entry::Symlink {
        path,
        target: "busybox",
    }));
    archive::layer(&entries, 0)
}

#[cfg(test)]
mod tests;
