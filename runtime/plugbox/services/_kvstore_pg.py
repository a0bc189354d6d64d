"""The plugins' key-value storage on PostgreSQL: the interface of
:class:`~plugbox.services._kvstore.KvStore` (same namespacing, quotas, byte order, atomic
``increment`` / ``compare_and_set``), for hosts on several machines sharing one database.
Chosen by ``plugbox.Runtime(state_url="postgresql://...")``.

Design (differences from the SQLite store, which is one process's file):

* **Usage lives in the database** (``kv_usage``: one row per plugin, maintained in the same
  transaction as each write), since other machines write too; the SQLite store's in-memory
  cache would drift.
* **Every write of a plugin first locks its usage row** (``SELECT ... FOR UPDATE``), so the
  writes of one plugin are serialised across all connections and machines: the quota check,
  the read that decides an ``increment`` or ``compare_and_set`` and the write happen with no
  other writer in between (READ COMMITTED suffices: each statement after the lock sees every
  commit made before it). Reads take no lock. Plugins never wait for each other.
* **Keys are BYTEA** holding the key's UTF-8: comparisons and ``ORDER BY`` are byte order
  whatever the database's collation, and every key SQLite accepts (NUL included) is storable.
* Errors are :class:`~plugbox.StateError` (see :mod:`._db`); a closed store raises one too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from .._errors import StateError
from ._db import Database, Tx, connect
from ._kvstore import (_prefix_upper_bound, compare_and_set_step, increment_step,
                       usage_after_write)

__all__ = ["PgKvStore"]

T = TypeVar("T")

_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS kv ("
    " plugin TEXT NOT NULL,"
    " key BYTEA NOT NULL,"
    " value BYTEA NOT NULL,"
    " PRIMARY KEY (plugin, key))",
    "CREATE TABLE IF NOT EXISTS kv_usage ("
    " plugin TEXT PRIMARY KEY,"
    " bytes BIGINT NOT NULL,"
    " keys BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS identities ("
    " name TEXT PRIMARY KEY,"
    " key_ids TEXT NOT NULL)",
)
_SQL_GET: Final = "SELECT value FROM kv WHERE plugin = ? AND key = ?"
_SQL_SIZE: Final = "SELECT octet_length(value) FROM kv WHERE plugin = ? AND key = ?"
_SQL_GET_FOR_UPDATE: Final = "SELECT value FROM kv WHERE plugin = ? AND key = ? FOR UPDATE"
_SQL_UPSERT: Final = (
    "INSERT INTO kv (plugin, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value"
)
_SQL_DELETE: Final = "DELETE FROM kv WHERE plugin = ? AND key = ? RETURNING octet_length(value)"
_SQL_LOCK_USAGE: Final = "SELECT bytes, keys FROM kv_usage WHERE plugin = ? FOR UPDATE"
# The first write of a plugin (or the first since kv_usage was added) sums what is there.
_SQL_INIT_USAGE: Final = (
    "INSERT INTO kv_usage (plugin, bytes, keys) "
    "SELECT ?, COALESCE(SUM(octet_length(key) + octet_length(value)), 0), COUNT(*) "
    "FROM kv WHERE plugin = ? ON CONFLICT (plugin) DO NOTHING"
)
_SQL_SET_USAGE: Final = "UPDATE kv_usage SET bytes = ?, keys = ? WHERE plugin = ?"
_SQL_USAGE: Final = "SELECT bytes, keys FROM kv_usage WHERE plugin = ?"
_SQL_SUM: Final = (
    "SELECT COALESCE(SUM(octet_length(key) + octet_length(value)), 0), COUNT(*) "
    "FROM kv WHERE plugin = ?"
)
_SQL_LIST_ALL: Final = "SELECT key FROM kv WHERE plugin = ? ORDER BY key LIMIT ?"
_SQL_LIST_RANGE: Final = (
    "SELECT key FROM kv WHERE plugin = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?"
)
_SQL_LIST_FROM: Final = "SELECT key FROM kv WHERE plugin = ? AND key >= ? ORDER BY key LIMIT ?"


class PgKvStore:
    """Plugin-namespaced key-value storage in a PostgreSQL database; thread-safe, and safe
    for any number of processes and machines sharing the database. ``url`` is a
    ``postgresql://`` URL; the tables are created if missing."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._db: Database = connect(url, timeout=timeout)
        if self._db.dialect != "postgresql":
            self._db.close()
            raise StateError(f"PgKvStore needs a postgresql:// URL, not {url!r}", path=url)
        #: The database as messages name it (the URL without its password).
        self.path = self._db.where
        try:
            self._db.executescript(_DDL)
        except BaseException:
            self._db.close()
            raise

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _usage_locked(tx: Tx, plugin: str) -> list[int]:
        """Lock ``plugin``'s usage row (creating it from the data if missing) and return it."""
        row = tx.execute(_SQL_LOCK_USAGE, (plugin,)).fetchone()
        if row is None:
            tx.execute(_SQL_INIT_USAGE, (plugin, plugin))
            row = tx.execute(_SQL_LOCK_USAGE, (plugin,)).fetchone()
        return [int(row[0]), int(row[1])]

    @staticmethod
    def _write_checked(tx: Tx, usage: list[int], plugin: str, key: bytes, old_len: int | None,
                       value: bytes, quota_bytes: int, quota_keys: int) -> None:
        """Upsert within the quotas (as KvStore does) and record the new usage."""
        new_bytes, new_keys = usage_after_write(usage, len(key), old_len, len(value),
                                                quota_bytes, quota_keys)
        tx.execute(_SQL_UPSERT, (plugin, key, value))
        tx.execute(_SQL_SET_USAGE, (new_bytes, new_keys, plugin))

    def _atomic(self, plugin: str, key: str, quota_bytes: int, quota_keys: int,
                decide: Callable[[bytes | None], tuple[bytes | None, T]]) -> T:
        k = key.encode("utf-8")

        def body(tx: Tx) -> T:
            usage = self._usage_locked(tx, plugin)
            row = tx.execute(_SQL_GET_FOR_UPDATE, (plugin, k)).fetchone()
            current = None if row is None else bytes(row[0])
            new, result = decide(current)
            if new is not None:
                self._write_checked(tx, usage, plugin, k,
                                    None if current is None else len(current), new,
                                    quota_bytes, quota_keys)
            return result

        return self._db.atomic(body)

    # -- operations --------------------------------------------------------------------------

    def get(self, plugin: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""
        rows = self._db.execute(_SQL_GET, (plugin, key.encode("utf-8")))
        return bytes(rows[0][0]) if rows else None

    def set(self, plugin: str, key: str, value: bytes, *, quota_bytes: int,
            quota_keys: int) -> None:
        """Store ``value`` under ``key``, unless that takes the plugin past a quota
        (:class:`KvQuotaError`, nothing written); a write that does not grow usage is always
        allowed."""
        k = key.encode("utf-8")
        value = bytes(value)

        def body(tx: Tx) -> None:
            usage = self._usage_locked(tx, plugin)
            row = tx.execute(_SQL_SIZE, (plugin, k)).fetchone()
            self._write_checked(tx, usage, plugin, k, None if row is None else int(row[0]),
                                value, quota_bytes, quota_keys)

        self._db.atomic(body)

    def increment(self, plugin: str, key: str, delta: int, *, quota_bytes: int,
                  quota_keys: int) -> int:
        """Add ``delta`` to the signed 64-bit little-endian integer under ``key`` (absent: 0)
        and return the new value, atomically across every connection to the database.
        :class:`KvValueError` / :class:`KvQuotaError` as for KvStore, nothing written."""

        return self._atomic(plugin, key, quota_bytes, quota_keys, increment_step(delta))

    def compare_and_set(self, plugin: str, key: str, expected: bytes | None, new: bytes, *,
                        quota_bytes: int, quota_keys: int) -> bool:
        """Store ``new`` under ``key`` if its value is ``expected`` (None: absent),
        atomically across every connection; True when it did."""
        new = bytes(new)

        return self._atomic(plugin, key, quota_bytes, quota_keys,
                            compare_and_set_step(expected, new))

    def delete(self, plugin: str, key: str) -> bool:
        """Remove ``key``; True when it existed."""
        k = key.encode("utf-8")

        def body(tx: Tx) -> bool:
            usage = self._usage_locked(tx, plugin)
            row = tx.execute(_SQL_DELETE, (plugin, k)).fetchone()
            if row is None:
                return False
            tx.execute(_SQL_SET_USAGE, (usage[0] - len(k) - int(row[0]), usage[1] - 1, plugin))
            return True

        return self._db.atomic(body)

    def list_keys(self, plugin: str, prefix: str = "", limit: int = 10_000) -> list[str]:
        """Up to ``limit`` keys starting with ``prefix``, in UTF-8 byte order."""
        if not prefix:
            rows = self._db.execute(_SQL_LIST_ALL, (plugin, limit))
        else:
            upper = _prefix_upper_bound(prefix)
            low = prefix.encode("utf-8")
            if upper is None:
                rows = self._db.execute(_SQL_LIST_FROM, (plugin, low, limit))
            else:
                rows = self._db.execute(_SQL_LIST_RANGE,
                                        (plugin, low, upper.encode("utf-8"), limit))
        return [bytes(row[0]).decode("utf-8") for row in rows]

    def usage(self, plugin: str) -> tuple[int, int]:
        """``(bytes, keys)`` the plugin currently stores."""
        rows = self._db.execute(_SQL_USAGE, (plugin,)) or self._db.execute(_SQL_SUM, (plugin,))
        return int(rows[0][0]), int(rows[0][1])

    def clear(self, plugin: str) -> None:
        """Delete every key of ``plugin`` (used when a plugin is uninstalled)."""

        def body(tx: Tx) -> None:
            self._usage_locked(tx, plugin)
            tx.execute("DELETE FROM kv WHERE plugin = ?", (plugin,))
            tx.execute(_SQL_SET_USAGE, (0, 0, plugin))

        self._db.atomic(body)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._db.closed

    # -- plugin identity ---------------------------------------------------------------------

    def bound_signers(self, name: str) -> tuple[str, ...] | None:
        """The key ids the plugin name ``name`` is bound to, or None when it is unbound."""
        rows = self._db.execute("SELECT key_ids FROM identities WHERE name = ?", (name,))
        return tuple(str(rows[0][0]).split(",")) if rows else None

    def bind_signers(self, name: str, key_ids: tuple[str, ...]) -> tuple[str, ...]:
        """Bind ``name`` to ``key_ids`` unless it is bound already; the binding in force (the
        first one wins, atomically, across machines)."""

        def body(tx: Tx) -> tuple[str, ...]:
            tx.execute("INSERT INTO identities (name, key_ids) VALUES (?, ?) "
                       "ON CONFLICT (name) DO NOTHING", (name, ",".join(key_ids)))
            row = tx.execute("SELECT key_ids FROM identities WHERE name = ?",
                             (name,)).fetchone()
            return tuple(str(row[0]).split(","))

        return self._db.atomic(body)

    def close(self) -> None:
        """Close the connection; later calls raise StateError. Idempotent."""
        self._db.close()

    def __enter__(self) -> PgKvStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
