"""bench/soak.py --quick as a smoke test: every soak and fault scenario runs (at ~1/20 scale)
and meets its bounds. The full-scale figures are in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from .conftest import REPO

SCENARIOS = ("calls-1m", "load-close", "threads", "kv-kill", "cache-kill", "full-fs",
             "readonly-fs")
# Scenarios that may be skipped, with the reason shown, where mounting a tmpfs is not allowed.
MAY_SKIP = {"full-fs", "readonly-fs"}

# Checks that fail until other parts of issue 7 land (section 7: .tmp-* swept on start; every
# state failure a PlugboxError). They are reported as xfail while they fail, and the test
# fails once they pass, so that this table is emptied: scenario -> {check: what fixes it}.
PENDING: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def soak() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.stdout.strip(), f"soak.py printed nothing (exit {proc.returncode}):\n" \
                                f"{proc.stderr[-3000:]}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.mark.parametrize("name", SCENARIOS)
def test_soak_scenario_meets_its_bounds(soak: dict[str, Any], name: str) -> None:
    found = {sc["name"]: sc for sc in soak["scenarios"]}
    assert name in found, f"scenario {name} did not run"
    sc = found[name]
    if sc["status"] == "skip":
        assert name in MAY_SKIP, f"{name} was skipped: {sc['reason']}"
        pytest.skip(f"{name}: {sc['reason']}")
    assert not sc["error"], f"{name}: {sc['error']}"
    assert sc["checks"], f"{name} produced no figures"
    pending = PENDING.get(name, {})
    failed = {r["check"]: r["shown"] for r in sc["checks"] if r["ok"] is False}
    unexpected = {c: v for c, v in failed.items() if c not in pending}
    assert not unexpected, f"{name} missed its bounds: {unexpected}"
    checked = {r["check"] for r in sc["checks"] if r["ok"] is not None}
    fixed = [c for c in pending if c in checked and c not in failed]
    assert not fixed, f"{name}: {fixed} pass now; remove them from PENDING"
    if failed:
        pytest.xfail("; ".join(f"{c} -> {failed[c]} (needs {pending[c]})" for c in failed))
