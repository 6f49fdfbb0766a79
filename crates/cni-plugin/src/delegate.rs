//! Delegation to another plugin found on `CNI_PATH` (cni-spec.md §7): same environment with only `CNI_COMMAND`
//! overridden, same full stdin, stderr passed through, result or error object read from stdout.

use cni_proto::{CniError, CniResult, Command, ErrorCode, Version};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

/// Finds the executable `name` in the `CNI_PATH` directories, first regular file wins (libcni's lookup).
pub fn find_plugin(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') || name.contains('\\') {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("invalid plugin type {name:?}"),
        ));
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.metadata().map(|m| m.is_file()).unwrap_or(false))
        .ok_or_else(|| {
            let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "failed to find plugin {name:?} in path [{}]",
                    dirs.join(" ")
                ),
            )
        })
}

/// Runs `plugin` with `command`, the caller's environment and `stdin`. Returns its parsed result for ADD.
pub fn exec(
    plugin: &Path,
    command: Command,
    stdin: &[u8],
    version: Version,
) -> Result<Option<CniResult>, CniError> {
    let mut child = Process::new(plugin)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::from_error(
                ErrorCode::Io,
                &format!("cannot run {}", plugin.display()),
                &e,
            )
        })?;
    // A child that exits without reading stdin closes the pipe: that is its business, its exit status tells.
    let _ = child.stdin.take().map(|mut s| s.write_all(stdin));
    let out = child.wait_with_output().map_err(|e| {
        CniError::from_error(
            ErrorCode::Io,
            &format!("waiting for {}", plugin.display()),
            &e,
        )
    })?;
    if !out.status.success() {
        return Err(parse_failure(plugin, &out.stdout));
    }
    if command != Command::Add {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::from_error(
            ErrorCode::Decoding,
            &format!("cannot parse result of {}", plugin.display()),
            &e,
        )
    })?;
    CniResult::parse(&value, version).map(Some)
}

/// Turns a failed plugin's stdout into its error, keeping its code (libcni's behaviour); shared with the runtime
/// side (`cni-runtime`), which reads plugin failures the same way.
pub fn parse_failure(plugin: &Path, stdout: &[u8]) -> CniError {
    let parsed = serde_json::from_slice::<serde_json::Value>(stdout).ok();
    let field =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    match parsed {
        Some(v) if v.get("code").and_then(|c| c.as_u64()).is_some() => CniError {
            code: v["code"].as_u64().unwrap_or(999) as u32,
            msg: field(&v, "msg").unwrap_or_default(),
            details: field(&v, "details"),
        },
        _ if stdout.is_empty() => CniError::new(
            ErrorCode::Internal,
            format!("{} failed without an error message", plugin.display()),
        ),
        _ => CniError::new(
            ErrorCode::Internal,
            format!(
                "{} failed and its error could not be parsed: {}",
                plugin.display(),
                String::from_utf8_lossy(stdout).trim()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_types_with_paths() {
        assert_eq!(find_plugin("../x", &[]).unwrap_err().code, 7);
        assert_eq!(find_plugin("", &[]).unwrap_err().code, 7);
    }

    #[test]
    fn finds_first_regular_file() {
        let dirs = vec![PathBuf::from("/nonexistent"), PathBuf::from("/bin")];
        assert_eq!(find_plugin("sh", &dirs).unwrap(), PathBuf::from("/bin/sh"));
        let err = find_plugin("no-such-plugin-xyz", &dirs).unwrap_err();
        assert!(err.msg.contains("no-such-plugin-xyz"), "{}", err.msg);
    }

    #[test]
    fn failure_keeps_delegate_code() {
        let e = parse_failure(
            Path::new("x"),
            br#"{"code":11,"msg":"later","details":"d"}"#,
        );
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_deref()),
            (11, "later", Some("d"))
        );
        assert_eq!(parse_failure(Path::new("x"), b"").code, 999);
        assert!(parse_failure(Path::new("x"), b"garbage")
            .msg
            .contains("garbage"));
    }

    #[test]
    fn exec_reports_exit_and_stdout_error() {
        let sh = Path::new("/bin/sh");
        // `sh` reads its script from stdin here: a stand-in delegate that fails with an error object.
        let err = exec(
            sh,
            Command::Del,
            br#"echo '{"code":7,"msg":"bad"}'; exit 1"#,
            Version::V1_0_0,
        )
        .unwrap_err();
        assert_eq!((err.code, err.msg.as_str()), (7, "bad"));
        assert!(exec(sh, Command::Del, b"exit 0", Version::V1_0_0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn exec_failures_name_the_plugin_and_the_os_error_once() {
        let missing = Path::new("/nonexistent/trestle-delegate");
        let err = exec(missing, Command::Add, b"{}", Version::V1_0_0).unwrap_err();
        let os = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
        assert_eq!(err.code, 5);
        assert_eq!(err.msg, format!("cannot run {}: {os}", missing.display()));
        assert_eq!(err.details, None, "an io::Error has no further cause");
        // `sh` prints something that is not JSON and succeeds: an ADD result that does not decode.
        let err = exec(
            Path::new("/bin/sh"),
            Command::Add,
            b"echo nope",
            Version::V1_0_0,
        )
        .unwrap_err();
        assert_eq!(err.code, 6);
        assert!(
            err.msg.starts_with("cannot parse result of /bin/sh: "),
            "{}",
            err.msg
        );
    }
}
