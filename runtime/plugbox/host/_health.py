"""Plugin health checks (issue 10 §3).

A plugin that declares the hook ``plugbox.health`` (:data:`HEALTH_HOOK`) in its manifest
reports its own health: the hook takes an empty payload and returns a JSON object
``{"status": "ok" | "degraded" | "failing", "details": {...}}`` (``details`` optional, any JSON
object). Both SDKs have a helper (Rust ``plugbox_sdk::health``, Python
``plugbox_sdk.health``). The host runs it:

* on demand: :meth:`PluginHost.check_health`;
* on a schedule: ``PluginHost(health_interval=SECONDS)`` checks every enabled plugin that has
  the hook once per interval on a background thread, after :meth:`PluginHost.start`;
* after on-init, when the lifecycle loads a plugin, and as the last gate of an upgrade: a
  ``failing`` report counts as the plugin failing to start (the upgrade is rolled back).

A check runs under a short budget (:data:`HEALTH_DEADLINE_MS`, at most the plugin's own
limits); a trap, a limit, an error or a malformed report is ``failing`` with the reason. A
plugin without the hook reports ``unknown``, which the host treats as healthy (it loaded and
its on-init passed). Subscribers (:meth:`PluginHost.subscribe_health`) get every report.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .._errors import PlugboxError, UsageError

if TYPE_CHECKING:
    from .._plugin import Plugin
    from ._host import HostedPlugin

__all__ = ["HEALTH_HOOK", "HealthReport"]

_log = logging.getLogger("plugbox.health")

#: The hook a plugin implements to report its health.
HEALTH_HOOK: Final = "plugbox.health"
#: A health check's deadline (capped by the plugin's own deadline).
HEALTH_DEADLINE_MS: Final = 1000
#: The largest health report the host reads (bytes of JSON).
HEALTH_REPORT_MAX: Final = 16 * 1024
STATUSES: Final = ("ok", "degraded", "failing")


@dataclass(frozen=True)
class HealthReport:
    """One health check of one plugin. ``status`` is ``ok``, ``degraded``, ``failing`` or
    ``unknown`` (the plugin has no ``plugbox.health`` hook); ``details`` what the plugin said;
    ``reason`` why a check is ``failing`` when the plugin could not say it itself (a trap, a
    limit, a malformed report); ``at`` a Unix time, ``seconds`` how long it took."""

    plugin: str
    version: str
    status: str
    details: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    at: float = 0.0
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        """True unless ``failing`` (``degraded`` still serves)."""
        return self.status != "failing"

    def to_json(self) -> dict[str, Any]:
        """The JSON form (for ``--json`` output)."""
        return {"plugin": self.plugin, "version": self.version, "status": self.status,
                "details": dict(self.details), "reason": self.reason, "at": self.at,
                "seconds": self.seconds}


def has_health_hook(plugin: Plugin) -> bool:
    """Whether ``plugin`` declares the health hook."""
    return HEALTH_HOOK in plugin.hooks


def check(plugin: Plugin) -> HealthReport:
    """Run ``plugin``'s health hook now (see the module docstring); never raises for what the
    plugin does."""
    started = time.monotonic()
    at = time.time()

    def report(status: str, details: Mapping[str, Any] | None = None,
               reason: str | None = None) -> HealthReport:
        return HealthReport(plugin.name, plugin.version, status, dict(details or {}), reason,
                            at, time.monotonic() - started)

    if not has_health_hook(plugin):
        return report("unknown")
    try:
        raw = plugin.call(HEALTH_HOOK, b"",
                          deadline_ms=min(HEALTH_DEADLINE_MS, plugin.limits.deadline_ms))
    except PlugboxError as exc:
        return report("failing", reason=f"the health check failed: {type(exc).__name__}: "
                                        f"{exc.message}")
    if len(raw) > HEALTH_REPORT_MAX:
        return report("failing", reason=f"the health report is {len(raw)} bytes; at most "
                                        f"{HEALTH_REPORT_MAX} are read")
    try:
        value = json.loads(raw) if raw else None
    except ValueError as exc:
        return report("failing", reason=f"the health report is not JSON ({exc})")
    if not isinstance(value, dict) or value.get("status") not in STATUSES:
        return report("failing", reason='the health report must be a JSON object with '
                                        '"status": "ok", "degraded" or "failing" (and '
                                        'optional "details": {...}); got '
                                        f"{json.dumps(value)[:200]}")
    details = value.get("details", {})
    if not isinstance(details, dict):
        return report("failing", reason='"details" in the health report must be a JSON '
                                        "object")
    return report(value["status"], details)


class HealthMixin:
    """Health checks of :class:`plugbox.PluginHost` (see the module docstring)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        @property
        def plugins(self) -> tuple[HostedPlugin, ...]: ...
        def get(self, name: str) -> HostedPlugin | None: ...

    _health_interval: float | None
    _health_reports: dict[str, HealthReport]
    _health_subscribers: list[Callable[[HealthReport], None]]
    _health_stop: threading.Event
    _health_thread: threading.Thread | None

    def _init_health(self, interval: float | None) -> None:
        if interval is not None and (isinstance(interval, bool)
                                     or not isinstance(interval, (int, float))
                                     or not 1.0 <= interval <= 86_400.0):
            raise UsageError(f"health_interval must be a number of seconds from 1 to 86400, "
                             f"or None (no scheduled checks), not {interval!r}")
        self._health_interval = None if interval is None else float(interval)
        self._health_reports = {}
        self._health_subscribers = []
        self._health_stop = threading.Event()
        self._health_thread = None

    def subscribe_health(self, callback: Callable[[HealthReport], None]
                         ) -> Callable[[], None]:
        """Call ``callback(HealthReport)`` after every health check (scheduled, on demand,
        after on-init, at an upgrade). Returns a function that unsubscribes. A callback that
        raises is logged on ``plugbox.health``."""
        if not callable(callback):
            raise UsageError("subscribe_health needs a callable")
        self._health_subscribers = [*self._health_subscribers, callback]

        def unsubscribe() -> None:
            self._health_subscribers = [c for c in self._health_subscribers
                                        if c is not callback]
        return unsubscribe

    def check_health(self, name: str | None = None) -> dict[str, HealthReport]:
        """Run the health check of plugin ``name`` (or of every enabled hosted plugin) now;
        {name: report}. :class:`plugbox.UsageError` for a plugin that is not hosted."""
        if name is not None:
            hosted = self.get(name)
            if hosted is None:
                raise UsageError(f"check_health({name!r}): no plugin {name!r} is hosted "
                                 f"(hosted: {', '.join(h.name for h in self.plugins) or 'none'})",
                                 plugin=name)
            targets = [hosted]
        else:
            targets = [h for h in self.plugins if h.enabled]
        return {h.name: self._health_of(h.plugin) for h in targets}

    def health(self) -> dict[str, HealthReport]:
        """The latest report of each plugin checked so far (without running a check)."""
        return dict(self._health_reports)

    def _health_of(self, plugin: Plugin) -> HealthReport:
        """Check ``plugin``, record and announce the report."""
        found = check(plugin)
        self._health_reports[plugin.name] = found
        if found.status == "failing":
            _log.warning("plugin %s %s: health check failing: %s", found.plugin, found.version,
                         found.reason or json.dumps(dict(found.details))[:500])
        elif found.status == "degraded":
            _log.info("plugin %s %s: degraded: %s", found.plugin, found.version,
                      json.dumps(dict(found.details))[:500])
        for callback in self._health_subscribers:
            try:
                callback(found)
            except Exception:
                _log.exception("health subscriber %r raised on %s", callback, found.plugin)
        return found

    def _start_health_schedule(self) -> None:
        """Start the scheduled checks (once; no-op without ``health_interval``)."""
        if self._health_interval is None or self._health_thread is not None:
            return
        interval = self._health_interval
        stop = self._health_stop

        def loop() -> None:
            while not stop.wait(interval):
                for hosted in self.plugins:
                    if stop.is_set():
                        return
                    if hosted.enabled and has_health_hook(hosted.plugin):
                        try:
                            self._health_of(hosted.plugin)
                        except Exception:  # a closed plugin mid-swap: checked next round
                            _log.debug("health check of %s skipped", hosted.name,
                                       exc_info=True)

        self._health_thread = threading.Thread(target=loop, name="plugbox-health", daemon=True)
        self._health_thread.start()

    def _stop_health_schedule(self) -> None:
        self._health_stop.set()
        thread, self._health_thread = self._health_thread, None
        if thread is not None:
            thread.join(timeout=5.0)
