//! Cryptographically secure random bytes (`random` permission).

use crate::error::Result;
use crate::sys;

/// `n` random bytes from the host's CSPRNG.
///
/// Errors: `denied` without the `random` permission; `limit-reached` when `n` is larger than
/// the host serves in one call (1 MiB).
pub fn bytes(n: u32) -> Result<Vec<u8>> {
    sys::random_bytes(n)
}

/// `n` random bytes as lowercase hex (`2 * n` characters), e.g. for request ids.
pub fn hex(n: u32) -> Result<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * n as usize);
    for b in bytes(n)? {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    Ok(out)
}
