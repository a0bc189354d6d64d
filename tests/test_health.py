"""Plugin health checks (issue 10 §3): the ``plugbox.health`` hook, read by the host on
demand and on a schedule, from WAT plugins, a Rust plugin built from source with the SDK's
``health`` module, and the Python SDK's ``@health`` (run natively)."""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.host._health import HEALTH_HOOK, HealthReport
from tests.conftest import build_rust_crate, const_body, wat_module, write_plugin


def reporting(directory: Path, name: str, report: str, hooks: tuple[str, ...] = (HEALTH_HOOK,),
              **manifest: Any) -> Path:
    """A WAT plugin whose every hook returns ``report``."""
    body, data = const_body(report)
    return write_plugin(directory / name, wat_module(body, data), name=name, hooks=hooks,
                        **manifest)


def test_reports_are_read_and_checked(host: plugbox.PluginHost, tmp_path: Path) -> None:
    cases = {
        "fine": '{"status":"ok"}',
        "slow": '{"status":"degraded","details":{"queue":7}}',
        "down": '{"status":"failing","details":{"db":"unreachable"}}',
        "rude": '{"status":"great"}',
        "text": "all good",
        "list": '{"status":"ok","details":[1]}',
    }
    for name, report in cases.items():
        host.add(reporting(tmp_path, name, report))
    host.add(reporting(tmp_path, "mute", "{}", hooks=("run",)))
    reports = host.check_health()
    got = {name: (r.status, dict(r.details), r.reason) for name, r in reports.items()}
    assert got["fine"] == ("ok", {}, None)
    assert got["slow"] == ("degraded", {"queue": 7}, None)
    assert got["down"] == ("failing", {"db": "unreachable"}, None)
    assert got["rude"][0] == "failing" and '"status": "ok", "degraded" or "failing"' in \
        got["rude"][2]
    assert got["text"][0] == "failing" and "not JSON" in got["text"][2]
    assert got["list"][0] == "failing" and '"details"' in got["list"][2]
    assert got["mute"] == ("unknown", {}, None)  # no hook: healthy as far as the host knows
    assert [r.healthy for r in reports.values()] == [True, True, False, False, False, False,
                                                     True]
    assert host.health() == reports
    one = host.check_health("slow")
    assert list(one) == ["slow"] and one["slow"].version == "0.1.0"
    assert one["slow"].to_json()["details"] == {"queue": 7}
    with pytest.raises(plugbox.UsageError, match="no plugin 'nope' is hosted"):
        host.check_health("nope")


def test_a_trapping_or_looping_check_is_failing_with_the_reason(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.add(write_plugin(tmp_path / "trap", wat_module("unreachable"), name="trap",
                          hooks=(HEALTH_HOOK,)))
    host.add(write_plugin(tmp_path / "spin", wat_module(
        # a host call per turn: slow per unit of fuel, so the deadline ends it, not the fuel
        "(loop (drop (call $now)) (br 0)) (i32.const 0)",
        '(import "plugbox:plugin/clock@1.0.0" "monotonic" (func $now (result i64)))'),
                          name="spin", hooks=(HEALTH_HOOK,), permissions={"clock": True},
                          limits={"fuel": 10_000_000_000, "deadline_ms": 5000}))
    reports = host.check_health()
    assert reports["trap"].status == "failing"
    assert reports["trap"].reason is not None and "GuestTrap" in reports["trap"].reason
    # the check's own deadline (1 s) ends it long before the plugin's 5 s
    assert reports["spin"].status == "failing"
    assert reports["spin"].reason is not None and "DeadlineExceeded" in reports["spin"].reason
    assert reports["spin"].seconds < 4.0


def test_scheduled_checks_reach_subscribers(tmp_path: Path, cache_dir: Path) -> None:
    seen: list[HealthReport] = []
    two = threading.Event()

    def record(report: HealthReport) -> None:
        seen.append(report)
        if len(seen) >= 2:
            two.set()

    with plugbox.PluginHost(state_dir=tmp_path / "state", health_interval=1.0,
                            runtime_options={"cache_dir": cache_dir}) as host:
        host.add(reporting(tmp_path, "slow", '{"status":"degraded"}'))
        host.subscribe_health(record)
        assert not seen  # nothing before start()
        host.start()
        assert two.wait(10.0), "two scheduled checks within 10 s at a 1 s interval"
    assert {(r.plugin, r.status) for r in seen} == {("slow", "degraded")}
    with pytest.raises(plugbox.UsageError, match="health_interval"):
        plugbox.PluginHost(state_dir=tmp_path / "s2", health_interval=0.01)


# -- the SDKs ---------------------------------------------------------------------------------

LIB_RS = r'''
use plugbox_sdk::json::Value;
use plugbox_sdk::{health, hooks, Result};

fn check() -> health::Report {
    health::Report::degraded().detail("queue", 7).detail("note", "backlog")
}

fn echo(payload: Vec<u8>) -> Result<Vec<u8>> {
    let _ = Value::Null;
    Ok(payload)
}

hooks! {
    "plugbox.health" => health::handler(check),
    "echo" => echo,
}
'''


@pytest.fixture(scope="module")
def rust_health(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rust_crate(tmp_path_factory, "healthy", LIB_RS, ["plugbox.health", "echo"])


def test_the_rust_sdk_reports_health(host: plugbox.PluginHost, rust_health: Path) -> None:
    host.add(rust_health)
    report = host.check_health("healthy")["healthy"]
    assert (report.status, dict(report.details)) == ("degraded",
                                                     {"queue": 7, "note": "backlog"})


def test_the_python_sdk_reports_health(tmp_path: Path) -> None:
    from plugbox_sdk import testing

    directory = tmp_path / "py"
    directory.mkdir()
    (directory / "app.py").write_text(textwrap.dedent('''
        from plugbox_sdk import health, hook

        STATE = {"status": "ok"}

        @health
        def check():
            if STATE["status"] == "raise":
                raise RuntimeError("database gone")
            if STATE["status"] == "bad":
                return 42
            return {"status": STATE["status"], "details": {"n": 1}}

        @hook("set")
        def set_status(payload: bytes) -> bytes:
            STATE["status"] = payload.decode()
            return b""
    '''))
    (directory / "plugbox.json").write_text(json.dumps({
        "manifest_version": 1, "name": "py-health", "version": "0.1.0", "abi": "1.0",
        "module": {"path": "plugin.wasm", "sha256": "0" * 64},
        "hooks": ["plugbox.health", "set"]}))
    harness = testing.load(directory)
    assert harness.call_json("plugbox.health") == {"status": "ok", "details": {"n": 1}}
    harness.call("set", b"failing")
    assert harness.call_json("plugbox.health") == {"status": "failing", "details": {"n": 1}}
    harness.call("set", b"bad")
    with pytest.raises(Exception, match="must return 'ok', 'degraded', 'failing'"):
        harness.call("plugbox.health")
    harness.call("set", b"raise")
    with pytest.raises(Exception, match="database gone"):
        harness.call("plugbox.health")
