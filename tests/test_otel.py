"""OpenTelemetry: each plugin call is a span under the caller's current span, captured with the
SDK's in-memory exporter; without opentelemetry-api (a subprocess that cannot import it) the
runtime makes none and ``tracing=True`` says what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import plugbox
from plugbox._metrics import CallTracer, tracer_for
from tests.conftest import COUNTER_BODY, REPO, wat_module, write_plugin

@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(spans: InMemorySpanExporter) -> TracerProvider:
    # A provider of the test's own, passed as tracing=...: the process's global provider is
    # left alone (it can be set only once, and would trace every later test's calls).
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


@pytest.fixture
def traced(tmp_path: Path, cache_dir: Path, provider: TracerProvider
           ) -> Iterator[plugbox.Runtime]:
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache_dir,
                         tracing=provider) as rt:
        assert isinstance(rt._tracer, CallTracer)
        yield rt


def test_each_call_is_a_span_under_the_callers_span(
        traced: plugbox.Runtime, tmp_path: Path, spans: InMemorySpanExporter,
        provider: TracerProvider) -> None:
    plugin = traced.load(write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c"))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as outer:
        plugin.call("run", b"abc")
        plugin.call("run", b"")
    finished = {s.name: s for s in spans.get_finished_spans()}
    calls = [s for s in spans.get_finished_spans() if s.name == "plugbox c/run"]
    assert len(calls) == 2
    first = calls[0]
    assert first.parent is not None
    assert first.parent.span_id == outer.get_span_context().span_id
    assert first.context.trace_id == finished["request"].context.trace_id
    attrs = dict(first.attributes or {})
    assert attrs["plugbox.plugin"] == "c" and attrs["plugbox.hook"] == "run"
    assert attrs["plugbox.outcome"] == "ok"
    assert attrs["plugbox.payload_bytes"] == 3 and attrs["plugbox.result_bytes"] == 4
    assert isinstance(attrs["plugbox.fuel_used"], int) and attrs["plugbox.fuel_used"] > 0
    assert attrs["plugbox.memory_bytes"] == 65536
    assert "plugbox.point" not in attrs
    assert first.status.status_code == StatusCode.UNSET
    # metrics still count the traced calls
    assert traced.metrics().plugins["c"].hooks["run"].calls == 2


def test_a_failed_call_has_an_error_span_with_its_class_and_fuel(
        traced: plugbox.Runtime, tmp_path: Path, spans: InMemorySpanExporter) -> None:
    plugin = traced.load(write_plugin(tmp_path / "l", wat_module("(loop $x (br $x)) unreachable"),
                                      name="loop"))
    with pytest.raises(plugbox.FuelExhausted):
        plugin.call("run", b"", fuel=7000)
    (span,) = spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["plugbox.outcome"] == "FuelExhausted"
    assert attrs["plugbox.fuel_used"] == 7000
    assert span.status.status_code == StatusCode.ERROR
    assert "FuelExhausted" in (span.status.description or "")
    assert [e.name for e in span.events] == ["exception"]
    assert traced.metrics().plugins["loop"].failures == {"FuelExhausted": 1}


def test_a_dispatched_call_names_its_extension_point(
        tmp_path: Path, cache_dir: Path, spans: InMemorySpanExporter,
        provider: TracerProvider) -> None:
    with plugbox.PluginHost(state_dir=tmp_path / "s",
                            runtime_options={"cache_dir": cache_dir,
                                             "tracing": provider}) as host:
        host.extension_point("text.count", version="1.0.0", mode="each", payload="bytes")
        host.add(write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c",
                              implements={"text.count": {"versions": ">=1,<2", "hook": "run"}}))
        host.call("text.count", b"")
    (span,) = [s for s in spans.get_finished_spans() if s.name == "plugbox c/run"]
    assert dict(span.attributes or {})["plugbox.point"] == "text.count"


def test_tracing_false_makes_no_spans(tmp_path: Path, cache_dir: Path,
                                      spans: InMemorySpanExporter) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache_dir, tracing=False) as rt:
        assert rt._tracer is None
        plugin = rt.load(write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c"))
        plugin.call("run", b"")
    assert spans.get_finished_spans() == ()
    with pytest.raises(plugbox.UsageError, match="tracing must be True, False, None or an "
                       "OpenTelemetry TracerProvider"):
        tracer_for("on")


ABSENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
    import plugbox
    from plugbox import _metrics
    with plugbox.Runtime(state_dir={state!r}) as rt:
        assert rt._tracer is None
        assert _metrics._otel is False  # looked for once, found missing
        plugin = rt.load({plugin!r})
        assert plugin.call("run", b"") == bytes([1, 0, 0, 0])
    try:
        plugbox.Runtime(state_dir={state!r}, tracing=True)
    except plugbox.UsageError as exc:
        print(exc)
""")

GLOBAL = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from opentelemetry import trace  # installed, no global provider configured yet
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import plugbox
    with plugbox.Runtime(state_dir={state!r}) as rt:
        print(rt._tracer is None)  # nothing would record spans: none made
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with plugbox.Runtime(state_dir={state!r}) as rt:  # tracing=None: the global provider
        rt.load({plugin!r}).call("run", b"")
    print([s.name for s in exporter.get_finished_spans()])
""")


def test_without_opentelemetry_nothing_is_traced(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c")
    out = subprocess.run(
        [sys.executable, "-c", ABSENT.format(repo=str(REPO), state=str(tmp_path / "s"),
                                             plugin=str(plugin))],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tracing=True needs opentelemetry-api: pip install 'plugbox[otel]'" in out.stdout


def test_tracing_none_follows_the_global_provider(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "c", wat_module(COUNTER_BODY), name="c")
    out = subprocess.run(
        [sys.executable, "-c", GLOBAL.format(repo=str(REPO), state=str(tmp_path / "s"),
                                             plugin=str(plugin))],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True", "['plugbox c/run']"]
