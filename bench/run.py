#!/usr/bin/env python3
"""plugbox benchmarks, side by side with its peers, in one run.

    python bench/run.py [--quick] [--json-out bench/results.json]

Builds everything it runs from source first (the Rust echo sample, the bench-only Rust plugin
in bench/plugins/bench-hooks, the Extism echo plugin in bench/plugins/extism-echo.wat), then
measures:

1. per-call round trip of an echo hook at 16 B, 1 KiB, 64 KiB and 1 MiB: plugbox (persistent
   instance), the Extism Python SDK, and wasmtime-py's generic API doing the full canonical
   call on the same Rust echo module;
2. fresh-instance calls (plugbox mode="fresh", and the peers' equivalents) and instantiation;
3. the cost of one guest->host call (a hook making N clock.monotonic calls);
4. throughput of a CPU-bound hook on 1 vs 2 threads sharing one plugin;
5. deadlines under load (a 20 ms deadline while 4 Python threads spin, with CPython's switch
   interval and with Runtime(switch_interval_ms=1), and while 8 threads hammer host calls)
   and pool fairness (call latency with 16 threads on a pool of 4);
6. the PluginHost's dispatch overhead: `each` over 10 echo plugins against 10 direct calls,
   `first` against one direct call;
7. propagation of a lifecycle change between two processes, SQLite and PostgreSQL
   (bench/propagation.py);
8. the lifecycle (bench/lifecycle.py): enable/disable latency, upgrade time of a Rust and a
   Python plugin (cold compile, warm cache), RSS over 1,000 reloads.

Every figure is the median over several repetitions; contenders are interleaved repetition by
repetition so that background load hits them alike. Prints tables with ratios and the issue's
targets (met / not met) and writes every row, with the environment, as JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "runtime"))  # run from a checkout without installing

import wasmtime  # noqa: E402

import plugbox  # noqa: E402

sys.path.insert(0, str(BENCH))
import lifecycle  # noqa: E402  (bench/lifecycle.py)

SIZES = [16, 1024, 64 * 1024, 1024 * 1024]
HOST_CALLS_N = 10_000

# The targets.
TARGET_CALL_16B_US = 3.0
TARGET_MIB_GBPS = 2.0
TARGET_FRESH_US = 20.0
TARGET_HOSTCALL_US = 2.0
# Python plugins (componentize-py components), issue 3:
TARGET_PY_1K_US = 150.0
TARGET_PY_MIB_EACH_WAY_MS = 20.0
TARGET_PY_WARM_LOAD_MS = 250.0
# Issue 11, section 2: a random 1 MiB payload round-trips through a Python plugin in at most
# this, and no kind of bytes costs much more than another.
TARGET_PY_MIB_RANDOM_MS = 10.0
TARGET_PY_KIND_RATIO = 1.5
#: The sizes the Python section also sends as zeros and ASCII, beside random bytes.
PY_KIND_SIZES = (1024, 1024 * 1024)
TARGET_SCALING = 1.8
# Deadlines under load, issue 7: a 20 ms deadline ends within these (ms).
DEADLINE_MS = 20
TARGET_DEADLINE_MEDIAN_MS = 40.0
TARGET_DEADLINE_WORST_MS = 120.0
#: issue 8: one `each` dispatch over 10 plugins against 10 direct calls; `first` with the first
#: plugin answering against one direct call.
TARGET_DISPATCH_EACH_RATIO = 1.3
TARGET_DISPATCH_FIRST_RATIO = 1.2
DISPATCH_PLUGINS = 10

RUSTC = "/usr/bin/rustc"
CARGO = "/usr/bin/cargo"


# ------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def size_label(n: int) -> str:
    if n >= 1 << 20:
        return f"{n >> 20} MiB"
    if n >= 1 << 10:
        return f"{n >> 10} KiB"
    return f"{n} B"


#: Payload kinds: random bytes (the default everywhere), zeros, printable ASCII.
PAYLOAD_KINDS = ("random", "zeros", "ascii")


def payload_of(n: int, kind: str = "random") -> bytes:
    """``n`` bytes of ``kind``; random bytes come from a generator seeded by the size, so
    every run (and every contender) sends the same bytes."""
    if kind == "zeros":
        return bytes(n)
    gen = random.Random(f"plugbox-bench {kind} {n}")
    if kind == "ascii":
        return bytes(gen.choices(range(0x20, 0x7F), k=n))
    return gen.randbytes(n)


class Timer:
    """Runs ``fn`` in timed repetitions of ``inner`` calls; per-call seconds per repetition.

    ``inner`` is calibrated once so that a repetition lasts about ``rep_seconds``. The garbage
    collector is off during a repetition (as in ``timeit``).
    """

    def __init__(self, fn: Callable[[], Any], rep_seconds: float, max_inner: int = 1_000_000,
                 *, setup: Callable[[], Any] | None = None,
                 teardown: Callable[[], Any] | None = None):
        self.fn = fn
        self.setup = setup or (lambda: None)
        self.teardown = teardown or (lambda: None)
        self.setup()
        try:
            self._calibrate(fn, rep_seconds, max_inner)
        finally:
            self.teardown()
        self.samples: list[float] = []

    def _calibrate(self, fn: Callable[[], Any], rep_seconds: float, max_inner: int) -> None:
        fn()  # warm up
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        probe = max(1, min(max_inner, int(0.005 / once)))
        t0 = time.perf_counter()
        for _ in range(probe):
            fn()
        once = max((time.perf_counter() - t0) / probe, 1e-8)
        self.inner = max(1, min(max_inner, int(rep_seconds / once)))

    def check(self) -> Any:
        """One untimed call, under the same setup as the timed ones."""
        self.setup()
        try:
            return self.fn()
        finally:
            self.teardown()

    def rep(self) -> None:
        fn = self.fn
        rng = range(self.inner)
        self.setup()
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            for _ in rng:
                fn()
            elapsed = time.perf_counter_ns() - t0
        finally:
            gc.enable()
            self.teardown()
        self.samples.append(elapsed / 1e9 / self.inner)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def interleaved(timers: dict[Any, Timer], reps: int) -> None:
    """One repetition of each timer in turn, ``reps`` times over."""
    for _ in range(reps):
        for t in timers.values():
            t.rep()


def spread(samples: list[float]) -> float:
    """(max - min) / median: how noisy a figure was."""
    med = statistics.median(samples)
    return (max(samples) - min(samples)) / med if med else 0.0


# ------------------------------------------------------------------------------- building


def _cargo_build(crate_dir: Path, target_dir: Path, package: str | None = None) -> None:
    env = dict(os.environ, RUSTC=RUSTC, CARGO_TARGET_DIR=str(target_dir))
    cmd = [CARGO, "build", "--offline", "--release", "--target", "wasm32-unknown-unknown"]
    if package:
        cmd += ["-p", package]
    proc = subprocess.run(cmd, cwd=crate_dir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cargo build failed in {crate_dir}:\n{proc.stderr[-4000:]}")


def stage(directory: Path, module: bytes, *, name: str, hooks: list[str],
          **manifest: Any) -> Path:
    """A plugin directory: module + plugbox.json with its real sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plugin.wasm").write_bytes(module)
    doc: dict[str, Any] = {
        "manifest_version": 1,
        "name": name,
        "version": "0.1.0",
        "abi": "1.0",
        "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(module).hexdigest()},
        "hooks": hooks,
    }
    doc.update(manifest)
    (directory / "plugbox.json").write_text(json.dumps(doc, indent=2))
    return directory


def build_echo_sample(out: Path, target_dir: Path) -> tuple[Path, str]:
    """The Rust echo sample, staged. Uses plugbox.authoring._build when it exists."""
    try:
        from plugbox.authoring import _build
    except ImportError:
        _build = None  # type: ignore[assignment]
    if _build is not None:
        staged = _build.build_rust_plugins(REPO / "sample-plugins" / "rust", out / "samples",
                                           ["echo"], target_dir=target_dir)
        return Path(staged["echo"]), "plugbox.authoring._build.build_rust_plugins"
    ws = REPO / "sample-plugins" / "rust"
    _cargo_build(ws, target_dir, "echo")
    wasm = (target_dir / "wasm32-unknown-unknown" / "release" / "echo.wasm").read_bytes()
    return stage(out / "echo", wasm, name="echo", hooks=["echo"]), "cargo (bench fallback)"


def build_bench_hooks(out: Path, target_dir: Path) -> Path:
    crate = BENCH / "plugins" / "bench-hooks"
    _cargo_build(crate, target_dir)
    wasm = (target_dir / "wasm32-unknown-unknown" / "release" / "bench_hooks.wasm").read_bytes()
    return stage(out / "bench-hooks", wasm, name="bench-hooks",
                 hooks=["echo", "host-calls", "spin"],
                 permissions={"clock": True}, limits={"instances": 4})


def build_extism_echo() -> bytes:
    return bytes(wasmtime.wat2wasm((BENCH / "plugins" / "extism-echo.wat").read_text()))


# A wasmtime-py module for the guest->host comparison: `loop(n)` calls an imported
# `monotonic() -> i64` n times. Same shape as the Rust host-calls hook, minus the ABI.
WASMTIME_HOSTCALL_WAT = """
(module
  (import "host" "monotonic" (func $mono (result i64)))
  (func (export "loop") (param $n i32) (result i64)
    (local $acc i64)
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $acc (i64.add (local.get $acc) (call $mono)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $again)))
    (local.get $acc))
)
"""

# Extism equivalent: export `loop` reads N (decimal-free: 4 little-endian bytes) from input and
# calls the Python host function extism:host/user.monotonic N times.
EXTISM_HOSTCALL_WAT = """
(module
  (import "extism:host/env" "input_load_u8" (func $in8 (param i64) (result i32)))
  (import "extism:host/user" "monotonic" (func $mono (result i64)))
  (memory (export "memory") 1)
  (func (export "loop") (result i32)
    (local $n i32) (local $acc i64)
    (local.set $n (i32.or (call $in8 (i64.const 0))
                  (i32.or (i32.shl (call $in8 (i64.const 1)) (i32.const 8))
                  (i32.or (i32.shl (call $in8 (i64.const 2)) (i32.const 16))
                          (i32.shl (call $in8 (i64.const 3)) (i32.const 24))))))
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $acc (i64.add (local.get $acc) (call $mono)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $again)))
    (i32.const 0))
)
"""


# The spin hook's arithmetic (xorshift64) as a bare wasm export, for the thread-scaling control
# run through wasmtime-py (one Store per thread; wasmtime-py's ctypes calls drop the GIL).
WASMTIME_SPIN_WAT = """
(module
  (func (export "spin") (param $n i64) (result i64)
    (local $x i64)
    (local.set $x (i64.xor (i64.const 0x9E3779B97F4A7C15) (local.get $n)))
    (block $done
      (loop $again
        (br_if $done (i64.eqz (local.get $n)))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $again)))
    (local.get $x))
)
"""


# ------------------------------------------------------------------------------- contenders


class WasmtimeEcho:
    """The canonical call done with wasmtime-py's generic API (``Func.__call__``)."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module):
        self.engine = engine
        self.module = module
        self.store = wasmtime.Store(engine)
        self.linker = wasmtime.Linker(engine)
        inst = self.linker.instantiate(self.store, module)
        ex: Any = inst.exports(self.store)
        self.realloc = ex["cabi_realloc"]
        self.on_hook = ex["on-hook"]
        self.post = ex["cabi_post_on-hook"]
        self.memory = ex["memory"]

    def call(self, hook: bytes, payload: bytes) -> bytes:
        store, mem = self.store, self.memory
        hp = self.realloc(store, 0, 0, 1, len(hook))
        mem.write(store, hook, hp)
        pp = self.realloc(store, 0, 0, 1, len(payload))
        mem.write(store, payload, pp)
        ret = self.on_hook(store, hp, len(hook), pp, len(payload))
        tag, ptr, length = struct.unpack("<B3xII4x", mem.read(store, ret, ret + 16))
        out = mem.read(store, ptr, ptr + length) if tag == 0 else b""
        self.post(store, ret)
        if tag != 0:
            raise RuntimeError("echo returned an error")
        return bytes(out)

    def fresh_call(self, hook: bytes, payload: bytes) -> bytes:
        """New store + instance per call (plain Linker.instantiate), then the full call."""
        store = wasmtime.Store(self.engine)
        ex: Any = self.linker.instantiate(store, self.module).exports(store)
        realloc, mem = ex["cabi_realloc"], ex["memory"]
        hp = realloc(store, 0, 0, 1, len(hook))
        mem.write(store, hook, hp)
        pp = realloc(store, 0, 0, 1, len(payload))
        mem.write(store, payload, pp)
        ret = ex["on-hook"](store, hp, len(hook), pp, len(payload))
        tag, ptr, length = struct.unpack("<B3xII4x", mem.read(store, ret, ret + 16))
        out = bytes(mem.read(store, ptr, ptr + length))
        ex["cabi_post_on-hook"](store, ret)
        return out


# ------------------------------------------------------------------------------- sections


class Results:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, case: str, contender: str, samples: list[float], *,
            unit: str = "s/call", **extra: Any) -> dict[str, Any]:
        row = {
            "section": section,
            "case": case,
            "contender": contender,
            "unit": unit,
            "median": statistics.median(samples),
            "min": min(samples),
            "max": max(samples),
            "spread": spread(samples),
            "samples": samples,
            **extra,
        }
        self.rows.append(row)
        return row

    def get(self, section: str, case: str, contender: str) -> dict[str, Any] | None:
        for row in self.rows:
            if (row["section"], row["case"], row["contender"]) == (section, case, contender):
                return row
        return None


def accelerator_switch() -> Callable[[bool], Any] | None:
    """plugbox's switch between its C call sequence (``_speedups``) and the pure-Python one,
    when the C one is built (internal API; None when absent)."""
    from plugbox.engine import _fastpath

    if getattr(_fastpath, "ACCELERATED", False) and hasattr(_fastpath, "use_accelerator"):
        return _fastpath.use_accelerator
    return None


PURE = "plugbox (pure Python)"


def plugbox_timers(fn: Callable[[], Any], rep_seconds: float) -> dict[str, Timer]:
    """plugbox as it loads by default, plus its pure-Python path when the C one is built."""
    timers = {"plugbox": Timer(fn, rep_seconds)}
    switch = accelerator_switch()
    if switch is not None:
        timers[PURE] = Timer(fn, rep_seconds, setup=lambda: switch(False),
                             teardown=lambda: switch(True))
    return timers


def bench_calls(res: Results, rt: plugbox.Runtime, echo_plugin: plugbox.Plugin, echo_dir: Path,
                extism_plugin: Any, extism_wasm: bytes, wt: WasmtimeEcho, reps: int,
                rep_seconds: float) -> None:
    """Sections 1 and 2 (round trip at every size, fresh instances, instantiation) as one pool
    of timers, interleaved: a repetition round visits every timer once, so a burst of
    background load lands in a round or two of every figure instead of in all repetitions of
    one, and the medians shrug it off."""
    import extism

    # (section, case, contender) -> timer, plus what each row records besides the samples.
    pool: dict[tuple[str, str, str], Timer] = {}
    extra: dict[tuple[str, str, str], dict[str, Any]] = {}

    for size in SIZES:
        payload = payload_of(size)
        case = size_label(size)
        timers = plugbox_timers(functools.partial(echo_plugin.call, "echo", payload),
                                rep_seconds)
        timers["extism"] = Timer(functools.partial(extism_plugin.call, "echo", payload),
                                 rep_seconds)
        timers["wasmtime-py"] = Timer(functools.partial(wt.call, b"echo", payload), rep_seconds)
        for name, t in timers.items():
            if t.check() != payload:
                raise SystemExit(f"{name} echo returned the wrong bytes at {size} B")
            pool[("roundtrip", case, name)] = t
            extra[("roundtrip", case, name)] = {"payload_bytes": size}

    payload = payload_of(16)
    fresh = rt.load(echo_dir, mode="fresh")
    compiled = extism.extism.CompiledPlugin(extism_wasm, False, [])

    def extism_fresh() -> bytes:
        p = extism.Plugin(compiled)
        try:
            return bytes(p.call("echo", payload))
        finally:
            p.__del__()  # free now, not at the next GC

    case = "fresh-instance call, 16 B"
    timers = plugbox_timers(lambda: fresh.call("echo", payload), rep_seconds)
    timers["extism"] = Timer(extism_fresh, rep_seconds)
    timers["wasmtime-py"] = Timer(lambda: wt.fresh_call(b"echo", payload), rep_seconds)
    for name, t in timers.items():
        if t.check() != payload:
            raise SystemExit(f"{name} fresh echo returned the wrong bytes")
        pool[("fresh", case, name)] = t
        extra[("fresh", case, name)] = {}
    # Instantiation alone (plugbox internal API: Plugin._new_instance = instantiate from the
    # pre-linked template + on-init, then close). Skipped if the internals moved.
    persistent = rt.load(echo_dir)
    new_instance = getattr(persistent, "_new_instance", None)
    if new_instance is not None:
        def inst_only() -> None:
            new_instance().close()
        try:
            inst_only()
            key = ("fresh", "instantiate + on-init + close (no call)", "plugbox")
            pool[key] = Timer(inst_only, rep_seconds)
            extra[key] = {"api": "internal: Plugin._new_instance()"}
        except Exception as exc:  # pragma: no cover - internals changed
            log(f"  (instantiate-only measurement skipped: {exc!r})")

    # A machine-speed reference in the same rounds: pure Python, no wasm. When the host runs
    # this VM slower for a while, this row slows down with the others.
    def reference() -> int:
        total = 0
        for i in range(1000):
            total += i
        return total

    key = ("reference", "pure-Python loop, 1000 additions", "python")
    pool[key] = Timer(reference, rep_seconds)
    extra[key] = {}

    interleaved(pool, reps)
    for key, t in pool.items():
        res.add(*key, t.samples, calls_per_rep=t.inner, **extra[key])
    for case in [size_label(n) for n in SIZES] + ["fresh-instance call, 16 B"]:
        section = "fresh" if case.startswith("fresh") else "roundtrip"
        log(f"  {section} {case}: " + ", ".join(
            f"{c} {t.median * 1e6:.1f} µs" for (s_, k, c), t in pool.items()
            if (s_, k) == (section, case)))
    fresh.close()
    persistent.close()


def bench_hostcalls(res: Results, hooks_plugin: plugbox.Plugin, engine: wasmtime.Engine,
                    reps: int, rep_seconds: float) -> None:
    import extism

    n = HOST_CALLS_N
    zero, big = b"0", str(n).encode()
    acc = hooks_plugin.call("host-calls", big)
    if len(acc) != 8 or acc == bytes(8):
        raise SystemExit("host-calls hook did not read the clock (is clock granted?)")

    # wasmtime-py: a Python Func imported by a tiny module.
    store = wasmtime.Store(engine)
    mono = wasmtime.Func(store, wasmtime.FuncType([], [wasmtime.ValType.i64()]),
                         time.monotonic_ns)
    linker = wasmtime.Linker(engine)
    linker.define(store, "host", "monotonic", mono)
    wt_loop: Any = linker.instantiate(
        store, wasmtime.Module(engine, WASMTIME_HOSTCALL_WAT)).exports(store)["loop"]

    # Extism: a Python host function.
    @extism.host_fn(name="monotonic", namespace="extism:host/user",  # type: ignore[untyped-decorator]
                    signature=([], [extism.ValType.I64]))
    def ext_fn(plugin: Any, inputs: Any, outputs: Any, *user: Any) -> None:
        outputs[0].value = time.monotonic_ns()

    ext = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_HOSTCALL_WAT)), wasi=False,
                        functions=[ext_fn])
    ext_zero, ext_big = struct.pack("<I", 0), struct.pack("<I", n)
    ext.call("loop", ext_big)

    timers = {
        ("plugbox", 0): Timer(lambda: hooks_plugin.call("host-calls", zero), rep_seconds),
        ("plugbox", n): Timer(lambda: hooks_plugin.call("host-calls", big), rep_seconds),
        ("extism", 0): Timer(lambda: ext.call("loop", ext_zero), rep_seconds),
        ("extism", n): Timer(lambda: ext.call("loop", ext_big), rep_seconds),
        ("wasmtime-py", 0): Timer(lambda: wt_loop(store, 0), rep_seconds),
        ("wasmtime-py", n): Timer(lambda: wt_loop(store, n), rep_seconds),
    }
    # Timers are not interleaved within a pair here: pair them rep by rep instead so each
    # difference comes from adjacent measurements.
    for _ in range(reps):
        for t in timers.values():
            t.rep()
    for name in ("plugbox", "extism", "wasmtime-py"):
        t0, tn = timers[(name, 0)], timers[(name, n)]
        per_call = [(b - a) / n for a, b in zip(t0.samples, tn.samples)]
        res.add("hostcall", "guest->host call (clock.monotonic)", name, per_call,
                unit="s/host call", n=n, base_call_median=t0.median,
                loop_call_median=tn.median)
    log("  guest->host: " + ", ".join(
        f"{name} {statistics.median([(b - a) / n for a, b in zip(timers[(name, 0)].samples, timers[(name, n)].samples)]) * 1e6:.2f} µs"
        for name in ("plugbox", "extism", "wasmtime-py")))
    del ext


def _calibrate(fn_for: Callable[[int], Callable[[], Any]], start: int) -> int:
    """The work size n for which fn_for(n)() takes about 1 ms."""
    n = start
    for _ in range(6):
        fn = fn_for(n)
        fn()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        per = (time.perf_counter() - t0) / 5
        n = max(1, int(n * 0.001 / per))
    return n


def _throughput(fn: Callable[[], Any], threads: int, calls: int) -> float:
    """Calls per second when ``threads`` threads each make ``calls`` calls of ``fn``."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(calls):
                fn()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return threads * calls / elapsed


def bench_threads(res: Results, hooks_plugin: plugbox.Plugin, engine: wasmtime.Engine,
                  reps: int, rep_seconds: float) -> None:
    """spin (~1 ms of guest arithmetic per call) from 1 thread, then from 2 threads on the
    same plugin. Two controls run the same protocol, interleaved with it, to show what this
    machine allows at the moment: the same xorshift loop as a bare wasm export called through
    wasmtime-py (a Store per thread), and hashlib.sha256 of a 64 KiB buffer (C code that drops
    the GIL). Each "function" takes about 1 ms."""
    iters = _calibrate(lambda n: (lambda: hooks_plugin.call("spin", str(n).encode())), 100_000)
    arg = str(iters).encode()

    def spin() -> None:
        hooks_plugin.call("spin", arg)

    module = wasmtime.Module(engine, WASMTIME_SPIN_WAT)
    local = threading.local()

    def wt_spin_for(n: int) -> Callable[[], Any]:
        def call() -> Any:
            pair = getattr(local, "pair", None)
            if pair is None:  # one Store + instance per thread
                store = wasmtime.Store(engine)
                ex: Any = wasmtime.Instance(store, module, []).exports(store)
                pair = local.pair = (store, ex["spin"])
            return pair[1](pair[0], n)
        return call

    wt_spin = wt_spin_for(_calibrate(wt_spin_for, 100_000))

    block = b"\x5a" * (1 << 16)  # fits in L2: the control is CPU-bound, not memory-bound
    chunks = _calibrate(lambda n: (lambda: [hashlib.sha256(block).digest() for _ in range(n)]),
                        1)

    def sha() -> None:
        for _ in range(chunks):
            hashlib.sha256(block).digest()

    calls = max(10, int(rep_seconds / 0.001))
    _throughput(spin, 2, 5)  # warm the pool: a second instance
    _throughput(wt_spin, 2, 5)
    contenders = {"plugbox": spin, "control: wasmtime-py spin": wt_spin,
                  "control: hashlib.sha256": sha}
    one: dict[str, list[float]] = {k: [] for k in contenders}
    two: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            one[name].append(_throughput(fn, 1, calls))
            two[name].append(_throughput(fn, 2, calls))
    ratios = {k: [b / a for a, b in zip(one[k], two[k])] for k in contenders}
    res.add("threads", "spin, 1 thread", "plugbox", one["plugbox"], unit="calls/s",
            spin_iters=iters, calls_per_thread=calls,
            call_ms=1000 / statistics.median(one["plugbox"]))
    res.add("threads", "spin, 2 threads", "plugbox", two["plugbox"], unit="calls/s",
            spin_iters=iters, calls_per_thread=calls)
    for name in contenders:
        res.add("threads", "2-thread / 1-thread throughput", name, ratios[name], unit="ratio",
                one_thread=one[name], two_threads=two[name])
    log("  threads: plugbox 1 thread {:.0f} calls/s, 2 threads {:.0f} calls/s; ratios: {}".format(
        statistics.median(one["plugbox"]), statistics.median(two["plugbox"]),
        ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ratios.items())))


# ------------------------------------------------------------------------------- deadlines

_WAT_SHELL = """
(module
  {imports}
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32)
    (local $i i32)
    {body}
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16))
)
"""
_MONOTONIC = '(import "plugbox:plugin/clock@1.0.0" "monotonic" (func $mono (result i64)))'
_LOOP = "(loop $l (br $l))"
_HAMMER = ("(loop $l (drop (call $mono)) (local.set $i (i32.add (local.get $i) (i32.const 1)))"
           " (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))")


def _wat_plugin(out: Path, name: str, body: str, imports: str = "", **manifest: Any) -> Path:
    module = wasmtime.wat2wasm(_WAT_SHELL.format(imports=imports, body=body))
    return stage(out / name, module, name=name, hooks=["run"], **manifest)


def _deadline_overshoot(loop: plugbox.Plugin, calls: int) -> list[float]:
    """Wall seconds of ``calls`` calls that loop until their DEADLINE_MS deadline."""
    took = []
    for _ in range(calls):
        t0 = time.perf_counter()
        try:
            loop.call("run", fuel=10**15, deadline_ms=DEADLINE_MS)
        except plugbox.DeadlineExceeded:
            pass
        took.append(time.perf_counter() - t0)
    return took


def _under_load(work: Callable[[threading.Event], None], threads: int,
                measure: Callable[[], list[float]]) -> list[float]:
    stop = threading.Event()
    pool = [threading.Thread(target=work, args=(stop,), daemon=True) for _ in range(threads)]
    for th in pool:
        th.start()
    try:
        time.sleep(0.05)
        return measure()
    finally:
        stop.set()
        for th in pool:
            th.join()


def bench_deadlines(res: Results, rt: plugbox.Runtime, out: Path, quick: bool) -> None:
    """A guest looping until a 20 ms deadline, timed while 4 pure-Python threads spin and while
    8 threads call a plugin making 1000 host calls per call; then 16 threads calling a ~µs hook
    on a pool of 4 instances, whose call latencies are (almost all) the wait for an instance.
    A few seconds in all."""
    loop = rt.load(_wat_plugin(out, "deadline-loop", _LOOP))
    hammer = rt.load(_wat_plugin(out, "host-hammer", _HAMMER, _MONOTONIC,
                                 permissions={"clock": True}, limits={"instances": 8}))
    calls = 10 if quick else 25

    def spin(stop: threading.Event) -> None:
        while not stop.is_set():
            pass

    def hammer_calls(stop: threading.Event) -> None:
        while not stop.is_set():
            hammer.call("run")

    for case, work, threads in (("4 Python threads spinning", spin, 4),
                                ("8 threads hammering host calls", hammer_calls, 8),
                                ("4 Python threads spinning, switch_interval_ms=1", spin, 4)):
        if "switch_interval_ms" in case:
            # The opt-in Runtime(switch_interval_ms=1): a second Runtime applies it
            # process-wide; restored afterwards so later sections see CPython's default.
            saved = sys.getswitchinterval()
            with plugbox.Runtime(state_dir=out / "switch-state", switch_interval_ms=1,
                                 pooled_instances=4) as rt1:
                loop1 = rt1.load(_wat_plugin(out, "deadline-loop-1ms", _LOOP))
                took = _under_load(work, threads, lambda: _deadline_overshoot(loop1, calls))
            sys.setswitchinterval(saved)
        else:
            took = _under_load(work, threads, lambda: _deadline_overshoot(loop, calls))
        res.add("deadlines", f"{DEADLINE_MS} ms deadline, {case}", "plugbox", took, unit="s",
                p99=_percentile(took, 99))
        log(f"  {DEADLINE_MS} ms deadline, {case}: median {statistics.median(took) * 1e3:.1f} "
            f"ms, worst {max(took) * 1e3:.1f} ms")

    quick_hook = rt.load(_wat_plugin(out, "pool-of-4", "", limits={"instances": 4}))
    seconds = 0.5 if quick else 1.5
    latencies: list[list[float]] = [[] for _ in range(16)]
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def caller(mine: list[float]) -> None:
        start.wait()
        end = time.perf_counter() + seconds
        try:
            while (t0 := time.perf_counter()) < end:
                quick_hook.call("run", deadline_ms=1000)
                mine.append(time.perf_counter() - t0)
        except plugbox.PlugboxError as exc:
            errors.append(exc)

    pool = [threading.Thread(target=caller, args=(mine,)) for mine in latencies]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    flat = [x for mine in latencies for x in mine]
    res.add("deadlines", "call latency (pool wait), 16 threads on a pool of 4", "plugbox", flat,
            unit="s", p99=_percentile(flat, 99), calls=len(flat),
            deadline_errors=len(errors), slowest_thread_calls=min(map(len, latencies)))
    log(f"  pool of 4, 16 threads: {len(flat)} calls, p99 {_percentile(flat, 99) * 1e3:.2f} ms, "
        f"max {max(flat) * 1e3:.2f} ms, {len(errors)} deadline errors")


def bench_dispatch(res: Results, echo_dir: Path, out: Path, reps: int,
                   rep_seconds: float) -> None:
    """Section 7: the PluginHost's dispatch overhead. One ``each`` call over 10 Rust echo
    plugins against 10 direct ``plugin.call``s, and ``first`` (the first plugin answers)
    against one direct call; same plugins, same random 16 B payload, interleaved."""
    manifest = json.loads((echo_dir / "plugbox.json").read_text())
    module = (echo_dir / manifest["module"]["path"]).read_bytes()
    implements = {"bench.each": {"versions": ">=1,<2", "hook": "echo"},
                  "bench.first": {"versions": ">=1,<2", "hook": "echo"}}
    payload = payload_of(16)
    with plugbox.PluginHost(state_dir=out / "dispatch-state") as host:
        host.extension_point("bench.each", version="1.0.0", payload="bytes", mode="each")
        host.extension_point("bench.first", version="1.0.0", payload="bytes", mode="first")
        for i in range(DISPATCH_PLUGINS):
            host.add(stage(out / f"dispatch-echo-{i}", module, name=f"echo-{i}", hooks=["echo"],
                           limits=manifest.get("limits", {}), implements=implements))
        plugins = [hosted.plugin for hosted in host.plugins]
        first = plugins[0]
        each_result = host.call("bench.each", payload)
        assert [r.value for r in each_result.results] == [payload] * DISPATCH_PLUGINS, each_result
        assert host.call("bench.first", payload).value == payload

        def direct_all() -> None:
            for plugin in plugins:
                plugin.call("echo", payload)

        timers = {
            "each": Timer(lambda: host.call("bench.each", payload), rep_seconds),
            "direct x10": Timer(direct_all, rep_seconds),
            "first": Timer(lambda: host.call("bench.first", payload), rep_seconds),
            "direct x1": Timer(lambda: first.call("echo", payload), rep_seconds),
        }
        interleaved(timers, reps)
    for case, (mine, base) in {
            f"each over {DISPATCH_PLUGINS} echo plugins": ("each", "direct x10"),
            "first, the first plugin answering": ("first", "direct x1")}.items():
        res.add("dispatch", case, "PluginHost.call", timers[mine].samples)
        res.add("dispatch", case, "direct plugin.call", timers[base].samples)
        log(f"  {case}: {timers[mine].median * 1e6:.1f} µs vs {timers[base].median * 1e6:.1f} "
            f"µs direct ({timers[mine].median / timers[base].median:.2f}x)")


def bench_metrics(res: Results, echo_dir: Path, out: Path, reps: int,
                  rep_seconds: float) -> None:
    """Section 8: what metrics cost. The 16 B Rust echo in a Runtime with ``metrics=True`` and
    one with ``metrics=False`` (both ``tracing=False``), interleaved in the same run; the
    overhead is the median of the per-round differences (each round times both once, so a
    burst of background load lands on both); three times the usual rounds, each half as
    long, since the difference is a tenth of the call. Also recorded: the difference of the
    best rounds (the least disturbed estimate)."""
    payload = payload_of(16)
    timers: dict[str, Timer] = {}
    runtimes = []
    try:
        for on in (True, False):
            rt = plugbox.Runtime(state_dir=out / f"metrics-{on}", metrics=on, tracing=False)
            runtimes.append(rt)
            plugin = rt.load(echo_dir)
            timers["metrics on" if on else "metrics off"] = Timer(
                functools.partial(plugin.call, "echo", payload), rep_seconds / 2)
        for name, t in timers.items():
            if t.check() != payload:
                raise SystemExit(f"{name}: echo returned the wrong bytes")
        interleaved(timers, reps * 3)
        calls = runtimes[0].metrics().plugins["echo"].calls
    finally:
        for rt in runtimes:
            rt.close()
    on, off = timers["metrics on"].samples, timers["metrics off"].samples
    res.add("metrics", "16 B echo", "metrics on", on)
    res.add("metrics", "16 B echo", "metrics off", off)
    res.add("metrics", "16 B echo", "overhead", [a - b for a, b in zip(on, off)],
            calls_counted=calls, best_difference=min(on) - min(off))
    log(f"  metrics on {statistics.median(on) * 1e6:.3f} µs, off "
        f"{statistics.median(off) * 1e6:.3f} µs: "
        f"{statistics.median([a - b for a, b in zip(on, off)]) * 1e6:+.3f} µs per call "
        f"(best rounds: {(min(on) - min(off)) * 1e6:+.3f} µs)")


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


# ------------------------------------------------------------------------------- python plugins

_LOAD_SCRIPT = """
import sys, time, json
t0 = time.perf_counter()
import plugbox
t1 = time.perf_counter()
with plugbox.Runtime(state_dir=sys.argv[2], cache_dir=sys.argv[3]) as rt:
    t2 = time.perf_counter()
    plugin = rt.load(sys.argv[1])
    t3 = time.perf_counter()
    assert plugin.call("echo", b"x") == b"x"
    t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "runtime": t2 - t1, "load": t3 - t2,
                  "first_call": t4 - t3, "hits": rt.cache.hits}))
"""


def _load_in_new_process(plugin_dir: Path, cache: Path, state: Path) -> dict[str, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(plugin_dir), str(state),
                          str(cache)], capture_output=True, text=True, timeout=600, check=True)
    figures: dict[str, float] = json.loads(out.stdout)
    figures["process"] = time.perf_counter() - started
    return figures


def bench_python(res: Results, build_dir: Path, reps: int, rep_seconds: float) -> None:
    """Section 5: the Python echo sample (a componentize-py component): cold and warm load,
    each in a new process, and per-call round trips beside the Rust echo's."""
    from plugbox.authoring import _pybuild

    module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / "echo",
                                          out_dir=build_dir / "py-echo")
    plugin_dir = module.parent
    with tempfile.TemporaryDirectory(prefix="plugbox-bench-py-") as tmp:
        cache = Path(tmp) / "cache"
        cold = _load_in_new_process(plugin_dir, cache, Path(tmp) / "s0")
        res.add("python", "cold load (compile), new process", "plugbox", [cold["load"]],
                unit="s", process_seconds=[cold["process"]], cache_hits=cold["hits"])
        warm = [_load_in_new_process(plugin_dir, cache, Path(tmp) / f"s{i + 1}")
                for i in range(max(3, reps // 3))]
        assert all(w["hits"] == 1 for w in warm), "warm loads must come from the cache"
        res.add("python", "warm load (cache hit), new process", "plugbox",
                [w["load"] for w in warm], unit="s",
                process_seconds=[w["process"] for w in warm],
                import_seconds=[w["import"] for w in warm])
        with plugbox.Runtime(state_dir=Path(tmp) / "s", cache_dir=cache) as rt, \
                plugbox.Runtime(state_dir=Path(tmp) / "s-text", cache_dir=cache) as rt_text:
            py = rt.load(plugin_dir)
            # Random bytes at every size; at PY_KIND_SIZES zeros and ASCII too, in the same
            # interleaved pool, so the kinds are compared side by side in one run.
            pool: dict[str, Timer] = {}
            cases = [(size, "random") for size in SIZES] + [
                (size, kind) for size in PY_KIND_SIZES for kind in PAYLOAD_KINDS[1:]]
            for size, kind in cases:
                payload = payload_of(size, kind)
                timer = Timer(functools.partial(py.call, "echo", payload), rep_seconds)
                if timer.check() != payload:
                    raise SystemExit(f"the Python echo returned the wrong bytes at {size} B "
                                     f"({kind})")
                pool[py_case(size, kind)] = timer
            # The same component called the way a component built before bulk#on-hook-hex is
            # (on-hook-text, the bytes as latin-1 code points), in the same pool: the change's
            # before and after side by side.
            old = rt_text.load(plugin_dir)
            old_instance = old._idle[0] if old._idle else None
            if old_instance is not None and getattr(old_instance, "_hex", None) is not None:
                old_instance._hex = None
                for kind in PAYLOAD_KINDS:
                    payload = payload_of(1 << 20, kind)
                    timer = Timer(functools.partial(old.call, "echo", payload), rep_seconds)
                    if timer.check() != payload:
                        raise SystemExit(f"the on-hook-text path returned the wrong bytes ({kind})")
                    pool[py_case(1 << 20, kind) + TEXT_PATH] = timer
            interleaved(pool, reps)
            for case, timer in pool.items():
                res.add("python", case, "plugbox", timer.samples)


#: Suffix of the python section's cases that use the latin-1 on-hook-text path.
TEXT_PATH = ", on-hook-text (older components)"


def py_case(size: int, kind: str = "random") -> str:
    """The python section's per-call case name: ``per call, 1 MiB`` is random bytes."""
    return f"per call, {size_label(size)}" + ("" if kind == "random" else f" {kind}")


# ------------------------------------------------------------------------------- report


def targets(res: Results, cpus: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, shown: str, goal: str, met: bool | None,
            note: str = "") -> None:
        out.append({"target": name, "value": value, "shown": shown, "goal": goal,
                    "met": met, "note": note})

    r = res.get("roundtrip", "16 B", "plugbox")
    if r:
        us = r["median"] * 1e6
        add("per call, 16 B", us, f"{us:.2f} µs (best repetition {r['min'] * 1e6:.2f})",
            f"<= {TARGET_CALL_16B_US:g} µs",
            us <= TARGET_CALL_16B_US)
    r = res.get("roundtrip", "1 MiB", "plugbox")
    if r:
        gbps = (1 << 20) / r["median"] / 1e9
        add("round trip, 1 MiB (payload bytes / call time)", gbps,
            f"{gbps:.2f} GB/s ({2 * gbps:.2f} GB/s in+out)", f">= {TARGET_MIB_GBPS:g} GB/s",
            gbps >= TARGET_MIB_GBPS, "judged on payload/time; in+out would be twice that")
    r = res.get("fresh", "fresh-instance call, 16 B", "plugbox")
    if r:
        us = r["median"] * 1e6
        add("fresh-instance call, 16 B", us, f"{us:.1f} µs (best repetition {r['min'] * 1e6:.1f})",
            f"<= {TARGET_FRESH_US:g} µs",
            us <= TARGET_FRESH_US)
    r = res.get("hostcall", "guest->host call (clock.monotonic)", "plugbox")
    if r:
        us = r["median"] * 1e6
        add("guest->host call", us, f"{us:.2f} µs (best repetition {r['min'] * 1e6:.2f})",
            f"<= {TARGET_HOSTCALL_US:g} µs",
            us <= TARGET_HOSTCALL_US)
    r = res.get("threads", "2-thread / 1-thread throughput", "plugbox")
    if r:
        ratio = r["median"]
        met: bool | None = ratio >= TARGET_SCALING
        note = ""
        ctl = res.get("threads", "2-thread / 1-thread throughput", "control: wasmtime-py spin")
        sha = res.get("threads", "2-thread / 1-thread throughput", "control: hashlib.sha256")
        if ctl and sha:
            c = max(ctl["median"], sha["median"])
            note = (f"controls in the same run: wasmtime-py spin {ctl['median']:.2f}x, "
                    f"hashlib {sha['median']:.2f}x")
            if not met and c < TARGET_SCALING:
                note += ("; the machine had no free second core, so this run cannot tell "
                         "whether plugbox scales")
        if cpus < 2:
            met, note = None, "fewer than 2 CPUs available: not measurable"
        add("2-thread throughput", ratio, f"{ratio:.2f}x", f">= {TARGET_SCALING:g}x", met, note)
    for case in ("4 Python threads spinning", "8 threads hammering host calls",
                 "4 Python threads spinning, switch_interval_ms=1"):
        r = res.get("deadlines", f"{DEADLINE_MS} ms deadline, {case}", "plugbox")
        if r:
            med, worst = r["median"] * 1e3, r["max"] * 1e3
            add(f"{DEADLINE_MS} ms deadline, {case}", med,
                f"{med:.1f} ms median, {worst:.1f} ms worst",
                f"<= {TARGET_DEADLINE_MEDIAN_MS:g} ms median, <= {TARGET_DEADLINE_WORST_MS:g} ms "
                "worst",
                med <= TARGET_DEADLINE_MEDIAN_MS and worst <= TARGET_DEADLINE_WORST_MS)
    for case, goal in ((f"each over {DISPATCH_PLUGINS} echo plugins", TARGET_DISPATCH_EACH_RATIO),
                       ("first, the first plugin answering", TARGET_DISPATCH_FIRST_RATIO)):
        mine = res.get("dispatch", case, "PluginHost.call")
        base = res.get("dispatch", case, "direct plugin.call")
        if mine and base:
            ratio = mine["median"] / base["median"]
            add(f"dispatch: {case}", ratio,
                f"{ratio:.2f}x ({mine['median'] * 1e6:.1f} vs {base['median'] * 1e6:.1f} µs)",
                f"<= {goal:g}x direct", ratio <= goal)
    r = res.get("python", "per call, 1 KiB", "plugbox")
    if r:
        us = r["median"] * 1e6
        add("Python echo, 1 KiB per call", us, f"{us:.0f} µs", f"<= {TARGET_PY_1K_US:g} µs",
            us <= TARGET_PY_1K_US)
    r = res.get("python", "per call, 1 MiB", "plugbox")
    if r:
        ms = r["median"] * 1e3 / 2
        add("Python echo, 1 MiB each way (round trip / 2)", ms, f"{ms:.1f} ms",
            f"<= {TARGET_PY_MIB_EACH_WAY_MS:g} ms", ms <= TARGET_PY_MIB_EACH_WAY_MS)
    r = res.get("python", py_case(1 << 20), "plugbox")
    if r:
        ms = r["median"] * 1e3
        add("Python echo, random 1 MiB round trip", ms, f"{ms:.1f} ms",
            f"<= {TARGET_PY_MIB_RANDOM_MS:g} ms", ms <= TARGET_PY_MIB_RANDOM_MS)
        others = [o for o in (res.get("python", py_case(1 << 20, k), "plugbox")
                              for k in PAYLOAD_KINDS[1:]) if o]
        if others:
            meds = [r["median"], *(o["median"] for o in others)]
            ratio = max(meds) / min(meds)
            add("Python echo, 1 MiB: slowest / fastest of random, zeros, ASCII", ratio,
                f"{ratio:.2f}x", f"<= {TARGET_PY_KIND_RATIO:g}x", ratio <= TARGET_PY_KIND_RATIO)
    r = res.get("python", "warm load (cache hit), new process", "plugbox")
    if r:
        ms = r["median"] * 1e3
        add("Python plugin, second load in a new process", ms,
            f"{ms:.0f} ms (rt.load; whole process incl. interpreter start: "
            f"{statistics.median(r['process_seconds']) * 1e3:.0f} ms)",
            f"<= {TARGET_PY_WARM_LOAD_MS:g} ms", ms <= TARGET_PY_WARM_LOAD_MS)
    r = res.get("metrics", "16 B echo", "overhead")
    if r:
        us = r["median"] * 1e6
        add("metrics overhead, 16 B echo", us, f"{us:+.3f} µs per call", "<= 0.5 µs",
            us <= 0.5)
    return out


def environment(echo_builder: str, quick: bool, reps: int) -> dict[str, Any]:
    import extism

    from plugbox.engine import _fastpath

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count() or 1
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "load_average_at_start": load,
        "plugbox": plugbox.__version__,
        "plugbox_accelerated": bool(getattr(_fastpath, "ACCELERATED", False)),
        "wasmtime_py": metadata.version("wasmtime"),
        "extism_py": metadata.version("extism"),
        "libextism": extism.extism_version(),
        "rustc": subprocess.run([RUSTC, "--version"], capture_output=True,
                                text=True).stdout.strip(),
        "echo_built_with": echo_builder,
        "quick": quick,
        "repetitions": reps,
    }


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    if us >= 100:
        return f"{us:.0f} µs"
    if us >= 10:
        return f"{us:.1f} µs"
    return f"{us:.2f} µs"


Table = tuple[str, list[str], list[list[str]]]


def build_tables(res: Results, tgts: list[dict[str, Any]]) -> list[Table]:
    """The report as plain data: (title, column names, rows of strings)."""
    tables: list[Table] = []

    rows = []
    for size in SIZES:
        label = size_label(size)
        pb = res.get("roundtrip", label, "plugbox")
        ex = res.get("roundtrip", label, "extism")
        wt = res.get("roundtrip", label, "wasmtime-py")
        if not (pb and ex and wt):
            continue
        pure = res.get("roundtrip", label, PURE)
        rows.append([label, fmt_us(pb["median"]), f"±{pb['spread'] * 50:.0f}%",
                     f"{size / pb['median'] / 1e6:,.0f}",
                     fmt_us(pure["median"]) if pure else "-",
                     fmt_us(ex["median"]), f"{ex['median'] / pb['median']:.1f}x",
                     fmt_us(wt["median"]), f"{wt['median'] / pb['median']:.1f}x"])
    tables.append(("Per-call round trip, echo hook (median per call; ratio = peer time / "
                   "plugbox time)",
                   ["payload", "plugbox", "spread", "plugbox MB/s (payload/time)",
                    "plugbox, pure-Python path", "Extism", "ratio", "wasmtime-py generic",
                    "ratio"], rows))

    rows = []
    for case in ("cold load (compile), new process", "warm load (cache hit), new process"):
        r = res.get("python", case, "plugbox")
        if r:
            rows.append([case, f"{r['median'] * 1e3:,.0f} ms",
                         f"{statistics.median(r['process_seconds']) * 1e3:,.0f} ms", "", ""])
    for size in SIZES:
        label = size_label(size)
        rust = res.get("roundtrip", label, "plugbox")  # random bytes too
        for kind in PAYLOAD_KINDS:
            r = res.get("python", py_case(size, kind), "plugbox")
            if r:
                rows.append([f"{py_case(size, kind)}" + (" random" if kind == "random" else ""),
                             fmt_us(r["median"]), "",
                             fmt_us(rust["median"]) if rust and kind == "random" else "-",
                             f"{r['median'] / rust['median']:.0f}x"
                             if rust and kind == "random" else "-"])
    for kind in PAYLOAD_KINDS:
        r = res.get("python", py_case(1 << 20, kind) + TEXT_PATH, "plugbox")
        if r:
            rows.append([py_case(1 << 20, kind) + (" random" if kind == "random" else "")
                         + TEXT_PATH, fmt_us(r["median"]), "", "-", "-"])
    if rows:
        tables.append(("Python plugin (componentize-py echo component; median)",
                       ["case", "Python plugin", "whole process", "Rust echo (core module)",
                        "ratio"], rows))

    rows = []
    pb = res.get("fresh", "fresh-instance call, 16 B", "plugbox")
    ex = res.get("fresh", "fresh-instance call, 16 B", "extism")
    wt = res.get("fresh", "fresh-instance call, 16 B", "wasmtime-py")
    pure = res.get("fresh", "fresh-instance call, 16 B", PURE)
    if pb and ex and wt:
        rows.append(["new instance + call", fmt_us(pb["median"]), f"±{pb['spread'] * 50:.0f}%",
                     fmt_us(pure["median"]) if pure else "-",
                     fmt_us(ex["median"]), f"{ex['median'] / pb['median']:.1f}x",
                     fmt_us(wt["median"]), f"{wt['median'] / pb['median']:.1f}x"])
    inst = res.get("fresh", "instantiate + on-init + close (no call)", "plugbox")
    if inst:
        rows.append(["instantiate + on-init + close only", fmt_us(inst["median"]),
                     f"±{inst['spread'] * 50:.0f}%", "", "", "", "", ""])
    ref = res.get("reference", "pure-Python loop, 1000 additions", "python")
    if ref:
        rows.append(["machine-speed reference: pure-Python loop of 1000 additions "
                     "(no wasm; same rounds)", fmt_us(ref["median"]),
                     f"±{ref['spread'] * 50:.0f}%", "", "", "", "", ""])
    tables.append(("Fresh instance per call, 16 B (median)",
                   ["case", "plugbox", "spread", "plugbox, pure-Python path", "Extism", "ratio",
                    "wasmtime-py generic", "ratio"], rows))

    rows = []
    pb = res.get("hostcall", "guest->host call (clock.monotonic)", "plugbox")
    for name, label in (("plugbox", "plugbox (clock.monotonic)"),
                        ("extism", "Extism (Python host function)"),
                        ("wasmtime-py", "wasmtime-py (Python Func)")):
        r = res.get("hostcall", "guest->host call (clock.monotonic)", name)
        if r and pb:
            rows.append([label, fmt_us(r["median"]), f"±{r['spread'] * 50:.0f}%",
                         f"{r['median'] / pb['median']:.1f}x",
                         fmt_us(r["base_call_median"]), fmt_us(r["loop_call_median"])])
    tables.append((f"Guest->host call: (t(N={HOST_CALLS_N}) - t(N=0)) / N (median)",
                   ["contender", "per host call", "spread", "ratio", "call, N=0",
                    f"call, N={HOST_CALLS_N}"], rows))

    rows = []
    for case, contender in (("spin, 1 thread", "plugbox"), ("spin, 2 threads", "plugbox"),
                            ("2-thread / 1-thread throughput", "plugbox"),
                            ("2-thread / 1-thread throughput", "control: wasmtime-py spin"),
                            ("2-thread / 1-thread throughput", "control: hashlib.sha256")):
        r = res.get("threads", case, contender)
        if not r:
            continue
        if r["unit"] == "ratio":
            value = f"{r['median']:.2f}x"
        else:
            value = f"{r['median']:,.0f} calls/s"
            if "call_ms" in r:
                value += f" ({r['call_ms']:.2f} ms/call)"
        rows.append([contender, case, value, f"±{r['spread'] * 50:.0f}%"])
    tables.append(("CPU-bound hook (spin, ~1 ms), one plugin, 1 vs 2 threads (median)",
                   ["what", "case", "median", "spread"], rows))

    rows = []
    for case in ("4 Python threads spinning", "8 threads hammering host calls"):
        r = res.get("deadlines", f"{DEADLINE_MS} ms deadline, {case}", "plugbox")
        if r:
            rows.append([f"{DEADLINE_MS} ms deadline, {case}", f"{r['median'] * 1e3:.1f} ms",
                         f"{r['p99'] * 1e3:.1f} ms", f"{r['max'] * 1e3:.1f} ms", ""])
    r = res.get("deadlines", "call latency (pool wait), 16 threads on a pool of 4", "plugbox")
    if r:
        rows.append(["call latency (pool wait), 16 threads on a pool of 4",
                     f"{r['median'] * 1e3:.3f} ms", f"{r['p99'] * 1e3:.2f} ms",
                     f"{r['max'] * 1e3:.2f} ms",
                     f"{r['calls']:,} calls, {r['deadline_errors']} deadline errors"])
    if rows:
        tables.append(("Deadlines under load and pool fairness (wall time per call)",
                       ["case", "median", "p99", "max", "note"], rows))

    import propagation

    tables.extend(propagation.tables(res))

    rows = []
    for contender in ("metrics off", "metrics on", "overhead"):
        r = res.get("metrics", "16 B echo", contender)
        if r:
            best = (f"{r['best_difference'] * 1e6:+.3f} µs" if "best_difference" in r
                    else fmt_us(r["min"]))
            rows.append([contender, fmt_us(r["median"]), best, f"±{r['spread'] * 50:.0f}%"
                         if contender != "overhead" else "-"])
    if rows:
        tables.append(("Metrics on and off, 16 B echo (median per call; overhead = median of "
                       "the per-round differences, best = best round on minus best off)",
                       ["case", "median", "best round", "spread"], rows))

    rows = []
    for tg in tgts:
        met = "met" if tg["met"] else "NOT met" if tg["met"] is not None else "n/a"
        rows.append([tg["target"], tg["shown"], tg["goal"],
                     met + (f" ({tg['note']})" if tg["note"] else "")])
    tables.append(("Targets", ["target", "measured (median)", "goal", "met?"], rows))
    return tables


def env_line(env: dict[str, Any]) -> str:
    load = env.get("load_average_at_start") or []
    return (f"{env['date']}; Python {env['python']}, wasmtime-py {env['wasmtime_py']}, "
            f"extism-py {env['extism_py']} (libextism {env['libextism']}); plugbox call path: "
            f"{'C accelerator (_speedups)' if env['plugbox_accelerated'] else 'pure Python'}; "
            f"{env['cpus_available']} CPUs ({env['cpu_model'] or env['machine']}); load average "
            f"at start {', '.join(f'{x:.2f}' for x in load)}; medians of {env['repetitions']} "
            f"repetitions{' (--quick)' if env['quick'] else ''}")


def print_report(tables: list[Table], env: dict[str, Any]) -> None:
    tables = [table for table in tables if table[2]]  # sections left out by --only
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=max(120, shutil.get_terminal_size((120, 40)).columns))
    console.print(f"[bold]plugbox bench[/bold]  {env_line(env)}")
    for title, cols, rows in tables:
        t = RichTable(title=title, title_justify="left")
        for i, col in enumerate(cols):
            t.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            cells = list(row)
            if title == "Targets":
                cells[-1] = (f"[green]{cells[-1]}[/green]" if cells[-1].startswith("met")
                             else f"[red]{cells[-1]}[/red]" if cells[-1].startswith("NOT")
                             else cells[-1])
            t.add_row(*cells)
        console.print(t)


def markdown_report(tables: list[Table], env: dict[str, Any]) -> str:
    tables = [table for table in tables if table[2]]
    out = [f"Run: {env_line(env)}.", ""]
    for title, cols, rows in tables:
        out += [f"**{title}**", "", "| " + " | ".join(cols) + " |",
                "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (~30 s)")
    ap.add_argument("--json-out", type=Path, default=BENCH / "results.json",
                    help="where to write the results (default bench/results.json)")
    ap.add_argument("--markdown-out", type=Path, default=None,
                    help="also write the tables as Markdown (for docs/benchmarks.md)")
    ap.add_argument("--build-dir", type=Path, default=BENCH / ".build",
                    help="cargo target dir and staged plugins (default bench/.build)")
    ap.add_argument("--no-python", action="store_true",
                    help="skip the Python-plugin rows (they need componentize-py; ~40 s)")
    ap.add_argument("--only", default="", metavar="SECTIONS",
                    help="run only these comma-separated sections: calls, hostcalls, threads, "
                         "deadlines, dispatch, metrics, python, pybundle, propagation, "
                         "lifecycle (default: all)")
    args = ap.parse_args(argv)
    sections = {"calls", "hostcalls", "threads", "deadlines", "dispatch", "metrics", "python",
                "pybundle", "propagation", "lifecycle"}
    only = {s.strip() for s in args.only.split(",") if s.strip()} or sections
    if only - sections:
        ap.error(f"unknown sections: {', '.join(sorted(only - sections))}")

    import extism

    reps = 9 if args.quick else 21
    rep_seconds = 0.02 if args.quick else 0.05
    started = time.perf_counter()

    log("building plugins from source ...")
    build_dir: Path = args.build_dir
    staged = build_dir / "staged"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    target_dir = build_dir / "target"
    echo_dir, echo_builder = build_echo_sample(staged, target_dir)
    hooks_dir = build_bench_hooks(staged, target_dir)
    extism_wasm = build_extism_echo()
    echo_wasm = (echo_dir / json.loads((echo_dir / "plugbox.json").read_text())["module"]["path"]
                 ).read_bytes()
    log(f"  built in {time.perf_counter() - started:.1f} s (echo via {echo_builder})")

    env = environment(echo_builder, args.quick, reps)
    env["module_bytes"] = {"rust echo (plugbox, wasmtime-py)": len(echo_wasm),
                           "bench-hooks": (hooks_dir / "plugin.wasm").stat().st_size,
                           "extism echo (WAT)": len(extism_wasm)}
    res = Results()
    with tempfile.TemporaryDirectory(prefix="plugbox-bench-") as tmp, \
            plugbox.Runtime(state_dir=Path(tmp) / "state", policy=plugbox.Policy()) as rt:
        echo = rt.load(echo_dir)
        hooks = rt.load(hooks_dir)
        ext = extism.Plugin(extism_wasm, wasi=False)
        wt_engine = wasmtime.Engine()
        wt = WasmtimeEcho(wt_engine, wasmtime.Module(wt_engine, echo_wasm))

        if "calls" in only:
            log("round trip and fresh instances ...")
            bench_calls(res, rt, echo, echo_dir, ext, extism_wasm, wt, reps, rep_seconds)
        if "hostcalls" in only:
            log("guest->host calls ...")
            bench_hostcalls(res, hooks, wt_engine, reps, rep_seconds)
        if "threads" in only:
            log("threads ...")
            bench_threads(res, hooks, wt_engine, reps, max(0.15, rep_seconds * 3))
        if "deadlines" in only:
            log("deadlines under load, pool fairness ...")
            bench_deadlines(res, rt, staged, args.quick)
        if "dispatch" in only:
            log("PluginHost dispatch overhead ...")
            bench_dispatch(res, echo_dir, staged, reps, rep_seconds)
        if "metrics" in only:
            log("metrics on and off ...")
            bench_metrics(res, echo_dir, staged, reps, rep_seconds)
        del ext
    if "propagation" in only:
        log("propagation between processes ...")
        import propagation

        propagation.bench_propagation(res, args.quick, log)
    if "python" not in only:
        log("Python plugin rows skipped (--only)")
    elif args.no_python:
        log("Python plugin rows skipped (--no-python)")
    else:
        log("Python plugin (componentize-py build, cold load compiles for ~10 s) ...")
        bench_python(res, build_dir, reps, rep_seconds)
    if "pybundle" in only and not args.no_python:
        log("Python source bundles against components (bench/pybundle.py) ...")
        import pybundle

        log(pybundle.report(pybundle.run(res.add, build_dir / "pybundle", quick=args.quick,
                                         log=log)))
    if "lifecycle" in only:
        log("lifecycle: enable/disable, upgrade, reload memory ...")
        lifecycle.run(res, echo_dir, build_dir, quick=args.quick, python=not args.no_python)

    env["load_average_at_end"] = os.getloadavg()
    env["wall_seconds"] = round(time.perf_counter() - started, 1)
    tgts = targets(res, env["cpus_available"])
    tables = build_tables(res, tgts)
    if "lifecycle" in only:
        tables += lifecycle.tables(res.rows)
    print_report(tables, env)
    doc = {"environment": env, "targets": tgts, "rows": res.rows}
    if args.markdown_out is not None:
        args.markdown_out.write_text(markdown_report(tables, env))
        log(f"wrote {args.markdown_out}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {args.json_out} ({env['wall_seconds']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
