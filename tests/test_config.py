"""Plugin configuration (issue 9 §5): ``plugbox.host._config`` validates with the schema's
defaults applied (nested objects too), refuses invalid configuration with ConfigError naming
the JSON path without applying any of it, redacts ``writeOnly`` values at any depth, and
describes changes without showing secrets."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

import plugbox
from plugbox import ConfigError, ManifestError, UsageError
from plugbox._manifest import MAX_SCHEMA_STEPS
from plugbox.host import _config
from plugbox.host._config import REDACTED, diff, redacted, secret_paths, validated

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "top_n": {"type": "integer", "minimum": 1, "default": 5},
        "mode": {"enum": ["fast", "exact"], "default": "fast"},
        "db": {
            "type": "object",
            "default": {},
            "properties": {
                "host": {"type": "string", "default": "localhost"},
                "port": {"type": "integer", "default": 5432},
                "password": {"type": "string", "writeOnly": True},
            },
        },
        "retry": {
            "type": "object",
            "properties": {"count": {"type": "integer", "default": 3}},
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_defaults_fill_top_level_and_nested_objects() -> None:
    out = validated(SCHEMA, {}, plugin="p")
    assert out == {"top_n": 5, "mode": "fast",
                   "db": {"host": "localhost", "port": 5432}}
    # A present nested object gets its own defaults; a given value wins over a default.
    out = validated(SCHEMA, {"top_n": 9, "db": {"port": 1}, "retry": {}}, plugin="p")
    assert out == {"top_n": 9, "mode": "fast", "db": {"host": "localhost", "port": 1},
                   "retry": {"count": 3}}


def test_defaults_are_copies_and_the_input_is_untouched() -> None:
    config = {"retry": {}}
    before = copy.deepcopy(config)
    first = validated(SCHEMA, config, plugin="p")
    assert config == before
    first["db"]["host"] = "changed"
    assert validated(SCHEMA, {}, plugin="p")["db"]["host"] == "localhost"
    assert SCHEMA["properties"]["db"]["default"] == {}


def test_defaults_through_ref_and_allof() -> None:
    schema = {
        "$defs": {"conn": {"type": "object", "properties": {
            "timeout": {"type": "number", "default": 2.5}}}},
        "allOf": [{"properties": {"level": {"type": "string", "default": "info"}}}],
        "properties": {"a": {"$ref": "#/$defs/conn", "default": {}},
                       "b": {"$ref": "#/$defs/conn"}},
    }
    assert validated(schema, {"b": {}}, plugin="p") == {
        "level": "info", "a": {"timeout": 2.5}, "b": {"timeout": 2.5}}


def test_ref_loops_are_cut_not_followed_forever() -> None:
    schema = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
              "$ref": "#/$defs/a", "properties": {"x": {"default": 1}}}
    # jsonschema itself may refuse the loop; what matters is a typed answer, promptly.
    try:
        out = validated(schema, {}, plugin="p")
    except (ConfigError, ManifestError):
        return
    assert out == {"x": 1}


def test_recursive_schema_follows_the_data() -> None:
    schema = {"$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string", "default": "?"},
        "child": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"}
    out = validated(schema, {"child": {"child": {}}}, plugin="p")
    assert out == {"name": "?", "child": {"name": "?", "child": {"name": "?"}}}


def test_invalid_config_is_refused_with_its_path_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        validated(SCHEMA, {"db": {"port": "5432"}}, plugin="word-stats")
    error = info.value
    assert error.json_path == "$.db.port"
    assert error.plugin == "word-stats"
    assert "$.db.port" in error.fix
    assert "plugin 'word-stats'" in str(error) and "nothing of it was applied" in str(error)
    assert isinstance(error, UsageError) and plugbox.ConfigError is ConfigError
    with pytest.raises(ConfigError) as info:
        validated(SCHEMA, {"top_n": 0}, plugin="p")
    assert info.value.json_path == "$.top_n"
    with pytest.raises(ConfigError) as info:
        validated(SCHEMA, {"tags": ["a", 3]}, plugin="p")
    assert info.value.json_path == "$.tags[1]"
    with pytest.raises(ConfigError) as info:
        validated(SCHEMA, {"unknown": 1}, plugin="p")
    assert info.value.json_path == "$"


def test_a_default_the_schema_refuses_is_reported_at_its_path() -> None:
    schema = {"properties": {"n": {"type": "integer", "default": "five"}}}
    with pytest.raises(ConfigError) as info:
        validated(schema, {}, plugin="p")
    assert info.value.json_path == "$.n"


@pytest.mark.parametrize("config", [
    ["not", "an", "object"],
    {"x": float("nan")},
    {"x": object()},
    {"x": "y" * (1 << 20)},
])
def test_non_json_or_oversized_configs_are_refused(config: Any) -> None:
    with pytest.raises(ConfigError) as info:
        validated({"type": "object"}, config, plugin="p")
    assert info.value.json_path == "$" and info.value.fix


def test_without_schema_any_object_is_accepted_as_a_copy() -> None:
    config = {"a": [1, 2], "b": (3,)}
    out = validated(None, config, plugin="p")
    assert out == {"a": [1, 2], "b": [3]}
    out["a"].append(9)
    assert config["a"] == [1, 2]


def test_shared_subschemas_are_walked_once_per_value() -> None:
    # Each level's allOf names the level below twice: 2^40 visits without the cut.
    sub: dict[str, Any] = {"properties": {"x": {"default": 1}}}
    for _ in range(40):
        sub = {"allOf": [sub, sub]}
    walk = _config._Walk(sub)
    value: dict[str, Any] = {}
    _config._fill(sub, value, walk)
    assert value == {"x": 1}
    assert MAX_SCHEMA_STEPS - walk.left < 200
    # Validation itself stays bounded too: refused as too costly, typed.
    with pytest.raises(ConfigError, match="more than 50000 schema evaluations"):
        validated(sub, {}, plugin="p")


def test_schema_too_large_to_walk_is_the_plugins_fault() -> None:
    schema = {"properties": {f"k{i}": {"default": i} for i in range(60_000)}}
    with pytest.raises(ManifestError) as info:
        validated(schema, {}, plugin="p")
    assert info.value.json_path == "$.config_schema"
    assert "simplify the schema" in str(info.value)


# ------------------------------------------------------------------------------------------
# Secrets


def test_redacted_hides_write_only_values_at_any_depth() -> None:
    schema = {
        "properties": {
            "token": {"type": "string", "writeOnly": True},
            "db": {"properties": {"password": {"writeOnly": True}, "host": {}}},
            "servers": {"items": {"properties": {"key": {"writeOnly": True}}}},
            "pair": {"prefixItems": [{}, {"writeOnly": True}]},
            "vault": {"writeOnly": True},
            "ref": {"$ref": "#/$defs/secret"},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string", "writeOnly": True}]},
        },
        "patternProperties": {"^key_": {"writeOnly": True}},
        "additionalProperties": {"properties": {"pin": {"writeOnly": True}}},
        "$defs": {"secret": {"writeOnly": True}},
    }
    config = {
        "token": "t0k3n", "db": {"password": "hunter2", "host": "db.local"},
        "servers": [{"key": "k1", "name": "a"}, {"name": "b"}], "pair": ["open", "shut"],
        "vault": {"nested": {"deep": "x"}}, "ref": "r3f", "either": 5,
        "key_api": "abc", "misc": {"pin": "1234", "label": "home"}, "plain": 1,
    }
    before = copy.deepcopy(config)
    out = redacted(schema, config)
    assert config == before
    assert out == {
        "token": REDACTED, "db": {"password": REDACTED, "host": "db.local"},
        "servers": [{"key": REDACTED, "name": "a"}, {"name": "b"}],
        "pair": ["open", REDACTED], "vault": REDACTED, "ref": REDACTED,
        "either": REDACTED,  # any branch saying writeOnly hides it
        "key_api": REDACTED, "misc": {"pin": REDACTED, "label": "home"}, "plain": 1,
    }
    text = json.dumps(out)
    for secret in ("t0k3n", "hunter2", "k1", "shut", "deep", "r3f", "abc", "1234"):
        assert secret not in text


def test_redacted_without_schema_or_secrets_is_a_copy() -> None:
    config = {"a": {"b": 1}}
    assert redacted(None, config) == config
    assert redacted({"properties": {"a": {}}}, config) == config
    assert secret_paths({"properties": {"a": {"writeOnly": False}}}, config) == set()


def test_diff_lines_never_show_secrets() -> None:
    old = validated(SCHEMA, {"db": {"password": "old-secret"}, "top_n": 5}, plugin="p")
    new = validated(SCHEMA, {"db": {"password": "new-secret", "host": "db2"}, "top_n": 7,
                             "tags": ["x"]}, plugin="p")
    lines = diff(old, new, SCHEMA)
    assert lines == [
        '$.db.host: "localhost" -> "db2"',
        "$.db.password: changed (secret)",
        '$.tags: added ["x"]',
        "$.top_n: 5 -> 7",
    ]
    assert not any("secret" in line and "-secret" in line for line in lines)
    assert diff(new, new, SCHEMA) == []
    removed = diff(new, {"top_n": 7}, SCHEMA)
    assert "$.db.password: removed" in removed
    assert not any("new-secret" in line for line in removed)
    added = diff({}, {"db": {"password": "s3"}}, SCHEMA)
    assert added == ["$.db: removed (was {})", "$.db.password: added (secret)"] or \
        "$.db.password: added (secret)" in added
    assert not any("s3" in line for line in added)
    # Equal secrets are not reported as changed.
    assert diff({"db": {"password": "a"}}, {"db": {"password": "a"}}, SCHEMA) == []
