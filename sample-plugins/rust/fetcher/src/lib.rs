//! fetcher: hook `fetch` makes one HTTP request on the plugin's behalf.
//!
//! Payload: `{"url": "http://127.0.0.1:8080/x", "method": "GET", "body": "..."}` (`method`
//! defaults to GET, `body` to empty). The request carries the header `x-request-id` with a fresh
//! random id.
//! Result: `{"status": 200, "body": "<response body as text>", "request_id": "<16 hex digits>"}`
//! (a body that is not UTF-8 is decoded lossily). Any status, 4xx and 5xx included, is a
//! result; only a refused or failed request is an error (`denied`, `invalid-input`,
//! `limit-reached` or `failure`, straight from the host).
//!
//! Services: `http`, `random` (request id), `clock` (monotonic, to time the request), `log`.

use plugbox_sdk::http::{self, Request};
use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{clock, hooks, log, random, Result};

fn fetch(input: Value) -> Result<Value> {
    let url = input.require_str("url")?;
    let method = input.optional_str("method")?.unwrap_or("GET");
    let body = input.optional_str("body")?.unwrap_or("");
    let request_id = random::hex(8)?;

    let request = Request::new(method, url)
        .header("x-request-id", &request_id)
        .body(body.as_bytes());
    let started = clock::monotonic();
    let response = match http::fetch(&request) {
        Ok(r) => r,
        Err(e) => {
            log::warn(&format!(
                "{} {} failed: {} (request {})",
                request.method, url, e, request_id
            ));
            return Err(e);
        }
    };
    let elapsed_ms = clock::monotonic().saturating_sub(started) / 1_000_000;
    log::info(&format!(
        "{} {} -> {} ({} bytes in {} ms, request {})",
        request.method,
        url,
        response.status,
        response.body.len(),
        elapsed_ms,
        request_id
    ));
    Ok(Value::object([
        ("status", Value::from(response.status)),
        (
            "body",
            Value::from(String::from_utf8_lossy(&response.body).into_owned()),
        ),
        ("request_id", Value::from(request_id)),
    ]))
}

hooks! {
    "fetch" => json::handler(fetch),
}
