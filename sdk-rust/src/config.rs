//! Read-only access to the configuration the host gave this plugin (`config` permission).
//!
//! Values are JSON text, exactly as the host holds them; [`get_json`] / [`get_all_json`] parse
//! them with the SDK's [`json`](crate::json) module.

use crate::error::Result;
use crate::json::{self, Value};
use crate::sys;

/// The value of `key` as JSON text, or `None` when the configuration has no such key.
///
/// Errors: `denied` without the `config` permission.
pub fn get(key: &str) -> Result<Option<String>> {
    sys::config_get(key)
}

/// The whole configuration object as JSON text (`{}` when the host gave none).
///
/// Errors: `denied` without the `config` permission.
pub fn get_all() -> Result<String> {
    sys::config_get_all()
}

/// [`get`], parsed as JSON.
pub fn get_json(key: &str) -> Result<Option<Value>> {
    match get(key)? {
        Some(text) => Ok(Some(json::parse(&text)?)),
        None => Ok(None),
    }
}

/// [`get_all`], parsed as JSON.
pub fn get_all_json() -> Result<Value> {
    Ok(json::parse(&get_all()?)?)
}
