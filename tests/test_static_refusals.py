"""What wasmtime would refuse is refused first, typed: module shapes plugbox cannot run, the
compile budget, limits no module can run under, and start-up failures with their real class.
Hostile core modules are written as WAT; nothing here needs cargo."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import wasmtime

import plugbox
from plugbox.engine._fastpath import Engine, Template, instantiation_error, trap_summary
from plugbox._policy import Policy
from plugbox.engine._wasmparse import compile_refusal, inspect_module
from tests.conftest import COUNTER_BODY, ECHO_BODY, WAT_TEMPLATE, wat_module, write_plugin
from tests.hostile._bin import leb

MEMORY = '(memory (export "memory") 1)'
LOG_IMPORT = '(import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))'


def module(*, memory: str = MEMORY, extra: str = "", imports: str = "",
           body: str = COUNTER_BODY) -> bytes:
    """The conftest template with its memory replaced and ``extra`` fields added."""
    text = WAT_TEMPLATE.format(body=body, imports=imports)
    assert MEMORY in text
    return bytes(wasmtime.wat2wasm(text.replace(MEMORY, memory + extra)))


def invalid_body() -> bytes:
    """A module whose first function body does not type-check (an i64 where an i32 belongs)."""
    data = bytearray(module())
    at = data.index(bytes((0x41, 0x10)))  # the first i32.const 16
    data[at] = 0x42  # i64.const 16
    return bytes(data)


def custom_section(name: str, payload: bytes) -> bytes:
    """A custom section (id 0) holding ``payload``."""
    body = leb128(len(name)) + name.encode() + payload
    return b"\x00" + leb128(len(body)) + body


leb128 = leb  # unsigned LEB128, from the hostile corpus's binary writer


# (case, module, manifest limits, error class, phrase in the message)
REFUSED: list[tuple[str, bytes, dict[str, int], type[plugbox.VerificationError], str]] = [
    ("two memories", module(extra=" (memory 1)"), {}, plugbox.ModuleInterfaceError,
     "defines 2 memories"),
    ("shared memory", module(memory='(memory (export "memory") 1 2 shared)'), {},
     plugbox.ModuleInterfaceError, "shared memory"),
    ("memory64", module(memory='(memory (export "memory") i64 1)'), {},
     plugbox.ModuleInterfaceError, "64-bit memory"),
    ("minimum above the cap", module(memory='(memory (export "memory") 512)'),
     {"memory_bytes": 16 << 20}, plugbox.PolicyViolationError, "memory limit of 16777216"),
    ("4 GiB minimum", module(memory='(memory (export "memory") 65536)'), {},
     plugbox.PolicyViolationError, "need 4294967296 bytes"),
    ("10 M-element table", module(extra=" (table 10000000 funcref)"), {},
     plugbox.PolicyViolationError, "table of 10000000 elements"),
    ("two tables", module(extra=" (table 1 funcref) (table 1 funcref)"), {},
     plugbox.ModuleInterfaceError, "defines 2 tables"),
    ("100 k globals", module(extra=" (global i32 (i32.const 0))" * 100_000), {},
     plugbox.PolicyViolationError, "100002 globals"),
    ("invalid function body", invalid_body(), {}, plugbox.ModuleInterfaceError,
     "type mismatch"),
    ("the same import twice", module(imports=LOG_IMPORT + LOG_IMPORT.replace("$log", "")), {},
     plugbox.ModuleInterfaceError, "more than once"),
]


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The modules that reach wasmtime's compiler during the test."""
    seen: list[bytes] = []
    original = Engine.compile

    def spy(self: Engine, wasm: bytes) -> wasmtime.Module:
        seen.append(wasm)
        return original(self, wasm)

    monkeypatch.setattr(Engine, "compile", spy)
    return seen


@pytest.mark.parametrize(("case", "data", "limits", "error", "phrase"), REFUSED,
                         ids=[row[0] for row in REFUSED])
def test_what_wasmtime_would_refuse_is_refused_before_compiling(
    tmp_path: Path, compiled: list[bytes], case: str, data: bytes, limits: dict[str, int],
    error: type[plugbox.VerificationError], phrase: str,
) -> None:
    perms = {"log": True} if b"plugbox:plugin/log" in data else {}
    directory = write_plugin(tmp_path / "p", data, permissions=perms, limits=limits)
    cache = tmp_path / "cache"
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache) as rt:
        with pytest.raises(error, match=phrase) as info:
            rt.load(directory)
        assert info.value.plugin == "wat-plugin"
        assert "wat-plugin" in str(info.value)
        with pytest.raises(error, match=phrase):
            rt.verify(directory)  # the same decision without loading
        assert compiled == []
        # ... and the host still serves a normal plugin.
        good = rt.load(write_plugin(tmp_path / "good", wat_module(ECHO_BODY), name="good"))
        assert good.call("run", b"still here") == b"still here"


def test_an_instance_larger_than_the_slots_is_typed_at_the_compile_boundary(
    tmp_path: Path
) -> None:
    # 33,000 exported functions need more than the 1 MiB instance slot: only compiling tells.
    funcs = "".join(f'(func (export "e{i}"))' for i in range(33_000))
    directory = write_plugin(tmp_path / "p", module(extra=funcs))
    cache = tmp_path / "cache"
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache) as rt:
        with pytest.raises(plugbox.PolicyViolationError, match="instance slots") as info:
            rt.load(directory)
    assert "Caused by" not in str(info.value)
    assert not list(cache.glob("*.cwasm"))


def test_compile_refusal_puts_the_cause_on_one_line() -> None:
    message = ("failed to compile: wasm[0]::function[0]::alloc\n\nCaused by:\n"
               "    0: WebAssembly translation error\n"
               "    1: Invalid input WebAssembly code at offset 158: type mismatch\n")
    error = compile_refusal("p", message)
    assert isinstance(error, plugbox.ModuleInterfaceError)
    assert ("failed to compile: wasm[0]::function[0]::alloc: WebAssembly translation error: "
            "Invalid input WebAssembly code at offset 158: type mismatch") in str(error)
    assert "\n" not in str(error)


# -- start-up failures have their real class ---------------------------------------------------

START_LOOP = " (func $start (loop (br 0))) (start $start)"


def test_a_start_function_out_of_fuel_is_fuel_exhausted(tmp_path: Path) -> None:
    directory = write_plugin(tmp_path / "p", module(extra=START_LOOP),
                             limits={"fuel": 2_000_000})
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=tmp_path / "c") as rt:
        with pytest.raises(plugbox.FuelExhausted, match="2,000,000 fuel") as info:
            rt.load(directory)
    assert info.value.limit == "fuel"


def test_a_start_function_past_its_deadline_is_deadline_exceeded(tmp_path: Path) -> None:
    directory = write_plugin(tmp_path / "p", module(extra=START_LOOP),
                             limits={"fuel": 10**10, "deadline_ms": 200})
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=tmp_path / "c") as rt:
        with pytest.raises(plugbox.DeadlineExceeded, match="200 ms"):
            rt.load(directory)


def test_a_trapping_start_function_is_a_clean_guest_trap_and_nothing_is_cached(
    tmp_path: Path, compiled: list[bytes]
) -> None:
    directory = write_plugin(tmp_path / "p", module(extra=" (func $s unreachable) (start $s)"))
    cache = tmp_path / "cache"
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache) as rt:
        with pytest.raises(plugbox.GuestTrap) as info:
            rt.load(directory)
        assert len(compiled) == 1  # it was compiled ...
    message = str(info.value)
    assert "unreachable" in message
    assert "\x00" not in message
    assert "error while executing" not in message and "backtrace" not in message
    assert not list(cache.glob("*.cwasm"))  # ... but not kept
    good = write_plugin(tmp_path / "good", wat_module(ECHO_BODY))
    with plugbox.Runtime(state_dir=tmp_path / "s2", cache_dir=cache) as rt:
        rt.load(good)
    assert len(list(cache.glob("*.cwasm"))) == 1  # a plugin that started is kept


def test_a_memory_minimum_above_the_cap_at_instantiation_is_memory_limit_exceeded(
    tmp_path: Path
) -> None:
    # The static check refuses this at load; a template built with a smaller cap than the
    # module's minimum shows what instantiation itself reports.
    from plugbox.services._services import HostServices

    engine = Engine(max_wasm_stack=512 << 10, max_memory_bytes=64 << 20)
    try:
        compiled = engine.compile(module(memory='(memory (export "memory") 4)'))
        services = HostServices(plugin="p", permissions=plugbox.Permissions(), config={},
                                kv=None, events=None)  # type: ignore[arg-type]
        template = Template(engine, compiled, plugin="p", services=services, imports=[],
                            memory_cap=2 << 16)
        with pytest.raises(plugbox.MemoryLimitExceeded) as info:
            template.instantiate(10**6, engine.deadline_ticks(1000))
        assert info.value.limit == "memory"
        assert "\x00" not in str(info.value)
        template.close()
    finally:
        engine.close()


def test_trap_summary_names_the_trap_not_a_frame_or_the_header() -> None:
    frames = "error while executing at wasm backtrace:\n    0:    0x21f - trap!short\n\n"
    assert trap_summary(frames + "Caused by:\n    wasm trap: wasm `unreachable` instruction "
                        "executed\n") == "wasm trap: wasm `unreachable` instruction executed"
    assert trap_summary(frames + "Caused by:\n    0: one\n    1: two\n") == "one: two"
    host = "plugbox host function failed: boom"
    assert trap_summary(host) == host


@pytest.mark.parametrize(
    ("code", "message", "error"),
    [
        (11, "wasm trap: all fuel consumed", plugbox.FuelExhausted),
        (None, "error while executing\n\nCaused by:\n    wasm trap: all fuel consumed by "
               "WebAssembly", plugbox.FuelExhausted),
        (10, "wasm trap: interrupt", plugbox.DeadlineExceeded),
        (None, "Caused by:\n    wasm trap: interrupt", plugbox.DeadlineExceeded),
        (0, "call stack exhausted", plugbox.StackOverflow),
        (None, "memory minimum size of 197 pages exceeds memory limits",
         plugbox.MemoryLimitExceeded),
        (None, "maximum concurrent core instance limit of 1000 reached", plugbox.LimitExceeded),
        (None, "resource limit exceeded: instance count too high at 15", plugbox.LimitExceeded),
        (1, "wasm trap: wasm `unreachable` instruction executed", plugbox.GuestTrap),
    ],
)
def test_instantiation_errors_are_classified(
    code: int | None, message: str, error: type[plugbox.PluginCallError]
) -> None:
    got = instantiation_error("p", code, message, fuel=7, deadline_ms=9, memory_cap=1 << 20)
    assert type(got) is error
    assert got.plugin == "p"


# -- the compile budget ------------------------------------------------------------------------


def test_module_size_cap_applies_to_directory_plugins(tmp_path: Path) -> None:
    # A large custom section: cheap to parse, but the cap is on the file, before parsing.
    padded = module() + custom_section("pad", bytes((4 << 20) + 4))
    directory = write_plugin(tmp_path / "p", padded)
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt:
        with pytest.raises(plugbox.PolicyViolationError, match="max_module_bytes") as info:
            rt.verify(directory)
    assert info.value.limit == "max_module_bytes"
    assert f"{len(padded)}-byte module" in str(info.value)
    roomy = Policy(max_module_bytes=8 << 20)
    with plugbox.Runtime(state_dir=tmp_path / "s2", policy=roomy) as rt:
        rt.verify(directory)


@pytest.mark.parametrize(
    ("policy", "limit"),
    [
        (Policy(max_functions=2), "max_functions"),
        (Policy(max_function_body_bytes=40), "max_function_body_bytes"),
        (Policy(max_code_bytes=100), "max_code_bytes"),
    ],
)
def test_the_compile_budget_is_checked_before_compiling(
    tmp_path: Path, compiled: list[bytes], policy: Policy, limit: str
) -> None:
    directory = write_plugin(tmp_path / "p", module())  # 3 functions, the largest ~100 bytes
    with plugbox.Runtime(state_dir=tmp_path / "s", policy=policy) as rt:
        with pytest.raises(plugbox.PolicyViolationError, match=f"Policy\\({limit}=") as info:
            rt.load(directory)
    assert info.value.limit == limit
    assert compiled == []


@pytest.mark.parametrize("field", ["max_module_bytes", "max_component_bytes", "max_functions",
                                   "max_function_body_bytes", "max_code_bytes",
                                   "max_component_core_instances", "max_component_memories",
                                   "max_component_tables"])
def test_budget_fields_must_be_positive(field: str) -> None:
    with pytest.raises(plugbox.UsageError, match=f"Policy\\({field}="):
        Policy(**{field: 0})  # type: ignore[arg-type]


def test_the_module_shape_is_read_without_compiling() -> None:
    info = inspect_module(module(memory='(memory (export "memory") 3 9)',
                                 extra=" (table 7 funcref) (global i32 (i32.const 0))"))
    (core,) = info.shape.modules
    assert [(m.minimum, m.maximum, m.minimum_bytes) for m in core.memories] == [(3, 9, 3 << 16)]
    assert [(t.minimum, t.maximum) for t in core.tables] == [(7, None)]
    assert core.globals == 3  # the template's two and this one
    assert core.functions == 3
    assert 0 < core.largest_body < core.code_bytes
    assert info.shape.core_instances == 1


# -- limits no module can run under --------------------------------------------------------------


def test_a_memory_limit_below_one_page_is_a_policy_error_at_load(tmp_path: Path) -> None:
    requested = write_plugin(tmp_path / "a", wat_module(ECHO_BODY), limits={"memory_bytes": 1})
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt:
        with pytest.raises(plugbox.PolicyViolationError, match="limits.memory_bytes") as info:
            rt.load(requested)
    assert info.value.limit == "memory_bytes"
    hosted = write_plugin(tmp_path / "b", wat_module(ECHO_BODY))
    tiny = Policy(max_limits=plugbox.Limits(memory_bytes=1))
    with plugbox.Runtime(state_dir=tmp_path / "s2", policy=tiny) as rt:
        with pytest.raises(plugbox.PolicyViolationError, match="Policy\\(max_limits"):
            rt.load(hosted)


def test_a_memory_limit_below_the_declared_minimum_is_a_policy_error_at_load(
    tmp_path: Path
) -> None:
    directory = write_plugin(tmp_path / "p", module(memory='(memory (export "memory") 3)'),
                             limits={"memory_bytes": 2 << 16})
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt:
        with pytest.raises(plugbox.PolicyViolationError, match="at least 196608"):
            rt.load(directory)
    roomy = write_plugin(tmp_path / "q", module(memory='(memory (export "memory") 3)'),
                         limits={"memory_bytes": 3 << 16})
    with plugbox.Runtime(state_dir=tmp_path / "s2") as rt:
        assert len(rt.load(roomy).call("run")) == 4


# -- ABI names ------------------------------------------------------------------------------------


def test_a_patch_level_abi_import_links(tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    imports = LOG_IMPORT.replace("@1.0.0", "@1.0.1")
    body = "(call $log (i32.const 2) (i32.const 100) (i32.const 5))" + ECHO_BODY
    data = module(imports=imports, body=body, extra=' (data (i32.const 100) "hello")')
    directory = write_plugin(tmp_path / "p", data, permissions={"log": True})
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt, caplog.at_level(logging.INFO):
        plugin = rt.load(directory)
        assert plugin.call("run", b"ok") == b"ok"
    assert [r.getMessage() for r in caplog.records
            if r.name == "plugbox.plugin.wat-plugin"] == ["hello"]


def test_template_links_each_import_name_once(tmp_path: Path) -> None:
    # Defensive: the interface check refuses duplicates, the linker would not either way.
    from plugbox.services._services import HostServices

    engine = Engine(max_wasm_stack=512 << 10, max_memory_bytes=64 << 20)
    try:
        data = module(imports=LOG_IMPORT + LOG_IMPORT.replace("$log", ""))
        services = HostServices(plugin="p", permissions=plugbox.Permissions(), config={},
                                kv=None, events=None)  # type: ignore[arg-type]
        key = ("plugbox:plugin/log@1.0.0", "log")
        template = Template(engine, engine.compile(data), plugin="p", services=services,
                            imports=[key, key], memory_cap=1 << 20)
        template.close()
        with pytest.raises(plugbox.ModuleInterfaceError, match="not a function of"):
            Template(engine, engine.compile(module()), plugin="p", services=services,
                     imports=[("plugbox:plugin/log@1.0.0", "nope")], memory_cap=1 << 20)
    finally:
        engine.close()
