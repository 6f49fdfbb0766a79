//! The container runtime of `demo --runtime`: docker, podman or containerd, driven through its own command-line
//! client exactly as a person would type it. The clients run in the machine's mount namespace (the demo's private
//! one hides `/run`, where their sockets and state are) and in a process group of their own, so a Ctrl-C at the
//! terminal reaches the demo, which then removes what it made, and not a half-done `run`.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A container runtime the demo can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Docker Engine, through `docker`.
    Docker,
    /// podman (no daemon).
    Podman,
    /// containerd, through its own client `ctr`.
    Containerd,
}

impl Kind {
    /// The runtime's client program.
    pub fn program(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Podman => "podman",
            Kind::Containerd => "ctr",
        }
    }

    /// The runtime's name, as a person says it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Podman => "podman",
            Kind::Containerd => "containerd",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Kind::Docker => "install Docker Engine (Debian: apt-get install docker.io) and start it",
            Kind::Podman => "install podman (Debian: apt-get install podman)",
            Kind::Containerd => {
                "install containerd, which brings ctr (Debian: apt-get install containerd), and start it"
            }
        }
    }
}

/// The containerd namespace the demo's containers and image live in, apart from Kubernetes' (`k8s.io`) and
/// Docker's (`moby`).
pub const CONTAINERD_NAMESPACE: &str = "trestle-demo";

/// Why the runtime could not do what the demo asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client is not installed.
    #[error("--runtime {}: {} not found on PATH: {}", .0.name(), .0.program(), .0.install_hint())]
    Missing(Kind),
    /// The client cannot reach its daemon (or does not work at all).
    #[error("--runtime {}: `{command}` failed: {stderr}", .kind.name())]
    Unusable {
        /// The runtime.
        kind: Kind,
        /// The check that failed.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A command of the runtime failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it said, trimmed.
        stderr: String,
    },
    /// The client could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The client.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime's answer could not be understood.
    #[error("`{command}` printed {output:?}, not {wanted}")]
    Unexpected {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
        /// What was expected.
        wanted: &'static str,
    },
}

/// A container the demo started.
#[derive(Debug, Clone)]
pub struct Container {
    /// The name the demo gave it.
    pub name: String,
    /// The runtime's ID for it (`CNI_CONTAINERID`): docker's and podman's 64 hex digits, containerd's name.
    pub id: String,
}

/// A command and how it is shown in the narration.
pub struct Shown {
    /// The command line as a person would type it.
    pub line: String,
    /// What it printed on stdout.
    pub stdout: String,
}

/// The runtime and what the demo made with it, so it can all be removed again.
#[derive(Debug)]
pub struct Engine {
    kind: Kind,
    program: PathBuf,
    /// The machine's mount namespace, entered by every client before exec; `None` runs them in the demo's own.
    mount_ns: Option<OwnedFd>,
    /// The image reference the demo loads.
    pub image: String,
    /// The pause container's name.
    pause_name: String,
    /// The second container's name.
    app_name: String,
    made_image: bool,
    made_namespace: bool,
    containers: Vec<String>,
    exec_count: u32,
}

impl Engine {
    /// Finds the runtime's client and checks that it works (that its daemon answers), before the demo makes
    /// anything. `suffix` makes the names of this run's image and containers its own.
    pub fn find(kind: Kind, suffix: &str) -> Result<Engine, Error> {
        let program =
            trestle_operator::elevate::find_on_path(kind.program()).ok_or(Error::Missing(kind))?;
        let engine = Engine {
            kind,
            program,
            mount_ns: None,
            image: format!("localhost/trestle-demo-busybox:{suffix}"),
            pause_name: format!("trestle-demo-pause-{suffix}"),
            app_name: format!("trestle-demo-app-{suffix}"),
            made_image: false,
            made_namespace: false,
            containers: Vec::new(),
            exec_count: 0,
        };
        let check: &[&str] = match kind {
            Kind::Docker => &["version", "--format", "{{.Server.Version}}"],
            Kind::Podman => &["version", "--format", "{{.Version}}"],
            Kind::Containerd => &["version"],
        };
        engine.run(check, None).map_err(|e| match e {
            Error::Failed {
                command, stderr, ..
            } => Error::Unusable {
                kind,
                command,
                stderr,
            },
            other => other,
        })?;
        Ok(engine)
    }

    /// The runtime.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Runs the clients in the mount namespace `fd` (the engine keeps a duplicate of it).
    pub fn set_mount_namespace(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.mount_ns = Some(fd.try_clone_to_owned()?);
        Ok(())
    }

    /// The client's arguments for `args`: containerd's `ctr` works in the demo's own namespace.
    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = Vec::new();
        if self.kind == Kind::Containerd {
            v.extend(["-n".to_owned(), CONTAINERD_NAMESPACE.to_owned()]);
        }
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    }

    /// `args` as a person would type them.
    pub fn line(&self, args: &[&str]) -> String {
        std::iter::once(self.kind.program().to_owned())
            .chain(self.argv(args).into_iter().map(|a| quote(&a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the client with `args` (and `stdin`); its stdout on success.
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, Error> {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.argv(args).iter().map(OsString::from))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // The engine owns the descriptor, and `cmd` is spawned below while `self` is borrowed.
        if let Some(fd) = &self.mount_ns {
            trestle_operator::runtime::setns_on_exec(&mut cmd, fd.as_fd(), libc::CLONE_NEWNS);
        }
        let spawn = |source| Error::Spawn {
            program: self.kind.program().to_owned(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn)?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data).map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        if !out.status.success() {
            return Err(Error::Failed {
                command: self.line(args),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn shown(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Shown, Error> {
        let stdout = self.run(args, stdin)?;
        Ok(Shown {
            line: self.line(args),
            stdout,
        })
    }

    /// Loads the image archive `archive` (see [`super::image::docker_archive`]).
    pub fn load_image(&mut self, archive: &[u8]) -> Result<Shown, Error> {
        if self.kind == Kind::Containerd {
            self.made_namespace = !self.namespace_exists()?;
        }
        let args: &[&str] = match self.kind {
            Kind::Docker | Kind::Podman => &["load"],
            Kind::Containerd => &["images", "import", "-"],
        };
        // Marked first: a load that fails half-way may still have stored the image.
        self.made_image = true;
        let mut shown = self.shown(args, Some(archive))?;
        shown.line.push_str(" < trestle-demo-busybox.tar");
        Ok(shown)
    }

    /// Starts the pod's "pause" container: the image's sleep, with no network of the runtime's own (only `lo`).
    pub fn start_pause(&mut self) -> Result<(Container, Shown), Error> {
        let name = self.pause_name.clone();
        match self.kind {
            Kind::Docker | Kind::Podman => self.start_sleeper(name, &["--network", "none"]),
            // ctr gives a container a network namespace of its own unless told otherwise.
            Kind::Containerd => self.start_sleeper(name, &[]),
        }
    }

    /// Starts a second container in the network namespace of `pause` (whose first process is `pause_pid`).
    pub fn start_joined(
        &mut self,
        pause: &Container,
        pause_pid: u32,
    ) -> Result<(Container, Shown), Error> {
        let name = self.app_name.clone();
        match self.kind {
            Kind::Docker => self.start_sleeper(name, &[&format!("--net=container:{}", pause.name)]),
            Kind::Podman => {
                self.start_sleeper(name, &["--network", &format!("container:{}", pause.name)])
            }
            Kind::Containerd => self.start_sleeper(
                name,
                &["--with-ns", &format!("network:/proc/{pause_pid}/ns/net")],
            ),
        }
    }

    /// `run -d` of the image's sleep as container `name`, with the network options `net`.
    fn start_sleeper(&mut self, name: String, net: &[&str]) -> Result<(Container, Shown), Error> {
        // Recorded first: a run that fails half-way may still have created the container.
        self.containers.push(name.clone());
        let image = self.image.clone();
        let sleep = ["/bin/sleep", "86400"];
        let mut args = vec!["run", "-d"];
        match self.kind {
            Kind::Docker | Kind::Podman => {
                // --rm: a demo killed outright leaves a container for a day at most.
                args.push("--rm");
                args.extend_from_slice(net);
                args.extend(["--name", &name, &image]);
            }
            Kind::Containerd => {
                args.extend_from_slice(net);
                args.extend([image.as_str(), &name]);
            }
        }
        args.extend(sleep);
        let shown = match self.shown(&args, None) {
            Ok(shown) => shown,
            Err(e) => {
                if is_name_conflict(&e) {
                    // The name is another run's container: not this run's to remove.
                    self.containers.retain(|c| *c != name);
                }
                return Err(e);
            }
        };
        let id = match self.kind {
            Kind::Containerd => name.clone(),
            _ => self.container_id(&shown)?,
        };
        Ok((Container { name, id }, shown))
    }

    fn container_id(&self, shown: &Shown) -> Result<String, Error> {
        let id = shown.stdout.trim();
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(id.to_owned())
        } else {
            Err(Error::Unexpected {
                command: shown.line.clone(),
                output: shown.stdout.clone(),
                wanted: "a container ID",
            })
        }
    }

    /// The process ID of a container's first process (in the machine's PID namespace).
    pub fn pid(&self, c: &Container) -> Result<(u32, Shown), Error> {
        let (shown, pid) = match self.kind {
            Kind::Docker | Kind::Podman => {
                let shown = self.shown(&["inspect", "-f", "{{.State.Pid}}", &c.name], None)?;
                let pid = shown.stdout.trim().parse().ok();
                (shown, pid)
            }
            Kind::Containerd => {
                let mut shown = self.shown(&["task", "ls"], None)?;
                let pid = shown.stdout.lines().find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.first() == Some(&c.name.as_str())).then(|| f.get(1)?.parse().ok())?
                });
                shown.line = format!("{} | awk '$1 == \"{}\" {{print $2}}'", shown.line, c.name);
                (shown, pid)
            }
        };
        match pid {
            Some(pid) if pid > 0 => Ok((pid, shown)),
            _ => Err(Error::Unexpected {
                command: shown.line,
                output: shown.stdout,
                wanted: "the container's process ID",
            }),
        }
    }

    /// Runs `cmd` inside a running container, through the runtime's exec.
    pub fn exec(&mut self, c: &Container, cmd: &[&str]) -> Result<Shown, Error> {
        self.exec_count += 1;
        let exec_id = format!("demo-{}", self.exec_count);
        let mut args: Vec<&str> = match self.kind {
            Kind::Docker | Kind::Podman => vec!["exec", &c.name],
            Kind::Containerd => vec!["task", "exec", "--exec-id", &exec_id, &c.name],
        };
        args.extend_from_slice(cmd);
        self.shown(&args, None)
    }

    /// The commands that remove everything the demo made, newest first (the second container before the pause
    /// container it depends on).
    pub fn removal_commands(&self) -> Vec<Vec<String>> {
        let (mut cmds, rest) = self.removals();
        cmds.extend(rest);
        cmds
    }

    /// [`Engine::removal_commands`] in two parts: the containers', then the image's and the namespace's.
    fn removals(&self) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let mut cmds: Vec<Vec<String>> = Vec::new();
        for name in self.containers.iter().rev() {
            let name = name.clone();
            match self.kind {
                Kind::Docker => cmds.push(vec!["rm".into(), "-f".into(), name]),
                Kind::Podman => cmds.push(vec![
                    "rm".into(),
                    "-f".into(),
                    "-t".into(),
                    "0".into(),
                    name,
                ]),
                Kind::Containerd => {
                    cmds.push(vec!["task".into(), "rm".into(), "-f".into(), name.clone()]);
                    cmds.push(vec!["containers".into(), "rm".into(), name]);
                }
            }
        }
        let mut rest = Vec::new();
        if self.made_image {
            rest.push(match self.kind {
                Kind::Docker | Kind::Podman => vec!["rmi".into(), self.image.clone()],
                // --sync: the content goes now, not at a later garbage collection, so the namespace is empty.
                Kind::Containerd => vec![
                    "images".into(),
                    "rm".into(),
                    "--sync".into(),
                    self.image.clone(),
                ],
            });
        }
        // Tried whether or not this run made it (a concurrent run may have, and finished first): containerd refuses
        // to remove a namespace that still holds anything, so nothing of another run's goes with it.
        if self.kind == Kind::Containerd {
            rest.push(vec![
                "namespaces".into(),
                "rm".into(),
                CONTAINERD_NAMESPACE.into(),
            ]);
        }
        (cmds, rest)
    }

    /// Removes the containers and the image the demo made; returns each command run with what it said when it
    /// failed. A failing command (the container was already gone) does not stop the rest: [`Engine::leftovers`]
    /// tells what is still there. The image goes only once the containers are gone: docker's and podman's `--rm`
    /// removal of a killed container can still be under way when `rm -f` returns, and an image in use stays.
    pub fn remove_all(&mut self) -> Vec<(String, Option<String>)> {
        let (containers, rest) = self.removals();
        let mut done: Vec<_> = containers.iter().map(|c| self.run_reporting(c)).collect();
        self.wait_containers_gone(Duration::from_secs(20));
        done.extend(rest.iter().map(|c| self.run_reporting(c)));
        self.containers.clear();
        self.made_image = false;
        done
    }

    /// Runs `args`; the command line, and what it said when it failed.
    fn run_reporting(&self, args: &[String]) -> (String, Option<String>) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let failed = self.run(&args, None).err().map(|e| match e {
            Error::Failed { stderr, .. } => stderr,
            other => other.to_string(),
        });
        (self.line(&args), failed)
    }

    /// Waits until the runtime lists none of this run's containers (or `timeout` passes).
    fn wait_containers_gone(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.containers_present().is_ok_and(|c| !c.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether containerd has the demo's namespace.
    fn namespace_exists(&self) -> Result<bool, Error> {
        let spaces = self.run(&["namespaces", "ls", "-q"], None)?;
        Ok(spaces.lines().any(|l| l.trim() == CONTAINERD_NAMESPACE))
    }

    /// This run's containers that the runtime still lists.
    fn containers_present(&self) -> Result<Vec<String>, Error> {
        let names = [self.pause_name.as_str(), self.app_name.as_str()];
        let all = match self.kind {
            Kind::Docker | Kind::Podman => {
                self.run(&["ps", "-a", "--format", "{{.Names}}"], None)?
            }
            Kind::Containerd => {
                if !self.namespace_exists()? {
                    return Ok(Vec::new());
                }
                self.run(&["containers", "ls", "-q"], None)?
            }
        };
        Ok(all
            .lines()
            .filter(|l| names.contains(&l.trim()))
            .map(|l| l.trim().to_owned())
            .collect())
    }

    /// What of this run's containers and image (and containerd namespace) the runtime still has.
    pub fn leftovers(&self) -> Result<Vec<String>, Error> {
        let mut left = self.containers_present()?;
        match self.kind {
            Kind::Docker | Kind::Podman => {
                if self.run(&["image", "inspect", &self.image], None).is_ok() {
                    left.push(self.image.clone());
                }
            }
            Kind::Containerd => {
                if self.namespace_exists()? {
                    let images = self.run(&["images", "ls", "-q"], None)?;
                    let containers = self.run(&["containers", "ls", "-q"], None)?;
                    left.extend(
                        images
                            .lines()
                            .filter(|l| l.trim() == self.image)
                            .map(str::to_owned),
                    );
                    // The namespace this run made is its own, unless another run now keeps anything in it (an
                    // import under way has content before it has an image; a container, snapshots).
                    let content = self.run(&["content", "ls", "-q"], None)?;
                    let snapshots = self.run(&["snapshots", "ls"], None)?;
                    let empty = [&images, &containers, &content]
                        .iter()
                        .all(|o| o.trim().is_empty())
                        && snapshots.lines().skip(1).all(|l| l.trim().is_empty());
                    if self.made_namespace && empty {
                        left.push(format!("containerd namespace {CONTAINERD_NAMESPACE}"));
                    }
                }
            }
        }
        Ok(left)
    }
}

/// Whether a `run` failed because a container of that name exists already (docker: "is already in use",
/// podman: "already in use", ctr: "already exists").
fn is_name_conflict(e: &Error) -> bool {
    matches!(e, Error::Failed { stderr, .. } if stderr.contains("already in use") || stderr.contains("already exists"))
}

/// Single quotes around an argument a shell would split or expand.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(kind: Kind) -> Engine {
        Engine {
            kind,
            program: PathBuf::from(kind.program()),
            mount_ns: None,
            image: "localhost/trestle-demo-busybox:t1".into(),
            pause_name: "trestle-demo-pause-t1".into(),
            app_name: "trestle-demo-app-t1".into(),
            made_image: true,
            made_namespace: true,
            containers: vec!["trestle-demo-pause-t1".into(), "trestle-demo-app-t1".into()],
            exec_count: 0,
        }
    }

    #[test]
    fn commands_are_shown_as_typed() {
        let d = engine(Kind::Docker);
        assert_eq!(
            d.line(&["inspect", "-f", "{{.State.Pid}}", "trestle-demo-pause-t1"]),
            "docker inspect -f '{{.State.Pid}}' trestle-demo-pause-t1"
        );
        let c = engine(Kind::Containerd);
        assert_eq!(c.line(&["task", "ls"]), "ctr -n trestle-demo task ls");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn removal_goes_newest_first_and_ends_with_the_image() {
        let d = engine(Kind::Docker).removal_commands();
        assert_eq!(
            d,
            [
                vec!["rm", "-f", "trestle-demo-app-t1"],
                vec!["rm", "-f", "trestle-demo-pause-t1"],
                vec!["rmi", "localhost/trestle-demo-busybox:t1"],
            ]
        );
        let c = engine(Kind::Containerd).removal_commands();
        assert_eq!(
            c.first().unwrap(),
            &vec!["task", "rm", "-f", "trestle-demo-app-t1"]
        );
        assert_eq!(c.last().unwrap(), &vec!["namespaces", "rm", "trestle-demo"]);
        let mut kept = engine(Kind::Containerd);
        kept.made_namespace = false;
        kept.made_image = false;
        let cmds = kept.removal_commands();
        assert!(cmds.iter().all(|c| c[0] != "images"), "{cmds:?}");
        // The namespace is always tried: containerd refuses to remove one that holds anything.
        assert_eq!(
            cmds.last().unwrap(),
            &vec!["namespaces", "rm", "trestle-demo"]
        );
    }

    #[test]
    fn a_name_taken_by_another_container_is_told_apart() {
        use std::os::unix::process::ExitStatusExt;
        let failed = |stderr: &str| Error::Failed {
            command: "docker run".into(),
            status: std::process::ExitStatus::from_raw(125 << 8),
            stderr: stderr.into(),
        };
        assert!(is_name_conflict(&failed(
            "docker: Error response from daemon: Conflict. The container name \"/x\" is already in use by container"
        )));
        assert!(is_name_conflict(&failed(
            "ctr: container \"x\": already exists"
        )));
        assert!(!is_name_conflict(&failed(
            "docker: Error response from daemon: No such image"
        )));
    }

    #[test]
    fn a_missing_client_says_how_to_get_one() {
        let e = Error::Missing(Kind::Containerd);
        assert_eq!(
            e.to_string(),
            "--runtime containerd: ctr not found on PATH: install containerd, which brings ctr (Debian: \
             apt-get install containerd), and start it"
        );
    }
}
