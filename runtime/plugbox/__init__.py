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
from ._permissions import EventsPermission, HttpPermission, KvPermission, Limits, Permissions

__version__ = "0.1.0"

__all__ = [
    "AbiViolation",
    "DeadlineExceeded",
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
    "ManifestError",
    "MemoryLimitExceeded",
    "ModuleInterfaceError",
    "PermissionDenied",
    "PlugboxError",
    "PluginCallError",
    "Permissions",
    "PolicyViolationError",
    "StackOverflow",
    "UnknownHookError",
    "UsageError",
    "VerificationError",
    "__version__",
]
