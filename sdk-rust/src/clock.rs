//! Clocks (`clock` permission). Both read as 0 when the permission is not granted.

use crate::sys;

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now() -> u64 {
    sys::clock_now()
}

/// Monotonic time in nanoseconds from an arbitrary origin: use it to measure durations.
pub fn monotonic() -> u64 {
    sys::clock_monotonic()
}
