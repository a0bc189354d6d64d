"""Structure-aware fuzzing of module loading (issue 7, section 10): ``wasm-tools smith`` modules,
random and with the plugbox imports and exports forced in, through ``Runtime.verify``, ``load``
and one call in two worker processes (see :mod:`tests.hostile.fuzz`). Every outcome must be
success or a PlugboxError; a raw exception, crash or hang fails the test with its seed, and the
failing modules are written to the directory the failure message names.

``PLUGBOX_FUZZ_MODULES`` (default 10,000) and ``PLUGBOX_FUZZ_START`` (default 0) choose the
seeds; docs/reliability.md ("Fuzzing") has the command for longer runs.
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path

from tests.hostile.fuzz import run

SEEDS = int(os.environ.get("PLUGBOX_FUZZ_MODULES", "10000"))
START = int(os.environ.get("PLUGBOX_FUZZ_START", "0"))


def _kind(finding: str) -> str:
    """A finding with its numbers blanked, to group similar ones."""
    return re.sub(r"\d+", "N", finding.split(": ", 1)[-1])[:160]


def test_smith_modules_load_typed_or_not_at_all(tmp_path: Path) -> None:
    failures = Path(os.environ.get("PLUGBOX_FUZZ_FAILURES", tmp_path / "fuzz-failures"))
    report = run(SEEDS, start=START, failures=failures)
    # The generator and the profiles work: nearly every seed became a module, and a good share
    # got as far as a call (so the fuzzing reaches the call path, not only the refusals).
    assert report.modules >= 0.95 * SEEDS, report.outcomes
    called = sum(n for outcome, n in report.outcomes.items() if " call:" in outcome
                 or outcome.endswith(" ok"))
    assert called >= 0.2 * SEEDS, report.outcomes
    if report.failures:
        kinds = collections.Counter(_kind(f) for f in report.failures)
        summary = "\n".join(f"  {n:5d} x {kind}" for kind, n in kinds.most_common(15))
        examples = "\n".join("  " + f[:300] for f in report.failures[:10])
        raise AssertionError(
            f"{len(report.failures)} of {report.modules} modules (seeds {START}.."
            f"{START + SEEDS - 1}) ended in a raw exception, crash or hang; their modules are in "
            f"{failures}\nby kind:\n{summary}\nfirst seeds:\n{examples}")
