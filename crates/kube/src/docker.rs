//! The Docker engine, through its CLI (the engine's API is what `docker` speaks; the CLI is on every machine that
//! has the engine). Everything a [`Docker`] makes carries the run's label, and [`Docker::remove_all`] (also run on
//! drop) removes it: containers, networks, volumes and the images it tagged, so a run that fails or panics leaves
//! nothing behind.

use std::process::{Command, Stdio};

/// The label every object of a run carries.
pub const LABEL: &str = "trestle.e2e.run";

/// A docker command that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `docker` could not be run.
    #[error("cannot run docker")]
    Spawn(#[source] std::io::Error),
    /// It ran and failed.
    #[error("docker {args}: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// One run's view of the engine.
#[derive(Debug)]
pub struct Docker {
    run: String,
    images: std::sync::Mutex<Vec<String>>,
}

impl Docker {
    /// A run whose objects are named `<prefix>-<unique>-...`.
    pub fn new(prefix: &str) -> Docker {
        Docker {
            run: format!("{prefix}-{}", unique()),
            images: Default::default(),
        }
    }

    /// The run's id, the value of its [`LABEL`].
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// The name of the run's object `what`.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.run)
    }

    /// `--label trestle.e2e.run=<run>`, for commands that create something.
    pub fn label(&self) -> [String; 2] {
        ["--label".into(), format!("{LABEL}={}", self.run)]
    }

    /// Runs `docker args...` and returns its stdout, trimmed.
    pub fn cmd<S: AsRef<str>>(&self, args: &[S]) -> Result<String, Error> {
        self.cmd_stdin(args, None)
    }

    /// Like [`Docker::cmd`], with `input` on stdin.
    pub fn cmd_stdin<S: AsRef<str>>(
        &self,
        args: &[S],
        input: Option<&[u8]>,
    ) -> Result<String, Error> {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        let mut child = Command::new("docker")
            .args(&args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::Spawn)?;
        if let Some(data) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            // A write error shows as the command's failure below.
            let _ = stdin.write_all(data);
        }
        let out = child.wait_with_output().map_err(Error::Spawn)?;
        if !out.status.success() {
            return Err(Error::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Notes an image tag of the run, removed with everything else.
    pub fn own_image(&self, tag: &str) {
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tag.into());
    }

    /// The host PID of a running container's first process.
    pub fn pid(&self, container: &str) -> Result<u32, Error> {
        let out = self.cmd(&["inspect", "-f", "{{.State.Pid}}", container])?;
        out.parse().map_err(|_| Error::Failed {
            args: format!("inspect {container}"),
            stderr: format!("no pid in {out:?}"),
        })
    }

    /// Removes every container, network, volume and image of the run; what could not be removed, by name.
    pub fn remove_all(&self) -> Vec<String> {
        let filter = format!("label={LABEL}={}", self.run);
        let mut failed = Vec::new();
        let listed = |kind: &[&str]| -> Vec<String> {
            let mut args: Vec<&str> = kind.to_vec();
            args.extend(["-q", "--filter", &filter]);
            self.cmd(&args)
                .map(|o| o.lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        // Containers first: a network or volume in use cannot go. Unpaused, or removal waits on them.
        for c in listed(&["ps", "-a"]) {
            let _ = self.cmd(&["unpause", &c]);
            if self.cmd(&["rm", "-f", "-v", &c]).is_err() {
                failed.push(format!("container {c}"));
            }
        }
        for n in listed(&["network", "ls"]) {
            if self.cmd(&["network", "rm", &n]).is_err() {
                failed.push(format!("network {n}"));
            }
        }
        for v in listed(&["volume", "ls"]) {
            if self.cmd(&["volume", "rm", "-f", &v]).is_err() {
                failed.push(format!("volume {v}"));
            }
        }
        let images = std::mem::take(&mut *self.images.lock().unwrap_or_else(|p| p.into_inner()));
        for i in images {
            if self.cmd(&["rmi", "-f", &i]).is_err() {
                failed.push(format!("image {i}"));
            }
        }
        failed
    }

    /// What of the run is still there (for a test's final check).
    pub fn leftovers(&self) -> Vec<String> {
        let filter = format!("label={LABEL}={}", self.run);
        let mut left = Vec::new();
        for kind in [&["ps", "-a"][..], &["network", "ls"], &["volume", "ls"]] {
            let mut args = kind.to_vec();
            args.extend(["-q", "--filter", &filter]);
            if let Ok(out) = self.cmd(&args) {
                left.extend(out.lines().map(|l| format!("{} {l}", kind[0])));
            }
        }
        left
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let failed = self.remove_all();
        if !failed.is_empty() {
            eprintln!("docker: could not remove {}", failed.join(", "));
        }
    }
}

/// A name part no other run on this machine has: the pid and 32 random bits.
fn unique() -> String {
    format!(
        "{}-{:08x}",
        std::process::id(),
        crate::cluster::random_u32()
    )
}

/// The capabilities by number (linux/capability.h), for `--cap-drop`.
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `docker run` arguments for a privileged container. `--privileged` asks for every capability, and a machine
/// that is itself confined (a bounding set without `CAP_SYS_RESOURCE`, say) refuses such a container outright; there
/// it becomes every capability the machine has, with the same unconfined seccomp, AppArmor and /proc and /sys.
pub fn privileged_args() -> Vec<String> {
    let missing = missing_capabilities();
    if missing.is_empty() {
        return vec!["--privileged".into()];
    }
    let mut args = vec![
        "--cap-add=ALL".to_string(),
        "--security-opt=seccomp=unconfined".into(),
        "--security-opt=apparmor=unconfined".into(),
        "--security-opt=systempaths=unconfined".into(),
    ];
    args.extend(missing.iter().map(|c| format!("--cap-drop={c}")));
    args
}

/// The capabilities this process's bounding set lacks.
fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(bounding) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return Vec::new();
    };
    CAPS.iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}
