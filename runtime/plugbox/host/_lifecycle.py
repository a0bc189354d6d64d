"""Plugin lifecycle (issue 9): install into a managed store, enable, disable, upgrade with
consent, automatic and manual rollback, pins, uninstall, configuration with history, an audit
log, lifecycle events, safe mode and crash recovery. Mixed into :class:`plugbox.PluginHost`.

Crash consistency: every operation is (1) a journal row in the lifecycle database naming the
intended change, (2) filesystem steps that are each atomic (a copy into a private temp dir,
then one ``rename`` into ``plugins/<name>/<version>/``; removals are a rename into
``plugins/.trash/`` first), (3) one transaction that applies the change and deletes the
journal row. The database decides: a process killed before (3) left the state before (its
files are unreferenced and swept), one killed after it left the state after (files it did not
remove yet are swept; an interrupted kv purge is finished). :meth:`start` does that and
reports it in :attr:`StartReport.recovered`.

Hot swap: a new version (or config) is loaded and its on-init run beside the old one, then
the host's tables are replaced in one step; dispatches that read the old tables finish on the
old plugin, which is closed once the last of them is done (PluginHost counts the readers of
each table generation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from packaging.version import InvalidVersion, Version

from .._errors import ManifestError, PlugboxError, StateError, UsageError, VerificationError
from .._manifest import Manifest, read_manifest, validate_manifest
from .._permissions import Limits, Permissions
from .._plugin import Plugin
from ..trust._package import package_members, staged_plugin
from . import _deps
from ._config import diff as config_diff
from ._config import redacted as redact_config
from ._config import secret_paths, validated
from ._deps import resolve
from ..services._db import is_postgres_url
from ._errors import ConfigError, DependencyError, LifecycleError
from ._store import PluginRow, Store, VersionRow, store_path

if TYPE_CHECKING:
    from ._host import HostedPlugin

__all__ = [
    "AuditEntry",
    "ConfigRevision",
    "LifecycleEvent",
    "PermissionDiff",
    "PluginInfo",
    "RecoveredOperation",
    "StartReport",
    "UpgradeOutcome",
]

_log = logging.getLogger("plugbox.lifecycle")

#: Lifecycle event kinds, in the order a plugin usually meets them.
EVENT_KINDS: Final = ("installed", "enabled", "disabled", "upgraded", "rolled-back", "failed",
                      "uninstalled", "config-changed", "pinned", "unpinned", "quarantined",
                      "released", "anomaly")
STATES: Final = ("installed", "enabled", "disabled", "failed", "quarantined")
#: How a quarantine's recorded reason says who holds it (issue 10 §2).
_HELD_BY_OPERATOR: Final = "held by an operator: "
_HELD_BY_BREAKER: Final = "circuit breaker: "


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin as the lifecycle state records it.

    ``version`` is the active version; ``state`` is ``installed`` (never enabled),
    ``enabled``, ``disabled`` or ``failed`` (``reason`` says why: ``did not verify: ...``,
    ``did not load: ...``, ``on-init failed: ...``, ``dependency missing: ...`` and the
    other ``dependency <kind>: ...`` reasons of :meth:`PluginHost.start`);
    ``versions`` the kept versions, newest install first; ``grant`` the permissions and
    limits granted (JSON form, what an upgrade is compared against); ``requires`` the
    manifest's ``requires``; ``source`` where it was installed from; ``path`` its directory
    in the managed store; ``loaded`` whether this process is serving it. ``warnings`` is set
    on the value an operation returns when it proceeded despite a warning (a rollback across
    a ``data_version`` change); empty otherwise.
    """

    name: str
    version: str
    state: str
    reason: str | None
    enabled: bool
    pinned: bool
    versions: tuple[str, ...]
    grant: Mapping[str, Any] = field(repr=False)
    requires: Mapping[str, str] = field(repr=False)
    source: str = field(repr=False)
    path: Path | None = field(default=None, repr=False)
    loaded: bool = False
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON form (for ``--json`` output)."""
        return {"name": self.name, "version": self.version, "state": self.state,
                "reason": self.reason, "enabled": self.enabled, "pinned": self.pinned,
                "versions": list(self.versions), "grant": dict(self.grant),
                "requires": dict(self.requires), "source": self.source,
                "path": None if self.path is None else str(self.path), "loaded": self.loaded,
                "warnings": list(self.warnings)}


@dataclass(frozen=True)
class LifecycleEvent:
    """What :meth:`PluginHost.subscribe_lifecycle` subscribers receive. ``kind`` is one of
    ``installed``, ``enabled``, ``disabled``, ``upgraded``, ``rolled-back``, ``failed``,
    ``uninstalled``, ``config-changed``, ``pinned``, ``unpinned``; ``at`` is a Unix time."""

    kind: str
    plugin: str
    from_version: str | None
    to_version: str | None
    reason: str | None
    actor: str | None
    at: float


@dataclass(frozen=True)
class AuditEntry:
    """One audit-log entry: who (``actor``), what (``action``), when (``at``, Unix time),
    from which version to which, and ``detail``."""

    seq: int
    at: float
    actor: str | None
    action: str
    plugin: str | None
    from_version: str | None
    to_version: str | None
    detail: str | None


@dataclass(frozen=True)
class ConfigRevision:
    """One stored configuration of a plugin (``revision`` counts from 1)."""

    revision: int
    config: Mapping[str, Any]
    actor: str | None
    at: float


@dataclass(frozen=True)
class RecoveredOperation:
    """An operation a previous process did not finish, and what :meth:`PluginHost.start`
    did about it: ``outcome`` is ``undone`` (the state before it holds) or ``finished``."""

    op: str
    plugin: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class StartReport:
    """What :meth:`PluginHost.start` did: ``recovered`` interrupted operations, ``swept``
    leftover files removed from the managed store, ``loaded`` the plugins now serving (in
    start order), ``failed`` {name: reason}, ``skipped`` installed plugins not enabled, and
    ``safe_mode`` (True: nothing was loaded)."""

    recovered: tuple[RecoveredOperation, ...]
    swept: tuple[str, ...]
    loaded: tuple[str, ...]
    failed: Mapping[str, str]
    skipped: tuple[str, ...]
    safe_mode: bool

    @property
    def ok(self) -> bool:
        """True when no enabled plugin failed."""
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"recovered": [dataclasses.asdict(r) for r in self.recovered],
                "swept": list(self.swept), "loaded": list(self.loaded),
                "failed": dict(self.failed), "skipped": list(self.skipped),
                "safe_mode": self.safe_mode}


@dataclass(frozen=True)
class PermissionDiff:
    """What a new version asks for beyond the current grant. ``added`` maps a category to
    what is new in it: ``services`` (names), ``http.hosts``, ``http.methods``,
    ``events.topics``, ``functions``, ``dispatch`` (patterns), and for numbers (kv and http
    quotas, limits) ``{"from": old, "to": new}`` where the new one is larger. ``removed``
    lists what the new version no longer asks for (informative: no consent needed)."""

    added: Mapping[str, Any]
    removed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when the new version needs nothing the current grant does not cover."""
        return not self.added

    def describe(self) -> str:
        """One line per addition, for a consent prompt."""
        if not self.added:
            return "no new permissions"
        lines = []
        for key, value in self.added.items():
            if isinstance(value, dict):
                was = "none" if value["from"] is None else value["from"]
                lines.append(f"{key}: {was} -> {value['to']}")
            else:
                lines.append(f"{key}: + {', '.join(map(str, value))}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"added": dict(self.added), "removed": dict(self.removed)}


@dataclass(frozen=True)
class UpgradeOutcome:
    """What :meth:`PluginHost.upgrade` did. ``status``: ``upgraded`` (the new version is
    active), ``needs-consent`` (it asks for more, ``diff`` says what; the old one stays
    active, nothing was installed), ``rolled-back`` (it failed to load or on-init, ``reason``
    says why; the old one kept serving and is active), ``unchanged`` (that version is active
    already)."""

    status: str
    plugin: str
    from_version: str
    to_version: str
    diff: PermissionDiff
    reason: str | None = None
    info: PluginInfo | None = None


# -- grants and their difference ---------------------------------------------------------------


def grant_of(permissions: Permissions, limits: Limits) -> dict[str, Any]:
    """The JSON form of what a plugin is granted: permissions and limits in force."""
    out: dict[str, Any] = {"services": sorted(permissions.services()),
                           "functions": sorted(permissions.functions),
                           "dispatch": sorted(permissions.dispatch),
                           "limits": dataclasses.asdict(limits)}
    if permissions.kv is not None:
        out["kv"] = dataclasses.asdict(permissions.kv)
    if permissions.events is not None:
        out["events"] = {"topics": sorted(permissions.events.topics)}
    if permissions.http is not None:
        http = dataclasses.asdict(permissions.http)
        http["hosts"] = sorted(http["hosts"])
        http["methods"] = sorted(m.upper() for m in http["methods"])
        out["http"] = http
    return out


def _covered(pattern: str, granted: Iterable[str]) -> bool:
    """Whether ``pattern`` is within what ``granted`` patterns allow (conservative: a new
    wildcard pattern is covered only by itself or by ``*``)."""
    import fnmatch

    for old in granted:
        if pattern == old or old == "*":
            return True
        if not any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(pattern, old):
            return True
    return False


def permission_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> PermissionDiff:
    """What ``new`` (a :func:`grant_of`) asks beyond ``old``."""
    added: dict[str, Any] = {}
    removed: dict[str, Any] = {}

    def patterns(key: str, a: list[str], b: list[str]) -> None:
        more = [p for p in b if not _covered(p, a)]
        less = [p for p in a if p not in b]
        if more:
            added[key] = more
        if less:
            removed[key] = less

    def numbers(key: str, a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                names: Iterable[str]) -> None:
        if b is None:
            return
        for name in names:
            was = (a or {}).get(name)
            now = b.get(name)
            if isinstance(now, int) and (not isinstance(was, int) or now > was):
                added[f"{key}.{name}"] = {"from": was, "to": now}

    patterns("services", list(old.get("services", ())), list(new.get("services", ())))
    patterns("functions", list(old.get("functions", ())), list(new.get("functions", ())))
    patterns("dispatch", list(old.get("dispatch", ())), list(new.get("dispatch", ())))
    patterns("http.hosts", list((old.get("http") or {}).get("hosts", ())),
             list((new.get("http") or {}).get("hosts", ())))
    patterns("http.methods", list((old.get("http") or {}).get("methods", ())),
             list((new.get("http") or {}).get("methods", ())))
    patterns("events.topics", list((old.get("events") or {}).get("topics", ())),
             list((new.get("events") or {}).get("topics", ())))
    numbers("kv", old.get("kv"), new.get("kv"), ("quota_bytes", "quota_keys"))
    numbers("http", old.get("http"), new.get("http"),
            ("max_request_bytes", "max_response_bytes", "timeout_ms"))
    numbers("limits", old.get("limits"), new.get("limits"),
            ("fuel", "memory_bytes", "deadline_ms", "instances"))
    return PermissionDiff(added, removed)


# -- the managed store on disk -----------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: The session advisory lock lifecycle operations hold on PostgreSQL ("plugbox-op" in ASCII).
_OP_LOCK_KEY: Final = 0x706C7567626F782D6F70 & 0x7FFFFFFFFFFFFFFF


class _OpLock:
    """The lock every lifecycle operation holds (``PluginHost._op_lock``): re-entrant within
    the process, and while held, an exclusive ``flock`` on ``state_dir/lifecycle.lock``, so
    the operations of several processes on one state dir run one at a time and
    :meth:`LifecycleMixin.start`'s recovery (which holds it too) only ever meets what a
    *dead* process left: the kernel drops a killed process's lock, never a live one's. With a
    PostgreSQL store (``pg_url``) it also holds a session advisory lock on a connection of its
    own, so hosts on several machines sharing the database exclude each other the same way
    (the server drops the lock of a host whose connection died). ``start()`` holds all of it
    for its recovery only, and only :meth:`local` while it loads plugins, so hosts start side
    by side."""

    def __init__(self, path: Path, pg_url: str | None = None) -> None:
        self._path = path
        self._pg_url = pg_url
        self._pg: Any = None  # the advisory lock's connection, opened at the first use
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> _OpLock:
        self._lock.acquire()
        try:
            if self._depth == 0:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    if self._pg_url is not None:
                        self._pg_lock()
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            if self._pg is not None:
                try:
                    self._pg.execute("SELECT pg_advisory_unlock(%s)", (_OP_LOCK_KEY,))
                except Exception:  # the connection died: the server dropped the lock
                    self._close_pg()
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock
        self._lock.release()

    @contextlib.contextmanager
    def local(self) -> Iterator[None]:
        """Only this process's part: other threads' operations wait, other processes' and
        machines' do not (start() loads plugins under it, so hosts start side by side)."""
        with self._lock:
            yield

    def _pg_lock(self) -> None:
        """Take the cross-machine lock (reconnecting once if the connection died)."""
        import psycopg

        for attempt in (0, 1):
            try:
                if self._pg is None or self._pg.broken:
                    self._pg = psycopg.connect(self._pg_url or "", autocommit=True,
                                               connect_timeout=5)
                self._pg.execute("SELECT pg_advisory_lock(%s)", (_OP_LOCK_KEY,))
                return
            except psycopg.Error as exc:
                self._close_pg()
                if attempt:
                    from ..services._db import redacted

                    raise StateError(
                        f"lifecycle lock: cannot take the database's advisory lock on "
                        f"{redacted(self._pg_url or '')} ({exc}); check that the database "
                        f"is reachable", path=redacted(self._pg_url or "")) from None

    def _close_pg(self) -> None:
        conn, self._pg = self._pg, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        """Close the advisory lock's connection (the host is closing)."""
        with self._lock:
            self._close_pg()


def _copy_plugin(source_dir: Path, target: Path) -> None:
    """Copy the plugin files of ``source_dir`` (manifest, module, signatures, docs) into the
    new directory ``target``, each file fsynced."""
    target.mkdir(parents=True)
    directories = {target}
    for member, path in package_members(source_dir).items():
        dest = target / member
        if dest.parent not in directories:
            dest.parent.mkdir(parents=True, exist_ok=True)
            directories.add(dest.parent)
        with open(path, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        _fsync_dir(directory)  # deepest first: each entry is durable before its parent's


def _remove_tree(path: Path, trash: Path) -> None:
    """Remove ``path``: renamed into ``trash`` first (one atomic step: a crash leaves it either
    where it was or in the trash, which start() empties), then deleted."""
    if not path.exists():
        return
    trash.mkdir(parents=True, exist_ok=True)
    moved = trash / f"{path.name}-{uuid.uuid4().hex[:12]}"
    os.rename(path, moved)
    shutil.rmtree(moved, ignore_errors=True)


class _Unhealthy(LifecycleError):
    """A plugin loaded, but its health check after on-init failed (the message is the
    ``failed`` reason)."""


def _failure_reason(exc: BaseException) -> str:
    """The ``failed`` reason for a plugin that could not be started."""
    message = exc.message if isinstance(exc, PlugboxError) else str(exc)
    if isinstance(exc, _Unhealthy):
        return message
    if isinstance(exc, (VerificationError, ManifestError)):
        return f"did not verify: {message}"
    if isinstance(exc, PlugboxError) and exc.hook == "on-init":
        return f"on-init failed: {message}"
    return f"did not load: {message}"


def _version_key(version: str) -> Version | None:
    try:
        return Version(version)
    except InvalidVersion:
        return None


# -- the operations ----------------------------------------------------------------------------


class LifecycleMixin:
    """The lifecycle operations of :class:`plugbox.PluginHost` (see the module docstring).
    State lives in :attr:`store`; files in ``state_dir/plugins/``."""

    if TYPE_CHECKING:  # what the mixin uses of PluginHost
        from .._runtime import Runtime
        from ._host import _Tables

        runtime: Runtime
        _lock: threading.RLock
        _tables: _Tables
        _readers_lock: threading.Lock
        _readers: dict[int, int]
        _retired: list[tuple[int, Plugin]]

        def get(self, name: str) -> HostedPlugin | None: ...
        def add(self, source: str | os.PathLike[str], *, priority: int = 0,
                config: Mapping[str, Any] | None = None, enabled: bool = True
                ) -> HostedPlugin: ...
        def _admit(self, manifest: Manifest, tables: _Tables | None = None) -> None: ...
        def _publish(self, *, points: Any = None, functions: Any = None,
                     plugins: tuple[HostedPlugin, ...] | None = None) -> None: ...
        def _check_open(self) -> None: ...
        def _replace_hosted(self, old: HostedPlugin, new: HostedPlugin) -> None: ...
        def _load_beside(self, old: HostedPlugin, path: Path, config: Mapping[str, Any],
                         enabled: bool) -> HostedPlugin: ...
        def _admit_beside(self, old: HostedPlugin, manifest: Manifest) -> None: ...

    # Set by PluginHost.__init__ (_init_lifecycle).
    store: Store
    _plugins_dir: Path
    _safe_mode: bool
    _keep_versions: int
    _op_lock: _OpLock
    _subscribers: list[Callable[[LifecycleEvent], None]]
    _managed: set[str]
    _started: bool

    def _init_lifecycle(self, state_url: str | os.PathLike[str] | None,
                        safe_mode: bool | None, keep_versions: int) -> None:
        if type(keep_versions) is not int or not 1 <= keep_versions <= 100:
            raise UsageError(f"keep_versions must be an int from 1 to 100, not "
                             f"{keep_versions!r}")
        state_dir = self.runtime.state_dir
        self._plugins_dir = state_dir / "plugins"
        self._safe_mode = (os.environ.get("PLUGBOX_SAFE_MODE", "") in ("1", "true", "yes")
                           if safe_mode is None else bool(safe_mode))
        self._keep_versions = keep_versions
        url = state_url if state_url is not None else store_path(state_dir)
        self._op_lock = _OpLock(state_dir / "lifecycle.lock",
                                os.fspath(url) if is_postgres_url(url) else None)
        self._subscribers = []
        self._managed = set()
        self._started = False
        self.store = Store(url)

    @property
    def safe_mode(self) -> bool:
        """True when this host runs in safe mode: :meth:`start` and the lifecycle operations
        load no plugin (state changes are still recorded)."""
        return self._safe_mode

    # -- events ------------------------------------------------------------------------------

    def subscribe_lifecycle(self, callback: Callable[[LifecycleEvent], None]
                            ) -> Callable[[], None]:
        """Call ``callback(LifecycleEvent)`` after every lifecycle change of this host (on the
        thread that made it, once it is committed). Returns a function that unsubscribes. A
        callback that raises is logged on ``plugbox.lifecycle`` and does not undo anything."""
        if not callable(callback):
            raise UsageError("subscribe_lifecycle needs a callable")
        with self._op_lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._op_lock:
                self._subscribers = [c for c in self._subscribers if c is not callback]
        return unsubscribe

    def _emit(self, kind: str, plugin: str, from_version: str | None,
              to_version: str | None, reason: str | None, actor: str | None,
              at: float | None = None) -> None:
        event = LifecycleEvent(kind, plugin, from_version, to_version, reason, actor,
                               at if at is not None else time.time())
        log = _log.warning if kind == "failed" or (reason and kind == "rolled-back") \
            else _log.info
        log("plugin %s: %s%s%s", plugin, kind,
            f" {from_version or '-'} -> {to_version or '-'}" if from_version or to_version
            else "", f" ({reason})" if reason else "")
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                _log.exception("lifecycle subscriber %r raised on %s of %s", callback, kind,
                               plugin)

    # -- reads -------------------------------------------------------------------------------

    def installed(self) -> list[PluginInfo]:
        """Every installed plugin, in install order."""
        with self.store.transaction() as tx:
            rows = tx.plugins()
            return [self._info(row, tx.versions(row.name)) for row in rows]

    def info(self, name: str) -> PluginInfo:
        """Installed plugin ``name``; :class:`plugbox.LifecycleError` when it is not
        installed."""
        row, versions = self._row(name, "info")
        return self._info(row, versions)

    def _row(self, name: str, operation: str
             ) -> tuple[PluginRow, list[VersionRow]]:
        with self.store.transaction() as tx:
            row = tx.plugin(name)
            if row is None:
                names = ", ".join(r.name for r in tx.plugins()) or "none"
                raise LifecycleError(f"{operation} {name!r}: no plugin {name!r} is installed "
                                     f"on this host (installed: {names}); install it first",
                                     plugin=name, operation=operation)
            return row, tx.versions(name)

    def _info(self, row: PluginRow, versions: list[VersionRow],
              warnings: tuple[str, ...] = ()) -> PluginInfo:
        active = next((v for v in versions if v.version == row.version), None)
        requires = dict((active.manifest.get("requires") or {}) if active else {})
        hosted = self.get(row.name)
        return PluginInfo(
            name=row.name, version=row.version, state=row.state, reason=row.reason,
            enabled=row.enabled, pinned=row.pinned,
            versions=tuple(v.version for v in versions), grant=row.grant, requires=requires,
            source=row.source, path=Path(active.path) if active else None,
            loaded=hosted is not None and row.name in self._managed and hosted.enabled,
            warnings=warnings)

    def audit(self, name: str | None = None, *, limit: int = 100
              ) -> list[AuditEntry]:
        """The latest audit entries (of plugin ``name``, or all), newest first."""
        if type(limit) is not int or not 1 <= limit <= 100_000:
            raise UsageError(f"limit must be an int from 1 to 100000, not {limit!r}")
        with self.store.transaction() as tx:
            return [AuditEntry(*row) for row in tx.audit_entries(name, limit)]

    # -- install ---------------------------------------------------------------------------

    def _verify_source(self, source: str | os.PathLike[str]
                       ) -> tuple[Manifest, dict[str, Any]]:
        """Every pre-compile check of the runtime on ``source``, and the host's admission
        checks; (manifest, grant)."""
        verified = self.runtime._verified(source, False)
        return verified.manifest, grant_of(verified.permissions, verified.limits)

    def _stage(self, source: str | os.PathLike[str], name: str, version: str,
               sha256: str) -> tuple[Path, bool]:
        """Copy the plugin at ``source`` into ``plugins/<name>/<version>/`` (temp dir, then an
        atomic rename). (path, created); an existing directory with the same module is reused;
        one with another is refused unless the database does not reference it: then it is
        what a killed operation left (complete: it got there by one rename; the caller holds
        the lifecycle lock, so no live operation owns it), and it is replaced."""
        target = self._plugins_dir / name / version
        if target.exists() and _module_sha256(target) != sha256:
            with self.store.transaction() as tx:
                recorded = any(v.version == version for v in tx.versions(name))
            if not recorded:
                _remove_tree(target, self._plugins_dir / ".trash")
        if target.exists():
            try:
                existing = validate_manifest(read_manifest(target))
            except PlugboxError:
                existing = None
            if existing is not None and existing.module_sha256 == sha256:
                return target, False
            raise LifecycleError(
                f"install {name!r}: version {version} is already in the managed store with a "
                f"different module; bump the plugin's version (or uninstall {name!r} "
                f"first)", plugin=name, operation="install")
        tmp_root = self._plugins_dir / ".tmp"
        tmp = tmp_root / uuid.uuid4().hex
        try:
            tmp_root.mkdir(parents=True, exist_ok=True)
            with staged_plugin(source) as staged:
                directory = staged if staged.is_dir() else staged.parent
                _copy_plugin(directory, tmp)
            new_parent = not target.parent.exists()
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            if new_parent:
                _fsync_dir(self._plugins_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StateError(f"install {name!r}: cannot copy it into the managed store "
                             f"{self._plugins_dir} ({exc}); check disk space and permissions",
                             path=str(self._plugins_dir)) from None
        return target, True

    def _validated_config(self, manifest: Manifest, config: Mapping[str, Any]
                          ) -> dict[str, Any]:
        """``config`` checked against ``manifest``'s schema, defaults applied
        (:func:`plugbox.host._config.validated`; a :class:`plugbox.ConfigError` naming the
        JSON path, its message free of secret values)."""
        return self._checked_config(manifest.name, manifest.config_schema, config)

    def install(self, source: str | os.PathLike[str], *, enable: bool = True,
                config: Mapping[str, Any] | None = None, actor: str | None = None
                ) -> PluginInfo:
        """Install the plugin at ``source`` (a directory, its ``plugbox.json`` or a
        ``.plugbox`` package): verified under the host's trust policy and policy (every check
        before compilation, and the host's: points, functions), copied into the managed store
        ``state_dir/plugins/<name>/<version>/``, recorded, and with ``enable`` (the default)
        loaded from there and enabled. ``config`` (else the config kept from an earlier
        install) is validated first.

        A plugin that verifies but fails to load or on-init is installed in state
        ``failed`` with the reason. So is one whose dependencies stop it (the reason says
        which, as :meth:`enable`'s error would; nothing is raised, so plugins can be
        installed in any order): with ``enable`` its requirements are enabled first; one
        whose requirement is missing or of another version stays enabled and starts once
        that is installed; one that conflicts with an enabled plugin, or closes a dependency
        cycle, is left not enabled. Plugins that were waiting for this one start with it.
        Refused with :class:`plugbox.LifecycleError` when a
        plugin of that name is installed already (use :meth:`upgrade`), and with the
        verification error when it does not verify (nothing is recorded).
        """
        self._check_open()
        with self._op_lock:
            manifest, grant = self._verify_source(source)
            name, version = manifest.name, manifest.version
            with self.store.transaction() as tx:
                if tx.plugin(name) is not None:
                    raise LifecycleError(
                        f"install {name!r}: it is installed already (version "
                        f"{tx.plugin(name).version}); use host.upgrade(...) to change "  # type: ignore[union-attr]
                        f"versions", plugin=name, operation="install")
                purging = any(e.op == "purge" and e.plugin == name for e in tx.journal())
            if purging:
                # A purge of an earlier install that its process did not finish: finished now,
                # so a later start() cannot clear this install's data.
                self._finish_purge(name)
            with self.store.transaction() as tx:
                kept = tx.config(name)
            if config is None:
                config = kept[1] if kept else {}
            cfg = self._validated_config(manifest, dict(config))
            with self._lock:
                self._admit(manifest)
            # With dependencies, enabling is enable()'s (requirements first, conflicts).
            deferred = enable and self._involves_dependencies(manifest)
            enable = enable and not deferred
            with self.store.transaction() as tx:
                op = tx.begin_op("install", name, {"version": version,
                                                  "path": str(self._plugins_dir / name /
                                                              version)})
            path, created = self._stage(source, name, version, manifest.module_sha256)
            state, reason = ("enabled" if enable else "installed"), None
            hosted: HostedPlugin | None = None
            if enable and not self._safe_mode:
                try:
                    hosted = self._load_hosted(path, cfg)
                except PlugboxError as exc:
                    state, reason = "failed", _failure_reason(exc)
            try:
                with self.store.transaction() as tx:
                    tx.bump()
                    tx.insert_plugin(name=name, version=version, state=state,
                                     enabled=enable, grant=grant, source=os.fspath(source))
                    if state == "failed":
                        tx.update_plugin(name, reason=reason)
                    tx.add_version(name=name, version=version, path=str(path),
                                   sha256=manifest.module_sha256, manifest=dict(manifest.raw))
                    if kept is None or kept[1] != cfg:
                        tx.set_config(name, cfg, actor)
                    at = tx.audit(actor=actor, action="install", plugin=name,
                                  to_version=version, detail=reason)
                    tx.end_op(op)
            except BaseException:
                if hosted is not None:
                    self._unhost(hosted)
                raise
        self._emit("installed", name, None, version, None, actor, at)
        if state == "enabled":
            self._emit("enabled", name, None, version, None, actor, at)
        elif state == "failed":
            self._emit("failed", name, None, version, reason, actor, at)
        if deferred:
            return self._enable_installed(name, actor)
        if state == "enabled":
            self._resume_waiting(actor)  # plugins that required it start now
        return self.info(name)

    def _load_hosted(self, path: Path, config: Mapping[str, Any]) -> HostedPlugin:
        """Load and host the managed plugin at ``path`` (enabled). A plugin with a health
        hook must report healthy after its on-init (issue 10 §3), else it is unhosted and
        :class:`_Unhealthy` raised."""
        hosted = self.add(path, config=dict(config))
        self._managed.add(hosted.name)
        failing = self._health_gate(hosted)
        if failing is not None:
            self._unhost(hosted)
            raise _Unhealthy(failing, plugin=hosted.name, operation="load")
        return hosted

    def _health_gate(self, hosted: HostedPlugin) -> str | None:
        """The ``failed`` reason when ``hosted``'s health check (if it has one) fails."""
        report = self._health_of(hosted.plugin)  # type: ignore[attr-defined]  # HealthMixin
        if report.healthy:
            return None
        said = report.reason or json.dumps(dict(report.details), sort_keys=True)[:500]
        return f"health check failed: {said}"

    def _unhost(self, hosted: HostedPlugin) -> None:
        """Stop hosting ``hosted``; its plugin is closed once calls already using it end."""
        with self._lock:
            current = self.get(hosted.name)
            if current is None:
                return
            owned = set(current.manifest.extension_points)
            self._publish(
                points={k: v for k, v in self._tables.points.items() if k not in owned},
                plugins=tuple(hp for hp in self._tables.plugins if hp is not current))
            self._managed.discard(hosted.name)
        self._retire(current.plugin)

    # -- enable / disable ------------------------------------------------------------------

    def enable(self, name: str, *, cascade: bool = False,
               actor: str | None = None) -> list[str]:
        """Enable installed plugin ``name`` and, first, every plugin it requires (its
        manifest's ``requires``, directly or through others) that is not running yet: each
        loaded (if this process does not serve it yet) and dispatched to from the next call
        on, in start order, each recorded (audit ``enable``; a requirement's detail says
        ``required by 'name'``) and announced (an ``enabled`` event, the same reason). Then
        the plugins that were waiting for these (recorded enabled and ``failed`` with a
        ``dependency ...`` reason that no longer holds) start too. Returns the names enabled,
        in that order: the requirements, ``name``, the plugins that were waiting.

        Refused with :class:`plugbox.DependencyError`, nothing changed, when ``name`` or a
        requirement conflicts with an enabled plugin (either side's ``conflicts``:
        ``kind="conflict"``, ``dependency`` names the other plugin; an enable never stops a
        running plugin) or the requirements form a cycle (``kind="cycle"``, ``plugins``). When
        a requirement is not installed, or not in a version its specifier accepts, ``name`` is
        recorded enabled and ``failed`` (reason ``dependency missing: ...`` or ``dependency
        incompatible: ...``) and the DependencyError is raised: the plugin starts by itself
        once that requirement is installed and enabled. A plugin that fails to load is left
        ``failed`` with the reason and the error is raised (when a requirement fails, a
        DependencyError naming it, ``kind="failed"``; the requirements enabled before it stay
        enabled). ``cascade`` has no effect (requirements are always enabled); it mirrors
        :meth:`disable`.
        """
        self._check_open()
        return self._enable_chain(name, actor, None) + self._resume_waiting(actor)

    def _enable_chain(self, name: str, actor: str | None, why: str | None) -> list[str]:
        """:meth:`enable`, except that the plugins waiting for ``name`` are not looked at;
        ``why`` is the audit detail and event reason of ``name``'s own enabling."""
        with self._op_lock:
            row, _ = self._row(name, "enable")
            rows, versions, manifests = self._dependency_view()
            by_name = {r.name: r for r in rows}
            try:
                needed = _deps.requirements(name, manifests)
            except DependencyError as exc:
                if exc.kind == "cycle":
                    raise self._refusal("enable", name, exc) from exc
                self._enable_waiting(row, exc, actor)
                raise DependencyError(
                    f"enable {name!r}: {exc.message}; {name!r} is recorded enabled, in state "
                    f"failed, and starts once that is done", plugin=name, kind=exc.kind,
                    dependency=exc.dependency, specifier=exc.specifier) from None
            chain = [n for n in needed if not self._running(by_name[n])] + [name]
            running = [r.name for r in rows if r.enabled and r.name not in chain]
            clash = _deps.conflict(chain, manifests, running)
            if clash is not None:
                raise self._refusal("enable", name, clash) from clash
            # An optional edge may close a cycle that ``requires`` alone does not: refused
            # now rather than at the next start.
            trial = _deps.resolve(manifests, [*running, *chain])
            cycle = next((trial.errors[n] for n in chain if n in trial.errors
                          and trial.errors[n].kind == "cycle"), None)
            if cycle is not None:
                raise self._refusal("enable", name, cycle) from cycle
            failures: dict[str, str] = {}
            errors: dict[str, PlugboxError] = {}
            for current in chain:
                blocked = next((d for d in sorted(manifests[current].requires)
                                if d in failures), None)
                if blocked is not None:
                    failures[current] = _deps.reason(DependencyError(
                        f"plugin {current!r} requires {blocked!r}, which cannot start: "
                        f"{failures[blocked]}", plugin=current, kind="failed",
                        dependency=blocked))
                elif not self._safe_mode:
                    try:
                        self._serve(by_name[current], versions[current])
                    except PlugboxError as exc:
                        failures[current], errors[current] = _failure_reason(exc), exc
            stamps: dict[str, float] = {}
            with self.store.transaction() as tx:
                tx.bump()
                for current in chain:
                    reason = failures.get(current)
                    tx.update_plugin(current, enabled=True,
                                     state="failed" if reason else "enabled", reason=reason)
                    detail = (reason or why) if current == name else \
                        f"required by {name!r}" + (f": {reason}" if reason else "")
                    stamps[current] = tx.audit(actor=actor, action="enable", plugin=current,
                                               to_version=by_name[current].version,
                                               detail=detail)
        for current in chain:
            required = why if current == name else f"required by {name!r}"
            if current in failures:
                self._emit("failed", current, None, by_name[current].version,
                           failures[current], actor, stamps[current])
            else:
                self._emit("enabled", current, None, by_name[current].version, required,
                           actor, stamps[current])
        if name in errors:
            raise errors[name]
        if name in failures:
            culprit = next(n for n in chain if n in errors)
            raise DependencyError(
                f"enable {name!r}: its requirement {culprit!r} could not be started "
                f"({failures[culprit]}); {name!r} is recorded enabled, in state failed; fix "
                f"{culprit!r} and enable {name!r} again", plugin=name, kind="failed",
                dependency=culprit) from errors[culprit]
        return chain

    def disable(self, name: str, *, cascade: bool = False,
                actor: str | None = None) -> list[str]:
        """Disable installed plugin ``name``: no call made after this returns reaches it
        (calls in flight finish). It stays loaded in this process, so enabling it again is
        immediate; a host started later does not load it. Returns the names disabled, in the
        order they were.

        Refused with :class:`plugbox.DependencyError` (``kind="required"``, ``plugins``
        naming them; nothing changed) while enabled plugins require ``name``, directly or
        through others; the message names each and the fix. With ``cascade=True`` those are
        disabled first, each before the plugins it requires, each recorded (audit detail
        ``requires 'name' (cascade)``) and announced (a ``disabled`` event with that
        reason), and returned before ``name``. Plugins that list ``name`` as ``optional``
        keep running without it.
        """
        self._check_open()
        with self._op_lock:
            row, _ = self._row(name, "disable")
            users, by_name = self._enabled_dependents(name, "disable", cascade)
            chain = [*users, name]
            self._set_enabled_many(chain, False)
            stamps: dict[str, float] = {}
            with self.store.transaction() as tx:
                tx.bump()
                for current in chain:
                    tx.update_plugin(current, enabled=False, state="disabled", reason=None)
                    stamps[current] = tx.audit(
                        actor=actor, action="disable", plugin=current,
                        from_version=by_name[current].version,
                        detail=None if current == name else f"requires {name!r} (cascade)")
        for current in chain:
            self._emit("disabled", current, by_name[current].version, None,
                       None if current == name else f"requires {name!r} (cascade)", actor,
                       stamps[current])
        return chain

    def dependencies(self, name: str) -> dict[str, Any]:
        """A JSON-ready account of installed plugin ``name``'s dependencies (what ``plugbox
        plugins deps NAME`` shows): ``name``, ``version``, ``state``, ``reason``; each of
        ``requires``, ``optional``, ``conflicts`` as a list of ``{"name", "specifier",
        "installed" (version or null), "enabled", "state" (or null), "ok", "reason"}``;
        ``required_by``, the enabled plugins that require it directly or through others
        (what ``disable(name, cascade=True)`` disables too, in that order); and
        ``dependents``, every installed plugin naming it in ``requires`` or ``optional``, as
        ``{"name", "version", "state", "enabled", "reason", "kind" ("requires" or
        "optional"), "specifier", "ok" (its version matches)}``."""
        row, _ = self._row(name, "dependencies")
        rows, _, manifests = self._dependency_view()
        by_name = {r.name: r for r in rows}
        out = _deps.describe(name, manifests, [r.name for r in rows if r.enabled])

        def add_state(entries: Any, *, reason: bool = False) -> None:
            for entry in entries:
                other = by_name.get(entry["name"])
                entry["state"] = other.state if other is not None else None
                if reason:
                    entry["reason"] = other.reason if other is not None else None
        for kind in ("requires", "optional", "conflicts"):
            add_state(out[kind])
        add_state(out["dependents"], reason=True)
        return {"name": name, "version": row.version, "state": row.state,
                "reason": row.reason, **out}

    # Dependency helpers of enable/disable/uninstall/start/install (issue 9 §4).

    def _dependency_view(self) -> tuple[list[PluginRow], dict[str, list[VersionRow]],
                                        dict[str, _deps.Declared]]:
        """The installed plugins, their kept versions, and the dependency fields of each
        one's active version (from the recorded manifest: no file is read)."""
        with self.store.transaction() as tx:
            rows = tx.plugins()
            versions = {row.name: tx.versions(row.name) for row in rows}
        return rows, versions, self._declared(rows, versions)

    @staticmethod
    def _declared(rows: list[PluginRow], versions: Mapping[str, list[VersionRow]]
                  ) -> dict[str, _deps.Declared]:
        out = {}
        for row in rows:
            active = next((v for v in versions.get(row.name, ()) if v.version == row.version),
                          None)
            out[row.name] = _deps.Declared.from_raw(
                active.manifest if active is not None else {}, name=row.name,
                version=row.version)
        return out

    def _serving(self, name: str) -> bool:
        """Whether this process dispatches to managed plugin ``name``."""
        hosted = self.get(name)
        return hosted is not None and name in self._managed and hosted.enabled

    def _running(self, row: PluginRow) -> bool:
        """Whether ``row`` is enabled and started (in safe mode: recorded so)."""
        return row.enabled and row.state == "enabled" and (self._safe_mode or
                                                           self._serving(row.name))

    def _serve(self, row: PluginRow, versions: list[VersionRow]) -> None:
        """Dispatch to ``row``'s plugin from the next call on: loaded unless this process
        hosts it already (then only re-enabled)."""
        hosted = self.get(row.name)
        if hosted is not None and row.name in self._managed:
            if not hosted.enabled:
                self._set_enabled(hosted, True)
        else:
            self._load_hosted(self._active_path(row, versions), self._current_config(row.name))

    def _set_enabled_many(self, names: Iterable[str], enabled: bool) -> None:
        """:meth:`_set_enabled` of several managed plugins in one publish."""
        with self._lock:
            targets = {n for n in names if n in self._managed}
            if any(hp.name in targets and hp.enabled != enabled
                   for hp in self._tables.plugins):
                self._publish(plugins=tuple(
                    dataclasses.replace(hp, enabled=enabled) if hp.name in targets else hp
                    for hp in self._tables.plugins))

    def _enable_waiting(self, row: PluginRow, error: DependencyError,
                        actor: str | None) -> None:
        """Record ``row`` enabled and failed for ``error`` (a requirement it can wait for);
        this process stops dispatching to it."""
        reason = _deps.reason(error)
        self._set_enabled_many([row.name], False)
        with self.store.transaction() as tx:
            tx.bump()
            tx.update_plugin(row.name, enabled=True, state="failed", reason=reason)
            at = tx.audit(actor=actor, action="enable", plugin=row.name,
                          to_version=row.version, detail=reason)
        self._emit("failed", row.name, None, row.version, reason, actor, at)

    def _enabled_dependents(self, name: str, operation: str, cascade: bool
                            ) -> tuple[list[str], dict[str, PluginRow]]:
        """The enabled plugins requiring ``name`` (directly or not, in stopping order), and
        the rows by name; refused (DependencyError naming the running ones) unless
        ``cascade``. A dependent already failed does not hold ``name`` (it cannot use it),
        but a cascade disables it too."""
        rows, _, manifests = self._dependency_view()
        by_name = {r.name: r for r in rows}
        users = _deps.dependents(name, manifests, [r.name for r in rows if r.enabled])
        holding = [u for u in users if by_name[u].state != "failed"]
        if holding and not cascade:
            raise _deps.in_use(name, operation, holding, manifests)
        return (users if cascade else []), by_name

    @staticmethod
    def _refusal(operation: str, name: str, error: DependencyError) -> DependencyError:
        """``error`` as the refusal of ``operation`` of ``name``."""
        return DependencyError(f"{operation} {name!r} refused (nothing was changed): "
                               f"{error.message}", plugin=name, kind=error.kind,
                               dependency=error.dependency, specifier=error.specifier,
                               plugins=error.plugins)

    @staticmethod
    def _waits(reason: str | None) -> bool:
        """Whether a ``failed`` reason is a requirement the plugin can wait for."""
        return reason is not None and any(reason.startswith(f"dependency {kind}: ")
                                          for kind in _deps.WAITING)

    def _resume_waiting(self, actor: str | None) -> list[str]:
        """Enable, as :meth:`enable` would, the plugins waiting for requirements (recorded
        enabled, ``failed`` with a :data:`_deps.WAITING` reason) whose requirements can be
        met now: their requirements are installed in matching versions, and those enabled
        are running (a requirement that failed by itself is not retried here). Returns the
        names enabled, in order. Those still waiting get their reason brought up to date."""
        if self._safe_mode:
            return []
        enabled: list[str] = []
        tried: set[str] = set()
        with self._op_lock:
            progress = True
            while progress:
                progress = False
                rows, _, manifests = self._dependency_view()
                by_name = {r.name: r for r in rows}
                for row in rows:
                    if not (row.enabled and row.state == "failed" and self._waits(row.reason)
                            and row.name not in tried and not self._serving(row.name)):
                        continue
                    try:
                        needed = _deps.requirements(row.name, manifests)
                    except DependencyError as exc:
                        self._note_reason(row, exc)
                        continue
                    if any(by_name[dep].enabled and not self._running(by_name[dep])
                           for dep in needed):
                        continue  # a requirement waits or failed itself: not yet
                    tried.add(row.name)
                    try:
                        enabled += self._enable_chain(row.name, actor,
                                                      "its requirements are met now")
                    except DependencyError as exc:
                        if isinstance(exc.__cause__, DependencyError):  # refused
                            self._refused_after_all(row, exc.__cause__, actor)
                    except PlugboxError:
                        pass  # recorded failed, with the reason, by _enable_chain
                    progress = True
                    break  # the state changed: look again
        return enabled

    def _refused_after_all(self, row: PluginRow, error: DependencyError,
                           actor: str | None) -> None:
        """A plugin ``row`` recorded enabled (in :meth:`install` or waiting) whose enabling
        was refused for ``error`` (a conflict or a cycle: a decision is needed): left
        ``failed`` with the reason and not enabled, so no later start stops another plugin
        for it."""
        reason = _deps.reason(error)
        with self.store.transaction() as tx:
            tx.bump()
            tx.update_plugin(row.name, enabled=False, state="failed", reason=reason)
            at = tx.audit(actor=actor, action="enable", plugin=row.name,
                          to_version=row.version, detail=reason)
        self._emit("failed", row.name, None, row.version, reason, actor, at)

    def _note_reason(self, row: PluginRow, error: DependencyError) -> None:
        """Bring the reason of waiting ``row`` up to date (not an operation: no audit)."""
        reason = _deps.reason(error)
        if reason != row.reason:
            with self.store.transaction() as tx:
                tx.update_plugin(row.name, reason=reason)

    def _involves_dependencies(self, manifest: Manifest) -> bool:
        """Whether enabling the plugin of ``manifest`` (not installed yet) needs
        :meth:`enable`'s dependency handling: it requires or conflicts with plugins, or an
        installed plugin conflicts with it."""
        if manifest.requires or manifest.conflicts:
            return True
        _, _, manifests = self._dependency_view()
        return any(manifest.name in other.conflicts for other in manifests.values())

    def _enable_installed(self, name: str, actor: str | None) -> PluginInfo:
        """The enable of ``install(..., enable=True)`` for a plugin with dependencies: as
        :meth:`enable`, but what it would raise is recorded instead (``failed`` with the
        reason); a conflict or a cycle leaves the plugin not enabled."""
        try:
            self.enable(name, actor=actor)
        except DependencyError as exc:
            if isinstance(exc.__cause__, DependencyError):  # refused: nothing recorded
                self._refused_after_all(self._row(name, "install")[0], exc.__cause__, actor)
        except PlugboxError:
            pass  # recorded failed, with the reason, by enable()
        return self.info(name)

    def _set_enabled(self, hosted: HostedPlugin, enabled: bool) -> None:
        with self._lock:
            current = self.get(hosted.name)
            if current is None:
                return
            self._publish(plugins=tuple(
                dataclasses.replace(hp, enabled=enabled) if hp is current else hp
                for hp in self._tables.plugins))

    def _active_path(self, row: PluginRow, versions: list[VersionRow]) -> Path:
        for v in versions:
            if v.version == row.version:
                return Path(v.path)
        raise StateError(f"plugin {row.name!r}: its active version {row.version} has no "
                         f"entry in the managed store; reinstall it", path=str(self.store.url))

    def _current_config(self, name: str) -> dict[str, Any]:
        with self.store.transaction() as tx:
            found = tx.config(name)
        return dict(found[1]) if found else {}

    # -- pin ---------------------------------------------------------------------------------

    def pin(self, name: str, *, actor: str | None = None) -> PluginInfo:
        """Hold ``name`` at its active version: :meth:`upgrade` refuses until :meth:`unpin`.
        Recorded, so it survives restarts."""
        return self._set_pin(name, True, actor)

    def unpin(self, name: str, *, actor: str | None = None) -> PluginInfo:
        """Release a :meth:`pin`."""
        return self._set_pin(name, False, actor)

    def _set_pin(self, name: str, pinned: bool, actor: str | None) -> PluginInfo:
        operation = "pin" if pinned else "unpin"
        with self._op_lock:
            row, _ = self._row(name, operation)
            with self.store.transaction() as tx:
                tx.bump()
                tx.update_plugin(name, pinned=pinned)
                at = tx.audit(actor=actor, action=operation, plugin=name,
                              to_version=row.version)
        self._emit("pinned" if pinned else "unpinned", name, row.version, row.version, None,
                   actor, at)
        return self.info(name)

    # -- uninstall ---------------------------------------------------------------------------

    def uninstall(self, name: str, *, purge: bool = False, cascade: bool = False,
                  actor: str | None = None) -> list[str]:
        """Uninstall ``name``: no longer served (calls in flight finish), its versions removed
        from the managed store. Its kv data and config are kept (a later install finds them)
        unless ``purge``.

        Refused with :class:`plugbox.DependencyError` (``kind="required"``, nothing changed)
        while enabled plugins require ``name``, directly or through others, naming them and
        the fix; with ``cascade=True`` they are disabled first, in the same transaction (as
        :meth:`disable` with ``cascade=True`` does). Returns the names no longer served:
        the dependents disabled, in the order they were, then ``name``."""
        self._check_open()
        with self._op_lock:
            row, versions = self._row(name, "uninstall")
            users, by_name = self._enabled_dependents(name, "uninstall", cascade)
            self._set_enabled_many(users, False)
            stamps: dict[str, float] = {}
            with self.store.transaction() as tx:
                tx.bump()
                for user in users:
                    tx.update_plugin(user, enabled=False, state="disabled", reason=None)
                    stamps[user] = tx.audit(actor=actor, action="disable", plugin=user,
                                            from_version=by_name[user].version,
                                            detail=f"requires {name!r} (cascade)")
                tx.delete_plugin(name)
                if purge:
                    tx.delete_config(name)
                    # The kv data lives in another database: the journal row stays until it
                    # is cleared, so an interrupted purge is finished by start().
                    tx.begin_op("purge", name, {})
                at = tx.audit(actor=actor, action="uninstall", plugin=name,
                              from_version=row.version, detail="purge" if purge else None)
            hosted = self.get(name)
            if hosted is not None and name in self._managed:
                self._unhost(hosted)
            self._sweep_plugin(name)
            if purge:
                self._finish_purge(name)
        for user in users:
            self._emit("disabled", user, by_name[user].version, None,
                       f"requires {name!r} (cascade)", actor, stamps[user])
        self._emit("uninstalled", name, row.version, None, "purged" if purge else None,
                   actor, at)
        return [*users, name]

    def _finish_purge(self, name: str) -> None:
        self.runtime.kv.clear(name)
        with self.store.transaction() as tx:
            for entry in tx.journal():
                if entry.op == "purge" and entry.plugin == name:
                    tx.end_op(entry.id)

    def _sweep_plugin(self, name: str) -> list[str]:
        """Remove the directories of ``name`` the database does not reference."""
        base = self._plugins_dir / name
        if not base.is_dir():
            return []
        with self.store.transaction() as tx:
            keep = {Path(v.path).name for v in tx.versions(name)}
        swept = []
        for child in sorted(base.iterdir()):
            if child.name not in keep:
                _remove_tree(child, self._plugins_dir / ".trash")
                swept.append(f"{name}/{child.name}")
        if not keep:
            try:
                base.rmdir()
            except OSError:
                pass
        return swept

    # -- start and recovery ------------------------------------------------------------------

    def start(self) -> StartReport:
        """Recover what an interrupted process left (journal entries undone or finished,
        unreferenced files swept), then load every enabled installed plugin (unless in safe
        mode) in dependency order (:meth:`_start_order`), so their on-init runs in that
        order too. A plugin that cannot start is recorded ``failed`` with its reason and
        reported, and the others still start: one whose requirements are not met
        (``dependency missing: ...``, ``dependency disabled: ...``, ``dependency
        incompatible: ...``), that conflicts with an enabled plugin (``dependency conflict:
        ...``), that is on a dependency cycle (``dependency cycle: ...``, naming it), that
        fails to load (``did not verify: ...``, ``did not load: ...``, ``on-init failed:
        ...``), and every plugin requiring one that failed (``dependency failed: ...``).
        Calling it again loads what is not loaded yet."""
        self._check_open()
        with self._op_lock.local():
            with self._op_lock:  # across processes: what a dead one left, nothing live
                recovered = self._recover()
                swept = self._sweep()
            loaded: list[str] = []
            failed: dict[str, str] = {}
            skipped: list[str] = []
            with self.store.transaction() as tx:
                rows = tx.plugins()
                versions = {row.name: tx.versions(row.name) for row in rows}
            resolution = self._resolve_rows(rows, versions)
            for row in self._ordered(rows, resolution):
                if not row.enabled:
                    skipped.append(row.name)
                    continue
                if self._safe_mode:
                    continue
                if row.name in self._managed and self.get(row.name) is not None:
                    loaded.append(row.name)
                    continue
                if row.name in resolution.failed:  # a dependency problem, or a cascade
                    failed[row.name] = _deps.reason(resolution.errors[row.name])
                    continue
                try:
                    self._load_hosted(self._active_path(row, versions[row.name]),
                                      self._current_config(row.name))
                except PlugboxError as exc:
                    failed[row.name] = _failure_reason(exc)
                    resolution.fail(row.name, failed[row.name])
                else:
                    loaded.append(row.name)
            if failed or any(r.state == "failed" and r.name in loaded for r in rows):
                with self._op_lock, self.store.transaction() as tx:
                    tx.bump()
                    for row in rows:
                        now = tx.plugin(row.name)
                        if now is None or (now.version, now.enabled) != (row.version,
                                                                        row.enabled):
                            continue  # changed by another process meanwhile: its outcome
                        if row.name in failed and (row.state, row.reason) != (
                                "failed", failed[row.name]):
                            tx.update_plugin(row.name, state="failed", reason=failed[row.name])
                            tx.audit(actor="start", action="fail", plugin=row.name,
                                     to_version=row.version, detail=failed[row.name])
                        elif row.name in loaded and row.state == "failed":
                            tx.update_plugin(row.name, state="enabled", reason=None)
            self._started = True
            for row in rows:  # quarantines survive restarts (issue 10 §2)
                if row.state == "quarantined" and row.name in loaded:
                    self._restore_recorded_quarantine(row)
        self._start_health_schedule()  # type: ignore[attr-defined]  # HealthMixin
        for name, reason in failed.items():
            self._emit("failed", name, None, None, reason, "start")
        if self._safe_mode:
            _log.warning("safe mode: no plugin loaded (%d installed, %d enabled); unset "
                         "PLUGBOX_SAFE_MODE / safe_mode to load them", len(rows),
                         sum(r.enabled for r in rows))
        return StartReport(tuple(recovered), tuple(swept), tuple(loaded), failed,
                           tuple(skipped), self._safe_mode)

    def _start_order(self, rows: list[PluginRow],
                     versions: Mapping[str, list[VersionRow]]) -> list[PluginRow]:
        """``rows`` in start order: first the enabled plugins that can start, each after the
        plugins it requires and the optional ones it uses (enabled, in a matching version),
        ties in install order; then the others (not enabled, or failing a dependency check:
        see :func:`plugbox.host._deps.resolve`) in install order."""
        return self._ordered(rows, self._resolve_rows(rows, versions))

    def _resolve_rows(self, rows: list[PluginRow],
                      versions: Mapping[str, list[VersionRow]]) -> _deps.Resolution:
        """:func:`_deps.resolve` over the enabled ``rows`` (install order breaks ties)."""
        return _deps.resolve(self._declared(rows, versions),
                             [row.name for row in rows if row.enabled])

    @staticmethod
    def _ordered(rows: list[PluginRow], resolution: _deps.Resolution) -> list[PluginRow]:
        by_name = {row.name: row for row in rows}
        first = [by_name[name] for name in resolution.order]
        return first + [row for row in rows if row.name not in resolution.order]

    def _recover(self) -> list[RecoveredOperation]:
        """Undo or finish the journal's operations."""
        recovered = []
        with self.store.transaction() as tx:
            entries = tx.journal()
        for entry in entries:
            if entry.op == "purge":
                self._finish_purge(entry.plugin)
                recovered.append(RecoveredOperation(entry.op, entry.plugin, "finished",
                                                    "the kv data was cleared"))
                continue
            with self.store.transaction() as tx:
                tx.end_op(entry.id)
            recovered.append(RecoveredOperation(
                entry.op, entry.plugin, "undone",
                f"interrupted before it was recorded; the state before it holds "
                f"({json.dumps(dict(entry.detail), sort_keys=True)})"))
            _log.warning("recovery: %s of %s was interrupted; undone", entry.op, entry.plugin)
        return recovered

    def _sweep(self) -> list[str]:
        """Remove what the database does not reference from the managed store."""
        swept: list[str] = []
        base = self._plugins_dir
        for special in (".tmp", ".trash"):
            directory = base / special
            if directory.is_dir():
                for child in directory.iterdir():
                    shutil.rmtree(child, ignore_errors=True)
                    swept.append(f"{special}/{child.name}")
        if base.is_dir():
            for child in sorted(base.iterdir()):
                if child.name.startswith(".") or not child.is_dir():
                    continue
                swept.extend(self._sweep_plugin(child.name))
        return swept

    def check_integrity(self) -> list[str]:
        """Problems between the database and the managed store (empty: they agree): every
        recorded version has its directory with the manifest and the module it was recorded
        with, every directory is recorded, every plugin's active version is kept, nothing is
        left in the journal. For tests and ``plugbox plugins`` diagnostics."""
        problems = []
        with self.store.transaction() as tx:
            rows = tx.plugins()
            all_versions = tx.all_versions()
            journal = tx.journal()
        for entry in journal:
            problems.append(f"journal: {entry.op} of {entry.plugin} unfinished")
        recorded = {(v.name, v.version) for v in all_versions}
        for row in rows:
            if (row.name, row.version) not in recorded:
                problems.append(f"{row.name}: active version {row.version} not kept")
        for v in all_versions:
            path = Path(v.path)
            try:
                manifest = validate_manifest(read_manifest(path))
                data = manifest.module_path.read_bytes()
            except (PlugboxError, OSError) as exc:
                problems.append(f"{v.name} {v.version}: {path} unreadable ({exc})")
                continue
            if hashlib.sha256(data).hexdigest() != v.sha256 or manifest.version != v.version:
                problems.append(f"{v.name} {v.version}: {path} differs from the record")
        if self._plugins_dir.is_dir():
            for child in self._plugins_dir.iterdir():
                if child.name in (".tmp", ".trash"):
                    problems.extend(f"leftover {child.name}/{c.name}" for c in child.iterdir())
                    continue
                if not child.is_dir():
                    continue
                for ver in child.iterdir():
                    if (child.name, ver.name) not in recorded:
                        problems.append(f"unrecorded directory {child.name}/{ver.name}")
        return problems

    # -- quarantine (issue 10 §2) ------------------------------------------------------------

    def _quarantine_recorded(self, name: str, reason: str | None, manual: bool) -> None:
        """Record (reason set) or clear (None) the quarantine of installed plugin ``name``,
        so a restart, or another process, finds it."""
        if name not in self._managed:
            return
        with self._op_lock:
            with self.store.transaction() as tx:
                row = tx.plugin(name)
                if row is None or not row.enabled:
                    return
                if reason is None:
                    if row.state != "quarantined":
                        return
                    tx.bump()
                    tx.update_plugin(name, state="enabled", reason=None)
                    tx.audit(actor=None, action="release", plugin=name,
                             to_version=row.version)
                    return
                text = (_HELD_BY_OPERATOR if manual else _HELD_BY_BREAKER) + reason
                if (row.state, row.reason) == ("quarantined", text):
                    return
                tx.bump()
                tx.update_plugin(name, state="quarantined", reason=text)
                tx.audit(actor=None, action="quarantine", plugin=name,
                         to_version=row.version, detail=text)

    def _restore_recorded_quarantine(self, row: PluginRow) -> None:
        """Put ``row``'s recorded quarantine back on this process's breaker."""
        reason = row.reason or ""
        manual = reason.startswith(_HELD_BY_OPERATOR)
        for prefix in (_HELD_BY_OPERATOR, _HELD_BY_BREAKER):
            reason = reason.removeprefix(prefix)
        self._restore_quarantine(row.name, reason or "quarantined",  # type: ignore[attr-defined]
                                 manual)

    # -- retirement of swapped-out plugins ---------------------------------------------------

    def _retire(self, plugin: Plugin) -> None:
        """Close ``plugin`` once no dispatch that may still use it is running."""
        with self._readers_lock:
            gen = self._tables.gen
            if min(self._readers, default=gen) < gen:  # one C call: no iterator
                self._retired.append((gen, plugin))
                return
        plugin.close()

    # -- upgrade (issue 9 §3, §6) -------------------------------------------------------------

    def _config_fitting(self, name: str, manifest: Manifest, doing: str, fix: str
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the current configuration, it validated against ``manifest`` with its defaults
        applied); a ConfigError saying it does not fit that version (``doing`` names the
        operation, ``fix`` what to do)."""
        current = self._current_config(name)
        try:
            return current, self._validated_config(manifest, current)
        except ConfigError as exc:
            raise ConfigError(
                f"{doing}: the current configuration does not fit {manifest.version}'s "
                f"config_schema ({exc.message}); {fix}", plugin=name, json_path=exc.json_path,
                fix=exc.fix) from None

    def upgrade(self, source: str | os.PathLike[str], *,
                allow: bool | Callable[[PermissionDiff], bool] = False,
                actor: str | None = None) -> UpgradeOutcome:
        """Upgrade an installed plugin to the version at ``source`` (a directory, its
        ``plugbox.json`` or a ``.plugbox`` package); the plugin's name comes from its
        manifest.

        The new version is verified completely (trust policy, policy, the host's points and
        functions, its config against the current configuration) before anything changes.
        When it asks for more than the current grant covers (services, functions, dispatch
        patterns, http hosts and methods, event topics, larger kv/http quotas or limits), it
        is activated only with consent: ``allow=True``, or ``allow(diff)`` returning True;
        otherwise the outcome is ``needs-consent`` with the exact :class:`PermissionDiff`,
        and nothing is installed. Then it is copied into the managed store and, when the
        plugin is enabled here, loaded and its on-init run beside the old version, which
        keeps serving; the host switches to it in one step (calls in flight finish on the old
        one). A new version that fails to load or on-init is not activated: the outcome is
        ``rolled-back`` with the reason, recorded in the audit log and as ``failed`` and
        ``rolled-back`` events. On success the kept versions are pruned to ``keep_versions``
        (the active one always kept) and the grant becomes the new version's.

        A plugin that is not enabled (or a host in safe mode) is not loaded: its new version
        is recorded, and tried when it is enabled.

        Refused with :class:`plugbox.LifecycleError` when the plugin is not installed, is
        pinned (unpin it first), or the new version is older than the active one (use
        :meth:`rollback`); the same version with the same module is ``unchanged``. Refused
        before anything is copied, too: with the verification error when it does not verify
        (:class:`plugbox.IncompatiblePointError` also when it drops, or changes to a version
        they refuse, a point it declares that other plugins implement), with
        :class:`plugbox.DependencyError` when an enabled plugin (it included) could no longer
        start, with :class:`plugbox.ConfigError` when the current configuration does not fit
        its ``config_schema``.
        """
        self._check_open()
        if type(allow) is not bool and not callable(allow):
            raise UsageError(f"upgrade: allow must be True, False or a callable taking the "
                             f"PermissionDiff, not {allow!r}")
        with self._op_lock:
            verified = self.runtime._verified(source, False)
            manifest = verified.manifest
            grant = grant_of(verified.permissions, verified.limits)
            name, version = manifest.name, manifest.version
            # Signed by the keys the name belongs to (trust mode "require"), before anything
            # is staged rather than when it loads.
            self.runtime._identity(name, verified.signers)
            row, versions = self._row(name, "upgrade")
            old = row.version
            if row.pinned:
                raise LifecycleError(
                    f"upgrade {name!r} to {version}: it is pinned at {old}, which holds it "
                    f"against upgrades; unpin it first (host.unpin({name!r}), or `plugbox "
                    f"plugins unpin {name}`)", plugin=name, operation="upgrade")
            active = self._active_version(row, versions)
            if version == old:
                if manifest.module_sha256 == active.sha256:
                    return UpgradeOutcome("unchanged", name, old, version,
                                          PermissionDiff({}), None, self._info(row, versions))
                raise LifecycleError(
                    f"upgrade {name!r}: version {version} is active already, with a different "
                    f"module (sha256 {active.sha256[:12]}... installed, "
                    f"{manifest.module_sha256[:12]}... offered); give the new build a new "
                    f"version", plugin=name, operation="upgrade")
            self._refuse_downgrade(name, old, version, versions)
            kept = next((v for v in versions if v.version == version), None)
            if kept is not None and kept.sha256 != manifest.module_sha256:
                raise LifecycleError(
                    f"upgrade {name!r} to {version}: version {version} is kept in the managed "
                    f"store with a different module; give the new build a new version (or "
                    f"let keep_versions prune the old {version} first)", plugin=name,
                    operation="upgrade")
            startable = self._check_dependents(name, "upgrade", old, manifest)
            diff = permission_diff(row.grant, grant)
            if not diff.empty and not self._consented(allow, diff):
                with self.store.transaction() as tx:
                    tx.audit(actor=actor, action="upgrade-needs-consent", plugin=name,
                             from_version=old, to_version=version,
                             detail=diff.describe().replace("\n", "; "))
                return UpgradeOutcome("needs-consent", name, old, version, diff, None,
                                      self._info(row, versions))
            current, cfg = self._config_fitting(
                name, manifest, f"upgrade {name!r} {old} -> {version}",
                f"configure {name!r} with a configuration both versions accept first")
            hosted = self.get(name) if name in self._managed else None
            with self._lock:  # the host's checks, before anything is staged
                if hosted is not None:
                    self._admit_beside(hosted, manifest)
                elif row.enabled and not self._safe_mode:
                    self._admit(manifest)
            target = self._plugins_dir / name / version
            with self.store.transaction() as tx:
                op = tx.begin_op("upgrade", name, {"from": old, "to": version,
                                                  "path": str(target)})
            try:
                if kept is None and target.exists() and \
                        _module_sha256(target) != manifest.module_sha256:
                    # Left by an interrupted operation (start() would sweep it); one with
                    # the same module is reused by _stage.
                    _remove_tree(target, self._plugins_dir / ".trash")
                path, _ = self._stage(source, name, version, manifest.module_sha256)
                outcome, at = self._activate_upgrade(row, manifest, grant, diff, path, cfg,
                                                     current, hosted, startable,
                                                     os.fspath(source), op, actor)
            except BaseException:
                self._abandon(op, name)
                raise
        self._emit_outcome(outcome, actor, at)
        if outcome.status == "upgraded":
            self._resume_waiting(actor)  # plugins that waited for this version start now
        return outcome

    def _activate_upgrade(self, row: PluginRow, manifest: Manifest, grant: dict[str, Any],
                          diff: PermissionDiff, path: Path, cfg: dict[str, Any],
                          current: dict[str, Any], hosted: HostedPlugin | None,
                          startable: bool, source: str, op: int, actor: str | None
                          ) -> tuple[UpgradeOutcome, float]:
        """Load the staged new version (beside ``hosted``, or alone when this process does
        not serve the plugin and its dependencies let it start), then record it and switch to
        it in one transaction; or record the failure and keep the old one. Runs under
        ``_op_lock`` with journal row ``op``. (outcome, time recorded)."""
        name, old, version = row.name, row.version, manifest.version
        fresh: HostedPlugin | None = None  # loaded beside hosted, not served yet
        alone: HostedPlugin | None = None  # loaded and served (nothing served before)
        reason = None
        if row.enabled and not self._safe_mode and (hosted is not None or startable):
            try:
                if hosted is not None:
                    fresh = self._load_beside(hosted, path, cfg, hosted.enabled)
                    # the last gate (issue 10 §3): the new version must report healthy
                    failing = self._health_gate(fresh)
                    if failing is not None:
                        fresh.plugin.close()
                        fresh = None
                        raise _Unhealthy(failing, plugin=name, operation="upgrade")
                else:
                    alone = self._load_hosted(path, cfg)
            except PlugboxError as exc:
                reason = _scrub(_failure_reason(exc),
                                _secret_values(manifest.config_schema, cfg))
                before = int(self._active_version(row, self.store.versions(name)).manifest
                             .get("data_version", 0) or 0)
                if manifest.data_version != before and exc.hook == "on-init":
                    reason += (f" (note: {version} declares data_version "
                               f"{manifest.data_version} and {old} {before}; its on-init "
                               f"ran, so it may have migrated the plugin's data before it "
                               f"failed: check the data {old} now serves from)")
        if reason is not None:
            with self.store.transaction() as tx:
                at = tx.audit(actor=actor, action="upgrade-failed", plugin=name,
                              from_version=old, to_version=version, detail=reason)
                tx.end_op(op)
            self._sweep_plugin(name)
            return UpgradeOutcome("rolled-back", name, old, version, diff, reason,
                                  self.info(name)), at
        swapped = False
        try:
            with self.store.transaction() as tx:
                tx.bump()
                tx.add_version(name=name, version=version, path=str(path),
                               sha256=manifest.module_sha256, manifest=dict(manifest.raw))
                fields: dict[str, Any] = {"version": version, "grant": grant,
                                          "source": source}
                if fresh is not None or alone is not None:
                    fields.update(state="enabled", reason=None)
                tx.update_plugin(name, **fields)
                notes = [] if diff.empty else [f"granted {diff.describe()}"]
                if cfg != current:
                    revision = tx.set_config(name, cfg, actor)
                    notes.append(f"config revision {revision}: "
                                 + "; ".join(self._config_diff(manifest.config_schema,
                                                               current, cfg)))
                pruned = self._prune(tx, name, version)
                if pruned:
                    notes.append(f"pruned {', '.join(pruned)}")
                at = tx.audit(actor=actor, action="upgrade", plugin=name, from_version=old,
                              to_version=version,
                              detail="; ".join(n.replace("\n", ", ") for n in notes) or None)
                tx.end_op(op)
                swapped = self._switch(hosted, fresh)
        except BaseException:
            self._discard_loaded(fresh, swapped, alone)
            raise
        self._sweep_plugin(name)  # the pruned versions' files
        return UpgradeOutcome("upgraded", name, old, version, diff, None, self.info(name)), at

    def _switch(self, hosted: HostedPlugin | None, fresh: HostedPlugin | None) -> bool:
        """In the transaction recording a new active version: serve ``fresh`` instead of
        ``hosted`` (True); with nothing loaded beside a plugin that is loaded but disabled,
        unhost it, so that enabling it loads the new version (False)."""
        if fresh is not None and hosted is not None:
            self._replace_hosted(hosted, fresh)
            return True
        if hosted is not None:
            self._unhost(hosted)
        return False

    def _discard_loaded(self, fresh: HostedPlugin | None, swapped: bool,
                        alone: HostedPlugin | None) -> None:
        """Undo the loads of an operation that failed before or while it was recorded."""
        if fresh is not None and not swapped:
            fresh.plugin.close()
        if alone is not None:
            self._unhost(alone)

    def _emit_outcome(self, outcome: UpgradeOutcome, actor: str | None, at: float) -> None:
        if outcome.status == "upgraded":
            self._emit("upgraded", outcome.plugin, outcome.from_version, outcome.to_version,
                       None, actor, at)
        elif outcome.status == "rolled-back":
            self._emit("failed", outcome.plugin, outcome.from_version, outcome.to_version,
                       outcome.reason, actor, at)
            self._emit("rolled-back", outcome.plugin, outcome.to_version,
                       outcome.from_version, outcome.reason, actor, at)

    @staticmethod
    def _consented(allow: bool | Callable[[PermissionDiff], bool], diff: PermissionDiff
                   ) -> bool:
        if type(allow) is bool:
            return allow
        assert callable(allow)
        return bool(allow(diff))

    @staticmethod
    def _refuse_downgrade(name: str, old: str, version: str,
                          versions: list[VersionRow]) -> None:
        newer, older = _version_key(version), _version_key(old)
        if newer is None or older is None or newer >= older:
            return
        kept = [v.version for v in versions]
        fix = (f"to go back to it, roll back: host.rollback({name!r}, to={version!r}) "
               f"(`plugbox plugins rollback {name} --to {version}`)" if version in kept else
               f"only kept versions can be rolled back to (kept: {', '.join(kept)}); "
               f"uninstall and install {version} to run it anyway")
        raise LifecycleError(f"upgrade {name!r} to {version}: {version} is older than the "
                             f"active {old}; {fix}", plugin=name, operation="upgrade")

    def _active_version(self, row: PluginRow, versions: list[VersionRow]) -> VersionRow:
        for v in versions:
            if v.version == row.version:
                return v
        raise StateError(f"plugin {row.name!r}: its active version {row.version} has no "
                         f"entry in the managed store; reinstall it", path=str(self.store.url))

    def _prune(self, tx: Any, name: str, active: str) -> list[str]:
        """Forget the kept versions beyond ``keep_versions`` (least recently active first;
        never ``active``). Their files are swept once the transaction committed."""
        versions: list[VersionRow] = tx.versions(name)
        extra = [v for v in versions if v.version != active][self._keep_versions - 1:]
        for v in extra:
            tx.delete_version(name, v.version)
        return [v.version for v in extra]

    def _abandon(self, op: int, name: str) -> None:
        """An operation that raised before it was recorded: end its journal row and remove
        the files it staged (what start() would do after a crash)."""
        try:
            with self.store.transaction() as tx:
                tx.end_op(op)
            self._sweep_plugin(name)
        except (PlugboxError, OSError):
            _log.warning("plugin %s: could not clean up after a failed operation; the next "
                         "start() will", name, exc_info=True)

    def _check_dependents(self, name: str, operation: str, old: str,
                          new: _deps.Dependent) -> bool:
        """Refuse making ``new`` the active manifest of ``name`` when an enabled plugin
        (``name`` itself included) that can start now could not start then: a dependent's
        ``requires`` no longer matches, the new version's requirements or conflicts are not
        met, or a cycle appears. Returns whether ``name`` can start with ``new`` (False: it
        could not before either, so it is not loaded)."""
        with self.store.transaction() as tx:
            rows = tx.plugins()
            manifests: dict[str, _deps.Dependent] = {}
            for row in rows:
                active = next((v for v in tx.versions(row.name) if v.version == row.version),
                              None)
                if active is not None:
                    manifests[row.name] = _deps.Declared.from_raw(
                        active.manifest, name=row.name, version=active.version)
        enabled = [row.name for row in rows if row.enabled]
        before = _deps.resolve(manifests, enabled)
        after = _deps.resolve({**manifests, name: new}, enabled)
        broken = [n for n in after.failed if n not in before.failed]
        if not broken:
            return name not in after.failed
        error = after.errors[broken[0]]
        others = [n for n in broken if n != name]
        raise DependencyError(
            f"{operation} {name!r} {old} -> {new.version} is refused: "
            + (f"enabled plugins {', '.join(others)} could no longer start ("
               if others else "it could not start (") + f"{error.message}); nothing changed",
            plugin=error.plugin or name, kind=error.kind, dependency=error.dependency,
            specifier=error.specifier, plugins=error.plugins)

    def _materialise(self, version: VersionRow) -> None:
        """Bring ``version``'s files into this host's managed store when another machine
        installed it (a store shared over PostgreSQL can; a SQLite one has them already)."""
        materialise = getattr(self.store, "materialise", None)
        if materialise is not None:
            materialise(version)

    # -- rollback ----------------------------------------------------------------------------

    def rollback(self, name: str, *, to: str | None = None, confirm: bool = False,
                 actor: str | None = None) -> PluginInfo:
        """Make kept version ``to`` of ``name`` active again (None: the version that was
        active before the current one, so a second rollback undoes the first). The kept files
        are verified again and, when the plugin is enabled here, loaded and on-init run
        beside the active version, then swapped in at once; calls in flight finish on the
        old one. If the kept version fails to load, the active one keeps serving, the failure
        is recorded and its error raised. The grant becomes the kept version's (it was
        granted when that version was installed).

        When the two versions' ``data_version`` differ (the plugin's stored data format
        changed between them), the rollback is refused with a :class:`plugbox.LifecycleError`
        whose message and ``warning`` attribute say so, unless ``confirm=True``; then it
        proceeds and the returned :attr:`PluginInfo.warnings` holds the warning.

        Refused (:class:`plugbox.LifecycleError`) for a plugin not installed, pinned (unpin
        it first), with no other kept version, or a ``to`` that is not kept or is active;
        with :class:`plugbox.DependencyError` when an enabled plugin could no longer start
        (a dependent requiring the newer version), with :class:`plugbox.ConfigError` when
        the current configuration does not fit the kept version's schema, and with the
        verification error when the kept files no longer verify.
        """
        self._check_open()
        with self._op_lock:
            row, versions = self._row(name, "rollback")
            old = row.version
            if row.pinned:
                raise LifecycleError(
                    f"rollback {name!r}: it is pinned at {old}; unpin it first "
                    f"(host.unpin({name!r}), or `plugbox plugins unpin {name}`)", plugin=name,
                    operation="rollback")
            current = self._active_version(row, versions)
            target = self._rollback_target(row, versions, to)
            warning = _data_warning(name, current, target)
            if warning is not None and not confirm:
                raise LifecycleError(
                    f"rollback {name!r} {old} -> {target.version}: {warning}. Pass "
                    f"confirm=True (`plugbox plugins rollback {name} --to {target.version} "
                    f"--yes`) to roll back anyway", plugin=name, operation="rollback",
                    warning=warning)
            startable = self._check_dependents(name, "rollback", old, _deps.Declared.from_raw(
                target.manifest, name=name, version=target.version))
            path = Path(target.path)
            self._materialise(target)
            manifest, grant = self._verify_source(path)
            if manifest.version != target.version or \
                    manifest.module_sha256 != target.sha256:
                raise StateError(f"rollback {name!r} to {target.version}: the kept files in "
                                 f"{path} differ from what was recorded; install that version "
                                 f"again instead", path=str(path))
            config, cfg = self._config_fitting(
                name, manifest, f"rollback {name!r} {old} -> {target.version}",
                f"configure {name!r} with a configuration both versions accept, or roll the "
                f"configuration back too (host.rollback_config)")
            hosted = self.get(name) if name in self._managed else None
            fresh: HostedPlugin | None = None
            alone: HostedPlugin | None = None
            if row.enabled and not self._safe_mode and (hosted is not None or startable):
                try:
                    if hosted is not None:
                        fresh = self._load_beside(hosted, path, cfg, hosted.enabled)
                    else:
                        alone = self._load_hosted(path, cfg)
                except PlugboxError as exc:
                    reason = _scrub(_failure_reason(exc),
                                    _secret_values(manifest.config_schema, cfg))
                    with self.store.transaction() as tx:
                        tx.audit(actor=actor, action="rollback-failed", plugin=name,
                                 from_version=old, to_version=target.version, detail=reason)
                    self._emit("failed", name, old, target.version, reason, actor)
                    exc.add_note(f"(rollback of {name!r} {old} -> {target.version}: the "
                                 f"active {old} keeps serving)")
                    raise
            swapped = False
            try:
                with self.store.transaction() as tx:
                    tx.bump()
                    tx.touch_version(name, target.version)
                    fields: dict[str, Any] = {"version": target.version, "grant": grant}
                    if fresh is not None or alone is not None:
                        fields.update(state="enabled", reason=None)
                    tx.update_plugin(name, **fields)
                    if cfg != config:
                        tx.set_config(name, cfg, actor)
                    at = tx.audit(actor=actor, action="rollback", plugin=name,
                                  from_version=old, to_version=target.version,
                                  detail=warning)
                    swapped = self._switch(hosted, fresh)
            except BaseException:
                self._discard_loaded(fresh, swapped, alone)
                raise
            row, versions = self._row(name, "rollback")
            info = self._info(row, versions, () if warning is None else (warning,))
        self._emit("rolled-back", name, old, target.version, warning, actor, at)
        self._resume_waiting(actor)  # plugins waiting for the version rolled back to
        return info

    def _rollback_target(self, row: PluginRow, versions: list[VersionRow],
                         to: str | None) -> VersionRow:
        name, kept = row.name, ", ".join(v.version for v in versions)
        if to is None:
            for v in versions:  # most recently active first
                if v.version != row.version:
                    return v
            raise LifecycleError(
                f"rollback {name!r}: no version other than the active {row.version} is kept, "
                f"so there is nothing to roll back to (the host keeps keep_versions="
                f"{self._keep_versions} versions; upgrades add them)", plugin=name,
                operation="rollback")
        if not isinstance(to, str):
            raise UsageError(f"rollback {name!r}: to must be a version string or None, not "
                             f"{to!r}", plugin=name)
        if to == row.version:
            raise LifecycleError(f"rollback {name!r} to {to}: {to} is the active version "
                                 f"already; nothing to roll back", plugin=name,
                                 operation="rollback")
        for v in versions:
            if v.version == to:
                return v
        raise LifecycleError(f"rollback {name!r} to {to}: version {to} is not kept (kept: "
                             f"{kept}); roll back to one of those, or upgrade to {to} from "
                             f"its source", plugin=name, operation="rollback")

    # -- configuration (issue 9 §5, §6) ------------------------------------------------------

    def configure(self, name: str, config: Mapping[str, Any], *,
                  actor: str | None = None) -> PluginInfo:
        """Replace the configuration of ``name`` with ``config`` (the whole configuration):
        validated against the active version's ``config_schema`` with its defaults applied,
        stored as a new revision (:meth:`config_history`) and recorded in the audit log
        (changed paths only; secret values never). When this process serves the plugin, new
        instances get on-init with the new configuration beside the running ones, and the
        host switches to them in one step: calls that started keep the old configuration,
        calls after see the new one.

        Nothing is applied, even partly, when the configuration fails: a
        :class:`plugbox.ConfigError` names the JSON path (``json_path``); one the plugin's
        on-init refuses is a ConfigError too (``json_path`` ``$``). A configuration equal to
        the current one changes nothing. A plugin not served here gets it when it loads (a
        disabled one still loaded is unloaded, so that enabling it loads it with the new
        configuration).
        """
        self._check_open()
        with self._op_lock:
            row, versions = self._row(name, "configure")
            return self._apply_config(row, versions, config, actor, "configure", None)

    def rollback_config(self, name: str, revision: int | None = None, *,
                        actor: str | None = None) -> PluginInfo:
        """Apply stored configuration ``revision`` of ``name`` again (None: the one before
        the current one), as :meth:`configure` does: validated against the active version's
        schema, swapped in atomically, recorded as a new revision (history is never
        rewritten). :class:`plugbox.LifecycleError` for an unknown revision or when there is
        no earlier one; :class:`plugbox.ConfigError` when it no longer fits the schema."""
        self._check_open()
        if revision is not None and (type(revision) is not int or revision < 1):
            raise UsageError(f"rollback_config {name!r}: revision must be a positive int or "
                             f"None, not {revision!r}", plugin=name)
        with self._op_lock:
            row, versions = self._row(name, "rollback_config")
            with self.store.transaction() as tx:
                history = tx.config_history(name)
            numbers = [h[0] for h in history]
            shown = ", ".join(map(str, numbers)) or "none"
            if revision is None:
                if len(history) < 2:
                    raise LifecycleError(
                        f"rollback_config {name!r}: there is no configuration before the "
                        f"current one (revisions: {shown}); set one with host.configure",
                        plugin=name, operation="rollback_config")
                revision, config = history[-2][0], history[-2][1]
            else:
                found = [h for h in history if h[0] == revision]
                if not found:
                    raise LifecycleError(
                        f"rollback_config {name!r} to revision {revision}: no such revision "
                        f"(revisions: {shown}); see host.config_history({name!r})",
                        plugin=name, operation="rollback_config")
                if revision == numbers[-1]:
                    raise LifecycleError(
                        f"rollback_config {name!r} to revision {revision}: it is the current "
                        f"configuration already; nothing to roll back", plugin=name,
                        operation="rollback_config")
                config = found[0][1]
            return self._apply_config(row, versions, config, actor, "config-rollback",
                                      f"revision {revision} again")

    def _apply_config(self, row: PluginRow, versions: list[VersionRow],
                      config: Mapping[str, Any], actor: str | None, action: str,
                      note: str | None) -> PluginInfo:
        """Validate ``config``, swap the served plugin to instances started with it, and
        record it (one transaction). Runs under ``_op_lock``."""
        name = row.name
        schema = self._active_version(row, versions).manifest.get("config_schema")
        cfg = self._checked_config(name, schema, config)
        current = self._current_config(name)
        with self.store.transaction() as tx:
            stored = tx.config(name)
        if stored is not None and stored[1] == cfg:
            return self._info(row, versions)
        hosted = self.get(name) if name in self._managed else None
        fresh: HostedPlugin | None = None
        if hosted is not None and hosted.enabled:
            try:
                fresh = self._load_beside(hosted, hosted.source, cfg, hosted.enabled)
            except PlugboxError as exc:
                problem = _scrub(exc.message, _secret_values(schema, cfg)
                                 | _secret_values(schema, current))
                with self.store.transaction() as tx:
                    tx.audit(actor=actor, action=f"{action}-refused", plugin=name,
                             from_version=row.version, to_version=row.version,
                             detail=f"on-init refused it: {problem}"[:2000])
                raise ConfigError(
                    f"plugin {name!r}: the configuration is refused: its on-init failed with "
                    f"it ({problem}); nothing of it was applied, the old configuration stays. "
                    f"To fix: change the configuration so that the plugin accepts it",
                    plugin=name, json_path="$",
                    fix="change the configuration so that the plugin accepts it") from None
        changes = self._config_diff(schema, current, cfg)
        swapped = False
        try:
            with self.store.transaction() as tx:
                tx.bump()
                revision = tx.set_config(name, cfg, actor)
                detail = f"revision {revision}" + (f" ({note})" if note else "") + (
                    ": " + "; ".join(changes) if changes else "")
                at = tx.audit(actor=actor, action=action, plugin=name,
                              from_version=row.version, to_version=row.version,
                              detail=detail[:4000])
                swapped = self._switch(hosted, fresh)
        except BaseException:
            self._discard_loaded(fresh, swapped, None)
            raise
        self._emit("config-changed", name, row.version, row.version,
                   f"revision {revision}" + (f", {note}" if note else ""), actor, at)
        return self._info(row, versions)

    @staticmethod
    def _config_diff(schema: Any, old: Mapping[str, Any], new: Mapping[str, Any]
                     ) -> list[str]:
        return config_diff(old, new, schema)

    def config_of(self, name: str, *, redacted: bool = False) -> dict[str, Any]:
        """The configuration plugin ``name`` runs with (``{}`` when none was set). With
        ``redacted``, every value its kept versions' schemas mark ``writeOnly`` is replaced
        by :data:`plugbox.host._config.REDACTED` (for anything printed)."""
        _, versions = self._row(name, "config")
        with self.store.transaction() as tx:
            found = tx.config(name)
        config = dict(found[1]) if found else {}
        return self._redacted(versions, config) if redacted else config

    def config_history(self, name: str, *, redacted: bool = False) -> list[ConfigRevision]:
        """Every stored configuration of ``name``, oldest first (``[]`` for a plugin never
        configured); with ``redacted``, secret values hidden as in :meth:`config_of`."""
        with self.store.transaction() as tx:
            entries = tx.config_history(name)
            versions = tx.versions(name)
        if not redacted:
            return [ConfigRevision(*entry) for entry in entries]
        return [ConfigRevision(revision, self._redacted(versions, config), who, at)
                for revision, config, who, at in entries]

    @staticmethod
    def _redacted(versions: list[VersionRow], config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with what any kept version's schema marks ``writeOnly`` hidden (a
        revision may date from another version)."""
        out = dict(config)
        for version in versions:
            out = redact_config(version.manifest.get("config_schema"), out)
        return out

    def _checked_config(self, name: str, schema: Any, config: Any) -> dict[str, Any]:
        """``config`` validated against ``schema`` with its defaults applied; a
        :class:`plugbox.ConfigError` whose message carries no secret value."""
        try:
            return validated(schema, config, plugin=name)
        except ConfigError as exc:
            secrets = _secret_values(schema, config) if isinstance(config, Mapping) else set()
            if not secrets:
                raise
            raise ConfigError(_scrub(exc.message, secrets), plugin=name,
                              json_path=exc.json_path, fix=_scrub(exc.fix, secrets)) from None


def _module_sha256(directory: Path) -> str | None:
    """The module digest the manifest in ``directory`` records, or None (unreadable)."""
    try:
        return validate_manifest(read_manifest(directory)).module_sha256
    except PlugboxError:
        return None


def _data_warning(name: str, current: VersionRow, target: VersionRow) -> str | None:
    """The warning for a rollback from ``current`` to ``target`` across a data format change
    (their manifests' ``data_version`` differ), or None."""
    now = int(current.manifest.get("data_version", 0) or 0)
    then = int(target.manifest.get("data_version", 0) or 0)
    if now == then:
        return None
    return (f"{name} {current.version} stores its data in format {now} (data_version) and "
            f"{target.version} in format {then}: data {current.version} wrote (or migrated) "
            f"may not be readable by {target.version}; back up the plugin's kv data first")


def _secret_values(schema: Any, config: Mapping[str, Any]) -> set[str]:
    """The text forms of every value ``schema`` marks ``writeOnly`` in ``config`` (leaves of
    the secret subtrees), to scrub them out of messages."""
    found: set[str] = set()

    def leaves(value: Any) -> None:
        if isinstance(value, Mapping):
            for child in value.values():
                leaves(child)
        elif isinstance(value, list):
            for child in value:
                leaves(child)
        elif isinstance(value, str):
            found.update({repr(value), json.dumps(value)})
            if len(value) >= 4:  # shorter ones would scrub ordinary words
                found.add(value)
        elif value is not None and not isinstance(value, bool) and len(str(value)) >= 4:
            found.add(str(value))

    for path in secret_paths(schema, config):
        node: Any = config
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        leaves(node)
    return found


def _scrub(text: str, secrets: set[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (longest first)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
