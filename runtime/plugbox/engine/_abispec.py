"""The core-module lowering of ``abi/plugbox.wit`` as data.

Written by hand from the WIT and the canonical ABI; ``tests/test_abi_wit.py`` regenerates the
lowering with ``wasm-tools component embed --dummy-names legacy abi/plugbox.wit`` and checks that
this table matches it exactly, so the two cannot drift apart.

The WIT is version 1.1.0, so its lowering names every interface ``@1.1.0``; the tables are keyed
by those names. A 1.0 plugin imports the same functions ``@1.0.0``: :func:`canonical_import`
maps either to the table's key, and :data:`SINCE` says which functions a 1.0 name may not have.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ABI_VERSION",
    "ABI_VERSIONS",
    "ABI_VERSION_SECTION",
    "ERROR_KINDS",
    "EXPORTS",
    "IMPORTS",
    "OPTIONAL_EXPORTS",
    "PANIC_EXPORT",
    "PANIC_REPORT_MAX",
    "SERVICE_OF_MODULE",
    "SERVICES",
    "SINCE",
    "canonical_import",
    "import_module",
    "offered",
    "parse_import_module",
]

#: The ABI version this runtime implements. Plugins with the same major and a minor <= ours run.
ABI_VERSION: Final = "1.1.0"

#: Every ABI version this runtime can offer (``Runtime(abi=...)``), oldest first.
ABI_VERSIONS: Final = ("1.0.0", "1.1.0")

#: Custom section in which a core module declares the ABI version it was built for (UTF-8 text).
ABI_VERSION_SECTION: Final = "plugbox:abi-version"

#: Host services, one WIT interface each; also the permission names in manifests.
SERVICES: Final = ("log", "config", "kv", "events", "clock", "random", "http", "host")

#: Cases of the WIT ``error`` variant, in discriminant order.
ERROR_KINDS: Final = ("denied", "not-found", "invalid-input", "limit-reached", "failure")


def import_module(service: str, version: str = ABI_VERSION) -> str:
    """The core import module name of a service interface (``plugbox:plugin/kv@1.0.0``)."""
    return f"plugbox:plugin/{service}@{version}"


_I = "i32"
_L = "i64"

#: (import module, field) -> (param types, result types) of every host function.
IMPORTS: Final[dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]]] = {
    (import_module("log"), "log"): ((_I, _I, _I), ()),
    (import_module("config"), "get"): ((_I, _I, _I), ()),
    (import_module("config"), "get-all"): ((_I,), ()),
    (import_module("kv"), "get"): ((_I, _I, _I), ()),
    (import_module("kv"), "set"): ((_I, _I, _I, _I, _I), ()),
    (import_module("kv"), "delete"): ((_I, _I, _I), ()),
    (import_module("kv"), "list-keys"): ((_I, _I, _I), ()),
    (import_module("events"), "emit"): ((_I, _I, _I, _I, _I), ()),
    (import_module("clock"), "now"): ((), (_L,)),
    (import_module("clock"), "monotonic"): ((), (_L,)),
    (import_module("random"), "bytes"): ((_I, _I), ()),
    (import_module("http"), "fetch"): ((_I,) * 9, ()),
    # 1.1.0
    (import_module("kv"), "increment"): ((_I, _I, _L, _I), ()),
    (import_module("kv"), "compare-and-set"): ((_I,) * 8, ()),
    (import_module("host"), "call"): ((_I, _I, _I, _I, _I), ()),
    (import_module("host"), "dispatch"): ((_I, _I, _I, _I, _I), ()),
}

#: The ABI version (``MAJOR.MINOR``) that added each function of :data:`IMPORTS`; the rest are
#: 1.0. A module may import a function from any version at or after this one, never before:
#: ``plugbox:plugin/kv@1.0.0#increment`` names a function ABI 1.0 does not have.
SINCE: Final[dict[tuple[str, str], tuple[int, int]]] = {
    key: (1, 1) if key[1] in ("increment", "compare-and-set") or key[0] == import_module("host")
    else (1, 0)
    for key in IMPORTS
}

#: import module -> service (permission) name, for the modules of every version offered
#: (``plugbox:plugin/kv@1.0.0`` and ``@1.1.0``; ``host`` exists from 1.1.0).
SERVICE_OF_MODULE: Final = {
    import_module(s, v): s for v in ABI_VERSIONS for s in SERVICES if s != "host" or v != "1.0.0"
}

#: Exports every plugin must have: name -> (kind, param types, result types).
EXPORTS: Final[dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    "memory": ("memory", (), ()),
    "cabi_realloc": ("func", (_I, _I, _I, _I), (_I,)),
    "on-hook": ("func", (_I, _I, _I, _I), (_I,)),
}

#: Exports a plugin may have; checked for their signature when present.
OPTIONAL_EXPORTS: Final[dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    "on-init": ("func", (_I, _I), (_I,)),
    "cabi_post_on-init": ("func", (_I,), ()),
    "cabi_post_on-hook": ("func", (_I,), ()),
    "_initialize": ("func", (), ()),
}


#: The optional export through which a guest leaves a panic report for the host (an i32 global
#: holding the address of ``len: u32`` + ``len`` bytes: ``file:line:col``, NUL, message), read
#: only after a trap; abi/README.md "Panic reports". Not in OPTIONAL_EXPORTS: that table holds
#: functions checked by signature, and a module without the slot is just as valid.
PANIC_EXPORT: Final = "plugbox-panic"
#: The most report bytes the host reads.
PANIC_REPORT_MAX: Final = 1020


_IMPORT_MODULE_RE: Final = re.compile(r"plugbox:plugin/([a-z][a-z0-9-]*)@([0-9]+\.[0-9]+\.[0-9]+)")


def parse_import_module(module: str) -> tuple[str, str] | None:
    """``(interface, version)`` of ``plugbox:plugin/<interface>@<x.y.z>``, else ``None``."""
    match = _IMPORT_MODULE_RE.fullmatch(module)
    return None if match is None else (match.group(1), match.group(2))


def _minor(version: str) -> tuple[int, int]:
    major, minor, _ = version.split(".")
    return int(major), int(minor)


def offered(version: str) -> dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]]:
    """The :data:`IMPORTS` a runtime offering ABI ``version`` (``x.y.z``) defines: the functions
    added at or before its minor."""
    have = _minor(version)
    return {key: sig for key, sig in IMPORTS.items() if SINCE[key] <= have}


def canonical_import(module: str, name: str) -> tuple[str, str] | None:
    """The :data:`IMPORTS` key that an import of ``name`` from ``module`` links to, whatever
    version ``module`` names (``plugbox:plugin/log@1.0.0`` -> ``plugbox:plugin/log@1.1.0``);
    ``None`` when it is not a function of that version of a service interface (a function is
    part of every version from the one that added it, :data:`SINCE`). Whether the version is
    one this runtime can run is the interface check's business, not this lookup's."""
    parsed = parse_import_module(module)
    if parsed is None or parsed[0] not in SERVICES:
        return None
    key = (import_module(parsed[0]), name)
    if key not in IMPORTS or SINCE[key] > _minor(parsed[1]):
        return None  # not a function of that version (kv@1.0.0#increment)
    return key

