"""Metrics: the accumulators the call path updates, and the frozen snapshots read from them.

The hot path (``Plugin.call`` with metrics on) costs one C call per successful call,
``engine._speedups.observe``, which replaces the clock read the call makes anyway (its overrun
check): it reads the clock, takes the duration's bit length in nanoseconds as its bucket
(powers of two, so no search) and adds to an int64 accumulator. The pure-ctypes build does
the same in Python. Failures add a clock read and a dict increment. Fuel and memory are not read per call at all: the call sequence (C, or its
ctypes twin) leaves them in the instance's control words, and a snapshot sums them up. Every
snapshot type is a frozen dataclass, so a snapshot never changes under its reader.

Counters are plain attribute and list-item increments under the GIL: exact in tests and for
any single-threaded caller; with many threads calling one plugin a concurrent increment may,
rarely, be lost (the same holds for ``Plugin.calls``).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._errors import UsageError

__all__ = ["CallTracer", "Histogram", "HookMetrics", "LATENCY_BOUNDS", "Metrics",
           "PluginMetrics", "PointMetrics", "tracer_for"]

#: Raw slots of an accumulator: slot ``b`` counts durations of ``b`` bits in nanoseconds
#: (``ns.bit_length() == b``, so below ``2**b`` ns); slot :data:`SUM_SLOT` holds the total ns.
NS_SLOTS: Final = 64
SUM_SLOT: Final = NS_SLOTS
#: The smallest and largest bucket bound, as powers of two of nanoseconds.
_LOW_BITS, _HIGH_BITS = 10, 34
#: Upper bounds (seconds, as Prometheus' ``le``) of the latency histogram buckets, powers of
#: two of nanoseconds from 1.024 us to 17.2 s (a factor 2 apart); a last bucket above them
#: counts the rest (``+Inf``). A duration of exactly a bound counts in the next bucket (the
#: bounds are exact to the nanosecond).
LATENCY_BOUNDS: Final[tuple[float, ...]] = tuple(
    (1 << b) / 1e9 for b in range(_LOW_BITS, _HIGH_BITS + 1))


class CallStats:
    """The accumulator of one hook (or one extension point): a latency histogram over
    :data:`LATENCY_BOUNDS` and failures by error class. Not public; read it through
    :meth:`histogram`."""

    __slots__ = ("slots", "address", "failures")

    def __init__(self) -> None:
        #: NS_SLOTS bit-length counts, then the total ns: int64s the C hot path updates at
        #: ``address`` (always under the GIL)
        self.slots = (ctypes.c_int64 * (NS_SLOTS + 1))()
        self.address: int = ctypes.addressof(self.slots)
        #: error class name -> count
        self.failures: dict[str, int] = {}

    def observe(self, seconds: float) -> None:
        """Count one call that took ``seconds``."""
        ns = max(0, int(seconds * 1e9))
        self.slots[min(NS_SLOTS - 1, ns.bit_length())] += 1
        self.slots[SUM_SLOT] += ns

    @property
    def count(self) -> int:
        """Durations observed."""
        return sum(self.slots[:NS_SLOTS])

    def fail(self, error: BaseException) -> None:
        """Count one failure by the class of ``error``."""
        name = type(error).__name__
        failures = self.failures
        failures[name] = failures.get(name, 0) + 1

    def histogram(self) -> Histogram:
        """A frozen copy of the latency histogram over :data:`LATENCY_BOUNDS`."""
        slots = self.slots[:]  # one copy: the hot path may go on meanwhile
        counts = [0] * (len(LATENCY_BOUNDS) + 1)
        for bits in range(NS_SLOTS):
            n = slots[bits]
            if n:
                counts[min(max(0, bits - _LOW_BITS), len(LATENCY_BOUNDS))] += n
        return Histogram(LATENCY_BOUNDS, tuple(counts), slots[SUM_SLOT] / 1e9)


@dataclass(frozen=True)
class Histogram:
    """A latency histogram: ``counts[i]`` calls took at most ``bounds[i]`` seconds and more
    than ``bounds[i - 1]``; ``counts[-1]`` took longer than ``bounds[-1]``. ``sum`` is the
    total seconds."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """How many observations the histogram holds."""
        return sum(self.counts)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0 to 100) in seconds, interpolated linearly inside its
        bucket as Prometheus' ``histogram_quantile`` does (so as exact as the buckets are
        fine: within a factor 2.5); NaN for an empty histogram. One above the last bound
        reads as the last bound."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be from 0 to 100, not {q!r}")
        total = self.count
        if total == 0:
            return math.nan
        rank = q / 100 * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                low = self.bounds[i - 1] if i else 0.0
                return low + (self.bounds[i] - low) * max(0.0, rank - seen) / n
            seen += n
        return self.bounds[-1]  # pragma: no cover - rank <= total always stops above

    @property
    def p50(self) -> float:
        """The median, seconds."""
        return self.percentile(50)

    @property
    def p95(self) -> float:
        """The 95th percentile, seconds."""
        return self.percentile(95)

    @property
    def p99(self) -> float:
        """The 99th percentile, seconds."""
        return self.percentile(99)

    def __add__(self, other: Histogram) -> Histogram:
        if self.bounds != other.bounds:
            return NotImplemented
        return Histogram(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts)),
                         self.sum + other.sum)


def empty_histogram() -> Histogram:
    """A histogram with no observations over :data:`LATENCY_BOUNDS`."""
    return Histogram(LATENCY_BOUNDS, (0,) * (len(LATENCY_BOUNDS) + 1), 0.0)


@dataclass(frozen=True)
class HookMetrics:
    """One hook of one plugin: ``calls`` (every call that reached the plugin, failed ones
    too), ``failures`` by error class name (``{"FuelExhausted": 1}``) and the ``latency``
    histogram (seconds, as the caller saw them: waiting for an instance included)."""

    hook: str
    calls: int
    failures: Mapping[str, int]
    latency: Histogram


@dataclass(frozen=True)
class PluginMetrics:
    """A snapshot of one loaded plugin (see docs/monitoring.md for each field).

    ``calls``/``failures``/``latency`` sum ``hooks``. ``fuel_consumed`` is the fuel all its
    hook calls used (instances since discarded included), ``memory_peak_bytes`` the largest
    linear memory any of its instances had after a call (None for a component, whose memories
    the host cannot see). ``service_calls`` and ``service_denials`` count host-service calls by
    service (``"kv"``, ``"log"``, ``"http"``, ...); ``kv_bytes``/``kv_keys`` are what it stores
    now, against ``kv_quota_bytes``/``kv_quota_keys`` (0 without a kv permission).
    """

    name: str
    version: str
    calls: int
    failures: Mapping[str, int]
    latency: Histogram
    hooks: Mapping[str, HookMetrics]
    fuel_consumed: int
    memory_peak_bytes: int | None
    instances_live: int
    instances_discarded: int
    overruns: int
    service_calls: Mapping[str, int]
    service_denials: Mapping[str, int]
    kv_bytes: int
    kv_keys: int
    kv_quota_bytes: int
    kv_quota_keys: int
    http_requests: int
    http_bytes_sent: int
    http_bytes_received: int
    log_records: int
    log_dropped: int

    @property
    def fuel_per_call(self) -> float:
        """Mean fuel per call (0.0 before the first call)."""
        return self.fuel_consumed / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class PointMetrics:
    """One extension point of a PluginHost: ``dispatches`` (every dispatch, background ones
    included once they ran), ``latency`` of whole dispatches, and per implementing plugin the
    ``calls`` made and ``failures`` by error class (isolated or propagated)."""

    name: str
    dispatches: int
    latency: Histogram
    calls: Mapping[str, int]
    failures: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class Metrics:
    """What ``Runtime.metrics()`` and ``PluginHost.metrics()`` return: ``plugins`` by name
    (the loaded ones) and, for a host, ``points`` by name (empty for a bare Runtime)."""

    plugins: Mapping[str, PluginMetrics]
    points: Mapping[str, PointMetrics] = field(default_factory=dict)


class PointStats:
    """The accumulator of one extension point (PluginHost): dispatch latency, and per plugin
    the calls made and failures by class. Not public.

    Each plugin's call count is an int64 (:meth:`counter`) whose address a dispatch plan
    keeps, so the C dispatch loop (``engine._speedups.dispatch``) counts a call with one
    store, as ``CallStats`` counts latencies."""

    __slots__ = ("dispatch", "_calls", "failures")

    def __init__(self) -> None:
        self.dispatch = CallStats()
        self._calls: dict[str, ctypes.c_int64] = {}
        self.failures: dict[str, dict[str, int]] = {}

    def counter(self, plugin: str) -> ctypes.c_int64:
        """``plugin``'s call counter at this point (made on first use)."""
        found = self._calls.get(plugin)
        if found is None:
            found = self._calls.setdefault(plugin, ctypes.c_int64(0))
        return found

    def count_call(self, plugin: str) -> None:
        """Count one call of ``plugin``'s implementation."""
        self.counter(plugin).value += 1

    @property
    def calls(self) -> dict[str, int]:
        """Calls made per plugin (plugins never called left out)."""
        return {name: c.value for name, c in list(self._calls.items()) if c.value}

    @property
    def used(self) -> bool:
        """Whether anything was counted here yet (a dispatch, a call or a failure)."""
        return bool(self.dispatch.count or self.calls or self.failures)

    def snapshot(self, name: str) -> PointMetrics:
        """A frozen copy."""
        return PointMetrics(
            name=name, dispatches=self.dispatch.count,
            latency=self.dispatch.histogram(), calls=self.calls,
            failures={p: dict(f) for p, f in list(self.failures.items())})

    def failed(self, plugin: str, error: BaseException) -> None:
        """Count a failure of ``plugin``'s implementation."""
        per = self.failures.setdefault(plugin, {})
        name = type(error).__name__
        per[name] = per.get(name, 0) + 1


# ---------------------------------------------------------------------------------------------
# OpenTelemetry: one span per plugin call, when opentelemetry-api is installed.

_otel: Any = None  # the opentelemetry.trace module once looked for; False: not installed


def _otel_trace() -> Any:
    """``opentelemetry.trace``, or False when ``opentelemetry-api`` is not installed (looked
    for once per process)."""
    global _otel
    if _otel is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _otel = False
        else:
            _otel = trace
    return _otel


class CallTracer:
    """Makes each plugin call a span (``Plugin._monitored`` calls :meth:`start` and
    :meth:`end`) named ``plugbox <plugin>/<hook>``, a child of the caller's current span, made
    current while the call runs (so a call the plugin makes through the host nests under it).
    Attributes: ``plugbox.plugin``, ``plugbox.hook``, ``plugbox.point`` (the extension point
    being dispatched, when there is one), ``plugbox.outcome`` (``ok`` or the error class),
    ``plugbox.fuel_used``, ``plugbox.memory_bytes``, ``plugbox.payload_bytes`` and
    ``plugbox.result_bytes``; a failed call's span has status ERROR."""

    def __init__(self, trace: Any, provider: Any = None) -> None:
        from opentelemetry import context

        from ._version import __version__

        self._trace = trace
        self._context = context
        self._tracer = (provider.get_tracer("plugbox", __version__) if provider is not None
                        else trace.get_tracer("plugbox", __version__))

    def start(self, plugin: str, hook: str, payload_bytes: int, point: str | None
              ) -> tuple[Any, Any]:
        """Open the span of a call of ``plugin``'s ``hook`` (made while dispatching ``point``,
        if any) and make it current."""
        attributes: dict[str, Any] = {"plugbox.plugin": plugin, "plugbox.hook": hook,
                                      "plugbox.payload_bytes": payload_bytes}
        if point is not None:
            attributes["plugbox.point"] = point
        span = self._tracer.start_span(f"plugbox {plugin}/{hook}", attributes=attributes)
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end(self, started: tuple[Any, Any], record: Any) -> None:
        """Close the span with what the call's ``record`` (a CallRecord) says."""
        span, token = started
        self._context.detach(token)
        error = record.error
        span.set_attribute("plugbox.outcome", "ok" if error is None else type(error).__name__)
        span.set_attribute("plugbox.result_bytes", record.result_size)
        if record.fuel_used is not None:
            span.set_attribute("plugbox.fuel_used", record.fuel_used)
        if record.memory_bytes is not None:
            span.set_attribute("plugbox.memory_bytes", record.memory_bytes)
        if error is not None:
            span.record_exception(error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR,
                                               f"{type(error).__name__}: {error}"))
        span.end()


def tracer_for(tracing: object) -> CallTracer | None:
    """The tracer a Runtime uses: None (no spans, no cost) for ``tracing=False``, and for
    ``None`` unless opentelemetry-api is installed and a global tracer provider is
    configured; ``True``: the global provider's tracer; a ``TracerProvider``: its tracer.
    ``tracing=True`` without the API is a :class:`plugbox.UsageError` saying what to
    install."""
    if tracing is not None and type(tracing) is not bool:
        if not callable(getattr(tracing, "get_tracer", None)):
            raise UsageError(f"tracing must be True, False, None or an OpenTelemetry "
                             f"TracerProvider, not {tracing!r}")
        trace = _otel_trace()
        if trace is False:
            raise UsageError("tracing with a TracerProvider needs opentelemetry-api: pip "
                             "install 'plugbox[otel]'")
        return CallTracer(trace, tracing)
    if tracing is False:
        return None
    trace = _otel_trace()
    if trace is False:
        if tracing:
            raise UsageError("tracing=True needs opentelemetry-api: pip install "
                             "'plugbox[otel]' (or pass tracing=None to trace only when it is "
                             "installed)")
        return None
    if tracing is None and isinstance(trace.get_tracer_provider(),
                                      (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None  # nothing would record the spans: keep the hot path free of them
    return CallTracer(trace)
