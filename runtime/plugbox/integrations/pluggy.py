"""Sandboxed plugins as implementations of a pluggy ``PluginManager``'s hookspecs (issue 8 §6).

Hosts that already speak pluggy (pytest, tox, datasette, FlaskBB) keep their
``PluginManager``; :func:`register` adds a sandboxed plugin to it beside the in-process ones::

    import pluggy, plugbox
    from plugbox.integrations.pluggy import register

    pm = pluggy.PluginManager("myapp")
    pm.add_hookspecs(myapp.hookspecs)
    pm.register(myapp.builtin_plugin)                # an ordinary Python plugin
    register(pm, runtime.load("plugins/analyzer"))   # a sandboxed one
    results = pm.hook.myapp_analyze(text="...")      # both answer

For each hookspec the plugin implements, the adapter generates a proxy function with the
spec's exact argument names (pluggy passes an implementation only the arguments its
``__code__.co_varnames`` name, so a ``**kwargs`` proxy would receive nothing). The proxy sends
the arguments to the plugin's hook as one JSON object keyed by argument name, and returns the
plugin's JSON result decoded (an empty result or JSON ``null`` is None, which pluggy leaves
out of the results, and which lets a ``firstresult`` call go on to the next implementation).

Which hook answers which spec: the plugin hook of the same name, or whose name equals the
spec's once ``.`` and ``-`` become ``_`` (``text.analyze`` answers ``text_analyze``); or an
explicit ``hooks={spec_name: plugin_hook}``. Ordering: pluggy's own (last registered first),
with ``priority > 0`` registered ``tryfirst`` and ``priority < 0`` ``trylast``. Failures: with
``failure="propagate"`` a failed plugin call raises its :class:`~plugbox.PluginCallError` out
of the hook call (pluggy stops there, as for any implementation that raises); with
``"isolate"`` the failure is logged (logger ``plugbox.integrations.pluggy``), recorded in
:attr:`SandboxedPlugin.failures`, and the plugin counts as having returned None.

Needs pluggy: ``pip install 'plugbox[pluggy]'``.
"""

from __future__ import annotations

import keyword
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

try:
    import pluggy
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    raise ImportError("plugbox.integrations.pluggy needs pluggy: pip install "
                      "'plugbox[pluggy]'") from exc

from .._errors import PluginCallError, UsageError

if TYPE_CHECKING:
    from .._plugin import Plugin

__all__ = ["HookFailure", "SandboxedPlugin", "register"]

FailurePolicy = Literal["isolate", "propagate"]

_logger = logging.getLogger("plugbox.integrations.pluggy")

#: Isolated failures a SandboxedPlugin keeps (the oldest are dropped).
MAX_FAILURES_KEPT: Final = 256


@dataclass(frozen=True)
class HookFailure:
    """A failed call that the ``isolate`` policy turned into "no result": the plugin, the
    pluggy hook, the plugin's hook, and the typed error."""

    plugin: str
    hook: str
    plugin_hook: str
    error: PluginCallError


class SandboxedPlugin:
    """The object :func:`register` puts into the ``PluginManager``: one generated proxy
    function per implemented hookspec, as an attribute named after the spec (that is how
    pluggy finds implementations). Unregister it with ``pm.unregister(obj)``.

    ``plugin`` is the sandboxed plugin, ``hooks`` maps each pluggy hook name to the plugin's
    hook, ``failures`` holds the latest isolated failures (at most :data:`MAX_FAILURES_KEPT`).
    """

    def __init__(self, plugin: Plugin, hooks: Mapping[str, str]) -> None:
        self._plugin = plugin
        self._hooks = dict(hooks)
        self._failures: deque[HookFailure] = deque(maxlen=MAX_FAILURES_KEPT)

    @property
    def plugin(self) -> Plugin:
        """The sandboxed plugin the proxies call."""
        return self._plugin

    @property
    def hooks(self) -> Mapping[str, str]:
        """pluggy hook name -> the plugin hook that implements it."""
        return dict(self._hooks)

    @property
    def failures(self) -> tuple[HookFailure, ...]:
        """The latest failures the ``isolate`` policy absorbed, oldest first."""
        return tuple(self._failures)

    def __repr__(self) -> str:
        return f"<plugbox SandboxedPlugin {self._plugin.name} hooks={sorted(self._hooks)}>"


#: Names a hookspec cannot have here: they are SandboxedPlugin's own attributes.
_RESERVED: Final = frozenset(dir(SandboxedPlugin)) | {"_plugin", "_hooks", "_failures"}


def register(
    pm: pluggy.PluginManager,
    plugin: Plugin,
    *,
    hooks: Mapping[str, str] | None = None,
    priority: int = 0,
    failure: FailurePolicy = "propagate",
    name: str | None = None,
) -> SandboxedPlugin:
    """Register the sandboxed ``plugin`` into ``pm`` as an implementation of every hookspec
    it implements (see the module docstring for the matching rule, or pass ``hooks``:
    pluggy hook name -> plugin hook); returns the registered :class:`SandboxedPlugin`.

    ``priority`` maps to pluggy's ``tryfirst`` (> 0) and ``trylast`` (< 0); ``failure`` is the
    failure policy, ``"propagate"`` or ``"isolate"``; ``name`` is the plugin's name in the
    manager (default ``plugbox:<plugin name>``). Hookspecs added to ``pm`` later are not
    implemented. Raises :class:`~plugbox.UsageError` when the plugin implements none of the
    manager's hookspecs, a mapping names an unknown hook or spec, or a name is not a valid
    Python identifier; pluggy's own errors (a name registered twice) pass through.
    """
    if failure not in ("isolate", "propagate"):
        raise UsageError(f"failure must be 'isolate' or 'propagate', not {failure!r}",
                         plugin=plugin.name)
    if type(priority) is not int:
        raise UsageError(f"priority must be an int, not {priority!r}", plugin=plugin.name)
    specs = _specs(pm)
    chosen = _match(plugin, specs, hooks)
    proxy = SandboxedPlugin(plugin, chosen)
    marker = pluggy.HookimplMarker(pm.project_name)
    for spec_name, hook in chosen.items():
        call = _caller(proxy, spec_name, hook, failure)
        function = _proxy_function(spec_name, specs[spec_name], call, plugin.name)
        setattr(proxy, spec_name, marker(function, tryfirst=priority > 0,
                                         trylast=priority < 0))
    pm.register(proxy, name=name or f"plugbox:{plugin.name}")
    return proxy


def _specs(pm: pluggy.PluginManager) -> dict[str, tuple[str, ...]]:
    """The manager's hookspecs: hook name -> the spec's argument names."""
    out: dict[str, tuple[str, ...]] = {}
    for caller in vars(pm.hook).values():
        spec = getattr(caller, "spec", None)
        if isinstance(caller, pluggy.HookCaller) and spec is not None:
            out[caller.name] = tuple(spec.argnames)
    return out


def _match(plugin: Plugin, specs: Mapping[str, tuple[str, ...]],
           hooks: Mapping[str, str] | None) -> dict[str, str]:
    if hooks is not None:
        for spec_name, hook in hooks.items():
            if spec_name not in specs:
                raise UsageError(
                    f"plugin {plugin.name!r}: the plugin manager has no hookspec {spec_name!r}; "
                    f"its hookspecs: {', '.join(sorted(specs)) or 'none'}", plugin=plugin.name)
            if hook not in plugin.hooks:
                raise UsageError(
                    f"plugin {plugin.name!r} has no hook {hook!r} (mapped to {spec_name!r}); "
                    f"its manifest declares: {', '.join(plugin.hooks)}", plugin=plugin.name,
                    hook=hook)
        chosen = dict(hooks)
    else:
        by_spec_name = {h.replace(".", "_").replace("-", "_"): h for h in plugin.hooks}
        by_spec_name.update({h: h for h in plugin.hooks})
        chosen = {s: by_spec_name[s] for s in specs if s in by_spec_name}
        if not chosen:
            raise UsageError(
                f"plugin {plugin.name!r} implements none of the plugin manager's hookspecs "
                f"({', '.join(sorted(specs)) or 'none'}); its hooks: {', '.join(plugin.hooks)}. "
                "Name the hooks after the specs, or pass hooks={spec: hook}.",
                plugin=plugin.name)
    for spec_name in chosen:
        for ident in (spec_name, *specs[spec_name]):
            if not ident.isidentifier() or keyword.iskeyword(ident):
                raise UsageError(f"hookspec {spec_name!r}: {ident!r} is not a Python "
                                 "identifier", plugin=plugin.name, hook=spec_name)
        if spec_name in _RESERVED:
            raise UsageError(f"hookspec {spec_name!r} collides with an attribute of "
                             "SandboxedPlugin; rename the hookspec", plugin=plugin.name,
                             hook=spec_name)
    return chosen


def _caller(proxy: SandboxedPlugin, spec_name: str, hook: str, failure: FailurePolicy
            ) -> Callable[[dict[str, Any]], Any]:
    """What a proxy calls with its arguments: the plugin's hook, under the failure policy."""
    plugin = proxy.plugin

    def call(arguments: dict[str, Any]) -> Any:
        try:
            return plugin.call_json(hook, arguments)
        except PluginCallError as exc:
            if failure == "propagate":
                raise
            proxy._failures.append(HookFailure(plugin.name, spec_name, hook, exc))
            _logger.warning("plugin %r, pluggy hook %r: failed and was skipped (failure "
                            "policy isolate): %s", plugin.name, spec_name, exc)
            return None
        except (TypeError, ValueError) as exc:  # json.dumps: the call did not start
            raise UsageError(
                f"plugin {plugin.name!r}, hook {spec_name!r}: the arguments cannot be sent to "
                f"a sandboxed plugin as JSON ({exc}); pass JSON values (str, int, float, "
                "bool, None, list, dict) to hooks that sandboxed plugins implement",
                plugin=plugin.name, hook=hook) from None

    return call


def _proxy_function(spec_name: str, argnames: tuple[str, ...],
                    call: Callable[[dict[str, Any]], Any], plugin: str) -> Callable[..., Any]:
    """A function ``spec_name(<argnames>)`` that hands its arguments, keyed by name, to
    ``call``. Generated from source (identifiers validated by the caller), so that its code
    object names exactly the spec's arguments, which is what pluggy matches on."""
    forward = "_plugbox_call"
    while forward in argnames:
        forward += "_"
    payload = "{" + ", ".join(f"{a!r}: {a}" for a in argnames) + "}"
    source = (f"def _make({forward}):\n"
              f"    def {spec_name}({', '.join(argnames)}):\n"
              f"        return {forward}({payload})\n"
              f"    return {spec_name}\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<plugbox proxy {plugin}:{spec_name}>", "exec"), namespace)
    function: Callable[..., Any] = namespace["_make"](call)
    function.__qualname__ = spec_name  # a plain function to pluggy: no implicit first argument
    function.__doc__ = f"Calls sandboxed plugin {plugin!r} (generated by plugbox)."
    return function
