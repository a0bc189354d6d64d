"""The public surface of ``plugbox``: exactly these names, sorted, documented, one error root."""

from __future__ import annotations

import inspect

import plugbox

PUBLIC = sorted([
    # Issue 10 (metrics):
    "Histogram", "HookMetrics", "Metrics", "PluginMetrics", "PointMetrics",
    # Issue 9 (lifecycle):
    "AuditEntry", "ConfigError", "ConfigRevision", "DependencyError", "LifecycleError",
    "LifecycleEvent", "PermissionDiff", "PluginInfo", "RecoveredOperation", "StartReport",
    "UpgradeOutcome",
    # Issue 10 (monitoring):
    "BreakerPolicy", "BreakerState", "HealthReport", "QuarantinedError",
    "AbiViolation", "AddedPlugins", "CallRecord", "CapabilityError", "ClosedError",
    "DeadlineExceeded", "DiscoveredPlugin", "DiscoveryLimits", "DiscoveryProblem", "DiscoveryReport",
    "DispatchResult", "Event", "EventBus", "EventsPermission", "ExtensionPoint", "Failure",
    "FuelExhausted", "GuestError", "GuestTrap", "HashMismatchError", "HostFunction",
    "HostedPlugin", "HttpPermission", "IdentityConflictError", "IncompatibleAbiError",
    "IncompatibleHostError", "IncompatiblePointError", "InvalidResultError", "KeyFileError",
    "KvPermission", "LimitExceeded", "Limits", "Manifest", "ManifestError",
    "MemoryLimitExceeded", "ModuleInterfaceError", "OrderCycleError", "PackageError",
    "PayloadError", "PermissionDenied", "Permissions", "PlugboxError", "Plugin",
    "PluginCallError", "PluginHost", "Policy", "PolicyViolationError", "PublicKey",
    "ReentrantDispatchError", "Result", "RevokedKeyError", "Runtime", "SecretKey",
    "SignatureError", "SignerInfo", "StackOverflow", "StateError", "TrustPolicy",
    "UnknownHookError", "UntrustedSignerError", "UsageError", "VerificationError",
    "__version__", "discover", "load_manifest",
])


def test_public_names_are_exactly_these_and_sorted() -> None:
    assert plugbox.__all__ == PUBLIC
    assert plugbox.__all__ == sorted(plugbox.__all__)
    for name in PUBLIC:
        assert hasattr(plugbox, name), name


def test_every_public_symbol_has_a_docstring() -> None:
    for name in PUBLIC:
        obj = getattr(plugbox, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and "TODO" not in obj.__doc__, name


def test_every_exception_derives_from_the_one_root() -> None:
    errors = [getattr(plugbox, n) for n in PUBLIC
              if inspect.isclass(getattr(plugbox, n))
              and issubclass(getattr(plugbox, n), BaseException)]
    assert len(errors) >= 20
    for cls in errors:
        assert issubclass(cls, plugbox.PlugboxError), cls
