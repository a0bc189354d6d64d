//! Events delivered to the host's subscribers (`events` permission).

use crate::error::Result;
use crate::hostcalls;

/// Emits `payload` on `topic`.
///
/// Errors: `denied` without the `events` permission or when `topic` matches none of the granted
/// topic patterns; `invalid-input` for an empty topic; `limit-reached` when the payload is too
/// large or the host's event rate limit is reached.
pub fn emit(topic: &str, payload: &[u8]) -> Result<()> {
    hostcalls::events_emit(topic, payload)
}
