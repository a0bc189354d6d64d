"""Dispatch order: ``before``/``after`` constraints first (a topological order, so they are
never broken), then higher priority, then add order. A cycle is reported with its plugins."""

from __future__ import annotations

import graphlib
import heapq
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Entry", "dispatch_order"]


class Entry(Protocol):
    """What the sort needs of a plugin's implementation of one point."""

    @property
    def name(self) -> str: ...
    @property
    def key(self) -> tuple[int, int]: ...  # (-priority, add index): smaller runs first
    @property
    def before(self) -> tuple[str, ...]: ...
    @property
    def after(self) -> tuple[str, ...]: ...


E = TypeVar("E", bound=Entry)


class Cycle(Exception):
    """The constraints form a cycle; ``plugins`` is the cycle, first and last equal."""

    def __init__(self, plugins: tuple[str, ...]) -> None:
        super().__init__(plugins)
        self.plugins = plugins


def dispatch_order(entries: Sequence[E]) -> list[E]:
    """``entries`` in dispatch order: the smallest topological order of the constraints,
    ready entries taken by ``key``. Constraints naming plugins not in ``entries`` are
    ignored. Raises :class:`Cycle`."""
    by_name = {entry.name: entry for entry in entries}
    graph: dict[str, set[str]] = {name: set() for name in by_name}  # name -> predecessors
    for entry in entries:
        for other in entry.before:
            if other in by_name:
                graph[other].add(entry.name)
        for other in entry.after:
            if other in by_name:
                graph[entry.name].add(other)
    sorter = graphlib.TopologicalSorter(graph)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        # graphlib lists each node before its successor: the cycle in run order.
        raise Cycle(tuple(exc.args[1])) from None
    ready: list[tuple[tuple[int, int], str]] = []
    out: list[E] = []
    while sorter.is_active():
        for name in sorter.get_ready():
            heapq.heappush(ready, (by_name[name].key, name))
        _, name = heapq.heappop(ready)
        out.append(by_name[name])
        sorter.done(name)
    return out
