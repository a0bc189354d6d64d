"""Atomic kv (ABI 1.1): kv.increment and kv.compare-and-set lose nothing under concurrent
instances, threads and processes, respect the quotas and fail with typed errors; the counter
sample uses increment."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

import plugbox
from plugbox._permissions import KvPermission, Permissions
from plugbox._policy import Policy
from plugbox.services._events import EventBus
from plugbox.services._kvstore import KvQuotaError, KvStore, KvValueError
from plugbox.services._services import KV_VALUE_MAX, HostCallError, HostServices
from tests.conftest import WAT_TEMPLATE, write_plugin
from tests.test_abi11 import FORMS, ON_INIT, stage

QUOTA = {"quota_bytes": 1000, "quota_keys": 5}


@pytest.fixture
def store(kv_backend: KvStore) -> KvStore:
    """Each test runs on SQLite and on PostgreSQL (tests/conftest.py, ``kv_backend``)."""
    return kv_backend


# -- the store -------------------------------------------------------------------------------


def test_increment_counts_from_zero_as_eight_little_endian_bytes(store: KvStore) -> None:
    assert store.increment("p", "n", 5, **QUOTA) == 5
    assert store.increment("p", "n", -7, **QUOTA) == -2
    assert store.get("p", "n") == (-2).to_bytes(8, "little", signed=True)
    assert store.increment("other", "n", 1, **QUOTA) == 1  # per plugin
    assert store.usage("p") == (1 + 8, 1)


def test_increment_refuses_other_values_and_overflow(store: KvStore) -> None:
    store.set("p", "text", b"12", **QUOTA)
    with pytest.raises(KvValueError, match="2 bytes, not an 8-byte"):
        store.increment("p", "text", 1, **QUOTA)
    assert store.get("p", "text") == b"12"
    store.increment("p", "big", (1 << 63) - 1, **QUOTA)
    with pytest.raises(KvValueError, match="signed 64-bit range"):
        store.increment("p", "big", 1, **QUOTA)
    assert store.increment("p", "big", 0, **QUOTA) == (1 << 63) - 1


def test_atomic_writes_respect_the_quotas(store: KvStore) -> None:
    for i in range(5):
        store.increment("p", f"k{i}", 1, **QUOTA)
    with pytest.raises(KvQuotaError) as info:
        store.increment("p", "k5", 1, **QUOTA)
    assert info.value.quota == "keys"
    with pytest.raises(KvQuotaError):
        store.compare_and_set("p", "k5", None, b"v", **QUOTA)
    assert store.get("p", "k5") is None and store.usage("p") == (5 * 10, 5)
    # Existing keys keep working at the key quota; bytes count the difference.
    assert store.increment("p", "k0", 1, **QUOTA) == 2
    with pytest.raises(KvQuotaError) as info:
        store.compare_and_set("p", "k0", (2).to_bytes(8, "little"), b"x" * 1000, **QUOTA)
    assert info.value.quota == "bytes"
    assert store.compare_and_set("p", "k0", (2).to_bytes(8, "little"), b"tiny", **QUOTA)
    assert store.usage("p") == (4 * 10 + 2 + 4, 5)


def test_compare_and_set(store: KvStore) -> None:
    assert store.compare_and_set("p", "k", None, b"one", **QUOTA)  # absent -> set
    assert not store.compare_and_set("p", "k", None, b"two", **QUOTA)
    assert not store.compare_and_set("p", "k", b"wrong", b"two", **QUOTA)
    assert store.get("p", "k") == b"one"
    assert store.compare_and_set("p", "k", b"one", b"two", **QUOTA)
    assert store.get("p", "k") == b"two" and store.usage("p") == (1 + 3, 1)


def test_increments_from_threads_are_all_counted(store: KvStore) -> None:
    def work() -> None:
        for _ in range(500):
            store.increment("p", "n", 1, **QUOTA)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.increment("p", "n", 0, **QUOTA) == 2000


def test_compare_and_set_retry_loops_from_threads_lose_nothing(store: KvStore) -> None:
    def work() -> None:
        for _ in range(200):
            while True:
                old = store.get("p", "n")
                value = int(old or b"0") + 1
                if store.compare_and_set("p", "n", old, str(value).encode(), **QUOTA):
                    break

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("p", "n") == b"800"


_WORKER = """
import sys
from plugbox.services._kvstore import KvStore
store = KvStore(sys.argv[1], exclusive=False, lock_timeout=30)
for _ in range(int(sys.argv[2])):
    store.increment("p", "n", 1, quota_bytes=1000, quota_keys=5)
store.close()
"""


def test_increments_from_several_processes_are_all_counted(tmp_path: Path) -> None:
    """Two processes sharing the file (exclusive=False): BEGIN IMMEDIATE keeps each
    read-add-write whole."""
    path = tmp_path / "shared.sqlite3"
    KvStore(path, exclusive=False).close()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), "300"])
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    with KvStore(path) as store:
        assert store.get("p", "n") == (600).to_bytes(8, "little")


# -- the service -----------------------------------------------------------------------------


def _services(store: KvStore, kv: KvPermission | None = KvPermission(**QUOTA)) -> HostServices:
    return HostServices(plugin="p", permissions=Permissions(kv=kv), config={}, kv=store,
                        events=EventBus())


def test_service_errors_are_typed(store: KvStore) -> None:
    svc = _services(store)
    store.set("p", "text", b"abc", **QUOTA)
    cases = [
        (lambda: svc.kv_increment("text", 1), "invalid-input", "not an 8-byte"),
        (lambda: svc.kv_increment("", 1), "invalid-input", "1 to 256 bytes"),
        (lambda: svc.kv_compare_and_set("k" * 257, None, b""), "invalid-input", "256"),
        (lambda: svc.kv_compare_and_set("k", b"x" * (KV_VALUE_MAX + 1), b""), "limit-reached",
         str(KV_VALUE_MAX)),
        (lambda: svc.kv_compare_and_set("k", None, b"x" * (KV_VALUE_MAX + 1)), "limit-reached",
         str(KV_VALUE_MAX)),
    ]
    for call, kind, text in cases:
        with pytest.raises(HostCallError) as info:
            call()
        assert info.value.kind == kind and text in info.value.message, info.value.message
    for i in range(4):
        svc.kv_increment(f"n{i}", 1)
    with pytest.raises(HostCallError) as info:
        svc.kv_increment("one-too-many", 1)
    assert info.value.kind == "limit-reached" and "permissions.kv.quota_keys" in info.value.message
    denied = _services(store, None)
    for call in (lambda: denied.kv_increment("n", 1),
                 lambda: denied.kv_compare_and_set("n", None, b"")):
        with pytest.raises(HostCallError) as info:
            call()
        assert (info.value.kind, info.value.permission) == ("denied", "kv")


# -- through the ABI -------------------------------------------------------------------------

# on-hook: increment the key named by the hook by 1; return the 8-byte result or the error.
INCR_IMPORT = ('(import "plugbox:plugin/kv@1.1.0" "increment" '
               '(func $incr (param i32 i32 i64 i32)))')
INCR_BODY = """
    (call $incr (local.get $hp) (local.get $hl) (i64.const {delta}) (i32.const {retptr}))
    (if (i32.eqz (i32.load8_u (i32.const {retptr})))
      (then
        (i32.store8 (i32.const 16) (i32.const 0))
        (i32.store (i32.const 20) (i32.const {value}))
        (i32.store (i32.const 24) (i32.const 8)))
      (else
        (i32.store8 (i32.const 16) (i32.const 1))
        (i32.store (i32.const 20) (i32.load (i32.const {value})))
        (i32.store (i32.const 24) (i32.load (i32.const {message})))
        (i32.store (i32.const 28) (i32.load (i32.const {length})))))
    (i32.const 16)
"""
# on-hook: compare-and-set "k" from the payload (empty: none) to "new"; return the bool byte.
CAS_IMPORT = ('(import "plugbox:plugin/kv@1.1.0" "compare-and-set" '
              '(func $cas (param i32 i32 i32 i32 i32 i32 i32 i32)))'
              '(data (i32.const 100) "k") (data (i32.const 104) "new")')
CAS_BODY = """
    (call $cas (i32.const 100) (i32.const 1) (select (i32.const 1) (i32.const 0) (local.get $pl))
               (local.get $pp) (local.get $pl) (i32.const 104) (i32.const 3) (i32.const 32))
    (i32.store8 (i32.const 16) (i32.load8_u (i32.const 32)))
    (i32.store (i32.const 20) (select (i32.const 36) (i32.load (i32.const 36))
                                      (i32.eqz (i32.load8_u (i32.const 32)))))
    (i32.store (i32.const 24) (select (i32.const 1) (i32.load (i32.const 40))
                                      (i32.eqz (i32.load8_u (i32.const 32)))))
    (i32.store (i32.const 28) (i32.load (i32.const 44)))
    (i32.const 16)
"""


def _module(body: str, imports: str) -> bytes:
    text = WAT_TEMPLATE.format(body=body, imports=imports).rstrip().removesuffix(")")
    return bytes(wasmtime.wat2wasm(text + ON_INIT + ")"))


def incr_module(delta: int = 1, retptr: int = 48) -> bytes:
    return _module(INCR_BODY.format(delta=delta, retptr=retptr, value=retptr + 8,
                                    message=retptr + 12, length=retptr + 16), INCR_IMPORT)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[plugbox.Runtime]:
    with plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache") as runtime:
        yield runtime


def _hammer(plugin: plugbox.Plugin, hook: str, threads: int, calls: int) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(calls):
                plugin.call(hook, b"")
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("form", FORMS)
def test_increment_through_the_abi_under_four_instances(
        form: str, rt: plugbox.Runtime, tmp_path: Path) -> None:
    plugin = rt.load(stage(tmp_path, incr_module(), form, name="incr", hooks=["hits", "x"],
                           permissions={"kv": {}}, limits={"instances": 4}))
    assert plugin.call("x", b"") == (1).to_bytes(8, "little")
    _hammer(plugin, "hits", threads=4, calls=250)
    assert plugin.call("hits", b"") == (1001).to_bytes(8, "little")
    assert rt.kv.get("incr", "hits") == (1001).to_bytes(8, "little")


@pytest.mark.parametrize("form", FORMS)
def test_increment_errors_reach_the_guest(form: str, rt: plugbox.Runtime,
                                          tmp_path: Path) -> None:
    plugin = rt.load(stage(tmp_path, incr_module(delta=-1), form, name="incr",
                           hooks=["text"], permissions={"kv": {}}))
    rt.kv.set("incr", "text", b"abc", quota_bytes=100, quota_keys=10)
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("text", b"")
    assert info.value.kind == "invalid-input" and "8-byte" in info.value.detail


def test_increment_return_area_must_be_8_aligned(rt: plugbox.Runtime, tmp_path: Path) -> None:
    plugin = rt.load(write_plugin(tmp_path / "p", incr_module(retptr=52), abi="1.1",
                                  hooks=["n"], permissions={"kv": {}}))
    with pytest.raises(plugbox.AbiViolation) as info:
        plugin.call("n", b"")
    assert "misaligned" in str(info.value)
    assert rt.kv.get("wat-plugin", "n") is None  # refused before anything was written


@pytest.mark.parametrize("form", FORMS)
def test_compare_and_set_through_the_abi(form: str, rt: plugbox.Runtime,
                                         tmp_path: Path) -> None:
    plugin = rt.load(stage(tmp_path, _module(CAS_BODY, CAS_IMPORT), form, name="cas",
                           hooks=["cas"], permissions={"kv": {}}))
    assert plugin.call("cas", b"") == b"\x01"  # absent -> "new"
    assert plugin.call("cas", b"") == b"\x00"  # no longer absent
    assert plugin.call("cas", b"old") == b"\x00"
    assert plugin.call("cas", b"new") == b"\x01"
    assert rt.kv.get("cas", "k") == b"new"


# -- the counter sample ----------------------------------------------------------------------


def test_counter_sample_loses_no_increments_under_four_instances(
        tmp_path: Path, rust_plugins: dict[str, Path], policy: Policy) -> None:
    """The 1.0 counter's get-then-set lost 24,428 of 40,000 increments with 4 concurrent
    instances on one key; kv.increment makes each one atomic."""
    with plugbox.Runtime(state_dir=tmp_path / "state", policy=policy) as rt:
        counter = rt.load(rust_plugins["counter"])
        assert counter.limits.instances == 4
        calls = 300
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(calls):
                    counter.call_json("counter.incr", {"name": "hits"})
            except BaseException as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)

        pool = [threading.Thread(target=work) for _ in range(4)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert not errors, errors
        assert counter.call_json("counter.get", {"name": "hits"})["value"] == 4 * calls
        assert counter.call_json("counter.list", {}) == {"counters": {"hits": 4 * calls}}
        over = counter.call_json("counter.incr", {"name": "big", "by": (1 << 63) - 1})
        assert over["value"] == (1 << 63) - 1
        with pytest.raises(plugbox.GuestError) as info:
            counter.call_json("counter.incr", {"name": "big"})
        assert info.value.kind == "invalid-input" and "would overflow" in info.value.detail
