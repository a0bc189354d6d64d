"""What a host declares: :class:`ExtensionPoint` and :class:`HostFunction`, checked once at
declaration, with their schemas compiled into bounded validators."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from packaging.version import InvalidVersion, Version

from .._errors import UsageError
from .._manifest import MAX_POINT_SCHEMA_BYTES, MAX_POINT_SCHEMA_DEPTH, _depth
from ._schema import Validator, check_host_schema

__all__ = ["MODES", "FAILURE_POLICIES", "PAYLOADS", "ExtensionPoint", "HostFunction"]

#: Dispatch modes.
MODES: Final = ("each", "first", "pipeline", "notify")
#: Failure policies.
FAILURE_POLICIES: Final = ("isolate", "propagate")
#: Payload kinds.
PAYLOADS: Final = ("json", "bytes")

_SEMVER_HINT: Final = "a semantic version such as '1.2.0'"


def check_name(name: object, what: str) -> str:
    """A point or function name: like a hook name (lowercase letters, digits, '.', '_', '-',
    starting with a letter, at most 128 characters)."""
    if not isinstance(name, str) or re.fullmatch(r"[a-z][a-z0-9._-]{0,127}", name) is None:
        raise UsageError(f"{what} name must be 1-128 lowercase letters, digits, '.', '_' or "
                         f"'-', starting with a letter (like a hook name), not {name!r}")
    return name


def _semver(version: object, what: str) -> str:
    if not isinstance(version, str):
        raise UsageError(f"{what}: version must be {_SEMVER_HINT}, not {version!r}")
    try:
        Version(version)
    except InvalidVersion:
        raise UsageError(f"{what}: version must be {_SEMVER_HINT}, not {version!r}") from None
    if version.count(".") < 2:
        raise UsageError(f"{what}: version must be {_SEMVER_HINT} (MAJOR.MINOR.PATCH), not "
                         f"{version!r}")
    return version


def _choice(value: object, options: tuple[str, ...], what: str) -> str:
    if value not in options:
        raise UsageError(f"{what} must be one of {', '.join(map(repr, options))}, "
                         f"not {value!r}")
    return str(value)


def _limit(value: object, what: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise UsageError(f"{what} must be a positive int or None, not {value!r}")
    return value


def _compile(schema: object, what: str, *, trusted: bool) -> Validator | None:
    """The validator of a point's or function's schema (None: no schema). Host schemas are
    checked here; plugin schemas were checked, bounded, when the manifest was read."""
    if schema is None:
        return None
    if trusted:
        check_host_schema(schema, what)
        try:
            size = len(json.dumps(schema).encode())
        except (TypeError, ValueError, RecursionError) as exc:
            raise UsageError(f"{what} is not JSON-serialisable: {exc}") from None
        if size > MAX_POINT_SCHEMA_BYTES or _depth(schema) > MAX_POINT_SCHEMA_DEPTH:
            raise UsageError(f"{what} is larger than {MAX_POINT_SCHEMA_BYTES} bytes as JSON "
                             f"or nested deeper than {MAX_POINT_SCHEMA_DEPTH} levels; keep "
                             f"payload schemas small")
    assert isinstance(schema, (Mapping, bool))
    return Validator(schema)


@dataclass(frozen=True)
class ExtensionPoint:
    """An extension point: a name and semver version plugins implement, what its payload is,
    how a dispatch calls the implementations and what a failure does.

    Declared by the host with :meth:`plugbox.PluginHost.extension_point`, or by a plugin in
    its manifest (``extension_points``; then ``owner`` is that plugin's name and the payload
    is JSON). ``fuel`` and ``deadline_ms`` tighten each implementation's own limits for a
    call of this point; ``memory_bytes`` caps the memory of every plugin implementing the
    point, at load (a plugin implementing several points gets the tightest cap). ``background``
    (``notify`` only) runs dispatches off the caller's thread; ``concurrent`` (``each`` and
    ``notify``) lets the implementations of one dispatch run at the same time.
    """

    name: str
    version: str
    payload: str = "json"
    mode: str = "each"
    failure: str = "isolate"
    input_schema: Mapping[str, Any] | bool | None = field(default=None, hash=False,
                                                          compare=False)
    output_schema: Mapping[str, Any] | bool | None = field(default=None, hash=False,
                                                           compare=False)
    fuel: int | None = None
    deadline_ms: int | None = None
    memory_bytes: int | None = None
    background: bool = False
    concurrent: bool = False
    description: str = ""
    owner: str | None = None
    #: This point's own circuit-breaker policy (its failures then count against a breaker of
    #: each plugin at this point only); None: the host's.
    breaker: Any = field(default=None, hash=False, compare=False)
    _input: Validator | None = field(default=None, repr=False, compare=False, hash=False)
    _output: Validator | None = field(default=None, repr=False, compare=False, hash=False)

    @classmethod
    def declare(cls, name: str, *, version: str, payload: str = "json",
                input_schema: Mapping[str, Any] | bool | None = None,
                output_schema: Mapping[str, Any] | bool | None = None, mode: str = "each",
                failure: str = "isolate", fuel: int | None = None,
                deadline_ms: int | None = None, memory_bytes: int | None = None,
                background: bool = False, concurrent: bool = False, description: str = "",
                owner: str | None = None, breaker: Any = None) -> ExtensionPoint:
        """A checked point; raises :class:`plugbox.UsageError` on a bad argument. Schemas
        from a plugin (``owner`` set) were already checked with the manifest."""
        check_name(name, "an extension point")
        what = f"extension point {name!r}"
        _semver(version, what)
        _choice(payload, PAYLOADS, f"{what}: payload")
        _choice(mode, MODES, f"{what}: mode")
        _choice(failure, FAILURE_POLICIES, f"{what}: failure")
        if payload == "bytes" and (input_schema is not None or output_schema is not None):
            raise UsageError(f"{what}: a bytes point takes no JSON Schemas; use payload='json'")
        if background and mode != "notify":
            raise UsageError(f"{what}: background=True needs mode='notify' (only notify "
                             f"discards the results a caller would wait for)")
        if concurrent and mode not in ("each", "notify"):
            raise UsageError(f"{what}: concurrent=True needs mode 'each' or 'notify' ('first' "
                             f"and 'pipeline' call the plugins one after the other)")
        if not isinstance(description, str):
            raise UsageError(f"{what}: description must be a str")
        from ._breaker import BreakerPolicy

        if breaker is not None and not isinstance(breaker, BreakerPolicy):
            raise UsageError(f"{what}: breaker must be a plugbox.BreakerPolicy or None")
        trusted = owner is None
        return cls(
            breaker=breaker,
            name=name, version=version, payload=payload, mode=mode, failure=failure,
            input_schema=input_schema, output_schema=output_schema,
            fuel=_limit(fuel, f"{what}: fuel"),
            deadline_ms=_limit(deadline_ms, f"{what}: deadline_ms"),
            memory_bytes=_limit(memory_bytes, f"{what}: memory_bytes"),
            background=bool(background), concurrent=bool(concurrent), description=description,
            owner=owner,
            _input=_compile(input_schema, f"{what}: input_schema", trusted=trusted),
            _output=_compile(output_schema, f"{what}: output_schema", trusted=trusted),
        )


@dataclass(frozen=True)
class HostFunction:
    """A function the host offers plugins (ABI 1.1 ``host.call``): ``handler`` receives the
    payload (the decoded JSON value, or bytes for ``payload="bytes"``) and returns the
    result; a handler with a parameter named ``plugin`` also receives the calling plugin's
    name. Registered with :meth:`plugbox.PluginHost.function`; a plugin may call it when its
    manifest's ``permissions.functions`` matches the name."""

    name: str
    handler: Callable[..., Any] = field(repr=False)
    payload: str = "json"
    input_schema: Mapping[str, Any] | bool | None = field(default=None, hash=False,
                                                          compare=False)
    output_schema: Mapping[str, Any] | bool | None = field(default=None, hash=False,
                                                           compare=False)
    description: str = ""
    _input: Validator | None = field(default=None, repr=False, compare=False, hash=False)
    _output: Validator | None = field(default=None, repr=False, compare=False, hash=False)
    _wants_plugin: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def declare(cls, name: str, handler: Callable[..., Any], *,
                input_schema: Mapping[str, Any] | bool | None = None,
                output_schema: Mapping[str, Any] | bool | None = None,
                payload: str = "json", description: str = "") -> HostFunction:
        """A checked function; raises :class:`plugbox.UsageError` on a bad argument."""
        check_name(name, "a host function")
        what = f"host function {name!r}"
        if not callable(handler):
            raise UsageError(f"{what}: handler must be callable, not {handler!r}")
        _choice(payload, PAYLOADS, f"{what}: payload")
        if payload == "bytes" and (input_schema is not None or output_schema is not None):
            raise UsageError(f"{what}: a bytes function takes no JSON Schemas")
        try:
            wants_plugin = "plugin" in inspect.signature(handler).parameters
        except (TypeError, ValueError):  # some builtins have no signature
            wants_plugin = False
        return cls(name=name, handler=handler, payload=payload, input_schema=input_schema,
                   output_schema=output_schema, description=description,
                   _input=_compile(input_schema, f"{what}: input_schema", trusted=True),
                   _output=_compile(output_schema, f"{what}: output_schema", trusted=True),
                   _wants_plugin=wants_plugin)
