"""Host callbacks are total and re-entrancy is defined: imports called from cabi_realloc or
cabi_post_* are refused (typed, never a crash), host functions may call plugins (the calling
thread's call state is restored), nesting is bounded, a thread with a small stack gets
StackOverflow instead of SIGSEGV, and guest error messages are capped before they are copied.

Cases that crashed the host before run in a child process, on both the C and the pure-ctypes
path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

import plugbox
from plugbox.engine import _fastpath
from tests.conftest import REPO, write_plugin

RANDOM = '(import "plugbox:plugin/random@1.0.0" "bytes" (func $random (param i32 i32)))'
EMIT = ('(import "plugbox:plugin/events@1.0.0" "emit" '
        '(func $emit (param i32 i32 i32 i32 i32)))')
LOG = '(import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))'

# A bump allocator that calls random.bytes when $when says so: 1 always, 2 only once on-hook
# runs (the host's own allocations for import results), 0 never. cabi_post can call log.
HOSTILE = """
(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $armed (mut i32) (i32.const 0))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (if (i32.or (i32.eq (i32.const {when}) (i32.const 1))
                (i32.and (i32.eq (i32.const {when}) (i32.const 2)) (global.get $armed)))
      (then (call $random (i32.const 4) (i32.const 512))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32)
    (global.set $armed (i32.const 1))
    (call $random (i32.const 4) (i32.const 256))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16))
  (func (export "cabi_post_on-hook") (param i32)
    {post})
)
"""

SCRIPT = """
import sys, threading
sys.path.insert(0, {repo!r})
import plugbox
from plugbox.engine import _fastpath
_fastpath.use_accelerator({accel})
with plugbox.Runtime(state_dir={state!r}) as rt:
    plugin = rt.load({plugin!r})
    def run():
        try:
            plugin.call("run", b"x")
            print("OK")
        except plugbox.PlugboxError as exc:
            print(type(exc).__name__, exc)
    {how}
    print("SERVES", plugin.call("run", b"x") if {serves} else b"")
"""


def _in_child(tmp_path: Path, plugin: Path, *, accel: bool, how: str = "run()",
              serves: bool = False) -> str:
    script = SCRIPT.format(repo=str(REPO), accel=accel, state=str(tmp_path / "state"),
                           plugin=str(plugin), how=how, serves=serves)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def _hostile(tmp_path: Path, when: int, post: str = "") -> Path:
    module = wasmtime.wat2wasm(HOSTILE.format(imports=RANDOM + LOG, when=when, post=post))
    return write_plugin(tmp_path / f"hostile{when}{len(post)}", module,
                        permissions={"random": True, "log": True})


@pytest.mark.parametrize("when", [1, 2], ids=["argument-allocation", "result-allocation"])
def test_an_import_called_from_cabi_realloc_is_an_abi_violation(
    tmp_path: Path, accel: bool, when: int
) -> None:
    # Before: the re-entry recursed until RecursionError escaped a ctypes callback while the
    # trap was built, and wasmtime freed a garbage pointer (SIGABRT).
    out = _in_child(tmp_path, _hostile(tmp_path, when), accel=accel)
    assert out.startswith("AbiViolation"), out
    assert "cabi_realloc" in out and "abi/README.md" in out


def test_an_import_called_from_cabi_post_is_an_abi_violation(
    tmp_path: Path, accel: bool
) -> None:
    post = "(call $log (i32.const 2) (i32.const 0) (i32.const 1))"
    out = _in_child(tmp_path, _hostile(tmp_path, 0, post), accel=accel)
    assert out.startswith("AbiViolation"), out
    assert "cabi_post" in out


def test_the_host_serves_again_after_a_refused_import(tmp_path: Path, accel: bool) -> None:
    plugin = _hostile(tmp_path, 2)
    out = _in_child(tmp_path, plugin, accel=accel, how="run(); run()")
    assert out.count("AbiViolation") == 2, out


# -- host functions calling plugins ------------------------------------------------------------

# on-hook: emit "t", then random.bytes(4) through the host's allocator (which needs this
# call's state, restored after a nested call), and return the 4 random bytes.
EMIT_THEN_RANDOM = """
    (i32.store8 (i32.const 128) (i32.const 116))
    (call $emit (i32.const 128) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 256))
    (if (i32.load8_u (i32.const 256)) (then unreachable))
    (call $random (i32.const 4) (i32.const 272))
    (if (i32.load8_u (i32.const 272)) (then unreachable))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.load (i32.const 276)))
    (i32.store (i32.const 24) (i32.load (i32.const 280)))
    (i32.const 16)
"""
EMITTER_PERMISSIONS = {"events": {"topics": ["t"]}, "random": True}


def _emitter(wat_plugin: Callable[..., Path], name: str, **manifest: object) -> Path:
    return wat_plugin(EMIT_THEN_RANDOM, imports=EMIT + RANDOM, name=name,
                      permissions=EMITTER_PERMISSIONS, **manifest)


def test_an_event_subscriber_may_call_another_plugin(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    outer = runtime.load(_emitter(wat_plugin, "outer"))
    inner = runtime.load(wat_plugin(
        "(call $random (i32.const 8) (i32.const 272))"
        "(i32.store8 (i32.const 16) (i32.const 0))"
        "(i32.store (i32.const 20) (i32.load (i32.const 276)))"
        "(i32.store (i32.const 24) (i32.load (i32.const 280)))(i32.const 16)",
        imports=RANDOM, name="inner", permissions={"random": True}))
    got: list[bytes] = []
    runtime.events.subscribe("t", lambda event: got.append(inner.call("run")))
    assert len(outer.call("run")) == 4  # the outer call's own state survived the nested one
    assert len(got) == 1 and len(got[0]) == 8


def test_a_subscriber_may_call_the_emitting_plugin_when_an_instance_is_free(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    plugin = runtime.load(_emitter(wat_plugin, "self", limits={"instances": 2}))
    depth: list[int] = []

    def again(event: plugbox.Event) -> None:
        if not depth:
            depth.append(1)
            depth.append(len(plugin.call("run")))

    runtime.events.subscribe("t", again)
    assert len(plugin.call("run")) == 4
    assert depth == [1, 4]


def test_a_call_that_would_wait_for_its_own_instance_fails_fast(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    plugin = runtime.load(_emitter(wat_plugin, "self", limits={"instances": 1,
                                                                "deadline_ms": 30_000}))
    errors: list[BaseException] = []

    def again(event: plugbox.Event) -> None:
        try:
            plugin.call("run")
        except plugbox.PlugboxError as exc:
            errors.append(exc)

    runtime.events.subscribe("t", again)
    started = time.monotonic()
    assert len(plugin.call("run")) == 4
    assert time.monotonic() - started < 10  # not the 30 s deadline, not forever
    assert isinstance(errors[0], plugbox.LimitExceeded) and errors[0].limit == "instances"
    assert "host function" in str(errors[0])


def test_nested_calls_are_bounded(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    plugin = runtime.load(_emitter(wat_plugin, "loop", limits={"instances": 16}), mode="fresh")
    errors: list[BaseException] = []
    calls = [0]

    def again(event: plugbox.Event) -> None:
        calls[0] += 1
        try:
            plugin.call("run")
        except plugbox.PlugboxError as exc:
            errors.append(exc)

    runtime.events.subscribe("t", again)
    assert len(plugin.call("run")) == 4
    assert isinstance(errors[0], plugbox.StackOverflow), errors
    assert calls[0] <= _fastpath.MAX_NESTED_CALLS
    assert _fastpath.current_call() is None


# -- threads with small stacks -----------------------------------------------------------------

RECURSE = """
(module
  (memory (export "memory") 1)
  (func $r (param i32) (result i32) (i32.add (call $r (local.get 0)) (i32.const 1)))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32)
    (drop (call $r (i32.const 0))) (i32.const 16))
)
"""


def test_a_thread_with_a_small_stack_gets_stack_overflow_not_sigsegv(
    tmp_path: Path, accel: bool
) -> None:
    plugin = write_plugin(tmp_path / "recurse", wasmtime.wat2wasm(RECURSE))
    how = ("threading.stack_size(256 * 1024); t = threading.Thread(target=run); t.start(); "
           "t.join()")
    out = _in_child(tmp_path, plugin, accel=accel, how=how)
    assert out.startswith("StackOverflow"), out


def test_stack_room_sees_the_thread_stack(accel: bool) -> None:
    seen: list[int] = []
    previous = threading.stack_size(256 * 1024)
    try:
        thread = threading.Thread(target=lambda: seen.append(_fastpath.stack_room()))
        thread.start()
        thread.join()
    finally:
        threading.stack_size(previous)
    assert 0 <= seen[0] <= 256 * 1024
    assert _fastpath.stack_room() > 1 << 20  # the main thread's stack is megabytes


# -- guest error messages ----------------------------------------------------------------------

def test_a_huge_guest_error_message_is_capped_before_it_is_copied(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    # err(failure, 16 MiB of "é" (2 bytes each), starting at 64 KiB) after growing memory
    body = """
        (drop (memory.grow (i32.const 257)))
        (memory.fill (i32.const 65536) (i32.const 0xc3) (i32.const 16777216))
        (local.set $hp (i32.const 65536))
        (loop $l
          (i32.store8 (i32.add (local.get $hp) (i32.const 1)) (i32.const 0xa9))
          (local.set $hp (i32.add (local.get $hp) (i32.const 2)))
          (br_if $l (i32.lt_u (local.get $hp) (i32.const 16842752))))
        (i32.store8 (i32.const 16) (i32.const 1))
        (i32.store8 (i32.const 20) (i32.const 4))
        (i32.store (i32.const 24) (i32.const 65536))
        (i32.store (i32.const 28) (i32.const 16777216))
        (i32.const 16)
    """
    plugin = runtime.load(wat_plugin(body, limits={"memory_bytes": 32 << 20}))
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("run")
    detail = info.value.detail
    assert len(detail.encode()) < _fastpath.GUEST_ERROR_MAX + 200
    assert detail.startswith("é" * 100)
    assert f"{16777216 - _fastpath.GUEST_ERROR_MAX} more bytes dropped" in detail


def test_a_short_guest_error_message_is_whole(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], accel: bool
) -> None:
    body = """
        (i32.store (i32.const 64) (i32.const 0x21216968))
        (i32.store8 (i32.const 16) (i32.const 1))
        (i32.store8 (i32.const 20) (i32.const 4))
        (i32.store (i32.const 24) (i32.const 64))
        (i32.store (i32.const 28) (i32.const 4))
        (i32.const 16)
    """
    plugin = runtime.load(wat_plugin(body))
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("run")
    assert info.value.detail == "hi!!"


def test_pure_python_fallback_passes_this_suite() -> None:
    env = dict(os.environ, PLUGBOX_NO_SPEEDUPS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not fallback",
         str(Path(__file__))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
