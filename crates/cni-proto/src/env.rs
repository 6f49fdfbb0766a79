//! The `CNI_*` environment, validated exactly like the Go skel.

use std::path::PathBuf;

use crate::{CniError, Command, ErrorCode};

pub use crate::validate::{validate_container_id, validate_ifname, validate_network_name};

/// The parameters a runtime passes in `CNI_*` variables.
///
/// Variables a command does not use hold whatever the runtime sent (libcni sends
/// all six, empty when unused); only the ones the command requires are validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: a path; may be empty on DEL.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, unparsed (see [`crate::CniArgs`]).
    pub args: String,
    /// `CNI_PATH` split on `:`; empty entries are dropped (they would name the cwd).
    pub path: Vec<PathBuf>,
}

type Validator = fn(&str) -> Result<(), CniError>;

/// One variable of the Go skel's table: name, commands requiring it, validator.
struct Var {
    name: &'static str,
    required_for: &'static [Command],
    validate: Option<Validator>,
}

use Command::{Add, Check, Del, Gc, Status};

/// In Go's order, which decides which validation error wins. `CNI_PATH` is required
/// for everything but VERSION, stricter than the spec, as the Go skel does.
const VARS: [Var; 5] = [
    Var {
        name: "CNI_CONTAINERID",
        required_for: &[Add, Check, Del],
        validate: Some(validate_container_id),
    },
    Var {
        name: "CNI_NETNS",
        required_for: &[Add, Check],
        validate: None,
    },
    Var {
        name: "CNI_IFNAME",
        required_for: &[Add, Check, Del],
        validate: Some(validate_ifname),
    },
    Var {
        name: "CNI_ARGS",
        required_for: &[],
        validate: None,
    },
    Var {
        name: "CNI_PATH",
        required_for: &[Add, Check, Del, Gc, Status],
        validate: None,
    },
];

impl Env {
    /// Like [`Env::from_lookup`], for an environment of raw OS strings (`std::env::var_os`): a variable that is
    /// not UTF-8 is refused with code 4 naming it, rather than taken as missing. Interface names, container IDs
    /// and paths in CNI are text; the kernel would take the bytes, but nothing else in the chain could print,
    /// compare or store them.
    pub fn from_os_lookup(
        get: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Option<Env>, CniError> {
        for name in std::iter::once("CNI_COMMAND").chain(VARS.iter().map(|v| v.name)) {
            if get(name).is_some_and(|v| v.to_str().is_none()) {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("{name} is not valid UTF-8"),
                ));
            }
        }
        Self::from_lookup(|k| get(k).and_then(|v| v.into_string().ok()))
    }

    /// Reads and validates the environment through `get` (e.g. `|k| std::env::var(k).ok()`).
    ///
    /// - `Ok(None)`: `CNI_COMMAND` is unset or empty (the skel then prints its "about"
    ///   text to stderr and exits 0).
    /// - Unknown command: code 4 `unknown CNI_COMMAND: X` (case-sensitive).
    /// - A required, non-empty variable that fails validation: that error, returned at
    ///   once in the order container ID, ifname (so it wins over missing variables).
    /// - Required variables that are empty or unset: code 4
    ///   `required env variables [A,B] missing`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Env>, CniError> {
        let raw_cmd = get("CNI_COMMAND").unwrap_or_default();
        if raw_cmd.is_empty() {
            return Ok(None);
        }
        let command: Command = raw_cmd
            .parse()
            .map_err(|e: crate::command::UnknownCommand| {
                CniError::new(ErrorCode::InvalidEnvironment, e.to_string())
            })?;
        let mut values: [String; 5] = Default::default();
        let mut missing = Vec::new();
        for (var, slot) in VARS.iter().zip(values.iter_mut()) {
            *slot = get(var.name).unwrap_or_default();
            let required = var.required_for.contains(&command);
            if slot.is_empty() {
                if required {
                    missing.push(var.name);
                }
            } else if let (true, Some(validate)) = (required, var.validate) {
                validate(slot)?;
            }
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        let [container_id, netns, ifname, args, path] = values;
        Ok(Some(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path: split_path(&path),
        }))
    }
}

/// Splits `CNI_PATH` on the Linux list separator.
fn split_path(s: &str) -> Vec<PathBuf> {
    s.split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Whether `CNI_NETNS_OVERRIDE` (read through `get`) disables the skel's "netns is
/// the plugin's own" check: Go accepts `1`/`true`, case-insensitively.
pub fn netns_override(get: impl Fn(&str) -> Option<String>) -> bool {
    get("CNI_NETNS_OVERRIDE").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}
