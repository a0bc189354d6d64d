"""plugbox.json: schema validation and its error messages, sha256 pinning, ABI and host
compatibility, and validation of host-supplied configuration."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest

from plugbox import (
    EventsPermission,
    HashMismatchError,
    HttpPermission,
    IncompatibleAbiError,
    IncompatibleHostError,
    KvPermission,
    Limits,
    ManifestError,
    Permissions,
    UsageError,
)
from plugbox._manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    RequestedLimits,
    abi_compatible,
    check_compatibility,
    load_manifest,
    manifest_schema,
    parse_abi_version,
    validate_config,
    verify_module,
)

MODULE = b"\x00asm\x01\x00\x00\x00"

FULL: dict[str, Any] = {
    "manifest_version": 1,
    "name": "word-stats",
    "version": "0.1.0",
    "description": "Counts words",
    "authors": ["Ada", "Grace"],
    "license": "Apache-2.0",
    "abi": "1.0",
    "host": ">=0.1,<1.0",
    "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(MODULE).hexdigest()},
    "hooks": ["text.stats"],
    "permissions": {
        "log": True,
        "config": True,
        "clock": True,
        "random": True,
        "kv": {"quota_bytes": 65536, "quota_keys": 100},
        "events": {"topics": ["counter.*"]},
        "http": {
            "hosts": ["127.0.0.1:*"],
            "methods": ["GET"],
            "max_request_bytes": 1048576,
            "max_response_bytes": 4194304,
            "timeout_ms": 5000,
        },
    },
    "limits": {"fuel": 100000000, "memory_bytes": 16777216, "deadline_ms": 2000, "instances": 4},
    "config_schema": {"type": "object"},
}

MINIMAL: dict[str, Any] = {
    key: FULL[key] for key in ("manifest_version", "name", "version", "abi", "module", "hooks")
}


def write(directory: Path, doc: Any, module: bytes | None = MODULE) -> Path:
    """A plugin directory with ``doc`` as plugbox.json (text is written as is) and ``module``."""
    directory.mkdir(parents=True, exist_ok=True)
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=2)
    (directory / "plugbox.json").write_text(text, encoding="utf-8")
    if module is not None:
        (directory / "plugin.wasm").write_bytes(module)
    return directory


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def _make(doc: Any, module: bytes | None = MODULE) -> Path:
        return write(tmp_path / f"p{next(counter)}", doc, module)

    return _make


# -- loading valid manifests -------------------------------------------------------------------


def test_full_manifest_loads(make: Callable[..., Path]) -> None:
    directory = make(FULL)
    m = load_manifest(directory)
    assert m.name == "word-stats"
    assert m.version == "0.1.0"
    assert m.description == "Counts words"
    assert m.authors == ("Ada", "Grace")
    assert m.license == "Apache-2.0"
    assert m.abi == "1.0"
    assert m.host == ">=0.1,<1.0"
    assert m.module_path == directory.resolve() / "plugin.wasm"
    assert m.module_path.is_absolute()
    assert m.module_sha256 == FULL["module"]["sha256"]
    assert m.hooks == ("text.stats",)
    assert m.permissions == Permissions(
        log=True,
        config=True,
        clock=True,
        random=True,
        kv=KvPermission(quota_bytes=65536, quota_keys=100),
        events=EventsPermission(topics=("counter.*",)),
        http=HttpPermission(
            hosts=("127.0.0.1:*",),
            methods=("GET",),
            max_request_bytes=1048576,
            max_response_bytes=4194304,
            timeout_ms=5000,
        ),
    )
    assert m.limits == RequestedLimits(
        fuel=100000000, memory_bytes=16777216, deadline_ms=2000, instances=4
    )
    assert m.config_schema == {"type": "object"}
    assert m.path == directory.resolve() / "plugbox.json"
    assert m.directory == directory.resolve()
    assert m.raw == FULL


def test_manifest_file_path_and_directory_give_the_same_manifest(make: Callable[..., Path]) -> None:
    directory = make(FULL)
    assert load_manifest(directory) == load_manifest(directory / "plugbox.json")
    assert load_manifest(str(directory)) == load_manifest(directory)


def test_manifest_file_may_have_another_name(tmp_path: Path) -> None:
    (tmp_path / "plugin.wasm").write_bytes(MODULE)
    (tmp_path / "other.json").write_text(json.dumps(FULL))
    assert load_manifest(tmp_path / "other.json").name == "word-stats"


def test_minimal_manifest_gets_defaults(make: Callable[..., Path]) -> None:
    m = load_manifest(make(MINIMAL))
    assert m.description is None and m.license is None and m.host is None
    assert m.authors == ()
    assert m.permissions == Permissions()
    assert m.permissions.services() == frozenset()
    assert m.limits == RequestedLimits()
    assert m.limits.requested() == {}
    assert m.config_schema is None


def test_missing_permission_subfields_take_the_permission_defaults(
    make: Callable[..., Path],
) -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["permissions"] = {"kv": {}, "events": {}, "http": {"hosts": ["api.example.com"]}}
    p = load_manifest(make(doc)).permissions
    assert p.kv == KvPermission()
    assert p.events == EventsPermission()
    assert p.http == HttpPermission(hosts=("api.example.com",))
    assert p.log is False and p.config is False


def test_requested_limits_fill_only_what_is_missing(make: Callable[..., Path]) -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["limits"] = {"fuel": 1234, "deadline_ms": 5.0}  # 5.0 counts as an integer in JSON Schema
    limits = load_manifest(make(doc)).limits
    assert limits == RequestedLimits(fuel=1234, deadline_ms=5)
    assert isinstance(limits.deadline_ms, int)
    assert limits.requested() == {"fuel": 1234, "deadline_ms": 5}
    defaults = Limits(fuel=1, memory_bytes=2, deadline_ms=3, instances=4)
    assert limits.fill(defaults) == Limits(fuel=1234, memory_bytes=2, deadline_ms=5, instances=4)


def test_manifest_is_frozen_and_hashable(make: Callable[..., Path]) -> None:
    m = load_manifest(make(FULL))
    hash(m)
    with pytest.raises(AttributeError):
        m.name = "other"  # type: ignore[misc]


def test_byte_order_mark_is_tolerated(make: Callable[..., Path]) -> None:
    directory = make(FULL)
    path = directory / "plugbox.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_manifest(directory).name == "word-stats"


def test_shipped_schema_is_a_valid_2020_12_schema() -> None:
    schema = manifest_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(FULL)


# -- schema errors -----------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(keys[-1])] = value
        else:
            target[keys[-1]] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


SCHEMA_ERRORS = [
    # (mutation, expected json_path, a phrase the message must contain)
    (_delete("name"), "$.name", "required field 'name' is missing"),
    (_delete("module"), "$.module", "required field 'module' is missing"),
    (_delete("hooks"), "$.hooks", "required field 'hooks' is missing"),
    (_delete("module.sha256"), "$.module.sha256", "required field 'sha256'"),
    (_set("manifest_version", 2), "$.manifest_version", "the number 1"),
    (_set("name", "Word-Stats"), "$.name", "lowercase letters"),
    (_set("name", "word-stats\n"), "$.name", "lowercase letters"),
    (_set("name", "w" * 65), "$.name", "1-64 characters"),
    (_set("name", 7), "$.name", "got an integer"),
    (_set("version", "1.0"), "$.version", "semantic version"),
    (_set("version", "01.0.0"), "$.version", "semantic version"),
    (_set("abi", "1"), "$.abi", "MAJOR.MINOR"),
    (_set("abi", 1.0), "$.abi", "got a number"),
    (_set("host", ""), "$.host", "PEP 440"),
    (_set("module.path", "../plugin.wasm"), "$.module.path", "without '..'"),
    (_set("module.path", "lib/../../plugin.wasm"), "$.module.path", "relative path"),
    (_set("module.path", "/etc/plugin.wasm"), "$.module.path", "relative path"),
    (_set("module.path", "C:/plugin.wasm"), "$.module.path", "relative path"),
    (_set("module.path", "dir\\plugin.wasm"), "$.module.path", "'/' separators"),
    (_set("module.sha256", "AB" * 32), "$.module.sha256", "64 lowercase hex"),
    (_set("module.sha256", "ab" * 31), "$.module.sha256", "64 lowercase hex"),
    (_set("module.extra", 1), "$.module.extra", "unknown field 'extra'"),
    (_set("hooks", []), "$.hooks", "the list is empty"),
    (_set("hooks", ["a", "a"]), "$.hooks", "'a' is listed more than once"),
    (_set("hooks", ["Text.Stats"]), "$.hooks[0]", "hook name"),
    (_set("permissions.kvv", {}), "$.permissions.kvv", "rename it to 'kv'"),
    (_set("permissions.log", "yes"), "$.permissions.log", "got a string"),
    (_set("permissions.kv", True), "$.permissions.kv", "got a boolean"),
    (_set("permissions.kv.quota_bytes", 0), "$.permissions.kv.quota_bytes", "out of range"),
    (_set("permissions.kv.quota", 1), "$.permissions.kv.quota", "unknown field 'quota'"),
    (_set("permissions.events.topics", "a.*"), "$.permissions.events.topics", "got a string"),
    (_set("permissions.events.topics", ["has space"]), "$.permissions.events.topics[0]",
     "topic pattern"),
    (_set("permissions.http.hosts", ["http://example.com/"]), "$.permissions.http.hosts[0]",
     "no scheme or path"),
    (_set("permissions.http.hosts", ["ok.example.com", "a b"]), "$.permissions.http.hosts[1]",
     "host pattern"),
    (_set("permissions.http.methods", ["get"]), "$.permissions.http.methods[0]",
     "HTTP method"),
    (_set("permissions.http.methods", []), "$.permissions.http.methods", "the list is empty"),
    (_set("permissions.http.timeout_ms", -5), "$.permissions.http.timeout_ms", "positive"),
    (_set("limits.fuel", 0), "$.limits.fuel", "positive integer"),
    (_set("limits.fuel", 1.5), "$.limits.fuel", "got a number"),
    (_set("limits.fuel", 2**60), "$.limits.fuel", "out of range"),
    (_set("limits.memory_bytes", "16M"), "$.limits.memory_bytes", "got a string"),
    (_set("limits.stack", 1), "$.limits.stack", "unknown field 'stack'"),
    (_set("extra", True), "$.extra", "unknown field 'extra'"),
    (_set("permisions", {}), "$.permisions", "rename it to 'permissions'"),
    (_set("config_schema", []), "$.config_schema", "got an array"),
    (_set("config_schema", {"type": "objekt"}), "$.config_schema.type", "not a valid JSON Schema"),
    (_set("config_schema", {"properties": {"a": {"pattern": "("}}}),
     "$.config_schema.properties.a.pattern", "not a valid JSON Schema"),
]


@pytest.mark.parametrize(("mutate", "json_path", "phrase"), SCHEMA_ERRORS)
def test_schema_errors_name_file_path_and_expectation(
    make: Callable[..., Path],
    mutate: Callable[[dict[str, Any]], None],
    json_path: str,
    phrase: str,
) -> None:
    doc = copy.deepcopy(FULL)
    mutate(doc)
    directory = make(doc)
    with pytest.raises(ManifestError) as info:
        load_manifest(directory)
    err = info.value
    assert err.json_path == json_path
    message = str(err)
    assert str(directory.resolve() / "plugbox.json") in message
    assert json_path in message
    assert phrase in message
    assert "To fix" in message
    assert err.plugin == (doc["name"] if isinstance(doc.get("name"), str) else None)


def test_top_level_must_be_an_object(make: Callable[..., Path]) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(make([1, 2]))
    assert info.value.json_path == "$"
    assert "got an array" in str(info.value)


def test_error_reports_how_many_other_problems_exist(make: Callable[..., Path]) -> None:
    doc = copy.deepcopy(FULL)
    doc["name"] = "Bad"
    doc["version"] = "x"
    doc["limits"]["fuel"] = 0
    with pytest.raises(ManifestError, match=r"2 more problems found"):
        load_manifest(make(doc))


def test_keys_that_are_not_identifiers_are_quoted_in_the_json_path(
    make: Callable[..., Path],
) -> None:
    doc = copy.deepcopy(FULL)
    doc["permissions"]["http"]["some key"] = 1
    with pytest.raises(ManifestError) as info:
        load_manifest(make(doc))
    assert info.value.json_path == '$.permissions.http["some key"]'


def test_invalid_json_reports_line_and_column(make: Callable[..., Path]) -> None:
    directory = make('{\n  "name": "x",\n  "version": ,\n}')
    with pytest.raises(ManifestError) as info:
        load_manifest(directory)
    assert f"{directory.resolve() / 'plugbox.json'}:3:14: invalid JSON" in str(info.value)
    assert info.value.json_path is None


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"name": "a", "name": "b"}', "appears twice"),
        ('{"limits": {"fuel": NaN}}', "NaN is not valid JSON"),
        ('{"limits": {"fuel": Infinity}}', "Infinity is not valid JSON"),
        ('{"limits": {"fuel": ' + "9" * 5000 + "}}", "invalid JSON"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON"),
        ("", "invalid JSON"),
    ],
)
def test_json_that_python_would_accept_or_choke_on_is_refused_cleanly(
    make: Callable[..., Path], text: str, phrase: str
) -> None:
    with pytest.raises(ManifestError, match=phrase):
        load_manifest(make(text))


def test_non_utf8_manifest_is_refused(make: Callable[..., Path]) -> None:
    directory = make(FULL)
    (directory / "plugbox.json").write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(directory)


def test_oversized_manifest_is_refused_unread(make: Callable[..., Path]) -> None:
    doc = copy.deepcopy(FULL)
    doc["description"] = "x" * 10
    text = json.dumps(doc) + " " * MAX_MANIFEST_BYTES
    with pytest.raises(ManifestError, match="larger than"):
        load_manifest(make(text))


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file or directory"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no plugbox.json in this directory"):
        load_manifest(tmp_path)


def test_unreadable_manifest(tmp_path: Path) -> None:
    (tmp_path / "plugbox.json").mkdir(parents=True)
    with pytest.raises(ManifestError):
        load_manifest(tmp_path / "plugbox.json")


# -- sha256 --------------------------------------------------------------------------------------


def test_verify_module_returns_the_bytes(make: Callable[..., Path]) -> None:
    assert verify_module(load_manifest(make(FULL))) == MODULE


def test_hash_mismatch_names_both_digests_and_the_fix(make: Callable[..., Path]) -> None:
    tampered = MODULE + b"\x00"
    m = load_manifest(make(FULL, module=tampered))
    with pytest.raises(HashMismatchError) as info:
        verify_module(m)
    message = str(info.value)
    assert FULL["module"]["sha256"] in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert "update $.module.sha256" in message and "rebuild" in message
    assert info.value.plugin == "word-stats"


def test_missing_module_is_a_manifest_error(make: Callable[..., Path]) -> None:
    m = load_manifest(make(FULL, module=None))
    with pytest.raises(ManifestError) as info:
        verify_module(m)
    assert info.value.json_path == "$.module.path"
    assert "does not exist" in str(info.value)


def test_module_path_in_a_subdirectory(make: Callable[..., Path]) -> None:
    doc = copy.deepcopy(FULL)
    doc["module"]["path"] = "build/out/plugin.wasm"
    directory = make(doc, module=None)
    (directory / "build" / "out").mkdir(parents=True)
    (directory / "build" / "out" / "plugin.wasm").write_bytes(MODULE)
    assert verify_module(load_manifest(directory)) == MODULE


# -- compatibility -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest_abi", "runtime_abi", "ok"),
    [
        ("1.0", "1.0.0", True),
        ("1.0.0", "1.0.0", True),
        ("1.0.7", "1.0.0", True),  # patch levels are ignored
        ("1.0", "1.1.0", True),  # an older minor runs on a newer runtime
        ("1.1", "1.1.0", True),
        ("1.1", "1.0.0", False),  # a newer minor does not
        ("1.2", "1.1.3", False),
        ("2.0", "1.0.0", False),  # majors must match
        ("1.0", "2.0.0", False),
        ("0.9", "1.0.0", False),
    ],
)
def test_abi_compatibility_matrix(
    make: Callable[..., Path], manifest_abi: str, runtime_abi: str, ok: bool
) -> None:
    doc = copy.deepcopy(FULL)
    doc["abi"] = manifest_abi
    m = load_manifest(make(doc))
    assert abi_compatible(manifest_abi, runtime_abi) is ok
    if ok:
        check_compatibility(m, runtime_version="0.1.0", abi_version=runtime_abi)
    else:
        with pytest.raises(IncompatibleAbiError) as info:
            check_compatibility(m, runtime_version="0.1.0", abi_version=runtime_abi)
        assert info.value.plugin == "word-stats"
        assert runtime_abi in str(info.value)
        assert "rebuild the plugin" in str(info.value)


def test_parse_abi_version() -> None:
    assert parse_abi_version("1.0") == (1, 0)
    assert parse_abi_version("12.34.56") == (12, 34)
    for bad in ("1", "1.0.0.0", "v1.0", "1.x", "", "١.٠"):
        with pytest.raises(ValueError):
            parse_abi_version(bad)


@pytest.mark.parametrize(
    ("spec", "runtime_version", "ok"),
    [
        (">=0.1,<1.0", "0.1.0", True),
        (">=0.1,<1.0", "0.9.9", True),
        (">=0.1,<1.0", "1.0.0", False),
        (">=0.2", "0.1.0", False),
        ("~=0.1", "0.5.0", True),
        ("==0.1.*", "0.1.3", True),
        (">=0.1", "0.2.0.dev1", True),  # development builds count as their version
        ("<1.0", "1.0.0rc1", False),
    ],
)
def test_host_specifier(
    make: Callable[..., Path], spec: str, runtime_version: str, ok: bool
) -> None:
    doc = copy.deepcopy(FULL)
    doc["host"] = spec
    m = load_manifest(make(doc))
    if ok:
        check_compatibility(m, runtime_version=runtime_version, abi_version="1.0.0")
    else:
        with pytest.raises(IncompatibleHostError) as info:
            check_compatibility(m, runtime_version=runtime_version, abi_version="1.0.0")
        assert spec in str(info.value) and runtime_version in str(info.value)
        assert info.value.plugin == "word-stats"


def test_no_host_specifier_accepts_any_version(make: Callable[..., Path]) -> None:
    m = load_manifest(make(MINIMAL))
    check_compatibility(m, runtime_version="99.0", abi_version="1.0.0")


@pytest.mark.parametrize("spec", ["0.1", ">=banana", ">=0.1;<1.0", "latest"])
def test_invalid_host_specifier_is_a_manifest_error(make: Callable[..., Path], spec: str) -> None:
    doc = copy.deepcopy(FULL)
    doc["host"] = spec
    m = load_manifest(make(doc))
    with pytest.raises(ManifestError) as info:
        check_compatibility(m, runtime_version="0.1.0", abi_version="1.0.0")
    assert info.value.json_path == "$.host"
    assert "PEP 440" in str(info.value)


def test_invalid_runtime_version_is_a_usage_error(make: Callable[..., Path]) -> None:
    m = load_manifest(make(FULL))
    with pytest.raises(UsageError):
        check_compatibility(m, runtime_version="not a version", abi_version="1.0.0")


# -- config validation ---------------------------------------------------------------------------

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "threshold": {"type": "integer", "minimum": 0},
        "words": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["threshold"],
    "additionalProperties": False,
}


@pytest.fixture
def configured(make: Callable[..., Path]) -> Manifest:
    doc = copy.deepcopy(FULL)
    doc["config_schema"] = CONFIG_SCHEMA
    return load_manifest(make(doc))


def test_valid_config_passes(configured: Manifest) -> None:
    validate_config(configured, {"threshold": 3, "words": ["a"]})


@pytest.mark.parametrize(
    ("config", "json_path"),
    [
        ({"threshold": -1}, "$.threshold"),
        ({"threshold": 1, "words": ["a", 2]}, "$.words[1]"),
        ({}, "$"),
        ({"threshold": 1, "extra": True}, "$"),
    ],
)
def test_invalid_config_is_a_usage_error_naming_plugin_and_path(
    configured: Manifest, config: dict[str, Any], json_path: str
) -> None:
    with pytest.raises(UsageError) as info:
        validate_config(configured, config)
    message = str(info.value)
    assert "plugin 'word-stats'" in message
    assert f"invalid at {json_path}:" in message
    assert info.value.plugin == "word-stats"


def test_config_must_be_an_object(configured: Manifest) -> None:
    with pytest.raises(UsageError, match="must be a JSON object"):
        validate_config(configured, [1, 2])  # type: ignore[arg-type]


def test_without_config_schema_any_object_is_accepted(make: Callable[..., Path]) -> None:
    validate_config(load_manifest(make(MINIMAL)), {"anything": [1, {"goes": None}]})


def test_config_schema_with_unresolvable_ref_is_the_plugins_fault(
    make: Callable[..., Path],
) -> None:
    doc = copy.deepcopy(FULL)
    doc["config_schema"] = {"$ref": "https://example.invalid/schema.json"}
    m = load_manifest(make(doc))
    with pytest.raises(ManifestError) as info:
        validate_config(m, {})
    assert info.value.json_path == "$.config_schema"


def test_config_schema_may_declare_an_older_draft(make: Callable[..., Path]) -> None:
    doc = copy.deepcopy(FULL)
    doc["config_schema"] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}},
    }
    m = load_manifest(make(doc))
    validate_config(m, {"n": 1})
    with pytest.raises(UsageError, match=r"\$\.n"):
        validate_config(m, {"n": 0})
