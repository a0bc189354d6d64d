"""py-hostile: a TEST-ONLY Python plugin that misbehaves on purpose, so the host's sandbox can
be tested with CPython inside (the Rust `hostile` sample does the same for core modules).

| hook          | what it tries                                                           |
|---------------|-------------------------------------------------------------------------|
| `loop`        | spins forever (stopped by fuel or the deadline)                          |
| `bomb`        | keeps 1 MiB chunks alive until memory cannot grow (CPython's MemoryError) |
| `recurse`     | recurses without end (CPython's RecursionError)                          |
| `recurse-unlimited` | lifts the recursion limit, then recurses without end               |
| `read-file`   | `open("/etc/passwd")`; returns the content if that works                 |
| `read-env`    | returns `os.environ` as JSON (the component's environment)               |
| `open-socket` | `import socket` (else `_socket`), connect to the payload's `host:port`   |
|               | (default 127.0.0.1:80); returns "connected" if that works               |
| `print`       | writes 100 KB to stdout and a line to stderr (the host logs it, capped)  |
| `echo`        | behaves: returns its payload, so tests can show the host still serves    |

A contained attack ends in an error (`failure` with the Python exception's text) or a trap;
an escape shows up as a result.
"""

import json
import os
import sys

from plugbox_sdk import FailureError, hook

# Imported at module level: inside a component only modules imported at build time exist.
# The fallback to the built-in `_socket` is for CPython builds without the `socket` module.
try:
    import socket as _socket_module
except ImportError as exc:
    _socket_module = None
    _SOCKET_IMPORT_ERROR = f"import socket: {type(exc).__name__}: {exc}"
else:
    _SOCKET_IMPORT_ERROR = ""
try:
    import _socket
except ImportError:
    _socket = None

#: What `bomb` keeps alive (module state survives between calls of one instance).
_kept: list[bytearray] = []


@hook("loop")
def loop(payload: bytes) -> bytes:
    """Never returns."""
    n = 0
    while True:
        n += 1


@hook("bomb")
def bomb(payload: bytes) -> bytes:
    """Allocates and touches 1 MiB chunks until the allocator fails."""
    while True:
        chunk = bytearray(1 << 20)
        chunk[::4096] = b"\x01" * len(chunk[::4096])
        _kept.append(chunk)


def _down(depth: int) -> int:
    return _down(depth + 1) + 1


@hook("recurse")
def recurse(payload: bytes) -> bytes:
    """Unbounded recursion (stopped by CPython's recursion limit: RecursionError)."""
    return str(_down(0)).encode()


@hook("recurse-unlimited")
def recurse_unlimited(payload: bytes) -> bytes:
    """Unbounded recursion after lifting the recursion limit: Python frames live on the heap,
    so this ends at whichever of fuel, memory or stack runs out first."""
    sys.setrecursionlimit(10_000_000)
    return str(_down(0)).encode()


@hook("read-file")
def read_file(payload: bytes) -> bytes:
    """Reads a host file (the payload names another path)."""
    path = payload.decode() or "/etc/passwd"
    with open(path, "rb") as f:
        return f.read()


@hook("read-env")
def read_env(payload: bytes) -> bytes:
    """The environment variables the plugin can see."""
    return json.dumps(dict(os.environ)).encode()


@hook("open-socket")
def open_socket(payload: bytes) -> bytes:
    """Opens a TCP connection to ``host:port`` by any means available."""
    host, _, port = (payload.decode() or "127.0.0.1:80").rpartition(":")
    address = (host or "127.0.0.1", int(port or 80))
    steps: list[str] = []
    module = _socket_module
    if module is None:
        steps.append(_SOCKET_IMPORT_ERROR)
        module = _socket
    if module is None:
        raise FailureError("; ".join(steps + ["no _socket module either"]))
    # Not caught: a refusal propagates as the exception CPython raises (PermissionError),
    # which the SDK reports as `denied` and the host as PermissionDenied.
    sock = module.socket(module.AF_INET, module.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(address)
    except Exception as exc:
        steps.append(f"connect{address}: {type(exc).__name__}: {exc}")
        raise FailureError("; ".join(steps)) from None
    finally:
        sock.close()
    return b"connected"


@hook("print")
def print_a_lot(payload: bytes) -> bytes:
    """Writes 100 KB to stdout and a line to stderr (captured into the log, capped per call)."""
    for i in range(1000):
        print(f"line {i:04d} " + "x" * 90)
    print("to stderr", file=sys.stderr)
    return b"printed"


@hook("echo")
def echo(payload: bytes) -> bytes:
    """Behaves."""
    return payload
