"""The manifest's ``implements`` and ``extension_points`` (ABI 1.1): parsed onto frozen
dataclasses, checked and bounded; manifests without them stay valid."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox._manifest import (MAX_POINT_SCHEMA_BYTES, MAX_POINT_SCHEMA_DEPTH, Implementation,
                               PointSpec)

REPO = Path(__file__).resolve().parent.parent


def manifest(tmp_path: Path, **fields: Any) -> Path:
    module = b"\0asm\1\0\0\0"
    (tmp_path / "plugin.wasm").write_bytes(module)
    doc: dict[str, Any] = {
        "manifest_version": 1, "name": "ext", "version": "0.1.0", "abi": "1.0",
        "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(module).hexdigest()},
        "hooks": ["analyze", "report.section"],
    }
    doc.update(fields)
    (tmp_path / "plugbox.json").write_text(json.dumps(doc))
    return tmp_path


def refused(tmp_path: Path, **fields: Any) -> plugbox.ManifestError:
    with pytest.raises(plugbox.ManifestError) as info:
        plugbox.load_manifest(manifest(tmp_path, **fields))
    return info.value


def test_committed_sample_manifests_stay_valid_without_the_new_fields() -> None:
    paths = sorted(REPO.glob("sample-plugins/*/*/plugbox.json"))
    assert len(paths) >= 8
    for path in paths:
        m = plugbox.load_manifest(path)
        if m.web is not None:  # web-greeter: a Flask-extension sample implements its points
            continue
        assert m.implements == {} and m.extension_points == {}


def test_implements_parses_with_defaults(tmp_path: Path) -> None:
    m = plugbox.load_manifest(manifest(tmp_path, implements={
        "text.analyze": {"versions": ">=1.0,<2", "hook": "analyze", "before": ["other"],
                         "after": ["third"]},
        "report.section": {},
    }))
    assert m.implements["text.analyze"] == Implementation(
        point="text.analyze", versions=">=1.0,<2", hook="analyze", before=("other",),
        after=("third",))
    default = m.implements["report.section"]
    assert (default.hook, default.versions, default.before, default.after) == (
        "report.section", "", (), ())
    assert default.accepts("7.0.0") and m.implements["text.analyze"].accepts("1.9.0")
    assert not m.implements["text.analyze"].accepts("2.0.0")
    with pytest.raises(AttributeError):
        m.implements["text.analyze"].hook = "x"  # type: ignore[misc]
    hash(m)  # the manifest stays hashable


def test_extension_points_parse_with_defaults(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}}
    m = plugbox.load_manifest(manifest(tmp_path, extension_points={
        "battle.summary": {"version": "1.0.0", "mode": "first", "failure": "propagate",
                           "input_schema": schema, "output_schema": True,
                           "description": "one line"},
        "battle.hint": {"version": "2.1.0"},
    }))
    assert m.extension_points["battle.summary"] == PointSpec(
        name="battle.summary", version="1.0.0", mode="first", failure="propagate",
        input_schema=schema, output_schema=True, description="one line")
    hint = m.extension_points["battle.hint"]
    assert (hint.mode, hint.failure, hint.input_schema, hint.output_schema) == (
        "each", "isolate", None, None)


@pytest.mark.parametrize("fields, json_path, words", [
    ({"implements": {"a.b": {"versions": "not a spec"}}}, '$.implements["a.b"].versions',
     "PEP 440"),
    ({"implements": {"a.b": {"hook": "missing"}}}, '$.implements["a.b"].hook', "$.hooks"),
    ({"implements": {"a.b": {}}}, '$.implements["a.b"]', "'a.b'"),
    ({"implements": {"analyze": {"before": ["ext"]}}}, "$.implements.analyze.before",
     "names itself"),
    ({"implements": {"report.section": {}},
      "extension_points": {"report.section": {"version": "1.0.0"}}},
     '$.implements["report.section"]', "dispatch into itself"),
    ({"implements": {"Bad": {}}}, "$.implements", "not valid"),
    ({"implements": {"analyze": {"colour": "red"}}}, "$.implements.analyze.colour", "unknown"),
    ({"extension_points": {"x.y": {}}}, '$.extension_points["x.y"].version', "missing"),
    ({"extension_points": {"x.y": {"version": "1.0"}}}, '$.extension_points["x.y"].version',
     "semantic version"),
    ({"extension_points": {"x.y": {"version": "1.0.0", "mode": "all"}}},
     '$.extension_points["x.y"].mode', "not allowed"),
    ({"extension_points": {"x.y": {"version": "1.0.0", "input_schema": {"type": "nope"}}}},
     '$.extension_points["x.y"].input_schema.type', "not a valid JSON Schema"),
    ({"extension_points": {"x.y": {"version": "1.0.0",
                                   "output_schema": {"pattern": "(?<=x)y"}}}},
     '$.extension_points["x.y"].output_schema.pattern', "RE2"),
    ({"extension_points": {"x.y": {"version": "1.0.0",
                                   "input_schema": {"enum": ["x" * 1000] * 70}}}},
     '$.extension_points["x.y"].input_schema', f"{MAX_POINT_SCHEMA_BYTES}"),
])
def test_bad_entries_are_refused_with_the_json_path(tmp_path: Path, fields: dict[str, Any],
                                                    json_path: str, words: str) -> None:
    error = refused(tmp_path, **fields)
    assert error.json_path == json_path, str(error)
    assert words in str(error)


def test_point_schemas_are_depth_capped(tmp_path: Path) -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_POINT_SCHEMA_DEPTH // 2 + 1):  # two levels each: still under 64
        schema = {"properties": {"a": schema}}
    error = refused(tmp_path, extension_points={"x.y": {"version": "1.0.0",
                                                        "output_schema": schema}})
    assert "nests more than" in str(error)
    assert error.json_path == '$.extension_points["x.y"].output_schema'


def test_counts_are_capped(tmp_path: Path) -> None:
    many = {f"p{i}": {"hook": "analyze"} for i in range(257)}
    assert refused(tmp_path, implements=many).json_path == "$.implements"
    points = {f"p{i}": {"version": "1.0.0"} for i in range(65)}
    assert refused(tmp_path, extension_points=points).json_path == "$.extension_points"
    names = [f"n{i}" for i in range(65)]
    assert refused(tmp_path, implements={"analyze": {"before": names}}).json_path == \
        "$.implements.analyze.before"
