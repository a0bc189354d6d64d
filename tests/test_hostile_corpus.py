"""The hostile corpus (issue 7, section 10): every case in :mod:`tests.hostile` runs in its own
child process with a timeout and a host-RSS bound, must end in the typed outcome it names, and
must leave the host serving a normal plugin byte-exact.

The first test to need a result runs every selected case, two children at a time; each test
then asserts its own case's result. ``-k`` selects cases by id as usual.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tests.hostile import Case, all_cases
from tests.hostile.harness import Result, run_cases

CASES = all_cases()
_results: dict[str, Result] = {}


@pytest.fixture(scope="session")
def corpus_results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   cache_dir: Path) -> dict[str, Result]:
    """Run every selected case once for the session (the Rust samples only when selected)."""
    selected = {item.callspec.params["hostile"].id for item in request.session.items
                if getattr(item, "callspec", None) is not None
                and isinstance(item.callspec.params.get("hostile"), Case)}
    cases = [c for c in CASES if c.id in selected]
    rust: dict[str, Path] = {}
    if any(c.rust for c in cases):
        rust = request.getfixturevalue("rust_plugins")
    _results.update(run_cases(cases, tmp_path_factory.mktemp("hostile"), cache_dir, rust))
    return _results


@pytest.mark.parametrize("hostile", CASES, ids=[c.id for c in CASES])
def test_hostile_case(hostile: Case, corpus_results: dict[str, Result]) -> None:
    result = corpus_results[hostile.id]
    assert result.ok, f"[{hostile.section}] {hostile.id}: {result.summary}"


def test_corpus_covers_every_class() -> None:
    """At least 150 cases, spread over every section of issue 7 (1-9)."""
    by_section = collections.Counter(c.section.split()[0] for c in CASES)
    assert len(CASES) >= 150
    assert set(by_section) >= {str(n) for n in range(1, 10)}, by_section
    assert any(c.rust for c in CASES)
