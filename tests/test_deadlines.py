"""Deadlines that hold: the epoch ticker runs without the GIL and ends with its engine, waiting
for a pool instance counts against the deadline and is served in arrival order, closing
interrupts calls in flight, a host service that returns late ends the call, and per-call limits
are checked. (Figures under load are measured in bench/run.py, section "deadlines".)"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import plugbox
from plugbox.engine import _fastpath
from tests.conftest import COUNTER_BODY

LOOP_BODY = "(loop $l (br $l)) (i32.const 16)"
EMIT = ('(import "plugbox:plugin/events@1.0.0" "emit" '
        '(func $emit (param i32 i32 i32 i32 i32)))')
# emit "t" (which a test's subscriber may block), then return ok(empty)
EMIT_BODY = """
    (i32.store8 (i32.const 128) (i32.const 116))
    (call $emit (i32.const 128) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 256))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16)
"""
EVENTS = {"events": {"topics": ["t"]}}


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))  # OS threads: the native ticker counts too


# -- the ticker --------------------------------------------------------------------------------

def test_a_deadline_holds_while_python_threads_spin(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    # Before: the ticker needed the GIL for every tick; a 20 ms deadline took 400-640 ms.
    plugin = runtime.load(wat_plugin(LOOP_BODY, limits={"deadline_ms": 20}))
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinners = [threading.Thread(target=spin) for _ in range(4)]
    for t in spinners:
        t.start()
    took = []
    try:
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(plugbox.DeadlineExceeded):
                plugin.call("run", fuel=10**12)
            took.append(time.monotonic() - started)
    finally:
        stop.set()
        for t in spinners:
            t.join()
    assert min(took) < 0.3, took  # generous: the bench holds the real target


def test_switch_interval_ms_is_opt_in_and_applied_only_by_a_runtime_that_starts(
    tmp_path: Path,
) -> None:
    # The GIL handover after a deadline (docs/benchmarks.md, "deadlines"): opt-in, process-wide.
    before = sys.getswitchinterval()
    try:
        with plugbox.Runtime(state_dir=tmp_path / "a"):
            assert sys.getswitchinterval() == before  # default: CPython's own setting
        with pytest.raises(plugbox.UsageError, match="pooled_instances"):
            plugbox.Runtime(state_dir=tmp_path / "b", switch_interval_ms=1, pooled_instances=-1)
        assert sys.getswitchinterval() == before  # a refused Runtime changed nothing
        with plugbox.Runtime(state_dir=tmp_path / "c", switch_interval_ms=1):
            assert sys.getswitchinterval() == pytest.approx(0.001)
    finally:
        sys.setswitchinterval(before)


def test_the_ticker_stops_when_its_engine_is_collected(tmp_path: Path) -> None:
    before = _threads()
    engine = _fastpath.Engine(max_wasm_stack=512 * 1024, max_memory_bytes=1 << 20)
    assert _threads() == before + 1 and engine.ticking
    ref = weakref.ref(engine)
    del engine
    gc.collect()
    assert ref() is None  # the ticker does not keep it alive
    assert _threads() == before


def closed_mid_call(plugin: plugbox.Plugin, close: Callable[[], None]) -> list[BaseException]:
    """Start a call looping on 10**12 fuel and a 10 s deadline in a thread, ``close()`` while
    it runs; the call must end within 5 s with a ClosedError. Returns what it raised."""
    errors: list[BaseException] = []

    def call() -> None:
        try:
            plugin.call("run", fuel=10**12)
        except plugbox.PlugboxError as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.2)
    started = time.monotonic()
    close()
    worker.join(30)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5  # not the 10 s deadline, not 10**12 fuel
    assert isinstance(errors[0], plugbox.ClosedError), errors
    return errors


def test_an_interrupted_call_does_not_run_on_after_runtime_close(
    tmp_path: Path, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    rt = plugbox.Runtime(state_dir=tmp_path / "s")
    plugin = rt.load(wat_plugin(LOOP_BODY, limits={"deadline_ms": 10_000}))
    errors = closed_mid_call(plugin, rt.close)
    assert "Runtime was closed" in str(errors[0])
    assert not rt.engine.ticking


def test_plugin_close_interrupts_a_call_in_flight(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    plugin = runtime.load(wat_plugin(LOOP_BODY, limits={"deadline_ms": 10_000}))
    other = runtime.load(wat_plugin(COUNTER_BODY, name="other"))
    errors = closed_mid_call(plugin, plugin.close)
    assert "plugin 'wat-plugin' was closed" in str(errors[0])
    assert other.call("run") == (1).to_bytes(4, "little")  # the others keep serving
    with pytest.raises(plugbox.ClosedError):
        plugin.call("run")


# -- the pool ----------------------------------------------------------------------------------

def test_waiting_for_an_instance_counts_against_the_deadline(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(EMIT_BODY, imports=EMIT, permissions=EVENTS,
                                     limits={"instances": 1}))
    entered, release = threading.Event(), threading.Event()

    def block(event: plugbox.Event) -> None:
        entered.set()
        release.wait(30)

    runtime.events.subscribe("t", block)
    holder = threading.Thread(target=plugin.call, args=("run",), kwargs={"deadline_ms": 30_000})
    holder.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        with pytest.raises(plugbox.DeadlineExceeded) as info:
            plugin.call("run", deadline_ms=100)
        assert time.monotonic() - started < 5  # before: waited as long as the holder held
        assert "waited" in str(info.value) and "instance" in str(info.value)
    finally:
        release.set()
        holder.join()


def test_waiters_are_served_in_arrival_order(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(EMIT_BODY, imports=EMIT, permissions=EVENTS,
                                     limits={"instances": 1}))
    entered, release = threading.Event(), threading.Event()
    order: list[int] = []

    def block(event: plugbox.Event) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(30)

    runtime.events.subscribe("t", block)
    holder = threading.Thread(target=plugin.call, args=("run",))
    holder.start()
    assert entered.wait(10)

    def wait_then_record(i: int) -> None:
        plugin.call("run", deadline_ms=30_000)
        order.append(i)

    waiters = []
    for i in range(6):
        t = threading.Thread(target=wait_then_record, args=(i,))
        t.start()
        waiters.append(t)
        deadline = time.monotonic() + 5
        while len(plugin._waiters) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    release.set()
    holder.join()
    for t in waiters:
        t.join()
    assert order == list(range(6))


# -- late host services ------------------------------------------------------------------------

def test_a_host_service_returning_after_the_deadline_ends_the_call(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    plugin = runtime.load(wat_plugin(EMIT_BODY, imports=EMIT, permissions=EVENTS))
    runtime.events.subscribe("t", lambda event: time.sleep(0.3))
    with pytest.raises(plugbox.DeadlineExceeded) as info:
        plugin.call("run", deadline_ms=50)
    assert "events@1.0.0#emit returned" in str(info.value) and "after it" in str(info.value)
    assert plugin.call("run") == b""  # within the default deadline it is fine


# -- per-call limits ---------------------------------------------------------------------------

@pytest.mark.parametrize("option", [
    {"fuel": -1}, {"fuel": 0}, {"fuel": True}, {"fuel": 1.5},
    {"deadline_ms": -1000}, {"deadline_ms": 0}, {"deadline_ms": "5"},
])
def test_negative_or_absurd_per_call_limits_are_a_usage_error(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], option: dict[str, object]
) -> None:
    plugin = runtime.load(wat_plugin(COUNTER_BODY))
    with pytest.raises(plugbox.UsageError) as info:
        plugin.call("run", **option)  # type: ignore[arg-type]
    assert next(iter(option)) in str(info.value)
    assert plugin.call("run", fuel=10**30, deadline_ms=10**30) == (1).to_bytes(4, "little")


def test_plugin_close_interrupts_a_component_call_in_flight(
    runtime: plugbox.Runtime, rust_plugins: dict[str, Path], tmp_path: Path, accel: bool
) -> None:
    from plugbox.authoring._build import wrap_component

    plugin = runtime.load(wrap_component(rust_plugins["hostile"], tmp_path))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            plugin.call("loop", fuel=10**15, deadline_ms=10_000)
        except plugbox.PlugboxError as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.3)
    started = time.monotonic()
    plugin.close()
    worker.join(30)
    assert time.monotonic() - started < 5
    assert isinstance(errors[0], plugbox.ClosedError), errors


def test_a_call_returning_after_its_deadline_is_logged_as_an_overrun(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugbox import _plugin
    from plugbox.engine import _fastpath

    plugin = runtime.load(wat_plugin(COUNTER_BODY))
    plugin.call("run")
    clock = time.monotonic
    # The call itself is quick; the host's clock jumps 10 s between its start and its end (as
    # when the host is too busy to take the result in time).
    offsets = iter([0.0])
    monkeypatch.setattr(_plugin, "_monotonic", lambda: clock() + next(offsets, 10.0))
    # With metrics on, the end of a successful call is read by the metrics' observe().
    observe = _fastpath.observe
    monkeypatch.setattr(_fastpath, "observe", lambda acc, started: observe(acc, started) + 10.0)
    with caplog.at_level("WARNING", logger="plugbox.plugin"):
        assert plugin.call("run", deadline_ms=1000) == (2).to_bytes(4, "little")
    assert plugin.overruns == 1
    assert "after its 1000 ms deadline" in caplog.text


def test_the_python_ticker_stops_when_its_engine_is_collected() -> None:
    script = (
        "import gc, threading, weakref\n"
        "from plugbox.engine import _fastpath\n"
        "assert not _fastpath.ACCELERATED\n"
        "before = threading.active_count()\n"
        "e = _fastpath.Engine(max_wasm_stack=512 * 1024, max_memory_bytes=1 << 20)\n"
        "assert threading.active_count() == before + 1\n"
        "ref = weakref.ref(e); del e; gc.collect()\n"
        "assert ref() is None and threading.active_count() == before\n"
        "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PLUGBOX_NO_SPEEDUPS="1"))
    assert proc.stdout.strip() == "OK", proc.stderr[-2000:]
