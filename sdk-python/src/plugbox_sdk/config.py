"""Read-only access to the configuration the host gave this plugin (``config`` permission).

::

    from plugbox_sdk import config
    top_n = config.get("top_n", 10)

Values come decoded from JSON. Every function raises :class:`~plugbox_sdk.DeniedError` without
the ``config`` permission. (The init function receives the same configuration as a ``dict``
without needing the permission.)
"""

from __future__ import annotations

import json
from typing import Any

from . import _host

__all__ = ["get", "get_all", "get_text"]


def get(key: str, default: Any = None) -> Any:
    """The value of ``key`` decoded from JSON, or ``default`` when the configuration lacks it."""
    text = _host.current().config_get(key)
    return default if text is None else json.loads(text)


def get_text(key: str) -> str | None:
    """The value of ``key`` as JSON text, exactly as the host holds it; None when absent."""
    return _host.current().config_get(key)


def get_all() -> dict[str, Any]:
    """The whole configuration object (``{}`` when the host gave none)."""
    value = json.loads(_host.current().config_get_all())
    return value if isinstance(value, dict) else {}
