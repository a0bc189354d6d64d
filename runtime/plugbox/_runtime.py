"""The Runtime: one engine, the host's policy, shared state, and loading plugins."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import wasmtime

from .engine import _abispec
from .engine._addrspace import admitted, pool_bytes
from .engine._cache import ArtifactCache
from ._errors import (IdentityConflictError, IncompatibleHostError, StateError, UsageError,
                      state_error)
from ._pybundle import Bundle, is_bundle_manifest, read_bundle, recipe_id
from .services._events import EventBus
from .engine._fastpath import Engine, Instance, Template
from .engine._fastpath_component import (ComponentInstance, ComponentTemplate, compile_component,
                                  deserialize_component)
from .services._kvstore import IN_USE, KvBackend, KvStore
from ._manifest import (Manifest, check_compatibility, read_manifest, validate_config,
                        validate_manifest, verify_module)
from .trust._package import staged_plugin
from ._metrics import CallTracer, Metrics, PluginMetrics, tracer_for
from ._plugin import CallRecord, Plugin
from ._policy import Policy, check_runnable_limits
from .services._services import HostRouter, HostServices
from ._permissions import Limits, Permissions
from .trust._trust import SignerInfo, TrustPolicy
from .engine._wasmparse import (
    ModuleInfo,
    check_capabilities,
    check_module_interface,
    check_module_shape,
    compile_refusal,
    inspect_module,
    is_component,
    store_limits,
)

__all__ = ["Runtime", "check_runnable", "default_state_dir"]


class _Verified(NamedTuple):
    """What the pre-compilation checks established about a plugin."""

    manifest: Manifest
    wasm: bytes
    info: ModuleInfo
    signers: tuple[SignerInfo, ...]
    permissions: Permissions
    limits: Limits
    #: A Python bundle: its sources, and the shared interpreter that runs them.
    bundle: Bundle | None = None
    interpreter: Any = None

_log = logging.getLogger("plugbox.runtime")
T = TypeVar("T")


def default_state_dir() -> Path:
    """``$PLUGBOX_HOME``, else ``$XDG_STATE_HOME/plugbox``, else ``~/.local/state/plugbox``."""
    if os.environ.get("PLUGBOX_HOME"):
        return Path(os.environ["PLUGBOX_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "plugbox"


def check_runnable(manifest: Manifest, wasm: bytes, info: ModuleInfo, limits: Limits,
                   policy: Policy, engine: wasmtime.Engine) -> None:
    """What must hold for the module to compile and run under ``limits``, checked without
    compiling: limits some module can run under, the compile budget (size, functions, bodies),
    the module's shape (memories, tables, globals, component instances) and, for core modules,
    validation (linear, milliseconds), so invalid function bodies are refused before the
    compiler sees them. Raises ModuleInterfaceError or PolicyViolationError.

    ``Runtime.verify``/``load`` and ``plugbox inspect``/``verify`` all decide with this one
    function, so the commands cannot pass a plugin that ``load`` refuses."""
    check_runnable_limits(manifest, limits)
    policy.check_module_size(manifest, len(wasm), component=info.kind == "component")
    check_module_shape(info, manifest, limits=limits, policy=policy)
    if info.kind == "core":
        try:
            wasmtime.Module.validate(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise compile_refusal(manifest.name, str(exc)) from None


class Runtime:
    """Hosts plugins: one wasmtime engine, an epoch ticker, the compiled cache, the key-value
    store and the event bus, all shared by the plugins it loads.

    ``policy`` caps what manifests may request (see :class:`plugbox.Policy`). ``state_dir``
    holds the key-value database unless ``state_url`` names one (``postgresql://...`` with the
    ``plugbox[postgres]`` extra: shared by every host on that database; ``sqlite:///path``);
    ``shared_state=True`` opens an SQLite one for sharing with other processes (several
    worker processes over one state dir; slower writes, see ``services/_kvstore.py``);
    ``cache_dir`` (default ``state_dir/cache``) the compiled
    artifacts. ``max_wasm_stack`` (16 KiB to 2 MiB) bounds guest recursion for every plugin;
    ``epoch_tick_ms`` (0.1 to 1000) is the deadline granularity.
    ``pooled_instances`` reserves that many instance slots up front (wasmtime's pooling
    allocator: fast instantiation, a hard cap on live instances across all plugins); 0 maps
    memory on demand instead. Each slot reserves 4 GiB + 32 MiB of virtual address space (not
    memory), so guest memory accesses need no bounds checks: the default 500 slots take about
    2 TiB, and some 60 such Runtimes fit in a process's 128 TiB. A Runtime that would not fit
    (too many Runtimes, a large pool, ``ulimit -v``) is refused with a
    :class:`plugbox.UsageError` (``limit="address-space"``) rather than letting wasmtime abort
    the process; see docs/architecture.md, "The runtime's own resources".

    State failures (a ``state_dir`` that is a file, unwritable, read-only or full; a database
    that is corrupt, not a database, or held by another process) raise
    :class:`plugbox.StateError` naming the path and the fix. A Runtime dropped without
    :meth:`close` stops its ticker and closes its database when it is garbage-collected.

    ``trust`` decides which signatures a plugin needs (see :class:`plugbox.TrustPolicy`); the
    default, :meth:`TrustPolicy.development`, does not check them, so pass
    ``TrustPolicy(trusted_keys=..., mode="require")`` wherever plugins come from elsewhere.

    ``switch_interval_ms`` (opt-in, 0.1 to 100; default: leave CPython's 5 ms alone) sets
    the interpreter's GIL switch interval (``sys.setswitchinterval``; process-wide, and not
    restored on close). The engine ends a guest at its deadline without the GIL, but the
    calling thread must then get the GIL back; with other CPU-bound Python threads running,
    CPython hands it over once per interval to one waiting thread at random, so a 20 ms
    deadline can return tens of milliseconds late. ``switch_interval_ms=1`` keeps a 20 ms
    deadline under 40 ms median and 120 ms worst with 4 Python threads spinning
    (docs/benchmarks.md, "deadlines"), at the price of more frequent thread switches.

    ``router`` serves the plugins' ``host.call`` and ``host.dispatch`` (ABI 1.1; see
    ``plugbox.services._services.HostRouter``); without one both are denied. ``abi`` is the ABI
    version the runtime offers (``"1.0"`` or ``"1.1"``, the default): a runtime offering 1.0
    refuses plugins that declare or import 1.1 with :class:`plugbox.IncompatibleAbiError`.

    ``metrics`` (default on) keeps per-hook call counts, failures by class and a latency
    histogram for every plugin it loads (:meth:`metrics`; about 0.1 us a call, see
    docs/benchmarks.md, "metrics"); fuel, memory, instance and service figures cost nothing
    per call and are kept either way. ``tracing`` makes each plugin call an OpenTelemetry span
    (``opentelemetry-api``, the ``plugbox[otel]`` extra): True on, False off, an SDK
    ``TracerProvider`` on with that provider, None (default) on when the API is installed and
    a global tracer provider is configured when the Runtime is made. See docs/monitoring.md.
    """

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        policy: Policy | None = None,
        max_wasm_stack: int = 512 * 1024,
        epoch_tick_ms: float = 2.0,
        pooled_instances: int = 500,
        trust: TrustPolicy | None = None,
        switch_interval_ms: float | None = None,
        router: HostRouter | None = None,
        abi: str = _abispec.ABI_VERSION,
        state_url: str | None = None,
        shared_state: bool = False,
        metrics: bool = True,
        tracing: object = None,
    ) -> None:
        from ._version import __version__

        _check_settings(pooled_instances, max_wasm_stack, epoch_tick_ms, switch_interval_ms)
        if type(metrics) is not bool:
            raise UsageError(f"metrics must be True or False, not {metrics!r}")
        tracer = tracer_for(tracing)
        #: The ABI version this runtime offers, ``MAJOR.MINOR.PATCH``.
        self.abi_version = _offered_abi(abi)
        #: Where plugins' host.call / host.dispatch go (None: denied).
        self.router = router
        self.version = __version__
        self.policy = policy if policy is not None else Policy()
        # [trust chain] None: the development policy (signatures unchecked, logged at DEBUG).
        self.trust = trust if trust is not None else TrustPolicy.development()
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise state_error(self.state_dir, exc, "creating the state directory") from None
        # Cheapest first, and everything made so far released if a later step fails: the
        # engine's reservation and ticker would otherwise outlive a refused constructor.
        self.kv: KvBackend = _open_state(state_url, self.state_dir, shared_state)
        engine: Engine | None = None
        release: Callable[[], None] = _nothing
        try:
            with admitted(pool_bytes(pooled_instances, self.policy.max_limits.memory_bytes),
                          pooled_instances) as release:
                engine = Engine(
                    max_wasm_stack=max_wasm_stack,
                    max_memory_bytes=self.policy.max_limits.memory_bytes,
                    epoch_tick_ms=epoch_tick_ms,
                    pooling=pooled_instances,
                )
            self.engine = engine
            self.cache = ArtifactCache(
                Path(cache_dir) if cache_dir is not None else self.state_dir / "cache",
                salt=self.engine.settings,
            )
        except BaseException:
            _release(engine, self.kv, release)
            raise
        self.events = EventBus()
        self._plugins: list[Plugin] = []
        self._lock = threading.Lock()
        self._monitors: list[tuple[Callable[[CallRecord], None], Callable[[CallRecord], None]]] = []
        #: Whether the plugins it loads keep per-hook metrics (``metrics=``).
        self.metrics_enabled = metrics
        self._tracer: CallTracer | None = tracer
        self._closed = False
        # A Runtime dropped without close() still stops its ticker, closes its database and
        # gives its address space back. The finalizer holds no reference to the Runtime.
        self._finalizer = weakref.finalize(self, _release, engine, self.kv, release)
        if switch_interval_ms is not None:  # last: a refused constructor changes nothing
            sys.setswitchinterval(switch_interval_ms / 1000.0)

    # -- loading ---------------------------------------------------------------------------

    def verify(
        self, path: str | os.PathLike[str], *, allow_unrequested_imports: bool = False
    ) -> tuple[Manifest, bytes]:
        """Every check that precedes compilation: schema, signatures (the trust policy),
        compatibility, sha256, static module interface, capabilities and policy caps. ``path``
        may also be a ``.plugbox`` package. Returns the manifest and the verified module bytes.
        ``allow_unrequested_imports`` is as for :meth:`load`."""
        verified = self._verified(path, allow_unrequested_imports)
        return verified.manifest, verified.wasm

    def _verified(self, path: str | os.PathLike[str], allow_unrequested_imports: bool
                  ) -> _Verified:
        """The checks that precede compilation, in order; see :meth:`verify`."""
        # A .plugbox package is unpacked into a private temporary directory.
        with staged_plugin(path) as plugin_path:
            # Read once, cheap bounds only; signatures before the schema, hash or compile.
            source = read_manifest(plugin_path)
            signers = self.trust.check(source)
            manifest = validate_manifest(source)
            check_compatibility(manifest, runtime_version=self.version,
                                abi_version=self.abi_version)
            wasm = verify_module(manifest)
        if is_bundle_manifest(manifest.raw):
            return self._verified_bundle(manifest, wasm, tuple(signers))
        # The compile budget starts with the file's size, before it is even parsed.
        self.policy.check_module_size(manifest, len(wasm), component=is_component(wasm))
        info = inspect_module(wasm)
        check_module_interface(info, manifest, abi_version=self.abi_version)
        check_capabilities(info, manifest, allow_unrequested_imports=allow_unrequested_imports)
        permissions, limits = self.policy.resolve(manifest, component=info.kind == "component")
        check_runnable(manifest, wasm, info, limits, self.policy, self.engine.wasmtime)
        return _Verified(manifest, wasm, info, tuple(signers), permissions, limits)

    def _verified_bundle(self, manifest: Manifest, data: bytes,
                         signers: tuple[SignerInfo, ...]) -> _Verified:
        """The checks for a Python bundle (``plugbox._pybundle``): its size and contents
        within bounds, the interpreter recipe it was built for is this plugbox's, and the shared
        interpreter's interface and shape. The interpreter imports every service; the host
        enforces this plugin's permissions on each call, as for any other plugin."""
        from .engine._pyinterp import interpreter

        self.policy.check_module_size(manifest, len(data), component=True)
        bundle = read_bundle(data, manifest.name)
        ours = recipe_id()
        if bundle.recipe != ours:
            raise IncompatibleHostError(
                f"plugin {manifest.name!r}: its Python bundle {manifest.module_path.name} was "
                f"built for the plugbox Python runtime {bundle.recipe or '(none recorded)'}, but "
                f"this plugbox runs {ours} (another plugbox, plugbox-sdk or componentize-py "
                f"version); rebuild it with `plugbox build {manifest.directory}`, or load it "
                "with the plugbox that built it", plugin=manifest.name)
        interp = interpreter(self.engine, progress=_progress)
        info = interp.info
        check_module_interface(info, manifest, abi_version=self.abi_version)
        check_capabilities(info, manifest, allow_unrequested_imports=True)
        permissions, limits = self.policy.resolve(manifest, component=True)
        check_runnable_limits(manifest, limits)
        check_module_shape(info, manifest, limits=limits, policy=self.policy)
        return _Verified(manifest, data, info, signers, permissions, limits, bundle, interp)

    def load(
        self,
        path: str | os.PathLike[str],
        *,
        config: dict[str, Any] | None = None,
        mode: Literal["persistent", "fresh"] = "persistent",
        withhold: frozenset[str] | set[str] = frozenset(),
        allow_unrequested_imports: bool = False,
    ) -> Plugin:
        """Verify, compile (or fetch from the cache) and start the plugin at ``path`` (a plugin
        directory, its ``plugbox.json``, or a ``.plugbox`` package).

        ``config`` is validated against the manifest's ``config_schema`` and passed to the
        plugin's ``on-init``. ``withhold`` names services the host refuses although the manifest
        asks for them: the plugin loads, and calls to them are denied. Raises a
        :class:`plugbox.VerificationError` subclass or :class:`plugbox.ManifestError` before
        anything is compiled when a check fails.

        Signatures are checked by the runtime's trust policy right after the manifest is read;
        the trusted signers end up in ``plugin.signers``. A module that imports a service its
        manifest does not request is refused (:class:`plugbox.CapabilityError`), unless
        ``allow_unrequested_imports`` (for testing and diagnostics only): then it loads, and
        those imports are denied when called.
        """
        self._check_open()
        if mode not in ("persistent", "fresh"):
            raise UsageError(f"mode must be 'persistent' or 'fresh', not {mode!r}")
        verified = self._verified(path, allow_unrequested_imports)
        manifest, wasm, info, limits = (verified.manifest, verified.wasm, verified.info,
                                        verified.limits)
        permissions = verified.permissions.without(set(withhold))
        config = dict(config or {})
        validate_config(manifest, config)
        key_ids = self._identity(manifest.name, verified.signers)

        # The points a plugin declares it may always dispatch, unless the host withholds the
        # host interface altogether.
        own_points = (frozenset() if "host" in withhold
                      else frozenset(manifest.raw.get("extension_points") or ()))
        services = HostServices(
            plugin=manifest.name,
            permissions=permissions,
            config=config,
            kv=self.kv,
            events=self.events,
            router=self.router,
            own_points=own_points,
        )
        template: Template | ComponentTemplate | None = None
        try:
            if verified.bundle is not None:
                # One compiled interpreter for every bundle plugin (engine._pyinterp).
                cache = _nothing
                template = ComponentTemplate(
                    self.engine, verified.interpreter.component, plugin=manifest.name,
                    services=services, memory_cap=limits.memory_bytes,
                    store_limits=store_limits(info.shape, limits.memory_bytes),
                    abi=self.abi_version, bundle=verified.bundle.guest_payload())
            elif info.kind == "component":
                component, cache = self._compiled(manifest, wasm, deserialize_component,
                                                  compile_component)
                template = ComponentTemplate(
                    self.engine, component, plugin=manifest.name, services=services,
                    memory_cap=limits.memory_bytes,
                    store_limits=store_limits(info.shape, limits.memory_bytes),
                    abi=self.abi_version)
            else:
                module, cache = self._compiled(manifest, wasm,
                                               lambda engine, path: engine.deserialize_file(path),
                                               lambda engine, blob: engine.compile(blob))
                template = Template(
                    self.engine, module, plugin=manifest.name, services=services,
                    imports=[(imp.module, imp.name) for imp in info.imports],
                    memory_cap=limits.memory_bytes,
                    start=info.shape is None or any(m.start for m in info.shape.modules),
                )
            plugin = Plugin(self, manifest, template, services, permissions=permissions,
                            limits=limits, config=config, mode=mode)
            cache()  # it started: worth keeping compiled
            # [trust chain] who vouched for it (empty when signatures are not checked).
            plugin.signers = verified.signers
        except BaseException:
            if template is not None:
                template.close()
            services.close()
            raise
        if key_ids is not None:
            try:
                self._check_identity(manifest.name, key_ids,
                                     self.kv.bind_signers(manifest.name, key_ids))
            except BaseException:
                plugin.close()
                raise
        # A plugin collected without close() (with its Runtime: they refer to each other)
        # frees its native instances and template, which would otherwise keep the engine and
        # its address-space reservation alive. plugin._idle is replaced only by close().
        weakref.finalize(plugin, _free_plugin, plugin._idle, template, services)
        with self._lock:
            self._plugins.append(plugin)
        _log.info("loaded plugin %s %s (%s, %s)", manifest.name, manifest.version, mode,
                  ", ".join(sorted(permissions.services())) or "no services")
        return plugin

    def _identity(self, name: str, signers: tuple[SignerInfo, ...]) -> tuple[str, ...] | None:
        """The key ids ``name`` is claimed with, once checked against the plugins loaded and the
        name's binding in the state database; None when signatures are not required, where
        a plugin's identity is its name (docs/trust.md, "Plugin identity")."""
        if self.trust.mode != "require":
            return None
        key_ids = tuple(sorted({signer.key_id for signer in signers}))
        for plugin in self.plugins:
            if plugin.name == name and plugin.signers:
                self._check_identity(name, key_ids,
                                     tuple(sorted({s.key_id for s in plugin.signers})))
        bound = self.kv.bound_signers(name)
        if bound is not None:
            self._check_identity(name, key_ids, bound)
        return key_ids

    def _check_identity(self, name: str, key_ids: tuple[str, ...],
                        bound: tuple[str, ...]) -> None:
        if set(key_ids) & set(bound):
            return
        raise IdentityConflictError(
            f"plugin {name!r} is signed by {', '.join(key_ids)}, but in this state directory "
            f"({self.state_dir}) the name {name!r} belongs to {', '.join(bound)} (the signers "
            f"of the first {name!r} loaded with signatures required), whose kv data, events and "
            "logs it would take over. Rename the plugin, or, if its publisher changed keys, "
            f"have it signed by one of {', '.join(bound)} as well.",
            plugin=name, key_ids=key_ids, bound_key_ids=bound,
        )

    def _compiled(
        self,
        manifest: Manifest,
        wasm: bytes,
        deserialize: Callable[[Engine, Path], T],
        compile: Callable[[Engine, bytes], T],
    ) -> tuple[T, Callable[[], None]]:
        """The compiled module or component, from the cache or compiled now, and the function
        that caches it: called once the plugin has started, so nothing is cached for a module
        that then fails to instantiate. wasmtime's refusals are typed here, the one compile
        boundary (:func:`plugbox.engine._wasmparse.compile_refusal`)."""
        sha256 = manifest.module_sha256
        cached = self.cache.get(sha256, lambda path: deserialize(self.engine, path))
        if cached is not None:
            return cached, lambda: None
        try:
            compiled = compile(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise compile_refusal(manifest.name, str(exc)) from None

        def store() -> None:
            self.cache.put(sha256, bytes(compiled.serialize()))  # type: ignore[attr-defined]

        return compiled, store

    # -- monitoring ------------------------------------------------------------------------

    def add_call_monitoring(
        self,
        before: Callable[[CallRecord], None],
        after: Callable[[CallRecord], None],
    ) -> Callable[[], None]:
        """Call ``before(record)`` ahead of every plugin call and ``after(record)`` when it
        ends (``record.error`` set on failure). Returns a function that removes the pair."""
        pair = (before, after)
        self._monitors = [*self._monitors, pair]

        def undo() -> None:
            self._monitors = [m for m in self._monitors if m is not pair]

        return undo

    def metrics(self) -> Metrics:
        """A snapshot of every loaded plugin's metrics (:class:`plugbox.Metrics`, ``points``
        empty: extension points belong to a PluginHost). Keyed by plugin name; a name loaded
        twice gets ``#2``, ``#3``... on its later copies."""
        plugins: dict[str, PluginMetrics] = {}
        for plugin in self.plugins:
            key, n = plugin.name, 1
            while key in plugins:
                n += 1
                key = f"{plugin.name}#{n}"
            plugins[key] = plugin.metrics()
        return Metrics(plugins=plugins)

    # -- lifetime --------------------------------------------------------------------------

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        """Plugins loaded and not yet closed."""
        with self._lock:
            return tuple(self._plugins)

    def _forget(self, plugin: Plugin) -> None:
        with self._lock:
            if plugin in self._plugins:
                self._plugins.remove(plugin)

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this plugbox Runtime is closed; create a new one")

    def close(self) -> None:
        """Close every plugin, stop the epoch ticker and close the stores. Safe to call twice.

        The pool's address space is unmapped once the Runtime and the plugins it loaded are no
        longer referenced (wasmtime frees an engine with its last module)."""
        if self._closed:
            return
        self._closed = True
        self.engine.mark_closing()  # calls interrupted below say the runtime was closed
        for plugin in self.plugins:
            plugin.close()
        self._finalizer()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<plugbox.Runtime {len(self._plugins)} plugins, state {self.state_dir}>"


#: wasmtime refuses (by aborting the process) a max_wasm_stack above its async_stack_size,
#: 2 MiB by default, even for synchronous calls.
MAX_WASM_STACK_LIMIT = 2 << 20


def _check_settings(pooled_instances: int, max_wasm_stack: int, epoch_tick_ms: float,
                    switch_interval_ms: float | None) -> None:
    """Refuse Runtime settings wasmtime would abort on, or that would void deadlines."""
    if switch_interval_ms is not None and (
            not isinstance(switch_interval_ms, (int, float)) or isinstance(switch_interval_ms, bool)
            or not 0.1 <= switch_interval_ms <= 100):
        raise UsageError(f"switch_interval_ms must be a number from 0.1 to 100 (milliseconds "
                         f"between GIL handovers), or None, not {switch_interval_ms!r}")
    if type(pooled_instances) is not int or pooled_instances < 0:
        raise UsageError(f"pooled_instances must be an int >= 0, not {pooled_instances!r}")
    if type(max_wasm_stack) is not int or not 16 << 10 <= max_wasm_stack <= MAX_WASM_STACK_LIMIT:
        raise UsageError(f"max_wasm_stack must be an int from {16 << 10} (16 KiB) to "
                         f"{MAX_WASM_STACK_LIMIT} (2 MiB) bytes, not {max_wasm_stack!r}")
    if (not isinstance(epoch_tick_ms, (int, float)) or isinstance(epoch_tick_ms, bool)
            or not 0.1 <= epoch_tick_ms <= 1000):
        raise UsageError(f"epoch_tick_ms must be a number from 0.1 to 1000 (deadlines are "
                         f"enforced to about one tick), not {epoch_tick_ms!r}")


def _offered_abi(abi: str) -> str:
    """The full version (``1.0.0``) of an ABI ``Runtime(abi=...)`` may offer, else UsageError."""
    offered = {v: v for v in _abispec.ABI_VERSIONS}
    offered.update({v.rsplit(".", 1)[0]: v for v in _abispec.ABI_VERSIONS})
    if not isinstance(abi, str) or abi not in offered:
        raise UsageError(
            f"abi must be one of the ABI versions this plugbox implements, "
            f"{', '.join(sorted(offered))}, not {abi!r}")
    return offered[abi]


#: The state databases this process has open, by resolved path.
_open_stores: weakref.WeakValueDictionary[Path, KvStore] = weakref.WeakValueDictionary()
_open_stores_lock = threading.Lock()


def _open_kv(path: Path, shared: bool = False) -> KvStore:
    """The state database at ``path``. One held by a Runtime of this process is refused at
    once (SQLite would wait for it in vain), unless that Runtime was dropped without close()
    and only awaits garbage collection (a Runtime and its plugins refer to each other), or
    both open it for sharing (``shared``: each its own connection, as two processes would)."""
    key = path.resolve()
    with _open_stores_lock:
        for attempt in (0, 1):
            holder = _open_stores.get(key)
            if holder is None or holder.closed or (shared and not holder.exclusive):
                break
            if attempt == 0:
                del holder
                gc.collect()
        else:
            raise StateError(
                f"kv store {path} {IN_USE} (another plugbox Runtime of this process has the "
                "same state directory): close that Runtime, or give this one its own "
                "state_dir.", path=str(path))
        store = KvStore(path, exclusive=not shared)
        _open_stores[key] = store
    return store


def _open_state(state_url: str | None, state_dir: Path, shared: bool = False) -> KvBackend:
    """The plugins' kv store: ``state_url`` (``postgresql://...``: shared by every host using
    that database; ``sqlite:///path`` or a path: that file), else ``state_dir/plugbox.sqlite3``."""
    from .services._db import is_postgres_url, sqlite_path

    if state_url is None:
        return _open_kv(state_dir / "plugbox.sqlite3", shared)
    if is_postgres_url(state_url):
        from .services._kvstore_pg import PgKvStore

        return PgKvStore(state_url)
    return _open_kv(sqlite_path(state_url), shared)


def _free_plugin(idle: list[Instance | ComponentInstance], template: Template | ComponentTemplate,
                 services: HostServices) -> None:
    """Free what a plugin collected without close() holds natively; instances first, since they
    point into the template's linker."""
    for inst in idle:
        inst.close()
    template.close()
    services.close()


def _progress(message: str) -> None:
    """The one-time build and compile of the Python runtime: logged, and shown on a
    terminal."""
    if sys.stderr is not None and sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)
    else:
        _log.warning("%s", message)


def _nothing() -> None:
    pass


def _release(engine: Engine | None, kv: KvBackend, release: Callable[[], None]) -> None:
    """What a Runtime gives back on close, on garbage collection or when its constructor
    fails: the ticker, the database lock, the address-space admission."""
    try:
        if engine is not None:
            engine.close()
    finally:
        kv.close()
        release()
