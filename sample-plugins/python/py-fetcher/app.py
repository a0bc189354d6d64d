"""py-fetcher: HTTP requests on the caller's behalf, through the host's allow-listed ``http``.

Hook ``fetch`` (JSON in, JSON out):

- payload ``{"url": "http://127.0.0.1:8000/x", "method": "GET", "headers": {"accept": "..."}}``
  (``method`` defaults to ``GET``, ``headers`` to none);
- result ``{"status": 200, "content_type": "text/plain", "body": "<text>", "bytes": 21,
  "json": <the body decoded, when it is JSON>}``. Every status, 4xx and 5xx included, is a
  result; a body that is not UTF-8 is decoded lossily.

Errors come straight from the host: ``denied`` for a host or method outside the manifest's
grant, ``invalid-input`` for a malformed URL, ``limit-reached`` for an oversized body,
``failure`` for network errors and timeouts. There is no ``socket`` module inside a component:
this host call is the only way out.
"""

import json

from plugbox_sdk import Error, InvalidInputError, hook, http, log


@hook("fetch", json=True)
def fetch(value: object) -> dict:
    """One request; the response summarised as JSON."""
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        raise InvalidInputError('expected a JSON object with a string field "url"')
    method = value.get("method", "GET")
    headers = value.get("headers", {})
    if not isinstance(method, str) or not isinstance(headers, dict):
        raise InvalidInputError('"method" must be a string and "headers" an object')
    try:
        response = http.fetch(value["url"], method, headers=headers)
    except Error as exc:
        log.warn(f"{method} {value['url']} failed: {exc}")
        raise
    log.info(f"{method} {value['url']} -> {response.status} ({len(response.body)} bytes)")
    result = {
        "status": response.status,
        "content_type": response.header("content-type"),
        "body": response.text(errors="replace"),
        "bytes": len(response.body),
    }
    try:
        result["json"] = json.loads(response.body)
    except ValueError:
        pass
    return result
