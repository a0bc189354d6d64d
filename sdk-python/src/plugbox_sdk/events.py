"""Events delivered to the host's subscribers (``events`` permission).

::

    from plugbox_sdk import events
    events.emit("counter.changed", {"name": "visits", "value": 3})   # JSON-encoded
    events.emit("blob.ready", b"\x00\x01")                           # raw bytes

Errors: :class:`~plugbox_sdk.DeniedError` without the permission or for a topic that matches
none of the manifest's ``permissions.events.topics`` patterns;
:class:`~plugbox_sdk.InvalidInputError` for an empty or over-long topic;
:class:`~plugbox_sdk.LimitReachedError` for a payload over 1 MiB.
"""

from __future__ import annotations

import json
from typing import Any

from . import _host

__all__ = ["emit"]


def emit(topic: str, payload: Any = b"") -> None:
    """Emit an event on ``topic``.

    ``payload`` is sent as is when it is bytes-like; any other value (``str`` included) is
    encoded as compact JSON.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    else:
        data = json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    _host.current().events_emit(topic, data)
