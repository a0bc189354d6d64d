"""Crash consistency of the lifecycle (issue 9 §1): a process killed with SIGKILL at a random
moment during an install, upgrade, rollback, config change or uninstall leaves either the
state before or the state after, on disk and in the database, and the next start reports and
finishes or undoes what was interrupted.

How it stays cheap: one *fork server* (a subprocess that imported plugbox but never created a
wasmtime engine, so forking it is safe) forks a child per run; the child opens a PluginHost
on a new state dir, starts it, makes the before-state, tells the server it is about to begin
the operation, and runs it; the server SIGKILLs it after a delay drawn across the operation's
measured duration. This process then opens a PluginHost on what the child left, starts it,
and checks the integrity and that the state is exactly the before- or the after-state.
A kill counts as inside the operation when it left a trace: a journal entry or partial
files, or the after-state before the operation returned; each kind needs at least MIN_MID of
those, except rollback and configure, which are one transaction and can leave no other trace:
for them MIN_MID kills must land between the operation's start and its return.

The same server also stops a child mid-operation (SIGSTOP) while this process starts a host
on its state dir: that start must neither undo the live operation's journal entry nor sweep
its files (the lifecycle lock, an flock, makes it wait).

``PLUGBOX_CRASH_SEED`` replays a run's draws (the seed is printed; where the kills land
also depends on the machine's load); ``PLUGBOX_CRASH_KILLS`` changes the number of kills per
operation kind (default 50; more, up to twice that, while fewer than MIN_MID landed inside).
"""

from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

import plugbox
from tests.test_lifecycle_core import make_plugin, new_host, values

REPO = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("PLUGBOX_CRASH_KILLS", "50"))
#: Uninterrupted runs per kind that measure the operation's duration and its after-state.
TIMED_RUNS = 4
#: Delays are drawn from [0, SPREAD * median duration]: a few kills land after the end. (The
#: seed replays the draws; where they land also depends on the machine's load.)
SPREAD = 1.15
#: Kills that must land inside the operation (leaving a journal entry, a partial file, or
#: the after-state before the operation returned), or the run proves little: past KILLS, killing goes on until that many did (or MAX_KILLS).
MIN_MID = 10
MAX_KILLS = 2 * KILLS
#: rollback and configure are one transaction, with the new instances loaded before it, so a
#: kill inside them can leave no trace but the after-state in the short window between the
#: commit and the return: for them the kills that landed between the operation's start and
#: its return count (the child says when it starts and when it returned).
ONE_TRANSACTION = ("rollback", "configure")
#: Every so many kills another uninterrupted run updates the duration (the load changes).
RETIME_EVERY = 10
#: Operations stopped mid-way while another process starts on their state dir.
PAUSES = 8

SCHEMA = {"type": "object", "properties": {"greeting": {"type": "string"}}}


# -- the operations and the states they start from ---------------------------------------------


@dataclass(frozen=True)
class Sources:
    """The plugin versions the operations install from."""

    v1: Path
    v2: Path


def _installed(host: plugbox.PluginHost, src: Sources) -> None:
    host.install(src.v1, config={"greeting": "hi"})
    host.runtime.kv.set("alpha", "k", b"v", quota_bytes=1000, quota_keys=10)


def _upgraded(host: plugbox.PluginHost, src: Sources) -> None:
    _installed(host, src)
    host.upgrade(src.v2)


@dataclass(frozen=True)
class Kind:
    """An operation kind: ``prepare`` makes the before-state on a started host, ``run`` is
    the operation that gets killed."""

    name: str
    prepare: Callable[[plugbox.PluginHost, Sources], None]
    run: Callable[[plugbox.PluginHost, Sources], object]


KINDS = {k.name: k for k in (
    Kind("install", lambda h, s: None,
         lambda h, s: h.install(s.v1, config={"greeting": "hi"})),
    Kind("uninstall", _installed, lambda h, s: h.uninstall("alpha")),
    Kind("uninstall --purge", _installed, lambda h, s: h.uninstall("alpha", purge=True)),
    Kind("upgrade", _installed, lambda h, s: h.upgrade(s.v2)),
    Kind("rollback", _upgraded, lambda h, s: h.rollback("alpha")),
    Kind("configure", _installed,
         lambda h, s: h.configure("alpha", {"greeting": "hello"})),
)}


def _tree(root: Path) -> list[str]:
    """Every file and directory under ``root`` (the empty ``.tmp`` and ``.trash`` work dirs
    aside), relative."""
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in (".tmp", ".trash") and not any(path.iterdir()):
            continue
        out.append(rel + ("/" if path.is_dir() else ""))
    return out


def snapshot(host: plugbox.PluginHost) -> dict[str, Any]:
    """What must be exactly the before- or the after-state: the database's view (versions,
    active version, enabled, state, kept versions, grant, config and its history), the managed
    store's files, the kv data, and what a call returns."""
    with host.store.transaction() as tx:
        config = tx.config("alpha")
    return {
        "plugins": [{"name": i.name, "version": i.version, "state": i.state,
                     "reason": i.reason, "enabled": i.enabled, "pinned": i.pinned,
                     "versions": list(i.versions), "grant": dict(i.grant),
                     "path": None if i.path is None else
                     i.path.relative_to(host.runtime.state_dir).as_posix(),
                     "loaded": i.loaded} for i in host.installed()],
        "config": None if config is None else dict(config[1]),
        "config_revisions": len(host.config_history("alpha")),
        "files": _tree(host.runtime.state_dir / "plugins"),
        "kv": host.runtime.kv.get("alpha", "k"),
        "calls": values(host),
    }


# -- the fork server ---------------------------------------------------------------------------


def serve() -> None:
    """The fork server's loop (``python -c 'from tests.test_lifecycle_crash import serve;
    serve()' CACHE_DIR V1 V2``): one JSON request a line on stdin ({"kind", "state",
    "delay", "pause"}), one JSON reply a line on stdout. It never creates an engine itself.
    With "pause" the child is stopped (SIGSTOP) instead of killed; the server says so and
    waits for a line on stdin, then lets it go on (SIGCONT) and replies when it ended."""
    from plugbox._manifest import read_manifest, validate_config, validate_manifest

    cache_dir, src = Path(sys.argv[1]), Sources(Path(sys.argv[2]), Path(sys.argv[3]))
    # Warm what a long-running host has warm (jsonschema's validators for the manifest and
    # the config schema), so the children's operations take the time they take in a real
    # host rather than mostly a first run's set-up. No engine is created.
    for source in (src.v1, src.v2):
        validate_config(validate_manifest(read_manifest(source)), {"greeting": "hi"})
    for line in sys.stdin:
        request = json.loads(line)
        reply = _run_child(KINDS[request["kind"]], Path(request["state"]), cache_dir, src,
                           request["delay"], request["pause"], request["shared"])
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _run_child(kind: Kind, state: Path, cache_dir: Path, src: Sources,
               delay: float | None, pause: bool = False, shared: bool = False
               ) -> dict[str, Any]:
    """Fork a child that runs ``kind`` on ``state``; SIGKILL it ``delay`` seconds after it
    began the operation (None: let it finish; ``pause``: SIGSTOP it, then SIGCONT it when
    stdin says so)."""
    # Forking is safe while this process has one thread and no engine (an engine's epoch
    # ticker is a thread, and wasmtime's state is not fork-safe); it creates neither.
    assert threading.active_count() == 1, threading.enumerate()
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(r)
            host = _host(state, cache_dir, shared)
            host.start()
            kind.prepare(host, src)
            os.write(w, b"R")
            t0 = time.perf_counter()
            kind.run(host, src)
            elapsed = time.perf_counter() - t0
            os.write(w, b"D" + json.dumps(elapsed).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready = os.read(r, 1)
        killed = False
        status = None
        if ready == b"R" and delay is not None:
            # A plain sleep, not a spin: on a loaded 2-core machine a spinning server would
            # take the core the child needs and skew where the kills land.
            time.sleep(delay)
            if pause:
                os.kill(pid, signal.SIGSTOP)
                _, stopped = os.waitpid(pid, os.WUNTRACED)
                if not os.WIFSTOPPED(stopped):
                    status = stopped  # it ended before the signal
                sys.stdout.write(json.dumps({"stopped": status is None}) + "\n")
                sys.stdout.flush()
                sys.stdin.readline()
                if status is None:
                    os.kill(pid, signal.SIGCONT)
            else:
                os.kill(pid, signal.SIGKILL)
                killed = True
        if status is None:
            _, status = os.waitpid(pid, 0)
        rest = b""
        while chunk := os.read(r, 4096):
            rest += chunk
    finally:
        os.close(r)
    finished = rest.startswith(b"D")
    return {"ready": ready == b"R", "killed": killed, "finished": finished,
            "duration": json.loads(rest[1:]) if finished else None,
            "exit": os.waitstatus_to_exitcode(status)}


class ForkServer:
    """The test's end of :func:`serve`."""

    def __init__(self, cache_dir: Path, src: Sources, log: Path) -> None:
        self._log = log
        self._err = open(log, "w")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.test_lifecycle_crash import serve; serve()",
             str(cache_dir), str(src.v1), str(src.v2)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    def run(self, kind: str, state: Path, delay: float | None,
            while_paused: Callable[[bool], None] | None = None, shared: bool = False
            ) -> dict[str, Any]:
        """Run ``kind`` on ``state`` in a new child, killed after ``delay`` s; with
        ``while_paused``, stopped then instead, and ``while_paused(stopped)`` called before
        it goes on (``stopped`` False: it had ended already)."""
        stdin: IO[str] = self._proc.stdin  # type: ignore[assignment]
        stdout: IO[str] = self._proc.stdout  # type: ignore[assignment]
        stdin.write(json.dumps({"kind": kind, "state": str(state), "delay": delay,
                                "pause": while_paused is not None, "shared": shared}) + "\n")
        stdin.flush()
        failure: BaseException | None = None
        if while_paused is not None:
            paused = stdout.readline()
            if not paused:
                raise AssertionError(f"the fork server died:\n{self._log.read_text()[-4000:]}")
            try:
                while_paused(json.loads(paused)["stopped"])
            except BaseException as exc:  # raised once the child's reply is read
                failure = exc
            stdin.write("go on\n")
            stdin.flush()
        line = stdout.readline()
        if failure is not None:
            raise failure
        if not line:
            raise AssertionError(f"the fork server died:\n{self._log.read_text()[-4000:]}")
        reply: dict[str, Any] = json.loads(line)
        if not reply["ready"] or (not reply["killed"] and reply["exit"] != 0):
            raise AssertionError(f"{kind}: the child failed before or during the operation "
                                 f"({reply}):\n{self._log.read_text()[-4000:]}")
        return reply

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)
        self._err.close()


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("crash-src")
    return Sources(make_plugin(root, "alpha", "1.0.0", "alpha 1.0.0", config_schema=SCHEMA),
                   make_plugin(root, "alpha", "2.0.0", "alpha 2.0.0", config_schema=SCHEMA))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path,
           sources: Sources) -> Iterator[ForkServer]:
    log = tmp_path_factory.mktemp("crash-server") / "stderr.log"
    srv = ForkServer(cache_dir, sources, log)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def seed() -> int:
    value = int(os.environ.get("PLUGBOX_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nlifecycle crash test seed: {value} (replay: PLUGBOX_CRASH_SEED={value})")
    return value


def _host(state: Path, cache_dir: Path, shared: bool = False) -> plugbox.PluginHost:
    """new_host, with a kv store other processes may open too when ``shared``."""
    if not shared:
        return new_host(state, cache_dir)
    host = plugbox.PluginHost(state_dir=state, runtime_options={
        "cache_dir": cache_dir, "pooled_instances": 0, "shared_state": True})
    host.extension_point("text.echo", version="1.0.0", mode="each")
    return host


def _started(state: Path, cache_dir: Path) -> tuple[plugbox.PluginHost, list[str],
                                                    plugbox.StartReport]:
    host = new_host(state, cache_dir)
    before_start = host.check_integrity()
    return host, before_start, host.start()


def _needs(kind: str) -> None:
    if kind in ("upgrade", "rollback", "configure") and not hasattr(plugbox.PluginHost,
                                                                    "configure"):
        pytest.skip("upgrade, rollback and configure are not merged yet")


def _measure(kind: str, server: ForkServer, sources: Sources, cache_dir: Path,
             tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """The before-state, the after-state (the same after every uninterrupted run) and the
    operation's durations."""
    with new_host(tmp_path / "before", cache_dir) as h:
        h.start()
        KINDS[kind].prepare(h, sources)
    with new_host(tmp_path / "before", cache_dir) as h:
        h.start()
        before = snapshot(h)
    durations, after = [], None
    for i in range(TIMED_RUNS):
        state = tmp_path / f"timed-{i}"
        reply = server.run(kind, state, None)
        durations.append(reply["duration"])
        host, problems, report = _started(state, cache_dir)
        with host:
            assert problems == [] and report.recovered == () and report.swept == ()
            got = snapshot(host)
        assert after is None or got == after, "an uninterrupted run left another state"
        after = got
        shutil.rmtree(state)
    assert after is not None and after != before
    return before, after, durations


@pytest.mark.parametrize("kind", list(KINDS))
def test_sigkill_leaves_the_state_before_or_after(
        kind: str, server: ForkServer, sources: Sources, cache_dir: Path,
        tmp_path: Path, seed: int) -> None:
    _needs(kind)
    rng = random.Random(f"{seed}-{kind}")
    before, after, durations = _measure(kind, server, sources, cache_dir, tmp_path)
    outcomes = {"before": 0, "after": 0}
    # Where the kills that landed inside the operation left it: a journal entry, partial
    # files, or (an operation that is one transaction leaves neither) its transaction
    # committed before the operation returned.
    left = {"journal": 0, "files": 0, "committed": 0}
    recovered: dict[str, int] = {}
    mid = finished = kills = 0
    def landed() -> int:
        return kills - finished if kind in ONE_TRANSACTION else mid

    while kills < KILLS or (landed() < MIN_MID and kills < MAX_KILLS):
        i, kills = kills, kills + 1
        if i % RETIME_EVERY == RETIME_EVERY - 1:  # follow the machine's load
            durations.append(server.run(kind, tmp_path / f"retime-{i}", None)["duration"])
            shutil.rmtree(tmp_path / f"retime-{i}")
        # Across one of the durations seen: on a shared machine they vary several-fold.
        delay = rng.uniform(0, SPREAD * rng.choice(durations))
        state = tmp_path / f"kill-{i}"
        reply = server.run(kind, state, delay)
        host, problems, report = _started(state, cache_dir)
        with host:
            where = f"{kind}, kill {i} after {delay * 1000:.2f} ms (seed {seed})"
            assert host.check_integrity() == [], where
            got = snapshot(host)
            if problems:  # something was left mid-way: start() must say what it did
                mid += 1
                assert report.recovered or report.swept, (where, problems, report)
                left["journal" if any(p.startswith("journal:") for p in problems)
                     else "files"] += 1
                for r in report.recovered:
                    key = f"{r.op} {r.outcome}"
                    recovered[key] = recovered.get(key, 0) + 1
        if reply["finished"]:
            finished += 1
            assert got == after, where
        elif got == after and not problems:
            mid += 1
            left["committed"] += 1
        assert got in (before, after), (where, problems, report, got, before, after)
        outcomes["before" if got == before else "after"] += 1
        shutil.rmtree(state)
    print(f"\n{kind}: {kills} kills across {statistics.median(durations) * 1000:.2f} ms "
          f"(median of {len(durations)} uninterrupted runs): "
          f"{kills - finished} between its start and its return, {finished} after it; "
          f"{mid} left a trace ({left['journal']} a journal entry, {left['files']} only "
          f"files, {left['committed']} the after-state before the return; start() "
          f"recovered {recovered or 'no operation'}); state before {outcomes['before']}, "
          f"after {outcomes['after']}")
    assert landed() >= MIN_MID, (
        f"{kind}: only {landed()} of {kills} kills landed inside the operation")


# Not uninstall --purge: a child stopped inside its kv write would hold SQLite's write lock,
# and any other process's kv write waits for it (up to the kv store's timeout) whatever the
# lifecycle does.
@pytest.mark.parametrize("kind", ["install", "uninstall", "upgrade"])
def test_a_start_in_another_process_leaves_a_running_operation_alone(
        kind: str, server: ForkServer, sources: Sources, cache_dir: Path,
        tmp_path: Path, seed: int) -> None:
    """A worker process starting while another is mid-operation (stopped there with
    SIGSTOP) neither undoes its journal entry nor sweeps its files: the operation finishes
    and the state is the after-state."""
    _needs(kind)
    if "shared_state" not in inspect.signature(plugbox.Runtime).parameters:
        pytest.skip("several processes on one state dir need Runtime(shared_state=True), "
                    "not merged yet")
    rng = random.Random(f"{seed}-{kind}-pause")
    _, after, durations = _measure(kind, server, sources, cache_dir, tmp_path)
    duration = statistics.median(durations)
    waited = 0
    for i in range(PAUSES):
        state = tmp_path / f"pause-{i}"
        delay = rng.uniform(0, duration)
        beside: dict[str, Any] = {}

        def open_and_start() -> None:
            try:
                beside["host"] = _host(state, cache_dir, shared=True)
                beside["report"] = beside["host"].start()
            except BaseException as exc:  # re-raised on the test's thread
                beside["error"] = exc

        def start_beside(stopped: bool) -> None:
            thread = threading.Thread(target=open_and_start)
            thread.start()
            # No event says "start() is waiting for the lifecycle lock": give it a moment
            # to do harm if it would, then let the stopped operation go on.
            thread.join(timeout=0.3)
            beside.update(thread=thread, waited=thread.is_alive())

        reply = server.run(kind, state, delay, while_paused=start_beside, shared=True)
        beside["thread"].join(timeout=60)
        where = f"{kind}, paused after {delay * 1000:.2f} ms (seed {seed})"
        if "error" in beside:
            raise AssertionError(where) from beside["error"]
        with beside["host"] as host:
            assert reply["exit"] == 0, (where, reply)
            assert beside["report"].recovered == (), where
            assert host.check_integrity() == [], where
        waited += beside["waited"]
        with _host(state, cache_dir, shared=True) as host:
            assert host.start().recovered == () and host.check_integrity() == [], where
            assert snapshot(host) == after, where
        shutil.rmtree(state)
    print(f"\n{kind}: {PAUSES} starts beside a stopped operation, {waited} of them waited "
          f"for it")


def test_install_over_the_copy_a_killed_install_left(tmp_path: Path, cache_dir: Path,
                                                     sources: Sources) -> None:
    """A host that started before another process was killed mid-install (its copy renamed
    into ``plugins/alpha/1.0.0``, never recorded) installs that version, even rebuilt with
    another module, instead of refusing it as a clash with something nothing recorded."""
    with new_host(tmp_path / "state", cache_dir) as host:
        host.start()
        shutil.copytree(sources.v1, tmp_path / "state" / "plugins" / "alpha" / "1.0.0")
        rebuilt = make_plugin(tmp_path / "src", "alpha", "1.0.0", "alpha rebuilt",
                              config_schema=SCHEMA)
        assert host.install(rebuilt).version == "1.0.0"
        assert values(host) == ["alpha rebuilt"]
        assert host.check_integrity() == []
