"""Cryptographically secure random bytes from the host (``random`` permission).

Errors: :class:`~plugbox_sdk.DeniedError` without the permission,
:class:`~plugbox_sdk.LimitReachedError` for more than 1 MiB per call.
"""

from __future__ import annotations

from . import _host

__all__ = ["bytes", "hex"]

_bytes = bytes


def bytes(n: int) -> _bytes:  # noqa: A001 -- mirrors the WIT function name
    """``n`` random bytes."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"random.bytes: n must be a non-negative int, not {n!r}")
    return _host.current().random_bytes(n)


def hex(n: int) -> str:  # noqa: A001
    """``n`` random bytes as ``2 * n`` lowercase hex digits."""
    return bytes(n).hex()
