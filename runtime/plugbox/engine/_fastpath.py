"""The fast path: plugbox's one layer over wasmtime's C API.

This is the only module in plugbox that touches raw pointers, guest offsets or ``ctypes``.
It lifts and lowers the canonical ABI of ``abi/plugbox.wit`` with direct memory copies and
precompiled ``struct`` formats, and binds host functions through ``wasmtime``'s *unchecked*
entry points, so a call costs a handful of foreign calls and no type introspection.

Why not wasmtime-py's ``Func.__call__``: it rebuilds and compares type objects for every
argument (~70 µs per call, measured); the raw ``wasmtime_func_call_unchecked`` path costs a few
microseconds. Library objects (Engine, Module) still come from wasmtime-py, which owns their
lifetimes; stores, instances and linkers are ours and freed here.

Calls that may run guest code go through a ``CDLL`` handle, which releases the GIL, so CPU-bound
plugins on several threads run in parallel and the epoch ticker thread can always interrupt a
runaway guest. Cheap bookkeeping calls that never enter wasm use a ``PyDLL`` handle on the same
library, which skips the GIL round trip.

Every guest pointer and length is checked against the memory's current size before any copy;
a violation traps the guest call and surfaces as :class:`plugbox.AbiViolation`.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import threading
import time
import weakref
from pathlib import Path
from ctypes import c_bool, c_char_p, c_int64, c_size_t, c_uint8, c_uint64, c_void_p
from typing import TYPE_CHECKING, Any, Callable, Final

import wasmtime
from wasmtime import _ffi as _wasmtime_ffi
from wasmtime import _bindings as _wb

from . import _abispec
from ._addrspace import SLOT_GUARD, SLOT_RESERVATION
from .._errors import (
    AbiViolation,
    ClosedError,
    DeadlineExceeded,
    FuelExhausted,
    GuestError,
    GuestTrap,
    LimitExceeded,
    MemoryLimitExceeded,
    ModuleInterfaceError,
    PlugboxError,
    PluginCallError,
    StackOverflow,
)

if TYPE_CHECKING:
    from ..services._services import HostServices

__all__ = [
    "CallOutcome",
    "Engine",
    "Instance",
    "Template",
]

# ---------------------------------------------------------------------------------------------
# Foreign functions. Pointers cross as plain ints (c_void_p), which ctypes converts fastest.

_cdll = _wasmtime_ffi.dll  # releases the GIL: used for anything that may run guest code
_pydll = ctypes.PyDLL(_cdll._name)  # keeps the GIL: cheap calls that never enter wasm

_P = c_void_p


def _proto(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_func_call = _proto(_cdll, "wasmtime_func_call_unchecked", _P, _P, _P, _P, c_size_t, _P)
_pre_instantiate = _proto(_cdll, "wasmtime_instance_pre_instantiate", _P, _P, _P, _P, _P)
_pre_instantiate_gil = _proto(_pydll, "wasmtime_instance_pre_instantiate", _P, _P, _P, _P, _P)
_increment_epoch = _proto(_cdll, "wasmtime_engine_increment_epoch", None, _P)

_store_new = _proto(_pydll, "wasmtime_store_new", _P, _P, _P, _P)
_store_context = _proto(_pydll, "wasmtime_store_context", _P, _P)
_store_limiter = _proto(
    _pydll, "wasmtime_store_limiter", None, _P, c_int64, c_int64, c_int64, c_int64, c_int64
)
_store_delete = _proto(_pydll, "wasmtime_store_delete", None, _P)
_store_epoch_callback = _proto(_pydll, "wasmtime_store_epoch_deadline_callback", None,
                               _P, _P, _P, _P)
_error_new = _proto(_pydll, "wasmtime_error_new", _P, c_char_p)
_set_fuel = _proto(_pydll, "wasmtime_context_set_fuel", _P, _P, c_uint64)
_set_epoch_deadline = _proto(_pydll, "wasmtime_context_set_epoch_deadline", None, _P, c_uint64)
_memory_data = _proto(_pydll, "wasmtime_memory_data", _P, _P, _P)
_memory_size = _proto(_pydll, "wasmtime_memory_data_size", c_size_t, _P, _P)
_export_get = _proto(_pydll, "wasmtime_instance_export_get", c_bool, _P, _P, c_char_p, c_size_t, _P)
_linker_new = _proto(_pydll, "wasmtime_linker_new", _P, _P)
_linker_delete = _proto(_pydll, "wasmtime_linker_delete", None, _P)
_linker_define_unchecked = _proto(
    _pydll,
    "wasmtime_linker_define_func_unchecked",
    _P,
    _P, c_char_p, c_size_t, c_char_p, c_size_t, _P, _P, _P, _P,
)
_linker_instantiate_pre = _proto(_pydll, "wasmtime_linker_instantiate_pre", _P, _P, _P, _P)
_instance_pre_delete = _proto(_pydll, "wasmtime_instance_pre_delete", None, _P)
_trap_new = _proto(_pydll, "wasmtime_trap_new", _P, c_char_p, c_size_t)
_trap_code = _proto(_pydll, "wasmtime_trap_code", c_bool, _P, _P)
_trap_message = _proto(_pydll, "wasm_trap_message", None, _P, _P)
_trap_delete = _proto(_pydll, "wasm_trap_delete", None, _P)
_error_message = _proto(_pydll, "wasmtime_error_message", None, _P, _P)
_error_delete = _proto(_pydll, "wasmtime_error_delete", None, _P)
_byte_vec_delete = _proto(_pydll, "wasm_byte_vec_delete", None, _P)
_global_get = _proto(_pydll, "wasmtime_global_get", None, _P, _P, _P)
_get_fuel = _proto(_pydll, "wasmtime_context_get_fuel", _P, _P, _P)

_string_at = ctypes.string_at
_memmove = ctypes.memmove

_EXTERN_FUNC: Final = 0
_EXTERN_GLOBAL: Final = 1
_WASMTIME_I32: Final = 0  # wasmtime_valkind_t
_EXTERN_MEMORY: Final = 3
_TRAP_STACK_OVERFLOW: Final = 0
_TRAP_INTERRUPT: Final = 10
_TRAP_OUT_OF_FUEL: Final = 11

_RAW = 16  # sizeof(wasmtime_val_raw_t)
_FUNC_SIZE = ctypes.sizeof(_wb.wasmtime_func_t)
_EXTERN_OF = _wb.wasmtime_extern_t.of.offset

_callback_type = ctypes.CFUNCTYPE(_P, _P, _P, _P, c_size_t)

# Precompiled layouts of raw values (16 bytes each, value in the low bytes). i32 values are
# read and written as *unsigned*: every i32 crossing plugbox's ABI is a pointer, a length, an
# enum or a u32 (abi/README.md 3), so offsets at or above 2 GiB stay offsets.
_RAW_I32: Final = [struct.Struct("<" + "I12x" * n) for n in range(10)]
_RAW_I64 = struct.Struct("<q8x")
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_U32X4 = struct.Struct("<IIII")
_ERROR_AT4 = struct.Struct("<B3xB3xII")  # result tag, error tag, message ptr, len
_ERROR_AT8 = struct.Struct("<B7xB3xII")  # the same when the ok case is 8-aligned (s64)
_OK_S64 = struct.Struct("<B7xq")  # result<s64, error>: ok tag, value @8
_U8 = struct.Struct("<B")


_NUMBERED = re.compile(r"^\d+:\s*")  # backtrace frames ("0:  0x21f - f") and causes ("1: x")
_FRAME = re.compile(r"^\d+:\s+0x[0-9a-f]+ ")


def trap_summary(message: str) -> str:
    """The informative part of a wasmtime error on one line: the trap itself (``wasm trap:
    ...``) or else its chain of causes, never the backtrace header or frames (whose function
    names could read like a trap)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in lines:
        if line.lower().startswith("wasm trap:"):
            return line
    if "Caused by:" in lines:
        causes = lines[lines.index("Caused by:") + 1:]
        return ": ".join(_NUMBERED.sub("", line) for line in causes) or "trap"
    rest = [line for line in lines if not line.lower().startswith("error while executing")
            and not _FRAME.match(line)]
    return rest[0] if rest else "trap"


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a guest's words in a host message)."""
    return text if text.isprintable() else "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
        for c in text)


def _take_error(err: int) -> str:
    vec = _wb.wasm_byte_vec_t()
    _error_message(err, ctypes.addressof(vec))
    msg = ctypes.string_at(vec.data, vec.size).decode("utf-8", "replace").rstrip("\0")
    _byte_vec_delete(ctypes.addressof(vec))
    _error_delete(err)
    return msg


def _take_trap(trap: int) -> tuple[int | None, str]:
    code = c_uint8()
    has_code = _trap_code(trap, ctypes.addressof(code))
    vec = _wb.wasm_byte_vec_t()
    _trap_message(trap, ctypes.addressof(vec))
    # wasm_trap_message's vector includes the C string's terminating NUL.
    msg = ctypes.string_at(vec.data, vec.size).decode("utf-8", "replace").rstrip("\0")
    _byte_vec_delete(ctypes.addressof(vec))
    _trap_delete(trap)
    return (code.value if has_code else None), msg


# ---------------------------------------------------------------------------------------------
# The typed errors both fast paths raise, worded once.


def _where(plugin: str, hook: str | None) -> str:
    return f"plugin {plugin!r}, hook {hook!r}" if hook else f"plugin {plugin!r}"


def host_function_error(stashed: BaseException, plugin: str, hook: str) -> PlugboxError:
    """The error a host function stashed before trapping the guest on purpose."""
    if isinstance(stashed, PlugboxError):
        return stashed
    wrapped = GuestTrap(f"{_where(plugin, hook)}: a host function failed: {stashed!r}",
                        plugin=plugin, hook=hook)
    wrapped.__cause__ = stashed
    return wrapped


def fuel_error(plugin: str, hook: str, fuel: int | None) -> FuelExhausted:
    """The call used up ``fuel``."""
    amount = f"{fuel:,} fuel" if fuel is not None else "its fuel"
    return FuelExhausted(
        f"{_where(plugin, hook)}: ran out of fuel ({amount}); the plugin ran too long or loops "
        "forever. Raise limits.fuel in plugbox.json (within the host policy) if the work is "
        "legitimate.",
        plugin=plugin, hook=hook, limit="fuel",
    )


def deadline_error(
    plugin: str, hook: str, deadline_ms: int | None, detail: str = ""
) -> DeadlineExceeded:
    """The call ran past ``deadline_ms`` (``detail``: where the time went, if known)."""
    amount = f"{deadline_ms} ms" if deadline_ms is not None else "its deadline"
    return DeadlineExceeded(
        f"{_where(plugin, hook)}: exceeded its wall-clock deadline ({amount}){detail}. Raise "
        "limits.deadline_ms in plugbox.json (within the host policy) if the work is legitimate.",
        plugin=plugin, hook=hook, limit="deadline",
    )


def stack_error(plugin: str, hook: str, detail: str = "") -> StackOverflow:
    """The guest recursed too deep (``detail``: what the guest reported, if anything)."""
    what = f"recursed too deep ({detail})" if detail else (
        "wasm stack overflow (usually unbounded recursion)")
    return StackOverflow(
        f"{_where(plugin, hook)}: {what}; the host's max_wasm_stack caps the wasm stack.",
        plugin=plugin, hook=hook, limit="stack",
    )


def memory_error(plugin: str, hook: str, cap: int, detail: str) -> MemoryLimitExceeded:
    """The guest ran out of memory under its ``cap``."""
    return MemoryLimitExceeded(
        f"{_where(plugin, hook)}: ran out of memory under its {cap}-byte cap ({detail}). Raise "
        "limits.memory_bytes in plugbox.json (within the host policy) if the plugin needs more "
        "memory.",
        plugin=plugin, hook=hook, limit="memory",
    )


def instances_error(plugin: str, hook: str | None, detail: str) -> LimitExceeded:
    """The runtime has no free instance slot."""
    return LimitExceeded(
        f"{_where(plugin, hook)}: no free instance slot in this runtime ({detail}). Close "
        "unused plugins, lower limits.instances, or create the Runtime with a larger "
        "pooled_instances.",
        plugin=plugin, hook=hook, limit="instances",
    )


def instantiation_error(plugin: str, code: int | None, message: str, *, fuel: int,
                        deadline_ms: int | None, memory_cap: int) -> PlugboxError:
    """The typed error for an instantiation that failed: ``code`` is the trap code when start-up
    code trapped (``None`` for an error, or for a component, whose API reports none), and
    ``message`` wasmtime's text; ``fuel``, ``deadline_ms`` and ``memory_cap`` are the limits
    start-up ran under, for the message."""
    hook = "instantiate"
    low = message.lower()
    if code == _TRAP_OUT_OF_FUEL or (code is None and "all fuel consumed" in low):
        return fuel_error(plugin, hook, fuel)
    if code == _TRAP_INTERRUPT or (code is None and "wasm trap: interrupt" in low):
        return deadline_error(plugin, hook, deadline_ms)
    if code == _TRAP_STACK_OVERFLOW or (code is None and "call stack exhausted" in low):
        return stack_error(plugin, hook)
    summary = trap_summary(message)
    if "concurrent" in low and "limit" in low:
        return instances_error(plugin, hook, summary)
    if "memory minimum size" in low or ("memory" in low and "exceeds" in low):
        return memory_error(plugin, hook, memory_cap, summary)
    if "resource limit exceeded" in low:
        return LimitExceeded(
            f"{_where(plugin, hook)}: instantiating it creates more than its store allows "
            f"({summary}); the module's static shape and what it instantiates disagree",
            plugin=plugin, hook=hook, limit="instances",
        )
    return GuestTrap(f"{_where(plugin, hook)}: instantiation failed: {summary}",
                     plugin=plugin, hook=hook)


# ---------------------------------------------------------------------------------------------
# Engine


class Engine:
    """A wasmtime engine configured for plugbox, with the epoch ticker that enforces deadlines.

    One per :class:`plugbox.Runtime`. Fuel metering and epoch interruption are always on; linear
    memories never move (so instances cache their base address); ``max_wasm_stack`` bounds
    recursion.
    """

    def __init__(
        self,
        *,
        max_wasm_stack: int,
        max_memory_bytes: int,
        epoch_tick_ms: float = 2.0,
        pooling: int = 0,
        keep_resident: int = 1 << 20,
    ) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.max_wasm_stack = max_wasm_stack
        config.memory_may_move = False
        config.cranelift_opt_level = "speed"
        if pooling:
            # Pre-reserved instance slots: instantiation reuses memory instead of mapping it,
            # and up to keep_resident bytes are reset with memset instead of being decommitted.
            # The slot size is pinned (wasmtime's 64-bit defaults) because _addrspace admits
            # a Runtime by it before wasmtime reserves pooling * slot of address space.
            _wb.wasmtime_config_memory_reservation_set(config.ptr(), SLOT_RESERVATION)
            _wb.wasmtime_config_memory_guard_size_set(config.ptr(), SLOT_GUARD)
            pool = _wb.wasmtime_pooling_allocation_config_new()
            _wb.wasmtime_pooling_allocation_config_total_core_instances_set(pool, pooling)
            _wb.wasmtime_pooling_allocation_config_total_memories_set(pool, pooling)
            _wb.wasmtime_pooling_allocation_config_total_tables_set(pool, pooling)
            _wb.wasmtime_pooling_allocation_config_max_memory_size_set(pool, max_memory_bytes)
            _wb.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(
                pool, keep_resident
            )
            _wb.wasmtime_pooling_allocation_config_table_keep_resident_set(pool, 1 << 16)
            # Fiber stacks serve async calls only, which plugbox does not make; wasmtime's
            # default of 1000 costs two memory mappings each, which would cap a process at
            # ~32 Runtimes by vm.max_map_count (65530) long before address space runs out.
            _wb.wasmtime_pooling_allocation_config_total_stacks_set(pool, 0)
            _wb.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
            _wb.wasmtime_pooling_allocation_config_delete(pool)
        from importlib.metadata import version

        self.settings = (
            f"fuel=1;epoch=1;stack={max_wasm_stack};move=0;opt=speed;"
            f"pool={pooling}:{max_memory_bytes};wasmtime={version('wasmtime')}"
        )
        self.wasmtime = wasmtime.Engine(config)
        self.ptr: int = ctypes.cast(self.wasmtime.ptr(), c_void_p).value or 0
        self.tick_s = epoch_tick_ms / 1000.0
        #: Native stack one entry into wasm may need: its wasm stack plus the host frames of the
        #: host functions it calls (see ``stack_room``).
        self.stack_need: int = max_wasm_stack + HOST_STACK_MARGIN
        #: Set by :meth:`mark_closing` (Runtime.close): interrupted calls then say so.
        self.closing = False
        # The ticker holds the wasmtime engine, never this object, so an Engine nobody holds is
        # collected; the finalizer (run by close(), collection or interpreter exit) stops it.
        self._stop_ticker = weakref.finalize(self, *_start_ticker(self.wasmtime, self.ptr,
                                                                  self.tick_s))

    @property
    def ticking(self) -> bool:
        """True until :meth:`close` (or collection) stopped the epoch ticker."""
        return self._stop_ticker.alive

    def mark_closing(self) -> None:
        """The runtime is closing: calls interrupted from now on report that, not their plugin."""
        self.closing = True

    def deadline_ticks(self, deadline_ms: float) -> int:
        """Epoch ticks covering ``deadline_ms`` (rounded up, plus one for the partial tick)."""
        return int(deadline_ms / 1000.0 / self.tick_s) + 2

    def ticks_ms(self, ticks: int) -> int:
        """The deadline in ms that :meth:`deadline_ticks` turned into ``ticks`` (for messages)."""
        return max(0, round((ticks - 2) * self.tick_s * 1000.0))

    def compile(self, wasm: bytes) -> wasmtime.Module:
        """Compile a verified core module."""
        return wasmtime.Module(self.wasmtime, wasm)

    def deserialize_file(self, path: Path) -> wasmtime.Module:
        """Map a compiled artifact produced by ``Module.serialize`` with the same settings."""
        return wasmtime.Module.deserialize_file(self.wasmtime, str(path))

    def close(self) -> None:
        """Stop the epoch ticker. Safe to call twice. Calls still running get CHECK_TICKS
        ticks at once first, so their stores' epoch callbacks see an interrupt (Plugin.close)
        now rather than never."""
        self.closing = True
        if self._stop_ticker.alive:
            for _ in range(CHECK_TICKS + 1):
                _increment_epoch(self.ptr)
        self._stop_ticker()


#: Native stack reserved beyond max_wasm_stack for the host frames (Python, ctypes, services)
#: between nested entries into wasm.
HOST_STACK_MARGIN: Final = 256 * 1024


def _py_tick(engine: wasmtime.Engine, ptr: int, stop: threading.Event, tick: float) -> None:
    # ``engine`` is held so the pointer stays valid until the ticker ends.
    while not stop.wait(tick):
        _increment_epoch(ptr)


def _py_stop_ticker(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    if thread is not threading.current_thread():
        thread.join()


def _native_stop_ticker(handle: int, engine: wasmtime.Engine) -> None:
    _speedups.ticker_stop(handle)  # ``engine`` is held until the native thread has stopped


def _start_ticker(engine: wasmtime.Engine, ptr: int, tick: float) -> tuple[Any, ...]:
    """Start the epoch ticker; returns (stop function, *its arguments) for weakref.finalize.

    The native ticker (a pthread in ``_speedups``) needs no GIL, so deadlines hold while Python
    threads keep the interpreter busy; the pure-Python thread is the fallback."""
    if ACCELERATED:
        return (_native_stop_ticker, _speedups.ticker_start(ptr, tick), engine)
    stop = threading.Event()
    thread = threading.Thread(target=_py_tick, args=(engine, ptr, stop, tick),
                              name="plugbox-epoch", daemon=True)
    thread.start()
    return (_py_stop_ticker, stop, thread)


# ---------------------------------------------------------------------------------------------
# Per-call state, visible to host functions on the calling thread.


class _Trap(Exception):
    """Raised inside a host function to trap the guest with a typed error."""

    def __init__(self, error: PlugboxError) -> None:
        super().__init__(error.message)
        self.error = error


class _CallState:
    """One call in progress on this thread. Calls nest (a host function may call a plugin):
    ``outer`` is the call this one runs inside, restored when it ends."""

    __slots__ = ("instance", "hook", "deadline", "error", "denied", "fuel", "deadline_ms",
                 "outer", "depth")

    def __init__(
        self, instance: Any, hook: str, deadline: float | None, fuel: int, deadline_ms: int
    ) -> None:
        self.instance: Instance = instance  # a ComponentInstance in _CompCallState
        self.hook = hook
        self.deadline = deadline
        self.fuel = fuel  # the limits in force for this call, for error messages
        self.deadline_ms = deadline_ms
        self.error: PlugboxError | BaseException | None = None
        self.denied: str | None = None
        self.outer: _CallState | None = None
        self.depth = 1


#: Per-thread innermost call (``_tls.state``), shared by both fast paths.
_tls = threading.local()

#: Plugin calls may nest this deep on one thread (a host function calling a plugin whose host
#: function calls a plugin...); deeper is a StackOverflow.
MAX_NESTED_CALLS: Final = 8


def current_call() -> _CallState | None:
    """The innermost plugin call running on this thread, if any."""
    return getattr(_tls, "state", None)


def enter_call(state: _CallState) -> _CallState | None:
    """Make ``state`` this thread's innermost call; returns the outer one, which the caller
    restores (``_tls.state = outer``) when the call ends. Raises StackOverflow past
    MAX_NESTED_CALLS."""
    outer: _CallState | None = getattr(_tls, "state", None)
    if outer is not None:
        if outer.depth >= MAX_NESTED_CALLS:
            plugin = state.instance.plugin
            raise StackOverflow(
                f"{_where(plugin, state.hook)}: plugin calls nested {MAX_NESTED_CALLS} deep on "
                "this thread (host functions calling plugins that call host functions ...); "
                "break the cycle, for example by handling the event outside the host function.",
                plugin=plugin, hook=state.hook, limit="stack",
            )
        state.outer = outer
        state.depth = outer.depth + 1
    _tls.state = state
    return outer


def closed_error(plugin: str, hook: str | None, runtime: bool) -> ClosedError:
    """A call interrupted (or refused) because its plugin or runtime was closed."""
    what = "the plugbox Runtime was closed" if runtime else f"plugin {plugin!r} was closed"
    return ClosedError(
        f"{_where(plugin, hook)}: interrupted because {what} while the call ran; the plugin "
        "did nothing wrong. Close plugins and runtimes only after their calls have ended.",
        plugin=plugin, hook=hook,
    )


class CallOutcome:
    """What a hook call returned: ``ok`` payload bytes, or the guest's error (kind, message)."""

    __slots__ = ("ok", "value", "kind", "message", "denied")

    def __init__(
        self, ok: bool, value: bytes, kind: str, message: str, denied: str | None
    ) -> None:
        self.ok = ok
        self.value = value
        self.kind = kind
        self.message = message
        self.denied = denied


# ---------------------------------------------------------------------------------------------
# The call sequence, twice: in C (plugbox.engine._speedups, when built) and in Python over ctypes.
# Both return the same status tuples, interpreted in one place (Instance._outcome).

_ST_OK, _ST_GUEST_ERR, _ST_TRAP, _ST_ERROR = 0, 1, 2, 3
_ST_BAD_ALLOC, _ST_BAD_RETPTR, _ST_BAD_TAG, _ST_BAD_ERRTAG, _ST_BAD_RANGE = 4, 5, 6, 7, 8
_ST_SMALL_STACK = 9


class NeedStack(Exception):
    """Internal: this thread's stack cannot hold the call (nothing ran); the caller reruns it
    through :func:`run_on_enough_stack`."""

#: Exports an instance looks up, in this order (bit i of the found-mask is EXPORT_NAMES[i]).
EXPORT_NAMES: Final = (
    "cabi_realloc", "on-hook", "cabi_post_on-hook", "on-init", "cabi_post_on-init",
    "_initialize", "memory", _abispec.PANIC_EXPORT,
)
_EXPORT_NAMES_B: Final = tuple(n.encode() for n in EXPORT_NAMES)
_MEMORY_INDEX: Final = EXPORT_NAMES.index("memory")
_PANIC_INDEX: Final = EXPORT_NAMES.index(_abispec.PANIC_EXPORT)


def _py_guest_call(ctx: int, func: int, args: Any, n: int) -> tuple[int, int]:
    trap = c_void_p()
    err = _func_call(ctx, func, ctypes.addressof(args), n or 1, ctypes.addressof(trap))
    if err:
        return _ST_ERROR, err
    if trap.value:
        return _ST_TRAP, trap.value
    return _ST_OK, 0


#: Guest error messages are copied out up to this many UTF-8 bytes (like log messages); the
#: rest is counted and reported as dropped, never copied. Same number as in _speedups.c.
GUEST_ERROR_MAX: Final = 4096
# The instance's control words (int64[8], see _speedups.c): phase, interrupted, clock deadline
# (CLOCK_MONOTONIC ns, 0: by ticks only), tick (ns), native stack a call needs; then, written
# by the call sequence after each hook call: fuel it used, fuel all hook calls used, memory
# size after it (the metrics read these lazily: ctl outlives the store).
_CTL_PHASE, _CTL_INTERRUPTED, _CTL_DEADLINE, _CTL_TICK, _CTL_STACK = 0, 1, 2, 3, 4
_CTL_FUEL_LAST, _CTL_FUEL_TOTAL, _CTL_MEMORY = 5, 6, 7
_Ctl = c_int64 * 8
#: With a clock deadline, a running guest checks in every CHECK_TICKS epoch ticks (the latency
#: of an interrupt; same number as in _speedups.c).
CHECK_TICKS: Final = 8
MSG_INTERRUPTED: Final = "plugbox: interrupted: closed while the call ran"
MSG_DEADLINE: Final = "plugbox: wall-clock deadline passed"
_MSG_INTERRUPTED_B, _MSG_DEADLINE_B = MSG_INTERRUPTED.encode(), MSG_DEADLINE.encode()
_epoch_cb_type = ctypes.CFUNCTYPE(c_size_t, _P, _P, _P, _P)


def new_ctl(engine: Engine) -> Any:
    """A fresh instance's control words."""
    ctl = _Ctl()
    ctl[_CTL_TICK] = max(1, int(engine.tick_s * 1e9))
    ctl[_CTL_STACK] = engine.stack_need
    return ctl


def first_check(ctl: Any, ticks: int) -> int:
    """The epoch deadline a call starts with (twin of ``first_check`` in _speedups.c)."""
    if ctl[_CTL_INTERRUPTED]:
        return 0
    return CHECK_TICKS if ctl[_CTL_DEADLINE] and ticks > CHECK_TICKS else ticks


def _py_epoch_callback(ctx: int, data: int, delta: int, kind: int) -> int:
    """Pure-Python twin of ``epoch_callback`` in _speedups.c (it needs the GIL, once every
    CHECK_TICKS ticks of a running call)."""
    try:
        ctl = _Ctl.from_address(data)
        if ctl[_CTL_INTERRUPTED]:
            return _error_new(_MSG_INTERRUPTED_B) or 0
        left = ctl[_CTL_DEADLINE] - time.monotonic_ns()
        if not ctl[_CTL_DEADLINE] or left <= 0:
            return _error_new(_MSG_DEADLINE_B) or 0
        c_uint64.from_address(delta).value = min(CHECK_TICKS, left // max(1, ctl[_CTL_TICK]) + 1)
        c_uint8.from_address(kind).value = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
        return 0
    except BaseException:
        return _error_new(_MSG_DEADLINE_B) or 0


_py_epoch_cb = _epoch_cb_type(_py_epoch_callback)


def install_epoch_callback(store: int, ctl: Any) -> None:
    """Give ``store`` the epoch-deadline callback (C when the accelerator is in use) with the
    control words ``ctl`` (which must outlive the store)."""
    cb = trampolines[2] if trampolines is not None else ctypes.cast(_py_epoch_cb, c_void_p).value
    _store_epoch_callback(store, cb, ctypes.addressof(ctl), None)


def set_clock_deadline(ctl: Any, deadline_at: float | None, deadline_ms: int) -> None:
    """Arm the clock deadline of the call about to start (``deadline_at``: monotonic seconds;
    else ``deadline_ms`` from now; else ticks only)."""
    if deadline_at is not None:
        ctl[_CTL_DEADLINE] = int(deadline_at * 1e9)
    elif deadline_ms > 0:
        ctl[_CTL_DEADLINE] = time.monotonic_ns() + deadline_ms * 1_000_000
    else:
        ctl[_CTL_DEADLINE] = 0
#: What the C trampoline traps with when a host function could not even start.
_TRAMPOLINE_NESTED: Final = "plugbox: host call nested too deep"


def dropped_note(dropped: int) -> str:
    """The marker appended to a guest error message cut at GUEST_ERROR_MAX."""
    return (f" [... {dropped} more bytes dropped: guest error messages are capped at "
            f"{GUEST_ERROR_MAX} bytes]") if dropped else ""


def cap_message(text: str) -> str:
    """``text`` cut to GUEST_ERROR_MAX UTF-8 bytes, with the dropped-bytes marker."""
    if len(text) <= GUEST_ERROR_MAX // 4:
        return text
    raw = text.encode("utf-8", "replace")
    if len(raw) <= GUEST_ERROR_MAX:
        return text
    kept = raw[:GUEST_ERROR_MAX].decode("utf-8", "ignore")
    return kept + dropped_note(len(raw) - len(kept.encode("utf-8")))


def _py_call_entry(
    ctx: int, mem: int, base: int, realloc: int, func: int, post: int,
    first: bytes | None, second: bytes, fuel: int, ticks: int, ctl_addr: int,
    deadline_at: float | None,
) -> tuple[Any, ...]:
    """Pure-Python twin of ``_speedups.call_entry`` (same arguments, same status tuples)."""
    ctl = _Ctl.from_address(ctl_addr)
    room = _py_stack_room(skip=1)  # this call's own state is already pushed
    if 0 <= room < ctl[_CTL_STACK]:
        return (_ST_SMALL_STACK, room, ctl[_CTL_STACK])
    ctl[_CTL_DEADLINE] = int(deadline_at * 1e9) if deadline_at else 0
    err = _set_fuel(ctx, fuel)
    if err:
        return (_ST_ERROR, err, 0)
    _set_epoch_deadline(ctx, first_check(ctl, ticks))
    try:
        ctl[_CTL_PHASE] = 1
        return _py_call_steps(ctx, mem, base, realloc, func, post, first, second, ctl)
    finally:
        ctl[_CTL_PHASE] = 0
        if first is not None:  # a hook call: account for the fuel it used, as C does
            left = c_uint64()
            err = _get_fuel(ctx, ctypes.addressof(left))
            if err:
                _take_error(err)
            else:
                used = max(0, fuel - left.value)
                ctl[_CTL_FUEL_LAST] = used
                ctl[_CTL_FUEL_TOTAL] += used
            ctl[_CTL_MEMORY] = _memory_size(ctx, mem)


def _py_call_steps(
    ctx: int, mem: int, base: int, realloc: int, func: int, post: int,
    first: bytes | None, second: bytes, ctl: Any,
) -> tuple[Any, ...]:
    args = (ctypes.c_uint8 * (_RAW * 4))()
    ptrs = []
    for data in ((first, second) if first is not None else (second,)):
        if not data:
            ptrs.append(1)
            continue
        _RAW_I32[4].pack_into(args, 0, 0, 0, 1, len(data))
        st, fault = _py_guest_call(ctx, realloc, args, 4)
        if st:
            return (st, fault, 0)
        ptr = _U32.unpack_from(args, 0)[0]
        if ptr + len(data) > _memory_size(ctx, mem):
            return (_ST_BAD_ALLOC, ptr, len(data))
        _memmove(base + ptr, data, len(data))
        ptrs.append(ptr)
    ctl[_CTL_PHASE] = 0
    if first is not None:
        _RAW_I32[4].pack_into(args, 0, ptrs[0], len(first), ptrs[1], len(second))
        st, fault = _py_guest_call(ctx, func, args, 4)
    else:
        _RAW_I32[2].pack_into(args, 0, ptrs[0], len(second))
        st, fault = _py_guest_call(ctx, func, args, 2)
    if st:
        return (st, fault, 0)
    ret = _U32.unpack_from(args, 0)[0]
    msize = _memory_size(ctx, mem)
    if ret % 4 or ret + 16 > msize:
        return (_ST_BAD_RETPTR, ret, msize)
    tag, etag, w1, w2 = struct.unpack("<B3xB3xII", _string_at(base + ret, 16))
    if tag == 0:  # ok: the list's (ptr, len) sits at offsets 4 and 8
        ptr, length = struct.unpack_from("<II", _string_at(base + ret + 4, 8))
        if first is None:
            result: tuple[Any, ...] = (_ST_OK, b"")
        elif ptr + length > msize:
            return (_ST_BAD_RANGE, ptr, length)
        else:
            result = (_ST_OK, _string_at(base + ptr, length))
    elif tag == 1:
        if etag >= len(_abispec.ERROR_KINDS):
            return (_ST_BAD_ERRTAG, etag, 0)
        if w1 + w2 > msize:
            return (_ST_BAD_RANGE, w1, w2)
        kept = min(w2, GUEST_ERROR_MAX)
        result = (_ST_GUEST_ERR, etag, _string_at(base + w1, kept), w2 - kept)
    else:
        return (_ST_BAD_TAG, tag, 0)
    if post:
        _RAW_I32[1].pack_into(args, 0, ret)
        ctl[_CTL_PHASE] = 1
        st, fault = _py_guest_call(ctx, post, args, 1)
        if st:
            return (st, fault, 0)
    return result


def _py_observe(slots: int, started: float) -> float:
    """Pure-Python twin of ``_speedups.observe``: count a finished call in the metrics
    accumulator at address ``slots`` (int64[65]: bit-length counts of nanoseconds, then their
    total); returns ``time.monotonic()``."""
    now = time.monotonic()
    ns = max(0, int(now * 1e9) - int(started * 1e9))
    acc = (c_int64 * 65).from_address(slots)
    acc[ns.bit_length()] += 1
    acc[64] += ns
    return now


def _py_instantiate(
    engine: int, pre: int, cap: int, fuel: int, ticks: int, names: tuple[bytes, ...],
    out: int, instance: int, ctl: int, start: bool,
) -> tuple[int, int, int, int]:
    """Pure-Python twin of ``_speedups.instantiate``."""
    store = _store_new(engine, None, None)
    if not store:
        raise MemoryError("wasmtime_store_new failed")
    ctx = _store_context(store)
    _store_limiter(store, cap, 100_000, 1, 4, 1)  # bytes, table elements, instances, tables, memories
    err = _set_fuel(ctx, fuel)
    if err:
        _store_delete(store)
        return (_ST_ERROR, err, 0, 0)
    _set_epoch_deadline(ctx, ticks)
    trap = c_void_p()
    # Only a start function runs guest code here; without one, keep the GIL (see _speedups.c).
    instantiate = _pre_instantiate if start else _pre_instantiate_gil
    err = instantiate(pre, ctx, instance, ctypes.addressof(trap))
    if err or trap.value:
        _store_delete(store)
        return (_ST_ERROR, err, 0, 0) if err else (_ST_TRAP, trap.value or 0, 0, 0)
    # Installed after instantiation, so start-up code still ends in a plain interrupt trap.
    _store_epoch_callback(store, ctypes.cast(_py_epoch_cb, c_void_p).value, ctl, None)
    mask = 0
    for i, name in enumerate(names):
        ctypes.memset(out + 32 * i, 0, 32)
        if _export_get(ctx, instance, name, len(name), out + 32 * i):
            mask |= 1 << i
    return (_ST_OK, store, ctx, mask)


try:
    if os.environ.get("PLUGBOX_NO_SPEEDUPS"):
        raise ImportError("disabled by PLUGBOX_NO_SPEEDUPS")
    from . import _speedups  # type: ignore[attr-defined]

    def _addr(name: str) -> int | None:
        return ctypes.cast(getattr(_cdll, name), c_void_p).value

    _speedups.bind(tuple(_addr(n) for n in (
        "wasmtime_func_call_unchecked", "wasmtime_context_set_fuel",
        "wasmtime_context_set_epoch_deadline", "wasmtime_memory_data_size", "wasmtime_store_new",
        "wasmtime_store_context", "wasmtime_store_limiter", "wasmtime_store_delete",
        "wasmtime_instance_pre_instantiate", "wasmtime_instance_export_get",
        "wasmtime_error_delete", "wasmtime_component_vallist_new_uninit",
        "wasmtime_engine_increment_epoch", "wasmtime_trap_new", "wasmtime_error_new",
        "wasmtime_store_epoch_deadline_callback", "wasmtime_context_get_fuel",
    )))
    assert _speedups.GUEST_ERROR_MAX == GUEST_ERROR_MAX
    assert _speedups.CHECK_TICKS == CHECK_TICKS
    _call_entry: Callable[..., tuple[Any, ...]] = _speedups.call_entry
    _instantiate: Callable[..., tuple[int, int, int, int]] = _speedups.instantiate
    #: Addresses of the C trampolines (core host function, component host function, store
    #: epoch-deadline callback), or None on the pure-ctypes path.
    trampolines: tuple[int, int, int] | None = _speedups.trampolines()
    _stack_room: Callable[[], int] = _speedups.stack_room
    #: observe(accumulator address, started) -> time.monotonic(): see _speedups.c.
    observe: Callable[[int, float], float] = _speedups.observe
    ACCELERATED = True
except ImportError:  # no C compiler at install time: same behaviour, slower
    _call_entry = _py_call_entry
    _instantiate = _py_instantiate
    trampolines = None
    ACCELERATED = False
    observe = _py_observe


def use_accelerator(enabled: bool) -> bool:
    """Switch between the C and the pure-Python call sequence (tests run both). Returns whether
    the accelerator is now in use (False when it is not built). Host functions linked from then
    on use the C trampolines or the ctypes callbacks to match; the epoch ticker stays native."""
    global _call_entry, _instantiate, trampolines, _stack_room, observe
    if enabled and ACCELERATED:
        _call_entry, _instantiate = _speedups.call_entry, _speedups.instantiate
        trampolines, _stack_room = _speedups.trampolines(), _speedups.stack_room
        observe = _speedups.observe
        return True
    _call_entry, _instantiate = _py_call_entry, _py_instantiate
    trampolines, _stack_room, observe = None, _py_stack_room, _py_observe
    return False


_libc: Any = None


def _py_stack_room(skip: int = 0) -> int:
    """Pure-Python twin of ``_speedups.stack_room``: Python cannot see the stack pointer, so it
    counts this thread's stack size minus 128 KiB for the host's frames and the need of every
    call running on the thread but the innermost ``skip``. -1 when unknown."""
    global _libc
    size: int | None = getattr(_tls, "stack_size", None)
    if size is None:
        size = -1
        try:
            if _libc is None:
                _libc = ctypes.CDLL(None)
                _libc.pthread_self.restype = ctypes.c_ulong
                _libc.pthread_getattr_np.argtypes = (ctypes.c_ulong, c_void_p)
                _libc.pthread_attr_getstack.argtypes = (c_void_p, c_void_p, c_void_p)
                _libc.pthread_attr_destroy.argtypes = (c_void_p,)
            attr = (ctypes.c_uint8 * 256)()
            if _libc.pthread_getattr_np(_libc.pthread_self(), ctypes.addressof(attr)) == 0:
                addr, length = c_void_p(), c_size_t()
                _libc.pthread_attr_getstack(ctypes.addressof(attr), ctypes.addressof(addr),
                                            ctypes.addressof(length))
                _libc.pthread_attr_destroy(ctypes.addressof(attr))
                size = length.value
        except (AttributeError, OSError):
            pass
        _tls.stack_size = size
    if size < 0:
        return -1
    used = 128 * 1024
    st = current_call()
    for _ in range(skip):
        st = st.outer if st is not None else None
    while st is not None:
        used += st.instance.template.engine.stack_need
        st = st.outer
    return max(0, size - used)


if not ACCELERATED:
    _stack_room = _py_stack_room


def stack_room() -> int:
    """Bytes left on the calling thread's native stack (-1 when unknown)."""
    return _stack_room()


_big_stack_lock = threading.Lock()


def run_on_enough_stack(engine: Engine, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, on this thread when its stack has room for ``engine.stack_need``, else on a
    new thread with a stack of known size (an outermost call only: a nested call cannot move,
    and is a StackOverflow). Without this, a guest recursing on a thread with a small stack
    (``threading.stack_size(256 KiB)``) would overrun it before wasmtime's ``max_wasm_stack``
    check fires: SIGSEGV instead of StackOverflow."""
    room = _stack_room()
    # 64 KiB of slack: the calls made under ``fn`` check again, a few frames deeper.
    if room < 0 or room >= engine.stack_need + 64 * 1024:
        return fn(*args)
    outer = current_call()
    if outer is not None:
        plugin = outer.instance.plugin
        raise StackOverflow(
            f"{_where(plugin, outer.hook)}: a nested plugin call needs {engine.stack_need} bytes "
            f"of native stack and this thread has {room} left; call plugins from host functions "
            "less deeply, or from a thread with a larger stack.",
            plugin=plugin, hook=outer.hook, limit="stack",
        )
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as exc:  # handed to the calling thread
            box.append((False, exc))

    with _big_stack_lock:  # threading.stack_size is process-wide
        previous = threading.stack_size(max(8 << 20, 4 * engine.stack_need))
        try:
            thread = threading.Thread(target=target, name="plugbox-stack", daemon=True)
            thread.start()
        finally:
            threading.stack_size(previous)
    thread.join()
    ok, value = box[0]
    if ok:
        return value
    raise value


# ---------------------------------------------------------------------------------------------
# Instance


class Instance:
    """One instantiated plugin: its own store, memory and exports. Not thread-safe; the plugin's
    pool hands each instance to one caller at a time."""

    def __init__(self, template: Template, fuel: int, ticks: int) -> None:
        self.template = template
        self.plugin = template.plugin
        self.memory_cap = template.memory_cap
        self.closed = True
        self._exports = (ctypes.c_uint8 * (32 * len(EXPORT_NAMES)))()
        exports = ctypes.addressof(self._exports)
        self._instance = _wb.wasmtime_instance_t()
        self._ctl = new_ctl(template.engine)  # the store's epoch-callback data: outlives it
        self._ctl_addr = ctypes.addressof(self._ctl)
        status, store, ctx, mask = _instantiate(
            template.engine.ptr, template.pre, template.memory_cap, fuel, ticks,
            _EXPORT_NAMES_B, exports, ctypes.addressof(self._instance), self._ctl_addr,
            template.start,
        )
        if status != _ST_OK:
            code, msg = (None, _take_error(store)) if status == _ST_ERROR else _take_trap(store)
            raise instantiation_error(
                self.plugin, code, msg, fuel=fuel, memory_cap=template.memory_cap,
                deadline_ms=template.engine.ticks_ms(ticks),
            )
        self.closed = False
        self._store: int = store
        self.ctx: int = ctx
        # name -> address of its wasmtime_func_t / wasmtime_memory_t inside self._exports
        self._funcs = {
            name: exports + 32 * i + _EXTERN_OF
            for i, name in enumerate(EXPORT_NAMES)
            if mask >> i & 1 and name != "memory"
            and self._exports[32 * i] == _EXTERN_FUNC
        }
        has_memory = mask >> _MEMORY_INDEX & 1 and self._exports[32 * _MEMORY_INDEX] == _EXTERN_MEMORY
        # Static checks guarantee these exist; guard anyway so a bug cannot become a crash.
        for required, present in (("cabi_realloc", "cabi_realloc" in self._funcs),
                                  ("on-hook", "on-hook" in self._funcs), ("memory", has_memory)):
            if not present:
                self.close()
                raise AbiViolation(
                    f"plugin {self.plugin!r}: module has no {required!r} export",
                    plugin=self.plugin,
                )
        self._mem = exports + 32 * _MEMORY_INDEX + _EXTERN_OF
        # The SDK's panic report slot (an immutable i32 global holding its address), if any.
        self._panic = (exports + 32 * _PANIC_INDEX + _EXTERN_OF
                       if mask >> _PANIC_INDEX & 1
                       and self._exports[32 * _PANIC_INDEX] == _EXTERN_GLOBAL else 0)
        # The engine is configured so memories never move: the base address is fixed.
        self.base: int = _memory_data(self.ctx, self._mem) or 0
        self._args = (ctypes.c_uint8 * (_RAW * 16))()
        self._args_addr = ctypes.addressof(self._args)
        self._trap = c_void_p()
        self._trap_addr = ctypes.addressof(self._trap)
        self._view_size = -1
        self._view: memoryview = memoryview(b"")
        self._refresh()
        self._realloc = self._funcs["cabi_realloc"]
        self._on_hook = self._funcs["on-hook"]
        self._post_hook = self._funcs.get("cabi_post_on-hook", 0)
        self.calls = 0

    # -- memory ----------------------------------------------------------------------------

    def memory_size(self) -> int:
        """Current size of the guest's linear memory in bytes."""
        return int(_memory_size(self.ctx, self._mem))

    def _refresh(self) -> memoryview:
        """The guest memory as a memoryview of its *current* size.

        Memory only grows while guest code runs, and never moves (engine setting), so a view
        is rebuilt only when the size changed; slicing it is far cheaper than ctypes copies,
        and its length is the bound every access is checked against.
        """
        size = _memory_size(self.ctx, self._mem)
        if size != self._view_size:
            self._view_size = size
            self._view = memoryview((ctypes.c_char * size).from_address(self.base)).cast("B")
        return self._view

    def read(self, ptr: int, length: int, hook: str, what: str) -> bytes:
        """Copy ``length`` bytes at guest offset ``ptr``, bounds-checked."""
        view = self._view
        if ptr + length > self._view_size:
            view = self._refresh()
        if ptr < 0 or length < 0 or ptr + length > len(view):
            raise AbiViolation(
                f"plugin {self.plugin!r}, hook {hook!r}: {what} at {ptr:#x}+{length} lies "
                f"outside guest memory ({len(view)} bytes)",
                plugin=self.plugin, hook=hook,
            )
        return view[ptr:ptr + length].tobytes()

    def read_str(self, ptr: int, length: int, hook: str, what: str) -> str:
        """Read and decode a guest UTF-8 string, bounds-checked."""
        return self._decode(self.read(ptr, length, hook, what), hook, what)

    def _decode(self, raw: bytes, hook: str, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AbiViolation(
                f"plugin {self.plugin!r}, hook {hook!r}: {what} is not valid UTF-8 ({exc})",
                plugin=self.plugin, hook=hook,
            ) from None

    def _write(self, ptr: int, data: bytes) -> None:
        # Callers got ptr from _alloc or a checked return area, both inside the current view.
        self._view[ptr:ptr + len(data)] = data

    # -- guest calls made by host functions ------------------------------------------------

    def _invoke(self, func: int, nargs: int, hook: str) -> None:
        """Call a guest function whose raw args are already in ``self._args``."""
        err = _func_call(self.ctx, func, self._args_addr, nargs or 1, self._trap_addr)
        if err:
            raise self._failure(err, None, hook)
        if self._trap.value:
            trap, self._trap.value = self._trap.value, None
            raise self._failure(None, trap, hook)

    def _alloc(self, size: int, align: int, hook: str) -> int:
        """Call the guest's cabi_realloc(0, 0, align, size); returns a checked guest pointer."""
        if size == 0:
            return align  # the canonical ABI lets a zero-length list point anywhere aligned
        _RAW_I32[4].pack_into(self._args, 0, 0, 0, align, size)
        ctl = self._ctl
        phase, ctl[_CTL_PHASE] = ctl[_CTL_PHASE], 1  # imports are refused inside cabi_realloc
        try:
            self._invoke(self._realloc, 4, hook)
        finally:
            ctl[_CTL_PHASE] = phase
        ptr: int = _U32.unpack_from(self._args, 0)[0]
        # Memory never shrinks, so the cached view is a safe bound; refresh only past it.
        if ptr % align or (ptr + size > self._view_size and ptr + size > len(self._refresh())):
            raise self._violation(_ST_BAD_ALLOC, ptr, size, hook)
        return ptr

    def _lower_bytes(self, data: bytes, hook: str) -> int:
        ptr = self._alloc(len(data), 1, hook)
        if data:
            self._view[ptr:ptr + len(data)] = data
        return ptr

    # -- entry points -----------------------------------------------------------------------

    def call_hook(
        self, hook: str, hook_bytes: bytes, payload: bytes, fuel: int, ticks: int,
        deadline_at: float | None, deadline_ms: int,
    ) -> CallOutcome:
        """Run ``on-hook`` with ``fuel`` and an epoch deadline ``ticks`` from now.

        ``deadline_at`` (``time.monotonic()`` seconds) bounds blocking host calls (http);
        ``deadline_ms`` is the same deadline as the caller set it, for messages.
        Raises typed errors for traps and ABI violations.
        """
        state = _CallState(self, hook, deadline_at, fuel, deadline_ms)
        outer: _CallState | None = getattr(_tls, "state", None)
        if outer is not None:
            enter_call(state)
        else:
            _tls.state = state  # the common case, inline: no nesting to check
        try:
            res = _call_entry(self.ctx, self._mem, self.base, self._realloc, self._on_hook,
                              self._post_hook, hook_bytes, payload, fuel, ticks, self._ctl_addr,
                              deadline_at)
            if res[0] == _ST_OK:
                return CallOutcome(True, res[1], "", "", state.denied)
            return self._outcome(res, hook, state)
        finally:
            _tls.state = outer
            self.calls += 1

    def call_init(
        self, config_json: bytes, fuel: int, ticks: int, deadline_ms: int
    ) -> CallOutcome:
        """Run ``_initialize`` (if exported) then ``on-init`` (if exported)."""
        state = _CallState(self, "on-init", None, fuel, deadline_ms)
        outer = enter_call(state)
        deadline_at = time.monotonic() + deadline_ms / 1000 if deadline_ms > 0 else None
        set_clock_deadline(self._ctl, deadline_at, 0)
        try:
            init = self._funcs.get("_initialize")
            if init is not None:
                err = _set_fuel(self.ctx, fuel)
                if err:
                    raise self._failure(err, None, "on-init")
                _set_epoch_deadline(self.ctx, first_check(self._ctl, ticks))
                self._invoke(init, 0, "on-init")
            on_init = self._funcs.get("on-init")
            if on_init is None:
                return CallOutcome(True, b"", "", "", None)
            res = _call_entry(self.ctx, self._mem, self.base, self._realloc, on_init,
                              self._funcs.get("cabi_post_on-init", 0), None, config_json,
                              fuel, ticks, self._ctl_addr, deadline_at)
            if res[0] == _ST_OK:
                return CallOutcome(True, b"", "", "", state.denied)
            return self._outcome(res, "on-init", state)
        finally:
            _tls.state = outer

    def _outcome(self, res: tuple[Any, ...], hook: str, state: _CallState) -> CallOutcome:
        status = res[0]
        if status == _ST_SMALL_STACK:
            raise NeedStack
        if status == _ST_GUEST_ERR:
            message = self._error_message(res[2], res[3], hook)
            return CallOutcome(False, b"", _abispec.ERROR_KINDS[res[1]], message, state.denied)
        if status == _ST_TRAP:
            raise self._failure(None, res[1], hook)
        if status == _ST_ERROR:
            raise self._failure(res[1], None, hook)
        raise self._violation(status, res[1], res[2], hook)

    def _error_message(self, raw: bytes, dropped: int, hook: str) -> str:
        """The guest's error message, of which ``dropped`` bytes past the cap were not copied."""
        if dropped:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
                    dropped += len(raw) - exc.start  # the cap cut a character in two
                    raw = raw[:exc.start]
        return self._decode(raw, hook, "error message") + dropped_note(dropped)

    def interrupt(self) -> None:
        """End the call running in this instance (callable from any thread) within
        CHECK_TICKS epoch ticks, when its store's epoch callback next runs; a call that has not
        started yet ends at its first instruction. The call raises ClosedError."""
        self._ctl[_CTL_INTERRUPTED] = 1

    def _violation(self, status: int, a: int, b: int, hook: str) -> AbiViolation:
        where = f"plugin {self.plugin!r}, hook {hook!r}"
        if status == _ST_BAD_ALLOC:
            what = f"cabi_realloc returned {a:#x} for {b} bytes, outside its memory or misaligned"
        elif status == _ST_BAD_RETPTR:
            what = (f"returned result pointer {a:#x} lies outside guest memory ({b} bytes) or "
                    "is misaligned")
        elif status == _ST_BAD_TAG:
            what = f"returned result with unknown discriminant {a} (expected 0 ok or 1 err)"
        elif status == _ST_BAD_ERRTAG:
            what = (f"returned error with unknown discriminant {a} (the ABI has "
                    f"{len(_abispec.ERROR_KINDS)} cases)")
        else:
            what = f"returned a list or string at {a:#x}+{b} that lies outside guest memory"
        return AbiViolation(f"{where}: {what}", plugin=self.plugin, hook=hook)

    def _failure(self, err: int | None, trap: int | None, hook: str) -> PlugboxError:
        state: _CallState | None = getattr(_tls, "state", None)
        if err:
            msg = _take_error(err)
            code = None
        else:
            code, msg = _take_trap(trap or 0)
        if MSG_INTERRUPTED in msg or (code == _TRAP_INTERRUPT and self._ctl[_CTL_INTERRUPTED]):
            return closed_error(self.plugin, hook, self.template.engine.closing)
        # A host function that trapped on purpose stashed the typed error.
        if state is not None and state.error is not None:
            stashed, state.error = state.error, None
            return host_function_error(stashed, self.plugin, hook)
        if _TRAMPOLINE_NESTED in msg:
            return stack_error(self.plugin, hook, "host functions nested until the host's "
                               "Python stack ran out")
        if code == _TRAP_OUT_OF_FUEL:
            return fuel_error(self.plugin, hook, state.fuel if state is not None else None)
        if code == _TRAP_INTERRUPT or MSG_DEADLINE in msg:
            return deadline_error(self.plugin, hook,
                                  state.deadline_ms if state is not None else None)
        if code == _TRAP_STACK_OVERFLOW:
            return stack_error(self.plugin, hook)
        first = trap_summary(msg)
        panic = self.panic_report()
        if panic is not None:
            location, text = panic
            return GuestTrap(
                f"{_where(self.plugin, hook)}: the plugin panicked"
                f"{f' at {location}' if location else ''}: {text} ({first})",
                plugin=self.plugin, hook=hook, panic_message=text,
                panic_location=location or None)
        if not self.closed and self.memory_size() * 2 > self.memory_cap:
            # wasmtime reports a refused memory.grow as -1, and Rust guests then abort; a
            # trap while memory is over half its cap is almost always that allocation failure.
            return memory_error(self.plugin, hook, self.memory_cap,
                                f"trapped with {self.memory_size()} bytes in use: {first}")
        return GuestTrap(f"{_where(self.plugin, hook)}: guest trapped: {first}",
                         plugin=self.plugin, hook=hook)

    def usage(self, fuel: int) -> tuple[int | None, int | None]:
        """(fuel the last hook call used, memory size in bytes after it): what the call that
        just ran on this instance used, as the call sequence recorded it (``fuel``, what it
        was given, is not needed). (None, None) once closed."""
        if self.closed:
            return None, None
        return int(self._ctl[_CTL_FUEL_LAST]), int(self._ctl[_CTL_MEMORY])

    @property
    def fuel_consumed(self) -> int:
        """Fuel all hook calls on this instance used (kept after close; on-init not counted)."""
        return int(self._ctl[_CTL_FUEL_TOTAL])

    @property
    def memory_peak(self) -> int:
        """The instance's linear memory in bytes after its last hook call (memory only grows,
        so its peak; 0 before the first). Safe from any thread, also after close."""
        return int(self._ctl[_CTL_MEMORY])

    def panic_report(self) -> tuple[str, str] | None:
        """(location, message) the SDK's panic hook left in the ``plugbox-panic`` slot, read
        after a trap (no guest code runs); None when the module has no slot or it is empty.
        Every length is checked against the slot's bound and the memory before it is read."""
        if not self._panic or self.closed:
            return None
        val = _wb.wasmtime_val_t()
        _global_get(self.ctx, self._panic, ctypes.addressof(val))
        if getattr(val, "kind") != _WASMTIME_I32:  # a ctypes field reads as an int
            return None
        at = val.of.i32 & 0xFFFFFFFF
        view = self._refresh()
        if at % 4 or at + 4 > len(view):
            return None
        length = int.from_bytes(view[at:at + 4], "little")
        if not 0 < length <= _abispec.PANIC_REPORT_MAX or at + 4 + length > len(view):
            return None
        text = view[at + 4:at + 4 + length].tobytes().decode("utf-8", "replace")
        location, _, message = text.partition("\0")
        return _printable(location), _printable(message) or "(no message)"

    def close(self) -> None:
        """Free the store and everything in it. Safe to call twice."""
        if not self.closed:
            self.closed = True
            _store_delete(self._store)
            self._store = 0

# ---------------------------------------------------------------------------------------------
# Host functions: lifting guest arguments, lowering results into the guest's return area.


# Imported here rather than at the top: this region is the only user.
from ..services._services import (  # noqa: E402
    CONFIG_KEY, EVENT_PAYLOAD, EVENT_TOPIC, HTTP_BODY, HTTP_HEADER_NAME, HTTP_HEADER_VALUE,
    HOST_CALL_PAYLOAD, HOST_DISPATCH_PAYLOAD, HOST_FUNCTION_NAME, HOST_POINT_NAME,
    HTTP_HEADERS, HTTP_METHOD, HTTP_URL, KV_KEY, KV_PREFIX, KV_VALUE, LOG_MESSAGE_MAX,
    HostCallError, InputCap, utf8_prefix,
)


def _denied_or_error(state: _CallState, exc: Exception) -> tuple[int, str]:
    if isinstance(exc, HostCallError):
        if exc.kind == "denied" and state.denied is None:
            state.denied = exc.permission or "unknown"
        return _abispec.ERROR_KINDS.index(exc.kind), exc.message
    raise exc


class _Lowering:
    """Writes host results into guest memory, allocating through the guest's cabi_realloc."""

    __slots__ = ("inst", "hook")

    def __init__(self, inst: Instance, hook: str) -> None:
        self.inst = inst
        self.hook = hook

    def bytes_(self, data: bytes) -> tuple[int, int]:
        return self.inst._lower_bytes(data, self.hook), len(data)

    def err(self, retptr: int, kind: int, message: str, at: int = 4) -> None:
        """``err(kind(message))`` at ``retptr``; the error sits at ``at`` (8 when the ok case
        is 8-aligned, as in ``result<s64, error>``)."""
        mptr, mlen = self.bytes_(message.encode("utf-8"))
        if at == 4:
            self.inst._write(retptr, _ERROR_AT4.pack(1, kind, mptr, mlen))
        else:
            self.inst._write(retptr, _ERROR_AT8.pack(1, kind, mptr, mlen))

    def ok_unit(self, retptr: int) -> None:
        self.inst._write(retptr, _U8.pack(0))

    def ok_words(self, retptr: int, *words: int) -> None:
        self.inst._write(retptr, _U8.pack(0) + b"\0\0\0" + struct.pack(f"<{len(words)}I", *words))

    def ok_u8(self, retptr: int, flag: int) -> None:
        self.inst._write(retptr, bytes((0, 0, 0, 0, flag)))

    def str_list(self, items: list[str]) -> tuple[int, int]:
        encoded = [self.bytes_(s.encode("utf-8")) for s in items]
        table = b"".join(_U32X2.pack(p, n) for p, n in encoded)
        ptr = self.inst._alloc(len(table), 4, self.hook)
        if table:
            self.inst._write(ptr, table)
        return ptr, len(items)

    def pair_list(self, items: list[tuple[str, str]]) -> tuple[int, int]:
        rows = []
        for name, value in items:
            np, nl = self.bytes_(name.encode("utf-8"))
            vp, vl = self.bytes_(value.encode("utf-8"))
            rows.append(_U32X4.pack(np, nl, vp, vl))
        table = b"".join(rows)
        ptr = self.inst._alloc(len(table), 4, self.hook)
        if table:
            self.inst._write(ptr, table)
        return ptr, len(items)


# Each host function: (import field, number of raw params, adapter). An adapter receives the
# call state, the HostServices and the raw i32 params, and writes its result.
_Adapter = Callable[["_CallState", "HostServices", tuple[int, ...]], "int | None"]


def _checked_retptr(inst: Instance, retptr: int, size: int, hook: str, align: int = 4) -> int:
    if retptr % align or (
        retptr + size > inst._view_size and retptr + size > len(inst._refresh())
    ):
        raise AbiViolation(
            f"plugin {inst.plugin!r}, hook {hook!r}: host call return area {retptr:#x}+{size} "
            "lies outside guest memory or is misaligned",
            plugin=inst.plugin, hook=hook,
        )
    return retptr


def _in_memory(st: _CallState, ptr: int, n: int, what: str) -> None:
    """Raise the ABI violation ``Instance.read`` would, without copying anything."""
    inst = st.instance
    if ptr + n > inst._view_size and ptr + n > len(inst._refresh()):
        raise AbiViolation(
            f"plugin {inst.plugin!r}, hook {st.hook!r}: {what} at {ptr:#x}+{n} lies outside "
            f"guest memory ({inst._view_size} bytes)",
            plugin=inst.plugin, hook=st.hook,
        )


def _over(st: _CallState, svc: HostServices, ptr: int, n: int, cap: InputCap,
          limit: int | None = None) -> HostCallError:
    """The refusal of an input over its cap; nothing is copied. A range outside memory is
    still an ABI violation, whatever its length."""
    _in_memory(st, ptr, n, cap.what)
    return svc.input_error(cap, n, limit)


def _s(st: _CallState, svc: HostServices, ptr: int, n: int, cap: InputCap) -> str:
    if n > cap.cap:
        raise _over(st, svc, ptr, n, cap)
    return st.instance.read_str(ptr, n, st.hook, cap.what)


def _b(st: _CallState, svc: HostServices, ptr: int, n: int, cap: InputCap) -> bytes:
    if n > cap.cap:
        raise _over(st, svc, ptr, n, cap)
    return st.instance.read(ptr, n, st.hook, cap.what)


def _with_result(
    size: int, body: Callable[[_CallState, HostServices, _Lowering, int, tuple[int, ...]], None],
    align: int = 4,
) -> _Adapter:
    """The adapter of an import whose result goes to a return area of ``size`` bytes and
    ``align`` (8 for ``result<s64, error>``, whose cases then start at offset 8)."""
    def adapter(st: _CallState, svc: HostServices, a: tuple[int, ...]) -> None:
        inst = st.instance
        retptr = _checked_retptr(inst, a[-1], size, st.hook, align)
        low = _Lowering(inst, st.hook)
        try:
            body(st, svc, low, retptr, a)
        except (_Trap, PlugboxError):
            raise
        except Exception as exc:  # HostCallError -> ABI error value
            kind, message = _denied_or_error(st, exc)
            low.err(retptr, kind, message, align)

    return adapter


def _log(st: _CallState, svc: HostServices, a: tuple[int, ...]) -> None:
    level, ptr, n = a
    if not 0 <= level <= 4:
        raise AbiViolation(
            f"plugin {st.instance.plugin!r}, hook {st.hook!r}: log level discriminant {level} "
            "is not one of the 5 cases",
            plugin=st.instance.plugin, hook=st.hook,
        )
    inst = st.instance
    omitted = 0
    if n > LOG_MESSAGE_MAX:
        # Only the part that can be shown is copied (and checked as UTF-8); the record's
        # truncation marker still gives the guest's full length.
        _in_memory(st, ptr, n, "log message")
        raw = utf8_prefix(inst.read(ptr, LOG_MESSAGE_MAX, st.hook, "log message"))
        omitted = n - len(raw)
        message = inst._decode(raw, st.hook, "log message")
    else:
        message = inst.read_str(ptr, n, st.hook, "log message")
    try:
        svc.log(level, message, omitted=omitted, hook=st.hook)
    except Exception as exc:
        _denied_or_error(st, exc)  # log has no result: denial is counted, not returned


def _config_get(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    value = svc.config_get(_s(st, svc, a[0], a[1], CONFIG_KEY))
    if value is None:
        low.ok_words(r, 0, 0, 0)  # ok(none): option tag 0
    else:
        p, n = low.bytes_(value.encode("utf-8"))
        low.ok_words(r, 1, p, n)


def _config_get_all(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    p, n = low.bytes_(svc.config_get_all().encode("utf-8"))
    low.ok_words(r, p, n)


def _kv_get(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    value = svc.kv_get(_s(st, svc, a[0], a[1], KV_KEY))
    if value is None:
        low.ok_words(r, 0, 0, 0)
    else:
        p, n = low.bytes_(value)
        low.ok_words(r, 1, p, n)


def _kv_set(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    svc.kv_set(_s(st, svc, a[0], a[1], KV_KEY), _b(st, svc, a[2], a[3], KV_VALUE))
    low.ok_unit(r)


def _kv_delete(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    low.ok_u8(r, 1 if svc.kv_delete(_s(st, svc, a[0], a[1], KV_KEY)) else 0)


def _kv_list(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    keys = svc.kv_list_keys(_s(st, svc, a[0], a[1], KV_PREFIX))
    low.ok_words(r, *low.str_list(keys))


def _kv_increment(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    value = svc.kv_increment(_s(st, svc, a[0], a[1], KV_KEY), a[2])
    st.instance._write(r, _OK_S64.pack(0, value))


def _kv_compare_and_set(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    key = _s(st, svc, a[0], a[1], KV_KEY)
    tag = a[2]
    if tag > 1:
        raise AbiViolation(
            f"plugin {st.instance.plugin!r}, hook {st.hook!r}: kv.compare-and-set option tag "
            f"{tag} is neither 0 (none) nor 1 (some)",
            plugin=st.instance.plugin, hook=st.hook,
        )
    expected = _b(st, svc, a[3], a[4], KV_VALUE) if tag else None
    low.ok_u8(r, 1 if svc.kv_compare_and_set(key, expected, _b(st, svc, a[5], a[6], KV_VALUE))
              else 0)


def _host_call(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    name = _s(st, svc, a[0], a[1], HOST_FUNCTION_NAME)
    p, n = low.bytes_(svc.host_call(name, _b(st, svc, a[2], a[3], HOST_CALL_PAYLOAD)))
    low.ok_words(r, p, n)


def _host_dispatch(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    point = _s(st, svc, a[0], a[1], HOST_POINT_NAME)
    p, n = low.bytes_(svc.host_dispatch(point, _b(st, svc, a[2], a[3], HOST_DISPATCH_PAYLOAD)))
    low.ok_words(r, p, n)


def _events_emit(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    topic = _s(st, svc, a[0], a[1], EVENT_TOPIC)
    svc.events_emit(topic, _b(st, svc, a[2], a[3], EVENT_PAYLOAD))
    low.ok_unit(r)


def _random_bytes(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    p, n = low.bytes_(svc.random_bytes(a[0]))
    low.ok_words(r, p, n)


def _read_pairs(st: _CallState, svc: HostServices, ptr: int, count: int) -> list[tuple[str, str]]:
    if count > HTTP_HEADERS.cap:
        _in_memory(st, ptr, count * 16, HTTP_HEADERS.what)  # 16 bytes per (name, value)
        raise svc.input_error(HTTP_HEADERS, count)
    table = st.instance.read(ptr, count * 16, st.hook, HTTP_HEADERS.what)
    out = []
    for i in range(count):
        np, nl, vp, vl = _U32X4.unpack_from(table, i * 16)
        out.append((_s(st, svc, np, nl, HTTP_HEADER_NAME),
                    _s(st, svc, vp, vl, HTTP_HEADER_VALUE)))
    return out


def _http_fetch(st: _CallState, svc: HostServices, low: _Lowering, r: int, a: tuple[int, ...]) -> None:
    method = _s(st, svc, a[0], a[1], HTTP_METHOD)
    url = _s(st, svc, a[2], a[3], HTTP_URL)
    headers = _read_pairs(st, svc, a[4], a[5])
    body_max = svc.http_body_max
    if a[7] > body_max:
        raise _over(st, svc, a[6], a[7], HTTP_BODY, body_max)
    body = st.instance.read(a[6], a[7], st.hook, HTTP_BODY.what)
    timeout = None if st.deadline is None else max(0.0, st.deadline - time.monotonic())
    status, rheaders, rbody = svc.http_fetch(method, url, headers, body, timeout=timeout)
    hp, hn = low.pair_list(rheaders)
    bp, bn = low.bytes_(rbody)
    # result<response, error>: tag @0, response @4 = status u16 @4, headers @8, body @16
    st.instance._write(r, struct.pack("<B3xH2xIIII", 0, status & 0xFFFF, hp, hn, bp, bn))


def _clock(which: str) -> Callable[[_CallState, HostServices, int], int]:
    def adapter(st: _CallState, svc: HostServices, args: int) -> int:
        try:
            return svc.clock_now() if which == "now" else svc.clock_monotonic()
        except Exception as exc:
            # clock has no error case in the ABI: a denied clock reads as zero.
            _denied_or_error(st, exc)
            return 0

    return adapter


_M = _abispec.import_module
_ADAPTERS: Final[dict[tuple[str, str], tuple[int, Any]]] = {
    (_M("log"), "log"): (3, _log),
    (_M("config"), "get"): (3, _with_result(16, _config_get)),
    (_M("config"), "get-all"): (1, _with_result(16, _config_get_all)),
    (_M("kv"), "get"): (3, _with_result(16, _kv_get)),
    (_M("kv"), "set"): (5, _with_result(16, _kv_set)),
    (_M("kv"), "delete"): (3, _with_result(16, _kv_delete)),
    (_M("kv"), "list-keys"): (3, _with_result(16, _kv_list)),
    (_M("events"), "emit"): (5, _with_result(16, _events_emit)),
    (_M("random"), "bytes"): (2, _with_result(16, _random_bytes)),
    (_M("http"), "fetch"): (9, _with_result(24, _http_fetch)),
    (_M("kv"), "increment"): (4, _with_result(24, _kv_increment, align=8)),
    (_M("kv"), "compare-and-set"): (8, _with_result(16, _kv_compare_and_set)),
    (_M("host"), "call"): (5, _with_result(16, _host_call)),
    (_M("host"), "dispatch"): (5, _with_result(16, _host_dispatch)),
}
#: Raw parameter layouts that are not all i32 (the default, _RAW_I32): kv.increment's delta
#: is an s64, read signed.
_LAYOUTS: Final = {(_M("kv"), "increment"): struct.Struct("<I12xI12xq8xI12x")}
_CLOCKS: Final = {(_M("clock"), "now"): _clock("now"), (_M("clock"), "monotonic"): _clock("monotonic")}


_OUTSIDE: Final = b"plugbox: host call outside a plugbox call"
_FAILED: Final = b"plugbox: host function failed"  # the typed error is in the call state
_monotonic = time.monotonic


def refused_in_helper(st: _CallState, what: str) -> AbiViolation:
    """A guest called an import from inside cabi_realloc or cabi_post_* (abi/README.md 3.4)."""
    plugin = st.instance.plugin
    return AbiViolation(
        f"{_where(plugin, st.hook)}: called {what} from inside cabi_realloc or a cabi_post_* "
        "function; the ABI refuses host calls there (abi/README.md, section 3.4). Allocate "
        "without calling the host.",
        plugin=plugin, hook=st.hook,
    )


def late_error(st: _CallState, what: str) -> DeadlineExceeded:
    """A host service returned after the call's deadline had passed."""
    late_ms = (_monotonic() - (st.deadline or 0.0)) * 1000
    return deadline_error(st.instance.plugin, st.hook, st.deadline_ms,
                          f": {what} returned {late_ms:.0f} ms after it")


def _host_body(key: tuple[str, str], services: HostServices,
               what: str | None = None) -> Callable[[int], bytes | None]:
    """The Python side of one import, bound to one plugin's services: ``body(args address)``
    returns None (results written) or the message of a trap whose typed error it stashed in
    the call state. It catches everything it can; the trampoline that calls it catches the
    rest (see ``_speedups.c``). ``what`` names the import in messages as the module imported
    it (``plugbox:plugin/log@1.0.0#log``; default: the table's name)."""
    what = what or f"{key[0]}#{key[1]}"
    clock = _CLOCKS.get(key)
    write = _RAW_I64.pack_into
    nparams, adapter = _ADAPTERS[key] if clock is None else (0, None)
    unpack = _LAYOUTS.get(key, _RAW_I32[nparams]).unpack_from
    width = _RAW * nparams
    calls = services.calls  # the metrics' count by service (``kv``, ``log``, ...)
    service = key[0].rpartition("/")[2].partition("@")[0] or key[0]

    def body(args: int) -> bytes | None:
        st: _CallState | None = None
        try:
            st = _tls.state
            if st is None:
                return _OUTSIDE
            calls[service] += 1
            if st.instance._ctl[_CTL_PHASE]:
                st.error = refused_in_helper(st, what)
                return _FAILED
            if clock is not None:
                write((ctypes.c_uint8 * _RAW).from_address(args), 0, clock(st, services, 0))
            elif adapter is not None:
                adapter(st, services, unpack(_string_at(args, width)))
            if st.deadline is not None and _monotonic() > st.deadline:
                st.error = late_error(st, what)
                return _FAILED
            return None
        except _Trap as trap:
            if st is not None:
                st.error = trap.error
        except BaseException as exc:  # typed errors and host bugs alike trap the guest
            if st is not None:
                st.error = exc
        return _FAILED

    return body


def _ctypes_callback(body: Callable[[int], bytes | None]) -> Any:
    """The pure-ctypes twin of ``_speedups``' core trampoline. Python cannot guarantee what C
    can (a callback entered at the interpreter's recursion limit fails before its first line);
    the nesting bounds (MAX_NESTED_CALLS, refused imports in cabi_realloc) keep guests from
    driving the host there."""

    def callback(env: int, caller: int, args: int, nargs: int) -> int | None:
        try:
            msg = body(args)
            return None if msg is None else _trap_new(msg, len(msg))
        except BaseException:
            return _trap_new(_FAILED, len(_FAILED))  # type: ignore[no-any-return]

    return _callback_type(callback)


# ---------------------------------------------------------------------------------------------
# Template: a compiled module linked against one plugin's services, ready to instantiate.


class Template:
    """A module pre-linked with one plugin's host functions (wasmtime ``InstancePre``).

    Instantiating from it costs one store plus one instantiate: this is what fresh-per-call mode
    and the instance pool build on.
    """

    def __init__(
        self,
        engine: Engine,
        module: wasmtime.Module,
        *,
        plugin: str,
        services: HostServices,
        imports: list[tuple[str, str]],
        memory_cap: int,
        start: bool = True,
    ) -> None:
        self.engine = engine
        self.plugin = plugin
        self.memory_cap = memory_cap
        #: The module has a start function (guest code runs while instantiating).
        self.start = start
        self._module = module  # keeps the wasmtime-py Module (and its pointer) alive
        self._callbacks: list[Any] = []
        self._functypes: list[Any] = []
        self.linker = _linker_new(engine.ptr)
        self.pre = 0
        try:
            for module_name, field in dict.fromkeys(imports):  # each name is defined once
                key = _abispec.canonical_import(module_name, field)
                if key is None:  # the interface check refuses these before compiling
                    raise ModuleInterfaceError(
                        f"plugin {plugin!r}: the module imports {module_name}.{field}, which "
                        "is not a function of the plugbox ABI", plugin=plugin)
                params, results = _abispec.IMPORTS[key]
                ft = wasmtime.FuncType(
                    [wasmtime.ValType.i32() if p == "i32" else wasmtime.ValType.i64() for p in params],
                    [wasmtime.ValType.i32() if r == "i32" else wasmtime.ValType.i64() for r in results],
                )
                body = _host_body(key, services, f"{module_name}#{field}")
                self._functypes.append(ft)
                cb_addr: int | None
                if trampolines is not None:
                    # env is the body itself; self._callbacks keeps it alive
                    self._callbacks.append(body)
                    cb_addr, env = trampolines[0], id(body)
                else:
                    cb = _ctypes_callback(body)
                    self._callbacks.append(cb)
                    cb_addr, env = ctypes.cast(cb, c_void_p).value, None
                # Defined under the name the module imports (a patch-level ABI version such as
                # plugbox:plugin/log@1.0.1 links to this runtime's function).
                mod, name = module_name.encode(), field.encode()
                err = _linker_define_unchecked(
                    self.linker, mod, len(mod), name, len(name),
                    ctypes.cast(ft.ptr(), c_void_p).value, cb_addr, env, None,
                )
                if err:
                    raise ModuleInterfaceError(
                        f"plugin {plugin!r}: cannot link {module_name}.{field}: "
                        f"{trap_summary(_take_error(err))}", plugin=plugin)
            pre = c_void_p()
            mod_ptr = ctypes.cast(module.ptr(), c_void_p).value
            err = _linker_instantiate_pre(self.linker, mod_ptr, ctypes.addressof(pre))
            if err:
                raise ModuleInterfaceError(
                    f"plugin {plugin!r}: cannot link the module: {trap_summary(_take_error(err))}",
                    plugin=plugin)
            self.pre = pre.value or 0
        except BaseException:
            self.close()
            raise

    def instantiate(self, fuel: int, ticks: int) -> Instance:
        """A new, independent instance (new store) with ``fuel`` and an epoch deadline
        ``ticks`` from now for its start-up code."""
        return Instance(self, fuel, ticks)

    def close(self) -> None:
        """Free the linker and InstancePre. Instances made from it must be closed first."""
        if self.pre:
            _instance_pre_delete(self.pre)
            self.pre = 0
        if self.linker:
            _linker_delete(self.linker)
            self.linker = 0


def guest_error(outcome: CallOutcome, plugin: str, hook: str) -> PluginCallError:
    """The typed exception for a guest's ``err`` result."""
    from .._errors import PermissionDenied

    if outcome.kind == "denied" and outcome.denied == "wasi:sockets":
        return PermissionDenied(
            f"plugin {plugin!r}, hook {hook!r}: failed because it tried to open a socket, "
            f"which plugbox never allows: {outcome.message}. Reach the network through the "
            "http service, with the host allow-listed in plugbox.json.",
            plugin=plugin, hook=hook, permission=outcome.denied,
        )
    if outcome.kind == "denied" and outcome.denied in ("functions", "dispatch"):
        what = "host function" if outcome.denied == "functions" else "extension point"
        return PermissionDenied(
            f"plugin {plugin!r}, hook {hook!r}: failed because a {what} was denied: "
            f"{outcome.message}. Grant it by adding the name (or a pattern) to "
            f"permissions.{outcome.denied} in plugbox.json (and allow it in the host policy, "
            f"Policy.{'host_functions' if outcome.denied == 'functions' else 'dispatch_points'}).",
            plugin=plugin, hook=hook, permission=outcome.denied,
        )
    if outcome.kind == "denied" and outcome.denied is not None:
        return PermissionDenied(
            f"plugin {plugin!r}, hook {hook!r}: failed because the {outcome.denied!r} service "
            f"was denied: {outcome.message}. Grant it by adding {outcome.denied!r} to the "
            "plugin's permissions in plugbox.json (and allow it in the host policy).",
            plugin=plugin, hook=hook, permission=outcome.denied,
        )
    return GuestError(
        f"plugin {plugin!r}, hook {hook!r}: returned error {outcome.kind}: {outcome.message}",
        kind=outcome.kind, detail=outcome.message, plugin=plugin, hook=hook,
    )


