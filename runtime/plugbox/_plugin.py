"""A loaded plugin: its instance pool, call modes and typed failures."""

from __future__ import annotations

import json
import threading
from time import monotonic as _monotonic
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ._errors import (
    AbiViolation,
    PlugboxError,
    PluginCallError,
    UnknownHookError,
    UsageError,
)
from ._fastpath import CallOutcome, Instance, Template, guest_error
from ._fastpath_component import ComponentInstance, ComponentTemplate

if TYPE_CHECKING:
    from ._manifest import Manifest
    from ._permissions import Limits, Permissions
    from ._runtime import Runtime
    from ._services import HostServices
    from ._trust import SignerInfo

__all__ = ["CallRecord", "Plugin"]

Mode = Literal["persistent", "fresh"]


class CallRecord:
    """What monitors see of one call: plugin, hook, sizes, duration and the error if any."""

    __slots__ = ("plugin", "hook", "payload_size", "result_size", "seconds", "error")

    def __init__(self, plugin: str, hook: str, payload_size: int) -> None:
        self.plugin = plugin
        self.hook = hook
        self.payload_size = payload_size
        self.result_size = 0
        self.seconds = 0.0
        self.error: PlugboxError | None = None


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
        runtime: Runtime,
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
        self._idle: list[Instance | ComponentInstance] = []
        self._live = 0
        self._waiting = 0
        self._cond = threading.Condition()
        self._closed = False
        self._freed = False
        self.calls = 0
        self.failures = 0
        self.instances_discarded = 0
        # Prove the plugin starts (and its on-init accepts the config) before handing it out.
        first = self._new_instance()
        if mode == "persistent":
            self._idle.append(first)
            self._live = 1
        else:
            first.close()

    # -- pool ------------------------------------------------------------------------------
    #
    # Idle instances sit in a list: list.pop/append are atomic, so a call that finds an idle
    # instance takes no lock. The condition guards the slow path (creating an instance up to
    # the pool size, or waiting for one) and closing.

    def _new_instance(self) -> Instance | ComponentInstance:
        fuel = self.limits.fuel
        inst = self._template.instantiate(fuel, self._ticks)
        try:
            outcome = inst.call_init(self._config_json, fuel, self._ticks,
                                     self.limits.deadline_ms)
        except BaseException:
            inst.close()
            raise
        if not outcome.ok:
            inst.close()
            raise guest_error(outcome, self.name, "on-init")
        return inst

    def _acquire_slow(self, reuse: bool) -> Instance | ComponentInstance:
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise UsageError(
                            f"plugin {self.name!r} is closed; load it again to call it"
                        )
                    if reuse and self._idle:
                        return self._idle.pop()
                    if self._live < self.limits.instances:
                        self._live += 1
                        break
                    self._cond.wait(0.1)
            finally:
                self._waiting -= 1
        try:
            return self._new_instance()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, inst: Instance | ComponentInstance, *, keep: bool, failed: bool) -> None:
        if keep and not failed and not self._closed:
            self._idle.append(inst)
            if self._waiting:
                with self._cond:
                    self._cond.notify()
            if self._closed:  # close() ran meanwhile: it may have missed this instance
                self._drain()
            return
        with self._cond:
            inst.close()
            self._live -= 1
            if failed:
                self.instances_discarded += 1
            self._cond.notify()
            last = self._closed and self._live == 0
        if last:
            self._free()

    def _drain(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            last = self._live == 0 and not self._freed
            self._freed = self._freed or last
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
            fuel = min(fuel, self.runtime.policy.max_limits.fuel)
        if deadline_ms is not None:
            deadline_ms = min(deadline_ms, self.runtime.policy.max_limits.deadline_ms)
            ticks = self._template.engine.deadline_ticks(deadline_ms)
            seconds = deadline_ms / 1000.0
        if self.runtime._monitors:
            return self._monitored(hook, hook_bytes, payload, fuel, ticks, seconds)
        return self._call(hook, hook_bytes, payload, fuel, ticks, _monotonic() + seconds,
                          int(seconds * 1000))

    def _monitored(
        self, hook: str, hook_bytes: bytes, payload: bytes, fuel: int, ticks: int,
        seconds: float,
    ) -> bytes:
        monitors = self.runtime._monitors
        record = CallRecord(self.name, hook, len(payload))
        for before, _ in monitors:
            before(record)
        started = _monotonic()
        try:
            result = self._call(hook, hook_bytes, payload, fuel, ticks, started + seconds,
                                int(seconds * 1000))
            record.result_size = len(result)
            return result
        except PlugboxError as exc:
            record.error = exc
            raise
        finally:
            record.seconds = _monotonic() - started
            for _, after in monitors:
                after(record)

    def _call(
        self, hook: str, hook_bytes: bytes, payload: bytes, fuel: int, ticks: int,
        deadline_at: float, deadline_ms: int,
    ) -> bytes:
        self.calls += 1
        persistent = self._persistent
        try:
            if not persistent:
                raise IndexError
            inst = self._idle.pop()
        except IndexError:
            inst = self._acquire_slow(persistent)
        failed = True
        try:
            outcome: CallOutcome = inst.call_hook(hook, hook_bytes, payload, fuel, ticks,
                                                  deadline_at, deadline_ms)
            failed = False
        except PlugboxError as exc:
            self.failures += 1
            exc.plugin = exc.plugin or self.name
            exc.hook = exc.hook or hook
            raise
        finally:
            # A trapped instance may hold half-updated state: it is never reused.
            self._release(inst, keep=persistent, failed=failed)
        if outcome.ok:
            return outcome.value
        self.failures += 1
        raise guest_error(outcome, self.name, hook)

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

    # -- lifetime --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Free every instance. Calls in progress finish; later calls raise UsageError.
        Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._drain()
        self.runtime._forget(self)

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.mode
        return f"<plugbox.Plugin {self.name} {self.version} ({state})>"


MonitorPair = tuple[Callable[[CallRecord], None], Callable[[CallRecord], None]]
