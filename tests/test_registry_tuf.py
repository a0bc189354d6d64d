"""The registry's TUF metadata (issue 12 §2): the repository written with python-tuf, served
over 127.0.0.1 by a static server the tests start, and the client's typed refusals of each
attack a malicious server of the tests mounts (rollback, freeze, mix-and-match, arbitrary
package, endless data, untrusted keys); root key rotation; per-publisher delegations."""

from __future__ import annotations

import json

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from plugbox.registry._client import RegistryClient
from plugbox.registry._errors import (
    ArbitraryPackageError,
    EndlessDataError,
    FreezeAttackError,
    MixAndMatchError,
    RegistryError,
    RollbackAttackError,
    UpdateAttackError,
)
from plugbox.registry._tuf import RepositoryStateError, TufRepository, package_custom
from tests.test_lifecycle_core import make_plugin

# -- a static TUF server, and what the tests make it serve instead ------------------------------

#: An override producing endless bytes (the endless-data attack).
ENDLESS = object()


class TufServer:
    """A threaded HTTP server on 127.0.0.1 serving ``GET /tuf/metadata/{file}`` and
    ``GET /tuf/targets/{path}`` from a repository's directories, as the registry server
    does; ``overrides`` (URL path -> bytes, a callable returning bytes, or ENDLESS) is what
    the malicious variants serve instead. ``requests`` counts the paths fetched."""

    def __init__(self, repo: TufRepository) -> None:
        self.repo = repo
        self.overrides: dict[str, Any] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                override = server.overrides.get(self.path)
                if override is ENDLESS:
                    self.send_response(200)
                    self.end_headers()
                    chunk = b"\x00" * 65536
                    try:
                        for _ in range(2000):  # 128 MiB at most, should the client not stop
                            self.wfile.write(chunk)
                    except OSError:
                        pass
                    return
                if override is not None:
                    body = override() if callable(override) else override
                else:
                    body = server.file(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def file(self, path: str) -> bytes | None:
        for prefix, base in (("/tuf/metadata/", self.repo.metadata_dir),
                             ("/tuf/targets/", self.repo.targets_dir)):
            if path.startswith(prefix):
                rel = path[len(prefix):]
                if ".." in rel.split("/"):
                    return None
                file = base / rel
                return file.read_bytes() if file.is_file() else None
        return None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    return TufRepository.init(tmp_path / "tuf", offline_root_dir=tmp_path / "offline-root")


@pytest.fixture
def server(repo: TufRepository) -> Iterator[TufServer]:
    srv = TufServer(repo)
    yield srv
    srv.close()


def client_for(state: Path, server: TufServer, host: Any = None, name: str = "main"
               ) -> RegistryClient:
    client = RegistryClient(state, host, strict_points=host is not None)
    client.add_registry(name, server.url, (server.repo.metadata_dir / "1.root.json").read_bytes())
    return client


def package(src: Path, name: str, version: str, key: Any = None, **manifest: Any) -> bytes:
    """A .plugbox of a WAT plugin ``name`` ``version`` (text.echo returns "name version"),
    signed with the minisign ``key`` when given."""
    from plugbox.trust._package import write_package
    from plugbox.trust._signing import sign_bytes

    directory = make_plugin(src, name, version, f"{name} {version}", **manifest)
    if key is not None:
        data = (directory / "plugbox.json").read_bytes()
        sig = sign_bytes(data, key, trusted_comment=f"{name} {version}")
        (directory / "plugbox.json.minisig").write_text(sig.to_text())
    out = src / f"{name}-{version}.plugbox"
    write_package(directory, out, force=True)
    return out.read_bytes()


def publish(repo: TufRepository, publisher: str, data: bytes, **custom: Any) -> str:
    doc = package_custom(data, **custom)
    name, version = doc["manifest"]["name"], doc["manifest"]["version"]
    target = f"plugins/{name}/{name}-{version}.plugbox"
    repo.add_target(publisher, target, data, doc)
    return target


def meta(repo: TufRepository, role: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((repo.tuf_dir / "current" / f"{role}.json").read_bytes())
    return doc


# -- the repository -----------------------------------------------------------------------------


def test_init_makes_every_role_with_consistent_snapshots_and_keeps_the_root_key_offline(
        repo: TufRepository, tmp_path: Path) -> None:
    root = meta(repo, "root")["signed"]
    assert root["consistent_snapshot"] is True
    assert set(root["roles"]) == {"root", "targets", "snapshot", "timestamp"}
    assert (tmp_path / "offline-root" / "root.pem").is_file()
    assert not (repo.tuf_dir / "keys" / "root.pem").exists()
    files = {p.name for p in repo.metadata_dir.iterdir()}
    assert {"1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"} <= files
    expires = meta(repo, "timestamp")["signed"]["expires"]
    assert expires < time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2 * 86400))


def test_a_new_registry_lists_nothing(repo: TufRepository, server: TufServer,
                                      tmp_path: Path) -> None:
    client = client_for(tmp_path / "state", server)
    assert client.search("") == [] and client.versions("alpha") == []


def test_packages_are_hash_prefixed_targets_of_their_publishers_delegation(
        repo: TufRepository, tmp_path: Path) -> None:
    data = package(tmp_path / "src", "alpha", "1.0.0")
    target = publish(repo, "alice", data)
    delegation = meta(repo, "targets")["signed"]["delegations"]["roles"][0]
    assert delegation["name"] == "pub-alice" and delegation["paths"] == ["plugins/alpha/*"]
    assert delegation["terminating"] is True
    info = meta(repo, "pub-alice")["signed"]["targets"][target]
    assert info["length"] == len(data)
    assert info["custom"]["manifest"]["version"] == "1.0.0"
    stored = repo.targets_dir / "plugins" / "alpha" / f"{info['hashes']['sha256']}.alpha-1.0.0.plugbox"
    assert stored.read_bytes() == data
    # The timestamp and snapshot moved on with it; versioned metadata files for clients.
    assert meta(repo, "timestamp")["signed"]["version"] == 2
    assert (repo.metadata_dir / "1.pub-alice.json").is_file()


def test_one_publisher_cannot_publish_under_another_publishers_name(
        repo: TufRepository, tmp_path: Path) -> None:
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    with pytest.raises(RepositoryStateError, match="belongs to publisher 'alice'"):
        publish(repo, "mallory", package(tmp_path / "src", "alpha", "9.0.0"))
    with pytest.raises(RepositoryStateError, match="published already"):
        publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))


def test_a_delegated_role_cannot_sign_another_publishers_package(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    """Even with mallory's key (the registry holds it), a package under plugins/alpha/ in
    mallory's role is not found: the delegation of that path is alice's, and terminating."""
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    publish(repo, "mallory", package(tmp_path / "src", "beta", "1.0.0"))
    evil = package(tmp_path / "evil", "alpha", "2.0.0")
    md = repo._load("pub-mallory")
    from tuf.api._payload import TargetFile

    md.signed.targets["plugins/alpha/alpha-2.0.0.plugbox"] = TargetFile.from_data(
        "plugins/alpha/alpha-2.0.0.plugbox", evil, ["sha256"])
    with repo._locked():
        repo._publish({"pub-mallory": md})
    client = client_for(tmp_path / "state", server)
    client.refresh()
    updater = client._updaters["main"]
    assert updater.get_targetinfo("plugins/alpha/alpha-2.0.0.plugbox") is None
    assert updater.get_targetinfo("plugins/beta/beta-1.0.0.plugbox") is not None


def test_a_transfer_moves_the_name_and_its_targets_to_the_new_publishers_role(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    """After transfer_name, plugins/alpha/* is delegated to bob's role alone: bob signs the
    new version, the old versions moved into bob's role and still verify, and a target
    signed only by alice's role (the old owner's, whose key the registry still holds) is
    not found by a client."""
    src = tmp_path / "src"
    old = publish(repo, "alice", package(src, "alpha", "1.0.0"))
    publish(repo, "alice", package(src, "beta", "1.0.0"))
    client = client_for(tmp_path / "state", server)
    client.refresh()
    assert client._fetch("main", old, 1 << 20) == package(src, "alpha", "1.0.0")

    assert repo.transfer_name("alpha", "bob") == "alice"
    assert repo.owner_of("alpha") == "bob" and repo.owner_of("beta") == "alice"
    roles = {r["name"]: r for r in meta(repo, "targets")["signed"]["delegations"]["roles"]}
    assert roles["pub-alice"]["paths"] == ["plugins/beta/*"]
    assert roles["pub-bob"]["paths"] == ["plugins/alpha/*"]
    assert roles["pub-bob"]["terminating"] is True
    assert set(meta(repo, "pub-alice")["signed"]["targets"]) == {
        "plugins/beta/beta-1.0.0.plugbox"}
    assert set(meta(repo, "pub-bob")["signed"]["targets"]) == {old}
    assert repo.index()["plugins"]["alpha"]["publisher"] == "bob"
    # Done again, nothing changes; the new owner publishes, the old one cannot.
    assert repo.transfer_name("alpha", "bob") is None
    new = publish(repo, "bob", package(src, "alpha", "2.0.0"))
    with pytest.raises(RepositoryStateError, match="belongs to publisher 'bob'"):
        publish(repo, "alice", package(src, "alpha", "3.0.0"))

    # The old owner's role signs a package of the name anyway (the registry holds its key).
    evil = package(tmp_path / "evil", "alpha", "9.0.0")
    md = repo._load("pub-alice")
    from tuf.api._payload import TargetFile

    md.signed.targets["plugins/alpha/alpha-9.0.0.plugbox"] = TargetFile.from_data(
        "plugins/alpha/alpha-9.0.0.plugbox", evil, ["sha256"])
    with repo._locked():
        repo._publish({"pub-alice": md})

    client.refresh()  # the same client, moving on from the metadata it trusted before
    updater = client._updaters["main"]
    assert updater.get_targetinfo("plugins/alpha/alpha-9.0.0.plugbox") is None
    with pytest.raises(RegistryError, match="no signed target"):
        client._fetch("main", "plugins/alpha/alpha-9.0.0.plugbox", 1 << 20)
    assert [c.version for c in client.versions("alpha")] == ["2.0.0", "1.0.0"]
    assert {c.publisher for c in client.versions("alpha")} == {"bob"}
    assert client._fetch("main", new, 1 << 20) == package(src, "alpha", "2.0.0")
    assert client._fetch("main", old, 1 << 20) == package(src, "alpha", "1.0.0")
    assert updater.get_targetinfo("plugins/beta/beta-1.0.0.plugbox") is not None


def test_remove_target_unclaims_a_name_whose_last_package_it_removes(
        repo: TufRepository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    first = publish(repo, "alice", package(src, "alpha", "1.0.0"))
    repo.set_listing("alpha", b'{"description": "one"}')
    listing = repo.listing("alpha")
    second = publish(repo, "alice", package(src, "alpha", "1.1.0"))
    assert repo.remove_target("alice", second) is True
    assert repo.remove_target("alice", second) is False
    assert set(repo.index()["plugins"]["alpha"]["versions"]) == {"1.0.0"}
    assert set(meta(repo, "pub-alice")["signed"]["targets"]) == {first}
    assert repo.listing("alpha") == listing
    assert repo.remove_target("alice", first) is True
    assert repo.owner_of("alpha") is None and "alpha" not in repo.index()["plugins"]
    assert repo.listing("alpha") is None
    assert not list((repo.targets_dir / "plugins" / "alpha").glob("*.plugbox"))
    # The name is free again, for anyone.
    publish(repo, "bob", package(src, "alpha", "1.1.0"))
    assert repo.owner_of("alpha") == "bob"


def test_concurrent_writers_serialise_on_the_lock(repo: TufRepository, tmp_path: Path) -> None:
    datas = [package(tmp_path / f"s{i}", f"p{i}", "1.0.0") for i in range(6)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            TufRepository(repo.tuf_dir).add_target(
                "alice", f"plugins/p{i}/p{i}-1.0.0.plugbox", datas[i],
                package_custom(datas[i]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(meta(repo, "pub-alice")["signed"]["targets"]) == 6
    assert sorted(repo.index()["plugins"]) == [f"p{i}" for i in range(6)]
    assert meta(repo, "timestamp")["signed"]["version"] == 7


def test_refresh_timestamp_signs_a_new_timestamp(repo: TufRepository) -> None:
    before = meta(repo, "timestamp")["signed"]["version"]
    repo.refresh_timestamp()
    assert meta(repo, "timestamp")["signed"]["version"] == before + 1


# -- the client against each attack -------------------------------------------------------------


def test_rollback_to_an_older_timestamp_is_refused(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    old = (repo.metadata_dir / "timestamp.json").read_bytes()
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.1.0"))
    client = client_for(tmp_path / "state", server)
    client.refresh()
    assert [c.version for c in client.versions("alpha")] == ["1.1.0", "1.0.0"]
    server.overrides["/tuf/metadata/timestamp.json"] = old  # a mirror replaying the past
    with pytest.raises(RollbackAttackError, match="older than what this host trusts") as info:
        client.refresh()
    assert info.value.attack == "rollback" and info.value.registry == "main"


def test_freeze_on_expired_metadata_is_refused(tmp_path: Path) -> None:
    import calendar

    repo = TufRepository.init(tmp_path / "tuf", lifetimes={"timestamp": 4})
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    srv = TufServer(repo)
    try:
        client = client_for(tmp_path / "state", srv)
        client.refresh()
        expires = calendar.timegm(time.strptime(meta(repo, "timestamp")["signed"]["expires"],
                                                "%Y-%m-%dT%H:%M:%SZ"))
        # Nobody refreshes the timestamp: the mirror is frozen.
        time.sleep(max(0.0, expires - time.time()) + 0.5)
        with pytest.raises(FreezeAttackError, match="expired"):
            client.refresh()
        repo.refresh_timestamp()
        client.refresh()  # a live registry is trusted again
    finally:
        srv.close()


def test_mix_and_match_of_delegated_metadata_is_refused(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.1.0"))
    # The new snapshot names pub-alice v2; the server hands out v1 under that name.
    server.overrides["/tuf/metadata/2.pub-alice.json"] = \
        (repo.metadata_dir / "1.pub-alice.json").read_bytes()
    client = client_for(tmp_path / "state", server)
    client.refresh()
    with pytest.raises(MixAndMatchError, match="do not belong together"):
        client._fetch("main", "plugins/alpha/alpha-1.1.0.plugbox", 1 << 20)


def test_mix_and_match_of_top_level_targets_is_refused(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    version = meta(repo, "targets")["signed"]["version"]
    server.overrides[f"/tuf/metadata/{version}.targets.json"] = \
        (repo.metadata_dir / "1.targets.json").read_bytes()
    client = client_for(tmp_path / "state", server)
    with pytest.raises(MixAndMatchError):
        client.refresh()


def test_arbitrary_package_with_another_hash_or_length_is_refused(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    data = package(tmp_path / "src", "alpha", "1.0.0")
    target = publish(repo, "alice", data)
    digest = meta(repo, "pub-alice")["signed"]["targets"][target]["hashes"]["sha256"]
    url = f"/tuf/targets/plugins/alpha/{digest}.alpha-1.0.0.plugbox"
    evil = bytearray(data)
    evil[-30] ^= 0xFF
    server.overrides[url] = bytes(evil)  # same length, other bytes
    client = client_for(tmp_path / "state", server)
    with pytest.raises(ArbitraryPackageError, match="length or hash"):
        client._fetch("main", target, 1 << 20)
    server.overrides[url] = data[:-10]  # shorter
    with pytest.raises(ArbitraryPackageError):
        client._fetch("main", target, 1 << 20)
    del server.overrides[url]
    assert client._fetch("main", target, 1 << 20) == data


def test_endless_metadata_is_refused(repo: TufRepository, server: TufServer,
                                     tmp_path: Path) -> None:
    server.overrides["/tuf/metadata/timestamp.json"] = ENDLESS
    client = client_for(tmp_path / "state", server)
    with pytest.raises(EndlessDataError, match="more data than allowed"):
        client.refresh()


def test_endless_package_is_refused(repo: TufRepository, server: TufServer,
                                    tmp_path: Path) -> None:
    target = publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    digest = meta(repo, "pub-alice")["signed"]["targets"][target]["hashes"]["sha256"]
    server.overrides[f"/tuf/targets/plugins/alpha/{digest}.alpha-1.0.0.plugbox"] = ENDLESS
    client = client_for(tmp_path / "state", server)
    with pytest.raises(EndlessDataError):
        client._fetch("main", target, 1 << 20)


def test_metadata_signed_by_an_unknown_key_is_refused(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    other = TufRepository.init(tmp_path / "attacker")
    server.overrides["/tuf/metadata/timestamp.json"] = \
        (other.metadata_dir / "timestamp.json").read_bytes()
    client = client_for(tmp_path / "state", server)
    with pytest.raises(UpdateAttackError) as info:
        client.refresh()
    assert info.value.attack == "untrusted"


def test_an_unreachable_registry_is_a_registry_error(tmp_path: Path, repo: TufRepository
                                                     ) -> None:
    client = RegistryClient(tmp_path / "state")
    client.add_registry("gone", "http://127.0.0.1:9", (repo.metadata_dir / "1.root.json")
                        .read_bytes())
    with pytest.raises(RegistryError, match="cannot reach the registry") as info:
        client.refresh()
    assert not isinstance(info.value, UpdateAttackError)


# -- root key rotation --------------------------------------------------------------------------


def test_root_key_rotation_moves_clients_to_the_new_root(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.0"))
    client = client_for(tmp_path / "state", server)
    client.refresh()
    old_root_dir = tmp_path / "offline-root"
    new_root_dir = tmp_path / "offline-root-2"
    assert repo.rotate_root_key(new_root_dir, old_root_dir=old_root_dir) == 2
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.1.0"))
    client.refresh()
    trusted = json.loads((tmp_path / "state" / "registries" / "main" / "metadata" /
                          "root.json").read_bytes())
    assert trusted["signed"]["version"] == 2
    assert [c.version for c in client.versions("alpha")][0] == "1.1.0"
    # A third root signed only by a key the trusted root does not name is refused: the
    # old key alone cannot be replaced by an attacker's.
    from securesystemslib.signer._crypto_signer import CryptoSigner

    forged = repo._load("root")
    attacker = CryptoSigner.generate_ed25519()
    for keyid in list(forged.signed.roles["root"].keyids):
        forged.signed.revoke_key(keyid, "root")
    forged.signed.add_key(attacker.public_key, "root")
    forged.signed.version = 3
    forged.signatures.clear()
    forged.sign(attacker)
    from tuf.api.serialization.json import JSONSerializer

    server.overrides["/tuf/metadata/3.root.json"] = forged.to_bytes(JSONSerializer())
    with pytest.raises(UpdateAttackError):
        client.refresh()


def test_a_root_that_is_not_self_signed_is_refused_when_adding(tmp_path: Path,
                                                               repo: TufRepository) -> None:
    raw = json.loads((repo.metadata_dir / "1.root.json").read_bytes())
    raw["signed"]["expires"] = "2099-01-01T00:00:00Z"
    client = RegistryClient(tmp_path / "state")
    with pytest.raises(Exception, match="not a valid, self-signed"):
        client.add_registry("main", "http://127.0.0.1:1", json.dumps(raw).encode())
    assert client.registries() == []





def test_superseded_metadata_and_index_files_are_pruned_after_the_grace_period(
        repo: TufRepository, server: TufServer, tmp_path: Path) -> None:
    for i in range(6):
        publish(repo, "alice", package(tmp_path / "src", "alpha", f"1.0.{i}"))
    assert (repo.metadata_dir / "1.targets.json").exists()  # within the grace period: kept
    repo.keep_seconds = 0
    publish(repo, "alice", package(tmp_path / "src", "alpha", "1.0.9"))
    version = meta(repo, "targets")["signed"]["version"]
    names = {p.name for p in repo.metadata_dir.iterdir()}
    assert "1.targets.json" not in names and f"{version}.targets.json" in names
    assert "1.root.json" in names  # roots are all kept
    assert len(list(repo.targets_dir.glob("*.index.json"))) == 1
    client = client_for(tmp_path / "state", server)
    assert [c.version for c in client.versions("alpha")][0] == "1.0.9"
