"""Quarantine: the circuit breakers applied to a PluginHost's dispatch (issue 10 §2).

Each hosted plugin has a :class:`~plugbox.host._breaker.Breaker` under the host's
:class:`BreakerPolicy` (``PluginHost(breaker=...)``; an extension point may bring its own,
``extension_point(..., breaker=...)``, whose failures then count against a breaker of that
plugin at that point only). When one opens, the plugin leaves the dispatch tables (of every
point, or of that point); a timer puts it back as a *probe* once its wait is over: the next
dispatch that reaches it makes one call, whose success closes the breaker and whose failure
doubles the wait. A quarantined plugin is reported to callers by the point's failure policy: a
:class:`QuarantinedError` among ``failures`` under ``isolate``, raised under ``propagate``.
Lifecycle events ``quarantined`` and ``released``, and a WARNING on ``plugbox.host``, say why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._errors import UsageError
from ._breaker import Breaker, BreakerPolicy, BreakerState, QuarantinedError

if TYPE_CHECKING:
    from ._host import HostedPlugin, _Impl, _Tables
    from ._points import ExtensionPoint

_log = logging.getLogger("plugbox.host")

#: Breaker key: (plugin, None) for the host-wide one, (plugin, point) for a point's own.
_Key = tuple[str, "str | None"]


class QuarantineMixin:
    """Breakers and quarantine of :class:`plugbox.PluginHost` (see the module docstring)."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _tables: _Tables
        _closed: bool

        def get(self, name: str) -> HostedPlugin | None: ...
        def _publish(self, *, points: Any = None, functions: Any = None,
                     plugins: tuple[HostedPlugin, ...] | None = None) -> None: ...
        def _emit(self, kind: str, plugin: str, from_version: str | None,
                  to_version: str | None, reason: str | None, actor: str | None,
                  at: float | None = None) -> None: ...
        def _quarantine_recorded(self, name: str, reason: str | None, manual: bool) -> None: ...

    _breaker_policy: BreakerPolicy
    _breakers: dict[_Key, Breaker]
    _breaker_timers: dict[_Key, threading.Timer]

    def _init_breakers(self, policy: BreakerPolicy | None) -> None:
        if policy is not None and not isinstance(policy, BreakerPolicy):
            raise UsageError(f"breaker must be a plugbox.BreakerPolicy or None, not "
                             f"{type(policy).__name__}")
        self._breaker_policy = policy if policy is not None else BreakerPolicy(enabled=False)
        self._breakers = {}
        self._breaker_timers = {}

    # -- what the tables need ---------------------------------------------------------------

    def _blocked(self, point: str, entries: tuple[_Impl, ...]
                 ) -> tuple[tuple[_Impl, ...], tuple[tuple[str, QuarantinedError], ...],
                            frozenset[str]]:
        """(entries to dispatch, quarantined ones with their error, probing names) for
        ``point``; called by PluginHost._publish with the lock held."""
        if not self._breakers:
            return entries, (), frozenset()
        keep: list[_Impl] = []
        blocked: list[tuple[str, QuarantinedError]] = []
        probing: set[str] = set()
        for entry in entries:
            state = None
            for key in ((entry.name, None), (entry.name, point)):
                b = self._breakers.get(key)
                if b is not None and b.state != "closed":
                    state = b
                    if b.due() != 0.0:
                        break
            if state is None:
                keep.append(entry)
            elif state.due() == 0.0:  # its wait is over: the next dispatch probes it
                keep.append(entry)
                probing.add(entry.name)
            else:
                blocked.append((entry.name, self._quarantined_error(state, point)))
        return tuple(keep), tuple(blocked), frozenset(probing)

    @staticmethod
    def _quarantined_error(b: Breaker, point: str) -> QuarantinedError:
        snap = b.snapshot()
        when = ("until an operator releases it" if snap.manual else
                f"until a probe call in {max(0.0, (snap.retry_at or 0) - time.time()):.0f} s")
        return QuarantinedError(
            f"plugin {b.plugin!r} is quarantined ({snap.reason}); extension point {point!r} "
            f"skips it {when}. Fix the plugin or release it (host.release({b.plugin!r}), "
            f"`plugbox plugins release {b.plugin}`)",
            plugin=b.plugin, reason=snap.reason, retry_at=snap.retry_at)

    # -- what dispatch reports ---------------------------------------------------------------

    def _breaker_for(self, name: str, spec: ExtensionPoint) -> tuple[_Key, Breaker]:
        own = getattr(spec, "breaker", None)
        key: _Key = (name, spec.name) if own is not None else (name, None)
        b = self._breakers.get(key)
        if b is None:
            with self._lock:
                b = self._breakers.get(key)
                if b is None:
                    b = self._breakers[key] = Breaker(
                        name, own if own is not None else self._breaker_policy)
        return key, b

    def _note_failure(self, spec: ExtensionPoint, entry: _Impl, exc: BaseException) -> None:
        """A dispatched call of ``entry`` failed: count it; quarantine when the breaker
        opens."""
        policy = getattr(spec, "breaker", None) or self._breaker_policy
        if not policy.enabled:
            return
        key, b = self._breaker_for(entry.name, spec)
        if b.failure(exc, entry.hosted.plugin.calls):
            self._opened(key, b)

    def _note_probe(self, spec: ExtensionPoint, entry: _Impl) -> bool:
        """``entry`` is being probed: True when this caller makes the probe call."""
        for key in ((entry.name, None), (entry.name, spec.name)):
            b = self._breakers.get(key)
            if b is not None and b.state != "closed":
                return b.allow()
        return True

    def _note_success(self, spec: ExtensionPoint, entry: _Impl) -> None:
        """A probe call of ``entry`` succeeded: close its breaker."""
        for key in ((entry.name, None), (entry.name, spec.name)):
            b = self._breakers.get(key)
            if b is not None and b.success(entry.hosted.plugin.calls):
                self._closed_breaker(key, b, actor=None)

    # -- transitions -------------------------------------------------------------------------

    def _opened(self, key: _Key, b: Breaker, actor: str | None = None) -> None:
        name, point = key
        where = f" at extension point {point!r}" if point else ""
        due = b.due()
        _log.warning("plugin %r quarantined%s: %s; %s", name, where, b.reason,
                     "held until released" if due is None else f"probe in {due:.1f} s")
        with self._lock:
            if not self._closed:
                self._publish()
        self._schedule(key, b)
        if point is None:
            self._record_quarantine(name, b)
        self._emit("quarantined", name, None, None, f"{b.reason}{where}", actor)

    def _schedule(self, key: _Key, b: Breaker) -> None:
        due = b.due()
        old = self._breaker_timers.pop(key, None)
        if old is not None:
            old.cancel()
        if due is None or self._closed:
            return
        timer = threading.Timer(due + 0.001, self._probe_due, (key,))
        timer.daemon = True
        self._breaker_timers[key] = timer
        timer.start()

    def _probe_due(self, key: _Key) -> None:
        """The wait of ``key``'s breaker is over: republish, so a dispatch probes it."""
        self._breaker_timers.pop(key, None)
        with self._lock:
            if not self._closed:
                self._publish()

    def _closed_breaker(self, key: _Key, b: Breaker, actor: str | None) -> None:
        name, point = key
        _log.warning("plugin %r released%s", name,
                     f" at extension point {point!r}" if point else "")
        timer = self._breaker_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        with self._lock:
            if not self._closed:
                self._publish()
        if point is None:
            self._record_quarantine(name, None)
        self._emit("released", name, None, None, None, actor)

    def _record_quarantine(self, name: str, b: Breaker | None) -> None:
        """Keep the quarantine in the lifecycle state (the lifecycle mixin implements it for
        installed plugins; a no-op for others)."""
        recorder = getattr(self, "_quarantine_recorded", None)
        if recorder is None:
            return
        try:
            recorder(name, None if b is None else b.reason, bool(b and b.manual))
        except Exception:  # the breaker still works in this process
            _log.exception("plugin %r: the quarantine could not be recorded", name)
        else:
            if b is not None:
                b.recorded = True

    # -- the API -----------------------------------------------------------------------------

    def breakers(self) -> Mapping[str, BreakerState]:
        """The state of each plugin's host-wide breaker (plugins never counted a failure
        have none: they are closed)."""
        return {name: b.snapshot() for (name, point), b in list(self._breakers.items())
                if point is None}

    def quarantine(self, name: str, reason: str = "quarantined by an operator", *,
                   actor: str | None = None) -> BreakerState:
        """Take plugin ``name`` out of dispatch until :meth:`release` (no probes)."""
        if self.get(name) is None:
            raise UsageError(f"quarantine({name!r}): no plugin {name!r} is hosted", plugin=name)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
            raise UsageError("quarantine: reason must be a non-empty text of at most 1000 "
                             "characters")
        key: _Key = (name, None)
        with self._lock:
            b = self._breakers.setdefault(key, Breaker(name, self._breaker_policy))
        b.hold(reason)
        self._opened(key, b, actor)
        return b.snapshot()

    def release(self, name: str, *, actor: str | None = None) -> BreakerState:
        """Close plugin ``name``'s breakers (host-wide and per point): it is dispatched to
        again from the next call."""
        found = [(k, b) for k, b in list(self._breakers.items()) if k[0] == name]
        if self.get(name) is None and not found:
            raise UsageError(f"release({name!r}): no plugin {name!r} is hosted", plugin=name)
        for key, b in found:
            was = b.state
            b.release()
            if was != "closed":
                self._closed_breaker(key, b, actor)
        key0: _Key = (name, None)
        b0 = self._breakers.get(key0)
        return b0.snapshot() if b0 is not None else BreakerState(name, "closed", None, None, 0,
                                                                  0, False)

    def _restore_quarantine(self, name: str, reason: str, manual: bool) -> None:
        """Reopen ``name``'s breaker as recorded before a restart: a first probe after the
        policy's first wait (or never, for an operator's hold)."""
        key: _Key = (name, None)
        with self._lock:
            b = self._breakers.setdefault(key, Breaker(name, self._breaker_policy))
        if manual:
            b.hold(reason)
        else:
            b.restore(reason, manual=False, retry_in=self._breaker_policy.backoff_s)
        b.recorded = True  # it came from the lifecycle state
        with self._lock:
            if not self._closed:
                self._publish()
        self._schedule(key, b)

    def _stop_breakers(self) -> None:
        for timer in list(self._breaker_timers.values()):
            timer.cancel()
        self._breaker_timers.clear()
