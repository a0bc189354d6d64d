//! Logging into the host's per-plugin logger (`log` permission).
//!
//! Logging never fails from the plugin's point of view: the host truncates over-long messages,
//! drops records over its rate limit, and (if `log` is not granted) ignores the record, counting
//! the denial.

use crate::sys;

/// Severity of a record (the WIT enum `level`; the discriminant is what crosses the ABI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    /// Very detailed tracing.
    Trace = 0,
    /// Debugging detail.
    Debug = 1,
    /// Normal operation.
    Info = 2,
    /// Something unexpected, but the plugin carries on.
    Warn = 3,
    /// Something failed.
    Error = 4,
}

/// Writes one record at `level`.
pub fn log(level: Level, message: &str) {
    sys::log(level, message)
}

/// Writes one record at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Writes one record at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Writes one record at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Writes one record at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Writes one record at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message)
}
