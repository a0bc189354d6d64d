"""HostServices.http_fetch against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from plugbox.services._events import EventBus
from plugbox.services._kvstore import KvStore
from plugbox._permissions import HttpPermission, Permissions
from plugbox.services._services import FORBIDDEN_REQUEST_HEADERS, HostCallError, HostServices


@dataclass
class Server:
    port: int
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = []) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            sent = {k.lower(): v for k, v in self.headers.items()}
            server.requests.append((self.command, self.path, sent))
            route = parts.path
            if route == "/hello":
                self._send(200, b"hello", [("X-Reply", "yes"), ("X-Multi", "1"), ("X-Multi", "2")])
            elif route == "/echo":
                reply = {
                    "method": self.command,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "body": body.decode("latin-1"),
                }
                echo = [("X-Echo", self.headers.get("X-Echo", ""))]
                self._send(200, json.dumps(reply).encode(), echo)
            elif route == "/redirect":
                self._send(int(query.get("code", "302")), b"", [("Location", query["to"])])
            elif route == "/loop":
                self._send(302, b"", [("Location", "/loop")])
            elif route == "/big":
                self._send(200, b"x" * int(query["n"]))
            elif route == "/stream":
                # No Content-Length: HTTP/1.0 close-delimited body, size unknown up front.
                self.send_response(200)
                self.end_headers()
                for _ in range(int(query["chunks"])):
                    self.wfile.write(b"y" * 1024)
                    self.wfile.flush()
                    if "delay" in query:
                        server.release.wait(float(query["delay"]))
            elif route == "/slow":
                server.release.wait(5)
                self._send(200, b"late")
            elif route == "/cookie":
                self._send(200, b"", [("Set-Cookie", "session=abc; Path=/")])
            else:
                self._send(404, b"no such route")

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return Handler


class _HTTPServer(ThreadingHTTPServer):
    # The default backlog of 5 makes concurrent connects wait for a 1 s SYN retransmit.
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-body (cut-off and timeout tests) are expected here.
        pass


@pytest.fixture
def start_server() -> Iterator[Callable[[], Server]]:
    started: list[tuple[ThreadingHTTPServer, Server, threading.Thread]] = []

    def start() -> Server:
        info = Server(port=0)
        httpd = _HTTPServer(("127.0.0.1", 0), _handler(info))
        info.port = httpd.server_address[1]
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        started.append((httpd, info, thread))
        return info

    yield start
    for httpd, info, thread in started:
        info.release.set()  # wake slow handlers so shutdown is immediate
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server(start_server: Callable[[], Server]) -> Server:
    return start_server()


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KvStore]:
    store = KvStore(tmp_path / "kv.sqlite3")
    yield store
    store.close()


@pytest.fixture
def make(kv: KvStore) -> Iterator[Callable[..., HostServices]]:
    made: list[HostServices] = []

    def factory(**http: Any) -> HostServices:
        hs = HostServices(
            plugin="web",
            permissions=Permissions(http=HttpPermission(**http)),
            config={},
            kv=kv,
            events=EventBus(),
        )
        made.append(hs)
        return hs

    yield factory
    for hs in made:
        hs.close()


def fetch(
    hs: HostServices,
    url: str,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    timeout: float | None = 5.0,
) -> tuple[int, list[tuple[str, str]], bytes]:
    return hs.http_fetch(method, url, headers or [], body, timeout=timeout)


def fails(kind: str, fn: Callable[[], object]) -> HostCallError:
    with pytest.raises(HostCallError) as info:
        fn()
    assert info.value.kind == kind, info.value.message
    return info.value


def test_allowed_get(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    status, headers, body = fetch(hs, server.url("/hello"))
    assert (status, body) == (200, b"hello")
    assert ("x-reply", "yes") in headers
    assert [v for k, v in headers if k == "x-multi"] == ["1", "2"]
    status, _, body = fetch(hs, server.url("/nope"))
    assert (status, body) == (404, b"no such route")  # HTTP errors are responses, not errors


def test_wildcard_port_pattern(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=("127.0.0.*:*",))
    assert fetch(hs, server.url("/hello"))[0] == 200


def test_post_denied_when_only_get_allowed(
    server: Server, make: Callable[..., HostServices]
) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    err = fails("denied", lambda: fetch(hs, server.url("/echo"), "POST", body=b"x"))
    assert err.permission == "http"
    assert "POST" in err.message and "permissions.http.methods" in err.message
    assert hs.denied["http"] == 1
    assert server.requests == []  # refused before any network traffic


def test_method_allowed_case_insensitively(
    server: Server, make: Callable[..., HostServices]
) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",), methods=("get", "post"))
    status, _, body = fetch(hs, server.url("/echo"), "post", body=b"data")
    reply = json.loads(body)
    assert (status, reply["method"], reply["body"]) == (200, "POST", "data")


def test_host_not_allowed(
    start_server: Callable[[], Server], make: Callable[..., HostServices]
) -> None:
    allowed, other = start_server(), start_server()
    hs = make(hosts=(f"127.0.0.1:{allowed.port}",))
    for url in (other.url("/hello"), f"http://localhost:{allowed.port}/hello"):
        err = fails("denied", lambda: fetch(hs, url))
        assert "permissions.http.hosts" in err.message
    assert f"127.0.0.1:{other.port}" in err.message or "localhost" in err.message
    assert hs.denied["http"] == 2
    assert other.requests == [] and allowed.requests == []


def test_userinfo_does_not_fool_the_allow_list(
    server: Server, make: Callable[..., HostServices]
) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    err = fails("denied", lambda: fetch(hs, f"http://127.0.0.1:{server.port}@evil.invalid/"))
    assert "evil.invalid" in err.message


def test_redirect_to_other_host_denied(
    start_server: Callable[[], Server], make: Callable[..., HostServices]
) -> None:
    allowed, other = start_server(), start_server()
    hs = make(hosts=(f"127.0.0.1:{allowed.port}",))
    target = other.url("/hello")
    err = fails("denied", lambda: fetch(hs, allowed.url(f"/redirect?to={target}")))
    assert f"127.0.0.1:{other.port}" in err.message
    assert "redirected from" in err.message and "permissions.http.hosts" in err.message
    assert other.requests == []
    assert hs.denied["http"] == 1


def test_redirects_followed_within_allow_list(
    start_server: Callable[[], Server], make: Callable[..., HostServices]
) -> None:
    a, b = start_server(), start_server()
    hs = make(hosts=(f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"), methods=("GET", "POST"))
    # 302 turns POST into GET without body; relative Location resolved.
    status, _, body = fetch(hs, a.url("/redirect?to=/echo&code=302"), "POST", body=b"data")
    reply = json.loads(body)
    assert (status, reply["method"], reply["body"]) == (200, "GET", "")
    # 307 keeps method and body, across hosts; credentials do not cross origins.
    status, _, body = fetch(
        hs,
        a.url(f"/redirect?to={b.url('/echo')}&code=307"),
        "POST",
        headers=[("Authorization", "Bearer s3cret"), ("X-Keep", "1")],
        body=b"data",
    )
    reply = json.loads(body)
    assert (reply["method"], reply["body"]) == ("POST", "data")
    names = [k for k, _ in reply["headers"]]
    assert "authorization" not in names and "x-keep" in names
    assert a.requests[-1][2]["authorization"] == "Bearer s3cret"


def test_redirect_method_rechecked(server: Server, make: Callable[..., HostServices]) -> None:
    # Only POST allowed: a 303 would turn it into GET, which is not.
    hs = make(hosts=(f"127.0.0.1:{server.port}",), methods=("POST",))
    err = fails("denied", lambda: fetch(hs, server.url("/redirect?to=/echo&code=303"), "POST"))
    assert "GET" in err.message


def test_redirect_loop(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    err = fails("limit-reached", lambda: fetch(hs, server.url("/loop")))
    assert "redirects" in err.message
    assert len(server.requests) == 6  # the original request + 5 redirects


def test_redirect_to_other_scheme_denied(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    fails("denied", lambda: fetch(hs, server.url("/redirect?to=file:///etc/passwd")))


def test_oversized_response(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",), max_response_bytes=10_000)
    assert len(fetch(hs, server.url("/big?n=10000"))[2]) == 10_000
    err = fails("limit-reached", lambda: fetch(hs, server.url("/big?n=10001")))
    assert "max_response_bytes" in err.message
    # Without a Content-Length the body is cut off while streaming.
    assert len(fetch(hs, server.url("/stream?chunks=9"))[2]) == 9 * 1024
    err = fails("limit-reached", lambda: fetch(hs, server.url("/stream?chunks=100")))
    assert "max_response_bytes" in err.message


def test_oversized_request(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",), methods=("POST",), max_request_bytes=100)
    assert fetch(hs, server.url("/echo"), "POST", body=b"x" * 100)[0] == 200
    err = fails("limit-reached", lambda: fetch(hs, server.url("/echo"), "POST", body=b"x" * 101))
    assert "max_request_bytes" in err.message


def test_slow_endpoint_times_out(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    start = time.monotonic()
    err = fails("failure", lambda: fetch(hs, server.url("/slow"), timeout=0.2))
    assert time.monotonic() - start < 1.5
    assert "timeout" in err.message and "deadline" in err.message


def test_permission_timeout_applies(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",), timeout_ms=200)
    err = fails("failure", lambda: fetch(hs, server.url("/slow"), timeout=None))
    assert "timeout" in err.message and "timeout_ms" in err.message


def test_deadline_covers_the_body(server: Server, make: Callable[..., HostServices]) -> None:
    # Headers arrive at once, the body trickles: the whole fetch still respects the deadline.
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    start = time.monotonic()
    url = server.url("/stream?chunks=50&delay=0.05")
    err = fails("failure", lambda: fetch(hs, url, timeout=0.3))
    assert time.monotonic() - start < 1.0
    assert "timeout" in err.message


def test_expired_deadline(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    fails("failure", lambda: fetch(hs, server.url("/hello"), timeout=0.0))
    assert server.requests == []


def test_header_round_trip(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    status, headers, body = fetch(
        hs,
        server.url("/echo"),
        headers=[("X-Echo", "ping"), ("X-Dup", "a"), ("X-Dup", "b"), ("User-Agent", "mine")],
    )
    assert ("x-echo", "ping") in headers
    sent = json.loads(body)["headers"]
    assert [v for k, v in sent if k == "x-dup"] == ["a", "b"]
    assert ["user-agent", "mine"] in sent
    assert ["accept-encoding", "identity"] in sent


@pytest.mark.parametrize("name", sorted(FORBIDDEN_REQUEST_HEADERS))
def test_forbidden_headers_rejected(
    name: str, server: Server, make: Callable[..., HostServices]
) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    headers = [(name.title(), "x")]
    err = fails("invalid-input", lambda: fetch(hs, server.url("/echo"), headers=headers))
    assert name.title() in err.message
    assert server.requests == []


def test_invalid_requests(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    fails("invalid-input", lambda: fetch(hs, f"ftp://127.0.0.1:{server.port}/"))
    fails("invalid-input", lambda: fetch(hs, "http:///nohost"))
    fails("invalid-input", lambda: fetch(hs, "http://[::1/"))
    fails("invalid-input", lambda: fetch(hs, server.url("/"), method="GE T"))
    fails("invalid-input", lambda: fetch(hs, server.url("/"), headers=[("X-A", "a\r\nX-B: b")]))
    fails("invalid-input", lambda: fetch(hs, server.url("/"), headers=[("Bad Name", "v")]))
    fails("invalid-input", lambda: fetch(hs, server.url("/"), headers=[("X-A", "caf\u00e9")]))
    assert server.requests == []


def test_connection_refused(make: Callable[..., HostServices]) -> None:
    hs = make(hosts=("127.0.0.1:*",))
    # Port 1 on loopback: nothing listens there in a test environment.
    err = fails("failure", lambda: fetch(hs, "http://127.0.0.1:1/"))
    assert "127.0.0.1:1" in err.message


def test_no_cookie_state_between_calls(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    _, headers, _ = fetch(hs, server.url("/cookie"))
    assert ("set-cookie", "session=abc; Path=/") in headers  # the plugin sees it ...
    fetch(hs, server.url("/hello"))
    assert "cookie" not in server.requests[-1][2]  # ... but the host does not replay it


def test_closed_services_fail(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    assert fetch(hs, server.url("/hello"))[0] == 200
    hs.close()
    hs.close()
    err = fails("failure", lambda: fetch(hs, server.url("/hello")))
    assert "closed" in err.message


def test_concurrent_fetches(server: Server, make: Callable[..., HostServices]) -> None:
    hs = make(hosts=(f"127.0.0.1:{server.port}",))
    results: list[int] = []

    def work() -> None:
        for _ in range(5):
            results.append(fetch(hs, server.url("/hello"))[0])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 40
