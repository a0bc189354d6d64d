"""One ABI, two binary forms: Rust samples built as core modules and wrapped as components
(wasm-tools component embed + new) give identical results through the same Plugin API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.authoring._build import wrap_component
from plugbox.engine._wasmparse import inspect_module
from tests.conftest import HOSTILE_EXPECTATIONS

WRAPPED = ("echo", "counter", "word-stats", "hostile")


@pytest.fixture(scope="module")
def forms(rust_plugins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, dict[str, Path]]:
    out = tmp_path_factory.mktemp("components")
    return {
        "core": {name: rust_plugins[name] for name in WRAPPED},
        "component": {name: wrap_component(rust_plugins[name], out) for name in WRAPPED},
    }


def test_wrapped_plugins_really_are_components(forms: dict[str, dict[str, Path]]) -> None:
    for name in WRAPPED:
        core = (forms["core"][name] / "plugin.wasm").read_bytes()
        comp = (forms["component"][name] / "plugin.wasm").read_bytes()
        assert inspect_module(core).kind == "core"
        assert inspect_module(comp).kind == "component"


def _transcript(rt: plugbox.Runtime, plugins: dict[str, Path]) -> list[Any]:
    """Drive echo, counter and word-stats through a fixed scenario; record every outcome."""
    out: list[Any] = []
    events: list[tuple[str, str, Any]] = []
    rt.events.subscribe("*", lambda e: events.append((e.plugin, e.topic, e.json())))
    echo = rt.load(plugins["echo"])
    for size in (0, 1, 16, 1024, 65536, 300_000):
        payload = bytes((i * 31 + size) % 256 for i in range(size))
        out.append(echo.call("echo", payload) == payload)
    counter = rt.load(plugins["counter"])
    for request in ({"name": "a"}, {"name": "a", "by": 5}, {"name": "b", "by": -2}):
        out.append(counter.call_json("counter.incr", request))
    got = counter.call_json("counter.get", {"name": "a"})
    out.append({k: v for k, v in got.items() if k != "updated_at"})
    listed = counter.call_json("counter.list", {})
    out.append(json.dumps(listed, sort_keys=True).count('"value"'))
    out.append(counter.call_json("counter.reset", {"name": "a"}))
    for bad in ({"name": ""}, {"nam": "x"}):
        with pytest.raises(plugbox.GuestError) as info:
            counter.call_json("counter.incr", bad)
        out.append((info.value.kind, info.value.detail))
    stats = rt.load(plugins["word-stats"], config={"top_n": 3})
    out.append(stats.call_json("text.stats", {"text": "One two two three three three, four!"}))
    out.append(events)
    return out


def test_core_and_component_forms_give_identical_results(
    forms: dict[str, dict[str, Path]], tmp_path: Path, cache_dir: Path
) -> None:
    transcripts = {}
    for form, plugins in forms.items():
        with plugbox.Runtime(state_dir=tmp_path / form, cache_dir=cache_dir) as rt:
            transcripts[form] = _transcript(rt, plugins)
    assert transcripts["core"] == transcripts["component"]
    assert all(transcripts["core"][:6])  # every echo round-tripped


# The memory bomb is classified differently per form; it has its own test below.
HOSTILE = [row for row in HOSTILE_EXPECTATIONS if row[0] != "bomb"]


@pytest.mark.parametrize("form", ["core", "component"])
def test_hostile_guest_fails_the_same_way_in_both_forms(
    forms: dict[str, dict[str, Path]], runtime: plugbox.Runtime, form: str
) -> None:
    hostile = runtime.load(forms[form]["hostile"])
    for hook, options, expected in HOSTILE:
        with pytest.raises(plugbox.PluginCallError) as info:
            hostile.call(hook, b"", **options)
        assert type(info.value) is expected, (form, hook, info.value)
        assert hostile.call("echo", b"ok") == b"ok"


def test_memory_bomb_classification_differs_only_where_memory_is_hidden(
    forms: dict[str, dict[str, Path]], runtime: plugbox.Runtime
) -> None:
    # The core fast path sees the guest's memory at its cap and says so; the component API
    # hides a component's memories, so the same abort reads as a trap. Both stop the call and
    # the plugin serves on.
    core = runtime.load(forms["core"]["hostile"])
    comp = runtime.load(forms["component"]["hostile"])
    with pytest.raises(plugbox.MemoryLimitExceeded):
        core.call("bomb")
    with pytest.raises(plugbox.GuestTrap) as info:
        comp.call("bomb")
    assert "unreachable" in str(info.value)
    assert comp.call("echo", b"after") == b"after"


def test_component_wasi_is_deny_by_default_but_captures_nothing_for_rust(
    forms: dict[str, dict[str, Path]], runtime: plugbox.Runtime
) -> None:
    # A wrapped Rust plugin imports no WASI at all; its component runs with the same grants.
    echo = runtime.load(forms["component"]["echo"], mode="fresh")
    assert echo.call("echo", b"fresh") == b"fresh"
    assert echo.call("echo", b"again") == b"again"
