//! Health reports (the `plugbox.health` hook, abi/README.md §4).
//!
//! A plugin that declares the hook `plugbox.health` in its manifest tells the host how it is
//! doing; the host runs the hook on a schedule, after on-init and as the last gate of an
//! upgrade (a `failing` report rolls the upgrade back). Register it with [`handler`]:
//!
//! ```ignore
//! use plugbox_sdk::{health, hooks};
//!
//! fn check() -> health::Report {
//!     health::Report::degraded().detail("queue", 7)
//! }
//!
//! hooks! {
//!     "plugbox.health" => health::handler(check), // the name is health::HOOK
//!     // ... the plugin's other hooks
//! }
//! ```
//!
//! The report travels as `{"status": "ok" | "degraded" | "failing", "details": {...}}`.

use crate::error::Result;
use crate::json::Value;

/// The hook name the host calls for a health check.
pub const HOOK: &str = "plugbox.health";

/// How the plugin is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Working normally.
    Ok,
    /// Working, but not fully (a slow dependency, a fallback in use); it keeps serving.
    Degraded,
    /// Not working: the host treats the plugin as failed (and rolls back an upgrade to it).
    Failing,
}

impl Status {
    /// The status's name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Failing => "failing",
        }
    }
}

/// A health report: a [`Status`] and details (a JSON object).
#[derive(Clone, Debug)]
pub struct Report {
    /// The status.
    pub status: Status,
    /// Details for the operator (shown by `plugbox plugins health` and the UI).
    pub details: Value,
}

impl Report {
    /// A report with `status` and no details.
    pub fn new(status: Status) -> Self {
        Report {
            status,
            details: Value::object(Vec::<(String, Value)>::new()),
        }
    }

    /// `ok`.
    pub fn ok() -> Self {
        Report::new(Status::Ok)
    }

    /// `degraded`.
    pub fn degraded() -> Self {
        Report::new(Status::Degraded)
    }

    /// `failing`.
    pub fn failing() -> Self {
        Report::new(Status::Failing)
    }

    /// The report with `details[key] = value`.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key, value);
        self
    }

    /// The report as the JSON the host reads.
    pub fn to_value(&self) -> Value {
        Value::object([
            ("status", Value::from(self.status.as_str())),
            ("details", self.details.clone()),
        ])
    }
}

/// The hook handler for [`HOOK`]: runs `check` and sends its report.
pub fn handler<F>(check: F) -> impl Fn(Vec<u8>) -> Result<Vec<u8>>
where
    F: Fn() -> Report,
{
    move |_payload: Vec<u8>| Ok(check().to_value().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json() {
        let report = Report::degraded().detail("queue", 7);
        assert_eq!(
            String::from_utf8(report.to_value().to_vec()).unwrap(),
            r#"{"status":"degraded","details":{"queue":7}}"#
        );
        let out = handler(Report::ok)(Vec::new()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"status":"ok","details":{}}"#
        );
    }
}
