//! Finding a plugin on `CNI_PATH` and running it as libcni's `RawExec` does: the parent environment plus all six
//! `CNI_*` variables (set even when empty), the config on stdin, stderr passed through, stdout read back.

use cni_proto::CniError;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The `CNI_*` environment of one call.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// `CNI_COMMAND`.
    pub command: &'static str,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
}

/// Why a call failed.
#[derive(Debug)]
pub enum ExecError {
    /// The plugin could not be started.
    Spawn(std::io::Error),
    /// It ran and failed (or printed what is not a result); the error object it printed, or one made for it.
    Plugin(CniError),
}

/// Runs `plugin`, returning its stdout on success.
pub fn run(plugin: &Path, stdin: &[u8], args: &Args) -> Result<Vec<u8>, ExecError> {
    let out = spawn_retrying(plugin, stdin, args).map_err(ExecError::Spawn)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(ExecError::Plugin(cni_plugin::delegate::parse_failure(
        plugin,
        &out.stdout,
    )))
}

/// A freshly installed binary may still be open for writing ("text file busy"): libcni tries again, up to 5 times,
/// a second apart.
fn spawn_retrying(
    plugin: &Path,
    stdin: &[u8],
    args: &Args,
) -> std::io::Result<std::process::Output> {
    let mut tries = 0;
    loop {
        match spawn(plugin, stdin, args) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

fn spawn(plugin: &Path, stdin: &[u8], args: &Args) -> std::io::Result<std::process::Output> {
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", args.command)
        .env("CNI_CONTAINERID", &args.container_id)
        .env("CNI_NETNS", &args.netns)
        .env("CNI_IFNAME", &args.ifname)
        .env("CNI_ARGS", &args.args)
        .env("CNI_PATH", &args.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    if let Some(mut s) = child.stdin.take() {
        // A plugin may exit without reading all of stdin; its exit status says what happened.
        let _ = s.write_all(stdin);
    }
    child.wait_with_output()
}
