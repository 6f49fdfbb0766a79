//! The peak memory of one plugin call: the largest `VmHWM` of the plugin and of every process it starts (its IPAM
//! child, `iptables`), each read at the process's exit through ptrace(2).
//!
//! Why not wait4(2)'s `ru_maxrss`: the kernel keeps a process's high-water mark across execve (when exec drops the
//! old memory map, its high-water mark is folded into the process's `maxrss`), and a child forked from the bench
//! starts as a copy of the bench. So `ru_maxrss` of any plugin the bench spawns is at least the bench's own size
//! (~8 MiB), and `vfork`/`posix_spawn` do the same, since there the dropped map is the bench's itself. After exec a
//! process has a new map whose `VmHWM` counts that process alone; it has to be read after the process's last
//! allocation and before its map is gone, which is the PTRACE_EVENT_EXIT stop. The tracer follows forks, so every
//! process the plugin starts reaches the same stop and the figure covers the whole call, as `ru_maxrss` of the
//! plugin (which includes its reaped children) was meant to.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait, after the plugin has exited, for the processes it started to end.
const STRAGGLERS: Duration = Duration::from_secs(2);

/// Options set on the plugin at its first stop, and inherited by every task it starts: follow forks, vforks,
/// threads and execs, and stop each task as it exits.
const OPTIONS: libc::c_int = libc::PTRACE_O_TRACEEXIT
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEEXEC;

/// Why a peak could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started.
    #[error("starting the program")]
    Spawn(#[source] std::io::Error),
    /// A ptrace(2) or wait(2) call failed.
    #[error("{call} failed")]
    Trace {
        /// The call.
        call: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program's stdout could not be read.
    #[error("reading the program's stdout")]
    Output(#[source] std::io::Error),
    /// The thread that follows the program panicked.
    #[error("the tracing thread panicked")]
    Panicked,
    /// The program did not exit successfully.
    #[error("the program failed ({status}): {stdout}")]
    Failed {
        /// How it ended (exit code or signal).
        status: String,
        /// What it wrote to stdout (a plugin's CNI error).
        stdout: String,
    },
    /// No exit stop was seen, so no peak was read.
    #[error("no process of the program was seen exiting")]
    NoReading,
}

/// One process's peak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPeak {
    /// Its name (its main thread's `comm`, at exit).
    pub name: String,
    /// Its `VmHWM` at exit, KiB.
    pub hwm_kib: u64,
}

/// The outcome of a measured run.
#[derive(Debug)]
pub struct Measured {
    /// The largest of the processes' peaks, KiB.
    pub peak_kib: u64,
    /// Each process that was seen exiting, in the order of their pids.
    pub processes: Vec<ProcessPeak>,
}

/// Runs `cmd` with `stdin` and measures the peak memory of it and of every process it starts. `cmd`'s stdin and
/// stdout are replaced by pipes; it must exit successfully.
pub fn measure(cmd: Command, stdin: &[u8]) -> Result<Measured, Error> {
    // The tracer is the thread that forks the program, and it waits with __WNOTHREAD: a thread of its own sees only
    // this program's processes, never another child of the bench (trestled, a batch's plugins).
    std::thread::scope(|s| {
        s.spawn(move || traced_run(cmd, stdin))
            .join()
            .unwrap_or(Err(Error::Panicked))
    })
}

/// Spawns `cmd` traced, feeds it and collects its stdout on a second thread, and follows its process tree.
fn traced_run(mut cmd: Command, stdin: &[u8]) -> Result<Measured, Error> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    trace_me_on_exec(&mut cmd);
    let mut child = cmd.spawn().map_err(Error::Spawn)?;
    let root = child.id() as libc::pid_t;
    let (input, output) = (child.stdin.take(), child.stdout.take());
    std::thread::scope(|s| {
        let io = s.spawn(move || exchange(input, output, stdin));
        let mut tracer = Tracer::new(root);
        let traced = tracer.run();
        if traced.is_err() && tracer.root_status.is_none() {
            // The tree may be stopped and never exit: SIGKILL ends the plugin even in a ptrace stop, closing its
            // stdout for the reader.
            // SAFETY: kill(2) has no memory preconditions; root is our child and not reaped yet (no status), so
            // the pid is still its own.
            unsafe { libc::kill(root, libc::SIGKILL) };
        }
        let stdout = io.join().unwrap_or(Err(Error::Panicked));
        traced?;
        let stdout = stdout?;
        // std's Child is dropped unwaited: the tracer has reaped the pid.
        drop(child);
        tracer.into_measured(&stdout)
    })
}

/// Makes the forked child ask to be traced by its parent before exec; exec then stops it with SIGTRAP.
fn trace_me_on_exec(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls ptrace(2), which is async-signal-safe
    // and touches no memory of ours (all pointer arguments are null).
    unsafe {
        cmd.pre_exec(|| {
            let none = std::ptr::null_mut::<libc::c_void>();
            if libc::ptrace(libc::PTRACE_TRACEME, 0 as libc::pid_t, none, none) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Writes `input` to the program's stdin, closes it, and reads its stdout to the end.
fn exchange(
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    input: &[u8],
) -> Result<Vec<u8>, Error> {
    if let Some(mut s) = stdin {
        // A plugin may exit without reading stdin (VERSION); its exit status tells what happened.
        let _ = s.write_all(input);
    }
    let mut out = Vec::new();
    if let Some(mut o) = stdout {
        o.read_to_end(&mut out).map_err(Error::Output)?;
    }
    Ok(out)
}

/// What one wait returned.
enum Waited {
    /// A task stopped (status as wait gave it).
    Stopped(libc::pid_t, libc::c_int),
    /// A task ended (exited or killed).
    Ended(libc::pid_t, libc::c_int),
    /// WNOHANG: nothing changed yet.
    Nothing,
    /// No child or tracee is left.
    NoChildren,
}

/// Waits for any child or tracee of this thread.
fn wait_any(flags: libc::c_int) -> Result<Waited, Error> {
    loop {
        let mut status = 0;
        // SAFETY: status is valid for writing; waiting for "any" with __WNOTHREAD reaps only this thread's own
        // children and tracees, which nothing else in the bench waits for.
        let pid =
            unsafe { libc::waitpid(-1, &mut status, flags | libc::__WALL | libc::__WNOTHREAD) };
        if pid > 0 {
            return Ok(if libc::WIFSTOPPED(status) {
                Waited::Stopped(pid, status)
            } else {
                Waited::Ended(pid, status)
            });
        }
        if pid == 0 {
            return Ok(Waited::Nothing);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(Waited::NoChildren),
            _ => {
                return Err(Error::Trace {
                    call: "waitpid",
                    source: e,
                })
            }
        }
    }
}

/// Restarts a stopped tracee, delivering `signal` (0: none).
fn cont(pid: libc::pid_t, signal: libc::c_int) -> Result<(), Error> {
    request(libc::PTRACE_CONT, pid, signal as usize, "PTRACE_CONT")
}

/// Sets [`OPTIONS`] on a stopped tracee.
fn set_options(pid: libc::pid_t) -> Result<(), Error> {
    request(
        libc::PTRACE_SETOPTIONS,
        pid,
        OPTIONS as usize,
        "PTRACE_SETOPTIONS",
    )
}

/// A ptrace(2) request that takes no address and a plain number as its data word.
fn request(
    req: libc::c_uint,
    pid: libc::pid_t,
    data: usize,
    call: &'static str,
) -> Result<(), Error> {
    // SAFETY: PTRACE_CONT and PTRACE_SETOPTIONS take no address and read their data word as a
    // number (a signal, option bits): no memory of ours is touched.
    let rc = unsafe {
        libc::ptrace(
            req,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    };
    checked(rc, call)
}

/// A ptrace(2) return code as a result. A tracee that is gone (ESRCH: killed meanwhile, e.g. by another thread's
/// exit_group) is not an error: its end is reported by wait like any other.
fn checked(rc: libc::c_long, call: &'static str) -> Result<(), Error> {
    if rc == -1 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(Error::Trace { call, source: e });
        }
    }
    Ok(())
}

/// Follows the plugin's process tree until every traced task is gone.
struct Tracer {
    root: libc::pid_t,
    /// Tasks whose first stop has been seen.
    seen: HashSet<libc::pid_t>,
    /// Peak of each process (by thread-group id) read at its tasks' exit stops.
    peaks: BTreeMap<libc::pid_t, ProcessPeak>,
    /// The plugin's wait status once it has ended.
    root_status: Option<libc::c_int>,
}

impl Tracer {
    fn new(root: libc::pid_t) -> Tracer {
        Tracer {
            root,
            seen: HashSet::new(),
            peaks: BTreeMap::new(),
            root_status: None,
        }
    }

    /// Waits for every stop and end until no tracee is left, or `STRAGGLERS` after the plugin ended (a process it
    /// left running is detached, untraced, when this thread ends).
    fn run(&mut self) -> Result<(), Error> {
        let mut deadline: Option<Instant> = None;
        loop {
            let flags = if deadline.is_some() { libc::WNOHANG } else { 0 };
            match wait_any(flags)? {
                Waited::NoChildren => break,
                Waited::Nothing if deadline.is_some_and(|d| Instant::now() >= d) => break,
                Waited::Nothing => std::thread::sleep(Duration::from_millis(1)),
                Waited::Ended(pid, status) => {
                    if pid == self.root {
                        self.root_status = Some(status);
                        deadline = Some(Instant::now() + STRAGGLERS);
                    }
                }
                Waited::Stopped(pid, status) => {
                    let signal = self.on_stop(pid, status)?;
                    cont(pid, signal)?;
                }
            }
        }
        Ok(())
    }

    /// Handles one stop and returns the signal to deliver when the task goes on (0: none).
    fn on_stop(&mut self, pid: libc::pid_t, status: libc::c_int) -> Result<libc::c_int, Error> {
        let first = self.seen.insert(pid);
        let signal = libc::WSTOPSIG(status);
        match status >> 16 {
            0 => {}
            libc::PTRACE_EVENT_EXIT => {
                self.read_peak(pid);
                return Ok(0);
            }
            // Fork, vfork, clone and exec events: the new task is traced from its start, nothing to deliver.
            _ => return Ok(0),
        }
        if first && pid == self.root && signal == libc::SIGTRAP {
            // The stop after the plugin's exec: from here on every task of the tree is followed.
            set_options(pid)?;
            return Ok(0);
        }
        if first && signal == libc::SIGSTOP {
            // The SIGSTOP a task traced from its creation starts with: not the program's own signal.
            return Ok(0);
        }
        // A signal on its way to the task (SIGCHLD, the Go runtime's SIGURG, ...): deliver it.
        Ok(signal)
    }

    /// Reads the stopped task's process peak and keeps the largest per process (its threads may each stop).
    fn read_peak(&mut self, pid: libc::pid_t) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        let Some((tgid, mut peak)) = parse_status(&text) else {
            return;
        };
        // The status names the thread that stopped; the process is named by its leader's `comm`.
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{tgid}/comm")) {
            peak.name = comm.trim_end().to_owned();
        }
        let kept = self.peaks.entry(tgid).or_insert_with(|| peak.clone());
        if peak.hwm_kib > kept.hwm_kib {
            *kept = peak;
        }
    }

    /// The result, if the plugin exited successfully and at least one peak was read.
    fn into_measured(self, stdout: &[u8]) -> Result<Measured, Error> {
        let status = self.root_status.ok_or(Error::NoReading)?;
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(Error::Failed {
                status: describe(status),
                stdout: String::from_utf8_lossy(stdout).trim().to_owned(),
            });
        }
        let processes: Vec<ProcessPeak> = self.peaks.into_values().collect();
        let peak_kib = processes
            .iter()
            .map(|p| p.hwm_kib)
            .max()
            .ok_or(Error::NoReading)?;
        Ok(Measured {
            peak_kib,
            processes,
        })
    }
}

/// "exit code N" or "killed by signal N", from a wait status.
fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else {
        format!("killed by signal {}", libc::WTERMSIG(status))
    }
}

/// The thread-group id, name and `VmHWM` from the text of `/proc/TID/status`; `None` when a field is missing (the
/// task's memory map is already gone).
fn parse_status(status: &str) -> Option<(libc::pid_t, ProcessPeak)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let tgid = field("Tgid")?.parse().ok()?;
    let hwm_kib = field("VmHWM")?.split_whitespace().next()?.parse().ok()?;
    let name = field("Name")?.to_owned();
    Some((tgid, ProcessPeak { name, hwm_kib }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tells a re-run of this test binary to act as the measured program (see `probe`): `N` allocates and touches
    /// N MiB, `spawn:N` starts another probe that does and waits for it, `fail` exits with code 3.
    const PROBE: &str = "TRESTLE_BENCH_MEMORY_PROBE";
    const MIB: u64 = 1024;

    /// The measured program when `PROBE` is set. Run as a test, it measures itself as that
    /// program touching nothing, which must come out small: the bench's (this test
    /// process's) own memory must not leak into a child's figure.
    #[test]
    fn probe() {
        let Ok(spec) = std::env::var(PROBE) else {
            let idle = peak("0");
            assert!(
                idle.peak_kib < 16 * MIB,
                "an idle probe reports {} KiB",
                idle.peak_kib
            );
            return;
        };
        if spec == "fail" {
            std::process::exit(3);
        }
        if let Some(mib) = spec.strip_prefix("spawn:") {
            let ok = probe_command(mib).status().is_ok_and(|s| s.success());
            std::process::exit(if ok { 0 } else { 1 });
        }
        let mib: usize = spec.parse().expect("a probe size in MiB");
        // vec! with a non-zero byte writes (and so faults in) every page.
        let block = vec![1u8; mib << 20];
        std::hint::black_box(&block);
    }

    /// This test binary, running only `probe` with `spec`.
    fn probe_command(spec: &str) -> Command {
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
        cmd.args(["--exact", &format!("{module}::probe"), "--quiet"])
            .env(PROBE, spec)
            .stderr(Stdio::null());
        cmd
    }

    fn peak(spec: &str) -> Measured {
        measure(probe_command(spec), b"").expect("measuring a probe")
    }

    /// The check against a known allocation: 32 MiB touched shows as 32 MiB over the same program touching
    /// nothing, while this process holds 64 MiB of its own (which wait4's `ru_maxrss` reported for every child).
    #[test]
    fn peak_memory_matches_a_known_allocation() {
        let ballast = vec![1u8; 64 << 20];
        std::hint::black_box(&ballast);
        let idle = peak("0");
        let known = peak("32");
        drop(ballast);
        assert!(
            idle.peak_kib < 16 * MIB,
            "an idle probe reports {} KiB: the bench's own memory leaks in",
            idle.peak_kib
        );
        assert!(known.peak_kib >= 32 * MIB, "{} KiB", known.peak_kib);
        assert!(
            known.peak_kib <= idle.peak_kib + 33 * MIB,
            "32 MiB probe {} KiB, idle {} KiB",
            known.peak_kib,
            idle.peak_kib
        );
        assert_eq!(idle.processes.len(), 1, "{:?}", idle.processes);
    }

    /// A process the program starts (as a plugin starts its IPAM child) is measured too.
    #[test]
    fn peak_memory_covers_child_processes() {
        let m = peak("spawn:48");
        assert_eq!(m.processes.len(), 2, "{:?}", m.processes);
        assert!(m.peak_kib >= 48 * MIB, "{} KiB", m.peak_kib);
        let smallest = m.processes.iter().map(|p| p.hwm_kib).min();
        assert!(smallest < Some(16 * MIB), "{:?}", m.processes);
    }

    #[test]
    fn a_failing_program_is_an_error() {
        match measure(probe_command("fail"), b"") {
            Err(Error::Failed { status, .. }) => assert_eq!(status, "exit code 3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let cmd = Command::new("/nonexistent/trestle-bench-probe");
        assert!(matches!(measure(cmd, b""), Err(Error::Spawn(_))));
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tbridge\nUmask:\t0022\nTgid:\t412\nPid:\t413\nVmHWM:\t    5056 kB\nVmRSS:\t 4000 kB\n";
        let (tgid, peak) = parse_status(text).unwrap();
        assert_eq!(tgid, 412);
        assert_eq!(
            peak,
            ProcessPeak {
                name: "bridge".into(),
                hwm_kib: 5056
            }
        );
        // A zombie's status has no memory fields.
        assert_eq!(parse_status("Name:\tx\nTgid:\t1\n"), None);
    }
}
