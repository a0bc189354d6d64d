"""The plugin host (issue 8): :class:`PluginHost` declares extension points and host
functions, hosts plugins and dispatches to them. Everything public here is also exported
from ``plugbox``."""

from __future__ import annotations

from ._discovery import (
    AddedPlugins,
    DiscoveredPlugin,
    DiscoveryLimits,
    DiscoveryProblem,
    DiscoveryReport,
    discover,
)
from ._errors import (
    ConfigError,
    DependencyError,
    IncompatiblePointError,
    LifecycleError,
    InvalidResultError,
    OrderCycleError,
    PayloadError,
    ReentrantDispatchError,
)
from ._breaker import BreakerPolicy, BreakerState, QuarantinedError
from ._health import HEALTH_HOOK, HealthReport
from ._host import MAX_DISPATCH_DEPTH, HostedPlugin, HostRouter, PluginHost
from ._lifecycle import (
    AuditEntry,
    ConfigRevision,
    LifecycleEvent,
    PermissionDiff,
    PluginInfo,
    RecoveredOperation,
    StartReport,
    UpgradeOutcome,
)
from ._points import ExtensionPoint, HostFunction
from ._results import DispatchResult, Failure, Result

__all__ = [
    "HEALTH_HOOK",
    "MAX_DISPATCH_DEPTH",
    "AddedPlugins",
    "AuditEntry",
    "BreakerPolicy",
    "BreakerState",
    "ConfigError",
    "ConfigRevision",
    "DependencyError",
    "DiscoveredPlugin",
    "DiscoveryLimits",
    "DiscoveryProblem",
    "DiscoveryReport",
    "DispatchResult",
    "ExtensionPoint",
    "Failure",
    "HealthReport",
    "HostFunction",
    "HostRouter",
    "HostedPlugin",
    "IncompatiblePointError",
    "InvalidResultError",
    "LifecycleError",
    "LifecycleEvent",
    "OrderCycleError",
    "PayloadError",
    "PermissionDiff",
    "PluginHost",
    "PluginInfo",
    "QuarantinedError",
    "RecoveredOperation",
    "ReentrantDispatchError",
    "Result",
    "StartReport",
    "UpgradeOutcome",
    "discover",
]
