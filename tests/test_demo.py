"""The demo (``python -m plugbox.demo``) end to end: it builds the sample plugins from source
through plugbox.authoring._build and every section behaves as the README promises."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugbox import FuelExhausted, demo

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    """The --json summary of one full demo run, building the samples from source."""
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        code = demo.main(["--json"])
    result: dict[str, Any] = json.loads(out.getvalue())
    result["exit_code"] = code
    return result


def test_demo_succeeds(summary: dict[str, Any]) -> None:
    assert summary["failures"] == []
    assert summary["ok"] is True
    assert summary["exit_code"] == 0
    assert list(summary["sections"]) == ["verification", "hooks", "denials", "limits"]
    assert all(s["ok"] for s in summary["sections"].values())


def test_demo_builds_from_source(summary: dict[str, Any]) -> None:
    build = summary["build"]
    assert build["source"] == "cargo"
    assert Path(build["workspace"]) == REPO / "sample-plugins" / "rust"
    assert set(build["plugins"]) >= set(demo.PLUGINS)


def test_verification(summary: dict[str, Any]) -> None:
    section = summary["sections"]["verification"]
    plugins = {p["name"]: p for p in section["plugins"]}
    assert set(plugins) == set(demo.PLUGINS)
    for p in plugins.values():
        # counter uses kv.increment (ABI 1.1); the others are 1.0 plugins.
        assert len(p["sha256"]) == 64 and p["abi"] == ("1.1" if p["name"] == "counter" else "1.0")
    assert plugins["probe"]["permissions"] == []
    assert any(perm.startswith("http") for perm in plugins["fetcher"]["permissions"])

    tampered = section["tampered"]
    assert tampered["refused"] is True
    assert tampered["error"] == "HashMismatchError"
    assert "sha256" in tampered["message"]
    assert tampered["compiled"] is False
    assert tampered["plugins_added"] == 0


def test_hooks(summary: dict[str, Any]) -> None:
    section = summary["sections"]["hooks"]
    calls = {c["plugin"]: c for c in section["calls"]}
    assert set(calls) == {"word-stats", "counter", "fetcher", "echo"}
    assert all(c["ok"] for c in calls.values())
    assert calls["word-stats"]["result"] == demo.expected_word_stats(demo.TEXT, demo.TOP_N)
    assert calls["counter"]["values"] == [1, 2, 5]
    assert [e["topic"] for e in section["events"]] == ["counter.changed"] * 3
    assert [e["payload"]["value"] for e in section["events"]] == [1, 2, 5]
    fetched = calls["fetcher"]["result"]
    assert fetched["status"] == 200
    assert fetched["request_id"] in fetched["body"]
    assert calls["echo"]["result_hex"] == demo.ECHO_PAYLOAD.hex()


def test_denials(summary: dict[str, Any]) -> None:
    section = summary["sections"]["denials"]
    services = section["services"]
    assert set(services) == set(demo.SERVICES)
    for name in ("config", "kv", "events", "random", "http"):
        assert services[name]["plugin_saw"].startswith("denied"), name
    assert services["clock"]["plugin_saw"] == "zero"
    for name in demo.SERVICES:
        assert section["denied_counters"][name] >= 1, name


def test_runaways_stopped_with_typed_errors(summary: dict[str, Any]) -> None:
    section = summary["sections"]["limits"]
    got = [(r["hook"], r["error"]) for r in section["runaways"]]
    assert got == [
        ("loop", "FuelExhausted"),
        ("loop", "DeadlineExceeded"),
        ("bomb", "MemoryLimitExceeded"),
        ("recurse", "StackOverflow"),
        ("bad-host-ptr", "AbiViolation"),
    ]
    limits = {r["error"]: r["error_limit"] for r in section["runaways"]}
    assert limits["FuelExhausted"] == "fuel"
    assert limits["DeadlineExceeded"] == "deadline"
    assert limits["MemoryLimitExceeded"] == "memory"
    assert limits["StackOverflow"] == "stack"
    deadline_row = section["runaways"][1]
    # Stopped by the 100 ms deadline, long before the raised fuel would run out.
    assert deadline_row["elapsed_ms"] < 2000
    assert all(r["message"] for r in section["runaways"])


def test_host_still_serving(summary: dict[str, Any]) -> None:
    section = summary["sections"]["limits"]
    serving = {s["plugin"]: s for s in section["still_serving"]}
    assert serving["hostile"] == {"plugin": "hostile", "hook": "echo", "ok": True,
                                  "result": "still here"}
    assert serving["word-stats"]["ok"] is True
    assert section["instances_discarded"] >= 5


def test_demo_restores_logging(summary: dict[str, Any]) -> None:
    logger = logging.getLogger("plugbox")
    assert logger.propagate is True
    assert not any(type(h).__name__ == "_LogCollector" for h in logger.handlers)


def test_rich_report(rust_plugins: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    staged = next(iter(rust_plugins.values())).parent
    assert demo.main(["--no-build", str(staged)]) == 0
    out = capsys.readouterr().out
    for text in ("1 · Verification", "HashMismatchError", "2 · Hooks", "counter.changed",
                 "3 · Service calls denied", "4 · Runaway plugins", "DeadlineExceeded",
                 "host still serving", "all 4 sections behaved as expected"):
        assert text in out, text


def test_unexpected_behaviour_exits_1(
    rust_plugins: dict[str, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Expect hostile/echo to run out of fuel: it answers instead, so the section fails.
    monkeypatch.setattr(demo, "RUNAWAYS", (("echo", {}, FuelExhausted, "fuel"),))
    staged = next(iter(rust_plugins.values())).parent
    assert demo.main(["--no-build", str(staged)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # undo rich's line wrapping
    assert "expected FuelExhausted, got returned normally" in out
    assert "did not behave as expected" in out


def test_missing_plugins_exit_1(
    rust_plugins: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(rust_plugins["echo"], tmp_path / "echo")
    assert demo.main(["--json", "--no-build", str(tmp_path)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert "word-stats" in result["error"]


def test_module_entry_point(rust_plugins: dict[str, Path]) -> None:
    staged = next(iter(rust_plugins.values())).parent
    proc = subprocess.run(
        [sys.executable, "-m", "plugbox.demo", "--json", "--no-build", str(staged)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
