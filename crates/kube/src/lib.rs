//! trestle on Kubernetes, checked without a cluster: [`manifest`] reads `deploy/`'s kustomize trees into plain
//! objects, and the tests check them against the Kubernetes schemas and trestle's own policy, then run the
//! DaemonSet's containers on Docker "nodes" the way a kubelet would ([`cluster`], [`kubelet`], [`pod`]).

pub mod cluster;
pub mod docker;
pub mod etcd;
pub mod kubelet;
pub mod manifest;
pub mod pod;

use std::path::{Path, PathBuf};

/// Why a step of a cluster run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A docker command failed.
    #[error(transparent)]
    Docker(#[from] docker::Error),
    /// The manifests could not be read.
    #[error(transparent)]
    Load(#[from] manifest::Error),
    /// The manifests ask for something the emulation does not do, or lack something it needs.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A file or program could not be used.
    #[error("{}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation of a probe failed.
    #[error("probe")]
    Probe(#[from] std::io::Error),
    /// A network namespace could not be entered.
    #[error("netns")]
    Netns(#[from] trestle_netns::Error),
    /// A netlink request failed.
    #[error("netlink")]
    Netlink(#[from] trestle_netlink::Error),
    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Certs(String),
    /// A command of the project failed.
    #[error("{0}")]
    Command(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
