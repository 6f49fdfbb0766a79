//! Invoking a plugin binary exactly as a CNI runtime does: the six `CNI_*` variables (empty ones included), the
//! network config on stdin, the result or error object read from stdout, stderr passed through. The plugin runs
//! inside a chosen "host" namespace, so tests and the demo never touch the machine's own.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trestle_netns::NetNs;

/// One plugin call.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The plugin binary.
    pub plugin: PathBuf,
    /// `CNI_COMMAND`.
    pub command: String,
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
    /// Extra environment (for example logging settings).
    pub extra_env: Vec<(String, String)>,
    /// Runs the plugin in a process group of its own, so a Ctrl-C at the terminal reaches only the caller, which
    /// then finishes (or undoes) the call instead of leaving it half-done (the demo).
    pub own_process_group: bool,
}

/// What the plugin did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether it exited 0.
    pub success: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Outcome {
    /// stdout parsed as JSON (the result or the error object), if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// The error code of a failed call.
    pub fn error_code(&self) -> Option<u64> {
        self.json()?.get("code")?.as_u64()
    }
}

impl Invocation {
    /// A call of `plugin` with `command` for an attachment; `CNI_PATH` is the plugin's own directory.
    pub fn new(
        plugin: &Path,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
    ) -> Self {
        Invocation {
            plugin: plugin.to_owned(),
            command: command.to_owned(),
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            args: String::new(),
            path: plugin
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            extra_env: Vec::new(),
            own_process_group: false,
        }
    }

    /// The `CNI_*` environment, in the order a person would write it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", self.command.clone()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", self.args.clone()),
            ("CNI_PATH", self.path.clone()),
        ]
    }

    /// Runs the plugin with `stdin`, inside `host` when given.
    pub fn run(&self, stdin: &[u8], host: Option<&NetNs>) -> std::io::Result<Outcome> {
        let mut cmd = Command::new(&self.plugin);
        cmd.envs(self.env())
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = host {
            enter_on_exec(&mut cmd, ns);
        }
        if self.own_process_group {
            cmd.process_group(0);
        }
        let start = Instant::now();
        let mut child = cmd.spawn()?;
        if let Some(mut s) = child.stdin.take() {
            // A plugin may exit without reading stdin (VERSION); its exit status tells what happened.
            let _ = s.write_all(stdin);
        }
        let out = child.wait_with_output()?;
        Ok(Outcome {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        })
    }
}

/// Makes `cmd` enter the network namespace `ns` between fork and exec.
pub fn enter_on_exec(cmd: &mut Command, ns: &NetNs) {
    setns_on_exec(cmd, ns.fd(), libc::CLONE_NEWNET);
}

/// Makes `cmd` enter the namespace `fd` (of type `nstype`, e.g. `CLONE_NEWNS`) between fork and exec. The caller
/// keeps `fd` open until `cmd` is spawned.
pub fn setns_on_exec(cmd: &mut Command, fd: BorrowedFd<'_>, nstype: libc::c_int) {
    let fd = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which is
    // async-signal-safe (the child is single-threaded there, as entering a mount namespace requires); `fd` stays
    // open in the parent (and so in the child) until spawn returns, as the caller promises.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, nstype) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The directory of the running executable: where `trestle` and `trestle-ipam` are installed beside trestlectl.
pub fn own_bin_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_owned)
}
