"""The registry's state and operations, without HTTP: :class:`Registry` over a registry
directory (``registry.json``, ``packages/``, ``tuf/``) and one SQL database
(:class:`plugbox.services._db.Database`: SQLite ``registry.sqlite3`` in the directory by
default, PostgreSQL when ``db_url`` names one, so several stateless server processes can share
it).

Every method is synchronous and runs one transaction; the HTTP layer (``_app.py``) calls them
on worker threads. Every refusal is a :class:`RequestRefused` with its HTTP status and code; a
database that fails (down, restarting, full) is ``503 unavailable`` with ``Retry-After``.

Publishing writes the package to a temporary file first, then, inside the transaction that
inserts its rows, renames it into place and records it as a TUF target; any failure rolls the
rows back and removes the file, so a refused or failed upload leaves nothing behind. Two
publishes of one version race on the ``(name, version)`` primary key: exactly one commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .._errors import PlugboxError, StateError
from .._manifest import abi_compatible
from ..services._db import Database, Tx, connect, redacted
from ..trust._package import PackageLimits
from ..trust._signing import PublicKey, Signature, verify_bytes
from ._errors import RequestRefused
from ._verify import VerifiedPackage, verify_package

__all__ = ["Account", "Registry", "RegistryLimits", "init_registry"]

log = logging.getLogger("plugbox.registry")
T = TypeVar("T")

CONFIG_FILE: Final = "registry.json"
SQLITE_FILE: Final = "registry.sqlite3"
PACKAGES_DIR: Final = "packages"
TUF_DIR: Final = "tuf"
SCHEMA_VERSION: Final = 1
_TOKEN_PREFIX: Final = "pbx_"

_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_ACCOUNT_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_ADVISORY_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TAG_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.+_-]{0,31}$")
_SEVERITIES: Final = ("low", "medium", "high", "critical")
_REVIEW_STATUSES: Final = ("approved", "rejected")
_SORTS: Final = ("downloads", "rating", "recent", "name")

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS reg_meta (
        k VARCHAR(64) PRIMARY KEY,
        v TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reg_accounts (
        name VARCHAR(64) PRIMARY KEY,
        admin INTEGER NOT NULL,
        reviewer INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reg_tokens (
        id VARCHAR(32) PRIMARY KEY,
        account VARCHAR(64) NOT NULL REFERENCES reg_accounts(name),
        hash VARCHAR(64) NOT NULL,
        label VARCHAR(128),
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS reg_keys (
        key_id VARCHAR(16) PRIMARY KEY,
        account VARCHAR(64) NOT NULL REFERENCES reg_accounts(name),
        public_key TEXT NOT NULL,
        added_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reg_plugins (
        name VARCHAR(64) PRIMARY KEY,
        owner VARCHAR(64) NOT NULL REFERENCES reg_accounts(name),
        description TEXT NOT NULL,
        tags TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        downloads BIGINT NOT NULL,
        rating_sum BIGINT NOT NULL,
        rating_count BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reg_versions (
        name VARCHAR(64) NOT NULL REFERENCES reg_plugins(name),
        version VARCHAR(128) NOT NULL,
        sha256 VARCHAR(64) NOT NULL,
        size BIGINT NOT NULL,
        facts_json TEXT NOT NULL,
        manifest_json TEXT NOT NULL,
        signers_json TEXT NOT NULL,
        abi VARCHAR(32) NOT NULL,
        host VARCHAR(256),
        permissions TEXT NOT NULL,
        points TEXT NOT NULL,
        publisher VARCHAR(64) NOT NULL,
        published_at DOUBLE PRECISION NOT NULL,
        yanked INTEGER NOT NULL,
        yank_reason TEXT,
        yanked_at DOUBLE PRECISION,
        downloads BIGINT NOT NULL,
        PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS reg_advisories (
        id VARCHAR(64) PRIMARY KEY,
        name VARCHAR(64) NOT NULL REFERENCES reg_plugins(name),
        affected VARCHAR(256) NOT NULL,
        severity VARCHAR(16) NOT NULL,
        fixed_in VARCHAR(128),
        text TEXT NOT NULL,
        published_by VARCHAR(64) NOT NULL,
        published_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reg_reviews (
        name VARCHAR(64) NOT NULL REFERENCES reg_plugins(name),
        account VARCHAR(64) NOT NULL REFERENCES reg_accounts(name),
        rating INTEGER NOT NULL,
        text TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        hidden INTEGER NOT NULL,
        moderation_reason TEXT,
        PRIMARY KEY (name, account))""",
    """CREATE TABLE IF NOT EXISTS reg_security_reviews (
        name VARCHAR(64) NOT NULL,
        version VARCHAR(128) NOT NULL,
        reviewer VARCHAR(64) NOT NULL REFERENCES reg_accounts(name),
        status VARCHAR(16) NOT NULL,
        notes TEXT NOT NULL,
        key_id VARCHAR(16) NOT NULL,
        signature TEXT NOT NULL,
        reviewed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, version, reviewer),
        FOREIGN KEY (name, version) REFERENCES reg_versions(name, version))""",
    "CREATE INDEX IF NOT EXISTS reg_versions_by_time ON reg_versions (published_at)",
)


@dataclass(frozen=True)
class RegistryLimits:
    """The server's bounds (``registry.json`` ``"limits"``; docs/registry.md).

    Uploads: ``max_upload_bytes`` (the body, capped while it streams in), ``body_timeout_s``
    (the whole body must arrive within it) and ``idle_timeout_s`` (the longest pause between
    two chunks), ``max_concurrent_uploads`` (more at once answer 503). JSON bodies:
    ``max_json_bytes``. Writes (every POST/PUT/DELETE) are rate limited per token and per
    client address: ``write_burst`` at once, refilled at ``writes_per_minute``.
    ``max_page_size`` bounds ``per_page``; ``max_query_chars`` the search text."""

    max_upload_bytes: int = 64 << 20
    max_json_bytes: int = 64 << 10
    body_timeout_s: float = 120.0
    idle_timeout_s: float = 15.0
    max_concurrent_uploads: int = 8
    writes_per_minute: float = 120.0
    write_burst: int = 60
    max_page_size: int = 100
    max_query_chars: int = 200

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RegistryLimits:
        """Limits from a JSON object; unknown keys are refused (a typo must not be ignored)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(doc) - known
        if unknown:
            raise RequestRefused(500, "config", f"registry.json: unknown limits "
                                f"{sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(doc))


@dataclass(frozen=True)
class Account:
    """A signed-in account: its name, roles and the token it used."""

    name: str
    admin: bool
    reviewer: bool
    token_id: str


class TufTargets(Protocol):
    """What the server needs of :class:`plugbox.registry._tuf.TufRepository`."""

    metadata_dir: Path
    targets_dir: Path

    def add_target(self, publisher: str, target_path: str, data: bytes,
                   custom: dict[str, Any]) -> None: ...

    def update_target_custom(self, publisher: str, target_path: str,
                             custom: dict[str, Any]) -> None: ...

    def set_listing(self, name: str, data: bytes) -> None: ...

    def refresh_timestamp(self) -> None: ...

    def owner_of(self, name: str) -> str | None: ...

    def transfer_name(self, name: str, publisher: str) -> str | None: ...

    def remove_target(self, publisher: str, target_path: str) -> bool: ...

    def listing(self, name: str) -> bytes | None: ...


def _open_tuf(directory: Path) -> TufTargets:
    from ._tuf import TufRepository

    repo: TufTargets = TufRepository(directory)
    return repo


def _init_tuf(directory: Path, offline_root_dir: Path | None) -> None:
    from ._tuf import TufRepository

    TufRepository.init(directory, offline_root_dir=offline_root_dir)


def _version_key(version: str) -> tuple[int, Any]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _now() -> float:
    return time.time()


def _is_unique_violation(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, StateError) else exc
    if getattr(cause, "sqlstate", None) == "23505":
        return True
    return type(cause).__name__ == "IntegrityError" and "UNIQUE" in str(cause).upper()


def target_path(name: str, version: str) -> str:
    """The TUF target path of a version's package."""
    return f"plugins/{name}/{name}-{version}.plugbox"


def _read_config(directory: Path) -> dict[str, Any]:
    file = directory / CONFIG_FILE
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RequestRefused(500, "config", f"{directory} is not a registry (no {CONFIG_FILE}): "
                            f"create one with plugbox registry init {directory}") from None
    except (OSError, ValueError) as exc:
        raise RequestRefused(500, "config", f"{file} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise RequestRefused(500, "config", f"{file}: not a format-1 registry configuration")
    return doc


def init_registry(directory: str | os.PathLike[str], *, db_url: str | None = None,
                  admin: str = "admin", offline_root_dir: Path | None = None,
                  limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Create a registry in ``directory`` (new or empty): ``registry.json``, the database
    (SQLite in the directory unless ``db_url``), ``packages/``, the TUF repository in ``tuf/``
    (its root key written to ``offline_root_dir`` instead of ``tuf/`` when given) and the first
    admin account. Returns ``{"directory", "database", "admin", "token"}``: the admin's API
    token is shown only here."""
    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        raise RequestRefused(400, "invalid-request",
                            f"{root} is not empty: a registry is created in a new or empty "
                            f"directory")
    if not _ACCOUNT_RE.match(admin):
        raise RequestRefused(400, "invalid-request", f"admin name {admin!r} is not an account "
                            f"name (lowercase letters, digits, '_' or '-', starting with a "
                            f"letter)")
    if limits:
        RegistryLimits.from_json(limits)
    try:
        (root / PACKAGES_DIR).mkdir(parents=True, exist_ok=True)
        config = {"format": 1, "db_url": db_url, "limits": dict(limits or {})}
        (root / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise RequestRefused(500, "storage", f"cannot create the registry in {root}: "
                            f"{exc.strerror or exc}") from None
    _init_tuf(root / TUF_DIR, offline_root_dir)
    with Registry(root) as registry:
        token = registry.bootstrap_admin(admin)
        where = registry.db.where
    return {"directory": str(root), "database": where, "admin": admin, "token": token}


class _RateLimiter:
    """Token buckets by key (a token id, an address): ``burst`` at once, refilled at ``rate``
    per minute. Bounded: at most ``max_keys`` buckets, the idlest dropped first."""

    def __init__(self, rate_per_minute: float, burst: int, max_keys: int = 50_000) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """None when ``key`` may write now (one unit taken); else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.pop(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                wait = None
            else:
                self._buckets[key] = (level, now)
                wait = (1.0 - level) / self.rate if self.rate > 0 else 60.0
            if len(self._buckets) > self.max_keys:
                for old in list(self._buckets)[: len(self._buckets) - self.max_keys]:
                    del self._buckets[old]
            return wait


@dataclass(frozen=True)
class _Entry:
    """A version as search sees it (the catalogue cache)."""

    key: tuple[int, Any]
    version: str
    abi: str
    host: str | None
    spec: SpecifierSet | None
    permissions: frozenset[str]
    points: frozenset[str]
    published_at: float


#: The generation counter (services._db) every change of what search sees bumps.
_CATALOGUE: Final = "registry-catalogue"


class Registry:
    """One registry directory and its database (module docstring). Thread safe."""

    def __init__(self, directory: str | os.PathLike[str], *, db_url: str | None = None,
                 tuf: TufTargets | None = None) -> None:
        self.directory = Path(directory).resolve()
        config = _read_config(self.directory)
        self.limits = RegistryLimits.from_json(config.get("limits") or {})
        self.packages_dir = self.directory / PACKAGES_DIR
        url = db_url or config.get("db_url") or str(self.directory / SQLITE_FILE)
        try:
            self.db: Database = connect(url, timeout=10.0)
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT INTO reg_meta (k, v) VALUES (?, ?) ON CONFLICT (k) "
                            "DO NOTHING", ("schema", str(SCHEMA_VERSION)))
            self.db.generation(_CATALOGUE)  # creates the counter's table outside any transaction
        except StateError as exc:
            raise RequestRefused(503, "unavailable", f"the registry database "
                                f"{redacted(str(url))} cannot be opened: {exc.message}",
                                retry_after=5) from None
        self._tuf = tuf
        self._tuf_lock = threading.Lock()
        self._catalogue_lock = threading.Lock()
        self._catalogue_cache: tuple[int, dict[str, tuple[str, list[_Entry]]]] | None = None
        self.write_limiter = _RateLimiter(self.limits.writes_per_minute, self.limits.write_burst)
        #: Test seam and fault injection: called with each package file path before it is
        #: written (raise OSError there to simulate a full disk).
        self.before_write: Callable[[Path], None] | None = None

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def tuf(self) -> TufTargets:
        """The TUF repository (opened on first use)."""
        if self._tuf is None:
            self._tuf = _open_tuf(self.directory / TUF_DIR)
        return self._tuf

    @contextlib.contextmanager
    def _tuf_locked(self) -> Iterator[TufTargets]:
        """The TUF repository, held by this thread and, through ``tuf.lock``, by this process
        among every server process sharing the directory (its metadata files are rewritten)."""
        with self._tuf_lock:
            try:
                fd = os.open(self.directory / "tuf.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise self._storage_error(exc, "locking the TUF repository") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield self.tuf
            except RequestRefused:
                raise
            except OSError as exc:
                raise self._storage_error(exc, "writing the TUF metadata") from None
            except PlugboxError as exc:
                raise RequestRefused(500, "tuf", f"the registry's TUF repository refused the "
                                    f"change: {exc.message}", plugin=exc.plugin) from None
            finally:
                os.close(fd)

    def _unavailable(self, exc: StateError) -> RequestRefused:
        log.warning("registry database error: %s", exc.message)
        return RequestRefused(503, "unavailable",
                             f"the registry database is unavailable: {exc.message}",
                             retry_after=1)

    def _storage_error(self, exc: OSError, doing: str) -> RequestRefused:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return RequestRefused(507, "storage-full",
                                 f"the registry's storage is full while {doing} "
                                 f"({exc.strerror}); nothing was published: retry later",
                                 retry_after=60)
        return RequestRefused(500, "storage", f"the registry's storage failed while {doing}: "
                             f"{exc.strerror or exc}")

    def _atomic(self, body: Callable[[Tx], T]) -> T:
        try:
            return self.db.atomic(body)
        except StateError as exc:
            raise self._unavailable(exc) from None

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return self.db.execute(sql, params)
        except StateError as exc:
            raise self._unavailable(exc) from None

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- accounts and tokens -----------------------------------------------------------------

    def _new_token(self, tx: Tx, account: str, label: str | None) -> dict[str, Any]:
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        tx.execute("INSERT INTO reg_tokens (id, account, hash, label, created_at, revoked_at) "
                   "VALUES (?, ?, ?, ?, ?, NULL)",
                   (token_id, account, _hash_secret(secret), label, _now()))
        return {"token": f"{_TOKEN_PREFIX}{token_id}_{secret}", "token_id": token_id,
                "account": account}

    def bootstrap_admin(self, name: str) -> str:
        """Create the first admin account (``registry init``); its token."""
        def body(tx: Tx) -> str:
            tx.execute("INSERT INTO reg_accounts (name, admin, reviewer, created_at) "
                       "VALUES (?, 1, 1, ?)", (name, _now()))
            return str(self._new_token(tx, name, "init")["token"])

        return self._atomic(body)

    @staticmethod
    def token_id_of(token: str) -> str | None:
        """The id part of an API token (for rate limiting before the database is asked)."""
        if not token.startswith(_TOKEN_PREFIX):
            return None
        token_id, _, _ = token[len(_TOKEN_PREFIX):].partition("_")
        return token_id if re.fullmatch(r"[0-9a-f]{16}", token_id) else None

    def authenticate(self, token: str | None) -> Account:
        """The account an API token belongs to; 401 for a missing, unknown or revoked one.
        The stored hash is compared in constant time."""
        if not token:
            raise RequestRefused(401, "unauthorized", "this request needs an API token: send "
                                "'Authorization: Bearer pbx_...'")
        token_id = self.token_id_of(token)
        secret = token[len(_TOKEN_PREFIX) + 17:] if token_id else ""
        rows = self._read("SELECT t.hash, t.revoked_at, a.name, a.admin, a.reviewer "
                          "FROM reg_tokens t JOIN reg_accounts a ON a.name = t.account "
                          "WHERE t.id = ?", (token_id or "",))
        expected = rows[0][0] if rows else _hash_secret("x")
        matches = hmac.compare_digest(expected, _hash_secret(secret or "y"))
        if not rows or not matches:
            raise RequestRefused(401, "unauthorized", "the API token is not valid: ask an admin "
                                "for a new one")
        if rows[0][1] is not None:
            raise RequestRefused(401, "unauthorized", "the API token was revoked: create a new "
                                "one (POST /api/v1/accounts/NAME/tokens)")
        return Account(rows[0][2], bool(rows[0][3]), bool(rows[0][4]), str(token_id))

    @staticmethod
    def _require_admin(actor: Account, doing: str) -> None:
        if not actor.admin:
            raise RequestRefused(403, "forbidden", f"only an admin may {doing}")

    @staticmethod
    def _require_self_or_admin(actor: Account, name: str, doing: str) -> None:
        if actor.name != name and not actor.admin:
            raise RequestRefused(403, "forbidden", f"only {name!r} or an admin may {doing}")

    def create_account(self, actor: Account, name: str, *, admin: bool = False,
                       reviewer: bool = False) -> dict[str, Any]:
        """A new account (admins only) and its first token."""
        self._require_admin(actor, "create accounts")
        if not isinstance(name, str) or not _ACCOUNT_RE.match(name):
            raise RequestRefused(400, "invalid-request", f"account name {name!r} is invalid: "
                                f"1-64 lowercase letters, digits, '_' or '-', starting with a "
                                f"letter")

        def body(tx: Tx) -> dict[str, Any]:
            if tx.execute("SELECT 1 FROM reg_accounts WHERE name = ?", (name,)).fetchone():
                raise RequestRefused(409, "conflict", f"account {name!r} exists already")
            tx.execute("INSERT INTO reg_accounts (name, admin, reviewer, created_at) "
                       "VALUES (?, ?, ?, ?)", (name, int(admin), int(reviewer), _now()))
            return {**self._new_token(tx, name, "first"), "admin": admin, "reviewer": reviewer}

        return self._atomic(body)

    def create_token(self, actor: Account, name: str, label: str | None = None
                     ) -> dict[str, Any]:
        """Another token for ``name`` (itself or an admin)."""
        self._require_self_or_admin(actor, name, "create its tokens")

        def body(tx: Tx) -> dict[str, Any]:
            if not tx.execute("SELECT 1 FROM reg_accounts WHERE name = ?", (name,)).fetchone():
                raise RequestRefused(404, "not-found", f"no account {name!r}")
            return self._new_token(tx, name, label)

        return self._atomic(body)

    def revoke_token(self, actor: Account, token_id: str) -> dict[str, Any]:
        """Revoke a token (its account or an admin); later requests with it are 401."""
        def body(tx: Tx) -> dict[str, Any]:
            row = tx.execute("SELECT account, revoked_at FROM reg_tokens WHERE id = ?",
                             (token_id,)).fetchone()
            if row is None:
                raise RequestRefused(404, "not-found", f"no token {token_id!r}")
            self._require_self_or_admin(actor, row[0], "revoke its tokens")
            if row[1] is None:
                tx.execute("UPDATE reg_tokens SET revoked_at = ? WHERE id = ?",
                           (_now(), token_id))
            return {"token_id": token_id, "account": row[0], "revoked": True}

        return self._atomic(body)

    def add_key(self, actor: Account, name: str, public_key: str) -> dict[str, Any]:
        """Register a minisign public key (the file's text or its base64 line) for ``name``:
        packages signed by it are accepted from ``name``."""
        self._require_self_or_admin(actor, name, "register its keys")
        if not isinstance(public_key, str) or len(public_key) > 4096:
            raise RequestRefused(400, "invalid-request", "public_key must be a minisign public "
                                "key (text, at most 4096 characters)")
        try:
            key = (PublicKey.parse(public_key) if "\n" in public_key.strip()
                   else PublicKey.from_base64(public_key.strip()))
        except PlugboxError as exc:
            raise RequestRefused(400, "invalid-request", f"public_key: {exc.message}") from None

        def body(tx: Tx) -> dict[str, Any]:
            if not tx.execute("SELECT 1 FROM reg_accounts WHERE name = ?", (name,)).fetchone():
                raise RequestRefused(404, "not-found", f"no account {name!r}")
            row = tx.execute("SELECT account FROM reg_keys WHERE key_id = ?",
                             (key.key_id_hex,)).fetchone()
            if row is not None:
                if row[0] != name:
                    raise RequestRefused(409, "conflict", f"key {key.key_id_hex} is registered "
                                        f"by another account")
            else:
                tx.execute("INSERT INTO reg_keys (key_id, account, public_key, added_at) "
                           "VALUES (?, ?, ?, ?)", (key.key_id_hex, name, key.to_text(), _now()))
            return {"account": name, "key_id": key.key_id_hex}

        return self._atomic(body)

    def remove_key(self, actor: Account, name: str, key_id: str) -> dict[str, Any]:
        """Unregister a key: packages signed only by it are no longer accepted."""
        self._require_self_or_admin(actor, name, "remove its keys")

        def body(tx: Tx) -> dict[str, Any]:
            if not tx.execute("SELECT 1 FROM reg_keys WHERE key_id = ? AND account = ?",
                              (key_id.upper(), name)).fetchone():
                raise RequestRefused(404, "not-found", f"{name!r} has no key {key_id!r}")
            tx.execute("DELETE FROM reg_keys WHERE key_id = ?", (key_id.upper(),))
            return {"account": name, "key_id": key_id.upper(), "removed": True}

        return self._atomic(body)

    def keys(self, name: str) -> dict[str, Any]:
        """An account's registered public keys (public: anyone may check signatures)."""
        rows = self._read("SELECT key_id, public_key, added_at FROM reg_keys WHERE account = ? "
                          "ORDER BY added_at", (name,))
        return {"account": name, "keys": [{"key_id": r[0], "public_key": r[1],
                                           "added_at": r[2]} for r in rows]}

    def _keys_of(self, account: str) -> list[PublicKey]:
        rows = self._read("SELECT public_key FROM reg_keys WHERE account = ?", (account,))
        return [PublicKey.parse(r[0]) for r in rows]

    # -- publishing --------------------------------------------------------------------------

    def publish(self, actor: Account, data: bytes, tags: Sequence[str] = ()) -> dict[str, Any]:
        """Accept an uploaded package (module docstring): every verify check, a key of the
        name's owner (the uploader claims a new name), a version not yet published."""
        clean_tags = self._clean_tags(tags)
        limits = PackageLimits(max_package_bytes=self.limits.max_upload_bytes)
        # The owner first (a name owned by someone else is refused before the heavy checks).
        from ..trust._package import read_package

        try:
            members = read_package(data, limits)
        except PlugboxError as exc:
            raise RequestRefused(422, "invalid-package", f"the package fails the package check "
                                f"plugbox verify makes: {exc.message}",
                                detail={"check": "package", "type": type(exc).__name__}) from None
        from ._verify import peek_name

        name, version = peek_name(members)
        owner_rows = self._read("SELECT owner FROM reg_plugins WHERE name = ?", (name,))
        if owner_rows and owner_rows[0][0] != actor.name:
            raise RequestRefused(403, "forbidden", f"plugin name {name!r} belongs to "
                                f"{owner_rows[0][0]!r}; publish under another name, or ask an "
                                f"admin to transfer it", plugin=name)
        verified = verify_package(data, self._keys_of(actor.name), limits)
        if self._read("SELECT 1 FROM reg_versions WHERE name = ? AND version = ?",
                      (name, version)):
            raise self._exists(name, version)
        final = self.packages_dir / name / f"{name}-{version}.plugbox"
        tmp = self._write_temp(final, data)
        renamed: list[bool] = []
        signed: list[tuple[str, bytes | None]] = []
        try:
            # One transaction, not retried: its body renames the file and signs TUF metadata.
            with self.db.transaction() as tx:
                return self._insert(tx, actor, verified, clean_tags, tmp, final, renamed,
                                    signed)
        except StateError as exc:
            if renamed:
                with contextlib.suppress(OSError):
                    final.unlink()
            self._unsign(name, version, signed)
            if self._lost_race(name, version):
                raise self._exists(name, version) from None
            if _is_unique_violation(exc):
                raise RequestRefused(409, "conflict", f"{name!r} was claimed by another "
                                    f"publisher at the same time", plugin=name) from None
            raise self._unavailable(exc) from None
        except BaseException:
            if renamed:
                with contextlib.suppress(OSError):
                    final.unlink()
            self._unsign(name, version, signed)
            raise
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _unsign(self, name: str, version: str, signed: list[tuple[str, bytes | None]]) -> None:
        """Undo the TUF side of a publish that did not commit: remove its target (and, for a
        new name, the name's delegation, index entry and listing) and put the previous
        listing back. A failure here (the TUF repository's disk failing too) is logged: the
        target then stays in TUF with no row, and the same version cannot be published again
        until an operator removes it (``TufRepository.remove_target``)."""
        if not signed:
            return
        publisher, previous = signed[0]
        try:
            with self._tuf_locked() as tuf:
                tuf.remove_target(publisher, target_path(name, version))
                if previous is not None:
                    tuf.set_listing(name, previous)
        except (RequestRefused, OSError) as exc:
            log.error("the TUF target of %s %s could not be removed after its publish failed "
                      "(%s); remove it with TufRepository.remove_target before publishing it "
                      "again", name, version, exc)

    def _lost_race(self, name: str, version: str) -> bool:
        try:
            return bool(self.db.execute("SELECT 1 FROM reg_versions WHERE name = ? AND "
                                        "version = ?", (name, version)))
        except StateError:
            return False

    @staticmethod
    def _exists(name: str, version: str) -> RequestRefused:
        return RequestRefused(409, "version-exists", f"{name} {version} is already published; "
                             f"versions are immutable: publish a new version", plugin=name)

    @staticmethod
    def _clean_tags(tags: Sequence[str]) -> list[str]:
        out: list[str] = []
        for tag in tags:
            tag = tag.strip().lower()
            if not tag:
                continue
            if not _TAG_RE.match(tag):
                raise RequestRefused(400, "invalid-request", f"tag {tag!r} is invalid: 1-32 "
                                    f"lowercase letters, digits, '.', '+', '_' or '-'")
            if tag not in out:
                out.append(tag)
        if len(out) > 16:
            raise RequestRefused(400, "invalid-request", "at most 16 tags")
        return out

    def _write_temp(self, final: Path, data: bytes) -> Path:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if self.before_write is not None:
                self.before_write(final)
            fd, name = tempfile.mkstemp(prefix=".upload-", dir=final.parent)
        except OSError as exc:
            raise self._storage_error(exc, "storing the package") from None
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._storage_error(exc, "storing the package") from None
        return tmp

    def _insert(self, tx: Tx, actor: Account, pkg: VerifiedPackage, tags: list[str],
                tmp: Path, final: Path, renamed: list[bool],
                signed: list[tuple[str, bytes | None]]) -> dict[str, Any]:
        name, version, now = pkg.name, pkg.version, _now()
        facts = pkg.facts()
        row = tx.execute("SELECT owner, tags FROM reg_plugins WHERE name = ?", (name,)).fetchone()
        if row is None:
            tx.execute("INSERT INTO reg_plugins (name, owner, description, tags, created_at, "
                       "updated_at, downloads, rating_sum, rating_count) "
                       "VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0)",
                       (name, actor.name, facts["description"], " ".join(tags), now, now))
        elif row[0] != actor.name:
            raise RequestRefused(403, "forbidden", f"plugin name {name!r} belongs to "
                                f"{row[0]!r}", plugin=name)
        else:
            tx.execute("UPDATE reg_plugins SET description = ?, tags = ?, updated_at = ? "
                       "WHERE name = ?",
                       (facts["description"], " ".join(tags) if tags else row[1], now, name))
        tx.execute(
            "INSERT INTO reg_versions (name, version, sha256, size, facts_json, manifest_json, "
            "signers_json, abi, host, permissions, points, publisher, published_at, yanked, "
            "yank_reason, yanked_at, downloads) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, 0)",
            (name, version, pkg.sha256, len(pkg.data), json.dumps(facts),
             pkg.manifest.data.decode("utf-8", "replace"), json.dumps(list(pkg.signers)),
             pkg.manifest.abi, pkg.manifest.host, " ".join(facts["permissions"]),
             " ".join(facts["extension_points"]), actor.name, now))
        self.db.bump_generation(_CATALOGUE, tx)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise self._storage_error(exc, "storing the package") from None
        renamed.append(True)
        try:
            custom = self._custom(pkg.data, yanked=False, reason=None)
            with self._tuf_locked() as tuf:
                # The database decided the uploader owns the name; a delegation TUF still
                # gives another role (a name transferred before transfers moved delegations,
                # or a transfer whose undo failed) follows it first.
                if tuf.owner_of(name) not in (None, actor.name):
                    tuf.transfer_name(name, actor.name)
                previous = tuf.listing(name)
                tuf.add_target(actor.name, target_path(name, version), pkg.data, custom)
                signed.append((actor.name, previous))
                tuf.set_listing(name, self._listing(tx, name))
                tuf.refresh_timestamp()
        except Exception as exc:
            if isinstance(exc, OSError):
                raise self._storage_error(exc, "signing the TUF metadata") from None
            if isinstance(exc, PlugboxError) and not isinstance(exc, RequestRefused):
                raise RequestRefused(500, "tuf", f"the TUF repository refused the target: "
                                    f"{exc.message}", plugin=name) from None
            raise
        return self._version_doc_tx(tx, name, version)

    @staticmethod
    def _custom(data: bytes, *, yanked: bool, reason: str | None) -> dict[str, Any]:
        """A target's TUF ``custom``: the manifest facts, the author's signatures, the yank."""
        from ._tuf import package_custom

        return package_custom(data, yanked=yanked, yank_reason=reason)

    def _listing(self, tx: Tx, name: str) -> bytes:
        """The signed listing of ``name`` (TUF target ``listings/<name>.json``): its versions
        with yank state, and its advisories."""
        plugin = tx.execute("SELECT owner, description, tags FROM reg_plugins WHERE name = ?",
                            (name,)).fetchone()
        versions = tx.execute("SELECT version, sha256, yanked, yank_reason FROM reg_versions "
                              "WHERE name = ?", (name,)).fetchall()
        advisories = tx.execute("SELECT id, affected, severity, fixed_in, text, published_at "
                                "FROM reg_advisories WHERE name = ? ORDER BY id",
                                (name,)).fetchall()
        doc = {
            "name": name,
            "owner": plugin[0] if plugin else None,
            "description": plugin[1] if plugin else "",
            "tags": plugin[2].split() if plugin and plugin[2] else [],
            "versions": sorted(({"version": v[0], "sha256": v[1], "yanked": bool(v[2]),
                                 "yank_reason": v[3]} for v in versions),
                               key=lambda d: _version_key(str(d["version"]))),
            "advisories": [{"id": a[0], "affected": a[1], "severity": a[2], "fixed_in": a[3],
                            "text": a[4], "published_at": a[5]} for a in advisories],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    # -- reading -----------------------------------------------------------------------------

    def _version_doc_tx(self, tx: Tx, name: str, version: str) -> dict[str, Any]:
        row = tx.execute(
            "SELECT version, sha256, size, facts_json, manifest_json, signers_json, publisher, "
            "published_at, yanked, yank_reason, yanked_at, downloads FROM reg_versions "
            "WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            raise RequestRefused(404, "not-found", f"{name} has no version {version!r}",
                                plugin=name)
        reviews = tx.execute(
            "SELECT reviewer, status, notes, key_id, signature, reviewed_at FROM "
            "reg_security_reviews WHERE name = ? AND version = ? ORDER BY reviewed_at",
            (name, version)).fetchall()
        return self._version_json(name, row, reviews)

    @staticmethod
    def _version_json(name: str, row: Sequence[Any], reviews: Sequence[Sequence[Any]]
                      ) -> dict[str, Any]:
        facts = json.loads(row[3])
        try:
            manifest = json.loads(row[4])
        except ValueError:
            manifest = None
        return {
            "name": name,
            "version": row[0],
            "sha256": row[1],
            "size": row[2],
            "manifest": manifest,
            "permissions": facts["permissions"],
            "extension_points": facts["extension_points"],
            "compatibility": {"abi": facts["abi"], "host": facts["host"],
                              "requires": facts["requires"], "optional": facts["optional"],
                              "conflicts": facts["conflicts"],
                              "declares_points": facts["declares_points"]},
            "signers": json.loads(row[5]),
            "publisher": row[6],
            "published_at": row[7],
            "yanked": bool(row[8]),
            "yank_reason": row[9],
            "yanked_at": row[10],
            "downloads": row[11],
            "security_reviews": [{"reviewer": r[0], "status": r[1], "notes": r[2],
                                  "key_id": r[3], "signature": r[4], "reviewed_at": r[5],
                                  "verified": True} for r in reviews],
            "download_url": f"/api/v1/plugins/{name}/versions/{row[0]}/download",
            "tuf_target": target_path(name, row[0]),
        }

    def version(self, name: str, version: str) -> dict[str, Any]:
        """One version: manifest, permissions, signers, compatibility, reviews, downloads."""
        return self._atomic(lambda tx: self._version_doc_tx(tx, name, version))

    def versions(self, name: str) -> dict[str, Any]:
        """Every version of a plugin, newest first."""
        def body(tx: Tx) -> dict[str, Any]:
            self._plugin_row(tx, name)
            rows = tx.execute(
                "SELECT version, sha256, size, facts_json, manifest_json, signers_json, "
                "publisher, published_at, yanked, yank_reason, yanked_at, downloads "
                "FROM reg_versions WHERE name = ?", (name,)).fetchall()
            reviews = tx.execute(
                "SELECT version, reviewer, status, notes, key_id, signature, reviewed_at FROM "
                "reg_security_reviews WHERE name = ? ORDER BY reviewed_at", (name,)).fetchall()
            by_version: dict[str, list[Sequence[Any]]] = {}
            for r in reviews:
                by_version.setdefault(r[0], []).append(r[1:])
            docs = [self._version_json(name, r, by_version.get(r[0], [])) for r in rows]
            docs.sort(key=lambda d: _version_key(d["version"]), reverse=True)
            return {"name": name, "versions": docs}

        return self._atomic(body)

    @staticmethod
    def _plugin_row(tx: Tx, name: str) -> Sequence[Any]:
        row = tx.execute("SELECT name, owner, description, tags, created_at, updated_at, "
                         "downloads, rating_sum, rating_count FROM reg_plugins WHERE name = ?",
                         (name,)).fetchone()
        if row is None:
            raise RequestRefused(404, "not-found", f"no plugin named {name!r} in this registry",
                                plugin=name)
        return tuple(row)

    @staticmethod
    def _plugin_json(row: Sequence[Any]) -> dict[str, Any]:
        count = int(row[8])
        return {"name": row[0], "owner": row[1], "description": row[2],
                "tags": row[3].split() if row[3] else [], "created_at": row[4],
                "updated_at": row[5], "downloads": int(row[6]),
                "rating": round(int(row[7]) / count, 2) if count else None,
                "ratings": count}

    def plugin(self, name: str) -> dict[str, Any]:
        """A plugin: owner, description, tags, downloads, rating, latest version, advisories."""
        def body(tx: Tx) -> dict[str, Any]:
            doc = self._plugin_json(self._plugin_row(tx, name))
            rows = tx.execute("SELECT version, yanked FROM reg_versions WHERE name = ?",
                              (name,)).fetchall()
            live = [r[0] for r in rows if not r[1]]
            doc["latest"] = max(live, key=_version_key) if live else None
            doc["versions"] = sorted((r[0] for r in rows), key=_version_key, reverse=True)
            doc["advisories"] = self._advisories_tx(tx, name)
            return doc

        return self._atomic(body)

    def search(self, *, q: str = "", point: Sequence[str] = (), permission: Sequence[str] = (),
               allowed_permissions: str | None = None, host: str | None = None,
               abi: str | None = None, sort: str = "downloads", page: int = 1,
               per_page: int = 20) -> dict[str, Any]:
        """Plugins matching every filter, each with its newest version that fits them (module
        docstring of ``_app.py`` and docs/registry.md name the parameters)."""
        lim = self.limits
        if len(q) > lim.max_query_chars:
            raise RequestRefused(400, "invalid-request",
                                f"q is longer than {lim.max_query_chars} characters")
        if sort not in _SORTS:
            raise RequestRefused(400, "invalid-request", f"sort must be one of {list(_SORTS)}")
        if not 1 <= per_page <= lim.max_page_size:
            raise RequestRefused(400, "invalid-request",
                                f"per_page must be between 1 and {lim.max_page_size}")
        if not 1 <= page <= 10_000:
            raise RequestRefused(400, "invalid-request", "page must be between 1 and 10000")
        if len(point) > 8 or len(permission) > 8:
            raise RequestRefused(400, "invalid-request", "at most 8 point and 8 permission "
                                "filters")
        host_version: Version | None = None
        if host is not None:
            try:
                host_version = Version(host)
            except InvalidVersion:
                raise RequestRefused(400, "invalid-request", f"host {host!r} is not a version")
        if abi is not None and not re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", abi):
            raise RequestRefused(400, "invalid-request", f"abi {abi!r} is not MAJOR.MINOR")
        allowed = None if allowed_permissions is None else set(
            p for p in allowed_permissions.split(",") if p)
        terms = [t.lower() for t in q.split()][:8]
        points, perms = set(point), set(permission)
        catalogue = self._catalogue()
        chosen_versions: dict[str, _Entry] = {}
        for name, (haystack, entries) in catalogue.items():
            if not all(term in haystack for term in terms):
                continue
            for e in entries:  # newest first
                if points and not points <= e.points:
                    continue
                if perms and not perms <= e.permissions:
                    continue
                if allowed is not None and not e.permissions <= allowed:
                    continue
                if abi is not None and not abi_compatible(e.abi, abi):
                    continue
                if host_version is not None and e.host is not None and (
                        e.spec is None or not e.spec.contains(host_version, prereleases=True)):
                    continue
                chosen_versions[name] = e
                break
        plugin_rows = {r[0]: r for r in self._read(
            "SELECT name, owner, description, tags, created_at, updated_at, downloads, "
            "rating_sum, rating_count FROM reg_plugins")}
        chosen = [(*plugin_rows[n], e.version, e.abi, e.host, " ".join(sorted(e.permissions)),
                   " ".join(sorted(e.points)), e.published_at)
                  for n, e in chosen_versions.items() if n in plugin_rows]
        if sort == "downloads":
            chosen.sort(key=lambda r: (-int(r[6]), r[0]))
        elif sort == "rating":
            chosen.sort(key=lambda r: (-(int(r[7]) / int(r[8]) if int(r[8]) else 0.0),
                                       -int(r[8]), r[0]))
        elif sort == "recent":
            chosen.sort(key=lambda r: (-float(r[14]), r[0]))
        else:
            chosen.sort(key=lambda r: r[0])
        start = (page - 1) * per_page
        items = []
        for r in chosen[start:start + per_page]:
            doc = self._plugin_json(r[:9])
            doc["version"] = r[9]
            doc["abi"] = r[10]
            doc["host"] = r[11]
            doc["permissions"] = r[12].split()
            doc["extension_points"] = r[13].split()
            doc["published_at"] = r[14]
            items.append(doc)
        return {"total": len(chosen), "page": page, "per_page": per_page, "sort": sort,
                "items": items}

    def _catalogue(self) -> dict[str, tuple[str, list[_Entry]]]:
        """Every plugin's search text and its versions not yanked (newest first), cached
        until the database's ``registry-catalogue`` generation moves (a publish, a yank, a
        transfer in any server process): a search then costs one indexed read of the
        counter and one of the plugins' counts and ratings, not a scan of every version."""
        generation = self._generation()
        with self._catalogue_lock:
            if self._catalogue_cache is not None and self._catalogue_cache[0] == generation:
                return self._catalogue_cache[1]
            plugins = self._read("SELECT name, description, tags FROM reg_plugins")
            rows = self._read("SELECT name, version, abi, host, permissions, points, "
                              "published_at FROM reg_versions WHERE yanked = 0")
            specs: dict[str, SpecifierSet | None] = {}
            by_name: dict[str, list[_Entry]] = {}
            for r in rows:
                spec = None
                if r[3] is not None:
                    if r[3] not in specs:
                        try:
                            specs[r[3]] = SpecifierSet(r[3])
                        except InvalidSpecifier:
                            specs[r[3]] = None
                    spec = specs[r[3]]
                by_name.setdefault(r[0], []).append(_Entry(
                    _version_key(r[1]), r[1], r[2], r[3], spec, frozenset(r[4].split()),
                    frozenset(r[5].split()), float(r[6])))
            catalogue: dict[str, tuple[str, list[_Entry]]] = {}
            for name, description, tags in plugins:
                entries = sorted(by_name.get(name, []), key=lambda e: e.key, reverse=True)
                catalogue[name] = (f"{name} {description.lower()} {tags}", entries)
            self._catalogue_cache = (generation, catalogue)
            return catalogue

    def _generation(self) -> int:
        try:
            return self.db.generation(_CATALOGUE)
        except StateError as exc:
            raise self._unavailable(exc) from None

    def count_download(self, name: str, version: str) -> bool:
        """Count one download of a version fetched as a TUF target (what the client does);
        False when there is no such version."""
        def body(tx: Tx) -> bool:
            if not tx.execute("SELECT 1 FROM reg_versions WHERE name = ? AND version = ?",
                              (name, version)).fetchone():
                return False
            tx.execute("UPDATE reg_versions SET downloads = downloads + 1 WHERE name = ? AND "
                       "version = ?", (name, version))
            tx.execute("UPDATE reg_plugins SET downloads = downloads + 1 WHERE name = ?",
                       (name,))
            return True

        return self._atomic(body)

    def download(self, name: str, version: str) -> tuple[Path, str]:
        """The package file of a version and its sha256; counts one download."""
        def body(tx: Tx) -> tuple[Path, str]:
            row = tx.execute("SELECT sha256 FROM reg_versions WHERE name = ? AND version = ?",
                             (name, version)).fetchone()
            if row is None:
                raise RequestRefused(404, "not-found", f"{name} has no version {version!r}",
                                    plugin=name)
            tx.execute("UPDATE reg_versions SET downloads = downloads + 1 WHERE name = ? AND "
                       "version = ?", (name, version))
            tx.execute("UPDATE reg_plugins SET downloads = downloads + 1 WHERE name = ?",
                       (name,))
            return self.packages_dir / name / f"{name}-{version}.plugbox", str(row[0])

        return self._atomic(body)

    # -- publisher and admin actions ---------------------------------------------------------

    def _owner_or_admin(self, tx: Tx, actor: Account, name: str, doing: str) -> None:
        row = self._plugin_row(tx, name)
        if row[1] != actor.name and not actor.admin:
            raise RequestRefused(403, "forbidden", f"only {name!r}'s owner ({row[1]}) or an "
                                f"admin may {doing}", plugin=name)

    def yank(self, actor: Account, name: str, version: str, reason: str,
             yanked: bool = True) -> dict[str, Any]:
        """Yank (or, with ``yanked=False``, restore) a version, with a reason: clients stop
        offering it unless pinned exactly. Signed into TUF (the target's custom data and the
        plugin's listing)."""
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
            raise RequestRefused(400, "invalid-request", "reason must be a non-empty text of at "
                                "most 1000 characters")

        def body(tx: Tx) -> dict[str, Any]:
            self._owner_or_admin(tx, actor, name, "yank its versions")
            row = tx.execute("SELECT publisher FROM reg_versions "
                             "WHERE name = ? AND version = ?", (name, version)).fetchone()
            if row is None:
                raise RequestRefused(404, "not-found", f"{name} has no version {version!r}",
                                    plugin=name)
            tx.execute("UPDATE reg_versions SET yanked = ?, yank_reason = ?, yanked_at = ? "
                       "WHERE name = ? AND version = ?",
                       (int(yanked), reason, _now(), name, version))
            self.db.bump_generation(_CATALOGUE, tx)
            try:
                data = (self.packages_dir / name / f"{name}-{version}.plugbox").read_bytes()
            except OSError as exc:
                raise self._storage_error(exc, "reading the package to yank") from None
            with self._tuf_locked() as tuf:
                custom = self._custom(data, yanked=yanked, reason=reason if yanked else None)
                tuf.update_target_custom(tuf.owner_of(name) or row[0],
                                         target_path(name, version), custom)
                tuf.set_listing(name, self._listing(tx, name))
                tuf.refresh_timestamp()
            return self._version_doc_tx(tx, name, version)

        return self._atomic(body)

    def transfer(self, actor: Account, name: str, to: str) -> dict[str, Any]:
        """Give a plugin name to another account (admins only). In the same transaction the
        TUF delegation follows (:meth:`TufRepository.transfer_name`: the name's pattern and
        its targets move to ``to``'s role, so the old owner's role can no longer sign the
        name) and the listing is signed afresh; should the transaction not commit, the
        delegation and the listing are moved back."""
        self._require_admin(actor, "transfer plugin names")
        undo: list[tuple[str, bytes | None]] = []

        def body(tx: Tx) -> dict[str, Any]:
            self._plugin_row(tx, name)
            if not tx.execute("SELECT 1 FROM reg_accounts WHERE name = ?", (to,)).fetchone():
                raise RequestRefused(404, "not-found", f"no account {to!r}")
            tx.execute("UPDATE reg_plugins SET owner = ? WHERE name = ?", (to, name))
            self.db.bump_generation(_CATALOGUE, tx)
            with self._tuf_locked() as tuf:
                previous = tuf.listing(name)
                old = tuf.transfer_name(name, to)
                if old is not None and not undo:  # a retried body finds the move done
                    undo.append((old, previous))
                tuf.set_listing(name, self._listing(tx, name))
            return self._plugin_json(self._plugin_row(tx, name))

        try:
            return self._atomic(body)
        except BaseException:
            if undo:
                old, previous = undo[0]
                try:
                    with self._tuf_locked() as tuf:
                        tuf.transfer_name(name, old)
                        if previous is not None:
                            tuf.set_listing(name, previous)
                except (RequestRefused, OSError) as exc:
                    log.error("the TUF delegation of %s could not be moved back to %s after "
                              "its transfer failed (%s); %s's next publish moves it", name,
                              old, exc, old)
            raise

    # -- advisories --------------------------------------------------------------------------

    @staticmethod
    def _advisories_tx(tx: Tx, name: str | None) -> list[dict[str, Any]]:
        sql = ("SELECT id, name, affected, severity, fixed_in, text, published_by, "
               "published_at FROM reg_advisories")
        rows = (tx.execute(sql + " WHERE name = ? ORDER BY published_at", (name,)).fetchall()
                if name is not None else
                tx.execute(sql + " ORDER BY published_at DESC").fetchall())
        return [{"id": r[0], "plugin": r[1], "affected": r[2], "severity": r[3],
                 "fixed_in": r[4], "text": r[5], "published_by": r[6], "published_at": r[7]}
                for r in rows]

    def advisories(self, name: str | None = None, limit: int = 500) -> dict[str, Any]:
        """The advisories of one plugin, or the newest ``limit`` of all."""
        def body(tx: Tx) -> dict[str, Any]:
            if name is not None:
                self._plugin_row(tx, name)
            return {"advisories": self._advisories_tx(tx, name)[:limit]}

        return self._atomic(body)

    def add_advisory(self, actor: Account, name: str, doc: Mapping[str, Any]
                     ) -> dict[str, Any]:
        """Publish a security advisory for ``name`` (its owner or an admin): ``id``,
        ``affected`` (a PEP 440 specifier), ``severity``, optional ``fixed_in``, ``text``."""
        adv_id, affected = doc.get("id"), doc.get("affected")
        severity, fixed_in, text = doc.get("severity"), doc.get("fixed_in"), doc.get("text")
        if not isinstance(adv_id, str) or not _ADVISORY_RE.match(adv_id):
            raise RequestRefused(400, "invalid-request", "id must be 1-64 letters, digits, '.', "
                                "'_' or '-' (e.g. PBX-2026-0001)")
        if not isinstance(affected, str) or len(affected) > 256:
            raise RequestRefused(400, "invalid-request", "affected must be a PEP 440 version "
                                "specifier such as '<1.2.1'")
        try:
            SpecifierSet(affected)
        except InvalidSpecifier:
            raise RequestRefused(400, "invalid-request", f"affected {affected!r} is not a PEP "
                                f"440 version specifier (e.g. '>=1.0,<1.2.1')") from None
        if severity not in _SEVERITIES:
            raise RequestRefused(400, "invalid-request",
                                f"severity must be one of {list(_SEVERITIES)}")
        if fixed_in is not None and (not isinstance(fixed_in, str) or len(fixed_in) > 128):
            raise RequestRefused(400, "invalid-request", "fixed_in must be a version or null")
        if not isinstance(text, str) or not text.strip() or len(text) > 8192:
            raise RequestRefused(400, "invalid-request", "text must be a non-empty text of at "
                                "most 8192 characters")

        def body(tx: Tx) -> dict[str, Any]:
            self._owner_or_admin(tx, actor, name, "publish its advisories")
            if tx.execute("SELECT 1 FROM reg_advisories WHERE id = ?", (adv_id,)).fetchone():
                raise RequestRefused(409, "conflict", f"advisory {adv_id!r} exists already")
            tx.execute("INSERT INTO reg_advisories (id, name, affected, severity, fixed_in, "
                       "text, published_by, published_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (adv_id, name, affected, severity, fixed_in, text, actor.name, _now()))
            with self._tuf_locked() as tuf:
                tuf.set_listing(name, self._listing(tx, name))
                tuf.refresh_timestamp()
            return next(a for a in self._advisories_tx(tx, name) if a["id"] == adv_id)

        return self._atomic(body)

    # -- ratings and reviews -----------------------------------------------------------------

    @staticmethod
    def _rerate(tx: Tx, name: str) -> None:
        row = tx.execute("SELECT COALESCE(SUM(rating), 0), COUNT(*) FROM reg_reviews WHERE "
                         "name = ? AND hidden = 0", (name,)).fetchone()
        tx.execute("UPDATE reg_plugins SET rating_sum = ?, rating_count = ? WHERE name = ?",
                   (int(row[0]), int(row[1]), name))

    def put_review(self, actor: Account, name: str, rating: Any, text: Any) -> dict[str, Any]:
        """Create or edit ``actor``'s one review of ``name`` (rating 1-5, text)."""
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise RequestRefused(400, "invalid-request", "rating must be an integer from 1 to 5")
        if not isinstance(text, str) or len(text) > 4000:
            raise RequestRefused(400, "invalid-request", "text must be at most 4000 characters")

        def body(tx: Tx) -> dict[str, Any]:
            self._plugin_row(tx, name)
            now = _now()
            if tx.execute("SELECT 1 FROM reg_reviews WHERE name = ? AND account = ?",
                          (name, actor.name)).fetchone():
                tx.execute("UPDATE reg_reviews SET rating = ?, text = ?, updated_at = ? "
                           "WHERE name = ? AND account = ?",
                           (rating, text, now, name, actor.name))
            else:
                tx.execute("INSERT INTO reg_reviews (name, account, rating, text, created_at, "
                           "updated_at, hidden, moderation_reason) "
                           "VALUES (?, ?, ?, ?, ?, ?, 0, NULL)",
                           (name, actor.name, rating, text, now, now))
            self._rerate(tx, name)
            return self._review_tx(tx, name, actor.name)

        return self._atomic(body)

    @staticmethod
    def _review_json(r: Sequence[Any]) -> dict[str, Any]:
        return {"plugin": r[0], "user": r[1], "rating": r[2], "text": r[3],
                "created_at": r[4], "updated_at": r[5], "hidden": bool(r[6]),
                "moderation_reason": r[7]}

    def _review_tx(self, tx: Tx, name: str, user: str) -> dict[str, Any]:
        row = tx.execute("SELECT name, account, rating, text, created_at, updated_at, hidden, "
                         "moderation_reason FROM reg_reviews WHERE name = ? AND account = ?",
                         (name, user)).fetchone()
        if row is None:
            raise RequestRefused(404, "not-found", f"{user!r} has not reviewed {name!r}")
        return self._review_json(row)

    def reviews(self, name: str, *, include_hidden: bool = False) -> dict[str, Any]:
        """A plugin's reviews (hidden ones only for admins), newest first, and its rating."""
        def body(tx: Tx) -> dict[str, Any]:
            plugin = self._plugin_json(self._plugin_row(tx, name))
            rows = tx.execute("SELECT name, account, rating, text, created_at, updated_at, "
                              "hidden, moderation_reason FROM reg_reviews WHERE name = ? "
                              "ORDER BY updated_at DESC", (name,)).fetchall()
            items = [self._review_json(r) for r in rows if include_hidden or not r[6]]
            return {"plugin": name, "rating": plugin["rating"], "ratings": plugin["ratings"],
                    "reviews": items[:1000]}

        return self._atomic(body)

    def moderate(self, actor: Account, name: str, user: str, hidden: bool,
                 reason: str | None) -> dict[str, Any]:
        """Hide (or show again) a review (admins only); hidden reviews leave the rating."""
        self._require_admin(actor, "moderate reviews")
        if not isinstance(hidden, bool):
            raise RequestRefused(400, "invalid-request", "hidden must be true or false")

        def body(tx: Tx) -> dict[str, Any]:
            self._review_tx(tx, name, user)
            tx.execute("UPDATE reg_reviews SET hidden = ?, moderation_reason = ? WHERE name = ? "
                       "AND account = ?", (int(hidden), reason, name, user))
            self._rerate(tx, name)
            return self._review_tx(tx, name, user)

        return self._atomic(body)

    # -- security reviews --------------------------------------------------------------------

    def add_security_review(self, actor: Account, name: str, version: str, status: Any,
                            signature: Any, notes: Any = "") -> dict[str, Any]:
        """Record a security review of one version by a reviewer account: ``status``
        (approved/rejected) and the reviewer's minisign signature over the package's sha256
        (its 64 hex digits, as ASCII), verified against the reviewer's registered keys."""
        if not (actor.reviewer or actor.admin):
            raise RequestRefused(403, "forbidden", "only reviewers and admins may record "
                                "security reviews")
        if status not in _REVIEW_STATUSES:
            raise RequestRefused(400, "invalid-request",
                                f"status must be one of {list(_REVIEW_STATUSES)}")
        if not isinstance(notes, str) or len(notes) > 8192:
            raise RequestRefused(400, "invalid-request", "notes must be at most 8192 characters")
        if not isinstance(signature, str) or len(signature) > 16384:
            raise RequestRefused(400, "invalid-request", "signature must be a minisign "
                                "signature (text)")
        try:
            sig = Signature.parse(signature)
        except PlugboxError as exc:
            raise RequestRefused(400, "invalid-request", f"signature: {exc.message}") from None
        rows = self._read("SELECT public_key FROM reg_keys WHERE account = ? AND key_id = ?",
                          (actor.name, sig.key_id_hex))
        if not rows:
            raise RequestRefused(403, "untrusted-signer", f"the review is signed by key "
                                f"{sig.key_id_hex}, which {actor.name!r} has not registered")
        key = PublicKey.parse(rows[0][0])

        def body(tx: Tx) -> dict[str, Any]:
            row = tx.execute("SELECT sha256 FROM reg_versions WHERE name = ? AND version = ?",
                             (name, version)).fetchone()
            if row is None:
                raise RequestRefused(404, "not-found", f"{name} has no version {version!r}",
                                    plugin=name)
            try:
                verify_bytes(str(row[0]).encode("ascii"), sig, key)
            except PlugboxError as exc:
                raise RequestRefused(422, "bad-signature", f"the review signature does not "
                                    f"verify over the package hash {row[0]}: {exc.message}",
                                    plugin=name) from None
            now = _now()
            tx.execute("DELETE FROM reg_security_reviews WHERE name = ? AND version = ? AND "
                       "reviewer = ?", (name, version, actor.name))
            tx.execute("INSERT INTO reg_security_reviews (name, version, reviewer, status, "
                       "notes, key_id, signature, reviewed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, version, actor.name, status, notes, sig.key_id_hex, signature,
                        now))
            return {"plugin": name, "version": version, "reviewer": actor.name,
                    "status": status, "notes": notes, "key_id": sig.key_id_hex,
                    "signature": signature, "reviewed_at": now, "verified": True,
                    "sha256": row[0]}

        return self._atomic(body)

