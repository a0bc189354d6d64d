"""Every public symbol has a docstring (issue 8 §7): each name in ``plugbox.__all__`` and each
public method, property and class of those names; so does every public module."""

from __future__ import annotations

import inspect
import types

import plugbox


def _public_members(obj: type) -> list[tuple[str, object]]:
    out = []
    for name, member in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            member = member.fget
        if inspect.isfunction(member) or inspect.isclass(member):
            out.append((name, member))
    return out


def test_every_public_name_and_member_has_a_docstring() -> None:
    missing = []
    for name in plugbox.__all__:
        obj = getattr(plugbox, name)
        if isinstance(obj, (str, int, float, tuple, frozenset, types.ModuleType)):
            continue  # constants (__version__) document themselves in the reference
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for member_name, member in _public_members(obj):
                if not inspect.getdoc(member):
                    missing.append(f"{name}.{member_name}")
    assert not missing, "public symbols without a docstring: " + ", ".join(missing)


def test_the_checker_notices_a_missing_docstring() -> None:
    class Bare:
        def method(self) -> None:
            pass

    assert [n for n, m in _public_members(Bare) if not inspect.getdoc(m)] == ["method"]
