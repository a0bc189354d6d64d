"""Dependencies and conflicts in the plugin lifecycle (issue 9 §4): start-up and on-init order
follow the dependency graph, cycles and conflicts are refused naming what is at stake, a
missing or incompatible requirement leaves the dependent ``failed`` until it is met, enabling
enables what a plugin requires, and disabling or uninstalling what enabled plugins require is
refused unless cascaded. Small WAT plugins (their on-init logs, so its order is observable)
and one real Rust sample."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox import DependencyError
from tests.conftest import const_body, wat_module, write_plugin
from tests.test_lifecycle_core import _BACKEND, SQLITE_ONLY, backend, new_host, values

LOG_IMPORT = '(import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))'




def make_plugin(directory: Path, name: str, version: str, *, init: str = "log",
                **manifest: Any) -> Path:
    """A WAT plugin ``name`` ``version`` implementing ``text.echo`` by returning its name and
    version; its on-init logs ``init <name>`` (``init="log"``) or traps (``init="trap"``)."""
    body, fields = const_body(json.dumps(f"{name} {version}"))
    message = f"init {name}".encode()
    escaped = "".join(f"\\{b:02x}" for b in message)
    on_init = ("unreachable" if init == "trap" else
               f"(call $log (i32.const 2) (i32.const 2048) (i32.const {len(message)}))"
               "\n    (i32.store8 (i32.const 8) (i32.const 0)) (i32.const 8)")
    module = "\n".join([LOG_IMPORT, fields, f'  (data (i32.const 2048) "{escaped}")',
                        f'  (func (export "on-init") (param i32 i32) (result i32)\n'
                        f'    {on_init})'])
    manifest.setdefault("implements", {"text.echo": {"hook": "run"}})
    manifest.setdefault("permissions", {"log": True})
    return write_plugin(directory / f"{name}-{version}", wat_module(body, module), name=name,
                        hooks=("run",), version=version, **manifest)


@pytest.fixture
def plugin(tmp_path: Path) -> Callable[..., Path]:
    def build(name: str, version: str = "1.0.0", **manifest: Any) -> Path:
        return make_plugin(tmp_path / "src", name, version, **manifest)
    return build


@pytest.fixture
def host(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        yield h


class Inits(logging.Handler):
    """The plugins' on-init log records, in the order they were written."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("init "):
            self.names.append(message.split(" ", 1)[1])


@pytest.fixture
def inits() -> Iterator[Inits]:
    handler = Inits()
    logger = logging.getLogger("plugbox.plugin")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def events_of(host: plugbox.PluginHost) -> list[plugbox.LifecycleEvent]:
    events: list[plugbox.LifecycleEvent] = []
    host.subscribe_lifecycle(events.append)
    return events


def states(host: plugbox.PluginHost) -> dict[str, tuple[str, bool]]:
    return {i.name: (i.state, i.enabled) for i in host.installed()}


# -- start-up and on-init order ----------------------------------------------------------------


def test_start_and_on_init_order_follow_the_dependency_graph(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path], inits: Inits) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        # Installed dependents first: each waits (failed, enabled) for what it requires.
        h.install(plugin("alone"))
        top = h.install(plugin("top", requires={"mid": ">=1"}))
        assert (top.state, top.enabled) == ("failed", True)
        assert top.reason is not None and top.reason.startswith("dependency missing: ")
        h.install(plugin("user", optional={"helper": ""}))
        mid = h.install(plugin("mid", requires={"base": ""}))
        assert mid.state == "failed" and "'base'" in (mid.reason or "")
        h.install(plugin("helper"))
        inits.names.clear()
        h.install(plugin("base"))  # what mid waits for: mid, then top start with it
        assert inits.names == ["base", "mid", "top"]
        assert all(state == ("enabled", True) for state in states(h).values())
    inits.names.clear()
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        # Install order is alone, top, user, mid, helper, base; each plugin starts after
        # what it requires, and after the optional plugins it uses.
        assert report.loaded == ("alone", "helper", "user", "base", "mid", "top")
        assert inits.names == list(report.loaded)
        assert report.ok and report.failed == {}
        assert values(h) == [f"{n} 1.0.0" for n in report.loaded]  # dispatch: load order


def test_a_point_declared_by_a_requirement_is_there_when_its_user_starts(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    point = {"base.point": {"version": "1.0.0", "mode": "each"}}
    base = plugin("base", abi="1.1", extension_points=point)
    app = plugin("app", requires={"base": ""}, implements={"base.point": {"hook": "run"}})
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(base)
        h.install(app)
        # Reinstall base: it is now installed after app, so install order would load app
        # first, before the point it implements exists.
        assert h.uninstall("base", cascade=True) == ["app", "base"]
        h.install(base)
        assert h.enable("app") == ["app"]
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        assert report.loaded == ("base", "app") and report.ok, report.failed
        assert [i.name for i in h.installed()] == ["app", "base"]
        assert h.call("base.point", {}).values == ["app 1.0.0"]


def test_an_optional_dependency_not_there_is_not_waited_for(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    info = host.install(plugin("user", optional={"helper": ">=2"}))
    assert info.state == "enabled"
    host.install(plugin("helper", version="1.0.0"))  # outside the specifier: not used
    out = host.dependencies("user")
    [entry] = out["optional"]
    assert entry["installed"] == "1.0.0" and entry["reason"] == "not used: 1.0.0 does not match"
    # An optional user does not hold its optional dependency.
    assert host.disable("helper") == ["helper"]
    assert host.info("user").state == "enabled"


# -- cycles ------------------------------------------------------------------------------------


def test_a_cycle_is_refused_naming_the_cycle(host: plugbox.PluginHost,
                                             plugin: Callable[..., Path]) -> None:
    host.install(plugin("a", requires={"b": ""}))
    assert host.info("a").reason.startswith("dependency missing: ")  # type: ignore[union-attr]
    info = host.install(plugin("b", requires={"a": ""}))
    assert (info.state, info.enabled) == ("failed", False)
    assert info.reason is not None and info.reason.startswith("dependency cycle: ")
    assert "'b' -> 'a' -> 'b'" in info.reason and "remove one of" in info.reason
    with pytest.raises(DependencyError, match=r"enable 'b' refused.*'b' -> 'a' -> 'b'") as err:
        host.enable("b")
    assert err.value.kind == "cycle" and err.value.plugins == ("b", "a", "b")
    assert host.info("b").enabled is False and values(host) == []


def test_an_optional_edge_closing_a_cycle_is_refused_at_enable(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("b", optional={"a": ""}))
    host.install(plugin("a", requires={"b": ""}), enable=False)
    with pytest.raises(DependencyError, match="in a cycle") as err:
        host.enable("a")
    assert err.value.kind == "cycle" and set(err.value.plugins) == {"a", "b"}
    assert states(host) == {"b": ("enabled", True), "a": ("installed", False)}


@SQLITE_ONLY
def test_a_cycle_reaching_start_fails_its_members_and_the_others_start(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin("a"))
        h.install(plugin("b", requires={"a": ""}))
        h.install(plugin("c"))
    # As if an upgrade elsewhere had given a a requirement on b: edit the recorded manifest.
    db = sqlite3.connect(tmp_path / "state" / "lifecycle.sqlite3")
    (raw,) = db.execute("SELECT manifest_json FROM lc_versions WHERE name = 'a'").fetchone()
    db.execute("UPDATE lc_versions SET manifest_json = ? WHERE name = 'a'",
               (json.dumps({**json.loads(raw), "requires": {"b": ""}}),))
    db.commit()
    db.close()
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        assert report.loaded == ("c",)
        assert set(report.failed) == {"a", "b"}
        for name in "ab":
            assert report.failed[name].startswith("dependency cycle: plugins ")
            assert "in a cycle" in report.failed[name]
            assert h.info(name).reason == report.failed[name]
        assert "'a' -> 'b' -> 'a'" in report.failed["a"]


# -- missing, incompatible, failed requirements ------------------------------------------------


def test_a_missing_requirement_fails_the_dependent_until_it_is_installed(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        events = events_of(h)
        info = h.install(plugin("app", requires={"base": ">=1.0"}))
        assert (info.state, info.enabled, info.loaded) == ("failed", True, False)
        assert info.reason == (
            "dependency missing: plugin 'app' requires 'base' (>=1.0), which is not "
            "installed; install 'base' in a version matching >=1.0, or remove 'app'")
        assert [(e.kind, e.plugin) for e in events] == [("installed", "app"),
                                                        ("failed", "app")]
        assert events[-1].reason == info.reason
        h.install(plugin("other"))
        assert values(h) == ["other 1.0.0"]
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        assert report.loaded == ("other",)
        assert report.failed == {"app": info.reason}
        events = events_of(h)
        h.install(plugin("base"))
        assert states(h)["app"] == ("enabled", True) and h.info("app").reason is None
        assert sorted(values(h)) == ["app 1.0.0", "base 1.0.0", "other 1.0.0"]
        assert [(e.kind, e.plugin, e.reason) for e in events] == [
            ("installed", "base", None), ("enabled", "base", None),
            ("enabled", "app", "its requirements are met now")]
        assert h.audit("app", limit=1)[0].detail == "its requirements are met now"
    with new_host(tmp_path / "state", cache_dir) as h:
        assert h.start().loaded == ("other", "base", "app")


def test_enable_of_a_plugin_missing_a_requirement_records_it_waiting(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("app", requires={"lib": ""}), enable=False)
    host.install(plugin("lib", requires={"base": ">=2"}), enable=False)
    with pytest.raises(DependencyError) as err:
        host.enable("app")
    assert err.value.kind == "missing" and err.value.dependency == "base"
    assert str(err.value).startswith("enable 'app': plugin 'lib' requires 'base' (>=2), "
                                     "which is not installed")
    assert "'app' is recorded enabled, in state failed" in str(err.value)
    assert states(host) == {"app": ("failed", True), "lib": ("installed", False)}
    # Installing base (disabled) is not enough; enabling it is: lib and app follow.
    host.install(plugin("base", version="2.1.0"), enable=False)
    assert host.info("app").state == "failed"
    assert host.enable("base") == ["base", "lib", "app"]
    assert values(host) == ["base 2.1.0", "lib 1.0.0", "app 1.0.0"]


def test_an_incompatible_version_is_the_reason_and_names_both_versions(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin("base", version="1.4.0"))
        info = h.install(plugin("app", requires={"base": ">=2,<3"}))
        assert info.state == "failed" and info.enabled
        assert info.reason == (
            "dependency incompatible: plugin 'app' requires 'base' >=2,<3, but 'base' 1.4.0 is "
            "installed; upgrade 'base' to a version matching >=2,<3, or install a version of "
            "'app' that accepts 'base' 1.4.0")
        with pytest.raises(DependencyError, match=r"^enable 'app': .*'base' 1\.4\.0 is "
                                                  r"installed") as err:
            h.enable("app")
        assert (err.value.kind, err.value.dependency, err.value.specifier) == (
            "incompatible", "base", ">=2,<3")
        assert values(h) == ["base 1.4.0"]
        deps = h.dependencies("app")
        [req] = deps["requires"]
        assert (req["name"], req["installed"], req["ok"], req["state"]) == (
            "base", "1.4.0", False, "enabled")
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        assert report.loaded == ("base",)
        assert report.failed["app"].startswith("dependency incompatible: ")


def test_a_requirement_failing_on_init_fails_its_dependents_with_the_reason(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin("base"))
        h.install(plugin("app", requires={"base": ""}))
        h.install(plugin("soft", optional={"base": ""}))
    # base's files are replaced by a version whose on-init traps (same version, new module:
    # refused as tampered at start, which is the same for its dependents as a failed load).
    managed = tmp_path / "state" / "plugins" / "base" / "1.0.0"
    broken = plugin("base", version="1.0.0", init="trap")
    shutil.copy(broken / "plugin.wasm", managed / "plugin.wasm")
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()
        assert report.loaded == ("soft",)
        assert report.failed["base"].startswith("did not verify: ")
        assert report.failed["app"].startswith(
            "dependency failed: plugin 'app' requires 'base', which cannot start: did not "
            "verify: ")
        assert h.info("app").reason == report.failed["app"]


def test_enable_names_a_requirement_that_fails_to_start(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("base", init="trap"), enable=False)
    host.install(plugin("app", requires={"base": ""}), enable=False)
    with pytest.raises(DependencyError, match=r"enable 'app': its requirement 'base' could "
                                              r"not be started \(on-init failed") as err:
        host.enable("app")
    assert err.value.kind == "failed" and err.value.dependency == "base"
    assert isinstance(err.value.__cause__, plugbox.PlugboxError)
    assert states(host) == {"base": ("failed", True), "app": ("failed", True)}
    assert host.info("app").reason.startswith(  # type: ignore[union-attr]
        "dependency failed: plugin 'app' requires 'base', which cannot start: on-init failed")


# -- enable pulls requirements -----------------------------------------------------------------


def test_enable_enables_what_it_requires_first_and_says_which(
        host: plugbox.PluginHost, plugin: Callable[..., Path], inits: Inits) -> None:
    host.install(plugin("base"), enable=False)
    host.install(plugin("lib", requires={"base": ">=1"}), enable=False)
    host.install(plugin("extra"), enable=False)
    host.install(plugin("app", requires={"lib": ""}, optional={"extra": ""}), enable=False)
    events = events_of(host)
    inits.names.clear()
    assert host.enable("app", actor="ann") == ["base", "lib", "app"]
    assert inits.names == ["base", "lib", "app"]
    assert [(e.kind, e.plugin, e.reason, e.actor) for e in events] == [
        ("enabled", "base", "required by 'app'", "ann"),
        ("enabled", "lib", "required by 'app'", "ann"),
        ("enabled", "app", None, "ann")]
    assert [(a.action, a.plugin, a.detail) for a in host.audit(limit=3)] == [
        ("enable", "app", None), ("enable", "lib", "required by 'app'"),
        ("enable", "base", "required by 'app'")]
    assert states(host)["extra"] == ("installed", False)  # optional: never enabled for it
    assert values(host) == ["base 1.0.0", "lib 1.0.0", "app 1.0.0"]
    # Enabled requirements are not enabled again.
    host.disable("app")
    assert host.enable("app") == ["app"]


# -- disable and uninstall of what others require ----------------------------------------------


@pytest.fixture
def stack(host: plugbox.PluginHost, plugin: Callable[..., Path]) -> plugbox.PluginHost:
    """base <- lib <- app, soft uses base optionally, off requires base but is disabled."""
    host.install(plugin("base"))
    host.install(plugin("lib", requires={"base": ">=1"}))
    host.install(plugin("app", requires={"lib": ""}))
    host.install(plugin("soft", optional={"base": ""}))
    host.install(plugin("off", requires={"base": ""}), enable=False)
    return host


def test_disable_of_a_required_plugin_is_refused_naming_the_dependents(
        stack: plugbox.PluginHost) -> None:
    before = values(stack)
    generation = stack.store.generation()
    with pytest.raises(DependencyError) as err:
        stack.disable("base")
    assert str(err.value) == (
        "disable 'base' refused: enabled plugins require it: 'app' (through 'lib'), 'lib' "
        "(requires 'base' >=1); disable them first, or pass cascade=True to disable 'base' "
        "and disable them too")
    assert (err.value.kind, err.value.plugin, err.value.plugins) == (
        "required", "base", ("app", "lib"))
    assert values(stack) == before and stack.store.generation() == generation
    assert stack.disable("app") == ["app"]  # nothing requires app


def test_disable_with_cascade_disables_the_dependents_first_and_says_which(
        stack: plugbox.PluginHost) -> None:
    events = events_of(stack)
    assert stack.disable("base", cascade=True, actor="bob") == ["app", "lib", "base"]
    assert values(stack) == ["soft 1.0.0"]  # the optional user keeps running
    assert states(stack) == {"base": ("disabled", False), "lib": ("disabled", False),
                             "app": ("disabled", False), "soft": ("enabled", True),
                             "off": ("installed", False)}
    assert [(e.kind, e.plugin, e.reason) for e in events] == [
        ("disabled", "app", "requires 'base' (cascade)"),
        ("disabled", "lib", "requires 'base' (cascade)"),
        ("disabled", "base", None)]
    assert [(a.plugin, a.detail, a.actor) for a in stack.audit(limit=3)] == [
        ("base", None, "bob"), ("lib", "requires 'base' (cascade)", "bob"),
        ("app", "requires 'base' (cascade)", "bob")]
    # And back: enabling app enables what it requires again.
    assert stack.enable("app") == ["base", "lib", "app"]


def test_uninstall_of_a_required_plugin_is_refused_unless_cascaded(
        stack: plugbox.PluginHost, tmp_path: Path) -> None:
    with pytest.raises(DependencyError, match=r"^uninstall 'base' refused: enabled plugins "
                                              r"require it: 'app' \(through 'lib'\), 'lib' .*"
                                              r"disable or uninstall them first, or pass "
                                              r"cascade=True") as err:
        stack.uninstall("base")
    assert err.value.plugins == ("app", "lib")
    assert stack.info("base").state == "enabled"
    events = events_of(stack)
    assert stack.uninstall("base", cascade=True) == ["app", "lib", "base"]
    assert [(e.kind, e.plugin) for e in events] == [
        ("disabled", "app"), ("disabled", "lib"), ("uninstalled", "base")]
    assert values(stack) == ["soft 1.0.0"]
    assert "base" not in states(stack) and stack.check_integrity() == []
    with pytest.raises(DependencyError, match="'base'.*not installed"):
        stack.enable("app")


def test_a_failed_dependent_does_not_hold_its_requirement(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("base"))
    host.install(plugin("app", requires={"base": ">=2"}))  # failed: incompatible
    assert host.disable("base") == ["base"]
    assert states(host)["app"] == ("failed", True)


# -- conflicts ---------------------------------------------------------------------------------


def test_a_conflict_refuses_enabling_naming_the_conflicting_plugin(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("old-auth", version="2.5.0"))
    info = host.install(plugin("new-auth", conflicts={"old-auth": "<3"}))
    assert (info.state, info.enabled) == ("failed", False)
    assert info.reason == (
        "dependency conflict: plugin 'new-auth' conflicts with 'old-auth' <3 ($.conflicts of "
        "'new-auth'), and 'old-auth' 2.5.0 is enabled; disable 'old-auth' first, or use a "
        "version of 'old-auth' outside <3")
    with pytest.raises(DependencyError, match=r"^enable 'new-auth' refused \(nothing was "
                                              r"changed\): .*disable 'old-auth' first") as err:
        host.enable("new-auth")
    assert (err.value.kind, err.value.dependency, err.value.specifier) == (
        "conflict", "old-auth", "<3")
    assert values(host) == ["old-auth 2.5.0"]
    host.disable("old-auth")
    assert host.enable("new-auth") == ["new-auth"]
    # The other side: old-auth may not come back beside new-auth, though only new-auth
    # declares the conflict; the running plugin is never the one stopped.
    with pytest.raises(DependencyError, match=r"enable 'old-auth' refused.*'new-auth' "
                                              r"\(enabled\) conflicts with 'old-auth' <3"):
        host.enable("old-auth")
    assert values(host) == ["new-auth 1.0.0"]


def test_a_conflict_of_a_requirement_refuses_the_whole_enable(
        host: plugbox.PluginHost, plugin: Callable[..., Path]) -> None:
    host.install(plugin("legacy"))
    host.install(plugin("modern", conflicts={"legacy": ""}), enable=False)
    host.install(plugin("app", requires={"modern": ""}), enable=False)
    with pytest.raises(DependencyError, match="'modern' conflicts with 'legacy'"):
        host.enable("app")
    assert states(host) == {"legacy": ("enabled", True), "modern": ("installed", False),
                            "app": ("installed", False)}


# -- dependencies(name) ------------------------------------------------------------------------


def test_dependencies_describes_both_directions_with_states(
        stack: plugbox.PluginHost) -> None:
    out = stack.dependencies("base")
    json.dumps(out)
    assert (out["name"], out["version"], out["state"]) == ("base", "1.0.0", "enabled")
    assert out["required_by"] == ["app", "lib"]
    assert [(d["name"], d["kind"], d["specifier"], d["state"], d["ok"])
            for d in out["dependents"]] == [
        ("lib", "requires", ">=1", "enabled", True),
        ("off", "requires", "", "installed", True),
        ("soft", "optional", "", "enabled", True)]
    [req] = stack.dependencies("lib")["requires"]
    assert req == {"name": "base", "specifier": ">=1", "installed": "1.0.0",
                   "enabled": True, "state": "enabled", "ok": True, "reason": None}
    with pytest.raises(plugbox.LifecycleError, match="install it first"):
        stack.dependencies("ghost")


# -- a real Rust sample ------------------------------------------------------------------------


def _rust(src: Path, dst: Path, name: str, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "plugbox.json").read_text())
    doc.update(name=name, **changes)
    (dst / "plugbox.json").write_text(json.dumps(doc))
    return dst


@SQLITE_ONLY
def test_rust_plugins_wait_for_start_after_and_cascade_with_what_they_require(
        tmp_path: Path, cache_dir: Path, rust_plugins: dict[str, Path]) -> None:
    echo = {"text.echo": {"hook": "echo"}}
    version = json.loads((rust_plugins["echo"] / "plugbox.json").read_text())["version"]
    app = _rust(rust_plugins["echo"], tmp_path / "app", "rust-app", implements=echo,
                requires={"rust-base": f">={version}"})
    base = _rust(rust_plugins["echo"], tmp_path / "base", "rust-base", implements=echo)
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        info = h.install(app)
        assert info.state == "failed"
        assert info.reason is not None and info.reason.startswith(
            f"dependency missing: plugin 'rust-app' requires 'rust-base' (>={version})")
        assert h.call("text.echo", "hi").values == []
        h.install(base)
        assert h.info("rust-app").state == "enabled"
        assert h.call("text.echo", "hi").values == ["hi", "hi"]
        with pytest.raises(DependencyError, match="'rust-app' \\(requires 'rust-base'"):
            h.disable("rust-base")
    with new_host(tmp_path / "state", cache_dir) as h:
        assert h.start().loaded == ("rust-base", "rust-app")
        assert h.disable("rust-base", cascade=True) == ["rust-app", "rust-base"]
        assert h.call("text.echo", "hi").values == []


# -- install, safe mode, restarts --------------------------------------------------------------


def test_install_enables_what_the_plugin_requires(host: plugbox.PluginHost,
                                                  plugin: Callable[..., Path]) -> None:
    host.install(plugin("base"), enable=False)
    events = events_of(host)
    info = host.install(plugin("app", requires={"base": ""}), actor="ann")
    assert (info.state, info.loaded) == ("enabled", True)
    assert [(e.kind, e.plugin, e.reason) for e in events] == [
        ("installed", "app", None), ("enabled", "base", "required by 'app'"),
        ("enabled", "app", None)]
    assert [(a.action, a.plugin) for a in host.audit(limit=3)] == [
        ("enable", "app"), ("enable", "base"), ("install", "app")]
    assert values(host) == ["base 1.0.0", "app 1.0.0"]


def test_a_refused_conflict_stays_refused_after_a_restart(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path]) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin("running", conflicts={"newcomer": ""}))
        events = events_of(h)
        info = h.install(plugin("newcomer"))
        assert (info.state, info.enabled) == ("failed", False)
        assert info.reason is not None and info.reason.startswith(
            "dependency conflict: plugin 'running' (enabled) conflicts with 'newcomer'")
        # Every version conflicts: the only fix is to disable one.
        assert info.reason.endswith("disable 'running' first"), info.reason
        assert [(e.kind, e.plugin) for e in events] == [("installed", "newcomer"),
                                                        ("failed", "newcomer")]
    with new_host(tmp_path / "state", cache_dir) as h:
        report = h.start()  # the running plugin (which declared it) is not the one stopped
        assert report.loaded == ("running",) and report.skipped == ("newcomer",)


def test_safe_mode_records_the_requirements_enabled_and_loads_nothing(
        tmp_path: Path, cache_dir: Path, plugin: Callable[..., Path], inits: Inits) -> None:
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        h.install(plugin("base"), enable=False)
        h.install(plugin("app", requires={"base": ""}), enable=False)
    with new_host(tmp_path / "state", cache_dir, safe_mode=True) as h:
        h.start()
        assert h.enable("app") == ["base", "app"]
        assert values(h) == [] and inits.names == []
        assert states(h) == {"base": ("enabled", True), "app": ("enabled", True)}
        with pytest.raises(DependencyError, match="'app'"):
            h.disable("base")
    with new_host(tmp_path / "state", cache_dir) as h:
        assert h.start().loaded == ("base", "app")
        assert inits.names == ["base", "app"]


# -- a real Python sample ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def py_echo() -> Path:
    """The Python sample ``echo`` (py-echo) built once with componentize-py (cached under
    .build/pytest-pybuild while its sources are unchanged)."""
    from plugbox.authoring import _pybuild

    repo = Path(__file__).resolve().parent.parent
    module = _pybuild.build_python_plugin(repo / "sample-plugins" / "python" / "echo",
                                          out_dir=repo / ".build" / "pytest-pybuild" / "py-echo")
    return module.parent


@SQLITE_ONLY
def test_a_python_requirement_is_waited_for_started_first_and_held(
        tmp_path: Path, cache_dir: Path, py_echo: Path, plugin: Callable[..., Path],
        inits: Inits) -> None:
    py = _rust(py_echo, tmp_path / "py", "py-echo",
               implements={"text.echo": {"hook": "echo"}})
    with new_host(tmp_path / "state", cache_dir) as h:
        h.start()
        assert h.install(plugin("app", requires={"py-echo": ">=0.1"})).state == "failed"
        h.install(py)
        assert states(h) == {"app": ("enabled", True), "py-echo": ("enabled", True)}
        assert h.call("text.echo", "hi").values == ["hi", "app 1.0.0"]
        with pytest.raises(DependencyError, match=r"disable 'py-echo' refused: .*'app'"):
            h.disable("py-echo")
    inits.names.clear()
    with new_host(tmp_path / "state", cache_dir) as h:
        assert h.start().loaded == ("py-echo", "app")
        assert inits.names == ["app"]  # after py-echo's on-init (which logs nothing)
        assert h.uninstall("py-echo", cascade=True) == ["app", "py-echo"]
        assert h.call("text.echo", "hi").values == []
