"""HostServices: permissions, log, config, kv, events, clock, random (http: test_http_service)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbox.engine._abispec import ERROR_KINDS, SERVICES
from plugbox._errors import UsageError
from plugbox.services._events import Event, EventBus
from plugbox.services._kvstore import KvStore
from plugbox._permissions import EventsPermission, HttpPermission, KvPermission, Permissions
from plugbox.services._services import (
    LOG_MESSAGE_MAX,
    TRACE,
    HostCallError,
    HostServices,
)

ALL = Permissions(
    log=True,
    config=True,
    clock=True,
    random=True,
    kv=KvPermission(quota_bytes=1000, quota_keys=5),
    events=EventsPermission(topics=("orders.*", "audit")),
    http=HttpPermission(hosts=("127.0.0.1:*",)),
)


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KvStore]:
    store = KvStore(tmp_path / "kv.sqlite3")
    yield store
    store.close()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


def make(
    kv: KvStore,
    bus: EventBus,
    permissions: Permissions = ALL,
    *,
    plugin: str = "demo",
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> HostServices:
    return HostServices(
        plugin=plugin,
        permissions=permissions,
        config=config if config is not None else {"name": "x", "n": 3, "nested": {"a": [1]}},
        kv=kv,
        events=bus,
        **kw,
    )


def expect(kind: str, fn: Any, *args: Any) -> HostCallError:
    with pytest.raises(HostCallError) as info:
        fn(*args)
    assert info.value.kind == kind, info.value.message
    return info.value


# -- permissions ---------------------------------------------------------------------------

CALLS: dict[str, list[tuple[str, tuple[Any, ...]]]] = {
    "log": [("log", (2, "hi"))],
    "config": [("config_get", ("name",)), ("config_get_all", ())],
    "kv": [
        ("kv_get", ("k",)),
        ("kv_set", ("k", b"v")),
        ("kv_delete", ("k",)),
        ("kv_list_keys", ("",)),
        ("kv_increment", ("n", 1)),
        ("kv_compare_and_set", ("k", None, b"v")),
    ],
    "events": [("events_emit", ("orders.new", b"{}"))],
    "clock": [("clock_now", ()), ("clock_monotonic", ())],
    "random": [("random_bytes", (4,))],
    "http": [("http_fetch", ("GET", "http://127.0.0.1:1/", [], b""))],
}


#: The host interface (ABI 1.1) is granted per function and point, as permissions.functions and
#: permissions.dispatch: tests/test_abi11.py checks its denials.
GRANTED_AS_A_WHOLE = tuple(s for s in SERVICES if s != "host")


def test_calls_cover_every_service() -> None:
    assert set(CALLS) == set(GRANTED_AS_A_WHOLE)


@pytest.mark.parametrize("service", GRANTED_AS_A_WHOLE)
def test_every_service_denied_without_permission(
    service: str, kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    hs = make(kv, bus, ALL.without({service}))
    with caplog.at_level(logging.WARNING, logger="plugbox.host"):
        for name, args in CALLS[service]:
            kwargs = {"timeout": 1.0} if name == "http_fetch" else {}
            with pytest.raises(HostCallError) as info:
                getattr(hs, name)(*args, **kwargs)
            err = info.value
            assert err.kind == "denied"
            assert err.permission == service
            assert f'add "{service}" to permissions in plugbox.json' in err.message
    assert hs.denied == {service: len(CALLS[service])}
    # Logged naming plugin and service, once (the rest are rate-limited).
    warnings = [r for r in caplog.records if r.name == "plugbox.host"]
    assert len(warnings) == 1
    assert "'demo'" in warnings[0].getMessage() and service in warnings[0].getMessage()
    # Other services still work.
    if service != "clock":
        assert hs.clock_now() > 0


def test_denied_warnings_are_rate_limited(
    kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    hs = make(kv, bus, Permissions())
    with caplog.at_level(logging.WARNING, logger="plugbox.host"):
        for _ in range(1000):
            with pytest.raises(HostCallError):
                hs.kv_get("k")
        with pytest.raises(HostCallError):
            hs.random_bytes(1)
    assert hs.denied["kv"] == 1000 and hs.denied["random"] == 1
    assert len([r for r in caplog.records if r.name == "plugbox.host"]) == 2


def test_host_call_error_kinds() -> None:
    for kind in ERROR_KINDS:
        assert HostCallError(kind, "m").kind == kind
    with pytest.raises(ValueError):
        HostCallError("nope", "m")
    assert not isinstance(HostCallError("failure", "m"), UsageError)


# -- log -----------------------------------------------------------------------------------


def plugin_records(caplog: pytest.LogCaptureFixture, name: str = "demo") -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == f"plugbox.plugin.{name}"]


def test_log_levels(kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture) -> None:
    hs = make(kv, bus)
    with caplog.at_level(TRACE, logger="plugbox.plugin.demo"):
        for level in range(5):
            hs.log(level, f"level %s {level}")
    records = plugin_records(caplog)
    assert [r.levelno for r in records] == [
        TRACE,
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
    ]
    assert records[0].levelname == "TRACE"
    assert records[2].getMessage() == "level %s 2"  # '%' is not interpreted
    assert all(r.__dict__["plugin"] == "demo" for r in records)
    for bad in (-1, 5, 255):
        expect("invalid-input", hs.log, bad, "x")


def test_log_uses_given_logger(
    kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    hs = make(kv, bus, logger=logging.getLogger("app.plugins.demo"))
    with caplog.at_level(logging.INFO):
        hs.log(2, "hello")
    assert [r.name for r in caplog.records] == ["app.plugins.demo"]


def test_log_filtered_level_is_free(
    kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    hs = make(kv, bus, log_burst=1, log_rate=0.0)
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.demo"):
        for _ in range(10):
            hs.log(1, "debug, filtered out")
        hs.log(2, "kept: filtered records used no rate budget")
    assert [r.getMessage() for r in plugin_records(caplog)] == [
        "kept: filtered records used no rate budget"
    ]
    assert hs.log_dropped == 0


def test_log_truncation(kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture) -> None:
    hs = make(kv, bus)
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.demo"):
        hs.log(2, "a" * LOG_MESSAGE_MAX)  # exactly at the cap: untouched
        hs.log(2, "é" * 10_000)  # 20000 bytes
        hs.log(2, "x" * 1_000_000)
    exact, multi, huge = (r.getMessage() for r in plugin_records(caplog))
    assert exact == "a" * LOG_MESSAGE_MAX
    for msg, total in ((multi, 20_000), (huge, 1_000_000)):
        assert len(msg.encode()) <= LOG_MESSAGE_MAX
        assert msg.endswith(f"[truncated, {total} bytes]")
    assert "\ufffd" not in multi


def test_log_escapes_control_characters(
    kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    hs = make(kv, bus)
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.demo"):
        hs.log(2, "line1\nERROR root: forged\r\x1b[31m\ttab é\u2028")
        hs.log(2, "\n" * 5000)  # escaping expands it; still capped
    first, second = plugin_records(caplog)
    forged, many = first.getMessage(), second.getMessage()
    # a multi-line message stays multi-line, but every line after the first is indented, so
    # none can pass for a record of its own; other control characters are escaped
    assert forged == "line1\n    ERROR root: forged\\r\\x1b[31m\ttab é\\u2028"
    assert first.lines == ("line1", "ERROR root: forged\\r\\x1b[31m\ttab é\\u2028")
    assert (first.plugin, first.hook, first.point) == ("demo", None, None)
    assert len(many.encode()) <= LOG_MESSAGE_MAX and many.startswith("\n    \n    ")
    assert all(line.startswith("    ") for line in many.split("\n")[1:])


def test_log_rate_limit(kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture) -> None:
    hs = make(kv, bus, log_rate=0.0, log_burst=50)
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.demo"):
        for i in range(500):
            hs.log(2, f"m{i}")
    records = plugin_records(caplog)
    messages = [r.getMessage() for r in records]
    # The flood notice takes the burst's last token: 49 records + 1 notice = the burst.
    assert messages[:49] == [f"m{i}" for i in range(49)]
    assert hs.log_dropped == 451
    notices = [m for m in messages if "dropping" in m]
    assert len(notices) == 1 and "'demo'" in notices[0]
    assert len(records) == 50


def test_log_rate_limit_recovers(
    kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    hs = make(kv, bus, log_rate=1000.0, log_burst=5)
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.demo"):
        for i in range(100):
            hs.log(2, f"m{i}")
        assert hs.log_dropped > 0
        dropped = hs.log_dropped
        time.sleep(0.01)  # refills 10 tokens at 1000/s
        hs.log(2, "after")
    messages = [r.getMessage() for r in plugin_records(caplog)]
    assert messages[-2:] == [f"plugin 'demo': {dropped} log records were dropped", "after"]


def test_default_rate_is_200_per_second_burst_1000(
    kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    start = time.monotonic()
    hs = make(kv, bus)
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.demo"):
        for _ in range(1500):
            hs.log(2, "x")
        elapsed = time.monotonic() - start
    accepted = 1500 - hs.log_dropped
    assert 999 <= accepted  # one token of the burst went to the flood notice
    assert len(plugin_records(caplog)) <= 1000 + 200 * elapsed  # notices included


# -- config --------------------------------------------------------------------------------


def test_config(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus, config={"name": "ü", "n": 3, "nested": {"a": [1, None]}, "f": 1.5})
    assert hs.config_get("name") == '"ü"'
    assert json.loads(hs.config_get("nested") or "") == {"a": [1, None]}
    assert hs.config_get("missing") is None
    assert json.loads(hs.config_get_all()) == {
        "name": "ü",
        "n": 3,
        "nested": {"a": [1, None]},
        "f": 1.5,
    }


def test_config_not_json(kv: KvStore, bus: EventBus) -> None:
    with pytest.raises(UsageError):
        make(kv, bus, config={"x": object()})
    with pytest.raises(UsageError):
        make(kv, bus, config={"x": float("nan")})


def test_config_is_a_snapshot(kv: KvStore, bus: EventBus) -> None:
    cfg: dict[str, Any] = {"a": 1}
    hs = make(kv, bus, config=cfg)
    cfg["a"] = 2
    assert hs.config_get("a") == "1"


# -- kv ------------------------------------------------------------------------------------


def test_kv_round_trip(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus)
    assert hs.kv_get("k") is None
    hs.kv_set("k", b"\x00\xffbinary")
    assert hs.kv_get("k") == b"\x00\xffbinary"
    hs.kv_set("k2", b"")
    assert hs.kv_list_keys("") == ["k", "k2"]
    assert hs.kv_list_keys("k2") == ["k2"]
    assert hs.kv_delete("k") is True
    assert hs.kv_delete("k") is False


def test_kv_key_validation(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus)
    for fn, extra in ((hs.kv_get, ()), (hs.kv_set, (b"v",)), (hs.kv_delete, ())):
        expect("invalid-input", fn, "", *extra)
        expect("invalid-input", fn, "x" * 257, *extra)
        expect("invalid-input", fn, "é" * 129, *extra)  # 258 bytes
        expect("invalid-input", fn, "\ud800", *extra)  # lone surrogate
    hs.kv_set("x" * 256, b"")
    hs.kv_set("é" * 128, b"")


def test_kv_value_limit(kv: KvStore, bus: EventBus) -> None:
    big = Permissions(kv=KvPermission(quota_bytes=1 << 30, quota_keys=10))
    hs = make(kv, bus, big)
    hs.kv_set("k", b"x" * (1 << 20))
    err = expect("limit-reached", hs.kv_set, "k", b"x" * ((1 << 20) + 1))
    assert "1048576" in err.message


def test_kv_quota_bytes_and_keys(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus)  # 1000 bytes, 5 keys
    hs.kv_set("a", b"x" * 900)
    err = expect("limit-reached", hs.kv_set, "b", b"x" * 99)  # 901 + 100 > 1000
    assert "quota of 1000 bytes" in err.message and "permissions.kv.quota_bytes" in err.message
    hs.kv_set("a", b"")
    for k in "bcde":
        hs.kv_set(k, b"")
    err = expect("limit-reached", hs.kv_set, "f", b"")
    assert "quota of 5 keys" in err.message and "permissions.kv.quota_keys" in err.message


def test_kv_plugins_isolated(kv: KvStore, bus: EventBus) -> None:
    a = make(kv, bus, plugin="a")
    b = make(kv, bus, plugin="b")
    a.kv_set("secret", b"a's")
    assert b.kv_get("secret") is None
    assert b.kv_list_keys("") == []
    assert b.kv_delete("secret") is False
    b.kv_set("secret", b"b's")
    assert a.kv_get("secret") == b"a's"
    # Quotas are per plugin, too.
    assert kv.usage("a") == (len("secret") + 3, 1)


def test_kv_storage_error_is_failure(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus)
    kv.close()
    err = expect("failure", hs.kv_get, "k")
    assert err.message.startswith("kv: storage error")


def test_kv_thread_safe(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus, Permissions(kv=KvPermission(quota_bytes=1 << 20, quota_keys=200)))
    failures: list[str] = []

    def work(t: int) -> None:
        for i in range(40):
            try:
                hs.kv_set(f"{t}-{i}", b"v")
            except HostCallError as exc:
                failures.append(exc.kind)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(hs.kv_list_keys("")) == 200
    assert failures == ["limit-reached"] * 120


# -- events --------------------------------------------------------------------------------


def test_events_emit(kv: KvStore, bus: EventBus) -> None:
    got: list[Event] = []
    bus.subscribe("orders.*", got.append)
    hs = make(kv, bus)
    before = time.time_ns()
    hs.events_emit("orders.new", b'{"id": 7}')
    hs.events_emit("audit", b"x")  # allowed, but nobody subscribed to it
    assert len(got) == 1
    e = got[0]
    assert (e.plugin, e.topic, e.json()) == ("demo", "orders.new", {"id": 7})
    assert before <= e.timestamp <= time.time_ns()


def test_events_topic_allow_list(kv: KvStore, bus: EventBus) -> None:
    got: list[Event] = []
    bus.subscribe("*", got.append)
    hs = make(kv, bus)
    for topic in ("orders", "users.new", "auditx", "Orders.new"):
        err = expect("denied", hs.events_emit, topic, b"")
        assert err.permission == "events"
        assert repr(topic) in err.message and "permissions.events.topics" in err.message
    assert hs.denied["events"] == 4
    assert got == []
    none = make(kv, bus, Permissions(events=EventsPermission(topics=())))
    expect("denied", none.events_emit, "orders.new", b"")


def test_events_limits(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus)
    expect("invalid-input", hs.events_emit, "", b"")
    expect("invalid-input", hs.events_emit, "orders." + "x" * 250, b"")
    expect("limit-reached", hs.events_emit, "orders.big", b"x" * ((1 << 20) + 1))
    hs.events_emit("orders.big", b"x" * (1 << 20))


def test_events_subscriber_error_does_not_reach_plugin(
    kv: KvStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(e: Event) -> None:
        raise ValueError("subscriber bug")

    got: list[Event] = []
    bus.subscribe("*", bad)
    bus.subscribe("*", got.append)
    hs = make(kv, bus)
    with caplog.at_level(logging.ERROR, logger="plugbox.events"):
        hs.events_emit("audit", bytearray(b"{}"))  # type: ignore[arg-type]
    assert len(got) == 1 and type(got[0].payload) is bytes
    assert any(r.name == "plugbox.events" for r in caplog.records)


# -- clock, random -------------------------------------------------------------------------


def test_clock(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus)
    assert abs(hs.clock_now() - time.time_ns()) < 1_000_000_000
    a = hs.clock_monotonic()
    b = hs.clock_monotonic()
    assert 0 <= a <= b


def test_random(kv: KvStore, bus: EventBus) -> None:
    hs = make(kv, bus)
    assert hs.random_bytes(0) == b""
    r1, r2 = hs.random_bytes(32), hs.random_bytes(32)
    assert len(r1) == 32 and r1 != r2
    assert len(hs.random_bytes(1 << 20)) == 1 << 20
    expect("limit-reached", hs.random_bytes, (1 << 20) + 1)
    expect("invalid-input", hs.random_bytes, -1)
