"""abi11-caller: the ABI 1.1 interfaces from Python, for tests/test_sdk_abi11.py.

- ``call`` / ``dispatch``: the payload is ``<name> NUL <body>``; calls ``host.call`` /
  ``host.dispatch`` with them and returns the result bytes (errors pass through).
- ``call.json``: ``{"name", "value"}`` -> ``host.call_json(name, value)``.
- ``incr``: ``{"key", "by"}`` -> ``{"value": kv.increment(key, by)}``.
- ``cas``: ``{"key", "expected" (str or null), "new"}`` -> ``{"swapped": bool}``.
"""

from plugbox_sdk import hook, host, kv


def _split(payload: bytes) -> tuple[str, bytes]:
    name, _, body = payload.partition(b"\0")
    return name.decode("utf-8"), body


@hook("call")
def call(payload: bytes) -> bytes:
    """host.call with the name and body of the payload."""
    name, body = _split(payload)
    return host.call(name, body)


@hook("dispatch")
def dispatch(payload: bytes) -> bytes:
    """host.dispatch with the name and body of the payload."""
    point, body = _split(payload)
    return host.dispatch(point, body)


@hook("call.json", json=True)
def call_json(value: dict) -> object:
    """host.call_json."""
    return host.call_json(value["name"], value.get("value"))


@hook("incr", json=True)
def incr(value: dict) -> dict:
    """kv.increment."""
    return {"value": kv.increment(value["key"], value.get("by", 1))}


@hook("cas", json=True)
def cas(value: dict) -> dict:
    """kv.compare_and_set."""
    return {"swapped": kv.compare_and_set(value["key"], value.get("expected"), value["new"])}
