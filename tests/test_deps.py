"""Dependencies and conflicts (issue 9 §4): the manifest fields ``requires``, ``optional``,
``conflicts``, ``data_version`` and the resolution over an installed set
(``plugbox.host._deps``), on real manifests of WAT plugins."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox import DependencyError, ManifestError, VerificationError
from plugbox._manifest import Manifest, load_manifest
from plugbox.host import _deps
from plugbox.host._deps import dependents, describe, requirements, resolve

from tests.conftest import COUNTER_BODY, wat_module, write_plugin


@functools.cache
def _module() -> bytes:
    return wat_module(COUNTER_BODY)


class Installed:
    """Plugins staged as real plugin directories and read back with load_manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests: dict[str, Manifest] = {}

    def add(self, name: str, version: str = "1.0.0", **fields: Any) -> Manifest:
        directory = write_plugin(self.root / f"{name}-{version}", _module(), name=name,
                                 version=version, **fields)
        manifest = load_manifest(directory)
        self.manifests[name] = manifest
        return manifest


@pytest.fixture
def inst(tmp_path: Path) -> Installed:
    return Installed(tmp_path)


# ------------------------------------------------------------------------------------------
# Manifest fields


def test_fields_parse_onto_the_manifest(inst: Installed) -> None:
    m = inst.add("app", requires={"base": ">=1.2,<2"}, optional={"extra": ""},
                 conflicts={"legacy": "<3"}, data_version=3)
    assert m.requires == {"base": ">=1.2,<2"}
    assert m.optional == {"extra": ""}
    assert m.conflicts == {"legacy": "<3"}
    assert m.data_version == 3


def test_fields_are_optional(inst: Installed) -> None:
    m = inst.add("plain")
    assert (m.requires, m.optional, m.conflicts, m.data_version) == ({}, {}, {}, 0)


@pytest.mark.parametrize(("fields", "json_path"), [
    ({"requires": {"base": "latest"}}, "$.requires.base"),
    ({"optional": {"base": "=>1"}}, "$.optional.base"),
    ({"conflicts": {"Bad Name": ""}}, "$.conflicts"),
    ({"requires": {"base": 1}}, "$.requires.base"),
    ({"requires": {"base": "x" * 257}}, "$.requires.base"),
    ({"requires": {f"p{i}": "" for i in range(65)}}, "$.requires"),
    ({"data_version": -1}, "$.data_version"),
    ({"data_version": "3"}, "$.data_version"),
    ({"data_version": 2 ** 31}, "$.data_version"),
    ({"requires": {"me": ""}}, "$.requires.me"),
    ({"conflicts": {"me": ""}}, "$.conflicts.me"),
    ({"requires": {"base": ""}, "optional": {"base": ">=1"}}, "$.optional.base"),
])
def test_invalid_fields_are_refused_with_the_path(tmp_path: Path, fields: dict[str, Any],
                                                  json_path: str) -> None:
    directory = write_plugin(tmp_path / "p", _module(), name="me", **fields)
    with pytest.raises(ManifestError) as info:
        load_manifest(directory)
    assert info.value.json_path is not None
    assert info.value.json_path.startswith(json_path), info.value
    assert "me" in str(info.value) or "plugbox.json" in str(info.value)


def test_invalid_specifier_message_says_the_fix(tmp_path: Path) -> None:
    directory = write_plugin(tmp_path / "p", _module(), name="app",
                             requires={"base": "latest"})
    with pytest.raises(ManifestError, match=r"PEP 440.*To fix: write a specifier"):
        load_manifest(directory)


# ------------------------------------------------------------------------------------------
# Start order


def test_start_order_follows_requires(inst: Installed) -> None:
    inst.add("base")
    inst.add("mid", requires={"base": ">=1"})
    inst.add("top", requires={"mid": "", "base": ""})
    inst.add("alone")
    res = resolve(inst.manifests, ["top", "alone", "mid", "base"])
    assert res.order == ["alone", "base", "mid", "top"]
    assert res.failed == {}
    assert res.before["top"] == ("mid", "base")


def test_ties_keep_the_given_order_and_sets_sort_by_name(inst: Installed) -> None:
    for name in ("c", "a", "b"):
        inst.add(name)
    assert resolve(inst.manifests, ["c", "a", "b"]).order == ["c", "a", "b"]
    assert resolve(inst.manifests, {"c", "a", "b"}).order == ["a", "b", "c"]


def test_optional_present_starts_first_absent_is_not_required(inst: Installed) -> None:
    inst.add("user", optional={"helper": ">=1", "ghost": ""})
    inst.add("helper")
    res = resolve(inst.manifests, ["user", "helper"])
    assert res.order == ["helper", "user"]
    assert res.failed == {}
    assert res.notes["user"] == ["optional 'ghost' (any version) not used: not installed"]
    # Installed but disabled, or incompatible: not used, nothing fails, no ordering.
    res = resolve(inst.manifests, ["user"])
    assert res.order == ["user"] and res.failed == {}
    assert "optional 'helper' (>=1) not used: not enabled" in res.notes["user"]
    inst.add("helper", version="0.5.0")
    res = resolve(inst.manifests, ["user", "helper"])
    assert res.order == ["user", "helper"] and res.failed == {}
    assert "optional 'helper' (>=1) not used: 0.5.0 is installed" in res.notes["user"]


# ------------------------------------------------------------------------------------------
# Missing, disabled, incompatible


def test_missing_dependency_fails_the_dependent_and_its_dependents(inst: Installed) -> None:
    inst.add("app", requires={"base": ">=1.2,<2"})
    inst.add("ui", requires={"app": ""})
    inst.add("other")
    res = resolve(inst.manifests, ["ui", "app", "other"])
    assert res.order == ["other"]
    assert set(res.failed) == {"app", "ui"}
    assert "'app' requires 'base' (>=1.2,<2), which is not installed" in res.failed["app"]
    assert "install 'base'" in res.failed["app"]
    assert res.errors["app"].kind == "missing"
    assert res.errors["app"].dependency == "base"
    assert res.errors["app"].specifier == ">=1.2,<2"
    assert res.failed["ui"].startswith("plugin 'ui' requires 'app', which cannot start: "
                                       "plugin 'app' requires 'base'")
    assert res.errors["ui"].kind == "failed"


def test_incompatible_dependency_names_versions_and_specifier(inst: Installed) -> None:
    inst.add("base", version="1.1.0")
    inst.add("app", requires={"base": ">=1.2,<2"})
    res = resolve(inst.manifests, ["base", "app"])
    assert res.order == ["base"]
    error = res.errors["app"]
    assert error.kind == "incompatible"
    assert "'app' requires 'base' >=1.2,<2, but 'base' 1.1.0 is installed" in error.message
    assert "upgrade 'base'" in error.message
    inst.add("base", version="1.4.0")
    assert resolve(inst.manifests, ["base", "app"]).order == ["base", "app"]


def test_prereleases_count_and_unparsable_versions_are_reported(inst: Installed) -> None:
    inst.add("base", version="1.3.0-rc.1")
    inst.add("app", requires={"base": ">=1.2"})
    assert resolve(inst.manifests, ["base", "app"]).order == ["base", "app"]
    inst.add("base", version="1.3.0-x.7")  # valid semver, not PEP 440
    res = resolve(inst.manifests, ["base", "app"])
    assert res.errors["app"].kind == "incompatible"
    assert "not a PEP 440 version" in res.failed["app"]
    # Any version ("") needs no parsing.
    inst.add("app", requires={"base": ""})
    assert resolve(inst.manifests, ["base", "app"]).failed == {}


def test_disabled_dependency_fails_the_dependent(inst: Installed) -> None:
    inst.add("base")
    inst.add("app", requires={"base": ""})
    res = resolve(inst.manifests, ["app"])
    assert res.order == []
    assert res.errors["app"].kind == "disabled"
    assert "installed but not enabled" in res.failed["app"]


def test_enabled_but_not_installed_is_failed(inst: Installed) -> None:
    res = resolve(inst.manifests, ["ghost"])
    assert res.order == [] and res.errors["ghost"].kind == "missing"


# ------------------------------------------------------------------------------------------
# Conflicts


def test_conflict_fails_the_declarer_naming_both_and_the_specifier(inst: Installed) -> None:
    inst.add("new-auth", conflicts={"old-auth": "<3"})
    inst.add("old-auth", version="2.5.0")
    inst.add("uses-new", requires={"new-auth": ""})
    res = resolve(inst.manifests, ["old-auth", "new-auth", "uses-new"])
    assert res.order == ["old-auth"]
    error = res.errors["new-auth"]
    assert error.kind == "conflict" and error.dependency == "old-auth"
    assert error.specifier == "<3"
    assert "'new-auth' conflicts with 'old-auth' <3" in error.message
    assert "'old-auth' 2.5.0 is enabled" in error.message
    assert res.errors["uses-new"].kind == "failed"


def test_no_conflict_outside_the_specifier_or_when_disabled(inst: Installed) -> None:
    inst.add("new-auth", conflicts={"old-auth": "<3"})
    inst.add("old-auth", version="3.0.0")
    assert resolve(inst.manifests, ["old-auth", "new-auth"]).failed == {}
    inst.add("old-auth", version="2.0.0")
    assert resolve(inst.manifests, ["new-auth"]).failed == {}


def test_mutual_conflict_fails_only_one(inst: Installed) -> None:
    inst.add("alpha", conflicts={"beta": ""})
    inst.add("beta", conflicts={"alpha": ""})
    res = resolve(inst.manifests, ["alpha", "beta"])
    assert res.order == ["alpha"]
    assert list(res.failed) == ["beta"]


# ------------------------------------------------------------------------------------------
# Cycles


def test_cycle_is_refused_naming_the_cycle(inst: Installed) -> None:
    inst.add("a", requires={"b": ""})
    inst.add("b", requires={"c": ""})
    inst.add("c", optional={"a": ""})
    inst.add("d", requires={"a": ""})
    inst.add("e")
    res = resolve(inst.manifests, ["a", "b", "c", "d", "e"])
    assert res.order == ["e"]
    cycle = res.errors["a"].plugins
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"} and len(cycle) == 4
    # Each plugin on it needs the next one started first.
    for user, dep in zip(cycle, cycle[1:]):
        m = inst.manifests[user]
        assert dep in m.requires or dep in m.optional
    for name in "abc":
        assert res.errors[name].kind == "cycle"
        assert "in a cycle" in res.failed[name]
    assert res.errors["d"].kind == "failed"
    with pytest.raises(DependencyError, match="in a cycle") as info:
        resolve(inst.manifests, ["a", "b", "c", "d", "e"], strict=True)
    assert info.value.kind == "cycle"
    assert isinstance(info.value, VerificationError)
    assert plugbox.DependencyError is DependencyError


def test_check_raises_the_problem_of_the_named_plugin(inst: Installed) -> None:
    inst.add("app", requires={"base": ""})
    inst.add("fine")
    res = resolve(inst.manifests, ["app", "fine"])
    res.check("fine")
    with pytest.raises(DependencyError, match="'base'") as info:
        res.check("fine", "app")
    assert info.value.plugin == "app"


def test_fail_after_resolution_cascades(inst: Installed) -> None:
    inst.add("base")
    inst.add("app", requires={"base": ""})
    inst.add("opt-user", optional={"base": ""})
    res = resolve(inst.manifests, ["base", "app", "opt-user"])
    assert res.order == ["base", "app", "opt-user"]
    new = res.fail("base", "plugin 'base' failed on-init: boom")
    assert set(new) == {"base", "app"}
    assert res.order == ["opt-user"]
    assert "which cannot start: plugin 'base' failed on-init: boom" in res.failed["app"]


# ------------------------------------------------------------------------------------------
# Cascades


def test_requirements_is_what_enabling_enables(inst: Installed) -> None:
    inst.add("base")
    inst.add("lib", requires={"base": ""})
    inst.add("extra")
    inst.add("app", requires={"lib": ">=1"}, optional={"extra": ""})
    assert requirements("app", inst.manifests) == ["base", "lib"]
    assert requirements("base", inst.manifests) == []


def test_requirements_refuses_missing_incompatible_and_cycles(inst: Installed) -> None:
    inst.add("app", requires={"lib": ">=2"})
    with pytest.raises(DependencyError, match="not installed") as info:
        requirements("app", inst.manifests)
    assert info.value.kind == "missing"
    inst.add("lib", version="1.0.0")
    with pytest.raises(DependencyError, match="'lib' 1.0.0 is installed"):
        requirements("app", inst.manifests)
    inst.add("lib", version="2.0.0", requires={"app": ""})
    with pytest.raises(DependencyError, match="in a cycle") as info:
        requirements("app", inst.manifests)
    assert set(info.value.plugins) == {"app", "lib"}


def test_dependents_is_what_must_be_disabled_with_it(inst: Installed) -> None:
    inst.add("base")
    inst.add("lib", requires={"base": ""})
    inst.add("app", requires={"lib": ""})
    inst.add("soft", optional={"base": ""})
    inst.add("off", requires={"base": ""})
    names = ["base", "lib", "app", "soft"]
    assert dependents("base", inst.manifests, names) == ["app", "lib"]
    assert dependents("app", inst.manifests, names) == []
    assert set(dependents("base", inst.manifests)) == {"app", "lib", "off"}


def test_describe_for_the_cli(inst: Installed) -> None:
    inst.add("base", version="1.0.0")
    inst.add("app", requires={"base": ">=2"}, optional={"extra": ""},
             conflicts={"base": "<0.5"})
    out = describe("app", inst.manifests, {"base", "app"})
    json.dumps(out)
    [req] = out["requires"]  # type: ignore[misc]
    assert req["name"] == "base" and req["installed"] == "1.0.0" and req["ok"] is False
    assert "1.0.0 is installed" in req["reason"]
    [opt] = out["optional"]  # type: ignore[misc]
    assert opt["reason"] == "not used: not installed"
    [con] = out["conflicts"]  # type: ignore[misc]
    assert con["ok"] is True
    assert describe("base", inst.manifests, {"base", "app"})["required_by"] == ["app"]


def test_module_names_what_it_exports() -> None:
    assert set(_deps.__all__) == {"WAITING", "Declared", "Dependent", "Resolution",
                                  "conflict", "dependents", "describe", "in_use", "reason",
                                  "requirements", "resolve"}
