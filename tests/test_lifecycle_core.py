"""Plugin lifecycle core (issue 9 §1, §2): the managed store, install, enable, disable,
uninstall, pins, safe mode, start, audit and events, with small WAT plugins."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from tests.conftest import const_body, wat_module, write_plugin


def make_plugin(directory: Path, name: str, version: str, text: str, **manifest: Any) -> Path:
    """A WAT plugin ``name`` ``version`` implementing ``text.echo`` by returning ``text``."""
    body, fields = const_body(json.dumps(text))
    manifest.setdefault("implements", {"text.echo": {"hook": "run"}})
    return write_plugin(directory / f"{name}-{version}", wat_module(body, fields), name=name,
                        hooks=("run",), version=version, **manifest)


#: The lifecycle database of the running test (the ``backend`` fixture): None is the state
#: dir's SQLite file, else a fresh PostgreSQL database's URL.
_BACKEND: dict[str, str | None] = {"state_url": None}


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test of this module runs on SQLite and on PostgreSQL (a fresh database on the
    session's test server; skipped with the reason when PostgreSQL is not installed)."""
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    _BACKEND["state_url"] = url
    yield request.param
    _BACKEND["state_url"] = None


#: For a test of a module using ``backend`` that only makes sense on SQLite (a real sample,
#: whose cost is its compile; a check of the SQLite file itself).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def new_host(state: Path, cache_dir: Path, *, pooled_instances: int | None = 0,
             **kw: Any) -> plugbox.PluginHost:
    """A host on the running test's backend declaring ``text.echo`` (``pooled_instances``:
    the runtime's option; None keeps its default)."""
    kw.setdefault("state_url", _BACKEND["state_url"])
    options: dict[str, Any] = {"cache_dir": cache_dir}
    if pooled_instances is not None:
        options["pooled_instances"] = pooled_instances
    host = plugbox.PluginHost(state_dir=state, runtime_options=options, **kw)
    host.extension_point("text.echo", version="1.0.0", mode="each")
    return host


@pytest.fixture
def host(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        yield h


@pytest.fixture
def plugin(tmp_path: Path) -> Callable[..., Path]:
    def build(name: str = "alpha", version: str = "1.0.0", text: str | None = None,
              **manifest: Any) -> Path:
        return make_plugin(tmp_path / "src", name, version, text or f"{name} {version}",
                           **manifest)
    return build


def values(host: plugbox.PluginHost) -> list[Any]:
    return host.call("text.echo", {}).values


def test_install_copies_into_the_managed_store_and_serves_from_there(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    src = plugin()
    info = host.install(src)
    assert (info.name, info.version, info.state, info.enabled) == ("alpha", "1.0.0",
                                                                  "enabled", True)
    managed = tmp_path / "state" / "plugins" / "alpha" / "1.0.0"
    assert info.path == managed and (managed / "plugbox.json").is_file()
    assert host.get("alpha").source == managed  # type: ignore[union-attr]
    assert values(host) == ["alpha 1.0.0"]
    # The source can go away: the host runs its own copy.
    for f in src.iterdir():
        f.unlink()
    src.rmdir()
    assert values(host) == ["alpha 1.0.0"]
    assert host.check_integrity() == []
    if _BACKEND["state_url"] is None:
        rows = sqlite3.connect(tmp_path / "state" / "lifecycle.sqlite3").execute(
            "SELECT name, version, state, enabled FROM lc_plugins").fetchall()
        assert rows == [("alpha", "1.0.0", "enabled", 1)]


def test_install_from_a_package(host: plugbox.PluginHost, plugin: Callable[..., Path],
                                tmp_path: Path) -> None:
    from plugbox.trust._package import write_package

    pkg = tmp_path / "alpha.plugbox"
    write_package(plugin(), pkg)
    info = host.install(pkg)
    assert info.state == "enabled" and values(host) == ["alpha 1.0.0"]
    assert (tmp_path / "state" / "plugins" / "alpha" / "1.0.0" / "plugin.wasm").is_file()


def test_install_refuses_what_does_not_verify_and_records_nothing(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    src = plugin()
    (src / "plugin.wasm").write_bytes(b"\0asm\1\0\0\0")  # the pinned sha256 no longer holds
    with pytest.raises(plugbox.HashMismatchError):
        host.install(src)
    assert host.installed() == []
    assert not (tmp_path / "state" / "plugins" / "alpha").exists()
    with pytest.raises(plugbox.IncompatiblePointError):
        host.install(plugin("beta", implements={"nope": {"hook": "run"}}))
    assert host.installed() == [] and host.check_integrity() == []


def test_install_twice_is_refused_naming_upgrade(host: plugbox.PluginHost,
                                                 plugin: Callable[..., Path]) -> None:
    host.install(plugin())
    with pytest.raises(plugbox.LifecycleError, match=r"installed already.*upgrade") as err:
        host.install(plugin(version="1.1.0"))
    assert err.value.operation == "install" and err.value.plugin == "alpha"


def test_install_disabled_then_enable_and_disable_take_effect_at_once(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    info = host.install(plugin(), enable=False)
    assert info.state == "installed" and not info.loaded
    assert values(host) == []
    assert host.enable("alpha") == ["alpha"]
    assert values(host) == ["alpha 1.0.0"] and host.info("alpha").state == "enabled"
    assert host.disable("alpha") == ["alpha"]
    assert values(host) == [] and host.info("alpha").state == "disabled"
    assert host.enable("alpha") == ["alpha"]
    assert values(host) == ["alpha 1.0.0"]


def test_state_survives_a_restart(tmp_path: Path, cache_dir: Path,
                                  plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin("alpha"))
        h.install(plugin("beta"))
        h.install(plugin("gamma"), enable=False)
        h.disable("beta")
        h.pin("alpha")
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        assert report.loaded == ("alpha",) and set(report.skipped) == {"beta", "gamma"}
        assert report.ok and not report.safe_mode and report.recovered == ()
        assert values(h) == ["alpha 1.0.0"]
        states = {i.name: (i.state, i.pinned) for i in h.installed()}
        assert states == {"alpha": ("enabled", True), "beta": ("disabled", False),
                          "gamma": ("installed", False)}


def test_safe_mode_loads_nothing_and_says_so(tmp_path: Path, cache_dir: Path,
                                            plugin: Callable[..., Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin())
    with new_host(tmp_path / "state", cache_dir, safe_mode=True) as h:
        report = h.start()
        assert report.safe_mode and report.loaded == () and values(h) == []
        assert h.info("alpha").enabled  # the recorded state is untouched
    monkeypatch.setenv("PLUGBOX_SAFE_MODE", "1")
    with new_host(tmp_path / "state", cache_dir) as h:
        assert h.safe_mode and h.start().loaded == ()
    monkeypatch.delenv("PLUGBOX_SAFE_MODE")
    with new_host(tmp_path / "state", cache_dir) as h:
        assert h.start().loaded == ("alpha",)


def test_a_plugin_failing_on_init_is_failed_with_the_reason(
        host: plugbox.PluginHost, tmp_path: Path, tmp_path_factory: Any) -> None:
    body, fields = const_body('"x"')
    trap_init = fields + '\n  (func (export "on-init") (param i32 i32) (result i32) unreachable)'
    src = write_plugin(tmp_path / "src" / "bad", wat_module(body, trap_init), name="bad",
                       hooks=("run",), implements={"text.echo": {"hook": "run"}})
    info = host.install(src)
    assert info.state == "failed" and info.reason is not None
    assert info.reason.startswith("on-init failed"), info.reason
    assert values(host) == []


def test_start_marks_a_plugin_whose_files_were_tampered_with_failed(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin())
    (tmp_path / "state" / "plugins" / "alpha" / "1.0.0" / "plugin.wasm").write_bytes(b"x")
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        assert report.failed["alpha"].startswith("did not verify"), report.failed
        assert h.info("alpha").state == "failed"
        assert h.info("alpha").reason == report.failed["alpha"]


def test_uninstall_keeps_data_and_config_unless_purged(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin(), config={"greeting": "hi"})
    host.runtime.kv.set("alpha", "k", b"v", quota_bytes=1000, quota_keys=10)
    host.uninstall("alpha")
    assert values(host) == [] and host.installed() == []
    assert not (tmp_path / "state" / "plugins" / "alpha").exists()
    assert host.runtime.kv.get("alpha", "k") == b"v"
    with pytest.raises(plugbox.LifecycleError, match="not installed|no plugin"):
        host.info("alpha")
    host.install(plugin())
    assert host.config_of("alpha") == {"greeting": "hi"}
    host.uninstall("alpha", purge=True)
    assert host.runtime.kv.get("alpha", "k") is None
    host.install(plugin())
    assert host.config_of("alpha") == {}
    assert host.check_integrity() == []


def test_an_install_finishes_a_purge_an_earlier_process_left_unfinished(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path,
        cache_dir: Path) -> None:
    """A process killed between an uninstall --purge's commit and its kv clear leaves the
    purge in the journal; installing the plugin again finishes it first, so a later start()
    never clears the new install's data."""
    host.install(plugin())
    host.runtime.kv.set("alpha", "old", b"1", quota_bytes=1000, quota_keys=10)
    host.uninstall("alpha")
    with host.store.transaction() as tx:  # as a purge killed before its kv clear leaves it
        tx.begin_op("purge", "alpha", {})
    host.install(plugin())
    assert host.runtime.kv.get("alpha", "old") is None  # the old data went with the purge
    host.runtime.kv.set("alpha", "new", b"2", quota_bytes=1000, quota_keys=10)
    assert host.check_integrity() == []
    host.close()
    with new_host(tmp_path / "state", cache_dir) as again:
        report = again.start()
        assert report.recovered == ()
        assert again.runtime.kv.get("alpha", "new") == b"2"


def test_operations_on_unknown_plugins_name_the_fix(host: plugbox.PluginHost) -> None:
    for op in (host.enable, host.disable, host.uninstall, host.pin, host.info):
        with pytest.raises(plugbox.LifecycleError, match="install it first"):
            op("ghost")


def test_audit_and_events_record_who_did_what(host: plugbox.PluginHost,
                                              plugin: Callable[..., Path]) -> None:
    events: list[plugbox.LifecycleEvent] = []
    unsubscribe = host.subscribe_lifecycle(events.append)
    host.install(plugin(), actor="ann")
    host.disable("alpha", actor="bob")
    host.enable("alpha", actor="bob")
    host.uninstall("alpha", actor="cy")
    kinds = [(e.kind, e.plugin, e.from_version, e.to_version, e.actor) for e in events]
    assert kinds == [("installed", "alpha", None, "1.0.0", "ann"),
                     ("enabled", "alpha", None, "1.0.0", "ann"),
                     ("disabled", "alpha", "1.0.0", None, "bob"),
                     ("enabled", "alpha", None, "1.0.0", "bob"),
                     ("uninstalled", "alpha", "1.0.0", None, "cy")]
    entries = host.audit("alpha")
    assert [(a.action, a.actor) for a in entries] == [
        ("uninstall", "cy"), ("enable", "bob"), ("disable", "bob"), ("install", "ann")]
    assert all(a.at > 0 for a in entries)
    unsubscribe()
    host.install(plugin())
    assert len(events) == 5


def test_a_subscriber_that_raises_does_not_break_the_operation(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    def boom(event: plugbox.LifecycleEvent) -> None:
        raise RuntimeError("subscriber bug")
    host.subscribe_lifecycle(boom)
    assert host.install(plugin()).state == "enabled"


def test_generation_grows_with_every_change(host: plugbox.PluginHost,
                                            plugin: Callable[..., Path]) -> None:
    g0 = host.store.generation()
    host.install(plugin())
    g1 = host.store.generation()
    host.disable("alpha")
    assert g0 < g1 < host.store.generation()


def test_add_still_hosts_unmanaged_plugins(host: plugbox.PluginHost,
                                           plugin: Callable[..., Path]) -> None:
    hp = host.add(plugin("loose"))
    assert values(host) == ["loose 1.0.0"] and host.installed() == []
    assert hp.source != host.runtime.state_dir / "plugins"
