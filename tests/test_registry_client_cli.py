"""The registry client's command line (issue 12 §3): plugbox registries add/list/remove,
search, install, outdated, upgrade, audit, each with --json, against a TUF repository served
over 127.0.0.1, installing through the lifecycle state of --state-dir."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbox.cli._main import main
from plugbox.registry._tuf import TufRepository
from tests.test_registry_tuf import TufServer, package, publish


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    return TufRepository.init(tmp_path / "tuf")


@pytest.fixture
def server(repo: TufRepository) -> Iterator[TufServer]:
    srv = TufServer(repo)
    yield srv
    srv.close()


Run = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """``run(*argv, json_out=True)``: (exit code, parsed --json stdout or text, stderr)."""
    def call(*argv: str, json_out: bool = True) -> tuple[int, Any, str]:
        args = [*argv, "--state-dir", str(tmp_path / "state")]
        if json_out:
            args.append("--json")
        code = main(args)
        out, err = capsys.readouterr()
        return code, json.loads(out) if json_out and out.strip() else out, err
    return call


def pub(repo: TufRepository, tmp_path: Path, name: str, version: str, **manifest: Any) -> None:
    publish(repo, "alice", package(tmp_path / "src" / f"{name}-{version}", name, version,
                                   **manifest))


def test_the_whole_path_from_the_shell(repo: TufRepository, server: TufServer, run: Run,
                                       tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0", description="says hello")
    pub(repo, tmp_path, "alpha", "2.0.0", abi="1.9")
    root = repo.metadata_dir / "1.root.json"
    code, doc, _ = run("registries", "add", "main", server.url, "--root", str(root))
    assert code == 0 and doc["registry"]["url"] == server.url
    code, doc, _ = run("registries", "list")
    assert [r["name"] for r in doc["registries"]] == ["main"]

    code, doc, _ = run("search", "hello")
    assert code == 0 and [(h["name"], h["version"]) for h in doc["results"]] == [
        ("alpha", "1.0.0")]
    code, text, _ = run("search", "hello", json_out=False)
    assert "alpha" in text and "says hello" in text

    code, doc, _ = run("install", "alpha")
    assert code == 0 and doc["actions"][0]["to"] == "1.0.0"
    code, doc, _ = run("outdated")
    assert doc["outdated"] == []

    pub(repo, tmp_path, "alpha", "1.1.0", permissions={"log": True})
    code, doc, _ = run("outdated")
    assert [(r["name"], r["latest"]) for r in doc["outdated"]] == [("alpha", "1.1.0")]
    code, doc, _ = run("upgrade", "--all")
    assert code == 1 and doc["actions"][0]["status"] == "needs-consent"
    code, doc, _ = run("upgrade", "alpha", "--yes")
    assert code == 0 and doc["actions"][0]["status"] == "upgraded"

    code, doc, _ = run("audit")
    assert code == 0 and doc["vulnerable"] == []
    repo.set_listing("alpha", json.dumps({"advisories": [{
        "id": "PBX-1", "affected": ">=1.1,<1.2", "severity": "critical", "fixed_in": None,
        "text": "remote crash"}]}).encode())
    code, doc, _ = run("audit")
    assert code == 1 and doc["vulnerable"][0]["advisory"]["id"] == "PBX-1"
    code, text, _ = run("audit", json_out=False)
    assert code == 1 and "PBX-1" in text and "remote crash" in text

    code, doc, _ = run("plugins", "list")
    assert [(p["name"], p["version"]) for p in doc["plugins"]] == [("alpha", "1.1.0")]
    code, doc, _ = run("registries", "remove", "main")
    assert code == 0


def test_a_tuf_refusal_and_a_conflict_exit_1_with_typed_errors(
        repo: TufRepository, server: TufServer, run: Run, tmp_path: Path) -> None:
    pub(repo, tmp_path, "alpha", "1.0.0")
    pub(repo, tmp_path, "beta", "1.0.0", requires={"alpha": ">=2"})
    run("registries", "add", "main", server.url, "--root",
        str(repo.metadata_dir / "1.root.json"))
    code, doc, _ = run("install", "beta")
    assert code == 1 and doc["error"]["type"] == "ResolutionError"
    assert doc["error"]["conflicts"] == [{"plugin": "beta 1.0.0", "wants": "alpha>=2"}]
    server.overrides["/tuf/metadata/timestamp.json"] = \
        (TufRepository.init(tmp_path / "evil").metadata_dir / "timestamp.json").read_bytes()
    code, doc, _ = run("search", "")
    assert code == 1 and doc["error"]["attack"] == "untrusted"
    assert doc["error"]["registry"] == "main"
    code, _, err = run("install", "alpha", json_out=False)
    assert code == 1 and "UpdateAttackError" in err


def test_bad_input_exits_2(run: Run, tmp_path: Path, repo: TufRepository) -> None:
    code, doc, _ = run("registries", "add", "main", "ftp://x", "--root",
                       str(repo.metadata_dir / "1.root.json"))
    assert code == 2 and "not an http(s) URL" in doc["error"]["message"]
    code, doc, _ = run("upgrade")
    assert code == 2
    code, doc, _ = run("install", "Not A Name")
    assert code == 2
