"""Components cannot take more than their share: their core instances, memories and tables are
counted before compiling and capped, their memories share one cap, and their exports are
checked by type. Hostile components are written as component WAT around a wrapped core plugin
(wasm-tools component embed + new, then print, edit, parse)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugbox
from plugbox._policy import Policy
from plugbox.engine._wasmparse import check_module_shape, inspect_module, store_limits
from tests.conftest import ECHO_BODY, WAT_TEMPLATE, wat_module, write_plugin

REPO = Path(__file__).resolve().parent.parent
WASM_TOOLS = Path(sys.executable).parent / "wasm-tools"

pytestmark = pytest.mark.skipif(not WASM_TOOLS.exists(), reason="wasm-tools not installed")

ON_INIT = """
  (func (export "on-init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16))
"""
LOG_IMPORT = '(import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))'
#: The line of the printed component that gives on-hook its type.
ON_HOOK_TYPE = '(func (param "hook" string) (param "payload" 5) (result 6))'


def _tool(*args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run([str(WASM_TOOLS), *args], input=data, capture_output=True,
                          check=True, timeout=120)
    return proc.stdout


def _wrap(core: bytes, wit: Path, tmp: Path) -> bytes:
    (tmp / "core.wasm").write_bytes(core)
    _tool("component", "embed", str(wit), "--world", "plugin", str(tmp / "core.wasm"),
          "-o", str(tmp / "embedded.wasm"))
    return _tool("component", "new", str(tmp / "embedded.wasm"))


def _core(body: str = ECHO_BODY, imports: str = "", extra: str = "") -> bytes:
    text = WAT_TEMPLATE.format(body=body, imports=imports).rstrip().removesuffix(")")
    return bytes(wasmtime.wat2wasm(text + ON_INIT + extra + ")"))


@pytest.fixture(scope="module")
def echo_wat(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The echo plugin as a component, in the text format."""
    tmp = tmp_path_factory.mktemp("echo-component")
    return _tool("print", "-", data=_wrap(_core(), REPO / "abi", tmp)).decode()


def component(base: str, extra: str = "", *, replace: tuple[str, str] | None = None) -> bytes:
    """``base`` with ``extra`` definitions placed before its main core instance."""
    if replace is not None:
        assert replace[0] in base
        base = base.replace(replace[0], replace[1])
    at = base.index("  (core instance $main")
    return _tool("parse", "-", data=(base[:at] + extra + base[at:]).encode())


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[plugbox.Runtime]:
    with plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache") as runtime:
        yield runtime


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The components that reach wasmtime's compiler during the test."""
    from plugbox import _runtime

    seen: list[bytes] = []
    original = _runtime.compile_component

    def spy(engine: object, wasm: bytes) -> object:
        seen.append(wasm)
        return original(engine, wasm)  # type: ignore[arg-type]

    monkeypatch.setattr(_runtime, "compile_component", spy)
    return seen


def instances(module: str, count: int) -> str:
    return "".join(f"  (core instance (instantiate {module}))\n" for _ in range(count))


def hog(grow_pages: int = 0, minimum: int = 1) -> str:
    """A core module with its own memory whose start function grows it by ``grow_pages``,
    trapping when the growth is refused."""
    return f"""  (core module $hog (memory {minimum})
    (func $s (if (i32.eq (memory.grow (i32.const {grow_pages})) (i32.const -1))
                (then unreachable)))
    (start $s))
"""


def test_one_component_cannot_take_the_runtimes_instance_slots(
    rt: plugbox.Runtime, echo_wat: str, tmp_path: Path, compiled: list[bytes]
) -> None:
    # 999 empty core instances in 10 KB: before, every other plugin then failed with
    # LimitExceeded because the runtime-wide pool of 1000 slots was gone.
    data = component(echo_wat, "  (core module $e)\n" + instances("$e", 999))
    assert len(data) < 20_000
    hostile = write_plugin(tmp_path / "hostile", data, name="hostile")
    with pytest.raises(plugbox.PolicyViolationError, match="1000 core instances") as info:
        rt.load(hostile)
    assert info.value.limit == "max_component_core_instances"
    assert compiled == []  # refused before compiling
    others = [rt.load(write_plugin(tmp_path / f"ok{i}", component(echo_wat), name=f"ok{i}"))
              for i in range(3)]
    assert [p.call("run", b"fine") for p in others] == [b"fine"] * 3


def test_core_instances_are_counted_through_nested_components(
    rt: plugbox.Runtime, echo_wat: str, tmp_path: Path
) -> None:
    nested = "  (component $nest (core module $m) (core instance (instantiate $m)))\n"
    three = component(echo_wat, nested + "  (instance (instantiate $nest))\n" * 3)
    assert inspect_module(three).shape.core_instances == 4  # main + 3
    # The store allows exactly what was counted: a miscount would fail instantiation.
    plugin = rt.load(write_plugin(tmp_path / "three", three))
    assert plugin.call("run", b"x") == b"x"
    assert plugin._template.store_limits.instances == 4  # type: ignore[union-attr]
    many = component(echo_wat, nested + "  (instance (instantiate $nest))\n" * 40)
    with pytest.raises(plugbox.PolicyViolationError, match="41 core instances"):
        rt.load(write_plugin(tmp_path / "many", many, name="many"))


def test_the_memory_cap_is_the_total_over_all_core_instances(
    echo_wat: str, tmp_path: Path
) -> None:
    # 40 instances each holding 16 MiB loaded under a 16 MiB cap before (+651 MiB RSS).
    forty = component(echo_wat, hog(minimum=256) + instances("$hog", 40))
    roomy = Policy(max_component_core_instances=64, max_component_memories=64)
    with plugbox.Runtime(state_dir=tmp_path / "s1", policy=roomy) as rt:
        with pytest.raises(plugbox.PolicyViolationError, match="memory limit of 16777216"):
            rt.load(write_plugin(tmp_path / "forty", forty, limits={"memory_bytes": 16 << 20}))
    # Growth is held to the total too: main and the hog share 16 MiB, so the hog's start
    # function cannot grow its memory to 12 MiB (each memory alone is under the cap).
    grower = write_plugin(tmp_path / "grower",
                          component(echo_wat, hog(grow_pages=192) + instances("$hog", 1)),
                          limits={"memory_bytes": 16 << 20})
    with plugbox.Runtime(state_dir=tmp_path / "s2") as rt:
        with pytest.raises(plugbox.GuestTrap, match="unreachable"):
            rt.load(grower)
    enough = write_plugin(tmp_path / "enough",
                          component(echo_wat, hog(grow_pages=192) + instances("$hog", 1)),
                          limits={"memory_bytes": 32 << 20}, name="enough")
    with plugbox.Runtime(state_dir=tmp_path / "s3") as rt:
        assert rt.load(enough).call("run", b"ok") == b"ok"


def test_memories_and_tables_per_component_are_capped(
    rt: plugbox.Runtime, echo_wat: str, tmp_path: Path
) -> None:
    five = component(echo_wat, hog() + instances("$hog", 4))  # main's memory + 4
    with pytest.raises(plugbox.PolicyViolationError, match="5 memories") as info:
        rt.load(write_plugin(tmp_path / "mem", five))
    assert info.value.limit == "max_component_memories"
    tables = component(echo_wat, "  (core module $t (table 1 funcref))\n"
                       + instances("$t", 17))
    with pytest.raises(plugbox.PolicyViolationError, match="17 tables") as info:
        rt.load(write_plugin(tmp_path / "tab", tables, name="tab"))
    assert info.value.limit == "max_component_tables"


def test_component_start_up_failures_have_their_real_class(
    echo_wat: str, tmp_path: Path
) -> None:
    spin = component(echo_wat, "  (core module $spin (func $s (loop (br 0))) (start $s))\n"
                     + instances("$spin", 1))
    trap = component(echo_wat, "  (core module $trap (func $s unreachable) (start $s))\n"
                     + instances("$trap", 1))
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=tmp_path / "cache") as rt:
        with pytest.raises(plugbox.FuelExhausted, match="3,000,000 fuel"):
            rt.load(write_plugin(tmp_path / "fuel", spin, limits={"fuel": 3_000_000}))
        with pytest.raises(plugbox.DeadlineExceeded, match="150 ms"):
            rt.load(write_plugin(tmp_path / "deadline", spin,
                                 limits={"fuel": 10**10, "deadline_ms": 150}))
        with pytest.raises(plugbox.GuestTrap) as info:
            rt.load(write_plugin(tmp_path / "trap", trap))
    message = str(info.value)
    assert "unreachable" in message
    assert "\x00" not in message and "backtrace" not in message and "Caused by" not in message
    assert not list((tmp_path / "cache").glob("*.cwasm"))


def test_a_component_whose_instances_cannot_be_counted_is_refused(
    rt: plugbox.Runtime, echo_wat: str, tmp_path: Path
) -> None:
    data = component(echo_wat, '  (import "m" (core module $m))\n' + instances("$m", 1))
    with pytest.raises(plugbox.ModuleInterfaceError, match="cannot count"):
        rt.load(write_plugin(tmp_path / "p", data))


def test_an_on_hook_of_the_wrong_type_is_refused_at_load(
    rt: plugbox.Runtime, echo_wat: str, tmp_path: Path
) -> None:
    # result<_, error> instead of result<list<u8>, error>: the same core signature, so only
    # the component type tells; before, every call "succeeded" with an empty payload.
    wrong = ON_HOOK_TYPE.replace("(result 6)", "(result 3)")
    data = component(echo_wat, replace=(ON_HOOK_TYPE, wrong))
    with pytest.raises(plugbox.ModuleInterfaceError, match="result<list<u8>, error>") as info:
        rt.load(write_plugin(tmp_path / "p", data))
    assert "func(string, list<u8>) -> result<_, error>" in str(info.value)
    assert not list((tmp_path / "cache").glob("*.cwasm"))  # nothing cached


def test_a_patch_level_abi_import_links_in_a_component(
    rt: plugbox.Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wit = tmp_path / "wit"
    wit.mkdir()
    text = (REPO / "abi" / "plugbox.wit").read_text().replace("@1.1.0", "@1.1.1")
    (wit / "plugbox.wit").write_text(text)
    body = "(call $log (i32.const 2) (i32.const 100) (i32.const 5))" + ECHO_BODY
    core = _core(body, LOG_IMPORT.replace("@1.0.0", "@1.1.1"), '(data (i32.const 100) "hello")')
    data = _wrap(core, wit, tmp_path)
    assert "plugbox:plugin/log@1.1.1" in inspect_module(data).component_imports
    with caplog.at_level(logging.INFO):
        plugin = rt.load(write_plugin(tmp_path / "p", data, permissions={"log": True}))
        assert plugin.call("run", b"ok") == b"ok"
    assert [r.getMessage() for r in caplog.records
            if r.name == "plugbox.plugin.wat-plugin"] == ["hello"]


def test_the_python_sample_components_fit_the_default_caps(
        built_samples: dict[str, Path]) -> None:
    """The componentize-py samples pass every cap with the default policy; checked on the
    files, without compiling them."""
    built = sorted(directory / "plugin.wasm" for directory in built_samples.values())
    assert len(built) == 4 and all(path.is_file() for path in built)
    from plugbox._manifest import load_manifest

    policy = Policy(http_hosts=("127.0.0.1:*",))  # what py-fetcher asks for
    for path in built:
        manifest = load_manifest(path.parent)
        data = path.read_bytes()
        info = inspect_module(data)
        if info.kind != "component":
            continue
        policy.check_module_size(manifest, len(data), component=True)
        _, limits = policy.resolve(manifest, component=True)
        check_module_shape(info, manifest, limits=limits, policy=policy)
        caps = store_limits(info.shape, limits.memory_bytes)
        assert caps.instances == info.shape.core_instances <= policy.max_component_core_instances
        assert caps.memories == 1 and caps.memory_bytes == limits.memory_bytes


def _only_plugbox_errors(data: bytes) -> None:
    from types import SimpleNamespace

    manifest: Any = SimpleNamespace(name="p", path="plugbox.json")
    try:
        info = inspect_module(data)
        check_module_shape(info, manifest, limits=plugbox.Limits(), policy=Policy())
        store_limits(info.shape, 1 << 20)
    except plugbox.PlugboxError:
        pass


@pytest.fixture(scope="module")
def nested(echo_wat: str) -> bytes:
    """A component using every construct the counting reader follows: nested components and
    their instances, outer aliases, core modules with memories and tables, exports."""
    return component(echo_wat, hog() + instances("$hog", 1) + """
  (component $outer
    (core module $inner (table 1 funcref))
    (component $deeper
      (alias outer $outer $inner (core module $again))
      (core instance (instantiate $again)))
    (instance (instantiate $deeper))
    (export "deeper" (component $deeper)))
  (instance (instantiate $outer))
""")


def test_the_counting_reader_follows_nesting_and_aliases(
    nested: bytes, rt: plugbox.Runtime, tmp_path: Path
) -> None:
    shape = inspect_module(nested).shape
    assert shape.exact
    assert shape.core_instances == 3  # main, the hog, and $inner through $deeper
    assert (shape.memory_count, shape.table_count) == (2, 1)
    # wasmtime counts the same: its store allows exactly these, and the component starts.
    assert rt.load(write_plugin(tmp_path / "p", nested)).call("run", b"n") == b"n"


def test_every_truncation_of_a_nested_component_is_refused_cleanly(nested: bytes) -> None:
    for end in range(len(nested)):
        _only_plugbox_errors(nested[:end])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(min_value=8), st.integers(0, 255)), max_size=4))
def test_mutated_components_only_raise_plugbox_errors(
    nested: bytes, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(nested)
    for index, value in flips:
        data[index % len(data)] = value
    _only_plugbox_errors(bytes(data))


def test_a_core_plugin_is_unaffected(rt: plugbox.Runtime, tmp_path: Path) -> None:
    plugin = rt.load(write_plugin(tmp_path / "p", wat_module(ECHO_BODY)))
    assert plugin.call("run", b"core") == b"core"
