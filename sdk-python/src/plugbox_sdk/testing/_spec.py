"""What the test harness needs from ``plugbox.json``: name, hooks, permissions, config schema.

Read with the standard library only (the SDK has no dependencies). When the ``plugbox``
runtime is installed, the manifest is also validated by ``plugbox.load_manifest``, so a test
fails on exactly the manifest errors the runtime would refuse the plugin for.

The defaults of the permission sub-fields are those of ``plugbox._permissions``;
``tests/test_sdk_python.py`` pins them equal.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["EventsSpec", "HttpSpec", "KvSpec", "PluginSpec", "read_spec"]

MANIFEST: Final = "plugbox.json"

#: Defaults for permission fields a manifest leaves out (as in plugbox._permissions).
KV_QUOTA_BYTES: Final = 1 << 20
KV_QUOTA_KEYS: Final = 1000
HTTP_METHODS: Final = ("GET",)
HTTP_MAX_REQUEST_BYTES: Final = 1 << 20
HTTP_MAX_RESPONSE_BYTES: Final = 4 << 20
HTTP_TIMEOUT_MS: Final = 10_000


@dataclass(frozen=True)
class KvSpec:
    """The ``kv`` permission: quotas over key + value bytes and over the key count."""

    quota_bytes: int = KV_QUOTA_BYTES
    quota_keys: int = KV_QUOTA_KEYS


@dataclass(frozen=True)
class EventsSpec:
    """The ``events`` permission: allowed topic patterns (``fnmatch``, case-sensitive)."""

    topics: tuple[str, ...] = ()

    def allows(self, topic: str) -> bool:
        """True when ``topic`` matches one of the patterns."""
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.topics)


def split_host_pattern(pattern: str) -> tuple[str, str | None, bool]:
    """``(host, port pattern or None, host is an IPv6 literal)`` of a host pattern."""
    if pattern.startswith("["):
        end = pattern.find("]")
        if end < 0:
            return pattern, None, True
        rest = pattern[end + 1 :]
        return pattern[1:end], (rest[1:] if rest.startswith(":") else None), True
    if pattern.count(":") > 1:
        return pattern, None, True
    host, sep, port = pattern.partition(":")
    return host, (port if sep else None), False


@dataclass(frozen=True)
class HttpSpec:
    """The ``http`` permission: host patterns, methods, size caps and timeout."""

    hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = HTTP_METHODS
    max_request_bytes: int = HTTP_MAX_REQUEST_BYTES
    max_response_bytes: int = HTTP_MAX_RESPONSE_BYTES
    timeout_ms: int = HTTP_TIMEOUT_MS

    def allows_host(self, host: str, port: int, default_port: int) -> bool:
        """True when ``host:port`` matches a pattern; a pattern without a port matches the
        scheme's default port only."""
        host = host.lower().strip("[]")
        for pattern in self.hosts:
            phost, pport, literal = split_host_pattern(pattern.lower())
            host_ok = host == phost if literal else fnmatch.fnmatchcase(host, phost)
            if not host_ok:
                continue
            if pport is None:
                if port == default_port:
                    return True
            elif fnmatch.fnmatchcase(str(port), pport):
                return True
        return False

    def allows_method(self, method: str) -> bool:
        """True when ``method`` is granted (case-insensitive)."""
        return method.upper() in {m.upper() for m in self.methods}


@dataclass(frozen=True)
class PluginSpec:
    """The parts of a manifest the harness enforces."""

    name: str
    directory: Path
    hooks: tuple[str, ...]
    module_path: Path
    log: bool = False
    config: bool = False
    clock: bool = False
    random: bool = False
    kv: KvSpec | None = None
    events: EventsSpec | None = None
    http: HttpSpec | None = None
    config_schema: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None
    #: ABI 1.1: host function and extension point patterns (``permissions.functions`` and
    #: ``permissions.dispatch``), and the points the plugin declares (``extension_points``).
    functions: tuple[str, ...] = ()
    dispatch: tuple[str, ...] = ()
    own_points: tuple[str, ...] = ()
    #: ``limits.deadline_ms`` when the manifest requests one (None: the host's default).
    deadline_ms: int | None = None

    def services(self) -> frozenset[str]:
        """The services the manifest requests."""
        flags = {
            "log": self.log,
            "config": self.config,
            "clock": self.clock,
            "random": self.random,
            "kv": self.kv is not None,
            "events": self.events is not None,
            "http": self.http is not None,
            "host": bool(self.functions or self.dispatch or self.own_points),
        }
        return frozenset(name for name, on in flags.items() if on)


def _validate_with_runtime(path: Path) -> None:
    """Run the runtime's own manifest checks when plugbox is installed."""
    try:
        from plugbox import load_manifest
    except ImportError:
        return
    load_manifest(path)


def read_spec(directory: str | Path) -> PluginSpec:
    """The :class:`PluginSpec` of the plugin in ``directory`` (or of a ``plugbox.json`` path).

    Raises:
        FileNotFoundError: there is no manifest.
        ValueError: the manifest is not JSON or lacks the fields the harness needs (with
            plugbox installed, its ``ManifestError`` for any schema violation).
    """
    path = Path(directory)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no {MANIFEST}; expected a plugin directory")
    _validate_with_runtime(file)
    try:
        raw = json.loads(file.read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise ValueError(f"{file}: invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: the manifest must be a JSON object")
    name = raw.get("name")
    hooks = raw.get("hooks")
    module = raw.get("module")
    if not isinstance(name, str) or not isinstance(hooks, list) or not isinstance(module, dict):
        raise ValueError(f"{file}: the manifest needs \"name\", \"hooks\" and \"module\"")
    perms = raw.get("permissions") or {}
    kv = perms.get("kv")
    events = perms.get("events")
    http = perms.get("http")
    return PluginSpec(
        name=name,
        directory=file.parent.resolve(),
        hooks=tuple(str(h) for h in hooks),
        module_path=(file.parent / str(module.get("path", "plugin.wasm"))).resolve(),
        log=perms.get("log") is True,
        config=perms.get("config") is True,
        clock=perms.get("clock") is True,
        random=perms.get("random") is True,
        kv=None if kv is None else KvSpec(**kv),
        events=None if events is None else EventsSpec(topics=tuple(events.get("topics", ()))),
        http=None
        if http is None
        else HttpSpec(
            hosts=tuple(http.get("hosts", ())),
            methods=tuple(http.get("methods", HTTP_METHODS)),
            max_request_bytes=http.get("max_request_bytes", HTTP_MAX_REQUEST_BYTES),
            max_response_bytes=http.get("max_response_bytes", HTTP_MAX_RESPONSE_BYTES),
            timeout_ms=http.get("timeout_ms", HTTP_TIMEOUT_MS),
        ),
        config_schema=raw.get("config_schema"),
        raw=raw,
        functions=tuple(perms.get("functions", ())),
        dispatch=tuple(perms.get("dispatch", ())),
        own_points=tuple(raw.get("extension_points") or ()),
        deadline_ms=_deadline_ms(raw.get("limits")),
    )


def _deadline_ms(limits: Any) -> int | None:
    value = limits.get("deadline_ms") if isinstance(limits, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
