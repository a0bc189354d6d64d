"""The one seam between the SDK's service modules and whatever host is behind them.

Inside a component the host is :class:`plugbox_sdk._component.ComponentHost` (the
componentize-py bindings of ``abi/plugbox.wit``); under :mod:`plugbox_sdk.testing` it is a
:class:`~plugbox_sdk.testing.FakeHost`. The service modules (``kv``, ``http``, ...) call
:func:`current` and never know which.

A :class:`Host` speaks the WIT functions almost verbatim (bytes, JSON text, tuples) and raises
:class:`plugbox_sdk.Error` subclasses for the ABI ``error`` cases; the friendlier Python API
(JSON decoding, defaults, ``Response`` objects) lives in the service modules, once for both.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol

from ._errors import FailureError

__all__ = ["Host", "NoHostError", "current", "install", "using"]


class Host(Protocol):
    """The host services of ``abi/plugbox.wit``, one method per WIT function."""

    def log(self, level: int, message: str) -> None:
        """``log.log``: level 0 trace .. 4 error. Never fails (the ABI has no error case)."""

    def config_get(self, key: str) -> str | None:
        """``config.get``: the JSON text of one key, or None."""

    def config_get_all(self) -> str:
        """``config.get-all``: the whole configuration as JSON text."""

    def kv_get(self, key: str) -> bytes | None:
        """``kv.get``."""

    def kv_set(self, key: str, value: bytes) -> None:
        """``kv.set``."""

    def kv_delete(self, key: str) -> bool:
        """``kv.delete``: True when the key existed."""

    def kv_list_keys(self, prefix: str) -> list[str]:
        """``kv.list-keys``: keys starting with ``prefix``, in byte order."""

    def kv_increment(self, key: str, delta: int) -> int:
        """``kv.increment`` (ABI 1.1): the counter's new value."""

    def kv_compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """``kv.compare-and-set`` (ABI 1.1): True when ``new`` was stored."""

    def host_call(self, name: str, payload: bytes) -> bytes:
        """``host.call`` (ABI 1.1): the host function's result bytes."""

    def host_dispatch(self, point: str, payload: bytes) -> bytes:
        """``host.dispatch`` (ABI 1.1): the dispatch result as JSON bytes."""

    def events_emit(self, topic: str, payload: bytes) -> None:
        """``events.emit``."""

    def clock_now(self) -> int:
        """``clock.now``: wall-clock ns since the epoch (0 when not granted)."""

    def clock_monotonic(self) -> int:
        """``clock.monotonic``: monotonic ns (0 when not granted)."""

    def random_bytes(self, n: int) -> bytes:
        """``random.bytes``."""

    def http_fetch(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """``http.fetch``: returns ``(status, headers, body)``."""


class NoHostError(FailureError):
    """A host service was called while no host is connected.

    That happens when plugin code calls a service at import time (the component is
    pre-initialised at build time, with no host), or when ``app.py`` is run as a plain script
    instead of through ``plugbox_sdk.testing`` or a built component.
    """


_NO_HOST = (
    "no plugbox host is connected: host services can be called only while a hook or the init "
    "function runs (not at import time); to run hooks outside a component use "
    "plugbox_sdk.testing.load(PLUGIN_DIR)"
)

# The harness sets a host per call (a context variable, so concurrent harnesses in threads do
# not see each other's); the component installs one process-wide host on its first call.
_current: contextvars.ContextVar[Host | None] = contextvars.ContextVar(
    "plugbox_sdk_host", default=None
)
_installed: Host | None = None


def current() -> Host:
    """The host serving the running hook.

    Raises:
        NoHostError: no host is connected (see :class:`NoHostError`).
    """
    host = _current.get()
    if host is None:
        host = _installed
        if host is None:
            raise NoHostError(_NO_HOST)
    return host


def install(host: Host | None) -> None:
    """Make ``host`` the process-wide host (the component does this once); None removes it."""
    global _installed
    _installed = host


@contextlib.contextmanager
def using(host: Host) -> Iterator[Host]:
    """Serve the calls made inside the ``with`` block (in this context) from ``host``."""
    token = _current.set(host)
    try:
        yield host
    finally:
        _current.reset(token)
