"""Outbound HTTP to hosts the plugin is allowed to reach (``http`` permission).

::

    from plugbox_sdk import http
    resp = http.fetch("http://127.0.0.1:8000/hello.txt", headers={"accept": "text/plain"})
    if resp.ok:
        text = resp.text()

Inside a component the sandbox refuses to create sockets: this host call, checked against
the manifest, is the only way out. Errors:
:class:`~plugbox_sdk.DeniedError` without the permission, or when the URL's host and port or
the method are not among those the manifest requests;
:class:`~plugbox_sdk.InvalidInputError` for a malformed URL, method or header;
:class:`~plugbox_sdk.LimitReachedError` when a body exceeds the granted size caps;
:class:`~plugbox_sdk.FailureError` for network errors and timeouts. Every status, 4xx and 5xx
included, is a :class:`Response`; :meth:`Response.raise_for_status` turns those into errors.
"""

from __future__ import annotations

import json as _json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _host
from ._errors import FailureError, InvalidInputError

__all__ = ["Request", "Response", "fetch"]

Headers = Mapping[str, str] | Iterable[tuple[str, str]]

_MISSING: Any = object()


@dataclass(frozen=True)
class Request:
    """An HTTP request (the WIT record ``request``), as a test responder receives it."""

    #: The method in upper case: ``GET``, ``POST``, ...
    method: str
    #: An absolute ``http://`` or ``https://`` URL.
    url: str
    #: Header names and values, in order; a name may repeat.
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The request body (empty for none).
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first_header(self.headers, name)


@dataclass(frozen=True)
class Response:
    """An HTTP response (the WIT record ``response``)."""

    #: The status code.
    status: int
    #: Header names (lower case, as the host reports them) and values, in order.
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The response body.
    body: bytes = b""

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first_header(self.headers, name)

    def text(self, errors: str = "strict") -> str:
        """The body decoded as UTF-8 (``errors="replace"`` for a lossy decode).

        Raises:
            InvalidInputError: the body is not UTF-8 (with ``errors="strict"``).
        """
        try:
            return self.body.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"http: the response body is not UTF-8: {exc}") from None

    def json(self) -> Any:
        """The body decoded as JSON.

        Raises:
            InvalidInputError: the body is not JSON.
        """
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"http: the response body is not JSON: {exc}") from None

    def raise_for_status(self) -> Response:
        """``self`` for a 2xx status.

        Raises:
            FailureError: any other status (naming it).
        """
        if not self.ok:
            raise FailureError(f"http: status {self.status}")
        return self


def _first_header(headers: list[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def fetch(
    url: str,
    method: str = "GET",
    *,
    headers: Headers | None = None,
    body: bytes | bytearray | memoryview | str = b"",
    json: Any = _MISSING,
) -> Response:
    """Send one request through the host and return the response (any status).

    ``headers`` is a mapping or a list of ``(name, value)`` pairs. ``body`` is bytes (``str`` is
    sent as UTF-8); ``json=value`` sends ``value`` as a JSON body with
    ``content-type: application/json`` instead. Redirects are followed by the host, each hop
    checked against the allow-list.
    """
    pairs: list[tuple[str, str]] = []
    if headers is not None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        pairs = [(str(k), str(v)) for k, v in items]
    if json is not _MISSING:
        if body:
            raise ValueError("http.fetch: pass either body= or json=, not both")
        data = _json.dumps(json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if _first_header(pairs, "content-type") is None:
            pairs.append(("content-type", "application/json"))
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = bytes(body)
    status, resp_headers, resp_body = _host.current().http_fetch(
        method.upper(), url, pairs, data
    )
    return Response(status, list(resp_headers), bytes(resp_body))
