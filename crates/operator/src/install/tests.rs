use super::*;

fn setup() -> (tempfile::TempDir, Options) {
    let d = tempfile::tempdir().unwrap();
    let from = d.path().join("build");
    std::fs::create_dir(&from).unwrap();
    for b in BINARIES {
        std::fs::write(from.join(b), format!("binary {b}")).unwrap();
    }
    let opts = Options {
        from,
        bin_dir: d.path().join("bin"),
        conf_dir: d.path().join("net.d"),
        file_name: "10-trestle.conflist".into(),
        config: default_config("trestle", "trestle0", "10.88.0.0/16"),
        force: false,
        systemd_units: None,
        plugins_only: false,
    };
    (d, opts)
}

#[test]
fn installs_then_changes_nothing() {
    let (_d, opts) = setup();
    let first = run(&opts).unwrap();
    assert!(
        first.iter().all(|c| matches!(c, Change::Written(_))),
        "{first:?}"
    );
    let second = run(&opts).unwrap();
    assert!(
        second.iter().all(|c| matches!(c, Change::Unchanged(_))),
        "{second:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(opts.bin_dir.join("trestle"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let list = cni_runtime::conf::load(&opts.conf_dir, "trestle").unwrap();
    assert_eq!(list.cni_version, "1.1.0");
    assert_eq!(list.plugins[0]["type"], "trestle");
    let leftovers: Vec<_> = std::fs::read_dir(&opts.conf_dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left");
}

#[test]
fn plugins_only_installs_the_two_plugins_and_nothing_else() {
    let (d, mut opts) = setup();
    opts.plugins_only = true;
    // Neither read nor written: the config (even a broken one, even a foreign file in its place) and the units.
    opts.config = b"not a conflist".to_vec();
    opts.systemd_units = Some(d.path().join("units"));
    std::fs::create_dir_all(&opts.conf_dir).unwrap();
    let foreign = r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"calico"}]}"#;
    std::fs::write(opts.conf_dir.join(&opts.file_name), foreign).unwrap();
    let first = run(&opts).unwrap();
    assert_eq!(
        first,
        PLUGINS.map(|p| Change::Written(opts.bin_dir.join(p)))
    );
    let mut installed: Vec<_> = std::fs::read_dir(&opts.bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    installed.sort();
    assert_eq!(
        installed,
        ["trestle", "trestle-ipam"],
        "no trestled, no temporary file"
    );
    assert_eq!(
        std::fs::read(opts.bin_dir.join("trestle-ipam")).unwrap(),
        b"binary trestle-ipam"
    );
    assert_eq!(
        std::fs::read_to_string(opts.conf_dir.join(&opts.file_name)).unwrap(),
        foreign
    );
    assert!(!d.path().join("units").exists());
    let second = run(&opts).unwrap();
    assert_eq!(
        second,
        PLUGINS.map(|p| Change::Unchanged(opts.bin_dir.join(p)))
    );
    // A new build replaces the plugin, through a rename: a runtime exec'ing the old one keeps its inode.
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(opts.bin_dir.join("trestle"))
        .unwrap()
        .ino();
    std::fs::write(opts.from.join("trestle"), "binary trestle, rebuilt").unwrap();
    let third = run(&opts).unwrap();
    assert_eq!(third[0], Change::Written(opts.bin_dir.join("trestle")));
    assert_eq!(
        third[1],
        Change::Unchanged(opts.bin_dir.join("trestle-ipam"))
    );
    assert_ne!(
        std::fs::metadata(opts.bin_dir.join("trestle"))
            .unwrap()
            .ino(),
        before
    );
}

#[test]
fn plugins_only_needs_only_the_plugins_to_be_built() {
    let (_d, mut opts) = setup();
    std::fs::remove_file(opts.from.join("trestled")).unwrap();
    opts.plugins_only = true;
    run(&opts).unwrap();
    opts.plugins_only = false;
    let e = run(&opts).unwrap_err();
    assert!(e.to_string().ends_with("trestled"), "{e}");
}

#[test]
fn updates_its_own_config_but_not_another_plugins() {
    let (_d, mut opts) = setup();
    run(&opts).unwrap();
    opts.config = default_config("trestle", "trestle0", "10.99.0.0/16");
    let changes = run(&opts).unwrap();
    assert_eq!(
        changes.last(),
        Some(&Change::Written(opts.conf_dir.join(&opts.file_name)))
    );
    let target = opts.conf_dir.join(&opts.file_name);
    let foreign = r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"calico"}]}"#;
    std::fs::write(&target, foreign).unwrap();
    let e = run(&opts).unwrap_err();
    assert!(e.to_string().contains("calico"), "{e}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), foreign);
    opts.force = true;
    run(&opts).unwrap();
    assert_ne!(std::fs::read_to_string(&target).unwrap(), foreign);
}

#[test]
fn rejects_a_config_that_is_not_a_conflist() {
    let (_d, mut opts) = setup();
    opts.config = br#"{"name":"x","plugins":[]}"#.to_vec();
    assert!(matches!(
        run(&opts),
        Err(InstallError::Config(_) | InstallError::NoPlugins)
    ));
    assert!(
        !opts.bin_dir.exists(),
        "nothing installed from a bad config"
    );
}

#[test]
fn unit_files_say_what_systemd_needs() {
    assert_eq!(
        socket_unit(),
        "# Written by trestlectl install.
[Unit]
Description=trestle node IPAM service socket

[Socket]
ListenStream=/run/trestle/ipam.sock
SocketMode=0600
DirectoryMode=0755

[Install]
WantedBy=sockets.target
"
    );
    let service = service_unit(Path::new("/opt/cni/bin/trestled")).unwrap();
    assert_eq!(
        service,
        "# Written by trestlectl install.
[Unit]
Description=trestle node IPAM service
Requires=trestled.socket
After=trestled.socket

[Service]
ExecStart=/opt/cni/bin/trestled
Restart=always
RestartSec=1

[Install]
Also=trestled.socket
"
    );
    let odd = service_unit(Path::new("/opt/my bin/100%/trestled")).unwrap();
    assert!(
        odd.contains("\nExecStart=\"/opt/my bin/100%%/trestled\"\n"),
        "{odd}"
    );
    assert_eq!(systemd_quote(r#"/a\"b"#), r#""/a\\\"b""#);
}

#[test]
fn installs_trestled_and_its_units_when_asked() {
    let (d, mut opts) = setup();
    let units = d.path().join("units");
    opts.systemd_units = Some(units.clone());
    let first = run(&opts).unwrap();
    assert!(first.contains(&Change::Written(opts.bin_dir.join("trestled"))));
    assert!(first.contains(&Change::Written(units.join(SOCKET_UNIT))));
    let service = std::fs::read_to_string(units.join(SERVICE_UNIT)).unwrap();
    let exec = format!("\nExecStart={}\n", opts.bin_dir.join("trestled").display());
    assert!(service.contains(&exec), "{service}");
    let second = run(&opts).unwrap();
    assert!(
        second.iter().all(|c| matches!(c, Change::Unchanged(_))),
        "{second:?}"
    );
    // systemd resolves nothing relative: a relative bin dir is made absolute against the cwd.
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(absolute(Path::new("bin")).unwrap(), cwd.join("bin"));
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn start(dir: &Path, trestled: PathBuf) -> Start {
    Start {
        trestled,
        systemd: false,
        restart: false,
        socket: dir.join("ipam.sock"),
        log: dir.join("log/trestled.log"),
        wait: Duration::from_millis(300),
    }
}

#[test]
fn a_detached_trestled_that_exits_is_an_error_naming_its_log() {
    let d = tempfile::tempdir().unwrap();
    let fake = script(d.path(), "trestled", "echo \"args: $*\"; exit 3");
    let how = start(d.path(), fake);
    let e = start_daemon(&how).unwrap_err();
    assert!(matches!(e, InstallError::DaemonExited { .. }), "{e}");
    assert!(e.to_string().contains("trestled.log"), "{e}");
    let log = std::fs::read_to_string(&how.log).unwrap();
    assert_eq!(log, format!("args: --socket {}\n", how.socket.display()));
}

#[test]
fn a_detached_trestled_runs_in_its_own_session() {
    let d = tempfile::tempdir().unwrap();
    let fake = script(d.path(), "trestled", "exec sleep 30");
    let started = start_daemon(&start(d.path(), fake)).unwrap();
    let Started::Spawned { pid, serving } = started else {
        panic!("{started:?}");
    };
    assert!(!serving, "nothing listens on the socket");
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let sid = nix::unistd::getsid(Some(pid));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(sid, Ok(pid), "setsid made it a session leader");
}

#[test]
fn a_serving_trestled_is_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let how = start(d.path(), d.path().join("never-run"));
    let _listener = std::os::unix::net::UnixListener::bind(&how.socket).unwrap();
    assert_eq!(
        start_daemon(&how).unwrap(),
        Started::AlreadyRunning(how.socket.clone())
    );
    assert!(!how.log.exists(), "nothing spawned");
}
