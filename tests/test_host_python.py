"""Python plugins (componentize-py) in a PluginHost: the text-tools sample beside a Rust
plugin (word-stats) on the same extension point, and the ABI 1.1 test plugin calling a host
function and dispatching a point through the SDK's ``host`` module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import plugbox
from tests.test_host_core import stage

STATS = {"type": "object", "required": ["words", "unique_words"],
         "properties": {"words": {"type": "integer"}, "unique_words": {"type": "integer"}}}


@pytest.fixture
def host(tmp_path: Path, cache_dir: Path, built_samples: dict[str, Path],
         rust_plugins: dict[str, Path]) -> Iterator[plugbox.PluginHost]:
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as h:
        h.extension_point("text.analyze", version="1.2.0", output_schema=STATS,
                          input_schema={"type": "object", "required": ["text"]})
        h.extension_point("text.first", version="1.0.0", mode="first", failure="propagate")
        impl = {"text.analyze": {"hook": "text.stats", "versions": ">=1.0,<2"},
                "text.first": {"hook": "text.stats"}}
        h.add(stage(built_samples["text-tools"], tmp_path / "py", "py-stats",
                    implements=impl), priority=1)
        h.add(stage(rust_plugins["word-stats"], tmp_path / "rs", "rust-stats",
                    implements=impl), priority=2)
        yield h


def test_python_and_rust_plugins_answer_the_same_point(host: plugbox.PluginHost) -> None:
    res = host.call("text.analyze", {"text": "the cat and the hat"})
    assert res.ok, res.failures
    assert [r.plugin for r in res.results] == ["rust-stats", "py-stats"]
    assert [(r.value["words"], r.value["unique_words"]) for r in res.results] == [(5, 4)] * 2
    hosted = host.get("py-stats")
    assert hosted is not None and hosted.plugin.manifest.implements["text.analyze"].hook == \
        "text.stats"


def test_a_python_plugins_failure_is_isolated_and_typed(host: plugbox.PluginHost) -> None:
    res = host.call("text.analyze", {"text": 42})  # both plugins refuse a non-string text
    assert res.results == []
    assert [(f.plugin, f.kind) for f in res.failures] == [("rust-stats", "GuestError"),
                                                         ("py-stats", "GuestError")]
    assert all(isinstance(f.error, plugbox.GuestError) and f.error.kind == "invalid-input"
               for f in res.failures)


def test_first_mode_with_python_behind_rust(host: plugbox.PluginHost) -> None:
    res = host.call("text.first", {"text": "a b"})
    assert [r.plugin for r in res.results] == ["rust-stats"] and res.value["words"] == 2
    host.remove("rust-stats")
    res = host.call("text.first", {"text": "a b c"})
    assert [r.plugin for r in res.results] == ["py-stats"] and res.value["words"] == 3


@pytest.fixture(scope="session")
def python_caller() -> Path:
    """The ABI 1.1 Python test plugin (tests/abi11/python/caller: hooks ``call.json`` and
    ``dispatch`` forward to the SDK's ``host`` module), built once and cached."""
    from plugbox.authoring import _pybuild

    repo = Path(__file__).resolve().parent.parent
    module = _pybuild.build_python_plugin(
        repo / "tests" / "abi11" / "python" / "caller",
        out_dir=repo / ".build" / "pytest-pybuild" / "abi11-caller")
    return module.parent


def test_a_python_plugin_calls_host_functions_and_dispatches(
        tmp_path: Path, cache_dir: Path, python_caller: Path,
        rust_plugins: dict[str, Path]) -> None:
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as host:
        host.function("battles.query", lambda value, plugin: {"id": value["id"], "by": plugin})
        host.extension_point("battle.look", version="1.0.0", mode="first")
        host.extension_point("relay", version="1.0.0", payload="bytes", mode="first")
        host.extension_point("report.section", version="1.0.0")
        host.add(stage(rust_plugins["echo"], tmp_path / "echo", "section-echo",
                       implements={"report.section": {"hook": "echo"}}))
        host.add(stage(python_caller, tmp_path / "py", "py-caller",
                       implements={"battle.look": {"hook": "call.json"},
                                   "relay": {"hook": "dispatch"}},
                       permissions={"functions": ["battles.*"], "dispatch": ["report.*"],
                                    "kv": {}}))
        res = host.call("battle.look", {"name": "battles.query", "value": {"id": 9}})
        assert res.value == {"id": 9, "by": "py-caller"}
        res = host.call("relay", b'report.section\0{"title": "T"}')
        dispatched = json.loads(res.value)
        assert dispatched["point"] == "report.section"
        assert dispatched["results"] == [{"plugin": "section-echo", "value": {"title": "T"}}]
        (failure,) = host.call("relay", b'secret.point\0{}').failures  # not granted
        assert isinstance(failure.error, plugbox.PluginCallError)


@pytest.fixture(scope="session")
def python_raiser() -> Path:
    """tests/pyplugins/raiser (hook ``divide``, with the log permission), built once and
    cached."""
    from plugbox.authoring import _pybuild

    repo = Path(__file__).resolve().parent.parent
    module = _pybuild.build_python_plugin(
        repo / "tests" / "pyplugins" / "raiser",
        out_dir=repo / ".build" / "pytest-pybuild" / "raiser")
    return module.parent


def test_a_python_plugins_traceback_is_one_multi_line_record(
        tmp_path: Path, cache_dir: Path, python_raiser: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10 §5: the SDK logs an exception's traceback; the host keeps it one record of
    several lines (not one line of literal \\n's), with the lines in ``record.lines``."""
    import logging

    with plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=cache_dir) as runtime:
        plugin = runtime.load(python_raiser)
        assert plugin.call_json("divide", {"a": 6, "b": 3}) == 2.0
        with caplog.at_level(logging.ERROR, logger="plugbox.plugin.raiser"):
            with pytest.raises(plugbox.GuestError, match="ZeroDivisionError"):
                plugin.call_json("divide", {"a": 1, "b": 0})
    (record,) = [r for r in caplog.records if r.name == "plugbox.plugin.raiser"]
    lines = record.lines  # type: ignore[attr-defined]
    message = record.getMessage()
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert any("in _ratio" in line for line in lines)  # the frame two levels down
    assert "\\n" not in message and message.count("\n") == len(lines) - 1
    assert all(line.startswith("    ") for line in message.split("\n")[1:])
    assert (record.plugin, record.hook) == ("raiser", "divide")  # type: ignore[attr-defined]
