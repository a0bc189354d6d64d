"""What a plugin may do: permissions per host service and resource limits.

A manifest *requests* permissions and limits; the host's policy caps them; what a plugin finally
holds (its grant) is the request, less whatever the host withholds at load time.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "EventsPermission",
    "HttpPermission",
    "KvPermission",
    "Limits",
    "Permissions",
]


def split_host_pattern(pattern: str) -> tuple[str, str | None, bool]:
    """Split an HTTP host pattern into (host, port pattern or None, host is a literal IPv6).

    ``example.com`` -> (``example.com``, None, False); ``*.x.org:8*`` -> (``*.x.org``, ``8*``,
    False); ``[::1]:*`` -> (``::1``, ``*``, True); a bare ``::1`` -> (``::1``, None, True).
    """
    if pattern.startswith("["):
        end = pattern.find("]")
        if end < 0:
            return pattern, None, True
        rest = pattern[end + 1:]
        return pattern[1:end], (rest[1:] if rest.startswith(":") else None), True
    if pattern.count(":") > 1:
        return pattern, None, True
    host, sep, port = pattern.partition(":")
    return host, (port if sep else None), False


@dataclass(frozen=True)
class KvPermission:
    """Key-value storage with a quota on stored bytes (keys + values) and on the key count."""

    quota_bytes: int = 1 << 20
    quota_keys: int = 1000


@dataclass(frozen=True)
class EventsPermission:
    """Emitting events on topics that match one of ``topics`` (``fnmatch`` patterns)."""

    topics: tuple[str, ...] = ()

    def allows(self, topic: str) -> bool:
        """True when ``topic`` matches one of the allowed patterns."""
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.topics)


@dataclass(frozen=True)
class HttpPermission:
    """Outbound HTTP to hosts matching ``hosts``.

    A pattern is ``host`` or ``host:port`` with ``fnmatch`` wildcards (``*.example.com``,
    ``127.0.0.1:*``). A pattern without a port matches the URL's default port only.
    """

    hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("GET",)
    max_request_bytes: int = 1 << 20
    max_response_bytes: int = 4 << 20
    timeout_ms: int = 10_000

    def allows_host(self, host: str, port: int, default_port: int) -> bool:
        """True when ``host:port`` matches an allowed pattern."""
        host = host.lower().strip("[]")
        for pattern in self.hosts:
            phost, pport, literal = split_host_pattern(pattern.lower())
            if literal:
                host_ok = host == phost  # IPv6: brackets and colons are not glob syntax
            else:
                host_ok = fnmatch.fnmatchcase(host, phost)
            if not host_ok:
                continue
            if pport is None:
                if port == default_port:
                    return True
            elif fnmatch.fnmatchcase(str(port), pport):
                return True
        return False

    def allows_method(self, method: str) -> bool:
        """True when the HTTP method is allowed (case-insensitive)."""
        return method.upper() in {m.upper() for m in self.methods}


def matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    """True when ``name`` matches one of the ``fnmatch`` ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Permissions:
    """The services a plugin may call. ``None``/``False`` means not granted.

    ``functions`` and ``dispatch`` (ABI 1.1, the ``host`` interface) are ``fnmatch`` patterns:
    the host functions the plugin may call (``"battles.*"``) and the extension points it may
    dispatch through the host (besides the points it declares itself, which it always may).
    """

    log: bool = False
    config: bool = False
    clock: bool = False
    random: bool = False
    kv: KvPermission | None = None
    events: EventsPermission | None = None
    http: HttpPermission | None = None
    functions: tuple[str, ...] = ()
    dispatch: tuple[str, ...] = ()

    def allows_function(self, name: str) -> bool:
        """True when host function ``name`` matches a ``functions`` pattern."""
        return matches_any(name, self.functions)

    def allows_dispatch(self, point: str) -> bool:
        """True when extension point ``point`` matches a ``dispatch`` pattern."""
        return matches_any(point, self.dispatch)

    def services(self) -> frozenset[str]:
        """Names of the services granted."""
        names = {
            "log": self.log,
            "config": self.config,
            "clock": self.clock,
            "random": self.random,
            "kv": self.kv is not None,
            "events": self.events is not None,
            "http": self.http is not None,
            "host": bool(self.functions or self.dispatch),
        }
        return frozenset(name for name, on in names.items() if on)

    def without(self, services: frozenset[str] | set[str]) -> Permissions:
        """A copy with the named services withheld."""
        changes: dict[str, Any] = {}
        for name in services:
            if name in ("log", "config", "clock", "random"):
                changes[name] = False
            elif name in ("kv", "events", "http"):
                changes[name] = None
            elif name == "host":
                changes["functions"] = changes["dispatch"] = ()
            else:
                raise ValueError(f"unknown service {name!r}")
        return replace(self, **changes)


@dataclass(frozen=True)
class Limits:
    """Per-call resource limits.

    ``fuel``: instructions (roughly) a call may execute; ``memory_bytes``: cap on linear memory;
    ``deadline_ms``: wall-clock time a call may take; ``instances``: size of the instance pool
    for concurrent callers.
    """

    fuel: int = 500_000_000
    memory_bytes: int = 64 << 20
    deadline_ms: int = 5_000
    instances: int = 4

    def capped(self, cap: Limits) -> Limits:
        """Each field reduced to at most ``cap``'s."""
        return Limits(
            fuel=min(self.fuel, cap.fuel),
            memory_bytes=min(self.memory_bytes, cap.memory_bytes),
            deadline_ms=min(self.deadline_ms, cap.deadline_ms),
            instances=min(self.instances, cap.instances),
        )

