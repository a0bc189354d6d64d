"""Test a plugin's hooks: natively in this CPython, or as the built component in the runtime.

::

    from plugbox_sdk import testing, DeniedError

    def test_greet():
        harness = testing.load("path/to/plugin", config={"greeting": "Hi"})
        assert harness.call_json("greet", {"name": "Ada"}) == {"greeting": "Hi, Ada!"}
        assert harness.logs[-1].message == "greeting Ada"

Two backends share one API (:class:`Harness`), so the same test file runs against both:

- ``"native"`` (the default): imports the plugin's ``app.py`` into this process and serves its
  host calls from a :class:`FakeHost` that enforces the manifest like the runtime does: a
  service the manifest does not request is denied, events topics and HTTP hosts / methods are
  checked against its patterns, kv quotas apply, errors keep their ABI kind, an undeclared hook
  is ``not-found``. kv, config and events are in memory; HTTP goes to ``http=responder`` or
  the real network. Fast (no build), but it is CPython 3.11+ on your machine, not the sandbox:
  files, environment variables and sockets are reachable here and not in the component. Of
  the resource limits, only the deadline is enforced: a call (or on-init) still running after
  the manifest's ``limits.deadline_ms`` (default 10 000 ms, the runtime's for components) is
  interrupted and raises ``plugbox.DeadlineExceeded`` as in the runtime, so an infinite loop
  fails the test instead of hanging it. Fuel cannot be counted natively (a loop the runtime
  stops with ``FuelExhausted`` ends here at the deadline), and memory is not capped. The
  interrupt lands between bytecodes (a call blocked in C, such as ``time.sleep``, is stopped
  when it returns) and is a ``BaseException``, so ``except Exception`` in the plugin does not
  catch it (a bare ``except:`` can: the interrupt is raised again until the hook ends, and the
  call ends with ``DeadlineExceeded``; a loop that swallows it on every turn still hangs).
- ``"component"``: loads the built component (``plugbox build`` first) with
  ``plugbox.Runtime``: the real sandbox, limits and host services.

``backend=None`` reads the environment variable ``PLUGBOX_TEST_BACKEND`` (default
``native``), so ``PLUGBOX_TEST_BACKEND=component pytest`` re-runs a suite against the build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, Protocol

from ._fakehost import (
    Event,
    FakeHost,
    HostFunction,
    LogRecord,
    Responder,
    dispatch_result,
    static_responder,
)
from ._spec import PluginSpec, read_spec

__all__ = [
    "BACKENDS",
    "Event",
    "FakeHost",
    "Harness",
    "HostFunction",
    "LogRecord",
    "PluginSpec",
    "Responder",
    "dispatch_result",
    "load",
    "read_spec",
    "static_responder",
]

#: The backends :func:`load` accepts.
BACKENDS = ("native", "component")


class Harness(Protocol):
    """A loaded plugin under test; what :func:`load` returns for either backend."""

    #: ``"native"`` or ``"component"``.
    backend: str
    #: The plugin name from its manifest.
    name: str

    @property
    def events(self) -> list[Event]:
        """Events the plugin emitted, oldest first."""

    @property
    def logs(self) -> list[LogRecord]:
        """Records the plugin logged (with the ``log`` permission), oldest first."""

    @property
    def denied(self) -> list[str]:
        """The service of every denied host call, in order."""

    @property
    def kv(self) -> MutableMapping[str, bytes]:
        """The plugin's key-value store (a test may seed it, bypassing quotas)."""

    def call(self, hook: str, payload: bytes | bytearray | memoryview | str = b"") -> bytes:
        """Call ``hook`` with ``payload`` (``str`` is sent as UTF-8); returns the result bytes.

        Raises:
            plugbox_sdk.Error: the ABI error the call ended with, as the subclass of its kind:
                ``NotFoundError`` for a hook the manifest does not declare or the plugin does
                not register, the plugin's own errors, ``DeniedError`` when it failed on a
                denied service, ``FailureError`` for an exception escaping the hook.
            plugbox.DeadlineExceeded: the call ran past the manifest's ``limits.deadline_ms``
                (natively: ``TimeoutError`` when the runtime is not installed).
        """

    def call_json(self, hook: str, value: Any = None) -> Any:
        """Call ``hook`` with ``value`` encoded as JSON; the result decoded (empty: None)."""

    def close(self) -> None:
        """Release the plugin (and, for the component backend, the runtime)."""


def load(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | None = None,
    backend: str | None = None,
    http: Responder | None = None,
    withhold: frozenset[str] | set[str] = frozenset(),
    module: str = "app",
    strict_imports: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    functions: Mapping[str, HostFunction] | None = None,
    dispatch: Mapping[str, HostFunction] | None = None,
) -> Harness:
    """Load the plugin in directory ``path`` for testing and run its init with ``config``.

    Args:
        path: the plugin directory (holding ``plugbox.json`` and ``app.py``).
        config: the plugin configuration (the init function gets it; ``config.get`` reads it).
            Checked against the manifest's ``config_schema`` when plugbox is installed.
        backend: ``"native"``, ``"component"``, or None for ``$PLUGBOX_TEST_BACKEND``.
        http: native only: answers the plugin's HTTP requests (after the permission checks)
            instead of the network; see :func:`static_responder`.
        withhold: services to deny although the manifest requests them.
        module: native only: the plugin's entry module (``app``).
        strict_imports: native only: fail imports first reached inside a hook, as they fail in
            a component.
        cache_dir: component only: the compiled-artifact cache (default: the runtime's).
        functions: the host functions the test offers (ABI 1.1 ``host.call``), by name; each
            gets the payload bytes and returns the result (see :data:`HostFunction`). The
            plugin still needs them granted in ``permissions.functions``.
        dispatch: the extension points the test offers (``host.dispatch``), by name; each
            returns the dispatch result (:func:`dispatch_result` builds one).

    Raises:
        plugbox_sdk.Error: the init function failed (with its kind).
        FileNotFoundError: no manifest, no ``app.py``, or (component) no built module.
        plugbox.UsageError: (component) the last ``plugbox build`` failed, so the module is
            stale (a ``StaleBuildError`` naming the failure and the fix).
        ValueError: an unknown backend, or an option the backend does not support.
    """
    chosen = backend or os.environ.get("PLUGBOX_TEST_BACKEND") or "native"
    spec = read_spec(Path(path))
    if config is not None and spec.config_schema is not None:
        _validate_config(spec, dict(config))
    if chosen == "native":
        from ._native import NativeHarness

        return NativeHarness(
            spec,
            config=config,
            withhold=withhold,
            http=http,
            module=module,
            strict_imports=strict_imports,
            functions=functions,
            dispatch=dispatch,
        )
    if chosen == "component":
        if http is not None:
            raise ValueError(
                "http= responders work with backend='native' only: the component backend "
                "performs real HTTP through the runtime (serve it from a local server)"
            )
        from ._runtime import ComponentHarness

        return ComponentHarness(
            spec,
            config=config,
            withhold=withhold,
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            functions=functions,
            dispatch=dispatch,
        )
    raise ValueError(f"unknown backend {chosen!r}; expected one of {', '.join(BACKENDS)}")


def _validate_config(spec: PluginSpec, config: dict[str, Any]) -> None:
    """The runtime's config check, when the runtime is installed (it brings jsonschema)."""
    try:
        from plugbox import load_manifest
        from plugbox._manifest import validate_config
    except ImportError:
        return
    validate_config(load_manifest(spec.directory), config)
