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
    /// Running a plugin or touching a file failed; the OS error is the source (print the chain, e.g. with
    /// [`cni_proto::error_chain`], to show it).
    #[error("{what}")]
    Io {
        /// What was being done, e.g. `running /opt/cni/bin/bridge`.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Several failures, as GC collects them: one line each, with its whole cause chain (this error has no
    /// source of its own).
    #[error("{}", join(.0))]
    Many(Vec<RuntimeError>),
}

fn join(errs: &[RuntimeError]) -> String {
    errs.iter()
        .map(|e| cni_proto::error_chain(e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn denied() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EACCES)
    }

    #[test]
    fn io_chain_prints_the_os_error_once() {
        let os = denied().to_string();
        let e = RuntimeError::io("running /opt/cni/bin/x", denied());
        assert_eq!(e.to_string(), "running /opt/cni/bin/x");
        assert_eq!(e.source().map(ToString::to_string), Some(os.clone()));
        let chain = cni_proto::error_chain(&e);
        assert_eq!(chain, format!("running /opt/cni/bin/x: {os}"));
        assert_eq!(chain.matches(&os).count(), 1, "{chain}");
    }

    #[test]
    fn many_shows_each_failure_with_its_cause_once() {
        let os = denied().to_string();
        let e = RuntimeError::Many(vec![
            RuntimeError::io("running /a", denied()),
            RuntimeError::CheckNotSupported("0.3.1".into()),
        ]);
        assert!(e.source().is_none());
        assert_eq!(
            e.to_string(),
            format!(
                "running /a: {os}\nconfiguration version \"0.3.1\" does not support the CHECK command"
            )
        );
        assert_eq!(cni_proto::error_chain(&e), e.to_string());
    }
}
