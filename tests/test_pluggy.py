"""The pluggy adapter (issue 8 §6): sandboxed plugins (Rust and WAT) registered into a real
pluggy PluginManager beside in-process Python plugins, on the host's own hookspecs
(tests/pluggy_specs.py): arguments by name as JSON, results decoded, firstresult, tryfirst /
trylast from priority, failures isolated or propagated."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

import plugbox
from plugbox.integrations.pluggy import SandboxedPlugin, register, register_host
from tests import pluggy_specs
from tests.conftest import ECHO_BODY, wat_module, write_plugin
from tests.pluggy_specs import hookimpl

# pooled_instances=0: memories mapped on demand. A closed PluginHost with plugins is not
# collected yet (its router is reachable from each plugin's finalizer), and each would
# keep a 2 TiB pool reserved until the process runs out of address space.
HOST_OPTIONS: dict[str, Any] = {"pooled_instances": 0}

TEXT = "the cat and the hat"


def returning(value: Any) -> str:
    """A WAT on-hook body returning ``value`` as JSON, whatever the payload."""
    data = json.dumps(value).encode()
    stores = "".join(f"(i32.store8 (i32.const {256 + i}) (i32.const {b}))"
                     for i, b in enumerate(data))
    return stores + f"""
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 256))
    (i32.store (i32.const 24) (i32.const {len(data)}))
    (i32.const 16)"""


@pytest.fixture
def pm() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("tally")
    manager.add_hookspecs(pluggy_specs)
    return manager


@pytest.fixture
def wat(runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]) -> Callable[..., plugbox.Plugin]:
    """wat(name, body, hooks) -> a loaded WAT plugin."""
    def load(name: str, body: str, hooks: tuple[str, ...]) -> plugbox.Plugin:
        return runtime.load(wat_plugin(body, name=name, hooks=hooks))
    return load


class PythonStats:
    """An in-process plugin on the same hook."""

    @hookimpl
    def text_stats(self, text: str) -> dict[str, Any]:
        return {"words": len(text.split()), "by": "python"}


def test_a_rust_plugin_answers_a_hookspec_beside_a_python_plugin(
    pm: pluggy.PluginManager, runtime: plugbox.Runtime, rust_plugins: dict[str, Path]
) -> None:
    pm.register(PythonStats())
    stats = runtime.load(rust_plugins["word-stats"], config={"top_n": 1})
    proxy = register(pm, stats)  # its hook text.stats answers the spec text_stats
    assert proxy.hooks == {"text_stats": "text.stats"}
    # A generated function with the spec's exact argument names: what pluggy matches on.
    code = proxy.text_stats.__code__  # type: ignore[attr-defined]
    assert code.co_varnames[:code.co_argcount] == ("text",)
    results = pm.hook.text_stats(text=TEXT)
    assert results == [{"words": 5, "unique_words": 4, "top": [{"word": "the", "count": 2}]},
                       {"words": 5, "by": "python"}]
    assert pm.get_plugin("plugbox:word-stats") is proxy
    pm.unregister(proxy)
    assert pm.hook.text_stats(text=TEXT) == [{"words": 5, "by": "python"}]


def test_arguments_reach_the_guest_as_one_json_object_keyed_by_name(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin]
) -> None:
    register(pm, wat("echo", ECHO_BODY, ("tally_args",)))
    # The echo plugin returns its payload: exactly what it was sent.
    assert pm.hook.tally_args(a=1, b={"x": [True, None, "ü"]}) == [
        {"b": {"x": [True, None, "ü"]}, "a": 1}]


def test_a_hook_without_arguments_gets_an_empty_object(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin]
) -> None:
    register(pm, wat("echo", ECHO_BODY, ("tally_order",)))
    assert pm.hook.tally_order() == [{}]


def test_priority_maps_to_tryfirst_and_trylast_around_python_plugins(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin]
) -> None:
    class Py:
        @hookimpl
        def tally_order(self) -> str:
            return "python"

    register(pm, wat("last", returning("last"), ("tally_order",)), priority=-5)
    register(pm, wat("first", returning("first"), ("tally_order",)), priority=3)
    register(pm, wat("plain", returning("plain"), ("tally_order",)))
    pm.register(Py())
    # tryfirst, then pluggy's own order (last registered first), then trylast.
    assert pm.hook.tally_order() == ["first", "python", "plain", "last"]


def test_firstresult_stops_at_the_first_non_null_answer(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin]
) -> None:
    class Undecided:
        @hookimpl(tryfirst=True)
        def tally_pick(self, choices: list[str]) -> None:
            return None

    never = wat("never", returning("never"), ("pick",))
    register(pm, never, hooks={"tally_pick": "pick"}, priority=-1)
    register(pm, wat("picker", returning("b"), ("pick",)), hooks={"tally_pick": "pick"})
    register(pm, wat("abstains", returning(None), ("pick",)), hooks={"tally_pick": "pick"},
             priority=1)
    pm.register(Undecided())
    assert pm.hook.tally_pick(choices=["a", "b"]) == "b"
    assert never.calls == 0  # firstresult: the rest never ran


def test_isolate_skips_a_failing_plugin_and_records_why(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin],
    caplog: pytest.LogCaptureFixture,
) -> None:
    register(pm, wat("steady", returning("steady"), ("tally_order",)))
    broken = register(pm, wat("broken", "unreachable", ("tally_order",)), failure="isolate")
    pm.register(type("Py", (), {"tally_order": hookimpl(lambda self: "python")})())
    with caplog.at_level(logging.WARNING, logger="plugbox.integrations.pluggy"):
        assert pm.hook.tally_order() == ["python", "steady"]
    [failure] = broken.failures
    assert (failure.plugin, failure.hook, failure.target) == \
        ("broken", "tally_order", "tally_order")
    assert isinstance(failure.error, plugbox.GuestTrap)
    assert "'broken'" in caplog.text and "isolate" in caplog.text
    # The next call tries the plugin again (a trapped instance is replaced, not the plugin).
    assert pm.hook.tally_order() == ["python", "steady"] and len(broken.failures) == 2


def test_isolate_covers_a_guest_error_of_a_rust_plugin(
    pm: pluggy.PluginManager, runtime: plugbox.Runtime, rust_plugins: dict[str, Path]
) -> None:
    proxy = register(pm, runtime.load(rust_plugins["word-stats"]), failure="isolate")
    # word-stats refuses a text that is not a string: its own failure, isolated.
    assert pm.hook.text_stats(text=42) == []
    [failure] = proxy.failures
    assert isinstance(failure.error, plugbox.GuestError)
    assert failure.error.kind == "invalid-input"
    assert pm.hook.text_stats(text="a b")[0]["words"] == 2


def test_propagate_raises_the_typed_error_and_stops_the_call(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin]
) -> None:
    later = wat("later", returning("later"), ("tally_order",))
    register(pm, later)  # registered first: called after the broken one
    register(pm, wat("broken", "unreachable", ("tally_order",)))
    with pytest.raises(plugbox.GuestTrap) as info:
        pm.hook.tally_order()
    assert info.value.plugin == "broken" and info.value.hook == "tally_order"
    assert later.calls == 0


def test_arguments_that_are_not_json_are_a_usage_error(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin]
) -> None:
    echo = register(pm, wat("echo", ECHO_BODY, ("tally_args",)), failure="isolate")
    with pytest.raises(plugbox.UsageError, match="cannot be sent to a sandboxed plugin as JSON"):
        pm.hook.tally_args(a=object(), b=1)
    assert echo.plugin.calls == 0 and not echo.failures


def test_registration_refusals(
    pm: pluggy.PluginManager, wat: Callable[..., plugbox.Plugin]
) -> None:
    plugin = wat("misc", ECHO_BODY, ("unrelated",))
    with pytest.raises(plugbox.UsageError, match="implements none of the plugin manager"):
        register(pm, plugin)
    with pytest.raises(plugbox.UsageError, match="no hookspec 'nope'"):
        register(pm, plugin, hooks={"nope": "unrelated"})
    with pytest.raises(plugbox.UsageError, match="has no hook 'missing'"):
        register(pm, plugin, hooks={"tally_order": "missing"})
    with pytest.raises(plugbox.UsageError, match="failure must be"):
        register(pm, plugin, hooks={"tally_order": "unrelated"},
                 failure="ignore")  # type: ignore[arg-type]
    proxy = register(pm, plugin, hooks={"tally_order": "unrelated"})
    assert isinstance(proxy, SandboxedPlugin)
    with pytest.raises(ValueError):  # pluggy's own refusal passes through
        register(pm, plugin, hooks={"tally_order": "unrelated"})


# -- plugins of a PluginHost ----------------------------------------------------------------------

@pytest.fixture
def host(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    with plugbox.PluginHost(state_dir=tmp_path / "host",
                            runtime_options=HOST_OPTIONS | {"cache_dir": cache_dir}) as h:
        yield h


@pytest.fixture
def hosted(host: plugbox.PluginHost, tmp_path: Path) -> Callable[..., plugbox.HostedPlugin]:
    """hosted(name, body, point, priority=0, enabled=True) -> a WAT plugin added to the host,
    implementing ``point`` with its hook "run"."""
    def add(name: str, body: str, point: str, priority: int = 0,
            enabled: bool = True) -> plugbox.HostedPlugin:
        path = write_plugin(tmp_path / "hosted" / name, wat_module(body), name=name,
                            hooks=("run",), implements={point: {"hook": "run"}})
        return host.add(path, priority=priority, enabled=enabled)
    return add


def test_a_hosts_plugins_answer_in_host_order_beside_python_plugins(
    pm: pluggy.PluginManager, host: plugbox.PluginHost,
    hosted: Callable[..., plugbox.HostedPlugin],
) -> None:
    host.extension_point("tally.order", version="1.0.0")
    for name, priority in (("low", -1), ("mid-a", 0), ("mid-b", 0), ("high", 3)):
        hosted(name, returning(name), "tally.order", priority)
    proxies = register_host(pm, host)
    assert [p.plugin.name for p in proxies] == ["high", "mid-a", "mid-b", "low"]
    assert proxies[0].hooks == {"tally_order": "tally.order"}
    pm.register(type("Py", (), {"tally_order": hookimpl(lambda self: "python")})())
    assert pm.hook.tally_order() == ["high", "python", "mid-a", "mid-b", "low"]


def test_a_hosted_plugin_takes_its_points_failure_policy(
    pm: pluggy.PluginManager, host: plugbox.PluginHost,
    hosted: Callable[..., plugbox.HostedPlugin],
) -> None:
    host.extension_point("tally.order", version="1.0.0", failure="isolate")
    host.extension_point("tally.pick", version="1.0.0", mode="first", failure="propagate")
    hosted("ok", returning("ok"), "tally.order")
    trap_order = register(pm, hosted("trap-order", "unreachable", "tally.order"), host=host)
    register(pm, hosted("trap-pick", "unreachable", "tally.pick"), host=host)
    register(pm, host.get("ok"), host=host)  # type: ignore[arg-type]
    assert pm.hook.tally_order() == ["ok"]
    assert isinstance(trap_order.failures[0].error, plugbox.GuestTrap)
    assert trap_order.failures[0].target == "tally.order"
    with pytest.raises(plugbox.GuestTrap):
        pm.hook.tally_pick(choices=["a"])


def test_a_hosted_plugin_is_called_through_its_points_schemas(
    pm: pluggy.PluginManager, host: plugbox.PluginHost,
    hosted: Callable[..., plugbox.HostedPlugin],
) -> None:
    host.extension_point(
        "tally.pick", version="1.0.0", mode="first", failure="isolate",
        input_schema={"type": "object", "required": ["choices"],
                      "properties": {"choices": {"type": "array", "items": {"type": "string"}}}},
        output_schema={"type": "string"})
    bad = register(pm, hosted("number", returning(7), "tally.pick", 1), host=host)
    register(pm, hosted("echo", ECHO_BODY, "tally.pick", -1), host=host)
    register(pm, hosted("word", returning("b"), "tally.pick"), host=host)
    assert pm.hook.tally_pick(choices=["a", "b"]) == "b"
    [failure] = bad.failures  # 7 is not a string: the output schema made it a failure
    assert isinstance(failure.error, plugbox.InvalidResultError)
    with pytest.raises(plugbox.PayloadError):  # the caller's mistake, under any policy
        pm.hook.tally_pick(choices=[1])


def test_a_disabled_or_removed_hosted_plugin_answers_nothing(
    pm: pluggy.PluginManager, host: plugbox.PluginHost,
    hosted: Callable[..., plugbox.HostedPlugin],
) -> None:
    host.extension_point("tally.order", version="1.0.0")
    hosted("off", returning("off"), "tally.order", enabled=False)
    hosted("on", returning("on"), "tally.order")
    register_host(pm, host)
    assert pm.hook.tally_order() == ["on"]
    host.remove("on")
    assert pm.hook.tally_order() == []


def test_a_hosted_plugin_needs_its_host(
    pm: pluggy.PluginManager, host: plugbox.PluginHost,
    hosted: Callable[..., plugbox.HostedPlugin],
) -> None:
    host.extension_point("tally.order", version="1.0.0")
    hp = hosted("h", returning("h"), "tally.order")
    with pytest.raises(plugbox.UsageError, match="pass the PluginHost"):
        register(pm, hp)
    with pytest.raises(plugbox.UsageError, match="no extension point 'nope'"):
        register(pm, hp, host=host, hooks={"tally_order": "nope"})
