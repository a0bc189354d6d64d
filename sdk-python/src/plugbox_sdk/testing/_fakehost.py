"""A host in plain Python that enforces a manifest's permissions like the plugbox runtime does.

:class:`FakeHost` implements every host service of ``abi/plugbox.wit`` with the runtime's
semantics (``plugbox.services._services.HostServices``): the same permission checks, the same error
kinds, quotas and size caps, with messages that name the manifest field to change. State is
in memory: :attr:`FakeHost.kv` (a dict), :attr:`FakeHost.events`, :attr:`FakeHost.logs`.

HTTP goes to a *responder* when one is given (a function from :class:`~plugbox_sdk.http.Request`
to :class:`~plugbox_sdk.http.Response`) and to the real network (``urllib``) otherwise; either
way only after the allow-list, method and size checks passed.
"""

from __future__ import annotations

import email.message  # noqa: F401 -- urllib imports these lazily; import them up front
import encodings.idna  # noqa: F401 -- so the harness's import guard never sees them
import fnmatch
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .._errors import (
    DeniedError,
    Error,
    FailureError,
    InvalidInputError,
    LimitReachedError,
)
from ..http import Request, Response
from ._spec import HttpSpec, PluginSpec

__all__ = [
    "Event", "FakeHost", "HostFunction", "LogRecord", "Responder", "dispatch_result",
    "static_responder",
]

#: Limits of the runtime's host services (plugbox.services._services), pinned equal by the tests.
KV_KEY_MAX: Final = 256
KV_VALUE_MAX: Final = 1 << 20
KV_LIST_MAX: Final = 10_000
EVENT_TOPIC_MAX: Final = 256
EVENT_PAYLOAD_MAX: Final = 1 << 20
RANDOM_MAX: Final = 1 << 20
HTTP_MAX_REDIRECTS: Final = 5
# Input caps the runtime checks before it copies a guest's argument (abi/README.md §5).
CONFIG_KEY_MAX: Final = 1024
HTTP_METHOD_MAX: Final = 32
HTTP_URL_MAX: Final = 8192
HTTP_HEADER_NAME_MAX: Final = 256
HTTP_HEADER_VALUE_MAX: Final = 8192
HTTP_HEADERS_MAX: Final = 100
#: host.call / host.dispatch (ABI 1.1), as plugbox.services._services: names 1..256 UTF-8
#: bytes, payloads at most 1 MiB, results at most 16 MiB.
HOST_NAME_MAX: Final = 256
HOST_PAYLOAD_MAX: Final = 1 << 20
HOST_RESULT_MAX: Final = 16 << 20
FORBIDDEN_REQUEST_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)
_LEVEL_NAMES: Final = ("trace", "debug", "info", "warn", "error")
_HTTP_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_BAD_VALUE: Final = re.compile(r"[\x00\r\n]")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_MANIFEST: Final = "plugbox.json"

#: A test's stand-in for the network: gets the checked request, returns the response (bytes or
#: str mean status 200 with that body). It may raise a plugbox_sdk.Error to simulate failures.
Responder = Callable[[Request], "Response | bytes | str"]

#: A test's stand-in for a host function or an extension point (ABI 1.1): gets the plugin's
#: payload bytes and returns the result: bytes as they are, ``str`` as UTF-8, anything else as
#: JSON (for a dispatch, the dispatch result: see :func:`dispatch_result`). It may raise a
#: plugbox_sdk.Error to answer with that ABI error; any other exception is a ``failure``.
HostFunction = Callable[[bytes], Any]


def dispatch_result(point: str, results: Mapping[str, Any] | None = None, *,
                    mode: str = "each", failures: Mapping[str, str] | None = None,
                    value: Any = None) -> dict[str, Any]:
    """The JSON a host answers ``host.dispatch`` with: ``results`` maps each implementing
    plugin to its value, ``failures`` each failing plugin to its error message."""
    return {
        "point": point, "mode": mode, "value": value,
        "results": [{"plugin": p, "value": v} for p, v in (results or {}).items()],
        "failures": [{"plugin": p, "error": e, "kind": "failure"}
                     for p, e in (failures or {}).items()],
    }


@dataclass(frozen=True)
class Event:
    """One event the plugin emitted."""

    topic: str
    payload: bytes

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)


@dataclass(frozen=True)
class LogRecord:
    """One record the plugin logged; ``level`` is ``trace``, ``debug``, ``info``, ``warn`` or
    ``error``."""

    level: str
    message: str


def _not_granted(service: str) -> str:
    return f"{service}: permission not granted; add \"{service}\" to permissions in {_MANIFEST}"


def static_responder(routes: Mapping[str, Response | bytes | str]) -> Responder:
    """A responder serving fixed responses by exact URL; other URLs get a 404."""

    def respond(request: Request) -> Response | bytes | str:
        found = routes.get(request.url)
        return found if found is not None else Response(404, [], b"not found")

    return respond


class FakeHost:
    """The host services of one plugin, enforcing ``spec`` (its manifest) like the runtime.

    ``config`` is the plugin configuration; ``withhold`` names services refused although the
    manifest requests them (as ``Runtime.load(withhold=...)``); ``http`` is a responder (None:
    real network). :attr:`denied` lists the service of every denied call, in order (for
    ``host``: ``"functions"`` or ``"dispatch"``, the permission that refused it).

    ``functions`` and ``dispatch`` (ABI 1.1) are the host functions and extension points the
    test offers, by name (see :data:`HostFunction`); the plugin reaches them through
    ``host.call`` / ``host.dispatch`` when its manifest grants the name, as with a real host.
    :attr:`host_calls` records ``(kind, name, payload)`` of every call that reached one.
    """

    def __init__(
        self,
        spec: PluginSpec,
        *,
        config: Mapping[str, Any] | None = None,
        withhold: frozenset[str] | set[str] = frozenset(),
        http: Responder | None = None,
        functions: Mapping[str, HostFunction] | None = None,
        dispatch: Mapping[str, HostFunction] | None = None,
    ) -> None:
        self.functions: dict[str, HostFunction] = dict(functions or {})
        self.points: dict[str, HostFunction] = dict(dispatch or {})
        self.host_calls: list[tuple[str, str, bytes]] = []
        self.spec = spec
        self.plugin = spec.name
        granted = spec.services() - set(withhold)
        self._granted = granted
        self.config: dict[str, Any] = dict(config or {})
        # Rendered once like the runtime does; a value that is not JSON fails loading, not a call.
        self._config_json = {
            k: json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            for k, v in self.config.items()
        }
        self.kv: dict[str, bytes] = {}
        self.events: list[Event] = []
        self.logs: list[LogRecord] = []
        self.denied: list[str] = []
        self.responder = http

    def granted(self, service: str) -> bool:
        """True when the plugin holds ``service``."""
        return service in self._granted

    def _deny(self, service: str, message: str | None = None) -> DeniedError:
        self.denied.append(service)
        return DeniedError(message or _not_granted(service))

    # -- log, config -------------------------------------------------------------------------

    def log(self, level: int, message: str) -> None:
        """Record a log line; dropped (and counted as denied) without the permission."""
        if not self.granted("log"):
            self.denied.append("log")  # the ABI's log has no error case
            return
        self.logs.append(LogRecord(_LEVEL_NAMES[level], message))

    def config_get(self, key: str) -> str | None:
        """The JSON text of one configuration key."""
        if not self.granted("config"):
            raise self._deny("config")
        if len(key.encode("utf-8")) > CONFIG_KEY_MAX:
            raise InvalidInputError(
                f"config: key of {len(key.encode('utf-8'))} bytes is longer than the maximum "
                f"of {CONFIG_KEY_MAX} bytes"
            )
        return self._config_json.get(key)

    def config_get_all(self) -> str:
        """The whole configuration as JSON text."""
        if not self.granted("config"):
            raise self._deny("config")
        return json.dumps(self.config, ensure_ascii=False, separators=(",", ":"))

    # -- kv ----------------------------------------------------------------------------------

    def _kv_check(self, key: str) -> None:
        if not self.granted("kv"):
            raise self._deny("kv")
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInputError("kv: key is not valid UTF-8") from None
        if not 0 < size <= KV_KEY_MAX:
            raise InvalidInputError(f"kv: key must be 1 to {KV_KEY_MAX} bytes of UTF-8")

    def kv_get(self, key: str) -> bytes | None:
        """``kv.get``."""
        self._kv_check(key)
        return self.kv.get(key)

    def kv_set(self, key: str, value: bytes) -> None:
        """``kv.set``, within the manifest's quotas (usage: UTF-8 key bytes + value bytes)."""
        self._kv_check(key)
        if len(value) > KV_VALUE_MAX:
            raise LimitReachedError(
                f"kv: value of {len(value)} bytes exceeds the maximum of {KV_VALUE_MAX} bytes"
            )
        quota = self.spec.kv
        assert quota is not None  # granted implies requested
        used_bytes = sum(len(k.encode("utf-8")) + len(v) for k, v in self.kv.items())
        old = self.kv.get(key)
        if old is None:
            keys = len(self.kv) + 1
            if keys > quota.quota_keys:
                raise self._quota("keys", quota.quota_keys, keys)
            delta = len(key.encode("utf-8")) + len(value)
        else:
            delta = len(value) - len(old)
        # As in the runtime: a write that does not grow usage is always allowed.
        if delta > 0 and used_bytes + delta > quota.quota_bytes:
            raise self._quota("bytes", quota.quota_bytes, used_bytes + delta)
        self.kv[key] = bytes(value)

    @staticmethod
    def _quota(which: str, limit: int, needed: int) -> LimitReachedError:
        field = "quota_bytes" if which == "bytes" else "quota_keys"
        return LimitReachedError(
            f"kv: quota of {limit} {which} reached (this write needs {needed}); "
            f"delete keys or raise permissions.kv.{field} in {_MANIFEST}"
        )

    def kv_delete(self, key: str) -> bool:
        """``kv.delete``."""
        self._kv_check(key)
        return self.kv.pop(key, None) is not None

    def kv_list_keys(self, prefix: str) -> list[str]:
        """``kv.list-keys``: in UTF-8 byte order (code point order), at most 10 000."""
        if not self.granted("kv"):
            raise self._deny("kv")
        if len(prefix.encode("utf-8")) > KV_KEY_MAX:
            raise InvalidInputError(
                f"kv: prefix of {len(prefix.encode('utf-8'))} bytes is longer than the maximum "
                f"of {KV_KEY_MAX} bytes (no key is longer)"
            )
        return sorted(k for k in self.kv if k.startswith(prefix))[:KV_LIST_MAX]

    def kv_increment(self, key: str, delta: int) -> int:
        """``kv.increment``: the 8-byte little-endian counter under ``key`` plus ``delta``."""
        self._kv_check(key)
        old = self.kv.get(key)
        if old is not None and len(old) != 8:
            raise InvalidInputError(
                f"kv: cannot increment {key!r}: the value under the key is {len(old)} bytes, "
                "not an 8-byte little-endian integer (the format increment keeps counters in)"
            )
        value = (0 if old is None else int.from_bytes(old, "little", signed=True)) + delta
        if not -(1 << 63) <= value < (1 << 63):
            raise InvalidInputError(f"kv: cannot increment {key!r}: the sum leaves the signed "
                                    "64-bit range")
        self.kv_set(key, value.to_bytes(8, "little", signed=True))
        return value

    def kv_compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """``kv.compare-and-set``: store ``new`` if the value is ``expected`` (None: absent)."""
        self._kv_check(key)
        if expected is not None and len(expected) > KV_VALUE_MAX:
            raise LimitReachedError(
                f"kv: value of {len(expected)} bytes exceeds the maximum of {KV_VALUE_MAX} bytes"
            )
        if self.kv.get(key) != expected:
            return False
        self.kv_set(key, new)
        return True

    # -- host (ABI 1.1) ----------------------------------------------------------------------

    def host_call(self, name: str, payload: bytes) -> bytes:
        """``host.call``: the function registered as ``name``, if the manifest grants it."""
        if not self.granted("host") or not self.spec.functions:
            raise self._deny("functions", 'host.call: no host functions granted; add '
                             f'"functions": ["<name>"] to permissions in {_MANIFEST}')
        self._host_check("host.call: function", name, payload)
        if not any(fnmatch.fnmatchcase(name, p) for p in self.spec.functions):
            raise self._deny("functions", f"host.call: function {name!r} is not granted; add it "
                             f"(or a pattern matching it) to permissions.functions in {_MANIFEST}")
        handler = self.functions.get(name)
        if handler is None:
            raise self._deny("functions", f"host.call: the test host offers no function "
                             f"{name!r}; pass functions={{{name!r}: handler}} to testing.load")
        self.host_calls.append(("call", name, bytes(payload)))
        return self._run(handler, payload, f"host function {name!r}")

    def host_dispatch(self, point: str, payload: bytes) -> bytes:
        """``host.dispatch``: the point registered as ``point``, if the manifest grants it or
        the plugin declares the point itself."""
        own = self.spec.own_points
        if not self.granted("host") or not (self.spec.dispatch or own):
            raise self._deny("dispatch", 'host.dispatch: no extension points granted; add '
                             f'"dispatch": ["<point>"] to permissions in {_MANIFEST}')
        self._host_check("host.dispatch: extension point", point, payload)
        if point not in own and not any(fnmatch.fnmatchcase(point, p)
                                        for p in self.spec.dispatch):
            raise self._deny("dispatch", f"host.dispatch: extension point {point!r} is not "
                             "granted; add it (or a pattern matching it) to "
                             f"permissions.dispatch in {_MANIFEST}")
        handler = self.points.get(point)
        if handler is None:
            raise self._deny("dispatch", f"host.dispatch: the test host offers no extension "
                             f"point {point!r}; pass dispatch={{{point!r}: handler}} to "
                             "testing.load")
        self.host_calls.append(("dispatch", point, bytes(payload)))
        return self._run(handler, payload, f"extension point {point!r}")

    @staticmethod
    def _host_check(what: str, name: str, payload: bytes) -> None:
        if not 0 < len(name.encode("utf-8")) <= HOST_NAME_MAX:
            raise InvalidInputError(f"{what} name must be 1 to {HOST_NAME_MAX} bytes of UTF-8")
        if len(payload) > HOST_PAYLOAD_MAX:
            raise LimitReachedError(
                f"{what.split(':')[0]}: payload of {len(payload)} bytes exceeds the maximum of "
                f"{HOST_PAYLOAD_MAX} bytes"
            )

    @staticmethod
    def _run(handler: HostFunction, payload: bytes, what: str) -> bytes:
        try:
            result = handler(bytes(payload))
        except Error:
            raise
        except Exception as exc:  # as the runtime: a host bug reaches the plugin as failure
            raise FailureError(f"host: {what} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(result, (bytes, bytearray, memoryview)):
            data = bytes(result)
        elif isinstance(result, str):
            data = result.encode("utf-8")
        else:
            data = json.dumps(result, separators=(",", ":")).encode("utf-8")
        if len(data) > HOST_RESULT_MAX:
            raise LimitReachedError(f"host: {what} returned {len(data)} bytes, more than the "
                                    f"maximum of {HOST_RESULT_MAX} a plugin receives")
        return data

    # -- events, clock, random ---------------------------------------------------------------

    def events_emit(self, topic: str, payload: bytes) -> None:
        """``events.emit``: checked against the manifest's topic patterns."""
        if not self.granted("events"):
            raise self._deny("events")
        if not 0 < len(topic) <= EVENT_TOPIC_MAX:
            raise InvalidInputError(f"events: topic must be 1 to {EVENT_TOPIC_MAX} characters")
        events = self.spec.events
        if events is None or not events.allows(topic):
            raise self._deny(
                "events",
                f"events: topic {topic!r} is not allowed; add it (or a pattern matching it) "
                f"to permissions.events.topics in {_MANIFEST}",
            )
        if len(payload) > EVENT_PAYLOAD_MAX:
            raise LimitReachedError(
                f"events: payload of {len(payload)} bytes exceeds the maximum of "
                f"{EVENT_PAYLOAD_MAX} bytes"
            )
        self.events.append(Event(topic, bytes(payload)))

    def clock_now(self) -> int:
        """Wall-clock ns; 0 without the permission (the ABI's clock has no error case)."""
        if not self.granted("clock"):
            self.denied.append("clock")
            return 0
        return time.time_ns()

    def clock_monotonic(self) -> int:
        """Monotonic ns; 0 without the permission."""
        if not self.granted("clock"):
            self.denied.append("clock")
            return 0
        return time.monotonic_ns()

    def random_bytes(self, n: int) -> bytes:
        """``random.bytes``."""
        if not self.granted("random"):
            raise self._deny("random")
        if n > RANDOM_MAX:
            raise LimitReachedError(f"random: {n} bytes requested, at most {RANDOM_MAX} per call")
        return os.urandom(n)

    # -- http --------------------------------------------------------------------------------

    def _check_url(self, perm: HttpSpec, url: str, method: str, origin: str | None) -> None:
        via = "" if origin is None else f" (redirected from {origin})"
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidInputError(f"http: invalid URL {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            if origin is None:
                raise InvalidInputError(
                    f"http: unsupported URL scheme {scheme!r}; use http or https"
                )
            raise self._deny("http", f"http: redirect to a non-HTTP URL {url}{via}")
        host = (parts.hostname or "").lower()
        if not host:
            raise InvalidInputError(f"http: URL has no host: {url}")
        default_port = _DEFAULT_PORTS[scheme]
        port = port or default_port
        if not perm.allows_host(host, port, default_port):
            shown = host if port == default_port else f"{host}:{port}"
            raise self._deny(
                "http",
                f"http: host {shown!r} is not allowed{via}; add {shown!r} to "
                f"permissions.http.hosts in {_MANIFEST}",
            )
        if not perm.allows_method(method):
            raise self._deny(
                "http",
                f"http: method {method} is not allowed{via}; add {method!r} to "
                f"permissions.http.methods in {_MANIFEST}",
            )

    def http_fetch(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """``http.fetch``: every check of the runtime, then the responder or the network."""
        perm = self.spec.http
        if perm is None or not self.granted("http"):
            raise self._deny("http")
        for what, text, cap in (("method", method, HTTP_METHOD_MAX), ("URL", url, HTTP_URL_MAX)):
            if len(text.encode("utf-8")) > cap:
                raise InvalidInputError(
                    f"http: {what} of {len(text.encode('utf-8'))} bytes is longer than the "
                    f"maximum of {cap} bytes"
                )
        if len(headers) > HTTP_HEADERS_MAX:
            raise LimitReachedError(
                f"http: {len(headers)} request headers, more than the maximum of "
                f"{HTTP_HEADERS_MAX}"
            )
        if not _HTTP_TOKEN.fullmatch(method):
            raise InvalidInputError(f"http: invalid method {method!r}")
        method = method.upper()
        if len(body) > perm.max_request_bytes:
            raise LimitReachedError(
                f"http: request body of {len(body)} bytes exceeds max_request_bytes "
                f"({perm.max_request_bytes}); raise permissions.http.max_request_bytes "
                f"in {_MANIFEST}"
            )
        clean: list[tuple[str, str]] = []
        for name, value in headers:
            if len(name) > HTTP_HEADER_NAME_MAX or len(value) > HTTP_HEADER_VALUE_MAX:
                raise InvalidInputError(
                    f"http: a header name is at most {HTTP_HEADER_NAME_MAX} bytes and a value "
                    f"at most {HTTP_HEADER_VALUE_MAX} bytes"
                )
            if not _HTTP_TOKEN.fullmatch(name):
                raise InvalidInputError(f"http: invalid header name {name!r}")
            if _HTTP_BAD_VALUE.search(value) or not value.isascii():
                raise InvalidInputError(
                    f"http: header {name!r} must be ASCII without CR, LF or NUL "
                    "(percent- or base64-encode other data)"
                )
            if name.lower() in FORBIDDEN_REQUEST_HEADERS:
                raise InvalidInputError(
                    f"http: header {name!r} is set by the host and may not be sent by a plugin"
                )
            clean.append((name.lower(), value))
        self._check_url(perm, url, method, None)
        if self.responder is not None:
            answer = self.responder(Request(method, url, clean, bytes(body)))
            if isinstance(answer, (bytes, str)):
                data = answer.encode("utf-8") if isinstance(answer, str) else answer
                answer = Response(200, [], data)
            resp_body = bytes(answer.body)
            if len(resp_body) > perm.max_response_bytes:
                raise self._too_big(perm)
            return answer.status, [(k.lower(), v) for k, v in answer.headers], resp_body
        return self._network(perm, method, url, clean, bytes(body))

    @staticmethod
    def _too_big(perm: HttpSpec) -> LimitReachedError:
        return LimitReachedError(
            f"http: response body exceeds max_response_bytes ({perm.max_response_bytes}); "
            f"raise permissions.http.max_response_bytes in {_MANIFEST}"
        )

    def _network(
        self, perm: HttpSpec, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        host = self

        class Redirects(urllib.request.HTTPRedirectHandler):
            # Every hop is checked against the allow-list, as the runtime does.
            max_redirections = HTTP_MAX_REDIRECTS

            def redirect_request(
                self,
                req: urllib.request.Request,
                fp: Any,
                code: int,
                msg: str,
                hdrs: Any,
                newurl: str,
            ) -> urllib.request.Request | None:
                new_method = req.get_method()
                if (code in (302, 303) and new_method != "HEAD") or (
                    code == 301 and new_method == "POST"
                ):
                    new_method = "GET"
                host._check_url(perm, newurl, new_method, req.full_url)
                return super().redirect_request(req, fp, code, msg, hdrs, newurl)

        opener = urllib.request.build_opener(
            Redirects, urllib.request.ProxyHandler({})  # no proxies from the environment
        )
        request = urllib.request.Request(url, data=body or None, method=method)
        request.add_header("User-agent", "plugbox")
        request.add_header("Accept-encoding", "identity")
        for name, value in headers:
            request.add_header(name.capitalize(), value)
        timeout = perm.timeout_ms / 1000
        try:
            try:
                response = opener.open(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                response = exc  # 4xx / 5xx are responses, not errors
            with response:
                data = response.read(perm.max_response_bytes + 1)
                if len(data) > perm.max_response_bytes:
                    raise self._too_big(perm)
                status = int(response.status if response.status is not None else 0)
                pairs = [(k.lower(), v) for k, v in response.headers.items()]
        except Error:
            raise
        except TimeoutError:
            raise FailureError(
                f"http: timeout: {method} {url} did not complete within {timeout:g} s "
                f"(limited by permissions.http.timeout_ms ({perm.timeout_ms} ms))"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FailureError(
                f"http: {method} {url} failed: {type(reason).__name__}: {reason}"
            ) from None
        return status, pairs, data
