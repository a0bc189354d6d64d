"""The registry's TUF repository (issue 12 §2): signed metadata for every package, with
python-tuf's Metadata API.

Layout of ``tuf_dir``::

    config.json                 lifetimes of the roles (seconds)
    keys/{targets,snapshot,timestamp}.pem   online keys (PKCS#8 PEM, mode 0600)
    keys/root.pem               the root key, unless it is kept offline (offline_root_dir)
    keys/publishers/<p>.pem     the delegated key of publisher <p> (held by the registry)
    current/<role>.json         the current signed metadata of each role (the repository's state)
    metadata/                   what clients fetch (served at /tuf/metadata/):
        <N>.root.json, root.json (the newest root, to hand to clients), timestamp.json,
        <N>.snapshot.json, <N>.targets.json, <N>.pub-<p>.json
    targets/                    what clients download (served at /tuf/targets/), hash-prefixed:
        plugins/<name>/<sha256>.<name>-<version>.plugbox, listings/<sha256>.<name>.json,
        <sha256>.index.json

Roles: ``root`` (threshold 1, the key may be offline), ``targets`` (online; signs the
``index.json`` and the per-plugin ``listings/<name>.json`` targets, and delegates
``plugins/<name>/*`` to the role ``pub-<publisher>`` of the publisher owning ``<name>``,
terminating; :meth:`TufRepository.transfer_name` moves the pattern and the name's targets
to another publisher's role), one delegated role per publisher (so that one publisher's role
cannot sign another's packages), ``snapshot`` and ``timestamp`` (short-lived: one day by
default, renewed by :meth:`TufRepository.refresh_timestamp`). Consistent snapshots are on.

Several server processes may write: every change holds an exclusive ``flock`` on
``tuf_dir/.lock``, and every file is written to a temporary name, fsynced and renamed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .._errors import PlugboxError, UsageError

__all__ = [
    "DEFAULT_LIFETIMES",
    "INDEX_TARGET",
    "RepositoryStateError",
    "TufRepository",
    "listing_target",
    "package_custom",
    "publisher_role",
]

#: How long each role's metadata stays valid after it is signed, in seconds.
DEFAULT_LIFETIMES: Final[Mapping[str, int]] = {
    "root": 365 * 86400, "targets": 90 * 86400, "delegated": 90 * 86400,
    "snapshot": 7 * 86400, "timestamp": 86400,
}
#: The signed target listing every plugin and version (what search and resolution read).
INDEX_TARGET: Final = "index.json"
_ONLINE: Final = ("targets", "snapshot", "timestamp")
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_PUBLISHER_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TARGET_RE: Final = re.compile(r"plugins/([a-z][a-z0-9._-]{0,63})/([A-Za-z0-9._+-]{1,200})")
#: Superseded metadata versions, index and listing files are kept at least this long (seconds)
#: and the newest _KEEP_VERSIONS of each role, so that a client in the middle of a refresh
#: still finds what the snapshot it read names; older ones are deleted as the repository moves.
KEEP_SECONDS: Final = 120
_KEEP_VERSIONS: Final = 3
_VERSIONED_RE: Final = re.compile(r"(\d+)\.(.+)\.json")
#: Bounds on what callers hand the repository.
MAX_CUSTOM_BYTES: Final = 256 * 1024
MAX_LISTING_BYTES: Final = 4 * 1024 * 1024
MAX_TARGET_BYTES: Final = 256 * 1024 * 1024


class RepositoryStateError(PlugboxError):
    """The TUF repository cannot be used or changed: missing or unreadable metadata or keys,
    a refused target (another publisher's name, a malformed path, a duplicate), a disk error.
    ``path`` names the file at fault when there is one."""

    def __init__(self, message: str, *, path: str | None = None,
                 plugin: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.path = path


def publisher_role(publisher: str) -> str:
    """The delegated role name of ``publisher``."""
    return f"pub-{publisher}"


def listing_target(name: str) -> str:
    """The target path of plugin ``name``'s listing."""
    return f"listings/{name}.json"


def package_custom(data: bytes, *, yanked: bool = False, yank_reason: str | None = None
                   ) -> dict[str, Any]:
    """The ``custom`` facts of a ``.plugbox`` package's target: the manifest facts the client
    needs to decide compatibility before downloading (name, version, description, abi, host,
    implements, extension_points, requires, optional, conflicts, permissions), the author's
    minisign signatures (the texts of the package's ``*.minisig`` members), and the yank
    flag."""
    from .._manifest import MANIFEST_FILENAME
    from ..trust._package import read_package

    members = read_package(data)
    try:
        raw = json.loads(members[MANIFEST_FILENAME])
    except (KeyError, ValueError) as exc:
        raise UsageError(f"the package has no readable {MANIFEST_FILENAME} ({exc})") from None
    keep = ("name", "version", "description", "abi", "host", "implements",
            "extension_points", "requires", "optional", "conflicts", "permissions", "tags")
    manifest = {key: raw[key] for key in keep if key in raw}
    signatures = {name: blob.decode("utf-8", "replace") for name, blob in sorted(members.items())
                  if name.endswith(".minisig")}
    return {"manifest": manifest, "signatures": signatures, "yanked": bool(yanked),
            "yank_reason": yank_reason}


# -- files -------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _check_json(value: Any, cap: int, what: str) -> bytes:
    try:
        data = json.dumps(value, sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be JSON data ({exc})") from None
    if len(data) > cap:
        raise UsageError(f"{what} is {len(data)} bytes, more than the {cap} allowed")
    return data


# -- the repository ----------------------------------------------------------------------------


class TufRepository:
    """A TUF repository in ``tuf_dir`` (see the module docstring): :meth:`init` creates one,
    the constructor opens one. Every method that changes it takes the repository's file lock,
    so several processes may share one directory."""

    def __init__(self, tuf_dir: str | os.PathLike[str], *,
                 offline_root_dir: str | os.PathLike[str] | None = None) -> None:
        self.tuf_dir = Path(tuf_dir)
        self.metadata_dir = self.tuf_dir / "metadata"
        self.targets_dir = self.tuf_dir / "targets"
        self._keys_dir = self.tuf_dir / "keys"
        self._current = self.tuf_dir / "current"
        self._root_dir = Path(offline_root_dir) if offline_root_dir else self._keys_dir
        self._thread_lock = threading.RLock()
        #: How long superseded files are kept (see KEEP_SECONDS).
        self.keep_seconds: float = KEEP_SECONDS
        config = self.tuf_dir / "config.json"
        try:
            raw = json.loads(config.read_text())
            self.lifetimes = {k: int(raw["lifetimes"][k]) for k in DEFAULT_LIFETIMES}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RepositoryStateError(
                f"{self.tuf_dir} is not a plugbox TUF repository ({config}: {exc}); create "
                f"one with TufRepository.init (plugbox registry init)", path=str(config)) from None

    # -- creation ----------------------------------------------------------------------------

    @classmethod
    def init(cls, tuf_dir: Path, *, offline_root_dir: Path | None = None,
             lifetimes: Mapping[str, int] | None = None) -> TufRepository:
        """Create a repository in ``tuf_dir`` (new or empty): the root, targets, snapshot and
        timestamp keys, and version 1 of each role's metadata. The root key is written to
        ``offline_root_dir`` when given (move it to offline storage: it is needed only to
        rotate keys, :meth:`rotate_root_key`), else to ``tuf_dir/keys``. ``lifetimes``
        overrides :data:`DEFAULT_LIFETIMES` (seconds per role)."""
        from securesystemslib.signer._crypto_signer import CryptoSigner
        from tuf.api.metadata import Metadata
        from tuf.api._payload import Delegations, Root, Targets

        tuf_dir = Path(tuf_dir)
        if tuf_dir.exists() and any(tuf_dir.iterdir()):
            raise UsageError(f"{tuf_dir} is not empty; give a new or empty directory")
        spans = dict(DEFAULT_LIFETIMES)
        for key, value in (lifetimes or {}).items():
            if key not in spans or type(value) is not int or value < 1:
                raise UsageError(f"lifetimes: {key!r} must be one of {sorted(spans)} with a "
                                 f"positive number of seconds, not {value!r}")
            spans[key] = value
        try:
            tuf_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(tuf_dir / "config.json", json.dumps({"lifetimes": spans}).encode())
            repo = cls(tuf_dir, offline_root_dir=offline_root_dir)
            signers = {role: CryptoSigner.generate_ed25519() for role in ("root", *_ONLINE)}
            for role, signer in signers.items():
                base = repo._root_dir if role == "root" else repo._keys_dir
                _atomic_write(base / f"{role}.pem", signer.private_bytes, 0o600)
            now = _now()
            root = Root(expires=now + _dt.timedelta(seconds=spans["root"]),
                        consistent_snapshot=True)
            for role, signer in signers.items():
                root.add_key(signer.public_key, role)
            targets = Targets(expires=now + _dt.timedelta(seconds=spans["targets"]))
            targets.delegations = Delegations(keys={}, roles={})
            with repo._locked():
                root_md = Metadata(root)
                root_md.sign(signers["root"])
                repo._store("root", root_md)
                targets_md = Metadata(targets)
                repo._write_index(targets_md, {"plugins": {}})  # an empty registry lists nothing
                repo._publish({"targets": targets_md}, signers)
        except OSError as exc:
            raise RepositoryStateError(f"cannot create the TUF repository in {tuf_dir}: {exc}",
                                       path=str(tuf_dir)) from None
        return repo

    # -- locking and storage -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            self.tuf_dir.mkdir(parents=True, exist_ok=True)
            with open(self.tuf_dir / ".lock", "a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _load(self, role: str) -> Any:
        from tuf.api.metadata import Metadata

        path = self._current / f"{role}.json"
        try:
            return Metadata.from_bytes(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise RepositoryStateError(f"the TUF repository's {role} metadata {path} is "
                                       f"unreadable: {exc}", path=str(path)) from None

    def _store(self, role: str, md: Any) -> None:
        from tuf.api.serialization.json import JSONSerializer

        data = md.to_bytes(JSONSerializer(compact=False))
        version = md.signed.version
        if role == "timestamp":
            _atomic_write(self.metadata_dir / "timestamp.json", data)
        else:
            _atomic_write(self.metadata_dir / f"{version}.{role}.json", data)
        if role == "root":
            _atomic_write(self.metadata_dir / "root.json", data)
        _atomic_write(self._current / f"{role}.json", data)

    def _signer(self, role: str, base: Path | None = None) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer._crypto_signer import CryptoSigner

        if base is None:
            base = self._root_dir if role == "root" else self._keys_dir
        path = base / (f"{role}.pem" if not role.startswith("pub-")
                       else f"publishers/{role[4:]}.pem")
        try:
            key = load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise RepositoryStateError(
                f"the {role} key {path} is unreadable ({exc})"
                + ("; the root key may be offline: pass offline_root_dir" if role == "root"
                   else ""), path=str(path)) from None
        return CryptoSigner(key)

    def _expiry(self, role: str) -> _dt.datetime:
        kind = "delegated" if role.startswith("pub-") else role
        return _now() + _dt.timedelta(seconds=self.lifetimes[kind])

    def _publish(self, changed: Mapping[str, Any], signers: Mapping[str, Any] | None = None
                 ) -> None:
        """Bump, re-sign and store the targets-type roles in ``changed``, then a new snapshot
        and timestamp (lock held)."""
        from tuf.api.metadata import Metadata
        from tuf.api._payload import MetaFile, Snapshot, Timestamp

        signers = dict(signers or {})

        def signer(role: str) -> Any:
            if role not in signers:
                signers[role] = self._signer(role)
            return signers[role]

        first = not (self._current / "snapshot.json").exists()
        snapshot = Metadata(Snapshot(expires=self._expiry("snapshot"))) if first \
            else self._load("snapshot")
        for role, md in changed.items():
            if not first or role != "targets":
                md.signed.version += 1
            md.signed.expires = self._expiry(role)
            md.signatures.clear()
            md.sign(signer(role))
            self._store(role, md)
            snapshot.signed.meta[f"{role}.json"] = MetaFile(version=md.signed.version)
        if not first:
            snapshot.signed.version += 1
        snapshot.signed.expires = self._expiry("snapshot")
        snapshot.signatures.clear()
        snapshot.sign(signer("snapshot"))
        self._store("snapshot", snapshot)
        if first:
            timestamp = Metadata(Timestamp(expires=self._expiry("timestamp")))
        else:
            timestamp = self._load("timestamp")
            timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.signed.expires = self._expiry("timestamp")
        timestamp.signatures.clear()
        timestamp.sign(signer("timestamp"))
        self._store("timestamp", timestamp)
        self._prune(snapshot.signed)

    def _prune(self, snapshot: Any) -> None:
        """Delete superseded metadata versions and unreferenced index and listing files
        older than :attr:`keep_seconds` (lock held). Roots are all kept: a client walks
        them one by one."""
        current = {file[:-5]: meta.version for file, meta in snapshot.meta.items()}
        current["snapshot"] = snapshot.version
        cutoff = time.time() - self.keep_seconds
        for file in self.metadata_dir.iterdir():
            match = _VERSIONED_RE.fullmatch(file.name)
            if match is None or match.group(2) == "root":
                continue
            newest = current.get(match.group(2))
            if newest is None or int(match.group(1)) > newest - _KEEP_VERSIONS:
                continue
            with contextlib.suppress(OSError):
                if file.stat().st_mtime < cutoff:
                    file.unlink()
        targets = self._load("targets").signed.targets
        live = {f"{info.hashes['sha256']}.{path.rpartition('/')[2]}"
                for path, info in targets.items()}
        for file in [*self.targets_dir.glob(f"*.{INDEX_TARGET}"),
                     *(self.targets_dir / "listings").glob("*.json")]:
            if file.name in live:
                continue
            with contextlib.suppress(OSError):
                if file.stat().st_mtime < cutoff:
                    file.unlink()

    def _write_target(self, target_path: str, data: bytes) -> Any:
        from tuf.api._payload import TargetFile

        info = TargetFile.from_data(target_path, data, ["sha256"])
        directory, _, base = target_path.rpartition("/")
        digest = info.hashes["sha256"]
        file = self.targets_dir / directory / f"{digest}.{base}" if directory \
            else self.targets_dir / f"{digest}.{base}"
        if not file.exists():
            _atomic_write(file, data)
        return info

    # -- reads -------------------------------------------------------------------------------

    def owner_of(self, name: str) -> str | None:
        """The publisher whose delegation covers plugin ``name``, or None."""
        targets = self._load("targets").signed
        pattern = f"plugins/{name}/*"
        for role in targets.delegations.roles.values():
            if pattern in (role.paths or ()):
                return str(role.name)[4:]
        return None

    def index(self) -> dict[str, Any]:
        """The current index (what ``index.json`` holds): ``{"plugins": {name: {"publisher",
        "listing", "description", "tags", "versions": {version: {"target", "length",
        "sha256", "custom"}}}}}`` (description and tags from the listing)."""
        targets = self._load("targets").signed
        info = targets.targets.get(INDEX_TARGET)
        if info is None:
            return {"plugins": {}}
        file = self.targets_dir / f"{info.hashes['sha256']}.{INDEX_TARGET}"
        try:
            doc: dict[str, Any] = json.loads(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise RepositoryStateError(f"the index {file} is unreadable: {exc}",
                                       path=str(file)) from None
        return doc

    # -- changes -----------------------------------------------------------------------------

    def _delegation(self, targets: Any, publisher: str) -> tuple[Any, Any]:
        """The delegated role of ``publisher`` in ``targets`` and its metadata (both created,
        with a new key, for a new publisher; lock held)."""
        from securesystemslib.signer._crypto_signer import CryptoSigner
        from tuf.api.metadata import Metadata
        from tuf.api._payload import DelegatedRole, Targets

        role = publisher_role(publisher)
        existing = targets.delegations.roles.get(role)
        if existing is not None:
            return existing, self._load(role)
        signer = CryptoSigner.generate_ed25519()
        _atomic_write(self._keys_dir / "publishers" / f"{publisher}.pem", signer.private_bytes,
                      0o600)
        targets.delegations.roles[role] = DelegatedRole(
            name=role, keyids=[], threshold=1, terminating=True, paths=[])
        targets.add_key(signer.public_key, role)
        delegated = Metadata(Targets(expires=self._expiry(role)))
        delegated.signed.version = 0  # _publish makes it version 1
        return targets.delegations.roles[role], delegated

    def add_target(self, publisher: str, target_path: str, data: bytes,
                   custom: Mapping[str, Any]) -> None:
        """Add the package ``data`` as target ``target_path``
        (``plugins/<name>/<name>-<version>.plugbox``) signed by ``publisher``'s delegated
        role, with ``custom`` (see :func:`package_custom`) in its target info. The first
        package of a name delegates ``plugins/<name>/*`` to the publisher; a name another
        publisher owns, or a target path that exists already, is refused with
        :class:`RepositoryStateError`."""
        name = self._check_target(publisher, target_path)
        custom_bytes = _check_json(dict(custom), MAX_CUSTOM_BYTES, "custom")
        if not isinstance(data, bytes) or len(data) > MAX_TARGET_BYTES:
            raise UsageError(f"the package must be bytes of at most {MAX_TARGET_BYTES}")
        role = publisher_role(publisher)
        try:
            with self._locked():
                targets = self._load("targets")
                owner = self.owner_of(name)
                if owner is not None and owner != publisher:
                    raise RepositoryStateError(
                        f"{target_path}: plugin {name!r} belongs to publisher {owner!r}, not "
                        f"{publisher!r}", plugin=name)
                delegation, delegated = self._delegation(targets.signed, publisher)
                if target_path in delegated.signed.targets:
                    raise RepositoryStateError(
                        f"{target_path} is published already; a published version cannot "
                        f"be replaced (publish a new version)", plugin=name)
                pattern = f"plugins/{name}/*"
                if pattern not in delegation.paths:
                    delegation.paths.append(pattern)
                info = self._write_target(target_path, data)
                info.unrecognized_fields["custom"] = json.loads(custom_bytes)
                delegated.signed.targets[target_path] = info
                self._update_index(targets, publisher, name, target_path, info)
                self._publish({role: delegated, "targets": targets})
        except OSError as exc:
            raise self._disk_error(exc) from None

    def update_target_custom(self, publisher: str, target_path: str,
                             custom: Mapping[str, Any]) -> None:
        """Replace the ``custom`` of a published target (a yank, a changed review status);
        the package itself does not change."""
        name = self._check_target(publisher, target_path)
        custom_bytes = _check_json(dict(custom), MAX_CUSTOM_BYTES, "custom")
        role = publisher_role(publisher)
        try:
            with self._locked():
                targets = self._load("targets")
                if self.owner_of(name) != publisher:
                    raise RepositoryStateError(f"{target_path}: not published by "
                                               f"{publisher!r}", plugin=name)
                delegated = self._load(role)
                info = delegated.signed.targets.get(target_path)
                if info is None:
                    raise RepositoryStateError(f"{target_path} is not published", plugin=name)
                info.unrecognized_fields["custom"] = json.loads(custom_bytes)
                self._update_index(targets, publisher, name, target_path, info)
                self._publish({role: delegated, "targets": targets})
        except OSError as exc:
            raise self._disk_error(exc) from None

    def transfer_name(self, name: str, publisher: str) -> str | None:
        """Move plugin ``name`` to ``publisher``'s delegated role (an admin's transfer): the
        path pattern ``plugins/<name>/*`` leaves the old owner's delegation and joins
        ``publisher``'s (created, with a new key, for a new publisher), and every target of
        the name moves with it into ``publisher``'s targets metadata; both roles, the
        targets role (the index names the new publisher), the snapshot and the timestamp
        are re-signed, under the repository's lock. From then on the old owner's role cannot
        sign the name (the delegation is terminating, and no longer its). Returns the old
        owner, or None when no delegation covered the name (nothing published yet, so
        nothing to move) or ``publisher`` held it already (then nothing changes)."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise UsageError(f"not a plugin name: {name!r}")
        if not isinstance(publisher, str) or not _PUBLISHER_RE.fullmatch(publisher):
            raise UsageError(f"not a publisher name (1-64 of a-z 0-9 . _ -): {publisher!r}")
        pattern = f"plugins/{name}/*"
        prefix = f"plugins/{name}/"
        try:
            with self._locked():
                targets = self._load("targets")
                old = self.owner_of(name)
                if old is None or old == publisher:
                    return None
                old_role, new_role = publisher_role(old), publisher_role(publisher)
                old_delegation = targets.signed.delegations.roles[old_role]
                old_md = self._load(old_role)
                delegation, new_md = self._delegation(targets.signed, publisher)
                old_delegation.paths = [p for p in old_delegation.paths if p != pattern]
                if pattern not in delegation.paths:
                    delegation.paths.append(pattern)
                for path in [p for p in old_md.signed.targets if p.startswith(prefix)]:
                    new_md.signed.targets[path] = old_md.signed.targets.pop(path)
                doc = self.index()
                entry = doc["plugins"].get(name)
                if entry is not None:
                    entry["publisher"] = publisher
                    self._write_index(targets, doc)
                self._publish({old_role: old_md, new_role: new_md, "targets": targets})
                return old
        except OSError as exc:
            raise self._disk_error(exc) from None

    def remove_target(self, publisher: str, target_path: str) -> bool:
        """Take target ``target_path`` out of ``publisher``'s role and the index again (the
        compensation of a publish whose database commit failed after :meth:`add_target`).
        When it was the name's last package, the name's delegation pattern, index entry and
        listing go too, so that the name is unclaimed in TUF as in the database. Returns
        whether there was such a target; its package file under ``targets/`` is deleted."""
        name = self._check_target(publisher, target_path)
        role = publisher_role(publisher)
        try:
            with self._locked():
                targets = self._load("targets")
                if self.owner_of(name) != publisher:
                    return False
                delegated = self._load(role)
                info = delegated.signed.targets.pop(target_path, None)
                if info is None:
                    return False
                prefix = f"plugins/{name}/"
                doc = self.index()
                entry = doc["plugins"].get(name)
                if entry is not None:
                    entry["versions"] = {v: e for v, e in entry.get("versions", {}).items()
                                         if e.get("target") != target_path}
                if not any(p.startswith(prefix) for p in delegated.signed.targets):
                    delegation = targets.signed.delegations.roles[role]
                    delegation.paths = [p for p in delegation.paths
                                        if p != f"plugins/{name}/*"]
                    doc["plugins"].pop(name, None)
                    targets.signed.targets.pop(listing_target(name), None)
                self._write_index(targets, doc)
                self._publish({role: delegated, "targets": targets})
                self._unlink_package(target_path, info)
                return True
        except OSError as exc:
            raise self._disk_error(exc) from None

    def _unlink_package(self, target_path: str, info: Any) -> None:
        directory, _, base = target_path.rpartition("/")
        with contextlib.suppress(OSError):
            (self.targets_dir / directory / f"{info.hashes['sha256']}.{base}").unlink()

    def listing(self, name: str) -> bytes | None:
        """The bytes of plugin ``name``'s current listing target, or None."""
        info = self._load("targets").signed.targets.get(listing_target(name))
        if info is None:
            return None
        file = self.targets_dir / "listings" / f"{info.hashes['sha256']}.{name}.json"
        try:
            return file.read_bytes()
        except OSError as exc:
            raise RepositoryStateError(f"the listing {file} is unreadable: {exc}",
                                       path=str(file)) from None

    def set_listing(self, name: str, data: bytes) -> None:
        """Publish ``data`` (JSON: description, tags, advisories; see docs/registry.md) as
        plugin ``name``'s listing target ``listings/<name>.json``, signed by the targets
        role."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise UsageError(f"not a plugin name: {name!r}")
        if not isinstance(data, bytes) or len(data) > MAX_LISTING_BYTES:
            raise UsageError(f"a listing must be bytes of at most {MAX_LISTING_BYTES}")
        try:
            listing = json.loads(data)
        except ValueError as exc:
            raise UsageError(f"the listing of {name!r} is not JSON ({exc})") from None
        # What search matches is copied into the index, so that a search reads one file.
        summary: dict[str, Any] = {"listing": listing_target(name)}
        if isinstance(listing, dict):
            if isinstance(listing.get("description"), str):
                summary["description"] = listing["description"][:1000]
            if isinstance(listing.get("tags"), list):
                summary["tags"] = [str(t)[:64] for t in listing["tags"][:32]]
        try:
            with self._locked():
                targets = self._load("targets")
                path = listing_target(name)
                targets.signed.targets[path] = self._write_target(path, data)
                doc = self.index()
                entry = doc["plugins"].setdefault(name, {"publisher": self.owner_of(name),
                                                         "versions": {}})
                if any(entry.get(k) != v for k, v in summary.items()):
                    entry.update(summary)  # else the index is unchanged
                    self._write_index(targets, doc)
                self._publish({"targets": targets})
        except OSError as exc:
            raise self._disk_error(exc) from None

    def refresh_timestamp(self) -> None:
        """Sign a new timestamp (call it well within the timestamp lifetime, e.g. hourly);
        the snapshot, targets and delegated roles are re-signed too when less than half of
        their lifetime is left."""
        from tuf.api._payload import MetaFile

        try:
            with self._locked():
                now = _now()
                changed: dict[str, Any] = {}
                snapshot = self._load("snapshot")
                for file in list(snapshot.signed.meta):
                    role = file[:-5]
                    md = self._load(role)
                    kind = "delegated" if role.startswith("pub-") else role
                    if md.signed.expires - now < _dt.timedelta(seconds=self.lifetimes[kind] / 2):
                        changed[role] = md
                snap_left = snapshot.signed.expires - now
                if changed or snap_left < _dt.timedelta(seconds=self.lifetimes["snapshot"] / 2):
                    self._publish(changed)
                    return
                timestamp = self._load("timestamp")
                timestamp.signed.version += 1
                timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
                timestamp.signed.expires = self._expiry("timestamp")
                timestamp.signatures.clear()
                timestamp.sign(self._signer("timestamp"))
                self._store("timestamp", timestamp)
        except OSError as exc:
            raise self._disk_error(exc) from None

    def rotate_root_key(self, new_root_dir: str | os.PathLike[str], *,
                        old_root_dir: str | os.PathLike[str] | None = None) -> int:
        """Replace the root key: a new key is written to ``new_root_dir``, and root version
        N+1 names it, signed by the old key (so that clients trusting version N accept it)
        and by the new one. ``old_root_dir`` holds the current root key (default: the one
        this repository was opened with). Returns the new root version. Clients move to the
        new root on their next refresh (they walk ``N+1.root.json``)."""
        from securesystemslib.signer._crypto_signer import CryptoSigner

        old = self._signer("root", Path(old_root_dir) if old_root_dir else None)
        new = CryptoSigner.generate_ed25519()
        target = Path(new_root_dir)
        if (target / "root.pem").exists():
            raise UsageError(f"{target / 'root.pem'} exists; give a directory for the new key")
        try:
            with self._locked():
                _atomic_write(target / "root.pem", new.private_bytes, 0o600)
                root = self._load("root")
                for keyid in list(root.signed.roles["root"].keyids):
                    root.signed.revoke_key(keyid, "root")
                root.signed.add_key(new.public_key, "root")
                root.signed.version += 1
                root.signed.expires = self._expiry("root")
                root.signatures.clear()
                root.sign(old, append=True)
                root.sign(new, append=True)
                self._store("root", root)
                self._root_dir = target
                return int(root.signed.version)
        except OSError as exc:
            raise self._disk_error(exc) from None

    # -- helpers -----------------------------------------------------------------------------

    def _check_target(self, publisher: str, target_path: str) -> str:
        if not isinstance(publisher, str) or not _PUBLISHER_RE.fullmatch(publisher):
            raise UsageError(f"not a publisher name (1-64 of a-z 0-9 . _ -): {publisher!r}")
        match = _TARGET_RE.fullmatch(target_path) if isinstance(target_path, str) else None
        if match is None or ".." in target_path:
            raise UsageError(f"not a package target path (plugins/<name>/<file>): "
                             f"{target_path!r}")
        return match.group(1)

    def _update_index(self, targets: Any, publisher: str, name: str, target_path: str,
                      info: Any) -> None:
        doc = self.index()
        entry = doc["plugins"].setdefault(name, {"publisher": publisher, "versions": {}})
        entry["publisher"] = publisher
        custom = dict(info.unrecognized_fields.get("custom") or {})
        # The signatures stay in the delegated target's custom: the index is for choosing.
        custom.pop("signatures", None)
        version = str((custom.get("manifest") or {}).get("version") or
                      target_path.rsplit("/", 1)[1])
        entry["versions"][version] = {"target": target_path, "length": info.length,
                                      "sha256": info.hashes["sha256"], "custom": custom}
        self._write_index(targets, doc)

    def _write_index(self, targets: Any, doc: Mapping[str, Any]) -> None:
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        targets.signed.targets[INDEX_TARGET] = self._write_target(INDEX_TARGET, data)

    def _disk_error(self, exc: OSError) -> RepositoryStateError:
        return RepositoryStateError(f"cannot write the TUF repository {self.tuf_dir}: {exc}; "
                                    f"check disk space and permissions",
                                    path=str(exc.filename or self.tuf_dir))
