//! Removal of expired daily log files. Every plugin process may write the log, so the sweep is claimed: a marker file
//! `<file>.swept` beside the logs holds the day of the last sweep, and whoever holds its `flock` and finds an older day
//! sweeps and writes today's. Everyone else pays an open, a `flock` and a read of the marker, once per process.
//! A file is removed only when its name says it belongs to a day outside the window, and never today's, so a process
//! still appending to an older day's file (it started before midnight) loses nothing that it can still write.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Days of logs kept when nothing is configured (the seed's plugin keeps 60 days of daily files).
pub const DEFAULT_MAX_AGE_DAYS: u32 = 60;

/// Sweeps the daily files of `base` once on day `today` (days since the epoch): every `<base>.<YYYY-MM-DD>` older than
/// the `max_age` days ending today is removed (today counts as one). `max_age` 0 keeps everything.
pub fn sweep_once_a_day(base: &Path, today: i64, max_age: u32) {
    if max_age == 0 {
        return;
    }
    let marker = marker_of(base);
    let Ok(claim) = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&marker)
    else {
        return;
    };
    if !try_lock(&claim) {
        return; // another process is sweeping now
    }
    let _unlock = Unlock(&claim);
    let mut last = String::new();
    let _ = (&claim).read_to_string(&mut last);
    if last.trim().parse::<i64>().ok() == Some(today) {
        return;
    }
    remove_expired(base, today - i64::from(max_age) + 1);
    let _ = claim.set_len(0);
    let _ = (&claim).rewind();
    let _ = (&claim).write_all(format!("{today}\n").as_bytes());
}

/// Releases the claim explicitly: closing the descriptor would not while a child forked by another thread still
/// shares the open file description (until its exec closes it), and the next sweeper would find the claim taken.
struct Unlock<'a>(&'a File);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        // SAFETY: flock(2) on a descriptor the borrowed File keeps open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn marker_of(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".swept");
    PathBuf::from(name)
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock(2) on a descriptor this File owns; LOCK_NB never blocks.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes `<base>.<date>` for every date before day `first_kept`.
fn remove_expired(base: &Path, first_kept: i64) {
    let (Some(dir), Some(stem)) = (base.parent(), base.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stem = stem.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        let Some(date) = name
            .strip_prefix(stem)
            .and_then(|rest| rest.strip_prefix(b"."))
            .and_then(parse_date)
        else {
            continue;
        };
        if date < first_kept {
            // Gone already (a sweeper of another day, an operator) is as good as removed.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `YYYY-MM-DD` to days since the epoch; anything else (another suffix, a compressed copy) is not a daily file.
fn parse_date(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?;
    let (y, md) = s.split_once('-')?;
    let (m, d) = md.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d);
    // Reject dates that do not exist (2026-02-30), which would otherwise alias another day.
    (super::civil_from_days(days) == (y, m, d)).then_some(days)
}

/// (year, month, day) to days since 1970-01-01, the inverse of `civil_from_days` (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Dir(PathBuf);
    impl Dir {
        fn new() -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "trestle-retention-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const DAY_2026_12_02: i64 = 20_789;

    #[test]
    fn dates_round_trip_and_impossible_ones_are_refused() {
        assert_eq!(super::super::civil_from_days(DAY_2026_12_02), (2026, 12, 2));
        for z in [-1, 0, 11_016, DAY_2026_12_02, 100_000] {
            let (y, m, d) = super::super::civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(parse_date(b"2026-12-02"), Some(DAY_2026_12_02));
        for bad in [
            &b"2026-02-30"[..],
            b"2026-13-01",
            b"26-12-02",
            b"2026-12-02.gz",
            b"2026-1-02",
            b"",
        ] {
            assert_eq!(parse_date(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn files_outside_the_window_go_and_others_stay() {
        let dir = Dir::new();
        let base = dir.0.join("trestle.log");
        for name in [
            "trestle.log.2026-10-03", // 60 days before 2026-12-02 is outside a 60-day window
            "trestle.log.2026-10-04", // the first day kept
            "trestle.log.2026-12-02",
            "trestle.log.2025-01-01",
            "trestle.log.2026-10-03.gz", // not a daily file: kept
            "other.log.2020-01-01",      // another base name: kept
            "trestle.logx.2020-01-01",
        ] {
            std::fs::write(dir.0.join(name), "x\n").unwrap();
        }
        sweep_once_a_day(&base, DAY_2026_12_02, 60);
        assert_eq!(
            dir.names(),
            [
                "other.log.2020-01-01",
                "trestle.log.2026-10-03.gz",
                "trestle.log.2026-10-04",
                "trestle.log.2026-12-02",
                "trestle.log.swept",
                "trestle.logx.2020-01-01",
            ]
        );
    }

    #[test]
    fn a_day_is_swept_once_and_zero_keeps_everything() {
        let dir = Dir::new();
        let base = dir.0.join("p.log");
        let old = dir.0.join("p.log.2000-01-01");
        std::fs::write(&old, "x\n").unwrap();
        sweep_once_a_day(&base, DAY_2026_12_02, 0);
        assert!(old.exists(), "max age 0 keeps everything");
        assert!(!marker_of(&base).exists(), "and claims nothing");
        sweep_once_a_day(&base, DAY_2026_12_02, 1);
        assert!(!old.exists());
        // The same day again: already swept, so a file that expired meanwhile stays until tomorrow's sweep.
        std::fs::write(&old, "x\n").unwrap();
        sweep_once_a_day(&base, DAY_2026_12_02, 1);
        assert!(old.exists());
        sweep_once_a_day(&base, DAY_2026_12_02 + 1, 1);
        assert!(!old.exists());
        assert_eq!(
            std::fs::read_to_string(marker_of(&base)).unwrap(),
            format!("{}\n", DAY_2026_12_02 + 1)
        );
    }

    #[test]
    fn a_sweep_in_progress_elsewhere_is_left_to_finish() {
        let dir = Dir::new();
        let base = dir.0.join("p.log");
        let old = dir.0.join("p.log.2000-01-01");
        std::fs::write(&old, "x\n").unwrap();
        // Another process holds the claim (flock is per open file description: a second open() contends with it).
        std::fs::write(marker_of(&base), "0\n").unwrap();
        let other = File::open(marker_of(&base)).unwrap();
        assert!(try_lock(&other));
        sweep_once_a_day(&base, DAY_2026_12_02, 1);
        assert!(old.exists(), "the sweep belongs to the claim's holder");
        drop(other);
        sweep_once_a_day(&base, DAY_2026_12_02, 1);
        assert!(!old.exists());
    }

    #[test]
    fn the_claim_is_released_while_a_copy_of_its_descriptor_lives_on() {
        // A child forked by another thread holds a copy of the descriptor until its exec: a dup stands for it.
        let dir = Dir::new();
        let path = dir.0.join("m");
        let claim = File::create(&path).unwrap();
        assert!(try_lock(&claim));
        let copy = claim.try_clone().unwrap();
        drop(Unlock(&claim));
        drop(claim);
        assert!(
            try_lock(&File::open(&path).unwrap()),
            "the copy kept the claim"
        );
        drop(copy);
    }

    #[test]
    fn concurrent_sweepers_remove_every_expired_file_exactly_once() {
        let dir = Dir::new();
        let base = dir.0.join("p.log");
        for day in 1..=200 {
            let (y, m, d) = super::super::civil_from_days(DAY_2026_12_02 - day);
            std::fs::write(dir.0.join(format!("p.log.{y:04}-{m:02}-{d:02}")), "x\n").unwrap();
        }
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| sweep_once_a_day(&base, DAY_2026_12_02, 60));
            }
        });
        // Days 1..=59 before today are inside the 60-day window (today is the 60th).
        let kept = dir
            .names()
            .iter()
            .filter(|n| n.starts_with("p.log.2"))
            .count();
        assert_eq!(kept, 59);
    }
}
