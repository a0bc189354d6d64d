"""The SDK inside a component: host services over the componentize-py bindings.

Imported only by the entry module ``plugbox build`` generates (never by plugin code, never
outside a component): it needs the ``wit_world`` bindings package that componentize-py
generates from ``abi/plugbox.wit`` while it builds the component.

Every bindings module is imported here, at import time, on purpose: componentize-py
pre-initialises the component at build time and keeps only the modules imported then; an
``import`` first reached inside a hook finds no module at run time.

``plugbox build`` compiles against a world that imports only the services the manifest
requests (so the component's imports match its permissions); the bindings of the others do not
exist, and calling them answers exactly as the host would without the permission: ``denied``,
a dropped log record, a zero clock.
"""

from __future__ import annotations

import binascii
import importlib
from typing import Any, Final, NoReturn

from . import _host
from ._errors import DeniedError, Error
from ._hooks import default_registry

__all__ = ["ComponentHost", "bulk_in", "bulk_out", "on_hook", "on_hook_hex", "on_init"]


def _bindings(service: str) -> Any:
    """The generated module of ``service``, or None when the world does not import it."""
    try:
        return importlib.import_module(f"wit_world.imports.{service}")
    except ImportError:
        return None


# importlib instead of import statements: the bindings exist only at build time, inside
# componentize-py, so type checkers outside the component must treat them as Any.
_types: Any = importlib.import_module("componentize_py_types")
_wit: Any = importlib.import_module("wit_world.imports.types")
_log: Any = _bindings("log")
_config: Any = _bindings("config")
_kv: Any = _bindings("kv")
_events: Any = _bindings("events")
_clock: Any = _bindings("clock")
_random: Any = _bindings("random")
_http: Any = _bindings("http")
_host_iface: Any = _bindings("host")  # ABI 1.1

_Err: Any = _types.Err

#: bindings case class -> ABI kind, and back.
_KIND_OF: Final[dict[Any, str]] = {
    _wit.Error_Denied: "denied",
    _wit.Error_NotFound: "not-found",
    _wit.Error_InvalidInput: "invalid-input",
    _wit.Error_LimitReached: "limit-reached",
    _wit.Error_Failure: "failure",
}
_CASE_OF: Final[dict[str, Any]] = {kind: case for case, kind in _KIND_OF.items()}
_LEVELS: Final = tuple(_log.Level(i) for i in range(5)) if _log is not None else ()


def _not_granted(service: str) -> NoReturn:
    # The host's own wording (plugbox.services._services), so a test sees the same message either way.
    raise DeniedError(
        f'{service}: permission not granted; add "{service}" to permissions in plugbox.json'
    )


def _host_error(exc: Any) -> NoReturn:
    """Re-raise a bindings ``Err(error)`` from a host call as the SDK's :class:`Error`."""
    value = exc.value
    kind = _KIND_OF.get(type(value), "failure")
    raise Error.from_kind(kind, str(getattr(value, "value", value))) from None


class ComponentHost:
    """:class:`plugbox_sdk._host.Host` over the generated ``wit_world.imports`` functions."""

    def log(self, level: int, message: str) -> None:
        """``log.log``."""
        if _log is not None:
            _log.log(_LEVELS[level], message)

    def config_get(self, key: str) -> str | None:
        """``config.get``."""
        if _config is None:
            _not_granted("config")
        try:
            result: str | None = _config.get(key)
        except _Err as exc:
            _host_error(exc)
        return result

    def config_get_all(self) -> str:
        """``config.get-all``."""
        if _config is None:
            _not_granted("config")
        try:
            result: str = _config.get_all()
        except _Err as exc:
            _host_error(exc)
        return result

    def kv_get(self, key: str) -> bytes | None:
        """``kv.get``."""
        if _kv is None:
            _not_granted("kv")
        try:
            result: bytes | None = _kv.get(key)
        except _Err as exc:
            _host_error(exc)
        return result

    def kv_set(self, key: str, value: bytes) -> None:
        """``kv.set``."""
        if _kv is None:
            _not_granted("kv")
        try:
            _kv.set(key, value)
        except _Err as exc:
            _host_error(exc)

    def kv_delete(self, key: str) -> bool:
        """``kv.delete``."""
        if _kv is None:
            _not_granted("kv")
        try:
            result: bool = _kv.delete(key)
        except _Err as exc:
            _host_error(exc)
        return result

    def kv_list_keys(self, prefix: str) -> list[str]:
        """``kv.list-keys``."""
        if _kv is None:
            _not_granted("kv")
        try:
            result: list[str] = _kv.list_keys(prefix)
        except _Err as exc:
            _host_error(exc)
        return result

    def kv_increment(self, key: str, delta: int) -> int:
        """``kv.increment``."""
        if _kv is None:
            _not_granted("kv")
        try:
            result: int = _kv.increment(key, delta)
        except _Err as exc:
            _host_error(exc)
        return result

    def kv_compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """``kv.compare-and-set``."""
        if _kv is None:
            _not_granted("kv")
        try:
            result: bool = _kv.compare_and_set(key, expected, new)
        except _Err as exc:
            _host_error(exc)
        return result

    def host_call(self, name: str, payload: bytes) -> bytes:
        """``host.call``."""
        if _host_iface is None:
            raise DeniedError(
                'host.call: no host functions granted; add "functions": ["<name>"] to '
                "permissions in plugbox.json")
        try:
            result: bytes = _host_iface.call(name, payload)
        except _Err as exc:
            _host_error(exc)
        return bytes(result)

    def host_dispatch(self, point: str, payload: bytes) -> bytes:
        """``host.dispatch``."""
        if _host_iface is None:
            raise DeniedError(
                'host.dispatch: no extension points granted; add "dispatch": ["<point>"] to '
                "permissions in plugbox.json")
        try:
            result: bytes = _host_iface.dispatch(point, payload)
        except _Err as exc:
            _host_error(exc)
        return bytes(result)

    def events_emit(self, topic: str, payload: bytes) -> None:
        """``events.emit``."""
        if _events is None:
            _not_granted("events")
        try:
            _events.emit(topic, payload)
        except _Err as exc:
            _host_error(exc)

    def clock_now(self) -> int:
        """``clock.now``."""
        if _clock is None:
            return 0
        result: int = _clock.now()
        return result

    def clock_monotonic(self) -> int:
        """``clock.monotonic``."""
        if _clock is None:
            return 0
        result: int = _clock.monotonic()
        return result

    def random_bytes(self, n: int) -> bytes:
        """``random.bytes``."""
        if _random is None:
            _not_granted("random")
        try:
            result: bytes = _random.bytes(n)
        except _Err as exc:
            _host_error(exc)
        return result

    def http_fetch(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """``http.fetch``."""
        if _http is None:
            _not_granted("http")
        try:
            resp = _http.fetch(_http.Request(method, url, headers, body))
        except _Err as exc:
            _host_error(exc)
        return int(resp.status), list(resp.headers), bytes(resp.body)


_HOST: Final = ComponentHost()


def _abi_error(error: Error) -> Any:
    """The bindings ``Err`` that returns ``error`` to the host as the ABI ``error`` value."""
    return _Err(_CASE_OF.get(error.kind, _wit.Error_Failure)(error.message))


def on_init(config: str) -> None:
    """The world's ``on-init`` export."""
    # Installed on the first call, not at import: import time is build time (pre-init), when
    # no host exists, and plugin code calling a service then must get the clear NoHostError.
    _host.install(_HOST)
    try:
        default_registry().run_init(config)
    except Error as exc:
        raise _abi_error(exc) from None


def on_hook(hook: str, payload: bytes) -> bytes:
    """The world's ``on-hook`` export."""
    _host.install(_HOST)
    try:
        return default_registry().dispatch(hook, payload)
    except Error as exc:
        raise _abi_error(exc) from None


def on_hook_text(hook: str, payload: str) -> str:
    """The ``bulk`` interface's ``on-hook-text``: ``on-hook`` with the payload and result
    carried as strings whose code points are the bytes (latin-1), which cross the component
    boundary as one buffer instead of one value per byte."""
    try:
        data = payload.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise _abi_error(Error.from_kind("invalid-input", f"on-hook-text payload: {exc}")) from None
    return on_hook(hook, data).decode("latin-1")


# ---------------------------------------------------------------------------------------------
# The bulk interface's hexadecimal encoding (abi/plugbox.wit, ``on-hook-hex``): two ASCII digits
# per byte, so the string crosses the component boundary as one buffer of ASCII, and neither
# side's UTF-8 handling depends on the bytes' values. Both directions are CPython's C loops.


def bulk_in(text: str) -> bytes:
    """The payload of ``on-hook-hex``: the bytes its hexadecimal text spells. Text that is not
    hexadecimal (odd length, another character) is the ABI's ``invalid-input``."""
    try:
        return binascii.unhexlify(text)  # twice as fast as bytes.fromhex inside the component
    except ValueError as exc:
        raise _abi_error(Error.from_kind(
            "invalid-input", f"on-hook-hex payload is not hexadecimal text: {exc}")) from None


def bulk_out(data: bytes) -> str:
    """The result of ``on-hook-hex``: ``data`` as lowercase hexadecimal text."""
    return data.hex()


def on_hook_hex(hook: str, payload: str) -> str:
    """The ``bulk`` interface's ``on-hook-hex``: ``on-hook`` with payload and result carried as
    hexadecimal text (:func:`bulk_in`, :func:`bulk_out`)."""
    return bulk_out(on_hook(hook, bulk_in(payload)))
