//! A runtime may SIGKILL a plugin at any instant (a timeout kills the plugin's process group). These tests kill
//! the real binaries at random instants, many times, then do what a runtime does next (DEL every container,
//! retry a failed DEL) and check the host, the pods and the state directory: nothing may be left, with no GC.
//! Each run prints its random seed; `TRESTLE_KILL_SEED=<seed>` replays a run's choice of instants.

mod common;

use common::World;
use serde_json::Value;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use trestle_netns::NamedNetNs;
use trestlectl::runtime::Invocation;

/// A small xorshift generator: the tests need spread, not quality, and a seed to replay.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("TRESTLE_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill test seed: {seed} (TRESTLE_KILL_SEED={seed} replays it)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Starts the plugin as a runtime does, in its own process group, inside the world's host namespace.
fn spawn(w: &World, cmd: &str, id: &str, netns: &str, conf: &Value) -> Child {
    let inv = Invocation::new(&w.bins.join("trestle"), cmd, id, netns, "eth0");
    let mut c = Command::new(&inv.plugin);
    c.envs(inv.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = w.host.fd().as_raw_fd();
    // SAFETY: runs in the forked child before exec and calls only setns(2) and setpgid(2), both
    // async-signal-safe; `fd` is open in the parent (so in the child) until spawn returns.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 || libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().expect("spawn plugin");
    let mut stdin = child.stdin.take().unwrap();
    // A plugin killed before it read stdin makes this fail: that is one of the instants under test.
    let _ = stdin.write_all(conf.to_string().as_bytes());
    child
}

/// Runs the plugin and SIGKILLs its process group after `after` unless it has exited; returns whether it was
/// killed.
fn run_killed_after(
    w: &World,
    cmd: &str,
    id: &str,
    netns: &str,
    conf: &Value,
    after: Option<Duration>,
) -> bool {
    let after = after.unwrap_or(Duration::MAX);
    let start = Instant::now();
    let mut child = spawn(w, cmd, id, netns, conf);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if start.elapsed() >= after {
            // SAFETY: kill(2) on the child's own process group (its pid, set by setpgid in the child).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The median wall time of ADD and of DEL under the load the test makes (`n` attachments, eight at a time).
fn typical(w: &World, conf: &Value, n: usize) -> (Duration, Duration) {
    let pods: Vec<NamedNetNs> = (0..n).map(|_| w.pod()).collect();
    let times = Mutex::new((Vec::new(), Vec::new()));
    parallel(n, 8, |i| {
        let path = pods[i].path().display().to_string();
        let add = w.call("ADD", &format!("warm{i}"), &path, "eth0", conf);
        assert!(add.success, "{}", add.stdout);
        let del = w.call("DEL", &format!("warm{i}"), &path, "eth0", conf);
        assert!(del.success, "{}", del.stdout);
        let mut t = times.lock().unwrap();
        t.0.push(add.elapsed);
        t.1.push(del.elapsed);
    });
    let (mut adds, mut dels) = times.into_inner().unwrap();
    adds.sort();
    dels.sort();
    (adds[n / 2], dels[n / 2])
}

/// When to kill each of `n` calls: a quarter never (so some calls finish, as most do), the rest at a uniformly
/// random instant within `window`.
fn kill_instants(rng: &mut Rng, n: usize, window: Duration) -> Vec<Option<Duration>> {
    (0..n)
        .map(|_| {
            if rng.below(4) == 0 {
                None
            } else {
                Some(Duration::from_micros(rng.below(window.as_micros() as u64)))
            }
        })
        .collect()
}

/// DEL as a runtime retries it: until it succeeds (a few tries).
fn del_until_done(w: &World, id: &str, netns: &str, conf: &Value) {
    for _ in 0..5 {
        let out = w.call("DEL", id, netns, "eth0", conf);
        if out.success {
            return;
        }
        eprintln!("DEL {id} failed, retrying: {}", out.stdout);
    }
    panic!("DEL {id} never succeeded");
}

/// Runs `job(i)` for `0..n` on `threads` threads.
fn parallel(n: usize, threads: usize, job: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                job(i);
            });
        }
    });
}

/// Every file of the network's state directory other than the ones that outlive pods (lock, cursors, boot
/// record), and every entry of trestle's attachment index.
fn state_left(w: &World, network: &str) -> Vec<String> {
    let dir = Path::new(&w.data_dir()).join(network);
    let mut left = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "lock" || name.starts_with("last_reserved_ip.") || name == ".trestle-boot" {
            continue;
        }
        if name == ".trestle-index" {
            for e in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                left.push(format!(
                    ".trestle-index/{}",
                    e.file_name().to_string_lossy()
                ));
            }
            continue;
        }
        left.push(name);
    }
    left.sort();
    left
}

/// What must be empty once every container is deleted.
fn assert_nothing_left(w: &World, pods: &[NamedNetNs], seed_note: &str) {
    assert_eq!(
        state_left(w, "mybridge"),
        Vec::<String>::new(),
        "state left {seed_note}"
    );
    assert_eq!(
        w.wait_no_veth(),
        Vec::<String>::new(),
        "veth pairs left {seed_note}"
    );
    assert_eq!(
        w.masqueraded(),
        Vec::<String>::new(),
        "masquerade left {seed_note}"
    );
    for pod in pods {
        let links: Vec<String> = pod
            .ns()
            .run(|| trestle_netlink::Netlink::open().unwrap().links().unwrap())
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n != "lo")
            .collect();
        assert!(
            links.is_empty(),
            "pod {} keeps {links:?} {seed_note}",
            pod.path().display()
        );
    }
}

/// Runs `cmd` for every pod (attachment `<prefix><i>`), eight at a time, each SIGKILLed at its instant of
/// [`kill_instants`] within `window`; returns how many were killed.
fn kill_round(
    w: &World,
    rng: &mut Rng,
    (cmd, prefix): (&str, &str),
    pods: &[NamedNetNs],
    conf: &Value,
    window: Duration,
) -> usize {
    let delays = kill_instants(rng, pods.len(), window);
    let killed = AtomicUsize::new(0);
    parallel(pods.len(), 8, |i| {
        let path = pods[i].path().display().to_string();
        if run_killed_after(w, cmd, &format!("{prefix}{i}"), &path, conf, delays[i]) {
            killed.fetch_add(1, Ordering::Relaxed);
        }
    });
    let killed = killed.into_inner();
    eprintln!(
        "{killed} of {} {cmd}s killed (window {window:?})",
        pods.len()
    );
    killed
}

/// DELs every pod's attachment `<prefix><i>`, eight at a time, each retried until it succeeds.
fn del_all(w: &World, prefix: &str, pods: &[NamedNetNs], conf: &Value) {
    parallel(pods.len(), 8, |i| {
        del_until_done(
            w,
            &format!("{prefix}{i}"),
            &pods[i].path().display().to_string(),
            conf,
        );
    });
}

/// ADDs killed at random instants (from before the plugin reads stdin to after it answered), eight at a time;
/// then a DEL of every container, as a runtime sends after a failed or timed-out ADD.
#[test]
#[ignore = "privileged: needs root"]
fn killed_adds_are_undone_by_their_dels() {
    let w = World::new();
    let conf = w.classic("1.0.0");
    let (add, _) = typical(&w, &conf, 16);
    let mut rng = Rng::new();
    let seed_note = format!("(seed {})", rng.0);
    const N: usize = 160;
    let pods: Vec<NamedNetNs> = (0..N).map(|_| w.pod()).collect();
    // From exec to a little after a typical ADD has answered.
    let window = add * 6 / 5;
    let killed = kill_round(&w, &mut rng, ("ADD", "k"), &pods, &conf, window);
    assert!(killed >= N / 10, "the kills must hit ADDs {seed_note}");
    del_all(&w, "k", &pods, &conf);
    assert_nothing_left(&w, &pods, &seed_note);
}

/// DELs killed at random instants, eight at a time, then retried as runtimes retry a failed DEL: the retry
/// finishes the cut-off (a pod interface already renamed, a host end still on the bridge) and releases the address.
#[test]
#[ignore = "privileged: needs root"]
fn killed_dels_are_finished_by_their_retries() {
    let w = World::new();
    let conf = w.classic("1.0.0");
    let (_, del) = typical(&w, &conf, 16);
    let mut rng = Rng::new();
    let seed_note = format!("(seed {})", rng.0);
    const N: usize = 120;
    let pods: Vec<NamedNetNs> = (0..N).map(|_| w.pod()).collect();
    parallel(N, 8, |i| {
        w.add(&format!("d{i}"), &pods[i], &conf);
    });
    let window = del * 6 / 5;
    let killed = kill_round(&w, &mut rng, ("DEL", "d"), &pods, &conf, window);
    assert!(killed >= N / 10, "the kills must hit DELs {seed_note}");
    del_all(&w, "d", &pods, &conf);
    // The retries have answered: no pod may still be on the bridge, whatever the reaper is doing.
    assert_eq!(
        w.ports("cni_bridge0").len(),
        0,
        "pods still on the bridge {seed_note}"
    );
    assert_nothing_left(&w, &pods, &seed_note);
}
