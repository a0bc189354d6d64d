"""Calls into the host application (ABI 1.1): host functions and extension points.

::

    from plugbox_sdk import host
    battles = host.call_json("battles.query", {"limit": 10})
    report = host.dispatch_json("report.section", {"title": "Summary"})
    for result in report["results"]:
        ...

A plugin may call the host functions its manifest lists in ``permissions.functions`` and
dispatch the extension points in ``permissions.dispatch`` or in its own ``extension_points``
(``fnmatch`` patterns, e.g. ``"battles.*"``); its manifest must say ``"abi": "1.1"``.

Errors: :class:`~plugbox_sdk.DeniedError` for a name the manifest does not grant (or the host
does not offer), :class:`~plugbox_sdk.InvalidInputError` for an empty name or one over 256
UTF-8 bytes, :class:`~plugbox_sdk.LimitReachedError` for a payload over 1 MiB; otherwise what
the host function raised (:class:`~plugbox_sdk.FailureError` when it failed).

A dispatch result is ``{"point", "mode", "value", "results": [{"plugin", "value"}],
"failures": [{"plugin", "error", "kind"}]}``.
"""

from __future__ import annotations

import json
from typing import Any

from . import _host
from ._errors import FailureError

__all__ = ["call", "call_json", "dispatch", "dispatch_json"]


def _payload(value: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        f"host: payload must be bytes or str, not {type(value).__name__}; use the *_json "
        "functions for other values"
    )


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def _decode(data: bytes, what: str) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError as exc:
        raise FailureError(f"{what} returned invalid JSON: {exc}") from None


def call(name: str, payload: bytes | bytearray | memoryview | str = b"") -> bytes:
    """Call host function ``name`` with ``payload``; its result bytes."""
    return _host.current().host_call(name, _payload(payload))


def call_json(name: str, value: Any = None) -> Any:
    """Call a JSON host function: ``value`` encoded, the result decoded (empty: None)."""
    return _decode(_host.current().host_call(name, _encode(value)), f"host function {name!r}")


def dispatch(point: str, payload: bytes | bytearray | memoryview | str = b"") -> bytes:
    """Dispatch extension point ``point`` through the host; the dispatch result's JSON."""
    return _host.current().host_dispatch(point, _payload(payload))


def dispatch_json(point: str, value: Any = None) -> Any:
    """Dispatch ``point`` with ``value`` encoded as JSON; the dispatch result decoded."""
    return _decode(_host.current().host_dispatch(point, _encode(value)),
                   f"dispatching {point!r}")
