"""A loaded plugin: its instance pool, call modes and typed failures."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import threading
from collections import deque
from time import monotonic as _monotonic
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from .engine import _fastpath
from ._metrics import CallStats, CallTracer, HookMetrics, PluginMetrics
from ._errors import (
    AbiViolation,
    ClosedError,
    DeadlineExceeded,
    LimitExceeded,
    PlugboxError,
    PluginCallError,
    UnknownHookError,
    UsageError,
)
from .engine._fastpath import (
    CallOutcome,
    Instance,
    NeedStack,
    Template,
    guest_error,
    run_on_enough_stack,
)
from .engine._fastpath_component import ComponentInstance, ComponentTemplate
from .services._services import DISPATCH_CHAIN

if TYPE_CHECKING:
    from ._manifest import Manifest
    from ._permissions import Limits, Permissions
    from ._policy import Policy
    from .services._services import HostServices
    from .trust._trust import SignerInfo

__all__ = ["CallRecord", "Plugin"]

Mode = Literal["persistent", "fresh"]
_Inst: TypeAlias = "Instance | ComponentInstance"
_logger = logging.getLogger("plugbox.plugin")

#: A call that returns this long after its deadline is logged as an overrun (the epoch deadline
#: itself is a couple of 2 ms ticks coarse).
OVERRUN_GRACE_S = 0.010


Monitor: TypeAlias = "tuple[Callable[[CallRecord], None], Callable[[CallRecord], None]]"


class PluginOwner(Protocol):
    """What a Plugin needs of the Runtime that loaded it (kept narrow so the plugin layer does
    not import the runtime: the Runtime imports Plugin, never the other way)."""

    policy: Policy
    _monitors: list[Monitor]
    #: Whether plugins keep metrics (``Runtime(metrics=...)``), read once at load.
    metrics_enabled: bool
    #: Whether each call is an OpenTelemetry span (``Runtime(tracing=...)``).
    _tracer: Any

    def _forget(self, plugin: Plugin) -> None: ...


class _Waiter:
    """One caller queued for an instance: served in arrival order (FIFO)."""

    __slots__ = ("event", "grant")

    def __init__(self) -> None:
        self.event = threading.Event()
        # None: not served yet; an instance: take it; True: create one; False: plugin closed
        self.grant: _Inst | bool | None = None


class CallRecord:
    """What monitors see of one call: plugin, hook, sizes, duration, the error if any, and
    what the call used: ``fuel_used`` (instructions' fuel, None when unknown) and
    ``memory_bytes`` (the linear memory of the instance that served it, which only grows, so
    its peak; None for a component, whose memories the host cannot see)."""

    __slots__ = ("plugin", "hook", "payload_size", "result_size", "seconds", "error",
                 "fuel_used", "memory_bytes")

    def __init__(self, plugin: str, hook: str, payload_size: int) -> None:
        self.plugin = plugin
        self.hook = hook
        self.payload_size = payload_size
        self.result_size = 0
        self.seconds = 0.0
        self.error: PlugboxError | None = None
        self.fuel_used: int | None = None
        self.memory_bytes: int | None = None


class Plugin:
    """A verified, compiled plugin ready to be called. Obtain one with ``Runtime.load``.

    Calls are thread-safe: each caller borrows an instance from a bounded pool (size
    ``limits.instances``); callers beyond that wait. In ``persistent`` mode an instance keeps its
    state between calls; in ``fresh`` mode every call gets a new instance made from the
    pre-linked template. An instance that trapped or broke the ABI is discarded and replaced;
    the plugin keeps serving.
    """

    def __init__(
        self,
        runtime: PluginOwner,
        manifest: Manifest,
        template: Template | ComponentTemplate,
        services: HostServices,
        *,
        permissions: Permissions,
        limits: Limits,
        config: dict[str, Any],
        mode: Mode,
    ) -> None:
        self.runtime = runtime
        self.manifest = manifest
        self.name: str = manifest.name
        self.version: str = manifest.version
        self.hooks: tuple[str, ...] = tuple(manifest.hooks)
        self.permissions = permissions
        self.limits = limits
        self.mode: Mode = mode
        self.services = services
        #: Who signed the manifest (trusted signers only), set by Runtime.load.
        self.signers: tuple[SignerInfo, ...] = ()
        self._template = template
        self._config_json = json.dumps(config, separators=(",", ":")).encode()
        self._hook_bytes = {hook: hook.encode() for hook in self.hooks}
        self._ticks = template.engine.deadline_ticks(limits.deadline_ms)
        self._fuel = limits.fuel
        self._deadline_s = limits.deadline_ms / 1000.0
        self._persistent = mode == "persistent"
        self._idle: list[_Inst] = []
        self._live = 0
        self._waiters: deque[_Waiter] = deque()
        self._instances: set[_Inst] = set()  # every live instance, for close() to interrupt
        self._cond = threading.Lock()
        self._closed = False
        self._freed = False
        self.calls = 0
        self.failures = 0
        self.instances_discarded = 0
        #: Calls that returned more than OVERRUN_GRACE_S after their deadline (logged).
        self.overruns = 0
        self._overrun_logged = 0.0
        # Metrics (plugbox._metrics): per-hook accumulators, None when metrics are off; what
        # discarded instances used, folded in when they leave (under _cond).
        self._stats: dict[str, CallStats] | None = (
            {hook: CallStats() for hook in self.hooks}
            if getattr(runtime, "metrics_enabled", False) else None)
        # The same accumulators' addresses, which is what the hot path hands to observe().
        self._slots: dict[str, int] | None = (
            None if self._stats is None
            else {hook: st.address for hook, st in self._stats.items()})
        self._tracer: CallTracer | None = getattr(runtime, "_tracer", None)
        self._fuel_retired = 0
        self._memory_retired = 0
        # Prove the plugin starts (and its on-init accepts the config) before handing it out.
        first = run_on_enough_stack(template.engine, self._new_instance)
        if mode == "persistent":
            self._idle.append(first)
            self._live = 1
        else:
            self._instances.discard(first)
            first.close()

    # -- pool ------------------------------------------------------------------------------
    #
    # Idle instances sit in a list: list.pop/append are atomic, so a call that finds an idle
    # instance takes no lock. The lock guards the slow path: creating an instance up to the
    # pool size, or queueing. Queued callers are served in arrival order: while anyone waits,
    # a released instance (or a free slot) goes to the head of the queue, not back to the idle
    # list. A waiter enqueues itself before looking at the idle list and a releaser appends to
    # it before looking at the queue, so one of the two always sees the other.

    def _new_instance(self) -> Instance | ComponentInstance:
        fuel = self.limits.fuel
        inst = self._template.instantiate(fuel, self._ticks)
        self._instances.add(inst)
        try:
            outcome = inst.call_init(self._config_json, fuel, self._ticks,
                                     self.limits.deadline_ms)
        except BaseException:
            self._instances.discard(inst)
            inst.close()
            raise
        if not outcome.ok:
            self._instances.discard(inst)
            inst.close()
            raise guest_error(outcome, self.name, "on-init")
        return inst

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"plugin {self.name!r} is closed; load it again to call it",
                           plugin=self.name)

    def _serve(self) -> None:
        """Hand idle instances or free slots to queued callers, oldest first (lock held)."""
        while self._waiters:
            grant: _Inst | bool
            if self._idle:
                grant = self._idle.pop()
            elif self._live < self.limits.instances:
                self._live += 1
                grant = True
            else:
                return
            waiter = self._waiters.popleft()
            waiter.grant = grant
            waiter.event.set()

    def _held_here(self) -> int:
        """How many of this plugin's instances calls running on this thread hold (waiting for
        one while this thread holds them all would wait for itself)."""
        held = 0
        st = _fastpath.current_call()
        while st is not None:
            held += st.instance.template is self._template
            st = st.outer
        return held

    def _acquire_slow(self, reuse: bool, hook: str, deadline_at: float, deadline_ms: int
                      ) -> _Inst:
        started = _monotonic()
        waiter = None
        with self._cond:
            if self._closed:
                raise self._closed_error()
            if not self._waiters and reuse and self._idle:
                return self._idle.pop()
            if not self._waiters and self._live < self.limits.instances:
                self._live += 1
            elif self._held_here() >= self.limits.instances:
                raise LimitExceeded(
                    f"plugin {self.name!r}, hook {hook!r}: called again from a host function "
                    f"while calls on this thread hold all its {self.limits.instances} "
                    "instances; waiting would wait for itself. Raise "
                    "limits.instances in plugbox.json, or make the call outside the host "
                    "function.",
                    plugin=self.name, hook=hook, limit="instances",
                )
            else:
                waiter = _Waiter()
                self._waiters.append(waiter)
                self._serve()
        if waiter is not None:
            waiter.event.wait(max(0.0, deadline_at - _monotonic()))
            with self._cond:
                grant = waiter.grant
                if grant is None:
                    self._waiters.remove(waiter)
            if grant is None:
                if self._closed:
                    raise self._closed_error()
                waited = (_monotonic() - started) * 1000
                raise DeadlineExceeded(
                    f"plugin {self.name!r}, hook {hook!r}: waited {waited:.0f} ms for a free "
                    f"instance (all {self.limits.instances} busy) and passed its deadline "
                    f"({deadline_ms} ms) before it could start. Raise limits.instances in "
                    "plugbox.json, or call the plugin less concurrently.",
                    plugin=self.name, hook=hook, limit="deadline",
                )
            if grant is False:
                raise self._closed_error()
            if grant is not True:
                return grant
        try:
            return self._new_instance()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._serve()
            raise

    def _release(self, inst: _Inst, *, keep: bool, failed: bool) -> None:
        if keep and not failed and not self._closed:
            self._idle.append(inst)
            if self._waiters:
                with self._cond:
                    self._serve()
            if self._closed:  # close() ran meanwhile: it may have missed this instance
                self._drain()
            return
        with self._cond:
            self._retire(inst)
            inst.close()
            self._live -= 1
            if failed:
                self.instances_discarded += 1
            self._serve()
            last = self._closed and self._live == 0
        if last:
            self._free()

    def _retire(self, inst: _Inst) -> None:
        """``inst`` leaves the pool (lock held): what it used moves to the plugin's totals, so
        a snapshot counts it exactly once."""
        if inst in self._instances:
            self._instances.discard(inst)
            self._fuel_retired += inst.fuel_consumed
            peak = inst.memory_peak
            if peak is not None and peak > self._memory_retired:
                self._memory_retired = peak

    def _drain(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            last = self._live == 0 and not self._freed
            self._freed = self._freed or last
            for inst in idle:
                self._retire(inst)
        for inst in idle:
            inst.close()
        if last:
            self._template.close()
            self.services.close()

    def _free(self) -> None:
        with self._cond:
            if self._freed:
                return
            self._freed = True
        # Instances hold pointers into the template's linker: free it only after them.
        self._template.close()
        self.services.close()

    # -- calls -----------------------------------------------------------------------------

    def call(
        self,
        hook: str,
        payload: bytes = b"",
        *,
        fuel: int | None = None,
        deadline_ms: int | None = None,
    ) -> bytes:
        """Call ``hook`` with ``payload``; returns the plugin's result bytes.

        ``fuel`` and ``deadline_ms`` override the plugin's limits for this call, up to the host
        policy's caps. Raises a :class:`plugbox.PluginCallError` subclass on any failure.
        """
        hook_bytes = self._hook_bytes.get(hook)
        if hook_bytes is None:
            raise UnknownHookError(
                f"plugin {self.name!r} has no hook {hook!r}; its manifest declares: "
                f"{', '.join(self.hooks)}",
                plugin=self.name, hook=hook,
            )
        if type(payload) is not bytes and not isinstance(payload, (bytearray, memoryview)):
            raise UsageError(
                f"plugin {self.name!r}, hook {hook!r}: payload must be bytes, not "
                f"{type(payload).__name__}; use call_json for JSON values",
                plugin=self.name, hook=hook,
            )
        ticks = self._ticks
        seconds = self._deadline_s
        if fuel is None:
            fuel = self._fuel
        else:
            fuel = self._call_limit("fuel", fuel, self.runtime.policy.max_limits.fuel, hook)
        if deadline_ms is not None:
            deadline_ms = self._call_limit("deadline_ms", deadline_ms,
                                           self.runtime.policy.max_limits.deadline_ms, hook)
            ticks = self._template.engine.deadline_ticks(deadline_ms)
            seconds = deadline_ms / 1000.0
        if self.runtime._monitors or self._tracer is not None:
            return self._monitored(hook, hook_bytes, payload, fuel, ticks, seconds)
        slots = self._slots
        if slots is None:
            return self._call(hook, hook_bytes, payload, fuel, ticks, _monotonic() + seconds,
                              int(seconds * 1000))
        # Metrics on, no callbacks: a successful call is counted at the end of _call, which
        # reads the clock there anyway (the overrun check); a failed one here.
        started = _monotonic()
        try:
            return self._call(hook, hook_bytes, payload, fuel, ticks, started + seconds,
                              int(seconds * 1000), None, slots[hook], started)
        except PlugboxError as exc:
            self._count_failure(hook, exc, started)
            raise

    def _count_failure(self, hook: str, exc: PlugboxError, started: float) -> None:
        """Metrics of a failed call: its duration and its error class."""
        stats = self._stats
        if stats is not None:
            stats[hook].observe(_monotonic() - started)
            stats[hook].fail(exc)

    def _call_limit(self, name: str, value: object, cap: int, hook: str) -> int:
        """A per-call limit override: a positive int, capped by the host policy."""
        if type(value) is not int or value < 1:
            raise UsageError(
                f"plugin {self.name!r}, hook {hook!r}: {name} must be a positive integer, not "
                f"{value!r}; omit it to use the plugin's limit",
                plugin=self.name, hook=hook, limit=name,
            )
        return min(value, cap)

    def _monitored(
        self, hook: str, hook_bytes: bytes, payload: bytes, fuel: int, ticks: int,
        seconds: float,
    ) -> bytes:
        monitors = self.runtime._monitors
        record = CallRecord(self.name, hook, len(payload))
        for before, _ in monitors:
            before(record)
        tracer = self._tracer
        span = None
        if tracer is not None:
            chain = DISPATCH_CHAIN.get()
            span = tracer.start(self.name, hook, len(payload), chain[-1] if chain else None)
        started = _monotonic()
        try:
            result = self._call(hook, hook_bytes, payload, fuel, ticks, started + seconds,
                                int(seconds * 1000), record)
            record.result_size = len(result)
            return result
        except PlugboxError as exc:
            record.error = exc
            if self._stats is not None:
                self._stats[hook].fail(exc)
            raise
        finally:
            record.seconds = _monotonic() - started
            if self._stats is not None:
                self._stats[hook].observe(record.seconds)
            if tracer is not None and span is not None:
                tracer.end(span, record)
            for _, after in monitors:
                after(record)

    def _call(
        self, hook: str, hook_bytes: bytes, payload: bytes, fuel: int, ticks: int,
        deadline_at: float, deadline_ms: int, record: CallRecord | None = None,
        accumulator: int | None = None, started: float = 0.0,
    ) -> bytes:
        self.calls += 1
        persistent = self._persistent
        try:
            if not persistent:
                raise IndexError
            inst = self._idle.pop()
        except IndexError:
            try:
                inst = run_on_enough_stack(self._template.engine, self._acquire_slow,
                                           persistent, hook, deadline_at, deadline_ms)
            except PlugboxError:
                self.failures += 1
                raise
            # The wait counted against the deadline: what is left is the call's.
            ticks = min(ticks, self._template.engine.deadline_ticks(
                max(0.0, deadline_at - _monotonic()) * 1000))
        if self._closed:  # close() ran since it was taken: the interrupt may have missed it
            inst.interrupt()
        # The acall this call belongs to, if any (see "async calls"); the context variable is
        # read only while some acall runs, so plain calls pay one global lookup.
        scope = _scope.get() if _acalls_running else None
        if scope is not None and not scope.bind(inst):  # cancelled before it could start
            self._release(inst, keep=persistent, failed=False)
            raise scope.interrupted(self.name, hook)
        failed = True
        outcome: CallOutcome | None = None
        try:
            outcome = inst.call_hook(hook, hook_bytes, payload, fuel, ticks, deadline_at,
                                     deadline_ms)
            failed = False
        except NeedStack:  # nothing ran: the call moves to a thread with a known stack
            failed = False
        except PlugboxError as exc:
            if scope is not None and scope.cancelled:  # not the plugin's failure: say why
                raise scope.interrupted(self.name, hook) from None
            self.failures += 1
            exc.plugin = exc.plugin or self.name
            exc.hook = exc.hook or hook
            raise
        finally:
            if record is not None and (outcome is not None or failed):  # the guest ran
                record.fuel_used, record.memory_bytes = inst.usage(fuel)
            if scope is not None and scope.unbind(inst):
                failed = True  # interrupted by a cancelled acall: the mark stays, never reuse it
            # A trapped instance may hold half-updated state: it is never reused.
            self._release(inst, keep=persistent, failed=failed)
        if outcome is None:
            self.calls -= 1
            result: bytes = run_on_enough_stack(self._template.engine, self._call, hook,
                                                hook_bytes, payload, fuel, ticks, deadline_at,
                                                deadline_ms, record, accumulator, started)
            return result
        # With metrics on, the clock read that the overrun check needs also counts the call
        # (in C: _speedups.observe); a failed call is counted by call().
        if accumulator is not None and outcome.ok:
            late = _fastpath.observe(accumulator, started) - deadline_at
        else:
            late = _monotonic() - deadline_at
        if late > OVERRUN_GRACE_S:
            self._overrun(hook, deadline_ms, late)
        if outcome.ok:
            return outcome.value
        self.failures += 1
        raise guest_error(outcome, self.name, hook)

    def metrics(self) -> PluginMetrics:
        """A snapshot of this plugin's metrics (:class:`plugbox.PluginMetrics`). With metrics
        off (``Runtime(metrics=False)``) the per-hook figures are empty and latency is an
        empty histogram; the counters kept anyway (calls, failures, instances, services) are
        still there."""
        from ._metrics import empty_histogram

        hooks: dict[str, HookMetrics] = {}
        failures: dict[str, int] = {}
        latency = empty_histogram()
        for hook, hs in (self._stats or {}).items():
            own = hs.histogram()
            hm = HookMetrics(hook, own.count, dict(hs.failures), own)
            hooks[hook] = hm
            latency = latency + hm.latency
            for name, n in hm.failures.items():
                failures[name] = failures.get(name, 0) + n
        with self._cond:
            live = list(self._instances)
            fuel = self._fuel_retired + sum(inst.fuel_consumed for inst in live)
            peaks = [p for p in (inst.memory_peak for inst in live) if p is not None]
            component = isinstance(self._template, ComponentTemplate)
            memory = None if component else max([self._memory_retired, *peaks])
            instances_live = self._live
        svc = self.services.usage()
        return PluginMetrics(
            name=self.name, version=self.version,
            calls=sum(hm.calls for hm in hooks.values()) if self._stats is not None
            else self.calls,
            failures=failures, latency=latency, hooks=hooks, fuel_consumed=fuel,
            memory_peak_bytes=memory, instances_live=instances_live,
            instances_discarded=self.instances_discarded, overruns=self.overruns, **svc)

    def _overrun(self, hook: str, deadline_ms: int, late: float) -> None:
        """A call returned after its deadline (the guest was not in wasm to be interrupted, or
        the host was too busy to take the result): counted, and logged at most once a second."""
        self.overruns += 1
        now = _monotonic()
        if now - self._overrun_logged >= 1.0:
            self._overrun_logged = now
            _logger.warning(
                "plugin %r, hook %r: call returned %.0f ms after its %d ms deadline (%d such "
                "overruns so far)", self.name, hook, late * 1000, deadline_ms, self.overruns)

    def call_json(self, hook: str, value: Any = None, **options: Any) -> Any:
        """Call ``hook`` with ``value`` encoded as JSON and decode the JSON result.

        An empty result decodes to None. A result that is not JSON raises
        :class:`plugbox.AbiViolation`.
        """
        raw = self.call(hook, json.dumps(value).encode(), **options)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise AbiViolation(
                f"plugin {self.name!r}, hook {hook!r}: result is not JSON ({exc}); use call() "
                "for binary results",
                plugin=self.name, hook=hook,
            ) from None

    # -- async calls -----------------------------------------------------------------------
    #
    # The guest runs on a worker thread (the event loop's default executor) inside a _CallScope
    # that records the instances its calls borrow (_call binds them); cancelling the awaiting
    # task interrupts exactly those (each instance's own epoch-callback flag, as close() sets
    # for every instance), so other calls of the plugin run on. An interrupted instance is
    # discarded, not pooled.

    async def acall(
        self,
        hook: str,
        payload: bytes = b"",
        *,
        fuel: int | None = None,
        deadline_ms: int | None = None,
    ) -> bytes:
        """:meth:`call` for asyncio hosts: the guest runs on a worker thread, so the event loop
        keeps running while it does.

        Cancelling the awaiting task interrupts the guest at its next epoch check (within a few
        epoch ticks, about 20 ms) and discards the instance it ran in, so the pool serves the
        next caller; the task's :class:`asyncio.CancelledError` propagates once the guest has
        stopped (a guest blocked in a host service stops when the service returns, within the
        call's deadline). A call cancelled before it started never runs. Other calls of the
        plugin, concurrent or later, are not affected. Raises what :meth:`call` raises.
        """
        result: bytes = await run_cancellable(self._template.engine, self.call, hook, payload,
                                              fuel=fuel, deadline_ms=deadline_ms)
        return result

    async def acall_json(self, hook: str, value: Any = None, **options: Any) -> Any:
        """:meth:`call_json` for asyncio hosts, cancellable like :meth:`acall`."""
        return await run_cancellable(self._template.engine, self.call_json, hook, value,
                                     **options)

    # -- lifetime --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Free every instance. Calls in progress are interrupted at their next epoch check
        and raise :class:`plugbox.ClosedError` (a call blocked in a host service ends when the
        service returns); later calls raise ClosedError too. An instance's store is freed only
        once its call has ended. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for waiter in self._waiters:
                waiter.grant = False
                waiter.event.set()
            self._waiters.clear()
        for inst in list(self._instances):  # the idle ones are closed next, unused
            inst.interrupt()
        self._drain()
        self.runtime._forget(self)

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.mode
        return f"<plugbox.Plugin {self.name} {self.version} ({state})>"


async def run_cancellable(engine: _fastpath.Engine, fn: Callable[..., Any], *args: Any,
                          **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a worker thread (the event loop's default executor), inside
    a :class:`_CallScope`: cancelling the awaiting task interrupts the plugin calls ``fn`` is
    making (the scope is a context variable, so it follows ``fn`` into threads started with
    the caller's context, as PluginHost's concurrent dispatch does), refuses those it has not
    started yet, and returns once they have stopped. What :meth:`Plugin.acall` and
    ``PluginHost.acall`` are made of."""
    scope = _CallScope()
    loop = asyncio.get_running_loop()
    # The worker sees the caller's context variables (as asyncio.to_thread does), and runs on
    # a thread with stack enough for a guest: a call never moves off the scope's context.
    job = functools.partial(contextvars.copy_context().run, run_on_enough_stack, engine,
                            scope.run, fn, args, kwargs)
    future = loop.run_in_executor(None, job)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if scope.cancel():  # the guest is running: wait until it has let go of its instance
            with contextlib.suppress(Exception):
                await asyncio.shield(future)
        else:
            future.cancel()  # still queued: it never starts
        raise


#: The acall scope of the plugin calls made in this context, if any.
_scope: contextvars.ContextVar[_CallScope | None] = contextvars.ContextVar(
    "plugbox_acall_scope", default=None)
#: How many acall scopes are running in the process (guarded by _acalls_lock): while none is,
#: plain calls do not even read the context variable.
_acalls_running = 0
_acalls_lock = threading.Lock()


class _CallScope:
    """One acall, as its worker runs it: the instances its calls borrowed (the outer plugin's,
    those of plugins called from its host functions, those of a dispatch's implementations on
    other threads), so a cancellation interrupts exactly those. bind/unbind and cancel take
    one lock, so an instance is interrupted only while this call holds it, never after it went
    back to the pool for another caller."""

    __slots__ = ("_lock", "_held", "_started", "_cancelled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[_Inst] = []
        self._started = False
        self._cancelled = False

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn(*args, **kwargs)`` on this (worker) thread inside the scope; nothing when the
        acall was cancelled while the job was queued."""
        with self._lock:
            if self._cancelled:
                return None
            self._started = True
        global _acalls_running
        token = _scope.set(self)
        with _acalls_lock:
            _acalls_running += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with _acalls_lock:
                _acalls_running -= 1
            _scope.reset(token)

    def bind(self, inst: _Inst) -> bool:
        """A call of the scope took ``inst``; False when the acall was cancelled already (the
        call must not start)."""
        with self._lock:
            if self._cancelled:
                return False
            self._held.append(inst)
            return True

    def unbind(self, inst: _Inst) -> bool:
        """The call that took ``inst`` ended; True when a cancellation interrupted it."""
        with self._lock:
            self._held.remove(inst)
            return self._cancelled

    @property
    def cancelled(self) -> bool:
        """True once the acall was cancelled."""
        return self._cancelled

    @staticmethod
    def interrupted(plugin: str, hook: str) -> ClosedError:
        """What a call interrupted by its acall's cancellation raises (monitors see it; the
        awaiting task gets CancelledError)."""
        return ClosedError(
            f"plugin {plugin!r}, hook {hook!r}: interrupted because the asyncio task awaiting "
            "it (acall) was cancelled; the plugin did nothing wrong.",
            plugin=plugin, hook=hook)

    def cancel(self) -> bool:
        """Interrupt the scope's calls in progress; True when the job had started (its guest
        may be running)."""
        with self._lock:
            self._cancelled = True
            for inst in self._held:
                inst.interrupt()
            return self._started


MonitorPair = tuple[Callable[[CallRecord], None], Callable[[CallRecord], None]]
