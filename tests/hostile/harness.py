"""Running hostile cases in child processes.

The parent starts one child per case from a ``forkserver`` whose process has plugbox and the case
table preloaded (a fork of it costs milliseconds, not an interpreter start). The child runs the
case, classifies the outcome against the case's ``expect``, then loads a plain WAT echo plugin
into the same host and checks a 64 KiB payload comes back byte-exact. It reports through a pipe:
outcome, class, message, its peak RSS growth and the echo check. The parent enforces the
timeout and a hard RSS ceiling from outside (a case that balloons is killed before it takes the
machine down) and names the signal of a child that died.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import plugbox
from tests.conftest import ECHO_BODY, wat_module

from . import OK, Case, Env, all_cases

#: What the echo check sends: every byte value, 64 KiB in all.
ECHO_PAYLOAD = bytes(range(256)) * 256
#: The parent kills a child whose RSS passes its case's bound plus this much (MiB): the bound
#: proper is judged on the child's own peak, this only keeps a runaway from hurting the host.
HARD_SLACK_MIB = 400

_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_BY_ID = {c.id: c for c in all_cases()}  # built here so the fork server holds the table


@dataclass
class Result:
    """What one case did, as the parent saw it."""

    id: str
    ok: bool
    summary: str
    seconds: float
    report: dict[str, Any]


def _rss_kib(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def _echo_check(env: Env) -> str:
    """Load a normal plugin into the host the case left behind; '' when it serves byte-exact."""
    rt = env.default
    if rt is None or rt._closed:
        rt = env.runtime() if env.default is None else env.new_runtime()
    try:
        plugin = rt.load(env.plugin(wat_module(ECHO_BODY), name="echo-after"))
        got = plugin.call("run", ECHO_PAYLOAD)
        plugin.close()
    except BaseException as exc:  # noqa: BLE001 - any failure here is the finding
        return f"echo check raised {type(exc).__name__}: {str(exc)[:300]}"
    if got != ECHO_PAYLOAD:
        return f"echo check returned {len(got)} bytes that differ from the payload"
    return ""


def _classify(c: Case, exc: BaseException | None) -> str:
    """'' when the outcome is one ``c`` expects, else why not."""
    if exc is None:
        return "" if OK in c.expect else "returned normally"
    if isinstance(exc, AssertionError):
        return f"case check failed: {exc}"
    for want in c.expect:
        if isinstance(want, type) and isinstance(exc, want):
            if c.check is not None:
                try:
                    c.check(exc)
                except AssertionError as bad:
                    return f"raised {type(exc).__name__} but its check failed: {bad}"
            return ""
    kind = "a raw" if not isinstance(exc, plugbox.PlugboxError) else "the wrong"
    return f"raised {kind} {type(exc).__module__}.{type(exc).__name__}"


def child_main(case_id: str, tmp: str, cache_dir: str, rust: dict[str, str],
               conn: Connection) -> None:
    """Child entry point: run one case, report a dict through ``conn``."""
    try:  # reset the peak-RSS mark inherited from the fork server
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = max(_rss_kib(), 1)
    c = _BY_ID[case_id]
    env = Env(Path(tmp), Path(cache_dir), {k: Path(v) for k, v in rust.items()})
    started = time.monotonic()
    exc: BaseException | None = None
    try:
        c.run(env)
    except BaseException as e:  # noqa: BLE001 - classified below
        exc = e
    seconds = time.monotonic() - started
    problem = _classify(c, exc)
    env.close()
    echo = _echo_check(env)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn.send({
        "problem": problem,
        "cls": type(exc).__name__ if exc is not None else OK,
        "message": str(exc)[:500] if exc is not None else "",
        "trace": ("".join(traceback.format_exception(exc))[-1500:]
                  if exc is not None and not isinstance(exc, plugbox.PlugboxError) else ""),
        "seconds": seconds,
        "echo": echo,
        "rss_growth_mib": (peak - base) / 1024,
    })
    conn.close()
    os._exit(0)  # skip interpreter teardown: a wedged runtime must not turn into a hang here


_CTX: Any = None


def context() -> Any:
    """The forkserver context, its server preloaded with plugbox and the case table."""
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["plugbox", "wasmtime", "tests.hostile.harness"])
    return _CTX


class _Running:
    def __init__(self, c: Case, tmp: Path, cache_dir: Path, rust: dict[str, Path]) -> None:
        self.case = c
        self.recv, send = context().Pipe(duplex=False)
        self.proc = context().Process(
            target=child_main,
            args=(c.id, str(tmp), str(cache_dir), {k: str(v) for k, v in rust.items()}, send),
            daemon=True,
        )
        self.started = time.monotonic()
        self.proc.start()
        send.close()
        self.report: dict[str, Any] | None = None
        self.killed = ""

    def poll(self) -> bool:
        """True once the child is finished (reported, died or was killed)."""
        try:
            if self.recv.poll():
                self.report = self.recv.recv()
                self.proc.join(5)
                return True
        except (EOFError, OSError):
            self.proc.join(5)
            return True
        if not self.proc.is_alive():
            self.proc.join()
            return True
        elapsed = time.monotonic() - self.started
        if elapsed > self.case.timeout:
            self.killed = f"hung: killed after the {self.case.timeout:g} s timeout"
        elif self.proc.pid and _rss_kib(self.proc.pid) > (self.case.rss_mib
                                                          + HARD_SLACK_MIB) * 1024:
            self.killed = f"RSS passed {self.case.rss_mib + HARD_SLACK_MIB} MiB: killed"

        if self.killed:
            self.proc.kill()
            self.proc.join()
            return True
        return False

    def result(self) -> Result:
        seconds = time.monotonic() - self.started
        c, rep = self.case, self.report
        if rep is None:
            code = self.proc.exitcode
            if self.killed:
                why = self.killed
            elif code is not None and code < 0:
                why = f"child died of {signal.Signals(-code).name}"
            else:
                why = f"child exited with status {code} without reporting"
            return Result(c.id, False, why, seconds, {})
        problems = [p for p in (rep["problem"], rep["echo"]) if p]
        if rep["rss_growth_mib"] > c.rss_mib:
            problems.append(f"host RSS grew {rep['rss_growth_mib']:.0f} MiB (bound {c.rss_mib})")
        got = rep["cls"] + (f": {rep['message']}" if rep["message"] else "")
        summary = "; ".join(problems) + (f" -- got {got[:300]}" if problems else "")
        if rep["trace"] and problems:
            summary += "\n" + rep["trace"]
        return Result(c.id, not problems, summary or got[:200], seconds, rep)


def run_cases(cases: Iterable[Case], tmp_root: Path, cache_dir: Path,
              rust: dict[str, Path], *, workers: int = 2) -> dict[str, Result]:
    """Run ``cases``, ``workers`` children at a time; results by case id."""
    pending = list(cases)
    pending.reverse()
    running: list[_Running] = []
    results: dict[str, Result] = {}
    while pending or running:
        while pending and len(running) < workers:
            c = pending.pop()
            tmp = tmp_root / c.id
            tmp.mkdir(parents=True, exist_ok=True)
            running.append(_Running(c, tmp, cache_dir, rust))
        done = [r for r in running if r.poll()]
        for r in done:
            running.remove(r)
            results[r.case.id] = r.result()
        if not done:
            time.sleep(0.01)
    return results
