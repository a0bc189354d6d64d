"""The hostile corpus: plugins, manifests and host conditions built to break the runtime.

Each :class:`Case` names what it attacks (``section``: the part of issue 7 it keeps closed),
builds its attack in a child process (:mod:`tests.hostile.harness`) and must end with one of the
outcomes in ``expect``: a plugbox error class, or :data:`OK` for an attack the runtime must
simply survive (a patch-level import that must link, a subscriber that calls another plugin).
After every case the child loads a plain WAT echo plugin and checks it answers byte-exact, so a
case also fails when the host is left unable to serve.

Builders live by topic: :mod:`.wat` (module shapes, imports, exports, start functions),
:mod:`.calls` (limits, ABI violations, host-service inputs, re-entrancy, deadlines),
:mod:`.manifests` (files and manifests), :mod:`.components`, :mod:`.state` (runtime resources,
state, identity, inspect/verify) and :mod:`.rust` (the Rust ``hostile`` sample).
"""

from __future__ import annotations

from ._case import CASES, OK, Case, Env, case

__all__ = ["CASES", "OK", "Case", "Env", "all_cases", "case"]


def all_cases() -> list[Case]:
    """Every case, with its builder modules imported (they register on import)."""
    from . import calls, components, manifests, rust, state, wat  # noqa: F401

    return list(CASES.values())
