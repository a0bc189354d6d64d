//! Key-value storage private to this plugin, persisted by the host (`kv` permission).
//!
//! Keys are non-empty UTF-8 strings of at most 256 bytes; values are bytes. The host enforces
//! the quotas the manifest requests (`quota_bytes` over keys + values, `quota_keys`).
//!
//! Errors of every function: `denied` without the `kv` permission; `invalid-input` for an empty
//! or over-long key; `failure` when the host's store fails.

use crate::error::Result;
use crate::hostcalls;

/// The value stored under `key`, or `None`.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    hostcalls::kv_get(key)
}

/// Stores `value` under `key`, replacing any old value.
///
/// Extra error: `limit-reached` when this would exceed the byte or key quota, or the value is
/// over 1 MiB (nothing is written then).
pub fn set(key: &str, value: &[u8]) -> Result<()> {
    hostcalls::kv_set(key, value)
}

/// Removes `key`; returns true when it existed.
pub fn delete(key: &str) -> Result<bool> {
    hostcalls::kv_delete(key)
}

/// The keys that start with `prefix` (all keys for `""`), in byte order; at most 10 000.
///
/// (The empty prefix is allowed here even though the empty key is not.)
pub fn list_keys(prefix: &str) -> Result<Vec<String>> {
    hostcalls::kv_list_keys(prefix)
}
