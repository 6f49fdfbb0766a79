//! Logging for plugin processes: never on stdout (it carries the result). Records go to stderr at a chosen level,
//! and optionally to a log file rotated daily: a record of day D is appended to `<file>.<YYYY-MM-DD>` (the
//! tracing-appender naming), so many short-lived plugin processes can write concurrently without a rename race.
//!
//! Settings, environment first: `TRESTLE_LOG_LEVEL` (error, warn, info, debug, trace, off; default warn) and
//! `TRESTLE_LOG_FILE`; otherwise the network config's `logLevel` and `logFile` keys.

use log::{LevelFilter, Log, Metadata, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

struct Logger {
    level: Mutex<LevelFilter>,
    file: Mutex<Option<DailyFile>>,
}

struct DailyFile {
    base: PathBuf,
    day: i64,
    file: Option<File>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger {
        level: Mutex::new(LevelFilter::Warn),
        file: Mutex::new(None),
    })
}

/// Installs the logger with the settings from the environment. Safe to call more than once.
pub fn init_from_env() {
    let l = logger();
    if log::set_logger(l).is_ok() {
        log::set_max_level(LevelFilter::Trace);
    }
    configure(
        std::env::var("TRESTLE_LOG_LEVEL").ok().as_deref(),
        std::env::var("TRESTLE_LOG_FILE").ok().as_deref(),
    );
}

/// Applies settings from a network config (`logLevel`, `logFile`) unless the environment already set them.
pub fn configure_from_config(raw: &serde_json::Map<String, serde_json::Value>) {
    let get = |k: &str| raw.get(k).and_then(|v| v.as_str());
    let level = std::env::var("TRESTLE_LOG_LEVEL").ok();
    let file = std::env::var("TRESTLE_LOG_FILE").ok();
    configure(
        level.as_deref().or(get("logLevel")),
        file.as_deref().or(get("logFile")),
    );
}

fn configure(level: Option<&str>, file: Option<&str>) {
    let l = logger();
    if let Some(level) = level.and_then(|s| s.parse::<LevelFilter>().ok()) {
        *l.level.lock().unwrap_or_else(|e| e.into_inner()) = level;
    }
    if let Some(path) = file.filter(|f| !f.is_empty()) {
        *l.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(DailyFile {
            base: PathBuf::from(path),
            day: -1,
            file: None,
        });
    }
}

/// Flushes the log file, if any.
pub fn flush() {
    logger().flush();
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= *self.level.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{} {} {}[{}]: {}\n",
            timestamp(now.as_secs() as i64, now.subsec_millis()),
            record.level(),
            program(),
            std::process::id(),
            record.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.write(now.as_secs() as i64, &line);
        }
    }

    fn flush(&self) {
        if let Some(Some(f)) = self
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(|d| d.file.as_mut())
        {
            let _ = f.flush();
        }
    }
}

impl DailyFile {
    fn write(&mut self, secs: i64, line: &str) {
        let day = secs.div_euclid(86_400);
        if day != self.day || self.file.is_none() {
            let (y, m, d) = civil_from_days(day);
            let mut name = self.base.as_os_str().to_owned();
            name.push(format!(".{y:04}-{m:02}-{d:02}"));
            self.file = OpenOptions::new().create(true).append(true).open(name).ok();
            self.day = day;
        }
        if let Some(f) = self.file.as_mut() {
            // One write per record with O_APPEND keeps lines of concurrent processes whole.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_owned))
        .unwrap_or_else(|| "trestle".into())
}

fn timestamp(secs: i64, millis: u32) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's algorithm), so
/// the logger needs no date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(86_399, 5), "1970-01-01T23:59:59.005Z");
    }

    #[test]
    fn daily_file_switches_by_day() {
        let dir = std::env::temp_dir().join(format!("trestle-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = DailyFile {
            base: dir.join("plugin.log"),
            day: -1,
            file: None,
        };
        f.write(0, "a\n");
        f.write(86_400, "b\n");
        f.write(86_401, "c\n");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        assert_eq!(read("plugin.log.1970-01-01"), "a\n");
        assert_eq!(read("plugin.log.1970-01-02"), "b\nc\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
