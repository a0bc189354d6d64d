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

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from packaging.version import InvalidVersion, Version

from .._errors import ManifestError, PlugboxError, StateError, UsageError, VerificationError
from .._manifest import Manifest, read_manifest, validate_config, validate_manifest
from .._permissions import Limits, Permissions
from .._plugin import Plugin
from ..trust._package import package_members, staged_plugin
from ._errors import ConfigError, LifecycleError
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
                      "released")
STATES: Final = ("installed", "enabled", "disabled", "failed")


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin as the lifecycle state records it.

    ``version`` is the active version; ``state`` is ``installed`` (never enabled),
    ``enabled``, ``disabled`` or ``failed`` (``reason`` says why: ``did not verify: ...``,
    ``did not load: ...``, ``on-init failed: ...``, ``dependency missing: ...``);
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
                lines.append(f"{key}: {value['from']} -> {value['to']}")
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


def _copy_plugin(source_dir: Path, target: Path) -> None:
    """Copy the plugin files of ``source_dir`` (manifest, module, signatures, docs) into the
    new directory ``target``, each file fsynced."""
    target.mkdir(parents=True)
    for member, path in package_members(source_dir).items():
        dest = target / member
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
    _fsync_dir(target)


def _remove_tree(path: Path, trash: Path) -> None:
    """Remove ``path``: renamed into ``trash`` first (one atomic step: a crash leaves it either
    where it was or in the trash, which start() empties), then deleted."""
    if not path.exists():
        return
    trash.mkdir(parents=True, exist_ok=True)
    moved = trash / f"{path.name}-{uuid.uuid4().hex[:12]}"
    os.rename(path, moved)
    shutil.rmtree(moved, ignore_errors=True)


def _failure_reason(exc: BaseException) -> str:
    """The ``failed`` reason for a plugin that could not be started."""
    message = exc.message if isinstance(exc, PlugboxError) else str(exc)
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

    # Set by PluginHost.__init__ (_init_lifecycle).
    store: Store
    _plugins_dir: Path
    _safe_mode: bool
    _keep_versions: int
    _op_lock: threading.RLock
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
        self._op_lock = threading.RLock()
        self._subscribers = []
        self._managed = set()
        self._started = False
        self.store = Store(state_url if state_url is not None else store_path(state_dir))

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

    def config_of(self, name: str) -> dict[str, Any]:
        """The configuration plugin ``name`` runs with (``{}`` when none was set)."""
        self._row(name, "config")
        with self.store.transaction() as tx:
            found = tx.config(name)
        return dict(found[1]) if found else {}

    def config_history(self, name: str) -> list[ConfigRevision]:
        """Every stored configuration of ``name``, oldest first."""
        with self.store.transaction() as tx:
            return [ConfigRevision(*entry) for entry in tx.config_history(name)]

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
        one with another is refused."""
        target = self._plugins_dir / name / version
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
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StateError(f"install {name!r}: cannot copy it into the managed store "
                             f"{self._plugins_dir} ({exc}); check disk space and permissions",
                             path=str(self._plugins_dir)) from None
        return target, True

    def _validated_config(self, manifest: Manifest, config: Mapping[str, Any]
                          ) -> dict[str, Any]:
        """``config`` checked against ``manifest``'s schema, defaults applied."""
        try:  # the DEPS helper's module, once merged
            config_module: Any = importlib.import_module("plugbox.host._config")
        except ImportError:
            config_module = None
        if config_module is not None and hasattr(config_module, "validated"):
            result: dict[str, Any] = config_module.validated(
                manifest.config_schema, config, plugin=manifest.name)
            return result
        # TODO(issue 9 §5): defaults and secrets come with _config.validated (DEPS helper).
        try:
            validate_config(manifest, config)
        except ManifestError:
            raise
        except UsageError as exc:
            path = None
            if " at " in exc.message:
                path = exc.message.split(" at ", 1)[1].split(":", 1)[0].split(" ", 1)[0]
            raise ConfigError(exc.message, plugin=manifest.name, json_path=path or "$") from None
        return dict(config)

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
        ``failed`` with the reason. Refused with :class:`plugbox.LifecycleError` when a
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
                kept = tx.config(name)
            if config is None:
                config = kept[1] if kept else {}
            cfg = self._validated_config(manifest, dict(config))
            with self._lock:
                self._admit(manifest)
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
        return self.info(name)

    def _load_hosted(self, path: Path, config: Mapping[str, Any]) -> HostedPlugin:
        """Load and host the managed plugin at ``path`` (enabled)."""
        hosted = self.add(path, config=dict(config))
        self._managed.add(hosted.name)
        return hosted

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
        """Enable installed plugin ``name``: loaded (if this process does not serve it yet)
        and dispatched to from the next call on. Returns the names enabled. A plugin that
        fails to load is left ``failed`` with the reason, and the error is raised.
        ``cascade`` is for the requirements (issue 9 §4, DEPS helper)."""
        self._check_open()
        with self._op_lock:
            row, versions = self._row(name, "enable")
            hosted = self.get(name)
            reason = None
            failure: PlugboxError | None = None
            if not self._safe_mode:
                if hosted is not None and name in self._managed:
                    if not hosted.enabled:
                        self._set_enabled(hosted, True)
                else:
                    try:
                        self._load_hosted(self._active_path(row, versions),
                                          self._current_config(name))
                    except PlugboxError as exc:
                        reason, failure = _failure_reason(exc), exc
            with self.store.transaction() as tx:
                tx.bump()
                tx.update_plugin(name, enabled=True, state="failed" if reason else "enabled",
                                 reason=reason)
                at = tx.audit(actor=actor, action="enable", plugin=name,
                              to_version=row.version, detail=reason)
        if failure is not None:
            self._emit("failed", name, None, row.version, reason, actor, at)
            raise failure
        self._emit("enabled", name, None, row.version, None, actor, at)
        return [name]

    def disable(self, name: str, *, cascade: bool = False,
                actor: str | None = None) -> list[str]:
        """Disable installed plugin ``name``: no call made after this returns reaches it
        (calls in flight finish). It stays loaded in this process, so enabling it again is
        immediate; a host started later does not load it. Returns the names disabled."""
        self._check_open()
        with self._op_lock:
            row, _ = self._row(name, "disable")
            hosted = self.get(name)
            if hosted is not None and name in self._managed and hosted.enabled:
                self._set_enabled(hosted, False)
            with self.store.transaction() as tx:
                tx.bump()
                tx.update_plugin(name, enabled=False, state="disabled", reason=None)
                at = tx.audit(actor=actor, action="disable", plugin=name,
                              from_version=row.version)
        self._emit("disabled", name, row.version, None, None, actor, at)
        return [name]

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
                  actor: str | None = None) -> None:
        """Uninstall ``name``: no longer served (calls in flight finish), its versions removed
        from the managed store. Its kv data and config are kept (a later install finds them)
        unless ``purge``."""
        self._check_open()
        with self._op_lock:
            row, versions = self._row(name, "uninstall")
            with self.store.transaction() as tx:
                tx.bump()
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
        self._emit("uninstalled", name, row.version, None, "purged" if purge else None,
                   actor, at)

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
        mode). A plugin that fails is recorded ``failed`` with its reason and reported; the
        others still start. Calling it again loads what is not loaded yet."""
        self._check_open()
        with self._op_lock:
            recovered = self._recover()
            swept = self._sweep()
            loaded: list[str] = []
            failed: dict[str, str] = {}
            skipped: list[str] = []
            with self.store.transaction() as tx:
                rows = tx.plugins()
                versions = {row.name: tx.versions(row.name) for row in rows}
            for row in self._start_order(rows, versions):
                if not row.enabled:
                    skipped.append(row.name)
                    continue
                if self._safe_mode:
                    continue
                if row.name in self._managed and self.get(row.name) is not None:
                    loaded.append(row.name)
                    continue
                try:
                    self._load_hosted(self._active_path(row, versions[row.name]),
                                      self._current_config(row.name))
                except PlugboxError as exc:
                    failed[row.name] = _failure_reason(exc)
                else:
                    loaded.append(row.name)
            if failed or any(r.state == "failed" and r.name in loaded for r in rows):
                with self.store.transaction() as tx:
                    tx.bump()
                    for row in rows:
                        if row.name in failed and (row.state, row.reason) != (
                                "failed", failed[row.name]):
                            tx.update_plugin(row.name, state="failed", reason=failed[row.name])
                            tx.audit(actor="start", action="fail", plugin=row.name,
                                     to_version=row.version, detail=failed[row.name])
                        elif row.name in loaded and row.state == "failed":
                            tx.update_plugin(row.name, state="enabled", reason=None)
            self._started = True
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
        """Install order. (Dependency order comes with the DEPS helper's ``_deps.resolve``.)"""
        return rows

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

    # -- retirement of swapped-out plugins ---------------------------------------------------

    def _retire(self, plugin: Plugin) -> None:
        """Close ``plugin`` once no dispatch that may still use it is running."""
        with self._readers_lock:
            gen = self._tables.gen
            if any(g < gen for g in self._readers):
                self._retired.append((gen, plugin))
                return
        plugin.close()
