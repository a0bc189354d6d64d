"""Quarantine in a PluginHost (issue 10 §2): a plugin whose dispatched calls keep failing
leaves dispatch, is probed after its backoff, and comes back when a probe succeeds; operators
quarantine and release by hand; per-point policies; what callers see under each failure
policy.

The plugins echo their payload; the points' output schema requires ``{"ok": true}``, so a
payload ``{"ok": false}`` makes every plugin's result invalid (an InvalidResultError, which
counts against the plugin) and ``{"ok": true}`` makes it succeed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox import BreakerPolicy, QuarantinedError
from tests.conftest import ECHO_BODY, const_body, wait_for, wat_module, write_plugin

GOOD = {"ok": True}
BAD = {"ok": False}
SCHEMA = {"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}}


def echo(directory: Path, name: str, *points: str) -> Path:
    return write_plugin(directory / name, wat_module(ECHO_BODY), name=name,
                        implements={p: {"hook": "run"} for p in points})


def steady(directory: Path, name: str, *points: str) -> Path:
    """Always answers ``{"ok": true}``, whatever the payload."""
    body, data = const_body('{"ok":true}')
    return write_plugin(directory / name, wat_module(body, data), name=name,
                        implements={p: {"hook": "run"} for p in points})


@pytest.fixture
def make_host(tmp_path: Path, cache_dir: Path) -> Iterator[Callable[..., plugbox.PluginHost]]:
    hosts: list[plugbox.PluginHost] = []

    def make(**kw: Any) -> plugbox.PluginHost:
        host = plugbox.PluginHost(state_dir=tmp_path / f"state{len(hosts)}",
                                  runtime_options={"cache_dir": cache_dir}, **kw)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.close()


def test_consecutive_failures_quarantine_then_a_probe_releases(
        make_host: Callable[..., plugbox.PluginHost], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    host = make_host(breaker=BreakerPolicy(consecutive_failures=3, error_rate=None,
                                           backoff_s=0.2, jitter=0.0))
    host.extension_point("check", version="1.0.0", output_schema=SCHEMA)
    host.add(echo(tmp_path, "flaky", "check"))
    host.add(steady(tmp_path, "solid", "check"))
    events: list[plugbox.LifecycleEvent] = []
    host.subscribe_lifecycle(events.append)

    for _ in range(2):
        result = host.call("check", BAD)
        assert [f.kind for f in result.failures] == ["InvalidResultError"]
    with caplog.at_level(logging.WARNING, logger="plugbox.host"):
        result = host.call("check", BAD)  # the third in a row: quarantined
    assert [f.kind for f in result.failures] == ["InvalidResultError"]
    state = host.breakers()["flaky"]
    assert state.state == "open" and state.reason is not None
    assert state.reason.startswith("3 failures in a row, the last: InvalidResultError")
    assert [(e.kind, e.plugin) for e in events] == [("quarantined", "flaky")]
    assert any("plugin 'flaky' quarantined" in r.getMessage() for r in caplog.records)

    # out of dispatch: not called, reported by the isolate policy; the other plugin serves
    calls = host.get("flaky").plugin.calls  # type: ignore[union-attr]
    result = host.call("check", GOOD)
    assert [r.plugin for r in result.results] == ["solid"]
    assert [(f.plugin, f.kind) for f in result.failures] == [("flaky", "QuarantinedError")]
    error = result.failures[0].error
    assert isinstance(error, QuarantinedError) and "host.release('flaky')" in error.message
    assert host.get("flaky").plugin.calls == calls  # type: ignore[union-attr]

    # after the backoff, one probe: it fails (bad payload), the wait doubles
    wait_for(lambda: "flaky" in host._tables.probing.get("check", ()))
    result = host.call("check", BAD)
    assert [f.kind for f in result.failures] == ["InvalidResultError"]  # the probe ran
    assert host.breakers()["flaky"].reason.startswith("the probe call failed")  # type: ignore[union-attr]
    assert host.breakers()["flaky"].opened == 2
    # ... and the next good probe closes it
    wait_for(lambda: "flaky" in host._tables.probing.get("check", ()))
    result = host.call("check", GOOD)
    assert [r.plugin for r in result.results] == ["flaky", "solid"]
    assert host.breakers()["flaky"].state == "closed"
    assert [e.kind for e in events] == ["quarantined", "quarantined", "released"]
    assert host.call("check", GOOD).failures == []


def test_under_propagate_a_quarantined_plugin_raises(
        make_host: Callable[..., plugbox.PluginHost], tmp_path: Path) -> None:
    host = make_host(breaker=BreakerPolicy(consecutive_failures=1, error_rate=None,
                                           backoff_s=60))
    host.extension_point("check", version="1.0.0", output_schema=SCHEMA, failure="propagate")
    host.add(echo(tmp_path, "flaky", "check"))
    with pytest.raises(plugbox.InvalidResultError):
        host.call("check", BAD)
    with pytest.raises(QuarantinedError, match="plugin 'flaky' is quarantined") as info:
        host.call("check", GOOD)
    assert info.value.plugin == "flaky" and info.value.retry_at is not None


def test_an_operator_quarantines_and_releases(
        make_host: Callable[..., plugbox.PluginHost], tmp_path: Path) -> None:
    host = make_host(breaker=BreakerPolicy(backoff_s=0.05, jitter=0.0))
    host.extension_point("check", version="1.0.0", output_schema=SCHEMA)
    host.add(steady(tmp_path, "solid", "check"))
    state = host.quarantine("solid", "suspicious traffic", actor="ops")
    assert (state.state, state.reason, state.manual, state.retry_at) == (
        "open", "suspicious traffic", True, None)
    time.sleep(0.2)  # longer than the backoff: an operator's hold has no probe
    result = host.call("check", GOOD)
    assert result.results == [] and result.failures[0].kind == "QuarantinedError"
    assert "until an operator releases it" in result.failures[0].error.message
    assert host.release("solid", actor="ops").state == "closed"
    assert [r.plugin for r in host.call("check", GOOD).results] == ["solid"]
    with pytest.raises(plugbox.UsageError, match="no plugin 'nope' is hosted"):
        host.quarantine("nope")
    with pytest.raises(plugbox.UsageError, match="reason"):
        host.quarantine("solid", "")


def test_a_point_with_its_own_policy_quarantines_only_there(
        make_host: Callable[..., plugbox.PluginHost], tmp_path: Path) -> None:
    host = make_host(breaker=BreakerPolicy(consecutive_failures=100))
    host.extension_point("strict", version="1.0.0", output_schema=SCHEMA,
                         breaker=BreakerPolicy(consecutive_failures=1, error_rate=None,
                                               backoff_s=60))
    host.extension_point("plain", version="1.0.0", output_schema=SCHEMA)
    host.add(echo(tmp_path, "flaky", "strict", "plain"))
    host.call("strict", BAD)
    assert host.call("strict", GOOD).failures[0].kind == "QuarantinedError"
    assert [r.plugin for r in host.call("plain", GOOD).results] == ["flaky"]
    assert "flaky" not in host.breakers() or host.breakers()["flaky"].state == "closed"
    host.release("flaky")
    assert [r.plugin for r in host.call("strict", GOOD).results] == ["flaky"]


def test_without_a_breaker_nothing_is_quarantined(
        make_host: Callable[..., plugbox.PluginHost], tmp_path: Path) -> None:
    host = make_host(breaker=None)
    host.extension_point("check", version="1.0.0", output_schema=SCHEMA)
    host.add(echo(tmp_path, "flaky", "check"))
    for _ in range(20):
        assert host.call("check", BAD).failures[0].kind == "InvalidResultError"
    assert host.breakers() == {}


def test_host_side_failures_do_not_count(make_host: Callable[..., plugbox.PluginHost],
                                         tmp_path: Path) -> None:
    """A payload the point refuses is the caller's fault: the plugin is never called."""
    host = make_host(breaker=BreakerPolicy(consecutive_failures=1, error_rate=None))
    host.extension_point("check", version="1.0.0",
                         input_schema={"type": "object", "required": ["ok"]})
    host.add(echo(tmp_path, "fine", "check"))
    for _ in range(5):
        with pytest.raises(plugbox.PayloadError):
            host.call("check", {"no": 1})
    assert host.breakers() == {}
    assert host.call("check", GOOD).failures == []


def test_concurrent_probes_make_one_call(make_host: Callable[..., plugbox.PluginHost],
                                         tmp_path: Path) -> None:
    host = make_host(breaker=BreakerPolicy(consecutive_failures=1, error_rate=None,
                                           backoff_s=0.05, jitter=0.0))
    host.extension_point("check", version="1.0.0", output_schema=SCHEMA)
    host.add(echo(tmp_path, "flaky", "check"))
    host.call("check", BAD)
    wait_for(lambda: "flaky" in host._tables.probing.get("check", ()))
    plugin = host.get("flaky").plugin  # type: ignore[union-attr]
    before = plugin.calls
    barrier = threading.Barrier(8)
    outcomes: list[plugbox.DispatchResult] = []

    def go() -> None:
        barrier.wait()
        outcomes.append(host.call("check", BAD))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert plugin.calls == before + 1  # one probe, whichever thread got it
    assert sum(1 for r in outcomes for f in r.failures if f.kind == "InvalidResultError") == 1
