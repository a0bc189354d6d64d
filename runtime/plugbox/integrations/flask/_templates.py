"""Plugin templates: filters, tests and globals that route to the host's current plugins,
and the sandboxed Jinja environments that render the templates plugins ship."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import nh3
from jinja2 import BaseLoader, ChainableUndefined, Environment, TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape

from ..._errors import UsageError
from ..._manifest import PluginFileRefused, read_plugin_file

if TYPE_CHECKING:
    from ...host._host import HostedPlugin
    from ._ext import Plugbox

__all__ = ["MAX_TEMPLATE_BYTES", "PluginCallables", "Sandbox", "check_names", "escape_text",
           "make_sandbox", "namespace_of", "render", "sanitise"]

#: A plugin template file is read up to this size.
MAX_TEMPLATE_BYTES: Final = 256 * 1024
#: A plugin template's extends chain is followed this deep.
MAX_EXTENDS_DEPTH: Final = 8

_KIND_POINT: Final = {"filter": "flask.template_filter", "test": "flask.template_test",
                      "global": "flask.template_global"}


def namespace_of(plugin: str) -> str:
    """A plugin's namespace in templates: its name with '-' and '.' as '_'."""
    return plugin.replace("-", "_").replace(".", "_")


def sanitise(html: str) -> Markup:
    """Markup from a plugin the host granted ``html``: cleaned by nh3 (ammonia's defaults:
    no script, no event handlers, no javascript: URLs)."""
    return Markup(nh3.clean(html))


class PluginCallables(dict[str, Any]):
    """``jinja_env.filters`` / ``.tests``: the environment's own entries, and
    ``<namespace>.<name>`` for every filter (test) a hosted plugin declares in its manifest,
    resolved when a template is compiled; the function found routes each call to the plugin
    serving that namespace then (a plugin gone or failing: the value escaped, or False)."""

    def __init__(self, base: Mapping[str, Any], ext: Plugbox, kind: str) -> None:
        super().__init__(base)
        self._ext = ext
        self._kind = kind
        self._made: dict[str, Callable[..., Any]] = {}

    def _plugin_entry(self, key: str) -> Callable[..., Any] | None:
        ns, dot, name = key.partition(".")
        if not dot or self._ext.declares(ns, self._kind, name) is None:
            return None
        made = self._made.get(key)
        if made is None:
            made = self._made.setdefault(key, self._ext.template_callable(self._kind, ns, name))
        return made

    def get(self, key: str, default: Any = None) -> Any:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        found = self._plugin_entry(key)
        return default if found is None else found

    def __getitem__(self, key: str) -> Any:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None


class _Budget(threading.local):
    deadline: float = 0.0


_BUDGET: Final = _Budget()


class Sandbox(SandboxedEnvironment):
    """The environment of one plugin version's templates: sandboxed, autoescaped, compiled
    templates cached; every call the template makes checks the render's deadline."""

    def call(__self, __context: Any, __obj: Any, *args: Any,  # noqa: N805 (jinja's naming)
             **kwargs: Any) -> Any:
        if _BUDGET.deadline and time.monotonic() > _BUDGET.deadline:
            raise TemplateError("the template ran past its render deadline")
        return super().call(__context, __obj, *args, **kwargs)


class _PluginLoader(BaseLoader):
    """The host templates the host lets plugins use (by name), then the plugin's own
    templates directory. A plugin template that extends a host template may define only the
    blocks the host marks overridable; ``{% autoescape false %}`` is refused."""

    def __init__(self, host_loader: BaseLoader | None, host_env: Environment,
                 host_templates: Mapping[str, frozenset[str]], root: Path | None,
                 plugin: str) -> None:
        self._host_loader = host_loader
        self._host_env = host_env
        self._host_templates = host_templates
        self._root = root
        self._plugin = plugin

    def get_source(self, environment: Environment, template: str
                   ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if template in self._host_templates and self._host_loader is not None:
            source, filename, _ = self._host_loader.get_source(self._host_env, template)
            return source, filename, lambda: True
        source = self._read(template)
        self._check(environment, template, source, 0)
        return source, None, lambda: True

    def _read(self, template: str) -> str:
        from jinja2 import TemplateNotFound

        parts = template.split("/")
        if self._root is None or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise TemplateNotFound(template)
        try:
            data = read_plugin_file(self._root, template, MAX_TEMPLATE_BYTES)
        except PluginFileRefused as exc:
            raise TemplateNotFound(f"{template} ({exc.reason})") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise TemplateError(f"plugin {self._plugin!r}: template {template!r} is not "
                                "UTF-8") from None

    def _check(self, env: Environment, name: str, source: str, depth: int) -> None:
        tree = env.parse(source, name)
        for _ in tree.find_all((nodes.EvalContextModifier, nodes.ScopedEvalContextModifier)):
            raise TemplateError(f"plugin {self._plugin!r}: template {name!r} turns "
                                "autoescaping off, which plugin templates may not do")
        root = self._root_of(env, tree, depth)
        if root is None:
            return
        allowed = self._host_templates[root]
        for block in tree.find_all(nodes.Block):
            if block.name not in allowed:
                raise TemplateError(
                    f"plugin {self._plugin!r}: template {name!r} overrides block "
                    f"{block.name!r} of the host's {root!r}, which the host does not mark "
                    f"overridable (overridable: {', '.join(sorted(allowed)) or 'none'})")

    def _root_of(self, env: Environment, tree: nodes.Template, depth: int) -> str | None:
        """The host template at the end of ``tree``'s extends chain, or None."""
        extends = next(iter(tree.find_all(nodes.Extends)), None)
        if extends is None:
            return None
        target = extends.template
        if not isinstance(target, nodes.Const) or not isinstance(target.value, str):
            raise TemplateError(f"plugin {self._plugin!r}: a plugin template must extend a "
                                "template named by a constant string")
        if target.value in self._host_templates:
            return target.value
        if depth >= MAX_EXTENDS_DEPTH:
            raise TemplateError(f"plugin {self._plugin!r}: extends chain deeper than "
                                f"{MAX_EXTENDS_DEPTH}")
        return self._root_of(env, env.parse(self._read(target.value)), depth + 1)


def make_sandbox(ext: Plugbox, host_env: Environment, hosted: HostedPlugin, root: Path | None,
                 host_templates: Mapping[str, frozenset[str]], html: bool,
                 sandbox_globals: Mapping[str, Any]) -> Sandbox:
    """The sandboxed environment of ``hosted``'s templates under ``root``."""
    env = Sandbox(loader=_PluginLoader(host_env.loader, host_env, host_templates, root,
                                       hosted.name),
                  autoescape=True, undefined=ChainableUndefined, auto_reload=False,
                  cache_size=200)
    filters = dict(env.filters)
    if html:
        filters["safe"] = lambda value: sanitise(str(value))
    else:
        del filters["safe"]  # |safe would let a plugin put its own markup on the page
    env.filters = PluginCallables(filters, ext, "filter")
    env.tests = PluginCallables(env.tests, ext, "test")
    env.globals.update(sandbox_globals)
    return env


def render(env: Sandbox, name: str, context: Mapping[str, Any], *, deadline_ms: int,
           max_bytes: int) -> str:
    """Render ``name`` under the time and size bounds; TemplateError past them."""
    template = env.get_template(name)
    _BUDGET.deadline = time.monotonic() + deadline_ms / 1000
    out: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > max_bytes:
                raise TemplateError(f"the page is larger than {max_bytes} characters")
            if time.monotonic() > _BUDGET.deadline:
                raise TemplateError("the template ran past its render deadline")
            out.append(chunk)
    finally:
        _BUDGET.deadline = 0.0
    return "".join(out)


def escape_text(value: Any) -> Markup:
    """A plugin's text as page content: escaped."""
    return escape(str(value))


def check_names(names: Iterable[str]) -> None:
    """Host template names are plain relative names."""
    for name in names:
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in name:
            raise UsageError(f"host_templates: {name!r} is not a template name")

