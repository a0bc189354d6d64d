"""The host side of every plugbox service, in pure Python.

:class:`HostServices` implements the functions a plugin imports (``abi/plugbox.wit``) for one
loaded plugin. The wasm glue lifts the guest's arguments, calls a method here, and lowers the
return value -- or a :class:`HostCallError`, which becomes the ABI ``error`` variant -- back into
guest memory. Nothing here knows about wasm.

Every method checks its permission first. The hot paths (``log``, ``kv_*``, ``clock_*``) are
written to cost a few microseconds: permissions are unpacked into plain attributes at
construction, messages for the common errors are precomputed, and no helper objects are
allocated per call.

Errors shown to plugins always say what limit or permission was hit and how to change it.
"""

from __future__ import annotations

import collections
import contextvars
import fnmatch
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Final, NamedTuple, Protocol

import httpx

from ..engine._abispec import ERROR_KINDS
from .._errors import StateError, UsageError
from ._events import Event, EventBus
from ._kvstore import KvBackend, KvQuotaError, KvValueError
from .._permissions import HttpPermission, Permissions

__all__ = ["HostCallError", "HostRouter", "HostServices", "InputCap"]

# Caps on what a guest passes in. The wasm glue checks each length against its cap *before*
# copying guest memory (abi/README.md lists them per function), so what a call costs the host
# is bounded by the cap, never by the length the guest claims; the methods below check the
# same caps again for values handed to them directly.

#: Largest log message forwarded, in UTF-8 bytes: only this much of a longer one is copied out
#: of the guest, and the record ends with a marker giving the message's full size.
LOG_MESSAGE_MAX: Final = 4096
#: Default sustained log rate (records/s) and burst per plugin, the host's own notices about
#: dropped records included.
LOG_RATE: Final = 200.0
LOG_BURST: Final = 1000
#: config keys are at most CONFIG_KEY_MAX UTF-8 bytes (the host's own keys too).
CONFIG_KEY_MAX: Final = 1024
#: kv keys are 1..KV_KEY_MAX UTF-8 bytes, list-keys prefixes at most KV_KEY_MAX; values at most
#: KV_VALUE_MAX bytes.
KV_KEY_MAX: Final = 256
KV_VALUE_MAX: Final = 1 << 20
#: list-keys returns at most this many keys (the first ones in byte order).
KV_LIST_MAX: Final = 10_000
#: events topics are 1..EVENT_TOPIC_MAX characters; payloads at most EVENT_PAYLOAD_MAX bytes.
EVENT_TOPIC_MAX: Final = 256
EVENT_PAYLOAD_MAX: Final = 1 << 20
#: random.bytes returns at most this many bytes per call.
RANDOM_MAX: Final = 1 << 20
#: http.fetch request limits, in UTF-8 bytes (headers: entries); the body's cap is the plugin's
#: permissions.http.max_request_bytes.
HTTP_METHOD_MAX: Final = 32
HTTP_URL_MAX: Final = 8192
HTTP_HEADER_NAME_MAX: Final = 256
HTTP_HEADER_VALUE_MAX: Final = 8192
HTTP_HEADERS_MAX: Final = 100
#: Redirects http.fetch follows before giving up with limit-reached.
HTTP_MAX_REDIRECTS: Final = 5
#: host.call / host.dispatch (ABI 1.1): names are 1..HOST_NAME_MAX UTF-8 bytes, payloads at
#: most HOST_PAYLOAD_MAX bytes; a router's result over HOST_RESULT_MAX bytes is not handed to
#: the guest (limit-reached).
HOST_NAME_MAX: Final = 256
HOST_PAYLOAD_MAX: Final = 1 << 20
HOST_RESULT_MAX: Final = 16 << 20
#: Characters of a guest-supplied string quoted in an error message (the rest is elided).
SHOWN_MAX: Final = 80
#: A log flood ends when the plugin stayed under the rate for this long (in tokens).
_LOG_QUIET: Final = 0.05
#: Seconds between two "denied" warnings for the same service (others are counted, not logged).
DENIED_LOG_INTERVAL: Final = 10.0

#: WIT log level (index) -> logging level. ``trace`` is 5, below DEBUG, so hosts can filter it.
TRACE: Final = 5
_LOG_LEVELS: Final[dict[int, int]] = {
    0: TRACE,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}
if logging.getLevelName(TRACE) == f"Level {TRACE}":
    # Only name the level if nobody did; otherwise records would print as "Level 5".
    logging.addLevelName(TRACE, "TRACE")

# Control characters a plugin could use to forge extra log lines or garble a terminal are
# escaped (``\n`` -> ``\\n``). Tab is kept. Applied only when str.isprintable() says so.
_LOG_ESCAPES: Final[dict[int, str]] = {
    **{c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c != 0x09},
    0x0A: "\\n",
    0x0D: "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}

#: The extension points being dispatched in the current context, outermost first. Set by the
#: PluginHost around each dispatch (host/_host.py); read here so each plugin log record names
#: the point it was written under (``record.point``).
DISPATCH_CHAIN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "plugbox_host_points", default=())

#: How continuation lines of a multi-line plugin log record are indented, so no line a plugin
#: writes can start at column 0 and pass for a record of its own.
LOG_CONTINUATION: Final = "    "


def _log_text(message: str) -> tuple[str, tuple[str, ...]]:
    """(the record's message, its lines): control characters escaped line by line; a
    multi-line message (a traceback) stays multi-line, its continuation lines indented."""
    if message.isprintable():
        return message, (message,)
    lines = tuple(line.translate(_LOG_ESCAPES)
                  for line in message.replace("\r\n", "\n").split("\n"))
    if len(lines) > 1 and not lines[-1]:
        lines = lines[:-1]  # a trailing newline is not a line of its own
    return f"\n{LOG_CONTINUATION}".join(lines), lines


#: Distinct http hosts a plugin's HostServices counts by name (HostServices.http_hosts).
HTTP_HOSTS_KEPT: Final = 256

_HTTP_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_BAD_VALUE: Final = re.compile(r"[\x00\r\n]")
#: Request headers a plugin may not set, because the host owns them: Host would let a plugin
#: reach a virtual host other than the allow-listed one; the framing headers (Content-Length,
#: Transfer-Encoding) and connection-management headers are computed by the HTTP client and
#: a wrong value would corrupt or smuggle requests. They are REJECTED (invalid-input), not
#: dropped, so a plugin learns at once that its header has no effect.
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
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Headers carrying credentials, dropped when a redirect leaves the original origin.
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_MANIFEST: Final = "plugbox.json"


class HostCallError(Exception):
    """A host service refused or failed a call; becomes the ABI ``error`` value for the guest.

    Not a :class:`~plugbox.PlugboxError`: the host application never sees it unless the guest
    turns it into its own failure. ``kind`` is one of ``_abispec.ERROR_KINDS``, ``message`` is
    shown to the plugin, and ``permission`` names the service when ``kind == "denied"``.
    """

    def __init__(self, kind: str, message: str, *, permission: str | None = None) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ABI error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.permission = permission

    def __repr__(self) -> str:
        return f"HostCallError({self.kind!r}, {self.message!r}, permission={self.permission!r})"


class HostRouter(Protocol):
    """Where a plugin's ``host.call`` and ``host.dispatch`` (ABI 1.1) go: the host application
    (``plugbox.PluginHost`` implements it). ``Runtime(router=...)`` installs one.

    The runtime calls it on the calling thread, nested inside the plugin's call, and only after
    the plugin's ``permissions.functions`` / ``permissions.dispatch`` (or, for dispatch, the
    points the plugin declares itself) allowed the name. ``plugin`` is the calling plugin's
    name, ``payload`` the guest's bytes (at most :data:`HOST_PAYLOAD_MAX`). Return the result
    bytes (for ``dispatch``, the dispatch result's JSON). Raise :class:`HostCallError` for an
    error the guest should see as that ABI error; any other exception reaches the guest as
    ``failure`` (and is logged on ``plugbox.host``).
    """

    def call_function(self, plugin: str, name: str, payload: bytes) -> bytes:
        """Run host function ``name`` for ``plugin``; its result bytes."""
        ...

    def dispatch(self, plugin: str, point: str, payload: bytes) -> bytes:
        """Dispatch extension point ``point`` for ``plugin``; the dispatch result as JSON."""
        ...


def _not_granted(service: str) -> str:
    return (
        f"{service}: permission not granted; add \"{service}\" to permissions in {_MANIFEST}"
    )


_NOT_GRANTED: Final = {
    **{s: _not_granted(s) for s in ("log", "config", "kv", "events", "clock", "random", "http")},
    "functions": (f"host.call: no host functions granted; add \"functions\": [\"<name>\"] to "
                  f"permissions in {_MANIFEST}"),
    "dispatch": (f"host.dispatch: no extension points granted; add \"dispatch\": [\"<point>\"] "
                 f"to permissions in {_MANIFEST}, or declare the point in extension_points"),
}


class InputCap(NamedTuple):
    """The cap on one guest-supplied input: at most ``cap`` bytes (entries, for a list).

    Over the cap, the call fails with ``kind`` and ``message`` (formatted with ``n``, the
    length passed, and ``cap``); ``what`` names the input in ABI-violation messages.
    """

    service: str
    what: str
    cap: int
    kind: str
    message: str


CONFIG_KEY: Final = InputCap(
    "config", "config key", CONFIG_KEY_MAX, "invalid-input",
    "config: key of {n} bytes is longer than the maximum of {cap} bytes",
)
KV_KEY: Final = InputCap(
    "kv", "kv key", KV_KEY_MAX, "invalid-input",
    "kv: key must be 1 to {cap} bytes of UTF-8, got {n} bytes",
)
KV_PREFIX: Final = InputCap(
    "kv", "kv prefix", KV_KEY_MAX, "invalid-input",
    "kv: prefix of {n} bytes is longer than the maximum of {cap} bytes (no key is longer)",
)
KV_VALUE: Final = InputCap(
    "kv", "kv value", KV_VALUE_MAX, "limit-reached",
    "kv: value of {n} bytes exceeds the maximum of {cap} bytes",
)
# Topics are capped in characters; no string of more than 4 bytes per character fits.
EVENT_TOPIC: Final = InputCap(
    "events", "event topic", 4 * EVENT_TOPIC_MAX, "invalid-input",
    f"events: topic must be 1 to {EVENT_TOPIC_MAX} characters, got {{n}} bytes",
)
EVENT_PAYLOAD: Final = InputCap(
    "events", "event payload", EVENT_PAYLOAD_MAX, "limit-reached",
    "events: payload of {n} bytes exceeds the maximum of {cap} bytes",
)
HTTP_METHOD: Final = InputCap(
    "http", "http method", HTTP_METHOD_MAX, "invalid-input",
    "http: method of {n} bytes is longer than the maximum of {cap} bytes",
)
HTTP_URL: Final = InputCap(
    "http", "http url", HTTP_URL_MAX, "invalid-input",
    "http: URL of {n} bytes is longer than the maximum of {cap} bytes",
)
HTTP_HEADERS: Final = InputCap(
    "http", "header list", HTTP_HEADERS_MAX, "limit-reached",
    "http: {n} request headers, more than the maximum of {cap}",
)
HTTP_HEADER_NAME: Final = InputCap(
    "http", "header name", HTTP_HEADER_NAME_MAX, "invalid-input",
    "http: header name of {n} bytes is longer than the maximum of {cap} bytes",
)
HTTP_HEADER_VALUE: Final = InputCap(
    "http", "header value", HTTP_HEADER_VALUE_MAX, "invalid-input",
    "http: header value of {n} bytes is longer than the maximum of {cap} bytes",
)
HOST_FUNCTION_NAME: Final = InputCap(
    "functions", "host function name", HOST_NAME_MAX, "invalid-input",
    "host.call: function name must be 1 to {cap} bytes of UTF-8, got {n} bytes",
)
HOST_CALL_PAYLOAD: Final = InputCap(
    "functions", "host call payload", HOST_PAYLOAD_MAX, "limit-reached",
    "host.call: payload of {n} bytes exceeds the maximum of {cap} bytes",
)
HOST_POINT_NAME: Final = InputCap(
    "dispatch", "extension point name", HOST_NAME_MAX, "invalid-input",
    "host.dispatch: extension point name must be 1 to {cap} bytes of UTF-8, got {n} bytes",
)
HOST_DISPATCH_PAYLOAD: Final = InputCap(
    "dispatch", "dispatch payload", HOST_PAYLOAD_MAX, "limit-reached",
    "host.dispatch: payload of {n} bytes exceeds the maximum of {cap} bytes",
)
#: Its cap is each plugin's permissions.http.max_request_bytes (see HostServices.http_body_max).
HTTP_BODY: Final = InputCap(
    "http", "http body", 0, "limit-reached",
    "http: request body of {n} bytes exceeds max_request_bytes ({cap}); raise "
    f"permissions.http.max_request_bytes in {_MANIFEST}",
)


def _utf8_len(text: str) -> int:
    # isascii() is O(1) in CPython: most strings are measured without encoding them.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def utf8_prefix(data: bytes) -> bytes:
    """``data`` without a trailing, incomplete UTF-8 sequence (what a cut at a byte cap left)."""
    end = len(data)
    # Walk back over at most three continuation bytes to the lead byte of the last character.
    start = end - 1
    while start >= 0 and end - start <= 3 and data[start] & 0xC0 == 0x80:
        start -= 1
    if start < 0:
        return data
    lead = data[start]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
    return data if end - start >= need else data[:start]


def _shown(text: str) -> str:
    """``repr(text)`` for an error message, cut to :data:`SHOWN_MAX` characters."""
    if len(text) <= SHOWN_MAX:
        return repr(text)
    return f"{text[:SHOWN_MAX]!r}... ({len(text)} characters)"


def _cut(text: object) -> str:
    """``str(text)`` (a URL, an exception quoting one) cut to :data:`SHOWN_MAX` characters."""
    shown = str(text)
    return shown if len(shown) <= SHOWN_MAX else f"{shown[:SHOWN_MAX]}... ({len(shown)} characters)"


def _truncate_utf8(message: str, limit: int, total: int | None = None) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes, marker included. ``total`` is the
    size to report when ``message`` is already a cut of a longer one."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= limit and total is None:
        return message
    marker = f"... [truncated, {total if total is not None else len(data)} bytes]"
    # errors="ignore" drops a code point split by the cut instead of emitting U+FFFD.
    return data[: limit - len(marker)].decode("utf-8", "ignore") + marker


def _json_text(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"plugin config {what} is not JSON-serialisable: {exc}") from exc


def _fnmatch_any(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex equivalent to ``any(fnmatchcase(topic, p) for p in patterns)``."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class HostServices:
    """The host services of one loaded plugin.

    Shared by all instances of the plugin and called from many threads at once; every method
    is thread-safe. ``logger`` replaces the plugin's logger (default
    ``plugbox.plugin.<plugin>``), which receives what the plugin logs. ``router`` serves
    ``host.call``/``host.dispatch`` (none: both are denied); ``own_points`` are the extension
    points the plugin declares itself, which it may dispatch without a ``dispatch``
    permission. Denied calls are counted
    in :attr:`denied` and reported on ``plugbox.host`` at most once per
    :data:`DENIED_LOG_INTERVAL` seconds per service.
    """

    denied: collections.Counter[str]
    log_dropped: int

    def __init__(
        self,
        *,
        plugin: str,
        permissions: Permissions,
        config: Mapping[str, Any],
        kv: KvBackend,
        events: EventBus,
        logger: logging.Logger | None = None,
        http_client: httpx.Client | None = None,
        log_rate: float = LOG_RATE,
        log_burst: int = LOG_BURST,
        router: HostRouter | None = None,
        own_points: frozenset[str] = frozenset(),
    ) -> None:
        self.plugin = plugin
        self._router = router
        self._own_points = frozenset(own_points)
        self.permissions = permissions
        self._kv = kv
        self._events = events
        self._plugin_logger = logger or logging.getLogger(f"plugbox.plugin.{plugin}")
        self._host_logger = logging.getLogger("plugbox.host")

        # Permissions unpacked once: the hot path tests a plain attribute.
        self._log_ok = permissions.log
        self._config_ok = permissions.config
        self._clock_ok = permissions.clock
        self._random_ok = permissions.random
        kv_perm = permissions.kv
        self._kv_ok = kv_perm is not None
        self._kv_quota_bytes = kv_perm.quota_bytes if kv_perm is not None else 0
        self._kv_quota_keys = kv_perm.quota_keys if kv_perm is not None else 0
        self._events_ok = permissions.events is not None
        self._topic_match = (
            _fnmatch_any(permissions.events.topics) if permissions.events is not None else None
        )
        self._http: HttpPermission | None = permissions.http
        self._http_methods = (
            frozenset(m.upper() for m in permissions.http.methods)
            if permissions.http is not None
            else frozenset()
        )

        # Config is a snapshot rendered to JSON once; get/get-all only look strings up.
        for key in config:
            if not isinstance(key, str):
                raise UsageError(f"plugin config keys must be strings, got {key!r}")
            if _utf8_len(key) > CONFIG_KEY_MAX:
                raise UsageError(
                    f"plugin config key {_shown(key)} is longer than {CONFIG_KEY_MAX} bytes, "
                    "so the plugin could never read it; use a shorter key"
                )
        self._config_json: dict[str, str] = {k: _json_text(v, repr(k)) for k, v in config.items()}
        self._config_all = _json_text(dict(config), "object")

        # Denied-call accounting.
        self.denied = collections.Counter()
        #: Requests by ``host:port`` (allowed ones, each redirect hop too); at most
        #: HTTP_HOSTS_KEPT hosts are told apart, the rest count under "(other)".
        self.http_hosts: collections.Counter[str] = collections.Counter()
        self._denied_lock = threading.Lock()
        self._denied_logged_at: dict[str, float] = {}
        self._denied_suppressed: collections.Counter[str] = collections.Counter()

        # Log token bucket; guarded by _log_lock.
        self._log_lock = threading.Lock()
        self._log_rate = float(log_rate)
        self._log_burst = float(log_burst)
        self._log_tokens = float(log_burst)
        self._log_last = time.monotonic()
        self._log_dropping = 0  # records dropped in the current flood (0 = not flooding)
        self.log_dropped = 0
        #: Records the plugin's logger got (the host's flood notices not counted).
        self.log_records = 0

        # Metrics: host-service calls by service (counted by the engines' import glue, one
        # dict increment per call), HTTP requests (each redirect hop) and body bytes.
        self.calls: collections.Counter[str] = collections.Counter()
        self.http_requests = 0
        self.http_bytes_sent = 0
        self.http_bytes_received = 0

        # HTTP client: created on first fetch unless the host supplied one (then not closed).
        self._http_client = http_client
        self._owns_http_client = http_client is None
        self._http_lock = threading.Lock()
        self._closed = False

    # -- denial ------------------------------------------------------------------------------

    def _deny(self, service: str, message: str) -> HostCallError:
        """Count a denied call, report it (rate-limited) and return the error to raise."""
        now = time.monotonic()
        with self._denied_lock:
            self.denied[service] += 1
            last = self._denied_logged_at.get(service)
            if last is not None and now - last < DENIED_LOG_INTERVAL:
                self._denied_suppressed[service] += 1
                return HostCallError("denied", message, permission=service)
            self._denied_logged_at[service] = now
            suppressed = self._denied_suppressed.pop(service, 0)
        self._host_logger.warning(
            "plugin %r: %s call denied: %s%s",
            self.plugin,
            service,
            message,
            f" ({suppressed} similar denials not logged)" if suppressed else "",
        )
        return HostCallError("denied", message, permission=service)

    # -- input caps --------------------------------------------------------------------------

    def input_error(self, cap: InputCap, n: int, limit: int | None = None) -> HostCallError:
        """The error for a guest input of ``n`` bytes (entries) over ``cap``.

        The wasm glue calls this *instead of* copying an over-long input; the denial comes
        first, as it would from the service method. ``limit`` overrides ``cap.cap`` (for the
        per-plugin HTTP body cap).
        """
        granted = {
            "log": self._log_ok, "config": self._config_ok, "kv": self._kv_ok,
            "events": self._events_ok, "http": self._http is not None,
            "functions": bool(self.permissions.functions),
            "dispatch": bool(self.permissions.dispatch or self._own_points),
        }.get(cap.service, True)
        if not granted:
            return self._deny(cap.service, _NOT_GRANTED[cap.service])
        return HostCallError(
            cap.kind, cap.message.format(n=n, cap=cap.cap if limit is None else limit)
        )

    @property
    def http_body_max(self) -> int:
        """The largest HTTP request body this plugin may send (0 without the http grant)."""
        return self._http.max_request_bytes if self._http is not None else 0

    # -- log ---------------------------------------------------------------------------------

    def log(self, level: int, message: str, *, omitted: int = 0,
            hook: str | None = None) -> None:
        """Write one record to the plugin's logger (``plugbox.plugin.<name>``), with the
        fields ``plugin``, ``hook`` (the hook the call is in), ``point`` (the extension point
        being dispatched, or None) and ``lines`` (the message's lines) on the record.

        Over-long messages are truncated to :data:`LOG_MESSAGE_MAX` bytes (``omitted``: bytes
        of the guest's message the caller did not copy, counted in the marker); control
        characters are escaped so a plugin cannot forge log lines, except that a multi-line
        message (a traceback) stays a multi-line record whose continuation lines are indented
        by :data:`LOG_CONTINUATION`; records over the rate limit
        are dropped and counted in :attr:`log_dropped`. One WARNING announces a flood and one
        gives its count when it ends; both count against the rate limit, so the logger never
        gets more than ``log_burst + log_rate * t`` records in ``t`` seconds.
        """
        if not self._log_ok:
            raise self._deny("log", _NOT_GRANTED["log"])
        pylevel = _LOG_LEVELS.get(level)
        if pylevel is None:
            raise HostCallError("invalid-input", f"log: level must be 0..4, got {level}")
        logger = self._plugin_logger
        # Filtered-out records cost nothing further and do not use up the rate budget.
        if not logger.isEnabledFor(pylevel):
            return
        # A str of <= 1024 code points is <= 4096 UTF-8 bytes: skip encoding the common case.
        size = 0  # the message's full size in bytes, when it is over the cap
        if omitted or len(message) > LOG_MESSAGE_MAX // 4:
            size = _utf8_len(message) + omitted
            if size > LOG_MESSAGE_MAX:
                # Cut before escaping (escaping a huge message would be wasted work); the
                # marker goes on once, at the end.
                data = message.encode("utf-8", "surrogatepass")[:LOG_MESSAGE_MAX]
                message = data.decode("utf-8", "ignore")
            else:
                size = 0
        message, lines = _log_text(message)
        if size or len(message) > LOG_MESSAGE_MAX // 4:
            limit = LOG_MESSAGE_MAX
            if len(lines) > 1 and (size or _utf8_len(message) > limit):
                limit -= len(LOG_CONTINUATION)  # room to indent the marker's line
            message = _truncate_utf8(message, limit, size or None)
            if len(lines) > 1:
                # the cut may have split an indent: the marker's line is indented like the rest
                head, _, last = message.rpartition("\n")
                if not last.startswith(LOG_CONTINUATION):
                    message = f"{head}\n{LOG_CONTINUATION}{last.lstrip(' ')}"
                lines = tuple(message.split(f"\n{LOG_CONTINUATION}"))

        # Token bucket in which the host's notices cost a token like any record. One token is
        # kept back (when the burst allows) so the notice that announces a flood always has
        # one. Records that fit the rate still pass during a flood; it ends, with a notice
        # giving its count, once the plugin has logged slower than the rate for a while
        # (_LOG_QUIET seconds' worth of tokens piled up, and at least enough for the notice,
        # the record and the reserve), so a short pause does not cost two more notices.
        with self._log_lock:
            now = time.monotonic()
            tokens = self._log_tokens + (now - self._log_last) * self._log_rate
            if tokens > self._log_burst:
                tokens = self._log_burst
            self._log_last = now
            reserve = 1.0 if self._log_burst >= 3 else 0.0
            flood_over = max(2.0 + reserve, min(self._log_burst, self._log_rate * _LOG_QUIET))
            dropping = self._log_dropping
            notice = ""
            emit = True
            if not dropping:
                if tokens >= 1.0 + reserve:
                    tokens -= 1.0
                else:
                    emit = False
                    self.log_dropped += 1
                    self._log_dropping = 1
                    if tokens >= 1.0:
                        tokens -= 1.0
                        notice = (
                            f"plugin {self.plugin!r} logs faster than {self._log_rate:g} "
                            f"records/s (burst {int(self._log_burst)}); dropping records "
                            "until the rate falls"
                        )
            elif tokens >= flood_over:
                tokens -= 2.0
                self._log_dropping = 0
                notice = f"plugin {self.plugin!r}: {dropping} log records were dropped"
            elif tokens >= 1.0:
                tokens -= 1.0
            else:
                emit = False
                self.log_dropped += 1
                self._log_dropping = dropping + 1
            self._log_tokens = tokens
        if notice:
            logger.warning("%s", notice)
        if not emit:
            return
        # makeRecord + handle instead of logger.log(): skips findCaller(), a stack walk that
        # would only point at this file anyway. args=() so '%' in the message is never
        # interpreted.
        record = logger.makeRecord(
            logger.name, pylevel, "<plugin>", 0, message, (), None, "log"
        )
        fields = record.__dict__  # for handlers/formatters: %(plugin)s, %(hook)s, %(point)s
        fields["plugin"] = self.plugin
        fields["hook"] = hook
        chain = DISPATCH_CHAIN.get()
        fields["point"] = chain[-1] if chain else None
        fields["lines"] = lines
        self.log_records += 1
        logger.handle(record)

    # -- config ------------------------------------------------------------------------------

    def config_get(self, key: str) -> str | None:
        """The JSON text of ``config[key]``, or None when the key is absent."""
        if not self._config_ok:
            raise self._deny("config", _NOT_GRANTED["config"])
        if len(key) > CONFIG_KEY_MAX // 4 and _utf8_len(key) > CONFIG_KEY_MAX:
            raise self.input_error(CONFIG_KEY, _utf8_len(key))
        return self._config_json.get(key)

    def config_get_all(self) -> str:
        """The whole configuration object as JSON text."""
        if not self._config_ok:
            raise self._deny("config", _NOT_GRANTED["config"])
        return self._config_all

    # -- kv ----------------------------------------------------------------------------------

    def _check_key(self, key: str) -> None:
        # <= 64 code points is <= 256 bytes; only longer keys need encoding to measure.
        n = len(key)
        if n == 0 or (n > KV_KEY_MAX // 4 and _utf8_len(key) > KV_KEY_MAX):
            raise self.input_error(KV_KEY, _utf8_len(key))

    @staticmethod
    def _kv_failure(exc: Exception) -> HostCallError:
        if isinstance(exc, UnicodeEncodeError):
            return HostCallError("invalid-input", "kv: key is not valid UTF-8")
        return HostCallError("failure", f"kv: storage error: {exc}")

    def kv_get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""
        if not self._kv_ok:
            raise self._deny("kv", _NOT_GRANTED["kv"])
        self._check_key(key)
        try:
            return self._kv.get(self.plugin, key)
        except (sqlite3.Error, StateError, UnicodeEncodeError) as exc:
            raise self._kv_failure(exc) from None

    def kv_set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` within the plugin's quotas."""
        if not self._kv_ok:
            raise self._deny("kv", _NOT_GRANTED["kv"])
        self._check_key(key)
        if len(value) > KV_VALUE_MAX:
            raise self.input_error(KV_VALUE, len(value))
        try:
            self._kv.set(
                self.plugin,
                key,
                value,
                quota_bytes=self._kv_quota_bytes,
                quota_keys=self._kv_quota_keys,
            )
        except KvQuotaError as exc:
            raise self._kv_quota_error(exc) from None
        except (sqlite3.Error, StateError, UnicodeEncodeError) as exc:
            raise self._kv_failure(exc) from None

    def kv_delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""
        if not self._kv_ok:
            raise self._deny("kv", _NOT_GRANTED["kv"])
        self._check_key(key)
        try:
            return self._kv.delete(self.plugin, key)
        except (sqlite3.Error, StateError, UnicodeEncodeError) as exc:
            raise self._kv_failure(exc) from None

    def kv_list_keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` in byte order; the first :data:`KV_LIST_MAX` only."""
        if not self._kv_ok:
            raise self._deny("kv", _NOT_GRANTED["kv"])
        if len(prefix) > KV_KEY_MAX // 4 and _utf8_len(prefix) > KV_KEY_MAX:
            raise self.input_error(KV_PREFIX, _utf8_len(prefix))
        try:
            return self._kv.list_keys(self.plugin, prefix, KV_LIST_MAX)
        except (sqlite3.Error, StateError, UnicodeEncodeError) as exc:
            raise self._kv_failure(exc) from None

    def _kv_quota_error(self, exc: KvQuotaError) -> HostCallError:
        field = "quota_bytes" if exc.quota == "bytes" else "quota_keys"
        return HostCallError(
            "limit-reached",
            f"kv: quota of {exc.limit} {exc.quota} reached (this write needs {exc.needed}); "
            f"delete keys or raise permissions.kv.{field} in {_MANIFEST}",
        )

    def kv_increment(self, key: str, delta: int) -> int:
        """Atomically add ``delta`` to the signed 64-bit counter under ``key`` (8 bytes,
        little-endian; absent reads as 0); the new value (ABI 1.1)."""
        if not self._kv_ok:
            raise self._deny("kv", _NOT_GRANTED["kv"])
        self._check_key(key)
        try:
            return self._kv.increment(self.plugin, key, delta,
                                      quota_bytes=self._kv_quota_bytes,
                                      quota_keys=self._kv_quota_keys)
        except KvValueError as exc:
            raise HostCallError("invalid-input",
                                f"kv: cannot increment {_shown(key)}: {exc}") from None
        except KvQuotaError as exc:
            raise self._kv_quota_error(exc) from None
        except (sqlite3.Error, StateError, UnicodeEncodeError) as exc:
            raise self._kv_failure(exc) from None

    def kv_compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Atomically store ``new`` under ``key`` if its value is ``expected`` (None: absent);
        True when it did (ABI 1.1)."""
        if not self._kv_ok:
            raise self._deny("kv", _NOT_GRANTED["kv"])
        self._check_key(key)
        for value in (expected, new):
            if value is not None and len(value) > KV_VALUE_MAX:
                raise self.input_error(KV_VALUE, len(value))
        try:
            return self._kv.compare_and_set(
                self.plugin, key, None if expected is None else bytes(expected), bytes(new),
                quota_bytes=self._kv_quota_bytes, quota_keys=self._kv_quota_keys)
        except KvQuotaError as exc:
            raise self._kv_quota_error(exc) from None
        except (sqlite3.Error, StateError, UnicodeEncodeError) as exc:
            raise self._kv_failure(exc) from None

    # -- host (ABI 1.1) ----------------------------------------------------------------------

    def host_call(self, name: str, payload: bytes) -> bytes:
        """Call host function ``name`` through the router, if ``permissions.functions``
        allows it; its result bytes."""
        if not self.permissions.functions:
            raise self._deny("functions", _NOT_GRANTED["functions"])
        self._check_host_name(name, HOST_FUNCTION_NAME)
        if len(payload) > HOST_PAYLOAD_MAX:
            raise self.input_error(HOST_CALL_PAYLOAD, len(payload))
        if not self.permissions.allows_function(name):
            raise self._deny(
                "functions",
                f"host.call: function {_shown(name)} is not granted; add it (or a pattern "
                f"matching it) to permissions.functions in {_MANIFEST}",
            )
        router = self._router
        if router is None:
            raise self._deny("functions", "host.call: this host offers no host functions")
        return self._routed(f"host function {_shown(name)}",
                            lambda: router.call_function(self.plugin, name, bytes(payload)),
                            "functions")

    def host_dispatch(self, point: str, payload: bytes) -> bytes:
        """Dispatch extension point ``point`` through the router, if ``permissions.dispatch``
        allows it or the plugin declares the point itself; the dispatch result's JSON."""
        if not (self.permissions.dispatch or self._own_points):
            raise self._deny("dispatch", _NOT_GRANTED["dispatch"])
        self._check_host_name(point, HOST_POINT_NAME)
        if len(payload) > HOST_PAYLOAD_MAX:
            raise self.input_error(HOST_DISPATCH_PAYLOAD, len(payload))
        if point not in self._own_points and not self.permissions.allows_dispatch(point):
            raise self._deny(
                "dispatch",
                f"host.dispatch: extension point {_shown(point)} is not granted; add it (or "
                f"a pattern matching it) to permissions.dispatch in {_MANIFEST}",
            )
        router = self._router
        if router is None:
            raise self._deny("dispatch", "host.dispatch: this host offers no extension points")
        return self._routed(f"extension point {_shown(point)}",
                            lambda: router.dispatch(self.plugin, point, bytes(payload)),
                            "dispatch")

    def _check_host_name(self, name: str, cap: InputCap) -> None:
        n = len(name)
        if n == 0 or (n > HOST_NAME_MAX // 4 and _utf8_len(name) > HOST_NAME_MAX):
            raise self.input_error(cap, _utf8_len(name))

    def _routed(self, what: str, run: Callable[[], bytes], permission: str) -> bytes:
        """The router's answer, or the ABI error it stands for: its HostCallError as raised
        (a denial without a permission is charged to ``permission``), anything else, and a
        result that is not bytes or is too large, as ``failure`` / ``limit-reached``."""
        try:
            result = run()
        except HostCallError as exc:
            if exc.kind == "denied":
                raise self._deny(exc.permission or permission, exc.message) from None
            raise
        except Exception as exc:  # the router's bug or failure: the guest sees failure
            self._host_logger.warning("plugin %r: %s failed", self.plugin, what, exc_info=True)
            raise HostCallError(
                "failure", f"host: {what} failed: {type(exc).__name__}: {_cut(exc)}"
            ) from None
        if not isinstance(result, (bytes, bytearray, memoryview)):
            self._host_logger.warning("plugin %r: %s returned %s, not bytes", self.plugin,
                                      what, type(result).__name__)
            raise HostCallError("failure", f"host: {what} returned no bytes (a host bug)")
        if len(result) > HOST_RESULT_MAX:
            raise HostCallError(
                "limit-reached",
                f"host: {what} returned {len(result)} bytes, more than the maximum of "
                f"{HOST_RESULT_MAX} a plugin receives",
            )
        return bytes(result)

    # -- events ------------------------------------------------------------------------------

    def events_emit(self, topic: str, payload: bytes) -> None:
        """Publish an event to the host's subscribers, if the topic is allowed."""
        if not self._events_ok:
            raise self._deny("events", _NOT_GRANTED["events"])
        if not 0 < len(topic) <= EVENT_TOPIC_MAX:
            raise self.input_error(EVENT_TOPIC, _utf8_len(topic))
        if self._topic_match is None or self._topic_match.match(topic) is None:
            raise self._deny(
                "events",
                f"events: topic {_shown(topic)} is not allowed; add it (or a pattern matching "
                f"it) to permissions.events.topics in {_MANIFEST}",
            )
        if len(payload) > EVENT_PAYLOAD_MAX:
            raise self.input_error(EVENT_PAYLOAD, len(payload))
        if not self._events.has_subscribers():
            return
        if type(payload) is not bytes:  # an Event must not alias guest-owned memory
            payload = bytes(payload)
        self._events.publish(Event(self.plugin, topic, payload, time.time_ns()))

    # -- clock, random -----------------------------------------------------------------------

    def clock_now(self) -> int:
        """Wall-clock nanoseconds since the Unix epoch."""
        if not self._clock_ok:
            raise self._deny("clock", _NOT_GRANTED["clock"])
        return time.time_ns()

    def clock_monotonic(self) -> int:
        """Monotonic nanoseconds from an arbitrary origin."""
        if not self._clock_ok:
            raise self._deny("clock", _NOT_GRANTED["clock"])
        return time.monotonic_ns()

    def random_bytes(self, n: int) -> bytes:
        """``n`` cryptographically secure random bytes (from the OS CSPRNG)."""
        if not self._random_ok:
            raise self._deny("random", _NOT_GRANTED["random"])
        if n < 0:
            raise HostCallError("invalid-input", f"random: length must be >= 0, got {n}")
        if n > RANDOM_MAX:
            raise HostCallError(
                "limit-reached",
                f"random: {n} bytes requested, at most {RANDOM_MAX} per call",
            )
        return os.urandom(n)

    # -- http --------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        client = self._http_client
        if client is not None:
            return client
        with self._http_lock:
            if self._closed:
                raise HostCallError("failure", "http: the plugin's host services are closed")
            if self._http_client is None:
                self._http_client = httpx.Client(
                    # Redirects are followed by hand so every hop is checked.
                    follow_redirects=False,
                    # No proxies, .netrc credentials or CA overrides from the environment:
                    # the host's credentials must never ride along on plugin requests.
                    trust_env=False,
                    # A cookie jar that accepts nothing: a shared jar would carry state
                    # between unrelated calls and instances.
                    cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
                    # identity: the body the plugin gets is exactly what the server sent and
                    # matches the headers; max_response_bytes then bounds memory for real
                    # (no decompression bombs). A plugin may still ask for gzip itself.
                    headers={"user-agent": "plugbox", "accept-encoding": "identity"},
                )
            return self._http_client

    def _check_url(
        self, perm: HttpPermission, url: httpx.URL, method: str, origin: str | None
    ) -> None:
        """Raise unless ``method url`` is allowed; ``origin`` is the redirecting URL, if any."""
        via = "" if origin is None else f" (redirected from {_cut(origin)})"
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            if origin is None:
                raise HostCallError(
                    "invalid-input",
                    f"http: unsupported URL scheme {_shown(scheme)}; use http or https",
                )
            raise self._deny("http", f"http: redirect to a non-HTTP URL {_cut(url)}{via}")
        host = url.host
        if not host:
            raise HostCallError("invalid-input", f"http: URL has no host: {_cut(url)}")
        default_port = _DEFAULT_PORTS[scheme]
        port = url.port or default_port
        raw_host = url.raw_host.decode("ascii", "replace")
        if not perm.allows_host(host, port, default_port) and not (
            raw_host != host and perm.allows_host(raw_host, port, default_port)
        ):
            shown = _shown(host if port == default_port else f"{host}:{port}")
            raise self._deny(
                "http",
                f"http: host {shown} is not allowed{via}; add {shown} to "
                f"permissions.http.hosts in {_MANIFEST}",
            )
        if method not in self._http_methods:
            raise self._deny(
                "http",
                f"http: method {method} is not allowed{via}; add {method!r} to "
                f"permissions.http.methods in {_MANIFEST}",
            )
        where = f"{host}:{port}"
        hosts = self.http_hosts
        hosts[where if where in hosts or len(hosts) < HTTP_HOSTS_KEPT else "(other)"] += 1

    def http_fetch(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float | None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Perform an HTTP request for the plugin; returns ``(status, headers, body)``.

        ``timeout`` is the time left before the calling plugin's deadline (None: no deadline);
        the whole fetch, redirects and body included, gets ``min(timeout, timeout_ms)``.
        Redirects (at most :data:`HTTP_MAX_REDIRECTS`) are followed here, each hop re-checked
        against the allow-list; credentials are dropped when a hop leaves the origin. Request
        headers in :data:`FORBIDDEN_REQUEST_HEADERS` are rejected. Response header names are
        lower-case; the body is returned as received (no content decoding).
        """
        perm = self._http
        if perm is None:
            raise self._deny("http", _NOT_GRANTED["http"])
        for text, cap in ((method, HTTP_METHOD), (url, HTTP_URL)):
            if len(text) > cap.cap // 4 and _utf8_len(text) > cap.cap:
                raise self.input_error(cap, _utf8_len(text))
        if len(headers) > HTTP_HEADERS_MAX:
            raise self.input_error(HTTP_HEADERS, len(headers))
        if not _HTTP_TOKEN.fullmatch(method):
            raise HostCallError("invalid-input", f"http: invalid method {_shown(method)}")
        method = method.upper()
        if len(body) > perm.max_request_bytes:
            raise self.input_error(HTTP_BODY, len(body), perm.max_request_bytes)
        req_headers: list[tuple[str, str]] = []
        for name, value in headers:
            for text, cap in ((name, HTTP_HEADER_NAME), (value, HTTP_HEADER_VALUE)):
                if len(text) > cap.cap // 4 and _utf8_len(text) > cap.cap:
                    raise self.input_error(cap, _utf8_len(text))
            if not _HTTP_TOKEN.fullmatch(name):
                raise HostCallError("invalid-input", f"http: invalid header name {_shown(name)}")
            if _HTTP_BAD_VALUE.search(value) or not value.isascii():
                raise HostCallError(
                    "invalid-input",
                    f"http: header {_shown(name)} must be ASCII without CR, LF or NUL "
                    "(percent- or base64-encode other data)",
                )
            lname = name.lower()
            if lname in FORBIDDEN_REQUEST_HEADERS:
                raise HostCallError(
                    "invalid-input",
                    f"http: header {name!r} is set by the host and may not be sent by a plugin",
                )
            req_headers.append((lname, value))

        budget = perm.timeout_ms / 1000.0
        budget_from = f"permissions.http.timeout_ms ({perm.timeout_ms} ms)"
        if timeout is not None and timeout < budget:
            budget = timeout
            budget_from = "the plugin call's deadline"
        if budget <= 0:
            raise HostCallError("failure", "http: timeout: the plugin call's deadline has passed")
        deadline = time.monotonic() + budget

        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise HostCallError(
                "invalid-input", f"http: invalid URL {_shown(url)}: {_cut(exc)}"
            ) from None
        self._check_url(perm, current, method, None)
        client = self._client()
        payload: bytes = body

        def timed_out() -> HostCallError:
            return HostCallError(
                "failure",
                f"http: timeout: {method} {_cut(current)} did not complete within {budget:g} s "
                f"(limited by {budget_from})",
            )

        for hop in range(HTTP_MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out()
            try:
                request = client.build_request(
                    method, current, headers=req_headers, content=payload, timeout=remaining
                )
                response = client.send(request, stream=True)
                self.http_requests += 1  # each hop of a redirect chain is a request
                self.http_bytes_sent += len(payload)
            except httpx.TimeoutException:
                raise timed_out() from None
            except httpx.HTTPError as exc:
                raise HostCallError(
                    "failure",
                    f"http: {method} {_cut(current)} failed: {type(exc).__name__}: {_cut(exc)}",
                ) from None
            except (httpx.InvalidURL, ValueError) as exc:
                raise HostCallError(
                    "invalid-input", f"http: invalid request: {_cut(exc)}"
                ) from None
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECT_STATUSES or location is None:
                    answer = self._read_response(perm, response, deadline, timed_out)
                    self.http_bytes_received += len(answer[2])
                    return answer
                if hop == HTTP_MAX_REDIRECTS:
                    raise HostCallError(
                        "limit-reached",
                        f"http: too many redirects (more than {HTTP_MAX_REDIRECTS}) "
                        f"starting from {_cut(url)}",
                    )
                try:
                    target = current.join(location)
                except (httpx.InvalidURL, ValueError) as exc:
                    raise HostCallError(
                        "failure",
                        f"http: invalid redirect Location {_shown(location)}: {_cut(exc)}",
                    ) from None
                # Method rewriting as browsers and httpx do it.
                status = response.status_code
                new_method = method
                if (status in (302, 303) and method != "HEAD") or (
                    status == 301 and method == "POST"
                ):
                    new_method = "GET"
                self._check_url(perm, target, new_method, str(current))
                if new_method != method:
                    payload = b""
                    req_headers = [(n, v) for n, v in req_headers if n != "content-type"]
                if (target.scheme, target.host, target.port) != (
                    current.scheme,
                    current.host,
                    current.port,
                ):
                    req_headers = [(n, v) for n, v in req_headers if n not in _CREDENTIAL_HEADERS]
                method, current = new_method, target
            finally:
                response.close()
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _read_response(
        perm: HttpPermission,
        response: httpx.Response,
        deadline: float,
        timed_out: Callable[[], HostCallError],
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        limit = perm.max_response_bytes

        def too_big(size: str) -> HostCallError:
            return HostCallError(
                "limit-reached",
                f"http: response body{size} exceeds max_response_bytes ({limit}); raise "
                f"permissions.http.max_response_bytes in {_MANIFEST}",
            )

        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big(f" of {declared} bytes")
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_raw():
                total += len(chunk)
                if total > limit:
                    raise too_big(f" of more than {limit} bytes")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise timed_out()
        except httpx.TimeoutException:
            raise timed_out() from None
        except httpx.HTTPError as exc:
            raise HostCallError(
                "failure", f"http: reading the response failed: {type(exc).__name__}: {_cut(exc)}"
            ) from None
        return response.status_code, response.headers.multi_items(), b"".join(chunks)

    # -- metrics -----------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        """The service figures of :class:`plugbox.PluginMetrics` (its field names): calls and
        denials by service, kv usage against quota, HTTP requests and bytes, log records
        written and dropped. kv usage is 0/0 without a kv permission or once the store is
        closed."""
        kv_bytes = kv_keys = 0
        if self._kv_ok:
            try:
                kv_bytes, kv_keys = self._kv.usage(self.plugin)
            except (sqlite3.Error, StateError):
                pass
        with self._denied_lock:
            denials = dict(self.denied)
        return {
            "service_calls": dict(self.calls), "service_denials": denials,
            "kv_bytes": kv_bytes, "kv_keys": kv_keys,
            "kv_quota_bytes": self._kv_quota_bytes, "kv_quota_keys": self._kv_quota_keys,
            "http_requests": self.http_requests, "http_bytes_sent": self.http_bytes_sent,
            "http_bytes_received": self.http_bytes_received,
            "log_records": self.log_records, "log_dropped": self.log_dropped,
        }

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the HTTP client (if this object created it). Idempotent.

        The KV store and event bus are shared between plugins and owned by the runtime.
        """
        with self._http_lock:
            self._closed = True
            client, self._http_client = self._http_client, None
        if client is not None and self._owns_http_client:
            client.close()
