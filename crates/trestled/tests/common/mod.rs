//! Fixtures: a real `trestled` per test, in a directory of its own (socket, store, delete
//! queue, boot ID file), and the real `trestle-ipam` plugin binary invoked as a runtime would.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use trestle_testkit::Daemon;

use serde_json::{json, Value};
use trestle_ipam::daemon::DaemonClient;
use trestle_ipam_api::convert::{allocate_request, PodMeta};
use trestle_ipam_api::v1;
use trestle_ipam_core::{Attachment, DaemonSettings, IpamConfig, Range, RangeSet};

/// Where cargo put the workspace binaries.
pub use trestle_testkit::workspace_bin as bin;

/// A daemon-mode network of one range, as a request carries it.
pub fn config(network: &str, subnet: &str) -> IpamConfig {
    let range = Range::new(subnet.parse().unwrap(), None, None, None).unwrap();
    IpamConfig {
        network: network.into(),
        range_sets: vec![RangeSet::new(vec![range]).unwrap()],
        routes: vec![],
        data_dir: Default::default(),
        dns: Default::default(),
        requested: vec![],
        daemon: None,
    }
}

/// The Allocate request the plugin would send for container `id`'s `eth0`.
pub fn allocate_req(cfg: &IpamConfig, id: &str) -> v1::AllocateRequest {
    allocate_request(
        cfg,
        &Attachment::new(id, "eth0"),
        &PodMeta::default(),
        ("", 0),
        trestle_ipam_api::version::peer("test"),
    )
}

/// True when running as root (the privileged tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One node: a daemon's directory and, while it runs, the daemon.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub child: Option<Daemon>,
    /// Extra arguments of every start.
    pub args: Vec<String>,
    /// A listening socket the test holds, as systemd would (socket activation).
    pub activation: Option<std::os::unix::net::UnixListener>,
    /// The open-file limit (soft and hard) every start gets, as `LimitNOFILE=` would.
    pub nofile: Option<u64>,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("trestled-test-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
        Node {
            dir,
            child: None,
            args: vec!["--reuse-delay".into(), "0".into()],
            activation: None,
            nofile: None,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("ipam.sock")
    }

    pub fn queue(&self) -> PathBuf {
        self.path("queue")
    }

    /// Binds the socket in the test process and passes it to every daemon start as fd 3.
    pub fn activate(&mut self) {
        self.activation = Some(std::os::unix::net::UnixListener::bind(self.socket()).unwrap());
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.activation {
            None => Command::new(bin("trestled")),
            Some(l) => {
                // LISTEN_PID must be the daemon's pid: the shell's $$ survives its exec.
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
                    .arg(bin("trestled"));
                let fd = std::os::fd::AsRawFd::as_raw_fd(l);
                // SAFETY: dup2 is async-signal-safe; the child only execs afterwards.
                unsafe {
                    c.pre_exec(move || {
                        // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
                        let rc = if fd == 3 {
                            libc::fcntl(3, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(fd, 3)
                        };
                        if rc < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                c
            }
        };
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--delete-queue")
            .arg(self.queue())
            .arg("--host-local-dir")
            .arg("")
            .arg("--boot-id-file")
            .arg(self.path("boot_id"))
            .arg("--cni-cache-dir")
            .arg(self.path("cni-cache"))
            .arg("--log-level")
            .arg("info")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path("trestled.log"))
                    .unwrap(),
            );
        if let Some(n) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe; the child only execs afterwards.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// Overwrites the store with 64 KiB of random bytes, as a bad disk or a stray write would.
    pub fn damage_store(&self) {
        let mut noise = vec![0u8; 64 * 1024];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut noise,
        )
        .unwrap();
        std::fs::write(self.path("state/ipam.redb"), noise).unwrap();
    }

    /// The daemon's command, for a test that starts it itself.
    pub fn command_for_test(&self) -> Command {
        self.command()
    }

    /// Spawns the daemon (its output appended to its log), without waiting for it.
    pub fn spawn(&self) -> Daemon {
        Daemon::spawn(&mut self.command(), &self.path("trestled.log")).expect("spawn trestled")
    }

    /// Starts the daemon and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.child = Some(self.spawn());
        self.wait_ready();
    }

    /// Starts a daemon and returns its exit status and log, for one that must refuse to start.
    pub fn start_expecting_failure(&self) -> (ExitStatus, String) {
        let mut child = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.exited() {
                return (st, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the second trestled did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_ready(&mut self) {
        // Out of `self` while waiting, so that the probe can use `self`; a panic drops (kills) it.
        let mut child = self.child.take().expect("running");
        child.wait_until("ready", Duration::from_secs(20), || {
            let ok = self
                .client()
                .status(&trestle_ipam_api::v1::StatusRequest::default());
            ok.is_ok_and(|r| r.ready)
        });
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill9();
        }
    }

    /// SIGTERM, and wait for a graceful exit (SIGKILL after 30 s, which the caller sees in the status).
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        c.stop(Duration::from_secs(30))
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.path("trestled.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn settings(&self) -> DaemonSettings {
        DaemonSettings {
            socket: self.socket(),
            delete_queue: self.queue(),
            connect_timeout_ms: 1000,
            timeout_ms: 10_000,
        }
    }

    /// A client as the plugin makes them.
    pub fn client(&self) -> DaemonClient {
        DaemonClient::new(DaemonSettings {
            connect_timeout_ms: 200,
            ..self.settings()
        })
    }

    /// The network config of a daemon-mode network on `subnet`.
    pub fn conf(&self, network: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": network,
            "type": "trestle-ipam",
            "ipam": {
                "type": "trestle-ipam",
                "daemon": {
                    "socket": self.socket(),
                    "deleteQueue": self.queue(),
                },
                "ranges": [[{"subnet": subnet}]],
            }
        })
    }

    /// Every allocation the daemon holds: (network, address, container, ifname).
    pub fn allocations(&self) -> Vec<(String, String, String, String)> {
        let mut d = self.client();
        let reply = d
            .list(&trestle_ipam_api::v1::ListRequest::default())
            .expect("List");
        reply
            .allocations
            .into_iter()
            .map(|a| {
                let att = a.attachment.unwrap_or_default();
                (a.network, a.address, att.container_id, att.ifname)
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the real plugin binary: `command` for container `id` on `eth0`, `conf` on stdin.
pub fn plugin(command: &str, id: &str, netns: &str, conf: &Value) -> Output {
    plugin_as(command, id, netns, conf, None)
}

/// [`plugin`], optionally as another user (uid = gid).
pub fn plugin_as(command: &str, id: &str, netns: &str, conf: &Value, uid: Option<u32>) -> Output {
    run_plugin(&bin("trestle-ipam"), command, id, netns, conf, uid)
}

/// A copy of a binary that another user can run, in a 0755 directory of its own under the
/// temporary directory; dropping it removes both. The build's own copy may sit where that user
/// cannot go: a checkout in a 0700 home makes the exec fail with EACCES.
pub struct Staged {
    /// Held for its removal on drop.
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Staged {
    /// Copies `bin`.
    pub fn new(bin: &Path) -> Staged {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("trestle-staged-")
            .tempdir()
            .expect("a staging directory");
        // tempfile makes it 0700.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir
            .path()
            .join(bin.file_name().expect("a binary's file name"));
        std::fs::copy(bin, &path)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", bin.display(), path.display()));
        // The copy keeps the build's mode, which follows the builder's umask (0700 under 077).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Staged { dir, path }
    }

    /// The copy.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Runs the plugin binary `plugin` as a runtime would, optionally as another user (uid = gid),
/// who runs a [`Staged`] copy of it.
pub fn run_plugin(
    plugin: &Path,
    command: &str,
    id: &str,
    netns: &str,
    conf: &Value,
    uid: Option<u32>,
) -> Output {
    use std::io::Write;
    let staged = uid.map(|_| Staged::new(plugin));
    let program = staged.as_ref().map_or(plugin, Staged::path);
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = spawn_fresh(&mut cmd).unwrap_or_else(|e| {
        panic!(
            "spawn the plugin {} as uid {uid:?}: {e}{}",
            program.display(),
            if staged.is_some() {
                " (the temporary directory, TMPDIR, must be one that user can enter)"
            } else {
                ""
            }
        )
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    drop(staged);
    out
}

/// Spawns `cmd`, whose program may have just been written. Another test thread that forks while
/// the copy's descriptor is open holds it until that child execs (CLOEXEC closes it only then),
/// and an exec of a file open for writing fails with ETXTBSY, so that is tried again for a while.
fn spawn_fresh(cmd: &mut Command) -> std::io::Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

/// The CNI error code of a failed plugin run (and asserts it failed).
pub fn error_code(out: &Output) -> u64 {
    assert!(
        !out.status.success(),
        "expected a failure, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("a CNI error JSON on stdout");
    v["code"].as_u64().expect("code")
}

/// The first address of a successful ADD's result.
pub fn address(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ADD failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ips"][0]["address"].as_str().unwrap().to_string()
}

/// A CNI_NETNS for tests that need no namespace: a path that does not exist, which the plugin
/// accepts (it only records the namespace's inode, here unknown, so leak repair skips it).
pub const NO_NETNS: &str = "/nonexistent/trestled-test-netns";

/// A TCP proxy on loopback that a test can cut (every connection dropped, new ones refused)
/// and heal: a node "cut off from etcd" without touching the machine's firewall.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn new(target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, l) = (cut.clone(), live.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(up) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let mut live = l.lock().unwrap();
                live.push(conn.try_clone().unwrap());
                live.push(up.try_clone().unwrap());
                drop(live);
                for (mut a, mut b) in [
                    (conn.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, conn),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, live }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Node {
    /// Makes this daemon a cluster node on `endpoints` (etcd store), with short timings.
    pub fn cluster(&mut self, name: &str, endpoints: &[String], prefix: &str) {
        self.args.extend(
            [
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints.join(","),
                "--etcd-prefix",
                prefix,
                "--node-name",
                name,
                "--lease-ttl",
                "3",
                "--reclaim-grace",
                "1",
                "--block-release-grace",
                "3600",
                "--etcd-timeout",
                "1",
                // These daemons share the machine's namespace: no routes.
                "--routing",
                "none",
            ]
            .map(String::from),
        );
    }

    /// ADD through the real plugin, retrying "try again later" (code 11) as a kubelet would;
    /// the address, or the last error code.
    pub fn add_retrying(&self, conf: &Value, id: &str, tries: usize) -> Result<String, u64> {
        let mut code = 0;
        for _ in 0..tries {
            let out = plugin("ADD", id, NO_NETNS, conf);
            if out.status.success() {
                return Ok(address(&out));
            }
            code = error_code(&out);
            if code != 11 {
                return Err(code);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(code)
    }
}
