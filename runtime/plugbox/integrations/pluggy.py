"""Sandboxed plugins as implementations of a pluggy ``PluginManager``'s hookspecs (issue 8 §6).

Hosts that already speak pluggy (pytest, tox, datasette, FlaskBB) keep their
``PluginManager``; :func:`register` adds a sandboxed plugin to it beside the in-process ones,
:func:`register_host` adds every plugin of a :class:`plugbox.PluginHost`::

    import pluggy, plugbox
    from plugbox.integrations.pluggy import register, register_host

    pm = pluggy.PluginManager("myapp")
    pm.add_hookspecs(myapp.hookspecs)
    pm.register(myapp.builtin_plugin)                # an ordinary Python plugin
    register(pm, runtime.load("plugins/analyzer"))   # a sandboxed Plugin
    register_host(pm, host)                          # or a PluginHost's plugins
    results = pm.hook.myapp_analyze(text="...")      # all of them answer

For each hookspec a plugin implements, the adapter generates a proxy function with the spec's
exact argument names (pluggy passes an implementation only the arguments its
``__code__.co_varnames`` name, so a ``**kwargs`` proxy would receive nothing). The proxy sends
the arguments as one JSON object keyed by argument name, and returns the plugin's JSON result
decoded (an empty result or JSON ``null`` is None, which pluggy leaves out of the results, and
which lets a ``firstresult`` call go on to the next implementation).

Which hookspec a plugin answers:

- a :class:`plugbox.Plugin`: its hook of the same name as the spec, or whose name equals the
  spec's once ``.`` and ``-`` become ``_`` (hook ``text.analyze`` answers ``text_analyze``);
- a :class:`plugbox.HostedPlugin`: the extension point it implements whose name matches the
  spec that way (point ``text.analyze`` answers ``text_analyze``). The call goes through the
  host (:meth:`plugbox.PluginHost.call_plugin`): the point's input and output schemas and
  limits apply, and a plugin disabled or removed on the host answers None;
- or an explicit ``hooks={spec_name: hook_or_point}``.

Ordering is pluggy's own (last registered first), with ``priority > 0`` registered
``tryfirst`` and ``priority < 0`` ``trylast``; a hosted plugin's priority is its host priority
unless given. pluggy knows no finer order: :func:`register_host` registers the plugins so that
within each of the three groups they run in the host's default order (priority, then add
order); ``before``/``after`` constraints are not carried over.

Failures: with ``failure="propagate"`` a failed plugin call raises its
:class:`~plugbox.PluginCallError` out of the hook call (pluggy stops there, as for any
implementation that raises); with ``"isolate"`` the failure is logged (logger
``plugbox.integrations.pluggy``), recorded in :attr:`SandboxedPlugin.failures`, and the plugin
counts as having returned None. A hosted plugin takes the policy of the point it implements
unless given. Arguments that are not JSON (or that a point's input schema refuses) are the
caller's error: :class:`~plugbox.UsageError` under either policy.

Needs pluggy: ``pip install 'plugbox[pluggy]'``.
"""

from __future__ import annotations

import keyword
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

try:
    import pluggy
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    raise ImportError("plugbox.integrations.pluggy needs pluggy: pip install "
                      "'plugbox[pluggy]'") from exc

from .._errors import PluginCallError, UsageError
from .._plugin import Plugin
from ..host._host import HostedPlugin, PluginHost

__all__ = ["MAX_FAILURES_KEPT", "HookFailure", "SandboxedPlugin", "register", "register_host"]

FailurePolicy = Literal["isolate", "propagate"]

_logger = logging.getLogger("plugbox.integrations.pluggy")

#: Isolated failures a SandboxedPlugin keeps (the oldest are dropped).
MAX_FAILURES_KEPT: Final = 256


@dataclass(frozen=True)
class HookFailure:
    """A failed call that the ``isolate`` policy turned into "no result": the plugin, the
    pluggy hook, what answered it (the plugin's hook, or the hosted plugin's extension
    point), and the typed error."""

    plugin: str
    hook: str
    target: str
    error: PluginCallError


class SandboxedPlugin:
    """The object :func:`register` puts into the ``PluginManager``: one generated proxy
    function per implemented hookspec, as an attribute named after the spec (that is how
    pluggy finds implementations). Unregister it with ``pm.unregister(obj)``.

    ``plugin`` is the sandboxed plugin, ``hosted`` the :class:`plugbox.HostedPlugin` it was
    registered as (None for a plain Plugin), ``hooks`` maps each pluggy hook name to the
    plugin hook (or, hosted, the extension point) that answers it, ``failures`` holds the
    latest isolated failures (at most :data:`MAX_FAILURES_KEPT`).
    """

    def __init__(self, plugin: Plugin, hosted: HostedPlugin | None,
                 hooks: Mapping[str, str]) -> None:
        self._plugin = plugin
        self._hosted = hosted
        self._hooks = dict(hooks)
        self._failures: deque[HookFailure] = deque(maxlen=MAX_FAILURES_KEPT)

    @property
    def plugin(self) -> Plugin:
        """The sandboxed plugin the proxies call."""
        return self._plugin

    @property
    def hosted(self) -> HostedPlugin | None:
        """The hosted plugin the proxies call through its host, or None."""
        return self._hosted

    @property
    def hooks(self) -> Mapping[str, str]:
        """pluggy hook name -> the plugin hook (hosted: extension point) answering it."""
        return dict(self._hooks)

    @property
    def failures(self) -> tuple[HookFailure, ...]:
        """The latest failures the ``isolate`` policy absorbed, oldest first."""
        return tuple(self._failures)

    def __repr__(self) -> str:
        return f"<plugbox SandboxedPlugin {self._plugin.name} hooks={sorted(self._hooks)}>"


#: Names a hookspec cannot have here: they are SandboxedPlugin's own attributes.
_RESERVED: Final = frozenset(dir(SandboxedPlugin)) | {"_plugin", "_hosted", "_hooks",
                                                      "_failures"}


def register(
    pm: pluggy.PluginManager,
    plugin: Plugin | HostedPlugin,
    *,
    host: PluginHost | None = None,
    hooks: Mapping[str, str] | None = None,
    priority: int | None = None,
    failure: FailurePolicy | None = None,
    name: str | None = None,
) -> SandboxedPlugin:
    """Register the sandboxed ``plugin`` into ``pm`` as an implementation of every hookspec
    it implements (see the module docstring for the matching rule, or pass ``hooks``:
    pluggy hook name -> plugin hook, or extension point for a hosted plugin); returns the
    registered :class:`SandboxedPlugin`.

    ``plugin`` is a :class:`plugbox.Plugin`, or a :class:`plugbox.HostedPlugin` together
    with its ``host``. ``priority`` maps to pluggy's ``tryfirst`` (> 0) and ``trylast``
    (< 0): default 0, or the host priority. ``failure`` is the failure policy,
    ``"propagate"`` or ``"isolate"``: default ``"propagate"``, or for a hosted plugin the
    policy of each extension point. ``name`` is the plugin's name in the manager (default
    ``plugbox:<plugin name>``). Hookspecs added to ``pm`` later are not implemented.

    Raises :class:`~plugbox.UsageError` when the plugin implements none of the manager's
    hookspecs, a mapping names an unknown hook, point or spec, a hosted plugin comes without
    its host (or is not hosted there), a point carries bytes, or a name is not a valid Python
    identifier; pluggy's own errors (a name registered twice) pass through.
    """
    if failure is not None and failure not in ("isolate", "propagate"):
        raise UsageError(f"failure must be 'isolate' or 'propagate', not {failure!r}",
                         plugin=plugin.name)
    if priority is not None and type(priority) is not int:
        raise UsageError(f"priority must be an int, not {priority!r}", plugin=plugin.name)
    specs = _specs(pm)
    if isinstance(plugin, HostedPlugin):
        if host is None or host.get(plugin.name) is not plugin:
            raise UsageError(f"hosted plugin {plugin.name!r}: pass the PluginHost it is added "
                             "to as host=", plugin=plugin.name)
        hosted: HostedPlugin | None = plugin
        runtime_plugin = plugin.plugin
        offered = tuple(plugin.manifest.implements)
        chosen = _match(plugin.name, offered, "extension point", specs, hooks)
        calls = {spec: _through_host(host, plugin.name, point) for spec, point in chosen.items()}
        policies = {spec: failure or _point_failure(host, plugin.name, point)
                    for spec, point in chosen.items()}
        level = plugin.priority if priority is None else priority
    else:
        hosted, runtime_plugin = None, plugin
        chosen = _match(plugin.name, plugin.hooks, "hook", specs, hooks)
        calls = {spec: _direct(plugin, hook) for spec, hook in chosen.items()}
        policies = {spec: failure or "propagate" for spec in chosen}
        level = priority or 0
    proxy = SandboxedPlugin(runtime_plugin, hosted, chosen)
    marker = pluggy.HookimplMarker(pm.project_name)
    for spec_name, target in chosen.items():
        call = _guarded(proxy, spec_name, target, policies[spec_name], calls[spec_name])
        function = _proxy_function(spec_name, specs[spec_name], call, runtime_plugin.name)
        setattr(proxy, spec_name, marker(function, tryfirst=level > 0, trylast=level < 0))
    pm.register(proxy, name=name or f"plugbox:{runtime_plugin.name}")
    return proxy


def register_host(pm: pluggy.PluginManager, host: PluginHost, *,
                  failure: FailurePolicy | None = None) -> list[SandboxedPlugin]:
    """:func:`register` every plugin of ``host`` that implements an extension point matching
    one of ``pm``'s hookspecs (disabled ones too: they answer None until enabled), in an
    order that makes pluggy call them in the host's default order within each of its
    tryfirst / plain / trylast groups; returns the registered objects, in the host's order.
    Plugins implementing none of the hookspecs are left out."""
    specs = _specs(pm)
    out: list[SandboxedPlugin] = []
    for hosted in reversed(host.plugins):  # pluggy calls the last registered first
        names = {_spec_name(p) for p in hosted.manifest.implements}
        if names & set(specs):
            out.append(register(pm, hosted, host=host, failure=failure))
    out.reverse()
    return out


def _specs(pm: pluggy.PluginManager) -> dict[str, tuple[str, ...]]:
    """The manager's hookspecs: hook name -> the spec's argument names."""
    out: dict[str, tuple[str, ...]] = {}
    for caller in vars(pm.hook).values():
        spec = getattr(caller, "spec", None)
        if isinstance(caller, pluggy.HookCaller) and spec is not None:
            out[caller.name] = tuple(spec.argnames)
    return out


def _spec_name(name: str) -> str:
    return name.replace(".", "_").replace("-", "_")


def _match(plugin: str, offered: tuple[str, ...], what: str,
           specs: Mapping[str, tuple[str, ...]], hooks: Mapping[str, str] | None
           ) -> dict[str, str]:
    """pluggy hook name -> the hook or point (``what``) of ``offered`` that answers it."""
    if hooks is not None:
        for spec_name, target in hooks.items():
            if spec_name not in specs:
                raise UsageError(
                    f"plugin {plugin!r}: the plugin manager has no hookspec {spec_name!r}; "
                    f"its hookspecs: {', '.join(sorted(specs)) or 'none'}", plugin=plugin)
            if target not in offered:
                raise UsageError(
                    f"plugin {plugin!r} has no {what} {target!r} (mapped to {spec_name!r}); "
                    f"it has: {', '.join(offered) or 'none'}", plugin=plugin)
        chosen = dict(hooks)
    else:
        by_spec_name = {_spec_name(h): h for h in offered}
        by_spec_name.update({h: h for h in offered})
        chosen = {s: by_spec_name[s] for s in specs if s in by_spec_name}
        if not chosen:
            raise UsageError(
                f"plugin {plugin!r} implements none of the plugin manager's hookspecs "
                f"({', '.join(sorted(specs)) or 'none'}); its {what}s: "
                f"{', '.join(offered) or 'none'}. Name them after the specs, or pass "
                "hooks={spec: " + what.replace("extension ", "") + "}.", plugin=plugin)
    for spec_name in chosen:
        for ident in (spec_name, *specs[spec_name]):
            if not ident.isidentifier() or keyword.iskeyword(ident):
                raise UsageError(f"hookspec {spec_name!r}: {ident!r} is not a Python "
                                 "identifier", plugin=plugin, hook=spec_name)
        if spec_name in _RESERVED:
            raise UsageError(f"hookspec {spec_name!r} collides with an attribute of "
                             "SandboxedPlugin; rename the hookspec", plugin=plugin,
                             hook=spec_name)
    return chosen


def _point_failure(host: PluginHost, plugin: str, point: str) -> FailurePolicy:
    spec = host.points.get(point)
    if spec is None:  # pragma: no cover - a hosted plugin's points are declared
        raise UsageError(f"plugin {plugin!r}: extension point {point!r} is not declared")
    if spec.payload != "json":
        raise UsageError(f"plugin {plugin!r}: extension point {point!r} carries bytes; "
                         "pluggy hooks can only reach JSON points", plugin=plugin)
    return "isolate" if spec.failure == "isolate" else "propagate"


def _direct(plugin: Plugin, hook: str) -> Callable[[dict[str, Any]], Any]:
    def call(arguments: dict[str, Any]) -> Any:
        try:
            return plugin.call_json(hook, arguments)
        except (TypeError, ValueError) as exc:  # json.dumps: the call did not start
            raise UsageError(
                f"plugin {plugin.name!r}, hook {hook!r}: the arguments cannot be sent to a "
                f"sandboxed plugin as JSON ({exc}); pass JSON values (str, int, float, bool, "
                "None, list, dict) to hooks that sandboxed plugins implement",
                plugin=plugin.name, hook=hook) from None
    return call


def _through_host(host: PluginHost, plugin: str, point: str) -> Callable[[dict[str, Any]], Any]:
    def call(arguments: dict[str, Any]) -> Any:
        hosted = host.get(plugin)
        if hosted is None or not hosted.enabled:
            return None  # removed or disabled on the host: no answer
        return host.call_plugin(point, plugin, arguments)
    return call


def _guarded(proxy: SandboxedPlugin, spec_name: str, target: str, failure: FailurePolicy,
             call: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """``call`` under the failure policy."""
    if failure == "propagate":
        return call
    name = proxy.plugin.name

    def isolated(arguments: dict[str, Any]) -> Any:
        try:
            return call(arguments)
        except PluginCallError as exc:
            proxy._failures.append(HookFailure(name, spec_name, target, exc))
            _logger.warning("plugin %r, pluggy hook %r: failed and was skipped (failure "
                            "policy isolate): %s", name, spec_name, exc)
            return None

    return isolated


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
