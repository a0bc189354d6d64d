"""The OpenAPI 3.1 description of the registry's JSON API, served at ``/openapi.json``. Built
from one table (:data:`OPERATIONS`); ``tests/test_registry_server.py`` checks that it names
exactly the application's routes."""

from __future__ import annotations

from typing import Any, Final

from .._version import __version__

__all__ = ["OPERATIONS", "openapi"]

_PATH_PARAMS: Final = {
    "name": "the plugin name",
    "version": "the plugin version",
    "account": "an account name",
    "token_id": "a token's id (the 16 hex digits after pbx_)",
    "key_id": "a minisign key id (16 hex digits)",
    "user": "the account that wrote the review",
    "file": "a TUF metadata file name (root.json, 3.root.json, timestamp.json, ...)",
    "path": "a TUF target path",
}

_SEARCH_PARAMS: Final = [
    ("q", "text matched against name, description and tags (every word must match)"),
    ("point", "an extension point the version implements (repeatable)"),
    ("permission", "a permission the version requests (repeatable)"),
    ("allowed_permissions", "comma-separated: versions requesting nothing beyond these"),
    ("host", "a plugbox version the version's host specifier must contain"),
    ("abi", "the host's ABI (MAJOR.MINOR): versions it can run"),
    ("sort", "downloads (default), rating, recent or name"),
    ("page", "1-based page (at most 10000)"),
    ("per_page", "results per page, 1 to max_page_size (default 20, max 100)"),
]

#: (method, path, summary, auth, body, success status)
OPERATIONS: Final[tuple[tuple[str, str, str, str, str | None, int], ...]] = (
    ("get", "/openapi.json", "This description.", "none", None, 200),
    ("get", "/api/v1/health", "200 when the server and its database answer.", "none", None,
     200),
    ("post", "/api/v1/accounts", "Create an account and its first token (admins).", "admin",
     "json: {name, admin?, reviewer?}", 201),
    ("post", "/api/v1/accounts/{account}/tokens", "Another API token for the account.",
     "self or admin", "json: {label?}", 201),
    ("delete", "/api/v1/tokens/{token_id}", "Revoke a token.", "its account or admin", None,
     200),
    ("get", "/api/v1/accounts/{account}/keys", "The account's registered minisign keys.",
     "none", None, 200),
    ("post", "/api/v1/accounts/{account}/keys", "Register a minisign public key.",
     "self or admin", "json: {public_key}", 201),
    ("delete", "/api/v1/accounts/{account}/keys/{key_id}", "Unregister a key.",
     "self or admin", None, 200),
    ("get", "/api/v1/plugins", "Search and list plugins (newest fitting version each).",
     "none", None, 200),
    ("post", "/api/v1/plugins", "Publish a .plugbox package (the raw body; ?tags=a,b).",
     "token", "application/octet-stream: the package", 201),
    ("get", "/api/v1/plugins/{name}", "A plugin: owner, tags, downloads, rating, versions, "
     "advisories.", "none", None, 200),
    ("get", "/api/v1/plugins/{name}/versions", "Every version with manifest, permissions, "
     "signers, compatibility, security reviews.", "none", None, 200),
    ("get", "/api/v1/plugins/{name}/versions/{version}", "One version.", "none", None, 200),
    ("get", "/api/v1/plugins/{name}/versions/{version}/download",
     "The package (counts a download; X-Plugbox-Sha256 header).", "none", None, 200),
    ("post", "/api/v1/plugins/{name}/versions/{version}/yank",
     "Yank a version with a reason ({yanked: false} restores it).", "owner or admin",
     "json: {reason, yanked?}", 200),
    ("post", "/api/v1/plugins/{name}/versions/{version}/security-reviews",
     "Record a security review: status and the reviewer's minisign signature over the "
     "package's sha256 (hex, ASCII).", "reviewer or admin",
     "json: {status: approved|rejected, signature, notes?}", 201),
    ("post", "/api/v1/plugins/{name}/transfer", "Give the name to another account.", "admin",
     "json: {to}", 200),
    ("get", "/api/v1/advisories", "Every security advisory, newest first.", "none", None, 200),
    ("get", "/api/v1/plugins/{name}/advisories", "A plugin's advisories.", "none", None, 200),
    ("post", "/api/v1/plugins/{name}/advisories", "Publish an advisory.", "owner or admin",
     "json: {id, affected (PEP 440 specifier), severity: low|medium|high|critical, "
     "fixed_in?, text}", 201),
    ("get", "/api/v1/plugins/{name}/reviews", "Ratings and reviews (admins also see hidden "
     "ones).", "none", None, 200),
    ("put", "/api/v1/plugins/{name}/reviews", "Write or edit your one review.", "token",
     "json: {rating: 1-5, text}", 200),
    ("post", "/api/v1/plugins/{name}/reviews/{user}/moderation", "Hide or show a review.",
     "admin", "json: {hidden, reason?}", 200),
    ("get", "/tuf/metadata/{file}", "TUF metadata (root, timestamp, snapshot, targets, "
     "delegations).", "none", None, 200),
    ("get", "/tuf/targets/{path}", "TUF target files.", "none", None, 200),
)

_ERRORS: Final = {
    "400": "invalid request", "401": "no, unknown or revoked token",
    "403": "not allowed (another's name, unregistered key, role)", "404": "not found",
    "408": "the body was too slow", "409": "exists already (version, advisory, account)",
    "413": "the body is too large", "422": "the package fails a verify check",
    "429": "rate limited (Retry-After)", "503": "busy or database unavailable (Retry-After)",
    "507": "storage full",
}


def openapi() -> dict[str, Any]:
    """The OpenAPI document."""
    paths: dict[str, dict[str, Any]] = {}
    error_ref = {"$ref": "#/components/schemas/Error"}
    for method, path, summary, auth, body, status in OPERATIONS:
        params: list[dict[str, Any]] = []
        for segment in path.split("/"):
            if segment.startswith("{"):
                key = segment.strip("{}")
                params.append({"name": key, "in": "path", "required": True,
                               "description": _PATH_PARAMS[key], "schema": {"type": "string"}})
        if method == "get" and path == "/api/v1/plugins":
            params += [{"name": n, "in": "query", "required": False, "description": d,
                        "schema": {"type": "string"}} for n, d in _SEARCH_PARAMS]
        if method == "post" and path == "/api/v1/plugins":
            params.append({"name": "tags", "in": "query", "required": False,
                           "description": "comma-separated tags (at most 16)",
                           "schema": {"type": "string"}})
        op: dict[str, Any] = {
            "summary": summary,
            "description": f"Authorization: {auth}.",
            "parameters": params,
            "responses": {str(status): {"description": "success",
                                        "content": {"application/json": {}}},
                          **{code: {"description": text,
                                    "content": {"application/json": {"schema": error_ref}}}
                             for code, text in _ERRORS.items()}},
        }
        if auth != "none":
            op["security"] = [{"token": []}]
        if body is not None:
            media = ("application/octet-stream" if body.startswith("application/octet")
                     else "application/json")
            op["requestBody"] = {"required": True, "description": body,
                                 "content": {media: {}}}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "plugbox registry", "version": __version__,
                 "description": "Publish, discover and download plugbox plugins; see "
                                "docs/registry.md."},
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "an API token, pbx_<id>_<secret>"}},
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "detail": {}}}}}},
        },
    }
