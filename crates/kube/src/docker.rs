//! The Docker engine, through its CLI (the engine's API is what `docker` speaks; the CLI is on every machine that
//! has the engine). Everything a [`Docker`] makes carries the run's label, and [`Docker::remove_all`] (also run on
//! drop) removes it: containers, networks, volumes and the images it tagged, so a run that fails or panics leaves
//! nothing behind.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// How long one docker command may take before it is killed (an image load of a debug build takes ~25 s here).
const DEADLINE: Duration = Duration::from_secs(300);

impl Docker {
    /// A run whose objects are named `<prefix>-<pid>-<random>-...`. First removes what earlier runs with the same
    /// prefix left when they were killed before they could clean up (their process is gone).
    pub fn new(prefix: &str) -> Docker {
        let docker = Docker {
            run: format!("{prefix}-{}", unique()),
            images: Default::default(),
        };
        docker.sweep_stale(prefix);
        docker
    }

    /// The run `run` (another handle on it), to look at what it left.
    pub fn attach(run: &str) -> Docker {
        Docker {
            run: run.into(),
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

    /// Like [`Docker::cmd`], with `input` on stdin. Killed past [`DEADLINE`]: a hung engine fails the run, never
    /// hangs it.
    pub fn cmd_stdin<S: AsRef<str>>(
        &self,
        args: &[S],
        input: Option<&[u8]>,
    ) -> Result<String, Error> {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        let failed = |stderr: String| Error::Failed {
            args: args.join(" "),
            stderr,
        };
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
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        // Each pipe on a thread of its own: docker may answer before it has read all its input, and would block on
        // a full stdout while this thread blocked on a full stdin.
        let (status, out, err) = std::thread::scope(|s| {
            if let (Some(mut w), Some(data)) = (stdin, input) {
                s.spawn(move || {
                    // A failed write shows as the command's failure.
                    let _ = w.write_all(data);
                });
            }
            let out = s.spawn(move || {
                let mut v = Vec::new();
                let _ = stdout.read_to_end(&mut v);
                v
            });
            let err = s.spawn(move || {
                let mut v = Vec::new();
                let _ = stderr.read_to_end(&mut v);
                v
            });
            let status = wait_until(&mut child, Instant::now() + DEADLINE);
            (
                status,
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            )
        });
        let status = status.map_err(Error::Spawn)?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        match status {
            None => Err(failed(format!("killed after {DEADLINE:?}"))),
            Some(st) if !st.success() => Err(failed(text(&err))),
            Some(_) => Ok(text(&out)),
        }
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
        out.parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Failed {
                args: format!("inspect {container}"),
                stderr: format!("no running process ({out:?})"),
            })
    }

    /// The run's objects of one kind (`ps -a`, `network ls`, `volume ls`, `image ls`), by ID.
    fn listed(&self, kind: &[&str]) -> Vec<String> {
        let filter = format!("label={LABEL}={}", self.run);
        let mut args = kind.to_vec();
        args.extend(["-q", "--filter", &filter]);
        self.cmd(&args)
            .map(|o| o.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Removes every container, network, volume and image of the run; what could not be removed, by name.
    pub fn remove_all(&self) -> Vec<String> {
        let mut failed = Vec::new();
        // Containers first: a network or volume in use cannot go. Unpaused, or removal waits on them.
        for c in self.listed(&["ps", "-a"]) {
            let _ = self.cmd(&["unpause", &c]);
            if self.cmd(&["rm", "-f", "-v", &c]).is_err() {
                failed.push(format!("container {c}"));
            }
        }
        for n in self.listed(&["network", "ls"]) {
            if self.cmd(&["network", "rm", &n]).is_err() {
                failed.push(format!("network {n}"));
            }
        }
        for v in self.listed(&["volume", "ls"]) {
            if self.cmd(&["volume", "rm", "-f", &v]).is_err() {
                failed.push(format!("volume {v}"));
            }
        }
        let mut images = self.owned_images();
        images.extend(self.listed(&["image", "ls"]));
        for i in images {
            if self.cmd(&["image", "inspect", &i]).is_ok() && self.cmd(&["rmi", "-f", &i]).is_err()
            {
                failed.push(format!("image {i}"));
            }
        }
        failed
    }

    fn owned_images(&self) -> Vec<String> {
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What of the run is still there: containers, networks, volumes, and images it tagged or labelled.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for kind in [
            &["ps", "-a"][..],
            &["network", "ls"],
            &["volume", "ls"],
            &["image", "ls"],
        ] {
            left.extend(
                self.listed(kind)
                    .into_iter()
                    .map(|id| format!("{} {id}", kind[0])),
            );
        }
        for tag in self.owned_images() {
            if self.cmd(&["image", "inspect", &tag]).is_ok() {
                left.push(format!("image {tag}"));
            }
        }
        left
    }

    /// Removes the objects of runs of `prefix` whose process no longer exists (killed, say, by a CI timeout before
    /// it could clean up). A run's label value is `<prefix>-<pid>-<random>`.
    fn sweep_stale(&self, prefix: &str) {
        let dead = |run: &str| {
            run.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        };
        let filter = format!("label={LABEL}");
        let format = format!("{{{{.Label \"{LABEL}\"}}}}");
        let mut runs = std::collections::BTreeSet::new();
        for kind in [&["ps", "-a"][..], &["network", "ls"], &["volume", "ls"]] {
            let mut args = kind.to_vec();
            args.extend(["--filter", &filter, "--format", &format]);
            if let Ok(out) = self.cmd(&args) {
                runs.extend(out.lines().filter(|r| dead(r)).map(str::to_string));
            }
        }
        for run in runs {
            Docker::attach(&run).remove_all();
        }
        // Images are tagged `localhost/<run>:...`.
        if let Ok(out) = self.cmd(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]) {
            for tag in out.lines() {
                let run = tag
                    .strip_prefix("localhost/")
                    .and_then(|t| t.split(':').next());
                if run.is_some_and(dead) {
                    let _ = self.cmd(&["rmi", "-f", tag]);
                }
            }
        }
    }
}

/// Waits for `child` until `deadline`; `None` (and the child killed) past it.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
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
