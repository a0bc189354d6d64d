#!/usr/bin/env python3
"""Python source bundles against per-plugin componentize-py components (issue 11 §1).

    python bench/pybundle.py [--quick]          # or: python bench/run.py --only pybundle

Measures, side by side in one run:

1. build time and size of a 200-line plugin with one pure-Python dependency (markdown 3.6 when
   pip can fetch it into bench/.build/wheels, else a generated 300-line wheel), built with
   ``--no-index --find-links`` so the figure is the build's, not the network's;
2. first load of that bundle in a new process and a new state dir, with the interpreter
   already compiled in the user cache;
3. per-call round trip at 1 KiB (random bytes) of a bundle echo and of the component echo
   (sample-plugins/python/echo built with componentize-py);
4. RSS of a process with two loaded bundle plugins against one with two loaded components
   (each in a fresh process; growth over the process after ``Runtime()``).

Targets: build <= 2 s, bundle <= 256 KiB, first load <= 1 s, 1 KiB call <= 150 us, two
bundles below two components in RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "runtime"))

ZERO = "0" * 64


def _manifest(directory: Path, name: str, hooks: list[str], kind: str | None) -> None:
    module: dict[str, Any] = ({"kind": "python-bundle", "path": "plugin.pybundle", "sha256": ZERO}
                              if kind else {"path": "plugin.wasm", "sha256": ZERO})
    (directory / "plugbox.json").write_text(json.dumps({
        "manifest_version": 1, "name": name, "version": "0.1.0", "abi": "1.1",
        "module": module, "hooks": hooks, "permissions": {"log": True},
        "limits": {"fuel": 5_000_000_000, "memory_bytes": 128 << 20, "deadline_ms": 10_000},
    }, indent=2))


def _plugin_200_lines(dep_import: str, dep_call: str) -> str:
    """About 200 lines: an echo hook, a render hook using the dependency, and helpers."""
    helpers = "\n".join(textwrap.dedent(f"""\
        def helper_{i}(text: str) -> dict:
            words = text.split()
            counts = collections.Counter(w.lower() for w in words)
            return {{"n": len(words), "top": counts.most_common({i % 5 + 1}), "i": {i}}}
        """) for i in range(37))
    return textwrap.dedent(f"""\
        import collections
        import json
        {dep_import}
        from plugbox_sdk import hook, log


        @hook("echo")
        def echo(payload: bytes) -> bytes:
            return payload


        @hook("render", json=True)
        def render(value: dict) -> dict:
            log.info("render")
            return {{"html": {dep_call}, "stats": helper_0(value["text"])}}


        """) + helpers


def _generated_wheel(directory: Path) -> tuple[str, str, str]:
    """A 300-line pure-Python wheel (when markdown cannot be fetched)."""
    body = "\n".join(f"def f{i}(s):\n    return s.replace('{i}', '<{i}>')\n" for i in range(100))
    body += "\ndef markdown(s):\n    return '<p>' + s + '</p>'\n"
    dist = "benchdep-1.0.dist-info"
    path = directory / "benchdep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("benchdep/__init__.py", body)
        zf.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: benchdep\nVersion: 1.0\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return "benchdep==1.0", "from benchdep import markdown", "markdown(value['text'])"


def _dependency(wheels: Path, log: Callable[[str], None]) -> tuple[str, str, str]:
    wheels.mkdir(parents=True, exist_ok=True)
    if not any(wheels.glob("Markdown-3.6-*.whl")) and not any(wheels.glob("markdown-3.6-*.whl")):
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:",
                               "--no-deps", "-d", str(wheels), "markdown==3.6"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log("  markdown 3.6 not downloadable; using a generated 300-line wheel")
            return _generated_wheel(wheels)
    return "markdown==3.6", "import markdown", "markdown.markdown(value['text'])"


_LOAD = """
import json, os, resource, sys, time
t0 = time.perf_counter()
import plugbox
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
with plugbox.Runtime(state_dir=sys.argv[1]) as rt:
    base = rss()
    t1 = time.perf_counter()
    plugins = [rt.load(d) for d in sys.argv[2:]]
    t2 = time.perf_counter()
    for p in plugins:
        assert p.call("echo", b"x") == b"x"
    t3 = time.perf_counter()
    print(json.dumps({"load": t2 - t1, "first_call": t3 - t2, "process_to_loaded": t2 - t0,
                      "rss_growth": rss() - base}))
"""


def _in_new_process(state: Path, *plugins: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _LOAD, str(state), *map(str, plugins)],
                         capture_output=True, text=True, timeout=900, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _per_call(plugin: Any, payload: bytes, reps: int) -> list[float]:
    samples = []
    for _ in range(reps):
        n = 200
        t = time.perf_counter()
        for _ in range(n):
            plugin.call("echo", payload)
        samples.append((time.perf_counter() - t) / n)
    return samples


def run(add: Callable[..., Any], build_dir: Path, *, quick: bool,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every case; ``add(section, case, contender, samples, unit=..., **extra)`` records a
    row (bench/run.py's Results.add). Returns the figures by name."""
    import plugbox
    from plugbox.authoring._pybuild import build_python_plugin
    from plugbox.engine._pyinterp import interpreter

    reps = 5 if quick else 15
    build_dir.mkdir(parents=True, exist_ok=True)
    requirement, dep_import, dep_call = _dependency(build_dir / "wheels", log)
    figures: dict[str, Any] = {}
    from plugbox._pybundle import user_cache_dir

    shutil.rmtree(user_cache_dir() / "wheels", ignore_errors=True)  # the first build runs pip
    with tempfile.TemporaryDirectory(prefix="plugbox-bench-pybundle-") as tmp:
        root = Path(tmp)
        with plugbox.Runtime(state_dir=root / "prep") as rt:
            log("  preparing the Python runtime (user cache) ...")
            interpreter(rt.engine, progress=log)
        # 1. build time and size
        env_before = {k: os.environ.get(k) for k in ("PIP_NO_INDEX", "PIP_FIND_LINKS")}
        os.environ["PIP_NO_INDEX"] = "1"
        os.environ["PIP_FIND_LINKS"] = str(build_dir / "wheels")
        times, size = [], 0
        try:
            for i in range(3 if quick else 5):
                d = root / f"big{i}"
                d.mkdir()
                _manifest(d, "py-big", ["echo", "render"], "bundle")
                source = _plugin_200_lines(dep_import, dep_call)
                (d / "app.py").write_text(source)
                (d / "requirements.txt").write_text(requirement + "\n")
                t = time.perf_counter()
                out = build_python_plugin(d)
                times.append(time.perf_counter() - t)
                size = out.stat().st_size
        finally:
            for k, v in env_before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        big = root / "big0"
        # The first build on a machine runs pip; later builds of a pinned set reuse the
        # wheel cache (the same wheels, sha256-checked).
        add("pybundle", f"build, {len(source.splitlines())}-line plugin + {requirement}, "
            "first (pip resolves)", "bundle", times[:1], unit="s", bundle_bytes=size)
        add("pybundle", f"build, {len(source.splitlines())}-line plugin + {requirement}, "
            "wheels cached", "bundle", times[1:], unit="s", bundle_bytes=size)
        figures["build_first_s"] = times[0]
        figures["build_s"] = statistics.median(times[1:])
        figures["bundle_bytes"] = size
        # 2. first load: new process, new state dir, interpreter compiled
        loads = [_in_new_process(root / f"state-load{i}", big) for i in range(3 if quick else 5)]
        add("pybundle", "first load, new process and state dir", "bundle",
            [x["load"] for x in loads], unit="s",
            process_to_loaded=[x["process_to_loaded"] for x in loads])
        figures["first_load_s"] = statistics.median(x["load"] for x in loads)
        # 3. per call, bundle vs component
        echo_b = root / "echo-bundle"
        echo_b.mkdir()
        _manifest(echo_b, "py-echo-b", ["echo"], "bundle")
        (echo_b / "app.py").write_text((REPO / "sample-plugins/python/echo/app.py").read_text())
        build_python_plugin(echo_b)
        log("  building the component echo with componentize-py ...")
        echo_c = build_python_plugin(REPO / "sample-plugins/python/echo",
                                     out_dir=root / "echo-component").parent
        echo_c2 = root / "echo-component2"
        build_python_plugin(REPO / "sample-plugins/python/echo", out_dir=echo_c2)
        big2 = root / "big1"
        payload = os.urandom(1024)
        with plugbox.Runtime(state_dir=root / "calls") as rt:
            pb, pc = rt.load(echo_b), rt.load(echo_c)
            assert pb.call("echo", payload) == payload and pc.call("echo", payload) == payload
            sb, sc = [], []
            for _ in range(reps):
                sb += _per_call(pb, payload, 1)
                sc += _per_call(pc, payload, 1)
        add("pybundle", "per call, 1 KiB random", "bundle", sb)
        add("pybundle", "per call, 1 KiB random", "component", sc)
        figures["call_bundle_us"] = statistics.median(sb) * 1e6
        figures["call_component_us"] = statistics.median(sc) * 1e6
        # 4. memory: two bundles vs two components, each set in a fresh process (the
        # components' compiled artifacts cached in the state dir by a first load)
        _in_new_process(root / "mem-c", echo_c, echo_c2)
        rb = [_in_new_process(root / f"mem-b{i}", big, big2)["rss_growth"] for i in range(3)]
        rc = [_in_new_process(root / "mem-c", echo_c, echo_c2)["rss_growth"] for _ in range(3)]
        add("pybundle", "RSS growth, two loaded plugins", "bundle", rb, unit="bytes")
        add("pybundle", "RSS growth, two loaded plugins", "component", rc, unit="bytes")
        figures["rss_two_bundles"] = statistics.median(rb)
        figures["rss_two_components"] = statistics.median(rc)
    return figures


def report(f: dict[str, Any]) -> str:
    rows = [
        ("build, 200-line plugin + 1 dependency, first (pip)", f"{f['build_first_s']:.2f} s",
         "<= 2 s", f["build_first_s"] <= 2),
        ("build, 200-line plugin + 1 dependency, wheels cached", f"{f['build_s']:.2f} s",
         "<= 2 s", f["build_s"] <= 2),
        ("bundle size", f"{f['bundle_bytes'] / 1024:.1f} KiB", "<= 256 KiB",
         f["bundle_bytes"] <= 256 * 1024),
        ("first load, new process + state dir", f"{f['first_load_s'] * 1000:.0f} ms", "<= 1 s",
         f["first_load_s"] <= 1),
        ("1 KiB call, bundle", f"{f['call_bundle_us']:.0f} us", "<= 150 us",
         f["call_bundle_us"] <= 150),
        ("1 KiB call, component", f"{f['call_component_us']:.0f} us", "(today)", None),
        ("RSS, two bundles", f"{f['rss_two_bundles'] / 2**20:.0f} MiB",
         "< two components", f["rss_two_bundles"] < f["rss_two_components"]),
        ("RSS, two components", f"{f['rss_two_components'] / 2**20:.0f} MiB", "", None),
    ]
    lines = ["| case | median | target | met |", "|---|---|---|---|"]
    for case, value, goal, met in rows:
        lines.append(f"| {case} | {value} | {goal} | "
                     f"{'' if met is None else ('yes' if met else 'NO')} |")
    return "\n".join(lines)


def main() -> int:
    quick = "--quick" in sys.argv
    rows: list[dict[str, Any]] = []

    def add(section: str, case: str, contender: str, samples: list[float], *,
            unit: str = "s/call", **extra: Any) -> None:
        rows.append({"section": section, "case": case, "contender": contender, "unit": unit,
                     "median": statistics.median(samples), "samples": samples, **extra})

    figures = run(add, BENCH / ".build" / "pybundle", quick=quick,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(report(figures))
    (BENCH / ".build" / "pybundle" / "results.json").write_text(
        json.dumps({"figures": figures, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
