//! A `trestled` the bench starts itself: its directory (socket, store, delete queue, log), the process, when it
//! answers, its memory and CPU time, its metrics, and a graceful stop (SIGTERM, wait).

use super::Error;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trestle_ipam::daemon::DaemonClient;
use trestle_ipam_core::DaemonSettings;

/// How long a start may take before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon of the bench's own.
pub struct Trestled {
    bin: PathBuf,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Trestled {
    /// A daemon of `bin` living in `dir` (created), started with `extra` arguments after the bench's own
    /// (`--socket`, `--state-dir`, `--delete-queue`, `--host-local-dir ""`). Not started yet.
    pub fn new(bin: PathBuf, dir: &Path, extra: &[&str]) -> Result<Trestled, Error> {
        if !bin.is_file() {
            return Err(Error::TrestledMissing { path: bin });
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::WorkDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Trestled {
            bin,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        })
    }

    /// How a plugin (or the bench) reaches it.
    pub fn settings(&self) -> DaemonSettings {
        DaemonSettings {
            socket: self.dir.join("ipam.sock"),
            delete_queue: self.dir.join("queue"),
            ..DaemonSettings::default()
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("trestled.log")
    }

    /// The arguments it is started with, for the report.
    pub fn args(&self) -> Vec<String> {
        let s = self.settings();
        let mut v: Vec<String> = [
            "--socket".into(),
            s.socket.display().to_string(),
            "--state-dir".into(),
            self.dir.join("state").display().to_string(),
            "--delete-queue".into(),
            s.delete_queue.display().to_string(),
            "--host-local-dir".into(),
            String::new(),
        ]
        .into();
        v.extend(self.extra.iter().cloned());
        v
    }

    /// The command line as a shell would take it, for the report.
    pub fn command_line(&self) -> String {
        std::iter::once(self.bin.display().to_string())
            .chain(self.args().into_iter().map(|a| shell_word(&a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts it and waits until it answers STATUS with ready; returns the time from spawn to that answer.
    pub fn start(&mut self) -> Result<Duration, Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| Error::TrestledSpawn {
                path: self.bin.clone(),
                source,
            })?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let spawned = Instant::now();
        let child = cmd.spawn().map_err(|source| Error::TrestledSpawn {
            path: self.bin.clone(),
            source,
        })?;
        self.child = Some(child);
        self.wait_ready(spawned)
    }

    /// Polls STATUS (a fresh connection attempt every 0.5 ms) until it says ready.
    fn wait_ready(&mut self, since: Instant) -> Result<Duration, Error> {
        let mut client = DaemonClient::new(DaemonSettings {
            connect_timeout_ms: 1,
            timeout_ms: 1000,
            ..self.settings()
        });
        loop {
            let reply = client.status(&trestle_ipam_api::v1::StatusRequest {
                client: Some(trestle_ipam_api::version::peer("trestlectl-bench")),
                network: String::new(),
            });
            if reply.is_ok_and(|r| r.ready) {
                return Ok(since.elapsed());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(Error::TrestledExited {
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if since.elapsed() > START_TIMEOUT {
                return Err(Error::TrestledNotReady {
                    waited: START_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Its process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its resident memory now (`VmRSS`, KiB).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        vm_rss_kib(&status)
    }

    /// The CPU time it has used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(&format!("/proc/{}/stat", self.pid()?))
    }

    /// The address of its metrics endpoint (`--metrics-addr`), from the last start's log line.
    pub fn metrics_addr(&self) -> Option<String> {
        // The line comes from a task started at readiness: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if let Some(addr) = metrics_addr_in(&log) {
                return Some(addr);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A counter or gauge without labels from its `/metrics` (`None` if it is not served).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let addr = self.metrics_addr()?;
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        metric_value(&body, name)
    }

    /// SIGTERM, and waits for it to exit; returns how long that took. A non-zero exit is an error.
    pub fn stop(&mut self) -> Result<Duration, Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let start = Instant::now();
        // SAFETY: kill(2) with our own unreaped child's pid and a valid signal.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().map_err(|source| Error::TrestledSpawn {
            path: self.bin.clone(),
            source,
        })?;
        let took = start.elapsed();
        if !status.success() {
            return Err(Error::TrestledExited {
                status: status.to_string(),
                log: self.log_tail(),
            });
        }
        Ok(took)
    }

    /// The last lines of its log, for errors.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Trestled {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A word quoted for a shell where it needs it ("" for the empty word).
fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c))
    {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// `VmRSS` (KiB) from the text of `/proc/PID/status`.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU seconds from a `/proc/PID/stat` (or `/proc/self/stat`) file.
pub fn process_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// utime + stime (clock ticks) of a `/proc/PID/stat` line: fields 14 and 15, counted after the command name,
/// which is in parentheses and may hold spaces.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The last "metrics on http://ADDR" of a log.
pub fn metrics_addr_in(log: &str) -> Option<String> {
    log.rsplit("metrics on http://")
        .next()
        .filter(|_| log.contains("metrics on http://"))?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// The value of an unlabelled metric in Prometheus' text format; a counter `name` is also found as `name_total`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name || key.strip_suffix("_total") == Some(name))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\ttrestled\nVmPeak:\t  100 kB\nVmRSS:\t    8192 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(8192));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_after_a_name_with_spaces() {
        let stat =
            "1234 (tokio rt (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 500 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn finds_the_last_metrics_address() {
        let log = "2026-12-03T07:00:00.000Z INFO  metrics on http://127.0.0.1:4001\n\
                   2026-12-03T07:00:01.000Z INFO  trestled stopped\n\
                   2026-12-03T07:00:02.000Z INFO  metrics on http://127.0.0.1:4002\n";
        assert_eq!(metrics_addr_in(log).as_deref(), Some("127.0.0.1:4002"));
        assert_eq!(metrics_addr_in("nothing here"), None);
    }

    #[test]
    fn reads_counters_with_or_without_total() {
        let text = "# HELP trestle_ipam_store_commits Store commits.\n\
                    # TYPE trestle_ipam_store_commits counter\n\
                    trestle_ipam_store_commits_total 4321\n\
                    trestle_ipam_store_commits_other 1\n\
                    trestle_ipam_addresses_in_use{network=\"n\"} 3\n";
        assert_eq!(
            metric_value(text, "trestle_ipam_store_commits"),
            Some(4321.0)
        );
        assert_eq!(metric_value(text, "trestle_ipam_addresses_in_use"), None);
        assert_eq!(metric_value(text, "absent"), None);
    }

    #[test]
    fn quotes_shell_words_only_when_needed() {
        assert_eq!(shell_word("--reuse-delay"), "--reuse-delay");
        assert_eq!(shell_word("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
