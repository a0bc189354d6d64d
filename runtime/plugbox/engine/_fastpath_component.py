"""The fast path for components: the other half of plugbox's one layer over wasmtime's C API.

A component of the plugbox world (what componentize-py produces, or a core plugin wrapped by
``wasm-tools component new``) is run through wasmtime's component C API. wasmtime-py's generic
component wrappers convert ``list<u8>`` one element at a time through ctypes (~2 µs per byte,
measured); here values are built and read by a marshaller that knows exactly the types of
``abi/plugbox.wit``, and ``list<u8>`` crosses in C (``plugbox.engine._speedups``).

WASI is deny-by-default: the store gets a WASI context with no preopened directories, no
environment, no arguments and an empty stdin; stdout and stderr are captured into the plugin's
log with a size cap; socket creation and name lookup are redefined to return ``access-denied``
(wasmtime's defaults are not relied on); clocks and random stay available.

Like ``_fastpath``, this module and that one are the only places that touch raw pointers.
"""

from __future__ import annotations

import binascii
import ctypes
import os
import time
from ctypes import POINTER, addressof, byref, c_void_p
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final

import wasmtime
from wasmtime import _bindings as _wb
from wasmtime.component import Component

from . import _abispec
from .._errors import AbiViolation, GuestTrap, ModuleInterfaceError, PlugboxError, UsageError
from ._fastpath import (
    MSG_DEADLINE,
    MSG_INTERRUPTED,
    CallOutcome,
    Engine,
    NeedStack,
    _CallState,
    _tls,
    install_epoch_callback,
    first_check,
    new_ctl,
    set_clock_deadline,
    cap_message,
    closed_error,
    deadline_error,
    enter_call,
    late_error,
    fuel_error,
    host_function_error,
    instances_error,
    instantiation_error,
    memory_error,
    stack_error,
    stack_room,
    trap_summary,
)

if TYPE_CHECKING:
    from ..services._services import HostServices
    from ._wasmparse import StoreLimits

__all__ = ["ComponentInstance", "ComponentTemplate", "compile_component"]

try:
    # The same switch as _fastpath's (which binds the accelerator: unbound, it refuses work).
    if os.environ.get("PLUGBOX_NO_SPEEDUPS"):
        raise ImportError("disabled by PLUGBOX_NO_SPEEDUPS")
    from . import _speedups  # type: ignore[attr-defined]

    _list_u8_to_bytes: Callable[[int], bytes | None] | None = _speedups.list_u8_to_bytes
    _set_list_u8: Callable[[int, bytes], None] | None = _speedups.set_list_u8
except ImportError:
    _list_u8_to_bytes = None
    _set_list_u8 = None
# The bulk interface's hexadecimal text in C (their own section of _speedups.c); None with
# an older build of the accelerator, or without it: binascii does the same, a little slower.
_bulk_hex_into: Callable[[int, bytes], None] | None = None
_bulk_unhex: Callable[[int], bytes | None] | None = None
if _list_u8_to_bytes is not None:
    _bulk_hex_into = getattr(_speedups, "bulk_hex_into", None)
    _bulk_unhex = getattr(_speedups, "bulk_unhex", None)

_V = _wb.wasmtime_component_val_t
_VSIZE: Final = ctypes.sizeof(_V)
_K_BOOL, _K_U8, _K_U16, _K_U32, _K_S64, _K_U64 = 0, 2, 4, 6, 7, 8
_K_STRING, _K_LIST, _K_RECORD, _K_TUPLE, _K_VARIANT, _K_ENUM, _K_OPTION, _K_RESULT = (
    12, 13, 14, 15, 16, 17, 18, 19
)
_ERROR_CASES: Final = _abispec.ERROR_KINDS  # WIT case names are the kinds themselves
_LEVELS: Final = ("trace", "debug", "info", "warn", "error")

#: wasmtime's messages for canonical-ABI violations it detects while lifting guest values.
_ABI_TRAP_MARKERS: Final = (
    "out of bounds of memory", "pointer out of bounds", "pointer not aligned",
    "not aligned", "discriminant", "invalid utf-8", "realloc return",
)

_OUTPUT_CAP: Final = 64 * 1024  # bytes of stdout and of stderr logged per call
#: How a hook's payload and result cross: list<u8> (on-hook), latin-1 code points
#: (bulk#on-hook-text) or hexadecimal text (bulk#on-hook-hex).
_LIST, _LATIN1, _HEX = 0, 1, 2
_HEX_FIX: Final = ("; the plugin must return its result as two hex digits per byte (the bulk "
                   "interface in abi/README.md); rebuild it with `plugbox build`")


def compile_component(engine: Engine, wasm: bytes) -> Component:
    """Compile a verified component."""
    return Component(engine.wasmtime, wasm)


def deserialize_component(engine: Engine, path: Path) -> Component:
    """Map a compiled component artifact from disk."""
    return Component.deserialize_file(engine.wasmtime, str(path))


# ---------------------------------------------------------------------------------------------
# Value marshalling for the plugbox world's types.


class _BadValue(Exception):
    """A value of the wrong shape crossed the boundary (a wasmtime bug or a mismatched world)."""


def _name(vec: Any) -> str:
    return ctypes.string_at(vec.data, vec.size).decode("utf-8")


# The host-service input caps; imported here, next to their only users in this module.
from ..services._services import (  # noqa: E402
    CONFIG_KEY, EVENT_PAYLOAD, EVENT_TOPIC, HTTP_BODY, HTTP_HEADER_NAME, HTTP_HEADER_VALUE,
    HOST_CALL_PAYLOAD, HOST_DISPATCH_PAYLOAD, HOST_FUNCTION_NAME, HOST_POINT_NAME,
    HTTP_HEADERS, HTTP_METHOD, HTTP_URL, KV_KEY, KV_PREFIX, KV_VALUE, LOG_MESSAGE_MAX,
    InputCap, utf8_prefix,
)


def _get_str(v: Any, svc: HostServices | None = None, cap: InputCap | None = None) -> str:
    """A lifted string; with ``cap``, one over it is refused before it is copied."""
    if v.kind != _K_STRING:
        raise _BadValue(f"expected string, got kind {v.kind}")
    if cap is not None and svc is not None and v.of.string.size > cap.cap:
        raise svc.input_error(cap, v.of.string.size)
    return _name(v.of.string)


def _get_bytes(v: Any, svc: HostServices | None = None, cap: InputCap | None = None,
               limit: int | None = None) -> bytes:
    """A lifted list<u8>; with ``cap`` (or ``limit``, overriding its size), one over it is
    refused before it is converted."""
    if v.kind != _K_LIST:
        raise _BadValue(f"expected list<u8>, got kind {v.kind}")
    if cap is not None and svc is not None:
        if v.of.list.size > (cap.cap if limit is None else limit):
            raise svc.input_error(cap, v.of.list.size, limit)
    if _list_u8_to_bytes is not None:
        out = _list_u8_to_bytes(addressof(v.of.list))
        if out is None:
            raise _BadValue("expected list<u8>, found another element type")
        return out
    items = (_V * v.of.list.size).from_address(ctypes.cast(v.of.list.data, c_void_p).value or 0)
    return bytes(item.of.u8 for item in items)


def _get_pairs(v: Any, svc: HostServices) -> list[tuple[str, str]]:
    """Lifted HTTP request headers, each count and length checked against its cap first."""
    if v.kind != _K_LIST:
        raise _BadValue(f"expected list<tuple<string, string>>, got kind {v.kind}")
    count = v.of.list.size
    if count > HTTP_HEADERS.cap:
        raise svc.input_error(HTTP_HEADERS, count)
    items = (_V * count).from_address(ctypes.cast(v.of.list.data, c_void_p).value or 0)
    out = []
    for item in items:
        if item.kind != _K_TUPLE or item.of.tuple.size != 2:
            raise _BadValue("expected tuple<string, string>")
        pair = (_V * 2).from_address(ctypes.cast(item.of.tuple.data, c_void_p).value or 0)
        out.append((_get_str(pair[0], svc, HTTP_HEADER_NAME),
                    _get_str(pair[1], svc, HTTP_HEADER_VALUE)))
    return out


def _get_log_message(v: Any) -> tuple[str, int]:
    """A lifted log message cut to the log cap before it is copied: (text, bytes left out)."""
    if v.kind != _K_STRING:
        raise _BadValue(f"expected string, got kind {v.kind}")
    size = v.of.string.size
    if size <= LOG_MESSAGE_MAX:
        return _name(v.of.string), 0
    raw = utf8_prefix(ctypes.string_at(v.of.string.data, LOG_MESSAGE_MAX))
    return raw.decode("utf-8"), size - len(raw)


def _record_fields(v: Any) -> dict[str, Any]:
    if v.kind != _K_RECORD:
        raise _BadValue(f"expected record, got kind {v.kind}")
    size = v.of.record.size
    entries = (_wb.wasmtime_component_valrecord_entry * size).from_address(
        ctypes.cast(v.of.record.data, c_void_p).value or 0
    )
    return {_name(e.name): e.val for e in entries}


def _set_vec(vec: Any, data: bytes) -> None:
    """Fill a wasm_byte_vec_t (a string, enum case or field name) with a copy of ``data``."""
    _wb.wasm_byte_vec_new(byref(vec), len(data),
                          ctypes.cast(ctypes.c_char_p(data), POINTER(ctypes.c_uint8)))


def _set_str(v: Any, text: str) -> None:
    v.kind = _K_STRING
    _set_vec(v.of.string, text.encode("utf-8"))


def _set_hex(v: Any, data: bytes) -> None:
    """Make ``v`` the string of ``data``'s lowercase hexadecimal text (bulk#on-hook-hex)."""
    v.kind = _K_STRING
    if _bulk_hex_into is None:
        _set_vec(v.of.string, binascii.hexlify(data))
        return
    _wb.wasm_byte_vec_new_uninitialized(byref(v.of.string), 2 * len(data))
    if data:
        _bulk_hex_into(ctypes.cast(v.of.string.data, c_void_p).value or 0, data)


def _set_bytes(v: Any, data: bytes) -> None:
    if _set_list_u8 is not None:
        _set_list_u8(addressof(v), data)
        return
    v.kind = _K_LIST
    _wb.wasmtime_component_vallist_new_uninit(byref(v.of.list), len(data))
    items = (_V * len(data)).from_address(ctypes.cast(v.of.list.data, c_void_p).value or 0)
    for item, byte in zip(items, data):
        ctypes.memset(addressof(item), 0, _VSIZE)
        item.kind = _K_U8
        item.of.u8 = byte


def _boxed(fill: Callable[[Any], None]) -> Any:
    """A heap value (wasmtime_component_val_new moves ``tmp`` into it) for option/result/variant
    payloads, whose ownership passes to wasmtime with the outer value."""
    tmp = _V()
    fill(tmp)
    return _wb.wasmtime_component_val_new(byref(tmp))


def _set_option(v: Any, fill: Callable[[Any], None] | None) -> None:
    v.kind = _K_OPTION
    v.of.option = _boxed(fill) if fill is not None else None


def _set_result(v: Any, ok: bool, fill: Callable[[Any], None] | None) -> None:
    v.kind = _K_RESULT
    v.of.result.is_ok = ok
    v.of.result.val = _boxed(fill) if fill is not None else None


def _set_error(v: Any, kind: str, message: str) -> None:
    def variant(x: Any) -> None:
        x.kind = _K_VARIANT
        _set_vec(x.of.variant.discriminant, kind.encode())
        x.of.variant.val = _boxed(lambda s: _set_str(s, message))

    _set_result(v, False, variant)


def _set_list(v: Any, items: list[Any], fill: Callable[[Any, Any], None]) -> None:
    v.kind = _K_LIST
    _wb.wasmtime_component_vallist_new_uninit(byref(v.of.list), len(items))
    if items:
        slots = (_V * len(items)).from_address(ctypes.cast(v.of.list.data, c_void_p).value or 0)
        for slot, item in zip(slots, items):
            ctypes.memset(addressof(slot), 0, _VSIZE)
            fill(slot, item)


def _set_pair(v: Any, pair: tuple[str, str]) -> None:
    v.kind = _K_TUPLE
    _wb.wasmtime_component_valtuple_new_uninit(byref(v.of.tuple), 2)
    slots = (_V * 2).from_address(ctypes.cast(v.of.tuple.data, c_void_p).value or 0)
    for slot, text in zip(slots, pair):
        ctypes.memset(addressof(slot), 0, _VSIZE)
        _set_str(slot, text)


def _set_record(v: Any, fields: list[tuple[str, Callable[[Any], None]]]) -> None:
    v.kind = _K_RECORD
    _wb.wasmtime_component_valrecord_new_uninit(byref(v.of.record), len(fields))
    entries = (_wb.wasmtime_component_valrecord_entry * len(fields)).from_address(
        ctypes.cast(v.of.record.data, c_void_p).value or 0
    )
    for entry, (name, fill) in zip(entries, fields):
        ctypes.memset(addressof(entry), 0, ctypes.sizeof(entry))
        _set_vec(entry.name, name.encode())
        fill(entry.val)


# ---------------------------------------------------------------------------------------------
# Host functions


class _CompCallState(_CallState):
    """A component call's state: the core one (both live in ``_fastpath._tls``, so the chain
    of nested calls on a thread spans both forms), holding a ComponentInstance."""

    __slots__ = ()
    if TYPE_CHECKING:
        instance: ComponentInstance  # type: ignore[assignment]

# service function -> (WIT function name, adapter(state, services, args) filling results[0])
_Adapter = Callable[[_CompCallState, "HostServices", Any, Any], None]


def _result_of(st: _CompCallState, out: Any, run: Callable[[], Callable[[Any], None] | None]) -> None:
    """Run a service call and store result<T, error> in ``out``."""
    from ..services._services import HostCallError

    try:
        fill = run()
    except HostCallError as exc:
        if exc.kind == "denied" and st.denied is None:
            st.denied = exc.permission or "unknown"
        _set_error(out, exc.kind, exc.message)
        return
    _set_result(out, True, fill)


def _a_log(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    from ..services._services import HostCallError

    if a[0].kind != _K_ENUM:
        raise _BadValue("log level must be an enum")
    level = _LEVELS.index(_name(a[0].of.enumeration))
    message, omitted = _get_log_message(a[1])
    try:
        svc.log(level, message, omitted=omitted, hook=st.hook)
    except HostCallError as exc:
        if exc.kind == "denied" and st.denied is None:
            st.denied = exc.permission or "log"


def _opt_str(value: str | None) -> Callable[[Any], None]:
    return lambda v: _set_option(v, None if value is None else (lambda s: _set_str(s, value)))


def _opt_bytes(value: bytes | None) -> Callable[[Any], None]:
    return lambda v: _set_option(v, None if value is None else (lambda s: _set_bytes(s, value)))


def _a_config_get(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    _result_of(st, r, lambda: _opt_str(svc.config_get(_get_str(a[0], svc, CONFIG_KEY))))


def _a_config_get_all(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> Callable[[Any], None]:
        text = svc.config_get_all()
        return lambda v: _set_str(v, text)

    _result_of(st, r, run)


def _a_kv_get(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    _result_of(st, r, lambda: _opt_bytes(svc.kv_get(_get_str(a[0], svc, KV_KEY))))


def _a_kv_set(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> None:
        svc.kv_set(_get_str(a[0], svc, KV_KEY), _get_bytes(a[1], svc, KV_VALUE))

    _result_of(st, r, run)


def _a_kv_delete(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> Callable[[Any], None]:
        existed = svc.kv_delete(_get_str(a[0], svc, KV_KEY))

        def fill(v: Any) -> None:
            v.kind = _K_BOOL
            v.of.boolean = existed

        return fill

    _result_of(st, r, run)


def _a_kv_list(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> Callable[[Any], None]:
        keys = svc.kv_list_keys(_get_str(a[0], svc, KV_PREFIX))
        return lambda v: _set_list(v, keys, _set_str)

    _result_of(st, r, run)


def _a_kv_increment(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> Callable[[Any], None]:
        if a[1].kind != _K_S64:
            raise _BadValue("increment delta must be s64")
        value = svc.kv_increment(_get_str(a[0], svc, KV_KEY), a[1].of.s64)

        def fill(v: Any) -> None:
            v.kind = _K_S64
            v.of.s64 = value

        return fill

    _result_of(st, r, run)


def _a_kv_compare_and_set(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> Callable[[Any], None]:
        key = _get_str(a[0], svc, KV_KEY)
        if a[1].kind != _K_OPTION:
            raise _BadValue("compare-and-set expected must be option<list<u8>>")
        some = a[1].of.option
        expected = None if not some else _get_bytes(some.contents, svc, KV_VALUE)
        swapped = svc.kv_compare_and_set(key, expected, _get_bytes(a[2], svc, KV_VALUE))

        def fill(v: Any) -> None:
            v.kind = _K_BOOL
            v.of.boolean = swapped

        return fill

    _result_of(st, r, run)


def _a_host(dispatch: bool) -> _Adapter:
    name_cap, payload_cap = ((HOST_POINT_NAME, HOST_DISPATCH_PAYLOAD) if dispatch
                             else (HOST_FUNCTION_NAME, HOST_CALL_PAYLOAD))

    def adapter(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
        def run() -> Callable[[Any], None]:
            name = _get_str(a[0], svc, name_cap)
            payload = _get_bytes(a[1], svc, payload_cap)
            data = (svc.host_dispatch(name, payload) if dispatch
                    else svc.host_call(name, payload))
            return lambda v: _set_bytes(v, data)

        _result_of(st, r, run)

    return adapter


def _a_events_emit(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> None:
        topic = _get_str(a[0], svc, EVENT_TOPIC)
        svc.events_emit(topic, _get_bytes(a[1], svc, EVENT_PAYLOAD))

    _result_of(st, r, run)


def _a_random(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> Callable[[Any], None]:
        if a[0].kind != _K_U32:
            raise _BadValue("random length must be u32")
        data = svc.random_bytes(a[0].of.u32)
        return lambda v: _set_bytes(v, data)

    _result_of(st, r, run)


def _a_clock(which: str) -> _Adapter:
    def adapter(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
        from ..services._services import HostCallError

        try:
            value = svc.clock_now() if which == "now" else svc.clock_monotonic()
        except HostCallError as exc:
            if exc.kind == "denied" and st.denied is None:
                st.denied = exc.permission or "clock"
            value = 0  # clock has no error case in the ABI: a denied clock reads as zero
        r.kind = _K_U64
        r.of.u64 = value

    return adapter


def _a_http_fetch(st: _CompCallState, svc: HostServices, a: Any, r: Any) -> None:
    def run() -> Callable[[Any], None]:
        req = _record_fields(a[0])
        timeout = None if st.deadline is None else max(0.0, st.deadline - time.monotonic())
        method = _get_str(req["method"], svc, HTTP_METHOD)
        url = _get_str(req["url"], svc, HTTP_URL)
        req_headers = _get_pairs(req["headers"], svc)
        body = _get_bytes(req["body"], svc, HTTP_BODY, svc.http_body_max)
        status, headers, body = svc.http_fetch(method, url, req_headers, body, timeout=timeout)

        def set_status(v: Any) -> None:
            v.kind = _K_U16
            v.of.u16 = status & 0xFFFF

        return lambda v: _set_record(v, [
            ("status", set_status),
            ("headers", lambda x: _set_list(x, headers, _set_pair)),
            ("body", lambda x: _set_bytes(x, body)),
        ])

    _result_of(st, r, run)


_M = _abispec.import_module
_HOST_FUNCS: Final[dict[str, dict[str, _Adapter]]] = {
    _M("log"): {"log": _a_log},
    _M("config"): {"get": _a_config_get, "get-all": _a_config_get_all},
    _M("kv"): {"get": _a_kv_get, "set": _a_kv_set, "delete": _a_kv_delete,
               "list-keys": _a_kv_list, "increment": _a_kv_increment,
               "compare-and-set": _a_kv_compare_and_set},
    _M("events"): {"emit": _a_events_emit},
    _M("clock"): {"now": _a_clock("now"), "monotonic": _a_clock("monotonic")},
    _M("random"): {"bytes": _a_random},
    _M("http"): {"fetch": _a_http_fetch},
    _M("host"): {"call": _a_host(False), "dispatch": _a_host(True)},
}


def _offered_funcs(abi: str) -> dict[str, dict[str, _Adapter]]:
    """:data:`_HOST_FUNCS` as a runtime offering ABI ``abi`` (``x.y.z``) defines them: each
    interface under that version's name, with the functions that version has. wasmtime
    resolves an import of an older minor (``kv@1.0.0``) to it by semver, and a component
    importing fewer functions than an interface has links to it all the same."""
    offered = _abispec.offered(abi)
    out: dict[str, dict[str, _Adapter]] = {}
    for module, funcs in _HOST_FUNCS.items():
        kept = {name: f for name, f in funcs.items() if (module, name) in offered}
        if kept:
            service = module.split("/", 1)[1].split("@", 1)[0]
            out[_abispec.import_module(service, abi)] = kept
    return out

_callback_type = _wb.wasmtime_component_func_callback_t


_Body = Callable[[int, int, int, int], "bytes | None"]
_FAILED: Final = b"plugbox host function failed"  # the typed error is in the call state


def _host_body(adapter: _Adapter, services: HostServices, what: str) -> _Body:
    """The Python side of one host function: ``body(args, nargs, results, nresults)``
    (addresses and counts) returns None, or the message of an error whose typed exception it
    stashed in the call state. It catches what it can; the trampoline the rest."""
    calls = services.calls  # the metrics' count by service (``kv``, ``log``, ...)
    service = what.partition("#")[0].rpartition("/")[2].partition("@")[0] or what

    def body(args: int, nargs: int, results: int, nresults: int) -> bytes | None:
        st: _CompCallState | None = None
        try:
            st = _tls.state
            if st is None:
                return b"plugbox: host function called outside a plugbox call"
            calls[service] += 1
            argv = (_V * nargs).from_address(args)
            out = _V.from_address(results) if nresults else None
            adapter(st, services, argv, out)
            if st.deadline is not None and time.monotonic() > st.deadline:
                st.error = late_error(st, what)
                return _FAILED
            return None
        except BaseException as exc:  # never let an exception cross the C boundary
            if st is not None:
                if isinstance(exc, (_BadValue, UnicodeDecodeError)):
                    st.error = AbiViolation(
                        f"plugin {st.instance.plugin!r}, hook {st.hook!r}: host call received "
                        f"a malformed value: {exc}",
                        plugin=st.instance.plugin, hook=st.hook,
                    )
                else:
                    st.error = exc
        return _FAILED

    return body


def _linked(body: _Body, keep: list[Any]) -> tuple[Any, Any]:
    """(callback, data) for wasmtime_component_linker_instance_add_func: the C trampoline with
    the body as its data when the accelerator is in use, else a ctypes callback. ``keep``
    holds what must live as long as the linker."""
    from . import _fastpath

    keep.append(body)
    if _fastpath.trampolines is not None:
        return _callback_type(_fastpath.trampolines[1]), id(body)

    def callback(env: Any, ctx: Any, ty: Any, args: Any, nargs: int, results: Any,
                 nresults: int) -> int:
        try:
            msg = body(ctypes.cast(args, c_void_p).value or 0, nargs,
                       ctypes.cast(results, c_void_p).value or 0, nresults)
            if msg is None:
                return 0
            return ctypes.cast(_wb.wasmtime_error_new(msg), c_void_p).value or 0
        except BaseException:
            return ctypes.cast(_wb.wasmtime_error_new(_FAILED), c_void_p).value or 0

    cb = _callback_type(callback)
    keep.append(cb)
    return cb, None


# Socket creation and name lookup are redefined to deny, whatever wasmtime's WASI would do.
_WASI_VERSION: Final = "0.2.12"
_SOCKET_DENIALS: Final = (
    ("wasi:sockets/tcp-create-socket", "create-tcp-socket"),
    ("wasi:sockets/udp-create-socket", "create-udp-socket"),
    ("wasi:sockets/ip-name-lookup", "resolve-addresses"),
)


def _deny_socket(args: int, nargs: int, results: int, nresults: int) -> bytes | None:
    # result<_, error-code>: err(access-denied). error-code is an enum in wasi:sockets/network.
    def enum(v: Any) -> None:
        v.kind = _K_ENUM
        _set_vec(v.of.enumeration, b"access-denied")

    try:
        _set_result(_V.from_address(results), False, enum)
        st: _CompCallState | None = getattr(_tls, "state", None)
        if st is not None:
            st.instance.template.sockets_denied += 1
            if st.denied is None:
                st.denied = "wasi:sockets"
        return None
    except BaseException:
        return b"socket denied"


def _check(err: Any, what: str, plugin: str) -> None:
    if err:
        from ._fastpath import _take_error

        raise UsageError(f"plugin {plugin!r}: {what}: {_take_error(ctypes.cast(err, c_void_p).value or 0)}")


#: The ABI's error variant as _type_text writes it, which it then abbreviates to "error".
_ERROR_TYPE: Final = "variant<" + ", ".join(f"{case}(string)" for case in _ERROR_CASES) + ">"

#: The WIT types of the world's exports (abi/plugbox.wit), as _type_text writes them:
#: export path -> (parameter types, result type). Parameter names are not compared.
#: The bulk interface's export name at every ABI version, newest first: a 1.0 component exports
#: plugbox:plugin/bulk@1.0.0, whose type is checked like the 1.1 one.
_BULK_EXPORTS: Final = tuple(_abispec.import_module("bulk", v)
                             for v in reversed(_abispec.ABI_VERSIONS))
_EXPORT_TYPES: Final[dict[tuple[str, ...], tuple[tuple[str, ...], str]]] = {
    ("on-init",): (("string",), "result<_, error>"),
    ("on-hook",): (("string", "list<u8>"), "result<list<u8>, error>"),
    **{(bulk, name): (("string", "string"), "result<string, error>")
       for bulk in _BULK_EXPORTS for name in ("on-hook-text", "on-hook-hex")},
}


def _type_text(ty: Any) -> str:
    """A component value type as WIT-like text, enough to compare it with the world's."""
    from wasmtime.component import _types as t

    if isinstance(ty, t.ListType):
        return f"list<{_type_text(ty.element)}>"
    if isinstance(ty, t.ResultType):
        ok, err = ty.ok, ty.err
        return (f"result<{'_' if ok is None else _type_text(ok)}, "
                f"{'_' if err is None else _type_text(err)}>")
    if isinstance(ty, t.VariantType):
        text = "variant<" + ", ".join(
            name if payload is None else f"{name}({_type_text(payload)})"
            for name, payload in ty.cases) + ">"
        return "error" if text == _ERROR_TYPE else text
    if isinstance(ty, t.OptionType):
        return f"option<{_type_text(ty.payload)}>"
    if isinstance(ty, t.EnumType):
        return "enum<" + ", ".join(ty.names) + ">"
    if isinstance(ty, t.RecordType):
        return "record<" + ", ".join(f"{n}: {_type_text(v)}" for n, v in ty.fields) + ">"
    if isinstance(ty, t.TupleType):
        return "tuple<" + ", ".join(_type_text(v) for v in ty.elements) + ">"
    return type(ty).__name__.removesuffix("Type").lower()  # String -> string, U8 -> u8, ...


def _check_export_types(engine: Engine, component: Component, plugin: str) -> None:
    """Refuse a component whose world exports have other types than abi/plugbox.wit gives them
    (the names alone say nothing: ``on-hook`` returning ``result<_, error>`` would read as an
    empty payload), with ModuleInterfaceError."""
    from wasmtime.component import _types as t

    exports = component.type.exports(engine.wasmtime)
    for path, (params, result) in _EXPORT_TYPES.items():
        item: Any = exports.get(path[0])
        for name in path[1:]:
            if item is None:
                break
            inner = item.ty
            item = (inner.exports(engine.wasmtime).get(name)
                    if isinstance(inner, t.ComponentInstanceType) else None)
        if item is None:
            continue  # absence of an optional export; on-hook's was checked before compiling
        ty = item.ty
        where = "#".join(path)
        wanted = f"func({', '.join(params)}) -> {result}"
        if not isinstance(ty, t.FuncType):
            raise ModuleInterfaceError(
                f"plugin {plugin!r}: the component exports {where!r} as a "
                f"{type(ty).__name__}, but abi/plugbox.wit defines it as {wanted}; build it "
                "against abi/plugbox.wit", plugin=plugin)
        got_params = tuple(_type_text(p) for _, p in ty.params)
        got_result = "_" if ty.result is None else _type_text(ty.result)
        if (got_params, got_result) != (params, result):
            raise ModuleInterfaceError(
                f"plugin {plugin!r}: the component exports {where!r} with type "
                f"func({', '.join(got_params)}) -> {got_result}, but abi/plugbox.wit defines "
                f"it as {wanted}; build it against abi/plugbox.wit (world plugin)",
                plugin=plugin)


class ComponentTemplate:
    """A component linked with one plugin's host functions and deny-by-default WASI.

    ``abi`` is the ABI version the runtime offers: the plugbox interfaces are defined as that
    version has them (a 1.0 runtime defines no ``host`` interface and no atomic kv)."""

    def __init__(
        self,
        engine: Engine,
        component: Component,
        *,
        plugin: str,
        services: HostServices,
        memory_cap: int,
        store_limits: StoreLimits,
        abi: str = _abispec.ABI_VERSION,
        bundle: str | None = None,
    ) -> None:
        self.engine = engine
        #: A Python bundle's sources (JSON text) that each instance gets through the shared
        #: interpreter's ``load-bundle`` before ``on-init`` (see _bundle_index).
        self.bundle = bundle
        self._load_index: Any = None
        self.plugin = plugin
        self.memory_cap = memory_cap
        #: What each instance's store may create: exactly what the static count of the
        #: component found, with memories sharing memory_cap (see _wasmparse.store_limits).
        self.store_limits = store_limits
        self.services = services
        self.sockets_denied = 0
        self._component = component
        self._callbacks: list[Any] = []
        linker = _wb.wasmtime_component_linker_new(engine.wasmtime.ptr())
        self._linker: Any = linker
        try:
            _check(_wb.wasmtime_component_linker_add_wasip2(linker), "cannot add WASI", plugin)
            _wb.wasmtime_component_linker_allow_shadowing(linker, True)
            root = _wb.wasmtime_component_linker_root(linker)
            try:
                for iface, funcs in _offered_funcs(abi).items():
                    self._add_instance(root, iface, {
                        name: _host_body(adapter, services, f"{iface}#{name}")
                        for name, adapter in funcs.items()
                    })
                for iface, func in _SOCKET_DENIALS:
                    self._add_instance(root, f"{iface}@{_WASI_VERSION}", {func: _deny_socket})
            finally:
                _wb.wasmtime_component_linker_instance_delete(root)
            self._hook_index = _wb.wasmtime_component_get_export_index(
                component.ptr(), None, b"on-hook", 7)
            self._init_index = _wb.wasmtime_component_get_export_index(
                component.ptr(), None, b"on-init", 7)
            # The optional bulk interface (abi/plugbox.wit, world plugin-bulk). wasmtime finds
            # a 1.0 component's bulk@1.0.0 under the 1.1.0 name too (semver).
            bulk = _abispec.import_module("bulk").encode()
            self._bulk_index = _wb.wasmtime_component_get_export_index(
                component.ptr(), None, bulk, len(bulk))
            self._text_index = (
                _wb.wasmtime_component_get_export_index(
                    component.ptr(), self._bulk_index, b"on-hook-text", 12)
                if self._bulk_index else None
            )
            # Its hexadecimal entry point, which components built before it was added lack.
            self._hex_index = (
                _wb.wasmtime_component_get_export_index(
                    component.ptr(), self._bulk_index, b"on-hook-hex", 11)
                if self._bulk_index else None
            )
            if bundle is not None:
                self._load_index = _bundle_index(component, plugin)
            if not self._hook_index:
                raise AbiViolation(f"plugin {plugin!r}: component exports no 'on-hook'",
                                   plugin=plugin)
            _check_export_types(engine, component, plugin)
        except BaseException:
            self.close()
            raise

    def _add_instance(self, root: Any, name: str, funcs: dict[str, _Body]) -> None:
        inst = POINTER(_wb.wasmtime_component_linker_instance_t)()
        raw = name.encode()
        _check(_wb.wasmtime_component_linker_instance_add_instance(root, raw, len(raw), byref(inst)),
               f"cannot define {name}", self.plugin)
        try:
            for fname, body in funcs.items():
                cb, data = _linked(body, self._callbacks)
                fraw = fname.encode()
                _check(_wb.wasmtime_component_linker_instance_add_func(
                    inst, fraw, len(fraw), cb, data, _NO_FINALIZER),
                    f"cannot define {name}#{fname}", self.plugin)
        finally:
            _wb.wasmtime_component_linker_instance_delete(inst)

    def instantiate(self, fuel: int, ticks: int) -> ComponentInstance:
        """A new instance in its own store."""
        return ComponentInstance(self, fuel, ticks)

    def close(self) -> None:
        """Free the linker and export indices."""
        for attr in ("_hook_index", "_init_index", "_text_index", "_hex_index", "_bulk_index",
                     "_load_index"):
            index = getattr(self, attr, None)
            if index:
                _wb.wasmtime_component_export_index_delete(index)
            setattr(self, attr, None)
        if getattr(self, "_linker", None):
            _wb.wasmtime_component_linker_delete(self._linker)
            self._linker = None


def _bundle_index(component: Component, plugin: str) -> Any:
    """The export index of the shared Python interpreter's ``load-bundle``."""
    index = _wb.wasmtime_component_get_export_index(component.ptr(), None, b"load-bundle", 11)
    if not index:
        raise AbiViolation(f"plugin {plugin!r}: the Python runtime component exports no "
                           "'load-bundle'; remove the plugbox user cache and load again",
                           plugin=plugin)
    return index


def _load_bundle(inst: ComponentInstance, fuel: int, ticks: int, deadline_ms: int
                 ) -> CallOutcome:
    """Give a new instance of the shared interpreter its plugin's bundle (``load-bundle``)."""
    template = inst.template
    func = _wb.wasmtime_component_func_t()
    if not _wb.wasmtime_component_instance_get_func(
            byref(inst._instance), inst._ctx, template._load_index, byref(func)):
        raise AbiViolation(f"plugin {inst.plugin!r}: no load-bundle function",
                           plugin=inst.plugin)
    state = _CompCallState(inst, "load-bundle", None, fuel, deadline_ms)
    params = inst._params
    ctypes.memset(addressof(params), 0, _VSIZE * 2)
    _set_str(params[0], template.bundle or "")
    return inst._call(func, params, 1, "load-bundle", state, fuel, ticks, want_bytes=False)


# No finalizer: the callbacks live as long as the template that holds them.
_NO_FINALIZER: Any = ctypes.cast(None, ctypes.CFUNCTYPE(None, c_void_p))  # type: ignore[arg-type]


class _Output:
    """A guest's stdout or stderr, logged line by line through the plugin's log service (info
    for stdout, warn for stderr), at most ``_OUTPUT_CAP`` bytes per call; the rest is dropped
    and counted in one notice. Without the log permission nothing is shown."""

    __slots__ = ("services", "label", "level", "buffer", "taken", "dropped")

    def __init__(self, services: HostServices, label: str) -> None:
        self.services = services
        self.label = label
        self.level = 2 if label == "stdout" else 3
        self.buffer = bytearray()
        self.taken = 0
        self.dropped = 0

    def write(self, data: bytes) -> None:
        room = max(0, _OUTPUT_CAP - self.taken)
        kept = data[:room]
        self.taken += len(kept)
        self.dropped += len(data) - len(kept)
        self.buffer += kept
        while b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer = bytearray(rest)
            self._log(line.decode("utf-8", "replace"))

    def end_call(self) -> None:
        if self.buffer:
            line, self.buffer = bytes(self.buffer), bytearray()
            self._log(line.decode("utf-8", "replace"))
        if self.dropped:
            self._log(f"... {self.dropped} more bytes dropped (cap: {_OUTPUT_CAP} per call)")
        self.taken = self.dropped = 0

    def _log(self, text: str) -> None:
        from ..services._services import HostCallError

        try:
            self.services.log(self.level, f"[{self.label}] {text}")
        except HostCallError:  # log not granted: the output is dropped, never shown unchecked
            pass


class ComponentInstance:
    """One instantiated component in its own store."""

    def __init__(self, template: ComponentTemplate, fuel: int, ticks: int) -> None:
        self.template = template
        self.plugin = template.plugin
        self.memory_cap = template.memory_cap
        self.calls = 0
        self.closed = True
        self._stdout = _Output(template.services, "stdout")
        self._stderr = _Output(template.services, "stderr")
        self._store = wasmtime.Store(template.engine.wasmtime)
        store_ptr = self._store.ptr()
        self._ctl = new_ctl(template.engine)  # epoch-callback data (see _fastpath): outlives it
        self._armed = False  # epoch callback installed (at the first call, after start-up)
        # memory bytes (each memory), table elements (each table), instances, tables, memories
        _wb.wasmtime_store_limiter(store_ptr, *template.store_limits)
        self._ctx = self._store._context()
        wasi = wasmtime.WasiConfig()  # no preopens, env, args; empty stdin
        wasi.stdout_custom = self._stdout.write
        wasi.stderr_custom = self._stderr.write
        self._store.set_wasi(wasi)
        self._store.set_fuel(fuel)
        self._store.set_epoch_deadline(ticks)
        self._instance = _wb.wasmtime_component_instance_t()
        state = _CompCallState(self, "instantiate", None, fuel, 0)
        outer = enter_call(state)
        try:
            err = _wb.wasmtime_component_linker_instantiate(
                template._linker, self._ctx, template._component.ptr(), byref(self._instance))
        finally:
            _tls.state = outer
        if err:
            from ._fastpath import _take_error

            msg = _take_error(ctypes.cast(err, c_void_p).value or 0)
            self.close()
            if state.error is not None:
                raise host_function_error(state.error, self.plugin, "instantiate")
            raise instantiation_error(
                self.plugin, None, msg, fuel=fuel, memory_cap=template.memory_cap,
                deadline_ms=template.engine.ticks_ms(ticks),
            )
        self.closed = False
        self._hook = _wb.wasmtime_component_func_t()
        if not _wb.wasmtime_component_instance_get_func(
            byref(self._instance), self._ctx, template._hook_index, byref(self._hook)
        ):
            raise AbiViolation(f"plugin {self.plugin!r}: component has no on-hook function",
                               plugin=self.plugin)
        self._init: Any = None
        if template._init_index:
            init = _wb.wasmtime_component_func_t()
            if _wb.wasmtime_component_instance_get_func(
                byref(self._instance), self._ctx, template._init_index, byref(init)
            ):
                self._init = init
        self._text: Any = None
        self._hex: Any = None
        for attr, index in (("_hex", template._hex_index), ("_text", template._text_index)):
            if index:
                func = _wb.wasmtime_component_func_t()
                if _wb.wasmtime_component_instance_get_func(
                    byref(self._instance), self._ctx, index, byref(func)
                ):
                    setattr(self, attr, func)
        self._params = (_V * 2)()
        self._result = _V()
        #: Fuel all hook calls on this instance used (on-init not counted).
        self.fuel_consumed = 0
        self._fuel_last = 0

    # -- output capture --------------------------------------------------------------------

    def _flush_output(self) -> None:
        """End of a call: log partial lines and what the per-call cap dropped."""
        self._stdout.end_call()
        self._stderr.end_call()

    # -- calls -----------------------------------------------------------------------------

    def call_hook(
        self, hook: str, hook_bytes: bytes, payload: bytes, fuel: int, ticks: int,
        deadline_at: float | None, deadline_ms: int,
    ) -> CallOutcome:
        """Run ``on-hook(hook, payload)``."""
        if 0 <= stack_room() < self.template.engine.stack_need:
            raise NeedStack
        state = _CompCallState(self, hook, deadline_at, fuel, deadline_ms)
        params = self._params
        ctypes.memset(addressof(params), 0, _VSIZE * 2)
        _set_str(params[0], hook)
        try:
            if self._hex is not None:
                # One buffer across the boundary instead of one value per byte (see the bulk
                # interface in abi/plugbox.wit): the bytes travel as hexadecimal ASCII, whose
                # cost does not depend on their values.
                _set_hex(params[1], payload)
                outcome = self._call(self._hex, params, 2, hook, state, fuel, ticks,
                                     want_bytes=True, text=_HEX)
            elif self._text is not None:
                # A component built before on-hook-hex: the bytes travel as the code points of
                # a string (latin-1), each one >= 0x80 as two bytes of UTF-8.
                _set_str(params[1], bytes(payload).decode("latin-1"))
                outcome = self._call(self._text, params, 2, hook, state, fuel, ticks,
                                     want_bytes=True, text=_LATIN1)
            else:
                _set_bytes(params[1], payload)
                outcome = self._call(self._hook, params, 2, hook, state, fuel, ticks,
                                     want_bytes=True)
        finally:
            self._account_fuel(fuel)
        if not outcome.ok and outcome.kind == "limit-reached":
            self._raise_guest_reported_limit(outcome.message, hook)
        return outcome

    def _account_fuel(self, fuel: int) -> None:
        """Add what the hook call just made used to :attr:`fuel_consumed` (components are
        slow enough that one more wasmtime call does not show)."""
        try:
            left = self._store.get_fuel()
        except (wasmtime.WasmtimeError, AttributeError):
            return
        self._fuel_last = max(0, fuel - left)
        self.fuel_consumed += self._fuel_last

    def _raise_guest_reported_limit(self, message: str, hook: str) -> None:
        """A component's memories and stack are hidden from the host, so a guest language
        runtime that hit them reports it (the Python SDK sends ``limit-reached`` with the
        exception's name first); raise the same typed errors the core fast path raises."""
        if message.startswith("MemoryError"):
            raise memory_error(self.plugin, hook, self.memory_cap, message)
        if message.startswith("RecursionError"):
            raise stack_error(self.plugin, hook, message)

    def usage(self, fuel: int) -> tuple[int | None, int | None]:
        """(fuel used of the ``fuel`` the last call was given, None): a component's memories
        are hidden from the host. (None, None) once closed."""
        if self.closed:
            return None, None
        return self._fuel_last, None

    @property
    def memory_peak(self) -> int | None:
        """None: a component's memories are hidden from the host."""
        return None

    def call_init(self, config_json: bytes, fuel: int, ticks: int, deadline_ms: int
                  ) -> CallOutcome:
        """Run ``load-bundle`` (a Python bundle's instance), then ``on-init(config)`` when
        exported."""
        if self.template.bundle is not None:
            loaded = _load_bundle(self, fuel, ticks, deadline_ms)
            if not loaded.ok:
                return loaded
        if self._init is None:
            return CallOutcome(True, b"", "", "", None)
        state = _CompCallState(self, "on-init", None, fuel, deadline_ms)
        params = self._params
        ctypes.memset(addressof(params), 0, _VSIZE * 2)
        _set_str(params[0], config_json.decode("utf-8"))
        return self._call(self._init, params, 1, "on-init", state, fuel, ticks, want_bytes=False)

    def _call(self, func: Any, params: Any, nparams: int, hook: str, state: _CompCallState,
              fuel: int, ticks: int, *, want_bytes: bool, text: int = 0) -> CallOutcome:
        self._store.set_fuel(fuel)
        if not self._armed:
            self._armed = True
            install_epoch_callback(ctypes.cast(self._store.ptr(), c_void_p).value or 0,
                                   self._ctl)
        set_clock_deadline(self._ctl, state.deadline, state.deadline_ms)
        self._store.set_epoch_deadline(first_check(self._ctl, ticks))
        result = self._result
        ctypes.memset(addressof(result), 0, _VSIZE)
        outer = enter_call(state)
        try:
            err = _wb._wasmtime_component_func_call(
                byref(func), self._ctx, params, nparams, byref(result), 1)
            for i in range(nparams):
                _wb.wasmtime_component_val_delete(byref(params[i]))
            if err:
                raise self._failure(ctypes.cast(err, c_void_p).value or 0, hook, state)
            try:
                outcome = self._lift(result, hook, state, want_bytes, text)
            finally:
                _wb.wasmtime_component_val_delete(byref(result))
            err = _wb._wasmtime_component_func_post_return(byref(func), self._ctx)
            if err:
                raise self._failure(ctypes.cast(err, c_void_p).value or 0, hook, state)
            return outcome
        finally:
            _tls.state = outer
            self.calls += 1
            self._flush_output()

    def _lift(self, result: Any, hook: str, state: _CompCallState, want_bytes: bool,
              text: int = 0) -> CallOutcome:
        try:
            if result.kind != _K_RESULT:
                raise _BadValue(f"expected result, got kind {result.kind}")
            inner = result.of.result.val
            if result.of.result.is_ok:
                if not (want_bytes and inner):
                    value = b""
                elif text == _HEX:
                    value = self._unhex(inner.contents)
                elif text:
                    value = _get_str(inner.contents).encode("latin-1")
                else:
                    value = _get_bytes(inner.contents)
                return CallOutcome(True, value, "", "", state.denied)
            err = inner.contents
            if err.kind != _K_VARIANT:
                raise _BadValue("expected the error variant")
            kind = _name(err.of.variant.discriminant)
            if kind not in _ERROR_CASES:
                raise _BadValue(f"unknown error case {kind!r}")
            message = _get_str(err.of.variant.val.contents) if err.of.variant.val else ""
            return CallOutcome(False, b"", kind, cap_message(message), state.denied)
        except (_BadValue, UnicodeError, ValueError) as exc:
            raise AbiViolation(
                f"plugin {self.plugin!r}, hook {hook!r}: malformed result: {exc}",
                plugin=self.plugin, hook=hook,
            ) from None

    def _unhex(self, v: Any) -> bytes:
        """The bytes of an ``on-hook-hex`` result: its length is checked (even, within the
        plugin's memory cap) before the text is copied, and every character must be a hex
        digit."""
        if v.kind != _K_STRING:
            raise _BadValue(f"expected string, got kind {v.kind}")
        size = v.of.string.size
        if size % 2:
            raise _BadValue(f"on-hook-hex returned {size} characters, an odd number: "
                            "hexadecimal text has two digits per byte" + _HEX_FIX)
        if size > self.memory_cap:
            raise _BadValue(f"on-hook-hex returned {size} characters, more than the plugin's "
                            f"memory cap of {self.memory_cap} bytes" + _HEX_FIX)
        if _bulk_unhex is not None:
            out = _bulk_unhex(addressof(v.of.string))
            if out is None:
                raise _BadValue("on-hook-hex returned text that is not hexadecimal (a "
                                "character other than 0-9, a-f, A-F)" + _HEX_FIX)
            return out
        try:
            return binascii.unhexlify(ctypes.string_at(v.of.string.data, size))
        except binascii.Error as exc:
            raise _BadValue(f"on-hook-hex returned text that is not hexadecimal: {exc}"
                            + _HEX_FIX) from None

    def _failure(self, err: int, hook: str, state: _CompCallState) -> PlugboxError:
        from ._fastpath import _take_error

        msg = _take_error(err)
        low = msg.lower()
        if MSG_INTERRUPTED in msg:
            return closed_error(self.plugin, hook, self.template.engine.closing)
        if state.error is not None:
            stashed, state.error = state.error, None
            return host_function_error(stashed, self.plugin, hook)
        if "plugbox: host call nested too deep" in low:
            return stack_error(self.plugin, hook, "host functions nested until the host's "
                               "Python stack ran out")
        where = f"plugin {self.plugin!r}, hook {hook!r}"
        # The component C API reports traps as errors without a trap code: classify by the
        # messages wasmtime gives its trap codes.
        if "all fuel consumed" in low or "out of fuel" in low:
            return fuel_error(self.plugin, hook, state.fuel)
        if "wasm trap: interrupt" in low or "epoch deadline" in low or MSG_DEADLINE in msg:
            return deadline_error(self.plugin, hook, state.deadline_ms)
        if "call stack exhausted" in low or "stack overflow" in low:
            return stack_error(self.plugin, hook)
        if any(marker in low for marker in _ABI_TRAP_MARKERS):
            # wasmtime's canonical ABI found the guest's values malformed: the same violations
            # the core fast path reports itself.
            return AbiViolation(
                f"{where}: broke the canonical ABI: {trap_summary(msg)}",
                plugin=self.plugin, hook=hook,
            )
        if "concurrent limit" in low:
            return instances_error(self.plugin, hook, trap_summary(msg))
        if "memory" in low and any(word in low for word in ("limit", "grow", "allocat")):
            # e.g. a component whose memories need more than the cap at instantiation
            return memory_error(self.plugin, hook, self.memory_cap, trap_summary(msg))
        return GuestTrap(f"{where}: guest trapped: {trap_summary(msg)}", plugin=self.plugin,
                         hook=hook)

    def interrupt(self) -> None:
        """End the call running in this instance soon (see ``_fastpath.Instance.interrupt``);
        it ends in ClosedError."""
        self._ctl[1] = 1

    def close(self) -> None:
        """Free the store. Safe to call twice."""
        if not self.closed:
            self.closed = True
        store = getattr(self, "_store", None)
        if store is not None:
            self._flush_output()
            store.close()
            self._store = None  # type: ignore[assignment]
