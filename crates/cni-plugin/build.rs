//! Says, once per build, how the workspace's executables will be linked when that is not the fastest way
//! (tools/static-link), and makes cargo relink them when the linker script, its shim or its settings change (cargo
//! tracks none of them itself: the linker is not an input of any crate).

use std::path::Path;
use std::process::Command;

fn main() {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools");
    for file in ["static-link", "musl-shim.c"] {
        println!("cargo:rerun-if-changed={}", tools.join(file).display());
    }
    for var in [
        "TRESTLE_LINK",
        "TRESTLE_MUSL_DIR",
        "TRESTLE_CC",
        "TRESTLE_PLUGIN_PIE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let linked_by_script = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linked_by_script {
        return;
    }
    let Ok(out) = Command::new("sh")
        .arg(tools.join("static-link"))
        .arg("--probe")
        .output()
    else {
        return;
    };
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line.trim();
    match line.split_once(' ') {
        Some(("glibc", why)) => {
            println!("cargo:warning=executables are linked statically against glibc: {why}")
        }
        Some(("dynamic", why)) => {
            println!("cargo:warning=executables are linked dynamically: {why}")
        }
        _ => {}
    }
}
