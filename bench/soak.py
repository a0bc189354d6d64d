#!/usr/bin/env python3
"""plugbox soak and fault scenarios (issue 7, section 10), each checked against a stated bound.

    .venv/bin/python bench/soak.py [--quick] [--json] [--only NAME ...] [--keep]

Builds the Rust samples it needs (echo, counter, hostile) with plugbox.authoring._build and stages two
hand-written WAT plugins, then runs each scenario in its own child process (so one that crashes
the interpreter is reported as a failure, and RSS figures do not mix):

calls-1m        1,000,000 calls of the 16 B Rust echo on one persistent instance; RSS at 10 k,
                100 k and 1 M calls, growth after the 10 k warm-up.
load-close      5,000 load/close cycles of the echo in one Runtime, then 200 Runtime
                create/close cycles: RSS growth, open fds, threads, address space.
threads         8 threads x 50,000 echo calls (distinct payloads, every result compared) while
                one more thread calls the hostile sample: loop to its fuel, loop to a 50 ms
                deadline, memory bomb, unbounded recursion, in turn.
kv-kill         a child writing kv keys through a plugin is SIGKILLed at random moments (50
                times); after each, a new Runtime must open the state, every acknowledged
                write must read back exactly, and PRAGMA integrity_check must say ok.
cache-kill      a child compiling plugins into the compiled cache is SIGKILLed (30 times, half
                at random moments, half as soon as a .tmp-* file appears in the cache); after
                each, a new Runtime must load and call every plugin correctly and every cache
                entry must be whole. Leftover .tmp-* files are counted.
full-fs         the state dir on a 2 MiB tmpfs that is then filled: kv writes, loads and a new
                Runtime must fail with a PlugboxError subclass (or succeed), never a raw
                OSError / sqlite3 error; calls that need no disk keep working.
readonly-fs     the same tmpfs remounted read-only: kv writes, Runtime() on it, close().

The file-system scenarios need root (mount); without it they are reported as skipped with the
reason. ``--quick`` runs every scenario at about 1/20 scale (a smoke test, see
tests/test_soak_quick.py). Exit status 1 when any check fails. Figures and the command line
are recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import errno
import gc
import hashlib
import hmac
import json
import multiprocessing
import os
import platform
import random
import select
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "runtime"))  # run from a checkout without installing

import wasmtime  # noqa: E402

import plugbox  # noqa: E402
from run import stage  # noqa: E402  (bench/run.py: stage a module as a plugin directory)

SCENARIOS = ("calls-1m", "load-close", "threads", "kv-kill", "cache-kill", "full-fs",
             "readonly-fs")
MiB = 1 << 20


# ------------------------------------------------------------------------------- plugins

# The ABI skeleton shared by the two WAT plugins: a bump allocator reset by post-return.
_WAT_ALLOC = """
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func $alloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32) (local $need i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.set $need (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $need) (i32.const 16))
                                              (i32.const 1))) (i32.const -1))
              (then unreachable))))
    (local.get $p))
  (func (export "cabi_post_on-hook") (param i32) (global.set $heap (i32.const 4096)))
"""

# kv through the real host service. Payload: one byte key length, the key, then the value.
# "put" stores the value; "read" returns the stored value (empty when absent). The kv results'
# err layout is on-hook's, so an error from the host is returned as it is.
KV_WAT = """
(module
  (import "plugbox:plugin/kv@1.0.0" "set" (func $kv_set (param i32 i32 i32 i32 i32)))
  (import "plugbox:plugin/kv@1.0.0" "get" (func $kv_get (param i32 i32 i32)))
  %s
  (func (export "on-hook") (param $hp i32) (param $hl i32) (param $pp i32) (param $pl i32)
        (result i32)
    (local $r i32) (local $k i32)
    (local.set $r (call $alloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 16)))
    (local.set $k (i32.load8_u (local.get $pp)))
    (if (i32.eq (local.get $hl) (i32.const 3))
      (then
        (call $kv_set (i32.add (local.get $pp) (i32.const 1)) (local.get $k)
                      (i32.add (i32.add (local.get $pp) (i32.const 1)) (local.get $k))
                      (i32.sub (i32.sub (local.get $pl) (i32.const 1)) (local.get $k))
                      (local.get $r))
        (if (i32.eqz (i32.load (local.get $r)))
          (then (i32.store offset=4 (local.get $r) (i32.const 0))
                (i32.store offset=8 (local.get $r) (i32.const 0)))))
      (else
        (call $kv_get (i32.add (local.get $pp) (i32.const 1)) (local.get $k) (local.get $r))
        (if (i32.eqz (i32.load (local.get $r)))
          (then
            (if (i32.eqz (i32.load offset=4 (local.get $r)))
              (then (i32.store offset=4 (local.get $r) (i32.const 0))
                    (i32.store offset=8 (local.get $r) (i32.const 0)))
              (else (i32.store offset=4 (local.get $r) (i32.load offset=8 (local.get $r)))
                    (i32.store offset=8 (local.get $r) (i32.load offset=12 (local.get $r)))))))))
    (local.get $r))
)
""" % _WAT_ALLOC


def big_wat(functions: int, data_bytes: int) -> str:
    """A plugin whose compile takes about a second (``functions`` chained functions) and whose
    artifact is large (a passive data segment of ``data_bytes``, never copied into memory), so
    that a kill can land in the middle of its cache write. Its hook returns ok(b"")."""
    chain = "\n".join(
        f"(func $f{i} (param i32) (result i32) (i32.xor (i32.mul (i32.add (local.get 0) "
        f"(i32.const {i})) (i32.const 2654435761)) (call $f{i - 1} (i32.shr_u (local.get 0) "
        f"(i32.const 1)))))" for i in range(1, functions))
    return f"""
(module
  {_WAT_ALLOC}
  (func $f0 (param i32) (result i32) (local.get 0))
  {chain}
  (data "{'p' * data_bytes}")
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32)
    (drop (call $f{functions - 1} (local.get 3)))
    (i32.store (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (i32.const 0))
    (i32.store (i32.const 8) (i32.const 0))
    (i32.const 0))
)
"""


def kv_payload(key: str, value: bytes = b"") -> bytes:
    raw = key.encode()
    return bytes([len(raw)]) + raw + value


def build_plugins(out: Path, scale: int = 1) -> dict[str, Path]:
    """name -> staged plugin directory: echo, counter, hostile (Rust), kv, big (WAT; at
    ``scale`` > 1 a tenth as big, so the quick run stays quick)."""
    from plugbox.authoring._build import build_rust_plugins

    plugins = dict(build_rust_plugins(REPO / "sample-plugins" / "rust", out,
                                      ["echo", "counter", "hostile"]))
    plugins["kv"] = stage(out / "kv", bytes(wasmtime.wat2wasm(KV_WAT)), name="soak-kv",
                          hooks=["put", "read"],
                          permissions={"kv": {"quota_bytes": 16 * MiB, "quota_keys": 10_000}})
    plugins["big"] = stage(out / "big", bytes(wasmtime.wat2wasm(
        big_wat(2000, 8 * MiB) if scale == 1 else big_wat(200, 1 * MiB))),
                           name="soak-big", hooks=["run"])
    return {name: Path(p) for name, p in plugins.items()}


# ------------------------------------------------------------------------------- measuring


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS: resident, VmSize: address space)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def snapshot() -> dict[str, int]:
    gc.collect()
    return {"rss_kib": status_kib("VmRSS"), "fds": open_fds(), "threads": native_threads(),
            "vm_kib": status_kib("VmSize")}


def mib(kib: float) -> str:
    return f"{kib / 1024:+.2f} MiB"


class Checks:
    """The figures of one scenario: each a value, how it is shown, its bound and the verdict
    (None for a figure that is only reported)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, check: str, value: Any, shown: str | None = None, bound: str = "",
            ok: bool | None = None) -> None:
        self.rows.append({"check": check, "value": value,
                          "shown": shown if shown is not None else str(value),
                          "bound": bound, "ok": ok})

    def info(self, check: str, value: Any, shown: str | None = None) -> None:
        self.add(check, value, shown)


class Skip(Exception):
    """The scenario cannot run here (the reason is shown)."""


def outcome(fn: Callable[[], Any]) -> tuple[str, str, Any]:
    """("ok", "", result), ("typed", class name, message) for a PlugboxError, or
    ("raw", qualified class name, message) for anything else."""
    try:
        return "ok", "", fn()
    except plugbox.PlugboxError as exc:
        return "typed", type(exc).__name__, str(exc)[:300]
    except Exception as exc:  # the point: anything that is not typed is recorded, not raised
        return "raw", f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)[:300]


def shown_outcome(o: tuple[str, str, Any]) -> str:
    kind, cls, detail = o
    if kind == "ok":
        return "ok"
    return f"{kind} {cls}: {detail}"


# ------------------------------------------------------------------------------- scenarios


def scenario_calls(work: Path, plugins: dict[str, Path], scale: int, checks: Checks) -> None:
    n = 1_000_000 // scale
    marks = (n // 100, n // 10, n)  # the first is the end of the warm-up
    payload = random.Random("plugbox-soak echo").randbytes(16)
    rss: dict[int, int] = {}
    bad = 0
    with plugbox.Runtime(state_dir=work / "state") as rt:
        echo = rt.load(plugins["echo"])
        call = echo.call
        started = time.perf_counter()
        done = 0
        for stop in marks:
            for _ in range(stop - done):
                if call("echo", payload) != payload:
                    bad += 1
            done = stop
            gc.collect()
            rss[stop] = status_kib("VmRSS")
        elapsed = time.perf_counter() - started
    checks.add("results byte-exact", n - bad, f"{n - bad:,} of {n:,}", "all", bad == 0)
    for stop in marks:
        checks.info(f"RSS at {stop:,} calls", rss[stop], f"{rss[stop] / 1024:.1f} MiB")
    growth = rss[n] - rss[n // 100]
    checks.add(f"RSS growth {n // 100:,} -> {n:,} calls", growth, mib(growth), "< 2 MiB",
               growth < 2 * 1024)
    checks.info("calls/s (one thread)", round(n / elapsed),
                f"{n / elapsed:,.0f} ({elapsed / n * 1e6:.1f} us/call)")


def scenario_load_close(work: Path, plugins: dict[str, Path], scale: int,
                        checks: Checks) -> None:
    # The pooling allocator keeps the pages of slots it has used resident: RSS climbs ~60 MiB
    # over the first ~100 loads, then stays flat. Growth is measured after that warm-up.
    cycles, runtimes = max(300, 5000 // scale), max(10, 200 // scale)
    warm_at = max(150, cycles // 10)
    echo_dir = plugins["echo"]
    rt = plugbox.Runtime(state_dir=work / "state")
    start = snapshot()
    warm: dict[str, int] = {}
    mid: dict[str, int] = {}
    started = time.perf_counter()
    wrong = 0
    for i in range(cycles):
        p = rt.load(echo_dir)
        if p.call("echo", b"cycle %d" % i) != b"cycle %d" % i:
            wrong += 1
        p.close()
        if i + 1 == warm_at:
            warm = snapshot()
        if i + 1 == cycles // 2:
            mid = snapshot()
    end = snapshot()
    load_s = (time.perf_counter() - started) / cycles
    left = len(rt.plugins)
    rt.close()
    del rt, p
    checks.add("plugin cycles: results byte-exact", cycles - wrong, f"{cycles - wrong:,} of "
               f"{cycles:,}", "all", wrong == 0)
    checks.info("plugin cycles: RSS at 0 / warm-up / half / end", [
        start["rss_kib"], warm["rss_kib"], mid["rss_kib"], end["rss_kib"]], " / ".join(
            f"{s['rss_kib'] / 1024:.1f}" for s in (start, warm, mid, end)) + " MiB")
    growth = end["rss_kib"] - warm["rss_kib"]
    checks.add(f"plugin cycles: RSS growth {warm_at:,} -> {cycles:,}", growth, mib(growth),
               "< 4 MiB", growth < 4 * 1024)
    checks.add("plugin cycles: open fds (warm -> end)", end["fds"] - warm["fds"],
               f"{warm['fds']} -> {end['fds']}", "no growth", end["fds"] <= warm["fds"])
    checks.add("plugin cycles: threads (warm -> end)", end["threads"] - warm["threads"],
               f"{warm['threads']} -> {end['threads']}", "no growth",
               end["threads"] <= warm["threads"])
    checks.add("plugin cycles: plugins still listed", left, str(left), "0", left == 0)
    checks.info("plugin cycles: ms per load+call+close", round(load_s * 1000, 2),
                f"{load_s * 1000:.2f} ms")

    base = snapshot()
    started = time.perf_counter()
    for j in range(runtimes):
        with plugbox.Runtime(state_dir=work / "state") as r:
            r.load(echo_dir).call("echo", b"x")
        # A closed Runtime still referenced keeps its engine's reservation until it is freed.
        del r
        if j + 1 == runtimes // 10:
            warm = snapshot()
    end = snapshot()
    per = (time.perf_counter() - started) / runtimes
    growth = end["rss_kib"] - warm["rss_kib"]
    checks.add(f"Runtime cycles: RSS growth {runtimes // 10:,} -> {runtimes:,}", growth, mib(growth),
               "< 8 MiB", growth < 8 * 1024)
    checks.add("Runtime cycles: open fds (before -> after)", end["fds"] - base["fds"],
               f"{base['fds']} -> {end['fds']}", "no growth", end["fds"] <= base["fds"])
    checks.add("Runtime cycles: threads (before -> after)", end["threads"] - base["threads"],
               f"{base['threads']} -> {end['threads']}", "no growth",
               end["threads"] <= base["threads"])
    vm = end["vm_kib"] - base["vm_kib"]
    # A Runtime reserves ~4 TiB for its instance pool: one leaked reservation is unmissable.
    checks.add("Runtime cycles: address space growth", vm, mib(vm), "< 1 GiB", vm < MiB)
    checks.info("Runtime cycles: ms per create+load+call+close", round(per * 1000, 1),
                f"{per * 1000:.1f} ms")


# (hook, call options, the error it must raise) for the hostile thread, taken in turn.
HOSTILE_CALLS: list[tuple[str, dict[str, int], type[plugbox.PlugboxError]]] = [
    ("loop", {}, plugbox.FuelExhausted),
    ("loop", {"fuel": 10_000_000_000, "deadline_ms": 50}, plugbox.DeadlineExceeded),
    ("bomb", {}, plugbox.MemoryLimitExceeded),
    ("recurse", {}, plugbox.StackOverflow),
]


def scenario_threads(work: Path, plugins: dict[str, Path], scale: int, checks: Checks) -> None:
    n_threads, per_thread = 8, 50_000 // scale
    wrong = [0] * n_threads
    raised: list[str] = []
    hostile_counts = {expected.__name__: 0 for _, _, expected in HOSTILE_CALLS}
    hostile_bad: list[str] = []
    deadline_ms: list[float] = []
    stop = threading.Event()
    barrier = threading.Barrier(n_threads + 2)

    with plugbox.Runtime(state_dir=work / "state") as rt:
        echo = rt.load(plugins["echo"])
        hostile = rt.load(plugins["hostile"])

        def normal(tid: int) -> None:
            barrier.wait()
            try:
                for i in range(per_thread):
                    payload = struct.pack("<IIQ", tid, i, tid * 1_000_003 + i)
                    if echo.call("echo", payload) != payload:
                        wrong[tid] += 1
            except BaseException as exc:  # recorded: a normal call must never fail
                raised.append(f"thread {tid}: {type(exc).__name__}: {exc}")

        def attacker() -> None:
            barrier.wait()
            k = 0
            while not stop.is_set() or k < len(HOSTILE_CALLS):
                hook, opts, expected = HOSTILE_CALLS[k % len(HOSTILE_CALLS)]
                k += 1
                label = expected.__name__
                t0 = time.perf_counter()
                try:
                    hostile.call(hook, b"", **opts)
                    hostile_bad.append(f"{hook} {opts}: returned normally")
                except expected:
                    hostile_counts[label] += 1
                except BaseException as exc:
                    hostile_bad.append(f"{hook} {opts}: {type(exc).__name__} instead of "
                                       f"{label}: {str(exc)[:200]}")
                if "deadline_ms" in opts:
                    deadline_ms.append((time.perf_counter() - t0) * 1000)

        workers = [threading.Thread(target=normal, args=(t,)) for t in range(n_threads)]
        bad_thread = threading.Thread(target=attacker)
        for t in [*workers, bad_thread]:
            t.start()
        barrier.wait()
        started = time.perf_counter()
        for t in workers:
            t.join()
        elapsed = time.perf_counter() - started
        stop.set()
        bad_thread.join()
        after = echo.call("echo", b"still serving") == b"still serving"

    total = n_threads * per_thread
    n_wrong = sum(wrong)
    checks.add("normal calls byte-exact", total - n_wrong,
               f"{total - n_wrong:,} of {total:,}"
               + (f"; {len(raised)} threads raised, first: {raised[0]}" if raised else ""),
               "all", not raised and not n_wrong)
    n_hostile = sum(hostile_counts.values()) + len(hostile_bad)
    checks.add("hostile calls: expected typed error", sum(hostile_counts.values()),
               f"{sum(hostile_counts.values())} of {n_hostile} (" + ", ".join(
                   f"{k} {v}" for k, v in hostile_counts.items()) + ")"
               + (f"; first bad: {hostile_bad[0]}" if hostile_bad else ""),
               "all, each kind at least once",
               not hostile_bad and all(hostile_counts.values()))
    checks.add("echo serves after the run", after, "yes" if after else "no", "yes", after)
    checks.info("wall time of the 8 normal threads", round(elapsed, 2), f"{elapsed:.2f} s")
    checks.info("normal calls/s (8 threads)", round(total / elapsed), f"{total / elapsed:,.0f}")
    if deadline_ms:
        med, worst = statistics.median(deadline_ms), max(deadline_ms)
        checks.info("50 ms deadline under this load: median / max", [round(med, 1),
                    round(worst, 1)], f"{med:.0f} / {worst:.0f} ms ({len(deadline_ms)} calls)")


# -- SIGKILL: the children run in a forkserver (a clean single-threaded process), because a
# plain fork of a process that has compiled wasm would copy wasmtime's thread pool half-dead.


def kv_writer(state: str, plugin: str, start: int, keys: int, conn: Any) -> None:
    """Child: write key (i % keys) = value(i) for i = start, start+1, ...; after each write
    returns, send i (acknowledged) before starting the next."""
    with plugbox.Runtime(state_dir=state) as rt:
        kv = rt.load(plugin)
        conn.send("ready")
        i = start
        while True:
            kv.call("put", kv_payload(f"k{i % keys}", kv_value(i)))
            conn.send(i)
            i += 1


def kv_value(i: int) -> bytes:
    return f"{i:010d}".encode() * 12


#: soak-big's 8 MiB data segment is over the default compile budget (Policy.max_module_bytes).
BIG_POLICY = plugbox.Policy(max_module_bytes=16 * MiB)


def cache_compiler(state: str, plugins: list[str], conn: Any) -> None:
    """Child: forever, remove the cache's entries and load every plugin (compile + store)."""
    with plugbox.Runtime(state_dir=state, policy=BIG_POLICY) as rt:
        conn.send("ready")
        while True:
            for entry in rt.cache.directory.glob("*.cwasm*"):
                if not entry.name.startswith(".tmp-"):
                    entry.unlink()
            for plugin in plugins:
                rt.load(plugin).close()
                conn.send(plugin)


def wait_for_tmp(directory: Path, nth: int, timeout: float) -> bool:
    """Block until the ``nth`` file named .tmp-* is created in ``directory`` (inotify), or
    timeout."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(directory), 0x100) < 0:  # IN_CREATE
        raise OSError(ctypes.get_errno(), "inotify")
    try:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                return False
            data, pos = os.read(fd, 1 << 16), 0
            while pos < len(data):  # struct inotify_event: wd, mask, cookie, len, name[len]
                length = struct.unpack_from("iIII", data, pos)[3]
                if data[pos + 16:pos + 16 + length].startswith(b".tmp-"):
                    nth -= 1
                    if nth == 0:
                        return True
                pos += 16 + length
        return False
    finally:
        os.close(fd)


def _kill(pid: int) -> None:
    """SIGKILL ``pid``; one already gone is fine (a forkserver child is reaped by the forkserver,
    so it can vanish between ``is_alive()`` and the kill)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_child(ctx: Any, target: Callable[..., None], args: tuple[Any, ...], *,
               delay: float | None, watch: tuple[Path, int] | None = None,
               timeout: float = 60.0) -> tuple[list[Any], str]:
    """Start ``target(*args, conn)`` in a child, wait for its "ready", then SIGKILL it after
    ``delay`` seconds, or (``watch=(directory, n)``) as soon as the n-th .tmp-* file appears
    there. Returns the messages the child sent after "ready" and how the kill was timed."""
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child_conn), daemon=True)
    proc.start()
    child_conn.close()
    got: list[Any] = []
    how = "child ended on its own"
    try:
        if not parent_conn.poll(timeout) or parent_conn.recv() != "ready":
            raise RuntimeError("child did not get ready")
        if watch is not None:
            # On one shared CPU, the woken parent preempts the writing child at once, so the
            # kill lands inside the write rather than after it.
            cpus = os.sched_getaffinity(0)
            one = {min(cpus)}
            os.sched_setaffinity(proc.pid, one)
            os.sched_setaffinity(0, one)
            try:
                how = ("at a .tmp-* file" if wait_for_tmp(*watch, timeout=timeout)
                       else "no .tmp-* seen")
                _kill(proc.pid)
            finally:
                os.sched_setaffinity(0, cpus)
        else:
            end = time.monotonic() + (delay or 0.0)
            while (left := end - time.monotonic()) > 0:
                if parent_conn.poll(min(left, 0.05)):
                    got.append(parent_conn.recv())
            _kill(proc.pid)
            how = "random"
    finally:
        if proc.is_alive():
            _kill(proc.pid)
        proc.join(10)
        while True:
            try:
                if not parent_conn.poll(0):
                    break
                got.append(parent_conn.recv())
            except (EOFError, OSError):
                break
        parent_conn.close()
    return got, how


def scenario_kv_kill(work: Path, plugins: dict[str, Path], scale: int, checks: Checks) -> None:
    kills, keys = max(3, 50 // scale), 500
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["plugbox", "wasmtime"])
    state = work / "state"
    db = state / "plugbox.sqlite3"
    expected: dict[int, int] = {}  # key index -> the i of its last acknowledged write
    next_i = 0
    acked_total = 0
    reopen_bad: list[str] = []
    lost: list[str] = []
    integrity_bad: list[str] = []
    rng = random.Random(7)
    for k in range(kills):
        got, _ = kill_child(ctx, kv_writer, (str(state), str(plugins["kv"]), next_i, keys),
                            delay=rng.uniform(0.0, 0.4))
        acked = [m for m in got if isinstance(m, int)]
        acked_total += len(acked)
        for i in acked:
            expected[i % keys] = i
        in_flight = (acked[-1] + 1) if acked else next_i
        next_i = in_flight + 1

        def verify() -> None:
            with plugbox.Runtime(state_dir=state) as rt:
                kv = rt.load(plugins["kv"])
                for m in range(keys):
                    got_value = kv.call("read", kv_payload(f"k{m}"))
                    allowed = set()
                    if m in expected:
                        allowed.add(kv_value(expected[m]))
                    else:
                        allowed.add(b"")
                    if in_flight % keys == m:
                        allowed.add(kv_value(in_flight))
                        if got_value == kv_value(in_flight):  # it committed before the kill
                            expected[m] = in_flight
                    if got_value not in allowed:
                        lost.append(f"kill {k}: key k{m} holds {got_value[:20]!r}, expected "
                                    f"write {expected.get(m)}")
        o = outcome(verify)
        if o[0] != "ok":
            reopen_bad.append(f"kill {k}: {shown_outcome(o)}")
        con = sqlite3.connect(db)
        try:
            verdict = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
        if verdict != "ok":
            integrity_bad.append(f"kill {k}: {verdict}")
    checks.info("kills / acknowledged writes", [kills, acked_total],
                f"{kills} / {acked_total:,}")
    checks.add("new Runtime opens the state after each kill", kills - len(reopen_bad),
               f"{kills - len(reopen_bad)} of {kills}" + (f"; {reopen_bad[0]}" if reopen_bad
                                                          else ""), "all", not reopen_bad)
    checks.add("acknowledged writes present, exact", acked_total - len(lost),
               f"{'all' if not lost else len(lost)} " + ("" if not lost else f"lost; {lost[0]}"),
               "all", not lost and not reopen_bad)
    checks.add("PRAGMA integrity_check", kills - len(integrity_bad),
               f"ok {kills - len(integrity_bad)} of {kills}" + (
                   f"; {integrity_bad[0]}" if integrity_bad else ""), "ok every time",
               not integrity_bad)


def _cache_entries(cache: Path) -> tuple[int, int, list[str]]:
    """(.tmp-* count, their bytes, torn entries: artifacts whose digest is absent or wrong)."""
    tmp = [p for p in cache.glob(".tmp-*")] if cache.is_dir() else []
    torn = []
    for art in cache.glob("[!.]*.cwasm") if cache.is_dir() else []:
        digest = art.with_name(art.name + ".hmac")  # keyed by <cache>.key (plugbox.engine._cache)
        try:
            mac = hmac.new(cache.with_name(cache.name + ".key").read_bytes(),
                           art.name.encode() + b"\0" + art.read_bytes(), hashlib.sha256)
            if digest.read_text().strip() != mac.hexdigest():
                torn.append(art.name)
        except FileNotFoundError:
            torn.append(art.name)
    return len(tmp), sum(p.stat().st_size for p in tmp), torn


# The child writes 8 temporary files per round (artifact then digest, for echo, counter,
# hostile, big, in that order); aimed kills take the n-th, the big artifact's first.
AIM = (7, 1, 3, 5, 8, 2, 4, 6)


def scenario_cache_kill(work: Path, plugins: dict[str, Path], scale: int,
                        checks: Checks) -> None:
    kills = max(2, 30 // scale)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["plugbox", "wasmtime"])
    state = work / "state"
    cache = state / "cache"
    cache.mkdir(parents=True)
    names = ["echo", "counter", "hostile", "big"]
    dirs = [str(plugins[n]) for n in names]
    rng = random.Random(11)
    load_bad: list[str] = []
    not_whole: list[str] = []
    torn_seen = tmp_max = tmp_bytes_max = swept_left = 0
    timing: dict[str, int] = {}
    for k in range(kills):
        aimed = k % 2 == 1
        _, how = kill_child(ctx, cache_compiler, (str(state), dirs),
                            delay=None if aimed else rng.uniform(0.0, 2.0 / scale ** 0.5),
                            watch=(cache, AIM[(k // 2) % len(AIM)]) if aimed else None)
        timing[how] = timing.get(how, 0) + 1
        n_tmp, tmp_bytes, torn = _cache_entries(cache)
        torn_seen += len(torn)
        tmp_max, tmp_bytes_max = max(tmp_max, n_tmp), max(tmp_bytes_max, tmp_bytes)

        def reload() -> int:
            with plugbox.Runtime(state_dir=state, policy=BIG_POLICY) as rt:
                left = _cache_entries(cache)[0]
                checks_ = [
                    rt.load(plugins["echo"]).call("echo", b"after kill") == b"after kill",
                    rt.load(plugins["counter"]).call_json("counter.get", {"name": "x"})
                    ["value"] == 0,
                    rt.load(plugins["hostile"]).call("echo", b"hi") == b"hi",
                    rt.load(plugins["big"]).call("run", b"") == b"",
                ]
                if not all(checks_):
                    load_bad.append(f"kill {k}: wrong results {checks_}")
                return left
        o = outcome(reload)
        if o[0] != "ok":
            load_bad.append(f"kill {k}: {shown_outcome(o)}")
        else:
            swept_left = max(swept_left, o[2])
        _, _, torn_after = _cache_entries(cache)
        if torn_after:
            not_whole.append(f"kill {k}: {torn_after}")
    checks.info("kills (how timed)", timing, f"{kills} (" + ", ".join(
        f"{v} {k}" for k, v in timing.items()) + ")")
    checks.add("plugins load and answer after each kill", kills - len(load_bad),
               f"{kills - len(load_bad)} of {kills}" + (f"; {load_bad[0]}" if load_bad else ""),
               "all", not load_bad)
    checks.info("artifacts without a matching digest found after kills", torn_seen)
    checks.add("cache entries whole after the reload", kills - len(not_whole),
               f"{kills - len(not_whole)} of {kills}" + (f"; {not_whole[0]}" if not_whole
                                                         else ""), "all", not not_whole)
    checks.info("most .tmp-* files in the cache after a kill", [tmp_max, tmp_bytes_max],
                f"{tmp_max} ({tmp_bytes_max / MiB:.1f} MiB)")
    if tmp_max:
        checks.add(".tmp-* left once a new Runtime started", swept_left, str(swept_left),
                   "0 (swept on start)", swept_left == 0)
    else:  # whether a kill lands inside a write is luck; without a leftover, nothing to sweep
        checks.info(".tmp-* left once a new Runtime started", None,
                    "not exercised: no kill left a .tmp-* file")


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``; Skip when mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        raise Skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise Skip(f"cannot mount a tmpfs ({proc.stderr.strip() or 'mount failed'}; needs "
                   "root or CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        unmount(where)


def unmount(where: Path) -> None:
    if os.path.ismount(where):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> int:
    """Write a file until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 4096
    with open(directory / "filler", "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            block = chunk * (size // 4096) if size >= 4096 else b"\0"
            while True:
                try:
                    written += f.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def typed_or_ok(o: tuple[str, str, Any]) -> bool:
    return o[0] in ("ok", "typed")


def scenario_full_fs(work: Path, plugins: dict[str, Path], scale: int, checks: Checks) -> None:
    with small_tmpfs(work / "mnt") as mnt:
        state = mnt / "state"
        rt = plugbox.Runtime(state_dir=state)
        try:
            echo = rt.load(plugins["echo"])
            kv = rt.load(plugins["kv"])
            for j in range(10):
                kv.call("put", kv_payload(f"before{j}", b"v" * 100))
            filled = fill(mnt)
            free = os.statvfs(mnt).f_bavail
            checks.info("filler written / blocks free after", [filled, free],
                        f"{filled / MiB:.2f} MiB / {free}")

            first_fail: tuple[str, str, Any] = ("ok", "", None)
            writes = 0
            for j in range(400):
                o = outcome(lambda: kv.call("put", kv_payload(f"full{j}", b"x" * 4096)))
                if o[0] != "ok":
                    first_fail = o
                    break
                writes += 1
            checks.add("kv write on a full FS", shown_outcome(first_fail),
                       f"{writes} writes ok, then: {shown_outcome(first_fail)}"
                       if first_fail[0] != "ok" else "400 writes of 4 KiB all succeeded",
                       "PlugboxError subclass", first_fail[0] == "typed")
            o = outcome(lambda: kv.call("read", kv_payload("before3")))
            checks.add("kv read on a full FS", shown_outcome(o), None,
                       "ok (or PlugboxError)", typed_or_ok(o) and
                       (o[0] != "ok" or o[2] == b"v" * 100))
            o = outcome(lambda: rt.load(plugins["counter"]).call_json("counter.incr",
                                                                       {"name": "n"}))
            checks.add("load (compile + cache write) + kv-writing call", shown_outcome(o),
                       None, "ok or PlugboxError", typed_or_ok(o))
            o = outcome(lambda: plugbox.Runtime(state_dir=mnt / "fresh").close())
            checks.add("Runtime() on a new state dir there", shown_outcome(o), None,
                       "ok or PlugboxError", typed_or_ok(o))
            served = sum(echo.call("echo", b"%d" % i) == b"%d" % i for i in range(1000))
            checks.add("calls that need no disk", served, f"{served} of 1000 byte-exact",
                       "all", served == 1000)
            (mnt / "filler").unlink()
            o = outcome(lambda: kv.call("put", kv_payload("after", b"ok")))
            checks.add("kv write once space is freed", shown_outcome(o), None, "ok",
                       o[0] == "ok")
        finally:
            o = outcome(rt.close)
            checks.add("Runtime.close()", shown_outcome(o), None, "ok or PlugboxError",
                       typed_or_ok(o))


def scenario_readonly_fs(work: Path, plugins: dict[str, Path], scale: int,
                         checks: Checks) -> None:
    # Linux refuses remount,ro while a file is open for writing, so the state is made by a
    # Runtime that is closed first; a Runtime cannot be caught open by the remount.
    with small_tmpfs(work / "mnt") as mnt:
        state = mnt / "state"
        with plugbox.Runtime(state_dir=state) as rt:
            rt.load(plugins["echo"])
            rt.load(plugins["kv"]).call("put", kv_payload("before", b"v" * 100))
        proc = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise Skip(f"cannot remount read-only: {proc.stderr.strip().splitlines()[0]}")

        def reopen() -> str:
            with plugbox.Runtime(state_dir=state) as again:
                # Opening read-only state is allowed; then every write must fail typed.
                kv = again.load(plugins["kv"])
                w = outcome(lambda: kv.call("put", kv_payload("after", b"x")))
                checks.add("kv write on a Runtime that opened it", shown_outcome(w), None,
                           "PlugboxError subclass", w[0] == "typed")
                r = outcome(lambda: kv.call("read", kv_payload("before")))
                checks.add("kv read on a Runtime that opened it", shown_outcome(r), None,
                           "ok (or PlugboxError)", typed_or_ok(r) and
                           (r[0] != "ok" or r[2] == b"v" * 100))
                c = outcome(lambda: again.load(plugins["counter"]).call("counter.list"))
                checks.add("load of an uncached plugin", shown_outcome(c), None,
                           "ok or PlugboxError", typed_or_ok(c))
                echo = again.load(plugins["echo"])
                served = sum(echo.call("echo", b"%d" % i) == b"%d" % i for i in range(1000))
                checks.add("calls that need no disk", served, f"{served} of 1000 byte-exact",
                           "all", served == 1000)
            return "opened"
        o = outcome(reopen)
        checks.add("Runtime() on the existing state", shown_outcome(o), None,
                   "PlugboxError (or opens, writes typed)", typed_or_ok(o))
        o = outcome(lambda: plugbox.Runtime(state_dir=mnt / "fresh").close())
        checks.add("Runtime() on a new state dir there", shown_outcome(o), None,
                   "PlugboxError subclass", o[0] == "typed")


RUNNERS: dict[str, Callable[[Path, dict[str, Path], int, Checks], None]] = {
    "calls-1m": scenario_calls,
    "load-close": scenario_load_close,
    "threads": scenario_threads,
    "kv-kill": scenario_kv_kill,
    "cache-kill": scenario_cache_kill,
    "full-fs": scenario_full_fs,
    "readonly-fs": scenario_readonly_fs,
}


def run_scenario(name: str, work: Path, plugins: dict[str, Path], scale: int) -> dict[str, Any]:
    """Run one scenario in this process; its result as a JSON-able dict."""
    checks = Checks()
    started = time.perf_counter()
    status, reason, error = "pass", "", None
    try:
        RUNNERS[name](work, plugins, scale, checks)
    except Skip as exc:
        status, reason = "skip", str(exc)
    except Exception as exc:
        status = "fail"
        reason = error = f"the scenario raised {type(exc).__name__}: {exc}"
    if status == "pass" and any(r["ok"] is False for r in checks.rows):
        status = "fail"
        reason = "; ".join(r["check"] for r in checks.rows if r["ok"] is False)
    return {"name": name, "status": status, "reason": reason, "error": error,
            "seconds": round(time.perf_counter() - started, 1), "checks": checks.rows}


# ------------------------------------------------------------------------------- driver


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "plugbox": plugbox.__version__,
        "wasmtime_py": metadata.version("wasmtime"),
        "commit": commit,
    }


def spawn(name: str, work: Path, plugins: dict[str, Path], scale: int,
          timeout: float) -> dict[str, Any]:
    """Run one scenario in a forked child (this process has imported plugbox but started no
    thread, so the fork is clean and costs no new interpreter); a crash or a timeout is a
    failure of that scenario."""
    started = time.perf_counter()

    def failed(why: str) -> dict[str, Any]:
        return {"name": name, "status": "fail", "reason": why, "error": why,
                "seconds": round(time.perf_counter() - started, 1), "checks": []}

    if native_threads() != 1:
        return failed("cannot fork a clean child: the driver has started threads")
    work.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send the result, leave without running atexit handlers
        code = 0
        try:
            os.close(read_end)
            data = json.dumps(run_scenario(name, work, plugins, scale)).encode()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    os.kill(pid, signal.SIGKILL)
                    break
                if select.select([pipe], [], [], min(left, 1.0))[0]:
                    chunk = pipe.read(1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    finally:
        unmount(work / "mnt")
    if timed_out:
        return failed(f"timed out after {timeout:.0f} s (killed)")
    if chunks:
        return json.loads(b"".join(chunks))  # type: ignore[no-any-return]
    how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
           else f"exit status {os.waitstatus_to_exitcode(status)}")
    return failed(f"the scenario's process ended without a result ({how})")


def print_table(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"plugbox soak and fault figures ({'quick, 1/20 scale' if doc['quick'] else 'full'})"
          f"; {m['cpu_model']}, {m['cpus_available']} CPUs, load average "
          f"{m['load_average_at_start'][0]} at start; {doc['wall_seconds']} s")
    rows = [("scenario", "check", "value", "bound", "result")]
    for sc in doc["scenarios"]:
        if not sc["checks"]:
            rows.append((sc["name"], "-", sc["reason"][:120], "", sc["status"].upper()))
        for r in sc["checks"]:
            verdict = "" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL")
            rows.append((sc["name"], r["check"], r["shown"][:160], r["bound"], verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print()
    for sc in doc["scenarios"]:
        extra = f": {sc['reason']}" if sc["reason"] and sc["status"] != "pass" else ""
        print(f"{sc['name']:12} {sc['status'].upper():5} {sc['seconds']:7.1f} s{extra}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about 1/20 scale (a smoke test)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    ap.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    scale = 20 if args.quick else 1

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="plugbox-soak-"))
    doc: dict[str, Any] = {"command": "bench/soak.py" + (" --quick" if args.quick else ""),
                           "quick": args.quick, "machine": machine(), "scenarios": []}
    try:
        print("building plugins ...", file=sys.stderr, flush=True)
        plugins = build_plugins(work / "plugins", scale)
        for name in args.only or SCENARIOS:
            print(f"{name} ...", file=sys.stderr, flush=True)
            result = spawn(name, work / name, plugins, scale,
                           timeout=180 if args.quick else 1200)
            print(f"{name}: {result['status']} in {result['seconds']} s", file=sys.stderr,
                  flush=True)
            doc["scenarios"].append(result)
    finally:
        for name in SCENARIOS:
            unmount(work / name / "mnt")
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc["wall_seconds"] = round(time.perf_counter() - started, 1)
    doc["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 1 if any(sc["status"] == "fail" for sc in doc["scenarios"]) else 0


if __name__ == "__main__":
    sys.exit(main())
