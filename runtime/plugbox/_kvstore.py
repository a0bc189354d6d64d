"""Persistent key-value storage behind the ``kv`` host service.

One SQLite database file holds the data of every plugin, namespaced by plugin name: a plugin's
keys live under its own name in the primary key, and every query is bound to that name, so one
plugin can never read, list or count another's keys.

Design choices (measured, see the report in the commit history):

* **WAL mode, ``synchronous=NORMAL``**: a committed write costs no fsync (only checkpoints do),
  and readers never block the writer. A crash can lose the last few commits but never corrupts.
* **One connection per thread** (``threading.local``): single-threaded ``get`` latency is the
  same as one shared connection behind a lock (~4 µs, SQLite's floor), but four threads reading
  at once finish about twice as fast because the sqlite3 module releases the GIL inside SQLite.
* **Writes serialised by one process-wide lock**: quota enforcement needs an atomic
  "read old size, check, write" step, and SQLite allows one writer at a time anyway.
* **Cached per-plugin usage**: ``(bytes, keys)`` is summed from the table once per plugin (on
  first use) and then maintained by ``set``/``delete``/``clear``, so a quota check is O(1).
  This assumes one :class:`KvStore` per database file per process; two processes writing the
  same file would see stale usage (the data itself stays consistent).
* ``WITHOUT ROWID`` table keyed on ``(plugin, key)``: one B-tree lookup per read instead of an
  index lookup plus a table lookup. Keys are TEXT with the default BINARY collation, which
  compares UTF-8 bytes, hence ``list_keys`` returns keys in byte order.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Final

__all__ = ["KvQuotaError", "KvStore"]

_SCHEMA_VERSION: Final = 1

_SQL_GET: Final = "SELECT value FROM kv WHERE plugin = ? AND key = ?"
_SQL_SIZE: Final = "SELECT length(value) FROM kv WHERE plugin = ? AND key = ?"
_SQL_UPSERT: Final = (
    "INSERT INTO kv (plugin, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value"
)
_SQL_DELETE: Final = "DELETE FROM kv WHERE plugin = ? AND key = ? RETURNING length(value)"
_SQL_LIST_ALL: Final = "SELECT key FROM kv WHERE plugin = ? ORDER BY key LIMIT ?"
_SQL_LIST_RANGE: Final = (
    "SELECT key FROM kv WHERE plugin = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?"
)
_SQL_LIST_FROM: Final = "SELECT key FROM kv WHERE plugin = ? AND key >= ? ORDER BY key LIMIT ?"
# length() of TEXT counts characters; the quota counts UTF-8 bytes, hence the cast.
_SQL_USAGE: Final = (
    "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0), COUNT(*) "
    "FROM kv WHERE plugin = ?"
)
_SQL_CLEAR: Final = "DELETE FROM kv WHERE plugin = ?"


class KvQuotaError(Exception):
    """A ``set`` would take a plugin past one of its quotas; nothing was written.

    ``quota`` is ``"bytes"`` or ``"keys"``; ``limit`` the quota and ``needed`` the usage the
    write would have produced.
    """

    def __init__(self, quota: str, limit: int, needed: int) -> None:
        super().__init__(f"kv quota of {limit} {quota} exceeded (would be {needed})")
        self.quota = quota
        self.limit = limit
        self.needed = needed


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the C type cannot)."""


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``, or None.

    UTF-8 byte order equals code point order, so bumping the last code point that is not
    U+10FFFF gives an exclusive upper bound that lets SQLite answer a prefix query with a range
    scan on the primary key (``LIKE``/``GLOB`` would need escaping and, for LIKE, case folding).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:  # surrogates cannot be encoded; the next encodable code point
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


class KvStore:
    """Plugin-namespaced key-value storage in one SQLite file; thread-safe.

    ``path`` is created (with its parent directory) if missing. Reopening the same file sees
    everything written before, including after an unclean shutdown up to the last checkpointed
    commits (see the module docstring about ``synchronous=NORMAL``).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Weak so a connection dies with the thread that made it (threading.local drops it);
        # close() closes whichever are still alive.
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._usage: dict[str, list[int]] = {}
        self._closed = False
        conn = self._connect()
        with self._write_lock:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS kv ("
                " plugin TEXT NOT NULL,"
                " key TEXT NOT NULL,"
                " value BLOB NOT NULL,"
                " PRIMARY KEY (plugin, key)"
                ") WITHOUT ROWID"
            )
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        """Open this thread's connection (once per thread)."""
        if self._closed:
            raise sqlite3.ProgrammingError("KvStore is closed")
        # isolation_level=None: autocommit, every statement is its own transaction, so no
        # transaction is ever left open between calls. check_same_thread=False only so that
        # close() may close connections of other threads.
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=10.0,
            factory=_Connection,
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.conn = conn
        with self._conns_lock:
            self._conns.add(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        try:
            conn: sqlite3.Connection = self._local.conn
        except AttributeError:
            return self._connect()
        return conn

    def _usage_of(self, conn: sqlite3.Connection, plugin: str) -> list[int]:
        """The cached ``[bytes, keys]`` of ``plugin``; caller holds the write lock."""
        usage = self._usage.get(plugin)
        if usage is None:
            row = conn.execute(_SQL_USAGE, (plugin,)).fetchone()
            usage = self._usage[plugin] = [int(row[0]), int(row[1])]
        return usage

    # -- operations --------------------------------------------------------------------------

    def get(self, plugin: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""
        row = self._conn().execute(_SQL_GET, (plugin, key)).fetchone()
        return None if row is None else row[0]

    def set(
        self, plugin: str, key: str, value: bytes, *, quota_bytes: int, quota_keys: int
    ) -> None:
        """Store ``value`` under ``key``, unless that takes the plugin past a quota.

        Usage counts UTF-8 key bytes plus value bytes. A write that does not increase usage is
        always allowed, so a plugin already over a (lowered) quota can still shrink its data.
        Raises :class:`KvQuotaError` and writes nothing when a quota would be exceeded.
        """
        key_len = len(key.encode("utf-8"))
        value_len = len(value)
        conn = self._conn()
        with self._write_lock:
            usage = self._usage_of(conn, plugin)
            row = conn.execute(_SQL_SIZE, (plugin, key)).fetchone()
            if row is None:
                new_keys = usage[1] + 1
                if new_keys > quota_keys:
                    raise KvQuotaError("keys", quota_keys, new_keys)
                delta = key_len + value_len
            else:
                new_keys = usage[1]
                delta = value_len - row[0]
            new_bytes = usage[0] + delta
            if delta > 0 and new_bytes > quota_bytes:
                raise KvQuotaError("bytes", quota_bytes, new_bytes)
            conn.execute(_SQL_UPSERT, (plugin, key, value))
            # Only after the write succeeded, so a failed write leaves the cache exact.
            usage[0] = new_bytes
            usage[1] = new_keys

    def delete(self, plugin: str, key: str) -> bool:
        """Remove ``key``; True when it existed."""
        conn = self._conn()
        with self._write_lock:
            usage = self._usage_of(conn, plugin)
            row = conn.execute(_SQL_DELETE, (plugin, key)).fetchone()
            if row is None:
                return False
            usage[0] -= len(key.encode("utf-8")) + row[0]
            usage[1] -= 1
            return True

    def list_keys(self, plugin: str, prefix: str = "", limit: int = 10_000) -> list[str]:
        """Up to ``limit`` keys starting with ``prefix``, in UTF-8 byte order."""
        conn = self._conn()
        if not prefix:
            rows = conn.execute(_SQL_LIST_ALL, (plugin, limit)).fetchall()
        else:
            upper = _prefix_upper_bound(prefix)
            if upper is None:
                rows = conn.execute(_SQL_LIST_FROM, (plugin, prefix, limit)).fetchall()
            else:
                rows = conn.execute(_SQL_LIST_RANGE, (plugin, prefix, upper, limit)).fetchall()
        return [row[0] for row in rows]

    def usage(self, plugin: str) -> tuple[int, int]:
        """``(bytes, keys)`` the plugin currently stores."""
        conn = self._conn()
        with self._write_lock:
            usage = self._usage_of(conn, plugin)
            return usage[0], usage[1]

    def clear(self, plugin: str) -> None:
        """Delete every key of ``plugin`` (used when a plugin is uninstalled)."""
        conn = self._conn()
        with self._write_lock:
            conn.execute(_SQL_CLEAR, (plugin,))
            self._usage[plugin] = [0, 0]

    def close(self) -> None:
        """Close every connection; later calls raise ``sqlite3.ProgrammingError``."""
        with self._write_lock:
            self._closed = True
            with self._conns_lock:
                conns = list(self._conns)
                self._conns.clear()
            for conn in conns:
                conn.close()

    def __enter__(self) -> KvStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
