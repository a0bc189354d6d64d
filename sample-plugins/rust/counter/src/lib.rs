//! counter: named counters kept in the plugin's key-value store.
//!
//! | hook            | payload                        | result                                            |
//! |-----------------|--------------------------------|---------------------------------------------------|
//! | `counter.incr`  | `{"name": "hits", "by": 2}`    | `{"name": "hits", "value": 2, "previous": 0}`     |
//! | `counter.get`   | `{"name": "hits"}`             | `{"name": "hits", "value": 2, "updated_at": ns}`  |
//! | `counter.list`  | `{}` or nothing                | `{"counters": {"hits": 2, ...}}` (sorted by name) |
//! | `counter.reset` | `{"name": "hits"}`             | `{"name": "hits", "existed": true}`               |
//!
//! `by` is optional (default 1) and may be negative. A missing counter reads as value 0 with
//! `updated_at` null. Every change emits the event `counter.changed` with
//! `{"name", "value", "previous"}` (value 0 after a reset); `updated_at` is the wall clock
//! (ns since the epoch) of the last change.
//!
//! Counting uses `kv::increment` (ABI 1.1), which the host applies atomically: with several
//! instances incrementing one counter at once, no increment is lost. The 1.0 version read the
//! value with `kv::get` and wrote it back with `kv::set`; two instances could read the same
//! value, and 4 instances x 10,000 increments on one key ended 24,428 short.
//!
//! Storage: key `count/<name>` holds the value (8 bytes, little-endian, as `kv::increment`
//! keeps it), key `updated/<name>` the time of the last change (decimal ns).
//! Services: `kv` (increment, get, set, delete, list-keys), `events`, `clock`.

use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{clock, events, hooks, kv, Error, Result};

const COUNT: &str = "count/";
const UPDATED: &str = "updated/";
const MAX_NAME_BYTES: usize = 128;
const TOPIC: &str = "counter.changed";

fn name_of(input: &Value) -> Result<&str> {
    let name = input.require_str("name")?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid_input(format!(
            "field \"name\" must have 1 to {} bytes",
            MAX_NAME_BYTES
        )));
    }
    Ok(name)
}

fn value_of(name: &str) -> Result<i64> {
    match kv::get(&format!("{}{}", COUNT, name))? {
        None => Ok(0),
        Some(bytes) if bytes.len() == 8 => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes);
            Ok(i64::from_le_bytes(raw))
        }
        Some(_) => Err(Error::failure(format!("counter {:?} is corrupt", name))),
    }
}

fn updated_at(name: &str) -> Result<Option<u64>> {
    match kv::get(&format!("{}{}", UPDATED, name))? {
        None => Ok(None),
        Some(bytes) => Ok(std::str::from_utf8(&bytes)?.parse().ok()),
    }
}

fn changed(name: &str, value: i64, previous: i64) -> Result<()> {
    let event = Value::object([
        ("name", Value::from(name)),
        ("value", Value::from(value)),
        ("previous", Value::from(previous)),
    ]);
    events::emit(TOPIC, &event.to_vec())
}

fn incr(input: Value) -> Result<Value> {
    let name = name_of(&input)?;
    let by = input.optional_i64("by")?.unwrap_or(1);
    // One atomic step on the host: read, add and write cannot interleave with another
    // instance's increment of the same counter.
    let value = kv::increment(&format!("{}{}", COUNT, name), by).map_err(|e| match e {
        Error::InvalidInput(_) => Error::invalid_input(format!("counter {:?} would overflow", name)),
        other => other,
    })?;
    let previous = value - by; // cannot overflow: the host checked value = previous + by
    kv::set(
        &format!("{}{}", UPDATED, name),
        clock::now().to_string().as_bytes(),
    )?;
    changed(name, value, previous)?;
    Ok(Value::object([
        ("name", Value::from(name)),
        ("value", Value::from(value)),
        ("previous", Value::from(previous)),
    ]))
}

fn get(input: Value) -> Result<Value> {
    let name = name_of(&input)?;
    Ok(Value::object([
        ("name", Value::from(name)),
        ("value", Value::from(value_of(name)?)),
        ("updated_at", Value::from(updated_at(name)?)),
    ]))
}

fn list(_input: Value) -> Result<Value> {
    let mut counters = json::Map::new();
    for key in kv::list_keys(COUNT)? {
        if let Some(name) = key.strip_prefix(COUNT) {
            counters.insert(name, value_of(name)?);
        }
    }
    Ok(Value::object([("counters", counters)]))
}

fn reset(input: Value) -> Result<Value> {
    let name = name_of(&input)?;
    let previous = value_of(name)?;
    let existed = kv::delete(&format!("{}{}", COUNT, name))?;
    kv::delete(&format!("{}{}", UPDATED, name))?;
    if existed {
        changed(name, 0, previous)?;
    }
    Ok(Value::object([
        ("name", Value::from(name)),
        ("existed", Value::from(existed)),
    ]))
}

hooks! {
    abi: "1.1",
    "counter.incr" => json::handler(incr),
    "counter.get" => json::handler(get),
    "counter.list" => json::handler(list),
    "counter.reset" => json::handler(reset),
}

// Native tests (`cargo test`): the hooks called as the host calls them, against the SDK's fake
// host, which grants what plugbox.json requests. (Kept at the end of the file: code above
// keeps its line numbers, so the wasm module and its pinned sha256 do not change.)
#[cfg(test)]
mod tests {
    use super::*;
    use plugbox_sdk::testing::Harness;

    fn named(name: &str) -> Value {
        Value::object([("name", name)])
    }

    #[test]
    fn incr_get_list_reset() {
        let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR"))
            .start()
            .unwrap();
        let hits = Value::object([("name", Value::from("hits")), ("by", Value::from(2))]);
        let out = plugin.call_json("counter.incr", &hits).unwrap();
        assert_eq!(
            (out["value"].as_i64(), out["previous"].as_i64()),
            (Some(2), Some(0))
        );
        plugin.call_json("counter.incr", &named("hits")).unwrap();
        let got = plugin.call_json("counter.get", &named("hits")).unwrap();
        assert_eq!(got["value"].as_i64(), Some(3));
        assert!(got["updated_at"].as_u64().unwrap() > 0, "clock is granted");
        let listed = plugin.call_json("counter.list", &Value::Null).unwrap();
        assert_eq!(listed["counters"].to_json(), r#"{"hits":3}"#);
        assert_eq!(
            plugin.kv_get("count/hits"),
            Some(3i64.to_le_bytes().to_vec())
        );

        let reset = plugin.call_json("counter.reset", &named("hits")).unwrap();
        assert_eq!(reset["existed"].as_bool(), Some(true));
        let events = plugin.events();
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.topic == TOPIC));
        assert_eq!(
            events[2].json().unwrap().to_json(),
            r#"{"name":"hits","value":0,"previous":3}"#
        );
    }

    #[test]
    fn quota_and_permissions_are_the_manifests() {
        let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR"))
            .withhold("events")
            .start()
            .unwrap();
        let err = plugin
            .call_json("counter.incr", &named("hits"))
            .unwrap_err();
        assert_eq!(
            err,
            Error::denied(
                "events: permission not granted; add \"events\" to permissions in plugbox.json"
            )
        );
        // quota_keys is 200 and each counter takes two keys (count/ and updated/).
        let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR"))
            .start()
            .unwrap();
        for i in 0..100 {
            plugin
                .call_json("counter.incr", &named(&format!("c{}", i)))
                .unwrap();
        }
        let err = plugin
            .call_json("counter.incr", &named("one-too-many"))
            .unwrap_err();
        assert_eq!(err.kind(), "limit-reached");
        assert!(
            err.message().starts_with("kv: quota of 200 keys reached"),
            "{}",
            err
        );
    }
}
