//! Logging for plugin processes: never on stdout (it carries the result). Records go to stderr at a chosen level,
//! and optionally to a log file rotated daily: a record of day D is appended to `<file>.<YYYY-MM-DD>` (the
//! tracing-appender naming), so many short-lived plugin processes can write concurrently without a rename race.
//!
//! Daily files older than a maximum age are removed (retention.rs).
//!
//! Settings, environment first: `TRESTLE_LOG_LEVEL` (error, warn, info, debug, trace, off; default warn),
//! `TRESTLE_LOG_FILE` and `TRESTLE_LOG_MAX_AGE` (days, default 60, 0 keeps every file); otherwise the network
//! config's `logLevel`, `logFile` and `logMaxAge` keys.

mod retention;

pub use retention::DEFAULT_MAX_AGE_DAYS;

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
    /// Days of files kept; 0 keeps all.
    max_age: u32,
}

/// A logging key of the network config whose value is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {expected}")]
pub struct InvalidSetting {
    /// The config key.
    pub key: &'static str,
    /// What the key takes.
    pub expected: &'static str,
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
    let env = env_settings();
    configure(env.level, env.file, env.max_age);
}

/// Logging settings from one source. From the environment, an unparsable value counts as unset (the environment is the
/// operator's, and a plugin call is no place to refuse it).
struct Settings {
    level: Option<LevelFilter>,
    file: Option<String>,
    max_age: Option<u32>,
}

fn env_settings() -> Settings {
    let var = |k: &str| std::env::var(k).ok();
    Settings {
        level: var("TRESTLE_LOG_LEVEL").and_then(|s| s.parse().ok()),
        file: var("TRESTLE_LOG_FILE"),
        max_age: var("TRESTLE_LOG_MAX_AGE").and_then(|s| s.trim().parse().ok()),
    }
}

/// Applies settings from a network config (`logLevel`, `logFile`, `logMaxAge`) unless the environment already set
/// them. A key of the wrong type or value is refused (the plugin answers code 7 naming it).
pub fn configure_from_config(
    raw: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), InvalidSetting> {
    let from_config = config_settings(raw)?;
    let env = env_settings();
    configure(
        env.level.or(from_config.level),
        env.file.or(from_config.file),
        env.max_age.or(from_config.max_age),
    );
    Ok(())
}

fn config_settings(
    raw: &serde_json::Map<String, serde_json::Value>,
) -> Result<Settings, InvalidSetting> {
    let string = |key: &'static str, expected| match raw.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or(InvalidSetting { key, expected }),
    };
    const LEVELS: &str = "one of error, warn, info, debug, trace, off";
    let level = string("logLevel", LEVELS)?
        .map(|s| s.parse::<LevelFilter>())
        .transpose()
        .map_err(|_| InvalidSetting {
            key: "logLevel",
            expected: LEVELS,
        })?;
    let max_age =
        match raw.get("logMaxAge") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.as_u64().and_then(|d| u32::try_from(d).ok()).ok_or(
                InvalidSetting {
                    key: "logMaxAge",
                    expected: "a whole number of days (0 keeps every file)",
                },
            )?),
        };
    Ok(Settings {
        level,
        file: string("logFile", "a path")?,
        max_age,
    })
}

fn configure(level: Option<LevelFilter>, file: Option<String>, max_age: Option<u32>) {
    let l = logger();
    if let Some(level) = level {
        *l.level.lock().unwrap_or_else(|e| e.into_inner()) = level;
    }
    let mut slot = l.file.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = file.filter(|f| !f.is_empty()) {
        *slot = Some(DailyFile {
            base: PathBuf::from(path),
            day: -1,
            file: None,
            max_age: DEFAULT_MAX_AGE_DAYS,
        });
    }
    if let (Some(f), Some(days)) = (slot.as_mut(), max_age) {
        f.max_age = days;
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
            retention::sweep_once_a_day(&self.base, day, self.max_age);
        }
        if let Some(f) = self.file.as_mut() {
            // One write per record with O_APPEND keeps lines of concurrent processes whole.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The program name of log lines, when the process's entry point knew it (`crate::run_from_c_main`).
static PROGRAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names the program in log lines: `argv[0]`'s last component.
pub(crate) fn set_program(argv0: &[u8]) {
    let name = argv0.rsplit(|&c| c == b'/').next().unwrap_or(argv0);
    let _ = PROGRAM.set(String::from_utf8_lossy(name).into_owned());
}

fn program() -> String {
    if let Some(name) = PROGRAM.get() {
        return name.clone();
    }
    // Only under std's own `main`: a plugin entered through `run_from_c_main` has set PROGRAM, and std's argument
    // list is not filled in without std's start-up where the C library is musl.
    std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_owned))
        .unwrap_or_else(|| "trestle".into())
}

/// `secs.millis` since the Unix epoch as RFC 3339 UTC with milliseconds (`1970-01-01T23:59:59.005Z`): the
/// timestamps of trestle's log lines, shared with `trestled`'s logger.
pub fn timestamp(secs: i64, millis: u32) -> String {
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
            max_age: 0,
        };
        f.write(0, "a\n");
        f.write(86_400, "b\n");
        f.write(86_401, "c\n");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        assert_eq!(read("plugin.log.1970-01-01"), "a\n");
        assert_eq!(read("plugin.log.1970-01-02"), "b\nc\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_day_sweeps_files_past_the_maximum_age() {
        let dir = std::env::temp_dir().join(format!("trestle-log-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join("plugin.log.1970-01-01");
        std::fs::write(&old, "a\n").unwrap();
        let mut f = DailyFile {
            base: dir.join("plugin.log"),
            day: -1,
            file: None,
            max_age: 2,
        };
        f.write(86_400, "b\n"); // 1970-01-02: the 1st is inside a 2-day window
        assert!(old.exists());
        f.write(2 * 86_400, "c\n"); // 1970-01-03: now it is not
        assert!(!old.exists());
        assert!(dir.join("plugin.log.1970-01-02").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn config_settings_are_typed_and_name_the_key() {
        let conf = |v: serde_json::Value| v.as_object().unwrap().clone();
        let s = config_settings(&conf(serde_json::json!({
            "logLevel": "debug", "logFile": "/var/log/t.log", "logMaxAge": 7
        })))
        .unwrap();
        assert_eq!(
            (s.level, s.file.as_deref(), s.max_age),
            (Some(LevelFilter::Debug), Some("/var/log/t.log"), Some(7))
        );
        let s = config_settings(&conf(serde_json::json!({"logMaxAge": 0}))).unwrap();
        assert_eq!((s.level, s.file, s.max_age), (None, None, Some(0)));
        for (bad, key) in [
            (serde_json::json!({"logMaxAge": -1}), "logMaxAge"),
            (serde_json::json!({"logMaxAge": "60"}), "logMaxAge"),
            (serde_json::json!({"logMaxAge": 1.5}), "logMaxAge"),
            (serde_json::json!({"logLevel": "loud"}), "logLevel"),
            (serde_json::json!({"logLevel": 3}), "logLevel"),
            (serde_json::json!({"logFile": true}), "logFile"),
        ] {
            let Err(err) = config_settings(&conf(bad.clone())) else {
                panic!("{bad} was accepted");
            };
            assert_eq!(err.key, key);
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }
}
