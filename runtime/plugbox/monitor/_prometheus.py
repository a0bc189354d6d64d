"""Prometheus exposition of plugbox metrics (see docs/monitoring.md for every name)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from .._errors import UsageError
from .._metrics import Histogram, Metrics

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client import make_asgi_app as _make_asgi_app
    from prometheus_client import make_wsgi_app as _make_wsgi_app
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily, Metric)
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("plugbox.monitor needs prometheus_client: pip install 'plugbox[metrics]'"
                      ) from exc


class MetricsSource(Protocol):
    """What the exporters read: a :class:`plugbox.PluginHost` or a :class:`plugbox.Runtime`."""

    def metrics(self) -> Metrics:
        """A snapshot of the metrics."""
        ...


def _check_source(source: object) -> MetricsSource:
    if not callable(getattr(source, "metrics", None)):
        raise UsageError(f"expected a PluginHost or a Runtime (anything with metrics()), not "
                         f"{type(source).__name__}")
    return source  # type: ignore[return-value]


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as the exposition wants them."""
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, n in zip(h.bounds, h.counts):
        seen += n
        out.append((repr(float(bound)), float(seen)))
    out.append(("+Inf", float(seen + h.counts[-1])))
    return out


class PrometheusCollector(Collector):
    """A ``prometheus_client`` collector that reads ``source.metrics()`` (a PluginHost or a
    Runtime) at every scrape, so a scrape sees the plugins loaded at that moment; register
    it with ``registry.register(PrometheusCollector(host))`` or use :func:`registry_for`.

    Families (``plugin`` label on each ``plugbox_plugin_*``, ``hook`` where per hook):
    ``plugbox_plugin_calls_total``, ``plugbox_plugin_failures_total{error}``,
    ``plugbox_plugin_call_duration_seconds`` (histogram), ``plugbox_plugin_fuel_consumed_total``,
    ``plugbox_plugin_memory_peak_bytes``, ``plugbox_plugin_instances``,
    ``plugbox_plugin_instances_discarded_total``, ``plugbox_plugin_deadline_overruns_total``,
    ``plugbox_plugin_service_calls_total{service}``,
    ``plugbox_plugin_service_denials_total{service}``, ``plugbox_plugin_kv_bytes``,
    ``plugbox_plugin_kv_keys``, ``plugbox_plugin_kv_quota_bytes``,
    ``plugbox_plugin_kv_quota_keys``, ``plugbox_plugin_http_requests_total``,
    ``plugbox_plugin_http_sent_bytes_total``, ``plugbox_plugin_http_received_bytes_total``,
    ``plugbox_plugin_log_records_total``, ``plugbox_plugin_log_dropped_total``,
    ``plugbox_plugin_info{version}``; per extension point (a PluginHost):
    ``plugbox_point_dispatches_total{point}``, ``plugbox_point_dispatch_duration_seconds``,
    ``plugbox_point_calls_total{point,plugin}``,
    ``plugbox_point_failures_total{point,plugin,error}``.
    """

    def __init__(self, source: MetricsSource) -> None:
        self._source = _check_source(source)

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families depend on what is loaded at scrape time (so
        registering does not scrape)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The families, from one snapshot of the source's metrics."""
        yield from families(self._source.metrics())


def families(snap: Metrics) -> Iterator[Metric]:
    """The Prometheus metric families of one snapshot (what the collector yields)."""
    P, PH, PS = ["plugin"], ["plugin", "hook"], ["plugin", "service"]
    calls = CounterMetricFamily("plugbox_plugin_calls", "Plugin calls, failed ones too", labels=PH)
    failures = CounterMetricFamily("plugbox_plugin_failures",
                                   "Failed plugin calls by error class",
                                   labels=[*PH, "error"])
    duration = HistogramMetricFamily("plugbox_plugin_call_duration_seconds",
                                     "Plugin call latency as the caller saw it", labels=PH)
    fuel = CounterMetricFamily("plugbox_plugin_fuel_consumed",
                               "Fuel used by the plugin's hook calls", labels=P)
    memory = GaugeMetricFamily("plugbox_plugin_memory_peak_bytes",
                               "Largest linear memory of any of the plugin's instances",
                               labels=P)
    live = GaugeMetricFamily("plugbox_plugin_instances", "Live instances of the plugin",
                             labels=P)
    discarded = CounterMetricFamily("plugbox_plugin_instances_discarded",
                                    "Instances discarded after a trap or ABI violation",
                                    labels=P)
    overruns = CounterMetricFamily("plugbox_plugin_deadline_overruns",
                                   "Calls that returned well after their deadline", labels=P)
    svc_calls = CounterMetricFamily("plugbox_plugin_service_calls",
                                    "Host-service calls the plugin made", labels=PS)
    svc_denied = CounterMetricFamily("plugbox_plugin_service_denials",
                                     "Host-service calls refused for lack of permission",
                                     labels=PS)
    kv_bytes = GaugeMetricFamily("plugbox_plugin_kv_bytes", "Bytes the plugin stores in kv",
                                 labels=P)
    kv_keys = GaugeMetricFamily("plugbox_plugin_kv_keys", "Keys the plugin stores in kv",
                                labels=P)
    kv_qb = GaugeMetricFamily("plugbox_plugin_kv_quota_bytes", "The plugin's kv byte quota",
                              labels=P)
    kv_qk = GaugeMetricFamily("plugbox_plugin_kv_quota_keys", "The plugin's kv key quota",
                              labels=P)
    http_req = CounterMetricFamily("plugbox_plugin_http_requests",
                                   "HTTP requests the plugin made (each redirect hop)",
                                   labels=P)
    http_sent = CounterMetricFamily("plugbox_plugin_http_sent_bytes",
                                    "HTTP request body bytes sent", labels=P)
    http_recv = CounterMetricFamily("plugbox_plugin_http_received_bytes",
                                    "HTTP response body bytes received", labels=P)
    logs = CounterMetricFamily("plugbox_plugin_log_records", "Log records written", labels=P)
    logs_dropped = CounterMetricFamily("plugbox_plugin_log_dropped",
                                       "Log records dropped by the rate limit", labels=P)
    info = GaugeMetricFamily("plugbox_plugin_info", "A loaded plugin and its version",
                             labels=["plugin", "version"])
    for name, pm in snap.plugins.items():
        info.add_metric([name, pm.version], 1)
        for hook, hm in pm.hooks.items():
            calls.add_metric([name, hook], hm.calls)
            for error, n in hm.failures.items():
                failures.add_metric([name, hook, error], n)
            duration.add_metric([name, hook], _buckets(hm.latency), hm.latency.sum)
        fuel.add_metric([name], pm.fuel_consumed)
        if pm.memory_peak_bytes is not None:
            memory.add_metric([name], pm.memory_peak_bytes)
        live.add_metric([name], pm.instances_live)
        discarded.add_metric([name], pm.instances_discarded)
        overruns.add_metric([name], pm.overruns)
        for service, n in pm.service_calls.items():
            svc_calls.add_metric([name, service], n)
        for service, n in pm.service_denials.items():
            svc_denied.add_metric([name, service], n)
        kv_bytes.add_metric([name], pm.kv_bytes)
        kv_keys.add_metric([name], pm.kv_keys)
        kv_qb.add_metric([name], pm.kv_quota_bytes)
        kv_qk.add_metric([name], pm.kv_quota_keys)
        http_req.add_metric([name], pm.http_requests)
        http_sent.add_metric([name], pm.http_bytes_sent)
        http_recv.add_metric([name], pm.http_bytes_received)
        logs.add_metric([name], pm.log_records)
        logs_dropped.add_metric([name], pm.log_dropped)
    yield from (calls, failures, duration, fuel, memory, live, discarded, overruns, svc_calls,
                svc_denied, kv_bytes, kv_keys, kv_qb, kv_qk, http_req, http_sent, http_recv,
                logs, logs_dropped, info)
    if not snap.points:
        return
    dispatches = CounterMetricFamily("plugbox_point_dispatches", "Dispatches of the point",
                                     labels=["point"])
    dispatch_s = HistogramMetricFamily("plugbox_point_dispatch_duration_seconds",
                                       "Whole-dispatch latency", labels=["point"])
    pcalls = CounterMetricFamily("plugbox_point_calls",
                                 "Implementation calls made by the point's dispatches",
                                 labels=["point", "plugin"])
    pfail = CounterMetricFamily("plugbox_point_failures",
                                "Implementation failures by plugin and error class",
                                labels=["point", "plugin", "error"])
    for point, pt in snap.points.items():
        dispatches.add_metric([point], pt.dispatches)
        dispatch_s.add_metric([point], _buckets(pt.latency), pt.latency.sum)
        for plugin, n in pt.calls.items():
            pcalls.add_metric([point, plugin], n)
        for plugin, per in pt.failures.items():
            for error, n in per.items():
                pfail.add_metric([point, plugin, error], n)
    yield from (dispatches, dispatch_s, pcalls, pfail)


def registry_for(source: MetricsSource) -> CollectorRegistry:
    """A new ``CollectorRegistry`` holding a :class:`PrometheusCollector` of ``source`` only
    (not the process's default registry, so nothing else is exposed unless you add it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrometheusCollector(source))
    return registry


def wsgi_app(source: MetricsSource) -> Callable[..., Any]:
    """A WSGI app answering every request with the metrics of ``source`` in the Prometheus
    text format (``prometheus_client.make_wsgi_app`` over :func:`registry_for`); mount it at
    ``/metrics``."""
    return _make_wsgi_app(registry_for(source))


def asgi_app(source: MetricsSource) -> Callable[..., Any]:
    """The ASGI twin of :func:`wsgi_app` (``prometheus_client.make_asgi_app``)."""
    return _make_asgi_app(registry_for(source))


def serve(source: MetricsSource, port: int, addr: str = "127.0.0.1") -> tuple[Any, Any]:
    """Serve the metrics of ``source`` over HTTP on ``addr:port`` from a daemon thread
    (``prometheus_client.start_http_server``; port 0 picks a free one: read it from
    ``server.server_port``). Returns ``(server, thread)``; ``server.shutdown()`` stops it.
    The multi-process recipe without a shared directory: one port per worker."""
    server, thread = _start_http_server(port, addr=addr, registry=registry_for(source))
    return server, thread


class MultiprocessExporter:
    """Mirrors a source's counters and gauges into prometheus_client's own ``Counter`` and
    ``Gauge`` objects, which prometheus_client's multi-process mode (``PROMETHEUS_MULTIPROC_DIR``
    set before prometheus_client is imported; gunicorn) writes to per-process files and its
    ``MultiProcessCollector`` sums across processes. A custom collector such as
    :class:`PrometheusCollector` is not aggregated there, hence this.

    Each :meth:`update` adds what every counter grew by since the last one (per plugin, hook,
    error, service; a counter that went down, because a plugin was reloaded, restarts from its
    new value) and sets the gauges (``multiprocess_mode="livesum"``: summed over live
    processes). Call it from a timer (:meth:`start`) or before each scrape. Histograms are not
    mirrored (prometheus_client can only observe single values); scrape each worker's own
    port (:func:`serve`) for latency. Names are those of :class:`PrometheusCollector`.
    ``registry``: where the metric objects register (default: prometheus_client's default
    registry, as in its multi-process recipe; the values reach the scrape through the
    directory either way). One exporter per process and registry: a second one would
    register the same names again, which prometheus_client refuses.
    """

    def __init__(self, source: MetricsSource, registry: CollectorRegistry | None = None
                 ) -> None:
        self._source = _check_source(source)
        kw: dict[str, Any] = {} if registry is None else {"registry": registry}
        PH, P, PS = ["plugin", "hook"], ["plugin"], ["plugin", "service"]
        self._counters: dict[str, Counter] = {
            "calls": Counter("plugbox_plugin_calls", "Plugin calls, failed ones too", PH, **kw),
            "failures": Counter("plugbox_plugin_failures", "Failed plugin calls by error class",
                                [*PH, "error"], **kw),
            "fuel": Counter("plugbox_plugin_fuel_consumed",
                            "Fuel used by the plugin's hook calls", P, **kw),
            "discarded": Counter("plugbox_plugin_instances_discarded",
                                 "Instances discarded after a trap or ABI violation", P, **kw),
            "overruns": Counter("plugbox_plugin_deadline_overruns",
                                "Calls that returned well after their deadline", P, **kw),
            "svc_calls": Counter("plugbox_plugin_service_calls",
                                 "Host-service calls the plugin made", PS, **kw),
            "svc_denied": Counter("plugbox_plugin_service_denials",
                                  "Host-service calls refused for lack of permission", PS, **kw),
            "http_req": Counter("plugbox_plugin_http_requests", "HTTP requests the plugin made",
                                P, **kw),
            "http_sent": Counter("plugbox_plugin_http_sent_bytes",
                                 "HTTP request body bytes sent", P, **kw),
            "http_recv": Counter("plugbox_plugin_http_received_bytes",
                                 "HTTP response body bytes received", P, **kw),
            "logs": Counter("plugbox_plugin_log_records", "Log records written", P, **kw),
            "logs_dropped": Counter("plugbox_plugin_log_dropped",
                                    "Log records dropped by the rate limit", P, **kw),
            "dispatches": Counter("plugbox_point_dispatches", "Dispatches of the point",
                                  ["point"], **kw),
        }
        g = {"multiprocess_mode": "livesum", **kw}
        self._gauges: dict[str, Gauge] = {
            "live": Gauge("plugbox_plugin_instances", "Live instances of the plugin", P, **g),
            "kv_bytes": Gauge("plugbox_plugin_kv_bytes", "Bytes the plugin stores in kv", P,
                              **g),
            "kv_keys": Gauge("plugbox_plugin_kv_keys", "Keys the plugin stores in kv", P, **g),
        }
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _add(self, counter: str, labels: tuple[str, ...], value: float) -> None:
        key = (counter, labels)
        before = self._last.get(key, 0.0)
        delta = value - before if value >= before else value  # reloaded: started over
        self._last[key] = value
        if delta > 0:
            self._counters[counter].labels(*labels).inc(delta)

    def update(self) -> None:
        """Mirror one snapshot of the source (thread-safe)."""
        snap = self._source.metrics()
        with self._lock:
            for name, pm in snap.plugins.items():
                for hook, hm in pm.hooks.items():
                    self._add("calls", (name, hook), hm.calls)
                    for error, n in hm.failures.items():
                        self._add("failures", (name, hook, error), n)
                for counter, value in (("fuel", pm.fuel_consumed),
                                       ("discarded", pm.instances_discarded),
                                       ("overruns", pm.overruns),
                                       ("http_req", pm.http_requests),
                                       ("http_sent", pm.http_bytes_sent),
                                       ("http_recv", pm.http_bytes_received),
                                       ("logs", pm.log_records),
                                       ("logs_dropped", pm.log_dropped)):
                    self._add(counter, (name,), value)
                for service, n in pm.service_calls.items():
                    self._add("svc_calls", (name, service), n)
                for service, n in pm.service_denials.items():
                    self._add("svc_denied", (name, service), n)
                self._gauges["live"].labels(name).set(pm.instances_live)
                self._gauges["kv_bytes"].labels(name).set(pm.kv_bytes)
                self._gauges["kv_keys"].labels(name).set(pm.kv_keys)
            for point, pt in snap.points.items():
                self._add("dispatches", (point,), pt.dispatches)

    def start(self, interval: float = 5.0) -> None:
        """Call :meth:`update` every ``interval`` seconds from a daemon thread until
        :meth:`stop`."""
        if not (isinstance(interval, (int, float)) and math.isfinite(interval)
                and interval > 0):
            raise UsageError(f"interval must be a positive number of seconds, not {interval!r}")
        if self._thread is not None:
            raise UsageError("this MultiprocessExporter is already started; stop() it first")

        def run() -> None:
            while not self._stop.wait(interval):
                self.update()

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="plugbox-prometheus-mirror",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer thread, after one last :meth:`update`. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
            self.update()
