"""Clocks (``clock`` permission).

Both functions return nanoseconds. The ABI's clock has no error case: without the permission
both read 0. Inside a component, ``time.time()`` has no host clock behind it; use this module.
"""

from __future__ import annotations

from . import _host

__all__ = ["monotonic", "now"]


def now() -> int:
    """Wall-clock time in nanoseconds since the Unix epoch (0 without the permission)."""
    return _host.current().clock_now()


def monotonic() -> int:
    """Monotonic time in nanoseconds from an arbitrary origin (0 without the permission)."""
    return _host.current().clock_monotonic()
