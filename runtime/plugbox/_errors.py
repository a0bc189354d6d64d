"""The plugbox exception hierarchy.

Every error plugbox raises derives from :class:`PlugboxError`::

    PlugboxError
    ├── UsageError                 the host called the API wrongly (closed object, bad argument)
    │   ├── ClosedError            the plugin or runtime is closed (also: closed during the call)
    │   └── KeyFileError           a minisign public or secret key file is unreadable or malformed
    ├── StateError                 the state directory, its database or cache is unusable (.path)
    ├── ManifestError              plugbox.json is unreadable or fails the schema
    ├── VerificationError          refused before anything is compiled
    │   ├── HashMismatchError      module bytes differ from the manifest's sha256
    │   ├── IncompatibleAbiError   manifest or module declares an ABI this runtime cannot run
    │   ├── IncompatibleHostError  manifest's host specifier excludes this plugbox version
    │   ├── ModuleInterfaceError   module imports outside the ABI or lacks required exports
    │   │   └── CapabilityError    module imports a service its manifest does not request
    │   ├── PolicyViolationError   manifest asks for more than the host policy allows
    │   ├── SignatureError         a signature is malformed or does not verify (tampering)
    │   ├── UntrustedSignerError   not signed by enough trusted keys (unsigned, unknown key)
    │   │   └── RevokedKeyError    ... and a signature is by a revoked key
    │   ├── IdentityConflictError  the plugin's name is bound to other signers in this state dir
    │   └── PackageError           a .plugbox package is malformed or unsafe to unpack
    └── PluginCallError            a call into a loaded plugin failed (carries .plugin, .hook)
        ├── LimitExceeded          a resource limit stopped the call (carries .limit)
        │   ├── FuelExhausted
        │   ├── DeadlineExceeded
        │   ├── MemoryLimitExceeded
        │   └── StackOverflow
        ├── GuestTrap              the guest trapped (unreachable, out-of-bounds access, ...)
        ├── AbiViolation           the guest broke the ABI (bad pointer, bad UTF-8, bad tag)
        ├── UnknownHookError       the hook is not declared in the plugin's manifest
        ├── PermissionDenied       the plugin failed because a service was denied (.permission)
        └── GuestError             the guest returned its own error (.kind, .detail)

Every error carries the attributes ``plugin``, ``hook``, ``permission`` and ``limit`` (``None``
where they do not apply) so hosts can react without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "AbiViolation",
    "CapabilityError",
    "ClosedError",
    "DeadlineExceeded",
    "FuelExhausted",
    "GuestError",
    "GuestTrap",
    "HashMismatchError",
    "IdentityConflictError",
    "IncompatibleAbiError",
    "IncompatibleHostError",
    "KeyFileError",
    "LimitExceeded",
    "ManifestError",
    "MemoryLimitExceeded",
    "ModuleInterfaceError",
    "PackageError",
    "PermissionDenied",
    "PlugboxError",
    "PluginCallError",
    "PolicyViolationError",
    "RevokedKeyError",
    "SignatureError",
    "StackOverflow",
    "StateError",
    "UnknownHookError",
    "UntrustedSignerError",
    "UsageError",
    "VerificationError",
]


class PlugboxError(Exception):
    """Root of every error plugbox raises."""

    plugin: str | None
    hook: str | None
    permission: str | None
    limit: str | None

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        hook: str | None = None,
        permission: str | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.plugin = plugin
        self.hook = hook
        self.permission = permission
        self.limit = limit


class UsageError(PlugboxError):
    """The host used the API wrongly: a closed object, an invalid argument or setting."""


class ClosedError(UsageError):
    """The plugin or runtime is closed: a call after ``close()``, or a call in flight that
    ``Plugin.close()`` or ``Runtime.close()`` interrupted (not the plugin's fault)."""


class StateError(PlugboxError):
    """The runtime's own state cannot be used: the state directory is missing, a file,
    unwritable, read-only or full; the key-value database is corrupt, not a database, or held
    by another process; the compiled cache's key is unsafe.

    ``path`` names the file or directory at fault; the message says how to fix it.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ManifestError(PlugboxError):
    """A manifest could not be read or does not match the manifest schema.

    ``json_path`` names the offending location (``$.permissions.http.hosts[0]``) when known.
    """

    def __init__(
        self, message: str, *, plugin: str | None = None, json_path: str | None = None
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.json_path = json_path


class VerificationError(PlugboxError):
    """A plugin was refused before compilation: the module or manifest cannot be trusted or run."""


class HashMismatchError(VerificationError):
    """The module's sha256 differs from the one pinned in the manifest."""


class IncompatibleAbiError(VerificationError):
    """The plugin needs an ABI version this runtime does not implement."""


class IncompatibleHostError(VerificationError):
    """The manifest's host-compatibility specifier excludes this plugbox version."""


class ModuleInterfaceError(VerificationError):
    """The module imports something outside the ABI, or lacks an export the ABI requires."""


class PolicyViolationError(VerificationError):
    """The manifest requests a permission or limit beyond the host policy's caps."""


class PluginCallError(PlugboxError):
    """A call into a loaded plugin failed. The host and other plugins are unaffected."""


class LimitExceeded(PluginCallError):
    """A resource limit stopped the call; ``limit`` names it (fuel, deadline, memory, stack)."""


class FuelExhausted(LimitExceeded):
    """The call used up its fuel budget (instructions executed)."""


class DeadlineExceeded(LimitExceeded):
    """The call ran past its wall-clock deadline."""


class MemoryLimitExceeded(LimitExceeded):
    """The plugin tried to grow its linear memory past its cap."""


class StackOverflow(LimitExceeded):
    """The plugin exhausted its wasm stack (usually unbounded recursion)."""


class GuestTrap(PluginCallError):
    """The guest trapped: unreachable, out-of-bounds memory access, division by zero, ...

    When a Rust plugin panicked, the SDK's panic hook left a report: ``panic_message`` holds
    the panic's message and ``panic_location`` its ``file:line:column`` (both are in the
    message too); otherwise both are None.
    """

    def __init__(self, message: str, *, plugin: str | None = None, hook: str | None = None,
                 panic_message: str | None = None, panic_location: str | None = None) -> None:
        super().__init__(message, plugin=plugin, hook=hook)
        self.panic_message = panic_message
        self.panic_location = panic_location


class AbiViolation(PluginCallError):
    """The guest broke the ABI: a pointer or length outside its memory, invalid UTF-8, an
    unknown discriminant, or a malformed return value."""


class UnknownHookError(PluginCallError):
    """The hook is not among those the plugin's manifest declares."""


class PermissionDenied(PluginCallError):
    """The call failed because a host service was denied; ``permission`` names the service."""


class GuestError(PluginCallError):
    """The guest returned its own error.

    ``kind`` is the ABI error case (``denied``, ``not-found``, ``invalid-input``,
    ``limit-reached``, ``failure``) and ``detail`` the guest's message.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        detail: str,
        plugin: str | None = None,
        hook: str | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin, hook=hook)
        self.kind = kind
        self.detail = detail


# --------------------------------------------------------------------------------------------
# Trust chain: signatures, keys, packages and capabilities (see docs/trust.md).


class KeyFileError(UsageError):
    """A minisign public or secret key file (or key text) is unreadable or malformed.

    A usage error: keys are the host's (or the signer's) own configuration, not plugin input.
    ``path`` names the file when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CapabilityError(ModuleInterfaceError):
    """The module imports a host service its manifest does not request.

    ``permission`` names the missing permission and ``import_name`` the offending import
    (``plugbox:plugin/kv@1.0.0#get``).
    """

    def __init__(
        self, message: str, *, plugin: str | None, permission: str, import_name: str
    ) -> None:
        super().__init__(message, plugin=plugin, permission=permission)
        self.import_name = import_name


class SignatureError(VerificationError):
    """A signature file is malformed, or a signature by a trusted key does not verify.

    The second case means the manifest or the signature was modified after signing. ``key_id``
    (16 hex digits, as minisign prints it) and ``path`` (the signature file) are set when known.
    """

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        key_id: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.key_id = key_id
        self.path = path


class UntrustedSignerError(VerificationError):
    """The plugin is not signed by enough trusted keys: it is unsigned, signed only by keys the
    trust policy does not list, or by fewer distinct trusted keys than its ``threshold``.

    ``key_ids`` lists the key ids of the signatures that were found but did not count.
    """

    def __init__(
        self, message: str, *, plugin: str | None = None, key_ids: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.key_ids = key_ids


class RevokedKeyError(UntrustedSignerError):
    """Too few trusted signatures, and at least one signature is by a revoked key id."""


class IdentityConflictError(VerificationError):
    """A plugin claims a name that, in this state directory, belongs to other signers.

    Under ``TrustPolicy(mode="require")`` a plugin's identity is its name plus the key ids that
    signed it; the first such load binds the name to those signers (persisted in the state
    database) and every later plugin of that name must be signed by one of them.
    ``key_ids`` are the newcomer's signers, ``bound_key_ids`` the ones the name belongs to.
    """

    def __init__(
        self,
        message: str,
        *,
        plugin: str,
        key_ids: tuple[str, ...],
        bound_key_ids: tuple[str, ...],
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.key_ids = key_ids
        self.bound_key_ids = bound_key_ids


class PackageError(VerificationError):
    """A ``.plugbox`` package is malformed or unsafe: not a zip archive, an entry with an
    unsafe or unknown name, a link, a duplicate, an oversized or over-compressed entry.

    ``entry`` names the archive member at fault when there is one.
    """

    def __init__(
        self, message: str, *, entry: str | None = None, plugin: str | None = None
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.entry = entry


# --------------------------------------------------------------------------------------------
# Mapping the operating system's view of the state directory to StateError, in one place.

_OS_FIXES = {
    "EEXIST": ("is not a directory", "remove that file or pick another state_dir"),
    "ENOTDIR": ("is not a directory (or lies under a file)",
                "remove that file or pick another state_dir"),
    "EACCES": ("is not writable by this user", "fix its permissions or pick another state_dir"),
    "EPERM": ("is not writable by this user", "fix its permissions or pick another state_dir"),
    "EROFS": ("is on a read-only filesystem", "remount it read-write or pick another state_dir"),
    "ENOSPC": ("is on a full filesystem", "free space there or pick another state_dir"),
    "EDQUOT": ("is over its disk quota", "free space there or pick another state_dir"),
}


def state_error(path: object, exc: OSError, doing: str) -> StateError:
    """The :class:`StateError` for an ``OSError`` raised while ``doing`` something to ``path``
    (a part of the runtime's state): what is wrong with it and how to fix it."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    what, fix = _OS_FIXES.get(name, (f"cannot be used ({exc.strerror or exc})",
                                     "check the path, or pick another state_dir"))
    return StateError(f"plugbox state {path} {what} (while {doing}): {fix}.", path=str(path))
