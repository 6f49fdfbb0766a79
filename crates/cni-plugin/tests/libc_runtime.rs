//! The parts of Rust's standard library that depend on the C library, exercised in a binary linked the way the
//! plugins are (static, against musl through `tools/static-link`, with `musl-shim.c` standing in for the glibc-only
//! symbols). Each would fail, not crash quietly, if the link lost a shim or a forced symbol: unwinding goes through
//! `_dl_find_object` and libgcc's pthread calls, spawning through `gnu_get_libc_version`. tools/static-link links
//! this binary position-dependent, as it links the plugins (unless `TRESTLE_PLUGIN_PIE=1`).

use std::cell::Cell;
use std::io::ErrorKind;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

#[inline(never)]
fn fails_deep_inside() -> u8 {
    let empty: Vec<u8> = Vec::new();
    let i = std::hint::black_box(3);
    empty[i]
}

#[test]
fn panics_unwind_and_are_caught() {
    let caught = std::panic::catch_unwind(fails_deep_inside);
    assert!(caught.is_err());
    // Unwinding ran destructors on the way: a second panic in the same thread still unwinds.
    assert!(std::panic::catch_unwind(|| panic!("again")).is_err());
}

#[test]
fn backtraces_are_walked_and_symbolized() {
    let bt = std::backtrace::Backtrace::force_capture();
    assert_eq!(bt.status(), std::backtrace::BacktraceStatus::Captured);
    let text = bt.to_string();
    assert!(
        text.contains("backtraces_are_walked_and_symbolized"),
        "{text}"
    );
}

#[test]
fn spawn_reports_a_missing_program() {
    let err = Command::new("/nonexistent/trestle-test-program")
        .status()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn spawn_runs_and_reports_exit_status() {
    let out = Command::new("/bin/sh")
        .args(["-c", "pwd; exit 3"])
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"/\n");
}

static DROPPED: AtomicBool = AtomicBool::new(false);

struct MarkOnDrop(Cell<u8>);

impl Drop for MarkOnDrop {
    fn drop(&mut self) {
        DROPPED.store(true, Ordering::SeqCst);
    }
}

thread_local! {
    static LOCAL: MarkOnDrop = const { MarkOnDrop(Cell::new(0)) };
}

#[test]
fn thread_locals_are_destroyed_when_their_thread_ends() {
    std::thread::spawn(|| LOCAL.with(|l| l.0.set(1)))
        .join()
        .unwrap();
    assert!(DROPPED.load(Ordering::SeqCst));
}

/// The mark tools/static-link leaves in `.comment` (`trestle-link: musl static`, ...) says what the ELF header says.
#[test]
fn the_link_mark_matches_the_executable() {
    let elf = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    // Built at run time, so that the search does not find this test's own string.
    let mark = ["trestle", "-link: "].concat().into_bytes();
    let mode = elf
        .windows(mark.len())
        .enumerate()
        .filter(|(_, w)| *w == mark.as_slice())
        .map(|(at, _)| &elf[at + mark.len()..])
        .map(|rest| &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())])
        .map(|mode| String::from_utf8_lossy(mode).into_owned())
        .find(|mode| mode.starts_with("musl ") || mode.starts_with("glibc "))
        .expect("linked by tools/static-link");
    // e_type: 2 is a position-dependent executable, 3 a position-independent one (static-pie or dynamic).
    let e_type = u16::from_le_bytes([elf[16], elf[17]]);
    let expected = if mode.ends_with(" static") { 2 } else { 3 };
    assert_eq!(e_type, expected, "{mode}");
}
