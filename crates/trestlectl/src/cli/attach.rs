//! The runtime side's commands, `add`, `del`, `check`, `gc`, `status` and `ls`: libcni's behaviour on the
//! configs, plugins and result cache of a machine (`trestlectl::attach`).

use std::path::PathBuf;
use std::process::ExitCode;

/// Where configs, plugins and cached results are.
#[derive(clap::Args, Clone)]
pub struct LocArgs {
    /// Network config directory.
    #[arg(long, env = "NETCONFPATH", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// Plugin directories, `:`-separated.
    #[arg(long, env = "CNI_PATH", default_value = "/opt/cni/bin")]
    cni_path: String,
    /// Result cache directory.
    #[arg(long, default_value = cni_runtime::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
}

impl LocArgs {
    pub fn locations(&self) -> trestlectl::attach::Locations {
        trestlectl::attach::Locations {
            conf_dir: self.conf_dir.clone(),
            cni_path: trestlectl::attach::cni_path_dirs(&self.cni_path),
            cache_dir: self.cache_dir.clone(),
        }
    }
}

/// One attachment of a network.
#[derive(clap::Args, Clone)]
pub struct Attach {
    /// The network name (a config's `name` in the conf dir).
    network: String,
    /// The netns: a path, or a name under /var/run/netns.
    netns: String,
    /// Container ID (default: derived from the netns path, as cnitool does).
    #[arg(long)]
    container_id: Option<String>,
    /// Interface name inside the netns.
    #[arg(long, env = "CNI_IFNAME", default_value = "eth0")]
    ifname: String,
    /// CNI_ARGS, `K=V;K=V`.
    #[arg(long, env = "CNI_ARGS", default_value = "")]
    args: String,
    /// Capability arguments as a JSON object, e.g. '{"portMappings":[...]}'.
    #[arg(long, env = "CAP_ARGS")]
    cap_args: Option<String>,
    #[command(flatten)]
    loc: LocArgs,
}

/// The attachment commands.
#[derive(Clone, Copy)]
pub enum Op {
    Add,
    Del,
    Check,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Del => "del",
            Op::Check => "check",
        }
    }
}

/// `add`, `del` or `check` of one attachment.
pub fn attach_cmd(op: Op, a: &Attach) -> ExitCode {
    let loc = a.loc.locations();
    let args = trestlectl::attach::AttachArgs {
        netns: a.netns.clone(),
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        cni_args: a.args.clone(),
        cap_args: a.cap_args.clone(),
    };
    let rt = match args.runtime_conf() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trestlectl {}: {}", op.name(), cni_proto::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let done = loc.load(&a.network).and_then(|list| {
        let cni = loc.cni();
        match op {
            Op::Add => {
                let result = cni.add(&list, &rt)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
                Ok(())
            }
            Op::Del => cni.del(&list, &cni.with_cached_args(&list, rt)),
            Op::Check => cni.check(&list, &cni.with_cached_args(&list, rt)),
        }
    });
    report(op.name(), done)
}

/// `gc` of a network: every attachment but the valid ones.
pub fn gc_cmd(network: &str, valid: &[String], all: bool, loc: &LocArgs) -> ExitCode {
    if valid.is_empty() && !all {
        eprintln!(
            "trestlectl gc: name the attachments still in use with --valid CONTAINER[/IFNAME], or pass --all to \
             release every attachment of {network}"
        );
        return ExitCode::FAILURE;
    }
    let valid: Vec<_> = valid
        .iter()
        .map(|v| trestlectl::attach::parse_valid(v))
        .collect();
    let loc = loc.locations();
    report(
        "gc",
        loc.load(network)
            .and_then(|list| loc.cni().gc(&list, Some(&valid))),
    )
}

/// `ls`: the cached attachments, as a table or JSON.
pub fn ls_cmd(network: Option<&str>, json: bool, loc: &LocArgs) -> ExitCode {
    let loc = loc.locations();
    if json {
        let all = trestlectl::attach::cached(&loc, network)
            .map(|v| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()));
        return report("ls", all);
    }
    report(
        "ls",
        trestlectl::attach::list(&loc, network)
            .map(|rows| print!("{}", trestlectl::attach::table(&rows))),
    )
}

/// Exit status of a runtime command: 0, or the error with its causes on stderr and 1.
pub fn report(op: &str, r: Result<(), cni_runtime::RuntimeError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trestlectl {op}: {}", cni_proto::error_chain(&e));
            if let Some(code) = e.cni_error().map(|c| c.code) {
                eprintln!("(CNI error code {code})");
            }
            ExitCode::FAILURE
        }
    }
}
