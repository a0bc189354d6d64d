"""KvStore: real SQLite files in tmp_path."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugbox._errors import StateError
from plugbox.services._kvstore import KvQuotaError, KvStore, _prefix_upper_bound

BIG = 1 << 40


@pytest.fixture
def store(kv_backend: KvStore) -> KvStore:
    """Each test runs on SQLite and on PostgreSQL (tests/conftest.py, ``kv_backend``)."""
    return kv_backend


def test_get_set_delete(store: KvStore) -> None:
    assert store.get("p", "a") is None
    store.set("p", "a", b"1", quota_bytes=BIG, quota_keys=BIG)
    assert store.get("p", "a") == b"1"
    store.set("p", "a", b"22", quota_bytes=BIG, quota_keys=BIG)
    assert store.get("p", "a") == b"22"
    assert store.delete("p", "a") is True
    assert store.delete("p", "a") is False
    assert store.get("p", "a") is None


def test_wal_mode_and_exclusive_lock(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    with KvStore(path):
        # A second store (or any other connection) cannot open the file while it is held.
        with pytest.raises(StateError, match="in use by another process"):
            KvStore(path, lock_timeout=0.05)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_non_exclusive_allows_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    with KvStore(path, exclusive=False) as s:
        s.set("p", "k", b"v", quota_bytes=BIG, quota_keys=BIG)
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT value FROM kv WHERE key = 'k'").fetchone() == (b"v",)
        finally:
            conn.close()
        assert s.get("p", "k") == b"v"


def test_plugins_are_isolated(store: KvStore) -> None:
    store.set("a", "k", b"from-a", quota_bytes=BIG, quota_keys=BIG)
    store.set("b", "k", b"from-b", quota_bytes=BIG, quota_keys=BIG)
    store.set("b", "only-b", b"x", quota_bytes=BIG, quota_keys=BIG)
    assert store.get("a", "k") == b"from-a"
    assert store.get("a", "only-b") is None
    assert store.list_keys("a", "") == ["k"]
    assert store.delete("a", "only-b") is False
    assert store.get("b", "only-b") == b"x"
    assert store.usage("a") == (len("k") + len("from-a"), 1)
    store.clear("b")
    assert store.list_keys("b", "") == []
    assert store.usage("b") == (0, 0)
    assert store.get("a", "k") == b"from-a"


def test_usage_counts_utf8_bytes(store: KvStore) -> None:
    store.set("p", "é", b"abc", quota_bytes=BIG, quota_keys=BIG)  # 2-byte key
    assert store.usage("p") == (5, 1)
    store.set("p", "é", b"", quota_bytes=BIG, quota_keys=BIG)
    assert store.usage("p") == (2, 1)
    store.delete("p", "é")
    assert store.usage("p") == (0, 0)


def test_quota_bytes(store: KvStore) -> None:
    store.set("p", "k1", b"x" * 8, quota_bytes=20, quota_keys=10)  # 10 bytes
    with pytest.raises(KvQuotaError) as info:
        store.set("p", "k2", b"x" * 9, quota_bytes=20, quota_keys=10)  # would be 21
    assert info.value.quota == "bytes" and info.value.needed == 21
    assert store.get("p", "k2") is None
    store.set("p", "k2", b"x" * 8, quota_bytes=20, quota_keys=10)  # exactly 20
    # Growing an existing key is checked on the difference; shrinking always works.
    with pytest.raises(KvQuotaError):
        store.set("p", "k1", b"x" * 9, quota_bytes=20, quota_keys=10)
    assert store.get("p", "k1") == b"x" * 8
    store.set("p", "k1", b"", quota_bytes=20, quota_keys=10)
    assert store.usage("p") == (12, 2)


def test_quota_shrinking_write_allowed_when_over(store: KvStore) -> None:
    store.set("p", "k", b"x" * 100, quota_bytes=BIG, quota_keys=BIG)
    # Quota lowered below current usage: shrinking still allowed, growing not.
    store.set("p", "k", b"x" * 50, quota_bytes=10, quota_keys=10)
    with pytest.raises(KvQuotaError):
        store.set("p", "k", b"x" * 51, quota_bytes=10, quota_keys=10)


def test_quota_keys(store: KvStore) -> None:
    for i in range(3):
        store.set("p", f"k{i}", b"", quota_bytes=BIG, quota_keys=3)
    with pytest.raises(KvQuotaError) as info:
        store.set("p", "k3", b"", quota_bytes=BIG, quota_keys=3)
    assert info.value.quota == "keys"
    store.set("p", "k0", b"replace", quota_bytes=BIG, quota_keys=3)  # not a new key
    store.delete("p", "k1")
    store.set("p", "k3", b"", quota_bytes=BIG, quota_keys=3)
    assert store.usage("p")[1] == 3


def test_persistence_and_usage_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    with KvStore(path) as s:
        s.set("p", "a", b"hello", quota_bytes=BIG, quota_keys=BIG)
        s.set("p", "bb", b"world!", quota_bytes=BIG, quota_keys=BIG)
        s.set("q", "a", b"other", quota_bytes=BIG, quota_keys=BIG)
    with KvStore(path) as s:
        assert s.get("p", "a") == b"hello"
        assert s.list_keys("p", "") == ["a", "bb"]
        assert s.usage("p") == (1 + 5 + 2 + 6, 2)
        with pytest.raises(KvQuotaError):
            s.set("p", "c", b"x", quota_bytes=14, quota_keys=BIG)


def test_list_keys_prefix_order_and_limit(store: KvStore) -> None:
    keys = ["b", "a", "ab", "abc", "a\U0010ffff", "a\uffff", "aé", "B", "ac", "\U0010ffff"]
    for k in keys:
        store.set("p", k, b"", quota_bytes=BIG, quota_keys=BIG)
    by_bytes = sorted(keys, key=lambda k: k.encode())
    assert store.list_keys("p", "") == by_bytes
    assert store.list_keys("p", "a") == [k for k in by_bytes if k.startswith("a")]
    assert store.list_keys("p", "ab") == ["ab", "abc"]
    assert store.list_keys("p", "\U0010ffff") == ["\U0010ffff"]
    assert store.list_keys("p", "zz") == []
    assert store.list_keys("p", "a", limit=2) == by_bytes[1:3]
    # A prefix with LIKE/GLOB metacharacters is literal.
    store.set("p", "%_*", b"", quota_bytes=BIG, quota_keys=BIG)
    assert store.list_keys("p", "%") == ["%_*"]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=6), st.text(max_size=6))
def test_prefix_upper_bound(prefix: str, rest: str) -> None:
    try:
        (prefix + rest).encode()
    except UnicodeEncodeError:
        return
    upper = _prefix_upper_bound(prefix)
    candidate = (prefix + rest).encode()
    assert candidate >= prefix.encode()
    if upper is not None:
        assert candidate < upper.encode()


def test_concurrent_sets(store: KvStore) -> None:
    n_threads, per_thread = 8, 100
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                store.set("p", f"t{t}-{i}", b"v" * 10, quota_bytes=BIG, quota_keys=BIG)
                assert store.get("p", f"t{t}-{i}") == b"v" * 10
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(store.list_keys("p", "")) == n_threads * per_thread
    # The cached usage agrees with a fresh sum over the table.
    expected = sum(len(f"t{t}-{i}") + 10 for t in range(n_threads) for i in range(per_thread))
    assert store.usage("p") == (expected, n_threads * per_thread)


def test_concurrent_quota_is_atomic(store: KvStore) -> None:
    # 8 threads race to add 50 keys each under a quota of 100 keys: exactly 100 succeed.
    ok = [0] * 8

    def work(t: int) -> None:
        for i in range(50):
            try:
                store.set("p", f"{t}/{i}", b"", quota_bytes=BIG, quota_keys=100)
                ok[t] += 1
            except KvQuotaError:
                pass

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(ok) == 100
    assert store.usage("p")[1] == 100


def test_closed_store_raises(tmp_path: Path) -> None:
    s = KvStore(tmp_path / "kv.sqlite3")
    s.set("p", "a", b"1", quota_bytes=BIG, quota_keys=BIG)
    s.close()
    s.close()
    for call in (
        lambda: s.get("p", "a"),
        lambda: s.set("p", "a", b"", quota_bytes=BIG, quota_keys=BIG),
        lambda: s.delete("p", "a"),
        lambda: s.list_keys("p"),
        lambda: s.usage("p"),
        lambda: s.clear("p"),
    ):
        with pytest.raises(sqlite3.ProgrammingError):
            call()
    with KvStore(tmp_path / "kv.sqlite3") as again:  # the lock was released
        assert again.get("p", "a") == b"1"
