"""The lifecycle store on services._db (issue 9 §1, §7): lazy SQLite, PluginHost.refresh
applying another host's changes, the versions' files kept in PostgreSQL and materialised on
a host that lacks them (hash checked), and GenerationWatch waking at a NOTIFY."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.host._store import Store
from plugbox.services._db import GenerationWatch, connect
from tests.test_lifecycle_core import make_plugin


def two_hosts(tmp_path: Path, cache_dir: Path, url: str
              ) -> tuple[plugbox.PluginHost, plugbox.PluginHost]:
    """Two hosts with their own state dirs (two machines) over one lifecycle database."""
    hosts = []
    for name in ("a", "b"):
        kv = url if url.startswith("postgresql") else None
        options: dict[str, Any] = {"cache_dir": cache_dir, "pooled_instances": 0}
        if kv:
            options["state_url"] = kv
        host = plugbox.PluginHost(state_dir=tmp_path / name, state_url=url,
                                  runtime_options=options)
        host.extension_point("text.echo", version="1.0.0", mode="each")
        hosts.append(host)
    return hosts[0], hosts[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def lifecycle_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared' / 'lifecycle.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def pair(tmp_path: Path, cache_dir: Path, lifecycle_url: str
         ) -> Iterator[tuple[plugbox.PluginHost, plugbox.PluginHost]]:
    a, b = two_hosts(tmp_path, cache_dir, lifecycle_url)
    yield a, b
    a.close()
    b.close()


def echo(host: plugbox.PluginHost) -> list[Any]:
    return sorted(host.call("text.echo", {}).values)


def test_a_host_that_never_uses_the_lifecycle_creates_no_database(
        tmp_path: Path, cache_dir: Path) -> None:
    with plugbox.PluginHost(state_dir=tmp_path / "s", runtime_options={
            "cache_dir": cache_dir, "pooled_instances": 0}) as host:
        host.extension_point("text.echo", version="1.0.0", mode="each")
        host.add(make_plugin(tmp_path / "src", "alpha", "1.0.0", "x"))
        assert echo(host) == ["x"]
        assert not host.store.opened
    assert not (tmp_path / "s" / "lifecycle.sqlite3").exists()


def test_refresh_applies_another_hosts_changes_and_names_them(
        pair: tuple[plugbox.PluginHost, plugbox.PluginHost], tmp_path: Path) -> None:
    a, b = pair
    src = tmp_path / "src"
    a.install(make_plugin(src, "alpha", "1.0.0", "alpha 1"))
    a.install(make_plugin(src, "beta", "1.0.0", "beta 1"), enable=False)
    assert echo(b) == []
    assert b.refresh() == ["alpha"]
    assert echo(b) == ["alpha 1"] and b.refresh() == []
    a.enable("beta")
    a.disable("alpha")
    assert b.refresh() == ["beta", "alpha"]  # in start order: the enabled ones first
    assert echo(b) == ["beta 1"]
    assert b.info("alpha").loaded is False and b.info("beta").loaded is True
    a.uninstall("beta")
    assert b.refresh() == ["beta"]
    assert b.get("beta") is None and echo(b) == []
    a.enable("alpha")
    assert b.refresh() == ["alpha"] and echo(b) == ["alpha 1"]


def test_pg_keeps_the_files_and_another_machine_materialises_them(
        tmp_path: Path, cache_dir: Path, pg_url: str) -> None:
    a, b = two_hosts(tmp_path, cache_dir, pg_url)
    try:
        a.install(make_plugin(tmp_path / "src", "alpha", "1.0.0", "alpha 1"))
        assert not (tmp_path / "b" / "plugins" / "alpha").exists()
        report = b.start()
        assert report.loaded == ("alpha",)
        local = tmp_path / "b" / "plugins" / "alpha" / "1.0.0"
        assert b.info("alpha").path == local and (local / "plugbox.json").is_file()
        assert echo(b) == ["alpha 1"] and b.check_integrity() == []
        a.uninstall("alpha")
        with connect(pg_url) as db:
            assert db.execute("SELECT COUNT(*) FROM lc_packages") == [(0,)]
    finally:
        a.close()
        b.close()


def test_pg_materialise_refuses_files_whose_hash_does_not_match(
        tmp_path: Path, cache_dir: Path, pg_url: str) -> None:
    a, _ = two_hosts(tmp_path, cache_dir, pg_url)
    try:
        a.install(make_plugin(tmp_path / "src", "alpha", "1.0.0", "alpha 1"))
    finally:
        a.close()
    with connect(pg_url) as db:
        db.execute("UPDATE lc_packages SET data = ? WHERE member = ?", (b"\0asm", "plugin.wasm"))
    store = Store(pg_url, plugins_dir=tmp_path / "c" / "plugins")
    try:
        version = store.versions("alpha")[0]
        assert version.path == str(tmp_path / "c" / "plugins" / "alpha" / "1.0.0")
        with pytest.raises(plugbox.StateError, match="does not match its recorded SHA-256"):
            store.materialise(version)
        assert not Path(version.path).exists()
        assert not any((tmp_path / "c" / "plugins" / ".tmp").iterdir())
    finally:
        store.close()


def test_generation_watch_wakes_at_a_notify(pg_url: str) -> None:
    """With ``listen`` the watch sees a bump at its NOTIFY: an interval of 60 s would
    otherwise make the wait below time out."""
    writer = connect(pg_url)
    watch = GenerationWatch(connect(pg_url), "lifecycle", interval=60.0, owns_db=True,
                            listen=True)
    seen: list[int] = []
    changed = threading.Event()

    def on_change(value: int) -> None:
        seen.append(value)
        changed.set()

    try:
        watch.start(on_change)
        # The listener connects on the thread's first wait: bump until it has (each bump
        # before LISTEN ran is caught by the check after the first NOTIFY anyway).
        for _ in range(50):
            writer.bump_generation("lifecycle")
            if changed.wait(0.2):
                break
        assert seen and seen[-1] >= 1
    finally:
        watch.stop()
        writer.close()
    assert watch.db.closed


def test_a_store_closed_stops_its_watch(tmp_path: Path) -> None:
    store = Store(tmp_path / "lc.sqlite3")
    calls: list[int] = []
    store.watch(calls.append, interval=0.01)
    watch: Callable[[], Any] = lambda: store._watch  # noqa: E731
    thread = watch()._thread
    store.close()
    assert thread is not None and not thread.is_alive()


def test_pg_a_python_plugin_installed_on_one_machine_serves_on_another(
        tmp_path: Path, cache_dir: Path, pg_url: str) -> None:
    """The Python echo sample (an 18 MB component) goes through lc_packages whole."""
    from plugbox.authoring import _pybuild

    repo = Path(__file__).resolve().parent.parent
    module = _pybuild.build_python_plugin(repo / "sample-plugins" / "python" / "echo",
                                          out_dir=repo / ".build" / "pytest-pybuild" / "py-echo")
    a, b = two_hosts(tmp_path, cache_dir, pg_url)
    try:
        a.install(module.parent)
        b.start()
        hosted = b.get("py-echo")
        assert hosted is not None and hosted.source == tmp_path / "b" / "plugins" / \
            "py-echo" / "0.1.0"
        assert hosted.plugin.call("echo", b"across machines") == b"across machines"
        assert (hosted.source / "plugin.wasm").read_bytes() == module.read_bytes()
    finally:
        a.close()
        b.close()


def test_hosts_on_two_machines_exclude_each_others_operations(
        tmp_path: Path, cache_dir: Path, pg_url: str) -> None:
    """On PostgreSQL the lifecycle lock is the database's too: a host on another machine
    (its own state dir, so its own flock) waits for a running operation before its start()
    recovers anything, so it never undoes a live operation's journal entry."""
    import threading

    a, b = two_hosts(tmp_path, cache_dir, pg_url)
    try:
        with a._op_lock:  # a's operation is running (its journal entry is live)
            with a.store.transaction() as tx:
                op = tx.begin_op("install", "alpha", {"version": "1.0.0"})
            started = threading.Event()
            report: list[Any] = []

            def start_b() -> None:
                started.set()
                report.append(b.start())

            thread = threading.Thread(target=start_b)
            thread.start()
            started.wait(5)
            thread.join(0.5)
            assert thread.is_alive(), "b's start() must wait for a's operation"
            with a.store.transaction() as tx:  # a's operation ends, as it would commit
                tx.end_op(op)
        thread.join(10)
        assert not thread.is_alive()
        assert report[0].recovered == ()  # nothing of a's operation was undone
    finally:
        a.close()
        b.close()
