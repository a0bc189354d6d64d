"""Components that take more than their share or lie about their types (issue 7, sections 3
and 6): many core instances, memories touched past the cap in sum, export types that do not
match the world."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

from plugbox import (
    FuelExhausted,
    GuestTrap,
    MemoryLimitExceeded,
    ModuleInterfaceError,
)
from plugbox.authoring._build import find_wasm_tools, wrap_component

from ._case import OK, Case, Env, add
from ._wat import module
from .wat import REFUSED

S6 = "6 components take their share"
S3 = "3 module refused first, typed"
WIT = Path(__file__).resolve().parents[2] / "abi" / "plugbox.wit"
PAYLOAD = b"component \x00\xff"
#: The core module every component here wraps: the echo template plus an on-init.
CORE = module(extra='(func (export "on-init") (param i32 i32) (result i32) '
                    "(i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16))")


def component(env: Env, *, wit_edit: Callable[[str], str] | None = None,
              inject: str = "") -> bytes:
    """The echo core module wrapped as a component (against an edited WIT if given), with
    ``inject`` (component-level WAT: core modules and instances) added at its end."""
    core_dir = env.plugin(CORE)
    wit_dir = None
    if wit_edit is not None:
        wit_dir = env.tmp / "wit"
        wit_dir.mkdir(exist_ok=True)
        (wit_dir / "plugbox.wit").write_text(wit_edit(WIT.read_text()))
    out = env.tmp / "components"
    out.mkdir(exist_ok=True)
    wasm = (wrap_component(core_dir, out, wit=wit_dir) / "plugin.wasm").read_bytes()
    if not inject:
        return wasm
    text = subprocess.run([find_wasm_tools(), "print", "-"], input=wasm, capture_output=True,
                          check=True, timeout=60).stdout.decode()
    text = text.rstrip()
    assert text.endswith(")"), text[-80:]
    return bytes(wasmtime.wat2wasm(text[:-1] + inject + ")"))


def _load_component(*, wit_edit: Callable[[str], str] | None = None, inject: str = "",
                    **manifest: Any) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        plugin = env.load(component(env, wit_edit=wit_edit, inject=inject), **manifest)
        got = plugin.call("run", PAYLOAD)
        assert got == PAYLOAD, f"component echo returned {got[:40]!r}"

    return run


def _instances(n: int, body: str, name: str = "bloat") -> str:
    return (f"(core module ${name} {body})"
            + "".join(f"(core instance (instantiate ${name}))" for _ in range(n)))


_TOUCH_16MIB = ('(memory 256) (func $s (local i32) (loop $l (i32.store8 (local.get 0) '
                '(i32.const 1)) (local.set 0 (i32.add (local.get 0) (i32.const 4096))) '
                "(br_if $l (i32.lt_u (local.get 0) (i32.const 16777216))))) (start $s)")

add(Case("component-echo-loads", S6, _load_component(), (OK,), timeout=30))
add(Case("component-40-instances-touch-16mib-each", S6,
         _load_component(inject=_instances(40, _TOUCH_16MIB),
                         limits={"memory_bytes": 16 << 20}),
         (MemoryLimitExceeded, *REFUSED), timeout=30, rss_mib=150))
add(Case("component-999-empty-core-instances", S6,
         _load_component(inject=_instances(999, "")), REFUSED, timeout=30))
add(Case("component-300-memories", S6,
         _load_component(inject=_instances(300, "(memory 1)")),
         (MemoryLimitExceeded, *REFUSED), timeout=30))
add(Case("component-100-tables-of-100k", S6,
         _load_component(inject=_instances(100, "(table 100000 funcref)")), REFUSED,
         timeout=30, rss_mib=150))
add(Case("component-core-start-loops", S6,
         _load_component(inject=_instances(1, "(func $s (loop $l (br $l))) (start $s)"),
                         limits={"fuel": 5_000_000}), (FuelExhausted,), timeout=30))
add(Case("component-core-start-traps", S6,
         _load_component(inject=_instances(1, "(func $s unreachable) (start $s)")),
         (GuestTrap,), timeout=30))

_ON_HOOK = "export on-hook: func(hook: string, payload: list<u8>) -> result<list<u8>, error>;"
_ON_INIT = "export on-init: func(config: string) -> result<_, error>;"
# Each edit keeps the core lowering (i32 x4 -> i32, or i32 x2 -> i32) the same, so the wrapped
# module still fits: only the component-level type is wrong.
WRONG_TYPES = {
    "payload-string": _ON_HOOK.replace("payload: list<u8>", "payload: string"),
    "result-string": _ON_HOOK.replace("result<list<u8>, error>", "result<string, error>"),
    "result-u32": _ON_HOOK.replace("result<list<u8>, error>", "u32"),
    "hook-list": _ON_HOOK.replace("hook: string", "hook: list<u8>"),
}
for _id, _line in WRONG_TYPES.items():
    add(Case(f"component-on-hook-{_id}", S3,
             _load_component(wit_edit=lambda w, line=_line: w.replace(_ON_HOOK, line)),
             (ModuleInterfaceError,), timeout=30))
add(Case("component-on-init-takes-bytes", S3,
         _load_component(wit_edit=lambda w: w.replace(
             _ON_INIT, _ON_INIT.replace("config: string", "config: list<u8>"))),
         (ModuleInterfaceError,), timeout=30))
add(Case("component-without-on-init", S3,
         _load_component(wit_edit=lambda w: w.replace(_ON_INIT, "")),
         (ModuleInterfaceError,), timeout=30))
