"""Dependency resolution over the installed plugins (issue 9 §4).

A manifest names the plugins it ``requires``, those it uses when present (``optional``) and
those it ``conflicts`` with, each with a PEP 440 specifier (``""``: any version). Over the
installed set (one active manifest per name) and the names meant to run (``enabled``),
:func:`resolve` gives the start order and the plugins that cannot start, each with its reason:

- a required plugin must be installed, enabled and in a matching version, else the dependent
  fails (``missing``, ``disabled``, ``incompatible``), and so, transitively, does every
  plugin requiring it (``failed``);
- an optional plugin that is enabled in a matching version starts before its user; otherwise
  it is not used (:attr:`Resolution.notes` says why), and nothing fails;
- a plugin declaring a conflict with an enabled plugin in a matching version fails
  (``conflict``, naming both and the specifier); when two declare it of each other, the one
  later by name fails, so the other keeps running;
- plugins whose requires/optional edges close a cycle fail (``cycle``, naming the cycle).

The lifecycle (``host/_lifecycle.py``) reads the recorded manifests as :class:`Declared`,
orders and checks ``start()`` with :func:`resolve`, enables :func:`requirements` first,
refuses enabling on a :func:`conflict` (declared on either side), refuses disabling or
uninstalling what :func:`dependents` still need (:func:`in_use`), and records a plugin that
cannot start with :func:`reason` (``dependency <kind>: ...``).

resolvelib was considered and not used: it chooses among candidate versions, and here each
name has exactly one active version; what remains is a graph problem, solved with graphlib.
All work is linear in the number of plugins and edges (manifests bound each list to 64).
"""

from __future__ import annotations

import functools
import graphlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ._errors import DependencyError

__all__ = ["WAITING", "Declared", "Dependent", "Resolution", "conflict", "dependents",
           "describe", "in_use", "reason", "requirements", "resolve"]

#: Reasons of other plugins quoted inside a reason are cut to this many characters.
_QUOTE = 300


class Dependent(Protocol):
    """What resolution needs of a manifest (:class:`plugbox.Manifest` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def requires(self) -> Mapping[str, str]: ...
    @property
    def optional(self) -> Mapping[str, str]: ...
    @property
    def conflicts(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Declared:
    """The dependency fields of a manifest as the lifecycle database stores it (its JSON):
    a :class:`Dependent` read without the plugin's files."""

    name: str
    version: str
    requires: Mapping[str, str] = field(default_factory=dict)
    optional: Mapping[str, str] = field(default_factory=dict)
    conflicts: Mapping[str, str] = field(default_factory=dict)
    data_version: int = 0

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any], *, name: str, version: str) -> Declared:
        """From a stored manifest's JSON (validated when it was installed); ``name`` and
        ``version`` are the recorded ones (they win over the JSON's)."""
        def names(key: str) -> dict[str, str]:
            value = raw.get(key)
            return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) \
                else {}
        data_version = raw.get("data_version", 0)
        return cls(name=name, version=version, requires=names("requires"),
                   optional=names("optional"), conflicts=names("conflicts"),
                   data_version=data_version if type(data_version) is int else 0)


#: The :attr:`plugbox.DependencyError.kind` values a plugin can wait out: it is recorded
#: enabled and ``failed``, and starts once the other plugin is there (installed, enabled, in
#: a matching version, started). A ``conflict`` or a ``cycle`` needs a decision instead.
WAITING: Final = ("missing", "disabled", "incompatible", "failed")


def reason(error: DependencyError) -> str:
    """The ``failed`` reason recorded for a plugin that cannot start for ``error``:
    ``dependency <kind>: <message>`` (``dependency missing: plugin 'app' requires ...``)."""
    return f"dependency {error.kind}: {error.message}"


def _shown(spec: str) -> str:
    return spec if spec else "any version"


def _outside(plugin: str, spec: str) -> str:
    """The second fix of a conflict: another version of ``plugin`` (none when every version
    conflicts)."""
    return f", or use a version of {plugin!r} outside {spec}" if spec else ""


@functools.lru_cache(maxsize=4096)  # pure, and parsing dominates a resolution's cost
def _matches(spec: str, version: str) -> bool | None:
    """Whether ``version`` satisfies ``spec`` (pre-releases count, like the host check); None
    when either cannot be parsed (then nothing can be checked)."""
    if not spec:
        return True
    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return None


def _mismatch(plugin: str, dep: str, spec: str, manifests: Mapping[str, Dependent],
              enabled: Iterable[str] | None) -> DependencyError | None:
    """Why ``plugin``'s requirement ``dep`` (``spec``) is not met, or None when it is.
    ``enabled=None``: the enabled state is not checked (enabling would enable it)."""
    installed = manifests.get(dep)
    if installed is None:
        return DependencyError(
            f"plugin {plugin!r} requires {dep!r} ({_shown(spec)}), which is not installed; "
            f"install {dep!r} in a version matching {_shown(spec)}, or remove {plugin!r}",
            plugin=plugin, kind="missing", dependency=dep, specifier=spec)
    ok = _matches(spec, installed.version)
    if ok is None:
        return DependencyError(
            f"plugin {plugin!r} requires {dep!r} {spec}, but the installed {dep!r} has version "
            f"{installed.version!r}, which is not a PEP 440 version and cannot be checked "
            f"against {spec}; install a release of {dep!r} numbered like 1.2.3 or 1.2.3-rc.1",
            plugin=plugin, kind="incompatible", dependency=dep, specifier=spec)
    if not ok:
        return DependencyError(
            f"plugin {plugin!r} requires {dep!r} {spec}, but {dep!r} {installed.version} is "
            f"installed; upgrade {dep!r} to a version matching {spec}, or install a version "
            f"of {plugin!r} that accepts {dep!r} {installed.version}",
            plugin=plugin, kind="incompatible", dependency=dep, specifier=spec)
    if enabled is not None and dep not in enabled:
        return DependencyError(
            f"plugin {plugin!r} requires {dep!r} ({_shown(spec)}), which is installed but not "
            f"enabled; enable {dep!r} (enabling {plugin!r} does that), or disable {plugin!r}",
            plugin=plugin, kind="disabled", dependency=dep, specifier=spec)
    return None


def _cycle_error(cycle: tuple[str, ...]) -> DependencyError:
    shown = " -> ".join(repr(name) for name in cycle)
    return DependencyError(
        f"plugins {shown} depend on each other in a cycle (each needs the next started first, "
        f"through $.requires or $.optional), so none of them can start first; remove one of "
        f"these dependencies from its manifest",
        plugin=cycle[0], kind="cycle", plugins=cycle)


@dataclass
class Resolution:
    """The outcome of :func:`resolve`.

    ``order`` is the start (and on-init) order of the plugins that can start: every plugin
    after the plugins it requires and the optional ones it uses; ties in the order
    ``enabled`` was given (sorted by name for a set). ``failed`` maps each enabled plugin that
    cannot start to its reason, ``errors`` to the same as a :class:`plugbox.DependencyError`.
    ``notes`` lists, per plugin, the optional dependencies not used and why. ``before`` maps
    each startable plugin to the plugins that must start before it (used optional ones
    included).
    """

    order: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, DependencyError] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    before: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The ``requires`` edges and their specifiers, for cascading failures.
    _requires: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _specs: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def check(self, *names: str) -> None:
        """Raise the :class:`plugbox.DependencyError` of the first of ``names`` (all plugins
        when none are given, in start order) that cannot start; cycles first."""
        wanted = names or tuple(self.errors)
        errors = [self.errors[name] for name in wanted if name in self.errors]
        errors.sort(key=lambda error: error.kind != "cycle")
        if errors:
            raise errors[0]

    def fail(self, name: str, reason: str) -> dict[str, str]:
        """Record that ``name`` failed after resolution (it did not load, its on-init failed)
        and cascade to the plugins requiring it; returns the newly failed, by name. Lets a
        start loop walk :attr:`order` and skip what is in :attr:`failed`."""
        error = DependencyError(reason, plugin=name, kind="failed")
        return self._fail(name, error, self._required_by())

    def _required_by(self) -> dict[str, list[str]]:
        # Only ``requires`` edges cascade: an optional user keeps running without it.
        out: dict[str, list[str]] = {}
        for user, deps in self._requires.items():
            for dep in deps:
                out.setdefault(dep, []).append(user)
        return out

    def _fail(self, name: str, error: DependencyError,
              required_by: Mapping[str, list[str]]) -> dict[str, str]:
        return self._fail_all([(name, error)], required_by)

    def _fail_all(self, failures: list[tuple[str, DependencyError]],
                  required_by: Mapping[str, list[str]]) -> dict[str, str]:
        """Record ``failures`` (each plugin its own error, before a cascade from another of
        them could give it a ``failed`` one), then cascade to the plugins requiring them."""
        new: dict[str, str] = {}
        stack: list[tuple[str, str]] = []
        for current, err in failures:
            if current in self.failed:
                continue
            self.failed[current] = new[current] = err.message
            self.errors[current] = err
            if current in self.order:
                self.order.remove(current)
            stack.append((current, err.message))
        while stack:
            current, message = stack.pop()
            for user in required_by.get(current, ()):
                if user in self.failed:
                    continue
                quoted = message if len(message) <= _QUOTE else message[:_QUOTE - 3] + "..."
                err = DependencyError(
                    f"plugin {user!r} requires {current!r}, which cannot start: {quoted}",
                    plugin=user, kind="failed", dependency=current,
                    specifier=self._spec(user, current))
                self.failed[user] = new[user] = err.message
                self.errors[user] = err
                if user in self.order:
                    self.order.remove(user)
                stack.append((user, err.message))
        return new

    def _spec(self, user: str, dep: str) -> str | None:
        return self._specs.get((user, dep))


def resolve(manifests: Mapping[str, Dependent], enabled: Iterable[str], *,
            strict: bool = False) -> Resolution:
    """Resolve the plugins ``enabled`` (names; an ordered collection gives the tie order)
    over the installed ``manifests`` (name -> active manifest). Never raises for a dependency
    problem unless ``strict``: then the first :class:`plugbox.DependencyError` (a cycle
    before anything else) is raised instead of being returned in :attr:`Resolution.failed`."""
    names = sorted(enabled) if isinstance(enabled, (set, frozenset)) else list(enabled)
    rank = {name: index for index, name in enumerate(dict.fromkeys(names))}
    result = Resolution(order=[])
    present = {name for name in rank if name in manifests}
    for name in rank:
        if name not in manifests:
            result._fail(name, DependencyError(
                f"plugin {name!r} is enabled but not installed; install it or forget it",
                plugin=name, kind="missing", dependency=name), {})
    result._requires = {name: tuple(manifests[name].requires) for name in present}
    result._specs = {(name, dep): spec for name in present
                     for dep, spec in manifests[name].requires.items()}
    required_by = result._required_by()

    def fail(name: str, error: DependencyError) -> None:
        result._fail(name, error, required_by)

    # 1. Requirements that are not met, whatever else runs.
    for name in rank:
        if name not in present:
            continue
        for dep, spec in sorted(manifests[name].requires.items()):
            error = _mismatch(name, dep, spec, manifests, present)
            if error is not None:
                fail(name, error)
                break
    # 2. Cycles among the rest, over requires and the optional edges that are used.
    while True:
        alive = [name for name in rank if name in present and name not in result.failed]
        alive_set = set(alive)
        graph = {name: _before(name, manifests, alive_set, result) for name in alive}
        sorter = graphlib.TopologicalSorter(graph)
        try:
            sorter.prepare()
            break
        except graphlib.CycleError as exc:
            # graphlib lists the cycle in start order; reversed, each plugin needs the next.
            cycle = tuple(reversed(exc.args[1]))
            error = _cycle_error(cycle)
            result._fail_all([(member, DependencyError(error.message, plugin=member,
                                                       kind="cycle", plugins=cycle))
                              for member in dict.fromkeys(cycle)], required_by)
    # 3. Conflicts among the plugins that would run.
    for name in [n for n in rank if n in present]:
        if name in result.failed:
            continue
        for other, spec in sorted(manifests[name].conflicts.items()):
            if other not in present or other in result.failed or other == name:
                continue
            if _matches(spec, manifests[other].version) is False:
                continue
            back = manifests[other].conflicts.get(name)
            if back is not None and _matches(back, manifests[name].version) is not False \
                    and name < other:
                continue  # they conflict both ways: the later by name gives way
            fail(name, DependencyError(
                f"plugin {name!r} conflicts with {other!r} {_shown(spec)} ($.conflicts), and "
                f"{other!r} {manifests[other].version} is enabled; disable one of the two"
                f"{_outside(other, spec)}",
                plugin=name, kind="conflict", dependency=other, specifier=spec))
            break
    # 4. The start order of what is left.
    alive = [name for name in rank if name in present and name not in result.failed]
    alive_set = set(alive)
    graph = {name: _before(name, manifests, alive_set, result) for name in alive}
    result.notes = {}
    for name in alive:
        _before(name, manifests, alive_set, result, notes=True)
    result.before = {name: tuple(sorted(deps, key=rank.__getitem__))
                     for name, deps in graph.items()}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()  # acyclic: step 2 removed every cycle
    ready: list[tuple[int, str]] = []  # a heap by rank: the earliest given goes first
    while sorter.is_active():
        for name in sorter.get_ready():
            heapq.heappush(ready, (rank[name], name))
        name = heapq.heappop(ready)[1]
        result.order.append(name)
        sorter.done(name)
    if strict:
        result.check()
    return result


def _before(name: str, manifests: Mapping[str, Dependent], alive: set[str],
            result: Resolution, *, notes: bool = False) -> set[str]:
    """The plugins among ``alive`` that must start before ``name``: its requirements and the
    optional dependencies it uses. With ``notes``, records why other optional ones are not
    used."""
    manifest = manifests[name]
    deps = {dep for dep in manifest.requires if dep in alive}
    for dep, spec in sorted(manifest.optional.items()):
        if dep in alive and _matches(spec, manifests[dep].version):
            deps.add(dep)
        elif notes:
            if dep not in manifests:
                why = "not installed"
            elif dep in result.failed:
                why = "it cannot start"
            elif dep not in alive:
                why = "not enabled"
            else:
                why = f"{manifests[dep].version} is installed"
            result.notes.setdefault(name, []).append(
                f"optional {dep!r} ({_shown(spec)}) not used: {why}")
    return deps


def requirements(name: str, manifests: Mapping[str, Dependent]) -> list[str]:
    """What enabling ``name`` enables: every plugin it requires, directly or through others,
    in start order (requirements first), ``name`` itself excluded. Optional dependencies are
    not included (they are used when present, never enabled for it).

    Raises :class:`plugbox.DependencyError` when a requirement is not installed or not in a
    matching version (``missing``/``incompatible``), or the requirements form a cycle."""
    if name not in manifests:
        raise DependencyError(f"plugin {name!r} is not installed; install it first",
                              plugin=name, kind="missing", dependency=name)
    graph: dict[str, set[str]] = {}
    stack = [name]
    while stack:
        current = stack.pop()
        if current in graph:
            continue
        deps = manifests[current].requires
        for dep, spec in sorted(deps.items()):
            error = _mismatch(current, dep, spec, manifests, None)
            if error is not None:
                raise error
        graph[current] = set(deps)
        stack.extend(deps)
    sorter = graphlib.TopologicalSorter(graph)
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        raise _cycle_error(tuple(reversed(exc.args[1]))) from None  # as in resolve()
    return [dep for dep in order if dep != name]


def dependents(name: str, manifests: Mapping[str, Dependent],
               enabled: Iterable[str] | None = None) -> list[str]:
    """What must be disabled with ``name``: the plugins (among ``enabled``; all installed ones
    when None) that require it, directly or through others, in stopping order (each before
    the plugins it requires), ``name`` itself excluded. Optional users are not included:
    they keep running without it."""
    among = set(manifests) if enabled is None else set(enabled) & set(manifests)
    required_by: dict[str, set[str]] = {}
    for user in among:
        for dep in manifests[user].requires:
            required_by.setdefault(dep, set()).add(user)
    found: set[str] = set()
    stack = [name]
    while stack:
        for user in required_by.get(stack.pop(), ()):
            if user not in found and user != name:
                found.add(user)
                stack.append(user)
    # Stopping order: reverse of a start order over the found plugins (cycles cannot stop it).
    graph = {user: {dep for dep in manifests[user].requires if dep in found} for user in found}
    try:
        start = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        start = sorted(found)
    return start[::-1]


def describe(name: str, manifests: Mapping[str, Dependent],
             enabled: Iterable[str]) -> dict[str, object]:
    """A JSON-ready account of ``name``'s dependencies (for ``plugbox plugins deps NAME``):
    each of ``requires``, ``optional``, ``conflicts`` as a list of ``{"name", "specifier",
    "installed" (version or null), "enabled", "ok", "reason"}``, and ``required_by`` (the
    enabled plugins that require it, :func:`dependents`) and ``dependents`` (every plugin
    naming it in ``requires`` or ``optional``: ``{"name", "version", "kind", "specifier",
    "enabled", "ok"}``, ``ok`` when ``name``'s version matches the specifier)."""
    on = set(enabled)
    manifest = manifests[name]

    def entry(dep: str, spec: str, kind: str) -> dict[str, object]:
        installed = manifests.get(dep)
        version = installed.version if installed is not None else None
        match = _matches(spec, version) if version is not None else False
        reason = None
        if kind == "requires":
            error = _mismatch(name, dep, spec, manifests, on)
            reason = error.message if error is not None else None
        elif kind == "conflicts" and match and dep in on:
            reason = f"{dep!r} {version} is enabled and matches {_shown(spec)}"
        ok = reason is None
        if kind == "optional" and not (match and dep in on):
            reason = "not used: " + ("not installed" if version is None else
                                     "not enabled" if dep not in on else
                                     f"{version} does not match")
        return {"name": dep, "specifier": spec, "installed": version, "enabled": dep in on,
                "ok": ok, "reason": reason}

    out: dict[str, object] = {
        kind: [entry(dep, spec, kind) for dep, spec in sorted(getattr(manifest, kind).items())]
        for kind in ("requires", "optional", "conflicts")
    }
    out["required_by"] = dependents(name, manifests, on)
    out["dependents"] = [
        {"name": user, "version": manifests[user].version, "kind": kind, "specifier": spec,
         "enabled": user in on, "ok": _matches(spec, manifest.version) is True}
        for user in sorted(manifests) for kind in ("requires", "optional")
        for spec in [getattr(manifests[user], kind).get(name)] if spec is not None]
    return out


def conflict(names: Sequence[str], manifests: Mapping[str, Dependent],
             running: Iterable[str]) -> DependencyError | None:
    """The first conflict that starting ``names`` beside the plugins ``running`` (and beside
    each other) would create, declared on either side, or None. Unlike :func:`resolve`, which
    decides which of two enabled plugins gives way, this is the check before enabling: the
    plugin being enabled is the one refused, whichever side declared the conflict, so an
    enable never stops a plugin that runs."""
    others = list(dict.fromkeys([*running, *names]))
    for name in names:
        mine = manifests[name]
        for other in others:
            if other == name or other not in manifests:
                continue
            theirs = manifests[other]
            spec = mine.conflicts.get(other)
            if spec is not None and _matches(spec, theirs.version) is not False:
                return DependencyError(
                    f"plugin {name!r} conflicts with {other!r} {_shown(spec)} ($.conflicts of "
                    f"{name!r}), and {other!r} {theirs.version} is enabled; disable {other!r} "
                    f"first{_outside(other, spec)}",
                    plugin=name, kind="conflict", dependency=other, specifier=spec)
            spec = theirs.conflicts.get(name)
            if spec is not None and _matches(spec, mine.version) is not False:
                return DependencyError(
                    f"plugin {other!r} (enabled) conflicts with {name!r} {_shown(spec)} "
                    f"($.conflicts of {other!r}), and {name!r} is version {mine.version}; "
                    f"disable {other!r} first{_outside(name, spec)}",
                    plugin=name, kind="conflict", dependency=other, specifier=spec)
    return None


def in_use(name: str, operation: str, users: Sequence[str],
           manifests: Mapping[str, Dependent]) -> DependencyError:
    """The refusal of ``operation`` (``disable``, ``uninstall``) of ``name`` while the enabled
    plugins ``users`` (:func:`dependents`) require it: names each, with what it requires (a
    plugin requiring ``name`` through another says through which), and the fix."""
    shown = []
    for user in users:
        spec = manifests[user].requires.get(name)
        if spec is not None:
            shown.append(f"{user!r} (requires {name!r} {_shown(spec)})")
        else:
            via = sorted(dep for dep in manifests[user].requires if dep in users)
            shown.append(f"{user!r} (through {', '.join(map(repr, via))})")
    then = "disable them first" if operation == "disable" else \
        "disable or uninstall them first"
    return DependencyError(
        f"{operation} {name!r} refused: enabled plugins require it: {', '.join(shown)}; "
        f"{then}, or pass cascade=True to {operation} {name!r} and disable them too",
        plugin=name, kind="required", dependency=users[0] if users else None,
        plugins=tuple(users))
