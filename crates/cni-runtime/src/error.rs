//! What can go wrong on the runtime side, with the plugin's own error kept intact so a caller can pass its code on.

use cni_proto::CniError;
use std::path::PathBuf;

/// A runtime-side failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No config list with this name in the directory.
    #[error("no net configuration with name {name:?} in {dir}")]
    NotFound {
        /// The conf dir searched.
        dir: PathBuf,
        /// The network asked for.
        name: String,
    },
    /// A config file or list that libcni would refuse.
    #[error("{path}: {msg}")]
    Config {
        /// The file (or `<bytes>`).
        path: String,
        /// What is wrong, naming the key.
        msg: String,
    },
    /// No plugin binary of this type on `CNI_PATH`.
    #[error("failed to find plugin {name:?} in path {paths:?}")]
    PluginNotFound {
        /// The plugin type.
        name: String,
        /// The directories searched.
        paths: Vec<PathBuf>,
    },
    /// Input the runtime itself must reject (libcni validates these on ADD).
    #[error("{0}")]
    Invalid(CniError),
    /// A plugin answered with an error object (or died without one).
    #[error("plugin type={plugin:?} failed ({op}): {error}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// `add`, `check`, `delete`, `gc` or `status`.
        op: &'static str,
        /// The plugin's error, code included.
        error: CniError,
    },
    /// The config list's version has no CHECK.
    #[error("configuration version {0:?} does not support the CHECK command")]
    CheckNotSupported(String),
    /// The result cache could not be read or written.
    #[error("result cache {path}: {msg}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// Running a plugin or touching a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Several failures, as GC collects them.
    #[error("{}", join(.0))]
    Many(Vec<RuntimeError>),
}

fn join(errs: &[RuntimeError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl RuntimeError {
    /// The CNI error a plugin (or the runtime's own validation) produced, if that is what this is; the first one of
    /// [`RuntimeError::Many`].
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            RuntimeError::Plugin { error, .. } | RuntimeError::Invalid(error) => Some(error),
            RuntimeError::Many(v) => v.iter().find_map(RuntimeError::cni_error),
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<String>, msg: impl Into<String>) -> Self {
        RuntimeError::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
