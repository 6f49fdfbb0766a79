//! Clock readings.

use crate::state::Now;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Both clocks, read once per operation.
pub fn now() -> Now {
    Now {
        boot_ns: trestle_ipam_core::boottime_ns(),
        unix_ms: unix_ms(),
    }
}
