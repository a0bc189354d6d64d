//! abi11-rust-caller: the ABI 1.1 interfaces from Rust, for tests/test_sdk_abi11.py; the same
//! hooks as tests/abi11/python/caller/app.py.

use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{hooks, host, kv, Error, Result};

fn split(payload: &[u8]) -> Result<(&str, &[u8])> {
    let at = payload.iter().position(|b| *b == 0).unwrap_or(payload.len());
    let name = std::str::from_utf8(&payload[..at])?;
    Ok((name, payload.get(at + 1..).unwrap_or(&[])))
}

fn call(payload: Vec<u8>) -> Result<Vec<u8>> {
    let (name, body) = split(&payload)?;
    host::call(name, body)
}

fn dispatch(payload: Vec<u8>) -> Result<Vec<u8>> {
    let (point, body) = split(&payload)?;
    host::dispatch(point, body)
}

fn call_json(input: Value) -> Result<Value> {
    host::call_json(input.require_str("name")?, &input["value"])
}

fn incr(input: Value) -> Result<Value> {
    let by = input.optional_i64("by")?.unwrap_or(1);
    let value = kv::increment(input.require_str("key")?, by)?;
    Ok(Value::object([("value", Value::from(value))]))
}

fn cas(input: Value) -> Result<Value> {
    let expected = match &input["expected"] {
        Value::Null => None,
        v => Some(
            v.as_str()
                .ok_or_else(|| Error::invalid_input("expected must be a string or null"))?
                .as_bytes(),
        ),
    };
    let new = input.require_str("new")?;
    let swapped = kv::compare_and_set(input.require_str("key")?, expected, new.as_bytes())?;
    Ok(Value::object([("swapped", Value::from(swapped))]))
}

hooks! {
    abi: "1.1",
    "call" => call,
    "dispatch" => dispatch,
    "call.json" => json::handler(call_json),
    "incr" => json::handler(incr),
    "cas" => json::handler(cas),
}
