//! word-stats: hook `text.stats` counts the words of a text.
//!
//! Payload: `{"text": "...", "top_n": 2}` (`top_n` optional, overrides the config).
//! Result:  `{"words": 9, "unique_words": 7, "top": [{"word": "the", "count": 3}, ...]}`
//!
//! A word is a run of letters, digits and apostrophes, compared case-insensitively (lower-cased
//! in the output); apostrophes at either end are dropped. `top` lists the `top_n` most frequent
//! words, most frequent first, ties in alphabetical order, so the output is deterministic.
//!
//! Config: `top_n` (integer >= 1, default 3). Services: `log`, `config`.

use std::collections::BTreeMap;

use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{config, hooks, log, Error, Result};

const DEFAULT_TOP_N: i64 = 3;
const MAX_TOP_N: i64 = 1000;

fn check_top_n(v: &Value, origin: &str) -> Result<i64> {
    match v.as_i64() {
        Some(n) if (1..=MAX_TOP_N).contains(&n) => Ok(n),
        _ => Err(Error::invalid_input(format!(
            "{} top_n must be an integer from 1 to {}, got {}",
            origin, MAX_TOP_N, v
        ))),
    }
}

/// Rejects a bad `top_n` at load time rather than at the first call.
fn init(config_text: &str) -> Result<()> {
    let cfg = json::parse(config_text)?;
    if let Some(v) = cfg.get("top_n") {
        check_top_n(v, "config")?;
    }
    Ok(())
}

fn configured_top_n() -> Result<i64> {
    match config::get_json("top_n")? {
        Some(v) => check_top_n(&v, "config"),
        None => Ok(DEFAULT_TOP_N),
    }
}

/// The words of `text`, lower-cased.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

fn stats(input: Value) -> Result<Value> {
    let text = input.require_str("text")?;
    let top_n = match input.get("top_n") {
        Some(v) if !v.is_null() => check_top_n(v, "payload")?,
        _ => configured_top_n()?,
    };

    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut total: i64 = 0;
    for word in words(text) {
        *counts.entry(word).or_insert(0) += 1;
        total += 1;
    }
    let mut ranked: Vec<(&String, &i64)> = counts.iter().collect();
    // Most frequent first; BTreeMap order (alphabetical) breaks ties since the sort is stable.
    ranked.sort_by(|a, b| b.1.cmp(a.1));
    let top: Vec<Value> = ranked
        .into_iter()
        .take(top_n as usize)
        .map(|(word, count)| {
            Value::object([("word", Value::from(word)), ("count", Value::from(*count))])
        })
        .collect();

    log::debug(&format!(
        "text.stats: {} words, {} unique",
        total,
        counts.len()
    ));
    Ok(Value::object([
        ("words", Value::from(total)),
        ("unique_words", Value::from(counts.len())),
        ("top", Value::from(top)),
    ]))
}

hooks! {
    init: init,
    "text.stats" => json::handler(stats),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words() {
        let w: Vec<String> = words("Don't stop -- the 'quoted' THE, the!").collect();
        assert_eq!(w, ["don't", "stop", "the", "quoted", "the", "the"]);
    }
}
