"""What a dispatch returns: :class:`DispatchResult`, with a :class:`Result` per plugin that
answered and a :class:`Failure` per plugin that failed.

Plain slotted dataclasses, not frozen ones: one is made per dispatch and per answer, and a
frozen dataclass costs about three times as much to construct, which showed in the
dispatch overhead (bench/run.py, section 7). Each dispatch returns new objects, so nothing
shared is exposed to mutation."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from .._errors import PlugboxError

__all__ = ["DispatchResult", "Failure", "Result"]


@dataclass(slots=True)
class Result:
    """One plugin's answer in a dispatch: the decoded JSON value (bytes for a bytes point)."""

    plugin: str
    value: Any


@dataclass(slots=True)
class Failure:
    """One plugin's failure in a dispatch: ``error`` is the typed error (a
    :class:`plugbox.PluginCallError` subclass such as :class:`plugbox.FuelExhausted`,
    :class:`plugbox.GuestError` or :class:`plugbox.InvalidResultError`)."""

    plugin: str
    error: PlugboxError

    @property
    def kind(self) -> str:
        """The error's class name (``FuelExhausted``, ``GuestError``, ...), as in
        :meth:`DispatchResult.to_json`."""
        return type(self.error).__name__


def _jsonable(value: Any) -> Any:
    # Bytes points carry bytes; JSON has no bytes, so they travel as base64 text.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


@dataclass(slots=True)
class DispatchResult:
    """The outcome of one dispatch of extension point ``point`` in ``mode``.

    ``value``: the answer for ``first`` (the first non-null result, else None) and
    ``pipeline`` (the last output; the input when no plugin succeeded), None for ``each`` and
    ``notify``. ``results``: the plugins' answers in dispatch order (``each``: every one that
    succeeded; ``first``: the one that answered; ``pipeline``: each stage's output;
    ``notify``: none). ``failures``: the plugins that failed under the ``isolate`` policy, in
    dispatch order (``propagate`` raises the first failure instead).
    """

    point: str
    mode: str
    value: Any = None
    results: list[Result] = field(default_factory=list, hash=False)
    failures: list[Failure] = field(default_factory=list, hash=False)

    @property
    def ok(self) -> bool:
        """True when no plugin failed."""
        return not self.failures

    @property
    def values(self) -> list[Any]:
        """The values of :attr:`results`, in order."""
        return [result.value for result in self.results]

    def to_json(self) -> dict[str, Any]:
        """The dispatch as JSON (what a guest's ``host.dispatch`` receives)::

            {"point": str, "mode": str, "value": <first/pipeline output or null>,
             "results": [{"plugin": str, "value": <json>}],
             "failures": [{"plugin": str, "error": str, "kind": str}]}

        ``kind`` is the error's class name; values of a bytes point are base64 text.
        """
        return {
            "point": self.point,
            "mode": self.mode,
            "value": _jsonable(self.value),
            "results": [{"plugin": r.plugin, "value": _jsonable(r.value)}
                        for r in self.results],
            "failures": [{"plugin": f.plugin, "error": str(f.error), "kind": f.kind}
                         for f in self.failures],
        }
