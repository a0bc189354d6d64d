"""Module shapes that must be refused at load, typed (issue 7, section 3): invalid bodies,
memories and tables wasmtime would refuse or that cost too much, compile budgets, start
functions and init hooks that misbehave, limits no module can run under, import names and
export types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wasmtime

import plugbox
from plugbox import (
    AbiViolation,
    DeadlineExceeded,
    FuelExhausted,
    GuestError,
    GuestTrap,
    IncompatibleAbiError,
    LimitExceeded,
    MemoryLimitExceeded,
    ModuleInterfaceError,
    PolicyViolationError,
    StackOverflow,
    UsageError,
    VerificationError,
)

from . import _bin
from ._case import OK, Case, Env, add, test_policy
from ._wat import ECHO, OK_EMPTY, data, imp, module, ret_err

S3 = "3 module refused first, typed"
REFUSED = (ModuleInterfaceError, PolicyViolationError)
PAYLOAD = b"hostile corpus \x00\xff payload"


def _load_and_call(env: Env, wasm: bytes | str, *, expect_echo: bool = True,
                   **manifest: Any) -> None:
    """Load the module and make one call; with ``expect_echo`` the result must be the payload."""
    plugin = env.load(wasm, **manifest)
    got = plugin.call("run", PAYLOAD)
    assert not expect_echo or got == PAYLOAD, f"echo returned {got[:40]!r}"


def _loads(name: str, wasm: Callable[[], bytes | str], *expect: Any, expect_echo: bool = False,
           timeout: float = 10.0, rss_mib: int = 200, section: str = S3,
           check: Callable[[BaseException], None] | None = None, **manifest: Any) -> None:
    add(Case(name, section,
             lambda env: _load_and_call(env, wasm(), expect_echo=expect_echo, **manifest),
             tuple(expect) or (OK,), timeout, rss_mib, check=check))


def clean_trap(exc: BaseException) -> None:
    """Trap messages carry no trailing NUL and no raw backtrace header."""
    text = str(exc)
    assert "\x00" not in text, f"NUL in message {text!r}"
    assert "wasm backtrace" not in text.lower(), f"raw backtrace in {text!r}"


# -- invalid function bodies: wasmtime refuses them at compile; plugbox must say so, typed ----

INVALID_BODIES = {
    "body-type-mismatch": "(func (result i32) (i64.const 1))",
    "body-empty-result": "(func (result i32))",
    "body-stack-underflow": "(func i32.add drop)",
    "body-unknown-local": "(func (drop (local.get 7)))",
    "body-unknown-func": "(func (call 9999))",
    "body-branch-too-deep": "(func (br 5))",
    "body-unknown-global": "(func (global.set 99 (i32.const 0)))",
    "body-set-immutable-global": "(global $g i32 (i32.const 0)) (func (global.set $g (i32.const 1)))",
    "body-overaligned-load": "(func (drop (i32.load align=16 (i32.const 0))))",
    "body-call-indirect-no-table": "(type $t (func)) (func (call_indirect (type $t) (i32.const 0)))",
    "body-if-arms-disagree": "(func (result i32) (if (result i32) (i32.const 1) (then (i32.const 1)) (else (i64.const 2))))",
    "body-start-takes-params": "(func $s (param i32)) (start $s)",
    "body-elem-unknown-func": "(table 1 funcref) (elem (i32.const 0) func 999)",
    "body-data-unknown-memory": '(data (memory 3) (i32.const 0) "x")',
    "body-duplicate-export": '(func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 16))',
    "body-memory-max-below-min": "",  # memory replaced below
}

for _id, _extra in INVALID_BODIES.items():
    if _id == "body-memory-max-below-min":
        _loads(_id, lambda: module(memory='(memory (export "memory") 2 1)'), *REFUSED)
    else:
        _loads(_id, lambda e=_extra: module(extra=e), *REFUSED)

_loads("body-on-hook-returns-i64", lambda: module(body="(i64.const 0)"), *REFUSED)


def _template_wasm() -> bytes:
    return bytes(wasmtime.wat2wasm(module()))


_loads("bytes-truncated", lambda: _template_wasm()[:-7], *REFUSED)
_loads("bytes-bad-magic", lambda: b"\x00asn" + _template_wasm()[4:], *REFUSED)
_loads("bytes-section-length-lies",
       lambda: _template_wasm()[:9] + b"\xff\xff\xff\xff\x0f" + _template_wasm()[14:], *REFUSED)
_loads("bytes-empty", lambda: b"", *REFUSED)


# -- memories ---------------------------------------------------------------------------------

_loads("memory-two", lambda: module(extra="(memory 1)"), *REFUSED)
_loads("memory-two-second-exported",
       lambda: module(memory='(memory 1) (memory (export "memory") 1)'), *REFUSED)
_loads("memory-shared", lambda: module(memory='(memory (export "memory") 1 2 shared)'), *REFUSED)
_loads("memory-64", lambda: module(memory='(memory (export "memory") i64 1)'), *REFUSED)
_loads("memory-min-above-policy-cap", lambda: module(memory='(memory (export "memory") 8200)'),
       *REFUSED, MemoryLimitExceeded)
_loads("memory-min-above-plugin-limit",
       lambda: module(memory='(memory (export "memory") 2000)'), *REFUSED, MemoryLimitExceeded)
_loads("memory-min-4gib", lambda: module(memory='(memory (export "memory") 65536)'),
       *REFUSED, MemoryLimitExceeded)
_loads("memory-min-above-4gib", lambda: module(memory='(memory (export "memory") 65537)'),
       *REFUSED, MemoryLimitExceeded)
_loads("memory-max-4gib-min-1-runs", lambda: module(memory='(memory (export "memory") 1 65536)'),
       expect_echo=True)
_loads("memory-imported",
       lambda: module(memory='(import "plugbox:plugin/log@1.0.0" "memory" (memory 1)) '
                             '(export "memory" (memory 0))'), ModuleInterfaceError)
_loads("memory-not-exported", lambda: module(memory="(memory 1)"), ModuleInterfaceError)
_loads("memory-data-out-of-bounds",
       lambda: module(memory='(memory (export "memory") 1)',
                      extra='(data (i32.const 65530) "0123456789")'),
       GuestTrap, *REFUSED, check=clean_trap)


# -- tables, globals, compile budget ----------------------------------------------------------

_loads("table-10m-funcref", lambda: module(extra="(table 10000000 funcref)"), *REFUSED,
       rss_mib=150)
_loads("table-10m-externref", lambda: module(extra="(table 10000000 externref)"), *REFUSED,
       rss_mib=150)
_loads("table-100-tables-of-100k",
       lambda: module(extra=" ".join(["(table 100000 funcref)"] * 100)), *REFUSED, rss_mib=150)
_loads("table-grow-to-10m",
       lambda: module(extra="(table $t 1 10000000 funcref)",
                      body="(drop (table.grow $t (ref.null func) (i32.const 10000000)))"
                           + OK_EMPTY),
       OK, LimitExceeded, GuestTrap, rss_mib=150)
_loads("globals-100k", lambda: _bin.abi_module(globals_=100_000), *REFUSED, rss_mib=150)
_loads("funcs-200k", lambda: _bin.abi_module(bodies=[b""] * 200_000), *REFUSED, rss_mib=200,
       timeout=15)
_loads("body-5mib-one-function", lambda: _bin.abi_module(bodies=[b"\x01" * (5 << 20)]),
       *REFUSED, rss_mib=200, timeout=15)
_loads("module-7mib-50k-functions",
       lambda: _bin.abi_module(bodies=[b"\x41\x00\x1a" * 48] * 50_000), *REFUSED, rss_mib=200,
       timeout=15)


# -- start functions, _initialize, on-init: instantiation failures get their real class ------

_LOOP = "(loop $l (br $l))"
_RECURSE = "(func $r (call $r)) "
_GROW = "(if (i32.eq (memory.grow (i32.const 2000)) (i32.const -1)) (then unreachable))"

_loads("start-out-of-fuel", lambda: module(extra=f"(func $s {_LOOP}) (start $s)"),
       FuelExhausted, limits={"fuel": 5_000_000})
_loads("start-past-deadline", lambda: module(extra=f"(func $s {_LOOP}) (start $s)"),
       DeadlineExceeded, limits={"fuel": 10_000_000_000, "deadline_ms": 150})
_loads("start-traps", lambda: module(extra="(func $s unreachable) (start $s)"), GuestTrap,
       check=clean_trap)
_loads("start-recurses", lambda: module(extra=_RECURSE + "(start $r)"), StackOverflow)
# A refused memory.grow returns -1 to the guest; this one then traps. After a failed start
# there is no instance left whose memory could show it was the cap, so either class is right.
_loads("start-grows-past-limit", lambda: module(extra=f"(func $s {_GROW}) (start $s)"),
       MemoryLimitExceeded, GuestTrap)
_loads("initialize-out-of-fuel",
       lambda: module(extra=f'(func (export "_initialize") {_LOOP})'), FuelExhausted,
       limits={"fuel": 5_000_000})
_loads("initialize-recurses", lambda: module(extra=_RECURSE + '(export "_initialize" (func $r))'),
       StackOverflow)

_INIT = '(func (export "on-init") (param i32 i32) (result i32) {body})'
_loads("on-init-out-of-fuel", lambda: module(extra=_INIT.format(body=_LOOP + "(i32.const 16)")),
       FuelExhausted, limits={"fuel": 5_000_000})
_loads("on-init-past-deadline",
       lambda: module(extra=_INIT.format(body=_LOOP + "(i32.const 16)")), DeadlineExceeded,
       limits={"fuel": 10_000_000_000, "deadline_ms": 150})
_loads("on-init-recurses",
       lambda: module(extra=_RECURSE + _INIT.format(body="(call $r) (i32.const 16)")),
       StackOverflow)
_loads("on-init-result-out-of-memory", lambda: module(extra=_INIT.format(body="(i32.const -4)")),
       AbiViolation)
_loads("on-init-result-misaligned", lambda: module(extra=_INIT.format(body="(i32.const 17)")),
       AbiViolation)
_loads("on-init-returns-error",
       lambda: module(extra=_INIT.format(body=ret_err(4, "(i32.const 0)", "(i32.const 4)"))),
       GuestError)


def _sixteen_mib_error(exc: BaseException) -> None:
    assert len(str(exc)) < 1 << 20, f"message of {len(str(exc))} characters kept whole"
    detail = getattr(exc, "detail", "")
    assert len(detail) < 1 << 20, f"detail of {len(detail)} characters kept whole"


_loads("on-init-16mib-error-message",
       lambda: module(extra=_INIT.format(body="(memory.fill (i32.const 65536) (i32.const 97) "
                                              "(i32.const 16777216))"
                                              + ret_err(4, "(i32.const 65536)",
                                                        "(i32.const 16777216)")),
                      memory='(memory (export "memory") 300)'),
       GuestError, check=_sixteen_mib_error, rss_mib=250)


def _start_trap_caches_nothing(env: Env) -> None:
    """A module that compiles but fails to instantiate leaves nothing in the compiled cache."""
    cache = env.tmp / "private-cache"
    rt = env.new_runtime(cache_dir=cache)
    try:
        rt.load(env.plugin(module(extra="(func $s unreachable) (start $s)")))
    finally:
        left = sorted(p.name for p in cache.glob("*.cwasm*")) if cache.exists() else []
        assert not left, f"the cache kept {left} for a module that never instantiated"


add(Case("start-trap-caches-nothing", S3, _start_trap_caches_nothing, (GuestTrap,)))


# -- limits no module can run under -----------------------------------------------------------

_loads("limit-memory-bytes-1", module, PolicyViolationError, limits={"memory_bytes": 1})
_loads("limit-memory-bytes-65535", module, PolicyViolationError, limits={"memory_bytes": 65535})
_loads("limit-memory-bytes-below-module-min",
       lambda: module(memory='(memory (export "memory") 4)'), PolicyViolationError,
       MemoryLimitExceeded, limits={"memory_bytes": 65536})
_loads("limit-fuel-1", module, PolicyViolationError, FuelExhausted, limits={"fuel": 1})


def _host_default_memory_1(env: Env) -> None:
    rt = env.new_runtime(policy=test_policy(
        default_limits=plugbox.Limits(memory_bytes=1)))
    rt.load(env.plugin(module())).call("run", PAYLOAD)


add(Case("limit-host-default-memory-1", S3, _host_default_memory_1,
         (UsageError, PolicyViolationError)))


# -- imports: patch levels link, duplicates and wrong shapes are refused ---------------------

# The payload is random bytes, not UTF-8: log a fixed message from the static data area.
_LOG_CALL = "(call $log.log (i32.const 2) (i32.const 512) (i32.const 11))"
_loads("import-patch-level-log",
       lambda: module(imports=imp("log", "log", version="1.0.1", name="log.log"),
                      body=_LOG_CALL + ECHO, extra=data(512, b"patch-level")),
       expect_echo=True, permissions={"log": True})
_loads("import-patch-level-clock",
       lambda: module(imports=imp("clock", "now", version="1.0.7"),
                      body="(drop (call $clock.now))" + ECHO), expect_echo=True,
       permissions={"clock": True})
_loads("import-patch-level-kv",
       lambda: module(imports=imp("kv", "set", version="1.0.2"),
                      body="(call $kv.set (local.get $pp) (i32.const 1) (local.get $pp) "
                           "(local.get $pl) (i32.const 256))" + ECHO),
       expect_echo=True, permissions={"kv": {}})
_loads("import-patch-level-random",
       lambda: module(imports=imp("random", "bytes", version="1.0.1"),
                      body="(call $random.bytes (i32.const 8) (i32.const 256))" + ECHO),
       expect_echo=True, permissions={"random": True})
_loads("import-newer-minor", lambda: module(imports=imp("log", "log", version="1.1.0")),
       IncompatibleAbiError, permissions={"log": True})
_loads("import-newer-major", lambda: module(imports=imp("log", "log", version="2.0.0")),
       IncompatibleAbiError, permissions={"log": True})
_loads("import-no-version",
       lambda: module(imports='(import "plugbox:plugin/log" "log" (func (param i32 i32 i32)))'),
       VerificationError, permissions={"log": True})
_loads("import-prerelease-version",
       lambda: module(imports=imp("log", "log", version="1.0.0-rc.1")), VerificationError,
       permissions={"log": True})
_loads("import-unknown-function",
       lambda: module(imports=imp("log", "log", sig="(param i32)", name="x").replace(
           '"log" (func', '"nope" (func')), ModuleInterfaceError, permissions={"log": True})
_loads("import-unknown-interface",
       lambda: module(imports='(import "plugbox:plugin/fs@1.0.0" "read" (func))'),
       ModuleInterfaceError)
_loads("import-wrong-signature", lambda: module(imports=imp("log", "log", sig="(param i32)")),
       ModuleInterfaceError, permissions={"log": True})
_loads("import-wasi",
       lambda: module(imports='(import "wasi_snapshot_preview1" "fd_write" '
                              '(func (param i32 i32 i32 i32) (result i32)))'),
       ModuleInterfaceError)
_loads("import-duplicate-log",
       lambda: module(imports=imp("log", "log", name="a") + imp("log", "log", name="b")),
       ModuleInterfaceError, permissions={"log": True})
_loads("import-duplicate-kv-get",
       lambda: module(imports=imp("kv", "get", name="a") + imp("kv", "get", name="b")),
       ModuleInterfaceError, permissions={"kv": {}})
_loads("import-duplicate-other-signature",
       lambda: module(imports=imp("log", "log", name="a")
                      + imp("log", "log", name="b", sig="(param i32 i32)")),
       ModuleInterfaceError, permissions={"log": True})
_loads("import-same-function-two-patch-levels",
       lambda: module(imports=imp("log", "log", name="a")
                      + imp("log", "log", name="b", version="1.0.1")),
       OK, ModuleInterfaceError, permissions={"log": True})
_loads("import-table",
       lambda: module(imports='(import "plugbox:plugin/log@1.0.0" "t" (table 1 funcref))'),
       ModuleInterfaceError)
_loads("import-global",
       lambda: module(imports='(import "plugbox:plugin/log@1.0.0" "g" (global i32))'),
       ModuleInterfaceError)
_loads("import-empty-names", lambda: module(imports='(import "" "" (func))'),
       ModuleInterfaceError)
_loads("import-1mib-module-name",
       lambda: module(imports=f'(import "plugbox:plugin/{"x" * (1 << 20)}@1.0.0" "f" (func))'),
       ModuleInterfaceError, IncompatibleAbiError)


# -- exports: names and types ----------------------------------------------------------------

_loads("export-missing-on-hook",
       lambda: module().replace('(export "on-hook")', ""), ModuleInterfaceError)
_loads("export-missing-realloc",
       lambda: module().replace('(export "cabi_realloc")', ""), ModuleInterfaceError)
_loads("export-on-hook-wrong-params",
       lambda: module(body="(i32.const 16)").replace("(param $pl i32)", ""),
       ModuleInterfaceError)
_loads("export-on-hook-no-result",
       lambda: module(body="").replace("(param $pl i32) (result i32)", "(param $pl i32)"),
       ModuleInterfaceError)
_loads("export-realloc-wrong-signature",
       lambda: module(realloc='(func (export "cabi_realloc") (param i32) (result i32) '
                              "(i32.const 4096))"), ModuleInterfaceError)
_loads("export-post-returns-value",
       lambda: module(post='(func (export "cabi_post_on-hook") (param i32) (result i32) '
                           "(i32.const 0))"), ModuleInterfaceError)
_loads("export-on-init-wrong-signature",
       lambda: module(extra='(func (export "on-init") (param i32) (result i32) (i32.const 16))'),
       ModuleInterfaceError)
_loads("export-initialize-takes-params",
       lambda: module(extra='(func (export "_initialize") (param i32))'), ModuleInterfaceError)
_loads("export-memory-is-a-function",
       lambda: module(memory='(memory (export "mem") 1)',
                      extra='(func (export "memory"))'), ModuleInterfaceError)
_loads("export-on-hook-is-a-global",
       lambda: module(extra='(global (export "on-hook") i32 (i32.const 0))').replace(
           '(func $on_hook (export "on-hook")', "(func $on_hook"), ModuleInterfaceError)


# -- traps carry clean messages ---------------------------------------------------------------

TRAPS = {
    "trap-unreachable": "unreachable",
    "trap-divide-by-zero": "(drop (i32.div_u (i32.const 1) (i32.const 0)))",
    "trap-out-of-bounds-load": "(drop (i32.load (i32.const -1)))",
    "trap-bad-conversion": "(drop (i32.trunc_f32_s (f32.const nan)))",
    "trap-null-indirect-call": "(call_indirect $t (type $v) (i32.const 0))",
}
for _id, _body in TRAPS.items():
    _loads(_id, lambda b=_body: module(body=b + OK_EMPTY, extra="(type $v (func)) "
                                                            "(table $t 1 funcref)"),
           GuestTrap, check=clean_trap)
