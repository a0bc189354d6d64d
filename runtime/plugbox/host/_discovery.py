"""Discovery: find plugins without running anything (issue 8 §4).

Plugins are found in three places, searched in this order:

1. explicit paths: a plugin directory, its ``plugbox.json``, or a ``.plugbox`` package;
2. plugin directories: each entry of the directory that is a plugin folder (holds a
   ``plugbox.json``) or a ``.plugbox`` file; a sub-directory that is neither is searched the
   same way, down to :attr:`DiscoveryLimits.max_depth` levels (so ``plugins/acme/echo/`` is
   found); names starting with ``.`` are skipped, other files ignored;
3. installed Python distributions, through the entry-point group ``plugbox.plugins``
   (:data:`ENTRY_POINT_GROUP`).

The entry-point convention. The entry point's value is ``package`` or ``package:resource``:

- ``package`` is a Python package (dotted) of the distribution;
- ``resource`` is a plugin folder or a ``.plugbox`` file directly inside that package's
  directory (a name of letters, digits, ``_`` and ``.``, as entry-point syntax allows);
  without it, the package's directory is itself the plugin folder.

For example, a distribution shipping ``acme_plugins/echo/plugbox.json`` (and its module) as
package data declares, in its ``pyproject.toml``::

    [project.entry-points."plugbox.plugins"]
    echo = "acme_plugins:echo"

The package is located on the file system (its import spec), never imported: no code of the
distribution runs. Resources inside zip files are not supported.

Discovery reads manifests only (``plugbox.json`` through the bounded manifest reader, packages
through the bounded package reader): nothing is hashed, compiled or run, and no signature is
checked; all that happens when a candidate is loaded (``Runtime.load``, ``PluginHost.add``).
A plugin that cannot be read is reported in :attr:`DiscoveryReport.problems` with its path and
a typed error, and the search goes on. The first plugin found under a name wins; a later one
with the same name is a problem naming both. Every search is bounded: the entries looked at
(directory entries and entry points together), the directory depth, and the file sizes (those
of the manifest and package readers).
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from .._errors import ManifestError, PackageError, PlugboxError, UsageError
from .._manifest import MANIFEST_FILENAME, Manifest, load_manifest
from ..trust._package import PACKAGE_SUFFIX, PackageLimits, is_package, read_package

if TYPE_CHECKING:
    from ._host import HostedPlugin

__all__ = [
    "ENTRY_POINT_GROUP",
    "AddedPlugins",
    "DiscoveredPlugin",
    "DiscoveryLimits",
    "DiscoveryProblem",
    "DiscoveryReport",
    "discover",
]

#: The entry-point group through which installed distributions ship plugins.
ENTRY_POINT_GROUP: Final = "plugbox.plugins"

Kind = Literal["directory", "manifest", "package"]

# What the entry-point value may name: ``package`` or ``package:resource`` (see the module
# docstring); the resource is one name inside the package directory.
_VALUE_RE: Final = re.compile(
    r"\s*(?P<package>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*(?::\s*(?P<resource>[\w.]+)\s*)?")


@dataclass(frozen=True)
class DiscoveryLimits:
    """Bounds of one :func:`discover` run.

    ``max_entries``: directory entries and entry points looked at, in all (the search stops
    there and says so in a problem); ``max_depth``: directory levels below a plugin directory
    searched for plugin folders (1: only its direct entries); ``package``: the caps of the
    package reader (sizes, members, compression ratio). Manifests are capped by the manifest
    reader (``plugbox._manifest.MAX_MANIFEST_BYTES``, structure and schema-step bounds).
    """

    max_entries: int = 10_000
    max_depth: int = 3
    package: PackageLimits = field(default_factory=PackageLimits)

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_depth"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UsageError(f"DiscoveryLimits.{name} must be a positive integer, not "
                                 f"{value!r}")


@dataclass(frozen=True)
class DiscoveredPlugin:
    """A plugin discovery found: its validated manifest and where it is.

    ``source`` is what to load (``Runtime.load(candidate.source)``, ``PluginHost.add``): the
    plugin directory, the manifest file, or the ``.plugbox`` package. ``kind`` says which.
    ``origin`` says how it was found (``path``, ``directory /abs/dir`` or ``entry point NAME
    of DIST VERSION``); ``distribution`` is the distribution's name for an entry point, else
    None. For a package, ``manifest.path`` and ``manifest.directory`` are the package file and
    ``manifest.module_path`` is the module's member inside it (``pkg.plugbox/plugin.wasm``).
    Nothing has been hashed, verified or compiled yet.
    """

    name: str
    version: str
    source: Path
    kind: Kind
    origin: str
    manifest: Manifest = field(repr=False, compare=False)
    distribution: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The candidate as JSON-ready data (what ``plugbox discover --json`` prints)."""
        return {"name": self.name, "version": self.version, "source": str(self.source),
                "kind": self.kind, "origin": self.origin, "distribution": self.distribution,
                "hooks": list(self.manifest.hooks)}


@dataclass(frozen=True)
class DiscoveryProblem:
    """Something discovery could not use: ``path`` (the file or directory at fault), how it was
    found (``origin``, as for :class:`DiscoveredPlugin`) and why: ``error`` is the typed error
    (:class:`~plugbox.ManifestError` for a missing, unreadable, invalid or duplicate manifest
    and for an entry point that names no plugin, :class:`~plugbox.PackageError` for a broken
    package, :class:`~plugbox.UsageError` for a path or directory that cannot be read)."""

    path: Path
    origin: str
    error: PlugboxError

    @property
    def reason(self) -> str:
        """The error's message."""
        return self.error.message

    def to_json(self) -> dict[str, Any]:
        """The problem as JSON-ready data."""
        return {"path": str(self.path), "origin": self.origin,
                "error": type(self.error).__name__, "message": self.error.message}


@dataclass(frozen=True)
class DiscoveryReport:
    """What :func:`discover` found: the candidates in search order and the problems met."""

    candidates: tuple[DiscoveredPlugin, ...]
    problems: tuple[DiscoveryProblem, ...]

    @property
    def ok(self) -> bool:
        """True when there was no problem."""
        return not self.problems

    def get(self, name: str) -> DiscoveredPlugin | None:
        """The candidate named ``name``, if one was found."""
        return next((c for c in self.candidates if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``plugbox discover --json`` prints)."""
        return {"ok": self.ok, "candidates": [c.to_json() for c in self.candidates],
                "problems": [p.to_json() for p in self.problems]}


@dataclass(frozen=True)
class AddedPlugins:
    """What ``PluginHost.add_discovered`` did: the plugins it added, in the order found, and
    every problem: the discovery report's own, then the candidates the host refused (the
    typed error of ``PluginHost.add``: a failed signature check, an extension point the host
    does not offer, ...) and names of the enable list that were not found."""

    plugins: tuple[HostedPlugin, ...]
    problems: tuple[DiscoveryProblem, ...]

    @property
    def ok(self) -> bool:
        """True when there was no problem."""
        return not self.problems


def discover(
    directories: Iterable[str | os.PathLike[str]] = (),
    *,
    paths: Iterable[str | os.PathLike[str]] = (),
    entry_points: bool = False,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    limits: DiscoveryLimits = DiscoveryLimits(),
) -> DiscoveryReport:
    """Find plugins in ``paths`` (each one plugin), ``directories`` (plugin directories) and,
    with ``entry_points``, in installed distributions declaring entry points in the
    ``plugbox.plugins`` group (see the module docstring for the convention). ``search_path``
    is where distributions are looked for (default ``sys.path``).

    Reads manifests only; never raises for a broken plugin (it becomes a
    :class:`DiscoveryProblem`), only :class:`~plugbox.UsageError` for invalid arguments.
    """
    if isinstance(directories, (str, os.PathLike)) or isinstance(paths, (str, os.PathLike)):
        raise UsageError("discover() takes lists of directories and paths, not a single path: "
                         "discover([dir]) or discover(paths=[path])")
    run = _Run(limits)
    for path in paths:
        run.plugin(Path(path), "path")
    for directory in directories:
        run.directory(Path(directory))
    if entry_points:
        run.entry_points(search_path)
    return DiscoveryReport(tuple(run.candidates), tuple(run.problems))


class _OutOfEntries(Exception):
    """The run looked at its ``max_entries``."""


class _Run:
    """One discovery run's state: what was found, under which names and real paths."""

    def __init__(self, limits: DiscoveryLimits) -> None:
        self.limits = limits
        self.candidates: list[DiscoveredPlugin] = []
        self.problems: list[DiscoveryProblem] = []
        self._names: dict[str, DiscoveredPlugin] = {}
        self._seen: set[Path] = set()
        self._entries = 0
        self._stopped = False

    # -- bookkeeping -----------------------------------------------------------------------

    def _count(self, where: Path, origin: str) -> None:
        self._entries += 1
        if self._entries > self.limits.max_entries:
            if not self._stopped:
                self._stopped = True
                self.problem(where, origin, UsageError(
                    f"{where}: discovery stopped after looking at {self.limits.max_entries} "
                    "entries (DiscoveryLimits.max_entries); later plugins were not found. "
                    "Split the plugin directories, or raise the limit."))
            raise _OutOfEntries

    def problem(self, path: Path, origin: str, error: PlugboxError) -> None:
        self.problems.append(DiscoveryProblem(path, origin, error))

    def _found(self, candidate: DiscoveredPlugin) -> None:
        first = self._names.get(candidate.name)
        if first is not None:
            self.problem(candidate.source, candidate.origin, ManifestError(
                f"{candidate.source}: plugin {candidate.name!r} was found already at "
                f"{first.source} ({first.origin}); plugin names must be unique, so this one "
                "is left out. Remove one of them, or rename it in its plugbox.json.",
                plugin=candidate.name))
            return
        self._names[candidate.name] = candidate
        self.candidates.append(candidate)

    # -- one plugin ------------------------------------------------------------------------

    def plugin(self, path: Path, origin: str, distribution: str | None = None) -> None:
        """Read the plugin at ``path`` (folder, manifest file or package)."""
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:
            self.problem(path, origin, UsageError(f"{path}: cannot be resolved: {exc}"))
            return
        if real in self._seen:  # reached twice (a link, or given twice): the same plugin
            return
        self._seen.add(real)
        kind: Kind = "package" if is_package(path) else "manifest" if path.is_file() \
            else "directory"
        try:
            manifest = self._package(path) if kind == "package" else load_manifest(path)
        except (ManifestError, PackageError, UsageError) as exc:
            self.problem(path, origin, exc)
            return
        self._found(DiscoveredPlugin(manifest.name, manifest.version, path, kind, origin,
                                     manifest, distribution))

    def _package(self, path: Path) -> Manifest:
        try:
            members = read_package(path, self.limits.package)
        except PackageError as exc:
            if str(path) in exc.message:
                raise
            raise PackageError(f"{path}: {exc.message}", entry=exc.entry,
                               plugin=exc.plugin) from None
        # The manifest reader takes files: the manifest alone goes to a private directory.
        with tempfile.TemporaryDirectory(prefix="plugbox-discover-") as tmp:
            file = Path(tmp).resolve() / MANIFEST_FILENAME
            file.write_bytes(members[MANIFEST_FILENAME])
            try:
                manifest = load_manifest(file)
            except ManifestError as exc:
                raise ManifestError(exc.message.replace(str(file), f"{path} ({MANIFEST_FILENAME})"),
                                    plugin=exc.plugin, json_path=exc.json_path) from None
        member = manifest.module_path.relative_to(manifest.directory)
        return dataclasses.replace(manifest, path=path, directory=path,
                                   module_path=path / member)

    # -- plugin directories ----------------------------------------------------------------

    def directory(self, root: Path) -> None:
        """Search the plugin directory ``root``."""
        origin = f"directory {root}"
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a directory"
            self.problem(root, origin, UsageError(
                f"{root}: {what}; a plugin directory holds plugin folders and .plugbox files"))
            return
        if (root / MANIFEST_FILENAME).exists():  # pointed at a plugin folder itself
            self.plugin(root, origin)
            return
        try:
            self._walk(root, origin, 1)
        except _OutOfEntries:
            pass

    def _walk(self, directory: Path, origin: str, depth: int) -> None:
        for entry in self._entries_of(directory, origin):
            self._count(entry, origin)
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if (entry / MANIFEST_FILENAME).exists() or (entry / MANIFEST_FILENAME).is_symlink():
                    self.plugin(entry, origin)
                elif depth < self.limits.max_depth:
                    self._walk(entry, origin, depth + 1)
            elif entry.name.endswith(PACKAGE_SUFFIX):
                self.plugin(entry, origin)

    def _entries_of(self, directory: Path, origin: str) -> list[Path]:
        """The directory's entries, sorted (a stable order), at most as many as the run may
        still look at (so a huge directory is never listed whole)."""
        left = self.limits.max_entries - self._entries + 1
        names: list[str] = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    names.append(entry.name)
                    if len(names) >= left:
                        break
        except OSError as exc:
            self.problem(directory, origin, UsageError(
                f"{directory}: cannot list the directory: {exc.strerror or exc}"))
            return []
        return [directory / name for name in sorted(names)]

    # -- entry points ----------------------------------------------------------------------

    def entry_points(self, search_path: Sequence[str | os.PathLike[str]] | None) -> None:
        """Search installed distributions for ``plugbox.plugins`` entry points; a
        distribution installed twice counts once, the first on the path (as
        importlib.metadata.entry_points does)."""
        where = None if search_path is None else [os.fspath(p) for p in search_path]
        dists = (importlib.metadata.distributions() if where is None
                 else importlib.metadata.distributions(path=where))
        seen: set[str] = set()
        try:
            for dist in dists:
                location = Path(str(dist.locate_file("")))
                try:
                    name = _dist_name(dist)
                    found = dist.entry_points.select(group=ENTRY_POINT_GROUP)
                except Exception as exc:  # noqa: BLE001 - a broken installation, in any way
                    # importlib.metadata parses third-party files and fails with whatever
                    # the parser met (TypeError for a line without "="): one typed problem.
                    origin = f"distribution {_dist_name(dist)} at {location}"
                    self._count(location, origin)
                    self.problem(location, origin, ManifestError(
                        f"{origin}: its entry points cannot be read ({exc}); reinstall it"))
                    continue
                key = re.sub(r"[-_.]+", "-", name).lower()
                if key in seen:
                    continue
                seen.add(key)
                for ep in found:
                    origin = f"entry point {ep.name!r} of {name} {dist.version}"
                    self._count(location, origin)
                    try:
                        path = _resolve(ep.value, where)
                    except ManifestError as exc:
                        self.problem(location, origin, ManifestError(
                            f"{origin}: {exc.message}", plugin=exc.plugin))
                        continue
                    self.plugin(path, origin, name)
        except _OutOfEntries:
            pass


def _dist_name(dist: importlib.metadata.Distribution) -> str:
    try:
        name = dist.metadata["Name"]
    except KeyError:  # newer Pythons raise for a missing field
        name = None
    return name or "?"


def _resolve(value: str, where: list[str] | None) -> Path:
    """The plugin path an entry-point value names, found without importing anything."""
    match = _VALUE_RE.fullmatch(value)
    if match is None:
        raise ManifestError(
            f"value {value!r} is not 'package' or 'package:resource' (a Python package of the "
            "distribution, and a plugin folder or .plugbox file inside it)")
    package, resource = match["package"], match["resource"]
    top, *rest = package.split(".")
    try:
        if where is None:
            spec = importlib.util.find_spec(top)
        else:
            spec = importlib.machinery.PathFinder.find_spec(top, where)
    except (ImportError, ValueError) as exc:
        raise ManifestError(f"cannot locate package {top!r}: {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise ManifestError(f"package {top!r} is not installed as a package directory (named "
                            f"by {value!r})")
    for location in spec.submodule_search_locations:
        directory = Path(location).joinpath(*rest)
        target = directory / resource if resource else directory
        if target.exists() or target.is_symlink():
            return target
    wanted = f"{resource!r} in package {package!r}" if resource else f"package {package!r}"
    raise ManifestError(f"{wanted} does not exist on the file system (named by {value!r}); "
                        "ship the plugin folder or .plugbox file as package data")
