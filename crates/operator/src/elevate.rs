//! Running a subcommand that needs root as a user: `trestlectl demo` and `trestlectl bench` create namespaces, links
//! and nftables rules, so when they are started by a user they run themselves again through `sudo`, the way a user
//! would have typed it. Root (a fresh machine often has no `sudo` at all) just goes on.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the subcommand cannot be run as root.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not root, and no `sudo` to become it.
    #[error("{what} needs root, and there is no sudo on PATH: run it as root")]
    NoSudo {
        /// The subcommand, for the message.
        what: String,
    },
    /// The own executable's path is unknown, so it cannot be started again.
    #[error("{what} needs root, and this executable's path is unknown: run it with sudo")]
    NoExe {
        /// The subcommand, for the message.
        what: String,
    },
    /// `exec` of sudo failed.
    #[error("running sudo for {what}")]
    Exec {
        /// The subcommand, for the message.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Returns when the process is root; otherwise replaces it with `sudo <this executable> <its arguments>` (and only
/// returns an error). `what` names the subcommand in the note printed to stderr.
pub fn as_root(what: &str) -> Result<(), Error> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let what = what.to_owned();
    let sudo = find_on_path("sudo").ok_or_else(|| Error::NoSudo { what: what.clone() })?;
    let exe = std::env::current_exe().map_err(|_| Error::NoExe { what: what.clone() })?;
    eprintln!("trestlectl: {what} needs root: running it through sudo");
    let err = sudo_command(&sudo, &exe, std::env::args_os().skip(1)).exec();
    Err(Error::Exec { what, source: err })
}

/// `sudo -- EXE ARGS...`: the executable by its absolute path, so root's PATH does not matter.
fn sudo_command(sudo: &Path, exe: &Path, args: impl IntoIterator<Item = OsString>) -> Command {
    let mut cmd = Command::new(sudo);
    cmd.arg("--").arg(exe).args(args);
    cmd
}

/// The first `program` in a directory of `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_runs_the_executable_by_path_with_every_argument() {
        let cmd = sudo_command(
            Path::new("/usr/bin/sudo"),
            Path::new("/home/u/trestle/target/release/trestlectl"),
            ["demo", "--no-color"].map(OsString::from),
        );
        assert_eq!(cmd.get_program(), "/usr/bin/sudo");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(
            args,
            [
                "--",
                "/home/u/trestle/target/release/trestlectl",
                "demo",
                "--no-color"
            ]
        );
    }

    #[test]
    fn programs_are_found_on_path_only() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("trestle-no-such-program").is_none());
    }
}
