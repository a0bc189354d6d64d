"""Metrics per plugin and per extension point (issue 10 §1): every figure of
``Runtime.metrics()`` / ``PluginHost.metrics()`` checked against plugins that do known work."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox._metrics import LATENCY_BOUNDS, Histogram, empty_histogram
from tests.conftest import COUNTER_BODY, const_body, wat_module, write_plugin

LOG = '(import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))'
KV_SET = ('(import "plugbox:plugin/kv@1.0.0" "set" '
          '(func $kv_set (param i32 i32 i32 i32 i32)))')
CONFIG_GET = '(import "plugbox:plugin/config@1.0.0" "get" (func $cfg (param i32 i32 i32)))'

#: The payload says what to do: byte 0 log records (level info, empty message), byte 1 kv
#: writes (key "k" + chr(97 + i), 3-byte value), byte 2 config reads (denied: the plugin has
#: no config permission), byte 3 non-zero: loop until the fuel runs out, byte 4 memory pages
#: to grow. Returns ok(empty).
WORKER_BODY = """
    (local $i i32)
    (local.set $i (i32.const 0))
    (block $d0 (loop $l0
      (br_if $d0 (i32.ge_u (local.get $i) (i32.load8_u (local.get $pp))))
      (call $log (i32.const 2) (i32.const 64) (i32.const 0))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l0)))
    (local.set $i (i32.const 0))
    (block $d1 (loop $l1
      (br_if $d1 (i32.ge_u (local.get $i) (i32.load8_u offset=1 (local.get $pp))))
      (i32.store8 (i32.const 200) (i32.const 107))
      (i32.store8 (i32.const 201) (i32.add (i32.const 97) (local.get $i)))
      (call $kv_set (i32.const 200) (i32.const 2) (i32.const 210) (i32.const 3) (i32.const 256))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l1)))
    (local.set $i (i32.const 0))
    (block $d2 (loop $l2
      (br_if $d2 (i32.ge_u (local.get $i) (i32.load8_u offset=2 (local.get $pp))))
      (call $cfg (i32.const 200) (i32.const 2) (i32.const 256))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l2)))
    (if (i32.load8_u offset=3 (local.get $pp)) (then (loop $spin (br $spin))))
    (drop (memory.grow (i32.load8_u offset=4 (local.get $pp))))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16)
"""

PAGE = 65536


def work(logs: int = 0, kv: int = 0, denied: int = 0, spin: bool = False,
         grow: int = 0) -> bytes:
    """The worker's payload."""
    return bytes([logs, kv, denied, int(spin), grow])


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    return write_plugin(
        tmp_path / "worker", wat_module(WORKER_BODY, LOG + KV_SET + CONFIG_GET),
        name="worker", hooks=("run", "other"),
        permissions={"log": True, "kv": {"quota_bytes": 1000, "quota_keys": 10}},
        limits={"fuel": 1_000_000})


@pytest.fixture
def load_worker(runtime: plugbox.Runtime, worker: Path) -> Callable[..., plugbox.Plugin]:
    def load(**options: Any) -> plugbox.Plugin:
        return runtime.load(worker, allow_unrequested_imports=True, **options)
    return load


@pytest.fixture(autouse=True)
def _plugin_logs_on(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # log_records counts records the plugin's logger takes: let INFO through.
    caplog.set_level(logging.INFO, logger="plugbox.plugin")
    yield


def test_calls_failures_by_class_and_latency_per_hook(
        accel: bool, runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]
) -> None:
    plugin = load_worker()
    for _ in range(3):
        plugin.call("run", work())
    plugin.call("other", work())
    plugin.call("other", work())
    with pytest.raises(plugbox.FuelExhausted):
        plugin.call("run", work(spin=True))
    with pytest.raises(plugbox.UnknownHookError):  # refused before any call: not counted
        plugin.call("nope", work())

    m = runtime.metrics().plugins["worker"]
    assert (m.name, m.version) == ("worker", "0.1.0")
    assert m.calls == 6
    assert m.failures == {"FuelExhausted": 1}
    assert set(m.hooks) == {"run", "other"}
    run, other = m.hooks["run"], m.hooks["other"]
    assert (run.calls, run.failures) == (4, {"FuelExhausted": 1})
    assert (other.calls, other.failures) == (2, {})
    assert run.latency.count == 4 and other.latency.count == 2
    assert m.latency.count == 6 and m.latency.sum == pytest.approx(
        run.latency.sum + other.latency.sum)
    assert run.latency.sum > 0
    assert m.latency.bounds == LATENCY_BOUNDS
    # the trapped instance was discarded; the pool has made none since
    assert (m.instances_discarded, m.instances_live) == (1, 0)
    assert m.overruns == 0
    plugin.call("run", work())
    assert runtime.metrics().plugins["worker"].instances_live == 1


def test_fuel_per_call_is_exact_and_adds_up(
        accel: bool, runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]
) -> None:
    plugin = load_worker()
    records: list[plugbox.CallRecord] = []
    undo = runtime.add_call_monitoring(lambda r: None, records.append)
    try:
        for logs in (0, 1, 2):
            plugin.call("run", work(logs=logs))
        with pytest.raises(plugbox.FuelExhausted):
            plugin.call("run", work(spin=True), fuel=5000)
    finally:
        undo()
    used = [r.fuel_used for r in records]
    assert all(isinstance(u, int) and u > 0 for u in used)
    a, b, c, exhausted = used
    assert c - b == b - a > 0  # each log record costs the same instructions
    assert exhausted == 5000  # all it was given
    m = runtime.metrics().plugins["worker"]
    # the exhausted instance was discarded, and its fuel still counts
    assert m.fuel_consumed == a + b + c + 5000
    assert m.fuel_per_call == pytest.approx(m.fuel_consumed / 4)


def test_fuel_is_counted_without_monitors_and_in_fresh_mode(
        runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]) -> None:
    persistent = load_worker()
    fresh = load_worker(mode="fresh")
    for _ in range(3):
        persistent.call("run", work())
        fresh.call("run", work())
    persistent_fuel = persistent.metrics().fuel_consumed
    assert persistent_fuel > 0
    assert fresh.metrics().fuel_consumed == persistent_fuel  # same work, instances retired
    assert fresh.metrics().instances_live == 0
    assert fresh.metrics().instances_discarded == 0  # retired cleanly, not discarded


def test_memory_peak_is_the_largest_instance_memory(
        accel: bool, runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]
) -> None:
    plugin = load_worker()
    plugin.call("run", work())
    assert plugin.metrics().memory_peak_bytes == PAGE
    plugin.call("run", work(grow=2))
    assert plugin.metrics().memory_peak_bytes == 3 * PAGE
    with pytest.raises(plugbox.FuelExhausted):  # the grown instance is discarded ...
        plugin.call("run", work(spin=True))
    plugin.call("run", work())  # ... and a fresh one is smaller
    assert plugin.metrics().memory_peak_bytes == 3 * PAGE


def test_service_calls_denials_kv_usage_and_log_records(
        accel: bool, runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]
) -> None:
    plugin = load_worker()
    plugin.call("run", work(logs=4, kv=3, denied=2))
    plugin.call("other", work(logs=1))
    m = plugin.metrics()
    assert m.service_calls == {"log": 5, "kv": 3, "config": 2}
    assert m.service_denials == {"config": 2}
    assert (m.kv_bytes, m.kv_keys) == (3 * (2 + 3), 3)
    assert (m.kv_quota_bytes, m.kv_quota_keys) == (1000, 10)
    assert (m.log_records, m.log_dropped) == (5, 0)
    assert (m.http_requests, m.http_bytes_sent, m.http_bytes_received) == (0, 0, 0)
    plugin.call("run", work(kv=2))  # overwrites ka, kb: same usage
    assert (plugin.metrics().kv_bytes, plugin.metrics().kv_keys) == (15, 3)


def test_log_records_dropped_by_the_rate_limit_are_counted(
        runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]) -> None:
    plugin = load_worker()
    # A bucket of 5 tokens that never refills: 4 records pass (one token stays for the flood
    # notice), the other 6 are dropped.
    services = plugin.services
    services._log_rate, services._log_burst, services._log_tokens = 0.0, 5.0, 5.0
    plugin.call("run", work(logs=10))
    m = plugin.metrics()
    assert (m.log_records, m.log_dropped) == (4, 6)
    assert m.service_calls == {"log": 10}


def test_filtered_log_records_are_neither_written_nor_dropped(
        runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbox.plugin")
    plugin = load_worker()
    plugin.call("run", work(logs=3))
    m = plugin.metrics()
    assert (m.log_records, m.log_dropped, m.service_calls["log"]) == (0, 0, 3)


def test_a_late_return_counts_as_a_deadline_overrun(
        runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbox.engine import _fastpath

    plugin = load_worker()
    plugin.call("run", work())
    # The host's clock jumps 10 s while the call returns (a host too busy to take the result):
    # the metrics' clock read at the end of the call is what the overrun check sees.
    observe = _fastpath.observe
    monkeypatch.setattr(_fastpath, "observe", lambda acc, started: observe(acc, started) + 10.0)
    plugin.call("run", work(), deadline_ms=1000)
    m = plugin.metrics()
    assert (m.overruns, m.calls, m.failures) == (1, 2, {})


def test_latency_counts_stay_exact_with_threads(
        runtime: plugbox.Runtime, tmp_path: Path) -> None:
    import threading

    plugin = runtime.load(write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c",
                                       limits={"instances": 4}))
    start = threading.Barrier(4)

    def caller() -> None:
        start.wait()
        for _ in range(300):
            plugin.call("run", b"")

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = plugin.metrics()
    assert m.hooks["run"].calls == m.latency.count == 1200  # counted in C, under the GIL
    assert m.instances_live <= 4


def test_metrics_off_keeps_the_free_counters_only(
        tmp_path: Path, cache_dir: Path, worker: Path) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "off", cache_dir=cache_dir,
                         metrics=False) as rt:
        assert rt.metrics_enabled is False
        plugin = rt.load(worker, allow_unrequested_imports=True)
        plugin.call("run", work(kv=1))
        plugin.call("run", work())
        m = rt.metrics().plugins["worker"]
        assert m.calls == 2 and m.hooks == {} and m.latency.count == 0
        assert m.fuel_consumed > 0 and m.memory_peak_bytes == PAGE
        assert m.service_calls == {"kv": 1} and m.kv_keys == 1
    with pytest.raises(plugbox.UsageError, match="metrics must be True or False"):
        plugbox.Runtime(state_dir=tmp_path / "bad", metrics="yes")  # type: ignore[arg-type]


def test_snapshots_are_frozen_and_do_not_move(
        runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]) -> None:
    plugin = load_worker()
    plugin.call("run", work())
    before = runtime.metrics()
    plugin.call("run", work())
    assert before.plugins["worker"].calls == 1
    assert runtime.metrics().plugins["worker"].calls == 2
    with pytest.raises(AttributeError):
        before.plugins["worker"].calls = 5  # type: ignore[misc]
    assert before.points == {}


def test_a_name_loaded_twice_is_kept_apart(
        runtime: plugbox.Runtime, load_worker: Callable[..., plugbox.Plugin]) -> None:
    first, second = load_worker(), load_worker()
    first.call("run", work())
    second.call("run", work())
    second.call("run", work())
    plugins = runtime.metrics().plugins
    assert (plugins["worker"].calls, plugins["worker#2"].calls) == (1, 2)


def test_histogram_percentiles_interpolate_inside_buckets() -> None:
    bounds = (0.001, 0.002, 0.004)
    h = Histogram(bounds, (0, 10, 0, 0), 0.015)  # ten calls in (1 ms, 2 ms]
    assert h.count == 10
    assert h.p50 == pytest.approx(0.0015)
    assert h.percentile(100) == pytest.approx(0.002)
    h = Histogram(bounds, (50, 45, 4, 1), 0.1)
    assert h.p50 == pytest.approx(0.001)
    assert h.p95 == pytest.approx(0.002)
    assert h.p99 == pytest.approx(0.004)
    assert h.percentile(100) == 0.004  # the +Inf bucket reads as the last bound
    assert math.isnan(empty_histogram().p50)
    with pytest.raises(ValueError, match="0 to 100"):
        h.percentile(101)
    total = h + h
    assert (total.count, total.sum) == (200, 0.2)


def test_latency_lands_in_the_bucket_of_its_duration() -> None:
    from plugbox._metrics import CallStats

    assert LATENCY_BOUNDS[0] == 1024e-9 and LATENCY_BOUNDS[-1] == (1 << 34) / 1e9
    assert all(b == 2 * a for a, b in zip(LATENCY_BOUNDS, LATENCY_BOUNDS[1:]))
    stats = CallStats()
    for seconds in (0.5e-6, 1e-6, 3e-6, 4.1e-6, 0.02, 99.0):
        stats.observe(seconds)
    h = stats.histogram()
    at = {b: n for b, n in zip((*h.bounds, math.inf), h.counts) if n}
    # 0.5 and 1 us: at most 1.024 us; 3 us: (2.048, 4.096]; 4.1 us: (4.096, 8.192];
    # 20 ms: (16.8, 33.6] ms; 99 s: over the last bound
    assert at == {1024e-9: 2, 4096e-9: 1, 8192e-9: 1, (1 << 25) / 1e9: 1, math.inf: 1}
    assert h.sum == pytest.approx(0.5e-6 + 1e-6 + 3e-6 + 4.1e-6 + 0.02 + 99.0)
    assert stats.count == 6


def test_observe_in_c_and_in_python_count_alike(accel: bool) -> None:
    import time

    from plugbox._metrics import CallStats
    from plugbox.engine import _fastpath

    stats = CallStats()
    started = time.monotonic() - 0.003  # a call that began 3 ms ago
    now = _fastpath.observe(stats.address, started)
    assert started + 0.003 <= now <= time.monotonic()
    # 3 ms has 22 bits in ns (2**21 ns = 2.1 ms < 3 ms < 2**22 ns = 4.2 ms)
    assert [b for b in range(64) if stats.slots[b]] == [22] and stats.slots[22] == 1
    assert 3_000_000 <= stats.slots[64] <= int((now - started) * 1e9) + 1
    assert stats.histogram().counts[22 - 10] == 1


# -- per extension point ---------------------------------------------------------------------


def test_host_counts_dispatches_calls_and_failures_per_point(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    implements = {"text.reply": {"versions": ">=1,<2", "hook": "run"}}
    host.extension_point("text.reply", version="1.0.0", mode="each", payload="bytes")
    body, data = const_body("hi")
    host.add(write_plugin(tmp_path / "good", wat_module(body, data), name="good",
                          implements=implements))
    host.add(write_plugin(tmp_path / "bad", wat_module("unreachable"), name="bad",
                          implements=implements))
    for _ in range(3):
        result = host.call("text.reply", b"x")
        assert [r.plugin for r in result.results] == ["good"]
    snap = host.metrics()
    point = snap.points["text.reply"]
    assert point.name == "text.reply"
    assert point.dispatches == 3 and point.latency.count == 3
    assert point.calls == {"good": 3, "bad": 3}
    assert point.failures == {"bad": {"GuestTrap": 3}}
    assert set(snap.plugins) == {"good", "bad"}
    assert snap.plugins["bad"].failures == {"GuestTrap": 3}
    assert snap.plugins["bad"].instances_discarded == 3
    assert snap.plugins["good"].hooks["run"].calls == 3


def test_host_counts_a_propagated_failure(host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.extension_point("strict", version="1.0.0", mode="each", payload="bytes",
                         failure="propagate")
    host.add(write_plugin(tmp_path / "bad", wat_module("unreachable"), name="bad",
                          implements={"strict": {"versions": ">=1,<2", "hook": "run"}}))
    with pytest.raises(plugbox.GuestTrap):
        host.call("strict", b"")
    point = host.metrics().points["strict"]
    assert (point.dispatches, point.calls, point.failures) == (
        1, {"bad": 1}, {"bad": {"GuestTrap": 1}})


def test_a_host_with_metrics_off_has_no_point_metrics(tmp_path: Path, cache_dir: Path) -> None:
    with plugbox.PluginHost(state_dir=tmp_path / "s",
                            runtime_options={"cache_dir": cache_dir, "metrics": False}) as h:
        h.extension_point("p", version="1.0.0", mode="each", payload="bytes")
        h.add(write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c",
                           implements={"p": {"versions": ">=1,<2", "hook": "run"}}))
        h.call("p", b"")
        snap = h.metrics()
        assert snap.points == {} and snap.plugins["c"].calls == 1


# -- real samples --------------------------------------------------------------------------------


def test_rust_counter_sample_service_and_kv_figures(
        rust_plugins: dict[str, Path], runtime: plugbox.Runtime) -> None:
    plugin = runtime.load(rust_plugins["counter"])
    for _ in range(3):
        plugin.call_json("counter.incr", {"name": "x"})
    assert plugin.call_json("counter.get", {"name": "x"})["value"] == 3
    m = runtime.metrics().plugins["counter"]
    assert m.hooks["counter.incr"].calls == 3 and m.hooks["counter.get"].calls == 1
    assert m.calls == 4 and m.failures == {}
    # each incr: kv.increment, clock.now, kv.set, events.emit
    assert m.service_calls["clock"] >= 3 and m.service_calls["events"] == 3
    assert m.service_calls["kv"] >= 6
    stamp = runtime.kv.get("counter", "updated/x")
    assert stamp is not None
    assert m.kv_keys == 2
    assert m.kv_bytes == len("count/x") + 8 + len("updated/x") + len(stamp)
    assert (m.kv_quota_bytes, m.kv_quota_keys) == (65536, 200)
    assert m.fuel_consumed > 0 and m.memory_peak_bytes is not None
    assert m.memory_peak_bytes % PAGE == 0 and m.service_denials == {}


def test_rust_fetcher_sample_http_figures(
        rust_plugins: dict[str, Path], runtime: plugbox.Runtime, http_server: str,
        caplog: pytest.LogCaptureFixture) -> None:
    plugin = runtime.load(rust_plugins["fetcher"])
    first = plugin.call_json("fetch", {"url": f"{http_server}/hello"})
    second = plugin.call_json("fetch", {"url": f"{http_server}/redirect-in"})  # two hops
    assert first["status"] == second["status"] == 200
    m = plugin.metrics()
    assert m.http_requests == 3 and m.http_bytes_sent == 0
    # the redirect's own body is empty; each final body is what the plugin got
    assert m.http_bytes_received == len(first["body"]) + len(second["body"])
    assert m.service_calls["http"] == 2
    assert m.log_records == 2  # one INFO line per fetch


def test_python_sample_component_figures(
        built_samples: dict[str, Path], runtime: plugbox.Runtime) -> None:
    plugin = runtime.load(built_samples["kv-notes"])
    plugin.call_json("notes.put", {"title": "a", "body": "hello"})
    plugin.call_json("notes.put", {"title": "a", "body": "again"})
    assert plugin.call_json("notes.get", {"title": "a"})["body"] == "again"
    with pytest.raises(plugbox.GuestError):
        plugin.call_json("notes.put", {"title": 5})
    m = runtime.metrics().plugins["kv-notes"]
    assert m.hooks["notes.put"].calls == 3 and m.hooks["notes.get"].calls == 1
    assert m.failures == {"GuestError": 1}
    # each put: kv.get, kv.set, clock.now, events.emit, log; the get: kv.get
    assert m.service_calls == {"kv": 5, "clock": 2, "events": 2, "log": 2}
    stored = runtime.kv.get("kv-notes", "note:a")
    assert stored is not None
    assert (m.kv_keys, m.kv_bytes) == (1, len("note:a") + len(stored))
    assert m.log_records == 2
    assert m.memory_peak_bytes is None  # a component's memories are hidden from the host
    assert m.fuel_consumed > 0 and m.instances_live == 1
