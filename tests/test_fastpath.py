"""The fast-path layer itself: GIL release, both implementations of the call sequence, and the
instance-slot cap."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import plugbox
from plugbox.engine import _fastpath
from tests.conftest import COUNTER_BODY, REPO

LOOP_BODY = "(loop $l (br $l)) (i32.const 16)"


def test_accelerator_is_built_by_the_quick_start() -> None:
    # dev.py installs with a C compiler present; the fallback is for machines without one.
    assert _fastpath.ACCELERATED


def test_pure_python_fallback_passes_the_core_suite() -> None:
    env = dict(os.environ, PLUGBOX_NO_SPEEDUPS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(REPO / "tests" / "test_runtime_core.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


def test_use_accelerator_switches_implementations(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(COUNTER_BODY))
    try:
        assert _fastpath.use_accelerator(False) is False
        assert plugin.call("run") == (1).to_bytes(4, "little")
    finally:
        _fastpath.use_accelerator(True)
    assert plugin.call("run") == (2).to_bytes(4, "little")


def test_guest_code_runs_with_the_gil_released(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(LOOP_BODY, limits={"deadline_ms": 300}))
    started = threading.Event()
    done = threading.Event()
    outcome: list[BaseException] = []

    def spin() -> None:
        started.set()
        try:
            plugin.call("run", fuel=10**15)
        except plugbox.PlugboxError as exc:
            outcome.append(exc)
        done.set()

    worker = threading.Thread(target=spin)
    worker.start()
    started.wait()
    # If the wasm call held the GIL, this thread could not run until it ended.
    progress = 0
    while not done.is_set():
        progress += 1
    worker.join()
    assert isinstance(outcome[0], plugbox.DeadlineExceeded)
    assert progress > 1000


def test_exhausting_the_runtime_instance_slots_is_a_clear_error(
    tmp_path: Path, wat_plugin: Callable[..., Path]
) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "s", pooled_instances=2) as rt:
        rt.load(wat_plugin(COUNTER_BODY, name="a"))
        rt.load(wat_plugin(COUNTER_BODY, name="b"))
        with pytest.raises(plugbox.LimitExceeded) as info:
            rt.load(wat_plugin(COUNTER_BODY, name="c"))
        assert info.value.limit == "instances"
        assert "pooled_instances" in str(info.value)
