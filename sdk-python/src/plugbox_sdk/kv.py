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

:func:`increment` and :func:`compare_and_set` (ABI 1.1) are atomic on the host: use them for
values several instances update at once (``get`` then ``set`` can lose an update when two
instances read the same value)::

    kv.increment("hits")                       # 1, 2, 3, ... never a lost update
    while True:                                # any other read-modify-write
        old = kv.get("state")
        if kv.compare_and_set("state", old, update(old)):
            break
"""

from __future__ import annotations

import json
from typing import Any

from . import _host

__all__ = [
    "compare_and_set", "delete", "get", "get_json", "increment", "list_keys", "set", "set_json",
]

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


def increment(key: str, delta: int = 1) -> int:
    """Atomically add ``delta`` to the counter under ``key``; its new value (ABI 1.1).

    The counter is a signed 64-bit integer stored as 8 bytes, little-endian (absent: 0).
    :class:`~plugbox_sdk.InvalidInputError` when the stored value is not 8 bytes or the sum
    leaves the signed 64-bit range.
    """
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise TypeError(f"kv.increment: delta must be an int, not {type(delta).__name__}")
    if not -(1 << 63) <= delta < (1 << 63):
        raise ValueError("kv.increment: delta must fit in a signed 64-bit integer")
    return _host.current().kv_increment(key, delta)


def compare_and_set(key: str, expected: bytes | bytearray | memoryview | str | None,
                    new: bytes | bytearray | memoryview | str) -> bool:
    """Atomically store ``new`` under ``key`` if its value is ``expected`` (None: the key is
    absent); True when it did (ABI 1.1). ``str`` values are UTF-8."""
    return _host.current().kv_compare_and_set(
        key, None if expected is None else _bytes("compare_and_set", expected),
        _bytes("compare_and_set", new))


def _bytes(what: str, value: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"kv.{what}: values must be bytes or str, not {type(value).__name__}")


def get_json(key: str, default: Any = None) -> Any:
    """The value under ``key`` decoded from JSON, or ``default`` when the key is absent."""
    data = _host.current().kv_get(key)
    return default if data is None else json.loads(data)


def set_json(key: str, value: Any) -> None:
    """Store ``value`` encoded as compact JSON under ``key``."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    _host.current().kv_set(key, text.encode("utf-8"))
