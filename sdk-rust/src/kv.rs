//! Key-value storage private to this plugin, persisted by the host (`kv` permission).
//!
//! Keys are non-empty UTF-8 strings of at most 256 bytes; values are bytes. The host enforces
//! the quotas the manifest requests (`quota_bytes` over keys + values, `quota_keys`).
//!
//! Errors of every function: `denied` without the `kv` permission; `invalid-input` for an empty
//! or over-long key; `failure` when the host's store fails.
//!
//! [`increment`] and [`compare_and_set`] are atomic (ABI 1.1): use them for anything several
//! instances update at once. `get` then `set` is not: two instances can read the same value and
//! both write it back, losing one update.

use crate::error::Result;
use crate::sys;

/// The value stored under `key`, or `None`.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    sys::kv_get(key)
}

/// Stores `value` under `key`, replacing any old value.
///
/// Extra error: `limit-reached` when this would exceed the byte or key quota, or the value is
/// over 1 MiB (nothing is written then).
pub fn set(key: &str, value: &[u8]) -> Result<()> {
    sys::kv_set(key, value)
}

/// Removes `key`; returns true when it existed.
pub fn delete(key: &str) -> Result<bool> {
    sys::kv_delete(key)
}

/// The keys that start with `prefix` (all keys for `""`), in byte order; at most 10 000.
///
/// (The empty prefix is allowed here even though the empty key is not.)
pub fn list_keys(prefix: &str) -> Result<Vec<String>> {
    sys::kv_list_keys(prefix)
}

/// Atomically adds `delta` to the counter under `key` and returns the new value (ABI 1.1).
///
/// The counter is a signed 64-bit integer stored as 8 bytes, little-endian; an absent key
/// counts as 0. Extra errors: `invalid-input` when the stored value is not 8 bytes or the sum
/// leaves the `i64` range; `limit-reached` when creating the key exceeds a quota.
pub fn increment(key: &str, delta: i64) -> Result<i64> {
    sys::kv_increment(key, delta)
}

/// Atomically stores `new` under `key` if its current value is `expected` (`None`: the key is
/// absent); returns whether it did (ABI 1.1).
///
/// Read the value, compute the new one, and retry while this returns `false`, to update a
/// value no other instance may change in between. Extra error: `limit-reached` as for [`set`].
pub fn compare_and_set(key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool> {
    sys::kv_compare_and_set(key, expected, new)
}
