"""The registry server (issue 12 §1): a real uvicorn process on 127.0.0.1 started by the tests
(``plugbox registry init`` + ``plugbox registry serve``), real packages built from the Rust
echo sample, packed and signed with the trust API; publishing and its refusals, hostile and
slow uploads, search, yanks, advisories, reviews, security reviews, download counts and rate
limits, all through HTTP."""

from __future__ import annotations

import contextlib

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugbox.trust._package import write_package
from plugbox.trust._signing import SecretKey, sign_bytes

REPO = Path(__file__).resolve().parent.parent

#: The server's limits in these tests: small bodies and short deadlines, so the hostile cases
#: are quick; writes effectively unlimited except in the rate-limit test.
TEST_LIMITS = {"max_upload_bytes": 2 << 20, "body_timeout_s": 3.0, "idle_timeout_s": 1.0,
               "write_burst": 10_000, "writes_per_minute": 600_000.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plugbox_cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys; from plugbox.cli import main; "
                           "sys.exit(main())", *args], capture_output=True, text=True,
                          timeout=120, **kwargs)


class Server:
    """``plugbox registry serve DIR`` in a subprocess on a free port; :meth:`stop` ends it."""

    def __init__(self, directory: Path, *, db_url: str | None = None,
                 preexec: Any = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["registry", "serve", str(directory), "--port", str(self.port)]
        if db_url:
            args += ["--db-url", db_url]
        self.log = open(directory.parent / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from plugbox.cli import main; sys.exit(main())",
             *args], stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=preexec)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the registry server did not start: "
                                     + (directory.parent / f"server-{self.port}.log").read_text())
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def init_registry_cli(directory: Path, limits: dict[str, Any] | None = None,
                      db_url: str | None = None) -> str:
    """``plugbox registry init DIR --json``; the admin token."""
    args = ["registry", "init", str(directory), "--json",
            "--limits", json.dumps(limits or TEST_LIMITS)]
    if db_url:
        args += ["--db-url", db_url]
    done = plugbox_cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and doc["token"].startswith("pbx_")
    return str(doc["token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def echo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Rust echo sample, built from source and staged."""
    from plugbox.authoring._build import build_rust_plugins

    out = tmp_path_factory.mktemp("registry-echo")
    return build_rust_plugins(REPO / "sample-plugins" / "rust", out, names=["echo"])["echo"]


_made = iter(range(1_000_000))


def make_package(echo: Path, key: SecretKey | None, *, name: str = "echo",
                 version: str = "0.1.0", readme: bytes | None = None,
                 **manifest: Any) -> bytes:
    """A .plugbox of the echo module with ``name``/``version``/``manifest`` fields changed,
    signed by ``key`` (unsigned when None), packed with write_package."""
    work = echo.parent / f"pkg-{next(_made)}"
    shutil.copytree(echo, work)
    doc = json.loads((work / "plugbox.json").read_text())
    doc.update(name=name, version=version, **manifest)
    data = json.dumps(doc, indent=2).encode()
    (work / "plugbox.json").write_bytes(data)
    if readme is not None:
        (work / "README.md").write_bytes(readme)
    if key is not None:
        (work / "plugbox.json.minisig").write_text(
            sign_bytes(data, key, trusted_comment=f"{name} {version}").to_text())
    out = work.parent / f"{work.name}.plugbox"
    write_package(work, out)
    return out.read_bytes()


def files_under(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


class Reg:
    """A running registry and its admin: helpers the tests share."""

    def __init__(self, directory: Path, server: Server, admin: str) -> None:
        self.directory = directory
        self.server = server
        self.url = server.url
        self.admin = admin
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def account(self, name: str, *, reviewer: bool = False, admin: bool = False,
                key: SecretKey | None = None) -> str:
        r = self.http.post("/api/v1/accounts", headers=auth(self.admin),
                           json={"name": name, "reviewer": reviewer, "admin": admin})
        assert r.status_code == 201, r.text
        token = str(r.json()["token"])
        if key is not None:
            r = self.http.post(f"/api/v1/accounts/{name}/keys", headers=auth(token),
                               json={"public_key": key.public_key().to_text()})
            assert r.status_code == 201, r.text
        return token

    def publish(self, token: str, data: bytes, tags: str | None = None) -> httpx.Response:
        params = {"tags": tags} if tags else None
        return self.http.post("/api/v1/plugins", headers={**auth(token),
                              "Content-Type": "application/octet-stream"},
                              content=data, params=params)

    def packages(self) -> set[str]:
        return files_under(self.directory / "packages")


@contextlib.contextmanager
def running_registry(directory: Path) -> Iterator[Reg]:
    """A registry initialised in ``directory`` (``plugbox registry init``) and served on
    127.0.0.1 until the block ends."""
    admin = init_registry_cli(directory)
    server = Server(directory)
    try:
        yield Reg(directory, server, admin)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reg]:
    with running_registry(tmp_path_factory.mktemp("registry") / "reg") as running:
        yield running


def error_of(r: httpx.Response) -> tuple[int, str]:
    doc = r.json()
    assert set(doc) == {"error"} and isinstance(doc["error"]["message"], str), doc
    return r.status_code, str(doc["error"]["code"])


# --------------------------------------------------------------------------------------------


def test_openapi_names_every_route(reg: Reg) -> None:
    from plugbox.registry import Registry, create_app

    doc = reg.http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    with Registry(reg.directory) as registry:
        app = create_app(registry)
        routes = {(m, r.path.replace("{path:path}", "{path}")) for r in app.routes
                  for m in (r.methods or ()) if m != "HEAD"}  # type: ignore[attr-defined]
    assert described == routes
    for ops in doc["paths"].values():
        for op in ops.values():
            assert "429" in op["responses"] and op["summary"]


def test_publish_a_real_package_and_read_it_back(reg: Reg, echo_dir: Path) -> None:
    key = SecretKey.generate()
    alice = reg.account("alice", key=key)
    data = make_package(echo_dir, key, name="echo", version="0.1.0")
    before = reg.packages()
    r = reg.publish(alice, data, tags="text,Demo")
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["name"] == "echo" and doc["version"] == "0.1.0"
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["signers"][0]["key_id"] == key.key_id_hex
    assert doc["manifest"]["hooks"] == ["echo"]
    assert doc["compatibility"]["abi"] == "1.0"
    assert doc["compatibility"]["host"] == ">=0.1,<1.0"
    assert doc["publisher"] == "alice" and doc["yanked"] is False
    assert reg.packages() - before == {"echo/echo-0.1.0.plugbox"}

    plugin = reg.http.get("/api/v1/plugins/echo").json()
    assert plugin["owner"] == "alice" and plugin["tags"] == ["text", "demo"]
    assert plugin["latest"] == "0.1.0"

    got = reg.http.get(doc["download_url"])
    assert got.status_code == 200 and got.content == data
    assert got.headers["x-plugbox-sha256"] == doc["sha256"]
    reg.http.get(doc["download_url"])
    assert reg.http.get("/api/v1/plugins/echo/versions/0.1.0").json()["downloads"] == 2
    assert reg.http.get("/api/v1/plugins/echo").json()["downloads"] == 2

    # The package is a TUF target, and the metadata is served.
    assert reg.http.get("/tuf/metadata/timestamp.json").status_code == 200
    assert reg.http.get("/tuf/metadata/1.root.json").status_code == 200
    from plugbox.registry._tuf import TufRepository

    index = TufRepository(reg.directory / "tuf").index()
    target = index["plugins"]["echo"]["versions"]["0.1.0"]
    assert target["sha256"] == doc["sha256"]
    # The author's minisign signature travels in the publisher's delegated role.
    repo = TufRepository(reg.directory / "tuf")
    newest = max(int(p.name.split(".")[0]) for p in repo.metadata_dir.glob("*.pub-alice.json"))
    role = reg.http.get(f"/tuf/metadata/{newest}.pub-alice.json").json()
    custom = role["signed"]["targets"]["plugins/echo/echo-0.1.0.plugbox"]["custom"]
    signature = zipfile.ZipFile(io.BytesIO(data)).read("plugbox.json.minisig").decode()
    assert custom["signatures"]["plugbox.json.minisig"] == signature
    served = reg.http.get(f"/tuf/targets/plugins/echo/{doc['sha256']}.echo-0.1.0.plugbox")
    assert served.status_code == 200 and served.content == data
    assert error_of(reg.http.get("/tuf/targets/../registry.json"))[0] in (400, 404)
    assert error_of(reg.http.get("/tuf/metadata/..%2Fkeys%2Froot.pem"))[0] in (400, 404)


def test_publish_refusals_leave_nothing_behind(reg: Reg, echo_dir: Path) -> None:
    key, other_key = SecretKey.generate(), SecretKey.generate()
    owner = reg.account("owner1", key=key)
    intruder = reg.account("intruder", key=other_key)
    keyless = reg.account("keyless")
    assert reg.publish(owner, make_package(echo_dir, key, name="owned")).status_code == 201
    before = reg.packages()

    # Another publisher's name.
    r = reg.publish(intruder, make_package(echo_dir, other_key, name="owned", version="9.0.0"))
    assert error_of(r) == (403, "forbidden") and "owner1" in r.json()["error"]["message"]
    # A key the publisher has not registered (the intruder's key, on the owner's account).
    r = reg.publish(owner, make_package(echo_dir, other_key, name="owned", version="0.2.0"))
    assert error_of(r) == (403, "untrusted-signer")
    # Unsigned.
    r = reg.publish(owner, make_package(echo_dir, None, name="owned", version="0.2.0"))
    assert error_of(r) == (403, "untrusted-signer")
    # No key registered at all.
    r = reg.publish(keyless, make_package(echo_dir, key, name="keyless-plugin"))
    assert error_of(r) == (403, "no-keys")
    # A version already published.
    r = reg.publish(owner, make_package(echo_dir, key, name="owned", version="0.1.0"))
    assert error_of(r) == (409, "version-exists")
    # A module that does not match the manifest's sha256 (signed, so only the hash fails).
    r = reg.publish(owner, make_package(echo_dir, key, name="owned", version="0.3.0",
                                        module={"path": "plugin.wasm", "sha256": "0" * 64}))
    assert error_of(r) == (422, "invalid-package")
    assert r.json()["error"]["detail"]["check"] == "module"
    # A manifest the schema refuses.
    r = reg.publish(owner, make_package(echo_dir, key, name="owned", version="0.4.0",
                                        hooks=[]))
    assert error_of(r) == (422, "invalid-package")
    # Unknown, malformed and revoked tokens.
    r = reg.publish("pbx_0123456789abcdef_nope", make_package(echo_dir, key, name="owned",
                                                               version="0.5.0"))
    assert error_of(r) == (401, "unauthorized")
    assert error_of(reg.http.post("/api/v1/plugins", content=b"x"))[0] == 401
    extra = reg.http.post("/api/v1/accounts/owner1/tokens", headers=auth(owner), json={})
    spare = extra.json()["token"]
    assert reg.http.delete(f"/api/v1/tokens/{extra.json()['token_id']}",
                           headers=auth(owner)).status_code == 200
    r = reg.publish(spare, make_package(echo_dir, key, name="owned", version="0.5.0"))
    assert error_of(r) == (401, "unauthorized") and "revoked" in r.json()["error"]["message"]

    assert reg.packages() == before
    versions = reg.http.get("/api/v1/plugins/owned/versions").json()["versions"]
    assert [v["version"] for v in versions] == ["0.1.0"]
    assert error_of(reg.http.get("/api/v1/plugins/keyless-plugin")) == (404, "not-found")
    assert not [f for f in files_under(reg.directory / "packages") if ".upload-" in f]


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in entries:
            zf.writestr(name, content)
    return buffer.getvalue()


def test_hostile_uploads_are_refused_and_leave_nothing(reg: Reg, echo_dir: Path) -> None:
    key = SecretKey.generate()
    token = reg.account("hostile", key=key)
    good = make_package(echo_dir, key, name="hostile-target")
    manifest = zipfile.ZipFile(io.BytesIO(good)).read("plugbox.json")
    before = reg.packages()
    hostile = {
        "not a zip": b"GIF89a" + os.urandom(200),
        "traversal": _zip([("plugbox.json", manifest), ("../evil.wasm", b"\0asm")]),
        "unknown member": _zip([("plugbox.json", manifest), ("plugin.wasm", b"\0asm"),
                                ("run.sh", b"#!/bin/sh")]),
        "bomb": _zip([("plugbox.json", manifest), ("plugin.wasm", b"\0" * (20 << 20))]),
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }
    for what, body in hostile.items():
        r = reg.publish(token, body)
        assert error_of(r)[0] in (413, 422), (what, r.text)
    # Oversized: announced by Content-Length (refused before reading) and streamed without it.
    big = os.urandom((2 << 20) + 1)
    assert error_of(reg.publish(token, big)) == (413, "too-large")

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield os.urandom(64 << 10)

    r = reg.http.post("/api/v1/plugins", headers=auth(token), content=chunks())
    assert error_of(r) == (413, "too-large")
    assert reg.packages() == before
    assert error_of(reg.http.get("/api/v1/plugins/hostile-target"))[0] == 404


def _raw_request(reg: Reg, token: str, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", reg.server.port), timeout=10)
    sock.sendall((f"POST /api/v1/plugins HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
                  f"\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}"
                  f"\r\n\r\n").encode())
    return sock


def _reply(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    sock.settimeout(10)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError:
        pass
    return out.decode(errors="replace")


def test_slow_body_and_disconnect_mid_upload(reg: Reg, echo_dir: Path) -> None:
    key = SecretKey.generate()
    token = reg.account("slowpoke", key=key)
    data = make_package(echo_dir, key, name="slow-plugin")
    before = reg.packages()
    # A body that stalls: refused after the idle deadline (1 s here) with 408.
    sock = _raw_request(reg, token, len(data))
    sock.sendall(data[:100])
    started = time.monotonic()
    reply = _reply(sock)
    sock.close()
    assert reply.startswith("HTTP/1.1 408") and '"too-slow"' in reply
    assert time.monotonic() - started < 5
    # A trickle that never stalls long enough is still cut by the whole-body deadline (3 s).
    sock = _raw_request(reg, token, len(data))
    started = time.monotonic()
    reply = ""
    for i in range(100):
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            break
        sock.settimeout(0.5)
        try:
            first = sock.recv(65536)
        except socket.timeout:
            continue
        reply = first.decode(errors="replace") + _reply(sock)
        break
    sock.close()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert 2.5 < time.monotonic() - started < 8
    # A client that leaves halfway.
    for _ in range(5):
        sock = _raw_request(reg, token, len(data))
        sock.sendall(data[: len(data) // 2])
        sock.close()
    time.sleep(0.3)
    assert reg.http.get("/api/v1/health").status_code == 200
    assert reg.packages() == before
    assert error_of(reg.http.get("/api/v1/plugins/slow-plugin"))[0] == 404
    # And the same package, sent whole, is accepted.
    assert reg.publish(token, data).status_code == 201


def test_concurrent_publishes_of_one_version_exactly_one_wins(reg: Reg, echo_dir: Path) -> None:
    key = SecretKey.generate()
    token = reg.account("racer", key=key)
    # Different bytes (trusted comments differ), same name and version.
    bodies = [make_package(echo_dir, key, name="raced", version="1.0.0",
                           description=f"attempt {i}") for i in range(8)]
    results: list[int] = []
    barrier = threading.Barrier(len(bodies))

    def go(body: bytes) -> None:
        with httpx.Client(base_url=reg.url, timeout=60) as c:
            barrier.wait()
            results.append(c.post("/api/v1/plugins", headers=auth(token), content=body)
                           .status_code)

    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * 7
    assert reg.packages() >= {"raced/raced-1.0.0.plugbox"}
    assert not [f for f in reg.packages() if f.startswith("raced/") and ".upload-" in f]
    winner = reg.http.get("/api/v1/plugins/raced/versions/1.0.0/download").content
    assert winner in bodies


def test_burst_of_uploads(reg: Reg, echo_dir: Path) -> None:
    key = SecretKey.generate()
    token = reg.account("burst", key=key)
    bodies = [make_package(echo_dir, key, name="bursty", version=f"0.{i}.0") for i in range(24)]
    codes: list[int] = []

    def go(body: bytes) -> None:
        with httpx.Client(base_url=reg.url, timeout=60) as c:
            for _ in range(50):
                r = c.post("/api/v1/plugins", headers=auth(token), content=body)
                if r.status_code == 503:  # busy: the Retry-After the server asks for
                    assert r.json()["error"]["code"] == "busy" and r.headers["retry-after"]
                    time.sleep(0.2)
                    continue
                codes.append(r.status_code)
                return

    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [201] * len(bodies)
    versions = reg.http.get("/api/v1/plugins/bursty/versions").json()["versions"]
    assert len(versions) == len(bodies)
    assert versions[0]["version"] == "0.23.0"  # newest first, by version not by text


def test_registry_cli_init_account_and_refusals(tmp_path: Path) -> None:
    directory = tmp_path / "reg"
    init_registry_cli(directory)
    assert {"registry.json", "registry.sqlite3"} <= {p.name for p in directory.iterdir()}
    assert (directory / "tuf" / "metadata" / "1.root.json").is_file()
    assert (directory / "tuf" / "keys" / "root.pem").is_file()
    # A second init into the same (now non-empty) directory is refused.
    done = plugbox_cli("registry", "init", str(directory), "--json")
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["code"] == "invalid-request"
    done = plugbox_cli("registry", "account", str(directory), "ops2", "--admin", "--json")
    doc = json.loads(done.stdout)
    assert done.returncode == 0 and doc["token"].startswith("pbx_") and doc["admin"] is True
    done = plugbox_cli("registry", "account", str(directory), "ops2", "--json")
    assert done.returncode == 1 and json.loads(done.stdout)["error"]["code"] == "conflict"
    # The root key kept offline.
    offline = tmp_path / "usb"
    done = plugbox_cli("registry", "init", str(tmp_path / "reg2"), "--offline-root-dir",
                       str(offline), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (offline / "root.pem").is_file()
    assert not (tmp_path / "reg2" / "tuf" / "keys" / "root.pem").exists()
    # Serving something that is not a registry fails with the fix.
    done = plugbox_cli("registry", "serve", str(tmp_path), "--port", "1", "--json")
    assert done.returncode == 2 and "plugbox registry init" in done.stdout
