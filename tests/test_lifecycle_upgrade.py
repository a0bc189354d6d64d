"""Plugin lifecycle (issue 9 §3, §5, §6): upgrade with consent, automatic and manual rollback,
kept versions, data_version warnings, configuration with history and secrets, and the hot
swap under load -- with small WAT plugins, and a real Rust sample upgraded and configured."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox._policy import Policy
from plugbox.host._config import REDACTED
from tests.conftest import const_body, wat_module, write_plugin
from tests.test_lifecycle_core import SQLITE_ONLY, backend, make_plugin, values
from tests.test_lifecycle_core import new_host as core_new_host

RUN = {"hook": "run"}


def new_host(state: Path, cache_dir: Path, **kw: Any) -> plugbox.PluginHost:
    """core's host with the runtime's default pool and a policy granting HTTP to
    ``*.example.com`` (the consent tests ask for it)."""
    kw.setdefault("policy", Policy(http_hosts=("*.example.com",)))
    return core_new_host(state, cache_dir, pooled_instances=None, **kw)


@pytest.fixture
def host(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        yield h


@pytest.fixture
def plugin(tmp_path: Path) -> Callable[..., Path]:
    """``plugin(version, text=None, name="alpha", **manifest)``: a WAT plugin returning
    ``text`` (default ``"<name> <version>"``) for ``text.echo``."""
    def build(version: str = "1.0.0", text: str | None = None, name: str = "alpha",
              **manifest: Any) -> Path:
        return make_plugin(tmp_path / "src", name, version, text or f"{name} {version}",
                           **manifest)
    return build


def events_of(host: plugbox.PluginHost) -> list[plugbox.LifecycleEvent]:
    events: list[plugbox.LifecycleEvent] = []
    host.subscribe_lifecycle(events.append)
    return events


def failing_init_plugin(directory: Path, version: str) -> Path:
    """alpha ``version`` whose on-init traps."""
    body, fields = const_body('"broken"')
    trap = fields + '\n  (func (export "on-init") (param i32 i32) (result i32) unreachable)'
    return write_plugin(directory / f"alpha-bad-{version}", wat_module(body, trap),
                        name="alpha", hooks=("run",), version=version,
                        implements={"text.echo": RUN})


# A plugin answering with the configuration its on-init got (copied aside: the bump heap is
# reset after every call). With ``block``, the hook first calls host function ``block``.
CONFIG_INIT = """
  (global $cfglen (mut i32) (i32.const 0))
  (func (export "on-init") (param $p i32) (param $l i32) (result i32)
    {guard}
    (memory.copy (i32.const 2048) (local.get $p) (local.get $l))
    (global.set $cfglen (local.get $l))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))"""
CONFIG_BODY = """
    {call}
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 2048))
    (i32.store (i32.const 24) (global.get $cfglen))
    (i32.const 16)"""
BLOCK_IMPORT = ('(import "plugbox:plugin/host@1.1.0" "call" '
                '(func $host (param i32 i32 i32 i32 i32)))\n  (data (i32.const 1024) "block")')
BLOCK_CALL = ("(call $host (i32.const 1024) (i32.const 5) (local.get $pp) (local.get $pl) "
              "(i32.const 512))")
SCHEMA = {"type": "object",
          "properties": {"top_n": {"type": "integer", "minimum": 1, "default": 3},
                         "token": {"type": "string", "writeOnly": True, "pattern": "^tk-"},
                         "label": {"type": "string", "maxLength": 30}},
          "additionalProperties": False}


def config_plugin(directory: Path, version: str = "1.0.0", *, block: bool = False,
                  max_config: int | None = None, **manifest: Any) -> Path:
    """alpha ``version`` answering ``text.echo`` with its configuration (schema SCHEMA);
    ``block``: the hook calls host function ``block`` first; ``max_config``: on-init traps
    on a configuration longer than that (as JSON)."""
    guard = ("" if max_config is None else
             f"(if (i32.gt_u (local.get $l) (i32.const {max_config})) (then unreachable))")
    fields = (BLOCK_IMPORT if block else "") + CONFIG_INIT.format(guard=guard)
    module = wat_module(CONFIG_BODY.format(call=BLOCK_CALL if block else ""), fields)
    if block:
        manifest.update(abi="1.1", permissions={"functions": ["block"]})
    manifest.setdefault("config_schema", SCHEMA)
    return write_plugin(directory / f"cfg-{version}-{block}-{max_config}", module,
                        name="alpha", hooks=("run",), version=version,
                        implements={"text.echo": RUN}, **manifest)


# -- upgrade ---------------------------------------------------------------------------------


def test_upgrade_switches_to_the_new_version_and_records_it(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin("1.0.0"), actor="ann")
    events = events_of(host)
    outcome = host.upgrade(plugin("1.1.0"), actor="bob")
    assert (outcome.status, outcome.plugin, outcome.from_version, outcome.to_version) == (
        "upgraded", "alpha", "1.0.0", "1.1.0")
    assert outcome.diff.empty and outcome.reason is None
    assert outcome.info is not None and outcome.info.version == "1.1.0"
    assert values(host) == ["alpha 1.1.0"]
    info = host.info("alpha")
    assert (info.version, info.state, info.versions) == ("1.1.0", "enabled",
                                                         ("1.1.0", "1.0.0"))
    assert info.path == tmp_path / "state" / "plugins" / "alpha" / "1.1.0"
    assert host.get("alpha").source == info.path  # type: ignore[union-attr]
    assert [(e.kind, e.from_version, e.to_version, e.actor) for e in events] == [
        ("upgraded", "1.0.0", "1.1.0", "bob")]
    entry = host.audit("alpha", limit=1)[0]
    assert (entry.action, entry.actor, entry.from_version, entry.to_version) == (
        "upgrade", "bob", "1.0.0", "1.1.0")
    assert host.check_integrity() == [] and host.store.journal() == []


def test_upgrading_to_the_active_version_is_unchanged(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0"))
    before = len(host.audit())
    outcome = host.upgrade(plugin("1.0.0"))
    assert outcome.status == "unchanged" and outcome.to_version == "1.0.0"
    assert len(host.audit()) == before and values(host) == ["alpha 1.0.0"]
    with pytest.raises(plugbox.LifecycleError, match=r"different module.*new version"):
        host.upgrade(plugin("1.0.0", text="rebuilt"))


def test_upgrade_refusals_name_the_fix(host: plugbox.PluginHost,
                                       plugin: Callable[..., Path]) -> None:
    with pytest.raises(plugbox.LifecycleError, match="install it first") as err:
        host.upgrade(plugin("1.0.0"))
    assert err.value.operation == "upgrade"
    host.install(plugin("1.0.0"))
    host.upgrade(plugin("1.1.0"))
    with pytest.raises(plugbox.LifecycleError,
                       match=r"1\.0\.0 is older than the active 1\.1\.0.*"
                             r"host\.rollback\('alpha', to='1\.0\.0'\)"):
        host.upgrade(plugin("1.0.0"))
    with pytest.raises(plugbox.LifecycleError,
                       match=r"older than the active.*only kept versions.*kept: 1\.1\.0, "
                             r"1\.0\.0"):
        host.upgrade(plugin("0.9.0"))
    host.pin("alpha")
    with pytest.raises(plugbox.LifecycleError,
                       match=r"pinned at 1\.1\.0.*host\.unpin\('alpha'\)") as err:
        host.upgrade(plugin("1.2.0"))
    assert err.value.plugin == "alpha" and err.value.operation == "upgrade"
    assert host.info("alpha").version == "1.1.0" and values(host) == ["alpha 1.1.0"]
    host.unpin("alpha")
    assert host.upgrade(plugin("1.2.0")).status == "upgraded"
    with pytest.raises(plugbox.UsageError, match="allow must be"):
        host.upgrade(plugin("1.3.0"), allow="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("old, new, added", [
    ({}, {"permissions": {"clock": True}}, {"services": ["clock"]}),
    ({"permissions": {"http": {"hosts": ["a.example.com"]}}},
     {"permissions": {"http": {"hosts": ["a.example.com", "b.example.com"]}}},
     {"http.hosts": ["b.example.com"]}),
    ({"permissions": {"kv": {"quota_bytes": 1000, "quota_keys": 10}}},
     {"permissions": {"kv": {"quota_bytes": 5000, "quota_keys": 10}}},
     {"kv.quota_bytes": {"from": 1000, "to": 5000}}),
    ({"limits": {"fuel": 1_000_000}}, {"limits": {"fuel": 2_000_000}},
     {"limits.fuel": {"from": 1_000_000, "to": 2_000_000}}),
], ids=["services", "http-hosts", "kv-quota", "limits"])
def test_more_permissions_need_consent_and_declining_changes_nothing(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path,
        old: dict[str, Any], new: dict[str, Any], added: dict[str, Any]) -> None:
    host.install(plugin("1.0.0", **old))
    events = events_of(host)
    outcome = host.upgrade(plugin("1.1.0", **new))
    assert outcome.status == "needs-consent" and dict(outcome.diff.added) == added
    assert outcome.from_version == "1.0.0" and outcome.to_version == "1.1.0"
    # Nothing installed: the old version is active and serving, no file, no event.
    assert host.info("alpha").version == "1.0.0" and host.info("alpha").versions == ("1.0.0",)
    assert values(host) == ["alpha 1.0.0"] and events == []
    assert not (tmp_path / "state" / "plugins" / "alpha" / "1.1.0").exists()
    assert host.audit("alpha", limit=1)[0].action == "upgrade-needs-consent"
    assert host.check_integrity() == []
    # Granted: the new grant is recorded, so the same version needs nothing more next time.
    outcome = host.upgrade(plugin("1.1.0", **new), allow=True)
    assert outcome.status == "upgraded" and dict(outcome.diff.added) == added
    assert values(host) == ["alpha 1.1.0"]
    assert permission_free(host.info("alpha").grant, plugin("1.2.0", **new), host)


def permission_free(grant: Any, source: Path, host: plugbox.PluginHost) -> bool:
    """Whether ``source`` needs nothing beyond ``grant``."""
    from plugbox.host._lifecycle import permission_diff

    _, wanted = host._verify_source(source)
    return permission_diff(grant, wanted).empty


def test_consent_by_a_callable_sees_the_exact_difference(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0", permissions={"log": True, "clock": True}))
    asked: list[plugbox.PermissionDiff] = []

    def decline(diff: plugbox.PermissionDiff) -> bool:
        asked.append(diff)
        return False

    wants = {"permissions": {"log": True, "random": True}}
    assert host.upgrade(plugin("1.1.0", **wants), allow=decline).status == "needs-consent"
    assert [d.to_json() for d in asked] == [{"added": {"services": ["random"]},
                                             "removed": {"services": ["clock"]}}]
    assert "services: + random" in asked[0].describe()
    assert values(host) == ["alpha 1.0.0"]
    outcome = host.upgrade(plugin("1.1.0", **wants), allow=lambda diff: True)
    assert outcome.status == "upgraded" and values(host) == ["alpha 1.1.0"]
    assert host.info("alpha").grant["services"] == ["log", "random"]
    # Fewer permissions need no consent.
    assert host.upgrade(plugin("1.2.0")).status == "upgraded"


def test_under_required_signatures_an_upgrade_must_come_from_the_same_publisher(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    from tests.test_signatures import make_key, sign_plugin

    alice, _ = make_key(tmp_path / "trusted", "alice")
    bob, _ = make_key(tmp_path / "trusted", "bob")

    def signed(version: str, key: Any | None) -> Path:
        directory = plugin(version)
        if key is not None:
            sign_plugin(directory, key)
        return directory

    trust = plugbox.TrustPolicy(trusted_keys=tmp_path / "trusted", mode="require")
    with new_host(tmp_path / "state", cache_dir, trust=trust) as h:
        h.start()
        h.install(signed("1.0.0", alice))
        assert h.upgrade(signed("1.1.0", alice)).status == "upgraded"
        with pytest.raises(plugbox.UntrustedSignerError, match="not signed"):
            h.upgrade(signed("1.2.0", None))
        with pytest.raises(plugbox.IdentityConflictError):
            h.upgrade(signed("1.3.0", bob))
        assert h.info("alpha").versions == ("1.1.0", "1.0.0") and values(h) == ["alpha 1.1.0"]
        assert h.store.journal() == [] and h.check_integrity() == []


def test_a_new_version_failing_on_init_is_rolled_back_and_the_old_keeps_serving(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin("1.0.0"))
    events = events_of(host)
    outcome = host.upgrade(failing_init_plugin(tmp_path / "src", "1.1.0"), actor="ci")
    assert outcome.status == "rolled-back" and outcome.reason is not None
    assert outcome.reason.startswith("on-init failed"), outcome.reason
    assert outcome.info is not None and outcome.info.version == "1.0.0"
    info = host.info("alpha")
    assert (info.version, info.state, info.versions) == ("1.0.0", "enabled", ("1.0.0",))
    assert values(host) == ["alpha 1.0.0"]
    assert [(e.kind, e.from_version, e.to_version, e.reason) for e in events] == [
        ("failed", "1.0.0", "1.1.0", outcome.reason),
        ("rolled-back", "1.1.0", "1.0.0", outcome.reason)]
    entry = host.audit("alpha", limit=1)[0]
    assert (entry.action, entry.actor, entry.from_version, entry.to_version, entry.detail) == (
        "upgrade-failed", "ci", "1.0.0", "1.1.0", outcome.reason)
    assert not (tmp_path / "state" / "plugins" / "alpha" / "1.1.0").exists()
    assert host.check_integrity() == []
    # A later, working 1.1.0 can still be installed.
    assert host.upgrade(plugin("1.1.0")).status == "upgraded"
    # A failed on-init of a version with another data format may have migrated data: said.
    bad = failing_init_plugin(tmp_path / "src", "1.2.0")
    manifest = json.loads((bad / "plugbox.json").read_text())
    (bad / "plugbox.json").write_text(json.dumps({**manifest, "data_version": 3}))
    outcome = host.upgrade(bad)
    assert outcome.status == "rolled-back" and outcome.reason is not None
    assert "declares data_version 3 and 1.1.0 0" in outcome.reason


def test_a_new_version_failing_to_load_is_rolled_back(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin("1.0.0"))
    # Instantiation fails: the module's start function traps.
    module = wat_module('(i32.const 16)', '(func $boom unreachable)\n  (start $boom)')
    src = write_plugin(tmp_path / "src" / "start-trap", module, name="alpha", hooks=("run",),
                       version="1.1.0", implements={"text.echo": RUN})
    outcome = host.upgrade(src)
    assert outcome.status == "rolled-back" and outcome.reason is not None
    assert outcome.reason.startswith(("did not load", "on-init failed")), outcome.reason
    assert values(host) == ["alpha 1.0.0"] and host.info("alpha").version == "1.0.0"


def test_every_call_during_upgrades_gets_an_answer_from_old_or_new(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin("1.0.0"))
    seen: list[list[Any]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    warmed = threading.Event()
    new_seen = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                result = host.call("text.echo", {})
                got = result.values if not result.failures else ["failure", result.failures]
            except BaseException as exc:  # recorded: the assertion below reports it
                errors.append(exc)
                return
            seen.append(got)
            if len(seen) >= 20:
                warmed.set()
            if got == ["alpha 1.2.0"]:
                new_seen.set()

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        assert warmed.wait(30)
        # A failing upgrade: the old version answers throughout.
        assert host.upgrade(failing_init_plugin(tmp_path / "src", "1.1.0")).status == \
            "rolled-back"
        assert host.upgrade(plugin("1.2.0")).status == "upgraded"
        assert new_seen.wait(30)
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    answers = [tuple(v) for v in seen]
    assert set(answers) <= {("alpha 1.0.0",), ("alpha 1.2.0",)}, set(answers)
    switch = answers.index(("alpha 1.2.0",))
    assert switch >= 20 and all(a == ("alpha 1.2.0",) for a in answers[switch:])


def test_a_call_in_flight_finishes_on_the_old_version(
        host: plugbox.PluginHost, tmp_path: Path, plugin: Callable[..., Path]) -> None:
    release, entered = threading.Event(), threading.Event()

    def block(value: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return None

    host.function("block", block)
    host.install(config_plugin(tmp_path / "src", "1.0.0", block=True), config={"label": "v1"})
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(values(host)))
    thread.start()
    try:
        assert entered.wait(30)
        assert host.upgrade(plugin("1.1.0")).status == "upgraded"
        assert values(host) == ["alpha 1.1.0"] and thread.is_alive()
    finally:
        release.set()
        thread.join(30)
    assert results == [[{"label": "v1", "top_n": 3}]]


def test_upgrading_a_disabled_plugin_records_it_for_the_next_enable(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0"))
    host.disable("alpha")
    assert host.upgrade(plugin("1.1.0")).status == "upgraded"
    assert values(host) == [] and host.info("alpha").state == "disabled"
    host.enable("alpha")
    assert values(host) == ["alpha 1.1.0"]


def test_upgrading_a_failed_plugin_to_a_working_version_starts_it(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    assert host.install(failing_init_plugin(tmp_path / "src", "1.0.0")).state == "failed"
    outcome = host.upgrade(plugin("1.1.0"))
    assert outcome.status == "upgraded"
    info = host.info("alpha")
    assert (info.state, info.reason, info.version) == ("enabled", None, "1.1.0")
    assert values(host) == ["alpha 1.1.0"]


def test_a_new_version_dropping_a_point_others_implement_is_refused(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    def declarer(version: str, points: dict[str, Any]) -> Path:
        body, fields = const_body('"base"')
        return write_plugin(tmp_path / "src" / f"base-{version}", wat_module(body, fields),
                            name="base", hooks=("run",), version=version,
                            extension_points=points)

    host.install(declarer("1.0.0", {"base.extend": {"version": "1.0.0"}}))
    body, fields = const_body('"ext"')
    host.install(write_plugin(tmp_path / "src" / "ext", wat_module(body, fields), name="ext",
                              hooks=("run",), implements={"base.extend": RUN}))
    with pytest.raises(plugbox.IncompatiblePointError,
                       match=r"'base\.extend', which ext implement.*no longer declares it"):
        host.upgrade(declarer("2.0.0", {}))
    assert host.info("base").version == "1.0.0" and host.store.journal() == []
    assert not (tmp_path / "state" / "plugins" / "base" / "2.0.0").exists()
    assert host.call("base.extend").values == ["ext"]


def test_kept_versions_are_pruned_to_keep_versions(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir, keep_versions=2) as h:
        h.start()
        h.install(plugin("1.0.0"))
        h.upgrade(plugin("1.1.0"))
        h.upgrade(plugin("1.2.0"))
        assert h.info("alpha").versions == ("1.2.0", "1.1.0")
        plugins = tmp_path / "state" / "plugins" / "alpha"
        assert sorted(p.name for p in plugins.iterdir()) == ["1.1.0", "1.2.0"]
        assert "pruned 1.0.0" in (h.audit("alpha", limit=1)[0].detail or "")
        with pytest.raises(plugbox.LifecycleError, match=r"1\.0\.0 is not kept"):
            h.rollback("alpha", to="1.0.0")
        # The active version is never pruned, whatever was active most recently.
        h.rollback("alpha")
        h.upgrade(plugin("1.3.0"))
        assert h.info("alpha").versions == ("1.3.0", "1.1.0")
        assert h.check_integrity() == []


def test_an_upgrade_or_rollback_that_would_break_a_dependent_is_refused(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0", name="base"))
    host.upgrade(plugin("1.5.0", name="base"))
    host.install(plugin("1.0.0", name="ext", requires={"base": ">=1.5,<2"}))
    with pytest.raises(plugbox.DependencyError,
                       match=r"upgrade 'base' 1\.5\.0 -> 2\.0\.0 is refused: enabled plugins "
                             r"ext could no longer start.*>=1\.5,<2") as err:
        host.upgrade(plugin("2.0.0", name="base"))
    assert err.value.plugin == "ext" and err.value.kind == "incompatible"
    with pytest.raises(plugbox.DependencyError, match=r"rollback 'base' 1\.5\.0 -> 1\.0\.0"):
        host.rollback("base")
    assert host.info("base").version == "1.5.0" and host.store.journal() == []
    # The new version's own requirements must be met too.
    with pytest.raises(plugbox.DependencyError, match=r"it could not start.*'ghost'"):
        host.upgrade(plugin("1.1.0", name="ext", requires={"ghost": ""}))
    assert host.upgrade(plugin("1.9.0", name="base")).status == "upgraded"


def test_a_plugin_waiting_for_a_requirement_is_upgraded_but_not_started(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0", name="ext", requires={"base": ""}), enable=False)
    with host.store.transaction() as tx:  # as the dependency handling records a waiting one
        tx.update_plugin("ext", enabled=True, state="failed",
                         reason="dependency missing: 'base' is not installed")
    outcome = host.upgrade(plugin("1.1.0", name="ext", requires={"base": ""}))
    assert outcome.status == "upgraded" and values(host) == []
    info = host.info("ext")
    assert (info.version, info.state) == ("1.1.0", "failed")
    assert info.reason is not None and info.reason.startswith("dependency missing")


# -- rollback --------------------------------------------------------------------------------


def test_rollback_to_the_previous_version_and_back(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0"))
    host.upgrade(plugin("1.1.0"))
    events = events_of(host)
    info = host.rollback("alpha", actor="ops")
    assert (info.version, info.state, info.warnings) == ("1.0.0", "enabled", ())
    assert values(host) == ["alpha 1.0.0"]
    assert [(e.kind, e.from_version, e.to_version, e.actor) for e in events] == [
        ("rolled-back", "1.1.0", "1.0.0", "ops")]
    entry = host.audit("alpha", limit=1)[0]
    assert (entry.action, entry.from_version, entry.to_version) == ("rollback", "1.1.0",
                                                                    "1.0.0")
    # The previous version is the one active before: a second rollback undoes the first.
    assert host.rollback("alpha").version == "1.1.0" and values(host) == ["alpha 1.1.0"]
    assert host.check_integrity() == []


def test_upgrading_again_to_a_version_rolled_back_from_reuses_its_files(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin("1.0.0"))
    host.upgrade(plugin("1.1.0"))
    host.rollback("alpha")
    outcome = host.upgrade(plugin("1.1.0"))
    assert outcome.status == "upgraded" and values(host) == ["alpha 1.1.0"]
    assert host.info("alpha").versions == ("1.1.0", "1.0.0") and host.check_integrity() == []
    host.rollback("alpha")
    with pytest.raises(plugbox.LifecycleError,
                       match=r"version 1\.1\.0 is kept in the managed store with a different "
                             r"module; give the new build a new version"):
        host.upgrade(plugin("1.1.0", text="rebuilt"))
    assert host.info("alpha").version == "1.0.0" and values(host) == ["alpha 1.0.0"]


def test_rollback_to_a_named_version_and_its_refusals(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0"))
    with pytest.raises(plugbox.LifecycleError, match="nothing to roll back to") as err:
        host.rollback("alpha")
    assert err.value.operation == "rollback"
    host.upgrade(plugin("1.1.0"))
    host.upgrade(plugin("1.2.0"))
    assert host.rollback("alpha", to="1.0.0").version == "1.0.0"
    assert values(host) == ["alpha 1.0.0"]
    with pytest.raises(plugbox.LifecycleError,
                       match=r"version 0\.5\.0 is not kept \(kept: 1\.0\.0, 1\.2\.0, 1\.1\.0\)"):
        host.rollback("alpha", to="0.5.0")
    with pytest.raises(plugbox.LifecycleError, match="is the active version already"):
        host.rollback("alpha", to="1.0.0")
    with pytest.raises(plugbox.LifecycleError, match="install it first"):
        host.rollback("ghost")
    host.pin("alpha")
    with pytest.raises(plugbox.LifecycleError, match=r"pinned at 1\.0\.0.*unpin"):
        host.rollback("alpha", to="1.2.0")
    assert values(host) == ["alpha 1.0.0"]


def test_rollback_across_a_data_version_change_warns_until_confirmed(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("1.0.0", data_version=1))
    host.upgrade(plugin("1.1.0", data_version=2))
    with pytest.raises(plugbox.LifecycleError, match="confirm=True") as err:
        host.rollback("alpha")
    warning = err.value.warning
    assert warning is not None and warning in str(err.value)
    assert "format 2" in warning and "format 1" in warning and "1.0.0" in warning
    assert host.info("alpha").version == "1.1.0" and values(host) == ["alpha 1.1.0"]
    info = host.rollback("alpha", confirm=True)
    assert info.version == "1.0.0" and info.warnings == (warning,)
    assert host.audit("alpha", limit=1)[0].detail == warning
    assert values(host) == ["alpha 1.0.0"]
    # Without a data format change there is nothing to confirm.
    host.upgrade(plugin("1.2.0", data_version=1))
    assert host.rollback("alpha", to="1.0.0").warnings == ()


def test_a_kept_version_that_fails_to_load_leaves_the_active_one_serving(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin("1.0.0"))
    host.upgrade(plugin("1.1.0"))
    kept = tmp_path / "state" / "plugins" / "alpha" / "1.0.0" / "plugin.wasm"
    kept.write_bytes(b"tampered")
    events = events_of(host)
    with pytest.raises(plugbox.VerificationError):
        host.rollback("alpha")
    assert host.info("alpha").version == "1.1.0" and values(host) == ["alpha 1.1.0"]
    assert events == []


# -- configuration ---------------------------------------------------------------------------


def test_configure_applies_defaults_and_swaps_the_running_plugin(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.install(config_plugin(tmp_path / "src"))
    assert values(host) == [{"top_n": 3}] and host.config_of("alpha") == {"top_n": 3}
    events = events_of(host)
    host.configure("alpha", {"label": "news"}, actor="ann")
    assert host.config_of("alpha") == {"label": "news", "top_n": 3}
    assert values(host) == [{"label": "news", "top_n": 3}]
    assert [(e.kind, e.from_version, e.to_version, e.actor) for e in events] == [
        ("config-changed", "1.0.0", "1.0.0", "ann")]
    entry = host.audit("alpha", limit=1)[0]
    assert entry.action == "configure" and entry.actor == "ann"
    assert entry.detail == 'revision 2: $.label: added "news"'
    history = host.config_history("alpha")
    assert [(r.revision, dict(r.config), r.actor) for r in history] == [
        (1, {"top_n": 3}, None), (2, {"label": "news", "top_n": 3}, "ann")]
    # The same configuration again changes nothing.
    host.configure("alpha", {"label": "news"})
    assert len(host.config_history("alpha")) == 2 and len(events) == 1


def test_an_invalid_configuration_is_never_applied_and_names_the_json_path(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.install(config_plugin(tmp_path / "src"), config={"top_n": 5})
    events = events_of(host)
    for bad, path in (({"top_n": 0}, "$.top_n"), ({"top_n": 7, "label": "x" * 31}, "$.label"),
                      ({"nope": 1}, "$"), ({"top_n": "ten"}, "$.top_n")):
        with pytest.raises(plugbox.ConfigError) as err:
            host.configure("alpha", bad)
        assert err.value.json_path == path and err.value.plugin == "alpha"
        assert path in str(err.value) and "nothing of it was applied" in str(err.value)
    assert host.config_of("alpha") == {"top_n": 5} and values(host) == [{"top_n": 5}]
    assert len(host.config_history("alpha")) == 1 and events == []
    with pytest.raises(plugbox.LifecycleError, match="install it first"):
        host.configure("ghost", {})


def test_configuring_a_disabled_plugin_applies_at_the_next_enable(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.install(config_plugin(tmp_path / "src"))
    host.disable("alpha")
    host.configure("alpha", {"top_n": 4})
    assert values(host) == [] and host.config_of("alpha") == {"top_n": 4}
    host.enable("alpha")
    assert values(host) == [{"top_n": 4}]


def test_a_configuration_the_plugin_refuses_on_init_is_not_applied(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.install(config_plugin(tmp_path / "src", max_config=40), config={"label": "ok"})
    with pytest.raises(plugbox.ConfigError, match="on-init failed.*old configuration stays"):
        host.configure("alpha", {"label": "a label far too long for it"})
    assert host.config_of("alpha") == {"label": "ok", "top_n": 3}
    assert values(host) == [{"label": "ok", "top_n": 3}]
    assert host.audit("alpha", limit=1)[0].action == "configure-refused"


def test_a_call_in_flight_keeps_the_old_configuration(host: plugbox.PluginHost,
                                                      tmp_path: Path) -> None:
    release, entered = threading.Event(), threading.Event()

    def block(value: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        return None

    host.function("block", block)
    host.install(config_plugin(tmp_path / "src", block=True), config={"label": "old"})
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(values(host)))
    thread.start()
    try:
        assert entered.wait(30)
        host.configure("alpha", {"label": "new"})
        # Calls after the change see the new configuration, while the old call still runs.
        assert values(host) == [{"label": "new", "top_n": 3}]
        assert thread.is_alive()
    finally:
        release.set()
        thread.join(30)
    assert results == [[{"label": "old", "top_n": 3}]]


def test_rollback_config_to_the_previous_and_to_a_named_revision(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.install(config_plugin(tmp_path / "src"))
    with pytest.raises(plugbox.LifecycleError, match="no configuration before"):
        host.rollback_config("alpha")
    host.configure("alpha", {"top_n": 5})
    host.configure("alpha", {"top_n": 9})
    events = events_of(host)
    host.rollback_config("alpha", actor="ops")
    assert host.config_of("alpha") == {"top_n": 5} and values(host) == [{"top_n": 5}]
    entry = host.audit("alpha", limit=1)[0]
    assert (entry.action, entry.actor) == ("config-rollback", "ops")
    assert entry.detail == "revision 4 (revision 2 again): $.top_n: 9 -> 5"
    assert [(e.kind, e.reason) for e in events] == [("config-changed",
                                                     "revision 4, revision 2 again")]
    host.rollback_config("alpha", 1)
    assert host.config_of("alpha") == {"top_n": 3} and values(host) == [{"top_n": 3}]
    assert [r.revision for r in host.config_history("alpha")] == [1, 2, 3, 4, 5]
    with pytest.raises(plugbox.LifecycleError, match=r"no such revision \(revisions: 1, 2"):
        host.rollback_config("alpha", 17)
    with pytest.raises(plugbox.LifecycleError, match="current configuration already"):
        host.rollback_config("alpha", 5)
    with pytest.raises(plugbox.UsageError, match="positive int"):
        host.rollback_config("alpha", 0)


def test_secret_values_never_reach_audit_logs_errors_or_redacted_reads(
        host: plugbox.PluginHost, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret, other = "tk-hunter2-secret", "tk-second-secret"
    events = events_of(host)
    with caplog.at_level(logging.DEBUG, logger="plugbox"):
        host.install(config_plugin(tmp_path / "src"), config={"token": secret})
        host.configure("alpha", {"token": other, "label": "x"})
        with pytest.raises(plugbox.ConfigError) as err:
            host.configure("alpha", {"token": "not-a-token-value"})
        host.rollback_config("alpha")
    assert "not-a-token-value" not in str(err.value) and err.value.json_path == "$.token"
    assert host.config_of("alpha") == {"token": secret, "top_n": 3}  # the plugin gets it
    assert host.config_of("alpha", redacted=True) == {"token": REDACTED, "top_n": 3}
    assert [dict(r.config)["token"] for r in host.config_history("alpha", redacted=True)] == [
        REDACTED] * 3
    printed = [caplog.text, *(json.dumps([a.detail, a.action]) for a in host.audit()),
               *(repr(e) for e in events), repr(host.info("alpha").to_json())]
    for text in printed:
        assert secret not in text and other not in text
    assert "$.token: changed (secret)" in (host.audit("alpha", limit=1)[0].detail or "")


def test_a_secret_stays_hidden_after_an_upgrade_whose_schema_forgets_it(
        host: plugbox.PluginHost, tmp_path: Path) -> None:
    host.install(config_plugin(tmp_path / "src"), config={"token": "tk-kept-secret"})
    host.upgrade(config_plugin(tmp_path / "src", "1.1.0", config_schema={"type": "object"}))
    assert host.config_of("alpha")["token"] == "tk-kept-secret"
    assert host.config_of("alpha", redacted=True)["token"] == REDACTED
    assert all(dict(r.config)["token"] == REDACTED
               for r in host.config_history("alpha", redacted=True))


# -- crash consistency -----------------------------------------------------------------------


def test_an_interrupted_upgrade_is_undone_by_the_next_start(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    with new_host(state, cache_dir) as h:
        h.start()
        h.install(plugin("1.0.0"))

        def crash(*args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt  # as if killed after staging: nothing cleans up
        monkeypatch.setattr(h, "_activate_upgrade", crash)
        monkeypatch.setattr(h, "_abandon", lambda op, name: None)
        with pytest.raises(KeyboardInterrupt):
            h.upgrade(plugin("1.1.0"))
        assert (state / "plugins" / "alpha" / "1.1.0").is_dir()
        assert [e.op for e in h.store.journal()] == ["upgrade"]
    with new_host(state, cache_dir) as h:
        report = h.start()
        assert [(r.op, r.plugin, r.outcome) for r in report.recovered] == [
            ("upgrade", "alpha", "undone")]
        assert "alpha/1.1.0" in report.swept
        assert h.check_integrity() == [] and values(h) == ["alpha 1.0.0"]
        assert h.upgrade(plugin("1.1.0")).status == "upgraded"


def test_an_upgrade_replaces_files_an_interrupted_one_left(
        host: plugbox.PluginHost, plugin: Callable[..., Path], tmp_path: Path) -> None:
    host.install(plugin("1.0.0"))
    leftover = tmp_path / "state" / "plugins" / "alpha" / "1.1.0"
    shutil.copytree(plugin("1.1.0", text="half-done"), leftover)
    assert host.upgrade(plugin("1.1.0", text="the real one")).status == "upgraded"
    assert values(host) == ["the real one"] and host.check_integrity() == []


def test_files_of_pruned_versions_left_by_a_crash_are_swept(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    with new_host(state, cache_dir, keep_versions=1) as h:
        h.start()
        h.install(plugin("1.0.0"))
        monkeypatch.setattr(h, "_sweep_plugin", lambda name: [])  # killed after the commit
        assert h.upgrade(plugin("1.1.0")).status == "upgraded"
        assert (state / "plugins" / "alpha" / "1.0.0").is_dir()
        assert h.check_integrity() == ["unrecorded directory alpha/1.0.0"]
    with new_host(state, cache_dir, keep_versions=1) as h:
        report = h.start()
        assert "alpha/1.0.0" in report.swept and h.check_integrity() == []
        assert values(h) == ["alpha 1.1.0"]


def test_upgrade_rollback_and_config_survive_a_restart(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    state = tmp_path / "state"
    with new_host(state, cache_dir) as h:
        h.start()
        h.install(config_plugin(tmp_path / "src", "1.0.0"))
        h.upgrade(config_plugin(tmp_path / "src", "1.1.0"))
        h.upgrade(config_plugin(tmp_path / "src", "1.2.0"))
        h.rollback("alpha", to="1.1.0")
        h.configure("alpha", {"top_n": 8})
    with new_host(state, cache_dir) as h:
        assert h.start().loaded == ("alpha",)
        info = h.info("alpha")
        assert info.version == "1.1.0" and info.versions == ("1.1.0", "1.2.0", "1.0.0")
        assert values(h) == [{"top_n": 8}]
        assert h.rollback("alpha").version == "1.2.0"


# -- a real Rust sample ----------------------------------------------------------------------


@SQLITE_ONLY
def test_a_rust_plugin_is_upgraded_configured_and_rolled_back(
        tmp_path: Path, cache_dir: Path, rust_plugins: dict[str, Path]) -> None:
    def version(v: str) -> Path:
        """The built sample as version ``v``, a module of its own (a custom section naming
        the version appended), its sha256 recomputed as write_plugin does."""
        target = tmp_path / "src" / f"word-stats-{v}"
        shutil.copytree(rust_plugins["word-stats"], target)
        manifest = json.loads((target / "plugbox.json").read_text())
        module = target / manifest["module"]["path"]
        section = b"\x07version" + v.encode()
        data = module.read_bytes() + b"\x00" + bytes([len(section)]) + section
        module.write_bytes(data)
        manifest["module"]["sha256"] = hashlib.sha256(data).hexdigest()
        manifest.update(version=v, implements={"text.stats": {"hook": "text.stats"}})
        (target / "plugbox.json").write_text(json.dumps(manifest, indent=2))
        return target

    text = {"text": "b a b c b a d"}
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as h:
        h.extension_point("text.stats", version="1.0.0", mode="first")
        h.start()
        h.install(version("0.1.0"))
        first = h.get("word-stats").plugin.manifest.module_sha256  # type: ignore[union-attr]
        before = h.call("text.stats", text).value
        seen: list[Any] = []
        stop, warmed = threading.Event(), threading.Event()

        def caller() -> None:
            while not stop.is_set():
                seen.append(h.call("text.stats", text).to_json())
                warmed.set()

        thread = threading.Thread(target=caller)
        thread.start()
        try:
            assert warmed.wait(30)
            outcome = h.upgrade(version("0.2.0"))
            h.configure("word-stats", {"top_n": 1})
        finally:
            stop.set()
            thread.join(30)
        assert outcome.status == "upgraded" and h.info("word-stats").version == "0.2.0"
        assert h.get("word-stats").plugin.manifest.module_sha256 != first  # type: ignore[union-attr]
        assert all(not s["failures"] and s["value"] is not None for s in seen)
        after = h.call("text.stats", text).value
        assert after != before and len(json.dumps(after)) < len(json.dumps(before))
        with pytest.raises(plugbox.ConfigError) as err:
            h.configure("word-stats", {"top_n": 0})
        assert err.value.json_path == "$.top_n"
        assert h.rollback("word-stats").version == "0.1.0"
        assert h.call("text.stats", text).value == after  # the config stays
        assert h.check_integrity() == []


# -- a real Python sample --------------------------------------------------------------------


@pytest.fixture(scope="module")
def py_echo() -> Path:
    """The Python echo sample built with componentize-py (cached with conftest's
    built_samples under .build/pytest-pybuild while its sources are unchanged)."""
    from plugbox.authoring import _pybuild
    from tests.conftest import REPO

    module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / "echo",
                                          out_dir=REPO / ".build" / "pytest-pybuild" / "py-echo")
    return module.parent


@SQLITE_ONLY
def test_a_python_plugin_is_upgraded_under_load_and_rolled_back(
        tmp_path: Path, py_echo: Path) -> None:
    def version(v: str) -> Path:
        target = tmp_path / "src" / f"py-echo-{v}"
        shutil.copytree(py_echo, target)
        manifest = json.loads((target / "plugbox.json").read_text())
        manifest.update(version=v, implements={"text.echo": {"hook": "echo"}})
        (target / "plugbox.json").write_text(json.dumps(manifest, indent=2))
        return target

    # Compiling the component takes most of the test: its compiled form is kept between runs
    # beside the build (the cache checks what it hands out).
    compiled = py_echo.parent / "compiled-cache"
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": compiled}) as h:
        h.extension_point("text.echo", version="1.0.0", payload="bytes")
        h.start()
        h.install(version("0.1.0"))
        seen: list[Any] = []
        stop, warmed = threading.Event(), threading.Event()

        def caller() -> None:
            while not stop.is_set():
                result = h.call("text.echo", b"ping")
                seen.append((result.values, [str(f.error) for f in result.failures]))
                warmed.set()

        thread = threading.Thread(target=caller)
        thread.start()
        try:
            assert warmed.wait(60)
            outcome = h.upgrade(version("0.2.0"))
            h.configure("py-echo", {"mode": "loud"})
        finally:
            stop.set()
            thread.join(60)
        assert outcome.status == "upgraded"
        assert seen and all(s == ([b"ping"], []) for s in seen), seen[:3]
        assert h.get("py-echo").plugin.version == "0.2.0"  # type: ignore[union-attr]
        assert h.rollback("py-echo").version == "0.1.0"
        assert h.get("py-echo").plugin.version == "0.1.0"  # type: ignore[union-attr]
        assert h.call("text.echo", b"pong").values == [b"pong"]
        assert h.check_integrity() == []
