"""Prometheus exposition (plugbox.monitor): the collector's output parsed back with
prometheus_client's parser, the WSGI app served for real on 127.0.0.1, the ASGI app called
through its interface, the per-worker server, and the multi-process exporter across real
separate processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import plugbox
from plugbox.monitor import (MultiprocessExporter, PrometheusCollector, asgi_app, registry_for,
                             serve, wsgi_app)
from tests.conftest import COUNTER_BODY, REPO, wat_module, write_plugin

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parsed(text: str) -> tuple[Samples, dict[str, str]]:
    """(sample name + sorted labels -> value, family name -> type) of an exposition."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def busy_host(host: plugbox.PluginHost, tmp_path: Path) -> plugbox.PluginHost:
    """A host whose point ``p`` was dispatched 3 times to ``good`` (a counter) and ``bad``
    (traps), plus 2 direct calls of ``good``."""
    implements = {"p": {"versions": ">=1,<2", "hook": "run"}}
    host.extension_point("p", version="1.0.0", mode="each", payload="bytes")
    host.add(write_plugin(tmp_path / "good", wat_module(COUNTER_BODY), name="good",
                          implements=implements))
    host.add(write_plugin(tmp_path / "bad", wat_module("unreachable"), name="bad",
                          implements=implements))
    for _ in range(3):
        host.call("p", b"")
    good = host.get("good")
    assert good is not None
    good.plugin.call("run", b"")
    good.plugin.call("run", b"")
    return host


def test_collector_output_parses_back_to_the_snapshot(busy_host: plugbox.PluginHost) -> None:
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(busy_host))
    samples, types = parsed(generate_latest(registry).decode())
    snap = busy_host.metrics()
    good, bad = snap.plugins["good"], snap.plugins["bad"]
    assert value(samples, "plugbox_plugin_calls_total", plugin="good", hook="run") == 5
    assert value(samples, "plugbox_plugin_calls_total", plugin="bad", hook="run") == 3
    assert value(samples, "plugbox_plugin_failures_total", plugin="bad", hook="run",
                 error="GuestTrap") == 3
    assert ("plugbox_plugin_failures_total", (("error", "GuestTrap"), ("hook", "run"),
                                              ("plugin", "good"))) not in samples
    assert value(samples, "plugbox_plugin_call_duration_seconds_count", plugin="good",
                 hook="run") == 5
    assert value(samples, "plugbox_plugin_call_duration_seconds_bucket", plugin="good",
                 hook="run", le="+Inf") == 5
    assert value(samples, "plugbox_plugin_call_duration_seconds_sum", plugin="good",
                 hook="run") == pytest.approx(good.hooks["run"].latency.sum)
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items()
                     if k[0] == "plugbox_plugin_call_duration_seconds_bucket"
                     and dict(k[1])["plugin"] == "good")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert len(buckets) == len(good.latency.bounds) + 1
    assert value(samples, "plugbox_plugin_fuel_consumed_total", plugin="good") == (
        good.fuel_consumed) > 0
    assert value(samples, "plugbox_plugin_memory_peak_bytes", plugin="good") == 65536
    assert value(samples, "plugbox_plugin_instances", plugin="good") == 1
    assert value(samples, "plugbox_plugin_instances_discarded_total", plugin="bad") == 3
    assert value(samples, "plugbox_plugin_deadline_overruns_total", plugin="good") == 0
    assert value(samples, "plugbox_plugin_log_records_total", plugin="good") == 0
    assert value(samples, "plugbox_plugin_kv_quota_keys", plugin="good") == 0
    assert value(samples, "plugbox_plugin_info", plugin="good", version="0.1.0") == 1
    assert value(samples, "plugbox_point_dispatches_total", point="p") == 3
    assert value(samples, "plugbox_point_calls_total", point="p", plugin="bad") == 3
    assert value(samples, "plugbox_point_failures_total", point="p", plugin="bad",
                 error="GuestTrap") == 3
    assert value(samples, "plugbox_point_dispatch_duration_seconds_count", point="p") == 3
    assert bad.failures == {"GuestTrap": 3}
    assert types["plugbox_plugin_calls"] == "counter"
    assert types["plugbox_plugin_call_duration_seconds"] == "histogram"
    assert types["plugbox_plugin_memory_peak_bytes"] == "gauge"
    assert types["plugbox_point_dispatch_duration_seconds"] == "histogram"


def test_service_figures_are_exported(runtime: plugbox.Runtime, tmp_path: Path) -> None:
    from tests.test_metrics import CONFIG_GET, KV_SET, LOG, WORKER_BODY, work

    plugin = runtime.load(write_plugin(
        tmp_path / "w", wat_module(WORKER_BODY, LOG + KV_SET + CONFIG_GET), name="worker",
        permissions={"log": True, "kv": {"quota_bytes": 1000, "quota_keys": 10}}),
        allow_unrequested_imports=True)
    plugin.call("run", work(kv=2, denied=3))
    samples, _ = parsed(generate_latest(registry_for(runtime)).decode())
    assert value(samples, "plugbox_plugin_service_calls_total", plugin="worker",
                 service="kv") == 2
    assert value(samples, "plugbox_plugin_service_calls_total", plugin="worker",
                 service="config") == 3
    assert value(samples, "plugbox_plugin_service_denials_total", plugin="worker",
                 service="config") == 3
    assert value(samples, "plugbox_plugin_kv_keys", plugin="worker") == 2
    assert value(samples, "plugbox_plugin_kv_bytes", plugin="worker") == 10
    assert value(samples, "plugbox_plugin_kv_quota_bytes", plugin="worker") == 1000
    assert value(samples, "plugbox_plugin_http_requests_total", plugin="worker") == 0
    # a bare Runtime has no extension points
    assert not any(name.startswith("plugbox_point_") for name, _ in samples)


def test_a_scrape_sees_plugins_loaded_since(runtime: plugbox.Runtime, tmp_path: Path) -> None:
    registry = registry_for(runtime)
    assert parsed(generate_latest(registry).decode())[0] == {}
    plugin = runtime.load(write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c"))
    plugin.call("run", b"")
    samples, _ = parsed(generate_latest(registry).decode())
    assert value(samples, "plugbox_plugin_calls_total", plugin="c", hook="run") == 1


def test_the_collector_refuses_what_has_no_metrics() -> None:
    with pytest.raises(plugbox.UsageError, match="PluginHost or a Runtime"):
        PrometheusCollector(object())  # type: ignore[arg-type]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def wsgi_url(busy_host: plugbox.PluginHost) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, wsgi_app(busy_host), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_the_wsgi_app_serves_metrics_over_http(wsgi_url: str) -> None:
    response = httpx.get(f"{wsgi_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples, _ = parsed(response.text)
    assert value(samples, "plugbox_plugin_calls_total", plugin="good", hook="run") == 5
    assert value(samples, "plugbox_point_dispatches_total", point="p") == 3


def test_the_asgi_app_answers_through_its_interface(busy_host: plugbox.PluginHost) -> None:
    app = asgi_app(busy_host)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"",
             "headers": [], "asgi": {"version": "3.0"}, "http_version": "1.1"}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    samples, _ = parsed(body)
    assert value(samples, "plugbox_plugin_calls_total", plugin="bad", hook="run") == 3


def test_serve_exposes_one_process_on_its_own_port(busy_host: plugbox.PluginHost) -> None:
    server, thread = serve(busy_host, 0)
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics")
        samples, _ = parsed(response.text)
        assert value(samples, "plugbox_plugin_calls_total", plugin="good", hook="run") == 5
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- multi-process mode ----------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import prometheus_client  # PROMETHEUS_MULTIPROC_DIR is set: multi-process mode
    import plugbox
    from plugbox.monitor import MultiprocessExporter

    calls = int(sys.argv[1])
    with plugbox.Runtime(state_dir=sys.argv[2], cache_dir=sys.argv[3]) as rt:
        plugin = rt.load({plugin!r})
        exporter = MultiprocessExporter(rt)
        for i in range(calls):
            plugin.call("run", b"")
            if i == 0:
                exporter.update()  # updates add the growth since the last one
        with __import__("pytest").raises(plugbox.FuelExhausted):
            plugin.call("run", b"", fuel=1)
        exporter.update()
        exporter.update()  # nothing new: adds nothing
""")


def test_multiprocess_exporter_sums_counters_across_real_processes(
        tmp_path: Path, cache_dir: Path) -> None:
    from prometheus_client import multiprocess

    plugin_dir = write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c")
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), plugin=str(plugin_dir)))
    workers = [subprocess.Popen([sys.executable, str(script), str(n), str(tmp_path / f"s{n}"),
                                 str(cache_dir)], env=env, stderr=subprocess.PIPE, text=True)
               for n in (3, 5)]
    for proc in workers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    # What a gunicorn app's /metrics does in multi-process mode: aggregate the directory.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(mp_dir))
    samples, _ = parsed(generate_latest(registry).decode())
    assert value(samples, "plugbox_plugin_calls_total", plugin="c", hook="run") == 3 + 5 + 2
    assert value(samples, "plugbox_plugin_failures_total", plugin="c", hook="run",
                 error="FuelExhausted") == 2
    assert value(samples, "plugbox_plugin_instances_discarded_total", plugin="c") == 2
    assert value(samples, "plugbox_plugin_fuel_consumed_total", plugin="c") > 0
    assert value(samples, "plugbox_plugin_instances", plugin="c") == 0  # both discarded
    # gunicorn's child_exit hook marks a worker dead: its live gauges go (livesum)
    for proc in workers:
        multiprocess.mark_process_dead(proc.pid, path=str(mp_dir))
    samples, _ = parsed(generate_latest(registry).decode())
    assert ("plugbox_plugin_instances", (("plugin", "c"),)) not in samples
    assert value(samples, "plugbox_plugin_calls_total", plugin="c", hook="run") == 10


def test_multiprocess_exporter_runs_on_a_timer(runtime: plugbox.Runtime, tmp_path: Path) -> None:
    plugin = runtime.load(write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c"))
    registry = CollectorRegistry()
    exporter = MultiprocessExporter(runtime, registry=registry)
    exporter.start(interval=60)
    with pytest.raises(plugbox.UsageError, match="already started"):
        exporter.start()
    plugin.call("run", b"")
    exporter.stop()  # one last update
    exporter.stop()
    samples, _ = parsed(generate_latest(registry).decode())
    assert value(samples, "plugbox_plugin_calls_total", plugin="c", hook="run") == 1
    assert value(samples, "plugbox_plugin_instances", plugin="c") == 1
    with pytest.raises(plugbox.UsageError, match="positive number"):
        exporter.start(interval=0)
