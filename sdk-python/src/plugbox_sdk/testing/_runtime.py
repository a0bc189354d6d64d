"""The component backend: the built plugin, loaded by the real plugbox runtime.

``plugbox`` is imported here only, lazily, so the SDK itself has no dependency on it. The
runtime's errors are translated at one boundary (:func:`_translate`) into the SDK's, so a test
written against the native backend passes unchanged: a guest error becomes the
:class:`~plugbox_sdk.Error` subclass of its kind, an unknown hook :class:`NotFoundError`, a
denied service :class:`DeniedError`. Errors with no ABI counterpart (traps, exhausted fuel,
deadlines) are raised as the runtime's own :class:`plugbox.PlugboxError` subclasses.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from .._errors import DeniedError, Error, InvalidInputError, NotFoundError
from ._fakehost import Event, FakeHost, HostFunction, LogRecord
from ._spec import PluginSpec

__all__ = ["ComponentHarness"]

_LEVELS = {5: "trace", logging.DEBUG: "debug", logging.INFO: "info",
           logging.WARNING: "warn", logging.ERROR: "error"}


def _translate(exc: Exception) -> Exception:
    """The SDK error a runtime error stands for, or ``exc`` itself when there is none."""
    import plugbox

    if isinstance(exc, plugbox.GuestError):
        return Error.from_kind(exc.kind, exc.detail)
    if isinstance(exc, plugbox.UnknownHookError):
        return NotFoundError(exc.message)
    if isinstance(exc, plugbox.PermissionDenied):
        return DeniedError(exc.message)
    return exc


class _Router:
    """A ``plugbox`` HostRouter over the test's handlers (``functions=``, ``dispatch=``),
    with the FakeHost's result encoding; SDK errors become the ABI errors they stand for."""

    def __init__(self, functions: Mapping[str, HostFunction],
                 points: Mapping[str, HostFunction]) -> None:
        self._functions = dict(functions)
        self._points = dict(points)

    def _serve(self, table: Mapping[str, HostFunction], name: str, payload: bytes,
               what: str, option: str) -> bytes:
        from plugbox.services._services import HostCallError

        handler = table.get(name)
        if handler is None:
            raise HostCallError("denied", f"the test host offers no {what} {name!r}; pass "
                                f"{option}={{{name!r}: handler}} to testing.load")
        try:
            return FakeHost._run(handler, payload, f"{what} {name!r}")
        except Error as exc:
            raise HostCallError(exc.kind, exc.message) from None

    def call_function(self, plugin: str, name: str, payload: bytes) -> bytes:
        """Serve ``host.call``."""
        return self._serve(self._functions, name, payload, "host function", "functions")

    def dispatch(self, plugin: str, point: str, payload: bytes) -> bytes:
        """Serve ``host.dispatch``."""
        return self._serve(self._points, point, payload, "extension point", "dispatch")


class _Capture(logging.Handler):
    def __init__(self, sink: list[LogRecord]) -> None:
        super().__init__(level=1)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(LogRecord(_LEVELS.get(record.levelno, "info"), record.getMessage()))


class _KvView(MutableMapping[str, bytes]):
    """The plugin's namespace of the runtime's key-value store, as a mapping."""

    def __init__(self, store: Any, plugin: str) -> None:
        self._store = store
        self._plugin = plugin

    def __getitem__(self, key: str) -> bytes:
        value: bytes | None = self._store.get(self._plugin, key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        # Seeding from a test bypasses the plugin's quotas on purpose.
        self._store.set(self._plugin, key, bytes(value), quota_bytes=1 << 62, quota_keys=1 << 62)

    def __delitem__(self, key: str) -> None:
        if not self._store.delete(self._plugin, key):
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.list_keys(self._plugin, ""))

    def __len__(self) -> int:
        return len(self._store.list_keys(self._plugin, ""))


class ComponentHarness:
    """Runs the built component through ``plugbox.Runtime`` (see ``load``)."""

    backend = "component"

    def __init__(
        self,
        spec: PluginSpec,
        *,
        config: Mapping[str, Any] | None = None,
        withhold: frozenset[str] | set[str] = frozenset(),
        cache_dir: Path | None = None,
        functions: Mapping[str, HostFunction] | None = None,
        dispatch: Mapping[str, HostFunction] | None = None,
    ) -> None:
        try:
            import plugbox
            from plugbox._runtime import default_state_dir
        except ImportError as exc:
            raise RuntimeError(
                "backend='component' needs the plugbox runtime: pip install plugbox"
            ) from exc
        from plugbox.authoring._pybuild import stale_build_error

        stale = stale_build_error(spec.module_path, spec.name)
        if stale is not None:
            raise stale
        if not spec.module_path.is_file():
            raise FileNotFoundError(
                f"{spec.module_path} does not exist: build the plugin first with "
                f"`plugbox build {spec.directory}`"
            )
        self.spec = spec
        self.name = spec.name
        self._state = Path(tempfile.mkdtemp(prefix="plugbox-test-"))
        # The compiled artifact is cached where `plugbox call` caches it: compiling a Python
        # component takes seconds, a cached one loads in a fraction of that.
        cache = cache_dir if cache_dir is not None else default_state_dir() / "cache"
        hosts = spec.http.hosts if spec.http is not None else ()
        self._runtime = plugbox.Runtime(
            state_dir=self._state, cache_dir=cache, policy=plugbox.Policy(http_hosts=hosts),
            router=_Router(functions or {}, dispatch or {}),
        )
        self.events: list[Event] = []
        self.logs: list[LogRecord] = []
        self._unsubscribe = self._runtime.events.subscribe("*", self._on_event)
        self._logger = logging.getLogger(f"plugbox.plugin.{spec.name}")
        self._saved_level = self._logger.level
        self._logger.setLevel(1)  # the runtime skips records its logger would drop
        self._handler = _Capture(self.logs)
        self._logger.addHandler(self._handler)
        try:
            self._plugin = self._runtime.load(
                spec.directory, config=dict(config or {}), withhold=set(withhold)
            )
        except Exception as exc:
            self.close()
            raise _translate(exc) from exc
        self.kv: MutableMapping[str, bytes] = _KvView(self._runtime.kv, spec.name)

    def _on_event(self, event: Any) -> None:
        if event.plugin == self.name:
            self.events.append(Event(event.topic, bytes(event.payload)))

    @property
    def denied(self) -> list[str]:
        """The service of every denied host call (as counted by the runtime)."""
        counts = getattr(getattr(self._plugin, "services", None), "denied", {})
        return [service for service, n in counts.items() for _ in range(n)]

    def call(self, hook: str, payload: bytes | bytearray | memoryview | str = b"") -> bytes:
        """Call ``hook``; see :meth:`plugbox_sdk.testing.Harness.call`."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        try:
            return self._plugin.call(hook, data)
        except Exception as exc:
            raise _translate(exc) from exc

    def call_json(self, hook: str, value: Any = None) -> Any:
        """Call ``hook`` with ``value`` as JSON and decode the JSON result (empty: None)."""
        raw = self.call(hook, json.dumps(value).encode("utf-8"))
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise InvalidInputError(f"hook {hook!r}: the result is not JSON: {exc}") from None

    def close(self) -> None:
        """Unload the plugin and remove the runtime's temporary state."""
        self._unsubscribe()
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._saved_level)
        self._runtime.close()
        shutil.rmtree(self._state, ignore_errors=True)
