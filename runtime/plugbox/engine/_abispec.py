"""The core-module lowering of ``abi/plugbox.wit`` as data.

Written by hand from the WIT and the canonical ABI; ``tests/test_abi_wit.py`` regenerates the
lowering with ``wasm-tools component embed --dummy-names legacy abi/plugbox.wit`` and checks that
this table matches it exactly, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ABI_VERSION",
    "ABI_VERSION_SECTION",
    "ERROR_KINDS",
    "EXPORTS",
    "IMPORTS",
    "OPTIONAL_EXPORTS",
    "SERVICE_OF_MODULE",
    "SERVICES",
    "canonical_import",
    "import_module",
    "parse_import_module",
]

#: The ABI version this runtime implements. Plugins with the same major and a minor <= ours run.
ABI_VERSION: Final = "1.0.0"

#: Custom section in which a core module declares the ABI version it was built for (UTF-8 text).
ABI_VERSION_SECTION: Final = "plugbox:abi-version"

#: Host services, one WIT interface each; also the permission names in manifests.
SERVICES: Final = ("log", "config", "kv", "events", "clock", "random", "http")

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
}

#: import module -> service (permission) name.
SERVICE_OF_MODULE: Final = {import_module(s): s for s in SERVICES}

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


_IMPORT_MODULE_RE: Final = re.compile(r"plugbox:plugin/([a-z][a-z0-9-]*)@([0-9]+\.[0-9]+\.[0-9]+)")


def parse_import_module(module: str) -> tuple[str, str] | None:
    """``(interface, version)`` of ``plugbox:plugin/<interface>@<x.y.z>``, else ``None``."""
    match = _IMPORT_MODULE_RE.fullmatch(module)
    return None if match is None else (match.group(1), match.group(2))


def canonical_import(module: str, name: str) -> tuple[str, str] | None:
    """The :data:`IMPORTS` key that an import of ``name`` from ``module`` links to, whatever
    version ``module`` names (``plugbox:plugin/log@1.0.1`` -> ``plugbox:plugin/log@1.0.0``);
    ``None`` when it is not a function of a service interface. Whether the version is one this
    runtime can run is the interface check's business, not this lookup's."""
    parsed = parse_import_module(module)
    if parsed is None or parsed[0] not in SERVICES:
        return None
    key = (import_module(parsed[0]), name)
    return key if key in IMPORTS else None

