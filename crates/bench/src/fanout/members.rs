//! The etcd members as processes: their resident memory and CPU time, sampled while the bench runs (a member
//! killed and started again is a new process: its CPU time adds to the old one's), and the descriptor limit the
//! followers' connections need.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::super::trestled::{process_cpu_seconds, vm_rss_kib};

/// How often the members are sampled: often enough to catch the peak of the first reads (seconds long).
const EVERY: Duration = Duration::from_millis(100);

/// A thread sampling every member's RSS and CPU time.
pub struct Sampler {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    /// Per member: its process (found by its data directory on the command line), if it runs.
    pids: Vec<Option<u32>>,
    /// CPU seconds of the current process at the last sample.
    last_cpu: Vec<f64>,
    /// CPU seconds of every process the member has been, summed.
    cpu: Vec<f64>,
    /// RSS at the last sample, KiB.
    rss: Vec<u64>,
    /// Largest RSS since the last [`Sampler::take_peaks`], KiB.
    peak: Vec<u64>,
}

impl Sampler {
    /// Samples the members whose data directories are `dirs`, now and every 100 ms.
    pub fn start(dirs: Vec<PathBuf>) -> Sampler {
        let n = dirs.len();
        let state = Arc::new(Mutex::new(State {
            pids: vec![None; n],
            last_cpu: vec![0.0; n],
            cpu: vec![0.0; n],
            rss: vec![0; n],
            peak: vec![0; n],
        }));
        let stop = Arc::new(AtomicBool::new(false));
        sample(&dirs, &state);
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EVERY);
                    sample(&dirs, &state);
                }
            })
        };
        Sampler {
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CPU seconds each member has used since the sampler started.
    pub fn cpu(&self) -> Vec<f64> {
        self.lock().cpu.clone()
    }

    /// Each member's RSS now, KiB.
    pub fn rss(&self) -> Vec<u64> {
        self.lock().rss.clone()
    }

    /// Each member's largest RSS since the last call (or the start), KiB; the next period starts now.
    pub fn take_peaks(&self) -> Vec<u64> {
        let mut s = self.lock();
        let peaks = s.peak.clone();
        s.peak = s.rss.clone();
        peaks
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sample(dirs: &[PathBuf], state: &Mutex<State>) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    for (i, dir) in dirs.iter().enumerate() {
        let still = s.pids[i].filter(|&p| runs_member(p, dir));
        let pid = match still {
            Some(p) => Some(p),
            None => {
                // A new process (or none): its CPU time counts from zero.
                s.last_cpu[i] = 0.0;
                member_pid(dir)
            }
        };
        s.pids[i] = pid;
        let Some(pid) = pid else {
            s.rss[i] = 0;
            continue;
        };
        if let Some(cpu) = process_cpu_seconds(&format!("/proc/{pid}/stat")) {
            s.cpu[i] += (cpu - s.last_cpu[i]).max(0.0);
            s.last_cpu[i] = cpu;
        }
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|st| vm_rss_kib(&st))
            .unwrap_or(0);
        s.rss[i] = rss;
        s.peak[i] = s.peak[i].max(rss);
    }
}

/// The process running etcd on data directory `dir`, if any.
fn member_pid(dir: &Path) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| runs_member(pid, dir))
}

fn runs_member(pid: u32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| has_data_dir(&c, &dir.to_string_lossy()))
}

/// Whether a `/proc/PID/cmdline` (NUL-separated arguments) names `dir` as `--data-dir`.
fn has_data_dir(cmdline: &[u8], dir: &str) -> bool {
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(a) = args.next() {
        if a == b"--data-dir" {
            return args.next() == Some(dir.as_bytes());
        }
    }
    false
}

/// Raises this process's descriptor limit (inherited by the etcd members it starts) to at least `want`: the soft
/// limit up to the hard one, and the hard one too if it is lower (root may). Returns the soft limit now.
pub fn raise_nofile(want: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    let (cur, max) = nofile_target(lim.rlim_cur, lim.rlim_max, want);
    if (cur, max) == (lim.rlim_cur, lim.rlim_max) {
        return Ok(cur);
    }
    let new = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit(2) reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(format!(
            "{want} file descriptors needed (the followers' connections), the limit is {} (hard {}): {}",
            lim.rlim_cur,
            lim.rlim_max,
            std::io::Error::last_os_error()
        ));
    }
    Ok(cur)
}

/// The (soft, hard) descriptor limits that give `want`: unchanged if the soft one suffices, else the soft one
/// raised, to the hard one when that is higher (the members get the headroom too).
fn nofile_target(cur: u64, max: u64, want: u64) -> (u64, u64) {
    if cur >= want {
        (cur, max)
    } else if max >= want {
        (max, max)
    } else {
        (want, want)
    }
}

/// `etcd --version`'s version ("3.4.23"), or what went wrong.
pub fn etcd_version() -> String {
    let Some(bin) = trestle_etcd_local::etcd_binary() else {
        return "etcd not found".into();
    };
    match std::process::Command::new(&bin).arg("--version").output() {
        Ok(out) => {
            version_of(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|| "unknown".into())
        }
        Err(e) => format!("{}: {e}", bin.display()),
    }
}

fn version_of(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_is_found_by_its_data_directory() {
        let c = b"/usr/bin/etcd\0--name\0m2\0--data-dir\0/tmp/x/etcd/m2\0--listen-client-urls\0http://a\0";
        assert!(has_data_dir(c, "/tmp/x/etcd/m2"));
        assert!(!has_data_dir(c, "/tmp/x/etcd/m1"));
        assert!(!has_data_dir(c, "/tmp/x/etcd/m"));
        assert!(!has_data_dir(b"/usr/bin/etcd\0--data-dir", "/tmp/x"));
        assert!(!has_data_dir(b"", "/tmp/x"));
    }

    #[test]
    fn the_descriptor_limit_rises_only_as_needed() {
        assert_eq!(nofile_target(4096, 8192, 2000), (4096, 8192));
        assert_eq!(nofile_target(1024, 524288, 2256), (524288, 524288));
        assert_eq!(nofile_target(1024, 1024, 2256), (2256, 2256));
    }

    #[test]
    fn etcd_version_line() {
        let out = "etcd Version: 3.4.23\nGit SHA: Not provided\nGo Version: go1.19.8\n";
        assert_eq!(version_of(out).as_deref(), Some("3.4.23"));
        assert_eq!(version_of("etcd 3.5"), None);
    }
}
