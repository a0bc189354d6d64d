"""The state database, chosen by URL: SQLite (embedded, the default) or PostgreSQL (psycopg 3,
the ``plugbox[postgres]`` extra), behind one small interface.

* ``sqlite:///abs/path``, ``sqlite:relative/path`` or a plain path: an SQLite file in WAL
  mode with normal locking, so several processes can share it (writers wait up to
  ``timeout`` seconds for each other).
* ``postgresql://user:pass@host:port/db`` (or ``postgres://``): one psycopg connection.

Both give :meth:`Database.transaction` (one transaction, committed on success, rolled back on
any exception; on SQLite ``BEGIN IMMEDIATE``, so the write lock is taken before the first
read), :meth:`Database.execute` (one statement in its own transaction) and the generation
counter of issue 9 §7 (:meth:`Database.bump_generation`, :meth:`Database.generation`,
:class:`GenerationWatch`). SQL uses ``?`` placeholders on both; on PostgreSQL they become
``%s`` (so SQL text given here must not contain ``?`` or ``%`` literals in strings).

Every driver error is a :class:`~plugbox.StateError` naming the database (the URL without its
password) and the fix: no ``sqlite3`` or ``psycopg`` exception leaves this module. Serialization
failures and deadlocks (PostgreSQL SQLSTATE 40001/40P01) and SQLite's "locked" inside
:meth:`Database.atomic` are retried a few times before they are reported.

One connection per :class:`Database`, shared by the threads of the process behind a lock
(a transaction holds it throughout). A PostgreSQL connection found broken (server restart) is
replaced on the next use.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .._errors import StateError

__all__ = ["Database", "GenerationWatch", "Tx", "connect", "is_postgres_url", "redacted"]

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]

#: ``generation`` rows: one counter per scope (``"lifecycle"`` by default).
_SQL_CREATE_GENERATION: Final = (
    "CREATE TABLE IF NOT EXISTS plugbox_generation ("
    " scope TEXT PRIMARY KEY,"
    " value BIGINT NOT NULL"
    ")"
)
_SQL_BUMP: Final = (
    "INSERT INTO plugbox_generation (scope, value) VALUES (?, 1) "
    "ON CONFLICT (scope) DO UPDATE SET value = plugbox_generation.value + 1 RETURNING value"
)
_SQL_GENERATION: Final = "SELECT value FROM plugbox_generation WHERE scope = ?"
#: The LISTEN/NOTIFY channel a bump notifies on PostgreSQL (payload: "scope value").
NOTIFY_CHANNEL: Final = "plugbox_generation"

#: The advisory lock key schema changes hold on PostgreSQL (any constant; "plugbox" in ASCII).
_DDL_LOCK: Final = 0x706C7567626F78
_RETRY_SQLSTATES: Final = frozenset({"40001", "40P01"})
_ATTEMPTS: Final = 5
#: The longest a LISTENing GenerationWatch waits before it looks at its stop flag (seconds).
_LISTEN_SLICE: Final = 0.25


def is_postgres_url(url: str | os.PathLike[str]) -> bool:
    """True when ``url`` names a PostgreSQL database."""
    return isinstance(url, str) and url.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def sqlite_path(url: str | os.PathLike[str]) -> Path:
    """The file an SQLite URL (``sqlite:///abs``, ``sqlite:rel``) or plain path names."""
    if isinstance(url, str) and url.startswith("sqlite:"):
        rest = url.removeprefix("sqlite:")
        if rest.startswith("//"):
            rest = rest[2:]  # sqlite:///abs -> /abs ; sqlite://rel (odd) -> rel
        if not rest:
            raise StateError("the SQLite URL names no file: write sqlite:///absolute/path or "
                             "sqlite:relative/path", path=url)
        return Path(rest)
    return Path(url)


class Rows(Protocol):
    """What :meth:`Tx.execute` returns: the statement's rows."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx:
    """One open transaction: :meth:`execute` runs a statement in it."""

    def __init__(self, db: Database, conn: Any) -> None:
        self._db = db
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        """Run ``sql`` (``?`` placeholders) with ``params``; its rows."""
        return self._db._run(self._conn, sql, params)


class Database:
    """A connection to the state database named by a URL (see the module docstring); thread
    safe. Use :func:`connect`."""

    dialect: Dialect

    def __init__(self, url: str | os.PathLike[str], *, timeout: float = 5.0,
                 durable: bool = False) -> None:
        self.url = os.fspath(url)
        self.timeout = timeout
        #: SQLite: ``synchronous=FULL`` (every commit synced) instead of ``NORMAL``.
        self.durable = durable
        self._lock = threading.RLock()
        self._conn: Any = None
        self._closed = False
        if is_postgres_url(self.url):
            self.dialect = "postgresql"
            #: The database as messages name it (no password).
            self.where = redacted(self.url)
            try:
                import psycopg
            except ImportError:
                raise StateError(
                    f"state database {self.where} is PostgreSQL, which needs psycopg 3: "
                    "pip install 'plugbox[postgres]'", path=self.where) from None
            self._psycopg: Any = psycopg
        else:
            self.dialect = "sqlite"
            self.path = sqlite_path(self.url)
            self.where = str(self.path)
        with self._lock:
            self._connection()

    # -- connections -------------------------------------------------------------------------

    def _connection(self) -> Any:
        """The open connection, (re)made if needed; caller holds the lock."""
        if self._closed:
            raise StateError(f"state database {self.where} is closed: open a new one",
                             path=self.where)
        conn = self._conn
        if conn is not None and (self.dialect == "sqlite" or not conn.broken):
            return conn
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 -- a broken connection; replaced below
                pass
            self._conn = None
        try:
            if self.dialect == "postgresql":
                conn = self._psycopg.connect(self.url, autocommit=True,
                                             connect_timeout=max(1, int(self.timeout)))
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    from .._errors import state_error

                    raise state_error(self.path.parent, exc,
                                      "creating the state directory") from None
                # isolation_level=None: statements autocommit unless a transaction is begun.
                conn = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=self.timeout)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL" if self.durable
                             else "PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
        except StateError:
            raise
        except Exception as exc:
            raise self.error(exc, "connecting") from None
        self._conn = conn
        return conn

    def _sql(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql
        return sql.replace("%", "%%").replace("?", "%s")

    def _run(self, conn: Any, sql: str, params: Sequence[object]) -> Rows:
        try:
            return conn.execute(self._sql(sql), tuple(params))  # type: ignore[no-any-return]
        except Exception as exc:
            raise self.error(exc, "running a statement") from exc

    # -- errors ------------------------------------------------------------------------------

    def error(self, exc: BaseException, doing: str) -> StateError:
        """The StateError for a driver error ``exc`` raised while ``doing`` something."""
        if isinstance(exc, StateError):
            return exc
        code = getattr(exc, "sqlstate", None)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.dialect == "postgresql":
            if code is None or code.startswith("08"):
                fix = ("check that the PostgreSQL server is running and reachable, and the "
                       "URL's host, port, user, password and database name")
            elif code.startswith("28"):
                fix = "check the URL's user and password (and the server's pg_hba.conf)"
            elif code == "42501":
                fix = "grant the URL's user the rights on the database and its tables"
            elif code == "3D000":
                fix = "create the database first (createdb), or fix the URL's database name"
            elif code == "53100":
                fix = "free disk space on the database server"
            elif code in _RETRY_SQLSTATES:
                fix = "retry the operation (another host changed the same data)"
            else:
                fix = "see the server's message above"
            message = (f"state database {self.where} failed while {doing}: {text} "
                       f"(SQLSTATE {code}): {fix}.")
        else:
            what = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            fix = {
                5: "another process holds the database's write lock too long; retry",
                6: "another connection holds the database's lock; retry",
                8: "make the file and its directory writable",
                11: "the file is corrupt: restore it from a backup or move it aside",
                13: "free space on its filesystem",
                14: "check that its directory exists and is writable",
                26: "the file is not an SQLite database: move it aside",
            }.get(what, "check the file, or move it aside to start with an empty store")
            message = f"state database {self.where} failed while {doing}: {text}: {fix}."
        return StateError(message, path=self.where)

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        cause = exc.__cause__ if isinstance(exc, StateError) else exc
        if getattr(cause, "sqlstate", None) in _RETRY_SQLSTATES:
            return True
        code = (getattr(cause, "sqlite_errorcode", None) or 0) & 0xFF
        return code in (5, 6)

    # -- statements and transactions ---------------------------------------------------------

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Run one statement in its own transaction; all its rows (empty for none)."""
        with self._lock:
            conn = self._connection()
            rows = self._run(conn, sql, params)
            try:
                return list(rows.fetchall()) if _has_rows(rows) else []
            except Exception as exc:
                raise self.error(exc, "reading rows") from exc

    def executescript(self, statements: Sequence[str]) -> None:
        """Run DDL ``statements`` in one transaction (CREATE ... IF NOT EXISTS)."""
        with self.transaction() as tx:
            if self.dialect == "postgresql":
                # Concurrent CREATE TABLE IF NOT EXISTS of one table can still collide in
                # PostgreSQL's catalog (unique violation on pg_type): one creator at a time.
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_DDL_LOCK,))
            for sql in statements:
                tx.execute(sql)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction: committed when the block ends, rolled back on an exception. The
        write lock (SQLite) is taken at once; on PostgreSQL take row locks with
        ``SELECT ... FOR UPDATE`` where a read decides a write."""
        with self._lock:
            conn = self._connection()
            begin = "BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN"
            self._run(conn, begin, ())
            try:
                yield Tx(self, conn)
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 -- the original error matters; a broken
                    pass  # connection is replaced on the next use
                raise
            try:
                conn.execute("COMMIT")
            except Exception as exc:
                raise self.error(exc, "committing") from exc

    def atomic(self, body: Callable[[Tx], T]) -> T:
        """``body(tx)`` in a transaction, retried (a few times, with a short pause) when it
        fails only because another connection got in the way: a serialization failure or
        deadlock on PostgreSQL, a lock wait that timed out on SQLite. ``body`` must have no
        other side effects than its statements."""
        for attempt in range(_ATTEMPTS):
            try:
                with self.transaction() as tx:
                    return body(tx)
            except StateError as exc:
                if attempt == _ATTEMPTS - 1 or not self._retryable(exc):
                    raise
            time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- the generation counter (issue 9 §7) -------------------------------------------------

    def _ensure_generation_table(self) -> None:
        if not getattr(self, "_generation_ready", False):
            self.executescript([_SQL_CREATE_GENERATION])
            self._generation_ready = True

    def bump_generation(self, scope: str = "lifecycle", tx: Tx | None = None) -> int:
        """Add one to the ``scope`` counter and return it: tells every other process sharing
        this database that something in ``scope`` changed. Pass ``tx`` to bump inside a
        transaction of your own (the bump then commits with the change it announces). On
        PostgreSQL it also sends ``NOTIFY plugbox_generation, 'scope value'``."""
        self._ensure_generation_table()

        def bump(t: Tx) -> int:
            value = int(t.execute(_SQL_BUMP, (scope,)).fetchone()[0])
            if self.dialect == "postgresql":
                t.execute("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, f"{scope} {value}"))
            return value

        return bump(tx) if tx is not None else self.atomic(bump)

    def generation(self, scope: str = "lifecycle") -> int:
        """The ``scope`` counter (0 before the first bump); one indexed read."""
        self._ensure_generation_table()
        rows = self.execute(_SQL_GENERATION, (scope,))
        return int(rows[0][0]) if rows else 0

    # -- closing -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Close the connection; later use raises StateError. Idempotent."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 -- nothing is lost: every commit is done
                pass

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<plugbox state database {self.dialect} {self.where}>"


def _has_rows(rows: Any) -> bool:
    """True when the statement returned a result set (psycopg raises on fetch otherwise)."""
    description = getattr(rows, "description", None)
    return description is not None


def connect(url: str | os.PathLike[str], *, timeout: float = 5.0,
            durable: bool = False) -> Database:
    """The state database ``url`` names (see the module docstring); StateError if it cannot be
    opened. ``durable``: on SQLite every commit is synced to disk (``synchronous=FULL``;
    without it a power failure may lose the last commits, a process crash never does)."""
    return Database(url, timeout=timeout, durable=durable)


class GenerationWatch:
    """Tells a process cheaply whether another one bumped a generation counter.

    :meth:`check` reads the counter at most once per ``interval`` seconds (otherwise it costs
    one clock read) and returns the new value when it changed since the last check, else
    None. :meth:`start` instead runs a daemon thread that calls ``on_change(value)`` within
    ``interval`` of a bump. A failed read is retried at the next check (state errors are
    passed to ``on_error``, default: ignored), so a database that is briefly unreachable does
    not stop the watch.
    """

    def __init__(self, db: Database, scope: str = "lifecycle", *, interval: float = 0.25,
                 on_error: Callable[[StateError], None] | None = None,
                 owns_db: bool = False, listen: bool = False) -> None:
        self.db = db
        self.scope = scope
        self.interval = interval
        self.seen = db.generation(scope)
        self._next = time.monotonic() + interval
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owns_db = owns_db
        #: PostgreSQL: the thread LISTENs on :data:`NOTIFY_CHANNEL` and wakes at a NOTIFY.
        self.listen = listen and db.dialect == "postgresql"
        self._listener: Any = None

    def check(self) -> int | None:
        """The counter if it moved since the last check (rate-limited), else None."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval
        try:
            value = self.db.generation(self.scope)
        except StateError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            return None
        if value == self.seen:
            return None
        self.seen = value
        return value

    def start(self, on_change: Callable[[int], None]) -> None:
        """Poll in a daemon thread; ``on_change(value)`` runs on it after each change. With
        ``listen`` (PostgreSQL) the thread also waits on LISTEN, so a bump is seen at its
        NOTIFY rather than at the next poll; polling stays as the fallback (a lost
        connection, a missed notification)."""
        if self._thread is not None:
            raise RuntimeError("this GenerationWatch is already running")

        def loop() -> None:
            while not self._stop.is_set():
                if not self._wait():
                    break
                self._next = 0.0
                value = self.check()
                if value is not None:
                    try:
                        on_change(value)
                    except Exception:  # noqa: BLE001 -- the watch must outlive a bad callback
                        import logging

                        logging.getLogger("plugbox.state").exception(
                            "generation watch %s: on_change raised", self.scope)
            self._close_listener()

        self._thread = threading.Thread(target=loop, name=f"plugbox-generation-{self.scope}",
                                        daemon=True)
        self._thread.start()

    def _wait(self) -> bool:
        """Wait up to ``interval`` (less at a NOTIFY); False once stopped."""
        if not self.listen:
            return not self._stop.wait(self.interval)
        try:
            if self._listener is None or self._listener.closed:
                import psycopg

                self._listener = psycopg.connect(self.db.url, autocommit=True,
                                                 connect_timeout=max(1, int(self.db.timeout)))
                self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            # In slices, so stop() is seen within _LISTEN_SLICE even with a long interval.
            until = time.monotonic() + self.interval
            while not self._stop.is_set():
                left = until - time.monotonic()
                if left <= 0:
                    break
                if any(True for _ in self._listener.notifies(
                        timeout=min(left, _LISTEN_SLICE), stop_after=1)):
                    break
        except Exception as exc:  # noqa: BLE001 -- fall back to polling until it reconnects
            self._close_listener()
            if self._on_error is not None:
                self._on_error(self.db.error(exc, "listening for changes"))
            return not self._stop.wait(self.interval)
        return not self._stop.is_set()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except Exception:  # noqa: BLE001 -- it is being dropped
                pass

    def stop(self) -> None:
        """Stop the thread :meth:`start` started (waits for it: at most ``interval``, or a
        quarter of a second with ``listen``). Idempotent. Closes the database if the watch owns it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self._owns_db:
            self.db.close()
