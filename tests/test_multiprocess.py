"""Several processes over one lifecycle database (issue 9 §7): real separate processes, one
making lifecycle changes, the other (started before) seeing each of them without a restart;
and both incrementing one kv key with nothing lost. On SQLite the processes share one state
dir (the kv file opened with ``shared_state``); on PostgreSQL each has its own state dir, as
two machines would, and the second materialises the versions the first installed from the
database.

Each process runs :data:`WORKER`, which answers JSON commands on stdin with JSON lines on
stdout; ``wait`` polls the process's own view (what a dispatch returns, what it hosts) until
it matches, with a deadline, and says whether it did (bench/propagation.py uses the same
worker and records how long it took).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_lifecycle_core import make_plugin

REPO = Path(__file__).resolve().parent.parent

#: The worker: ``python -c WORKER STATE_DIR STATE_URL|- CACHE_DIR``.
WORKER = r'''
import json, sys, time
import plugbox

state_dir, url, cache_dir = sys.argv[1], sys.argv[2], sys.argv[3]
url = None if url == "-" else url
options = {"cache_dir": cache_dir, "pooled_instances": 0}
if url is None:
    options["shared_state"] = True    # the kv file is shared with the other processes
else:
    options["state_url"] = url        # kv data in PostgreSQL too
host = plugbox.PluginHost(state_dir=state_dir, state_url=url, runtime_options=options)
host.extension_point("text.echo", version="1.0.0", mode="each")
host.start()


def view(key):
    """What this process serves, without a database read (the watcher must do the work)."""
    if key == "echo":
        return sorted(host.call("text.echo", {}).values)
    plugins = {}
    for name in sorted(host._managed):
        hosted = host.get(name)
        if hosted is not None:
            plugins[name] = [hosted.manifest.version, hosted.enabled, dict(hosted.config)]
    return plugins


def upgrade(path):
    if hasattr(host, "upgrade"):
        return host.upgrade(path).status
    # Until PluginHost.upgrade lands (helper upg): what it records, done by hand.
    manifest, grant = host._verify_source(path)
    target, _ = host._stage(path, manifest.name, manifest.version, manifest.module_sha256)
    with host.store.transaction() as tx:
        tx.bump()
        tx.add_version(name=manifest.name, version=manifest.version, path=str(target),
                       sha256=manifest.module_sha256, manifest=dict(manifest.raw))
        tx.update_plugin(manifest.name, version=manifest.version, grant=grant)
    host.refresh()
    return "upgraded"


def configure(name, config):
    """The time the change was committed (as near as this process can tell)."""
    if hasattr(host, "configure"):
        host.configure(name, config)
        return time.time()
    with host.store.transaction() as tx:
        tx.bump()
        tx.set_config(name, config, "test")
    at = time.time()
    host.refresh()
    return at


def run(cmd):
    op = cmd["op"]
    if op == "view":
        return {"echo": view("echo"), "plugins": view("plugins")}
    if op == "wait":  # poll this process's view until view[key] == expect, or the deadline
        deadline = time.monotonic() + cmd["timeout"]
        while True:
            now = view(cmd["key"])
            if now == cmd["expect"]:
                return {"seen": True, "at": time.time()}
            if time.monotonic() > deadline:
                return {"seen": False, "last": now}
            time.sleep(0.001)
    if op == "install":
        host.install(cmd["path"], enable=cmd.get("enable", True))
    elif op == "enable":
        host.enable(cmd["name"])
    elif op == "disable":
        host.disable(cmd["name"])
    elif op == "uninstall":
        host.uninstall(cmd["name"])
    elif op == "configure":
        return {"at": configure(cmd["name"], cmd["config"])}
    elif op == "upgrade":
        upgrade(cmd["path"])
    elif op == "incr":
        plugin = host.get(cmd["name"]).plugin
        for _ in range(cmd["n"]):
            plugin.call_json("counter.incr", {"name": cmd["key"]})
    elif op == "counter":
        return host.get(cmd["name"]).plugin.call_json("counter.get", {"name": cmd["key"]})
    return {"at": time.time()}


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "quit":
        break
    try:
        print(json.dumps({"ok": True, "result": run(cmd)}), flush=True)
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
host.close()
'''


class Worker:
    """One worker process and its command pipe."""

    def __init__(self, state_dir: Path, url: str | None, cache_dir: Path, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self._log = open(log, "wb")  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(state_dir), url or "-", str(cache_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env=env)
        self.log = log
        ready = self._line()
        assert ready == {"ready": True}, ready

    def _line(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker died: {self.log.read_text()[-3000:]}")
        return json.loads(line)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> Any:
        answer = self._line()
        assert answer["ok"], answer["error"]
        return answer["result"]

    def __call__(self, **cmd: Any) -> Any:
        self.send(**cmd)
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def workers(request: pytest.FixtureRequest, tmp_path: Path, cache_dir: Path
            ) -> Iterator[Callable[[], tuple[Worker, Worker]]]:
    """A factory for the two processes: B (the watcher) is started first, then A."""
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    started: list[Worker] = []

    def start() -> tuple[Worker, Worker]:
        dirs = (("state", "state") if url is None else ("machine-a", "machine-b"))
        b = Worker(tmp_path / dirs[1], url, cache_dir, tmp_path / "b.log")
        started.append(b)
        a = Worker(tmp_path / dirs[0], url, cache_dir, tmp_path / "a.log")
        started.append(a)
        return a, b

    yield start
    for worker in started:
        worker.close()


def seen(worker: Worker, key: str, expect: Any, act: Callable[[], Any]) -> None:
    """Start ``worker`` waiting for ``view[key] == expect`` (deadline 10 s), run ``act`` (in
    the other process), and assert the worker saw it."""
    worker.send(op="wait", key=key, expect=expect, timeout=10.0)
    act()
    answer = worker.reply()
    assert answer["seen"], f"expected {key} {expect!r}, the process still has {answer['last']!r}"


def test_every_lifecycle_change_reaches_a_process_started_before(
        workers: Callable[[], tuple[Worker, Worker]], tmp_path: Path) -> None:
    a, b = workers()
    src = tmp_path / "src"
    alpha1 = make_plugin(src, "alpha", "1.0.0", "alpha 1")
    alpha2 = make_plugin(src, "alpha", "2.0.0", "alpha 2")
    beta = make_plugin(src, "beta", "1.0.0", "beta 1")
    assert b(op="view") == {"echo": [], "plugins": {}}

    seen(b, "echo", ["alpha 1"], lambda: a(op="install", path=str(alpha1)))
    seen(b, "echo", ["alpha 1", "beta 1"],
         lambda: (a(op="install", path=str(beta), enable=False), a(op="enable", name="beta")))
    seen(b, "echo", ["beta 1"], lambda: a(op="disable", name="alpha"))
    seen(b, "echo", ["alpha 1", "beta 1"], lambda: a(op="enable", name="alpha"))
    seen(b, "plugins", {"alpha": ["1.0.0", True, {"greeting": "hi"}],
                        "beta": ["1.0.0", True, {}]},
         lambda: a(op="configure", name="alpha", config={"greeting": "hi"}))
    seen(b, "echo", ["alpha 2", "beta 1"], lambda: a(op="upgrade", path=str(alpha2)))
    assert b(op="view")["plugins"]["alpha"][0] == "2.0.0"
    seen(b, "echo", ["alpha 2"], lambda: a(op="uninstall", name="beta"))
    assert b(op="view")["plugins"] == {"alpha": ["2.0.0", True, {"greeting": "hi"}]}
    # And the other way round: B's change reaches A.
    seen(a, "echo", [], lambda: b(op="disable", name="alpha"))


def test_two_processes_increment_one_kv_key_exactly(
        workers: Callable[[], tuple[Worker, Worker]], rust_plugins: dict[str, Path]) -> None:
    a, b = workers()
    seen(b, "plugins", {"counter": ["0.1.0", True, {}]},
         lambda: a(op="install", path=str(rust_plugins["counter"])))
    calls = 300
    a.send(op="incr", name="counter", key="hits", n=calls)
    b.send(op="incr", name="counter", key="hits", n=calls)
    a.reply()
    b.reply()
    assert a(op="counter", name="counter", key="hits")["value"] == 2 * calls
    assert b(op="counter", name="counter", key="hits")["value"] == 2 * calls
