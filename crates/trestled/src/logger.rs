//! A line-per-record logger on stderr (journald adds its own timestamps, but a daemon run by
//! hand or by a test should have them too): `<RFC 3339 UTC> <LEVEL> <message>`, where
//! messages name the attachment as `key=value` pairs.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!("{} {:<5} {}\n", timestamp(), r.level(), r.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`.
pub fn init(level: LevelFilter) {
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// UTC now as `YYYY-MM-DDTHH:MM:SS.mmmZ`, as the plugins' logs write it.
fn timestamp() -> String {
    let ms = crate::clock::unix_ms();
    cni_plugin::logging::timestamp(ms.div_euclid(1000), ms.rem_euclid(1000) as u32)
}
