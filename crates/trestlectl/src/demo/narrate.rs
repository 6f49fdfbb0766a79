//! Output of the demo: numbered steps, the commands a person would type, and indented output.

use std::io::Write;

/// Writes the narration on stdout.
#[derive(Debug)]
pub struct Narrator {
    color: bool,
    step: u32,
}

impl Narrator {
    /// A narrator; `color` adds ANSI bold and dim.
    pub fn new(color: bool) -> Self {
        Narrator { color, step: 0 }
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

    /// Starts step N+1 with a title and an explanation.
    pub fn step(&mut self, title: &str, why: &str) {
        self.step += 1;
        let head = format!("Step {}: {title}", self.step);
        println!("\n{}", self.paint("1", &head));
        println!("{}", self.paint("1", &"=".repeat(head.len())));
        for line in why.lines() {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
    }

    /// A command or shell equivalent, as the person would type it.
    pub fn cmd(&self, text: &str) {
        for line in text.lines() {
            println!("  {}", self.paint("36", &format!("$ {line}")));
        }
    }

    /// Output, indented.
    pub fn out(&self, text: &str) {
        for line in text.trim_end().lines() {
            println!("    {line}");
        }
        let _ = std::io::stdout().flush();
    }

    /// A remark.
    pub fn say(&self, text: &str) {
        println!("{text}");
    }

    /// A verified fact.
    pub fn ok(&self, text: &str) {
        println!("  {} {text}", self.paint("32", "ok"));
        let _ = std::io::stdout().flush();
    }
}
