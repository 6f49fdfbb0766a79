//! `trestlectl image`: the image of the workspace's own binaries, built twice (the same bytes), loaded into the
//! machine's Docker engine, inspected and run. Whatever the test leaves in Docker is removed, pass or fail.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

/// Docker's stdout, or a panic with its stderr.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An image tag of this run's own, removed from Docker when dropped (a failing assertion included).
struct Tagged(String);

impl Tagged {
    fn new() -> Tagged {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Tagged(format!(
            "localhost/trestle-image-test:{}-{nanos:08x}",
            std::process::id()
        ))
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "--force", &self.0]);
    }
}

/// `trestlectl image --from <bins> --tag <tag> --out <out> [extra]`: its summary, or a panic with its stderr.
fn image(bins: &Path, tag: &str, out: &Path, extra: &[&str]) -> String {
    let run = Command::new(bins.join("trestlectl"))
        .arg("image")
        .arg("--from")
        .arg(bins)
        .args(["--tag", tag])
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "trestlectl image failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stdout).unwrap()
}

/// The value of `key: value` in the summary.
fn field<'a>(summary: &'a str, key: &str) -> &'a str {
    summary
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} in:\n{summary}"))
}

#[test]
#[ignore = "privileged: needs root, a Docker engine"]
fn the_image_of_the_workspace_binaries_is_reproducible_loads_and_runs_each_binary() {
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        engine.status.success(),
        "this test loads an image into the machine's Docker engine, which does not answer: {}",
        String::from_utf8_lossy(&engine.stderr)
    );
    let bins = common::bin_dir();
    let dir = common::TempDir::new("image");
    let tag = Tagged::new();
    let (first, second) = (dir.0.join("first.tar"), dir.0.join("second.tar"));

    let summary = image(&bins, &tag.0, &first, &["--load"]);
    assert_eq!(field(&summary, "tag"), tag.0);
    let id = field(&summary, "image-id");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{summary}");
    let archive_len = std::fs::metadata(&first).unwrap().len();
    assert!(
        field(&summary, "archive").starts_with(&format!("{archive_len} bytes (")),
        "{summary}"
    );
    // Built again from the same binaries: the same bytes, so the same ID.
    assert_eq!(image(&bins, &tag.0, &second, &[]), summary);
    assert!(
        std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
        "two builds of the same binaries differ"
    );

    // Docker names the image by its config's digest: the ID printed.
    let inspect = docker_ok(&["image", "inspect", "--format", "{{json .}}", &tag.0]);
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Id"], id);
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(
        inspect["Architecture"],
        trestlectl::image::archive::oci_arch()
    );
    let config = &inspect["Config"];
    assert_eq!(config["Cmd"], serde_json::json!(["trestled"]));
    assert_eq!(config["Entrypoint"], serde_json::Value::Null);
    assert_eq!(config["Env"], serde_json::json!(["PATH=/usr/local/bin"]));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        version
    );

    // Each binary runs in the image, found through its PATH: nothing but the binaries is there.
    for (bin, says) in [
        ("trestled", format!("trestled {version}")),
        ("trestlectl", format!("trestlectl {version}")),
    ] {
        let out = docker_ok(&["run", "--rm", "--network", "none", &tag.0, bin, "--version"]);
        assert_eq!(out.trim(), says);
    }
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--env",
        "CNI_COMMAND=VERSION",
        &tag.0,
        "trestle-ipam",
    ]);
    let versions: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        versions["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&"1.1.0".into())),
        "{out}"
    );
}

#[test]
fn a_binary_whose_loader_is_not_on_this_machine_is_refused_before_anything_is_written() {
    let dir = common::TempDir::new("image-dynamic");
    let ctl = Path::new(env!("CARGO_BIN_EXE_trestlectl"));
    // One copy, linked under the other names: the binaries are large in a debug build.
    std::fs::copy(ctl, dir.0.join("trestlectl")).unwrap();
    for bin in ["trestle-ipam", "trestled"] {
        std::fs::hard_link(dir.0.join("trestlectl"), dir.0.join(bin)).unwrap();
    }
    // Debian's shell, linked dynamically, with its loader renamed to one no machine has: its shared objects cannot
    // be found, so the image cannot be made whole.
    let mut sh = std::fs::read("/bin/sh").unwrap();
    let (from, to) = (b"ld-linux-x86-64.so.2", b"ld-absent-x86-64.so");
    let at = sh
        .windows(from.len())
        .position(|w| w == from)
        .expect("an x86-64 glibc shell");
    sh[at..at + to.len()].copy_from_slice(to);
    sh[at + to.len()] = 0;
    std::fs::write(dir.0.join("trestle"), sh).unwrap();
    let out_file = dir.0.join("image.tar");
    let run = Command::new(ctl)
        .arg("image")
        .arg("--from")
        .arg(&dir.0)
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "trestlectl image: {} is linked dynamically (it needs /lib64/ld-absent-x86-64.so), and the image has \
             no such loader",
            dir.0.join("trestle").display()
        )),
        "{stderr}"
    );
    assert!(run.stdout.is_empty());
    assert!(!out_file.exists());
}
