//! Dispatch of one plugin invocation.

use cni_proto::{
    parse_request, version_reply, CniError, CniResult, Command, Env, ErrorCode, NetConf, Version,
};
use std::io::{Read, Write};

/// One invocation: the validated environment, the parsed config and the raw stdin (delegates get it verbatim).
#[derive(Debug)]
pub struct Request {
    /// The `CNI_*` variables.
    pub env: Env,
    /// The parsed network config.
    pub conf: NetConf,
    /// stdin as received.
    pub stdin: Vec<u8>,
}

/// What a plugin implements. Each command returns a typed CNI error on failure; the edge prints it.
pub trait Plugin {
    /// Text printed on stderr when run without `CNI_COMMAND`.
    fn about(&self) -> String;
    /// ADD: returns the result, printed in the config's version.
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    /// DEL: idempotent.
    fn del(&self, req: &Request) -> Result<(), CniError>;
    /// CHECK.
    fn check(&self, req: &Request) -> Result<(), CniError>;
    /// GC with the config's `cni.dev/valid-attachments`.
    fn gc(&self, req: &Request) -> Result<(), CniError>;
    /// STATUS: Ok when an ADD could be served.
    fn status(&self, req: &Request) -> Result<(), CniError>;
}

/// Runs the plugin with the process's environment and stdin and exits the process.
pub fn run(plugin: &impl Plugin) -> ! {
    let start = std::time::Instant::now();
    let mut stdin = Vec::new();
    let code = match dispatch(plugin, &mut stdin) {
        Ok(Some(out)) => print_stdout(&out).map_or(1, |_| 0),
        Ok(None) => 0,
        Err((err, version)) => {
            log::error!("{}: {}", err.msg, err.details.as_deref().unwrap_or(""));
            let _ = print_stdout(&err.to_json(version));
            1
        }
    };
    log::debug!("exit {code} after {:?}", start.elapsed());
    crate::logging::flush();
    std::process::exit(code)
}

/// [`run`], from a plugin binary's own C `main` (`#![no_main]`), without std's start-up: for a process that lives a
/// few milliseconds that start-up is pure cost (a stack-guard probe that reads and parses `/proc/self/maps`, a
/// signal stack mapped and handlers installed, a check of the standard descriptors: about a dozen system calls, and
/// with musl some thirty failing `mremap`s). Of what it does, a plugin needs one thing, done here: SIGPIPE ignored,
/// so that a runtime that stopped reading makes the write fail instead of killing the plugin. A stack overflow is
/// then a plain SIGSEGV, without std's message.
///
/// # Safety
///
/// `argc` and `argv` are the C `main`'s: `argv` holds `argc` pointers to NUL-terminated strings, or `argc` is 0.
pub unsafe fn run_from_c_main(
    argc: std::ffi::c_int,
    argv: *const *const std::ffi::c_char,
    plugin: &impl Plugin,
) -> ! {
    // SAFETY: setting a signal's disposition to SIG_IGN runs no code of ours and touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if argc > 0 && !argv.is_null() {
        // SAFETY: the caller passes the C main's argv, whose first entry is a NUL-terminated string when argc > 0.
        let argv0 = unsafe { std::ffi::CStr::from_ptr(*argv) };
        crate::logging::set_program(argv0.to_bytes());
    }
    run(plugin)
}

fn print_stdout(s: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

type Failure = (CniError, Option<Version>);

fn dispatch(plugin: &impl Plugin, stdin: &mut Vec<u8>) -> Result<Option<String>, Failure> {
    crate::logging::init_from_env();
    let env = Env::from_os_lookup(|k| std::env::var_os(k)).map_err(|e| (e, None))?;
    let Some(env) = env else {
        eprintln!("{}", plugin.about());
        let all: Vec<&str> = Version::ALL.iter().map(|v| v.as_str()).collect();
        eprintln!("CNI protocol versions supported: {}", all.join(", "));
        return Ok(None);
    };
    std::io::stdin().read_to_end(stdin).map_err(|e| {
        (
            CniError::from_error(ErrorCode::Io, "cannot read stdin", &e),
            None,
        )
    })?;
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Ok(Some(version_reply(&requested)));
    }
    let conf = parse_request(env.command, stdin).map_err(|e| (e, None))?;
    let version = conf.cni_version;
    crate::logging::configure_from_config(&conf.raw).map_err(|e| {
        (
            CniError::new(ErrorCode::InvalidConfig, e.to_string()),
            Some(version),
        )
    })?;
    let req = Request {
        env,
        conf,
        stdin: std::mem::take(stdin),
    };
    log::debug!(
        "{} container={} ifname={} netns={}",
        req.env.command.as_str(),
        req.env.container_id,
        req.env.ifname,
        req.env.netns
    );
    run_command(plugin, &req).map_err(|e| (e, Some(version)))
}

fn run_command(plugin: &impl Plugin, req: &Request) -> Result<Option<String>, CniError> {
    Ok(match req.env.command {
        Command::Add => Some(plugin.add(req)?.to_json(req.conf.cni_version)?),
        Command::Del => plugin.del(req).map(|_| None)?,
        Command::Check => plugin.check(req).map(|_| None)?,
        Command::Gc => plugin.gc(req).map(|_| None)?,
        Command::Status => plugin.status(req).map(|_| None)?,
        // Answered before the config is parsed, since VERSION ignores it.
        Command::Version => Some(version_reply(req.conf.cni_version.as_str())),
    })
}
