//! Fixtures that several test binaries share, so that each exists once: where cargo put the workspace's binaries,
//! a `trestled` process of a test's own ([`Daemon`]) in a directory of the test's own ([`DaemonDir`]), and the
//! certificates of a TLS etcd ([`Tls::generate`]). A dev-dependency, or a dependency of test-only crates (`kube`):
//! nothing here is linked into a shipped binary.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A workspace binary beside the running test's directory (`target/<profile>/NAME`); panics, saying how to build
/// it, when it is not there.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: run the tests with `cargo build --workspace` first (the README's command)",
        path.display()
    );
    path
}

/// The files of a test's trestled, all under one directory the test owns.
#[derive(Debug, Clone)]
pub struct DaemonDir {
    /// The directory.
    pub dir: PathBuf,
}

impl DaemonDir {
    /// The layout under `dir`, which the caller has made.
    pub fn new(dir: impl Into<PathBuf>) -> DaemonDir {
        DaemonDir { dir: dir.into() }
    }

    /// The plugins' socket, `ipam.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("ipam.sock")
    }

    /// The store's directory, `state`.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The delete queue, `queue`.
    pub fn queue(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// The daemon's log (stdout and stderr), `trestled.log`.
    pub fn log(&self) -> PathBuf {
        self.dir.join("trestled.log")
    }

    /// `bin` serving these files and nothing of the machine's (no host-local directory to take over); the caller
    /// adds its own arguments.
    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--delete-queue")
            .arg(self.queue())
            .args(["--host-local-dir", ""]);
        cmd
    }
}

/// A daemon process a test started: its output appended to a log file, SIGKILLed and reaped when dropped (a
/// failing test included), so that no test leaves a process behind.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Spawns `cmd` with stdin from /dev/null and stdout and stderr appended to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> io::Result<Daemon> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Daemon {
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait for the daemon");
        }
        self.status
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `ready` every 20 ms until it says yes; panics with the log when the daemon exits first or `timeout`
    /// passes.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "the daemon exited ({status}) before {what}:\n{}",
                    self.log()
                );
            }
            if ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {what} after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `socket` accepts a connection.
    pub fn wait_serving(&mut self, socket: &Path) {
        self.wait_until("serving", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
    }

    /// SIGTERM, then waits for the exit; SIGKILL if it takes longer than `grace`.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        // SAFETY: kill(2) on the pid of a child this value owns and has not reaped, so the pid is still ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() > deadline {
                return self.kill9();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap the daemon");
        self.status = Some(status);
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A CA, a server certificate signed by it, and a client certificate with the common name `trestled`, as PEM text:
/// what a TLS etcd with client certificates needs. The caller writes them under the names it uses.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA's certificate.
    pub ca: String,
    /// The server's certificate.
    pub server: String,
    /// The server certificate's key.
    pub server_key: String,
    /// The client's certificate.
    pub client: String,
    /// The client certificate's key.
    pub client_key: String,
}

impl Tls {
    /// Fresh keys and certificates, the server's valid for `server_ips`.
    pub fn generate(server_ips: &[Ipv4Addr]) -> Result<Tls, rcgen::Error> {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut server = CertificateParams::new(Vec::<String>::new())?;
        server.subject_alt_names = server_ips
            .iter()
            .map(|ip| SanType::IpAddress((*ip).into()))
            .collect();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server = server.signed_by(&server_key, &ca, &ca_key)?;
        let mut client = CertificateParams::new(vec!["trestled".to_string()])?;
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client = client.signed_by(&client_key, &ca, &ca_key)?;
        Ok(Tls {
            ca: ca.pem(),
            server: server.pem(),
            server_key: server_key.serialize_pem(),
            client: client.pem(),
            client_key: client_key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of the test's own, removed however the test ends.
    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("trestle-testkit-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn a_daemon_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = tempdir();
        let mut d = Daemon::spawn(
            Command::new("sh").args(["-c", "trap '' TERM; echo up; sleep 30"]),
            &dir.path().join("log"),
        )
        .unwrap();
        d.wait_until("up", Duration::from_secs(10), || {
            std::fs::read_to_string(dir.path().join("log")).is_ok_and(|l| l.contains("up"))
        });
        let started = Instant::now();
        let status = d.stop(Duration::from_millis(200));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_daemon_that_exits_early_fails_the_wait_with_its_log() {
        let dir = tempdir();
        let mut d = Daemon::spawn(
            Command::new("sh").args(["-c", "echo cannot bind >&2; exit 3"]),
            &dir.path().join("log"),
        )
        .unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            d.wait_until("ready", Duration::from_secs(10), || false)
        }));
        let message = *caught.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("exited"), "{message}");
        assert!(message.contains("cannot bind"), "{message}");
        assert_eq!(d.exited().unwrap().code(), Some(3));
    }

    #[test]
    fn the_command_serves_the_directorys_files_only() {
        let d = DaemonDir::new("/x");
        let cmd = d.command(Path::new("/bin/trestled"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--socket",
                "/x/ipam.sock",
                "--state-dir",
                "/x/state",
                "--delete-queue",
                "/x/queue",
                "--host-local-dir",
                ""
            ]
        );
    }
}
