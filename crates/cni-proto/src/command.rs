//! The `CNI_COMMAND` verbs.

use std::fmt;
use std::str::FromStr;

/// One CNI operation, as named by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// `ADD`: attach a container to the network.
    Add,
    /// `DEL`: detach a container; must be idempotent.
    Del,
    /// `CHECK`: verify an earlier ADD (config ≥ 0.4.0).
    Check,
    /// `GC`: drop resources of attachments not listed (config ≥ 1.1.0).
    Gc,
    /// `STATUS`: report whether ADD can be serviced (config ≥ 1.1.0).
    Status,
    /// `VERSION`: report the supported protocol versions.
    Version,
}

impl Command {
    /// Every command, in the order of the spec.
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Gc,
        Command::Status,
        Command::Version,
    ];

    /// The exact `CNI_COMMAND` spelling (`"ADD"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `CNI_COMMAND` value that names no known command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CNI_COMMAND: {0}")]
pub struct UnknownCommand(pub String);

impl FromStr for Command {
    type Err = UnknownCommand;

    /// Case-sensitive, like the Go skel: `"add"` is not a command.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCommand(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_command() {
        for c in Command::ALL {
            assert_eq!(c.as_str().parse::<Command>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
    }

    #[test]
    fn is_case_sensitive() {
        for bad in ["add", "Add", "", " ADD", "ADD ", "DELETE", "gc"] {
            let err = bad.parse::<Command>().unwrap_err();
            assert_eq!(err.to_string(), format!("unknown CNI_COMMAND: {bad}"));
        }
    }
}
