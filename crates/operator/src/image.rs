//! `trestlectl image`: the project's container image, built without a registry, a Dockerfile or a builder. One
//! layer, FROM scratch, holding the four binaries in `/usr/local/bin` (and, for one that is linked dynamically, as
//! tools/static-link links trestled by default, the loader and shared objects it needs, as the build machine has
//! them); its default command is `trestled`
//! (a Kubernetes DaemonSet's daemon), and `trestlectl install --plugins-only` in the same image is its init
//! container. The archive is made by [`archive`] (no I/O); this module reads the binaries, writes the archive and
//! loads it into Docker.
//!
//! The image is reproducible: the same binaries give a byte-identical archive and the same image ID, because every
//! time in it is `SOURCE_DATE_EPOCH` (default 0), every entry is owned by root and the entries are sorted.

pub mod archive;

use archive::{Archive, Entry};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binaries the image holds, in `/usr/local/bin`.
pub const BINARIES: [&str; 4] = ["trestle", "trestle-ipam", "trestlectl", "trestled"];

/// Where the binaries are in the image (without the leading slash, as in a layer).
pub const BIN_DIR: &str = "usr/local/bin";

/// The image's default command: the node daemon, found through `PATH`.
pub const CMD: &str = "trestled";

/// The version the image is labelled and tagged with: trestlectl's, which the workspace shares.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The image's description label.
pub const DESCRIPTION: &str =
    "trestle CNI plugins (trestle, trestle-ipam), node daemon (trestled) and operator tool (trestlectl)";

/// The tag when none is given: `localhost/trestle:<version>`.
pub fn default_tag() -> String {
    format!("localhost/trestle:{VERSION}")
}

/// `trestlectl image`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Directory holding trestle, trestle-ipam, trestlectl and trestled (default: beside trestlectl).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// The image's reference, NAME:TAG; repeat for more [default: localhost/trestle:<version>].
    #[arg(long = "tag", value_name = "REF")]
    pub tags: Vec<String>,
    /// Write the `docker save` archive to FILE (through a temporary file beside it, then a rename).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Load the image into Docker (`docker load`).
    #[arg(long)]
    pub load: bool,
    /// Modification time of every file and the image's creation time, in seconds since the epoch.
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        default_value_t = 0,
        value_name = "SECONDS"
    )]
    pub source_date_epoch: u64,
}

/// Why no image was made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tag that Docker would refuse.
    #[error("{reference:?} is not an image reference: {why} (e.g. localhost/trestle:{VERSION})")]
    Reference {
        /// The reference.
        reference: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A binary cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A binary needs a dynamic loader that the image would not hold.
    #[error("{} is linked dynamically (it needs {interpreter}), and the image has no such loader: {}", path.display(), static_hint(name))]
    Dynamic {
        /// Which binary.
        name: String,
        /// Its file.
        path: PathBuf,
        /// The loader it names.
        interpreter: String,
    },
    /// The archive cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The shared objects of a dynamically linked binary could not be found.
    #[error("the shared objects of {}: {why}", path.display())]
    Libraries {
        /// The binary.
        path: PathBuf,
        /// What ldd said, or why it could not run.
        why: String,
    },
    /// `docker load` failed or could not run.
    #[error("docker load: {0}")]
    Load(String),
    /// The summary cannot be printed.
    #[error("cannot print the summary")]
    Print(#[source] std::io::Error),
}

/// How to get a static `name`: tools/static-link links every executable static unless told otherwise, but for
/// trestled, whose `auto` mode is glibc's dynamic link (its allocator is faster than musl's).
fn static_hint(name: &str) -> &'static str {
    if crate::install::PLUGINS.contains(&name) {
        "a plugin runs on the node, whose C library may differ: build it static (without TRESTLE_LINK=dynamic; \
         tools/static-link links the plugins static)"
    } else if name == CMD {
        "read its shared objects from the machine (trestlectl image does), or relink it static against glibc with \
         `TRESTLE_LINK=glibc cargo build --release --locked -p trestled`"
    } else {
        "build without TRESTLE_LINK=dynamic (tools/static-link links the workspace's executables static)"
    }
}

/// A shared object a dynamically linked binary loads, at the absolute path the binary or the loader names it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// Its path, in the image as on the build machine.
    pub path: String,
    /// Its contents (a symbolic link's target's).
    pub bytes: Vec<u8>,
}

/// One binary of the image, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    /// Its name, one of [`BINARIES`].
    pub name: &'static str,
    /// Where it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// Builds the image, writes and loads it as `args` say, and prints the summary ([`summary`]) on `out`; what was
/// written and loaded goes to stderr.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), Error> {
    let tags = if args.tags.is_empty() {
        vec![default_tag()]
    } else {
        args.tags.clone()
    };
    for tag in &tags {
        check_reference(tag)?;
    }
    let from = args
        .from
        .clone()
        .or_else(crate::runtime::own_bin_dir)
        .unwrap_or_else(|| PathBuf::from("."));
    let binaries = read_binaries(&from)?;
    let libraries = runtime_libraries(&binaries)?;
    let archive = build(&binaries, &libraries, &tags, args.source_date_epoch)?;
    if let Some(path) = &args.out {
        write_atomically(path, &archive.bytes)?;
        eprintln!("wrote     {}", path.display());
    }
    if args.load {
        let said = docker_load(&archive.bytes)?;
        for line in said.lines() {
            eprintln!("docker    {line}");
        }
    }
    out.write_all(summary(&tags, &archive, &binaries, &libraries).as_bytes())
        .map_err(Error::Print)
}

/// Reads [`BINARIES`] from `dir`.
pub fn read_binaries(dir: &Path) -> Result<Vec<Binary>, Error> {
    BINARIES
        .iter()
        .map(|&name| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            Ok(Binary { name, path, bytes })
        })
        .collect()
}

/// The loader and shared objects the dynamically linked `binaries` (but the plugins, refused by [`build`]) need, as `ldd` finds them on this machine (which
/// built them); none for static ones.
pub fn runtime_libraries(binaries: &[Binary]) -> Result<Vec<Library>, Error> {
    let mut paths = std::collections::BTreeSet::new();
    for b in binaries {
        let plugin = crate::install::PLUGINS.contains(&b.name);
        if !plugin && crate::binary::interpreter(&b.bytes).is_some() {
            paths.extend(shared_objects(&b.path)?);
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|source| Error::Read {
                path: PathBuf::from(&path),
                source,
            })?;
            Ok(Library { path, bytes })
        })
        .collect()
}

/// The absolute paths `ldd` prints for `exe`: its loader and every shared object it loads, as named (a name that is a
/// symbolic link stays that name; the image holds the file's contents there).
pub fn shared_objects(exe: &Path) -> Result<Vec<String>, Error> {
    let fail = |why: String| Error::Libraries {
        path: exe.to_owned(),
        why,
    };
    let out = Command::new("ldd")
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not found") {
        return Err(fail(format!(
            "{}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ldd(&text))
}

/// The absolute paths of `ldd`'s output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and `/lib64/ld-linux... (0x...)`;
/// the kernel's vDSO has none.
pub fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// The image of `binaries` (with `libraries`, the shared objects of the dynamically linked ones) tagged `tags`,
/// every time in it `epoch`; refuses a dynamically linked binary whose loader is not among `libraries`.
pub fn build(
    binaries: &[Binary],
    libraries: &[Library],
    tags: &[String],
    epoch: u64,
) -> Result<Archive, Error> {
    for b in binaries {
        if let Some(interpreter) = crate::binary::interpreter(&b.bytes) {
            // The plugins are copied onto the node and run there, with the node's loader and C library, not the
            // image's: only a static one runs on every node.
            let plugin = crate::install::PLUGINS.contains(&b.name);
            if plugin || !libraries.iter().any(|l| l.path == interpreter) {
                return Err(Error::Dynamic {
                    name: b.name.to_owned(),
                    path: b.path.clone(),
                    interpreter,
                });
            }
        }
    }
    let paths: Vec<String> = binaries
        .iter()
        .map(|b| format!("{BIN_DIR}/{}", b.name))
        .collect();
    let mut entries = vec![
        Entry::Dir {
            path: "tmp",
            mode: 0o1777,
        },
        Entry::Dir {
            path: "usr",
            mode: 0o755,
        },
        Entry::Dir {
            path: "usr/local",
            mode: 0o755,
        },
        Entry::Dir {
            path: BIN_DIR,
            mode: 0o755,
        },
    ];
    entries.extend(binaries.iter().zip(&paths).map(|(b, path)| Entry::File {
        path,
        mode: 0o755,
        data: &b.bytes,
    }));
    let lib_paths: Vec<&str> = libraries
        .iter()
        .map(|l| l.path.trim_start_matches('/'))
        .collect();
    let existing: Vec<&str> = entries.iter().map(Entry::path).collect();
    let new_dirs: Vec<String> = archive::parent_dirs(lib_paths.iter().copied())
        .into_iter()
        .filter(|d| !existing.contains(&d.as_str()))
        .collect();
    entries.extend(new_dirs.iter().map(|path| Entry::Dir { path, mode: 0o755 }));
    entries.extend(
        libraries
            .iter()
            .zip(&lib_paths)
            .map(|(l, path)| Entry::File {
                path,
                mode: 0o755,
                data: &l.bytes,
            }),
    );
    let layer = archive::layer(&entries, epoch);
    Ok(archive::docker_archive(&layer, &config(epoch), tags, epoch))
}

/// The image config: `PATH` for the binaries, `trestled` as the command (no entrypoint, so any of the binaries
/// runs as `docker run IMAGE trestlectl ...`), the OCI labels.
pub fn config(epoch: u64) -> archive::Config {
    let mut labels = vec![
        ("org.opencontainers.image.description", DESCRIPTION),
        (
            "org.opencontainers.image.licenses",
            env!("CARGO_PKG_LICENSE"),
        ),
        (
            "org.opencontainers.image.source",
            env!("CARGO_PKG_REPOSITORY"),
        ),
        ("org.opencontainers.image.title", "trestle"),
        ("org.opencontainers.image.version", VERSION),
    ];
    // Cargo gives an empty string for a field the manifest leaves out.
    labels.retain(|(_, v)| !v.is_empty());
    archive::Config {
        architecture: archive::oci_arch().to_owned(),
        created: Some(archive::rfc3339(epoch)),
        env: vec![format!("PATH=/{BIN_DIR}")],
        cmd: vec![CMD.to_owned()],
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

/// What `trestlectl image` prints: the tags, the image ID, the archive's size and the binaries' (uncompressed,
/// with how each is linked), one `key: value` per line.
pub fn summary(
    tags: &[String],
    archive: &Archive,
    binaries: &[Binary],
    libraries: &[Library],
) -> String {
    let mut s = String::new();
    for tag in tags {
        s.push_str(&format!("tag: {tag}\n"));
    }
    s.push_str(&format!("image-id: {}\n", archive.image_id));
    s.push_str(&format!("archive: {}\n", size(archive.bytes.len())));
    let total: usize = binaries.iter().map(|b| b.bytes.len()).sum();
    s.push_str(&format!("binaries: {} uncompressed\n", size(total)));
    for b in binaries {
        s.push_str(&format!(
            "  {}: {}, {}\n",
            b.name,
            size(b.bytes.len()),
            crate::binary::describe(&b.bytes)
        ));
    }
    if !libraries.is_empty() {
        let total: usize = libraries.iter().map(|l| l.bytes.len()).sum();
        s.push_str(&format!("libraries: {}\n", size(total)));
        for l in libraries {
            s.push_str(&format!("  {}: {}\n", l.path, size(l.bytes.len())));
        }
    }
    s
}

fn size(bytes: usize) -> String {
    format!(
        "{bytes} bytes ({:.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0)
    )
}

/// Refuses a reference `docker load` would: it needs a tag, a lower-case name of `/`-separated components (the
/// first may be a registry host with a port), and nothing Docker's grammar does not allow.
pub fn check_reference(reference: &str) -> Result<(), Error> {
    let fail = |why| Error::Reference {
        reference: reference.to_owned(),
        why,
    };
    if reference.contains('@') {
        return Err(fail("a digest cannot be loaded under; give a tag"));
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let Some((_, tag)) = last.split_once(':') else {
        return Err(fail("it has no tag"));
    };
    let name = &reference[..reference.len() - tag.len() - 1];
    let tag_ok = tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !tag_ok {
        return Err(fail(
            "a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
        ));
    }
    let parts: Vec<&str> = name.split('/').collect();
    let has_host = parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost");
    if has_host && !host_ok(parts[0]) {
        return Err(fail("the registry host is not HOST[:PORT]"));
    }
    let components = &parts[usize::from(has_host)..];
    if !components.iter().all(|c| component_ok(c)) {
        return Err(fail(
            "a name's components are lower-case letters and digits, separated by '.', '_', '__' or dashes",
        ));
    }
    Ok(())
}

fn host_ok(host: &str) -> bool {
    let (name, port) = host.split_once(':').unwrap_or((host, "1"));
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
}

fn component_ok(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let separators_ok = c
        .split(alnum)
        .filter(|s| !s.is_empty())
        .all(|s| matches!(s, "." | "_" | "__") || s.chars().all(|ch| ch == '-'));
    c.starts_with(alnum)
        && c.ends_with(alnum)
        && c.chars().all(|ch| alnum(ch) || "._-".contains(ch))
        && separators_ok
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename, so `path` is either the old file or
/// the whole archive.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let fail = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("image");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })
}

/// `docker load < archive`: Docker's own words on success ("Loaded image: ...").
pub fn docker_load(archive: &[u8]) -> Result<String, Error> {
    let mut child = Command::new("docker")
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Load(format!("cannot run docker: {e}")))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    // Fed from another thread: docker may answer (an error) before it has read everything, and would block on a
    // full stdout while this thread blocked on a full stdin.
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let mut stdin = stdin;
            // A failed write (docker exited early) shows in docker's status and stderr, which say more.
            let _ = stdin.write_all(archive);
        });
        child.wait_with_output()
    });
    let out = out.map_err(|e| Error::Load(e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Load(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests;
