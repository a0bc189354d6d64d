"""The extension points the Flask extension declares on its host: names, versions, modes,
and the JSON Schemas of what goes in and out (docs/flask.md, "Extension points")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from ..._errors import UsageError
from ...host._host import PluginHost

__all__ = ["CLOSABLE", "POINTS", "VERSION", "declare_points"]

#: The version of every point this extension declares.
VERSION: Final = "1.0.0"

_STR: Final = {"type": "string", "maxLength": 65536}
_HEADERS: Final = {"type": "object", "maxProperties": 64,
                   "additionalProperties": {"type": "string", "maxLength": 8192}}
#: The request as plugins see it (every request hook and route gets these fields).
_VIEW_PROPS: Final[dict[str, Any]] = {
    "method": {"type": "string", "maxLength": 16},
    "path": {"type": "string", "maxLength": 2048},
    "query": {"type": "object", "maxProperties": 64,
              "additionalProperties": {"type": "array", "maxItems": 16,
                                       "items": {"type": "string", "maxLength": 1024}}},
    "headers": _HEADERS,
    "user": {"type": ["string", "null"], "maxLength": 256},
    "roles": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 64}},
    "annotations": {"type": "object", "maxProperties": 256},
}
_VIEW_REQUIRED: Final = ["method", "path", "query", "headers", "user", "roles", "annotations"]


def _view(**extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": _VIEW_REQUIRED + sorted(extra),
            "properties": {**_VIEW_PROPS, **extra}}


#: What a plugin answers to render a response (routes, before_request's respond, errors).
RESPONSE: Final[dict[str, Any]] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "status": {"type": "integer", "minimum": 200, "maximum": 599},
        "headers": _HEADERS,
        "json": True, "text": _STR, "html": _STR,
        "base64": {"type": "string", "maxLength": 8_000_000},
        "content_type": {"type": "string", "maxLength": 128},
        "template": {"type": "string", "maxLength": 256},
        "context": {"type": "object", "maxProperties": 256},
    },
}


def _NULL_OR(schema: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 (reads as a constant)
    return {"anyOf": [{"type": "null"}, schema]}



#: name -> the keyword arguments of PluginHost.extension_point (failure added per host).
POINTS: Final[dict[str, dict[str, Any]]] = {
    "flask.before_request": dict(
        mode="each", input_schema=_view(),
        output_schema=_NULL_OR({"type": "object", "additionalProperties": False, "properties": {
            "annotate": {"type": "object", "maxProperties": 32},
            "respond": RESPONSE}}),
        description="Before every request: allow (null or {}), annotate {key: value} for "
                    "later hooks and templates, or respond with {status, headers, body}."),
    "flask.after_request": dict(
        mode="each", input_schema=_view(status={"type": "integer"}, response_headers=_HEADERS),
        output_schema=_NULL_OR({"type": "object", "additionalProperties": False, "properties": {
            "set_headers": _HEADERS,
            "remove_headers": {"type": "array", "maxItems": 64,
                               "items": {"type": "string", "maxLength": 128}}}}),
        description="After every request: change the response's headers."),
    "flask.response_body": dict(
        mode="pipeline",
        input_schema={"type": "object", "required": ["body", "content_type", "status", "path"],
                      "properties": {"body": {"type": "string"},
                                     "content_type": {"type": "string"},
                                     "status": {"type": "integer"},
                                     "path": {"type": "string"}}},
        output_schema={"type": "object", "required": ["body", "content_type", "status", "path"],
                       "properties": {"body": {"type": "string"}}},
        description="Rewrite a text response's body (plugins the host granted 'body' only); "
                    "each gets the previous one's output and returns it with body changed."),
    "flask.teardown_request": dict(
        mode="notify", background=True,
        input_schema=_view(status={"type": ["integer", "null"]}, failed={"type": "boolean"}),
        description="After every request, off the request's thread (results discarded)."),
    "flask.error_handler": dict(
        mode="first", input_schema=_view(status={"type": "integer"},
                                         name={"type": "string", "maxLength": 128}),
        output_schema=_NULL_OR(RESPONSE),
        description="Render the body of an error response; the first plugin answering "
                    "non-null wins."),
    "flask.context_processor": dict(
        mode="each", input_schema=_view(),
        output_schema=_NULL_OR({"type": "object", "maxProperties": 64}),
        description="Values for templates, merged under the plugin's namespace."),
    "flask.template_filter": dict(
        mode="each",
        input_schema={"type": "object", "required": ["name", "value", "args"], "properties": {
            "name": {"type": "string"}, "value": _STR,
            "args": {"type": "array", "maxItems": 16, "items": _STR}}},
        output_schema={"type": "object", "required": ["value"],
                       "properties": {"value": {"type": "string"}}},
        description="A template filter declared in web.filters: str -> str."),
    "flask.template_test": dict(
        mode="each",
        input_schema={"type": "object", "required": ["name", "value", "args"], "properties": {
            "name": {"type": "string"}, "value": _STR,
            "args": {"type": "array", "maxItems": 16, "items": _STR}}},
        output_schema={"type": "object", "required": ["value"],
                       "properties": {"value": {"type": "boolean"}}},
        description="A template test declared in web.tests: str -> bool."),
    "flask.template_global": dict(
        mode="each",
        input_schema={"type": "object", "required": ["name", "args"], "properties": {
            "name": {"type": "string"},
            "args": {"type": "array", "maxItems": 16, "items": _STR}}},
        output_schema={"type": "object", "required": ["value"],
                       "properties": {"value": {"type": "string"}}},
        description="A template global (function) declared in web.globals: str... -> str."),
    "flask.route": dict(
        mode="each", failure="propagate",
        input_schema=_view(route={"type": "string"}, params={"type": "object"},
                           body={"type": ["object", "null"]}),
        output_schema=RESPONSE,
        description="A request to one of the routes the plugin declares in web.routes."),
    "flask.command": dict(
        mode="each", failure="propagate",
        input_schema={"type": "object", "required": ["command", "argv"], "properties": {
            "command": {"type": "string"},
            "argv": {"type": "array", "maxItems": 256, "items": {"type": "string",
                                                                  "maxLength": 4096}}}},
        output_schema={"type": "object", "required": ["exit_code"],
                       "additionalProperties": False, "properties": {
                           "stdout": {"type": "string", "maxLength": 1_048_576},
                           "stderr": {"type": "string", "maxLength": 1_048_576},
                           "exit_code": {"type": "integer", "minimum": 0, "maximum": 255}}},
        description="A CLI command declared in web.commands: argv in, stdout and exit code "
                    "out."),
}

#: The points whose failure policy a host may turn to fail-closed (503).
CLOSABLE: Final = frozenset({"flask.before_request", "flask.after_request",
                             "flask.response_body", "flask.context_processor"})


def declare_points(host: PluginHost, *, fail_closed: Iterable[str] = (),
                   deadline_ms: int = 1000, check_inputs: bool = False) -> None:
    """Declare every point of the extension on ``host`` (``init_app`` does; call it yourself
    to add plugins before the app exists). Points already declared by an earlier call are
    kept when they match; ``fail_closed`` names the points whose failure answers 503
    (:data:`CLOSABLE`), ``deadline_ms`` caps every call of every point.

    Plugins' answers are always checked against the output schemas. The inputs are built by
    the extension to fit :data:`POINTS`' input schemas; checking them again on every request
    costs about 0.4 ms per hook call (jsonschema), so the host is given them only with
    ``check_inputs=True`` (for development and tests)."""
    closed = set(fail_closed)
    unknown = sorted(closed - CLOSABLE)
    if unknown:
        raise UsageError(f"fail_closed names {', '.join(unknown)}, which cannot fail closed; "
                         f"choose among {', '.join(sorted(CLOSABLE))}")
    existing: Mapping[str, Any] = host.points
    for name, spec in POINTS.items():
        failure = "propagate" if name in closed else spec.get("failure", "isolate")
        have = existing.get(name)
        if have is not None:
            if have.owner is not None or have.version != VERSION or have.failure != failure:
                raise UsageError(f"extension point {name!r} is declared on this host already "
                                 f"(version {have.version}, failure {have.failure}); the "
                                 f"Flask extension declares it at {VERSION} with failure "
                                 f"{failure}: give each app the same fail_closed, or its own "
                                 f"PluginHost")
            continue
        options = {k: v for k, v in spec.items() if k != "failure"}
        if not check_inputs:
            options.pop("input_schema", None)
        host.extension_point(name, version=VERSION, failure=failure, deadline_ms=deadline_ms,
                             **options)
