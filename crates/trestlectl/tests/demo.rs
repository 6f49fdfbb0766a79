//! The guided walkthrough runs to the end and leaves the machine as it found it.

mod common;

use std::process::Command;

/// What of the machine's own network state the demo could disturb.
fn machine_state() -> (Vec<String>, Vec<String>) {
    let mut nl = trestle_netlink::Netlink::open().unwrap();
    let mut links: Vec<String> = nl.links().unwrap().iter().map(|l| l.name.clone()).collect();
    links.sort();
    let mut addrs: Vec<String> = nl
        .addresses(None)
        .unwrap()
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    addrs.sort();
    (links, addrs)
}

/// `trestlectl demo ARGS`, which must succeed; its stdout.
fn demo_ok(args: &[&str]) -> String {
    let out = Command::new(common::bin_dir().join("trestlectl"))
        .arg("demo")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
#[ignore = "privileged: needs root"]
fn demo_runs_and_leaves_nothing() {
    let before = machine_state();
    let stdout = demo_ok(&["--no-color"]);
    for needle in [
        "inet 10.15.20.2/24 scope global eth0",
        "CNI_COMMAND=ADD CNI_CONTAINERID=1234567890",
        "pod B got 10.15.20.3/24",
        "cni_bridge0 has no ports left",
        "every veth pair is destroyed",
        "The walkthrough is complete",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert_eq!(before, machine_state());
    assert!(!std::path::Path::new("/run/trestle-demo").exists());
    assert!(!std::path::Path::new("/var/lib/cni/networks/mybridge").exists());
}

/// The names this run of the demo gave its image and containers, read from its output.
fn runtime_names(stdout: &str) -> (String, Vec<String>) {
    let suffix = stdout
        .split("trestle-demo-pause-")
        .nth(1)
        .map(|s| s.chars().take(8).collect::<String>())
        .expect("the pause container's name in the output");
    (
        format!("localhost/trestle-demo-busybox:{suffix}"),
        vec![
            format!("trestle-demo-pause-{suffix}"),
            format!("trestle-demo-app-{suffix}"),
        ],
    )
}

/// Docker lists none of the containers and not the image of the run that printed `output`.
fn assert_docker_has_none_of(output: &str) {
    let (image, containers) = runtime_names(output);
    let all = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    let all = String::from_utf8_lossy(&all.stdout);
    for c in &containers {
        assert!(!all.lines().any(|l| l == c), "{c} left in docker:\n{all}");
    }
    assert!(
        !docker(&["image", "inspect", &image]).status.success(),
        "{image} left in docker"
    );
}

/// Removes, when dropped, whatever docker still holds of the run whose output is on `screen`: a failing test
/// must not leave the machine's Docker a container or an image (on success there is nothing to remove).
struct DockerSweep(std::sync::Arc<std::sync::Mutex<String>>);

impl Drop for DockerSweep {
    fn drop(&mut self) {
        let text = plain(&self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if !text.contains("trestle-demo-pause-") {
            return;
        }
        let (image, containers) = runtime_names(&text);
        for c in &containers {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["rmi", &image]);
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker")
}

#[test]
#[ignore = "privileged: needs root, a Docker engine"]
fn demo_with_docker_pings_from_inside_and_leaves_nothing() {
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    assert!(
        engine.as_ref().is_ok_and(|o| o.status.success()),
        "this test runs the demo against the machine's Docker engine, which does not answer: {engine:?}"
    );
    let before = (machine_state(), ruleset(), netns_dir());
    let stdout = demo_ok(&["--runtime", "docker", "--no-color"]);
    for needle in [
        "docker run -d --rm --network none --name trestle-demo-pause-",
        "ln -s /proc/",
        "CNI_NETNS=/var/run/netns/pause1",
        "inet 10.15.20.3/24 scope global eth0",
        "--net=container:trestle-demo-pause-",
        "64 bytes from 10.15.20.2: seq=0",
        "2 packets transmitted, 2 packets received, 0% packet loss",
        "pod B got 10.15.20.4/24",
        "| eth0 10.15.20.3/24",
        "docker: pause + app",
        "docker holds none of the demo's containers, and its image is gone",
        "The walkthrough is complete",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert_docker_has_none_of(&stdout);
    assert_eq!(before, (machine_state(), ruleset(), netns_dir()));
}

/// The machine's nftables ruleset (Docker's own iptables-nft rules included, which a demo run must not change).
fn ruleset() -> String {
    // -s: without counters, which Docker's rules keep and any forwarded packet changes.
    let out = Command::new("nft")
        .args(["-s", "list", "ruleset"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The machine's named network namespaces.
fn netns_dir() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
#[ignore = "privileged: needs root"]
fn a_missing_runtime_is_named_with_how_to_get_it_before_anything_is_made() {
    let empty = common::TempDir::new("no-runtime");
    for (runtime, says) in [
        ("docker", "docker not found on PATH: install Docker Engine"),
        (
            "podman",
            "podman not found on PATH: install podman (Debian: apt-get install podman)",
        ),
        ("containerd", "ctr not found on PATH: install containerd"),
    ] {
        let out = Command::new(common::bin_dir().join("trestlectl"))
            .args(["demo", "--runtime", runtime])
            .env("PATH", &empty.0)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "started anyway: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A pseudo-terminal: the controlling side and the path of the terminal side.
fn openpty() -> (std::fs::File, std::path::PathBuf) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes at most buf.len() bytes.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let path = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        (std::fs::File::from_raw_fd(m), path.into())
    }
}

/// Text without ANSI colour sequences and carriage returns (the terminal turns "\n" into "\r\n").
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The demo's live wiring, read while it waits: each pause process's eth0 address with the name of its veth peer
/// on the bridge, and the bridge's addresses.
fn live_wiring(demo_pid: u32, others: &[u32]) -> (Vec<(u32, String, String)>, Vec<String>) {
    use trestle_netns::NetNs;
    let mut host = None;
    for fd in std::fs::read_dir(format!("/proc/{demo_pid}/fd"))
        .unwrap()
        .flatten()
    {
        let is_netns =
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("net:["));
        if !is_netns {
            continue;
        }
        let ns = NetNs::open(fd.path()).unwrap();
        let found = ns
            .run(|| {
                let mut nl = trestle_netlink::Netlink::open().unwrap();
                let br = nl.link_by_name("cni_bridge0").unwrap()?;
                let addrs: Vec<String> = nl
                    .addresses(Some(br.index))
                    .unwrap()
                    .iter()
                    .filter(|a| a.address.addr().is_ipv4())
                    .map(|a| a.address.to_string())
                    .collect();
                let ports: Vec<(u32, String)> = nl
                    .links_with_master(br.index)
                    .unwrap()
                    .into_iter()
                    .map(|l| (l.index, l.name))
                    .collect();
                Some((addrs, ports))
            })
            .unwrap();
        if found.is_some() {
            host = found;
        }
    }
    let (bridge_addrs, ports) = host.expect("the demo's host namespace with cni_bridge0");
    let mut pids: Vec<u32> = others.to_vec();
    for task in std::fs::read_dir(format!("/proc/{demo_pid}/task"))
        .unwrap()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .map(|p| p.parse::<u32>().unwrap()),
        );
    }
    let mut pods = Vec::new();
    {
        for pid in pids {
            let ns = NetNs::open(format!("/proc/{pid}/ns/net")).unwrap();
            let (addr, peer) = ns
                .run(|| {
                    let mut nl = trestle_netlink::Netlink::open().unwrap();
                    let eth0 = nl.link_by_name("eth0").unwrap().expect("eth0 in a pod");
                    let addr = nl
                        .addresses(Some(eth0.index))
                        .unwrap()
                        .iter()
                        .find(|a| a.address.addr().is_ipv4())
                        .expect("an IPv4 address on eth0")
                        .address
                        .to_string();
                    (addr, eth0.peer_index.unwrap())
                })
                .unwrap();
            let port = ports
                .iter()
                .find(|(i, _)| *i == peer)
                .map(|(_, n)| n.clone())
                .expect("the pod's veth peer on the bridge");
            pods.push((pid, addr, port));
        }
    }
    (pods, bridge_addrs)
}

/// The column of the first line of `text` holding `needle`.
fn column_of(text: &str, needle: &str) -> usize {
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"));
    line[..line.find(needle).unwrap()].chars().count()
}

/// `trestlectl demo ARGS` on a pseudo-terminal of its own, as a session leader whose controlling terminal it is
/// (so Ctrl-C typed there interrupts it); a thread collects what it prints.
struct OnTerminal {
    child: std::process::Child,
    master: std::fs::File,
    screen: std::sync::Arc<std::sync::Mutex<String>>,
    /// Tells the reader to let go of its copy of the controlling side.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnTerminal {
    fn start(args: &[&str]) -> OnTerminal {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        let (master, tty) = openpty();
        let term = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&tty)
                .unwrap()
        };
        let mut cmd = Command::new(common::bin_dir().join("trestlectl"));
        cmd.args(args)
            .env("LANG", "C.UTF-8")
            .env_remove("LC_ALL")
            .env_remove("LC_CTYPE")
            .stdin(term())
            .stdout(term())
            .stderr(term());
        // SAFETY: setsid(2) and ioctl(2) are async-signal-safe; stdin is the terminal by now.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let screen = std::sync::Arc::clone(&screen);
            let stop = std::sync::Arc::clone(&stop);
            let mut master = master.try_clone().unwrap();
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                let mut buf = [0u8; 4096];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut fds = libc::pollfd {
                        fd: master.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    if unsafe { libc::poll(&mut fds, 1, 50) } <= 0 {
                        continue;
                    }
                    // Ends with EIO once the demo (the terminal's last user) has exited.
                    match master.read(&mut buf) {
                        Ok(n) if n > 0 => screen
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n])),
                        _ => break,
                    }
                }
            })
        };
        OnTerminal {
            child,
            master,
            screen,
            stop,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        plain(&self.screen.lock().unwrap())
    }

    /// Waits for `needle` on the screen; false if the demo exited first.
    fn wait_for(&mut self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !self.text().contains(needle) {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write;
        self.master.write_all(keys).unwrap();
    }

    /// Closes the terminal, as a closed terminal window does: the kernel hangs up the demo's session (SIGHUP), and
    /// its output goes nowhere from then on. Waits for it to exit; its status and what it printed before.
    fn hang_up(mut self) -> (std::process::ExitStatus, String) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.reader.take().unwrap().join().unwrap();
        let text = self.text();
        drop(self.master);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, text);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the demo did not exit after its terminal closed:\n{text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits for the demo to exit; its status and everything it printed.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        (status, self.text())
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn step_mode_waits_for_enter_and_the_picture_matches_the_live_wiring() {
    let mut demo = OnTerminal::start(&["demo", "--step"]);
    let mut checked_picture = false;
    for step in 1.. {
        if !demo.wait_for(&format!(
            "[step {step} done: press Enter for step {}",
            step + 1
        )) {
            break;
        }
        // Waiting: the next step does not start until Enter.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = demo.text();
        assert!(
            !now.contains(&format!("Step {}:", step + 1)),
            "did not wait:\n{now}"
        );
        if now.contains(&format!(
            "Step {step}: the wiring, drawn from the live state"
        )) {
            let picture = &now[now.find(&format!("Step {step}:")).unwrap()..];
            let (pods, bridge) = live_wiring(demo.child.id(), &[]);
            assert_eq!(pods.len(), 2, "{pods:?}");
            assert!(
                picture.contains('┌') && picture.contains("╌ masquerade boundary ╌"),
                "{picture}"
            );
            assert!(
                picture.contains(&format!("│ gateway {}", bridge[0])),
                "{picture}"
            );
            for (pid, addr, port) in &pods {
                let a = column_of(picture, &format!("eth0 {addr}"));
                assert_eq!(
                    column_of(picture, &format!("pause: pid {pid} ")),
                    a,
                    "{picture}"
                );
                let p = column_of(picture, port);
                assert!(
                    p + 2 >= a && p < a + 18,
                    "{port} at {p}, eth0 {addr} at {a}:\n{picture}"
                );
            }
            checked_picture = true;
        }
        demo.type_keys(b"\n");
    }
    let (status, out) = demo.finish();
    assert!(status.success(), "demo failed:\n{out}");
    assert!(
        out.contains("--step: after each step the demo waits for Enter"),
        "{out}"
    );
    assert!(out.contains("The walkthrough is complete"), "{out}");
    assert!(checked_picture, "no picture step:\n{out}");
}

#[test]
#[ignore = "privileged: needs root, a Docker engine"]
fn docker_picture_matches_the_live_wiring_and_ctrl_c_removes_the_containers_and_image() {
    let mut demo = OnTerminal::start(&["demo", "--step", "--runtime", "docker"]);
    let _sweep = DockerSweep(std::sync::Arc::clone(&demo.screen));
    let picture_step = 10;
    for step in 1..=picture_step {
        assert!(
            demo.wait_for(&format!("[step {step} done: press Enter")),
            "exited early:\n{}",
            demo.text()
        );
        if step < picture_step {
            demo.type_keys(b"\n");
        }
    }
    let now = demo.text();
    let picture = &now[now
        .find(&format!(
            "Step {picture_step}: the wiring, drawn from the live state"
        ))
        .unwrap_or_else(|| panic!("no picture at step {picture_step}:\n{now}"))..];
    let (_, containers) = runtime_names(&now);
    let pause = docker(&["inspect", "-f", "{{.State.Pid}}", &containers[0]]);
    let pause: u32 = String::from_utf8_lossy(&pause.stdout)
        .trim()
        .parse()
        .unwrap();
    let (pods, bridge) = live_wiring(demo.child.id(), &[pause]);
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(
        picture.contains(&format!("│ gateway {}", bridge[0])),
        "{picture}"
    );
    for (pid, addr, port) in &pods {
        let a = column_of(picture, &format!("eth0 {addr}"));
        let holder = if *pid == pause {
            "docker: pause + app ".to_owned()
        } else {
            format!("pause: pid {pid} ")
        };
        assert_eq!(column_of(picture, &holder), a, "{picture}");
        let p = column_of(picture, port);
        assert!(
            p + 2 >= a && p < a + 18,
            "{port} at {p}, eth0 {addr} at {a}:\n{picture}"
        );
    }
    // Both containers run; ^C is what the terminal turns into SIGINT for the demo.
    demo.type_keys(b"\x03");
    let (status, out) = demo.finish();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("trestlectl demo: interrupted"), "{out}");
    assert!(
        !out.contains(&format!("Step {}:", picture_step + 1)),
        "{out}"
    );
    assert_docker_has_none_of(&out);
}

#[test]
#[ignore = "privileged: needs root, a Docker engine"]
fn a_closed_terminal_still_gets_the_containers_and_image_removed() {
    let mut demo = OnTerminal::start(&["demo", "--step", "--runtime", "docker"]);
    let _sweep = DockerSweep(std::sync::Arc::clone(&demo.screen));
    for step in 1..=7 {
        assert!(
            demo.wait_for(&format!("[step {step} done: press Enter")),
            "exited early:\n{}",
            demo.text()
        );
        if step < 7 {
            demo.type_keys(b"\n");
        }
    }
    // Both containers run. Every write the demo makes from now on fails (EIO), which must not stop its clean-up.
    let (status, out) = demo.hang_up();
    assert_eq!(status.code(), Some(130), "{out}");
    assert_docker_has_none_of(&out);
}

#[test]
#[ignore = "privileged: needs root"]
fn step_mode_without_a_terminal_does_not_wait_and_no_color_draws_ascii() {
    let bins = common::bin_dir();
    let out = Command::new(bins.join("trestlectl"))
        .args(["demo", "--step", "--no-color"])
        .env("LANG", "C.UTF-8")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("--step: stdin is not a terminal"),
        "{stdout}"
    );
    assert!(!stdout.contains("press Enter"), "{stdout}");
    assert!(
        stdout.contains("+---") && stdout.contains("~ masquerade boundary ~"),
        "{stdout}"
    );
    let picture =
        &stdout[stdout.find("the wiring, drawn").unwrap()..stdout.find("Step 8").unwrap()];
    assert!(picture.is_ascii(), "{picture}");
}
