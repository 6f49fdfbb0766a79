//! trestle under real runtimes: podman's CNI backend, containerd's `ctr run --cni`, and the kubelet's path through
//! containerd's CRI service driven by the CRI client in `cri/`. Each runtime runs under
//! `unshare --mount --net --pid`: its "host" network namespace, its /run, /var/lib, /etc/cni, /opt, /dev/shm and
//! /var/tmp are the test's own (tests/runtimes/lib.sh), so the scripts, which run at the same time, share nothing,
//! and every process one leaves dies with the PID namespace. The runtimes come from Debian's packages
//! (`tools/install-test-deps` installs them).

mod common;
mod cri;

use common::{bin_dir, reference_dir, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runtimes")
        .join(name)
}

/// Where trestle-ipam keeps the addresses: the script's `IPAM_MODE`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ipam {
    /// In `dataDir`, as host-local does.
    Embedded,
    /// In a `trestled` the script starts on the default socket of its private /run.
    Daemon,
}

impl Ipam {
    fn mode(self) -> &'static str {
        match self {
            Ipam::Embedded => "embedded",
            Ipam::Daemon => "daemon",
        }
    }
}

/// `unshare` running `script` with the binaries, the reference plugins and a scratch dir.
fn isolated(name: &str, work: &Path, ipam: Ipam) -> Command {
    unshared(name, work, ipam, true)
}

/// [`isolated`], with or without a PID namespace of the script's own. Without one, the script sees the
/// machine's process IDs, as the pids Docker reports (`docker inspect -f '{{.State.Pid}}'`) are.
fn unshared(name: &str, work: &Path, ipam: Ipam, pid_ns: bool) -> Command {
    for tool in ["podman", "containerd", "ctr", "runc", "busybox"] {
        assert!(
            which(tool),
            "{tool} missing: tools/install-test-deps installs it"
        );
    }
    let reference =
        reference_dir().expect("reference plugins missing: tools/install-test-deps installs them");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--net", "--fork", "--propagation", "private"]);
    if pid_ns {
        cmd.args(["--pid", "--mount-proc"]);
    }
    cmd.arg("bash")
        .arg(script(name))
        .env("BINS", bin_dir())
        .env("WORK", work)
        .env("REF", reference)
        .env("IPAM_MODE", ipam.mode())
        .env_remove("CNI_PATH")
        .env_remove("NETCONFPATH");
    cmd
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn assert_ok(name: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a self-checking runtime script to the end.
fn run_script(name: &str, ipam: Ipam) {
    let work = TempDir::new(name.trim_end_matches(".sh"));
    let out = isolated(name, &work.0, ipam).output().unwrap();
    assert_ok(name, &out);
}

#[test]
#[ignore = "privileged: needs root, podman"]
fn podman_cni_backend() {
    run_script("podman.sh", Ipam::Embedded);
}

#[test]
#[ignore = "privileged: needs root, podman"]
fn podman_cni_backend_ipam_daemon() {
    run_script("podman.sh", Ipam::Daemon);
}

#[test]
#[ignore = "privileged: needs root, containerd"]
fn containerd_ctr_run_cni() {
    run_script("containerd.sh", Ipam::Embedded);
}

#[test]
#[ignore = "privileged: needs root, containerd"]
fn containerd_ctr_run_cni_ipam_daemon() {
    run_script("containerd.sh", Ipam::Daemon);
}

/// `trestlectl demo [--runtime RUNTIME] [--machine-netns]` in the runtime tests' isolation (docker: the machine's
/// engine through its socket): the demo's own checks, the script's check that the runtime holds nothing of it
/// afterwards (and, with `--machine-netns`, that the script's own namespaces are as they were), and the reply of
/// the ping the runtime ran inside the container.
fn demo_with(runtime: &str, machine: bool) {
    let work = TempDir::new(&format!("demo-{runtime}"));
    let out = unshared("demo.sh", &work.0, Ipam::Embedded, runtime != "docker")
        .env("RUNTIME", runtime)
        .env("MACHINE", if machine { "1" } else { "0" })
        .output()
        .unwrap();
    assert_ok("demo.sh", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut needles = vec![
        "eth0 10.15.20.2/24".to_owned(),
        "The walkthrough is complete".to_owned(),
    ];
    if machine {
        // The script's "machine" has a Docker-like firewall (demo.sh).
        needles.extend(
            [
                "The host's FORWARD policy is DROP (iptables-nft)",
                "iptables-nft: from 10.15.20.0/24 accepted",
                "the network's traffic passes the host's forward filter",
                "no forward rule is left",
            ]
            .map(str::to_owned),
        );
    }
    if runtime != "none" {
        needles.extend(
            [
                "64 bytes from 10.15.20.2: seq=0",
                "the container reaches the first pod",
                "eth0 10.15.20.3/24",
                "eth0 10.15.20.4/24",
                "holds none of the demo's containers, and its image is gone",
            ]
            .map(str::to_owned),
        );
        needles.push(format!("{runtime}: pause + app"));
    }
    for needle in &needles {
        assert!(
            stdout.contains(needle.as_str()),
            "missing {needle:?} in:\n{stdout}"
        );
    }
}

#[test]
#[ignore = "privileged: needs root, podman"]
fn demo_runtime_podman() {
    demo_with("podman", false);
}

#[test]
#[ignore = "privileged: needs root, containerd"]
fn demo_runtime_containerd() {
    demo_with("containerd", false);
}

#[test]
#[ignore = "privileged: needs root"]
fn demo_machine_netns_puts_the_namespace_back() {
    demo_with("none", true);
}

#[test]
#[ignore = "privileged: needs root, podman"]
fn demo_machine_netns_runtime_podman() {
    demo_with("podman", true);
}

#[test]
#[ignore = "privileged: needs root, containerd"]
fn demo_machine_netns_runtime_containerd() {
    demo_with("containerd", true);
}

#[test]
#[ignore = "privileged: needs root, a Docker engine"]
fn demo_machine_netns_runtime_docker() {
    demo_with("docker", true);
}

/// containerd with CRI, running until the test touches `done`.
struct Containerd {
    child: Child,
    work: PathBuf,
}

impl Containerd {
    fn start(work: &Path, ipam: Ipam) -> Containerd {
        let child = isolated("cri.sh", work, ipam)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("cri.sh.log")).unwrap())
            .spawn()
            .unwrap();
        let mut c = Containerd {
            child,
            work: work.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !work.join("ready").exists() {
            if let Some(status) = c.child.try_wait().unwrap() {
                panic!(
                    "cri.sh exited ({status}) before containerd was ready:\n{}",
                    c.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd not ready:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("cri.sh.log")).unwrap_or_default()
    }

    /// A process inside the runtime's namespaces (the script's shell), for `nsenter`.
    fn ns_pid(&self) -> u32 {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .expect("unshare's child")
            .parse()
            .unwrap()
    }

    /// Runs `cmd` inside the runtime's mount, network and PID namespaces (its /proc belongs to the last).
    fn nsenter(&self, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.ns_pid().to_string(), "-m", "-n", "-p", "--"])
            .args(cmd)
            .output()
            .unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = std::fs::write(self.work.join("done"), "");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "privileged: needs root, containerd"]
fn kubelet_path_through_containerd_cri() {
    kubelet_path(Ipam::Embedded);
}

#[test]
#[ignore = "privileged: needs root, containerd"]
fn kubelet_path_through_containerd_cri_ipam_daemon() {
    kubelet_path(Ipam::Daemon);
}

/// The addresses trestle-ipam holds for the CRI test's network, wherever they live.
fn held(c: &Containerd, ipam: Ipam) -> Vec<String> {
    match ipam {
        Ipam::Embedded => common::reservations(&c.work.join("ipam/trestlenet")),
        Ipam::Daemon => {
            let trestlectl = bin_dir().join("trestlectl");
            let out = c.nsenter(&[
                trestlectl.to_str().unwrap(),
                "ipam",
                "show",
                "--json",
                "--network",
                "trestlenet",
            ]);
            assert_ok("trestlectl ipam show", &out);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let mut ips: Vec<String> = v["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["address"].as_str().unwrap().to_string())
                .collect();
            ips.sort();
            ips
        }
    }
}

fn kubelet_path(ipam: Ipam) {
    let work = TempDir::new("cri");
    let containerd = Containerd::start(&work.0, ipam);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = cri::Client::connect(&work.0.join("containerd.sock")).await;
        let version = c.version().await;
        assert_eq!(version.runtime_name, "containerd", "{version:?}");

        // RunPodSandbox: containerd starts pause in a fresh netns and calls CNI ADD.
        let pod = cri::pod_config("trestle-pod", &work.0.join("logs"));
        let sandbox = c.run_pod_sandbox(pod.clone()).await;
        let ip = c.pod_ip(&sandbox).await;
        assert!(ip.starts_with("10.79.0."), "pod IP {ip}");
        assert_eq!(held(&containerd, ipam), std::slice::from_ref(&ip));

        // A container of the pod shares pause's network: it sees the pod's eth0 and address.
        let app = c
            .create_container(&sandbox, pod.clone(), "app", &["sleep", "3600"])
            .await;
        c.start_container(&app).await;
        let out = c.exec_sync(&app, &["ip", "addr", "show", "eth0"]).await;
        assert!(out.contains(&format!("inet {ip}/24")), "{out}");

        // trestlectl reads what containerd's CNI layer cached, and CHECKs it.
        let ls = containerd.nsenter(&[
            bin_dir().join("trestlectl").to_str().unwrap(),
            "ls",
            "trestlenet",
        ]);
        let ls_text = String::from_utf8_lossy(&ls.stdout);
        assert!(
            ls_text.contains(&sandbox) && ls_text.contains(&format!("{ip}/24")),
            "{ls_text}"
        );
        let netns = pod_netns(&containerd);
        let check = containerd.nsenter(&[
            bin_dir().join("trestlectl").to_str().unwrap(),
            "check",
            "trestlenet",
            &netns,
            "--container-id",
            &sandbox,
        ]);
        assert_ok("trestlectl check", &check);

        // Stop and remove: CNI DEL releases the address.
        c.stop_container(&app).await;
        c.remove_container(&app).await;
        c.stop_pod_sandbox(&sandbox).await;
        assert!(
            held(&containerd, ipam).is_empty(),
            "address kept after StopPodSandbox"
        );
        c.remove_pod_sandbox(&sandbox).await;
        let ls = containerd.nsenter(&[bin_dir().join("trestlectl").to_str().unwrap(), "ls"]);
        assert_eq!(
            String::from_utf8_lossy(&ls.stdout).lines().count(),
            1,
            "cache entries left"
        );
    });
    drop(containerd);
}

/// The pod's netns: containerd 1.6 pins it under /var/run/netns (its cache entry holds no usable path: libcni
/// before 1.2 does not record it), and this private runtime has just the one pod.
fn pod_netns(c: &Containerd) -> String {
    let ls = c.nsenter(&["ls", "/var/run/netns"]);
    let names = String::from_utf8_lossy(&ls.stdout);
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names.len(), 1, "netns of the one pod: {names:?}");
    format!("/var/run/netns/{}", names[0])
}
