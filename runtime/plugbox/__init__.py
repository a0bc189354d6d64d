"""plugbox: a WebAssembly-sandboxed plugin runtime for Python applications."""

from __future__ import annotations

from ._errors import (
    AbiViolation,
    CapabilityError,
    ClosedError,
    DeadlineExceeded,
    FuelExhausted,
    GuestError,
    GuestTrap,
    HashMismatchError,
    IdentityConflictError,
    IncompatibleAbiError,
    IncompatibleHostError,
    KeyFileError,
    LimitExceeded,
    ManifestError,
    MemoryLimitExceeded,
    ModuleInterfaceError,
    PackageError,
    PermissionDenied,
    PlugboxError,
    PluginCallError,
    PolicyViolationError,
    RevokedKeyError,
    SignatureError,
    StackOverflow,
    StateError,
    UnknownHookError,
    UntrustedSignerError,
    UsageError,
    VerificationError,
)
from .services._events import Event, EventBus
from ._manifest import Manifest, load_manifest
from ._permissions import EventsPermission, HttpPermission, KvPermission, Limits, Permissions
from ._plugin import CallRecord, Plugin
from ._policy import Policy
from ._runtime import Runtime
from .trust._signing import PublicKey, SecretKey
from .trust._trust import SignerInfo, TrustPolicy

from ._version import __version__

__all__ = [
    "AbiViolation",
    "CallRecord",
    "CapabilityError",
    "ClosedError",
    "DeadlineExceeded",
    "Event",
    "EventBus",
    "EventsPermission",
    "FuelExhausted",
    "GuestError",
    "GuestTrap",
    "HashMismatchError",
    "HttpPermission",
    "IdentityConflictError",
    "IncompatibleAbiError",
    "IncompatibleHostError",
    "KeyFileError",
    "KvPermission",
    "LimitExceeded",
    "Limits",
    "Manifest",
    "ManifestError",
    "MemoryLimitExceeded",
    "ModuleInterfaceError",
    "PackageError",
    "PermissionDenied",
    "Permissions",
    "PlugboxError",
    "Plugin",
    "PluginCallError",
    "Policy",
    "PolicyViolationError",
    "PublicKey",
    "RevokedKeyError",
    "Runtime",
    "SecretKey",
    "SignatureError",
    "SignerInfo",
    "StackOverflow",
    "StateError",
    "TrustPolicy",
    "UnknownHookError",
    "UntrustedSignerError",
    "UsageError",
    "VerificationError",
    "__version__",
    "load_manifest",
]
