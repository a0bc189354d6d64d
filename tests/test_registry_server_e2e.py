"""The whole path of issue 12 §5 against the real registry server: publish over HTTP (the Rust
echo sample and WAT plugins) -> search -> install through a PluginHost that requires the
publisher's signature -> advisory -> audit -> upgrade -> a broken release rolled back, with the
client (plugbox.registry._client) refreshing through TUF from the server's /tuf/ files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import plugbox
from plugbox.trust._package import write_package
from plugbox.trust._signing import SecretKey, sign_bytes
from tests.test_lifecycle_upgrade import failing_init_plugin
from tests.test_registry_server import (Reg, Server, auth, echo_dir, init_registry_cli,
                                        make_package, running_registry)
from tests.test_registry_tuf import package

__all__ = ["echo_dir"]


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Reg]:
    with running_registry(tmp_path / "reg") as running:
        yield running


def signed_package(directory: Path, key: SecretKey) -> bytes:
    data = (directory / "plugbox.json").read_bytes()
    (directory / "plugbox.json.minisig").write_text(
        sign_bytes(data, key, trusted_comment="broken release").to_text())
    out = directory.parent / f"{directory.name}.plugbox"
    write_package(directory, out, force=True)
    return out.read_bytes()


def test_publish_search_install_advisory_upgrade_rollback(reg: Reg, echo_dir: Path,
                                                          tmp_path: Path,
                                                          cache_dir: Path) -> None:
    from plugbox.registry._client import RegistryClient

    key = SecretKey.generate()
    alice = reg.account("alice", key=key)
    assert reg.publish(alice, make_package(echo_dir, key, name="echo", version="0.1.0"),
                       tags="rust").status_code == 201
    src = tmp_path / "src"
    assert reg.publish(alice, package(src / "a1", "alpha", "1.0.0", key)).status_code == 201

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "alice.pub").write_text(key.public_key().to_text())
    trust = plugbox.TrustPolicy(tmp_path / "keys", mode="require")
    with plugbox.PluginHost(state_dir=tmp_path / "state", trust=trust,
                            runtime_options={"cache_dir": cache_dir}) as host:
        host.extension_point("text.echo", version="1.0.0", mode="each")
        host.start()
        client = RegistryClient(tmp_path / "state", host)
        root = reg.http.get("/tuf/metadata/1.root.json").content
        client.add_registry("main", reg.url, root)

        assert [hit["name"] for hit in client.search("echo")] == ["echo"]
        assert client.install("echo").ok
        assert client.install("alpha").ok
        installed = {i.name: i.version for i in host.installed()}
        assert installed == {"echo": "0.1.0", "alpha": "1.0.0"}
        assert list(host.call("text.echo", {}).values) == ["alpha 1.0.0"]

        # A new release and an advisory against the installed one.
        assert reg.publish(alice, make_package(echo_dir, key, name="echo", version="0.2.0")
                           ).status_code == 201
        r = reg.http.post("/api/v1/plugins/echo/advisories", headers=auth(alice), json={
            "id": "PBX-2026-0042", "affected": "<0.2.0", "severity": "high",
            "fixed_in": "0.2.0", "text": "echoes too much"})
        assert r.status_code == 201
        assert {o["name"]: o["latest"] for o in client.outdated()} == {"echo": "0.2.0"}
        hits = client.audit()
        assert [(h["name"], h["installed"]) for h in hits] == [("echo", "0.1.0")]
        assert json.dumps(hits[0]["advisory"]).count("PBX-2026-0042") == 1
        assert client.upgrade("echo").ok
        assert {i.name: i.version for i in host.installed()}["echo"] == "0.2.0"
        assert client.audit() == []

        # A broken release (its on-init traps) is rolled back by the host's lifecycle.
        broken = signed_package(failing_init_plugin(src, "1.1.0"), key)
        assert reg.publish(alice, broken).status_code == 201
        result = client.upgrade("alpha")
        assert [a["status"] for a in result.actions] == ["rolled-back"]
        assert {i.name: i.version for i in host.installed()}["alpha"] == "1.0.0"
        assert list(host.call("text.echo", {}).values) == ["alpha 1.0.0"]

        # The downloads went through the registry's counter.
        assert reg.http.get("/api/v1/plugins/echo").json()["downloads"] == 2


def test_a_python_plugin_through_the_registry(tmp_path: Path, cache_dir: Path) -> None:
    """The Python echo sample, built with componentize-py, published over HTTP, installed
    through TUF and called."""
    from plugbox.authoring import _pybuild
    from plugbox.registry._client import RegistryClient
    from tests.test_registry_server import REPO, TEST_LIMITS

    module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / "echo",
                                          out_dir=REPO / ".build" / "pytest-pybuild" / "py-echo")
    work = tmp_path / "py-echo"
    import shutil

    shutil.copytree(module.parent, work)
    key = SecretKey.generate()
    data = signed_package(work, key)
    directory = tmp_path / "reg"
    admin = init_registry_cli(directory, limits={**TEST_LIMITS, "max_upload_bytes": 64 << 20})
    server = Server(directory)
    try:
        reg = Reg(directory, server, admin)
        token = reg.account("pyauthor", key=key)
        r = reg.publish(token, data)
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(data) > 1 << 20  # a component with CPython inside
        (tmp_path / "keys").mkdir()
        (tmp_path / "keys" / "pyauthor.pub").write_text(key.public_key().to_text())
        trust = plugbox.TrustPolicy(tmp_path / "keys", mode="require")
        with plugbox.PluginHost(state_dir=tmp_path / "state", trust=trust,
                                runtime_options={"cache_dir": cache_dir}) as host:
            host.start()
            client = RegistryClient(tmp_path / "state", host)
            client.add_registry("main", reg.url,
                                reg.http.get("/tuf/metadata/1.root.json").content)
            assert [h["name"] for h in client.search("python")] == ["py-echo"]
            assert client.install("py-echo").ok
            hosted = host.get("py-echo")
            assert hosted is not None
            assert hosted.plugin.call("echo", b"hello registry") == b"hello registry"
    finally:
        server.stop()


def test_a_transferred_name_is_signed_by_the_new_owners_role(reg: Reg, tmp_path: Path,
                                                             cache_dir: Path) -> None:
    """An admin's transfer through the API moves the TUF delegation of the name: the new
    owner's release is a target of the new owner's role, a client refreshing afterwards
    upgrades to it, and the old owner's versions (moved into the new role) still verify."""
    from plugbox.registry._client import RegistryClient
    from plugbox.registry._tuf import TufRepository

    alice_key, bob_key = SecretKey.generate(), SecretKey.generate()
    alice = reg.account("alice", key=alice_key)
    bob = reg.account("bob", key=bob_key)
    src = tmp_path / "src"
    old = package(src / "a1", "alpha", "1.0.0", alice_key)
    assert reg.publish(alice, old).status_code == 201
    # No signature policy: a host requiring signatures binds a name to its first signers'
    # keys (IdentityConflictError for a new owner's key), which is the host's rule, not TUF's.
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as host:
        host.extension_point("text.echo", version="1.0.0", mode="each")
        host.start()
        client = RegistryClient(tmp_path / "state", host)
        client.add_registry("main", reg.url, reg.http.get("/tuf/metadata/1.root.json").content)
        assert client.install("alpha").ok
        assert list(host.call("text.echo", {}).values) == ["alpha 1.0.0"]

        r = reg.http.post("/api/v1/plugins/alpha/transfer", headers=auth(reg.admin),
                          json={"to": "bob"})
        assert r.status_code == 200 and r.json()["owner"] == "bob", r.text
        tuf = TufRepository(reg.directory / "tuf")
        assert tuf.owner_of("alpha") == "bob"
        assert reg.publish(bob, package(src / "b2", "alpha", "2.0.0", bob_key)
                           ).status_code == 201
        current = reg.directory / "tuf" / "current"
        bob_targets = json.loads((current / "pub-bob.json").read_bytes())["signed"]["targets"]
        assert set(bob_targets) == {"plugins/alpha/alpha-1.0.0.plugbox",
                                    "plugins/alpha/alpha-2.0.0.plugbox"}
        alice_role = json.loads((current / "pub-alice.json").read_bytes())["signed"]
        assert alice_role["targets"] == {}
        # The old owner can publish the name neither through the API nor through TUF.
        r = reg.publish(alice, package(src / "a3", "alpha", "3.0.0", alice_key))
        assert r.status_code == 403

        client.refresh()
        assert [c.version for c in client.versions("alpha")] == ["2.0.0", "1.0.0"]
        assert client.upgrade("alpha").ok
        assert {i.name: i.version for i in host.installed()}["alpha"] == "2.0.0"
        assert list(host.call("text.echo", {}).values) == ["alpha 2.0.0"]
        # A fresh client (nothing cached) verifies the old version under the new role.
        fresh = RegistryClient(tmp_path / "fresh", None)
        fresh.add_registry("main", reg.url, reg.http.get("/tuf/metadata/1.root.json").content)
        assert fresh._fetch("main", "plugins/alpha/alpha-1.0.0.plugbox", 1 << 20) == old
        assert {c.publisher for c in fresh.versions("alpha")} == {"bob"}
