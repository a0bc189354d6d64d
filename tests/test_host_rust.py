"""A Rust plugin built from source with the SDK (``plugbox_sdk::host``): it calls a host
function and dispatches an extension point it declares, which a second copy of it implements
-- "plugin B extends plugin A" end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from tests.conftest import build_rust_crate
from tests.test_host_core import stage

LIB_RS = r'''
//! Test plugin for the PluginHost. Hook `report`: looks the battle up with the host function
//! `battles.query`, dispatches the point `report.section` with it and returns the battle and
//! the section titles. Hook `section`: a report section naming the winner.

use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{hooks, host, Result};

fn report(input: Value) -> Result<Value> {
    let id = input.require_i64("battle")?;
    let battle = host::call_json("battles.query", &Value::object([("id", Value::from(id))]))?;
    let dispatch = host::dispatch_json("report.section", &battle)?;
    let mut titles = Vec::new();
    if let Some(results) = dispatch.get("results").and_then(|r| r.as_array()) {
        for result in results {
            if let Some(title) = result.get("value").and_then(|v| v.get("title")) {
                titles.push(title.clone());
            }
        }
    }
    let failures = dispatch.get("failures").cloned().unwrap_or(Value::Null);
    Ok(Value::object([
        ("battle", battle),
        ("titles", Value::array(titles)),
        ("failures", failures),
    ]))
}

fn section(battle: Value) -> Result<Value> {
    let winner = battle.require_str("winner")?;
    Ok(Value::object([("title", Value::from(format!("Winner: {}", winner)))]))
}

hooks! {
    abi: "1.1",
    "report" => json::handler(report),
    "section" => json::handler(section),
}
'''

@pytest.fixture(scope="session")
def battle_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The battle-report plugin, built from source with cargo; its staged directory."""
    return build_rust_crate(tmp_path_factory, "battle-report", LIB_RS, ["report", "section"],
                            abi="1.1")


BATTLES = {3: {"id": 3, "winner": "blue", "turns": 12}}


def test_a_rust_plugin_calls_a_host_function_and_dispatches_its_own_point(
        host: plugbox.PluginHost, battle_report: Path, tmp_path: Path) -> None:
    asked: list[tuple[Any, str]] = []

    def query(value: Any, plugin: str) -> Any:
        asked.append((value, plugin))
        return BATTLES[value["id"]]

    host.function("battles.query", query, input_schema={
        "type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}})
    host.extension_point("battle.report", version="1.0.0", mode="first",
                         failure="propagate")
    host.add(stage(battle_report, tmp_path / "a", "reporter",
                   implements={"battle.report": {"hook": "report"}},
                   extension_points={"report.section": {
                       "version": "1.0.0",
                       "output_schema": {"type": "object", "required": ["title"]}}},
                   permissions={"functions": ["battles.query"]}))
    host.add(stage(battle_report, tmp_path / "b", "winner-section",
                   implements={"report.section": {"hook": "section", "versions": "~=1.0"}},
                   # the same module, so it imports the host interface too
                   permissions={"functions": ["battles.query"]}))
    res = host.call("battle.report", {"battle": 3})
    assert res.value == {"battle": BATTLES[3], "titles": ["Winner: blue"], "failures": []}
    assert asked == [({"id": 3}, "reporter")]


def test_the_rust_guest_sees_a_failing_host_function_as_its_error(
        host: plugbox.PluginHost, battle_report: Path, tmp_path: Path) -> None:
    host.function("battles.query", lambda value: BATTLES[value["id"]])  # KeyError for 4
    host.extension_point("battle.report", version="1.0.0", mode="first")
    host.add(stage(battle_report, tmp_path / "a", "reporter",
                   implements={"battle.report": {"hook": "report"}},
                   extension_points={"report.section": {"version": "1.0.0"}},
                   permissions={"functions": ["battles.query"]}))
    (failure,) = host.call("battle.report", {"battle": 4}).failures
    assert isinstance(failure.error, plugbox.GuestError)
    assert failure.error.kind == "failure" and "battles.query" in failure.error.detail
