"""The host's policy: caps on what a plugin's manifest may request.

A manifest *requests* permissions and limits; :meth:`Policy.resolve` checks the request against
the host's caps, refusing the plugin with :class:`~plugbox.PolicyViolationError` when it asks
for more, and fills in the limits the manifest leaves out from :attr:`Policy.default_limits`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .engine import _abispec
from ._errors import PolicyViolationError, UsageError
from ._permissions import Limits, Permissions

if TYPE_CHECKING:
    from ._manifest import Manifest

__all__ = [
    "DEFAULT_MAX_LIMITS", "MIN_MEMORY_BYTES", "Policy", "budget_violation",
    "check_runnable_limits",
]

#: The default caps: generous enough for real plugins, small enough that a runaway one cannot
#: take the host down.
DEFAULT_MAX_LIMITS = Limits(
    fuel=10_000_000_000,
    memory_bytes=512 << 20,
    deadline_ms=60_000,
    instances=16,
)

#: Defaults for components (Python plugins: CPython's start-up alone runs ~100 M instructions).
DEFAULT_COMPONENT_LIMITS = Limits(
    fuel=5_000_000_000,
    memory_bytes=256 << 20,
    deadline_ms=10_000,
    instances=4,
)


#: One WebAssembly page: a memory limit below it leaves no room for the ABI's result area, so
#: no module can run under it (refused at load rather than trapping at the first call).
MIN_MEMORY_BYTES = 65536


def _split_host_pattern(pattern: str) -> tuple[str, str | None]:
    """``(host, port)`` of a host pattern; ``port`` is ``None`` when the pattern has none
    (meaning the URL scheme's default port, as in :class:`plugbox.HttpPermission`)."""
    pattern = pattern.lower()
    if pattern.startswith("["):  # bracketed IPv6 literal, optionally followed by :port
        host, _, rest = pattern.partition("]")
        host += "]"
        return (host, rest[1:]) if rest.startswith(":") else (host, None)
    if ":" in pattern:
        host, _, port = pattern.rpartition(":")
        return host, port
    return pattern, None


def _host_pattern_covered(requested: str, allowed: str) -> bool:
    """True when every ``host:port`` that ``requested`` matches is also matched by ``allowed``.

    Decided conservatively on the patterns themselves: the requested host must equal the
    allowed one or be matched by it as a pattern (so ``*.example.com`` covers
    ``api.example.com`` and ``*.example.com``); a requested default port is covered by an
    allowed default port or ``*``, an explicit port by an equal or matching port pattern.
    """
    req_host, req_port = _split_host_pattern(requested)
    allow_host, allow_port = _split_host_pattern(allowed)
    if req_host != allow_host and not fnmatch.fnmatchcase(req_host, allow_host):
        return False
    if req_port is None:
        return allow_port is None or allow_port == "*"
    if allow_port is None:
        return False
    return req_port == allow_port or fnmatch.fnmatchcase(req_port, allow_port)


_BUDGET_FIELDS = (
    "max_module_bytes",
    "max_component_bytes",
    "max_code_bytes",
    "max_functions",
    "max_function_body_bytes",
    "max_component_core_instances",
    "max_component_memories",
    "max_component_tables",
)


def check_runnable_limits(manifest: Manifest, limits: Limits) -> None:
    """Refuse limits under which no module can run (a memory cap below one page) with
    :class:`~plugbox.PolicyViolationError`: at load, not as a trap at the first call."""
    if limits.memory_bytes < MIN_MEMORY_BYTES:
        requested = "memory_bytes" in manifest.limits.requested()
        raise PolicyViolationError(
            f"plugin {manifest.name!r} ({manifest.path}) would run with a memory limit of "
            f"{limits.memory_bytes} bytes, below one WebAssembly page ({MIN_MEMORY_BYTES} "
            "bytes), under which no module can run; "
            + ("raise limits.memory_bytes in the manifest" if requested else
               "raise the host's Policy(max_limits=Limits(memory_bytes=...)) or its "
               "default limits"),
            plugin=manifest.name,
            limit="memory_bytes",
        )


def budget_violation(manifest: Manifest, what: str, cap_name: str, needed: int
                     ) -> PolicyViolationError:
    """A plugin refused for needing more than the policy's ``cap_name`` allows: ``what`` it
    needs, and the setting (``needed``) with which the host could allow it."""
    return PolicyViolationError(
        f"plugin {manifest.name!r} ({manifest.path}) {what}; rebuild it smaller, or have the "
        f"host allow it: Policy({cap_name}={needed})",
        plugin=manifest.name,
        limit=cap_name,
    )


@dataclass(frozen=True)
class Policy:
    """Caps the host puts on what plugins may request.

    ``max_limits``: the highest limits a manifest may request; ``default_limits``: the limits
    for whatever a manifest does not request (each capped by ``max_limits``, so lowering a cap
    also lowers the default); ``allowed_services``: the services a manifest may request at all
    (default: all seven); ``http_hosts``: ``host``/``host:port`` patterns the host permits
    plugins to request (default none, so a plugin asking for HTTP is refused until the host
    lists patterns); the ``max_*`` fields cap the parameters of the kv and http permissions.
    ``host_functions`` and ``dispatch_points`` (``fnmatch`` patterns, default ``("*",)``) are
    the host functions and extension points plugins may request in ``permissions.functions``
    and ``permissions.dispatch`` (ABI 1.1): by default the host decides per function when it
    registers it, so a request is refused here only when the host narrowed these.
    ``default_component_limits`` replaces ``default_limits`` for components: a Python plugin
    carries a whole CPython, whose start-up and calls need far more fuel and memory than a
    Rust core module.

    The compile budget, checked on the module's bytes before anything is compiled (compiling
    costs time and memory roughly in proportion to the code): ``max_module_bytes`` caps a core
    module's file and ``max_component_bytes`` a component's (a componentize-py Python plugin
    is about 18 MiB, most of it the Python standard library as data); ``max_code_bytes`` caps
    the function bodies of all core modules together, ``max_functions`` their number and
    ``max_function_body_bytes`` the largest one. ``max_component_core_instances``,
    ``max_component_memories`` and ``max_component_tables`` cap what one instance of a
    component may create (a Python plugin creates 14 core instances, 1 memory and 2 tables),
    so that no component can take the runtime's shared instance slots from the others.
    """

    max_limits: Limits = DEFAULT_MAX_LIMITS
    default_limits: Limits = field(default_factory=Limits)
    default_component_limits: Limits = field(default_factory=lambda: DEFAULT_COMPONENT_LIMITS)
    allowed_services: frozenset[str] = frozenset(_abispec.SERVICES)
    http_hosts: tuple[str, ...] = ()
    host_functions: tuple[str, ...] = ("*",)
    dispatch_points: tuple[str, ...] = ("*",)
    max_kv_quota_bytes: int = 64 << 20
    max_kv_quota_keys: int = 100_000
    max_http_timeout_ms: int = 60_000
    max_http_request_bytes: int = 32 << 20
    max_http_response_bytes: int = 32 << 20
    max_module_bytes: int = 4 << 20
    max_component_bytes: int = 64 << 20
    max_code_bytes: int = 16 << 20
    max_functions: int = 50_000
    max_function_body_bytes: int = 1 << 20
    max_component_core_instances: int = 32
    max_component_memories: int = 4
    max_component_tables: int = 16

    def __post_init__(self) -> None:
        # Accept any iterable for the collection fields (a set, a list) but store immutables,
        # and reject a bare string, which would otherwise be taken character by character.
        for name in ("allowed_services", "http_hosts", "host_functions", "dispatch_points"):
            value: Any = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise UsageError(
                    f"Policy({name}=...) must be a collection of strings, not {value!r}"
                )
        object.__setattr__(self, "allowed_services", frozenset(self.allowed_services))
        object.__setattr__(self, "http_hosts", tuple(self.http_hosts))
        for name in ("host_functions", "dispatch_points"):
            patterns = tuple(getattr(self, name))
            for pattern in patterns:
                if not isinstance(pattern, str) or not pattern:
                    raise UsageError(
                        f"Policy({name}=...) entries must be non-empty fnmatch patterns such "
                        f"as 'battles.*', not {pattern!r}"
                    )
            object.__setattr__(self, name, patterns)
        unknown = sorted(self.allowed_services - set(_abispec.SERVICES))
        if unknown:
            raise UsageError(
                f"Policy(allowed_services=...) names unknown services {', '.join(unknown)}; "
                f"the services are {', '.join(_abispec.SERVICES)}"
            )
        for pattern in self.http_hosts:
            if not isinstance(pattern, str) or not pattern or "/" in pattern:
                raise UsageError(
                    f"Policy(http_hosts=...) entries must be host or host:port patterns such as "
                    f"'api.example.com' or '127.0.0.1:*', not {pattern!r}"
                )
        for limits_name in ("max_limits", "default_limits", "default_component_limits"):
            limits = getattr(self, limits_name)
            if not isinstance(limits, Limits):
                raise UsageError(f"Policy({limits_name}=...) must be a plugbox.Limits")
            for f in fields(Limits):
                value = getattr(limits, f.name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise UsageError(
                        f"Policy({limits_name}=Limits({f.name}=...)) must be a positive "
                        f"integer, not {value!r}"
                    )
        for cap in (
            "max_kv_quota_bytes",
            "max_kv_quota_keys",
            "max_http_timeout_ms",
            "max_http_request_bytes",
            "max_http_response_bytes",
            *_BUDGET_FIELDS,
        ):
            value = getattr(self, cap)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"Policy({cap}=...) must be a positive integer, not {value!r}")

    def check_module_size(self, manifest: Manifest, size: int, *, component: bool) -> None:
        """Refuse a module file larger than ``max_module_bytes`` (``max_component_bytes`` for
        a component) with :class:`~plugbox.PolicyViolationError`, before it is parsed."""
        cap_name = "max_component_bytes" if component else "max_module_bytes"
        cap = getattr(self, cap_name)
        if size > cap:
            kind = "component" if component else "module"
            raise budget_violation(
                manifest, f"has a {size}-byte {kind}, above the host's cap of {cap} bytes "
                f"(compiling costs time and memory in proportion)", cap_name, size)

    def effective_defaults(self, *, component: bool = False) -> Limits:
        """The limits a plugin gets for what its manifest leaves out."""
        defaults = self.default_component_limits if component else self.default_limits
        return defaults.capped(self.max_limits)

    def resolve(
        self, manifest: Manifest, *, component: bool = False
    ) -> tuple[Permissions, Limits]:
        """The permissions and limits ``manifest`` gets under this policy (``component``: the
        module is a component, so unrequested limits come from ``default_component_limits``).

        Returns the requested permissions (unchanged: a request within the caps is granted as
        asked) and the concrete limits (the requested ones, with :meth:`effective_defaults`
        for the rest). Raises :class:`~plugbox.PolicyViolationError` naming the plugin, the
        permission or limit, what was requested and what is allowed, and the policy setting
        that would allow it.
        """
        plugin = manifest.name
        perms = manifest.permissions

        def violation(
            what: str, fix: str, *, permission: str | None = None, limit: str | None = None
        ) -> PolicyViolationError:
            return PolicyViolationError(
                f"plugin {plugin!r} ({manifest.path}) {what}; lower the request in the "
                f"manifest, or have the host allow it: {fix}",
                plugin=plugin,
                permission=permission,
                limit=limit,
            )

        for service in sorted(perms.services()):
            if service not in self.allowed_services:
                allowed = ", ".join(sorted(self.allowed_services)) or "none"
                raise violation(
                    f"requests the {service!r} permission ($.permissions.{service}), which "
                    f"this host does not allow (allowed: {allowed})",
                    f"Policy(allowed_services={{..., {service!r}}})",
                    permission=service,
                )

        if perms.kv is not None:
            for attr, cap_name in (
                ("quota_bytes", "max_kv_quota_bytes"),
                ("quota_keys", "max_kv_quota_keys"),
            ):
                requested = getattr(perms.kv, attr)
                cap = getattr(self, cap_name)
                if requested > cap:
                    raise violation(
                        f"requests kv.{attr}={requested} ($.permissions.kv.{attr}), above "
                        f"the host's cap of {cap}",
                        f"Policy({cap_name}={requested})",
                        permission="kv",
                    )

        if perms.http is not None:
            for pattern in perms.http.hosts:
                if not any(_host_pattern_covered(pattern, allowed) for allowed in self.http_hosts):
                    permitted = ", ".join(repr(h) for h in self.http_hosts) or "none"
                    raise violation(
                        f"requests HTTP access to {pattern!r} ($.permissions.http.hosts), "
                        f"which the host's HTTP allow-list does not cover (permitted: "
                        f"{permitted})",
                        f"Policy(http_hosts=(..., {pattern!r})) (or plugbox --allow-http "
                        f"{pattern!r} on the command line)",
                        permission="http",
                    )
            for attr, cap_name in (
                ("timeout_ms", "max_http_timeout_ms"),
                ("max_request_bytes", "max_http_request_bytes"),
                ("max_response_bytes", "max_http_response_bytes"),
            ):
                requested = getattr(perms.http, attr)
                cap = getattr(self, cap_name)
                if requested > cap:
                    raise violation(
                        f"requests http.{attr}={requested} ($.permissions.http.{attr}), above "
                        f"the host's cap of {cap}",
                        f"Policy({cap_name}={requested})",
                        permission="http",
                    )

        for attr, cap_name, what in (
            ("functions", "host_functions", "call the host function"),
            ("dispatch", "dispatch_points", "dispatch the extension point"),
        ):
            allowed_patterns: tuple[str, ...] = getattr(self, cap_name)
            for pattern in getattr(perms, attr):
                if not any(pattern == allowed or fnmatch.fnmatchcase(pattern, allowed)
                           for allowed in allowed_patterns):
                    permitted = ", ".join(repr(p) for p in allowed_patterns) or "none"
                    raise violation(
                        f"requests to {what} {pattern!r} ($.permissions.{attr}), which the "
                        f"host's Policy.{cap_name} does not cover (permitted: {permitted})",
                        f"Policy({cap_name}=(..., {pattern!r}))",
                        permission=attr,
                    )

        for name, requested in manifest.limits.requested().items():
            cap = getattr(self.max_limits, name)
            if requested > cap:
                raise violation(
                    f"requests limits.{name}={requested} ($.limits.{name}), above the host's "
                    f"cap of {cap}",
                    f"Policy(max_limits=Limits({name}={requested}, ...))",
                    limit=name,
                )

        limits = manifest.limits.fill(self.effective_defaults(component=component))
        check_runnable_limits(manifest, limits)
        return perms, limits
