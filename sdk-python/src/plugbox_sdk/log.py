"""Logging into the host's per-plugin logger (``log`` permission).

::

    from plugbox_sdk import log
    log.info("processed 3 rows")
    log.log("warn", "disk is slow")

The ABI's ``log`` has no error case: without the permission records are dropped silently,
over-long records are truncated and floods are dropped by the host. ``print`` goes nowhere
inside a component; use this module.
"""

from __future__ import annotations

from typing import Final

from . import _host

__all__ = ["LEVELS", "debug", "error", "info", "log", "trace", "warn"]

#: Level names in WIT order; the index is the value the ABI carries.
LEVELS: Final = ("trace", "debug", "info", "warn", "error")
_INDEX: Final = {name: i for i, name in enumerate(LEVELS)} | {"warning": 3}


def log(level: str | int, message: str) -> None:
    """Write one record at ``level`` (``"trace"`` .. ``"error"``, or 0 .. 4).

    Raises:
        ValueError: an unknown level.
    """
    if isinstance(level, str):
        index = _INDEX.get(level.lower())
        if index is None:
            raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    elif isinstance(level, int) and 0 <= level < len(LEVELS):
        index = level
    else:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)} or 0..4")
    _host.current().log(index, str(message))


def trace(message: str) -> None:
    """A ``trace`` record."""
    _host.current().log(0, str(message))


def debug(message: str) -> None:
    """A ``debug`` record."""
    _host.current().log(1, str(message))


def info(message: str) -> None:
    """An ``info`` record."""
    _host.current().log(2, str(message))


def warn(message: str) -> None:
    """A ``warn`` record."""
    _host.current().log(3, str(message))


def error(message: str) -> None:
    """An ``error`` record."""
    _host.current().log(4, str(message))
