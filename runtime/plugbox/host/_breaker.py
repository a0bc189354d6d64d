"""Circuit breakers (issue 10 §2): one per hosted plugin.

A plugin whose calls keep failing is *quarantined*: it leaves dispatch (the extension point's
failure policy decides what callers see: under ``isolate`` a :class:`QuarantinedError` in the
result's failures, under ``propagate`` that error raised), a lifecycle event and a log record
say why, and after a backoff it is let back for one *probe* call (half-open): success closes
the breaker, failure doubles the wait. Defaults follow Home Assistant's retry ladder: 5, 10,
20, 40, 80 s (capped at 80), each with +-10 % jitter.

What counts: guest traps, limits (fuel, deadline, memory, stack), guest errors, ABI
violations and invalid results; not what the host did (a denied permission, the host's HTTP
allow-list, a closed runtime, bad payloads, re-entrancy). See :func:`counts`.

This module is the state machine only (a clock and a random source are injected, so tests
drive it exactly); PluginHost applies it to its tables.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .._errors import (
    AbiViolation,
    GuestError,
    GuestTrap,
    LimitExceeded,
    PlugboxError,
    PluginCallError,
    UsageError,
)

__all__ = ["BreakerPolicy", "BreakerState", "QuarantinedError"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"


class QuarantinedError(PluginCallError):
    """The plugin is quarantined by its circuit breaker (or by an operator): it is not called
    until the breaker lets a probe through or the operator releases it. ``reason`` says
    why, ``retry_at`` (Unix time) when the next probe is due (None: held by an operator)."""

    def __init__(self, message: str, *, plugin: str | None = None, hook: str | None = None,
                 reason: str | None = None, retry_at: float | None = None) -> None:
        super().__init__(message, plugin=plugin, hook=hook)
        self.reason = reason
        self.retry_at = retry_at


@dataclass(frozen=True)
class BreakerPolicy:
    """When a plugin is quarantined and when it is tried again.

    ``consecutive_failures``: quarantine after this many counted failures in a row (None:
    never for that reason). ``error_rate``: quarantine when, over the last ``window_s``
    seconds with at least ``min_calls`` calls, the share of counted failures is at least this
    (None: off). ``backoff_s``: the first wait before a probe; each failed probe doubles it, up
    to ``max_backoff_s``; ``jitter`` spreads each wait by up to that fraction either way.
    ``enabled=False`` turns the breaker off.
    """

    consecutive_failures: int | None = 5
    error_rate: float | None = 0.5
    window_s: float = 60.0
    min_calls: int = 20
    backoff_s: float = 5.0
    max_backoff_s: float = 80.0
    jitter: float = 0.1
    enabled: bool = True

    def __post_init__(self) -> None:
        def bad(what: str) -> UsageError:
            return UsageError(f"BreakerPolicy: {what}")

        if self.consecutive_failures is not None and (
                type(self.consecutive_failures) is not int
                or not 1 <= self.consecutive_failures <= 1_000_000):
            raise bad(f"consecutive_failures must be an int from 1 to 1000000 or None, not "
                      f"{self.consecutive_failures!r}")
        if self.error_rate is not None and not (
                isinstance(self.error_rate, (int, float)) and 0 < self.error_rate <= 1):
            raise bad(f"error_rate must be a fraction in (0, 1] or None, not "
                      f"{self.error_rate!r}")
        if not (isinstance(self.window_s, (int, float)) and 0.1 <= self.window_s <= 86_400):
            raise bad(f"window_s must be 0.1 to 86400 seconds, not {self.window_s!r}")
        if type(self.min_calls) is not int or not 1 <= self.min_calls <= 1_000_000:
            raise bad(f"min_calls must be an int from 1 to 1000000, not {self.min_calls!r}")
        if not (isinstance(self.backoff_s, (int, float)) and 0.01 <= self.backoff_s <= 86_400):
            raise bad(f"backoff_s must be 0.01 to 86400 seconds, not {self.backoff_s!r}")
        if not (isinstance(self.max_backoff_s, (int, float))
                and self.backoff_s <= self.max_backoff_s <= 7 * 86_400):
            raise bad(f"max_backoff_s must be at least backoff_s ({self.backoff_s}) and at "
                      f"most a week, not {self.max_backoff_s!r}")
        if not (isinstance(self.jitter, (int, float)) and 0 <= self.jitter < 1):
            raise bad(f"jitter must be a fraction in [0, 1), not {self.jitter!r}")


def counts(exc: BaseException) -> bool:
    """Whether a failure counts against the plugin: what the guest did (traps, limits, its own
    errors, ABI violations, results its extension point refuses), not what the host did (a
    denied permission, a closed runtime, an unknown hook, a refused re-entrant dispatch)."""
    from ._errors import InvalidResultError

    return isinstance(exc, (GuestTrap, LimitExceeded, GuestError, AbiViolation,
                            InvalidResultError))


@dataclass(frozen=True)
class BreakerState:
    """A breaker's state for the API and CLI: ``state`` is ``closed``, ``open`` (quarantined)
    or ``half-open`` (one probe allowed); ``reason`` the failure that opened it;
    ``retry_at`` when the next probe is due (Unix time; None when closed or held by an
    operator); ``opened`` how many times it opened in a row; ``manual`` whether an operator
    holds it."""

    plugin: str
    state: str
    reason: str | None
    retry_at: float | None
    opened: int
    consecutive: int
    manual: bool


class Breaker:
    """The breaker of one plugin. Thread-safe. ``clock`` returns seconds (monotonic);
    ``wall`` Unix time (for ``retry_at``); ``rng`` draws the jitter."""

    def __init__(self, plugin: str, policy: BreakerPolicy, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.plugin = plugin
        self.policy = policy
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.state = CLOSED
        self.reason: str | None = None
        self.consecutive = 0
        self.opened = 0  # openings in a row (reset when a probe succeeds)
        self.manual = False
        #: True once this opening is in the lifecycle state (recorded here, or read from it).
        self.recorded = False
        self._retry_at = 0.0  # monotonic
        self._probing = False
        self._last_calls: int | None = None
        self._window: deque[tuple[float, int]] = deque()  # (time, calls) of failures

    # -- what the host asks ----------------------------------------------------------------

    def allow(self) -> bool:
        """Whether a call may go to the plugin now. When the wait is over, the first caller
        gets the probe (the breaker is half-open until its outcome is recorded)."""
        if self.state == CLOSED:
            return True
        with self._lock:
            if self.manual:
                return False
            if self.state == OPEN and self._clock() >= self._retry_at:
                self.state = HALF_OPEN
                self._probing = False
            if self.state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def due(self) -> float | None:
        """Seconds until the next probe may run (0 when it may now); None when closed or held
        by an operator."""
        if self.state == CLOSED or self.manual:
            return None
        return max(0.0, self._retry_at - self._clock())

    # -- outcomes --------------------------------------------------------------------------
    #
    # Successes cost the hot path nothing: the breaker learns of them from the plugin's call
    # counter (``calls``: the calls made so far, this one included), passed with each failure.
    # Two failures ``calls`` apart by more than one had a success between them; the error
    # rate is the failures since the first one in the window over the calls since then.

    def success(self, calls: int) -> bool:
        """Record a successful call (the host reports probes; others are inferred); True when
        that closed the breaker (a probe succeeded)."""
        with self._lock:
            self.consecutive = 0
            self._last_calls = calls
            if self.state == HALF_OPEN and not self.manual:
                self.state, self.reason, self.opened, self._probing = CLOSED, None, 0, False
                self._window.clear()
                return True
            return False

    def failure(self, exc: BaseException, calls: int) -> bool:
        """Record a failed call; True when that opened the breaker (quarantined the plugin).
        Failures that do not :func:`count` change nothing."""
        if not counts(exc) or not self.policy.enabled:
            return False
        with self._lock:
            if self._last_calls is not None and calls - self._last_calls > 1:
                self.consecutive = 0  # calls in between succeeded
            self._last_calls = calls
            self.consecutive += 1
            now = self._clock()
            window = self._window
            window.append((now, calls))
            horizon = now - self.policy.window_s
            while window and window[0][0] < horizon:
                window.popleft()
            text = exc.message if isinstance(exc, PlugboxError) else str(exc)
            why = f"{type(exc).__name__}: {text}"
            if self.state == HALF_OPEN:
                self._open(f"the probe call failed ({why})")
                return True
            if self.state == OPEN:
                return False
            p = self.policy
            if p.consecutive_failures is not None and self.consecutive >= p.consecutive_failures:
                self._open(f"{self.consecutive} failures in a row, the last: {why}")
                return True
            total = calls - window[0][1] + 1
            if p.error_rate is not None and total >= p.min_calls \
                    and len(window) / total >= p.error_rate:
                self._open(f"{len(window)} of the last {total} calls failed within "
                           f"{p.window_s:g} s (error rate at least {p.error_rate:.0%}), the "
                           f"last: {why}")
                return True
            return False

    def _open(self, reason: str) -> None:
        self.recorded = False
        p = self.policy
        wait = min(p.max_backoff_s, p.backoff_s * 2 ** self.opened)
        if p.jitter:
            wait *= 1 + self._rng.uniform(-p.jitter, p.jitter)
        self.state, self.reason, self._probing = OPEN, reason, False
        self.opened += 1
        self._retry_at = self._clock() + wait

    # -- operators -------------------------------------------------------------------------

    def hold(self, reason: str) -> None:
        """Quarantine by hand: no call and no probe until :meth:`release`."""
        with self._lock:
            self.state, self.reason, self.manual, self._probing = OPEN, reason, True, False
            self.recorded = False

    def release(self) -> None:
        """Close the breaker (an operator's release, or the end of a manual hold)."""
        with self._lock:
            self.state, self.reason, self.manual, self._probing = CLOSED, None, False, False
            self.consecutive = self.opened = 0
            self._last_calls = None
            self._window.clear()

    def restore(self, reason: str, *, manual: bool, retry_in: float | None) -> None:
        """Reopen as recorded before a restart (``retry_in`` seconds from now)."""
        with self._lock:
            self.state, self.reason, self.manual, self._probing = OPEN, reason, manual, False
            self.opened = max(self.opened, 1)
            self._retry_at = self._clock() + (retry_in or 0.0)

    def snapshot(self) -> BreakerState:
        """The state for the API."""
        due = self.due()
        return BreakerState(self.plugin, self.state, self.reason,
                            None if due is None else self._wall() + due, self.opened,
                            self.consecutive, self.manual)
