"""echo: the smallest plugbox plugin in Python. Hook `echo` returns its payload unchanged."""

from plugbox_sdk import hook


@hook("echo")
def echo(payload: bytes) -> bytes:
    """Bytes in, the same bytes out."""
    return payload
