"""``plugbox dev`` (issue 9 §6): rebuild on change, hot-reload into a host, call, report.

The watch test runs the real command in a separate process on a real Rust plugin and edits
its source while it runs; waits are bounded generously (the machine is shared), never timed.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbox.authoring import _scaffold
from plugbox.cli import main
from plugbox.cli._dev import DevLoop, point_version, source_filter

REPO = Path(__file__).resolve().parent.parent
#: Shared with tests/test_pybuild.py: the SDK stays compiled between tests and runs.
CARGO_TARGET = REPO / ".build" / "pytest-pybuild" / "cargo-target"
#: Generous bound on one build + reload under load (a cold cargo build of the SDK included).
WAIT_S = 600


@pytest.fixture
def rust_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CARGO_TARGET_DIR", str(CARGO_TARGET))
    return _scaffold.new_plugin("hello-rs", "rust", tmp_path)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- one build -------------------------------------------------------------------------------


def test_once_builds_loads_and_calls_a_rust_plugin(
        rust_plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dev", str(rust_plugin), "--once", "--hook", "greet",
                 "--payload", '{"name": "Ada"}', "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    [report] = _json_lines(out)
    assert report["event"] == "build" and report["build"] == 1 and report["ok"] is True
    assert (report["plugin"], report["version"], report["language"]) == \
        ("hello-rs", "0.1.0", "rust")
    assert report["stage"] is None and report["error"] is None and report["serving"] == 1
    assert len(report["sha256"]) == 64 and report["seconds"] >= 0
    call = report["call"]
    assert call["hook"] == "greet" and call["ok"] is True and call["error"] is None
    assert call["result"] == {"greeting": "Hello, Ada!"}
    # The source directory is not rewritten: builds are staged elsewhere.
    manifest = json.loads((rust_plugin / "plugbox.json").read_text())
    assert manifest["module"]["sha256"] == "0" * 64
    assert not (rust_plugin / "plugin.wasm").exists()


def test_once_reports_a_failing_call_and_a_failing_build(
        rust_plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The plugin refuses an empty name: the build is fine, the call fails -> exit 1.
    code = main(["dev", str(rust_plugin), "--once", "--hook", "greet", "--payload",
                 '{"name": " "}'])
    out = capsys.readouterr().out
    assert code == 1
    assert "[build 1] ok" in out and "greet FAILED GuestError" in out
    assert "name must not be empty" in out

    _edit(rust_plugin / "src" / "lib.rs", "Ok(payload)", "Ok(payload) +")
    code = main(["dev", str(rust_plugin), "--once", "--hook", "echo", "--json"])
    [report] = _json_lines(capsys.readouterr().out)
    assert code == 1
    assert report["ok"] is False and report["stage"] == "build"
    assert report["error"]["type"] == "BuildError" and "cargo build" in report["error"]["message"]
    assert report["serving"] is None and report["call"] is None


def test_a_load_failure_keeps_the_previous_build_serving(rust_plugin: Path) -> None:
    with DevLoop(rust_plugin, hook="greet", payload=b'{"name": "Ada"}') as loop:
        first = loop.rebuild()
        assert first["ok"] and first["serving"] == 1
        # Builds, but asks for more memory than the host's policy allows: refused at load.
        _edit(rust_plugin / "plugbox.json", '"memory_bytes": 16777216',
              '"memory_bytes": 1099511627776')
        second = loop.rebuild(["plugbox.json"])
        assert second["ok"] is False and second["stage"] == "load"
        assert second["error"]["type"] == "PolicyViolationError"
        assert second["serving"] == 1 and second["changed"] == ["plugbox.json"]
        hosted = loop.host.get("hello-rs")
        assert hosted is not None
        assert hosted.plugin.call_json("greet", {"name": "Bo"}) == {"greeting": "Hello, Bo!"}
        _edit(rust_plugin / "plugbox.json", '"memory_bytes": 1099511627776',
              '"memory_bytes": 16777216')
        _edit(rust_plugin / "src" / "lib.rs", "Hello, {}!", "Hi, {}!")
        third = loop.rebuild(["src/lib.rs"])
        assert third["ok"] and third["serving"] == 3
        assert third["call"]["result"] == {"greeting": "Hi, Ada!"}
        assert [hp.name for hp in loop.host.plugins] == ["hello-rs"]


def test_point_is_declared_and_dispatched(
        rust_plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((rust_plugin / "plugbox.json").read_text())
    manifest["implements"] = {"text.greet": {"versions": ">=2.1,<3", "hook": "greet"}}
    (rust_plugin / "plugbox.json").write_text(json.dumps(manifest))
    code = main(["dev", str(rust_plugin), "--once", "--point", "text.greet",
                 "--payload", '{"name": "Ada"}', "--json"])
    [report] = _json_lines(capsys.readouterr().out)
    assert code == 0, report
    call = report["call"]
    assert call["point"] == "text.greet" and call["hook"] is None and call["ok"]
    assert call["result"]["results"] == [{"plugin": "hello-rs",
                                          "value": {"greeting": "Hello, Ada!"}}]
    assert call["result"]["failures"] == []


def test_point_version_satisfies_the_specifier() -> None:
    assert point_version(">=1.2,<2") == "1.2.0"
    assert point_version(">=2.1,<3") == "2.1.0"
    assert point_version("==3.0.*") == "3.0.0"
    assert point_version("~=1.4") == "1.4.0"
    assert point_version("") == "1.0.0"
    assert point_version(">1.0,<2") == "1.0.1"
    assert point_version("!=1.0") == "1.0.1"
    assert point_version("not a specifier") == "1.0.0"


def test_python_plugin_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = _scaffold.new_plugin("hello-py", "python", tmp_path)
    code = main(["dev", str(plugin), "--once", "--hook", "greet", "--payload",
                 '{"name": "Ada"}', "--json", "-q"])
    [report] = _json_lines(capsys.readouterr().out)
    assert code == 0, report
    assert report["language"] == "python" and report["plugin"] == "hello-py"
    assert report["call"]["result"] == {"greeting": "Hello, Ada!"}


# -- usage -----------------------------------------------------------------------------------


def test_usage_errors(tmp_path: Path, rust_plugin: Path,
                      capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["dev", str(tmp_path / "missing"), "--once"]) == 2
    assert "no such plugin directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["dev", str(tmp_path / "empty"), "--once", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "UsageError" and "neither app.py" in error["message"]
    assert main(["dev", str(rust_plugin), "--hook", "a", "--point", "b"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["dev", str(rust_plugin), "--once", "--payload", "{nope"]) == 2
    assert "--payload must be valid JSON" in capsys.readouterr().err
    assert main(["dev", str(rust_plugin), "--once", "--payload", "1", "--text", "x"]) == 2
    assert "not both" in capsys.readouterr().err
    # Watching needs watchfiles; without it the command says how to get it.
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    assert main(["dev", str(rust_plugin)]) == 2
    assert "pip install 'plugbox[dev-tools]'" in capsys.readouterr().err


def test_source_filter_ignores_build_outputs(tmp_path: Path) -> None:
    import watchfiles

    accept = source_filter(tmp_path)
    modified = watchfiles.Change.modified
    assert accept(modified, str(tmp_path / "src" / "lib.rs"))
    assert accept(modified, str(tmp_path / "plugbox.json"))
    assert accept(modified, str(tmp_path / "app.py"))
    for ignored in ("target/release/x.rlib", "plugin.wasm", "Cargo.lock", "__pycache__/a.pyc",
                    "plugin.wasm.pybuild.json", ".git/index", "src/.lib.rs.swp"):
        assert not accept(modified, str(tmp_path / ignored)), ignored
    # A "target" directory above the plugin is not a reason to ignore it.
    nested = tmp_path / "target" / "plugin"
    assert source_filter(nested)(modified, str(nested / "src" / "lib.rs"))


# -- watching, in a real process -------------------------------------------------------------


@pytest.fixture
def dev_process(rust_plugin: Path) -> Iterator[tuple[subprocess.Popen[str],
                                                     queue.Queue[str | None]]]:
    cmd = [sys.executable, "-c", "import sys; from plugbox.cli import main; sys.exit(main())",
           "dev", str(rust_plugin), "--hook", "greet", "--payload", '{"name": "Ada"}',
           "--json", "--max-builds", "3", "--debounce-ms", "300"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, CARGO_TARGET_DIR=str(CARGO_TARGET)))
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def _next_report(lines: queue.Queue[str | None]) -> dict[str, Any]:
    line = lines.get(timeout=WAIT_S)
    assert line is not None, "plugbox dev ended early"
    report: dict[str, Any] = json.loads(line)
    return report


def test_watch_rebuilds_on_edit_and_keeps_serving_after_a_broken_build(
        rust_plugin: Path,
        dev_process: tuple[subprocess.Popen[str], queue.Queue[str | None]]) -> None:
    proc, lines = dev_process
    lib = rust_plugin / "src" / "lib.rs"

    first = _next_report(lines)
    assert first["build"] == 1 and first["ok"]
    assert first["call"]["result"] == {"greeting": "Hello, Ada!"}

    _edit(lib, "Hello, {}!", "Howdy, {}!")
    second = _next_report(lines)
    assert second["build"] == 2 and second["ok"], second
    assert "src/lib.rs" in second["changed"]
    assert second["call"]["result"] == {"greeting": "Howdy, Ada!"}
    assert second["sha256"] != first["sha256"]

    _edit(lib, "Ok(payload)", "Ok(payload) +")
    third = _next_report(lines)
    assert third["build"] == 3 and not third["ok"] and third["stage"] == "build"
    assert third["error"]["type"] == "BuildError" and third["serving"] == 2
    # --max-builds 3 ends the loop; the last build failed, so exit 1.
    assert proc.wait(timeout=WAIT_S) == 1
    assert lines.get(timeout=WAIT_S) is None


def test_dev_is_listed_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "rebuild a plugin on every change" in capsys.readouterr().out
