"""Propagation delay between processes (issue 9 §7): how long after one process's lifecycle
change is committed another process's dispatch sees it.

Two real processes (tests/test_multiprocess.py's worker) over one lifecycle database: SQLite
(one state dir, the kv file shared) and PostgreSQL (two state dirs, as two machines; a
server started for the run with tests/_pg.py, skipped when it is not installed). Process A
disables and enables a plugin in turn, then changes its config (B then loads a new instance
with it beside the old one and swaps); process B, started first, polls its own
``host.call("text.echo")`` every millisecond (no database read) and notes the wall-clock time
it first sees the change; the delay is B's time minus the time A's operation returned. A
waits a random 0-0.25 s before each change, so changes fall at random points of B's poll.
B's watcher reads the generation every ``SyncMixin.sync_interval`` (0.2 s) on SQLite, and on
PostgreSQL also wakes at the change's NOTIFY.

    python bench/run.py --only propagation          # within the full bench's report
    python bench/propagation.py [--quick]           # alone
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for entry in (str(REPO), str(REPO / "runtime")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

Table = tuple[str, list[str], list[list[str]]]
SECTION = "propagation"


@contextmanager
def _pg_server(log: Callable[[str], None]) -> Iterator[Any]:
    from tests import _pg

    if _pg.find_bin_dir() is None:
        log("  PostgreSQL rows skipped: no initdb (Debian package postgresql)")
        yield None
        return
    server = _pg.start_server()
    try:
        yield server
    finally:
        server.stop()


def _measure(label: str, state: tuple[Path, Path], url: str | None, cache_dir: Path,
             plugin: Path, changes: int, logs: Path) -> tuple[list[float], list[float]]:
    """(enable/disable delays, config-change delays) in seconds."""
    from tests.test_multiprocess import Worker

    b = Worker(state[1], url, cache_dir, logs / f"{label}-b.log")
    a = Worker(state[0], url, cache_dir, logs / f"{label}-a.log")
    try:
        b.send(op="wait", key="echo", expect=["bench 1"], timeout=30.0)
        a(op="install", path=str(plugin))
        assert b.reply()["seen"], "B never saw the install"
        delays = []
        for i in range(changes):
            expect, op = ([], "disable") if i % 2 == 0 else (["bench 1"], "enable")
            b.send(op="wait", key="echo", expect=expect, timeout=30.0)
            # Not synchronisation: a random phase against B's poll, else every change would
            # land just after a poll (B's last sighting) and measure the whole interval.
            time.sleep(random.uniform(0.0, 0.25))
            done = a(op=op, name="bench")["at"]
            answer = b.reply()
            assert answer["seen"], f"B never saw the {op}"
            delays.append(answer["at"] - done)
        swaps = []
        for i in range(changes // 2):
            b.send(op="wait", key="plugins", expect={"bench": ["1.0.0", True, {"n": i}]},
                   timeout=30.0)
            time.sleep(random.uniform(0.0, 0.25))
            done = a(op="configure", name="bench", config={"n": i})["at"]
            answer = b.reply()
            assert answer["seen"], "B never saw the config change"
            swaps.append(answer["at"] - done)
        return delays, swaps
    finally:
        a.close()
        b.close()


def bench_propagation(res: Any, quick: bool, log: Callable[[str], None] = print) -> None:
    """Add the ``propagation`` rows to ``res`` (bench/run.py's Results)."""
    from tests.test_lifecycle_core import make_plugin

    changes = 10 if quick else 40
    with tempfile.TemporaryDirectory(prefix="plugbox-propagation-") as tmp:
        root = Path(tmp)
        plugin = make_plugin(root / "src", "bench", "1.0.0", "bench 1")
        cache_dir = root / "cache"
        log("  SQLite, two processes over one state dir ...")
        delays, swaps = _measure("sqlite", (root / "state", root / "state"), None,
                                 cache_dir, plugin, changes, root)
        res.add(SECTION, "SQLite, one state dir (polling every 0.2 s)", "enable/disable",
                delays, unit="s")
        res.add(SECTION, "SQLite, one state dir (polling every 0.2 s)",
                "config change (instance swapped)", swaps, unit="s")
        with _pg_server(log) as server:
            if server is not None:
                log("  PostgreSQL, two processes with their own state dirs ...")
                delays, swaps = _measure("pg", (root / "a", root / "b"),
                                         server.create_database(), cache_dir, plugin,
                                         changes, root)
                res.add(SECTION, "PostgreSQL, two state dirs (LISTEN/NOTIFY)",
                        "enable/disable", delays, unit="s")
                res.add(SECTION, "PostgreSQL, two state dirs (LISTEN/NOTIFY)",
                        "config change (instance swapped)", swaps, unit="s")


def tables(res: Any) -> list[Table]:
    """The ``propagation`` table (empty when the section did not run)."""
    rows = []
    for row in res.rows:
        if row["section"] != SECTION:
            continue
        rows.append([row["case"], row["contender"], f"{row['median'] * 1000:.1f} ms",
                     f"{row['max'] * 1000:.1f} ms", f"{row['min'] * 1000:.1f} ms",
                     str(len(row["samples"])), "met" if row["max"] < 1.0 else "NOT met"])
    return [("Propagation between processes (issue 9 §7: within 1 s)",
             ["backend", "change", "median", "worst", "best", "changes", "worst < 1 s"], rows)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 changes per backend, not 40")
    args = ap.parse_args(argv)

    class Results:
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def add(self, section: str, case: str, contender: str, samples: list[float],
                **extra: Any) -> None:
            self.rows.append({"section": section, "case": case, "contender": contender,
                              "median": statistics.median(samples), "max": max(samples),
                              "min": min(samples), "samples": samples, **extra})

    res = Results()
    bench_propagation(res, args.quick)
    for title, cols, rows in tables(res):
        print(title)
        print(" | ".join(cols))
        for row in rows:
            print(" | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
