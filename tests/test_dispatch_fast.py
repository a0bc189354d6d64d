"""The planned dispatch (issue 8 §8): PluginHost.call runs a per-point plan, rebuilt at every
publish, in the C loop of ``engine._speedups`` (its dispatch section) or in its pure-Python twin
(``_host._run_plan``) when the extension is absent. Every test runs on both; they must give the
same results, failures, metrics and hot-swap guarantees as the general path."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.host import _host
from tests.conftest import const_body, wat_module, write_plugin
from tests.test_lifecycle_core import make_plugin
from tests.test_lifecycle_upgrade import config_plugin


@pytest.fixture(params=["c", "python"])
def loop(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which dispatch loop runs: the C one (skipped when the extension is not built) or the
    pure-Python twin."""
    want = request.param == "c"
    if want and not _host._C_BUILT:
        pytest.skip("engine._speedups is not built (no C compiler at install time)")
    assert _host.use_c_dispatch(want) is want
    try:
        yield request.param
    finally:
        _host.use_c_dispatch(True)


@pytest.fixture
def fresh_host(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    # No breaker: the failing plugins must keep being called, run after run.
    with plugbox.PluginHost(state_dir=tmp_path / "state", breaker=None,
                            runtime_options={"cache_dir": cache_dir}) as h:
        yield h


def const(tmp_path: Path, name: str, text: str, points: dict[str, Any], **kw: Any) -> Path:
    """A WAT plugin whose hook ``run`` returns ``text`` (bytes as they are), for ``points``."""
    body, fields = const_body(text)
    return write_plugin(tmp_path / "plugins" / name, wat_module(body, fields), name=name,
                        hooks=("run",), implements={p: {"hook": "run"} for p in points},
                        **kw)


def trapping(tmp_path: Path, name: str, points: dict[str, Any]) -> Path:
    return write_plugin(tmp_path / "plugins" / name, wat_module("unreachable"), name=name,
                        hooks=("run",), implements={p: {"hook": "run"} for p in points})


def spinning(tmp_path: Path, name: str, points: dict[str, Any]) -> Path:
    return write_plugin(tmp_path / "plugins" / name,
                        wat_module("(loop $l (br $l)) (i32.const 16)"), name=name,
                        hooks=("run",), implements={p: {"hook": "run"} for p in points})


POINTS = {"j.each": {}, "j.first": {}, "j.notify": {}, "b.each": {}, "b.first": {},
          "j.strict": {}, "j.fuel": {}}


def declare(host: plugbox.PluginHost) -> None:
    host.extension_point("j.each", version="1.0.0", mode="each")
    host.extension_point("j.first", version="1.0.0", mode="first")
    host.extension_point("j.notify", version="1.0.0", mode="notify")
    host.extension_point("b.each", version="1.0.0", payload="bytes", mode="each")
    host.extension_point("b.first", version="1.0.0", payload="bytes", mode="first")
    host.extension_point("j.strict", version="1.0.0", mode="each",
                         input_schema={"type": "object"},
                         output_schema={"type": "object", "required": ["n"]})
    host.extension_point("j.fuel", version="1.0.0", mode="each", fuel=50_000)


def outcome(result: plugbox.DispatchResult) -> dict[str, Any]:
    doc = result.to_json()
    for failure in doc["failures"]:
        failure.pop("error")
    return doc


def run_all(host: plugbox.PluginHost) -> dict[str, Any]:
    return {
        "j.each": outcome(host.call("j.each", {"x": 1})),
        "j.first": outcome(host.call("j.first", {"x": 1})),
        "j.notify": outcome(host.call("j.notify", {"x": 1})),
        "b.each": outcome(host.call("b.each", b"\x00\x01")),
        "b.first": outcome(host.call("b.first", bytearray(b"ab"))),
        "j.strict": outcome(host.call("j.strict", {})),
        "j.fuel": outcome(host.call("j.fuel", {})),
    }


EXPECTED = {
    "j.each": {"point": "j.each", "mode": "each", "value": None,
               "results": [{"plugin": "nothing", "value": None},
                           {"plugin": "answer", "value": {"n": 1}},
                           {"plugin": "later", "value": {"n": 2}}],
               "failures": [{"plugin": "trap", "kind": "GuestTrap"},
                            {"plugin": "spin", "kind": "FuelExhausted"}]},
    "j.first": {"point": "j.first", "mode": "first", "value": {"n": 1},
                "results": [{"plugin": "answer", "value": {"n": 1}}], "failures": []},
    "j.notify": {"point": "j.notify", "mode": "notify", "value": None, "results": [],
                 "failures": [{"plugin": "trap", "kind": "GuestTrap"},
                              {"plugin": "spin", "kind": "FuelExhausted"}]},
    "b.each": {"point": "b.each", "mode": "each", "value": None,
               "results": [{"plugin": "nothing", "value": "bnVsbA=="},
                           {"plugin": "answer", "value": "eyJuIjogMX0="},
                           {"plugin": "later", "value": "eyJuIjogMn0="}],
               "failures": [{"plugin": "trap", "kind": "GuestTrap"},
                            {"plugin": "spin", "kind": "FuelExhausted"}]},
    "b.first": {"point": "b.first", "mode": "first", "value": "bnVsbA==",
                "results": [{"plugin": "nothing", "value": "bnVsbA=="}], "failures": []},
    "j.strict": {"point": "j.strict", "mode": "each", "value": None,
                 "results": [{"plugin": "answer", "value": {"n": 1}},
                             {"plugin": "later", "value": {"n": 2}}],
                 "failures": [{"plugin": "nothing", "kind": "InvalidResultError"},
                              {"plugin": "trap", "kind": "GuestTrap"},
                              {"plugin": "spin", "kind": "FuelExhausted"}]},
    "j.fuel": {"point": "j.fuel", "mode": "each", "value": None,
               "results": [{"plugin": "nothing", "value": None},
                           {"plugin": "answer", "value": {"n": 1}},
                           {"plugin": "later", "value": {"n": 2}}],
               "failures": [{"plugin": "trap", "kind": "GuestTrap"},
                            {"plugin": "spin", "kind": "FuelExhausted"}]},
}


def add_five(host: plugbox.PluginHost, tmp_path: Path) -> None:
    declare(host)
    host.add(const(tmp_path, "nothing", "null", POINTS), priority=5)
    host.add(const(tmp_path, "answer", '{"n": 1}', POINTS), priority=4)
    host.add(trapping(tmp_path, "trap", POINTS), priority=3)
    host.add(const(tmp_path, "later", '{"n": 2}', POINTS), priority=2)
    spin = spinning(tmp_path, "spin", POINTS)
    doc = json.loads((spin / "plugbox.json").read_text())
    doc["limits"] = {"fuel": 100_000, "deadline_ms": 5000}
    (spin / "plugbox.json").write_text(json.dumps(doc))
    host.add(spin, priority=1)


def test_every_mode_and_payload_gives_the_expected_results(
        loop: str, fresh_host: plugbox.PluginHost, tmp_path: Path) -> None:
    add_five(fresh_host, tmp_path)
    assert run_all(fresh_host) == EXPECTED
    later = fresh_host.get("later")
    assert later is not None
    # first stopped at "answer" both times: "later" ran for the other five points only
    assert later.plugin.calls == 5
    with pytest.raises(plugbox.PayloadError, match=r"input_schema"):
        fresh_host.call("j.strict", [1])
    with pytest.raises(plugbox.PayloadError, match="carries bytes"):
        fresh_host.call("b.each", "text")


def test_the_c_loop_and_the_python_twin_agree_with_the_general_path(
        fresh_host: plugbox.PluginHost, tmp_path: Path) -> None:
    add_five(fresh_host, tmp_path)
    seen = {}
    for which in (["c"] if _host._C_BUILT else []) + ["python"]:
        _host.use_c_dispatch(which == "c")
        try:
            seen[which] = (run_all(fresh_host), fresh_host.metrics().points)
        finally:
            _host.use_c_dispatch(True)
    # The general path: every plan marked slow.
    tables = fresh_host._tables
    fresh_host._tables = type(tables)(**{**tables.__dict__, "plans": {
        k: p._replace(fast=False) for k, p in tables.plans.items()}})
    seen["general"] = (run_all(fresh_host), fresh_host.metrics().points)
    results = {k: v[0] for k, v in seen.items()}
    assert all(r == EXPECTED for r in results.values()), results
    # Metrics accumulate: each run added the same calls and failures.
    runs = len(seen)
    final = seen["general"][1]
    assert final["j.each"].dispatches == runs
    assert final["j.each"].calls == {n: runs for n in ("nothing", "answer", "trap", "later",
                                                        "spin")}
    assert final["j.first"].calls == {"nothing": runs, "answer": runs}
    assert final["j.strict"].failures == {"nothing": {"InvalidResultError": runs},
                                          "trap": {"GuestTrap": runs},
                                          "spin": {"FuelExhausted": runs}}


def test_propagate_raises_the_first_failure_and_counts_it(
        loop: str, fresh_host: plugbox.PluginHost, tmp_path: Path) -> None:
    fresh_host.extension_point("p.each", version="1.0.0", failure="propagate")
    points = {"p.each": {}}
    fresh_host.add(const(tmp_path, "ok", '"fine"', points), priority=2)
    fresh_host.add(trapping(tmp_path, "bad", points), priority=1)
    fresh_host.add(const(tmp_path, "after", '"never"', points), priority=0)
    with pytest.raises(plugbox.GuestTrap) as err:
        fresh_host.call("p.each", {})
    assert err.value.plugin == "bad"
    assert any("failure policy 'propagate'" in note for note in err.value.__notes__)
    after = fresh_host.get("after")
    assert after is not None and after.plugin.calls == 0
    stats = fresh_host.metrics().points["p.each"]
    assert stats.dispatches == 1 and stats.failures == {"bad": {"GuestTrap": 1}}
    assert fresh_host._readers == {}


def test_only_top_level_dispatches_of_fast_plans_run_in_c(
        fresh_host: plugbox.PluginHost, tmp_path: Path) -> None:
    if not _host._C_BUILT:
        pytest.skip("engine._speedups is not built")
    fresh_host.extension_point("x.each", version="1.0.0")
    fresh_host.extension_point("x.pipe", version="1.0.0", mode="pipeline")
    fresh_host.extension_point("x.bg", version="1.0.0", mode="notify", background=True)
    points = {"x.each": {}, "x.pipe": {}, "x.bg": {}}
    fresh_host.add(const(tmp_path, "one", '{"a": 1}', points))
    c = _host._C
    got = c.dispatch(fresh_host, "x.each", {})
    assert isinstance(got, plugbox.DispatchResult) and got.values == [{"a": 1}]
    assert type(got.results[0]) is plugbox.host.Result
    assert c.dispatch(fresh_host, "x.pipe", {}) is NotImplemented
    assert c.dispatch(fresh_host, "x.bg", {}) is NotImplemented
    assert c.dispatch(fresh_host, "nope", {}) is NotImplemented
    token = _host._POINTS.set(("outer",))
    try:
        assert c.dispatch(fresh_host, "x.each", {}) is NotImplemented
    finally:
        _host._POINTS.reset(token)
    assert fresh_host._readers == {}
    fresh_host.close()
    with pytest.raises(plugbox.UsageError, match="closed"):
        fresh_host.call("x.each", {})


def test_a_plugin_added_or_removed_changes_the_plan_at_once(
        loop: str, fresh_host: plugbox.PluginHost, tmp_path: Path) -> None:
    fresh_host.extension_point("x.each", version="1.0.0")
    points = {"x.each": {}}
    fresh_host.add(const(tmp_path, "one", "1", points), priority=1)
    assert fresh_host.call("x.each").values == [1]
    fresh_host.add(const(tmp_path, "two", "2", points), priority=2)
    assert fresh_host.call("x.each").values == [2, 1]
    fresh_host.add(const(tmp_path, "off", "3", points), priority=3, enabled=False)
    assert fresh_host.call("x.each").values == [2, 1]
    fresh_host.remove("one")
    assert fresh_host.call("x.each").values == [2]
    fresh_host.remove("two")
    assert fresh_host.call("x.each").values == []


# -- hot swap ------------------------------------------------------------------------------


@pytest.fixture
def managed(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as h:
        h.extension_point("text.echo", version="1.0.0", mode="each")
        h.start()
        yield h


def test_upgrades_under_concurrent_dispatches_never_call_a_retired_plugin(
        loop: str, managed: plugbox.PluginHost, tmp_path: Path) -> None:
    managed.install(make_plugin(tmp_path / "src", "alpha", "1.0.0", "v1.0.0"))
    stop = threading.Event()
    seen: list[Any] = []
    errors: list[BaseException] = []

    def caller() -> None:
        while not stop.is_set():
            try:
                result = managed.call("text.echo", {})
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)
                return
            seen.append(result.values if result.ok else result.failures)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    old = []
    try:
        for minor in range(1, 7):
            hosted = managed.get("alpha")
            assert hosted is not None
            old.append(hosted.plugin)
            outcome = managed.upgrade(make_plugin(tmp_path / "src", "alpha", f"1.{minor}.0",
                                                  f"v1.{minor}.0"))
            assert outcome.status == "upgraded"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    allowed = {f"v1.{m}.0" for m in range(7)}
    assert seen and all(isinstance(v, list) and len(v) == 1 and v[0] in allowed
                        for v in seen), [v for v in seen if not isinstance(v, list)][:3]
    assert managed.call("text.echo", {}).values == ["v1.6.0"]
    # Every swapped-out plugin was closed once its last dispatch left; nothing is pending.
    assert all(p._closed for p in old)
    assert managed._readers == {} and managed._retired == []


def test_a_call_in_flight_keeps_its_plugin_open_until_it_returns(
        loop: str, managed: plugbox.PluginHost, tmp_path: Path) -> None:
    release, entered = threading.Event(), threading.Event()

    def block(value: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        return None

    managed.function("block", block)
    managed.install(config_plugin(tmp_path / "src", block=True), config={"label": "old"})
    hosted = managed.get("alpha")
    assert hosted is not None
    old = hosted.plugin
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(
        managed.call("text.echo", {}).values))
    thread.start()
    try:
        assert entered.wait(30)
        managed.configure("alpha", {"label": "new"})
        assert managed.call("text.echo", {}).values == [{"label": "new", "top_n": 3}]
        assert not old._closed and thread.is_alive()
        assert len(managed._retired) == 1
    finally:
        release.set()
        thread.join(30)
    assert results == [[{"label": "old", "top_n": 3}]]
    assert old._closed and managed._retired == [] and managed._readers == {}


def test_plans_keep_no_reference_cycle_through_the_host(tmp_path: Path,
                                                         cache_dir: Path) -> None:
    import gc
    import weakref

    gc.disable()
    try:
        host = plugbox.PluginHost(state_dir=tmp_path / "state",
                                  runtime_options={"cache_dir": cache_dir})
        host.extension_point("x.each", version="1.0.0")
        host.add(const(tmp_path, "one", "1", {"x.each": {}}))
        assert host.call("x.each").values == [1] and host._tables.plans["x.each"].fast
        ref = weakref.ref(host)
        del host
        assert ref() is None  # freed by reference counting alone, without the collector
    finally:
        gc.enable()
