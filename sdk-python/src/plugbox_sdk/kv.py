"""Key-value storage private to this plugin, persisted by the host (``kv`` permission).

::

    from plugbox_sdk import kv
    kv.set("greeting", b"hello")
    kv.get("greeting")          # b"hello"
    kv.set_json("state", {"n": 1})
    kv.list_keys("gr")          # ["greeting"]

Keys are non-empty strings of at most 256 UTF-8 bytes; values are bytes (a ``str`` value is
stored as UTF-8). Errors: :class:`~plugbox_sdk.DeniedError` without the permission,
:class:`~plugbox_sdk.InvalidInputError` for a bad key, :class:`~plugbox_sdk.LimitReachedError`
when a write would exceed the manifest's ``quota_bytes`` / ``quota_keys`` (nothing is written
then) or a value exceeds 1 MiB, :class:`~plugbox_sdk.FailureError` when the host's store fails.
"""

from __future__ import annotations

import json
from typing import Any

from . import _host

__all__ = ["delete", "get", "get_json", "list_keys", "set", "set_json"]

_MISSING: Any = object()


def get(key: str) -> bytes | None:
    """The value stored under ``key``, or None."""
    return _host.current().kv_get(key)


def set(key: str, value: bytes | bytearray | memoryview | str) -> None:  # noqa: A001
    """Store ``value`` under ``key``, replacing any old value."""
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise TypeError(
            f"kv.set: value must be bytes or str, not {type(value).__name__}; "
            "use kv.set_json for other values"
        )
    _host.current().kv_set(key, data)


def delete(key: str) -> bool:
    """Remove ``key``; True when it existed."""
    return _host.current().kv_delete(key)


def list_keys(prefix: str = "") -> list[str]:
    """The keys starting with ``prefix`` (all keys for ``""``), in byte order."""
    return _host.current().kv_list_keys(prefix)


def get_json(key: str, default: Any = None) -> Any:
    """The value under ``key`` decoded from JSON, or ``default`` when the key is absent."""
    data = _host.current().kv_get(key)
    return default if data is None else json.loads(data)


def set_json(key: str, value: Any) -> None:
    """Store ``value`` encoded as compact JSON under ``key``."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    _host.current().kv_set(key, text.encode("utf-8"))
