//! A plugin for a Flask application served through `plugbox.integrations.flask`
//! (docs/flask.md): a before_request hook, a template filter, two routes (JSON and a page
//! rendered from its own template) and a CLI command. Imports no host service.

use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{hooks, Error, Result};

/// `flask.before_request`: refuse `/blocked` with 403, annotate every other request with
/// the length of its path (templates read it as `plugins.web_greeter.path_length`).
fn before(request: Value) -> Result<Value> {
    let path = request.require_str("path")?;
    if path == "/blocked" {
        let respond = Value::object([("status", Value::from(403)),
                                     ("text", Value::from("blocked by web-greeter"))]);
        return Ok(Value::object([("respond", respond)]));
    }
    let annotate = Value::object([("path_length", path.chars().count())]);
    Ok(Value::object([("annotate", annotate)]))
}

/// `flask.template_filter` `shout`: upper-cases the value (the host escapes the result).
fn filter(input: Value) -> Result<Value> {
    match input.require_str("name")? {
        "shout" => Ok(Value::object([("value", input.require_str("value")?.to_uppercase())])),
        other => Err(Error::not_found(format!("no filter {}", other))),
    }
}

/// `flask.route`: `hello` greets `params.name` as JSON, `page` renders `greet.html`.
fn route(request: Value) -> Result<Value> {
    let name = request
        .get("params")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("world")
        .to_string();
    let user = request.get("user").and_then(|u| u.as_str()).unwrap_or("anonymous").to_string();
    match request.require_str("route")? {
        "hello" => {
            let body = Value::object([("greeting", format!("hello, {}", name)),
                                      ("user", user)]);
            Ok(Value::object([("json", body)]))
        }
        "page" => {
            let context = Value::object([("name", name)]);
            Ok(Value::object([("template", Value::from("greet.html")),
                              ("context", context)]))
        }
        other => Err(Error::not_found(format!("no route {}", other))),
    }
}

/// `flask.command` `greet`: prints one greeting per argument; exit code 2 without any.
fn command(input: Value) -> Result<Value> {
    let argv: Vec<String> = input
        .get("argv")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if argv.is_empty() {
        return Ok(Value::object([("stderr", Value::from("usage: greet NAME...\n")),
                                 ("exit_code", Value::from(2))]));
    }
    let out: String = argv.iter().map(|n| format!("hello, {}\n", n)).collect();
    Ok(Value::object([("stdout", Value::from(out)), ("exit_code", Value::from(0))]))
}

hooks! {
    "before" => json::handler(before),
    "filter" => json::handler(filter),
    "route" => json::handler(route),
    "command" => json::handler(command),
}
