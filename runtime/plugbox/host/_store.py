"""The lifecycle state of a :class:`plugbox.PluginHost` (issue 9 §1): installed plugins, kept
versions, state and reason, enabled, pins, grants, config and its history, an audit log, a
journal of operations in progress and a generation number, in one SQL database.

SQLite (``state_dir/lifecycle.sqlite3``) is the default. Every statement goes through
:func:`connect`, the one seam between a URL or path and a DB-API connection, so a PostgreSQL
URL can be served by ``plugbox.services._db`` (the PostgreSQL helper's module) with the same
SQL: the statements use ``?`` placeholders (an adapter for another paramstyle rewrites them),
no SQLite-only syntax (no AUTOINCREMENT, no INSERT OR REPLACE, no RETURNING), and sequence
numbers computed inside the transaction (``MAX(..) + 1``) after the write that bumps the
generation, which serialises writers on both databases.

Every public method runs in one transaction: the state seen by another connection is always
the one before or the one after an operation.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .._errors import StateError

__all__ = ["Store", "connect"]

#: Schema version of the lifecycle database (meta key ``schema``).
SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lc_meta (
        k VARCHAR(64) PRIMARY KEY,
        v VARCHAR(200) NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lc_plugins (
        name VARCHAR(128) PRIMARY KEY,
        version VARCHAR(128) NOT NULL,
        state VARCHAR(32) NOT NULL,
        reason TEXT,
        enabled INTEGER NOT NULL,
        pinned INTEGER NOT NULL,
        grant_json TEXT NOT NULL,
        source TEXT NOT NULL,
        seq INTEGER NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lc_versions (
        name VARCHAR(128) NOT NULL,
        version VARCHAR(128) NOT NULL,
        path TEXT NOT NULL,
        sha256 VARCHAR(64) NOT NULL,
        manifest_json TEXT NOT NULL,
        installed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS lc_config (
        name VARCHAR(128) NOT NULL,
        revision INTEGER NOT NULL,
        config_json TEXT NOT NULL,
        actor VARCHAR(200),
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, revision))""",
    """CREATE TABLE IF NOT EXISTS lc_audit (
        seq INTEGER PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        actor VARCHAR(200),
        action VARCHAR(64) NOT NULL,
        plugin VARCHAR(128),
        from_version VARCHAR(128),
        to_version VARCHAR(128),
        detail TEXT)""",
    """CREATE TABLE IF NOT EXISTS lc_journal (
        id INTEGER PRIMARY KEY,
        op VARCHAR(64) NOT NULL,
        plugin VARCHAR(128) NOT NULL,
        detail_json TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL)""",
)


class Connection(Protocol):
    """The DB-API subset the store uses (sqlite3 and psycopg connections both fit)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ...) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


def connect(url: str | os.PathLike[str]) -> Connection:
    """Open the lifecycle database named by ``url``: a path (or ``sqlite:///path``) is a
    SQLite file; ``postgresql://...`` is handed to ``plugbox.services._db.connect`` (the
    PostgreSQL helper's layer; it returns a connection taking ``?`` placeholders).

    The one place a URL becomes a connection: the PostgreSQL backend plugs in here.
    Raises :class:`plugbox.StateError` naming the database and the fix.
    """
    text = os.fspath(url)
    if text.startswith(("postgresql://", "postgres://")):
        # services._db speaks PostgreSQL for the plugins' kv data already; the lifecycle
        # store's SQL has not been ported to it yet (issue 9 §1, open).
        raise StateError(f"state URL {_safe_url(text)}: the lifecycle state is SQLite-only "
                         "for now (plugins' kv data may use PostgreSQL through "
                         "Runtime(state_url=...)); give the PluginHost a state_dir",
                         path=_safe_url(text))
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") - 1:]
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), so a
        # writer takes the write lock before it reads what it will change.
        db = sqlite3.connect(text, timeout=30.0, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        raise StateError(f"lifecycle database {text}: cannot open it ({exc}); check that the "
                         "state dir is writable and the file is a plugbox lifecycle database",
                         path=text) from None
    return _SqliteConnection(db)


def _safe_url(url: str) -> str:
    """``url`` without its password (for messages)."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, cred = head.partition("://")
    return f"{scheme}://{cred.split(':')[0]}:***@{tail}"


class _SqliteConnection:
    """sqlite3 in explicit-transaction mode: ``begin`` takes the write lock at once."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.begin_sql = "BEGIN IMMEDIATE"

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, parameters)

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class PluginRow:
    """One installed plugin as stored."""

    name: str
    version: str
    state: str
    reason: str | None
    enabled: bool
    pinned: bool
    grant: Mapping[str, Any]
    source: str
    seq: int


@dataclass(frozen=True)
class VersionRow:
    """One kept version of a plugin in the managed store."""

    name: str
    version: str
    path: str
    sha256: str
    manifest: Mapping[str, Any]
    installed_at: float


@dataclass(frozen=True)
class JournalRow:
    """An operation that started and has not finished (what recovery looks at)."""

    id: int
    op: str
    plugin: str
    detail: Mapping[str, Any]
    started_at: float


class Store:
    """The lifecycle database. Thread-safe (one connection, one lock)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = os.fspath(url)
        self._conn = connect(url)
        self._lock = threading.RLock()
        with self.transaction() as tx:
            for statement in _SCHEMA:
                tx.execute(statement)
            row = tx.execute("SELECT v FROM lc_meta WHERE k = ?", ("schema",)).fetchone()
            if row is None:
                tx.execute("INSERT INTO lc_meta (k, v) VALUES (?, ?)",
                           ("schema", str(SCHEMA_VERSION)))
                tx.execute("INSERT INTO lc_meta (k, v) VALUES (?, ?)", ("generation", "0"))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StateError(f"lifecycle database {self.url} has schema {row[0]}, newer "
                                 f"than this plugbox's {SCHEMA_VERSION}; upgrade plugbox",
                                 path=self.url)

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """One transaction: committed on success, rolled back on any exception. Database
        errors become :class:`plugbox.StateError`."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute(getattr(conn, "begin_sql", "BEGIN"))
                tx = _Tx(conn)
                yield tx
                conn.commit()
            except sqlite3.Error as exc:
                _quiet_rollback(conn)
                raise StateError(f"lifecycle database {self.url}: {exc}; check the state "
                                 "dir's disk space and permissions", path=self.url) from None
            except BaseException:
                _quiet_rollback(conn)
                raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # -- reads -------------------------------------------------------------------------------

    def generation(self) -> int:
        """The generation number: bumped by every committed lifecycle change."""
        with self.transaction() as tx:
            return tx.generation()

    def plugins(self) -> list[PluginRow]:
        """Every installed plugin, in install order."""
        with self.transaction() as tx:
            return tx.plugins()

    def plugin(self, name: str) -> PluginRow | None:
        """Plugin ``name``, or None when it is not installed."""
        with self.transaction() as tx:
            return tx.plugin(name)

    def versions(self, name: str) -> list[VersionRow]:
        """The kept versions of ``name``, newest install first."""
        with self.transaction() as tx:
            return tx.versions(name)

    def journal(self) -> list[JournalRow]:
        """Operations that started and did not finish."""
        with self.transaction() as tx:
            return tx.journal()


def _quiet_rollback(conn: Connection) -> None:
    try:
        conn.rollback()
    except Exception:  # the connection may be broken; the transaction is gone either way
        pass


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class _Tx:
    """The statements of one transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, parameters)

    # generation --------------------------------------------------------------------------

    def generation(self) -> int:
        row = self.execute("SELECT v FROM lc_meta WHERE k = ?", ("generation",)).fetchone()
        return int(row[0])

    def bump(self) -> int:
        """Bump the generation (first write of a change: it also serialises writers)."""
        gen = self.generation() + 1
        self.execute("UPDATE lc_meta SET v = ? WHERE k = ?", (str(gen), "generation"))
        return gen

    # plugins -----------------------------------------------------------------------------

    _PLUGIN_COLUMNS = "name, version, state, reason, enabled, pinned, grant_json, source, seq"

    @staticmethod
    def _plugin(row: Sequence[Any]) -> PluginRow:
        return PluginRow(name=row[0], version=row[1], state=row[2], reason=row[3],
                         enabled=bool(row[4]), pinned=bool(row[5]), grant=json.loads(row[6]),
                         source=row[7], seq=int(row[8]))

    def plugins(self) -> list[PluginRow]:
        rows = self.execute(f"SELECT {self._PLUGIN_COLUMNS} FROM lc_plugins ORDER BY seq"
                            ).fetchall()
        return [self._plugin(r) for r in rows]

    def plugin(self, name: str) -> PluginRow | None:
        row = self.execute(f"SELECT {self._PLUGIN_COLUMNS} FROM lc_plugins WHERE name = ?",
                           (name,)).fetchone()
        return None if row is None else self._plugin(row)

    def insert_plugin(self, *, name: str, version: str, state: str, enabled: bool,
                      grant: Mapping[str, Any], source: str) -> None:
        row = self.execute("SELECT MAX(seq) FROM lc_plugins").fetchone()
        seq = (row[0] or 0) + 1
        self.execute(
            "INSERT INTO lc_plugins (name, version, state, reason, enabled, pinned, "
            "grant_json, source, seq, updated_at) VALUES (?, ?, ?, NULL, ?, 0, ?, ?, ?, ?)",
            (name, version, state, int(enabled), _dumps(grant), source, seq, time.time()))

    def update_plugin(self, name: str, **fields: Any) -> None:
        columns = {"version", "state", "reason", "enabled", "pinned", "grant", "source"}
        sets, values = [], []
        for key, value in fields.items():
            if key not in columns:
                raise ValueError(key)
            if key == "grant":
                key, value = "grant_json", _dumps(value)
            elif key in ("enabled", "pinned"):
                value = int(value)
            sets.append(f"{key} = ?")
            values.append(value)
        sets.append("updated_at = ?")
        values.append(time.time())
        self.execute(f"UPDATE lc_plugins SET {', '.join(sets)} WHERE name = ?",
                     (*values, name))

    def delete_plugin(self, name: str) -> None:
        self.execute("DELETE FROM lc_plugins WHERE name = ?", (name,))
        self.execute("DELETE FROM lc_versions WHERE name = ?", (name,))

    # versions ----------------------------------------------------------------------------

    def versions(self, name: str) -> list[VersionRow]:
        rows = self.execute(
            "SELECT name, version, path, sha256, manifest_json, installed_at FROM lc_versions "
            "WHERE name = ? ORDER BY installed_at DESC, version DESC", (name,)).fetchall()
        return [VersionRow(r[0], r[1], r[2], r[3], json.loads(r[4]), float(r[5]))
                for r in rows]

    def all_versions(self) -> list[VersionRow]:
        rows = self.execute(
            "SELECT name, version, path, sha256, manifest_json, installed_at FROM lc_versions"
        ).fetchall()
        return [VersionRow(r[0], r[1], r[2], r[3], json.loads(r[4]), float(r[5]))
                for r in rows]

    def add_version(self, *, name: str, version: str, path: str, sha256: str,
                    manifest: Mapping[str, Any]) -> None:
        self.execute("DELETE FROM lc_versions WHERE name = ? AND version = ?", (name, version))
        self.execute(
            "INSERT INTO lc_versions (name, version, path, sha256, manifest_json, "
            "installed_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, path, sha256, _dumps(manifest), time.time()))

    def touch_version(self, name: str, version: str) -> None:
        """Make ``version`` the newest kept (the order rollback and pruning go by)."""
        self.execute("UPDATE lc_versions SET installed_at = ? WHERE name = ? AND version = ?",
                     (time.time(), name, version))

    def delete_version(self, name: str, version: str) -> None:
        self.execute("DELETE FROM lc_versions WHERE name = ? AND version = ?", (name, version))

    # config ------------------------------------------------------------------------------

    def config(self, name: str) -> tuple[int, dict[str, Any]] | None:
        row = self.execute("SELECT revision, config_json FROM lc_config WHERE name = ? AND "
                           "revision = (SELECT MAX(revision) FROM lc_config WHERE name = ?)",
                           (name, name)).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def config_history(self, name: str) -> list[tuple[int, dict[str, Any], str | None, float]]:
        rows = self.execute("SELECT revision, config_json, actor, at FROM lc_config WHERE "
                            "name = ? ORDER BY revision", (name,)).fetchall()
        return [(int(r[0]), json.loads(r[1]), r[2], float(r[3])) for r in rows]

    def set_config(self, name: str, config: Mapping[str, Any], actor: str | None) -> int:
        row = self.execute("SELECT MAX(revision) FROM lc_config WHERE name = ?",
                           (name,)).fetchone()
        revision = (row[0] or 0) + 1
        self.execute("INSERT INTO lc_config (name, revision, config_json, actor, at) VALUES "
                     "(?, ?, ?, ?, ?)", (name, revision, _dumps(config), actor, time.time()))
        return revision

    def delete_config(self, name: str) -> None:
        self.execute("DELETE FROM lc_config WHERE name = ?", (name,))

    # audit -------------------------------------------------------------------------------

    def audit(self, *, actor: str | None, action: str, plugin: str | None,
              from_version: str | None = None, to_version: str | None = None,
              detail: str | None = None) -> float:
        row = self.execute("SELECT MAX(seq) FROM lc_audit").fetchone()
        at = time.time()
        self.execute("INSERT INTO lc_audit (seq, at, actor, action, plugin, from_version, "
                     "to_version, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     ((row[0] or 0) + 1, at, actor, action, plugin, from_version,
                      to_version, detail))
        return at

    def audit_entries(self, name: str | None, limit: int
                      ) -> list[tuple[int, float, str | None, str, str | None, str | None,
                                      str | None, str | None]]:
        sql = ("SELECT seq, at, actor, action, plugin, from_version, to_version, detail "
               "FROM lc_audit")
        params: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE plugin = ?"
            params = (name,)
        rows = self.execute(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
        return [tuple(r) for r in rows]

    # journal -----------------------------------------------------------------------------

    def journal(self) -> list[JournalRow]:
        rows = self.execute("SELECT id, op, plugin, detail_json, started_at FROM lc_journal "
                            "ORDER BY id").fetchall()
        return [JournalRow(int(r[0]), r[1], r[2], json.loads(r[3]), float(r[4]))
                for r in rows]

    def begin_op(self, op: str, plugin: str, detail: Mapping[str, Any]) -> int:
        row = self.execute("SELECT MAX(id) FROM lc_journal").fetchone()
        ident = (row[0] or 0) + 1
        self.execute("INSERT INTO lc_journal (id, op, plugin, detail_json, started_at) "
                     "VALUES (?, ?, ?, ?, ?)", (ident, op, plugin, _dumps(detail), time.time()))
        return ident

    def end_op(self, ident: int) -> None:
        self.execute("DELETE FROM lc_journal WHERE id = ?", (ident,))


def store_path(state_dir: Path) -> Path:
    """The default lifecycle database of ``state_dir``."""
    return state_dir / "lifecycle.sqlite3"
