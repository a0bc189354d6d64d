"""Discovery (issue 8 §4): plugin directories, ``.plugbox`` packages, explicit paths and the
``plugbox.plugins`` entry-point group of a real wheel installed with pip. Manifests only:
nothing is compiled, run or imported; a broken plugin is a reported problem, not a stop."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.cli._main import main
from plugbox.host._discovery import DiscoveryLimits, discover
from plugbox.trust._package import write_package
from tests.conftest import ECHO_BODY, wat_module, write_plugin

# pooled_instances=0: memories mapped on demand. A closed PluginHost with plugins is not
# collected yet (its router is reachable from each plugin's finalizer), and each would
# keep a 2 TiB pool reserved until the process runs out of address space.
HOST_OPTIONS: dict[str, Any] = {"pooled_instances": 0}

ECHO = wat_module(ECHO_BODY)


def plugin(directory: Path, name: str, **manifest: object) -> Path:
    return write_plugin(directory, ECHO, name=name, **manifest)


def packed(tmp: Path, out: Path, name: str) -> Path:
    write_package(plugin(tmp / f"src-{name}", name), out)
    return out


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    """A plugin directory with good, broken and duplicate plugins in it."""
    root = tmp_path / "plugins"
    plugin(root / "alpha", "alpha")
    plugin(root / "acme" / "beta", "beta")  # grouped one level down
    packed(tmp_path, root / "gamma.plugbox", "gamma")
    (root / "broken-json").mkdir()
    (root / "broken-json" / "plugbox.json").write_text("{not json")
    plugin(root / "broken-schema", "broken-schema", hooks=[])  # at least one hook is required
    (root / "broken.plugbox").write_bytes(b"PK\x03\x04 not really a zip")
    plugin(root / "zz-alpha-again", "alpha")  # sorted after alpha: the duplicate
    plugin(root / ".hidden", "hidden")
    (root / "README.md").write_text("not a plugin")
    return root


def test_a_plugin_directory_yields_its_good_plugins_and_reports_the_broken_ones(
    plugins_dir: Path,
) -> None:
    report = discover([plugins_dir])
    assert [(c.name, c.kind) for c in report.candidates] == [
        ("beta", "directory"), ("alpha", "directory"), ("gamma", "package")]
    assert report.get("gamma").source == plugins_dir / "gamma.plugbox"  # type: ignore[union-attr]
    problems = {p.path.name: p for p in report.problems}
    assert set(problems) == {"broken-json", "broken-schema", "broken.plugbox", "zz-alpha-again"}
    assert isinstance(problems["broken-json"].error, plugbox.ManifestError)
    assert "invalid JSON" in problems["broken-json"].reason
    assert isinstance(problems["broken-schema"].error, plugbox.ManifestError)
    assert problems["broken-schema"].error.json_path == "$.hooks"
    assert isinstance(problems["broken.plugbox"].error, plugbox.PackageError)
    assert str(plugins_dir / "broken.plugbox") in problems["broken.plugbox"].reason
    dup = problems["zz-alpha-again"]
    assert isinstance(dup.error, plugbox.ManifestError) and dup.error.plugin == "alpha"
    assert str(plugins_dir / "alpha") in dup.reason  # names the one that won
    assert not report.ok
    assert all(p.origin == f"directory {plugins_dir}" for p in report.problems)


def test_candidates_load_as_they_are(
    plugins_dir: Path, runtime: plugbox.Runtime
) -> None:
    for candidate in discover([plugins_dir]).candidates:
        loaded = runtime.load(candidate.source)
        assert (loaded.name, loaded.version) == (candidate.name, candidate.version)
        assert loaded.call("run", b"hi") == b"hi"


def test_a_package_candidate_names_the_package_not_a_temporary_directory(
    tmp_path: Path,
) -> None:
    pkg = packed(tmp_path, tmp_path / "p.plugbox", "pkg")
    [candidate] = discover(paths=[pkg]).candidates
    assert candidate.manifest.path == pkg and candidate.manifest.directory == pkg
    assert candidate.manifest.module_path == pkg / "plugin.wasm"


def test_a_broken_package_manifest_is_reported_against_the_package(tmp_path: Path) -> None:
    src = plugin(tmp_path / "src", "bad")
    doc = json.loads((src / "plugbox.json").read_text())
    doc["version"] = "not a version"
    (src / "plugbox.json").write_text(json.dumps(doc))
    write_package(src, tmp_path / "bad.plugbox")
    [problem] = discover(paths=[tmp_path / "bad.plugbox"]).problems
    assert isinstance(problem.error, plugbox.ManifestError)
    assert problem.reason.startswith(f"{tmp_path / 'bad.plugbox'} (plugbox.json)")
    assert problem.error.json_path == "$.version"


def test_explicit_paths_come_first_and_the_same_plugin_is_found_once(
    plugins_dir: Path, tmp_path: Path
) -> None:
    other = plugin(tmp_path / "elsewhere", "alpha")
    report = discover([plugins_dir], paths=[other, plugins_dir / "acme" / "beta"])
    assert report.candidates[0].source == other and report.candidates[0].origin == "path"
    # beta, reached as a path and through the directory, is one plugin, not a duplicate
    assert [c.name for c in report.candidates].count("beta") == 1
    dups = [p for p in report.problems if "found already" in p.reason]
    assert {p.path.name for p in dups} == {"alpha", "zz-alpha-again"}


def test_a_manifest_file_and_a_missing_path_as_explicit_paths(tmp_path: Path) -> None:
    manifest = plugin(tmp_path / "m", "by-manifest") / "plugbox.json"
    report = discover(paths=[manifest, tmp_path / "nowhere"])
    assert [(c.name, c.kind) for c in report.candidates] == [("by-manifest", "manifest")]
    [problem] = report.problems
    assert problem.path == tmp_path / "nowhere" and "no such file" in problem.reason


def test_discovery_is_bounded_in_depth_and_entries(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    plugin(root / "a" / "b" / "c" / "deep-one", "deep-one")  # four levels down
    plugin(root / "shallow", "shallow")
    assert [c.name for c in discover([root]).candidates] == ["shallow"]
    assert [c.name for c in discover([root], limits=DiscoveryLimits(max_depth=4)).candidates] \
        == ["deep-one", "shallow"]
    many = tmp_path / "many"
    for i in range(30):
        plugin(many / f"p{i:02}", f"p{i:02}")
    report = discover([many], limits=DiscoveryLimits(max_entries=10))
    assert len(report.candidates) == 10
    [problem] = report.problems
    assert "stopped after looking at 10 entries" in problem.reason
    with pytest.raises(plugbox.UsageError):
        DiscoveryLimits(max_depth=0)


def test_a_missing_plugin_directory_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    plugin(tmp_path / "ok" / "fine", "fine")
    report = discover([tmp_path / "absent", tmp_path / "ok"])
    assert [c.name for c in report.candidates] == ["fine"]
    assert [p.path for p in report.problems] == [tmp_path / "absent"]
    with pytest.raises(plugbox.UsageError):
        discover(tmp_path / "ok")  # type: ignore[arg-type]


# -- a real wheel -------------------------------------------------------------------------------

def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out: Path, dist: str, files: dict[str, bytes], entry_points: dict[str, str]
                ) -> Path:
    """A minimal, valid pure-Python wheel (PEP 427) holding ``files`` and declaring
    ``entry_points`` in the plugbox.plugins group (written directly: no build backend needed
    offline)."""
    info = f"{dist}-1.0.dist-info"
    eps = "[plugbox.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    members = dict(files)
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n".encode()
    members[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: plugbox-tests\n"
                                b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    members[f"{info}/entry_points.txt"] = eps.encode()
    record = [_record_line(n, d) for n, d in members.items()] + [f"{info}/RECORD,,"]
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return wheel


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``acme-plugins`` installed by pip into a private target directory; its
    package ships a plugin folder and a .plugbox file, and its __init__ would leave a marker if
    anything imported it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = plugin(tmp / "src-echo", "acme-echo")
    packed(tmp, tmp / "acme-packed.plugbox", "acme-packed")
    marker = tmp / "imported"
    files = {
        "acme_plugins/__init__.py": f"open({str(marker)!r}, 'w').close()\n".encode(),
        "acme_plugins/echo/plugbox.json": (src / "plugbox.json").read_bytes(),
        "acme_plugins/echo/plugin.wasm": (src / "plugin.wasm").read_bytes(),
        "acme_plugins/packed.plugbox": (tmp / "acme-packed.plugbox").read_bytes(),
    }
    wheel = build_wheel(tmp, "acme_plugins", files, {
        "echo": "acme_plugins:echo",
        "packed": "acme_plugins:packed.plugbox",
        "missing": "acme_plugins:nothing",
        "bad": "acme_plugins:not/a/name",
    })
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    assert (target / "acme_plugins" / "echo" / "plugbox.json").is_file()
    return target


def test_plugins_ship_in_an_installed_wheel_through_entry_points(
    installed_wheel: Path, runtime: plugbox.Runtime
) -> None:
    report = discover(entry_points=True, search_path=[installed_wheel])
    assert [(c.name, c.kind, c.distribution) for c in report.candidates] == [
        ("acme-echo", "directory", "acme_plugins"), ("acme-packed", "package", "acme_plugins")]
    echo = report.get("acme-echo")
    assert echo is not None
    assert echo.source == installed_wheel / "acme_plugins" / "echo"
    assert echo.origin == "entry point 'echo' of acme_plugins 1.0"
    assert runtime.load(echo.source).call("run", b"from a wheel") == b"from a wheel"
    problems = {p.origin.split("'")[1]: p for p in report.problems}
    assert set(problems) == {"missing", "bad"}
    assert isinstance(problems["missing"].error, plugbox.ManifestError)
    assert "'nothing' in package 'acme_plugins' does not exist" in problems["missing"].reason
    assert "not 'package' or 'package:resource'" in problems["bad"].reason
    # Located, never imported: the package's __init__ did not run.
    assert "acme_plugins" not in sys.modules
    assert not (installed_wheel.parent / "imported").exists()


def test_a_broken_distribution_is_a_problem_beside_the_good_ones(
    installed_wheel: Path, tmp_path: Path
) -> None:
    info = tmp_path / "site" / "broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[plugbox.plugins]\nno equals sign\n")
    report = discover(entry_points=True, search_path=[tmp_path / "site", installed_wheel])
    assert {c.name for c in report.candidates} == {"acme-echo", "acme-packed"}
    broken = [p for p in report.problems if p.origin.startswith("distribution broken")]
    assert len(broken) == 1 and "cannot be read" in broken[0].reason
    assert isinstance(broken[0].error, plugbox.ManifestError)


def test_entry_points_are_found_on_sys_path_by_default(
    installed_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert discover(entry_points=True).get("acme-echo") is None
    monkeypatch.syspath_prepend(str(installed_wheel))
    assert discover(entry_points=True).get("acme-echo") is not None
    assert "acme_plugins" not in sys.modules


# -- the command line -----------------------------------------------------------------------------

def test_plugbox_discover_json(plugins_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", str(plugins_dir), "--json"]) == 1  # problems found
    doc = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in doc["candidates"]] == ["beta", "alpha", "gamma"]
    assert doc["candidates"][0]["hooks"] == ["run"]
    assert {p["error"] for p in doc["problems"]} == {"ManifestError", "PackageError"}
    assert main(["discover", str(plugins_dir / "acme")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("beta 0.1.0")


# -- PluginHost.discover / add_discovered ---------------------------------------------------------

def test_a_host_adds_what_it_discovers_and_reports_what_it_refuses(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = tmp_path / "host-plugins"
    impl = {"text.echo": {"hook": "run"}}
    plugin(root / "one", "one", implements=impl)
    plugin(root / "two", "two", implements=impl)
    plugin(root / "alien", "alien", implements={"no.such.point": {"hook": "run"}})
    (root / "broken").mkdir()
    (root / "broken" / "plugbox.json").write_text("[]")
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options=HOST_OPTIONS | {"cache_dir": cache_dir}) as host:
        host.extension_point("text.echo", version="1.0.0")
        report = host.discover([root])
        assert [c.name for c in report.candidates] == ["alien", "one", "two"]
        added = host.add_discovered(report, priority={"two": 5}, config={"one": {}})
        assert [hp.name for hp in added.plugins] == ["one", "two"]
        problems = {p.path.name: p.error for p in added.problems}
        assert isinstance(problems["broken"], plugbox.ManifestError)  # the report's own
        assert isinstance(problems["alien"], plugbox.IncompatiblePointError)  # the host's
        assert [r.plugin for r in host.call("text.echo", "x").results] == ["two", "one"]
        # Rescanning adds nothing new and does not complain about what is hosted already.
        again = host.add_discovered(host.discover([root]))
        assert again.plugins == () and {p.path.name for p in again.problems} == \
            {"broken", "alien"}


def test_add_discovered_honours_an_enable_list(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "host-plugins"
    for name in ("one", "two"):
        plugin(root / name, name, implements={"text.echo": {"hook": "run"}})
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options=HOST_OPTIONS | {"cache_dir": cache_dir}) as host:
        host.extension_point("text.echo", version="1.0.0")
        added = host.add_discovered(host.discover([root]), only=["two", "three"])
        assert [hp.name for hp in added.plugins] == ["two"]
        [problem] = added.problems
        assert problem.origin == "enable list" and "'three'" in problem.reason
        assert [hp.name for hp in host.plugins] == ["two"]


def test_plugbox_discover_paths_and_entry_points(
    installed_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(installed_wheel))
    one = plugin(tmp_path / "one", "one")
    assert main(["discover", "--path", str(one), "--entry-points", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["distribution"]) for c in doc["candidates"]] == [
        ("one", None), ("acme-echo", "acme_plugins"), ("acme-packed", "acme_plugins")]
    assert len(doc["problems"]) == 2  # the wheel's two bad entry points
    assert main(["discover", str(tmp_path / "empty-nothing"), "--max-depth", "0"]) == 2
