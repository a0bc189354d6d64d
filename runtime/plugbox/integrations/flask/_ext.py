"""The :class:`Plugbox` Flask extension: fixed dispatchers, registered once per app, that
route every request, template and command to the host's current plugins."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import flask
from jinja2 import TemplateError
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule

from ..._errors import PlugboxError, PluginCallError, UsageError
from ..._manifest import PluginFileRefused, WebSpec, read_plugin_file
from ...host._errors import PayloadError
from ...host._host import HostedPlugin, PluginHost
from . import _templates
from ._points import declare_points

__all__ = ["Identity", "Plugbox"]

_log = logging.getLogger("plugbox.integrations.flask")

#: Request headers plugins see unless the host chooses others.
DEFAULT_REQUEST_HEADERS: Final = ("accept", "accept-language", "content-type", "user-agent",
                                  "x-requested-with")
#: Response headers plugins may set or remove besides ``x-*`` (host: ``response_headers``).
DEFAULT_RESPONSE_HEADERS: Final = ("cache-control", "content-disposition", "content-language",
                                   "etag", "expires", "last-modified", "location",
                                   "retry-after", "vary")
#: ``x-*`` headers that guard the page: never a plugin's to set or remove.
_GUARD_HEADERS: Final = frozenset({"x-frame-options", "x-content-type-options",
                                   "x-xss-protection", "x-permitted-cross-domain-policies",
                                   "x-csrf-token"})
#: Content types a plugin may give a bytes body (anything else is sent as an attachment).
BYTES_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp",
                                "application/pdf", "text/csv", "text/plain",
                                "application/octet-stream", "application/zip"})
#: Static file types served (``.js`` only to plugins granted ``scripts``).
STATIC_TYPES: Final = {".css": "text/css", ".png": "image/png", ".jpg": "image/jpeg",
                       ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
                       ".ico": "image/x-icon", ".woff": "font/woff", ".woff2": "font/woff2",
                       ".txt": "text/plain", ".json": "application/json",
                       ".js": "text/javascript"}
_STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
_VERSION_RE: Final = re.compile(r"[0-9A-Za-z.+-]{1,64}")
_CSRF_KEY: Final = "_plugbox_csrf"
_MAX_ANNOTATION_BYTES: Final = 16 * 1024

#: ``identity()``'s answer: None (anonymous), (user, roles), or {"user": ..., "roles": [...]}.
Identity = tuple[str | None, Iterable[str]] | Mapping[str, Any] | None


class _Fault(Exception):
    """A plugin failure that fails the request closed (503)."""

    def __init__(self, plugin: str, point: str, why: str, fix: str) -> None:
        super().__init__(why)
        self.plugin, self.point, self.why, self.fix = plugin, point, why, fix


@dataclass
class _Request:
    """What the extension keeps for one request (in ``flask.g``)."""

    user: str | None
    roles: tuple[str, ...]
    base: dict[str, Any]
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)
    context: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {**self.base, "annotations": self.annotations}


@dataclass
class _AppState:
    """``app.extensions["plugbox"]``: everything the extension knows about one app."""

    ext: Plugbox
    host: PluginHost
    identity: Callable[[], Identity] | None
    grants: Callable[[str], frozenset[str]]
    request_headers: tuple[str, ...]
    response_headers: frozenset[str]
    host_templates: Mapping[str, frozenset[str]]
    sandbox_globals: Mapping[str, Any]
    csrf_exempt: Callable[[flask.Request], bool] | None
    prefix: str
    max_body_bytes: int
    max_request_bytes: int
    max_static_bytes: int
    render_deadline_ms: int
    sandboxes: dict[str, tuple[int, _templates.Sandbox]] = field(default_factory=dict)
    static_cache: OrderedDict[tuple[int, str], tuple[bytes, str, str]] = field(
        default_factory=OrderedDict)
    maps: dict[str, tuple[int, Map]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Plugbox:
    """A Flask extension over a :class:`plugbox.PluginHost`: ``Plugbox(app, host=host)``, or
    ``ext = Plugbox(host=host)`` then ``ext.init_app(app)`` in an application factory.

    The options (keyword arguments of the constructor or of :meth:`init_app`, which wins):
    ``host`` (required by one of them), ``identity`` (a callable returning the request's
    user and roles, see :data:`Identity`), ``grants`` (``{plugin: {"html", "body",
    "scripts"}}`` or a callable ``plugin -> set``), ``fail_closed`` (points whose failure
    answers 503), ``request_headers`` (the request headers plugins see; name ``cookie`` or
    ``authorization`` to let them see those), ``response_headers`` (headers they may set
    besides ``x-*``), ``host_templates`` (``{template: overridable blocks}`` plugin
    templates may extend), ``sandbox_globals`` (values plugin templates may use),
    ``csrf_exempt`` (a callable ``request -> bool``), ``prefix`` (default ``/plugins``), the
    size caps ``max_body_bytes``, ``max_request_bytes``, ``max_static_bytes``, and
    ``deadline_ms`` (every point's) and ``render_deadline_ms``, and ``check_inputs`` (give
    the host the points' input schemas too; see :func:`declare_points`). See docs/flask.md.
    """

    def __init__(self, app: flask.Flask | None = None, **options: Any) -> None:
        self._options = options
        if app is not None:
            self.init_app(app)

    # -- setup -----------------------------------------------------------------------------

    def init_app(self, app: flask.Flask, **overrides: Any) -> None:
        """Declare the points on the host, register the dispatchers, the plugin routes and
        static files, the template hooks and the CLI on ``app``."""
        o = {**self._options, **overrides}
        host = o.pop("host", None)
        if not isinstance(host, PluginHost):
            raise UsageError("Plugbox needs host=<a plugbox.PluginHost> (in Plugbox(...) or "
                             "init_app(app, host=...))")
        if "plugbox" in app.extensions:
            raise UsageError(f"app {app.name!r} has a Plugbox extension already")
        known = {"identity", "grants", "fail_closed", "request_headers", "response_headers",
                 "host_templates", "sandbox_globals", "csrf_exempt", "prefix",
                 "max_body_bytes", "max_request_bytes", "max_static_bytes", "deadline_ms",
                 "render_deadline_ms", "check_inputs"}
        unknown = sorted(set(o) - known)
        if unknown:
            raise UsageError(f"Plugbox: unknown option(s) {', '.join(unknown)}; the options "
                             f"are {', '.join(sorted(known | {'host'}))}")
        grants = o.get("grants") or {}
        if callable(grants):
            def grants_of(name: str) -> frozenset[str]:
                return frozenset(grants(name) or ())
        else:
            fixed = {k: frozenset(v) for k, v in dict(grants).items()}

            def grants_of(name: str) -> frozenset[str]:
                return fixed.get(name, frozenset())
        host_templates = {k: frozenset(v) for k, v in dict(o.get("host_templates") or {}).items()}
        _templates.check_names(host_templates)
        prefix = str(o.get("prefix", "/plugins")).rstrip("/")
        if not prefix.startswith("/"):
            raise UsageError(f"prefix must start with '/', not {prefix!r}")
        declare_points(host, fail_closed=o.get("fail_closed", ()),
                       deadline_ms=int(o.get("deadline_ms", 1000)),
                       check_inputs=bool(o.get("check_inputs", False)))
        state = _AppState(
            ext=self, host=host, identity=o.get("identity"), grants=grants_of,
            request_headers=tuple(h.lower() for h in o.get("request_headers",
                                                           DEFAULT_REQUEST_HEADERS)),
            response_headers=frozenset(h.lower() for h in o.get("response_headers",
                                                                DEFAULT_RESPONSE_HEADERS)),
            host_templates=host_templates, sandbox_globals=dict(o.get("sandbox_globals") or {}),
            csrf_exempt=o.get("csrf_exempt"), prefix=prefix,
            max_body_bytes=int(o.get("max_body_bytes", 1 << 20)),
            max_request_bytes=int(o.get("max_request_bytes", 256 * 1024)),
            max_static_bytes=int(o.get("max_static_bytes", 8 << 20)),
            render_deadline_ms=int(o.get("render_deadline_ms", 1000)))
        app.extensions["plugbox"] = state
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        app.register_error_handler(HTTPException, self._on_http_error)
        app.context_processor(self._context_processor)
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        app.add_url_rule(f"{prefix}/<plugin>/<version>/static/<path:filename>",
                         "plugbox_static", self._static, methods=["GET"])
        app.add_url_rule(f"{prefix}/<plugin>/", "plugbox_route", self._route,
                         defaults={"rest": ""}, methods=methods)
        app.add_url_rule(f"{prefix}/<plugin>/<path:rest>", "plugbox_route", self._route,
                         methods=methods)
        env = app.jinja_env
        env.filters = _templates.PluginCallables(env.filters, self, "filter")
        env.tests = _templates.PluginCallables(env.tests, self, "test")
        from ._cli import register_cli

        register_cli(app, state)

    # -- what the current plugins offer -----------------------------------------------------

    @staticmethod
    def _state(app: flask.Flask | None = None) -> _AppState:
        target = app if app is not None else flask.current_app
        state: _AppState = target.extensions["plugbox"]
        return state

    def hosted(self, namespace: str) -> HostedPlugin | None:
        """The enabled plugin serving template namespace ``namespace`` now, or None."""
        for hp in self._state().host.plugins:
            if hp.enabled and _templates.namespace_of(hp.name) == namespace:
                return hp
        return None

    def declares(self, namespace: str, kind: str, name: str) -> HostedPlugin | None:
        """The plugin of ``namespace`` when it declares template ``kind`` ``name``."""
        hp = self.hosted(namespace)
        web = None if hp is None else hp.manifest.web
        if web is None:
            return None
        names = {"filter": web.filters, "test": web.tests, "global": web.globals}[kind]
        return hp if name in names else None

    def template_callable(self, kind: str, namespace: str, name: str) -> Callable[..., Any]:
        """The function a template calls for plugin filter/test/global ``name``."""
        point = {"filter": "flask.template_filter", "test": "flask.template_test",
                 "global": "flask.template_global"}[kind]

        def call(*values: Any) -> Any:
            hp = self.declares(namespace, kind, name)
            args = [str(v) for v in values]
            payload: dict[str, Any] = {"name": name, "args": args[1:] if kind != "global"
                                       else args}
            if kind != "global":
                payload["value"] = args[0] if args else ""
            try:
                if hp is None:
                    raise UsageError(f"no enabled plugin serves {namespace}.{name}")
                out = self._state().host.call_plugin(point, hp.name, payload)["value"]
            except PlugboxError as exc:
                _log.warning("plugin %r, template %s %r (point %s) failed and was skipped "
                             "(fail-open): %s", hp.name if hp else namespace, kind, name,
                             point, exc)
                return False if kind == "test" else escape(args[0] if args and
                                                           kind == "filter" else "")
            if kind == "test":
                return bool(out)
            return self._markup(hp.name, str(out))
        call.__name__ = f"{namespace}.{name}"
        return call

    def _markup(self, plugin: str, text: str) -> Markup:
        if "html" in self._state().grants(plugin):
            return _templates.sanitise(text)
        return escape(text)

    def _active(self, point: str) -> bool:
        return any(hp.enabled for hp in self._state().host.implementations(point))

    # -- the request -----------------------------------------------------------------------

    def _request(self) -> _Request:
        found: _Request | None = getattr(flask.g, "_plugbox", None)
        if found is not None:
            return found
        state = self._state()
        user, roles = self._identity(state)
        req = flask.request
        headers = {name: value[:8192] for name in state.request_headers
                   if (value := req.headers.get(name)) is not None}
        query = {key[:256]: [v[:1024] for v in req.args.getlist(key)[:16]]
                 for key in list(req.args.keys())[:64]}
        base = {"method": req.method, "path": req.path[:2048], "query": query,
                "headers": headers, "user": user, "roles": list(roles)}
        found = _Request(user, roles, base)
        flask.g._plugbox = found
        return found

    @staticmethod
    def _identity(state: _AppState) -> tuple[str | None, tuple[str, ...]]:
        if state.identity is None:
            return None, ()
        got = state.identity()
        if got is None:
            return None, ()
        if isinstance(got, Mapping):
            user, roles = got.get("user"), got.get("roles", ())
        else:
            user, roles = got
        if user is not None and not isinstance(user, str):
            raise UsageError(f"identity() returned user {user!r}; give a str or None")
        return (None if user is None else user[:256]), tuple(str(r)[:64] for r in roles)[:64]

    def _fail_closed(self, fault: _Fault) -> flask.Response:
        _log.error("plugin %r, point %s failed and the request was refused (503, fail-closed): "
                   "%s. Fix: %s", fault.plugin, fault.point, fault.why, fault.fix)
        response = flask.Response("Service Unavailable\n", 503, mimetype="text/plain")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def _dispatch(self, point: str, payload: Any) -> Any:
        """host.call, failures under ``propagate`` turned into a _Fault."""
        try:
            return self._state().host.call(point, payload)
        except PluginCallError as exc:
            raise _Fault(exc.plugin or "?", point, f"{type(exc).__name__}: {exc}",
                         f"fix or disable plugin {exc.plugin!r}, or drop {point} from the "
                         "host's fail_closed") from None

    def _log_failures(self, result: Any, what: str) -> None:
        for failure in result.failures:
            _log.warning("plugin %r, %s (point %s) failed and was skipped (fail-open): %s",
                         failure.plugin, what, result.point, failure.error)

    def _before_request(self) -> flask.Response | None:
        if flask.request.endpoint == "plugbox_static":
            return None
        if not self._active("flask.before_request"):
            return None
        state = self._state()
        current = self._request()
        try:
            result = self._dispatch("flask.before_request", current.view())
            self._log_failures(result, "before_request")
            answer: flask.Response | None = None
            for r in result.results:
                if not r.value:
                    continue
                notes = r.value.get("annotate")
                if notes:
                    if len(json.dumps(notes)) > _MAX_ANNOTATION_BYTES:
                        _log.warning("plugin %r, before_request: annotations over %d bytes "
                                     "dropped", r.plugin, _MAX_ANNOTATION_BYTES)
                    else:
                        current.annotations.setdefault(r.plugin, {}).update(notes)
                if answer is None and r.value.get("respond") is not None:
                    answer = self._response(state, r.plugin, "flask.before_request",
                                            r.value["respond"], current)
            return answer
        except _Fault as fault:
            return self._fail_closed(fault)

    def _after_request(self, response: flask.Response) -> flask.Response:
        state = self._state()
        flask.g._plugbox_status = response.status_code
        try:
            if self._active("flask.after_request"):
                current = self._request()
                shown = {k.lower(): v for k, v in response.headers.items()
                         if self._may_touch(state, k.lower()) or k.lower() == "content-type"}
                result = self._dispatch("flask.after_request", {
                    **current.view(), "status": response.status_code,
                    "response_headers": shown})
                self._log_failures(result, "after_request")
                for r in result.results:
                    if r.value:
                        for name in r.value.get("remove_headers", ()):
                            if self._may_touch(state, name.lower()):
                                del response.headers[name]
                        self._set_headers(state, r.plugin, response,
                                          r.value.get("set_headers") or {})
            if self._active("flask.response_body"):
                self._rewrite_body(state, response)
        except _Fault as fault:
            return self._fail_closed(fault)
        return response

    def _rewrite_body(self, state: _AppState, response: flask.Response) -> None:
        mimetype = response.mimetype or ""
        if (response.direct_passthrough or response.is_streamed
                or not (mimetype.startswith("text/") or mimetype == "application/json")
                or (response.content_length or 0) > state.max_body_bytes):
            return
        implementors = [hp for hp in state.host.implementations("flask.response_body")
                        if hp.enabled]
        refused = [hp.name for hp in implementors if "body" not in state.grants(hp.name)]
        if refused:
            _log.error("plugins %s implement flask.response_body but the host has not granted "
                       "them 'body'; no body was rewritten. Fix: grant it "
                       "(Plugbox(grants={name: {'body'}})) or disable them", ", ".join(refused))
            return
        payload = {"body": response.get_data(as_text=True), "content_type": mimetype,
                   "status": response.status_code, "path": flask.request.path[:2048]}
        result = self._dispatch("flask.response_body", payload)
        self._log_failures(result, "response_body")
        body = str(result.value["body"])
        if len(body.encode()) > state.max_body_bytes:
            raise _Fault(result.results[-1].plugin if result.results else "?",
                         "flask.response_body", f"the rewritten body is over "
                         f"{state.max_body_bytes} bytes", "return a smaller body")
        response.set_data(body)

    def _teardown_request(self, exc: BaseException | None) -> None:
        try:
            if not self._active("flask.teardown_request"):
                return
            current = self._request()
            self._state().host.call("flask.teardown_request", {
                **current.view(), "status": getattr(flask.g, "_plugbox_status", None),
                "failed": exc is not None})
        except PlugboxError as error:
            _log.warning("teardown_request dispatch failed: %s", error)

    def _on_http_error(self, error: HTTPException) -> Any:
        code = error.code or 500
        if code < 400 or not self._active("flask.error_handler"):
            return error.get_response()
        state = self._state()
        try:
            current = self._request()
            result = state.host.call("flask.error_handler", {
                **current.view(), "status": code, "name": error.name or ""})
            self._log_failures(result, "error_handler")
            if result.value is None:
                return error.get_response()
            plugin = result.results[0].plugin
            return self._response(state, plugin, "flask.error_handler", result.value, current,
                                  status=code)
        except (PlugboxError, _Fault) as exc:
            _log.warning("error handler plugins failed for %d; Flask's page is served: %s",
                         code, exc)
            return error.get_response()

    def _context_processor(self) -> dict[str, Any]:
        return {"plugins": _Namespaces(self), "plugbox_csrf_token": csrf_token}

    def context_for(self, namespace: str) -> dict[str, Any]:
        """The annotations and context-processor values of ``namespace`` for this request."""
        current = self._request()
        if current.context is None:
            current.context = {}
            if self._active("flask.context_processor"):
                try:
                    result = self._dispatch("flask.context_processor", current.view())
                    self._log_failures(result, "context_processor")
                    for r in result.results:
                        if isinstance(r.value, dict):
                            current.context[r.plugin] = r.value
                except _Fault as fault:
                    _log.error("plugin %r, context_processor failed (fail-closed): %s",
                               fault.plugin, fault.why)
                    flask.abort(503)
        hp = self.hosted(namespace)
        if hp is None:
            return {}
        return {**current.annotations.get(hp.name, {}), **current.context.get(hp.name, {})}

    # -- responses -------------------------------------------------------------------------

    @staticmethod
    def _may_touch(state: _AppState, name: str) -> bool:
        return name in state.response_headers or (name.startswith("x-")
                                                  and name not in _GUARD_HEADERS)

    def _set_headers(self, state: _AppState, plugin: str, response: flask.Response,
                     headers: Mapping[str, Any]) -> None:
        for name, value in headers.items():
            lower = name.lower()
            ok = (isinstance(value, str) and _HEADER_NAME.fullmatch(name) is not None
                  and self._may_touch(state, lower) and not any(c in value for c in "\r\n\0"))
            if ok and lower == "location":
                ok = value.startswith("/") and not value.startswith(("//", "/\\"))
            if not ok:
                _log.warning("plugin %r: response header %r refused (not allowed, or a bad "
                             "value); allowed: x-* and %s", plugin, name,
                             ", ".join(sorted(state.response_headers)))
                continue
            response.headers[name] = value

    def _response(self, state: _AppState, plugin: str, point: str, out: Mapping[str, Any],
                  current: _Request, *, status: int | None = None) -> flask.Response:
        """A plugin's answer (:data:`RESPONSE`) as a Flask response; a _Fault when it cannot
        be one."""
        code = int(out.get("status", status or 200))
        mimetype, body = "text/plain", b""
        disposition = None
        if "template" in out:
            html = self.render(plugin, str(out["template"]), out.get("context") or {}, current)
            mimetype, body = "text/html", html.encode()
        elif "html" in out:
            mimetype, body = "text/html", str(self._markup(plugin, str(out["html"]))).encode()
        elif "json" in out:
            mimetype, body = "application/json", json.dumps(out["json"]).encode()
        elif "text" in out:
            body = str(out["text"]).encode()
        elif "base64" in out:
            try:
                body = base64.b64decode(str(out["base64"]), validate=True)
            except (binascii.Error, ValueError):
                raise _Fault(plugin, point, "the base64 body does not decode",
                             "return valid base64") from None
            mimetype = str(out.get("content_type", "application/octet-stream")).lower()
            if mimetype not in BYTES_TYPES:
                mimetype, disposition = "application/octet-stream", "attachment"
        if len(body) > state.max_body_bytes:
            raise _Fault(plugin, point, f"the body is {len(body)} bytes, over the cap of "
                         f"{state.max_body_bytes}", "return a smaller body")
        response = flask.Response(body, code, mimetype=mimetype)
        self._set_headers(state, plugin, response, out.get("headers") or {})
        if disposition:
            response.headers["Content-Disposition"] = disposition
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # -- templates -------------------------------------------------------------------------

    def _plugin_dir(self, hp: HostedPlugin) -> Path | None:
        source = hp.source
        if source.is_dir():
            return source
        if source.name == "plugbox.json":
            return source.parent
        return None  # a .plugbox package added directly: no files on disk to serve

    def _subdir(self, hp: HostedPlugin, which: str | None) -> Path | None:
        base = self._plugin_dir(hp)
        if base is None or which is None:
            return None
        target = (base / which).resolve()
        if not target.is_relative_to(base.resolve()) or not target.is_dir():
            return None
        return target

    def sandbox(self, hp: HostedPlugin) -> _templates.Sandbox:
        """The sandboxed environment of ``hp``'s templates (made once per loaded version:
        an upgrade, reload or config change gets a new one, so its templates recompile)."""
        state = self._state()
        with state.lock:
            kept = state.sandboxes.get(hp.name)
            if kept is not None and kept[0] == id(hp.plugin):
                return kept[1]
            web = hp.manifest.web or WebSpec()
            env = _templates.make_sandbox(
                self, flask.current_app.jinja_env, hp, self._subdir(hp, web.templates),
                state.host_templates, "html" in state.grants(hp.name), state.sandbox_globals)
            state.sandboxes[hp.name] = (id(hp.plugin), env)
            return env

    def render(self, plugin: str, name: str, context: Mapping[str, Any],
               current: _Request) -> str:
        """Render plugin ``plugin``'s template ``name`` (sandboxed, autoescaped, bounded)."""
        state = self._state()
        hp = state.host.get(plugin)
        if hp is None:
            raise _Fault(plugin, "flask.route", "the plugin is gone", "retry")
        values = {**{k: v for k, v in context.items() if isinstance(k, str)},
                  "request": current.view(), "plugins": _Namespaces(self),
                  "plugbox_csrf_token": csrf_token,
                  "static": lambda path: self.static_url(hp, str(path)),
                  "plugin": {"name": hp.name, "version": hp.manifest.version}}
        try:
            return _templates.render(self.sandbox(hp), name, values,
                                     deadline_ms=state.render_deadline_ms,
                                     max_bytes=state.max_body_bytes)
        except TemplateError as exc:
            raise _Fault(plugin, "template", f"template {name!r}: {type(exc).__name__}: {exc}",
                         "fix the plugin's template") from None

    def static_url(self, hp: HostedPlugin, path: str) -> str:
        """The versioned URL of ``hp``'s static file ``path``."""
        return (f"{self._state().prefix}/{hp.name}/{hp.manifest.version}/static/"
                f"{path.lstrip('/')}")

    # -- routes and static files -----------------------------------------------------------

    def _route(self, plugin: str, rest: str) -> flask.Response:
        state = self._state()
        hp = state.host.get(plugin)
        web = None if hp is None or not hp.enabled else hp.manifest.web
        if hp is None or web is None or not web.routes or \
                "flask.route" not in hp.manifest.implements:
            flask.abort(404)
        with state.lock:
            kept = state.maps.get(plugin)
            if kept is None or kept[0] != id(hp.plugin):
                kept = (id(hp.plugin), Map([Rule(r.path or "/", endpoint=r.name,
                                                 methods=list(r.methods)) for r in web.routes],
                                           strict_slashes=False, merge_slashes=False))
                state.maps[plugin] = kept
        adapter = kept[1].bind("plugbox.invalid")
        route_name, params = adapter.match("/" + rest, method=flask.request.method)
        route = next(r for r in web.routes if r.name == route_name)
        current = self._request()
        if route.role != "public":
            if current.user is None:
                flask.abort(401)
            if route.role != "authenticated" and route.role not in current.roles:
                flask.abort(403)
        body = self._request_body(state)
        if flask.request.method in _STATE_CHANGING and not self._csrf_ok(state, body):
            _log.warning("plugin %r, route %r: %s refused, CSRF token missing or wrong",
                         plugin, route.name, flask.request.method)
            flask.abort(403, "CSRF token missing or invalid")
        payload = {**current.view(), "route": route.name,
                   "params": {k: v for k, v in params.items()}, "body": body}
        try:
            out = state.host.call_plugin("flask.route", plugin, payload)
        except PayloadError:
            flask.abort(400)
        except PluginCallError as exc:
            return self._fail_closed(_Fault(plugin, "flask.route", f"route {route.name!r}: "
                                            f"{type(exc).__name__}: {exc}",
                                            f"fix or disable plugin {plugin!r}"))
        except UsageError:  # disabled or removed since the lookup: as if it never was
            flask.abort(404)
        try:
            return self._response(state, plugin, "flask.route", out or {}, current)
        except _Fault as fault:
            return self._fail_closed(fault)

    def _request_body(self, state: _AppState) -> dict[str, Any] | None:
        req = flask.request
        if req.content_length is not None and req.content_length > state.max_request_bytes:
            flask.abort(413)
        data = req.stream.read(state.max_request_bytes + 1)
        if len(data) > state.max_request_bytes:
            flask.abort(413)
        if not data:
            return None
        mimetype = req.mimetype
        if mimetype == "application/json":
            try:
                return {"json": json.loads(data)}
            except ValueError:
                flask.abort(400)
        if mimetype == "application/x-www-form-urlencoded":
            try:
                form = parse_qs(data.decode(), keep_blank_values=True, max_num_fields=256)
            except (UnicodeDecodeError, ValueError):
                flask.abort(400)
            return {"form": form}
        if mimetype.startswith("text/"):
            try:
                return {"text": data.decode()}
            except UnicodeDecodeError:
                flask.abort(400)
        return {"base64": base64.b64encode(data).decode(), "content_type": mimetype}

    @staticmethod
    def _csrf_ok(state: _AppState, body: dict[str, Any] | None) -> bool:
        if "csrf" in flask.current_app.extensions:
            return True  # Flask-WTF's CSRFProtect checked this request already
        if state.csrf_exempt is not None and state.csrf_exempt(flask.request):
            return True
        expected = flask.session.get(_CSRF_KEY)
        if not isinstance(expected, str):
            return False
        given = flask.request.headers.get("X-CSRF-Token")
        if given is None and body is not None and "form" in body:
            given = (body["form"].pop("csrf_token", None) or [None])[0]
        return isinstance(given, str) and hmac.compare_digest(given, expected)

    def _static(self, plugin: str, version: str, filename: str) -> flask.Response:
        state = self._state()
        hp = state.host.get(plugin)
        if hp is None or not hp.enabled or hp.manifest.version != version or \
                _VERSION_RE.fullmatch(version) is None:
            raise NotFound()
        parts = filename.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
            raise NotFound()
        suffix = Path(parts[-1]).suffix.lower()
        mimetype = STATIC_TYPES.get(suffix)
        if mimetype is None or (suffix == ".js" and "scripts" not in state.grants(plugin)):
            raise NotFound()
        key = (id(hp.plugin), filename)
        with state.lock:
            cached = state.static_cache.get(key)
        if cached is None:
            web = hp.manifest.web or WebSpec()
            root = self._subdir(hp, web.static)
            if root is None:
                raise NotFound()
            try:
                data = read_plugin_file(root, filename, state.max_static_bytes)
            except PluginFileRefused:
                raise NotFound() from None
            cached = (data, hashlib.sha256(data).hexdigest()[:32], mimetype)
            with state.lock:
                state.static_cache[key] = cached
                while len(state.static_cache) > 512:
                    state.static_cache.popitem(last=False)
        data, etag, mimetype = cached
        response = flask.Response(data, mimetype=mimetype)
        response.set_etag(etag)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response.make_conditional(flask.request)
        return response


def csrf_token() -> str:
    """The CSRF token of this session, for the forms of state-changing plugin routes (a
    ``csrf_token`` field or an ``X-CSRF-Token`` header). Templates: ``plugbox_csrf_token()``.
    With Flask-WTF's CSRFProtect on the app, its token."""
    if "csrf" in flask.current_app.extensions:
        from flask_wtf.csrf import generate_csrf  # type: ignore[import-not-found]

        token: str = generate_csrf()
        return token
    found = flask.session.get(_CSRF_KEY)
    if not isinstance(found, str):
        found = secrets.token_urlsafe(32)
        flask.session[_CSRF_KEY] = found
    return found


class _Namespace:
    """``plugins.<ns>`` in a template: the plugin's values, and its globals as functions."""

    def __init__(self, ext: Plugbox, namespace: str) -> None:
        self._ext = ext
        self._ns = namespace

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if self._ext.declares(self._ns, "global", key) is not None:
            return self._ext.template_callable("global", self._ns, key)
        return self._ext.context_for(self._ns).get(key)

    __getitem__ = __getattr__


class _Namespaces:
    """``plugins`` in a template."""

    def __init__(self, ext: Plugbox) -> None:
        self._ext = ext

    def __getattr__(self, namespace: str) -> _Namespace:
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        return _Namespace(self._ext, namespace)

    __getitem__ = __getattr__


