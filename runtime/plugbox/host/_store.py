"""The lifecycle state of a :class:`plugbox.PluginHost` (issue 9 §1): installed plugins, kept
versions, state and reason, enabled, pins, grants, config and its history, an audit log, a
journal of operations in progress and a generation number, in one SQL database.

The database is a :class:`plugbox.services._db.Database`, chosen by URL: SQLite
(``state_dir/lifecycle.sqlite3``, the default, opened on first use so a host that never uses
the lifecycle creates no file) or PostgreSQL (``postgresql://...``, psycopg 3), with the same
SQL: ``?`` placeholders, no SQLite-only syntax (no AUTOINCREMENT, no INSERT OR REPLACE), and
sequence numbers computed inside the transaction (``MAX(..) + 1``). Every transaction holds
the database's write lock from its first statement (``BEGIN IMMEDIATE`` on SQLite, a
transaction-scoped advisory lock on PostgreSQL), so lifecycle transactions of every process
and machine sharing the database run one after the other.

The generation number is the database's ``lifecycle`` counter
(:meth:`Database.bump_generation`): every change bumps it in its own transaction (on
PostgreSQL that also sends a NOTIFY), which is what other processes watch (issue 9 §7).

Several machines, one set of plugins: on PostgreSQL the store also keeps the verified files of
every kept version (``lc_packages``: each member's bytes and SHA-256), and reads a version's
directory as ``<this host's plugins dir>/<name>/<version>``; :meth:`Store.materialise` writes
a version this machine lacks from the database (every file's hash checked) before it is
loaded. On SQLite the files stay in the state dir's managed store only (processes sharing a
state dir share them).

Every public method runs in one transaction: the state seen by another connection is always
the one before or the one after an operation. Database errors are
:class:`plugbox.StateError` naming the database and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .._errors import PlugboxError, StateError
from ..services._db import Database, GenerationWatch, Tx, connect, is_postgres_url, redacted

__all__ = ["Store", "connect"]

#: Schema version of the lifecycle database (meta key ``schema``).
SCHEMA_VERSION = 1

#: The generation counter's scope in the database (services._db's ``plugbox_generation``).
GENERATION_SCOPE: Final = "lifecycle"

#: PostgreSQL advisory lock every lifecycle transaction holds ("plugbox-lc" in ASCII).
_LC_LOCK: Final = 0x706C7567626F786C63 & 0x7FFFFFFFFFFFFFFF

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

#: PostgreSQL only: the files of every kept version, so another machine can materialise it.
_SCHEMA_PACKAGES = (
    """CREATE TABLE IF NOT EXISTS lc_packages (
        name VARCHAR(128) NOT NULL,
        version VARCHAR(128) NOT NULL,
        member VARCHAR(512) NOT NULL,
        sha256 VARCHAR(64) NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (name, version, member))""",
)

#: The largest plugin directory the store copies into the database (all members together).
MAX_PACKAGE_BYTES: Final = 512 * 1024 * 1024


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
    """The lifecycle database named by ``url`` (a path, ``sqlite:///path`` or
    ``postgresql://...``). Thread-safe (one connection, one lock). An SQLite database is
    opened on first use; a PostgreSQL one at once (so a wrong URL fails at construction).

    ``plugins_dir`` is this host's managed store; on PostgreSQL the versions' directories are
    read as ``plugins_dir/<name>/<dir>`` (the files of another machine's install are
    materialised there, see :meth:`materialise`)."""

    def __init__(self, url: str | os.PathLike[str], *,
                 plugins_dir: str | os.PathLike[str] | None = None) -> None:
        self.url = os.fspath(url)
        self.plugins_dir = Path(plugins_dir) if plugins_dir is not None else None
        self._lock = threading.RLock()
        self._db: Database | None = None
        self._closed = False
        self._watch: GenerationWatch | None = None
        self.postgres = is_postgres_url(self.url)
        #: The database as messages name it (a URL without its password).
        self.where = redacted(self.url) if self.postgres else self.url
        if self.postgres:
            self._database()

    # -- the connection ----------------------------------------------------------------------

    def _database(self) -> Database:
        """The open database, opened (and its schema made) on first use."""
        with self._lock:
            if self._db is not None:
                return self._db
            if self._closed:
                raise StateError(f"lifecycle database {self.where} is closed: create a new "
                                 "PluginHost", path=self.where)
            db = connect(self.url, timeout=30.0, durable=True)
            try:
                db.executescript(list(_SCHEMA) + (list(_SCHEMA_PACKAGES) if self.postgres
                                                  else []))
                db.generation(GENERATION_SCOPE)  # makes the counter's table
                with db.transaction() as tx:
                    if self.postgres:
                        tx.execute("SELECT pg_advisory_xact_lock(?)", (_LC_LOCK,))
                    row = tx.execute("SELECT v FROM lc_meta WHERE k = ?",
                                     ("schema",)).fetchone()
                    if row is None:
                        tx.execute("INSERT INTO lc_meta (k, v) VALUES (?, ?)",
                                   ("schema", str(SCHEMA_VERSION)))
                    elif int(row[0]) > SCHEMA_VERSION:
                        raise StateError(
                            f"lifecycle database {self.where} has schema {row[0]}, newer "
                            f"than this plugbox's {SCHEMA_VERSION}; upgrade plugbox",
                            path=self.where)
            except BaseException:
                db.close()
                raise
            self._db = db
            return db

    @property
    def opened(self) -> bool:
        """True once the database was opened (an SQLite store opens on first use)."""
        return self._db is not None

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return "postgresql" if self.postgres else "sqlite"

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """One transaction: committed on success, rolled back on any exception. It holds the
        database's write lock throughout. Database errors become
        :class:`plugbox.StateError`."""
        with self._lock:
            db = self._database()
            with db.transaction() as t:
                if self.postgres:
                    t.execute("SELECT pg_advisory_xact_lock(?)", (_LC_LOCK,))
                yield _Tx(db, t, self)

    def close(self) -> None:
        """Stop the :meth:`watch` thread and close the connection. Idempotent."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        with self._lock:
            self._closed = True
            db, self._db = self._db, None
        if db is not None:
            db.close()

    # -- the generation and watching it ------------------------------------------------------

    def generation(self) -> int:
        """The generation number: bumped by every committed lifecycle change. One indexed
        read (no transaction lock)."""
        with self._lock:
            db = self._database()
        return db.generation(GENERATION_SCOPE)

    def watch(self, on_change: Callable[[int], None], *, interval: float = 0.2,
              on_error: Callable[[StateError], None] | None = None) -> None:
        """Call ``on_change(generation)`` on a daemon thread within about ``interval``
        seconds of every change another connection commits (on PostgreSQL, at once on its
        NOTIFY). :meth:`close` stops it. One watch per store."""
        with self._lock:
            if self._watch is not None:
                raise StateError(f"lifecycle database {self.where} is watched already",
                                 path=self.where)
            # The watch has its own connection: a poll never waits for this process's
            # lifecycle transactions, and LISTEN needs a connection of its own.
            watch = GenerationWatch(connect(self.url, timeout=30.0), GENERATION_SCOPE,
                                    interval=interval, on_error=on_error, owns_db=True,
                                    listen=self.postgres)
            self._watch = watch
        watch.start(on_change)

    # -- reads -------------------------------------------------------------------------------

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

    # -- several machines (PostgreSQL) -------------------------------------------------------

    def local_path(self, name: str, recorded: str) -> str:
        """Where version directory ``recorded`` (as the installing host wrote it) is on this
        host: the same path on SQLite, ``plugins_dir/<name>/<its last part>`` on
        PostgreSQL."""
        if not self.postgres or self.plugins_dir is None:
            return recorded
        return str(self.plugins_dir / name / Path(recorded).name)

    def materialise(self, version: VersionRow) -> bool:
        """Write the files of ``version`` (a row of :meth:`versions`) into its directory when
        this host lacks it, from ``lc_packages`` (PostgreSQL; every file's SHA-256 checked,
        written into a temp dir and renamed into place). True when it wrote them; False
        when the directory exists or the database holds no files for it (SQLite)."""
        target = Path(version.path)
        if not self.postgres or target.exists():
            return False
        with self.transaction() as tx:
            rows = tx.execute("SELECT member, sha256, data FROM lc_packages WHERE name = ? "
                              "AND version = ? ORDER BY member",
                              (version.name, version.version)).fetchall()
        if not rows:
            return False
        where = f"plugin {version.name!r} {version.version}"
        tmp = target.parent.parent / ".tmp" / uuid.uuid4().hex
        try:
            for member, sha256, data in rows:
                data = bytes(data)
                if hashlib.sha256(data).hexdigest() != sha256 or ".." in Path(member).parts \
                        or Path(member).is_absolute():
                    raise StateError(
                        f"{where}: its file {member!r} in lifecycle database {self.where} "
                        f"does not match its recorded SHA-256; reinstall it from its source",
                        path=self.where)
                dest = tmp / member
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.exists():  # another process of this host won the race: fine
                    raise
        except OSError as exc:
            raise StateError(f"{where}: cannot write it into the managed store {target} "
                             f"({exc}); check disk space and permissions",
                             path=str(target)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _package_files(path: Path) -> list[tuple[str, str, bytes]]:
    """(member, sha256, bytes) of the plugin files in directory ``path``."""
    from ..trust._package import package_members

    out = []
    total = 0
    for member, file in sorted(package_members(path).items()):
        data = file.read_bytes()
        total += len(data)
        if total > MAX_PACKAGE_BYTES:
            raise StateError(f"plugin directory {path} is larger than "
                             f"{MAX_PACKAGE_BYTES} bytes; the lifecycle database keeps at most "
                             "that much per version", path=str(path))
        out.append((member, hashlib.sha256(data).hexdigest(), data))
    return out


class _Tx:
    """The statements of one transaction."""

    def __init__(self, db: Database, tx: Tx, store: Store) -> None:
        self._db = db
        self._tx = tx
        self._store = store

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self._tx.execute(sql, parameters)

    # generation --------------------------------------------------------------------------

    def generation(self) -> int:
        row = self.execute("SELECT value FROM plugbox_generation WHERE scope = ?",
                           (GENERATION_SCOPE,)).fetchone()
        return 0 if row is None else int(row[0])

    def bump(self) -> int:
        """Bump the generation (committed with this transaction; other processes see it)."""
        return self._db.bump_generation(GENERATION_SCOPE, tx=self._tx)
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
        if self._store.postgres:
            self.execute("DELETE FROM lc_packages WHERE name = ?", (name,))

    # versions ----------------------------------------------------------------------------

    def _version(self, r: Sequence[Any]) -> VersionRow:
        return VersionRow(r[0], r[1], self._store.local_path(r[0], r[2]), r[3],
                          json.loads(r[4]), float(r[5]))

    def versions(self, name: str) -> list[VersionRow]:
        rows = self.execute(
            "SELECT name, version, path, sha256, manifest_json, installed_at FROM lc_versions "
            "WHERE name = ? ORDER BY installed_at DESC, version DESC", (name,)).fetchall()
        return [self._version(r) for r in rows]

    def all_versions(self) -> list[VersionRow]:
        rows = self.execute(
            "SELECT name, version, path, sha256, manifest_json, installed_at FROM lc_versions"
        ).fetchall()
        return [self._version(r) for r in rows]

    def add_version(self, *, name: str, version: str, path: str, sha256: str,
                    manifest: Mapping[str, Any]) -> None:
        self.execute("DELETE FROM lc_versions WHERE name = ? AND version = ?", (name, version))
        self.execute(
            "INSERT INTO lc_versions (name, version, path, sha256, manifest_json, "
            "installed_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, path, sha256, _dumps(manifest), time.time()))
        if self._store.postgres:
            # Another machine sharing this database materialises the version from these.
            self.execute("DELETE FROM lc_packages WHERE name = ? AND version = ?",
                         (name, version))
            try:
                files = _package_files(Path(path))
            except (OSError, PlugboxError) as exc:
                raise StateError(f"plugin {name!r} {version}: cannot read its files in "
                                 f"{path} to record them ({exc}); check the managed store",
                                 path=path) from None
            for member, digest, data in files:
                self.execute("INSERT INTO lc_packages (name, version, member, sha256, data) "
                             "VALUES (?, ?, ?, ?, ?)", (name, version, member, digest, data))

    def touch_version(self, name: str, version: str) -> None:
        """Make ``version`` the newest kept (the order rollback and pruning go by)."""
        self.execute("UPDATE lc_versions SET installed_at = ? WHERE name = ? AND version = ?",
                     (time.time(), name, version))

    def delete_version(self, name: str, version: str) -> None:
        self.execute("DELETE FROM lc_versions WHERE name = ? AND version = ?", (name, version))
        if self._store.postgres:
            self.execute("DELETE FROM lc_packages WHERE name = ? AND version = ?",
                         (name, version))

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
