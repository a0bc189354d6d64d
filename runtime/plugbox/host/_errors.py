"""The errors of the plugin host, all under :class:`plugbox.PlugboxError`::

    PlugboxError
    ├── UsageError
    │   ├── PayloadError            a dispatch payload fails its point's input schema
    │   ├── LifecycleError          a lifecycle operation is refused (.operation)
    │   └── ConfigError             a configuration fails its schema (.json_path)
    ├── VerificationError
    │   ├── IncompatiblePointError  the plugin implements a point not declared, or a version
    │   │                           not on offer (.point, .versions)
    │   ├── OrderCycleError         before/after constraints form a cycle (.point, .plugins)
    │   └── DependencyError         a required plugin is missing, incompatible or in a cycle
    └── PluginCallError
        ├── InvalidResultError      a plugin's result fails its point's output schema
        └── ReentrantDispatchError  a dispatch would re-enter a plugin or a point

They are defined here, beside the host that raises them, and exported from ``plugbox``.
"""

from __future__ import annotations

from .._errors import PluginCallError, UsageError, VerificationError

__all__ = [
    "ConfigError",
    "DependencyError",
    "LifecycleError",
    "IncompatiblePointError",
    "InvalidResultError",
    "OrderCycleError",
    "PayloadError",
    "ReentrantDispatchError",
]


class PayloadError(UsageError):
    """A payload passed to :meth:`plugbox.PluginHost.call` does not fit the extension point:
    it fails the point's input schema (``json_path`` names the offending value), is not
    JSON-serialisable, or is not bytes for a bytes point. ``point`` names the point."""

    def __init__(self, message: str, *, point: str, json_path: str | None = None) -> None:
        super().__init__(message)
        self.point = point
        self.json_path = json_path


class IncompatiblePointError(VerificationError):
    """A plugin implements an extension point the host does not declare, or a version of it
    the host does not offer; or it declares a point that already exists. Raised by
    :meth:`plugbox.PluginHost.add` before the plugin is compiled. ``point`` names the point,
    ``versions`` the versions on offer (empty when the point is not declared)."""

    def __init__(self, message: str, *, plugin: str, point: str,
                 versions: tuple[str, ...] = ()) -> None:
        super().__init__(message, plugin=plugin)
        self.point = point
        self.versions = versions


class OrderCycleError(VerificationError):
    """The ``before``/``after`` constraints of the plugins implementing ``point`` form a
    cycle; ``plugins`` lists the plugins on it, in order. Raised by
    :meth:`plugbox.PluginHost.add` for the plugin that would close the cycle."""

    def __init__(self, message: str, *, plugin: str, point: str,
                 plugins: tuple[str, ...]) -> None:
        super().__init__(message, plugin=plugin)
        self.point = point
        self.plugins = plugins


class InvalidResultError(PluginCallError):
    """A plugin's result for an extension point is not acceptable: not JSON for a JSON point,
    or failing the point's output schema (``json_path`` names the offending value). Counts as
    that plugin's failure. ``point`` names the point."""

    def __init__(self, message: str, *, plugin: str, hook: str, point: str,
                 json_path: str | None = None) -> None:
        super().__init__(message, plugin=plugin, hook=hook)
        self.point = point
        self.json_path = json_path


class ReentrantDispatchError(PluginCallError):
    """A dispatch would re-enter: a plugin would be called while a call of its own is still
    running on the dispatch chain (a plugin dispatching into itself, directly or through
    others), an extension point would be dispatched from within its own dispatch (a cycle),
    or dispatches nest deeper than :data:`plugbox.host.MAX_DISPATCH_DEPTH`. Refused instead
    of waiting for an instance the chain itself holds. ``point`` names the point."""

    def __init__(self, message: str, *, point: str, plugin: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.point = point


class LifecycleError(UsageError):
    """A lifecycle operation of :class:`plugbox.PluginHost` (install, enable, upgrade,
    rollback, pin, uninstall, configure ...) is refused: the message names the plugin, the
    operation and the fix. ``operation`` names the operation; ``warning`` is set when the
    refusal is a warning the caller may override (a rollback across a ``data_version``
    change: ``confirm=True``), None otherwise."""

    def __init__(self, message: str, *, plugin: str | None, operation: str,
                 warning: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.operation = operation
        self.warning = warning


# --------------------------------------------------------------------------------------------
# Lifecycle: dependencies and configuration (issue 9, the DEPS helper's block)



class DependencyError(VerificationError):
    """A plugin's dependencies cannot be met (raised by :mod:`plugbox.host._deps` checks and
    the lifecycle operations built on them). ``plugin`` is the plugin refused; ``kind`` says
    why: ``missing`` (a required plugin is not installed), ``disabled`` (installed but not
    enabled), ``incompatible`` (its version does not match the specifier), ``failed`` (it
    cannot start itself), ``conflict`` (an enabled plugin matches a ``conflicts`` entry, of
    either side), ``cycle`` (the dependency graph closes a cycle). ``dependency`` names the
    other plugin, ``specifier`` the PEP 440 specifier at stake (``""``: any version),
    ``plugins`` the cycle (first and last equal) for ``cycle``."""

    def __init__(self, message: str, *, plugin: str, kind: str,
                 dependency: str | None = None, specifier: str | None = None,
                 plugins: tuple[str, ...] = ()) -> None:
        super().__init__(message, plugin=plugin)
        self.kind = kind
        self.dependency = dependency
        self.specifier = specifier
        self.plugins = plugins


class ConfigError(UsageError):
    """A configuration for ``plugin`` was refused and nothing of it applied: it fails the
    plugin's ``config_schema`` (``json_path`` names the offending value, ``$`` for the whole),
    is not a JSON object, is not JSON-serialisable or is too large. ``fix`` says what to do;
    the message says it too."""

    def __init__(self, message: str, *, plugin: str, json_path: str = "$",
                 fix: str = "") -> None:
        super().__init__(message, plugin=plugin)
        self.json_path = json_path
        self.fix = fix
