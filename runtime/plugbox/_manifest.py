"""Reading and checking ``plugbox.json``, the plugin manifest.

Loading is two steps, so that the cheap checks and the signature check come before anything
expensive: :func:`read_manifest` reads the file once (a regular file, at most
:data:`MAX_MANIFEST_BYTES`), parses it and applies the cheap structural bounds (nesting depth,
array lengths), giving a :class:`ManifestSource` that holds the exact bytes (what signatures
cover); :func:`validate_manifest` then checks it against ``schemas/manifest-v1.schema.json``
and the plugin's ``config_schema`` against its metaschema. :func:`load_manifest` does both.
:func:`verify_module` reads the module (:func:`read_plugin_file`: inside the plugin directory,
a regular file, size-capped) and checks its sha256; :func:`check_compatibility` checks the ABI
and host-version requirements; :func:`validate_config` checks a host-supplied configuration
against the plugin's ``config_schema``, with plugin-supplied regular expressions evaluated by
RE2 (linear time) and a bounded amount of work.

Limits a manifest does not request are represented as ``None`` in :class:`RequestedLimits`
(meaning "the host's default"), never as a guessed number: only the host's
:class:`plugbox.Policy` knows the defaults, and it fills them in with
:meth:`RequestedLimits.fill`.
"""

from __future__ import annotations

import contextvars
import difflib
import errno
import functools
import hashlib
import itertools
import json
import os
import re
import reprlib
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

# Stubs come from types-jsonschema when installed; without them jsonschema is untyped.
import jsonschema  # type: ignore[import-untyped, unused-ignore]
import jsonschema.exceptions  # type: ignore[import-untyped, unused-ignore]
import jsonschema.validators  # type: ignore[import-untyped, unused-ignore]
import re2  # type: ignore[import-untyped, unused-ignore]
import referencing.exceptions
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ._errors import (
    HashMismatchError,
    IncompatibleAbiError,
    IncompatibleHostError,
    ManifestError,
    UsageError,
)
from ._permissions import EventsPermission, HttpPermission, KvPermission, Limits, Permissions

__all__ = [
    "MANIFEST_FILENAME",
    "MAX_ARRAY_ITEMS",
    "MAX_CONFIG_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_MODULE_BYTES",
    "MAX_SCHEMA_STEPS",
    "MAX_POINT_SCHEMA_BYTES",
    "MAX_POINT_SCHEMA_DEPTH",
    "Implementation",
    "Manifest",
    "ManifestSource",
    "PointSpec",
    "PluginFileRefused",
    "RequestedLimits",
    "WebRoute",
    "WebSpec",
    "abi_compatible",
    "check_compatibility",
    "check_module_hash",
    "load_manifest",
    "manifest_schema",
    "parse_abi_version",
    "read_manifest",
    "read_module",
    "read_plugin_file",
    "validate_config",
    "validate_manifest",
    "verify_module",
]

#: The manifest's file name inside a plugin directory.
MANIFEST_FILENAME: Final = "plugbox.json"

#: Manifests larger than this are refused unread: a manifest is a few kilobytes, and parsing an
#: arbitrarily large file from an untrusted plugin would let it exhaust host memory.
MAX_MANIFEST_BYTES: Final = 1 << 20

#: A hard ceiling on a module file, whatever the host's policy: larger files are refused before
#: a byte is read. The same as a package's module cap, so a plugin directory and its package
#: accept the same modules; a host's :class:`plugbox.Policy` may cap lower.
MAX_MODULE_BYTES: Final = 64 << 20

#: Structural bounds checked right after parsing, before signatures or the schema: JSON nested
#: deeper than this (anywhere, ``config_schema`` included) is refused; real manifests nest a
#: handful of levels, real ``config_schema`` documents a dozen or two.
MAX_JSON_DEPTH: Final = 64
#: No array anywhere in a manifest may have more elements than this. The schema caps the
#: arrays it knows far lower (``hooks`` 1024; ``authors``, ``topics``, ``hosts`` 256); this bound
#: keeps every array, ``config_schema``'s included, cheap to validate.
MAX_ARRAY_ITEMS: Final = 10_000

#: A host-supplied configuration whose JSON text is larger than this is refused.
MAX_CONFIG_BYTES: Final = 1 << 20
#: At most this many JSON Schema keyword evaluations are spent on one check of plugin-supplied
#: schema material: the ``config_schema`` against its metaschema (at load), and a configuration
#: against the ``config_schema``. jsonschema spends 5-30 us on each on an idle machine, so this
#: is about a second at worst. A real ``config_schema`` needs a few dozen per subschema (2020-12,
#: fewer for older drafts), a real configuration a few per value; more, such as ``$ref`` or
#: ``allOf`` chains that double at each level, is refused as the plugin's fault.
MAX_SCHEMA_STEPS: Final = 50_000

_LIMIT_FIELDS: Final = ("fuel", "memory_bytes", "deadline_ms", "instances")


@dataclass(frozen=True)
class RequestedLimits:
    """The limits a manifest requests; ``None`` means "not requested: use the host's default".

    Kept apart from :class:`plugbox.Limits` (whose fields are always numbers) so that a
    manifest that says nothing about, say, fuel is not mistaken for one that asked for exactly
    the library default.
    """

    fuel: int | None = None
    memory_bytes: int | None = None
    deadline_ms: int | None = None
    instances: int | None = None

    def requested(self) -> dict[str, int]:
        """The limits that were requested, by field name (unrequested ones are left out)."""
        values = {name: getattr(self, name) for name in _LIMIT_FIELDS}
        return {name: value for name, value in values.items() if value is not None}

    def fill(self, defaults: Limits) -> Limits:
        """Concrete limits: the requested values, with ``defaults`` for the rest."""
        return Limits(
            fuel=self.fuel if self.fuel is not None else defaults.fuel,
            memory_bytes=(
                self.memory_bytes if self.memory_bytes is not None else defaults.memory_bytes
            ),
            deadline_ms=self.deadline_ms if self.deadline_ms is not None else defaults.deadline_ms,
            instances=self.instances if self.instances is not None else defaults.instances,
        )


# --------------------------------------------------------------------------------------------
# Extension points: what a plugin implements and what it declares (``implements`` and
# ``extension_points``; see docs/manifest.md)

#: A JSON Schema of a plugin-declared extension point (``input_schema``, ``output_schema``)
#: whose JSON text is larger than this is refused: real payload schemas are a few kilobytes.
MAX_POINT_SCHEMA_BYTES: Final = 64 << 10
#: ... or that nests deeper than this (the whole manifest's bound is MAX_JSON_DEPTH).
MAX_POINT_SCHEMA_DEPTH: Final = 32


@dataclass(frozen=True)
class Implementation:
    """How a plugin implements one extension point (an entry of ``implements``).

    ``versions`` is the PEP 440 specifier of the point versions it supports (``""``: any);
    ``hook`` the manifest hook that handles the point (the point's name when the manifest
    leaves it out); ``before``/``after`` name plugins this one must run before/after on this
    point (ignored for plugins that are not there).
    """

    point: str
    versions: str = ""
    hook: str = ""
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def accepts(self, version: str) -> bool:
        """True when the point ``version`` satisfies :attr:`versions` (pre-releases count)."""
        return SpecifierSet(self.versions).contains(Version(version), prereleases=True)


@dataclass(frozen=True)
class PointSpec:
    """An extension point a plugin declares itself (an entry of ``extension_points``): JSON
    payloads only, validated by ``input_schema`` and ``output_schema`` when given (``None``:
    anything goes). ``mode`` is ``each``, ``first``, ``pipeline`` or ``notify``; ``failure``
    ``isolate`` or ``propagate``."""

    name: str
    version: str
    mode: str = "each"
    failure: str = "isolate"
    # Schemas are excluded from hashing so the frozen dataclass stays hashable.
    input_schema: Mapping[str, Any] | bool | None = field(default=None, hash=False)
    output_schema: Mapping[str, Any] | bool | None = field(default=None, hash=False)
    description: str = ""


@dataclass(frozen=True)
class WebRoute:
    """A route of a manifest's ``web.routes``: ``path`` is under the plugin's prefix
    (``/plugins/<name>``), ``role`` a host role, ``"authenticated"`` or ``"public"``."""

    name: str
    path: str
    methods: tuple[str, ...] = ("GET",)
    role: str = "authenticated"


@dataclass(frozen=True)
class WebSpec:
    """A manifest's ``web`` field (read by :mod:`plugbox.integrations.flask`): routes, the
    static and template directories (relative to the plugin directory, None: none), template
    filter, test and global names, and CLI commands as ``(name, help)``."""

    routes: tuple[WebRoute, ...] = ()
    static: str | None = None
    templates: str | None = None
    filters: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    globals: tuple[str, ...] = ()
    commands: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A validated ``plugbox.json``.

    ``module_path`` is absolute (resolved against ``directory``); ``permissions`` holds what
    the manifest requests, with the :mod:`plugbox._permissions` defaults for sub-fields it
    leaves out; ``limits`` holds the requested limits, ``None`` where the host default applies.
    ``raw`` is the parsed JSON as read, and like ``config_schema`` must not be mutated.
    ``path`` is the manifest file with symlinks resolved, and ``directory`` its parent, so a
    symlinked ``plugbox.json`` still finds the module that sits next to the real file.
    ``data`` is the exact bytes the manifest was parsed from, read once: what its signatures
    are checked against. ``implements`` and ``extension_points`` (ABI 1.1) map point names to
    :class:`Implementation` and :class:`PointSpec`; both are empty for a manifest without them.
    """

    name: str
    version: str
    description: str | None
    authors: tuple[str, ...]
    license: str | None
    abi: str
    host: str | None
    module_path: Path
    module_sha256: str
    hooks: tuple[str, ...]
    permissions: Permissions
    limits: RequestedLimits
    # Dict-valued fields are excluded from hashing so the frozen dataclass stays hashable.
    config_schema: Mapping[str, Any] | None = field(hash=False)
    path: Path
    directory: Path
    raw: Mapping[str, Any] = field(hash=False, repr=False)
    data: bytes = field(repr=False, compare=False)
    #: The extension points the plugin implements, by point name (empty: none).
    implements: Mapping[str, Implementation] = field(default_factory=dict, hash=False)
    #: The extension points the plugin declares itself, by point name (empty: none).
    extension_points: Mapping[str, PointSpec] = field(default_factory=dict, hash=False)
    #: Plugins required / used when present / conflicting, by name -> PEP 440 specifier
    #: (``""``: any version); see :mod:`plugbox.host._deps`. Empty when absent.
    requires: Mapping[str, str] = field(default_factory=dict, hash=False)
    optional: Mapping[str, str] = field(default_factory=dict, hash=False)
    conflicts: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: The version of the plugin's stored data format (0 when absent).
    data_version: int = 0
    #: What the plugin adds to a Flask application (``web``); None when absent.
    web: WebSpec | None = field(default=None, hash=False)


# --------------------------------------------------------------------------------------------
# ABI versions


_ABI_RE: Final = re.compile(r"([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


def parse_abi_version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of an ABI version ``MAJOR.MINOR[.PATCH]``; raises ``ValueError``."""
    match = _ABI_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not an ABI version (MAJOR.MINOR or MAJOR.MINOR.PATCH): {text!r}")
    return int(match.group(1)), int(match.group(2))


def abi_compatible(required: str, implemented: str) -> bool:
    """True when a runtime implementing ABI ``implemented`` can run a plugin built for
    ``required``: same major, and the plugin's minor not newer. Patch levels are ignored."""
    req_major, req_minor = parse_abi_version(required)
    impl_major, impl_minor = parse_abi_version(implemented)
    return req_major == impl_major and req_minor <= impl_minor


def _short_abi(version: str) -> str:
    major, minor = parse_abi_version(version)
    return f"{major}.{minor}"


# --------------------------------------------------------------------------------------------
# Loading


@functools.cache
def manifest_schema() -> Mapping[str, Any]:
    """The manifest JSON schema (draft 2020-12), as shipped in ``plugbox/schemas/``."""
    text = resources.files("plugbox").joinpath("schemas/manifest-v1.schema.json").read_text(
        encoding="utf-8"
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _schema_validator() -> jsonschema.Draft202012Validator:
    # The shipped schema's own patterns are trusted (and use Python-only lookaheads), so only
    # uniqueItems is replaced: jsonschema's falls back to comparing every pair.
    cls: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call, unused-ignore]
        jsonschema.Draft202012Validator, {"uniqueItems": _unique_items}
    )
    validator: jsonschema.Draft202012Validator = cls(manifest_schema())
    return validator


# --------------------------------------------------------------------------------------------
# Plugin files


class PluginFileRefused(Exception):
    """A file of a plugin directory that is not read, and why: ``reason`` completes "the file
    ...", ``kind`` is ``missing``, ``too-large``, ``unsafe`` (outside the directory, or not a
    regular file) or ``unreadable``. Callers turn it into their own typed error."""

    def __init__(self, reason: str, kind: str = "unsafe") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS: Final = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | _O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: a terminal is never adopted.
_FILE_FLAGS: Final = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                      | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_BINARY", 0))


def _kind(mode: int) -> str:
    kinds = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device",
             stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


def _open_beneath(root: Path, parts: tuple[str, ...]) -> int:
    """Open ``root/parts...`` for reading, refusing a symbolic link or non-regular file at any
    step. The path was resolved just before, so a link met here is a swap: refused."""
    if os.open not in os.supports_dir_fd or not _O_NOFOLLOW:  # pragma: no cover - not POSIX
        fd = os.open(root.joinpath(*parts), _FILE_FLAGS)
        return fd
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        # Look before opening: opening a device can have effects of its own.
        mode = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise PluginFileRefused(f"is {_kind(mode)}, not a regular file")
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def read_plugin_file(root: Path, relative: str, cap: int) -> bytes:
    """The bytes of the file ``relative`` (``/``-separated) in the plugin directory ``root``.

    The path is resolved and must stay inside ``root`` (a symbolic link may point elsewhere in
    the directory, never out of it); the file must be a regular file of at most ``cap`` bytes.
    The checks are made on the opened descriptor (``fstat``), which was opened without
    following links and without blocking, so swapping the file for a link, a FIFO or a device
    between the check and the read cannot fool them. Raises :class:`PluginFileRefused`.
    """
    root = root.resolve()
    try:
        real = root.joinpath(*relative.split("/")).resolve(strict=True)
    except FileNotFoundError as exc:
        raise PluginFileRefused("does not exist", "missing") from exc
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise PluginFileRefused(f"cannot be resolved ({_reason(exc)})", "unreadable") from exc
    if not real.is_relative_to(root) or real == root:
        raise PluginFileRefused("leads outside the plugin directory (through a symbolic link); "
                                "plugin files must lie inside the plugin directory")
    try:
        fd = _open_beneath(root, real.relative_to(root).parts)
    except FileNotFoundError as exc:
        raise PluginFileRefused("does not exist", "missing") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise PluginFileRefused("changed into a symbolic link while it was being "
                                    "read") from exc
        raise PluginFileRefused(f"cannot be read ({_reason(exc)})", "unreadable") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PluginFileRefused(f"is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > cap:
            raise PluginFileRefused(f"is {info.st_size} bytes, more than the cap of {cap} bytes",
                                    "too-large")
        chunks: list[bytes] = []
        size = 0
        # Read one byte past the cap: a file that grew after fstat is still bounded.
        while size <= cap:
            chunk = os.read(fd, min(cap + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            raise PluginFileRefused(f"grew past the cap of {cap} bytes while it was being read",
                                    "too-large")
        return b"".join(chunks)
    except OSError as exc:
        raise PluginFileRefused(f"cannot be read ({_reason(exc)})", "unreadable") from exc
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or \
        type(exc).__name__


# --------------------------------------------------------------------------------------------
# Reading the manifest: once, and cheaply bounded


@dataclass(frozen=True)
class ManifestSource:
    """A manifest read once and parsed, with the cheap structural bounds checked, but not yet
    validated against the schema (:func:`validate_manifest` does that).

    ``data`` is exactly the bytes read: what signatures cover, and what ``raw`` was parsed
    from. ``name`` is the plugin name the manifest claims when it is a string of at most 128
    characters, else ``None`` (for messages only: nothing is validated yet).
    """

    path: Path
    directory: Path
    data: bytes = field(repr=False)
    raw: Any = field(repr=False, compare=False)
    name: str | None


def read_manifest(path: str | os.PathLike[str]) -> ManifestSource:
    """Read and parse a manifest, checking only what is cheap: that it is a regular file of at
    most :data:`MAX_MANIFEST_BYTES`, UTF-8 JSON without duplicate keys, nested at most
    :data:`MAX_JSON_DEPTH` deep, with no array longer than :data:`MAX_ARRAY_ITEMS`.

    ``path`` is a plugin directory (containing ``plugbox.json``) or the manifest file itself.
    Raises :class:`~plugbox.ManifestError`. Linear in the file's size, so a signature check
    can follow before the expensive schema validation (:func:`validate_manifest`).
    """
    given = Path(path)
    if given.is_dir():
        file = given / MANIFEST_FILENAME
        if not (file.exists() or file.is_symlink()):
            raise ManifestError(
                f"{given}: no {MANIFEST_FILENAME} in this directory; a plugin directory must "
                f"contain a {MANIFEST_FILENAME} manifest next to its .wasm module"
            )
    elif given.exists() or given.is_symlink():
        file = given
    else:
        raise ManifestError(
            f"{given}: no such file or directory; expected a plugin directory containing "
            f"{MANIFEST_FILENAME}, or the path of a {MANIFEST_FILENAME} file"
        )
    try:
        real = file.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ManifestError(f"{file}: cannot read the manifest: {_reason(exc)}") from exc
    if given.is_dir() and not real.is_relative_to(given.resolve()):
        # Given a plugin directory, its manifest is one of its files; given the manifest file
        # itself, the plugin directory is where the real file is.
        raise ManifestError(f"{file}: cannot read the manifest: it leads outside the plugin "
                            f"directory {given} (through a symbolic link); pass the manifest "
                            f"file itself to load the plugin where it really is")
    file = real
    try:
        data = read_plugin_file(file.parent, file.name, MAX_MANIFEST_BYTES)
    except PluginFileRefused as exc:
        if exc.kind == "too-large":
            raise ManifestError(
                f"{file}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes; a manifest "
                f"holds metadata only, so this is almost certainly the wrong file"
            ) from exc
        raise ManifestError(f"{file}: cannot read the manifest: it {exc.reason}") from exc
    raw = _parse_json(data, file)
    name = raw.get("name") if isinstance(raw, dict) else None
    plugin = name if isinstance(name, str) and len(name) <= 128 else None
    _check_structure(raw, file, plugin)
    return ManifestSource(path=file, directory=file.parent, data=data, raw=raw, name=plugin)


def validate_manifest(source: ManifestSource) -> Manifest:
    """Validate a :func:`read_manifest` result against the manifest schema and its
    ``config_schema`` against that schema's metaschema; the :class:`Manifest`.

    Raises :class:`~plugbox.ManifestError` naming the file, the JSON path of the problem and
    what was expected (``json_path`` is set where one applies). Plugin-supplied regular
    expressions that RE2 cannot run (lookaround, backreferences) are refused here.
    """
    raw, file, plugin = source.raw, source.path, source.name
    _validate_against_schema(raw, file, plugin)
    assert isinstance(raw, dict)  # the schema requires an object at the top level
    assert source.name is not None  # and a short string name
    config_schema = raw.get("config_schema")
    if config_schema is not None:
        _check_config_schema(config_schema, file, source.name)
    _check_points(raw, file, source.name)
    _check_dependencies(raw, file, source.name)
    _check_web(raw, file, source.name)
    return _build(raw, source)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest: :func:`read_manifest`, then :func:`validate_manifest`.

    ``path`` is a plugin directory (containing ``plugbox.json``) or the manifest file itself.
    Raises :class:`~plugbox.ManifestError` when the file is missing, unreadable or not a
    regular file, is not valid JSON, exceeds a structural bound, or does not match the manifest
    schema; the message names the file, the JSON path of the problem and what was expected,
    and ``json_path`` is set where one applies.
    """
    return validate_manifest(read_manifest(path))


def _parse_json(data: bytes, file: Path) -> Any:
    try:
        # utf-8-sig: tolerate the byte-order mark some Windows editors write.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{file}: the manifest is not UTF-8 text (invalid byte at offset {exc.start}); "
            f"save it as UTF-8"
        ) from exc
    try:
        return json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{file}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}; fix the syntax at "
            f"line {exc.lineno}, column {exc.colno}"
        ) from exc
    except _DuplicateKey as exc:
        raise ManifestError(
            f"{file}: invalid manifest: the key {_short(exc.key)} appears twice in one object; "
            f"JSON readers disagree on which one wins, so remove one of them"
        ) from exc
    except RecursionError as exc:
        raise ManifestError(f"{file}: invalid JSON: nested too deeply (more than "
                            f"{MAX_JSON_DEPTH} levels)") from exc
    except ValueError as exc:  # e.g. NaN/Infinity, or an integer literal with too many digits
        raise ManifestError(f"{file}: invalid JSON: {exc}") from exc


def _check_structure(raw: Any, file: Path, plugin: str | None) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH or with an array longer than
    MAX_ARRAY_ITEMS: one pass, before anything whose cost grows faster than the input."""
    # Entries: (value, depth, link) where link = (parent link, key) rebuilds a path on error.
    stack: list[tuple[Any, int, Any]] = [(raw, 0, None)]
    while stack:
        value, depth, link = stack.pop()
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            if len(value) > MAX_ARRAY_ITEMS:
                path = _format_json_path(_unlink(link))
                raise ManifestError(
                    f"{file}: invalid manifest at {path}: the array has {len(value)} elements, "
                    f"more than the {MAX_ARRAY_ITEMS} any manifest array may have. To fix: "
                    f"shorten it",
                    plugin=plugin, json_path=path,
                )
            items = enumerate(value)
        else:
            continue
        if depth >= MAX_JSON_DEPTH:
            path = _format_json_path(_unlink(link))
            raise ManifestError(
                f"{file}: invalid manifest at {path}: nested more than {MAX_JSON_DEPTH} levels "
                f"deep. To fix: flatten the structure",
                plugin=plugin, json_path=path,
            )
        stack.extend((child, depth + 1, (link, key)) for key, child in items
                     if isinstance(child, (dict, list)))


def _unlink(link: Any) -> list[Any]:
    parts: list[Any] = []
    while link is not None:
        link, key = link
        parts.append(key)
    return parts[::-1]


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's json accepts them unless told otherwise.
    raise ValueError(f"{name} is not valid JSON")


#: Schema errors collected for one message; the first ones are enough to pick the best.
_MAX_ERRORS: Final = 64


def _validate_against_schema(raw: Any, file: Path, plugin: str | None) -> None:
    try:
        errors = list(itertools.islice(_schema_validator().iter_errors(raw), _MAX_ERRORS + 1))
    except RecursionError as exc:
        raise ManifestError(f"{file}: invalid manifest: nested too deeply", plugin=plugin) from exc
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    assert best is not None
    json_path, problem, expected, fix = _explain(best)
    more = len(errors) - 1
    plural = "s" if more != 1 else ""
    count = f"at least {_MAX_ERRORS}" if more >= _MAX_ERRORS else str(more)
    tail = f" ({count} more problem{plural} found besides this one)" if more else ""
    raise ManifestError(
        f"{file}: invalid manifest at {json_path}: {problem}; expected {expected}. "
        f"To fix: {fix}.{tail}",
        plugin=plugin,
        json_path=json_path,
    )


_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format_json_path(parts: Any) -> str:
    """``$.a.b[0]``; keys that are not identifiers are written ``$['a b']``; keys longer than
    64 characters are cut (a hostile manifest's keys must not make messages huge)."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part if len(part) <= 64 else part[:61] + "..."
        if _IDENT_RE.fullmatch(key):
            out += f".{key}"
        else:
            out += f"[{json.dumps(key)}]"
    return out


_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = 6
_repr.maxdict = 6


def _short(value: Any) -> str:
    """A JSON-ish rendering of ``value`` that stays short however large the value is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return _repr.repr(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _explain(error: jsonschema.exceptions.ValidationError) -> tuple[str, str, str, str]:
    """(json path, what is wrong, what was expected, how to fix it) for a schema error."""
    parts = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    expected = str(schema.get("description") or f"{error.validator} {error.validator_value!r}")
    instance = error.instance
    keyword = error.validator

    if keyword == "required" and isinstance(instance, dict):
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        missing = [k for k in required if k not in instance]
        name = missing[0] if missing else str(error.validator_value)
        sub = schema.get("properties", {}).get(name, {})
        path = _format_json_path([*parts, name])
        example = sub.get("examples", [None])[0] if sub.get("examples") else None
        suggestion = f'add "{name}": {json.dumps(example)}' if example is not None else (
            f'add "{name}"'
        )
        return (
            path,
            f"the required field {name!r} is missing",
            str(sub.get("description", "a value")),
            f"{suggestion} to the object at {_format_json_path(parts)}",
        )
    if keyword == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        extras = [k for k in instance if k not in known]
        name = extras[0] if extras else "?"
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"rename it to {close[0]!r}" if close else "remove it"
        return (
            _format_json_path([*parts, name]),
            f"unknown field {name!r}",
            f"only the fields {', '.join(known)}" if known else "no fields",
            f"{hint} (unknown fields are refused so that typos do not go unnoticed)",
        )

    path = _format_json_path(parts)
    fix = f"change the value at {path}"
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        fix += f", e.g. to {json.dumps(examples[0])}"
    if keyword == "type":
        problem = f"got {_json_type(instance)} ({_short(instance)})"
    elif keyword in ("const", "enum"):
        problem = f"the value {_short(instance)} is not allowed"
    elif keyword == "minItems":
        problem = "the list is empty" if not instance else "the list is too short"
    elif keyword == "uniqueItems" and isinstance(instance, list):
        problem = f"{_short(_first_duplicate(instance))} is listed more than once"
        fix = f"remove the duplicate from {path}"
    elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        problem = f"{_short(instance)} is out of range"
    else:  # pattern, minLength, maxLength and anything else: the value itself is malformed
        problem = f"{_short(instance)} is not valid"
    return path, problem, expected, fix


# --------------------------------------------------------------------------------------------
# Bounded JSON Schema evaluation
#
# jsonschema's own keywords have three costs a hostile schema or document can blow up:
# uniqueItems compares every pair of unhashable items (O(n^2)); pattern, patternProperties and
# additionalProperties run plugin-supplied regexes with Python's backtracking engine
# (exponential); and $ref chains can make the work grow exponentially with the schema's size.
# The replacements below are linear (uniqueItems by hashing), use RE2 (linear time, no
# lookaround or backreferences), and count every keyword evaluation against a budget.


def _freeze(value: Any) -> Any:
    """A hashable key equal for JSON-equal values (1 == 1.0, true != 1), as jsonschema
    compares them."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z",)
    if isinstance(value, Mapping):
        return ("o", frozenset((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return ("a", tuple(_freeze(item) for item in value))
    return ("?", repr(value))


def _first_duplicate(items: list[Any]) -> Any:
    seen: set[Any] = set()
    for item in items:
        key = _freeze(item)
        if key in seen:
            return item
        seen.add(key)
    return None


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if unique and validator.is_type(instance, "array"):
        seen: set[Any] = set()
        for item in instance:
            key = _freeze(item)
            if key in seen:
                yield jsonschema.exceptions.ValidationError(
                    f"{_short(item)} is listed more than once (the items must be unique)")
                return
            seen.add(key)


class _UnsafePattern(Exception):
    def __init__(self, pattern: str, detail: str) -> None:
        super().__init__(pattern)
        self.pattern = pattern
        self.detail = detail


_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would otherwise print every refused pattern to stderr


@functools.lru_cache(maxsize=512)
def _re2(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise _UnsafePattern(pattern, str(detail)) from None


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and _re2(pattern).search(instance) is None:
        yield jsonschema.exceptions.ValidationError(
            f"{_short(instance)} does not match {_short(pattern)}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any,
                        schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _re2(pattern)
        for key, value in instance.items():
            if regex.search(key) is not None:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: Any) -> Iterator[Any]:
    # jsonschema's version joins the patternProperties into one Python regex.
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    regexes = [_re2(p) for p in schema.get("patternProperties", {})]
    extras = [key for key in instance if key not in properties
              and not any(r.search(key) is not None for r in regexes)]
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif not additional and extras:
        shown = ", ".join(_short(key) for key in extras[:8])
        more = f" and {len(extras) - 8} more" if len(extras) > 8 else ""
        yield jsonschema.exceptions.ValidationError(
            f"additional properties are not allowed ({shown}{more} unexpected)")


class _OverBudget(Exception):
    pass


# The keyword evaluations left for the validation in progress (None: unbounded).
_STEPS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "plugbox_schema_steps", default=None)


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        steps = _STEPS.get()
        if steps is not None:
            steps[0] -= 1
            if steps[0] < 0:
                raise _OverBudget
        return keyword(validator, value, instance, schema)

    return run


_REPLACED: Final[Mapping[str, Callable[..., Any]]] = {
    "uniqueItems": _unique_items,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


# id(schema) -> (schema, the copy without "$schema"); the schema is kept so its id stays unique.
_STRIPPED: dict[int, tuple[Any, dict[str, Any]]] = {}


def _without_schema_key(schema: Mapping[str, Any]) -> dict[str, Any]:
    hit = _STRIPPED.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    if len(_STRIPPED) > 4096:
        _STRIPPED.clear()
    stripped = {k: v for k, v in schema.items() if k != "$schema"}
    _STRIPPED[id(schema)] = (schema, stripped)
    return stripped


@functools.cache
def _bounded(cls: Any) -> Any:
    """``cls`` (a jsonschema validator class) with plugin-supplied regexes run by RE2, a linear
    uniqueItems, and every keyword evaluation counted against :data:`_STEPS`."""
    keywords = {name: _counted(_REPLACED.get(name, fn)) for name, fn in cls.VALIDATORS.items()}
    bounded: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call, unused-ignore]
        cls, keywords)
    switching = bounded.evolve

    def evolve(self: Any, **changes: Any) -> Any:
        # jsonschema switches to its stock class for a subschema (or a referenced resource, the
        # metaschemas' vocabularies included) that declares "$schema", which would escape these
        # keywords; without the key, the subschema is evaluated by this class.
        schema = changes.get("schema", self.schema)
        if isinstance(schema, Mapping) and "$schema" in schema:
            changes["schema"] = _without_schema_key(schema)
        return switching(self, **changes)

    bounded.evolve = evolve
    return bounded


def _regex_format() -> Any:
    """A format checker whose ``regex`` format accepts only what RE2 compiles (metaschemas mark
    ``pattern`` and, since draft 6, ``patternProperties`` keys with it)."""
    checker = jsonschema.FormatChecker(())

    @checker.checks("regex", raises=_UnsafePattern)
    def is_re2(instance: object) -> bool:
        if isinstance(instance, str):
            _re2(instance)
        return True

    return checker


def _walk_schema(schema: Any) -> Iterator[tuple[list[Any], str, Any]]:
    """(path, key, value) for every object member in ``schema`` (depth already bounded)."""
    stack: list[tuple[Any, list[Any]]] = [(schema, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield path, key, value
                stack.append((value, [*path, key]))
        elif isinstance(node, list):
            stack.extend((value, [*path, index]) for index, value in enumerate(node))


def _check_config_schema(config_schema: Any, file: Path, plugin: str) -> None:
    """config_schema must be a valid schema for its draft, with regexes RE2 can run."""
    _check_plugin_schema(config_schema, file, plugin, "config_schema", "$.config_schema")


def _check_plugin_schema(config_schema: Any, file: Path, plugin: str, what: str,
                         where: str) -> None:
    """A plugin-supplied JSON Schema (``what``, at JSON path ``where``) must be a valid schema
    for its draft, with regexes RE2 can run, checked within MAX_SCHEMA_STEPS evaluations."""
    def refuse(json_path: str, problem: str, fix: str) -> ManifestError:
        return ManifestError(
            f"{file}: invalid manifest at {json_path}: {problem}. To fix: {fix}.",
            plugin=plugin, json_path=json_path,
        )

    token = _STEPS.set([MAX_SCHEMA_STEPS])
    try:
        cls = jsonschema.validators.validator_for(
            config_schema, default=jsonschema.Draft202012Validator
        )
        meta = _bounded(jsonschema.validators.validator_for(cls.META_SCHEMA, default=cls))
        checker = meta(cls.META_SCHEMA, format_checker=_regex_format())
        error = next(iter(checker.iter_errors(config_schema)), None)
    except _OverBudget as exc:
        raise refuse(where, f"checking {what} against its metaschema takes "
                     f"more than {MAX_SCHEMA_STEPS} schema evaluations: it is far larger than "
                     f"any {_NEEDS.get(what, 'payload')} needs", f"make {what} smaller") from exc
    except RecursionError as exc:
        raise refuse(where, "nested too deeply", f"flatten {what}") from exc
    except _UnsafePattern as exc:  # a regex in a place the metaschema does not mark
        raise refuse(where, _unsafe_pattern(exc, what), _PATTERN_FIX) from exc
    finally:
        _STEPS.reset(token)
    if error is not None:
        json_path = where + _format_json_path(error.absolute_path)[1:]
        if isinstance(error.cause, _UnsafePattern):
            raise refuse(json_path, _unsafe_pattern(error.cause, what),
                         _PATTERN_FIX) from error.cause
        raise refuse(json_path, f"{what} is not a valid JSON Schema: "
                     f"{_truncate(error.message)}", f"correct the schema at {json_path}")
    # jsonschema evaluates unevaluatedProperties with Python's re over the patternProperties
    # it meets; rather than reimplementing that keyword, the combination is refused.
    keys = {key for _, key, _ in _walk_schema(config_schema)}
    if "unevaluatedProperties" in keys and "patternProperties" in keys:
        raise refuse(where, f"{what} combines unevaluatedProperties with "
                     "patternProperties, which plugbox does not evaluate (their regexes would "
                     "run on a backtracking engine)", "use additionalProperties instead of "
                     "unevaluatedProperties, or list the properties explicitly")


_PATTERN_FIX: Final = (
    "rewrite the pattern without lookaround ((?=, (?!, (?<=, (?<!), backreferences (\\1) "
    "and atomic or possessive groups; plugbox runs plugin-supplied patterns with RE2, whose "
    "matching time is linear in the input"
)


_NEEDS: Final = {"config_schema": "configuration"}


def _unsafe_pattern(exc: _UnsafePattern, what: str = "config_schema") -> str:
    try:
        re.compile(exc.pattern)  # compiling is cheap; only matching can backtrack
    except (re.error, RecursionError, OverflowError, ValueError):
        return (f"{what} is not a valid JSON Schema: {_short(exc.pattern)} is not a "
                f"valid regular expression ({exc.detail})")
    return (f"the regular expression {_short(exc.pattern)} is not supported by RE2, the "
            f"linear-time engine plugbox evaluates plugin-supplied patterns with ({exc.detail})")


def _truncate(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _build(raw: dict[str, Any], source: ManifestSource) -> Manifest:
    module = raw["module"]
    perms = raw.get("permissions", {})
    limits = raw.get("limits", {})
    file, directory = source.path, source.directory
    config_schema = raw.get("config_schema")
    return Manifest(
        name=raw["name"],
        version=raw["version"],
        description=raw.get("description"),
        authors=tuple(raw.get("authors", ())),
        license=raw.get("license"),
        abi=raw["abi"],
        host=raw.get("host"),
        module_path=directory / module["path"],
        module_sha256=module["sha256"],
        hooks=tuple(raw["hooks"]),
        permissions=_build_permissions(perms),
        # int(): JSON Schema counts 5.0 as an integer, but the runtime wants real ints.
        limits=RequestedLimits(**{k: int(v) for k, v in limits.items()}),
        config_schema=config_schema,
        path=file,
        directory=directory,
        raw=raw,
        data=source.data,
        implements=_build_implements(raw.get("implements", {})),
        extension_points=_build_points(raw.get("extension_points", {})),
        requires=dict(raw.get("requires", {})),
        optional=dict(raw.get("optional", {})),
        conflicts=dict(raw.get("conflicts", {})),
        data_version=int(raw.get("data_version", 0)),
        web=_build_web(raw["web"]) if "web" in raw else None,
    )


def _ints(obj: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, int]:
    return {name: int(obj[name]) for name in names if name in obj}


def _build_permissions(perms: Mapping[str, Any]) -> Permissions:
    kv = perms.get("kv")
    events = perms.get("events")
    http = perms.get("http")
    return Permissions(
        log=bool(perms.get("log", False)),
        config=bool(perms.get("config", False)),
        clock=bool(perms.get("clock", False)),
        random=bool(perms.get("random", False)),
        kv=None if kv is None else KvPermission(**_ints(kv, ("quota_bytes", "quota_keys"))),
        events=None if events is None else _build_events(events),
        http=None if http is None else _build_http(http),
        functions=tuple(perms.get("functions", ())),
        dispatch=tuple(perms.get("dispatch", ())),
    )


def _build_events(events: Mapping[str, Any]) -> EventsPermission:
    if "topics" in events:
        return EventsPermission(topics=tuple(events["topics"]))
    return EventsPermission()


def _build_http(http: Mapping[str, Any]) -> HttpPermission:
    kwargs: dict[str, Any] = _ints(
        http, ("max_request_bytes", "max_response_bytes", "timeout_ms")
    )
    if "hosts" in http:
        kwargs["hosts"] = tuple(http["hosts"])
    if "methods" in http:
        kwargs["methods"] = tuple(http["methods"])
    return HttpPermission(**kwargs)


# --------------------------------------------------------------------------------------------
# Extension points: ``implements`` and ``extension_points`` (validated by the schema first)


def _check_points(raw: Mapping[str, Any], file: Path, plugin: str) -> None:
    """What the schema cannot say about ``implements`` and ``extension_points``: specifiers
    that parse, hooks the manifest declares, no constraint on the plugin itself, and point
    schemas that are small, shallow and valid."""
    def refuse(parts: list[Any], problem: str, fix: str) -> ManifestError:
        json_path = _format_json_path(parts)
        return ManifestError(f"{file}: invalid manifest at {json_path}: {problem}. To fix: "
                             f"{fix}.", plugin=plugin, json_path=json_path)

    hooks = set(raw["hooks"])
    declared = raw.get("extension_points", {})
    for point, impl in raw.get("implements", {}).items():
        versions = impl.get("versions")
        if versions is not None:
            try:
                SpecifierSet(versions)
            except InvalidSpecifier:
                raise refuse(["implements", point, "versions"], f"{_short(versions)} is not a "
                             f"PEP 440 version specifier", "write a specifier such as "
                             "'>=1.0,<2'") from None
        hook = impl.get("hook", point)
        if hook not in hooks:
            where = ["implements", point, "hook"] if "hook" in impl else ["implements", point]
            raise refuse(where, f"the point {point!r} is handled by the hook {hook!r}, which "
                         f"is not among $.hooks", f"add {hook!r} to $.hooks, or name one of "
                         f"$.hooks in $.implements[{json.dumps(point)}].hook")
        for side in ("before", "after"):
            if plugin in impl.get(side, ()):
                raise refuse(["implements", point, side], f"the plugin {plugin!r} names itself",
                             f"remove {plugin!r} from the list")
        if point in declared:
            raise refuse(["implements", point], f"the plugin declares the point {point!r} "
                         f"itself ($.extension_points), and would dispatch into itself",
                         "implement it in another plugin, or drop one of the two entries")
    for point, spec in declared.items():
        for key in ("input_schema", "output_schema"):
            if key not in spec:
                continue
            parts = ["extension_points", point, key]
            schema = spec[key]
            size = len(json.dumps(schema, ensure_ascii=False).encode("utf-8"))
            if size > MAX_POINT_SCHEMA_BYTES:
                raise refuse(parts, f"the schema is {size} bytes as JSON, more than the "
                             f"{MAX_POINT_SCHEMA_BYTES} a point schema may have",
                             "make it smaller")
            if _depth(schema) > MAX_POINT_SCHEMA_DEPTH:
                raise refuse(parts, f"the schema nests more than {MAX_POINT_SCHEMA_DEPTH} "
                             "levels deep", "flatten it")
            if isinstance(schema, dict):
                _check_plugin_schema(schema, file, plugin, key, _format_json_path(parts))


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar: 0); iterative, and bounded by MAX_JSON_DEPTH
    already."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _build_implements(raw: Mapping[str, Any]) -> dict[str, Implementation]:
    return {
        point: Implementation(
            point=point,
            versions=impl.get("versions", ""),
            hook=impl.get("hook", point),
            before=tuple(impl.get("before", ())),
            after=tuple(impl.get("after", ())),
        )
        for point, impl in raw.items()
    }


def _build_points(raw: Mapping[str, Any]) -> dict[str, PointSpec]:
    return {
        name: PointSpec(
            name=name,
            version=spec["version"],
            mode=spec.get("mode", "each"),
            failure=spec.get("failure", "isolate"),
            input_schema=spec.get("input_schema"),
            output_schema=spec.get("output_schema"),
            description=spec.get("description", ""),
        )
        for name, spec in raw.items()
    }


# --------------------------------------------------------------------------------------------
# Dependencies: ``requires``, ``optional``, ``conflicts`` (validated by the schema first; the
# resolution itself is plugbox.host._deps)

_DEPENDENCY_FIELDS: Final = ("requires", "optional", "conflicts")


def _check_dependencies(raw: Mapping[str, Any], file: Path, plugin: str) -> None:
    """What the schema cannot say about the dependency fields: specifiers that parse, no entry
    naming the plugin itself, and no plugin both required and optional."""
    def refuse(parts: list[Any], problem: str, fix: str) -> ManifestError:
        json_path = _format_json_path(parts)
        return ManifestError(f"{file}: invalid manifest at {json_path}: {problem}. To fix: "
                             f"{fix}.", plugin=plugin, json_path=json_path)

    for key in _DEPENDENCY_FIELDS:
        for name, spec in raw.get(key, {}).items():
            if name == plugin:
                raise refuse([key, name], f"the plugin {plugin!r} names itself",
                             f"remove {plugin!r} from $.{key}")
            try:
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise refuse([key, name], f"{_short(spec)} is not a PEP 440 version "
                             "specifier", "write a specifier such as '>=1.2,<2', or \"\" for "
                             "any version") from None
    both = sorted(set(raw.get("requires", {})) & set(raw.get("optional", {})))
    if both:
        raise refuse(["optional", both[0]], f"{both[0]!r} is both required ($.requires) and "
                     "optional", f"keep {both[0]!r} in one of $.requires and $.optional")


# --------------------------------------------------------------------------------------------
# ``web`` (plugbox.integrations.flask): bounded by the schema; what it cannot say is here


def _check_web(raw: Mapping[str, Any], file: Path, plugin: str) -> None:
    """Route names unique, no two routes answering one method on one path, unique command
    names."""
    web = raw.get("web")
    if web is None:
        return

    def refuse(parts: list[Any], problem: str, fix: str) -> ManifestError:
        json_path = _format_json_path(parts)
        return ManifestError(f"{file}: invalid manifest at {json_path}: {problem}. To fix: "
                             f"{fix}.", plugin=plugin, json_path=json_path)

    names: set[str] = set()
    answered: set[tuple[str, str]] = set()
    for index, route in enumerate(web.get("routes", ())):
        if route["name"] in names:
            raise refuse(["web", "routes", index, "name"], f"the route name "
                         f"{route['name']!r} is used twice", "give each route its own name")
        names.add(route["name"])
        shape = re.sub(r"<[^>]*>", "<>", route["path"].rstrip("/") or "/")
        for method in route.get("methods", ("GET",)):
            if (shape, method) in answered:
                raise refuse(["web", "routes", index, "path"], f"another route answers "
                             f"{method} {route['path']!r} already", "merge the two routes")
            answered.add((shape, method))
    commands = [c["name"] for c in web.get("commands", ())]
    twice = _first_duplicate(commands)
    if twice is not None:
        raise refuse(["web", "commands", commands.index(twice), "name"], f"the command "
                     f"{twice!r} is declared twice", "declare each command once")


def _build_web(web: Mapping[str, Any]) -> WebSpec:
    return WebSpec(
        routes=tuple(WebRoute(name=r["name"], path=r["path"],
                              methods=tuple(r.get("methods", ("GET",))),
                              role=r.get("role", "authenticated"))
                     for r in web.get("routes", ())),
        static=web.get("static"), templates=web.get("templates"),
        filters=tuple(web.get("filters", ())), tests=tuple(web.get("tests", ())),
        globals=tuple(web.get("globals", ())),
        commands=tuple((c["name"], c.get("help", "")) for c in web.get("commands", ())),
    )


# --------------------------------------------------------------------------------------------
# Checks


def read_module(manifest: Manifest) -> bytes:
    """The bytes of the plugin's module, read safely (:func:`read_plugin_file`): inside the
    plugin directory, a regular file of at most :data:`MAX_MODULE_BYTES`. Not hash-checked
    (:func:`verify_module` is). Raises :class:`~plugbox.ManifestError` naming
    ``$.module.path``."""
    rel = str(manifest.raw.get("module", {}).get("path", manifest.module_path.name))
    try:
        return read_plugin_file(manifest.directory, rel, MAX_MODULE_BYTES)
    except PluginFileRefused as exc:
        if exc.kind == "missing":
            message = (f"plugin {manifest.name!r}: the module {rel!r} named at $.module.path "
                       f"in {manifest.path} does not exist (looked for {manifest.module_path}); "
                       f"build the plugin or correct $.module.path")
        else:
            fix = {
                "too-large": "a module this large is not accepted from any plugin",
                "unsafe": "make $.module.path name a regular file inside the plugin directory",
            }.get(exc.kind, "check the file and its permissions")
            message = (f"plugin {manifest.name!r}: the module {rel!r} named at $.module.path "
                       f"in {manifest.path} {exc.reason}; {fix}")
        raise ManifestError(message, plugin=manifest.name, json_path="$.module.path") from exc


def verify_module(manifest: Manifest) -> bytes:
    """Read the plugin's module (:func:`read_module`) and check it against the manifest's
    sha256.

    Returns the module's bytes. Raises :class:`~plugbox.HashMismatchError` when they differ
    from the pinned digest, and :class:`~plugbox.ManifestError` when the module cannot be read
    or is refused unread (outside the plugin directory, not a regular file, over the cap), so
    the digest printed is only ever that of a file inside the plugin directory.
    """
    data = read_module(manifest)
    check_module_hash(manifest, hashlib.sha256(data).hexdigest())
    return data


def check_module_hash(manifest: Manifest, actual: str) -> None:
    """Raise :class:`~plugbox.HashMismatchError` when ``actual`` (the sha256 of the module as
    :func:`read_module` read it) is not the digest ``manifest`` pins."""
    if actual != manifest.module_sha256:
        raise HashMismatchError(
            f"plugin {manifest.name!r}: the module {manifest.module_path} has sha256 {actual}, "
            f"but {manifest.path} pins {manifest.module_sha256} ($.module.sha256). If you "
            f"rebuilt the module on purpose, update $.module.sha256 to {actual}; otherwise the "
            f"file was modified or corrupted: rebuild it from source or restore the original",
            plugin=manifest.name,
        )


def check_compatibility(manifest: Manifest, *, runtime_version: str, abi_version: str) -> None:
    """Check that this runtime can run the plugin.

    ABI rule: the manifest's ABI must have the runtime's major and a minor not above the
    runtime's (patch levels are ignored), else :class:`~plugbox.IncompatibleAbiError`. The
    manifest's ``host`` specifier (PEP 440) must contain ``runtime_version``, else
    :class:`~plugbox.IncompatibleHostError`; an unparsable specifier is a
    :class:`~plugbox.ManifestError`.
    """
    try:
        runtime_abi = _short_abi(abi_version)
        version = Version(runtime_version)
    except (ValueError, InvalidVersion) as exc:
        raise UsageError(f"invalid runtime or ABI version: {exc}") from exc

    wanted = _short_abi(manifest.abi)
    if not abi_compatible(manifest.abi, abi_version):
        want_major, _ = parse_abi_version(manifest.abi)
        have_major, _ = parse_abi_version(abi_version)
        if want_major != have_major:
            why = (
                f"ABI {want_major}.x is not compatible with ABI {have_major}.x (a different "
                f"major version)"
            )
        else:
            why = f"ABI {wanted} is newer than this runtime's"
        raise IncompatibleAbiError(
            f"plugin {manifest.name!r} needs plugbox ABI {wanted} ($.abi in {manifest.path}), "
            f"but this runtime (plugbox {runtime_version}) implements ABI {abi_version}: {why}. "
            f"Use a plugbox release implementing ABI {wanted}, or rebuild the plugin against "
            f"ABI {runtime_abi}",
            plugin=manifest.name,
        )

    if manifest.host is None:
        return
    try:
        spec = SpecifierSet(manifest.host)
    except InvalidSpecifier as exc:
        raise ManifestError(
            f"{manifest.path}: invalid manifest at $.host: {manifest.host!r} is not a valid "
            f"version specifier; expected a PEP 440 specifier such as '>=0.1,<1.0'. To fix: "
            f"correct $.host.",
            plugin=manifest.name,
            json_path="$.host",
        ) from exc
    # prereleases=True: a development build of plugbox must still count as its version.
    if not spec.contains(version, prereleases=True):
        raise IncompatibleHostError(
            f"plugin {manifest.name!r} supports plugbox {manifest.host} ($.host in "
            f"{manifest.path}), but this is plugbox {runtime_version}. Use a plugbox version "
            f"matching {manifest.host}, or update the plugin (and its $.host) for "
            f"plugbox {runtime_version}",
            plugin=manifest.name,
        )


def validate_config(manifest: Manifest, config: Mapping[str, Any]) -> None:
    """Check a host-supplied configuration against the plugin's ``config_schema``.

    Raises :class:`~plugbox.UsageError` (the host supplied it) naming the plugin and the JSON
    path of the offending value, or when the configuration's JSON text exceeds
    :data:`MAX_CONFIG_BYTES`. A manifest without ``config_schema`` accepts any object. The
    schema's regexes run on RE2, and a schema that needs more than :data:`MAX_SCHEMA_STEPS`
    keyword evaluations is refused (:class:`~plugbox.ManifestError`: the plugin's fault).
    """
    plugin = manifest.name
    if not isinstance(config, Mapping):
        raise UsageError(
            f"plugin {plugin!r}: the configuration must be a JSON object (a dict), "
            f"not {type(config).__name__}",
            plugin=plugin,
        )
    try:
        size = len(json.dumps(config, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"plugin {plugin!r}: the configuration is not JSON-serialisable: "
                         f"{_truncate(str(exc))}", plugin=plugin) from exc
    except RecursionError as exc:
        raise UsageError(f"plugin {plugin!r}: the configuration is nested too deeply",
                         plugin=plugin) from exc
    if size > MAX_CONFIG_BYTES:
        raise UsageError(f"plugin {plugin!r}: the configuration is {size} bytes as JSON, more "
                         f"than the {MAX_CONFIG_BYTES} allowed; pass large data another way",
                         plugin=plugin, limit="config_bytes")
    if manifest.config_schema is None:
        return
    cls = _bounded(jsonschema.validators.validator_for(
        manifest.config_schema, default=jsonschema.Draft202012Validator
    ))
    validator = cls(manifest.config_schema)
    where = f"{manifest.path}: invalid manifest at $.config_schema"
    token = _STEPS.set([MAX_SCHEMA_STEPS])
    try:
        error = jsonschema.exceptions.best_match(
            itertools.islice(validator.iter_errors(config), _MAX_ERRORS))
    except referencing.exceptions.Unresolvable as exc:
        # A $ref the schema cannot resolve is the plugin's fault, not the host's.
        raise ManifestError(
            f"{where}: it refers to {exc} which cannot be resolved (plugbox never fetches "
            f"schemas over the network); make the schema self-contained",
            plugin=plugin,
            json_path="$.config_schema",
        ) from exc
    except _OverBudget as exc:
        raise ManifestError(
            f"{where}: validating a configuration against it takes more than "
            f"{MAX_SCHEMA_STEPS} schema evaluations (e.g. $ref or allOf/anyOf chains that "
            f"multiply at every level); simplify the schema",
            plugin=plugin,
            json_path="$.config_schema",
        ) from exc
    except _UnsafePattern as exc:
        raise ManifestError(f"{where}: {_unsafe_pattern(exc)}; {_PATTERN_FIX}", plugin=plugin,
                            json_path="$.config_schema") from exc
    except RecursionError as exc:
        raise UsageError(
            f"plugin {plugin!r}: the configuration is nested too deeply (or the plugin's "
            f"config_schema refers to itself without end)",
            plugin=plugin,
        ) from exc
    finally:
        _STEPS.reset(token)
    if error is None:
        return
    path = _format_json_path(error.absolute_path)
    raise UsageError(
        f"plugin {manifest.name!r}: the configuration is invalid at {path}: "
        f"{_truncate(error.message)}. The plugin's config_schema (in {manifest.path}) "
        f"requires this; pass a configuration that satisfies it",
        plugin=manifest.name,
    )
