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
//! Storage: key `counter/<name>`, value `{"value": n, "updated_at": ns}`.
//! Services: `kv` (get, set, delete, list-keys), `events`, `clock`.

use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{clock, events, hooks, kv, Error, Result};

const PREFIX: &str = "counter/";
const MAX_NAME_BYTES: usize = 128;
const TOPIC: &str = "counter.changed";

struct Counter {
    value: i64,
    updated_at: Option<u64>,
}

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

fn load(name: &str) -> Result<Counter> {
    match kv::get(&format!("{}{}", PREFIX, name))? {
        None => Ok(Counter {
            value: 0,
            updated_at: None,
        }),
        Some(bytes) => {
            let stored = json::parse_bytes(&bytes)
                .map_err(|e| Error::failure(format!("counter {:?} is corrupt: {}", name, e)))?;
            Ok(Counter {
                value: stored["value"].as_i64().unwrap_or(0),
                updated_at: stored["updated_at"].as_u64(),
            })
        }
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
    let previous = load(name)?.value;
    let value = previous
        .checked_add(by)
        .ok_or_else(|| Error::invalid_input(format!("counter {:?} would overflow", name)))?;
    let stored = Value::object([
        ("value", Value::from(value)),
        ("updated_at", Value::from(clock::now())),
    ]);
    kv::set(&format!("{}{}", PREFIX, name), &stored.to_vec())?;
    changed(name, value, previous)?;
    Ok(Value::object([
        ("name", Value::from(name)),
        ("value", Value::from(value)),
        ("previous", Value::from(previous)),
    ]))
}

fn get(input: Value) -> Result<Value> {
    let name = name_of(&input)?;
    let counter = load(name)?;
    Ok(Value::object([
        ("name", Value::from(name)),
        ("value", Value::from(counter.value)),
        ("updated_at", Value::from(counter.updated_at)),
    ]))
}

fn list(_input: Value) -> Result<Value> {
    let mut counters = json::Map::new();
    for key in kv::list_keys(PREFIX)? {
        if let Some(name) = key.strip_prefix(PREFIX) {
            counters.insert(name, load(name)?.value);
        }
    }
    Ok(Value::object([("counters", counters)]))
}

fn reset(input: Value) -> Result<Value> {
    let name = name_of(&input)?;
    let previous = load(name)?.value;
    let existed = kv::delete(&format!("{}{}", PREFIX, name))?;
    if existed {
        changed(name, 0, previous)?;
    }
    Ok(Value::object([
        ("name", Value::from(name)),
        ("existed", Value::from(existed)),
    ]))
}

hooks! {
    "counter.incr" => json::handler(incr),
    "counter.get" => json::handler(get),
    "counter.list" => json::handler(list),
    "counter.reset" => json::handler(reset),
}
