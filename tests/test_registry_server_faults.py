"""The registry server under faults (issue 12 §4): a full disk (the server process runs under
RLIMIT_FSIZE, so a package file cannot be written), and PostgreSQL with two stateless server
processes behind one database: a publish on one is seen by the other, concurrent publishes
of one version across both have exactly one winner, and a database restart is answered with
typed 503s and then recovered from, leaving nothing behind."""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugbox.trust._signing import SecretKey
from tests.test_registry_server import (
    Reg,
    Server,
    auth,
    echo_dir,
    error_of,
    init_registry_cli,
    make_package,
)

__all__ = ["echo_dir"]

FSIZE_LIMIT = 400 << 10


def test_full_disk_is_a_typed_error_and_leaves_nothing(tmp_path: Path, echo_dir: Path) -> None:
    directory = tmp_path / "reg"
    admin = init_registry_cli(directory)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))

    server = Server(directory, preexec=limit_file_size)
    try:
        reg = Reg(directory, server, admin)
        key = SecretKey.generate()
        token = reg.account("filler", key=key)
        before = reg.packages()
        # Incompressible READMEs: one larger than any file the server may write (it fails
        # while the package is checked), one that fits while the whole package does not (it
        # fails while the package is stored).
        for size, step in ((600 << 10, "checking"), (FSIZE_LIMIT - (10 << 10), "storing")):
            big = make_package(echo_dir, key, name="big", readme=os.urandom(size))
            assert len(big) > FSIZE_LIMIT
            r = reg.publish(token, big)
            assert error_of(r) == (507, "storage-full"), r.text
            assert "nothing was published" in r.json()["error"]["message"]
            assert f"while {step} the package" in r.json()["error"]["message"]
            assert r.headers["retry-after"]
        assert reg.packages() == before
        assert error_of(reg.http.get("/api/v1/plugins/big")) == (404, "not-found")
        # The server survives and still takes what fits.
        small = make_package(echo_dir, key, name="big", version="0.1.1")
        assert reg.publish(token, small).status_code == 201
        assert reg.http.get("/api/v1/plugins/big").json()["latest"] == "0.1.1"
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="module")
def pg() -> Iterator[Any]:
    """A PostgreSQL server of this module's own (the tests restart it)."""
    from tests import _pg

    reason = _pg.missing_reason()
    if reason is not None:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    server = _pg.start_server()
    try:
        yield server
    finally:
        server.stop()


def pg_ctl(server: Any, *args: str) -> None:
    server._run(str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), *args)


def pg_start(server: Any) -> None:
    options = " ".join([
        "-c listen_addresses=127.0.0.1", f"-p {server.port}",
        f"-c unix_socket_directories={server.root}", "-c fsync=off",
        "-c synchronous_commit=off", "-c max_connections=100", "-c shared_buffers=16MB"])
    pg_ctl(server, "-l", str(server.root / "server.log"), "-o", options, "-w", "-t", "60",
           "start")


@pytest.fixture(scope="module")
def two(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Reg, Reg]]:
    """Two server processes on one registry directory and one PostgreSQL database."""
    directory = tmp_path_factory.mktemp("registry-pg") / "reg"
    url = pg.create_database("registry")
    admin = init_registry_cli(directory, db_url=url)
    assert not (directory / "registry.sqlite3").exists()
    a = Server(directory)
    b = Server(directory)
    try:
        yield Reg(directory, a, admin), Reg(directory, b, admin)
    finally:
        a.stop()
        b.stop()


def test_two_processes_share_one_postgres_database(two: tuple[Reg, Reg],
                                                   echo_dir: Path) -> None:
    a, b = two
    key = SecretKey.generate()
    token = a.account("pgpub", key=key)
    # A's search catalogue is cached now; B's publish must move it (the shared generation).
    assert a.http.get("/api/v1/plugins", params={"q": "shared"}).json()["items"] == []
    r = b.publish(token, make_package(echo_dir, key, name="shared", version="0.1.0"))
    assert r.status_code == 201, r.text
    assert a.http.get("/api/v1/plugins/shared").json()["latest"] == "0.1.0"
    assert [i["name"] for i in a.http.get("/api/v1/plugins", params={"q": "shared"})
            .json()["items"]] == ["shared"]
    a.http.get("/api/v1/plugins/shared/versions/0.1.0/download")
    b.http.get("/api/v1/plugins/shared/versions/0.1.0/download")
    assert a.http.get("/api/v1/plugins/shared").json()["downloads"] == 2

    # Concurrent publishes of one version through both processes: exactly one wins.
    bodies = [make_package(echo_dir, key, name="shared", version="0.2.0",
                           description=f"try {i}") for i in range(8)]
    codes: list[int] = []
    barrier = threading.Barrier(len(bodies))

    def go(i: int) -> None:
        with httpx.Client(base_url=(a if i % 2 else b).url, timeout=60) as c:
            barrier.wait()
            codes.append(c.post("/api/v1/plugins", headers=auth(token),
                                content=bodies[i]).status_code)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201] + [409] * 7
    found = a.http.get("/api/v1/plugins", params={"q": "shared"}).json()["items"]
    assert [(i["name"], i["version"]) for i in found] == [("shared", "0.2.0")]
    assert b.http.get("/api/v1/plugins/shared/versions/0.2.0/download").content in bodies
    assert not [f for f in a.packages() if ".upload-" in f]


def test_database_restart(two: tuple[Reg, Reg], pg: Any, echo_dir: Path) -> None:
    a, b = two
    key = SecretKey.generate()
    token = a.account("restarter", key=key)
    before = a.packages()
    pg_ctl(pg, "-m", "fast", "-w", "stop")
    try:
        for reg in (a, b):
            r = reg.http.get("/api/v1/plugins")
            assert error_of(r) == (503, "unavailable") and r.headers["retry-after"]
        r = a.publish(token, make_package(echo_dir, key, name="during-outage"))
        assert error_of(r) == (503, "unavailable")
        assert a.packages() == before
    finally:
        pg_start(pg)
    for reg in (a, b):
        deadline = time.monotonic() + 20
        while True:
            r = reg.http.get("/api/v1/plugins")
            if r.status_code == 200:
                break
            assert error_of(r) == (503, "unavailable")
            assert time.monotonic() < deadline, "the server did not reconnect"
            time.sleep(0.2)
    assert error_of(a.http.get("/api/v1/plugins/during-outage")) == (404, "not-found")
    r = b.publish(token, make_package(echo_dir, key, name="during-outage"))
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------------------------
# A publish whose database commit fails


class InProcessServer:
    """The registry's application under uvicorn in a thread of the test process (so that the
    test can reach into its database), on 127.0.0.1."""

    def __init__(self, registry: Any) -> None:
        import uvicorn

        from plugbox.registry import create_app
        from tests.test_registry_server import free_port

        self.url = f"http://127.0.0.1:{free_port()}"
        config = uvicorn.Config(create_app(registry), host="127.0.0.1",
                                port=int(self.url.rsplit(":", 1)[1]), log_level="warning",
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no server"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class FailingCommit:
    """Wraps the registry database's SQLite connection: while ``armed``, the COMMIT of a
    transaction that ran a statement containing ``trigger`` (by default: inserted a version
    row) fails; the transaction is rolled back, as when the disk fails under the commit."""

    def __init__(self, db: Any, trigger: str = "INSERT INTO reg_versions") -> None:
        self.conn = db._connection()
        self.trigger = trigger
        self.armed = True
        self.failed = 0
        self.pending = False

    def execute(self, sql: str, *args: Any) -> Any:
        import sqlite3

        if self.trigger in sql:
            self.pending = True
        if sql == "ROLLBACK":
            self.pending = False
        if sql == "COMMIT" and self.pending and self.armed:
            self.pending = False
            self.failed += 1
            self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        if sql == "COMMIT":
            self.pending = False
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_a_publish_whose_commit_fails_leaves_nothing_in_tuf_and_can_be_retried(
        tmp_path: Path, echo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbox.registry import Registry
    from plugbox.registry._client import RegistryClient
    from plugbox.registry._tuf import TufRepository

    directory = tmp_path / "reg"
    admin = init_registry_cli(directory)
    registry = Registry(directory)
    server = InProcessServer(registry)
    try:
        reg = Reg(directory, server, admin)  # type: ignore[arg-type]
        key = SecretKey.generate()
        token = reg.account("pub", key=key)
        assert reg.publish(token, make_package(echo_dir, key, name="gap")).status_code == 201
        tuf = TufRepository(directory / "tuf")
        listing, packages = tuf.listing("gap"), reg.packages()
        client = RegistryClient(tmp_path / "state", None)
        client.add_registry("main", reg.url, reg.http.get("/tuf/metadata/1.root.json").content)

        def tuf_packages() -> set[str]:
            return {p.name.split(".", 1)[1] for p in tuf.targets_dir.rglob("*.plugbox")}

        failing = FailingCommit(registry.db)
        monkeypatch.setattr(registry.db, "_connection", lambda: failing)
        # Another version of a published name, and the first version of a new name.
        uploads = {("gap", "0.2.0"): make_package(echo_dir, key, name="gap", version="0.2.0"),
                   ("fresh", "0.1.0"): make_package(echo_dir, key, name="fresh")}
        for (name, version), data in uploads.items():
            r = reg.publish(token, data)
            assert error_of(r) == (503, "unavailable"), r.text
            assert "disk I/O error" in r.json()["error"]["message"]
            assert error_of(reg.http.get(f"/api/v1/plugins/{name}/versions/{version}")) == \
                (404, "not-found")
            assert reg.packages() == packages
            index = tuf.index()["plugins"]
            assert set(index) == {"gap"} and set(index["gap"]["versions"]) == {"0.1.0"}
            targets = json.loads((directory / "tuf" / "current" / "pub-pub.json")
                                 .read_bytes())["signed"]["targets"]
            assert set(targets) == {"plugins/gap/gap-0.1.0.plugbox"}
            assert tuf_packages() == {"gap-0.1.0.plugbox"}
            assert tuf.owner_of("fresh") is None and tuf.listing("fresh") is None
            assert tuf.listing("gap") == listing
        assert failing.failed == 2
        # A client refreshing now sees consistent metadata that lists only what committed.
        client.refresh()
        assert [c.version for c in client.versions("gap")] == ["0.1.0"]
        assert client.versions("fresh") == []

        # The same uploads, retried once the database commits again, are published.
        failing.armed = False
        for (name, version), data in uploads.items():
            r = reg.publish(token, data)
            assert r.status_code == 201, r.text
        assert tuf_packages() == {"gap-0.1.0.plugbox", "gap-0.2.0.plugbox", "fresh-0.1.0.plugbox"}
        client.refresh()
        assert [c.version for c in client.versions("gap")] == ["0.2.0", "0.1.0"]
        assert client._fetch("main", "plugins/fresh/fresh-0.1.0.plugbox", 1 << 20) == \
            uploads[("fresh", "0.1.0")]
        assert reg.http.get("/api/v1/plugins/gap").json()["latest"] == "0.2.0"
    finally:
        server.stop()
        registry.close()


def test_a_transfer_that_does_not_commit_moves_the_delegation_back(
        tmp_path: Path, echo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TUF side of a transfer follows its transaction: undone when the commit fails,
    done when it succeeds; and a delegation TUF still gives the former owner (a name
    transferred before transfers moved delegations) follows the owner's next publish."""
    from plugbox.registry import Registry
    from plugbox.registry._tuf import TufRepository

    directory = tmp_path / "reg"
    admin = init_registry_cli(directory)
    registry = Registry(directory)
    server = InProcessServer(registry)
    try:
        reg = Reg(directory, server, admin)  # type: ignore[arg-type]
        alice_key, bob_key = SecretKey.generate(), SecretKey.generate()
        alice = reg.account("alice", key=alice_key)
        bob = reg.account("bob", key=bob_key)
        assert reg.publish(alice, make_package(echo_dir, alice_key, name="moved")
                           ).status_code == 201
        tuf = TufRepository(directory / "tuf")
        listing = tuf.listing("moved")
        url = "/api/v1/plugins/moved/transfer"
        failing = FailingCommit(registry.db, trigger="UPDATE reg_plugins SET owner")
        monkeypatch.setattr(registry.db, "_connection", lambda: failing)
        r = reg.http.post(url, headers=auth(reg.admin), json={"to": "bob"})
        assert error_of(r) == (503, "unavailable") and failing.failed == 1
        assert reg.http.get("/api/v1/plugins/moved").json()["owner"] == "alice"
        assert tuf.owner_of("moved") == "alice" and tuf.listing("moved") == listing
        assert set(tuf._load("pub-alice").signed.targets) == {"plugins/moved/moved-0.1.0.plugbox"}

        failing.armed = False
        r = reg.http.post(url, headers=auth(reg.admin), json={"to": "bob"})
        assert r.status_code == 200, r.text
        assert tuf.owner_of("moved") == "bob"
        assert json.loads(tuf.listing("moved") or b"{}")["owner"] == "bob"

        # TUF behind the database (as a registry transferred names before): bob's next
        # publish moves the delegation to bob's role before signing.
        assert tuf.transfer_name("moved", "alice") == "bob"
        r = reg.publish(bob, make_package(echo_dir, bob_key, name="moved", version="0.2.0"))
        assert r.status_code == 201, r.text
        assert tuf.owner_of("moved") == "bob"
        assert set(tuf._load("pub-bob").signed.targets) == {
            "plugins/moved/moved-0.1.0.plugbox", "plugins/moved/moved-0.2.0.plugbox"}
    finally:
        server.stop()
        registry.close()
