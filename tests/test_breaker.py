"""The circuit breaker's state machine (issue 10 §2) with a controllable clock."""

from __future__ import annotations

import random

import pytest

import plugbox
from plugbox.host._breaker import Breaker, BreakerPolicy, QuarantinedError, counts
from plugbox.host._errors import InvalidResultError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trap(n: int = 0) -> plugbox.GuestTrap:
    return plugbox.GuestTrap(f"plugin 'p', hook 'h': guest trapped #{n}", plugin="p", hook="h")


def breaker(clock: Clock, **policy: object) -> Breaker:
    return Breaker("p", BreakerPolicy(**{"jitter": 0.0, **policy}),  # type: ignore[arg-type]
                   clock=clock, wall=lambda: clock.now + 1e9)


class Calls:
    """A plugin's call counter: ``ok()`` and ``bad()`` advance it and report to the breaker
    as the host does (successes only for probes)."""

    def __init__(self, b: Breaker) -> None:
        self.b = b
        self.n = 0

    def ok(self, *, report: bool = False) -> bool:
        self.n += 1
        return self.b.success(self.n) if report else False

    def bad(self, n: int = 0) -> bool:
        self.n += 1
        return self.b.failure(trap(n), self.n)


def test_consecutive_failures_open_and_backoff_doubles_up_to_the_cap() -> None:
    clock = Clock()
    b = breaker(clock, consecutive_failures=3, error_rate=None)
    calls = Calls(b)
    assert not calls.bad() and not calls.bad()
    calls.ok()  # not reported: the next failure sees the gap in the counter
    assert not calls.bad() and b.consecutive == 1
    assert [calls.bad(i) for i in range(2)] == [False, True]
    assert b.state == "open" and b.reason is not None
    assert b.reason.startswith("3 failures in a row, the last: GuestTrap:")
    assert not b.allow() and b.due() == 5.0

    waits = []
    for _ in range(6):  # every failed probe doubles the wait: 5 10 20 40 80 80
        waits.append(b.due())
        clock.now += b.due() or 0
        assert b.allow()          # the probe
        assert not b.allow()      # only one
        assert b.state == "half-open"
        assert calls.bad()        # reopens
    assert waits == [5.0, 10.0, 20.0, 40.0, 80.0, 80.0]
    assert b.reason is not None and b.reason.startswith("the probe call failed")

    clock.now += b.due() or 0
    assert b.allow() and calls.ok(report=True) is True  # a good probe closes it
    assert (b.state, b.reason, b.opened) == ("closed", None, 0)
    for i in range(3):  # and the ladder starts over
        calls.bad(i)
    assert b.due() == 5.0


def test_error_rate_over_the_window() -> None:
    clock = Clock()
    b = breaker(clock, consecutive_failures=None, error_rate=0.5, min_calls=10, window_s=60)
    calls = Calls(b)
    for i in range(9):  # 9 calls, 5 failures: too few calls yet
        clock.now += 1
        if i % 2:
            calls.ok()
        else:
            assert not calls.bad(i)
    assert b.state == "closed"
    clock.now += 1
    calls.ok()
    clock.now += 1
    assert calls.bad(10)  # 11 calls since the first failure, 6 failures: 55 % >= 50 %
    assert b.reason is not None and b.reason.startswith("6 of the last 11 calls failed within 60 s")

    # failures older than the window no longer count
    c = Clock()
    b = breaker(c, consecutive_failures=None, error_rate=0.5, min_calls=4, window_s=10)
    calls = Calls(b)
    for _ in range(3):
        calls.bad()
    c.now += 11
    for _ in range(3):
        calls.ok()
    assert not calls.bad()  # 1 failure in the window
    assert b.state == "closed"


def test_jitter_spreads_the_wait_within_its_fraction() -> None:
    clock = Clock()
    waits = set()
    for seed in range(30):
        b = Breaker("p", BreakerPolicy(consecutive_failures=1, error_rate=None, jitter=0.1),
                    clock=clock, rng=random.Random(seed))
        b.failure(trap(), 1)
        waits.add(round(b.due() or 0, 6))
    assert all(4.5 <= w <= 5.5 for w in waits) and len(waits) > 20


def test_what_counts() -> None:
    assert counts(trap())
    assert counts(plugbox.FuelExhausted("x", plugin="p", limit="fuel"))
    assert counts(plugbox.DeadlineExceeded("x", plugin="p", limit="deadline_ms"))
    assert counts(plugbox.MemoryLimitExceeded("x"))
    assert counts(plugbox.AbiViolation("x"))
    assert counts(InvalidResultError("x", plugin="p", hook="h", point="q"))
    # what the host did does not count
    assert not counts(plugbox.PermissionDenied("http not granted", permission="http"))
    assert not counts(plugbox.ClosedError("closed"))
    assert not counts(plugbox.UnknownHookError("no hook"))
    assert not counts(plugbox.ReentrantDispatchError("re-entered", point="q"))
    assert not counts(QuarantinedError("held"))
    b = breaker(Clock(), consecutive_failures=1)
    assert not b.failure(plugbox.PermissionDenied("denied", permission="http"), 1)
    assert b.state == "closed"


def test_an_operator_hold_blocks_probes_until_released() -> None:
    clock = Clock()
    b = breaker(clock, consecutive_failures=1)
    b.hold("maintenance")
    clock.now += 10_000
    assert not b.allow() and b.due() is None and b.snapshot().manual
    assert b.snapshot().state == "open" and b.snapshot().reason == "maintenance"
    b.release()
    assert b.allow() and b.snapshot().state == "closed"

    b.restore("5 failures in a row", manual=False, retry_in=3.0)
    assert not b.allow() and b.due() == 3.0
    clock.now += 3
    assert b.allow()


def test_a_disabled_breaker_never_opens() -> None:
    b = breaker(Clock(), consecutive_failures=1, enabled=False)
    for n in range(10):
        assert not b.failure(trap(), n + 1)
    assert b.state == "closed"


@pytest.mark.parametrize("field,value", [("consecutive_failures", 0), ("error_rate", 1.5),
                                         ("window_s", 0), ("min_calls", 0), ("backoff_s", -1),
                                         ("max_backoff_s", 1.0), ("jitter", 1.0)])
def test_policy_refuses_nonsense(field: str, value: object) -> None:
    with pytest.raises(plugbox.UsageError, match=f"BreakerPolicy: {field}"):
        BreakerPolicy(**{field: value})  # type: ignore[arg-type]
