//! probe: hook `probe` calls every host service once and reports what each answered.
//!
//! Its manifest requests no permissions, so under a host that enforces them every service is
//! denied. Result (keys always in this order):
//!
//! ```json
//! {"log": "called", "config": "denied: ...", "kv": "denied: ...", "events": "denied: ...",
//!  "clock": "zero", "random": "denied: ...", "http": "denied: ..."}
//! ```
//!
//! Each value is `"ok"` or the error the service returned, as `"<kind>: <message>"`. `log` has
//! no result, so it reads `"called"`; `clock` has no error case (a denied clock reads as 0), so
//! it reads `"ok"` for a non-zero time and `"zero"` for 0. `kv` runs `get` then `set` and shows
//! the first error.
//!
//! Payload (optional): `{"only": ["kv", "http"], "http_url": "http://127.0.0.1:9/"}` limits the
//! probe to some services (the others are left out of the result) and picks the URL for http.

use plugbox_sdk::http::{self, Request};
use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{clock, config, events, hooks, kv, log, random, Error, Result};

const SERVICES: [&str; 7] = ["log", "config", "kv", "events", "clock", "random", "http"];

fn outcome(result: Result<()>) -> Value {
    match result {
        Ok(()) => Value::from("ok"),
        Err(e) => Value::from(e.to_string()),
    }
}

fn probe_one(service: &str, http_url: &str) -> Value {
    match service {
        "log" => {
            log::info("probe: log");
            Value::from("called")
        }
        "config" => outcome(config::get("probe").map(|_| ())),
        "kv" => outcome(kv::get("probe").and_then(|_| kv::set("probe", b"1"))),
        "events" => outcome(events::emit("probe.ping", b"{}")),
        "clock" => Value::from(if clock::now() != 0 { "ok" } else { "zero" }),
        "random" => outcome(random::bytes(16).map(|_| ())),
        "http" => outcome(http::fetch(&Request::get(http_url)).map(|_| ())),
        _ => Value::Null,
    }
}

fn probe(input: Value) -> Result<Value> {
    let http_url = input
        .optional_str("http_url")?
        .unwrap_or("http://127.0.0.1:9/");
    let only: Vec<&str> = match input.get("only") {
        None | Some(Value::Null) => SERVICES.to_vec(),
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) if SERVICES.contains(&s) => names.push(s),
                    _ => {
                        return Err(Error::invalid_input(format!(
                            "\"only\" lists unknown service {}; known: {}",
                            item,
                            SERVICES.join(", ")
                        )))
                    }
                }
            }
            names
        }
        Some(other) => {
            return Err(Error::invalid_input(format!(
                "field \"only\" must be an array, got {}",
                other.type_name()
            )))
        }
    };
    let mut report = json::Map::new();
    for service in SERVICES.iter().filter(|s| only.contains(s)) {
        report.insert(*service, probe_one(service, http_url));
    }
    Ok(Value::Object(report))
}

hooks! {
    "probe" => json::handler(probe),
}
