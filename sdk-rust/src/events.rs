//! Events delivered to the host's subscribers (`events` permission).

use crate::error::Result;
use crate::sys;

/// Emits `payload` on `topic`.
///
/// Errors: `denied` without the `events` permission or when `topic` matches none of the granted
/// topic patterns; `invalid-input` for an empty topic or one over 256 characters;
/// `limit-reached` for a payload over 1 MiB.
pub fn emit(topic: &str, payload: &[u8]) -> Result<()> {
    sys::events_emit(topic, payload)
}
