"""Host functions and plugin-defined extension points through the host's router, called
directly in Python the way the runtime calls it for a guest's ``host.call`` and
``host.dispatch`` (the end-to-end tests with real guests are in test_host_abi.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.services._services import HostCallError
from tests.conftest import wat_module, write_plugin


def call(host: plugbox.PluginHost, name: str, value: Any, plugin: str = "guest") -> Any:
    return json.loads(host.router.call_function(plugin, name, json.dumps(value).encode()))


def failing(fn: Callable[[], object]) -> HostCallError:
    with pytest.raises(HostCallError) as info:
        fn()
    return info.value


# -- host functions --------------------------------------------------------------------------


def test_a_json_function_gets_the_value_and_returns_json(host: plugbox.PluginHost) -> None:
    seen: list[Any] = []
    host.function("battles.query", lambda value: seen.append(value) or {"rows": [1, 2]},
                  input_schema={"type": "object", "required": ["where"]},
                  output_schema={"type": "object"})
    assert call(host, "battles.query", {"where": "x"}) == {"rows": [1, 2]}
    assert seen == [{"where": "x"}]
    assert set(host.functions) == {"battles.query"}


def test_a_handler_with_a_plugin_parameter_learns_the_caller(host: plugbox.PluginHost) -> None:
    host.function("who", lambda value, plugin: {"caller": plugin, "got": value})
    assert call(host, "who", 5, plugin="word-stats") == {"caller": "word-stats", "got": 5}


def test_bad_input_is_invalid_input_with_the_json_path(host: plugbox.PluginHost) -> None:
    host.function("battles.query", lambda value: value, input_schema={
        "type": "object", "properties": {"limit": {"type": "integer", "maximum": 100}}})
    error = failing(lambda: call(host, "battles.query", {"limit": 1000}))
    assert error.kind == "invalid-input" and "$.limit" in error.message
    error = failing(lambda: host.router.call_function("g", "battles.query", b"{oops"))
    assert error.kind == "invalid-input" and "not JSON" in error.message


def test_a_handler_exception_is_a_logged_failure(host: plugbox.PluginHost,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def broken(value: Any) -> Any:
        raise RuntimeError("database is down: secret dsn")

    host.function("battles.query", broken)
    with caplog.at_level(logging.ERROR, logger="plugbox.host"):
        error = failing(lambda: call(host, "battles.query", {}, plugin="stats"))
    assert error.kind == "failure" and "RuntimeError" in error.message
    assert "secret dsn" not in error.message  # the guest does not see host internals
    (record,) = [r for r in caplog.records if r.name == "plugbox.host"]
    assert "'battles.query'" in record.getMessage() and "'stats'" in record.getMessage()
    assert record.exc_info is not None


def test_a_handler_may_choose_the_abi_error(host: plugbox.PluginHost) -> None:
    def lookup(value: Any) -> Any:
        raise HostCallError("not-found", f"no battle {value!r}")

    host.function("battles.get", lookup)
    error = failing(lambda: call(host, "battles.get", 42))
    assert (error.kind, error.message) == ("not-found", "no battle 42")


def test_a_result_failing_the_output_schema_is_a_failure(host: plugbox.PluginHost,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    host.function("count", lambda value: "many", output_schema={"type": "integer"})
    with caplog.at_level(logging.ERROR, logger="plugbox.host"):
        error = failing(lambda: call(host, "count", None))
    assert error.kind == "failure" and "output_schema" in error.message
    assert any("invalid result" in r.getMessage() for r in caplog.records)
    host.function("not.json", lambda value: {1, 2})
    assert failing(lambda: call(host, "not.json", None)).kind == "failure"


def test_bytes_functions_and_unknown_functions(host: plugbox.PluginHost) -> None:
    host.function("blob.reverse", lambda data: data[::-1], payload="bytes")
    assert host.router.call_function("g", "blob.reverse", b"\x00\x01\x02") == b"\x02\x01\x00"
    host.function("blob.bad", lambda data: "text", payload="bytes")
    assert failing(lambda: host.router.call_function("g", "blob.bad", b"")).kind == "failure"
    error = failing(lambda: host.router.call_function("g", "nope", b""))
    assert error.kind == "not-found" and "'nope'" in error.message


def test_function_declarations_are_checked(host: plugbox.PluginHost) -> None:
    with pytest.raises(plugbox.UsageError, match="callable"):
        host.function("f", "not callable")  # type: ignore[arg-type]
    with pytest.raises(plugbox.UsageError, match="not a valid JSON Schema"):
        host.function("f", print, input_schema={"type": 7})
    with pytest.raises(plugbox.UsageError, match="name"):
        host.function("Bad Name", print)
    host.function("f", print)
    with pytest.raises(plugbox.UsageError, match="already registered"):
        host.function("f", print)


# -- plugin-defined extension points ---------------------------------------------------------

REPORT = {"version": "1.0.0", "mode": "each", "failure": "isolate",
          "input_schema": {"type": "object", "required": ["battle"],
                           "properties": {"battle": {"type": "integer"}}},
          "output_schema": {"type": "object", "required": ["title"]}}


def test_a_plugins_points_are_registered_and_implemented_by_others(
        host: plugbox.PluginHost, const: Callable[..., Path]) -> None:
    host.add(const("report", "null", extension_points={"report.section": REPORT}))
    point = host.points["report.section"]
    assert (point.owner, point.version, point.payload) == ("report", "1.0.0", "json")
    host.add(const("casualties", '{"title": "Casualties"}',
                   implements={"report.section": {"hook": "run", "versions": ">=1,<2"}}))
    host.add(const("broken", '{"no": "title"}', implements={"report.section": {"hook": "run"}}))
    out = json.loads(host.router.dispatch("report", "report.section", b'{"battle": 3}'))
    assert out["point"] == "report.section" and out["mode"] == "each"
    assert out["results"] == [{"plugin": "casualties", "value": {"title": "Casualties"}}]
    assert [(f["plugin"], f["kind"]) for f in out["failures"]] == [
        ("broken", "InvalidResultError")]
    assert "$" in out["failures"][0]["error"]
    # the host may dispatch it too
    assert host.call("report.section", {"battle": 1}).values == [{"title": "Casualties"}]


def test_guest_dispatch_payload_errors(host: plugbox.PluginHost,
                                       const: Callable[..., Path]) -> None:
    host.add(const("report", "null", extension_points={"report.section": REPORT}))
    error = failing(lambda: host.router.dispatch("report", "report.section", b'{"battle": "x"}'))
    assert error.kind == "invalid-input" and "$.battle" in error.message
    error = failing(lambda: host.router.dispatch("report", "report.section", b"{nope"))
    assert error.kind == "invalid-input" and "not JSON" in error.message
    error = failing(lambda: host.router.dispatch("report", "report.missing", b"{}"))
    assert error.kind == "not-found"


def test_guest_dispatch_under_propagate_is_a_failure(host: plugbox.PluginHost,
                                                     const: Callable[..., Path]) -> None:
    host.add(const("report", "null", extension_points={
        "report.section": {**REPORT, "failure": "propagate"}}))
    host.add(const("broken", "[]", implements={"report.section": {"hook": "run"}}))
    error = failing(lambda: host.router.dispatch("report", "report.section", b'{"battle": 1}'))
    assert error.kind == "failure" and "broken" in error.message


def test_implementing_a_plugin_point_needs_its_plugin_and_version(
        host: plugbox.PluginHost, const: Callable[..., Path]) -> None:
    impl = const("casualties", "{}", implements={"report.section": {"hook": "run"}})
    with pytest.raises(plugbox.IncompatiblePointError, match="report.section"):
        host.add(impl)
    host.add(const("report", "null", extension_points={"report.section": REPORT}))
    with pytest.raises(plugbox.IncompatiblePointError) as info:
        host.add(const("future", "{}", implements={
            "report.section": {"hook": "run", "versions": ">=2"}}))
    assert info.value.versions == ("1.0.0",)
    host.add(impl)
    assert [hp.name for hp in host.implementations("report.section")] == ["casualties"]


def test_a_point_can_be_declared_once(host: plugbox.PluginHost,
                                      const: Callable[..., Path]) -> None:
    host.extension_point("report.section", version="1.0.0")
    with pytest.raises(plugbox.IncompatiblePointError, match="already declared .by the host"):
        host.add(const("report", "null", extension_points={"report.section": REPORT}))
    host.add(const("a", "null", extension_points={"a.point": {"version": "1.0.0"}}))
    with pytest.raises(plugbox.IncompatiblePointError, match="by plugin 'a'"):
        host.add(const("b", "null", extension_points={"a.point": {"version": "1.0.0"}}))
    with pytest.raises(plugbox.UsageError, match="already declared"):
        host.extension_point("a.point", version="1.0.0")


def test_removing_a_plugin_whose_points_are_implemented_is_refused(
        host: plugbox.PluginHost, const: Callable[..., Path]) -> None:
    host.add(const("report", "null", extension_points={"report.section": REPORT}))
    host.add(const("casualties", "{}", implements={"report.section": {"hook": "run"}}))
    with pytest.raises(plugbox.UsageError, match="casualties implement"):
        host.remove("report")
    host.remove("casualties")
    host.remove("report")
    assert "report.section" not in host.points


def test_a_costly_plugin_schema_refuses_the_payload_within_the_budget(
        host: plugbox.PluginHost, const: Callable[..., Path]) -> None:
    # Each level refers to the next twice: 2**30 evaluations unbounded; small as text.
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
            for i in range(30)}
    defs["d30"] = {"type": "integer"}
    schema = {"$defs": defs, "$ref": "#/$defs/d0"}
    host.add(const("report", "null", extension_points={
        "costly": {"version": "1.0.0", "input_schema": schema}}))
    error = failing(lambda: host.router.dispatch("report", "costly", b"1"))
    assert error.kind == "invalid-input" and "schema evaluations" in error.message


# -- re-entrancy -----------------------------------------------------------------------------


def test_a_plugin_is_not_dispatched_into_from_its_own_call(
        host: plugbox.PluginHost, const: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    host.add(const("self", '"me"', implements={"text.echo": {"hook": "run"}}))
    host.add(const("other", '"other"', implements={"text.echo": {"hook": "run"}}))
    # A host function called by plugin "self" dispatches a point "self" implements.
    host.function("relay", lambda value: host.call("text.echo", value).to_json())
    out = call(host, "relay", 1, plugin="self")
    assert out["results"] == [{"plugin": "other", "value": "other"}]
    assert [(f["plugin"], f["kind"]) for f in out["failures"]] == [
        ("self", "ReentrantDispatchError")]
    # from the host itself, both answer
    assert host.call("text.echo", 1).values == ["me", "other"]
