"""A host's own pluggy hookspecs (project "tally") for tests/test_pluggy.py."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("tally")
hookimpl = pluggy.HookimplMarker("tally")


@hookspec
def text_stats(text: str) -> dict[str, Any]:  # type: ignore[empty-body]
    """Statistics about ``text``; every implementation answers."""


@hookspec
def tally_args(b: Any, a: Any) -> Any:
    """Any JSON values; implementations get them by name."""


@hookspec
def tally_order() -> str:  # type: ignore[empty-body]
    """Each implementation says who it is (no arguments at all)."""


@hookspec(firstresult=True)
def tally_pick(choices: list[str]) -> str | None:
    """The first implementation with an opinion picks one of ``choices``."""
