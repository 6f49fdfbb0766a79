//! Clock readings.

use crate::state::Now;

pub use trestle_ipam_core::unix_ms;

/// Both clocks, read once per operation.
pub fn now() -> Now {
    Now {
        boot_ns: trestle_ipam_core::boottime_ns(),
        unix_ms: unix_ms(),
    }
}
