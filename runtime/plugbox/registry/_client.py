"""The registry client in the host (issue 12 §2, §3): search, install, upgrade, outdated,
audit and update checks against registries verified with TUF (``tuf.ngclient.Updater``).

Registries are configured per host state dir in ``<state_dir>/registries/registries.json``
(an ordered list of ``{"name", "url"}``); each one's trusted root and metadata cache live in
``<state_dir>/registries/<name>/metadata/``, its downloads in ``.../targets/``. Nothing a
registry serves is used before :meth:`RegistryClient.refresh` has brought the TUF metadata up
to date (root rotation, timestamp, snapshot, targets); every listing, index and package is
then downloaded as a TUF target, its length and hash checked against the signed metadata.
A plugin name is taken from the first registry in the order that has it (a later registry
cannot shadow it).

Compatibility first: a version is offered only when the host can run it (ABI, ``host``
specifier, the versions of the extension points it implements that the host declares) and
its dependencies resolve (with ``resolvelib``) among compatible versions and the installed
plugins. Yanked versions are left out unless asked for with ``==VERSION`` (then with a
warning). Pinned plugins are never upgraded by :meth:`RegistryClient.upgrade_all` or
:meth:`RegistryClient.check_updates`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import resolvelib
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .._errors import PlugboxError, UsageError
from ._errors import (
    ArbitraryPackageError,
    EndlessDataError,
    FreezeAttackError,
    MixAndMatchError,
    RegistryError,
    ResolutionError,
    RollbackAttackError,
    UpdateAttackError,
)
from ._tuf import INDEX_TARGET

if TYPE_CHECKING:
    from ..host._host import PluginHost
    from ..host._lifecycle import PermissionDiff, PluginInfo, UpgradeOutcome

__all__ = [
    "Advisory",
    "Candidate",
    "InstallResult",
    "Registry",
    "RegistryClient",
    "UpdateNotice",
    "schedule_update_checks",
]

_log = logging.getLogger("plugbox.registry")

_NAME_RE: Final = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_REQ_RE: Final = re.compile(r"\s*([a-z][a-z0-9._-]{0,63})\s*(.*?)\s*")
#: Bounds on what a registry may make the client read.
MAX_ROOT_BYTES: Final = 512 * 1024
MAX_TIMESTAMP_BYTES: Final = 16 * 1024
MAX_SNAPSHOT_BYTES: Final = 4 * 1024 * 1024
MAX_TARGETS_BYTES: Final = 16 * 1024 * 1024
MAX_INDEX_BYTES: Final = 64 * 1024 * 1024
MAX_LISTING_BYTES: Final = 4 * 1024 * 1024
MAX_PACKAGE_BYTES: Final = 256 * 1024 * 1024
MAX_REGISTRIES: Final = 32
#: Seconds without a byte before a download is abandoned.
SOCKET_TIMEOUT: Final = 10


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """A configured registry: ``name``, base ``url`` (TUF metadata at ``URL/tuf/metadata/``,
    targets at ``URL/tuf/targets/``)."""

    name: str
    url: str

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"name": self.name, "url": self.url}


@dataclass(frozen=True)
class Candidate:
    """A published version: where it is (``registry``, TUF ``target``), what its manifest
    says (``manifest``: the facts in its signed target info), ``yanked`` (with
    ``yank_reason``), and ``incompatible``: why this host cannot run it (None: it can)."""

    registry: str
    name: str
    version: str
    target: str
    publisher: str | None
    manifest: Mapping[str, Any] = field(repr=False)
    yanked: bool = False
    yank_reason: str | None = None
    incompatible: str | None = None
    installed: bool = False

    @property
    def requires(self) -> dict[str, str]:
        """The plugins this version requires, name -> version specifier."""
        raw = self.manifest.get("requires") or {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"registry": self.registry, "name": self.name, "version": self.version,
                "target": self.target, "publisher": self.publisher,
                "description": self.manifest.get("description"),
                "requires": self.requires, "yanked": self.yanked,
                "yank_reason": self.yank_reason, "incompatible": self.incompatible}


@dataclass(frozen=True)
class Advisory:
    """A security advisory of a plugin's listing: ``id``, ``affected`` (a version
    specifier), ``severity``, ``fixed_in``, ``text``."""

    plugin: str
    id: str
    affected: str
    severity: str
    fixed_in: str | None
    text: str

    def affects(self, version: str) -> bool:
        """True when ``version`` is in ``affected``."""
        try:
            return SpecifierSet(self.affected).contains(Version(version), prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            return False

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"plugin": self.plugin, "id": self.id, "affected": self.affected,
                "severity": self.severity, "fixed_in": self.fixed_in, "text": self.text}


@dataclass(frozen=True)
class InstallResult:
    """What :meth:`RegistryClient.install` / :meth:`RegistryClient.upgrade` did, per plugin
    in install order: ``actions`` of ``{"plugin", "from", "to", "status"}`` (status
    ``installed``, ``upgraded``, ``unchanged``, ``needs-consent``, ``rolled-back``), and
    ``warnings`` (a yanked version installed because it was pinned exactly)."""

    actions: tuple[Mapping[str, Any], ...]
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every step reached its new version (or had it already)."""
        return all(a["status"] in ("installed", "upgraded", "unchanged") for a in self.actions)

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"ok": self.ok, "actions": [dict(a) for a in self.actions],
                "warnings": list(self.warnings)}


@dataclass(frozen=True)
class UpdateNotice:
    """One finding of :meth:`RegistryClient.check_updates`: ``kind`` ``update`` (``available``
    is newer, compatible and not yanked; ``pinned`` says whether the pin holds it) or
    ``advisory`` (``advisory`` affects the installed version; ``disabled`` when the policy
    disabled the plugin). ``upgraded``: the lifecycle status of the upgrade a check with
    ``upgrade=True`` made (``upgraded``, ``needs-consent``, ``rolled-back``, ``failed: ...``),
    None when it made none."""

    kind: str
    plugin: str
    installed: str
    available: str | None = None
    pinned: bool = False
    advisory: Advisory | None = None
    disabled: bool = False
    upgraded: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"kind": self.kind, "plugin": self.plugin, "installed": self.installed,
                "available": self.available, "pinned": self.pinned,
                "advisory": self.advisory.to_json() if self.advisory else None,
                "disabled": self.disabled, "upgraded": self.upgraded}


# -- TUF errors ---------------------------------------------------------------------------------


def _classify(exc: Exception, registry: str, doing: str) -> RegistryError:
    """The typed error for what python-tuf raised while ``doing``."""
    from tuf.api import exceptions as tex

    text = str(exc) or type(exc).__name__
    where = f"registry {registry!r}: {doing}: "
    if isinstance(exc, tex.DownloadLengthMismatchError):
        return EndlessDataError(
            f"{where}the registry sent more data than allowed ({text}); refused before it was "
            f"used (endless-data attack, or a file larger than its signed length)",
            registry=registry)
    if isinstance(exc, tex.ExpiredMetadataError):
        return FreezeAttackError(
            f"{where}the registry's metadata has expired ({text}); it is serving a frozen "
            f"state (freeze attack, or its timestamp is not being refreshed: ask its operator "
            f"to run refresh_timestamp)", registry=registry)
    if isinstance(exc, tex.BadVersionNumberError):
        if "must be >=" in text or re.search(r"Expected \S+\.json version", text):
            return RollbackAttackError(
                f"{where}the registry served metadata older than what this host trusts "
                f"already ({text}); refused (rollback attack)", registry=registry)
        return MixAndMatchError(
            f"{where}the registry served metadata versions that do not belong together "
            f"({text}); refused (mix-and-match attack)", registry=registry)
    if isinstance(exc, tex.LengthOrHashMismatchError):
        if doing.startswith("download"):
            return ArbitraryPackageError(
                f"{where}the file's length or hash differs from its signed target info "
                f"({text}); refused (arbitrary-package attack)", registry=registry)
        return MixAndMatchError(f"{where}metadata does not match its signed hash ({text}); "
                                f"refused (mix-and-match attack)", registry=registry)
    if isinstance(exc, tex.UnsignedMetadataError):
        return UpdateAttackError(f"{where}metadata is not signed by the keys this host trusts "
                                 f"({text}); refused", registry=registry)
    if isinstance(exc, tex.DownloadHTTPError) and exc.status_code == 404 \
            and doing.startswith("download"):
        return RegistryError(f"{where}the registry does not have the file ({text})",
                             registry=registry)
    if isinstance(exc, tex.DownloadError):
        return RegistryError(f"{where}cannot reach the registry ({type(exc).__name__}: "
                             f"{text}); check the URL and the network", registry=registry)
    if isinstance(exc, tex.RepositoryError):
        return UpdateAttackError(f"{where}the registry's metadata is refused ({text})",
                                 registry=registry)
    return RegistryError(f"{where}{type(exc).__name__}: {text}", registry=registry)


@contextlib.contextmanager
def _tuf_errors(registry: str, doing: str) -> Iterator[None]:
    from tuf.api import exceptions as tex

    try:
        yield
    except (tex.RepositoryError, tex.DownloadError) as exc:
        raise _classify(exc, registry, doing) from None
    except (ValueError, KeyError, TypeError) as exc:  # malformed metadata (python-tuf's own)
        raise UpdateAttackError(f"registry {registry!r}: {doing}: malformed metadata "
                                f"({type(exc).__name__}: {exc})", registry=registry) from None
    except OSError as exc:
        raise RegistryError(f"registry {registry!r}: {doing}: {exc}", registry=registry) from None


# -- compatibility ------------------------------------------------------------------------------


def incompatibility(manifest: Mapping[str, Any], host: PluginHost | None, *,
                    strict_points: bool = True) -> str | None:
    """Why ``host`` cannot run a plugin with ``manifest`` (its facts from a target's custom
    info), or None. ``strict_points``: an implemented point the host does not declare is a
    reason (False: it is left to the host, as the CLI does with stand-ins)."""
    from .._manifest import abi_compatible
    from .._version import __version__
    from ..engine import _abispec

    abi = manifest.get("abi")
    offered = host.runtime.abi_version if host is not None else _abispec.ABI_VERSION
    try:
        if not isinstance(abi, str) or not abi_compatible(abi, offered):
            return f"needs ABI {abi}, this host implements ABI {offered}"
    except ValueError:
        return f"declares an invalid ABI {abi!r}"
    spec = manifest.get("host")
    if spec is not None:
        try:
            if not SpecifierSet(str(spec)).contains(Version(__version__), prereleases=True):
                return f"supports plugbox {spec}, this is plugbox {__version__}"
        except (InvalidSpecifier, InvalidVersion):
            return f"declares an invalid host specifier {spec!r}"
    points = host.points if host is not None else {}
    implements = manifest.get("implements") or {}
    if isinstance(implements, dict):
        for point, impl in implements.items():
            declared = points.get(point)
            versions = impl.get("versions", "") if isinstance(impl, dict) else ""
            if declared is None:
                if strict_points and host is not None:
                    return f"implements extension point {point!r}, which this host does not " \
                           f"declare"
                continue
            try:
                if versions and not SpecifierSet(versions).contains(
                        Version(declared.version), prereleases=True):
                    return f"implements {point} {versions}, this host declares {point} " \
                           f"{declared.version}"
            except (InvalidSpecifier, InvalidVersion):
                return f"declares an invalid version specifier {versions!r} for {point!r}"
    return None


def parse_requirement(text: str) -> tuple[str, SpecifierSet]:
    """``NAME``, ``NAME==VERSION`` or ``NAME SPEC`` -> (name, specifier); UsageError when
    malformed."""
    match = _REQ_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise UsageError(f"not a plugin requirement: {text!r}; give NAME, NAME==VERSION or "
                         f"NAME>=X,<Y")
    try:
        return match.group(1), SpecifierSet(match.group(2))
    except InvalidSpecifier:
        raise UsageError(f"{text!r}: {match.group(2)!r} is not a version specifier (such as "
                         f"==1.2.0 or >=1,<2)") from None


def _exact(spec: SpecifierSet) -> str | None:
    items = list(spec)
    if len(items) == 1 and items[0].operator in ("==", "===") and "*" not in items[0].version:
        return items[0].version
    return None


# -- the resolver (resolvelib) ------------------------------------------------------------------


@dataclass(frozen=True)
class _Req:
    name: str
    spec: SpecifierSet
    parent: str | None  # who wants it ("name version"), None: the command


class _Provider(resolvelib.AbstractProvider[_Req, Candidate, str]):
    """resolvelib's provider over the registries' compatible versions and the installed
    plugins (preferred for dependencies, so they move only when they must)."""

    def __init__(self, catalog: Callable[[str], list[Candidate]],
                 installed: Mapping[str, PluginInfo], upgrade: set[str]) -> None:
        self._catalog = catalog
        self._installed = installed
        self._upgrade = upgrade

    def identify(self, requirement_or_candidate: _Req | Candidate) -> str:
        return requirement_or_candidate.name

    def get_preference(self, identifier: str, resolutions: Any, candidates: Any,
                       information: Any, backtrack_causes: Any) -> Any:
        return identifier

    def _all(self, identifier: str) -> list[Candidate]:
        info = self._installed.get(identifier)
        out = [c for c in self._catalog(identifier) if c.incompatible is None]
        if info is not None:
            mine = Candidate("installed", identifier, info.version, "", None,
                             {"requires": dict(info.requires)}, installed=True)
            if info.pinned:
                return [mine]
            out = [c for c in out if c.version != info.version]
            out.append(mine)
        out.sort(key=lambda c: Version(c.version), reverse=True)
        if info is not None and identifier not in self._upgrade:
            out.sort(key=lambda c: not c.installed)  # keep what is installed when it fits
        return out

    def find_matches(self, identifier: str, requirements: Mapping[str, Iterator[_Req]],
                     incompatibilities: Mapping[str, Iterator[Candidate]]) -> list[Candidate]:
        reqs = list(requirements[identifier])
        bad = {c.version for c in incompatibilities[identifier]}
        pinned = {v for r in reqs if r.parent is None and (v := _exact(r.spec))}
        out = []
        for cand in self._all(identifier):
            if cand.version in bad:
                continue
            if cand.yanked and cand.version not in pinned:
                continue
            if all(r.spec.contains(Version(cand.version), prereleases=True) for r in reqs):
                out.append(cand)
        return out

    def is_satisfied_by(self, requirement: _Req, candidate: Candidate) -> bool:
        return requirement.spec.contains(Version(candidate.version), prereleases=True)

    def get_dependencies(self, candidate: Candidate) -> list[_Req]:
        out = []
        for name, spec in candidate.requires.items():
            try:
                out.append(_Req(name, SpecifierSet(spec), f"{candidate.name} "
                                f"{candidate.version}"))
            except InvalidSpecifier:
                continue
        return out


# -- the client ---------------------------------------------------------------------------------


class RegistryClient:
    """The registries configured for the host state dir ``state_dir`` and the operations
    over them. ``host`` (optional for configuration) is the :class:`plugbox.PluginHost`
    plugins are installed into, through its lifecycle. ``strict_points``: see
    :func:`incompatibility`. ``before_install(path)`` is called with each downloaded,
    verified package before the lifecycle installs it (the CLI declares stand-in points
    there)."""

    def __init__(self, state_dir: str | os.PathLike[str], host: PluginHost | None = None, *,
                 strict_points: bool = True,
                 before_install: Callable[[Path], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.strict_points = strict_points
        self.before_install = before_install
        self._dir = self.state_dir / "registries"
        self._updaters: dict[str, Any] = {}
        self._indexes: dict[str, dict[str, Any]] = {}
        self._listings: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._lock = threading.RLock()

    # -- configuration -----------------------------------------------------------------------

    def registries(self) -> list[Registry]:
        """The configured registries, in order."""
        file = self._dir / "registries.json"
        if not file.exists():
            return []
        try:
            raw = json.loads(file.read_bytes()[:1 << 20])
            return [Registry(str(r["name"]), str(r["url"])) for r in raw["registries"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{file} is unreadable ({exc}); fix it or remove it and add "
                                f"the registries again") from None

    def _save(self, registries: Sequence[Registry]) -> None:
        from ._tuf import _atomic_write

        _atomic_write(self._dir / "registries.json", json.dumps(
            {"registries": [r.to_json() for r in registries]}, indent=2).encode())

    def add_registry(self, name: str, url: str, root: bytes, *,
                     position: int | None = None) -> Registry:
        """Configure registry ``name`` at ``url`` trusting the TUF ``root`` metadata (the
        bytes of a ``root.json`` obtained out of band, e.g. from the registry's operator).
        ``position`` (0 first) places it in the order; default last."""
        from tuf.api.metadata import Metadata
        from tuf.api._payload import Root

        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise UsageError(f"not a registry name (a-z, 0-9, . _ -, starting with a "
                             f"letter): {name!r}")
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise UsageError(f"not an http(s) URL: {url!r}")
        if not isinstance(root, bytes) or len(root) > MAX_ROOT_BYTES:
            raise UsageError(f"the root metadata must be at most {MAX_ROOT_BYTES} bytes")
        try:
            md = Metadata[Root].from_bytes(root)
            if not isinstance(md.signed, Root):
                raise ValueError("not root metadata")
            md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
        except Exception as exc:
            raise UsageError(f"registry {name!r}: the root metadata is not a valid, self-signed "
                             f"TUF root ({type(exc).__name__}: {exc})") from None
        with self._lock:
            current = [r for r in self.registries() if r.name != name]
            if len(current) >= MAX_REGISTRIES:
                raise UsageError(f"at most {MAX_REGISTRIES} registries may be configured")
            meta = self._dir / name / "metadata"
            if meta.exists():
                shutil.rmtree(self._dir / name)
            meta.mkdir(parents=True)
            (meta / "root.json").write_bytes(root)
            entry = Registry(name, url.rstrip("/"))
            current.insert(len(current) if position is None else max(0, position), entry)
            self._save(current)
            self._updaters.pop(name, None)
            return entry

    def remove_registry(self, name: str) -> None:
        """Forget registry ``name`` and its trusted metadata."""
        with self._lock:
            current = self.registries()
            if not any(r.name == name for r in current):
                raise UsageError(f"no registry {name!r} is configured (configured: "
                                 f"{', '.join(r.name for r in current) or 'none'})")
            self._save([r for r in current if r.name != name])
            shutil.rmtree(self._dir / name, ignore_errors=True)
            self._updaters.pop(name, None)

    # -- TUF ---------------------------------------------------------------------------------

    def _updater(self, reg: Registry) -> Any:
        from tuf.ngclient.config import UpdaterConfig
        from tuf.ngclient.updater import Updater
        from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

        config = UpdaterConfig(root_max_length=MAX_ROOT_BYTES,
                               timestamp_max_length=MAX_TIMESTAMP_BYTES,
                               snapshot_max_length=MAX_SNAPSHOT_BYTES,
                               targets_max_length=MAX_TARGETS_BYTES,
                               app_user_agent="plugbox")
        base = self._dir / reg.name
        with _tuf_errors(reg.name, "load the trusted root"):
            return Updater(str(base / "metadata"), f"{reg.url}/tuf/metadata/",
                           str(base / "targets"), f"{reg.url}/tuf/targets/",
                           fetcher=Urllib3Fetcher(socket_timeout=SOCKET_TIMEOUT,
                                                  app_user_agent="plugbox"),
                           config=config, bootstrap=None)

    def refresh(self) -> None:
        """Bring every registry's TUF metadata up to date (a fresh Updater each time, so the
        checks start from the trusted state on disk); cached listings are dropped."""
        with self._lock:
            self._indexes.clear()
            self._listings.clear()
            regs = self.registries()
            if not regs:
                raise RegistryError("no registry is configured; add one with `plugbox "
                                    "registries add NAME URL --root root.json`")
            for reg in regs:
                updater = self._updater(reg)
                with _tuf_errors(reg.name, "refresh the TUF metadata"):
                    updater.refresh()
                self._updaters[reg.name] = updater

    def _fetch(self, registry: str, target: str, cap: int) -> bytes:
        """Target ``target`` of ``registry``, verified (length, hash) against the refreshed
        metadata; refused when its signed length exceeds ``cap``."""
        if registry not in self._updaters:
            self.refresh()
        updater = self._updaters[registry]
        with _tuf_errors(registry, f"look up {target}"):
            info = updater.get_targetinfo(target)
        if info is None:
            raise RegistryError(f"registry {registry!r} has no signed target {target}",
                                registry=registry)
        if info.length > cap:
            raise EndlessDataError(f"registry {registry!r}: {target} is {info.length} bytes, "
                                   f"more than the {cap} allowed; refused", registry=registry)
        dest = self._dir / registry / "targets" / f".download-{uuid.uuid4().hex}"
        with _tuf_errors(registry, f"download {target}"):
            cached = updater.find_cached_target(info)
            path = cached or updater.download_target(info, str(dest))
            data = Path(path).read_bytes()
        if cached is None:
            with contextlib.suppress(OSError):
                os.unlink(dest)
        return data

    def _index(self, registry: str) -> dict[str, Any]:
        with self._lock:
            if registry not in self._indexes:
                data = self._fetch(registry, INDEX_TARGET, MAX_INDEX_BYTES)
                try:
                    doc = json.loads(data)
                    if not isinstance(doc.get("plugins"), dict):
                        raise ValueError("no plugins object")
                except ValueError as exc:
                    raise RegistryError(f"registry {registry!r}: its index is malformed "
                                        f"({exc})", registry=registry) from None
                self._indexes[registry] = doc
            return self._indexes[registry]

    def listing(self, name: str) -> dict[str, Any] | None:
        """Plugin ``name``'s listing (description, tags, advisories) from the registry that
        has it, or None."""
        registry = self._where(name)
        if registry is None:
            return None
        key = (registry, name)
        with self._lock:
            if key not in self._listings:
                entry = self._index(registry)["plugins"][name]
                doc = None
                if entry.get("listing"):
                    try:
                        doc = json.loads(self._fetch(registry, str(entry["listing"]),
                                                     MAX_LISTING_BYTES))
                    except ValueError:
                        doc = None
                self._listings[key] = doc if isinstance(doc, dict) else None
            return self._listings[key]

    # -- catalog -----------------------------------------------------------------------------

    def _where(self, name: str) -> str | None:
        if not self._updaters:
            self.refresh()
        for reg in self.registries():
            if name in self._index(reg.name)["plugins"]:
                return reg.name
        return None

    def versions(self, name: str) -> list[Candidate]:
        """Every published version of ``name`` (from the first registry in order that has
        it), newest first, each with ``incompatible`` set when this host cannot run it."""
        registry = self._where(name)
        if registry is None:
            return []
        entry = self._index(registry)["plugins"][name]
        out = []
        for version, item in (entry.get("versions") or {}).items():
            try:
                Version(version)
            except InvalidVersion:
                continue
            custom = item.get("custom") or {}
            manifest = custom.get("manifest") or {}
            out.append(Candidate(
                registry, name, version, str(item.get("target")), entry.get("publisher"),
                manifest, bool(custom.get("yanked")), custom.get("yank_reason"),
                incompatibility(manifest, self.host, strict_points=self.strict_points)))
        out.sort(key=lambda c: Version(c.version), reverse=True)
        return out

    def search(self, text: str) -> list[dict[str, Any]]:
        """Plugins whose name, description or tags contain ``text`` (case-insensitive; ""
        lists all) and that have a version this host can run: one entry per plugin with its
        newest such version."""
        if not isinstance(text, str) or len(text) > 1000:
            raise UsageError("the search text must be a string of at most 1000 characters")
        self.refresh()
        needle = text.lower().strip()
        seen: set[str] = set()
        hits = []
        for reg in self.registries():
            for name in sorted(self._index(reg.name)["plugins"]):
                if name in seen:
                    continue
                seen.add(name)
                usable = [c for c in self.versions(name) if c.incompatible is None
                          and not c.yanked]
                if not usable:
                    continue
                best = usable[0]
                entry = self._index(reg.name)["plugins"][name]
                description = str(entry.get("description") or
                                  best.manifest.get("description") or "")
                raw_tags = entry.get("tags") or best.manifest.get("tags") or []
                tags = [str(t) for t in raw_tags][:32] if isinstance(raw_tags, list) else []
                haystack = " ".join([name, description, *tags]).lower()
                if needle in haystack:
                    hits.append({"name": name, "version": best.version, "registry": reg.name,
                                 "publisher": best.publisher, "description": description,
                                 "tags": tags})
        return hits

    def advisories(self, name: str) -> list[Advisory]:
        """The advisories of ``name``'s listing."""
        out = []
        for raw in ((self.listing(name) or {}).get("advisories") or [])[:1000]:
            if isinstance(raw, dict) and raw.get("affected") is not None:
                out.append(Advisory(name, str(raw.get("id", "?")), str(raw["affected"]),
                                    str(raw.get("severity", "unknown")),
                                    None if raw.get("fixed_in") is None
                                    else str(raw["fixed_in"]), str(raw.get("text", ""))))
        return out

    # -- resolution and installation -------------------------------------------------------

    def _installed(self) -> dict[str, PluginInfo]:
        return {i.name: i for i in self._need_host().installed()}

    def _need_host(self) -> PluginHost:
        if self.host is None:
            raise UsageError("this operation needs the PluginHost to install into: "
                             "RegistryClient(state_dir, host)")
        return self.host

    def resolve(self, requirements: Sequence[str], *, upgrade: Sequence[str] = ()
                ) -> tuple[list[Candidate], list[str]]:
        """The versions to install for ``requirements`` (``NAME[SPEC]`` each), dependencies
        first, with resolvelib; and warnings. Installed plugins count (their pins and their
        own requirements hold); ``upgrade`` names those that should move to their newest
        fitting version. :class:`ResolutionError` explains a conflict."""
        installed = self._installed()
        roots = []
        for text in requirements:
            req_name, req_spec = parse_requirement(text)
            roots.append(_Req(req_name, req_spec, None))
        wanted = {r.name for r in roots}
        for info in installed.values():  # what installed plugins require of each other holds
            if info.name in wanted or info.name in upgrade:
                continue  # the version chosen for it brings its own requirements
            for dep, spec in info.requires.items():
                with contextlib.suppress(InvalidSpecifier):
                    if dep in installed or dep in wanted:
                        roots.append(_Req(dep, SpecifierSet(spec),
                                          f"{info.name} {info.version} (installed)"))
        provider = _Provider(self.versions, installed, {*wanted, *upgrade})
        resolver: Any = resolvelib.Resolver(provider, resolvelib.BaseReporter())
        try:
            result = resolver.resolve(roots, max_rounds=500)
        except resolvelib.ResolutionImpossible as exc:
            raise self._explain(list(exc.causes)) from None
        except resolvelib.ResolutionTooDeep:
            raise ResolutionError("the requirements did not resolve within 500 rounds; pin "
                                  "some versions", conflicts=[]) from None
        order = self._order(result)
        chosen = [result.mapping[n] for n in order if not result.mapping[n].installed]
        warnings = []
        for cand in chosen:
            if cand.yanked:
                warnings.append(f"{cand.name} {cand.version} is yanked"
                                f"{': ' + cand.yank_reason if cand.yank_reason else ''}; "
                                f"installed only because it was pinned with =="
                                f"{cand.version}")
        return chosen, warnings

    @staticmethod
    def _order(result: Any) -> list[str]:
        graph = result.graph
        out: list[str] = []
        seen: set[str] = set()

        def visit(node: str) -> None:
            if node in seen:
                return
            seen.add(node)
            for child in graph.iter_children(node):
                visit(child)
            out.append(node)

        for node in sorted(result.mapping):
            visit(node)
        return out

    def _explain(self, causes: Sequence[Any]) -> ResolutionError:
        conflicts = []
        lines = []
        names = []
        for cause in causes:
            req = cause.requirement
            who = req.parent or (cause.parent and f"{cause.parent.name} {cause.parent.version}")
            conflicts.append({"plugin": who, "wants": f"{req.name}{req.spec}"})
            lines.append(f"{who or 'you'} want{'s' if who else ''} {req.name}"
                         f"{req.spec or ' (any version)'}")
            if req.name not in names:
                names.append(req.name)
        available = []
        for name in names:
            versions = self.versions(name)
            ok = [c.version for c in versions if c.incompatible is None and not c.yanked]
            skipped = [f"{c.version} ({c.incompatible or 'yanked'})" for c in versions
                       if c.incompatible is not None or c.yanked]
            available.append(f"{name}: {', '.join(ok) or 'no compatible version'}"
                             + (f"; not offered: {', '.join(skipped)}" if skipped else ""))
        return ResolutionError(
            "cannot install: the requirements conflict: " + "; ".join(lines)
            + ". Published: " + " | ".join(available)
            + ". Relax a requirement or pin a version that satisfies all of them",
            conflicts=conflicts, plugin=names[0] if names else None)

    def _download(self, cand: Candidate) -> Path:
        data = self._fetch(cand.registry, cand.target, MAX_PACKAGE_BYTES)
        from ..trust._package import read_package

        try:
            raw = json.loads(read_package(data)["plugbox.json"])
        except (PlugboxError, KeyError, ValueError) as exc:
            raise RegistryError(f"registry {cand.registry!r}: {cand.target} is not a readable "
                                f"package ({exc})", registry=cand.registry,
                                plugin=cand.name) from None
        if raw.get("name") != cand.name or raw.get("version") != cand.version:
            raise ArbitraryPackageError(
                f"registry {cand.registry!r}: {cand.target} holds {raw.get('name')!r} "
                f"{raw.get('version')!r}, not {cand.name} {cand.version}; refused",
                registry=cand.registry, plugin=cand.name)
        out = self._dir / cand.registry / "packages" / f"{cand.name}-{cand.version}.plugbox"
        from ._tuf import _atomic_write

        _atomic_write(out, data)
        return out

    def install(self, requirement: str, *,
                allow: bool | Callable[[PermissionDiff], bool] = False,
                actor: str | None = None) -> InstallResult:
        """Install (or move to) the version ``requirement`` selects (``NAME``,
        ``NAME==VERSION``, ``NAME>=1,<2``): refresh, resolve with the dependencies,
        download each package verified by TUF, then install or upgrade it through the host's
        lifecycle (its verification and trust policy, consent with ``allow`` for new
        permissions, automatic rollback), dependencies first."""
        name, _ = parse_requirement(requirement)
        self.refresh()
        chosen, warnings = self.resolve([requirement], upgrade=[name])
        for w in warnings:
            _log.warning("%s", w)
        return self._apply(chosen, warnings, allow, actor)

    def _apply(self, chosen: Sequence[Candidate], warnings: Sequence[str],
               allow: bool | Callable[[PermissionDiff], bool], actor: str | None
               ) -> InstallResult:
        host = self._need_host()
        actions: list[dict[str, Any]] = []
        for cand in chosen:
            path = self._download(cand)
            if self.before_install is not None:
                self.before_install(path)
            installed = {i.name: i for i in host.installed()}
            current = installed.get(cand.name)
            if current is None:
                info = host.install(path, actor=actor)
                actions.append({"plugin": cand.name, "from": None, "to": info.version,
                                "status": "installed" if info.state != "failed" else "failed",
                                "reason": info.reason})
                continue
            outcome: UpgradeOutcome = host.upgrade(path, allow=allow, actor=actor)
            actions.append({"plugin": cand.name, "from": outcome.from_version,
                            "to": outcome.to_version, "status": outcome.status,
                            "reason": outcome.reason,
                            "diff": outcome.diff.to_json() if not outcome.diff.empty else None})
            if outcome.status not in ("upgraded", "unchanged"):
                break  # what depends on it must not move ahead of it
        return InstallResult(tuple(actions), tuple(warnings))

    def outdated(self) -> list[dict[str, Any]]:
        """Installed plugins with a newer version this host can run (not yanked):
        ``{"name", "installed", "latest", "pinned", "registry"}``."""
        self.refresh()
        out = []
        for info in self._need_host().installed():
            newer = [c for c in self.versions(info.name)
                     if c.incompatible is None and not c.yanked
                     and Version(c.version) > Version(info.version)]
            if newer:
                out.append({"name": info.name, "installed": info.version,
                            "latest": newer[0].version, "pinned": info.pinned,
                            "registry": newer[0].registry})
        return out

    def upgrade(self, name: str, *, allow: bool | Callable[[PermissionDiff], bool] = False,
                actor: str | None = None) -> InstallResult:
        """Upgrade installed ``name`` to its newest version that resolves (a pinned plugin
        is refused by the lifecycle: unpin it first)."""
        host = self._need_host()
        info = host.info(name)
        if info.pinned:
            from ..host._errors import LifecycleError

            raise LifecycleError(f"upgrade {name!r}: it is pinned at {info.version}; unpin it "
                                 f"first (plugbox plugins unpin {name})", plugin=name,
                                 operation="upgrade")
        self.refresh()
        chosen, warnings = self.resolve([name], upgrade=[name])
        return self._apply(chosen, warnings, allow, actor)

    def upgrade_all(self, *, allow: bool | Callable[[PermissionDiff], bool] = False,
                    actor: str | None = None) -> InstallResult:
        """Upgrade every installed plugin that is not pinned (pins hold)."""
        actions: list[Mapping[str, Any]] = []
        warnings: list[str] = []
        for row in self.outdated():
            if row["pinned"]:
                continue
            result = self.upgrade(row["name"], allow=allow, actor=actor)
            actions.extend(a for a in result.actions if a["status"] != "unchanged")
            warnings.extend(result.warnings)
        return InstallResult(tuple(actions), tuple(warnings))

    def audit(self) -> list[dict[str, Any]]:
        """Installed versions hit by an advisory: ``{"name", "installed", "advisory"}``."""
        self.refresh()
        out = []
        for info in self._need_host().installed():
            for adv in self.advisories(info.name):
                if adv.affects(info.version):
                    out.append({"name": info.name, "installed": info.version,
                                "advisory": adv.to_json()})
        return out

    def check_updates(self, *, emit: Callable[[UpdateNotice], None] | None = None,
                      disable_affected: bool = False, upgrade: bool = False,
                      actor: str | None = "registry-check") -> list[UpdateNotice]:
        """One update check (what :func:`schedule_update_checks` runs): an
        :class:`UpdateNotice` per available update and per advisory affecting an installed
        version, each passed to ``emit`` too. By default it installs nothing. Host policies:
        with ``upgrade`` the plugins that are not pinned are upgraded (without consent for
        new permissions: those stay at ``needs-consent``; ``upgraded`` on the notice says
        what happened), pinned ones never; with ``disable_affected`` a plugin whose
        installed version an advisory affects is disabled."""
        host = self._need_host()
        notices = []
        for row in self.outdated():
            status = None
            if upgrade and not row["pinned"]:
                try:
                    result = self.upgrade(row["name"], actor=actor)
                    status = next((a["status"] for a in result.actions
                                   if a["plugin"] == row["name"]), "unchanged")
                except PlugboxError as exc:
                    status = f"failed: {exc}"
            notices.append(UpdateNotice("update", row["name"], row["installed"],
                                        available=row["latest"], pinned=row["pinned"],
                                        upgraded=status))
        for hit in self.audit():
            adv = Advisory(**hit["advisory"])
            disabled = False
            if disable_affected and host.info(hit["name"]).enabled:
                with contextlib.suppress(PlugboxError):
                    host.disable(hit["name"], cascade=True,
                                 actor=f"{actor or 'registry-check'} (advisory {adv.id})")
                    disabled = True
            notices.append(UpdateNotice("advisory", hit["name"], hit["installed"],
                                        advisory=adv, disabled=disabled))
        for notice in notices:
            if emit is not None:
                try:
                    emit(notice)
                except Exception:
                    _log.exception("update-check subscriber %r raised", emit)
        return notices


def schedule_update_checks(client: RegistryClient, interval_s: float, *,
                           emit: Callable[[UpdateNotice], None],
                           disable_affected: bool = False, upgrade: bool = False
                           ) -> Callable[[], None]:
    """Run :meth:`RegistryClient.check_updates` every ``interval_s`` seconds on a daemon
    thread (the first at once); a failing check is logged and retried at the next interval.
    Returns a function that stops it."""
    if not isinstance(interval_s, (int, float)) or not 0.05 <= interval_s <= 7 * 86400:
        raise UsageError(f"interval_s must be from 0.05 to 604800 seconds, not {interval_s!r}")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                client.check_updates(emit=emit, disable_affected=disable_affected,
                                     upgrade=upgrade)
            except PlugboxError as exc:
                _log.warning("scheduled update check failed: %s", exc)
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="plugbox-update-check", daemon=True)
    thread.start()

    def cancel() -> None:
        stop.set()
        thread.join(timeout=30)
    return cancel
