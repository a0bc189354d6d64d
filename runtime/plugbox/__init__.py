"""plugbox: a WebAssembly-sandboxed plugin runtime for Python applications."""

from __future__ import annotations

from ._errors import (
    AbiViolation,
    DeadlineExceeded,
    FuelExhausted,
    GuestError,
    GuestTrap,
    HashMismatchError,
    IncompatibleAbiError,
    IncompatibleHostError,
    LimitExceeded,
    ManifestError,
    MemoryLimitExceeded,
    ModuleInterfaceError,
    PermissionDenied,
    PlugboxError,
    PluginCallError,
    PolicyViolationError,
    StackOverflow,
    UnknownHookError,
    UsageError,
    VerificationError,
)
from ._events import Event, EventBus
from ._manifest import Manifest, load_manifest
from ._permissions import EventsPermission, HttpPermission, KvPermission, Limits, Permissions
from ._plugin import CallRecord, Plugin
from ._policy import Policy
from ._runtime import Runtime

__version__ = "0.1.0"

__all__ = [
    "AbiViolation",
    "CallRecord",
    "DeadlineExceeded",
    "Event",
    "EventBus",
    "EventsPermission",
    "FuelExhausted",
    "GuestError",
    "GuestTrap",
    "HashMismatchError",
    "HttpPermission",
    "IncompatibleAbiError",
    "IncompatibleHostError",
    "KvPermission",
    "LimitExceeded",
    "Limits",
    "Manifest",
    "ManifestError",
    "MemoryLimitExceeded",
    "ModuleInterfaceError",
    "PermissionDenied",
    "Permissions",
    "PlugboxError",
    "Plugin",
    "PluginCallError",
    "Policy",
    "PolicyViolationError",
    "Runtime",
    "StackOverflow",
    "UnknownHookError",
    "UsageError",
    "VerificationError",
    "__version__",
    "load_manifest",
]
