"""plugbox-sdk: write plugbox plugins in Python.

A plugbox plugin handles *hooks*: the host calls a hook by name with a byte payload (usually
JSON) and gets bytes back, or one of the ABI's errors. Register handlers with :func:`hook`; call
host services through the modules :mod:`~plugbox_sdk.log`, :mod:`~plugbox_sdk.config`,
:mod:`~plugbox_sdk.kv`, :mod:`~plugbox_sdk.events`, :mod:`~plugbox_sdk.clock`,
:mod:`~plugbox_sdk.random` and :mod:`~plugbox_sdk.http`, and the host application through
:mod:`~plugbox_sdk.host` (ABI 1.1); report health with :func:`health`::

    from plugbox_sdk import hook, log, InvalidInputError

    @hook("echo")
    def echo(payload: bytes) -> bytes:
        return payload

    @hook("greet", json=True)
    def greet(value: dict) -> dict:
        name = value.get("name", "")
        if not name:
            raise InvalidInputError("name must not be empty")
        log.info(f"greeting {name}")
        return {"greeting": f"Hello, {name}!"}

``plugbox build PLUGIN_DIR`` compiles the plugin (its ``app.py``) into a WebAssembly component
with componentize-py; :mod:`plugbox_sdk.testing` runs its hooks in plain CPython against a fake
host that enforces the manifest's permissions.
"""

from __future__ import annotations

from . import clock, config, events, host, http, kv, log, random
from ._errors import (
    ERROR_KINDS,
    DeniedError,
    Error,
    FailureError,
    InvalidInputError,
    LimitReachedError,
    NotFoundError,
)
from ._hooks import HEALTH_HOOK, health, hook, init

#: The plugbox ABI version this SDK implements.
ABI_VERSION = "1.1.0"

__version__ = "0.1.0"

__all__ = [
    "ABI_VERSION",
    "DeniedError",
    "ERROR_KINDS",
    "Error",
    "FailureError",
    "HEALTH_HOOK",
    "InvalidInputError",
    "LimitReachedError",
    "NotFoundError",
    "__version__",
    "clock",
    "config",
    "events",
    "health",
    "hook",
    "host",
    "http",
    "init",
    "kv",
    "log",
    "random",
]
