"""The registry's HTTP face: a Starlette application over :class:`Registry` (docs/registry.md
documents every route; ``/openapi.json`` describes them).

Bounds on every request: uploads are read chunk by chunk against ``max_upload_bytes`` (a
``Content-Length`` above it is refused before anything is read) and two deadlines (the whole
body, and the pause between chunks); JSON bodies have their own smaller cap; query values are
length-checked; writes are rate limited per token and per client address (429 with
``Retry-After``); at most ``max_concurrent_uploads`` uploads are held in memory at once (503
beyond). The blocking work (database, package checks, TUF signing) runs on worker threads.
Every error is ``{"error": {"code", "message"}}`` with its HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ._errors import RequestRefused
from ._openapi import openapi
from ._service import Account, Registry

__all__ = ["create_app"]

log = logging.getLogger("plugbox.registry")

_SAFE_SEGMENT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
_PACKAGE_TARGET: Final = re.compile(
    r"^plugins/([a-z][a-z0-9._-]{0,63})/[0-9a-f]{64}\.([A-Za-z0-9._+-]+)\.plugbox$")
_WRITE_METHODS: Final = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class _ClientGone(Exception):
    """The client disconnected before its body was read."""


def _error_response(exc: RequestRefused) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if exc.status in (408, 413):
        headers["Connection"] = "close"
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def _read_body(request: Request, cap: int, total_s: float, idle_s: float) -> bytes:
    """The request body, at most ``cap`` bytes, within ``total_s`` (and ``idle_s`` between
    chunks); RequestRefused 413 / 408 otherwise, _ClientGone on a disconnect."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestRefused(400, "invalid-request", "Content-Length is not a number")
        if int(length) > cap:
            raise RequestRefused(413, "too-large", f"the body is {length} bytes; this registry "
                                f"accepts at most {cap}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_s
    chunks: list[bytes] = []
    size = 0
    while True:
        left = min(idle_s, deadline - loop.time())
        if left <= 0:
            raise RequestRefused(408, "too-slow", f"the body did not arrive within "
                                f"{total_s:g} s; send it faster or in one go")
        try:
            message = await asyncio.wait_for(request.receive(), left)
        except asyncio.TimeoutError:
            raise RequestRefused(408, "too-slow", f"the body stalled (nothing for {idle_s:g} s, "
                                f"or not complete within {total_s:g} s)") from None
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        body = message.get("body", b"")
        size += len(body)
        if size > cap:
            raise RequestRefused(413, "too-large", f"the body is larger than {cap} bytes, the "
                                f"most this registry accepts")
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(registry: Registry) -> Starlette:
    """The ASGI application serving ``registry``."""
    limits = registry.limits
    uploads = asyncio.Semaphore(limits.max_concurrent_uploads)

    def bearer(request: Request) -> str | None:
        value = request.headers.get("authorization", "")
        if value.lower().startswith("bearer "):
            return value[7:].strip()
        return None

    def rate_limit(request: Request) -> None:
        if request.method not in _WRITE_METHODS:
            return
        keys = [f"addr:{request.client.host if request.client else '?'}"]
        token = bearer(request)
        token_id = registry.token_id_of(token) if token else None
        if token_id:
            keys.append(f"token:{token_id}")
        for key in keys:
            wait = registry.write_limiter.take(key)
            if wait is not None:
                who = "this token" if key.startswith("token:") else "this address"
                raise RequestRefused(429, "rate-limited", f"too many writes from {who}: at most "
                                    f"{limits.write_burst} at once and "
                                    f"{limits.writes_per_minute:g} a minute; retry later",
                                    retry_after=wait)

    async def account(request: Request) -> Account:
        return await run_in_threadpool(registry.authenticate, bearer(request))

    async def json_body(request: Request) -> dict[str, Any]:
        data = await _read_body(request, limits.max_json_bytes, limits.body_timeout_s,
                                limits.idle_timeout_s)
        try:
            doc = json.loads(data or b"{}")
        except (ValueError, RecursionError):
            raise RequestRefused(400, "invalid-request", "the body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise RequestRefused(400, "invalid-request", "the body must be a JSON object")
        return doc

    def param(request: Request, name: str, default: str | None = None) -> str | None:
        value = request.query_params.get(name, default)
        if value is not None and len(value) > 256:
            raise RequestRefused(400, "invalid-request", f"query parameter {name!r} is longer "
                                f"than 256 characters")
        return value

    def int_param(request: Request, name: str, default: int) -> int:
        value = param(request, name)
        if value is None:
            return default
        if not value.isdigit() or len(value) > 6:
            raise RequestRefused(400, "invalid-request", f"{name} must be a positive integer")
        return int(value)

    def path_arg(request: Request, name: str) -> str:
        value = str(request.path_params[name])
        if not _SAFE_SEGMENT.match(value):
            raise RequestRefused(400, "invalid-request", f"{name} {value!r} is not valid")
        return value

    Handler = Callable[[Request], Awaitable[Response]]

    def endpoint(fn: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                rate_limit(request)
                return await fn(request)
            except RequestRefused as exc:
                return _error_response(exc)
            except _ClientGone:
                log.info("client left before its body arrived: %s %s", request.method,
                         request.url.path)
                return Response(status_code=499)
            except Exception:
                log.exception("registry: unexpected error on %s %s", request.method,
                              request.url.path)
                return _error_response(RequestRefused(500, "internal", "the registry failed "
                                                     "unexpectedly; the server log has the "
                                                     "details"))

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    # -- handlers ----------------------------------------------------------------------------

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(openapi())

    async def health(request: Request) -> Response:
        await run_in_threadpool(registry._read, "SELECT 1")
        return JSONResponse({"ok": True})

    async def post_accounts(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        out = await run_in_threadpool(lambda: registry.create_account(
            actor, doc.get("name"), admin=doc.get("admin") is True,  # type: ignore[arg-type]
            reviewer=doc.get("reviewer") is True))
        return JSONResponse(out, status_code=201)

    async def post_tokens(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        label = doc.get("label")
        out = await run_in_threadpool(registry.create_token, actor, path_arg(request, "account"),
                                      label if isinstance(label, str) else None)
        return JSONResponse(out, status_code=201)

    async def delete_token(request: Request) -> Response:
        actor = await account(request)
        out = await run_in_threadpool(registry.revoke_token, actor,
                                      path_arg(request, "token_id"))
        return JSONResponse(out)

    async def get_keys(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(registry.keys,
                                                    path_arg(request, "account")))

    async def post_keys(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        out = await run_in_threadpool(registry.add_key, actor, path_arg(request, "account"),
                                      doc.get("public_key"))  # type: ignore[arg-type]
        return JSONResponse(out, status_code=201)

    async def delete_key(request: Request) -> Response:
        actor = await account(request)
        out = await run_in_threadpool(registry.remove_key, actor, path_arg(request, "account"),
                                      path_arg(request, "key_id"))
        return JSONResponse(out)

    async def publish(request: Request) -> Response:
        actor = await account(request)
        if uploads.locked():
            raise RequestRefused(503, "busy", f"{limits.max_concurrent_uploads} uploads are in "
                                f"progress; retry shortly", retry_after=2)
        async with uploads:
            data = await _read_body(request, limits.max_upload_bytes, limits.body_timeout_s,
                                    limits.idle_timeout_s)
            tags = (param(request, "tags") or "").split(",")
            out = await run_in_threadpool(registry.publish, actor, data, tags)
        return JSONResponse(out, status_code=201)

    async def search(request: Request) -> Response:
        qp = request.query_params
        out = await run_in_threadpool(lambda: registry.search(
            q=param(request, "q", "") or "", point=qp.getlist("point"),
            permission=qp.getlist("permission"),
            allowed_permissions=param(request, "allowed_permissions"),
            host=param(request, "host"), abi=param(request, "abi"),
            sort=param(request, "sort", "downloads") or "downloads",
            page=int_param(request, "page", 1), per_page=int_param(request, "per_page", 20)))
        return JSONResponse(out)

    async def get_plugin(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(registry.plugin, path_arg(request, "name")))

    async def get_versions(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(registry.versions,
                                                    path_arg(request, "name")))

    async def get_version(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(registry.version, path_arg(request, "name"),
                                                    path_arg(request, "version")))

    async def download(request: Request) -> Response:
        name, version = path_arg(request, "name"), path_arg(request, "version")
        path, sha256 = await run_in_threadpool(registry.download, name, version)
        if not path.is_file():
            raise RequestRefused(500, "storage", f"the package file of {name} {version} is "
                                f"missing from the registry's storage", plugin=name)
        return FileResponse(path, media_type="application/octet-stream",
                            filename=path.name, headers={"X-Plugbox-Sha256": sha256})

    async def post_yank(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        out = await run_in_threadpool(registry.yank, actor, path_arg(request, "name"),
                                      path_arg(request, "version"),
                                      doc.get("reason"),  # type: ignore[arg-type]
                                      doc.get("yanked", True) is not False)
        return JSONResponse(out)

    async def post_transfer(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        to = doc.get("to")
        if not isinstance(to, str):
            raise RequestRefused(400, "invalid-request", "to must name an account")
        return JSONResponse(await run_in_threadpool(registry.transfer, actor,
                                                    path_arg(request, "name"), to))

    async def get_advisories(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(registry.advisories, None))

    async def get_plugin_advisories(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(registry.advisories,
                                                    path_arg(request, "name")))

    async def post_advisory(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        out = await run_in_threadpool(registry.add_advisory, actor, path_arg(request, "name"),
                                      doc)
        return JSONResponse(out, status_code=201)

    async def get_reviews(request: Request) -> Response:
        include = False
        if bearer(request):
            include = (await account(request)).admin
        return JSONResponse(await run_in_threadpool(
            lambda: registry.reviews(path_arg(request, "name"), include_hidden=include)))

    async def put_review(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        out = await run_in_threadpool(registry.put_review, actor, path_arg(request, "name"),
                                      doc.get("rating"), doc.get("text", ""))
        return JSONResponse(out)

    async def post_moderate(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        reason = doc.get("reason")
        out = await run_in_threadpool(registry.moderate, actor, path_arg(request, "name"),
                                      path_arg(request, "user"), doc.get("hidden", True),
                                      reason if isinstance(reason, str) else None)
        return JSONResponse(out)

    async def post_security_review(request: Request) -> Response:
        actor = await account(request)
        doc = await json_body(request)
        out = await run_in_threadpool(registry.add_security_review, actor,
                                      path_arg(request, "name"), path_arg(request, "version"),
                                      doc.get("status"), doc.get("signature"),
                                      doc.get("notes", ""))
        return JSONResponse(out, status_code=201)

    def static_file(base: Path, relative: str) -> Response:
        parts = relative.split("/")
        if not parts or len(parts) > 8 or not all(_SAFE_SEGMENT.match(p) for p in parts):
            raise RequestRefused(400, "invalid-request", f"{relative!r} is not a valid path")
        root = base.resolve()
        file = root.joinpath(*parts).resolve()
        if root not in file.parents or not file.is_file():
            raise RequestRefused(404, "not-found", f"no such TUF file {relative!r}")
        return FileResponse(file, media_type="application/octet-stream")

    async def tuf_metadata(request: Request) -> Response:
        return static_file(registry.tuf.metadata_dir, str(request.path_params["file"]))

    async def tuf_target(request: Request) -> Response:
        relative = str(request.path_params["path"])
        response = static_file(registry.tuf.targets_dir, relative)
        package = _PACKAGE_TARGET.match(relative)
        if package is not None and package.group(2).startswith(package.group(1) + "-"):
            # Hosts install through TUF: their downloads count like the API's.
            name = package.group(1)
            await run_in_threadpool(registry.count_download, name,
                                    package.group(2)[len(name) + 1:])
        return response

    v1 = "/api/v1"
    routes = [
        Route("/openapi.json", endpoint(get_openapi), methods=["GET"]),
        Route(f"{v1}/health", endpoint(health), methods=["GET"]),
        Route(f"{v1}/accounts", endpoint(post_accounts), methods=["POST"]),
        Route(f"{v1}/accounts/{{account}}/tokens", endpoint(post_tokens), methods=["POST"]),
        Route(f"{v1}/tokens/{{token_id}}", endpoint(delete_token), methods=["DELETE"]),
        Route(f"{v1}/accounts/{{account}}/keys", endpoint(get_keys), methods=["GET"]),
        Route(f"{v1}/accounts/{{account}}/keys", endpoint(post_keys), methods=["POST"]),
        Route(f"{v1}/accounts/{{account}}/keys/{{key_id}}", endpoint(delete_key),
              methods=["DELETE"]),
        Route(f"{v1}/plugins", endpoint(search), methods=["GET"]),
        Route(f"{v1}/plugins", endpoint(publish), methods=["POST"]),
        Route(f"{v1}/plugins/{{name}}", endpoint(get_plugin), methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/versions", endpoint(get_versions), methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/versions/{{version}}", endpoint(get_version),
              methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/versions/{{version}}/download", endpoint(download),
              methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/versions/{{version}}/yank", endpoint(post_yank),
              methods=["POST"]),
        Route(f"{v1}/plugins/{{name}}/versions/{{version}}/security-reviews",
              endpoint(post_security_review), methods=["POST"]),
        Route(f"{v1}/plugins/{{name}}/transfer", endpoint(post_transfer), methods=["POST"]),
        Route(f"{v1}/advisories", endpoint(get_advisories), methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/advisories", endpoint(get_plugin_advisories),
              methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/advisories", endpoint(post_advisory), methods=["POST"]),
        Route(f"{v1}/plugins/{{name}}/reviews", endpoint(get_reviews), methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/reviews", endpoint(put_review), methods=["PUT"]),
        Route(f"{v1}/plugins/{{name}}/reviews/{{user}}/moderation", endpoint(post_moderate),
              methods=["POST"]),
        Route("/tuf/metadata/{file}", endpoint(tuf_metadata), methods=["GET"]),
        Route("/tuf/targets/{path:path}", endpoint(tuf_target), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: "not-found", 405: "method-not-allowed"}.get(status, "invalid-request")
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        return _error_response(RequestRefused(status, code, f"{request.method} "
                                             f"{request.url.path}: {detail}"))

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.registry = registry
    return app
