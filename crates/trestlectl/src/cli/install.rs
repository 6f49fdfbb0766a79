//! `trestlectl install`: the command line of installing the plugins, the conflist and trestled.

use std::path::PathBuf;
use std::process::ExitCode;

/// The options of `trestlectl install`.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// The CNI bin dir.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The CNI conf dir.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The conflist's file name.
    #[arg(long, default_value = "10-trestle.conflist")]
    file: String,
    /// Install this conflist instead of the default one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Default config: network name.
    #[arg(long, default_value = "trestle")]
    name: String,
    /// Default config: bridge name.
    #[arg(long, default_value = "trestle0")]
    bridge: String,
    /// Default config: pod subnet.
    #[arg(long, default_value = "10.88.0.0/16")]
    subnet: String,
    /// Directory holding `trestle` and `trestle-ipam` (default: beside trestlectl).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Replace a config file that belongs to another plugin.
    #[arg(long)]
    force: bool,
    /// Also write trestled's systemd units (trestled.socket, trestled.service) into this directory, e.g.
    /// /etc/systemd/system.
    #[arg(long, value_name = "DIR")]
    systemd_units: Option<PathBuf>,
    /// Start trestled: `systemctl enable --now trestled.socket` under systemd (restarting a running trestled
    /// whose binary was replaced), else a detached process.
    #[arg(long)]
    start_daemon: bool,
    /// Without systemd: the file a detached trestled's output is appended to.
    #[arg(long, default_value = "/var/log/trestled.log")]
    daemon_log: PathBuf,
    /// Install only `trestle` and `trestle-ipam` into --bin-dir: no trestled, no conflist (a DaemonSet's init
    /// container; trestled, running from the image, writes the conflist once it is ready).
    #[arg(long, conflicts_with_all = [
            "conf_dir", "file", "config", "name", "bridge", "subnet", "force", "systemd_units", "start_daemon",
            "daemon_log",
        ])]
    plugins_only: bool,
}

/// Runs `trestlectl install`.
pub fn run(args: InstallArgs) -> ExitCode {
    let InstallArgs {
        bin_dir,
        conf_dir,
        file,
        config,
        name,
        bridge,
        subnet,
        from,
        force,
        systemd_units,
        start_daemon,
        daemon_log,
        plugins_only,
    } = args;
    let config = match config {
        Some(p) => match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("trestlectl install: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => trestlectl::install::default_config(&name, &bridge, &subnet),
    };
    let opts = trestlectl::install::Options {
        from: from
            .or_else(trestlectl::runtime::own_bin_dir)
            .unwrap_or_else(|| PathBuf::from(".")),
        bin_dir,
        conf_dir,
        file_name: file,
        config,
        force,
        systemd_units,
        plugins_only,
    };
    match trestlectl::install::run(&opts) {
        Ok(changes) => {
            for c in &changes {
                match c {
                    trestlectl::install::Change::Written(p) => {
                        eprintln!("wrote     {}", p.display())
                    }
                    trestlectl::install::Change::Unchanged(p) => {
                        eprintln!("unchanged {}", p.display())
                    }
                }
            }
            if !start_daemon {
                return ExitCode::SUCCESS;
            }
            let how = trestlectl::install::Start::after_install(&opts, &changes, daemon_log);
            start_daemon_cmd(&how)
        }
        Err(e) => {
            eprintln!("trestlectl install: {}", cni_proto::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `install --start-daemon`: starts trestled and says how.
fn start_daemon_cmd(how: &trestlectl::install::Start) -> ExitCode {
    use trestlectl::install::Started;
    match trestlectl::install::start_daemon(how) {
        Ok(Started::Systemd { restarted }) => {
            eprintln!(
                "started   trestled.socket (systemd){}",
                if restarted {
                    "; trestled.service restarted if it was running"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Ok(Started::AlreadyRunning(socket)) => {
            eprintln!(
                "running   trestled already serves {}: left alone (restart it to run a new binary)",
                socket.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Started::Spawned { pid, serving }) => {
            eprintln!(
                "started   trestled (pid {pid}, output in {}){}",
                how.log.display(),
                if serving { "" } else { ", not serving yet" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trestlectl install: {}", cni_proto::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
