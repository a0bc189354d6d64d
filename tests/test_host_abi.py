"""End to end through ABI 1.1: real guests (hand-written WAT) calling host functions and
dispatching extension points through the PluginHost's router, with the runtime's permission
checks in between, re-entrancy refused without deadlock."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from tests.conftest import wat_module, write_plugin


def relay_module(func: str, name: str) -> bytes:
    """A module whose hook ``run`` passes its payload to ``host.<func>(name, payload)`` and
    returns what the host returned (ok or error: both results have the same layout)."""
    fields = (f'(import "plugbox:plugin/host@1.1.0" "{func}" '
              f'(func $host (param i32 i32 i32 i32 i32)))\n'
              f'  (data (i32.const 1024) "{name}")')
    body = f"""
    (call $host (i32.const 1024) (i32.const {len(name)}) (local.get $pp) (local.get $pl)
                (i32.const 512))
    (i32.const 512)"""
    return wat_module(body, fields)


@pytest.fixture
def relay(tmp_path: Path) -> Callable[..., Path]:
    """``relay(name, func, target, **manifest)``: a plugin (ABI 1.1) whose hook ``run`` calls
    ``host.<func>(target, payload)``."""
    def build(name: str, func: str, target: str, **fields: Any) -> Path:
        return write_plugin(tmp_path / "plugins" / name, relay_module(func, target), name=name,
                            hooks=("run",), abi="1.1", **fields)
    return build


RUN = {"hook": "run"}


def test_a_guest_calls_a_host_function(host: plugbox.PluginHost,
                                       relay: Callable[..., Path]) -> None:
    calls: list[tuple[Any, str]] = []

    def query(value: Any, plugin: str) -> Any:
        calls.append((value, plugin))
        return {"rows": [{"id": value["id"], "winner": "blue"}]}

    host.function("battles.query", query, input_schema={"type": "object", "required": ["id"]},
                  output_schema={"type": "object", "required": ["rows"]})
    host.extension_point("battle.look", version="1.0.0", mode="first")
    host.add(relay("looker", "call", "battles.query", implements={"battle.look": RUN},
                   permissions={"functions": ["battles.*"]}))
    res = host.call("battle.look", {"id": 7})
    assert res.value == {"rows": [{"id": 7, "winner": "blue"}]}
    assert calls == [({"id": 7}, "looker")]


def test_the_guest_sees_invalid_input_and_failure(host: plugbox.PluginHost,
                                                  relay: Callable[..., Path],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    def query(value: Any) -> Any:
        if value.get("explode"):
            raise KeyError("internal")
        return {}

    host.function("battles.query", query, input_schema={
        "type": "object", "properties": {"id": {"type": "integer"}}})
    host.extension_point("battle.look", version="1.0.0")
    host.add(relay("looker", "call", "battles.query", implements={"battle.look": RUN},
                   permissions={"functions": ["battles.query"]}))
    (failure,) = host.call("battle.look", {"id": "seven"}).failures
    assert isinstance(failure.error, plugbox.GuestError)
    assert failure.error.kind == "invalid-input" and "$.id" in failure.error.detail
    with caplog.at_level(logging.ERROR, logger="plugbox.host"):
        (failure,) = host.call("battle.look", {"explode": True}).failures
    assert isinstance(failure.error, plugbox.GuestError) and failure.error.kind == "failure"
    assert "KeyError" in failure.error.detail
    assert any("'battles.query'" in r.getMessage() and "'looker'" in r.getMessage()
               for r in caplog.records)


def test_a_function_the_plugin_may_not_call_is_denied(host: plugbox.PluginHost,
                                                      relay: Callable[..., Path]) -> None:
    host.function("battles.query", lambda value: {})
    host.function("other.thing", lambda value: {})
    host.extension_point("battle.look", version="1.0.0")
    host.add(relay("looker", "call", "battles.query", implements={"battle.look": RUN},
                   permissions={"functions": ["other.*"]}))
    (failure,) = host.call("battle.look", {}).failures
    assert isinstance(failure.error, plugbox.PermissionDenied)
    assert failure.error.permission == "functions" and "battles.query" in str(failure.error)


def test_a_request_for_an_unregistered_function_is_refused_at_add(
        host: plugbox.PluginHost, relay: Callable[..., Path]) -> None:
    host.function("battles.query", lambda value: {})
    with pytest.raises(plugbox.PolicyViolationError) as info:
        host.add(relay("looker", "call", "battles.query",
                       permissions={"functions": ["battles.query", "weather.*"]}))
    assert info.value.permission == "functions" and "'weather.*'" in str(info.value)
    assert "battles.query" in str(info.value)  # what is registered
    assert host.runtime.plugins == ()


def test_a_guest_dispatches_its_own_point(host: plugbox.PluginHost, relay: Callable[..., Path],
                                          const: Callable[..., Path]) -> None:
    host.extension_point("report.make", version="1.0.0", mode="first")
    host.add(relay("report", "dispatch", "report.section", implements={"report.make": RUN},
                   extension_points={"report.section": {
                       "version": "1.0.0", "output_schema": {"type": "object",
                                                             "required": ["title"]}}}))
    host.add(const("casualties", '{"title": "Casualties"}',
                   implements={"report.section": RUN}), priority=1)
    host.add(const("weather", '{"title": "Weather"}', implements={"report.section": RUN}))
    host.add(const("broken", '{"oops": 1}', implements={"report.section": RUN}))
    res = host.call("report.make", {"battle": 1})
    assert res.value["point"] == "report.section"
    assert res.value["results"] == [{"plugin": "casualties", "value": {"title": "Casualties"}},
                                    {"plugin": "weather", "value": {"title": "Weather"}}]
    assert [(f["plugin"], f["kind"]) for f in res.value["failures"]] == [
        ("broken", "InvalidResultError")]


def test_dispatching_another_point_needs_the_permission(host: plugbox.PluginHost,
                                                        relay: Callable[..., Path],
                                                        const: Callable[..., Path]) -> None:
    host.extension_point("start", version="1.0.0")
    host.extension_point("hidden", version="1.0.0")
    host.add(const("target", '"secret"', implements={"hidden": RUN}))
    host.add(relay("nosy", "dispatch", "hidden", implements={"start": RUN},
                   permissions={"dispatch": ["other.*"]}))
    (failure,) = host.call("start", {}).failures
    assert isinstance(failure.error, plugbox.PermissionDenied)
    assert failure.error.permission == "dispatch"
    host.add(relay("allowed", "dispatch", "hidden", implements={"start": RUN},
                   permissions={"dispatch": ["hid*"]}))
    res = host.call("start", {})
    assert [r.plugin for r in res.results] == ["allowed"]
    assert res.results[0].value["results"] == [{"plugin": "target", "value": "secret"}]


def run_with_timeout(fn: Callable[[], Any], seconds: float = 60) -> Any:
    """``fn()`` on a thread, failing the test (not hanging it) if it deadlocks."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # re-raised on the test's thread
            box.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the dispatch deadlocked"
    ok, value = box[0]
    if not ok:
        raise value
    return value


def test_a_point_dispatched_from_within_its_own_dispatch_is_refused(
        host: plugbox.PluginHost, relay: Callable[..., Path]) -> None:
    host.extension_point("echo.loop", version="1.0.0")
    host.add(relay("looper", "dispatch", "echo.loop", implements={"echo.loop": RUN},
                   permissions={"dispatch": ["echo.loop"]}))
    res = run_with_timeout(lambda: host.call("echo.loop", {}))
    (failure,) = res.failures
    assert isinstance(failure.error, plugbox.GuestError)
    assert failure.error.kind == "limit-reached"
    assert "echo.loop -> echo.loop" in failure.error.detail


def test_a_plugin_is_not_dispatched_into_through_others(host: plugbox.PluginHost,
                                                        relay: Callable[..., Path]) -> None:
    # start -> a (dispatches a.pt) -> b (dispatches b.pt) -> a again: refused, b still answers
    host.extension_point("start", version="1.0.0", mode="first")
    host.extension_point("b.pt", version="1.0.0")
    host.add(relay("a", "dispatch", "a.pt", implements={"start": RUN, "b.pt": RUN},
                   extension_points={"a.pt": {"version": "1.0.0"}}))
    host.add(relay("b", "dispatch", "b.pt", implements={"a.pt": RUN},
                   permissions={"dispatch": ["b.pt"]}))
    res = run_with_timeout(lambda: host.call("start", {}))
    a_dispatch = res.value
    assert a_dispatch["point"] == "a.pt"
    (b_answer,) = a_dispatch["results"]
    assert b_answer["plugin"] == "b"
    b_dispatch = b_answer["value"]
    assert b_dispatch["point"] == "b.pt" and b_dispatch["results"] == []
    assert [(f["plugin"], f["kind"]) for f in b_dispatch["failures"]] == [
        ("a", "ReentrantDispatchError")]


def test_a_host_function_dispatching_the_calling_point_is_refused(
        host: plugbox.PluginHost, relay: Callable[..., Path]) -> None:
    # the host's own code closes the loop: point -> plugin -> host function -> same point
    host.extension_point("work", version="1.0.0", failure="propagate")

    def again(value: Any) -> Any:
        return host.call("work", value).to_json()

    host.function("work.again", again)
    host.add(relay("worker", "call", "work.again", implements={"work": RUN},
                   permissions={"functions": ["work.again"]}))
    with pytest.raises(plugbox.GuestError) as info:
        run_with_timeout(lambda: host.call("work", {}))
    # the handler's ReentrantDispatchError reached the guest as limit-reached
    assert info.value.kind == "limit-reached" and "work -> work" in info.value.detail


def test_one_zero_plugins_run_unchanged_beside_one_one(host: plugbox.PluginHost,
                                                       const: Callable[..., Path],
                                                       relay: Callable[..., Path]) -> None:
    host.function("f", lambda value: "from 1.1")
    host.extension_point("p", version="1.0.0")
    host.add(const("old", '"from 1.0"', implements={"p": RUN}))  # abi 1.0
    host.add(relay("new", "call", "f", implements={"p": RUN},
                   permissions={"functions": ["f"]}))
    assert host.call("p", None).values == ["from 1.0", "from 1.1"]
    assert json.loads(json.dumps(host.call("p", None).to_json()))["mode"] == "each"


def test_guests_call_host_functions_from_many_threads(host: plugbox.PluginHost,
                                                      relay: Callable[..., Path]) -> None:
    host.function("twice", lambda value, plugin: {"n": value["n"] * 2, "by": plugin})
    host.extension_point("calc", version="1.0.0")
    for name in ("calc-a", "calc-b"):
        host.add(relay(name, "call", "twice", implements={"calc": RUN},
                       permissions={"functions": ["twice"]}))
    errors: list[BaseException] = []

    def caller(offset: int) -> None:
        try:
            for n in range(offset, offset + 25):
                res = host.call("calc", {"n": n})
                assert res.failures == [], res.failures  # no false re-entrancy across threads
                assert res.values == [{"n": 2 * n, "by": "calc-a"}, {"n": 2 * n, "by": "calc-b"}]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(100 * i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_concurrent_each_keeps_the_dispatch_chain_across_worker_threads(
        host: plugbox.PluginHost, relay: Callable[..., Path]) -> None:
    seen: list[str] = []

    def again(value: Any) -> Any:
        seen.append(threading.current_thread().name)
        return host.call("fan", value).to_json()  # re-enters the point: refused

    host.function("fan.again", again)
    host.extension_point("fan", version="1.0.0", concurrent=True)
    for name in ("f1", "f2", "f3"):
        host.add(relay(name, "call", "fan.again", implements={"fan": RUN},
                       permissions={"functions": ["fan.again"]}))
    res = run_with_timeout(lambda: host.call("fan", {}))
    assert [f.plugin for f in res.failures] == ["f1", "f2", "f3"]
    assert all(isinstance(f.error, plugbox.GuestError) and f.error.kind == "limit-reached"
               for f in res.failures)
    assert len(seen) == 3 and all(name.startswith("plugbox-host") for name in seen)


def test_dispatch_chains_are_bounded(host: plugbox.PluginHost,
                                     relay: Callable[..., Path]) -> None:
    depth = plugbox.host.MAX_DISPATCH_DEPTH
    for i in range(depth + 2):
        host.extension_point(f"d{i}", version="1.0.0", mode="first")
    for i in range(depth + 1):  # c_i serves d_i by dispatching d_(i+1)
        host.add(relay(f"c{i}", "dispatch", f"d{i + 1}", implements={f"d{i}": RUN},
                       permissions={"dispatch": [f"d{i + 1}"]}))
    res = run_with_timeout(lambda: host.call("d0", {}))
    level = 0
    out: Any = res.to_json()
    while out["results"]:
        out = out["results"][0]["value"]
        level += 1
    (failure,) = out["failures"]
    assert failure["plugin"] == f"c{depth - 1}" and failure["kind"] == "GuestError"
    assert f"nest more than {depth} deep" in failure["error"]
    assert level == depth - 1
