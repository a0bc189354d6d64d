"""``plugbox doctor`` (issue 10 §3): each check on a healthy environment and on the faults it
is there to find: a corrupt cache entry, a corrupt database, a lifecycle state that lost its
files, unusable or revoked keys, a wrong clock, the accelerator switched off."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.cli import _doctor
from plugbox.cli._main import main
from plugbox.trust._signing import write_keypair
from tests.conftest import ECHO_BODY, wat_module, write_plugin


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", "--json", *argv])
    doc = json.loads(capsys.readouterr().out)
    return code, doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state dir where one plugin was loaded (a compiled cache entry, a kv database)."""
    state = tmp_path / "state"
    plugin = write_plugin(tmp_path / "echo", wat_module(ECHO_BODY), name="echo")
    with plugbox.Runtime(state_dir=state) as runtime:
        runtime.load(plugin).call("run", b"hi")
    return state


def test_a_healthy_environment_passes(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = doctor(capsys, "--state-dir", str(state))
    checks = by_name(doc)
    assert code == 0 and doc["ok"] is True
    assert list(checks)[:7] == ["python", "wasmtime", "accelerator", "rust-toolchain",
                                "python-toolchain", "state-dir", "cache"]
    assert checks["python"]["status"] == "ok"
    assert checks["wasmtime"]["status"] == "ok" and "wasmtime 50." in checks["wasmtime"]["detail"]
    assert checks["cache"]["status"] == "ok"
    assert "1 entries" in checks["cache"]["detail"]
    assert checks["cache"]["detail"].endswith("1 checked, all valid")
    assert checks["database plugbox.sqlite3"]["status"] == "ok"
    assert checks["trust"]["status"] == "warn"  # no keys given
    assert checks["clock"]["status"] == "ok"
    assert all(c["status"] != "fail" for c in doc["checks"])

    # the human form says the same, with the fix of each warning
    assert main(["doctor", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "no trusted keys given" in out and "fix: pass --trusted-keys" in out
    assert out.rstrip().endswith("doctor: no failures")


def test_a_corrupt_cache_entry_is_a_warning(state: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    entry = next((state / "cache").glob("*.cwasm"))
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    code, doc = doctor(capsys, "--state-dir", str(state))
    cache = by_name(doc)["cache"]
    assert code == 0 and cache["status"] == "warn"
    assert f"1 corrupt or not made by this cache ({entry.name})" in cache["detail"]
    assert "recompiled when it is next used" in cache["fix"]


def test_a_corrupt_database_fails(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = state / "plugbox.sqlite3"
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)  # the header's tail and the schema page
    db.write_bytes(bytes(data))
    code, doc = doctor(capsys, "--state-dir", str(state))
    check = by_name(doc)["database plugbox.sqlite3"]
    assert code == 1 and doc["ok"] is False and check["status"] == "fail"
    assert "restore it from a backup" in check["fix"]


def test_a_lifecycle_state_that_lost_its_files_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    source = write_plugin(tmp_path / "src", wat_module(ECHO_BODY), name="alpha")
    with plugbox.PluginHost(state_dir=state) as host:
        host.start()
        host.install(source)
    code, doc = doctor(capsys, "--state-dir", str(state))
    assert code == 0 and by_name(doc)["lifecycle"]["status"] == "ok"

    shutil.rmtree(state / "plugins" / "alpha" / "0.1.0")
    code, doc = doctor(capsys, "--state-dir", str(state))
    lifecycle = by_name(doc)["lifecycle"]
    assert code == 1 and lifecycle["status"] == "fail"
    assert "alpha 0.1.0" in lifecycle["detail"] and "unreadable" in lifecycle["detail"]
    assert "reinstall" in lifecycle["fix"]


def test_trusted_keys_and_revocations(tmp_path: Path, state: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    _, pub_a, key_a = write_keypair(tmp_path / "a", comment="alice")
    _, pub_b, key_b = write_keypair(tmp_path / "b", comment="bob")
    keys.mkdir()
    shutil.copy(pub_a, keys / "alice.pub")
    shutil.copy(pub_b, keys / "bob.pub")
    base = ("--state-dir", str(state), "--trusted-keys", str(keys))

    code, doc = doctor(capsys, *base)
    trust = by_name(doc)["trust"]
    assert code == 0 and trust["status"] == "ok" and trust["detail"].startswith("2 trusted")

    code, doc = doctor(capsys, *base, "--revoked", key_a.key_id_hex)
    trust = by_name(doc)["trust"]
    assert code == 0 and trust["status"] == "warn" and "trusted but revoked" in trust["detail"]

    code, doc = doctor(capsys, *base, "--revoked", key_a.key_id_hex,
                       key_b.key_id_hex)
    trust = by_name(doc)["trust"]
    assert code == 1 and trust["status"] == "fail" and "every trusted key is revoked" in \
        trust["detail"]

    (keys / "broken.pub").write_text("untrusted comment: x\nnot a key\n")
    code, doc = doctor(capsys, *base)
    trust = by_name(doc)["trust"]
    assert code == 1 and trust["status"] == "fail" and "broken.pub" in trust["detail"]


def test_a_clock_in_the_past_fails() -> None:
    check = _doctor.check_clock(now=lambda: 86_400.0)
    assert check.status == "fail" and "1970-01-02" in check.detail and "NTP" in (check.fix or "")
    assert _doctor.check_clock().status == "ok"


def test_a_state_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    check = _doctor.check_state_dir(tmp_path / "f")
    assert check.status == "fail" and "not a directory" in check.detail


def test_the_accelerator_switched_off_is_a_warning(state: Path) -> None:
    """A real process, since the accelerator is chosen at import."""
    proc = subprocess.run([str(Path(sys.executable).with_name("plugbox")), "doctor", "--json",
                           "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PLUGBOX_NO_SPEEDUPS": "1"})
    doc = json.loads(proc.stdout)
    accel = by_name(doc)["accelerator"]
    assert proc.returncode == 0 and accel["status"] == "warn"
    assert "disabled by PLUGBOX_NO_SPEEDUPS" in accel["detail"]
