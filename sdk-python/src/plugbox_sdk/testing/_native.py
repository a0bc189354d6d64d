"""The native backend: a plugin's ``app.py`` imported into this CPython, served by a FakeHost.

The plugin is imported the way the component imports it (module name ``app``, its directory
first on ``sys.path``), into a registry of its own, and its modules are taken out of
``sys.modules`` again afterwards, so several plugins (each with its own ``app.py``) can be
loaded side by side.

While a hook runs, an import guard makes ``import`` of a module that is not loaded yet fail,
as it does inside a component: componentize-py keeps only the modules imported when the
component is pre-initialised at build time, so an ``import`` first reached inside a hook finds
nothing at run time. (Best effort: a module some other code already imported into this process
slips through.)
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import _hooks, _host
from .._errors import InvalidInputError, NotFoundError
from ._deadline import DEFAULT_DEADLINE_MS, enforced
from ._fakehost import Event, FakeHost, HostFunction, LogRecord, Responder
from ._spec import PluginSpec

__all__ = ["NativeHarness", "import_plugin"]


class _ImportGuard(importlib.abc.MetaPathFinder):
    """Refuses imports of modules not loaded yet, while :attr:`depth` > 0 in this thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    @contextlib.contextmanager
    def active(self, on: bool) -> Iterator[None]:
        """Guard (``on``) or unguard (host code, which may import freely) the block."""
        saved = self.depth
        self._local.depth = (saved + 1) if on else 0
        try:
            yield
        finally:
            self._local.depth = saved

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if self.depth == 0:
            return None
        raise ModuleNotFoundError(
            f"No module named {fullname!r} inside a plugbox component: modules first imported "
            f"inside a hook do not exist at run time (componentize-py keeps only what the "
            f"plugin imports at build time). Move `import {fullname}` to the top of the module.",
            name=fullname,
        )


_GUARD = _ImportGuard()
if _GUARD not in sys.meta_path:
    sys.meta_path.insert(0, _GUARD)


class _UnguardedHost:
    """Forwards to a FakeHost with the import guard off: host code is not plugin code."""

    def __init__(self, host: FakeHost) -> None:
        self._host = host

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._host, name)

        def call(*args: Any) -> Any:
            with _GUARD.active(False):
                return method(*args)

        return call


def _inside(path: str | None, directory: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(directory)
    except ValueError:
        return False
    return True


def import_plugin(directory: Path, module: str = "app") -> tuple[ModuleType, _hooks.Registry]:
    """Import the plugin module ``module`` from ``directory`` into a fresh registry.

    Returns the module and the hooks it registered. The plugin's own modules (those under
    ``directory``) are removed from ``sys.modules`` afterwards; names they shadowed are put back.

    Raises:
        FileNotFoundError: there is no ``module.py`` (or package) in ``directory``.
        Exception: whatever importing the plugin raised.
    """
    directory = directory.resolve()
    if not (directory / f"{module}.py").is_file() and not (
        directory / module / "__init__.py"
    ).is_file():
        raise FileNotFoundError(f"{directory}: no {module}.py; a Python plugin's code is app.py")
    before = dict(sys.modules)
    sys.path.insert(0, str(directory))
    # A previously loaded plugin's `app` must not be found instead of this one.
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    try:
        with _hooks.collecting() as registry:
            loaded = importlib.import_module(module)
    finally:
        sys.path.remove(str(directory))
        for name, mod in list(sys.modules.items()):
            if name == module or (
                name not in before and _inside(getattr(mod, "__file__", None), directory)
            ):
                del sys.modules[name]
        for name, mod in before.items():
            sys.modules.setdefault(name, mod)
    return loaded, registry


class NativeHarness:
    """Runs a plugin's hooks in this process against a :class:`FakeHost` (see ``load``)."""

    backend = "native"

    def __init__(
        self,
        spec: PluginSpec,
        *,
        config: Mapping[str, Any] | None = None,
        withhold: frozenset[str] | set[str] = frozenset(),
        http: Responder | None = None,
        module: str = "app",
        strict_imports: bool = True,
        functions: Mapping[str, HostFunction] | None = None,
        dispatch: Mapping[str, HostFunction] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.host = FakeHost(spec, config=config, withhold=withhold, http=http,
                             functions=functions, dispatch=dispatch)
        self.module, self.registry = import_plugin(spec.directory, module)
        self._strict = strict_imports
        self._served = _UnguardedHost(self.host)
        #: The wall-clock deadline of each call (and of on-init), as the runtime applies it.
        self.deadline_ms = spec.deadline_ms or DEFAULT_DEADLINE_MS
        # on-init runs once, as it does for each new instance in the runtime.
        with self._serving("on-init"):
            self.registry.run_init(json.dumps(dict(config or {})))

    @contextlib.contextmanager
    def _serving(self, hook: str) -> Iterator[None]:
        with enforced(self.name, hook, self.deadline_ms), _host.using(self._served), \
                _GUARD.active(self._strict):
            yield

    # -- the common harness API --------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """Events the plugin emitted, oldest first."""
        return self.host.events

    @property
    def logs(self) -> list[LogRecord]:
        """Records the plugin logged, oldest first."""
        return self.host.logs

    @property
    def kv(self) -> dict[str, bytes]:
        """The plugin's key-value store; a test may read it and seed it."""
        return self.host.kv

    @property
    def denied(self) -> list[str]:
        """The service of every denied host call, in order."""
        return self.host.denied

    def call(self, hook: str, payload: bytes | bytearray | memoryview | str = b"") -> bytes:
        """Call ``hook``; see :meth:`plugbox_sdk.testing.Harness.call`."""
        if hook not in self.spec.hooks:
            raise NotFoundError(
                f"plugin {self.name!r} has no hook {hook!r}; its manifest declares: "
                f"{', '.join(self.spec.hooks)}"
            )
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._serving(hook):
            return self.registry.dispatch(hook, data)

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
        """Nothing to release natively; present so both backends are used the same way."""
