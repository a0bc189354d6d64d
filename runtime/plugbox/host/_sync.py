"""Several processes (and machines) over one lifecycle database (issue 9 §7). Mixed into
:class:`plugbox.PluginHost`.

Every lifecycle change bumps the database's generation counter in the transaction that makes
it. Once :meth:`PluginHost.start` ran, a watcher thread (``services._db.GenerationWatch`` on a
connection of its own) reads that counter every :attr:`SyncMixin.sync_interval` seconds (one
indexed read; on PostgreSQL it also LISTENs, so it wakes at the change's NOTIFY) and, when it
moved, calls :meth:`SyncMixin.refresh`, which makes this process serve what the database says
now: it loads plugins enabled elsewhere, stops dispatching to disabled ones, unhosts
uninstalled ones, and swaps a plugin whose active version or config changed (loaded and
on-init run beside the old one, then swapped in one step: calls in flight finish on the old
one). :meth:`PluginHost.close` stops the watcher.

Across machines (PostgreSQL): a version this host's managed store lacks is materialised from
the database's copy of its files (``Store.materialise``, hashes checked) before it is loaded.

The plugins' kv data is shared too when every process opens it for sharing: SQLite needs
``runtime_options={"shared_state": True}`` (the kv file then opens in normal locking mode,
without the single-process usage cache), PostgreSQL (``runtime_options={"state_url": ...}``)
is always shared.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .._errors import PlugboxError, StateError, UsageError
from ._lifecycle import LifecycleMixin, StartReport
from ._store import PluginRow, VersionRow

__all__ = ["SyncMixin"]

_log = logging.getLogger("plugbox.lifecycle")


class SyncMixin(LifecycleMixin):
    """:meth:`refresh` and the watcher that calls it (see the module docstring)."""

    #: Seconds between two reads of the generation counter by the watcher.
    sync_interval: float = 0.2

    def _init_lifecycle(self, state_url: str | os.PathLike[str] | None,
                        safe_mode: bool | None, keep_versions: int) -> None:
        super()._init_lifecycle(state_url, safe_mode, keep_versions)
        # Where this host keeps versions installed by another machine (PostgreSQL).
        self.store.plugins_dir = self._plugins_dir

    def start(self) -> StartReport:
        """Recover, then load every enabled installed plugin (see
        :meth:`LifecycleMixin.start`; versions installed on another machine are first
        materialised from the database); then watch the database, so changes made by other
        processes reach this one within a second (:meth:`refresh`)."""
        self._check_open()
        self._materialise_active()
        report = super().start()
        self._start_watch()
        return report

    def refresh(self) -> list[str]:
        """Make this process serve what the lifecycle database says now: load the plugins
        enabled since (another process or machine enabled or installed them), stop
        dispatching to disabled ones, unhost uninstalled ones, and swap in another active
        version or config (loaded beside the old one, then swapped atomically). Returns the
        names of the plugins it changed, in the order it changed them. A plugin that fails
        to load here is logged and left as it was (the process that made the change
        recorded its outcome). The watcher calls this; call it yourself to apply changes
        at once (in safe mode it only disables and unhosts)."""
        self._check_open()
        changed: list[str] = []
        with self._op_lock:
            with self.store.transaction() as tx:
                rows = tx.plugins()
                versions = {row.name: tx.versions(row.name) for row in rows}
                configs = {row.name: tx.config(row.name) for row in rows}
            by_name = {row.name: row for row in rows}
            for name in sorted(self._managed):
                if name not in by_name:
                    hosted = self.get(name)
                    if hosted is not None:
                        self._unhost(hosted)
                    self._managed.discard(name)
                    changed.append(name)
            for row in self._start_order(rows, versions):
                try:
                    if self._refresh_one(row, versions[row.name], configs[row.name]) \
                            or self._refresh_quarantine(row):
                        changed.append(row.name)
                except PlugboxError as exc:
                    _log.warning("refresh: plugin %s %s could not be applied in this process: "
                                 "%s", row.name, row.version, exc)
        if changed:
            _log.info("refresh: applied other processes' changes to %s", ", ".join(changed))
        return changed

    def _refresh_one(self, row: PluginRow, versions: list[VersionRow],
                     config: tuple[int, dict[str, Any]] | None) -> bool:
        """Apply ``row`` to this process; True when something changed."""
        hosted = self.get(row.name)
        if hosted is not None and row.name not in self._managed:
            return False  # hosted with add(): not the lifecycle's to change
        if not row.enabled:
            if hosted is not None and hosted.enabled:
                self._set_enabled(hosted, False)
                return True
            return False
        if self._safe_mode:
            return False
        active = next((v for v in versions if v.version == row.version), None)
        if active is None:
            return False
        path = Path(active.path)
        self.store.materialise(active)
        cfg = dict(config[1]) if config else {}
        if hosted is None:
            if row.state == "failed":
                return False  # the process that recorded it tried; start() retries
            self._load_hosted(path, cfg)
            return True
        if Path(hosted.source) != path or dict(hosted.config) != cfg:
            new = self._load_beside(hosted, path, cfg, True)
            try:
                self._replace_hosted(hosted, new)
            except BaseException:
                new.plugin.close()
                raise
            return True
        if not hosted.enabled:
            self._set_enabled(hosted, True)
            return True
        return False

    def _refresh_quarantine(self, row: PluginRow) -> bool:
        """Apply a quarantine or a release another process recorded (issue 10 §2); True when
        that changed something here. Only an opening this process knows is recorded is
        released, so a quarantine that opened here a moment ago is never undone by a read
        taken before it was written."""
        if row.name not in self._managed or self.get(row.name) is None:
            return False
        breaker = self._breakers.get((row.name, None))  # type: ignore[attr-defined]
        open_here = breaker is not None and breaker.state != "closed"
        if row.state == "quarantined" and not open_here:
            self._restore_recorded_quarantine(row)
            return True
        if row.state != "quarantined" and open_here and breaker is not None \
                and breaker.recorded:
            breaker.release()
            self._closed_breaker((row.name, None), breaker,  # type: ignore[attr-defined]
                                 actor=None)
            return True
        return False

    # -- the watcher -------------------------------------------------------------------------

    def _start_watch(self) -> None:
        if getattr(self, "_watching", False):
            return
        self._watching = True
        self.store.watch(self._on_generation, interval=self.sync_interval,
                         on_error=self._on_watch_error)

    def _on_generation(self, generation: int) -> None:
        try:
            self.refresh()
        except UsageError:
            pass  # closed meanwhile; close() stops the watch
        except PlugboxError as exc:
            _log.warning("refresh after generation %d failed: %s; retried at the next change",
                         generation, exc)

    @staticmethod
    def _on_watch_error(exc: StateError) -> None:
        _log.debug("lifecycle watch: %s", exc)

    def _materialise_active(self) -> None:
        """Materialise the active version of every enabled plugin this host lacks."""
        if not self.store.postgres:
            return
        with self.store.transaction() as tx:
            wanted = [v for row in tx.plugins() if row.enabled
                      for v in tx.versions(row.name) if v.version == row.version]
        for version in wanted:
            try:
                self.store.materialise(version)
            except StateError as exc:
                _log.warning("start: %s", exc)
