//! `trestlectl install`: what a Kubernetes network add-on's install step does. Copies the plugin binaries and
//! trestled into a CNI bin dir and writes the network's conflist into a conf dir, and on request trestled's systemd
//! units into a unit dir; with `--plugins-only` (a DaemonSet's init container), the two plugins and nothing else.
//! Each file is written beside its target and renamed over it, so a runtime never execs half a binary or reads half
//! a config, and a running trestled keeps its own (unlinked) binary. Running it twice changes nothing.
//! [`start_daemon`] then starts trestled, through systemd when it runs the machine.

use cni_runtime::NetworkList;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binaries a node needs: the plugins, and trestled for trestle-ipam's daemon mode.
pub const BINARIES: [&str; 3] = ["trestle", "trestle-ipam", "trestled"];

/// The CNI plugins alone (`--plugins-only`): what a node needs when trestled runs elsewhere, in a Kubernetes
/// DaemonSet's container.
pub const PLUGINS: [&str; 2] = ["trestle", "trestle-ipam"];

/// The daemon's binary (one of [`BINARIES`]).
pub const DAEMON: &str = "trestled";

/// The socket unit's file name.
pub const SOCKET_UNIT: &str = "trestled.socket";

/// The service unit's file name.
pub const SERVICE_UNIT: &str = "trestled.service";

/// What to install.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the binaries are now.
    pub from: PathBuf,
    /// The CNI bin dir.
    pub bin_dir: PathBuf,
    /// The CNI conf dir.
    pub conf_dir: PathBuf,
    /// The conflist's file name.
    pub file_name: String,
    /// The conflist, as bytes.
    pub config: Vec<u8>,
    /// Overwrite a file that configures another plugin.
    pub force: bool,
    /// Write trestled's systemd units into this directory.
    pub systemd_units: Option<PathBuf>,
    /// Install [`PLUGINS`] only: no trestled, no conflist, no units, so `config`, `file_name`, `force` and
    /// `systemd_units` are not used. A DaemonSet's init container does this; trestled, running from the image,
    /// writes the conflist itself once it is ready, so no runtime sees a network before it can be served.
    pub plugins_only: bool,
}

/// What happened to each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Written (new or different).
    Written(PathBuf),
    /// Already identical.
    Unchanged(PathBuf),
}

/// Install errors.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The config is not a usable conflist.
    #[error("config")]
    Config(#[source] cni_runtime::RuntimeError),
    /// The config's plugin list is empty.
    #[error("config: no plugins")]
    NoPlugins,
    /// The target config belongs to another plugin.
    #[error("refusing to overwrite {path}: it configures plugin {plugin:?}, not trestle (pass --force to replace it)")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its first plugin's type.
        plugin: String,
    },
    /// A file operation failed; the OS error is the source.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A unit file cannot name this path.
    #[error("{0}: a systemd unit needs a UTF-8 path")]
    UnitPath(PathBuf),
    /// A command (`systemctl`) failed.
    #[error("{command}: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it did not run.
        detail: String,
    },
    /// The spawned trestled exited instead of serving.
    #[error("trestled exited at start ({status}); its output is in {}", log.display())]
    DaemonExited {
        /// How it exited.
        status: String,
        /// Its log.
        log: PathBuf,
    },
}

/// The default network: one trestle bridge with masquerade and trestle-ipam on `subnet`.
pub fn default_config(name: &str, bridge: &str, subnet: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": name,
        "plugins": [{
            "type": "trestle",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "trestle-ipam",
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    });
    let mut out = serde_json::to_vec_pretty(&v).expect("JSON serialises");
    out.push(b'\n');
    out
}

/// Installs the binaries and the config (only the plugins, with [`Options::plugins_only`]).
pub fn run(opts: &Options) -> Result<Vec<Change>, InstallError> {
    if opts.plugins_only {
        return install_binaries(opts, &PLUGINS);
    }
    let list = NetworkList::from_bytes(&opts.config, "config").map_err(InstallError::Config)?;
    if list.plugins.is_empty() {
        return Err(InstallError::NoPlugins);
    }
    let conf_path = opts.conf_dir.join(&opts.file_name);
    if !opts.force {
        refuse_foreign(&conf_path)?;
    }
    let mut changes = install_binaries(opts, &BINARIES)?;
    changes.push(put(&conf_path, &opts.config, 0o644)?);
    if let Some(dir) = &opts.systemd_units {
        let trestled = absolute(&opts.bin_dir.join(DAEMON))?;
        changes.push(put(
            &dir.join(SOCKET_UNIT),
            socket_unit().as_bytes(),
            0o644,
        )?);
        changes.push(put(
            &dir.join(SERVICE_UNIT),
            service_unit(&trestled)?.as_bytes(),
            0o644,
        )?);
    }
    Ok(changes)
}

/// Copies `names` from `opts.from` into the bin dir.
fn install_binaries(opts: &Options, names: &[&str]) -> Result<Vec<Change>, InstallError> {
    names
        .iter()
        .map(|bin| {
            let bytes = read(&opts.from.join(bin))?;
            put(&opts.bin_dir.join(bin), &bytes, 0o755)
        })
        .collect()
}

/// `path` made absolute against the working directory: systemd resolves nothing relative.
fn absolute(path: &Path) -> Result<PathBuf, InstallError> {
    std::path::absolute(path).map_err(|source| InstallError::Io {
        path: path.to_owned(),
        source,
    })
}

/// trestled's socket unit. systemd holds the listening socket, so a plugin that connects while trestled restarts
/// waits in its backlog instead of failing; trestled takes it as fd 3 (`LISTEN_FDS`). The path is trestled's and
/// trestle-ipam's default socket, which both sides then agree on without configuration.
pub fn socket_unit() -> String {
    format!(
        "# Written by trestlectl install.
[Unit]
Description=trestle node IPAM service socket

[Socket]
ListenStream={socket}
SocketMode=0600
DirectoryMode=0755

[Install]
WantedBy=sockets.target
",
        socket = trestle_ipam_core::DEFAULT_SOCKET
    )
}

/// trestled's service unit, running `trestled` (an absolute path). Started by its socket on the first connection;
/// `Also=` makes `systemctl enable trestled.service` enable the socket too.
pub fn service_unit(trestled: &Path) -> Result<String, InstallError> {
    let exe = trestled
        .to_str()
        .ok_or_else(|| InstallError::UnitPath(trestled.to_owned()))?;
    Ok(format!(
        "# Written by trestlectl install.
[Unit]
Description=trestle node IPAM service
Requires={SOCKET_UNIT}
After={SOCKET_UNIT}

[Service]
ExecStart={exe}
Restart=always
RestartSec=1

[Install]
Also={SOCKET_UNIT}
",
        exe = systemd_quote(exe)
    ))
}

/// A word of an `ExecStart=` line: `%` starts a specifier and blanks split words, so both are escaped.
fn systemd_quote(s: &str) -> String {
    let s = s.replace('%', "%%");
    if !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\' || c == '\'') {
        return s;
    }
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// Whether systemd manages this machine (`sd_booted(3)`'s test).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// How [`start_daemon`] starts trestled.
#[derive(Debug, Clone)]
pub struct Start {
    /// The installed trestled.
    pub trestled: PathBuf,
    /// Through systemd (`systemctl enable --now trestled.socket`), or as a detached process.
    pub systemd: bool,
    /// The binary was just replaced: a running trestled is restarted so that the new one serves (systemd only).
    pub restart: bool,
    /// The socket a detached trestled serves on.
    pub socket: PathBuf,
    /// A detached trestled's stdout and stderr.
    pub log: PathBuf,
    /// How long to wait for a detached trestled to serve.
    pub wait: Duration,
}

impl Start {
    /// The start of the trestled `opts` installed, with `changes` telling whether its binary was replaced.
    pub fn after_install(opts: &Options, changes: &[Change], log: PathBuf) -> Start {
        let trestled = opts.bin_dir.join(DAEMON);
        Start {
            restart: changes.contains(&Change::Written(trestled.clone())),
            trestled,
            systemd: systemd_running(),
            socket: PathBuf::from(trestle_ipam_core::DEFAULT_SOCKET),
            log,
            wait: Duration::from_secs(5),
        }
    }
}

/// How trestled was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// systemd has its socket enabled and listening.
    Systemd {
        /// The running service was restarted onto the new binary.
        restarted: bool,
    },
    /// Something already serves the socket: left alone.
    AlreadyRunning(PathBuf),
    /// Spawned detached.
    Spawned {
        /// Its process ID.
        pid: u32,
        /// Whether it answered on its socket before the wait ran out.
        serving: bool,
    },
}

/// Starts trestled as `how` says.
pub fn start_daemon(how: &Start) -> Result<Started, InstallError> {
    if how.systemd {
        start_with_systemd(how.restart)
    } else {
        spawn_detached(how)
    }
}

fn start_with_systemd(restart: bool) -> Result<Started, InstallError> {
    // Units may have been written just now; systemd reads them only on a reload.
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", SOCKET_UNIT])?;
    if restart {
        // Only if it runs: otherwise the socket starts the new binary on the first connection anyway.
        systemctl(&["try-restart", SERVICE_UNIT])?;
    }
    Ok(Started::Systemd { restarted: restart })
}

fn systemctl(args: &[&str]) -> Result<(), InstallError> {
    let command = format!("systemctl {}", args.join(" "));
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| InstallError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(InstallError::Command {
        command,
        detail: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// Spawns trestled in a session of its own (no terminal's hangup reaches it), its output appended to the log, and
/// waits until it serves or exits.
fn spawn_detached(how: &Start) -> Result<Started, InstallError> {
    if std::os::unix::net::UnixStream::connect(&how.socket).is_ok() {
        return Ok(Started::AlreadyRunning(how.socket.clone()));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| InstallError::Io { path, source }
    };
    if let Some(dir) = how.log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&how.log)
        .map_err(io(&how.log))?;
    let mut cmd = Command::new(&how.trestled);
    cmd.arg("--socket")
        .arg(&how.socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io(&how.log))?)
        .stderr(log);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io(&how.trestled))?;
    let deadline = Instant::now() + how.wait;
    loop {
        if let Some(status) = child.try_wait().map_err(io(&how.trestled))? {
            return Err(InstallError::DaemonExited {
                status: status.to_string(),
                log: how.log.clone(),
            });
        }
        if std::os::unix::net::UnixStream::connect(&how.socket).is_ok() {
            return Ok(Started::Spawned {
                pid: child.id(),
                serving: true,
            });
        }
        if Instant::now() >= deadline {
            // Still starting (a large import, say): it goes on without us.
            return Ok(Started::Spawned {
                pid: child.id(),
                serving: false,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Refuses when `path` holds a config whose first plugin is not trestle (or that is not a config at all).
fn refuse_foreign(path: &Path) -> Result<(), InstallError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    let plugin = NetworkList::from_bytes(&bytes, "")
        .or_else(|_| NetworkList::from_plugin_bytes(&bytes, ""))
        .ok()
        .and_then(|l| l.plugins.first()?.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "(unreadable)".into());
    if plugin == "trestle" {
        Ok(())
    } else {
        Err(InstallError::Foreign {
            path: path.to_owned(),
            plugin,
        })
    }
}

/// Writes `bytes` to `path` unless it already holds them: a temporary file beside it, then a rename.
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<Change, InstallError> {
    let io = |source| InstallError::Io {
        path: path.to_owned(),
        source,
    };
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(Change::Unchanged(path.to_owned()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A dot name with a non-config extension: a runtime scanning the dir never loads it.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    Ok(Change::Written(path.to_owned()))
}

fn read(path: &Path) -> Result<Vec<u8>, InstallError> {
    std::fs::read(path).map_err(|source| InstallError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
