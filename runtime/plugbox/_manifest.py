"""Reading and checking ``plugbox.json``, the plugin manifest.

:func:`load_manifest` parses the manifest and validates it against
``schemas/manifest-v1.schema.json``; :func:`verify_module` checks the module's sha256;
:func:`check_compatibility` checks the ABI and host-version requirements; :func:`validate_config`
checks a host-supplied configuration against the plugin's ``config_schema``.

Limits a manifest does not request are represented as ``None`` in :class:`RequestedLimits`
(meaning "the host's default"), never as a guessed number: only the host's
:class:`plugbox.Policy` knows the defaults, and it fills them in with
:meth:`RequestedLimits.fill`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

# Stubs come from types-jsonschema when installed; without them jsonschema is untyped.
import jsonschema  # type: ignore[import-untyped, unused-ignore]
import jsonschema.exceptions  # type: ignore[import-untyped, unused-ignore]
import jsonschema.validators  # type: ignore[import-untyped, unused-ignore]
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
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "RequestedLimits",
    "abi_compatible",
    "check_compatibility",
    "load_manifest",
    "manifest_schema",
    "parse_abi_version",
    "validate_config",
    "verify_module",
]

#: The manifest's file name inside a plugin directory.
MANIFEST_FILENAME: Final = "plugbox.json"

#: Manifests larger than this are refused unread: a manifest is a few kilobytes, and parsing an
#: arbitrarily large file from an untrusted plugin would let it exhaust host memory.
MAX_MANIFEST_BYTES: Final = 1 << 20

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


@dataclass(frozen=True)
class Manifest:
    """A validated ``plugbox.json``.

    ``module_path`` is absolute (resolved against ``directory``); ``permissions`` holds what
    the manifest requests, with the :mod:`plugbox._permissions` defaults for sub-fields it
    leaves out; ``limits`` holds the requested limits, ``None`` where the host default applies.
    ``raw`` is the parsed JSON as read, and like ``config_schema`` must not be mutated.
    ``path`` is the manifest file with symlinks resolved, and ``directory`` its parent, so a
    symlinked ``plugbox.json`` still finds the module that sits next to the real file.
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
    return jsonschema.Draft202012Validator(manifest_schema())


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest.

    ``path`` is a plugin directory (containing ``plugbox.json``) or the manifest file itself.
    Raises :class:`~plugbox.ManifestError` when the file is missing or unreadable, is not valid
    JSON, or does not match the manifest schema; the message names the file, the JSON path of
    the problem and what was expected, and ``json_path`` is set where one applies.
    """
    given = Path(path)
    if given.is_dir():
        file = given / MANIFEST_FILENAME
        if not file.is_file():
            raise ManifestError(
                f"{given}: no {MANIFEST_FILENAME} in this directory; a plugin directory must "
                f"contain a {MANIFEST_FILENAME} manifest next to its .wasm module"
            )
    elif given.exists():
        file = given
    else:
        raise ManifestError(
            f"{given}: no such file or directory; expected a plugin directory containing "
            f"{MANIFEST_FILENAME}, or the path of a {MANIFEST_FILENAME} file"
        )
    file = file.resolve()
    raw = _read_json(file)

    name = raw.get("name") if isinstance(raw, dict) else None
    plugin = name if isinstance(name, str) else None
    _validate_against_schema(raw, file, plugin)
    assert isinstance(raw, dict)  # the schema requires an object at the top level
    assert plugin is not None  # and a string name
    config_schema = raw.get("config_schema")
    if config_schema is not None:
        _check_config_schema(config_schema, file, plugin)
    return _build(raw, file)


def _read_json(file: Path) -> Any:
    try:
        with file.open("rb") as stream:
            # Read one byte past the cap so an over-long file is detected without reading it all.
            data = stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{file}: cannot read the manifest: {exc.strerror or exc}") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{file}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes; a manifest holds "
            f"metadata only, so this is almost certainly the wrong file"
        )
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
            f"{file}: invalid manifest: the key {exc.key!r} appears twice in one object; "
            f"JSON readers disagree on which one wins, so remove one of them"
        ) from exc
    except RecursionError as exc:
        raise ManifestError(f"{file}: invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. NaN/Infinity, or an integer literal with too many digits
        raise ManifestError(f"{file}: invalid JSON: {exc}") from exc


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


def _validate_against_schema(raw: Any, file: Path, plugin: str | None) -> None:
    try:
        errors = list(_schema_validator().iter_errors(raw))
    except RecursionError as exc:
        raise ManifestError(f"{file}: invalid manifest: nested too deeply", plugin=plugin) from exc
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    assert best is not None
    json_path, problem, expected, fix = _explain(best)
    more = len(errors) - 1
    plural = "s" if more != 1 else ""
    tail = f" ({more} more problem{plural} found besides this one)" if more else ""
    raise ManifestError(
        f"{file}: invalid manifest at {json_path}: {problem}; expected {expected}. "
        f"To fix: {fix}.{tail}",
        plugin=plugin,
        json_path=json_path,
    )


_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format_json_path(parts: Any) -> str:
    """``$.a.b[0]``; keys that are not identifiers are written ``$['a b']``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT_RE.fullmatch(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
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
        seen: list[Any] = []
        dup: Any = None
        for item in instance:
            if item in seen:
                dup = item
                break
            seen.append(item)
        problem = f"{_short(dup)} is listed more than once"
        fix = f"remove the duplicate from {path}"
    elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        problem = f"{_short(instance)} is out of range"
    else:  # pattern, minLength, maxLength and anything else: the value itself is malformed
        problem = f"{_short(instance)} is not valid"
    return path, problem, expected, fix


def _check_config_schema(config_schema: Any, file: Path, plugin: str) -> None:
    try:
        cls = jsonschema.validators.validator_for(
            config_schema, default=jsonschema.Draft202012Validator
        )
        cls.check_schema(config_schema)
    except jsonschema.exceptions.SchemaError as exc:
        json_path = "$.config_schema" + _format_json_path(exc.absolute_path)[1:]
        raise ManifestError(
            f"{file}: invalid manifest at {json_path}: config_schema is not a valid JSON "
            f"Schema: {_truncate(exc.message)}. To fix: correct the schema at {json_path}.",
            plugin=plugin,
            json_path=json_path,
        ) from exc
    except RecursionError as exc:
        raise ManifestError(
            f"{file}: invalid manifest at $.config_schema: nested too deeply",
            plugin=plugin,
            json_path="$.config_schema",
        ) from exc


def _truncate(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _build(raw: dict[str, Any], file: Path) -> Manifest:
    module = raw["module"]
    perms = raw.get("permissions", {})
    limits = raw.get("limits", {})
    directory = file.parent
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
# Checks


def verify_module(manifest: Manifest) -> bytes:
    """Read the plugin's module and check it against the manifest's sha256.

    Returns the module's bytes. Raises :class:`~plugbox.HashMismatchError` when they differ
    from the pinned digest, and :class:`~plugbox.ManifestError` when the module cannot be read.
    """
    rel = manifest.raw.get("module", {}).get("path", manifest.module_path.name)
    try:
        data = manifest.module_path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(
            f"plugin {manifest.name!r}: the module {rel!r} named at $.module.path in "
            f"{manifest.path} does not exist (looked for {manifest.module_path}); build the "
            f"plugin or correct $.module.path",
            plugin=manifest.name,
            json_path="$.module.path",
        ) from exc
    except OSError as exc:
        raise ManifestError(
            f"plugin {manifest.name!r}: cannot read the module {manifest.module_path} named at "
            f"$.module.path in {manifest.path}: {exc.strerror or exc}",
            plugin=manifest.name,
            json_path="$.module.path",
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.module_sha256:
        raise HashMismatchError(
            f"plugin {manifest.name!r}: the module {manifest.module_path} has sha256 {actual}, "
            f"but {manifest.path} pins {manifest.module_sha256} ($.module.sha256). If you "
            f"rebuilt the module on purpose, update $.module.sha256 to {actual}; otherwise the "
            f"file was modified or corrupted: rebuild it from source or restore the original",
            plugin=manifest.name,
        )
    return data


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
    path of the offending value. A manifest without ``config_schema`` accepts any object.
    """
    if not isinstance(config, Mapping):
        raise UsageError(
            f"plugin {manifest.name!r}: the configuration must be a JSON object (a dict), "
            f"not {type(config).__name__}",
            plugin=manifest.name,
        )
    if manifest.config_schema is None:
        return
    cls = jsonschema.validators.validator_for(
        manifest.config_schema, default=jsonschema.Draft202012Validator
    )
    validator = cls(manifest.config_schema)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    except referencing.exceptions.Unresolvable as exc:
        # A $ref the schema cannot resolve is the plugin's fault, not the host's.
        raise ManifestError(
            f"{manifest.path}: invalid manifest at $.config_schema: it refers to {exc} which "
            f"cannot be resolved (plugbox never fetches schemas over the network); make the "
            f"schema self-contained",
            plugin=manifest.name,
            json_path="$.config_schema",
        ) from exc
    except RecursionError as exc:
        raise UsageError(
            f"plugin {manifest.name!r}: the configuration is nested too deeply",
            plugin=manifest.name,
        ) from exc
    if error is None:
        return
    path = _format_json_path(error.absolute_path)
    raise UsageError(
        f"plugin {manifest.name!r}: the configuration is invalid at {path}: "
        f"{_truncate(error.message)}. The plugin's config_schema (in {manifest.path}) "
        f"requires this; pass a configuration that satisfies it",
        plugin=manifest.name,
    )
