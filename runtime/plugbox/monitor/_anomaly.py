"""Behaviour anomalies (issue 10 §4): rules that flag a plugin whose behaviour departs from
what it usually does or declared, each with a threshold and an action.

:class:`AnomalyMonitor` watches one :class:`plugbox.PluginHost`: after every call of a
hosted plugin (``Runtime.add_call_monitoring``) it compares the call with the plugin's own
history, and it reads the plugin's service counters (denials, http hosts, kv usage). The
rules and their conservative defaults:

==================  =========================================================  ===========
rule                flags                                                      action
==================  =========================================================  ===========
``denied-burst``    at least 10 denied service calls within 60 s (probing)      ``event``
``fuel-spike``      a call using at least 10x the median fuel of that hook's    ``log``
                    last calls (after 20 calls of history)
``memory-spike``    an instance whose memory reaches 10x that hook's median     ``log``
                    (after 20 calls of history)
``new-http-host``   http to a host the plugin never used, after 50 calls        ``log``
``kv-near-quota``   kv bytes or keys at 90 % of the plugin's quota or more      ``event``
==================  =========================================================  ===========

Actions: ``log`` (a WARNING on ``plugbox.anomaly``), ``event`` (that, and a lifecycle event
``anomaly`` to the host's subscribers), ``quarantine`` (that, and the plugin quarantined by
hand: ``host.quarantine``; an operator releases it). A rule fires once per plugin until its
condition has cleared (a quiet window, a normal call, usage below the threshold), so a
flood of calls is one anomaly, not thousands. :meth:`AnomalyMonitor.anomalies` lists what
fired; :meth:`AnomalyMonitor.subscribe` calls back on each.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .._errors import UsageError

if TYPE_CHECKING:
    from .._plugin import CallRecord
    from ..host._host import PluginHost

__all__ = ["Anomaly", "AnomalyMonitor", "AnomalyRules"]

_log = logging.getLogger("plugbox.anomaly")

ACTIONS: Final = ("log", "event", "quarantine")
#: Calls of history kept per (plugin, hook) for the fuel and memory medians.
HISTORY: Final = 101
#: The kv usage (a database read) is checked at most this often per plugin.
KV_CHECK_INTERVAL_S: Final = 1.0


def _action(value: str, rule: str) -> str:
    if value not in ACTIONS:
        raise UsageError(f"AnomalyRules: {rule} action must be one of {', '.join(ACTIONS)}, "
                         f"not {value!r}")
    return value


@dataclass(frozen=True)
class AnomalyRules:
    """The rules' thresholds and actions (see the module docstring for the defaults). A
    threshold of None turns its rule off."""

    denied_burst: int | None = 10
    denied_window_s: float = 60.0
    denied_action: str = "event"
    fuel_factor: float | None = 10.0
    fuel_action: str = "log"
    memory_factor: float | None = 10.0
    memory_action: str = "log"
    history_calls: int = 20
    new_host_after_calls: int | None = 50
    new_host_action: str = "log"
    kv_fraction: float | None = 0.9
    kv_action: str = "event"

    def __post_init__(self) -> None:
        for name in ("denied", "fuel", "memory", "new_host", "kv"):
            _action(getattr(self, f"{name}_action"), name)
        for name, low in (("denied_burst", 1), ("new_host_after_calls", 0)):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < low):
                raise UsageError(f"AnomalyRules: {name} must be an int >= {low} or None")
        for name in ("fuel_factor", "memory_factor"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 1):
                raise UsageError(f"AnomalyRules: {name} must be a number above 1 or None")
        if self.kv_fraction is not None and not 0 < self.kv_fraction <= 1:
            raise UsageError("AnomalyRules: kv_fraction must be in (0, 1] or None")
        if type(self.history_calls) is not int or not 2 <= self.history_calls < HISTORY:
            raise UsageError(f"AnomalyRules: history_calls must be an int from 2 to "
                             f"{HISTORY - 1}")
        if not 0.1 <= self.denied_window_s <= 86_400:
            raise UsageError("AnomalyRules: denied_window_s must be 0.1 to 86400 seconds")


@dataclass(frozen=True)
class Anomaly:
    """One rule that fired: ``rule`` (``denied-burst``, ``fuel-spike``, ``memory-spike``,
    ``new-http-host``, ``kv-near-quota``), the ``plugin`` (and ``hook`` when the rule is about
    one), what happened (``detail``), the ``action`` taken, and when (``at``, Unix time)."""

    rule: str
    plugin: str
    hook: str | None
    detail: str
    action: str
    at: float
    figures: Mapping[str, Any] = field(default_factory=dict)


class _PluginState:
    """What the monitor remembers of one plugin."""

    def __init__(self) -> None:
        self.calls = 0
        self.fuel: dict[str, deque[int]] = {}
        self.memory: dict[str, deque[int]] = {}
        self.denials_seen = 0
        self.denial_times: deque[float] = deque()
        self.hosts: set[str] = set()
        self.kv_checked = float("-inf")
        self.firing: set[str] = set()  # rules (rule or rule:hook) fired and not yet cleared


class AnomalyMonitor:
    """Watches ``host``'s plugins under ``rules`` (see the module docstring). Attach it once;
    :meth:`close` detaches it. ``clock`` (monotonic seconds) is for tests."""

    def __init__(self, host: PluginHost, rules: AnomalyRules | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.rules = rules if rules is not None else AnomalyRules()
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, _PluginState] = {}
        self._fired: deque[Anomaly] = deque(maxlen=1000)
        self._subscribers: list[Callable[[Anomaly], None]] = []
        self._detach = host.runtime.add_call_monitoring(lambda record: None, self._after)

    def close(self) -> None:
        """Stop watching."""
        self._detach()

    def subscribe(self, callback: Callable[[Anomaly], None]) -> Callable[[], None]:
        """Call ``callback(Anomaly)`` for each anomaly; returns a function that unsubscribes."""
        self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            self._subscribers = [c for c in self._subscribers if c is not callback]
        return unsubscribe

    def anomalies(self, plugin: str | None = None) -> list[Anomaly]:
        """The anomalies that fired (the last 1000), oldest first."""
        return [a for a in self._fired if plugin is None or a.plugin == plugin]

    # -- per call ----------------------------------------------------------------------------

    def _after(self, record: CallRecord) -> None:
        hosted = self.host.get(record.plugin)
        if hosted is None:
            return
        found: list[Anomaly] = []
        with self._lock:
            st = self._state.setdefault(record.plugin, _PluginState())
            st.calls += 1
            found += self._spikes(st, record)
            services = hosted.plugin.services
            found += self._denials(st, record.plugin, sum(services.denied.values()))
            found += self._hosts(st, record.plugin, services.http_hosts)
            found += self._kv(st, record.plugin, services)
        for anomaly in found:
            self._act(anomaly)

    def _fire(self, st: _PluginState, key: str, anomaly: Anomaly) -> list[Anomaly]:
        if key in st.firing:
            return []
        st.firing.add(key)
        return [anomaly]

    def _anomaly(self, rule: str, plugin: str, hook: str | None, detail: str, action: str,
                 **figures: Any) -> Anomaly:
        return Anomaly(rule, plugin, hook, detail, action, time.time(), figures)

    def _spikes(self, st: _PluginState, record: CallRecord) -> list[Anomaly]:
        out: list[Anomaly] = []
        r = self.rules
        for rule, factor, value, history, action, unit in (
                ("fuel-spike", r.fuel_factor, record.fuel_used, st.fuel, r.fuel_action, "fuel"),
                ("memory-spike", r.memory_factor, record.memory_bytes, st.memory,
                 r.memory_action, "bytes of memory")):
            if factor is None or value is None:
                continue
            past = history.setdefault(record.hook, deque(maxlen=HISTORY))
            key = f"{rule}:{record.hook}"
            if len(past) >= r.history_calls:
                usual = statistics.median(past)
                if usual > 0 and value >= factor * usual:
                    out += self._fire(st, key, self._anomaly(
                        rule, record.plugin, record.hook,
                        f"hook {record.hook!r} used {value:,} {unit}, {value / usual:.0f}x its "
                        f"median of {usual:,.0f} over the last {len(past)} calls",
                        action, value=value, median=usual))
                    continue  # a spike does not become the new normal
                st.firing.discard(key)
            past.append(value)
        return out

    def _denials(self, st: _PluginState, plugin: str, total: int) -> list[Anomaly]:
        r = self.rules
        if r.denied_burst is None:
            return []
        now = self._clock()
        times = st.denial_times
        for _ in range(max(0, total - st.denials_seen)):
            times.append(now)
        st.denials_seen = total
        while times and times[0] < now - r.denied_window_s:
            times.popleft()
        if len(times) >= r.denied_burst:
            return self._fire(st, "denied-burst", self._anomaly(
                "denied-burst", plugin, None,
                f"{len(times)} service calls denied within {r.denied_window_s:g} s: the "
                f"plugin probes for what it was not granted", r.denied_action,
                denials=len(times)))
        if not times:
            st.firing.discard("denied-burst")
        return []

    def _hosts(self, st: _PluginState, plugin: str, used: Mapping[str, int]) -> list[Anomaly]:
        r = self.rules
        if r.new_host_after_calls is None:
            return []
        new = [h for h in used if h not in st.hosts]
        if not new:
            return []
        st.hosts.update(new)
        if st.calls <= r.new_host_after_calls:
            return []  # still learning what the plugin uses
        out: list[Anomaly] = []
        for h in new:
            out += self._fire(st, f"new-http-host:{h}", self._anomaly(
                "new-http-host", plugin, None,
                f"http to {h}, a host the plugin never used in its first "
                f"{r.new_host_after_calls} calls", r.new_host_action, host=h))
        return out

    def _kv(self, st: _PluginState, plugin: str, services: Any) -> list[Anomaly]:
        r = self.rules
        now = self._clock()
        if r.kv_fraction is None or now - st.kv_checked < KV_CHECK_INTERVAL_S:
            return []
        st.kv_checked = now
        usage = services.usage()  # the metrics' figures: no kv grant, no database read
        quota_bytes, quota_k = usage["kv_quota_bytes"], usage["kv_quota_keys"]
        if not quota_bytes:
            return []
        used_b, used_k = usage["kv_bytes"], usage["kv_keys"]
        share = max(used_b / quota_bytes, used_k / quota_k if quota_k else 0.0)
        if share >= r.kv_fraction:
            return self._fire(st, "kv-near-quota", self._anomaly(
                "kv-near-quota", plugin, None,
                f"kv storage at {share:.0%} of its quota ({used_b:,} of {quota_bytes:,} "
                f"bytes, {used_k:,} of {quota_k:,} keys)", r.kv_action,
                bytes=used_b, keys=used_k))
        st.firing.discard("kv-near-quota")
        return []

    # -- actions -----------------------------------------------------------------------------

    def _act(self, anomaly: Anomaly) -> None:
        self._fired.append(anomaly)
        _log.warning("plugin %r: anomaly %s: %s (action: %s)", anomaly.plugin, anomaly.rule,
                     anomaly.detail, anomaly.action)
        if anomaly.action in ("event", "quarantine"):
            self.host._emit("anomaly", anomaly.plugin, None, None,
                            f"{anomaly.rule}: {anomaly.detail}", "anomaly-monitor")
        if anomaly.action == "quarantine":
            try:
                self.host.quarantine(anomaly.plugin, f"anomaly {anomaly.rule}: "
                                     f"{anomaly.detail}"[:1000], actor="anomaly-monitor")
            except Exception:  # a plugin gone meanwhile
                _log.exception("anomaly monitor: could not quarantine %r", anomaly.plugin)
        for callback in self._subscribers:
            try:
                callback(anomaly)
            except Exception:
                _log.exception("anomaly subscriber %r raised", callback)
