"""The lifecycle section of bench/run.py (issue 9 §9): what managing plugins over time costs.

    python bench/run.py --only lifecycle [--quick] [--no-python]

1. enable/disable latency: ``PluginHost.enable`` / ``disable`` of an installed Rust echo
   plugin (recorded in the SQLite lifecycle store, effective for the next call), median and
   p95 over a few hundred alternations;
2. upgrade time of a Rust plugin (the echo sample) and a Python plugin (the py-echo sample,
   a componentize-py component), from version 1.0.0 to 2.0.0 on a started host: cold (the new
   module is compiled; every repetition upgrades to a module the cache has never seen) and
   warm (the compiled artifact is in the cache);
3. memory over 1,000 reloads: the process's RSS before and after 1,000 swaps of a plugin's
   instances (config changes, upgrade/rollback swaps, and uninstall + reinstall), each
   followed by a call, reported as start / end / growth.

Version 2.0.0 of a sample is its module with one more custom section (a different module as
far as the compiled cache is concerned, the same code).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import plugbox

REPO = Path(__file__).resolve().parent.parent
POINT = "bench.lifecycle"
#: Reloads in the memory figure (the issue asks for 1,000) and the RSS samples along the way.
RELOADS = 1000
RSS_EVERY = 100
CONFIG_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}


class _Results(Protocol):
    def add(self, section: str, case: str, contender: str, samples: list[float], *,
            unit: str = ..., **extra: Any) -> dict[str, Any]: ...

    def get(self, section: str, case: str, contender: str) -> dict[str, Any] | None: ...


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _with_custom_section(module: bytes, tag: str) -> bytes:
    """``module`` (a core module or a component) with a custom section named ``tag``
    appended: another module to the cache, the same code."""
    name = tag.encode()
    body = _leb(len(name)) + name + b"plugbox-bench"
    return module + b"\x00" + _leb(len(body)) + body


def _version_of(plugin_dir: Path, out: Path, version: str, *, tag: str | None = None) -> Path:
    """A copy of the staged plugin at ``plugin_dir`` as ``version`` implementing
    :data:`POINT` with a config schema (and, with ``tag``, a distinct module)."""
    manifest = json.loads((plugin_dir / "plugbox.json").read_text())
    module = (plugin_dir / manifest["module"]["path"]).read_bytes()
    if tag is not None:
        module = _with_custom_section(module, tag)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plugin.wasm").write_bytes(module)
    hook = manifest["hooks"][0]
    manifest.update(version=version, config_schema=CONFIG_SCHEMA,
                    implements={POINT: {"versions": ">=1,<2", "hook": hook}},
                    module={"path": "plugin.wasm", "sha256": hashlib.sha256(module).hexdigest()})
    (out / "plugbox.json").write_text(json.dumps(manifest, indent=2))
    return out


def _host(state: Path, cache: Path, **options: Any) -> plugbox.PluginHost:
    host = plugbox.PluginHost(state_dir=state, runtime_options={"cache_dir": cache, **options})
    host.extension_point(POINT, version="1.0.0", payload="bytes", mode="each")
    host.start()
    return host


def _served(host: plugbox.PluginHost) -> int:
    """How many plugins answered a call (and that they echoed)."""
    result = host.call(POINT, b"ping")
    assert all(r.value == b"ping" for r in result.results), result
    return len(result.results)


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_enable_disable(res: _Results, echo_dir: Path, work: Path, cache: Path,
                         rounds: int) -> None:
    """Enable/disable latency of an installed Rust plugin (median, p95)."""
    with _host(work / "enable-state", cache) as host:
        host.install(_version_of(echo_dir, work / "enable-src", "1.0.0"))
        assert _served(host) == 1
        enable, disable = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            host.disable("echo")
            t1 = time.perf_counter()
            assert _served(host) == 0
            t2 = time.perf_counter()
            host.enable("echo")
            t3 = time.perf_counter()
            assert _served(host) == 1
            disable.append(t1 - t0)
            enable.append(t3 - t2)
    for case, samples in (("enable", enable), ("disable", disable)):
        row = res.add("lifecycle", f"{case} (Rust echo)", "PluginHost", samples, unit="s",
                      p95=_percentile(samples, 95))
        _log(f"  {case}: median {row['median'] * 1e3:.2f} ms, p95 {row['p95'] * 1e3:.2f} ms "
             f"over {rounds}")


def bench_upgrade(res: _Results, label: str, plugin_dir: Path, work: Path, cold_reps: int,
                  warm_reps: int) -> None:
    """Upgrade time 1.0.0 -> 2.0.0 of the plugin staged at ``plugin_dir``: cold (a module
    the cache has never seen) and warm (its artifact cached)."""
    if not hasattr(plugbox.PluginHost, "upgrade"):
        _log(f"  {label} upgrade skipped: PluginHost.upgrade is not in this checkout")
        return
    cache = work / f"cache-{label}"
    v1 = _version_of(plugin_dir, work / f"{label}-1.0.0", "1.0.0")
    cold: list[float] = []
    warm: list[float] = []
    v2_warm: Path | None = None
    for i in range(cold_reps + warm_reps):
        is_cold = i < cold_reps
        v2 = _version_of(plugin_dir, work / f"{label}-2.0.0-{i}", "2.0.0",
                         tag=f"rep-{i}") if is_cold else v2_warm
        assert v2 is not None
        if v2_warm is None:
            v2_warm = v2
        with _host(work / f"{label}-upgrade-{i}", cache) as host:
            host.install(v1)
            assert _served(host) == 1
            hits = host.runtime.cache.hits
            t0 = time.perf_counter()
            outcome = host.upgrade(v2)
            elapsed = time.perf_counter() - t0
            assert outcome.status == "upgraded", outcome
            assert _served(host) == 1
            cache_hit = host.runtime.cache.hits > hits
            assert cache_hit != is_cold, f"{label}: expected a cache {'miss' if is_cold else 'hit'}"
        (cold if is_cold else warm).append(elapsed)
    for case, samples in (("cold (compile)", cold), ("warm (cache hit)", warm)):
        row = res.add("lifecycle", f"upgrade {label}, {case}", "PluginHost", samples, unit="s")
        _log(f"  upgrade {label}, {case}: median {row['median'] * 1e3:.1f} ms over "
             f"{len(samples)}")


def _modes() -> list[str]:
    """The reload modes this checkout has."""
    modes = []
    if hasattr(plugbox.PluginHost, "configure"):
        modes.append("config change")
    if hasattr(plugbox.PluginHost, "rollback"):
        modes.append("upgrade/rollback")
    return [*modes, "uninstall + install"]


def _reload(host: plugbox.PluginHost, mode: str, v1: Path, v2: Path) -> Callable[[int], None]:
    """One reload (a swap of the plugin's instances) in ``mode``, given its number."""
    def configure(i: int) -> None:
        host.configure("echo", {"n": i})

    def swap(i: int) -> None:
        if i == 0:
            host.upgrade(v2)
        else:
            host.rollback("echo", to="2.0.0" if i % 2 == 0 else "1.0.0")

    def reinstall(i: int) -> None:
        host.uninstall("echo")
        host.install(v1)

    return {"config change": configure, "upgrade/rollback": swap,
            "uninstall + install": reinstall}[mode]


def _memory_run(echo_dir: Path, work: Path, cache: Path, mode: str, pooled: bool,
                reloads: int) -> dict[str, Any]:
    """One memory run in this process (see :func:`bench_reload_memory`)."""
    v1 = _version_of(echo_dir, work / "mem-1.0.0", "1.0.0")
    v2 = _version_of(echo_dir, work / "mem-2.0.0", "2.0.0", tag="v2")
    options = {} if pooled else {"pooled_instances": 0}
    with _host(work / "mem-state", cache, **options) as host:
        host.install(v1, config={"n": 0})
        reload = _reload(host, mode, v1, v2)
        for i in range(20):  # warm-up: caches, free lists and the SQLite page cache fill
            reload(i)
            _served(host)
        gc.collect()
        start = _rss_bytes()
        series = [start]
        t0 = time.perf_counter()
        for i in range(20, 20 + reloads):
            reload(i)
            assert _served(host) == 1
            if (i - 19) % RSS_EVERY == 0:
                gc.collect()
                series.append(_rss_bytes())
        seconds = time.perf_counter() - t0
    return {"rss_start": start, "rss_end": series[-1], "rss_after_100": series[1],
            "rss_series": series, "seconds": seconds}


def bench_reload_memory(res: _Results, echo_dir: Path, work: Path, cache: Path,
                        reloads: int) -> None:
    """RSS before and after ``reloads`` swaps of the Rust echo's instances, each run in a
    new process (so what ran before does not pad its heap): per mode with
    ``pooled_instances=0`` (every instance's memory is mapped and unmapped: what stays is
    what a reload leaks), and the first mode once more with the default pool (500 slots
    whose pages stay resident once touched, so RSS climbs until the slots in use are warm,
    then holds)."""
    modes = _modes()
    runs = [(mode, False) for mode in modes] + [(modes[0], True)]
    for n, (mode, pooled) in enumerate(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-run", str(echo_dir), str(work / f"mem-{n}"),
             str(cache), mode, "1" if pooled else "0", str(reloads)],
            capture_output=True, text=True, timeout=1800,
            env={**os.environ, "PYTHONPATH": str(REPO / "runtime")})
        if out.returncode != 0:
            raise SystemExit(f"memory run {mode} failed:\n{out.stderr[-4000:]}")
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        pool = "default pool" if pooled else "pooled_instances=0"
        start, end = figures["rss_start"], figures["rss_end"]
        res.add("lifecycle", f"RSS over {reloads} reloads: {mode}, {pool}", "PluginHost",
                [float(end - start)], unit="bytes", **figures)
        _log(f"  RSS over {reloads} reloads ({mode}, {pool}, "
             f"{figures['seconds'] / reloads * 1e3:.1f} ms each): {start / 2**20:.1f} -> "
             f"{figures['rss_after_100'] / 2**20:.1f} after 100 -> {end / 2**20:.1f} MiB "
             f"({(end - start) / 2**20:+.2f} MiB)")


def run(res: _Results, echo_dir: Path, build_dir: Path, *, quick: bool, python: bool) -> None:
    """Every lifecycle figure; the Python plugin's only with ``python`` (its build needs
    componentize-py, its cold compile takes ~10 s a repetition)."""
    work = Path(tempfile.mkdtemp(prefix="plugbox-bench-lifecycle-"))
    try:
        cache = work / "cache"
        bench_enable_disable(res, echo_dir, work, cache, 100 if quick else 300)
        bench_reload_memory(res, echo_dir, work, cache, RELOADS)
        bench_upgrade(res, "Rust echo", echo_dir, work, 3 if quick else 7, 5 if quick else 11)
        if python:
            from plugbox.authoring import _pybuild

            module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / "echo",
                                                  out_dir=build_dir / "py-echo")
            bench_upgrade(res, "Python py-echo", module.parent, work, 1 if quick else 3,
                          3 if quick else 5)
        else:
            _log("  Python upgrade rows skipped")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"


def _mib(n: float) -> str:
    return f"{n / 2**20:+.2f} MiB" if n < 0 or n > 0 else "+0.00 MiB"


def tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The lifecycle tables (empty when the section did not run)."""
    mine = [r for r in rows if r["section"] == "lifecycle"]
    latency = [[r["case"], _ms(r["median"]), _ms(r["p95"]), str(len(r["samples"]))]
               for r in mine if "p95" in r]
    upgrades = [[r["case"].removeprefix("upgrade "), _ms(r["median"]), _ms(r["min"]),
                 _ms(r["max"]), str(len(r["samples"]))]
                for r in mine if r["case"].startswith("upgrade ")]
    memory = [[r["case"].split(": ", 1)[1], f"{r['rss_start'] / 2**20:.1f} MiB",
               f"{r['rss_after_100'] / 2**20:.1f} MiB", f"{r['rss_end'] / 2**20:.1f} MiB",
               _mib(r["rss_end"] - r["rss_start"]),
               _mib(r["rss_end"] - r["rss_after_100"]), _ms(r["seconds"] / RELOADS)]
              for r in mine if "rss_start" in r]
    return [("Lifecycle: enable/disable latency", ["operation", "median", "p95", "n"], latency),
            ("Lifecycle: upgrade 1.0.0 -> 2.0.0", ["plugin, compile", "median", "min", "max",
                                                  "n"], upgrades),
            (f"Lifecycle: RSS over {RELOADS} reloads", ["reload", "start", "after 100",
                                                       "end", "growth", "growth after 100",
                                                       "per reload"], memory)]



if __name__ == "__main__":
    if sys.argv[1:2] != ["--memory-run"]:
        raise SystemExit("run it through bench/run.py: python bench/run.py --only lifecycle")
    echo, out_dir, cache_dir, which, pooled_arg, count = sys.argv[2:8]
    print(json.dumps(_memory_run(Path(echo), Path(out_dir), Path(cache_dir), which,
                                 pooled_arg == "1", int(count))))
