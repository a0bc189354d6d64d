"""The registry client in the host (issue 12 §3): search, install, outdated, upgrade, audit
and update checks against a TUF repository served over 127.0.0.1, through the PluginHost's
real lifecycle (consent, automatic rollback, pins), with WAT plugins and the Rust word-stats
sample; compatibility filtering, yank and pin rules, resolvelib conflicts explained."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.host._errors import LifecycleError
from plugbox.registry._client import RegistryClient, UpdateNotice, schedule_update_checks
from plugbox.registry._errors import RegistryError, ResolutionError
from plugbox.registry._tuf import TufRepository, package_custom
from plugbox.trust._signing import SecretKey
from tests.test_lifecycle_upgrade import failing_init_plugin
from tests.test_registry_tuf import TufServer, client_for, package, publish


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    return TufRepository.init(tmp_path / "tuf")


@pytest.fixture
def server(repo: TufRepository) -> Iterator[TufServer]:
    srv = TufServer(repo)
    yield srv
    srv.close()


@pytest.fixture
def host(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as h:
        h.extension_point("text.echo", version="1.0.0", mode="each")
        h.start()
        yield h


@pytest.fixture
def client(tmp_path: Path, server: TufServer, host: plugbox.PluginHost) -> RegistryClient:
    return client_for(tmp_path / "state", server, host)


def echo(host: plugbox.PluginHost) -> list[Any]:
    return list(host.call("text.echo", {}).values)


def pub(repo: TufRepository, tmp_path: Path, name: str, version: str, publisher: str = "alice",
        yanked: bool = False, **manifest: Any) -> str:
    return publish(repo, publisher, package(tmp_path / "src" / f"{name}-{version}", name,
                                            version, **manifest), yanked=yanked)


# -- compatibility first ------------------------------------------------------------------------


def test_search_offers_only_versions_the_host_can_run(
        repo: TufRepository, client: RegistryClient, server: TufServer,
        tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0", description="echoes its version")
    pub(repo, tmp_path, "alpha", "2.0.0", abi="1.9")  # an ABI newer than this host's
    pub(repo, tmp_path, "beta", "1.0.0", host=">=99")  # a plugbox that does not exist yet
    pub(repo, tmp_path, "gamma", "1.0.0",
        implements={"text.echo": {"hook": "run", "versions": ">=2"}})
    repo.set_listing("alpha", json.dumps({"tags": ["greeting"], "advisories": []}).encode())
    hits = client.search("")
    assert [(h["name"], h["version"]) for h in hits] == [("alpha", "1.0.0")]
    assert client.search("GREET")[0]["name"] == "alpha"
    # One signed index answers a search: no listing is downloaded for it.
    assert not [r for r in server.requests if "/listings/" in r]
    assert client.search("nothing-like-it") == []
    reasons = {c.version: c.incompatible for c in client.versions("alpha")}
    assert reasons["1.0.0"] is None and "needs ABI 1.9" in str(reasons["2.0.0"])
    assert "text.echo >=2" in str(client.versions("gamma")[0].incompatible)
    with pytest.raises(ResolutionError, match="needs ABI 1.9"):
        client.install("alpha==2.0.0")


def test_install_goes_through_the_lifecycle_and_resolves_dependencies_first(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    pub(repo, tmp_path, "alpha", "1.1.0")
    pub(repo, tmp_path, "alpha", "1.2.0")
    pub(repo, tmp_path, "beta", "1.0.0", requires={"alpha": ">=1.1,<1.2"})
    events: list[plugbox.LifecycleEvent] = []
    host.subscribe_lifecycle(events.append)
    result = client.install("beta")
    assert result.ok
    assert [(a["plugin"], a["to"], a["status"]) for a in result.actions] == [
        ("alpha", "1.1.0", "installed"), ("beta", "1.0.0", "installed")]
    assert host.info("alpha").version == "1.1.0" and host.info("beta").state == "enabled"
    assert sorted(echo(host)) == ["alpha 1.1.0", "beta 1.0.0"]
    assert [e.kind for e in events if e.plugin == "alpha"][:1] == ["installed"]


def test_a_conflict_is_explained_with_who_wants_what(
        repo: TufRepository, client: RegistryClient, tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    pub(repo, tmp_path, "alpha", "1.1.0")
    pub(repo, tmp_path, "beta", "1.0.0", requires={"alpha": ">=1.1"})
    client.install("beta")
    with pytest.raises(ResolutionError) as info:
        client.install("alpha==1.0.0")
    message = str(info.value)
    assert "beta 1.0.0 (installed) wants alpha>=1.1" in message
    assert "you want alpha==1.0.0" in message and "alpha: 1.1.0, 1.0.0" in message
    assert {"plugin": "beta 1.0.0 (installed)", "wants": "alpha>=1.1"} in info.value.conflicts
    pub(repo, tmp_path, "gamma", "1.0.0", requires={"delta": ">=2"})
    with pytest.raises(ResolutionError, match="gamma 1.0.0 wants delta>=2"):
        client.install("gamma")


def test_yanked_versions_are_installed_only_when_pinned_exactly(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    target = pub(repo, tmp_path, "alpha", "1.1.0")
    custom = dict(json.loads((repo.tuf_dir / "current" / "pub-alice.json").read_bytes())
                  ["signed"]["targets"][target]["custom"])
    custom.update(yanked=True, yank_reason="corrupts its kv data")
    repo.update_target_custom("alice", target, custom)
    assert client.install("alpha").actions[0]["to"] == "1.0.0"
    assert client.outdated() == []  # a yanked version is not an update
    host.uninstall("alpha")
    result = client.install("alpha==1.1.0")
    assert result.actions[0]["to"] == "1.1.0"
    assert "yanked: corrupts its kv data" in result.warnings[0]
    assert "1.1.0 is yanked" in caplog.text


def test_outdated_upgrade_and_pins_hold(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    pub(repo, tmp_path, "beta", "1.0.0")
    client.install("alpha")
    client.install("beta")
    pub(repo, tmp_path, "alpha", "1.1.0")
    pub(repo, tmp_path, "beta", "1.1.0")
    host.pin("beta")
    rows = {r["name"]: r for r in client.outdated()}
    assert rows["alpha"]["latest"] == "1.1.0" and rows["beta"]["pinned"] is True
    notices = client.check_updates()
    assert {(n.plugin, n.available, n.pinned) for n in notices} == {
        ("alpha", "1.1.0", False), ("beta", "1.1.0", True)}
    assert host.info("alpha").version == "1.0.0"  # a check installs nothing
    result = client.upgrade_all()
    assert [(a["plugin"], a["status"]) for a in result.actions] == [("alpha", "upgraded")]
    assert host.info("beta").version == "1.0.0"  # the pin held
    with pytest.raises(LifecycleError, match="pinned"):
        client.upgrade("beta")
    assert sorted(echo(host)) == ["alpha 1.1.0", "beta 1.0.0"]
    # A scheduled check with the auto-upgrade policy does not move a pin either.
    pub(repo, tmp_path, "alpha", "1.2.0")
    notices = {n.plugin: n for n in client.check_updates(upgrade=True)}
    assert notices["alpha"].upgraded == "upgraded" and notices["beta"].upgraded is None
    assert host.info("alpha").version == "1.2.0" and host.info("beta").version == "1.0.0"


def test_upgrade_asks_consent_for_new_permissions(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    client.install("alpha")
    pub(repo, tmp_path, "alpha", "1.1.0", permissions={"log": True})
    result = client.upgrade("alpha")
    assert not result.ok and result.actions[0]["status"] == "needs-consent"
    assert result.actions[0]["diff"]["added"] == {"services": ["log"]}
    assert host.info("alpha").version == "1.0.0"
    assert client.upgrade("alpha", allow=True).actions[0]["status"] == "upgraded"
    assert echo(host) == ["alpha 1.1.0"]


def test_an_upgrade_that_fails_on_init_is_rolled_back_automatically(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    from plugbox.trust._package import write_package

    pub(repo, tmp_path, "alpha", "1.0.0")
    client.install("alpha")
    bad = failing_init_plugin(tmp_path / "bad", "1.1.0")
    write_package(bad, tmp_path / "bad.plugbox")
    publish(repo, "alice", (tmp_path / "bad.plugbox").read_bytes())
    result = client.upgrade("alpha")
    assert result.actions[0]["status"] == "rolled-back"
    assert "on-init" in str(result.actions[0]["reason"])
    assert host.info("alpha").version == "1.0.0" and echo(host) == ["alpha 1.0.0"]


def test_audit_and_update_checks_report_advisories_and_a_policy_disables(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    client.install("alpha")
    assert client.audit() == []
    pub(repo, tmp_path, "alpha", "1.0.1")
    repo.set_listing("alpha", json.dumps({"advisories": [{
        "id": "PBX-2026-1", "affected": "<1.0.1", "severity": "high", "fixed_in": "1.0.1",
        "text": "leaks config"}]}).encode())
    hits = client.audit()
    assert [(h["name"], h["advisory"]["id"]) for h in hits] == [("alpha", "PBX-2026-1")]
    seen: list[UpdateNotice] = []
    notices = client.check_updates(emit=seen.append, disable_affected=True)
    assert seen == notices
    assert {n.kind for n in notices} == {"update", "advisory"}
    advisory = next(n for n in notices if n.kind == "advisory")
    assert advisory.disabled and not host.info("alpha").enabled
    client.upgrade("alpha")
    assert client.audit() == []


def test_scheduled_update_checks_emit_events_until_stopped(
        repo: TufRepository, client: RegistryClient, tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    client.install("alpha")
    pub(repo, tmp_path, "alpha", "1.1.0")
    got = threading.Event()
    seen: list[UpdateNotice] = []

    def emit(notice: UpdateNotice) -> None:
        seen.append(notice)
        got.set()

    stop = schedule_update_checks(client, 0.1, emit=emit)
    try:
        assert got.wait(10)
    finally:
        stop()
    assert seen[0].kind == "update" and seen[0].available == "1.1.0"


def test_the_hosts_trust_policy_still_applies_to_registry_packages(
        repo: TufRepository, server: TufServer, tmp_path: Path, cache_dir: Path) -> None:
    key = SecretKey.generate()
    trust = plugbox.TrustPolicy(trusted_keys=key.public_key(), mode="require")
    publish(repo, "alice", package(tmp_path / "s1", "alpha", "1.0.0", key=key))
    publish(repo, "alice", package(tmp_path / "s2", "beta", "1.0.0"))  # unsigned
    with plugbox.PluginHost(state_dir=tmp_path / "state", trust=trust,
                            runtime_options={"cache_dir": cache_dir}) as host:
        host.extension_point("text.echo", version="1.0.0")
        host.start()
        client = client_for(tmp_path / "state", server, host)
        custom = client.versions("alpha")[0]
        assert custom.manifest["name"] == "alpha"
        assert client.install("alpha").ok
        with pytest.raises(plugbox.UntrustedSignerError):
            client.install("beta")
    signatures = package_custom(package(tmp_path / "s3", "alpha", "1.0.0", key=key))
    assert "plugbox.json.minisig" in signatures["signatures"]


def test_several_registries_in_order_and_the_first_one_owns_a_name(
        repo: TufRepository, server: TufServer, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    other = TufRepository.init(tmp_path / "tuf2")
    publish(other, "eve", package(tmp_path / "o1", "alpha", "9.0.0"))
    publish(other, "eve", package(tmp_path / "o2", "omega", "1.0.0"))
    srv2 = TufServer(other)
    try:
        client = client_for(tmp_path / "state", server, host)
        client.add_registry("second", srv2.url, (other.metadata_dir / "1.root.json")
                            .read_bytes())
        assert [r.name for r in client.registries()] == ["main", "second"]
        assert {(h["name"], h["registry"]) for h in client.search("")} == {
            ("alpha", "main"), ("omega", "second")}
        assert client.install("alpha").actions[0]["to"] == "1.0.0"
        client.remove_registry("main")
        assert [r.name for r in client.registries()] == ["second"]
    finally:
        srv2.close()
    with pytest.raises(RegistryError, match="no registry is configured"):
        RegistryClient(tmp_path / "empty", host).refresh()


def test_a_rust_plugin_installed_upgraded_and_rolled_back_from_the_registry(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path, rust_plugins: dict[str, Path]) -> None:
    from plugbox.trust._package import write_package

    for version in ("0.1.0", "0.2.0"):
        target = tmp_path / "rs" / f"word-stats-{version}"
        shutil.copytree(rust_plugins["word-stats"], target)
        doc = json.loads((target / "plugbox.json").read_text())
        doc["version"] = version
        (target / "plugbox.json").write_text(json.dumps(doc))
        write_package(target, tmp_path / "rs" / f"ws-{version}.plugbox")
        publish(repo, "team", (tmp_path / "rs" / f"ws-{version}.plugbox").read_bytes())
    assert client.search("frequent words")[0]["version"] == "0.2.0"
    assert client.install("word-stats==0.1.0").ok
    hosted = host.get("word-stats")
    assert hosted is not None
    assert hosted.plugin.call_json("text.stats", {"text": "a b a"})["words"] == 3
    assert client.outdated()[0]["latest"] == "0.2.0"
    assert client.upgrade("word-stats").actions[0]["status"] == "upgraded"
    assert host.info("word-stats").version == "0.2.0"
    assert host.rollback("word-stats").version == "0.1.0"
    hosted = host.get("word-stats")
    assert hosted is not None
    assert hosted.plugin.call_json("text.stats", {"text": "x y"})["words"] == 2


def test_upgrading_a_plugin_upgrades_the_dependency_its_new_version_needs_first(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    pub(repo, tmp_path, "beta", "1.0.0", requires={"alpha": ">=1"})
    client.install("beta")
    pub(repo, tmp_path, "alpha", "1.1.0")
    pub(repo, tmp_path, "alpha", "1.2.0", abi="1.9")  # not runnable here: never chosen
    pub(repo, tmp_path, "beta", "1.1.0", requires={"alpha": ">=1.1"})
    result = client.upgrade("beta")
    assert [(a["plugin"], a["from"], a["to"], a["status"]) for a in result.actions] == [
        ("alpha", "1.0.0", "1.1.0", "upgraded"), ("beta", "1.0.0", "1.1.0", "upgraded")]
    assert sorted(echo(host)) == ["alpha 1.1.0", "beta 1.1.0"]


def test_a_python_plugin_installed_from_the_registry(
        repo: TufRepository, client: RegistryClient, host: plugbox.PluginHost,
        tmp_path: Path) -> None:
    """py-echo, built from source with componentize-py (cached like built_samples)."""
    from plugbox.authoring import _pybuild
    from plugbox.trust._package import write_package
    from tests.conftest import REPO

    module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / "echo",
                                          out_dir=REPO / ".build" / "pytest-pybuild" / "py-echo")
    write_package(module.parent, tmp_path / "py-echo.plugbox")
    publish(repo, "team", (tmp_path / "py-echo.plugbox").read_bytes())
    assert client.search("payload unchanged")[0]["name"] == "py-echo"
    assert client.install("py-echo").ok
    hosted = host.get("py-echo")
    assert hosted is not None and hosted.plugin.call("echo", b"hello") == b"hello"
