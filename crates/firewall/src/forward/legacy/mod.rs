//! The legacy (x_tables, `iptables-legacy`) backend of forward accept: reading what one family's `filter` table
//! holds of trestle's, and changing it.
//!
//! # Reading, in-process
//! [`read`] asks the kernel for the table's blob with the two getsockopts `iptables-legacy` itself uses
//! (`IPT_SO_GET_INFO`, then `IPT_SO_GET_ENTRIES`; `IP6T_*` for IPv6) on a raw socket of the calling thread's
//! network namespace, and parses it in [`xt`] ([`xt::parse`] is a pure function over those bytes). No process
//! is run: CHECK and every ADD look, and most of them find everything in place.
//!
//! The kernel instantiates a legacy table the first time anyone asks for it (any getsockopt naming it), and
//! keeps it for the namespace's life: on a host whose firewall is nf_tables only, a legacy `filter` table would
//! appear beside it (`iptables-nft` then warns that legacy tables are present, and tools that pick their backend
//! by which tables exist, such as Kubernetes' `iptables-wrapper`, may pick legacy). So [`read`] first looks in
//! the thread's `/proc/thread-self/net/ip_tables_names` whether the table exists, and calls no getsockopt when it
//! does not.
//!
//! # Changing, through `iptables-legacy-restore`
//! [`apply`] is the only process trestle runs for its firewall. Changing an x_tables table means replacing the
//! whole table blob (`IPT_SO_SET_REPLACE`): every rule of every other program re-encoded with correct offsets and
//! jump targets, then the old counters handed back (`IPT_SO_SET_ADD_COUNTERS`), all under the `xtables.lock` that
//! every iptables command takes. `iptables-legacy-restore` does exactly that and is what the table's other users
//! run; re-implementing it in-process would be a second, subtler copy of libiptc for a rare event. It runs once
//! per network added or removed (the plan is empty otherwise), never per pod. Measured on the development VM
//! (Debian 12's iptables 1.8.9, kernel 6.18, 40 rounds): ensure of one network 1.1-7.3 ms, median 3-4 ms, and
//! the same for its removal; a [`read`] 26-90 µs, median 34 µs (release build). The tests
//! `apply_and_read_in_a_namespace_*` print one of each.

mod xt;

use super::rules::{Kind, Op, Rule, View, CHAIN, FORWARD, JUMP_COMMENT};
use crate::names::Family;
use crate::Error;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use xt::{fetch, filter_exists, parse, spec};

/// How trestle names a legacy rule for deletion: x_tables rules have no handle, `iptables -D` finds a rule by its
/// spec, so the handle is what it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LegacyHandle {
    /// The jump from `FORWARD` to [`CHAIN`] (there is only one spec for it).
    Jump,
    /// A rule of [`CHAIN`].
    Rule(Rule),
}

/// Seconds `iptables-legacy-restore` waits for the `xtables.lock` another iptables command holds.
const LOCK_WAIT_SECS: &str = "5";
/// Where the restore programs are looked for after `PATH`: a CNI plugin's `PATH` can be nearly empty.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];
/// The environment passed through to the restore program: the variables iptables itself reads (its extension
/// directory, its lock file), so that it behaves as the administrator's own iptables commands.
const PASSED_ENV: [&str; 2] = ["XTABLES_LIBDIR", "XT_LOCK_NAME"];

/// Reads what the calling thread's network namespace's legacy `filter` table of `family` holds of trestle's.
/// `None` when there is no such table (x_tables absent, or nobody has used its `filter` table in this namespace):
/// it is then not created.
///
/// Only rules exactly as [`script`] writes them count (an address, the comment, the conntrack state for
/// replies, `ACCEPT`, nothing else), since only those can be deleted by that spec; anything else in [`CHAIN`] is
/// someone else's and ignored.
pub(crate) fn read(family: Family) -> Result<Option<View<LegacyHandle>>, Error> {
    let spec = spec(family);
    let fail = |source| Error::LegacyRead {
        program: spec.program,
        source,
    };
    if !filter_exists(spec).map_err(fail)? {
        return Ok(None);
    }
    let (info, entries) = fetch(spec).map_err(fail)?;
    parse(family, &info, &entries)
        .map(Some)
        .map_err(|what| fail(io::Error::new(io::ErrorKind::InvalidData, what)))
}

/// Whether the calling thread's network namespace has a legacy `filter` table of `family` (one `/proc` read; no
/// table is made).
pub(crate) fn present(family: Family) -> Result<bool, Error> {
    let spec = spec(family);
    filter_exists(spec).map_err(|source| Error::LegacyRead {
        program: spec.program,
        source,
    })
}

/// The `iptables-legacy-restore --noflush` input carrying out `ops` in order, as one transaction.
///
/// `Op::NewChain` declares the chain (`:TRESTLE-FORWARD - [0:0]`), which under `--noflush` creates a missing
/// chain but flushes an existing one: only a plan that found no chain asks for it. Comments are quoted, with `\`
/// and `"` escaped as iptables-restore's tokenizer wants (inside quotes, `\` takes the next character literally;
/// an unescaped `\` would vanish). A line break cannot be written at all (the input is read line by line):
/// [`apply`] refuses such a comment.
pub(crate) fn script(ops: &[Op<LegacyHandle>]) -> String {
    let mut out = String::from("*filter\n");
    for op in ops {
        let line = match op {
            Op::NewChain => format!(":{CHAIN} - [0:0]"),
            // `-I` counts from 1: right after the anchor is its index plus 2.
            Op::InsertJump(after) => format!(
                "-I {FORWARD} {} {}",
                after.map_or(1, |a| a.index + 2),
                jump_spec()
            ),
            Op::Append(rule) => format!("-A {CHAIN} {}", rule_spec(rule)),
            Op::Delete(LegacyHandle::Rule(rule)) => format!("-D {CHAIN} {}", rule_spec(rule)),
            // The handle names a jump, whichever op carries it.
            Op::Delete(LegacyHandle::Jump) | Op::DeleteJump(_) => {
                format!("-D {FORWARD} {}", jump_spec())
            }
            Op::DeleteChain => format!("-X {CHAIN}"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

fn jump_spec() -> String {
    format!("-m comment --comment {} -j {CHAIN}", quote(JUMP_COMMENT))
}

/// A rule's matches and target, the same for appending and deleting (`-D` finds the rule by them).
fn rule_spec(rule: &Rule) -> String {
    let comment = quote(&rule.comment);
    match rule.kind {
        Kind::From => format!("-s {} -m comment --comment {comment} -j ACCEPT", rule.subnet),
        Kind::RepliesTo => format!(
            "-d {} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment {comment} -j ACCEPT",
            rule.subnet
        ),
    }
}

/// One argument for iptables-restore: in double quotes, `\` and `"` escaped.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Carries out `ops` on the calling thread's network namespace's legacy `filter` table of `family`: one
/// `iptables-legacy-restore --noflush` (`ip6tables-legacy-restore`), all ops in one transaction, nothing done when
/// any fails. No process for an empty plan. See the module documentation for why this is a process.
///
/// `lock` is the caller's lock file (see `crate::LOCK_PATH`), held: the program inherits it, so that the lock
/// stays held until the program has finished even when the plugin is killed meanwhile (a plugin that read the
/// table before the orphan's commit would plan the same change again).
pub(crate) fn apply(
    family: Family,
    ops: &[Op<LegacyHandle>],
    lock: BorrowedFd,
) -> Result<(), Error> {
    if ops.is_empty() {
        return Ok(());
    }
    let program = spec(family).restore;
    let fail = |detail: String| Error::LegacyRestore { program, detail };
    writable(family, ops).map_err(fail)?;
    let path = find_program(program)
        .ok_or_else(|| fail("not found on PATH, in /usr/sbin or /sbin".into()))?;
    let mut command = Command::new(&path);
    command
        .args(["--noflush", "-w", LOCK_WAIT_SECS])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in PASSED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let lock = lock.as_raw_fd();
    // SAFETY: between fork and exec only fcntl, async-signal-safe, on a descriptor the child inherited.
    unsafe {
        command.pre_exec(move || {
            // The child's own copy loses close-on-exec; the parent's keeps it.
            if libc::fcntl(lock, libc::F_SETFD, 0) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", path.display())))?;
    // A few hundred bytes, far below a pipe's buffer, so writing all before reading cannot block. A program that
    // exits early breaks the pipe; its status and stderr then say why.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script(ops).as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot wait for {}: {e}", path.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!("{}: {}", out.status, stderr.trim())));
    }
    match written {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(fail(format!("cannot write its input: {e}"))),
        None => Err(fail("no input pipe".into())),
    }
}

/// Refuses what the restore input cannot carry, before anything runs: a comment with a line break (network names
/// are free text), or a subnet of the other family.
fn writable(family: Family, ops: &[Op<LegacyHandle>]) -> Result<(), String> {
    for op in ops {
        let rule = match op {
            Op::Append(rule) | Op::Delete(LegacyHandle::Rule(rule)) => rule,
            _ => continue,
        };
        if rule.comment.contains(['\n', '\r']) {
            return Err(format!(
                "the comment {:?} has a line break, which iptables-restore cannot read",
                rule.comment
            ));
        }
        if Family::of(rule.subnet.addr()) != family {
            return Err(format!("{} is not of this table's family", rule.subnet));
        }
    }
    Ok(())
}

/// The first executable `name` in the absolute directories of `PATH`, then in [`SBIN_DIRS`].
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
