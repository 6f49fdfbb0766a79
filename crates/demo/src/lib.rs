//! `trestlectl demo`: a narrated replay of how a kubelet's runtime wires a pod with CNI, using the real trestle
//! binaries. It follows the classic hand-made walkthrough (a pause sandbox, the `mybridge` config, the plugin
//! called with `CNI_*` variables, `ip addr` and `route -n` in the pod), then proves traffic flows and that DEL
//! leaves nothing behind. With `--runtime`, a real runtime (docker, podman, containerd) starts a pause container
//! that the same plugin call wires, as in the walkthrough's second half; `--step` waits for Enter between steps;
//! a picture of the wiring is drawn from the live state.
//!
//! By default everything happens in a private "host" network namespace and a private mount namespace (a tmpfs
//! over `/run` and the IPAM state directory), so the machine is left exactly as it was.
//!
//! `--cluster` is another act ([`cluster`]): nodes as network namespaces on an underlay, one etcd member, the real
//! `trestled` routing pods between the nodes directly and over VXLAN.

pub mod cluster;
pub mod containers;
mod image;
pub mod interrupt;
mod isolation;
mod narrate;
pub mod picture;
mod steps;

pub use isolation::Error as IsolationError;
pub use isolation::Isolation;
pub use narrate::{Narrator, Pace};
pub use steps::Error as StepError;

use std::path::PathBuf;

/// The classic walkthrough's config, verbatim but for the plugin types.
pub const CLASSIC_CONFIG: &str = r#"{
    "cniVersion": "0.2.0",
    "name": "mybridge",
    "type": "trestle",
    "bridge": "cni_bridge0",
    "isGateway": true,
    "ipMasq": true,
    "hairpinMode": true,
    "ipam": {
        "type": "trestle-ipam",
        "subnet": "10.15.20.0/24",
        "routes": [
            { "dst": "0.0.0.0/0" },
            { "dst": "1.1.1.1/32", "gw": "10.15.20.1" }
        ]
    }
}"#;

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run against the machine's own network namespace and state directories, as the classic walkthrough does.
    pub machine_netns: bool,
    /// Where `trestle` and `trestle-ipam` are (and `trestled`, for the cluster act).
    pub bin_dir: PathBuf,
    /// The trestlectl executable (re-executed as the pause and container processes).
    pub exe: PathBuf,
    /// ANSI colours on the terminal.
    pub color: bool,
    /// How the wiring picture is drawn.
    pub charset: picture::Charset,
    /// Whether to wait for Enter between steps.
    pub pace: Pace,
    /// The container runtime that starts a real pause container, if any.
    pub runtime: Option<containers::Kind>,
    /// The two-node act instead of the walkthrough (`--cluster`): needs `trestled` beside the plugins and etcd.
    pub cluster: bool,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not running as root.
    #[error("the demo creates network namespaces, links and nftables rules: run it as root (for example with sudo)")]
    NotRoot,
    /// A binary is missing.
    #[error("{0} not found: build with `cargo build --release` or pass --bin-dir")]
    MissingBinary(PathBuf),
    /// `--cluster` was combined with an option of the single-node walkthrough.
    #[error("--cluster cannot be combined with {0}: the cluster act always runs in private namespaces, without a container runtime")]
    ClusterConflict(&'static str),
    /// `--cluster` needs etcd, and there is none.
    #[error("{0}")]
    MissingEtcd(cluster::MissingEtcd),
    /// Setting up the private namespaces failed.
    #[error("cannot isolate the demo")]
    Isolation(#[source] IsolationError),
    /// The runtime asked for cannot be used.
    #[error("cannot use the container runtime")]
    Runtime(#[source] containers::Error),
    /// No image can be made for the runtime.
    #[error("cannot make the demo's image")]
    Image(#[source] image::Error),
    /// Ctrl-C, SIGTERM or SIGHUP; the pods were deleted and the containers removed, but for `left`.
    #[error("interrupted: {}", interrupted_summary(.left))]
    Interrupted {
        /// What could not be removed.
        left: Vec<String>,
    },
    /// A step failed.
    #[error("step {step} failed")]
    Step {
        /// The step number.
        step: u32,
        /// What went wrong.
        #[source]
        source: StepError,
    },
}

/// Runs the demo. Must be called while the process is still single-threaded (it unshares its mount namespace).
pub fn run(opts: &Options) -> Result<(), Error> {
    if opts.cluster {
        return cluster::run(opts);
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    for bin in ["trestle", "trestle-ipam"] {
        let path = opts.bin_dir.join(bin);
        if !path.is_file() {
            return Err(Error::MissingBinary(path));
        }
    }
    // Everything the runtime mode needs is checked before anything is made.
    let mut engine = match opts.runtime {
        Some(kind) => {
            let engine = containers::Engine::find(kind, &run_suffix()).map_err(Error::Runtime)?;
            image::busybox().map_err(Error::Image)?;
            Some(engine)
        }
        None => None,
    };
    interrupt::install().map_err(|e| Error::Isolation(IsolationError::Signals(e)))?;
    let isolation = Isolation::set_up(opts.machine_netns).map_err(Error::Isolation)?;
    if let (Some(engine), Some(fd)) = (engine.as_mut(), isolation.machine_mount_ns()) {
        engine
            .set_mount_namespace(fd)
            .map_err(|e| Error::Isolation(IsolationError::MountNs(e)))?;
    }
    let mut narrator = Narrator::new(
        opts.color,
        opts.pace,
        std::io::IsTerminal::is_terminal(&std::io::stdin()),
    );
    let (result, left) = match steps::Demo::new(opts, &isolation, &mut narrator, engine) {
        Ok(mut demo) => (demo.run_all(), demo.left_behind().to_vec()),
        Err(e) => (Err(e), Vec::new()),
    };
    isolation.tear_down();
    if result.is_err() && interrupt::requested() {
        return Err(Error::Interrupted { left });
    }
    result
}

fn interrupted_summary(left: &[String]) -> String {
    if left.is_empty() {
        "the pods were deleted and what the demo made was removed".to_owned()
    } else {
        format!(
            "the pods were deleted, but these are still there: {}",
            left.join(", ")
        )
    }
}

/// Eight hex digits that make this run's image and container names its own: the process ID and the clock.
fn run_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:08x}", (std::process::id() << 12) ^ nanos)
}
