"""EventBus and Event."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest

from plugbox.services._events import Event, EventBus


def ev(topic: str, payload: bytes = b"{}") -> Event:
    return Event("plug", topic, payload, 123)


def test_pattern_matching_and_order() -> None:
    bus = EventBus()
    got: list[tuple[str, str]] = []
    bus.subscribe("orders.*", lambda e: got.append(("orders.*", e.topic)))
    bus.subscribe("*", lambda e: got.append(("*", e.topic)))
    bus.subscribe("orders.created", lambda e: got.append(("exact", e.topic)))
    bus.publish(ev("orders.created"))
    bus.publish(ev("users.created"))
    bus.publish(ev("Orders.created"))  # case-sensitive
    assert got == [
        ("orders.*", "orders.created"),
        ("*", "orders.created"),
        ("exact", "orders.created"),
        ("*", "users.created"),
        ("*", "Orders.created"),
    ]


def test_unsubscribe_is_idempotent_and_per_subscription() -> None:
    bus = EventBus()
    got: list[str] = []
    cb = got.append

    def record(e: Event) -> None:
        cb(e.topic)

    unsub1 = bus.subscribe("*", record)
    unsub2 = bus.subscribe("*", record)  # same callback twice
    bus.publish(ev("a"))
    unsub1()
    unsub1()
    bus.publish(ev("b"))
    unsub2()
    assert not bus.has_subscribers()
    bus.publish(ev("c"))
    assert got == ["a", "a", "b"]


def test_subscriber_exception_isolated(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    got: list[str] = []

    def bad(e: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe("*", bad)
    bus.subscribe("*", lambda e: got.append(e.topic))
    with caplog.at_level(logging.ERROR, logger="plugbox.events"):
        bus.publish(ev("t"))
    assert got == ["t"]
    [record] = [r for r in caplog.records if r.name == "plugbox.events"]
    assert "boom" in (record.exc_text or "") or record.exc_info is not None
    assert "'t'" in record.getMessage() and "plug" in record.getMessage()


def test_unsubscribe_during_publish() -> None:
    bus = EventBus()
    got: list[str] = []
    unsub: list[object] = []

    def once(e: Event) -> None:
        got.append("once")
        unsub[0]()  # type: ignore[operator]

    unsub.append(bus.subscribe("*", once))
    bus.subscribe("*", lambda e: got.append("other"))
    bus.publish(ev("a"))
    bus.publish(ev("b"))
    assert got == ["once", "other", "other"]


def test_event_is_frozen_and_decodes_json() -> None:
    e = Event("p", "t", b'{"n": 1}', 5)
    assert e.json() == {"n": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.topic = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Event("p", "t", b"not json", 5).json()


def test_concurrent_subscribe_and_publish() -> None:
    bus = EventBus()
    counts = [0]
    lock = threading.Lock()

    def inc(e: Event) -> None:
        with lock:
            counts[0] += 1

    bus.subscribe("*", inc)

    def churn() -> None:
        for _ in range(200):
            bus.subscribe("x", inc)()

    def publish() -> None:
        for _ in range(200):
            bus.publish(ev("y"))

    threads = [threading.Thread(target=f) for f in (churn, churn, publish, publish)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts[0] == 400
