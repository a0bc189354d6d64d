//! bench-hooks: hooks that exist only to measure the runtime (bench/run.py).
//!
//! * `echo`: returns its payload (same as the sample echo plugin).
//! * `host-calls`: payload is a decimal N; calls `clock::monotonic()` N times (N guest->host
//!   calls) and returns the wrapping sum of the readings as 8 little-endian bytes, so the
//!   calls cannot be dropped.
//! * `spin`: payload is a decimal N; runs N rounds of xorshift64 arithmetic (pure CPU, no host
//!   calls, no memory traffic) and returns the final state as 8 little-endian bytes.

use plugbox_sdk::{clock, hooks, Error, Result};

fn parse_n(payload: &[u8]) -> Result<u64> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Error::invalid_input("payload must be a decimal number".to_string()))?;
    text.trim()
        .parse::<u64>()
        .map_err(|_| Error::invalid_input(format!("payload must be a decimal number, got {:?}", text)))
}

fn echo(payload: Vec<u8>) -> Result<Vec<u8>> {
    Ok(payload)
}

fn host_calls(payload: Vec<u8>) -> Result<Vec<u8>> {
    let n = parse_n(&payload)?;
    let mut acc: u64 = 0;
    for _ in 0..n {
        acc = acc.wrapping_add(clock::monotonic());
    }
    Ok(acc.to_le_bytes().to_vec())
}

fn spin(payload: Vec<u8>) -> Result<Vec<u8>> {
    let n = parse_n(&payload)?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ n;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    Ok(x.to_le_bytes().to_vec())
}

hooks! {
    "echo" => echo,
    "host-calls" => host_calls,
    "spin" => spin,
}
