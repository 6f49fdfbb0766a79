//! Output of the demo: numbered steps, the commands a person would type, and indented output; with `--step`, a
//! pause for Enter between steps.

use std::io::Write;
use std::time::Duration;

/// Whether the narrator waits for Enter between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Run straight through.
    Continuous,
    /// Wait for Enter on stdin after each step.
    Step,
}

/// The demo was asked to stop (Ctrl-C, SIGTERM, SIGHUP).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Writes the narration on stdout.
#[derive(Debug)]
pub struct Narrator {
    color: bool,
    step: u32,
    waiting: bool,
}

impl Narrator {
    /// A narrator; `color` adds ANSI bold and dim. With [`Pace::Step`] it waits for Enter between steps when
    /// stdin is a terminal (nobody could press Enter otherwise).
    pub fn new(color: bool, pace: Pace, stdin_is_terminal: bool) -> Self {
        Narrator {
            color,
            step: 0,
            waiting: pace == Pace::Step && stdin_is_terminal,
        }
    }

    /// Whether the narrator waits for Enter between steps.
    pub fn waits(&self) -> bool {
        self.waiting
    }

    /// The number of the current step.
    pub fn current(&self) -> u32 {
        self.step
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Starts step N+1 with a title and an explanation; with `--step`, first waits for Enter after step N.
    pub fn step(&mut self, title: &str, why: &str) -> Result<(), Interrupted> {
        if self.step > 0 {
            self.wait_for_enter()?;
        }
        if super::interrupt::requested() {
            return Err(Interrupted);
        }
        self.step += 1;
        let head = format!("Step {}: {title}", self.step);
        put(&format!("\n{}", self.paint("1", &head)));
        put(&self.paint("1", &"=".repeat(head.len())));
        for line in why.lines() {
            put(line);
        }
        let _ = std::io::stdout().flush();
        Ok(())
    }

    /// With `--step` on a terminal: says so and waits for a line on stdin (or its end, after which it waits no
    /// more), watching for Ctrl-C.
    fn wait_for_enter(&mut self) -> Result<(), Interrupted> {
        if !self.waiting {
            return Ok(());
        }
        let prompt = format!(
            "\n{}",
            self.paint(
                "2",
                &format!(
                    "[step {} done: press Enter for step {}, Ctrl-C to stop and clean up]",
                    self.step,
                    self.step + 1
                )
            )
        );
        let _ = std::io::stdout().write_all(prompt.as_bytes());
        let _ = std::io::stdout().flush();
        loop {
            if super::interrupt::requested() {
                put("");
                return Err(Interrupted);
            }
            match read_line_or_timeout(Duration::from_millis(100)) {
                Read::Nothing => continue,
                Read::Line => break,
                Read::End => {
                    self.waiting = false;
                    break;
                }
            }
        }
        Ok(())
    }

    /// A command or shell equivalent, as the person would type it.
    pub fn cmd(&self, text: &str) {
        for line in text.lines() {
            put(&format!("  {}", self.paint("36", &format!("$ {line}"))));
        }
    }

    /// Output, indented.
    pub fn out(&self, text: &str) {
        for line in text.trim_end().lines() {
            put(&format!("    {line}"));
        }
        let _ = std::io::stdout().flush();
    }

    /// A remark.
    pub fn say(&self, text: &str) {
        put(text);
    }

    /// A verified fact.
    pub fn ok(&self, text: &str) {
        put(&format!("  {} {text}", self.paint("32", "ok")));
        let _ = std::io::stdout().flush();
    }
}

/// One line of narration on stdout. A stdout that has gone away (a closed terminal, a pipe whose reader quit) is
/// not a reason to stop before cleaning up, so errors are ignored, where `println!` would panic.
fn put(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

enum Read {
    Nothing,
    Line,
    End,
}

/// Waits up to `timeout` for input on stdin and consumes it: a terminal in canonical mode hands over one line
/// per read. A signal during the wait counts as nothing read; the caller looks at why.
fn read_line_or_timeout(timeout: Duration) -> Read {
    let mut fds = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as libc::c_int) };
    if ready <= 0 {
        return Read::Nothing;
    }
    let mut buf = [0u8; 256];
    // SAFETY: reads into a buffer of the length given.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Read::End,
        n if n < 0 => {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                Read::Nothing
            } else {
                Read::End
            }
        }
        _ => Read::Line,
    }
}
