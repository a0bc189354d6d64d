//! Calls into the host application (ABI 1.1): host functions and extension points.
//!
//! ```ignore
//! use plugbox_sdk::host;
//! let battles = host::call_json("battles.query", &Value::object([("limit", 10)]))?;
//! let report = host::dispatch("report.section", br#"{"title": "x"}"#)?;
//! ```
//!
//! A plugin calls the host functions its manifest lists in `permissions.functions`, and
//! dispatches the extension points in `permissions.dispatch` or its own `extension_points`.
//! Using this module makes the plugin an ABI 1.1 plugin: write `hooks! { abi: "1.1", ... }` and
//! set `"abi": "1.1"` in `plugbox.json`.
//!
//! Errors: `denied` when the name is not granted (or the host has no such function);
//! `invalid-input` for an empty name or one over 256 bytes; `limit-reached` for a payload over
//! 1 MiB; otherwise whatever the host function returns (`failure` when it fails).

use crate::error::{Error, Result};
use crate::json::{self, Value};
use crate::sys;

/// Calls host function `name` with `payload`; its result bytes.
pub fn call(name: &str, payload: &[u8]) -> Result<Vec<u8>> {
    sys::host_call(name, payload)
}

/// Calls a JSON host function: `payload` serialised, the result parsed.
pub fn call_json(name: &str, payload: &Value) -> Result<Value> {
    let out = sys::host_call(name, &payload.to_vec())?;
    json::parse_bytes(&out).map_err(|e| {
        Error::failure(format!("host function {:?} returned invalid JSON: {}", name, e))
    })
}

/// Dispatches extension point `point` through the host; the dispatch result as JSON bytes:
/// `{"point", "mode", "value", "results": [{"plugin", "value"}], "failures": [{"plugin",
/// "error", "kind"}]}`.
pub fn dispatch(point: &str, payload: &[u8]) -> Result<Vec<u8>> {
    sys::host_dispatch(point, payload)
}

/// Dispatches `point` with a JSON payload; the dispatch result parsed.
pub fn dispatch_json(point: &str, payload: &Value) -> Result<Value> {
    let out = sys::host_dispatch(point, &payload.to_vec())?;
    json::parse_bytes(&out).map_err(|e| {
        Error::failure(format!("dispatching {:?} returned invalid JSON: {}", point, e))
    })
}
