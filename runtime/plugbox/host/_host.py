"""The PluginHost: one Runtime, the extension points and host functions the host declares,
the plugins it hosts, and dispatch.

Thread safety: the host's tables (plugins, points, functions, dispatch orders) change under
one lock, and each change publishes new immutable snapshots; a dispatch reads one snapshot
and takes no lock, so calls from many threads run in parallel (each plugin's own instance
pool bounds its concurrency). A plugin removed while a dispatch is calling it fails that call
with :class:`plugbox.ClosedError`, recorded like any failure.
"""

from __future__ import annotations

import contextvars
import ctypes
import dataclasses
import fnmatch
import functools
import json
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

from time import monotonic as _monotonic

from .._errors import PlugboxError, PolicyViolationError, UsageError
from .._metrics import Metrics, PointStats
from ..engine import _fastpath
from .._manifest import Implementation, Manifest, read_manifest, validate_manifest
from .._permissions import Limits
from .._plugin import Plugin
from .._policy import Policy
from .._runtime import Runtime, check_runnable
from ..services._services import DISPATCH_CHAIN, HostCallError
from ..trust._package import staged_plugin
from ..trust._trust import TrustPolicy
from ._errors import (IncompatiblePointError, InvalidResultError, OrderCycleError, PayloadError,
                      ReentrantDispatchError)
from ._order import Cycle, dispatch_order
from ._points import ExtensionPoint, HostFunction
from ._results import DispatchResult, Failure, Result
# For the async and discovery block at the end of PluginHost (issue 8 §4, §5).
from collections.abc import Iterable, Sequence
from .._plugin import run_cancellable
from ._discovery import (AddedPlugins, DiscoveredPlugin, DiscoveryLimits, DiscoveryProblem,
                         DiscoveryReport, discover)
# For the lifecycle block at the end of PluginHost (issue 9).
from ._breaker import BreakerPolicy, QuarantinedError
from ._health import HealthMixin
from ._quarantine import QuarantineMixin
from ._lifecycle import LifecycleMixin
from ._sync import SyncMixin

__all__ = ["MAX_DISPATCH_DEPTH", "HostedPlugin", "PluginHost"]

_log = logging.getLogger("plugbox.host")

#: Dispatches nest at most this deep (a plugin dispatching a point whose implementation
#: dispatches another ...); deeper ones are refused with ReentrantDispatchError.
MAX_DISPATCH_DEPTH: Final = 8
#: Background ``notify`` dispatches queued at most; more are dropped (and logged) rather than
#: letting a fast caller queue without bound.
MAX_BACKGROUND_PENDING: Final = 1024
#: Background dispatches with failures kept for :attr:`PluginHost.background_failures`.
BACKGROUND_FAILURES_KEPT: Final = 256

# The dispatch chain of the current context: the points being dispatched and the plugins
# being called, outermost first. Context variables follow the call into worker threads
# (submitted with copy_context), so a chain split over threads is still one chain.
# (The points' variable lives in the services layer, whose log records name the point.)
_POINTS = DISPATCH_CHAIN
_PLUGINS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "plugbox_host_plugins", default=frozenset())


def _load_c_dispatch() -> Any:
    """``engine._speedups`` when it is built with the dispatch section (and not disabled with
    PLUGBOX_NO_SPEEDUPS), set up for this module; else None (the pure-Python twins run)."""
    if not _fastpath.ACCELERATED:
        return None
    try:
        from ..engine import _speedups  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - ACCELERATED says it imported
        return None
    if not hasattr(_speedups, "dispatch"):
        return None  # an older build of the extension
    _speedups.dispatch_setup(_POINTS, _PLUGINS, Result, DispatchResult, PlugboxError)
    return _speedups


#: The C dispatch loop and reader counts (engine._speedups), or None: see use_c_dispatch.
_C: Any = _load_c_dispatch()
_C_BUILT: Final = _C is not None


def use_c_dispatch(enabled: bool) -> bool:
    """Switch between the C dispatch loop and reader counts and their pure-Python twins
    (tests run both; switch only while no dispatch runs). Returns whether C is in use now
    (False when the extension is not built)."""
    global _C
    _C = _load_c_dispatch() if enabled and _C_BUILT else None
    return _C is not None


@dataclass(frozen=True, eq=False)
class HostedPlugin:
    """A plugin added to a :class:`PluginHost`: ``plugin`` is the loaded
    :class:`plugbox.Plugin`, ``manifest`` its manifest, ``source`` the path it was added from,
    ``priority`` the host's priority (higher runs first), ``enabled`` False for a plugin that
    is loaded but not dispatched to, ``config`` the configuration it was loaded with."""

    name: str
    plugin: Plugin = field(repr=False)
    priority: int
    manifest: Manifest = field(repr=False)
    source: Path
    enabled: bool = True
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)
    index: int = field(default=0, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        """Sort key of the default order: higher priority first, then add order."""
        return (-self.priority, self.index)


@dataclass(frozen=True)
class _Impl:
    """One plugin's implementation of one point, as the dispatch order sees it."""

    hosted: HostedPlugin
    impl: Implementation
    #: ``{name}``, made once: a dispatch adds it to the chain's running plugins per call.
    names: frozenset[str] = field(init=False, repr=False, compare=False)
    #: Whether the plugin can reach the host (ABI 1.1 ``host.call``/``host.dispatch``): only
    #: such a plugin can start a nested dispatch, so only its calls join the chain.
    calls_host: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset((self.hosted.name,)))
        object.__setattr__(self, "calls_host", bool(
            "host" in self.hosted.plugin.permissions.services()
            or self.hosted.manifest.extension_points))

    @property
    def name(self) -> str:
        return self.hosted.name

    @property
    def key(self) -> tuple[int, int]:
        return self.hosted.key

    @property
    def before(self) -> tuple[str, ...]:
        return self.impl.before

    @property
    def after(self) -> tuple[str, ...]:
        return self.impl.after


class _Probe(NamedTuple):
    """A plugin not yet added, as the cycle check sees it."""

    name: str
    key: tuple[int, int]
    before: tuple[str, ...]
    after: tuple[str, ...]


@dataclass(frozen=True)
class _Tables:
    """One consistent snapshot of what a dispatch needs."""

    points: Mapping[str, ExtensionPoint]
    functions: Mapping[str, HostFunction]
    plugins: tuple[HostedPlugin, ...]  # add order
    orders: Mapping[str, tuple[_Impl, ...]]
    #: ``orders`` without the disabled plugins: what a dispatch calls, computed once here.
    active: Mapping[str, tuple[_Impl, ...]] = field(default_factory=dict)
    #: Bumped by every publish: what the lifecycle's reader counts go by (issue 9 §6).
    gen: int = 0
    #: Per point, the quarantined implementations left out of ``active`` with their error,
    #: and the names of those due a probe call (issue 10 §2).
    blocked: Mapping[str, tuple[tuple[str, QuarantinedError], ...]] = field(
        default_factory=dict)
    probing: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Per point, what a dispatch of it runs, precomputed at each publish (see _Plan).
    plans: Mapping[str, _Plan] = field(default_factory=dict)


#: _Plan.mode: the modes a plan runs (pipeline dispatches take the general path).
_PLAN_MODES: Final = {"each": 0, "first": 1, "notify": 2}


class _Plan(NamedTuple):
    """What one dispatch of a point runs, computed once per table generation (_publish): the
    per-implementation callables and arguments, so a dispatch does no lookups, no limit
    arithmetic and no allocation beyond its results. A tuple, because the C loop
    (``engine._speedups.dispatch``) reads it by index: the field order is the ``P_*`` order
    there. ``fast`` is False for what only the general path runs (background, concurrent,
    pipeline, quarantined or probed implementations); nested dispatches take it too."""

    fast: bool
    gen: int
    point: str
    mode: int  # _PLAN_MODES
    mode_name: str
    json: bool
    calls: tuple[Callable[..., bytes], ...]  # each implementation's bound Plugin.call
    hooks: tuple[str, ...]
    names: tuple[str, ...]
    #: (fuel, deadline_ms) per implementation when the point tightens limits, else None
    kwargs: tuple[tuple[int | None, int | None] | None, ...]
    #: {name} for an implementation that can call the host (it joins the chain), else None
    host_names: tuple[frozenset[str] | None, ...]
    chain: tuple[str, ...]  # (point,): the dispatch chain while it runs
    #: whether the chain must be set (something running inside can see it); monitors are
    #: checked per dispatch, as they come and go
    needs_chain: bool
    runtime: Runtime
    counters: tuple[int, ...] | None  # addresses of the per-plugin call counters (metrics)
    dispatch_slots: int | None  # address of the point's latency accumulator (metrics)
    encode: Callable[[PluginHost, Any], bytes]
    decode: Callable[[PluginHost, int, bytes], Any]  # json: (host, index, raw) -> value
    failed: Callable[[PluginHost, int, PlugboxError, list[Failure]], None]
    readers: dict[int, int]  # the host's reader counts (never replaced)
    spec: ExtensionPoint
    entries: tuple[_Impl, ...]
    stats: PointStats | None
    counter_objs: tuple[ctypes.c_int64, ...] | None


class _HostRuntime(Runtime):
    """The host's Runtime: the same, except that a plugin implementing points with a
    ``memory_bytes`` limit is loaded with its memory capped by the tightest of them."""

    # Weak: a Runtime keeping its host alive would keep both (and the Runtime's reserved
    # address space) until the cyclic garbage collector ran.
    _host: weakref.ref[PluginHost] | None = None

    def _verified(self, path: str | os.PathLike[str], allow_unrequested_imports: bool
                  ) -> Any:
        verified = super()._verified(path, allow_unrequested_imports)
        host = self._host() if self._host is not None else None
        found = host._memory_cap(verified.manifest) if host is not None else None
        if found is None or found[0] >= verified.limits.memory_bytes:
            return verified
        limits: Limits = dataclasses.replace(verified.limits, memory_bytes=found[0])
        try:
            check_runnable(verified.manifest, verified.wasm, verified.info, limits,
                           self.policy, self.engine.wasmtime)
        except PlugboxError as exc:
            exc.add_note(f"(the memory cap of {found[0]} bytes is extension point "
                         f"{found[1]!r}'s memory_bytes)")
            raise
        return verified._replace(limits=limits)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


class PluginHost(SyncMixin, LifecycleMixin, HealthMixin, QuarantineMixin):
    """Hosts many plugins behind extension points: the object a host application creates
    once, declares its extension points and host functions on, adds plugins to and
    dispatches through.

    ``state_dir``, ``trust`` and ``policy`` are those of the :class:`plugbox.Runtime` the host
    owns (:attr:`runtime`); ``runtime_options`` are passed to it too (``cache_dir``,
    ``pooled_instances``, ...). ``max_workers`` bounds the threads that run ``concurrent``
    dispatches and ``background`` notifications. ``breaker`` (a :class:`plugbox.BreakerPolicy`,
    None: off) quarantines plugins whose calls keep failing (see :meth:`quarantine`).
    ``health_interval`` (seconds) runs the
    plugins' health checks on a schedule once :meth:`start` ran (None: only on demand and at
    loads and upgrades; see :meth:`check_health`).

    Usage::

        with plugbox.PluginHost(state_dir="state") as host:
            host.extension_point("text.analyze", version="1.2.0", mode="each")
            host.add("plugins/word-stats", priority=10)
            result = host.call("text.analyze", {"text": "a b a"})
            for answer in result.results: ...

    Thread-safe: see the module documentation.
    """

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        trust: TrustPolicy | None = None,
        policy: Policy | None = None,
        runtime_options: Mapping[str, Any] | None = None,
        max_workers: int = 4,
        state_url: str | os.PathLike[str] | None = None,
        safe_mode: bool | None = None,
        keep_versions: int = 3,
        health_interval: float | None = None,
        breaker: BreakerPolicy | None = BreakerPolicy(),
    ) -> None:
        if type(max_workers) is not int or not 1 <= max_workers <= 64:
            raise UsageError(f"max_workers must be an int from 1 to 64, not {max_workers!r}")
        options = dict(runtime_options or {})
        for reserved in ("state_dir", "trust", "policy", "router"):
            if reserved in options:
                raise UsageError(f"runtime_options may not set {reserved!r}: pass it to "
                                 f"PluginHost itself" if reserved != "router" else
                                 "runtime_options may not set 'router': the host is the "
                                 "router")
        self._router = HostRouter(self)
        runtime = _HostRuntime(state_dir=state_dir, trust=trust, policy=policy,
                               router=self._router, **options)
        runtime._host = weakref.ref(self)
        #: The Runtime that loads and runs the hosted plugins.
        self.runtime: Runtime = runtime
        self._lock = threading.RLock()
        self._tables = _Tables(points={}, functions={}, plugins=(), orders={})
        #: ``_tables.plans``, one attribute lookup closer for the C loop (set with _tables).
        self._plans: Mapping[str, _Plan] = {}
        self._added = 0
        self._workers = ThreadPoolExecutor(max_workers=max_workers,
                                           thread_name_prefix="plugbox-host",
                                           initializer=_mark_worker)
        self._pending = threading.BoundedSemaphore(MAX_BACKGROUND_PENDING)
        self._background_failures: deque[DispatchResult] = deque(
            maxlen=BACKGROUND_FAILURES_KEPT)
        self._closed = False
        # Lifecycle (issue 9): dispatches running per table generation, and swapped-out
        # plugins waiting for the older generations' dispatches to end.
        self._readers_lock = threading.Lock()
        self._readers: dict[int, int] = {}
        self._retired: list[tuple[int, Plugin]] = []
        # Metrics per extension point (see _run), when the runtime keeps metrics.
        self._metrics_on: bool = runtime.metrics_enabled
        self._point_stats: dict[str, PointStats] = {}
        try:
            self._init_health(health_interval)
            self._init_breakers(breaker)
            self._init_lifecycle(state_url, safe_mode, keep_versions)
        except BaseException:
            self._workers.shutdown(wait=False)
            runtime.close()
            raise

    # -- declarations ----------------------------------------------------------------------

    def extension_point(
        self,
        name: str,
        *,
        version: str,
        payload: str = "json",
        input_schema: Mapping[str, Any] | bool | None = None,
        output_schema: Mapping[str, Any] | bool | None = None,
        mode: str = "each",
        failure: str = "isolate",
        fuel: int | None = None,
        deadline_ms: int | None = None,
        memory_bytes: int | None = None,
        background: bool = False,
        concurrent: bool = False,
        description: str = "",
        breaker: BreakerPolicy | None = None,
    ) -> ExtensionPoint:
        """Declare extension point ``name`` at semver ``version``; returns it.

        ``payload``: ``"json"`` (values, checked against ``input_schema``; results against
        ``output_schema``) or ``"bytes"``. ``mode``: ``each`` (every implementation in order,
        every result returned), ``first`` (until one returns non-null: JSON ``null``, or empty
        bytes, means "no answer"), ``pipeline`` (each gets the previous output; the value is
        the last output) or ``notify`` (results discarded; ``background=True`` returns at
        once and runs the dispatch on a worker thread). ``failure``: ``isolate`` (a failing
        plugin is recorded in :attr:`DispatchResult.failures`, the others still run) or
        ``propagate`` (the first failure is raised). ``fuel``/``deadline_ms`` tighten every
        implementation's limits for calls of this point, ``memory_bytes`` caps the memory of
        plugins implementing it (applied when they are added). ``concurrent=True`` (``each``,
        ``notify``) runs the implementations of one dispatch at the same time on the host's
        worker threads (results still in dispatch order; under ``propagate`` all of them run
        and the first failure in order is raised; nested in a worker thread, they run one by
        one). ``breaker`` gives the point its own :class:`plugbox.BreakerPolicy`: failures at
        this point then count against a breaker of each plugin at this point only (None: the
        host's breaker counts them). Raises :class:`plugbox.UsageError` on a bad argument or
        a name already declared.
        """
        point = ExtensionPoint.declare(
            name, version=version, payload=payload, input_schema=input_schema,
            output_schema=output_schema, mode=mode, failure=failure, fuel=fuel,
            deadline_ms=deadline_ms, memory_bytes=memory_bytes, background=background,
            concurrent=concurrent, description=description, breaker=breaker)
        with self._lock:
            self._check_open()
            existing = self._tables.points.get(name)
            if existing is not None:
                raise UsageError(f"extension point {name!r} is already declared "
                                 f"({_declared_by(existing)}); declare each point once")
            self._publish(points={**self._tables.points, name: point})
        return point

    def function(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        input_schema: Mapping[str, Any] | bool | None = None,
        output_schema: Mapping[str, Any] | bool | None = None,
        payload: str = "json",
        description: str = "",
    ) -> HostFunction:
        """Offer host function ``name`` to plugins (ABI 1.1 ``host.call``); returns it.

        ``handler(value)`` gets the decoded payload (JSON, checked against ``input_schema``;
        bytes for ``payload="bytes"``) and returns the result (checked against
        ``output_schema``); a handler with a parameter named ``plugin`` also gets the calling
        plugin's name. A plugin may call it when its manifest's ``permissions.functions``
        matches ``name`` (and the host's ``Policy.host_functions`` allows it). The guest sees
        a bad payload as ``invalid-input`` and an exception of the handler as ``failure``
        (logged on ``plugbox.host`` with the plugin and function); a handler may raise
        ``HostCallError(kind, message)`` to choose the error itself. Register functions
        before adding the plugins that ask for them.
        """
        function = HostFunction.declare(name, handler, input_schema=input_schema,
                                        output_schema=output_schema, payload=payload,
                                        description=description)
        with self._lock:
            self._check_open()
            if name in self._tables.functions:
                raise UsageError(f"host function {name!r} is already registered")
            self._publish(functions={**self._tables.functions, name: function})
        return function

    # -- plugins ---------------------------------------------------------------------------

    def add(
        self,
        source: str | os.PathLike[str],
        *,
        priority: int = 0,
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> HostedPlugin:
        """Verify and load the plugin at ``source`` (a plugin directory, its ``plugbox.json``
        or a ``.plugbox`` package) through the runtime, and host it.

        Refused before anything is compiled, with a :class:`plugbox.VerificationError`:
        a plugin implementing a point the host does not declare, or a version it does not
        offer (:class:`plugbox.IncompatiblePointError`, naming the point and the versions on
        offer); one declaring a point that exists already (the same error); one whose
        ``permissions.functions`` names functions the host never registered
        (:class:`plugbox.PolicyViolationError`, ``permission="functions"``); one whose
        ``before``/``after`` constraints close a cycle (:class:`plugbox.OrderCycleError`,
        naming the plugins). Then every check of :meth:`plugbox.Runtime.load`. ``priority``
        orders it among the implementations of each point (higher first; ``before``/
        ``after`` constraints win over it, add order breaks ties); ``config`` is its
        configuration; ``enabled=False`` loads it but does not dispatch to it.
        """
        if type(priority) is not int:
            raise UsageError(f"priority must be an int, not {priority!r}")
        self._check_open()
        path = Path(source)
        with staged_plugin(path) as staged:
            # The runtime's order: cheap bounds, signatures, then the schema.
            read = read_manifest(staged)
            self.runtime.trust.check(read)
            early = validate_manifest(read)
        with self._lock:
            self._admit(early)  # cheap checks first: nothing compiled for a refused plugin
        plugin = self.runtime.load(path, config=dict(config or {}))
        try:
            with self._lock:
                self._check_open()
                self._admit(plugin.manifest)
                self._added += 1
                hosted = HostedPlugin(name=plugin.name, plugin=plugin, priority=priority,
                                      manifest=plugin.manifest, source=path,
                                      enabled=bool(enabled), config=dict(config or {}),
                                      index=self._added)
                points = dict(self._tables.points)
                for name, spec in plugin.manifest.extension_points.items():
                    points[name] = ExtensionPoint.declare(
                        name, version=spec.version, mode=spec.mode, failure=spec.failure,
                        input_schema=spec.input_schema, output_schema=spec.output_schema,
                        description=spec.description, owner=plugin.name)
                self._publish(points=points, plugins=(*self._tables.plugins, hosted))
        except BaseException:
            plugin.close()
            raise
        _log.info("host: added plugin %s %s (priority %d%s)", plugin.name, plugin.version,
                  priority, "" if enabled else ", disabled")
        return hosted

    def _admit(self, manifest: Manifest, tables: _Tables | None = None) -> None:
        """Refuse ``manifest`` if it cannot join the plugins hosted now, or those of
        ``tables`` (lock held)."""
        tables = self._tables if tables is None else tables
        name = manifest.name
        if any(hp.name == name for hp in tables.plugins):
            raise UsageError(f"a plugin named {name!r} is already added to this host; remove "
                             f"it first (host.remove({name!r}))", plugin=name)
        for point, spec in manifest.extension_points.items():
            existing = tables.points.get(point)
            if existing is not None:
                raise IncompatiblePointError(
                    f"plugin {name!r} declares extension point {point!r} "
                    f"($.extension_points in {manifest.path}), which is already declared "
                    f"({_declared_by(existing)}); rename the point", plugin=name, point=point,
                    versions=(existing.version,))
        for point, impl in manifest.implements.items():
            declared = tables.points.get(point)
            if declared is None:
                offered = ", ".join(sorted(tables.points)) or "none"
                raise IncompatiblePointError(
                    f"plugin {name!r} implements extension point {point!r} ($.implements in "
                    f"{manifest.path}), which this host does not declare (declared points: "
                    f"{offered}); declare it with host.extension_point({point!r}, ...), add "
                    f"the plugin declaring it first, or remove it from $.implements",
                    plugin=name, point=point)
            if impl.versions and not impl.accepts(declared.version):
                raise IncompatiblePointError(
                    f"plugin {name!r} implements extension point {point!r} versions "
                    f"{impl.versions} ($.implements[{json.dumps(point)}].versions in "
                    f"{manifest.path}), but this host offers {point!r} version "
                    f"{declared.version} only; update the plugin for {declared.version}, or "
                    f"widen its specifier", plugin=name, point=point,
                    versions=(declared.version,))
        for pattern in manifest.permissions.functions:
            if not any(fnmatch.fnmatchcase(fn, pattern) for fn in tables.functions):
                offered = ", ".join(sorted(tables.functions)) or "none"
                raise PolicyViolationError(
                    f"plugin {name!r} requests host functions {pattern!r} "
                    f"($.permissions.functions in {manifest.path}), but this host registers "
                    f"no function matching it (registered: {offered}); register it with "
                    f"host.function(...) before adding the plugin, or remove the request",
                    plugin=name, permission="functions")
        for point, impl in manifest.implements.items():
            # Only the constraints matter for a cycle, not the priorities.
            entries: list[_Impl | _Probe] = [*self._implementations(tables.plugins, point),
                                             _Probe(name, (0, 0), impl.before, impl.after)]
            try:
                dispatch_order(entries)
            except Cycle as exc:
                on_it = ", ".join(sorted(set(exc.plugins)))
                raise OrderCycleError(
                    f"plugin {name!r} cannot be added: the before/after constraints on "
                    f"extension point {point!r} would form a cycle ({' -> '.join(exc.plugins)} "
                    f"runs before itself); remove one of the constraints "
                    f"($.implements[{json.dumps(point)}].before/after) of {on_it}",
                    plugin=name, point=point, plugins=exc.plugins[:-1]) from None

    @staticmethod
    def _implementations(plugins: tuple[HostedPlugin, ...], point: str) -> list[_Impl]:
        return [_Impl(hp, hp.manifest.implements[point]) for hp in plugins
                if point in hp.manifest.implements]

    def _memory_cap(self, manifest: Manifest) -> tuple[int, str] | None:
        """(cap, point) of the tightest ``memory_bytes`` among the points ``manifest``
        implements, or None."""
        caps = [(p.memory_bytes, p.name) for p in (self._tables.points.get(n)
                                                   for n in manifest.implements)
                if p is not None and p.memory_bytes is not None]
        return min(caps) if caps else None

    def remove(self, name: str) -> None:
        """Stop hosting plugin ``name`` and close it (calls in flight fail with
        :class:`plugbox.ClosedError`). Refused (:class:`plugbox.UsageError`) while other
        plugins implement an extension point it declares."""
        with self._lock:
            hosted = self.get(name)
            if hosted is None:
                raise UsageError(f"no plugin named {name!r} is added to this host (added: "
                                 f"{', '.join(hp.name for hp in self._tables.plugins) or 'none'})")
            owned = set(hosted.manifest.extension_points)
            users = sorted(hp.name for hp in self._tables.plugins
                           if hp is not hosted and owned & set(hp.manifest.implements))
            if users:
                raise UsageError(f"plugin {name!r} declares extension points that "
                                 f"{', '.join(users)} implement; remove those first",
                                 plugin=name)
            self._publish(
                points={k: v for k, v in self._tables.points.items() if k not in owned},
                plugins=tuple(hp for hp in self._tables.plugins if hp is not hosted))
        hosted.plugin.close()
        _log.info("host: removed plugin %s", name)

    def get(self, name: str) -> HostedPlugin | None:
        """The hosted plugin called ``name``, or None."""
        for hosted in self._tables.plugins:
            if hosted.name == name:
                return hosted
        return None

    @property
    def plugins(self) -> tuple[HostedPlugin, ...]:
        """The hosted plugins in the default order: higher priority first, then add order
        (each point's dispatch order also honours ``before``/``after``:
        :meth:`implementations`)."""
        return tuple(sorted(self._tables.plugins, key=lambda hp: hp.key))

    @property
    def points(self) -> Mapping[str, ExtensionPoint]:
        """The declared extension points (the host's and the plugins'), by name."""
        return dict(self._tables.points)

    @property
    def functions(self) -> Mapping[str, HostFunction]:
        """The registered host functions, by name."""
        return dict(self._tables.functions)

    def implementations(self, point: str) -> tuple[HostedPlugin, ...]:
        """The plugins implementing ``point``, in dispatch order (disabled ones included)."""
        tables = self._tables
        self._point(tables, point)
        return tuple(entry.hosted for entry in tables.orders.get(point, ()))

    def _publish(self, *, points: Mapping[str, ExtensionPoint] | None = None,
                 functions: Mapping[str, HostFunction] | None = None,
                 plugins: tuple[HostedPlugin, ...] | None = None) -> None:
        """Replace the snapshot (lock held), recomputing every point's dispatch order."""
        old = self._tables
        points = old.points if points is None else points
        plugins = old.plugins if plugins is None else plugins
        orders = {name: tuple(dispatch_order(self._implementations(plugins, name)))
                  for name in points}
        active: dict[str, tuple[_Impl, ...]] = {}
        blocked: dict[str, tuple[tuple[str, QuarantinedError], ...]] = {}
        probing: dict[str, frozenset[str]] = {}
        for name, order in orders.items():
            enabled = tuple(e for e in order if e.hosted.enabled)
            active[name], out, probe = self._blocked(name, enabled)
            if out:
                blocked[name] = out
            if probe:
                probing[name] = probe
        gen = old.gen + 1
        plans = {name: self._plan(spec, active.get(name, ()), gen,
                                  name in blocked or name in probing)
                 for name, spec in points.items()}
        self._tables = _Tables(points=points,
                               functions=old.functions if functions is None else functions,
                               plugins=plugins, orders=orders, active=active,
                               gen=gen, blocked=blocked, probing=probing, plans=plans)
        # After _tables: a C dispatch reading the old plans in between counts the old
        # generation, which _retire (after this publish) sees.
        self._plans = plans

    def _plan(self, spec: ExtensionPoint, entries: tuple[_Impl, ...], gen: int,
              held: bool) -> _Plan:
        """The plan of ``spec`` over ``entries`` for table generation ``gen`` (lock held);
        ``held``: some implementations are quarantined or due a probe."""
        fast = (spec.mode in _PLAN_MODES and not spec.background and not held
                and not (spec.concurrent and len(entries) > 1))
        kwargs: list[tuple[int | None, int | None] | None] = []
        for entry in entries:
            if spec.fuel is None and spec.deadline_ms is None:
                kwargs.append(None)
                continue
            limits = entry.hosted.plugin.limits
            kwargs.append((None if spec.fuel is None else min(spec.fuel, limits.fuel),
                           None if spec.deadline_ms is None
                           else min(spec.deadline_ms, limits.deadline_ms)))
        stats = counters = None
        if self._metrics_on:
            stats = self._point_stats.get(spec.name)
            if stats is None:
                stats = self._point_stats.setdefault(spec.name, PointStats())
            counters = tuple(stats.counter(entry.name) for entry in entries)
        return _Plan(
            fast=fast, gen=gen, point=spec.name, mode=_PLAN_MODES.get(spec.mode, -1),
            mode_name=spec.mode, json=spec.payload == "json",
            calls=tuple(entry.hosted.plugin.call for entry in entries),
            hooks=tuple(entry.impl.hook for entry in entries),
            names=tuple(entry.name for entry in entries),
            kwargs=tuple(kwargs),
            host_names=tuple(entry.names if entry.calls_host else None for entry in entries),
            chain=(spec.name,),
            needs_chain=any(_sees_chain(entry) for entry in entries),
            runtime=self.runtime,
            counters=None if counters is None else tuple(map(ctypes.addressof, counters)),
            dispatch_slots=None if stats is None else stats.dispatch.address,
            # Unbound: the host comes as the first argument (no cycle through the plans).
            encode=functools.partial(_plan_encode, spec),
            decode=functools.partial(_plan_decode, spec, entries),
            failed=functools.partial(_plan_failed, spec, entries, stats),
            readers=self._readers,
            spec=spec, entries=entries, stats=stats, counter_objs=counters)

    # -- dispatch --------------------------------------------------------------------------

    def call(self, point: str, payload: Any = None) -> DispatchResult:
        """Dispatch ``point`` with ``payload`` (a JSON value, or bytes for a bytes point)
        to the enabled plugins implementing it, in order, as the point's mode and failure
        policy say; see :meth:`extension_point` and :class:`DispatchResult`.

        Raises :class:`plugbox.PayloadError` when the payload does not fit the point (the
        input schema's JSON path in the message), :class:`plugbox.UsageError` for an unknown
        point, the first plugin failure under ``propagate``, and
        :class:`plugbox.ReentrantDispatchError` for a dispatch nested in its own (a host
        function dispatching the point that called it). Thread-safe.
        """
        if _C is not None:  # the C loop runs what its plan covers, else NotImplemented
            got: DispatchResult = _C.dispatch(self, point, payload)
            if got is not NotImplemented:
                return got
        if self._closed:
            self._check_open()
        tables = self._enter()
        try:
            plan = tables.plans.get(point)
            if _C is None and plan is not None and plan.fast and not _POINTS.get() \
                    and not _PLUGINS.get():
                return self._run_plan(plan, payload)
            spec = tables.points.get(point)
            if spec is None:
                spec = self._point(tables, point)
            # bytes in, bytes to the plugins: nothing to encode or check
            data = payload if type(payload) is bytes and spec.payload == "bytes" else (
                self._encode(spec, payload))
            return self._dispatch(tables, spec, data, None)
        finally:
            self._leave(tables.gen)

    def _point(self, tables: _Tables, point: str) -> ExtensionPoint:
        spec = tables.points.get(point)
        if spec is None:
            if self._closed:
                self._check_open()
            raise UsageError(f"no extension point {point!r} is declared on this host "
                             f"(declared: {', '.join(sorted(tables.points)) or 'none'})")
        return spec

    def _encode(self, spec: ExtensionPoint, payload: Any) -> bytes:
        """The payload as the bytes plugins get, checked against the input schema."""
        where = f"extension point {spec.name!r}"
        if spec.payload == "bytes":
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise PayloadError(f"{where} carries bytes; the payload must be bytes, not "
                                   f"{type(payload).__name__}", point=spec.name)
            return bytes(payload)
        try:
            data = _dumps(payload)
        except (TypeError, ValueError, RecursionError) as exc:
            raise PayloadError(f"{where}: the payload is not JSON-serialisable: {exc}",
                               point=spec.name) from None
        if spec._input is not None:
            error = spec._input.error(payload)
            if error is not None:
                raise PayloadError(f"{where}: the payload is invalid at {error[0]}: {error[1]} "
                                   f"(the point's input_schema requires this)",
                                   point=spec.name, json_path=error[0])
        return data

    def _dispatch(self, tables: _Tables, spec: ExtensionPoint, data: bytes,
                  caller: str | None) -> DispatchResult:
        chain = _POINTS.get()
        if chain and spec.name in chain:
            path = " -> ".join((*chain, spec.name))
            raise ReentrantDispatchError(
                f"extension point {spec.name!r} is dispatched from within its own dispatch "
                f"({path}); a point cannot be re-entered: dispatch it after the outer "
                f"dispatch returns", point=spec.name, plugin=caller)
        if len(chain) >= MAX_DISPATCH_DEPTH:
            raise ReentrantDispatchError(
                f"extension point {spec.name!r}: dispatches nest more than "
                f"{MAX_DISPATCH_DEPTH} deep ({' -> '.join(chain)}); flatten the chain",
                point=spec.name, plugin=caller)
        entries = tables.active.get(spec.name, ())
        blocked = tables.blocked.get(spec.name, ()) if tables.blocked else ()
        probing = tables.probing.get(spec.name) if tables.probing else None
        if spec.background:
            if not self._pending.acquire(blocking=False):
                _log.warning("extension point %r: %d background dispatches are pending; "
                             "this one is dropped", spec.name, MAX_BACKGROUND_PENDING)
                return DispatchResult(spec.name, spec.mode)
            context = contextvars.copy_context()
            self._hold(tables.gen)  # the entries stay in use until the dispatch ran
            try:
                self._workers.submit(context.run, self._background, spec, entries, data,
                                     caller, tables.gen, blocked, probing)
            except RuntimeError:  # the host is closing
                self._pending.release()
                self._leave(tables.gen)
                self._check_open()
                raise
            return DispatchResult(spec.name, spec.mode)
        token = _POINTS.set((*chain, spec.name))
        try:
            return self._run(spec, entries, data, caller, blocked, probing)
        finally:
            _POINTS.reset(token)

    def _background(self, spec: ExtensionPoint, entries: tuple[_Impl, ...], data: bytes,
                    caller: str | None, gen: int,
                    blocked: tuple[tuple[str, QuarantinedError], ...] = (),
                    probing: frozenset[str] | None = None) -> None:
        try:
            with _entered(_POINTS, (*_POINTS.get(), spec.name)):
                result = self._run(spec, entries, data, caller, blocked, probing)
        except PlugboxError as exc:  # propagate: the first failure stopped the dispatch
            result = DispatchResult(spec.name, spec.mode,
                                    failures=[Failure(exc.plugin or "?", exc)])
            _log.warning("extension point %r (background): %s", spec.name, exc)
        except BaseException:  # pragma: no cover - a bug; never lost silently
            _log.exception("extension point %r (background): dispatch failed", spec.name)
            return
        finally:
            self._pending.release()
            self._leave(gen)
        if result.failures:
            self._background_failures.append(result)

    @property
    def router(self) -> HostRouter:
        """The router the runtime sends the plugins' ``host.call`` and ``host.dispatch`` to
        (``Runtime(router=...)``); call it directly to act as a guest would."""
        return self._router

    @property
    def background_failures(self) -> tuple[DispatchResult, ...]:
        """The latest background ``notify`` dispatches that had failures (at most
        :data:`BACKGROUND_FAILURES_KEPT`, oldest first); each failure is also logged."""
        return tuple(self._background_failures)

    def metrics(self) -> Metrics:
        """A snapshot of the metrics (:class:`plugbox.Metrics`): every hosted plugin's
        :class:`plugbox.PluginMetrics` by name, and every dispatched extension point's
        :class:`plugbox.PointMetrics`. See docs/monitoring.md."""
        plugins = {hp.name: hp.plugin.metrics() for hp in self._tables.plugins}
        points = {name: stats.snapshot(name) for name, stats in list(self._point_stats.items())
                  if stats.used}
        return Metrics(plugins=plugins, points=points)

    def _run(self, spec: ExtensionPoint, entries: tuple[_Impl, ...], data: bytes,
             caller: str | None, blocked: tuple[tuple[str, QuarantinedError], ...] = (),
             probing: frozenset[str] | None = None) -> DispatchResult:
        """Run the dispatch; with metrics on, counted and timed for its extension point."""
        if not self._metrics_on:
            return self._run_entries(spec, entries, data, caller, blocked, probing)
        stats = self._point_stats.get(spec.name)
        if stats is None:
            stats = self._point_stats.setdefault(spec.name, PointStats())
        started = _monotonic()
        try:
            result = self._run_entries(spec, entries, data, caller, blocked, probing)
        except PlugboxError as exc:  # under propagate
            stats.failed(exc.plugin or "?", exc)
            raise
        finally:
            _fastpath.observe(stats.dispatch.address, started)  # one C call: clock, bucket
        for failure in result.failures:
            stats.failed(failure.plugin, failure.error)
        return result

    def _run_entries(self, spec: ExtensionPoint, entries: tuple[_Impl, ...], data: bytes,
                     caller: str | None, blocked: tuple[tuple[str, QuarantinedError], ...] = (),
                     probing: frozenset[str] | None = None) -> DispatchResult:
        active = _PLUGINS.get()
        if caller:
            active = active | {caller}
        mode = spec.mode
        results: list[Result] = []
        failures: list[Failure] = []
        value: Any = None
        if blocked:  # quarantined plugins: the failure policy decides what the caller sees
            if spec.failure == "propagate":
                raise blocked[0][1]
            failures.extend(Failure(name, error) for name, error in blocked)
        if spec.concurrent and len(entries) > 1 and not getattr(_WORKER, "active", False):
            futures: list[Future[tuple[bool, Any]]] = [
                self._workers.submit(contextvars.copy_context().run, self._attempt, spec,
                                     entry, data, active)
                for entry in entries]
            for entry, future in zip(entries, futures):
                ok, got = future.result()
                if not ok:
                    self._failed(spec, entry, got, failures)
                    continue
                if probing and entry.name in probing:
                    self._note_success(spec, entry)
                if mode != "notify":
                    results.append(Result(entry.name, got))
            return DispatchResult(spec.name, mode, value, results, failures)
        # In order: the hot path, kept free of per-call closures and context managers.
        invoke = self._invoke
        payload = data
        for entry in entries:
            probe = probing is not None and entry.name in probing
            if probe and not self._note_probe(spec, entry):
                continue  # another dispatch makes the probe call
            try:
                if entry.name in active:
                    raise self._reentered(spec, entry)
                got = invoke(spec, entry, payload, active)
            except PlugboxError as exc:
                self._failed(spec, entry, exc, failures)
                continue
            if probe:
                self._note_success(spec, entry)
            if mode == "first":
                if got is not None:
                    results.append(Result(entry.name, got))
                    value = got
                    break
            elif mode != "notify":
                results.append(Result(entry.name, got))
                if mode == "pipeline":
                    value = got
                    payload = got if spec.payload == "bytes" else _dumps(got)
        if mode == "pipeline" and not results:
            value = data if spec.payload == "bytes" else json.loads(data)
        return DispatchResult(spec.name, mode, value, results, failures)

    # -- the planned dispatch: _speedups.dispatch in C, _run_plan its pure-Python twin --------

    def _run_plan(self, plan: _Plan, payload: Any) -> DispatchResult:
        """Run a fast plan (top-level dispatch, reader counted by the caller): the same steps
        as ``_speedups.dispatch`` after its reader count, in the same order."""
        data = (payload if not plan.json and type(payload) is bytes
                else plan.encode(self, payload))
        token = (_POINTS.set(plan.chain) if plan.needs_chain or plan.runtime._monitors
                 else None)
        stats = plan.stats
        started = _monotonic() if stats is not None else 0.0
        try:
            return self._plan_loop(plan, data)
        finally:
            if token is not None:
                _POINTS.reset(token)
            if stats is not None:
                _fastpath.observe(stats.dispatch.address, started)

    def _plan_loop(self, plan: _Plan, data: bytes) -> DispatchResult:
        mode, counters = plan.mode, plan.counter_objs
        results: list[Result] = []
        failures: list[Failure] = []
        value: Any = None
        for i, call in enumerate(plan.calls):
            name = plan.names[i]
            if counters is not None:
                counters[i].value += 1
            own = plan.host_names[i]
            token = _PLUGINS.set(own) if own is not None else None
            kw = plan.kwargs[i]
            try:
                try:
                    raw = (call(plan.hooks[i], data) if kw is None else
                           call(plan.hooks[i], data, fuel=kw[0], deadline_ms=kw[1]))
                finally:
                    if token is not None:
                        _PLUGINS.reset(token)
                if plan.json:
                    got = plan.decode(self, i, raw)
                else:
                    got = None if mode == 1 and not raw else raw
            except PlugboxError as exc:
                plan.failed(self, i, exc, failures)
                continue
            if mode == 2 or (mode == 1 and got is None):
                continue
            results.append(Result(name, got))
            if mode == 1:
                value = got
                break
        return DispatchResult(plan.point, plan.mode_name, value, results, failures)

    def _plan_failed(self, spec: ExtensionPoint, entries: tuple[_Impl, ...],
                     stats: PointStats | None, i: int, exc: PlugboxError,
                     failures: list[Failure]) -> None:
        """A plan's failure step (``_Plan.failed``): the breaker counts it, then it is
        recorded (isolate) or raised (propagate), and the point's metrics count it."""
        try:
            self._failed(spec, entries[i], exc, failures)
        except PlugboxError as raised:
            if stats is not None:
                stats.failed(raised.plugin or "?", raised)
            raise
        if stats is not None:
            stats.failed(entries[i].name, exc)

    def _attempt(self, spec: ExtensionPoint, entry: _Impl, payload: bytes,
                 active: frozenset[str]) -> tuple[bool, Any]:
        """(ok, value or error) of one implementation, errors typed (concurrent dispatch)."""
        try:
            if entry.name in active:
                raise self._reentered(spec, entry)
            return True, self._invoke(spec, entry, payload, active)
        except PlugboxError as exc:
            return False, exc

    @staticmethod
    def _reentered(spec: ExtensionPoint, entry: _Impl) -> ReentrantDispatchError:
        return ReentrantDispatchError(
            f"plugin {entry.name!r} implements extension point {spec.name!r}, but a call of "
            f"its own is still running on this dispatch chain (it dispatched into itself, "
            f"directly or through other plugins); it is skipped for this dispatch",
            point=spec.name, plugin=entry.name)

    def _failed(self, spec: ExtensionPoint, entry: _Impl, exc: PlugboxError,
                failures: list[Failure]) -> None:
        """Count the failure against the plugin's breaker, then record it (isolated) or raise
        it (``propagate``)."""
        self._note_failure(spec, entry, exc)
        if spec.failure == "propagate":
            exc.add_note(f"(while dispatching extension point {spec.name!r}, failure "
                         f"policy 'propagate')")
            raise exc
        _log.warning("extension point %r: plugin %r failed (isolated): %s", spec.name,
                     entry.name, exc)
        failures.append(Failure(entry.name, exc))

    def _invoke(self, spec: ExtensionPoint, entry: _Impl, payload: bytes,
                active: frozenset[str]) -> Any:
        """Call one implementation; its decoded, checked result."""
        plugin = entry.hosted.plugin
        hook = entry.impl.hook
        limits = plugin.limits
        fuel = min(spec.fuel, limits.fuel) if spec.fuel is not None else None
        deadline = (min(spec.deadline_ms, limits.deadline_ms) if spec.deadline_ms is not None
                    else None)
        if self._metrics_on:
            stats = self._point_stats.get(spec.name)
            if stats is None:  # call_plugin: a call that is not part of a dispatch
                stats = self._point_stats.setdefault(spec.name, PointStats())
            stats.count_call(entry.name)
        if entry.calls_host:
            token = _PLUGINS.set(active | entry.names)
            try:
                raw = plugin.call(hook, payload, fuel=fuel, deadline_ms=deadline)
            finally:
                _PLUGINS.reset(token)
        else:
            raw = plugin.call(hook, payload, fuel=fuel, deadline_ms=deadline)
        if spec.payload == "bytes":
            return raw if raw or spec.mode != "first" else None
        return self._result_of(spec, entry, raw)

    @staticmethod
    def _result_of(spec: ExtensionPoint, entry: _Impl, raw: bytes) -> Any:
        """The decoded result of ``entry`` at JSON point ``spec``, checked against its output
        schema (InvalidResultError: the plugin's failure)."""
        hook = entry.impl.hook
        try:
            value = json.loads(raw) if raw else None
        except ValueError as exc:
            where = _where_in(entry.name, spec.name, hook)
            raise InvalidResultError(f"{where}: the result is not JSON ({exc})",
                                     plugin=entry.name, hook=hook, point=spec.name) from None
        if spec._output is not None and spec.mode != "notify" and not (
                spec.mode == "first" and value is None):
            error = spec._output.error(value)
            if error is not None:
                where = _where_in(entry.name, spec.name, hook)
                raise InvalidResultError(
                    f"{where}: the result is invalid at {error[0]}: {error[1]} (the point's "
                    f"output_schema requires this); the plugin's result counts as a failure",
                    plugin=entry.name, hook=hook, point=spec.name, json_path=error[0])
        return value

    # -- lifetime --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this PluginHost is closed; create a new one")

    def close(self) -> None:
        """Wait for running background dispatches (queued ones are dropped), then close every
        plugin and the runtime. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # No more planned dispatches: from now on every call takes the checked path.
            self._tables = dataclasses.replace(self._tables, plans={})
            self._plans = {}
        self._stop_health_schedule()
        self._stop_breakers()
        self._workers.shutdown(wait=True, cancel_futures=True)
        self.runtime.close()
        self.store.close()
        self._op_lock.close()
        with self._readers_lock:
            self._retired.clear()
        # The closed plugins refer to the runtime: let go of them, so dropping the host frees
        # everything at once.
        with self._lock:
            self._tables = _Tables(points=self._tables.points, functions={}, plugins=(),
                                   orders={})

    def __enter__(self) -> PluginHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        tables = self._tables
        return (f"<plugbox.PluginHost {len(tables.plugins)} plugins, {len(tables.points)} "
                f"extension points, {len(tables.functions)} functions>")

    # -- async calls, one plugin, discovery (issue 8 §4, §5) --------------------------------

    async def acall(self, point: str, payload: Any = None) -> DispatchResult:
        """:meth:`call` for asyncio hosts: the dispatch runs on a worker thread, so the event
        loop keeps running while the plugins do.

        Cancelling the awaiting task interrupts this dispatch's plugin calls in progress (on
        the host's worker threads too, for a ``concurrent`` point) within a few epoch ticks,
        and the implementations it has not reached yet never start; their instances go back
        to the pools, and other dispatches run on. The task's
        :class:`asyncio.CancelledError` propagates once the calls have stopped. A
        ``background`` point returns at once, as with :meth:`call`, and its dispatch is not
        cancelled with the task. Raises what :meth:`call` raises.
        """
        self._check_open()
        result: DispatchResult = await run_cancellable(self.runtime.engine, self.call, point,
                                                       payload)
        return result

    def call_plugin(self, point: str, name: str, payload: Any = None) -> Any:
        """Call plugin ``name``'s implementation of ``point`` alone, as a dispatch would call
        it: the payload checked against the point's input schema, the point's limits, the
        result decoded (None for an empty result) and checked against its output schema.

        For adapters that order and combine results themselves
        (:mod:`plugbox.integrations.pluggy`). The plugin's failure is raised whatever the
        point's failure policy; :class:`plugbox.UsageError` for an unknown point or plugin,
        a plugin that does not implement the point, or a disabled one.
        """
        tables = self._enter()
        try:
            return self._call_plugin(tables, point, name, payload)
        finally:
            self._leave(tables.gen)

    def _call_plugin(self, tables: _Tables, point: str, name: str, payload: Any) -> Any:
        spec = self._point(tables, point)
        hosted = next((hp for hp in tables.plugins if hp.name == name), None)
        if hosted is None:
            raise UsageError(f"no plugin named {name!r} is added to this host (added: "
                             f"{', '.join(hp.name for hp in tables.plugins) or 'none'})")
        impl = hosted.manifest.implements.get(point)
        if impl is None:
            raise UsageError(f"plugin {name!r} does not implement extension point {point!r} "
                             f"(it implements: "
                             f"{', '.join(sorted(hosted.manifest.implements)) or 'none'})",
                             plugin=name)
        if not hosted.enabled:
            raise UsageError(f"plugin {name!r} is disabled on this host", plugin=name)
        active = _PLUGINS.get()
        if name in active:
            raise ReentrantDispatchError(
                f"plugin {name!r} is called for extension point {point!r} while a call of its "
                f"own is still running on this chain", point=point, plugin=name)
        return self._invoke(spec, _Impl(hosted, impl), self._encode(spec, payload), active)

    def discover(
        self,
        directories: Iterable[str | os.PathLike[str]] = (),
        *,
        paths: Iterable[str | os.PathLike[str]] = (),
        entry_points: bool = False,
        search_path: Sequence[str | os.PathLike[str]] | None = None,
        limits: DiscoveryLimits = DiscoveryLimits(),
    ) -> DiscoveryReport:
        """Find plugins without adding them (manifests only: nothing is verified, compiled or
        run); see :func:`plugbox.host.discover` for the places searched and the entry-point
        convention. Add the ones you want with :meth:`add_discovered` or :meth:`add`."""
        self._check_open()
        return discover(directories, paths=paths, entry_points=entry_points,
                        search_path=search_path, limits=limits)

    def add_discovered(
        self,
        found: DiscoveryReport | Iterable[DiscoveredPlugin],
        *,
        only: Iterable[str] | None = None,
        priority: Mapping[str, int] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> AddedPlugins:
        """:meth:`add` each discovered plugin, in the order found; a plugin the host refuses
        is reported, not raised, and the others are still added.

        ``only`` is an enable list of plugin names (default: all); ``priority`` and
        ``config`` give per-plugin priorities (default 0) and configurations by name. A
        plugin already hosted from the same source is skipped quietly (so a plugins folder
        can be rescanned). Returns :class:`~plugbox.host.AddedPlugins`: the plugins added and
        every problem, the discovery report's included.
        """
        problems: list[DiscoveryProblem] = []
        if isinstance(found, DiscoveryReport):
            problems.extend(found.problems)
            candidates: Iterable[DiscoveredPlugin] = found.candidates
        else:
            candidates = found
        wanted = None if only is None else set(only)
        priority, config = priority or {}, config or {}
        added: list[HostedPlugin] = []
        seen: set[str] = set()
        for candidate in candidates:
            seen.add(candidate.name)
            if wanted is not None and candidate.name not in wanted:
                continue
            hosted = self.get(candidate.name)
            if hosted is not None and self._same_source(hosted.source, candidate.source):
                continue
            try:
                added.append(self.add(candidate.source,
                                      priority=priority.get(candidate.name, 0),
                                      config=config.get(candidate.name)))
            except PlugboxError as exc:
                _log.warning("host: plugin %r from %s (%s) was not added: %s", candidate.name,
                             candidate.source, candidate.origin, exc)
                problems.append(DiscoveryProblem(candidate.source, candidate.origin, exc))
        for name in sorted((wanted or set()) - seen):
            problems.append(DiscoveryProblem(Path(name), "enable list", UsageError(
                f"plugin {name!r} is in the enable list but discovery did not find it")))
        return AddedPlugins(tuple(added), tuple(problems))

    @staticmethod
    def _same_source(a: Path, b: Path) -> bool:
        try:
            return a.resolve() == b.resolve()
        except (OSError, RuntimeError):
            return False


    # -- lifecycle: readers of each table generation (issue 9 §6) ---------------------------
    #
    # A dispatch registers as a reader of the table generation it reads; a plugin swapped out
    # (upgrade, rollback, config change, uninstall) is closed once no reader of an older
    # generation is left, so calls in flight finish on it and no call finds it closed.

    #
    # With the C extension the counts change only in C, under the GIL, without the lock
    # (see the dispatch section of _speedups.c); without it, under _readers_lock. Never both
    # at once (use_c_dispatch switches between dispatches only).

    def _enter(self) -> _Tables:
        if _C is not None:
            tables: _Tables = _C.readers_enter(self)
            return tables
        with self._readers_lock:
            tables = self._tables
            self._readers[tables.gen] = self._readers.get(tables.gen, 0) + 1
        return tables

    def _hold(self, gen: int) -> None:
        if _C is not None:
            _C.readers_hold(self, gen)
            return
        with self._readers_lock:  # gen has a reader already: the caller
            self._readers[gen] += 1

    def _drain(self) -> None:
        """The last reader of an old generation left (C counts): close the retired plugins
        no reader can still be using."""
        with self._readers_lock:
            done = self._take_drained()
        for plugin in done:
            plugin.close()

    def _take_drained(self) -> list[Plugin]:
        """Under ``_readers_lock``: the retired plugins that no reader can still be using
        (retired at or before the oldest generation read), removed from ``_retired``."""
        if not self._retired:
            return []
        oldest = min(self._readers, default=None)
        done = [p for g, p in self._retired if oldest is None or oldest >= g]
        if done:
            self._retired = [(g, p) for g, p in self._retired
                             if not (oldest is None or oldest >= g)]
        return done

    def _leave(self, gen: int) -> None:
        if _C is not None:
            _C.readers_leave(self, gen)
            return
        with self._readers_lock:
            left = self._readers[gen] - 1
            if left:
                self._readers[gen] = left
            else:
                del self._readers[gen]
            done = self._take_drained()
        for plugin in done:
            plugin.close()

    def _replace_hosted(self, old: HostedPlugin, new: HostedPlugin) -> None:
        """Serve ``new`` instead of ``old`` from the next dispatch on (one publish), then
        retire ``old``'s plugin. Raises what :meth:`_admit` raises (nothing changed then)."""
        with self._lock:
            self._check_open()
            tables = self._tables
            if old not in tables.plugins:
                raise UsageError(f"plugin {old.name!r} changed meanwhile; retry", plugin=old.name)
            owned = set(old.manifest.extension_points)
            rest = _Tables(points={k: v for k, v in tables.points.items() if k not in owned},
                           functions=tables.functions,
                           plugins=tuple(hp for hp in tables.plugins if hp is not old),
                           orders={}, gen=tables.gen)
            self._admit(new.manifest, rest)
            points = dict(rest.points)
            for name, spec in new.manifest.extension_points.items():
                points[name] = ExtensionPoint.declare(
                    name, version=spec.version, mode=spec.mode, failure=spec.failure,
                    input_schema=spec.input_schema, output_schema=spec.output_schema,
                    description=spec.description, owner=new.name)
            self._publish(points=points, plugins=tuple(new if hp is old else hp
                                                       for hp in tables.plugins))
        if old.plugin is not new.plugin:
            self._retire(old.plugin)

    def _load_beside(self, old: HostedPlugin, path: Path, config: Mapping[str, Any],
                     enabled: bool) -> HostedPlugin:
        """Load the plugin at ``path`` to replace ``old`` (verified, admitted as if ``old``
        were gone, compiled, on-init run): not served until :meth:`_replace_hosted`."""
        with staged_plugin(path) as staged:
            early = validate_manifest(read_manifest(staged))
        with self._lock:
            self._admit_beside(old, early)
        plugin = self.runtime.load(path, config=dict(config))
        return HostedPlugin(name=plugin.name, plugin=plugin, priority=old.priority,
                            manifest=plugin.manifest, source=path, enabled=enabled,
                            config=dict(config), index=old.index)

    def _admit_beside(self, old: HostedPlugin, manifest: Manifest) -> None:
        """Refuse ``manifest`` as the replacement of ``old`` (lock held): :meth:`_admit` as
        if ``old`` were gone, and the points ``old`` declares that others implement kept."""
        tables = self._tables
        owned = set(old.manifest.extension_points)
        rest = _Tables(points={k: v for k, v in tables.points.items() if k not in owned},
                       functions=tables.functions,
                       plugins=tuple(hp for hp in tables.plugins if hp.name != old.name),
                       orders={}, gen=tables.gen)
        self._admit(manifest, rest)
        self._check_points_kept(old, manifest, rest)

    @staticmethod
    def _check_points_kept(old: HostedPlugin, new: Manifest, rest: _Tables) -> None:
        """Refuse ``new`` (replacing ``old``) when it stops declaring, or changes to a
        version they do not accept, an extension point ``old`` declares and other hosted
        plugins implement: they would silently stop being called."""
        for point in old.manifest.extension_points:
            spec = new.extension_points.get(point)
            users = sorted(hp.name for hp in rest.plugins
                           if point in hp.manifest.implements and (
                               spec is None or _refuses(hp.manifest.implements[point],
                                                        spec.version)))
            if not users:
                continue
            what = ("no longer declares it" if spec is None else
                    f"declares it at version {spec.version}, which they do not accept")
            raise IncompatiblePointError(
                f"plugin {new.name!r} {new.version} cannot replace {old.manifest.version}: "
                f"{old.name!r} declares extension point {point!r}, which "
                f"{', '.join(users)} implement, and {new.version} {what}; keep the point (a "
                f"compatible version) in the new version, or upgrade or remove "
                f"{', '.join(users)} first", plugin=new.name, point=point,
                versions=() if spec is None else (spec.version,))


def _refuses(impl: Implementation, version: str) -> bool:
    return bool(impl.versions) and not impl.accepts(version)


def _where_in(plugin: str, point: str, hook: str) -> str:
    """How an error about one implementation's result names it (built only on failure)."""
    return f"plugin {plugin!r}, extension point {point!r} (hook {hook!r})"


def _plan_encode(spec: ExtensionPoint, host: PluginHost, payload: Any) -> bytes:
    """A plan's payload step (``_Plan.encode``)."""
    return host._encode(spec, payload)


def _plan_decode(spec: ExtensionPoint, entries: tuple[_Impl, ...], host: PluginHost, i: int,
                 raw: bytes) -> Any:
    """A plan's JSON result step (``_Plan.decode``): what _invoke does after the call."""
    return host._result_of(spec, entries[i], raw)


def _plan_failed(spec: ExtensionPoint, entries: tuple[_Impl, ...], stats: PointStats | None,
                 host: PluginHost, i: int, exc: PlugboxError, failures: list[Failure]) -> None:
    """A plan's failure step (``_Plan.failed``): see PluginHost._plan_failed."""
    host._plan_failed(spec, entries, stats, i, exc, failures)


def _sees_chain(entry: _Impl) -> bool:
    """Whether code running in a call of ``entry`` can see the dispatch chain: a plugin that
    can reach the host, uses host services (log records name the point) or is traced."""
    plugin = entry.hosted.plugin
    return bool(entry.calls_host or plugin.permissions.services()
                or plugin._tracer is not None)


def _declared_by(point: ExtensionPoint) -> str:
    return "by the host" if point.owner is None else f"by plugin {point.owner!r}"


# Set on the host's worker threads: a worker waiting for tasks of its own pool could wait for
# ever, so a concurrent dispatch nested in one runs its implementations one by one instead.
_WORKER = threading.local()


def _mark_worker() -> None:
    _WORKER.active = True


@contextmanager
def _entered(var: contextvars.ContextVar[Any], value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


class HostRouter:
    """The router between the runtime and a :class:`PluginHost` (the
    ``plugbox.services._services.HostRouter`` protocol): what a guest's ABI 1.1 ``host.call``
    and ``host.dispatch`` reach, after the runtime checked the plugin's ``functions`` /
    ``dispatch`` permission. Raises ``HostCallError`` for what the guest should see as an
    ABI error."""

    def __init__(self, host: PluginHost) -> None:
        self._ref = weakref.ref(host)  # weak: the runtime holds the router

    @property
    def _host(self) -> PluginHost:
        host = self._ref()
        if host is None:
            raise HostCallError("failure", "the plugin host is gone")
        return host

    def call_function(self, plugin: str, name: str, payload: bytes) -> bytes:
        """Run host function ``name`` for ``plugin``: payload checked (``invalid-input``),
        handler called (an exception is a logged ``failure``), result checked and encoded."""
        function = self._host._tables.functions.get(name)
        if function is None:
            raise HostCallError("not-found", f"this host offers no function {name!r}")
        value: Any = payload
        if function.payload == "json":
            try:
                value = json.loads(payload) if payload else None
            except ValueError as exc:
                raise HostCallError("invalid-input", f"host function {name!r}: the payload "
                                    f"is not JSON ({exc})") from None
            if function._input is not None:
                error = function._input.error(value)
                if error is not None:
                    raise HostCallError("invalid-input", f"host function {name!r}: the "
                                        f"payload is invalid at {error[0]}: {error[1]}")
        try:
            with _entered(_PLUGINS, _PLUGINS.get() | {plugin}):
                result = (function.handler(value, plugin=plugin) if function._wants_plugin
                          else function.handler(value))
        except HostCallError:
            raise
        except ReentrantDispatchError as exc:  # the handler dispatched back into the chain
            raise HostCallError("limit-reached", exc.message) from None
        except Exception as exc:
            _log.error("host function %r failed for plugin %r", name, plugin, exc_info=True)
            raise HostCallError("failure", f"host function {name!r} failed "
                                f"({type(exc).__name__}); the host logged the details") from None
        if function.payload == "bytes":
            if not isinstance(result, (bytes, bytearray, memoryview)):
                _log.error("host function %r returned %s, not bytes (plugin %r)", name,
                           type(result).__name__, plugin)
                raise HostCallError("failure", f"host function {name!r} returned no bytes")
            return bytes(result)
        if function._output is not None:
            error = function._output.error(result)
            if error is not None:
                _log.error("host function %r returned an invalid result for plugin %r at "
                           "%s: %s", name, plugin, *error)
                raise HostCallError("failure", f"host function {name!r} returned a result "
                                    f"its output_schema refuses at {error[0]}")
        try:
            return _dumps(result)
        except (TypeError, ValueError, RecursionError):
            _log.error("host function %r returned a result that is not JSON (plugin %r)",
                       name, plugin)
            raise HostCallError("failure", f"host function {name!r} returned no JSON") \
                from None

    def dispatch(self, plugin: str, point: str, payload: bytes) -> bytes:
        """Dispatch ``point`` for ``plugin`` as :meth:`PluginHost.call` does; the
        :meth:`DispatchResult.to_json` text. ``not-found`` for an unknown point,
        ``invalid-input`` for a payload the point refuses, ``limit-reached`` for a re-entrant
        dispatch, ``failure`` for a plugin failure under ``propagate``."""
        host = self._host
        tables = host._enter()
        try:
            return self._dispatch_in(host, tables, plugin, point, payload)
        finally:
            host._leave(tables.gen)

    def _dispatch_in(self, host: PluginHost, tables: _Tables, plugin: str, point: str,
                     payload: bytes) -> bytes:
        spec = tables.points.get(point)
        if spec is None:
            raise HostCallError("not-found", f"this host has no extension point {point!r}")
        data = payload
        if spec.payload == "json":
            try:
                value = json.loads(payload) if payload else None
            except ValueError as exc:
                raise HostCallError("invalid-input", f"extension point {point!r}: the "
                                    f"payload is not JSON ({exc})") from None
            try:
                data = host._encode(spec, value)
            except PayloadError as exc:
                raise HostCallError("invalid-input", exc.message) from None
        try:
            result = host._dispatch(tables, spec, data, caller=plugin)
        except ReentrantDispatchError as exc:
            raise HostCallError("limit-reached", exc.message) from None
        except PlugboxError as exc:
            raise HostCallError("failure", f"extension point {point!r}: {exc.message}") \
                from None
        return _dumps(result.to_json())
