"""The plugins' kv storage on a real PostgreSQL server (tests/_pg.py starts it): what the
SQLite-only tests of tests/test_kvstore.py check there (persistence, closing, errors), what
only a shared database has (several stores, processes and Runtimes on one database), and the
``Runtime(state_url=...)`` seam. The generic kv suites run on both backends through the
``kv_backend`` fixture."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import plugbox
from plugbox._errors import StateError
from plugbox.services._kvstore import KvQuotaError
from plugbox.services._kvstore_pg import PgKvStore
from tests.conftest import REPO
from tests.test_kv_atomic import incr_module
from tests.test_abi11 import stage

BIG = 1 << 40


def test_data_and_usage_persist_and_are_shared_between_stores(pg_url: str) -> None:
    with PgKvStore(pg_url) as s:
        s.set("p", "a", b"hello", quota_bytes=BIG, quota_keys=BIG)
        s.set("p", "bb", b"world!", quota_bytes=BIG, quota_keys=BIG)
        s.set("q", "a", b"other", quota_bytes=BIG, quota_keys=BIG)
        with PgKvStore(pg_url) as other:  # another host on the same database
            assert other.get("p", "bb") == b"world!"
            other.delete("p", "bb")
        assert s.usage("p") == (1 + 5, 1)  # the other store's delete is counted here
    with PgKvStore(pg_url) as s:
        assert s.list_keys("p", "") == ["a"]
        assert s.usage("p") == (6, 1) and s.usage("nobody") == (0, 0)
        with pytest.raises(KvQuotaError):
            s.set("p", "c", b"x", quota_bytes=6, quota_keys=BIG)


def test_keys_sqlite_accepts_are_stored_in_byte_order(pg_url: str) -> None:
    keys = ["b", "a\x00z", "a", "\U0010ffff", "aé", "B"]
    with PgKvStore(pg_url) as s:
        for k in keys:
            s.set("p", k, k.encode(), quota_bytes=BIG, quota_keys=BIG)
        assert s.list_keys("p") == sorted(keys, key=lambda k: k.encode())
        assert s.get("p", "a\x00z") == b"a\x00z"
        assert s.usage("p") == (2 * sum(len(k.encode()) for k in keys), len(keys))


def test_the_quota_holds_across_two_stores_racing(pg_url: str) -> None:
    """Two stores (two connections, as two hosts would have) add keys from 4 threads under a
    100-key quota: exactly 100 get in, because each write locks the plugin's usage row."""
    stores = [PgKvStore(pg_url), PgKvStore(pg_url)]
    ok = [0] * 4

    def work(t: int) -> None:
        for i in range(40):
            try:
                stores[t % 2].set("p", f"{t}/{i}", b"v", quota_bytes=BIG, quota_keys=100)
                ok[t] += 1
            except KvQuotaError:
                pass

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert sum(ok) == 100
        assert stores[0].usage("p") == (sum(len(k) + 1 for k in stores[1].list_keys("p")), 100)
    finally:
        for s in stores:
            s.close()


def test_a_closed_store_and_an_unreachable_server_raise_state_errors(pg_url: str) -> None:
    s = PgKvStore(pg_url)
    s.set("p", "a", b"1", quota_bytes=BIG, quota_keys=BIG)
    s.close()
    s.close()
    assert s.closed
    for call in (lambda: s.get("p", "a"), lambda: s.usage("p"), lambda: s.clear("p"),
                 lambda: s.increment("p", "n", 1, quota_bytes=BIG, quota_keys=BIG)):
        with pytest.raises(StateError, match="is closed"):
            call()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    with pytest.raises(StateError) as info:
        PgKvStore(f"postgresql://someone:s3cret@127.0.0.1:{port}/db", timeout=2)
    assert "running and reachable" in str(info.value)
    assert "s3cret" not in str(info.value) and "someone:***@" in info.value.path


def test_runtime_state_url_puts_the_plugins_kv_on_postgresql(pg_url: str,
                                                             tmp_path: Path) -> None:
    plugin_dir = stage(tmp_path, incr_module(), "core", name="incr", hooks=["hits"],
                       permissions={"kv": {}}, limits={"instances": 4})
    with plugbox.Runtime(state_dir=tmp_path / "a", state_url=pg_url) as rt:
        assert isinstance(rt.kv, PgKvStore)
        plugin = rt.load(plugin_dir)
        for _ in range(3):
            plugin.call("hits", b"")
        # Two Runtimes of one process may share a PostgreSQL database (unlike an SQLite file).
        with plugbox.Runtime(state_dir=tmp_path / "b", state_url=pg_url) as other:
            assert other.load(plugin_dir).call("hits", b"") == (4).to_bytes(8, "little")
    assert not (tmp_path / "a" / "plugbox.sqlite3").exists()


_RUNTIME_WORKER = """
import sys
import plugbox
url, state_dir, plugin_dir, calls = sys.argv[1:5]
with plugbox.Runtime(state_dir=state_dir, state_url=url, pooled_instances=8) as rt:
    plugin = rt.load(plugin_dir)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for _ in range(int(calls)):
        plugin.call("hits", b"")
"""


def test_two_processes_with_two_runtimes_increment_one_key_and_lose_nothing(
        pg_url: str, tmp_path: Path) -> None:
    plugin_dir = stage(tmp_path, incr_module(), "core", name="incr", hooks=["hits", "x"],
                       permissions={"kv": {}})
    calls = 300
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _RUNTIME_WORKER, pg_url,
                               str(tmp_path / f"state{i}"), str(plugin_dir), str(calls)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    with PgKvStore(pg_url) as s:
        assert s.get("incr", "hits") == (2 * calls).to_bytes(8, "little")
