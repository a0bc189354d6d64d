"""Behaviour-anomaly rules (issue 10 §4), each driven by a plugin built to trip it: a WAT
"prober" whose payload says how many denied event emits, how much spinning, how much memory
growth and how many kv writes to do, and the Rust fetcher sample for http hosts."""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.monitor import Anomaly, AnomalyMonitor, AnomalyRules
from tests.conftest import wat_module, write_plugin

IMPORTS = ('(import "plugbox:plugin/events@1.0.0" "emit" '
           '(func $emit (param i32 i32 i32 i32 i32)))'
           '(import "plugbox:plugin/kv@1.0.0" "set" (func $kv_set (param i32 i32 i32 i32 i32)))'
           '(data (i32.const 300) "bad.topic")')

#: payload byte 0: emits to the topic "bad.topic" (denied: only "ok.*" is granted); byte 1:
#: spin 256 x that many iterations; byte 2: memory pages to grow; byte 3: kv writes (keys
#: "k" + chr(97 + i), 100-byte values). Returns ok(empty).
BODY = """
    (local $i i32)
    (local.set $i (i32.const 0))
    (block $d0 (loop $l0
      (br_if $d0 (i32.ge_u (local.get $i) (i32.load8_u (local.get $pp))))
      (call $emit (i32.const 300) (i32.const 9) (i32.const 300) (i32.const 1) (i32.const 256))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l0)))
    (local.set $i (i32.mul (i32.load8_u offset=1 (local.get $pp)) (i32.const 256)))
    (block $d1 (loop $l1
      (br_if $d1 (i32.eqz (local.get $i)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $l1)))
    (drop (memory.grow (i32.load8_u offset=2 (local.get $pp))))
    (local.set $i (i32.const 0))
    (block $d3 (loop $l3
      (br_if $d3 (i32.ge_u (local.get $i) (i32.load8_u offset=3 (local.get $pp))))
      (i32.store8 (i32.const 400) (i32.const 107))
      (i32.store8 (i32.const 401) (i32.add (i32.const 97) (local.get $i)))
      (call $kv_set (i32.const 400) (i32.const 2) (i32.const 500) (i32.const 100)
                    (i32.const 256))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l3)))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16)
"""


def todo(denied: int = 0, spin: int = 1, grow: int = 0, kv: int = 0) -> bytes:
    return bytes([denied, spin, grow, kv])


@pytest.fixture
def prober(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "prober", wat_module(BODY, IMPORTS), name="prober",
                        permissions={"events": {"topics": ["ok.*"]},
                                     "kv": {"quota_bytes": 1000, "quota_keys": 50}},
                        limits={"fuel": 100_000_000, "memory_bytes": 64 * 65536})


@pytest.fixture
def watched(host: plugbox.PluginHost) -> Iterator[Callable[..., AnomalyMonitor]]:
    monitors: list[AnomalyMonitor] = []

    def make(**rules: Any) -> AnomalyMonitor:
        monitor = AnomalyMonitor(host, AnomalyRules(**rules))
        monitors.append(monitor)
        return monitor

    yield make
    for m in monitors:
        m.close()


def rules_of(anomalies: list[Anomaly]) -> list[str]:
    return [a.rule for a in anomalies]


def test_a_burst_of_denied_calls_is_probing(host: plugbox.PluginHost, prober: Path,
                                            watched: Callable[..., AnomalyMonitor]) -> None:
    monitor = watched(denied_burst=10)
    events: list[plugbox.LifecycleEvent] = []
    host.subscribe_lifecycle(events.append)
    plugin = host.add(prober).plugin
    plugin.call("run", todo(denied=4))
    plugin.call("run", todo(denied=5))
    assert monitor.anomalies() == []  # 9 denials
    plugin.call("run", todo(denied=1))  # the tenth within the window
    (anomaly,) = monitor.anomalies()
    assert (anomaly.rule, anomaly.plugin, anomaly.action) == ("denied-burst", "prober", "event")
    assert anomaly.detail.startswith("10 service calls denied within 60 s")
    assert [(e.kind, e.plugin) for e in events] == [("anomaly", "prober")]
    assert events[0].reason is not None and events[0].reason.startswith("denied-burst: ")
    plugin.call("run", todo(denied=20))
    assert len(monitor.anomalies()) == 1  # fires once while it lasts


def test_a_fuel_spike_against_the_hooks_median(host: plugbox.PluginHost, prober: Path,
                                               watched: Callable[..., AnomalyMonitor],
                                               caplog: pytest.LogCaptureFixture) -> None:
    monitor = watched(history_calls=20, fuel_factor=10.0)
    plugin = host.add(prober).plugin
    for _ in range(20):
        plugin.call("run", todo(spin=2))
    plugin.call("run", todo(spin=8))  # 4x: usual enough
    assert monitor.anomalies() == []
    with caplog.at_level(logging.WARNING, logger="plugbox.anomaly"):
        plugin.call("run", todo(spin=60))  # ~30x
    (anomaly,) = monitor.anomalies()
    assert (anomaly.rule, anomaly.hook, anomaly.action) == ("fuel-spike", "run", "log")
    assert anomaly.figures["value"] >= 10 * anomaly.figures["median"]
    assert "its median of" in anomaly.detail
    assert any("anomaly fuel-spike" in r.getMessage() for r in caplog.records)


def test_a_memory_spike(host: plugbox.PluginHost, prober: Path,
                        watched: Callable[..., AnomalyMonitor]) -> None:
    monitor = watched(history_calls=20, memory_factor=10.0)
    plugin = host.add(prober).plugin
    for _ in range(20):
        plugin.call("run", todo())  # one page
    plugin.call("run", todo(grow=12))  # 13 pages
    (anomaly,) = monitor.anomalies()
    assert anomaly.rule == "memory-spike" and anomaly.figures["value"] == 13 * 65536


def test_kv_growth_near_its_quota_and_the_quarantine_action(
        host: plugbox.PluginHost, prober: Path, watched: Callable[..., AnomalyMonitor]) -> None:
    monitor = watched(kv_fraction=0.9, kv_action="quarantine")
    host.extension_point("x", version="1.0.0", payload="bytes")
    plugin = host.add(prober).plugin
    plugin.call("run", todo(kv=4))  # 408 of 1000 bytes
    assert monitor.anomalies() == []
    time.sleep(1.05)  # the kv usage is read at most once a second
    plugin.call("run", todo(kv=9))  # 918 bytes
    (anomaly,) = monitor.anomalies()
    assert anomaly.rule == "kv-near-quota" and "92% of its quota" in anomaly.detail
    state = host.breakers()["prober"]
    assert state.state == "open" and state.manual
    assert state.reason is not None and state.reason.startswith("anomaly kv-near-quota")


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def second_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_to_a_new_host_after_the_learning_calls(
        tmp_path: Path, cache_dir: Path, rust_plugins: dict[str, Path], http_server: str,
        second_server: str) -> None:
    host = plugbox.PluginHost(state_dir=tmp_path / "s", policy=plugbox.Policy(
        http_hosts=("127.0.0.1:*",)), runtime_options={"cache_dir": cache_dir})
    monitor = AnomalyMonitor(host, AnomalyRules(new_host_after_calls=3))
    plugin = host.add(rust_plugins["fetcher"]).plugin
    for _ in range(4):
        assert plugin.call_json("fetch", {"url": f"{http_server}/hello"})["status"] == 200
    assert monitor.anomalies() == []  # learnt in the first calls
    assert plugin.call_json("fetch", {"url": f"{second_server}/x"})["status"] == 200
    (anomaly,) = monitor.anomalies()
    port = second_server.rsplit(":", 1)[1]
    assert anomaly.rule == "new-http-host" and anomaly.figures["host"] == f"127.0.0.1:{port}"
    plugin.call_json("fetch", {"url": f"{second_server}/y"})
    assert len(monitor.anomalies()) == 1
    monitor.close()
    host.close()


def test_rules_refuse_nonsense() -> None:
    with pytest.raises(plugbox.UsageError, match="action must be one of"):
        AnomalyRules(fuel_action="explode")
    with pytest.raises(plugbox.UsageError, match="fuel_factor"):
        AnomalyRules(fuel_factor=0.5)
    with pytest.raises(plugbox.UsageError, match="kv_fraction"):
        AnomalyRules(kv_fraction=2)
