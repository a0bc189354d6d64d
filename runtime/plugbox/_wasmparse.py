"""A small, strict WebAssembly binary reader for checks made before anything is compiled.

plugbox refuses a plugin whose module imports anything outside the ABI *before* handing it to
wasmtime, so a hostile module never reaches the compiler unless its interface is right. This
reader therefore parses only what that check needs (the type, import, function and export
sections, the item counts of the others, and custom sections) and skips code and data. It is
strict about structure: sections out of order or duplicated, lengths that overrun, LEB128
integers that are over-long or out of range, names that are not UTF-8, indices out of range.
Every malformation is reported as :class:`~plugbox.ModuleInterfaceError`, never as a Python
``IndexError`` or the like.

Components (the component-model binary, layer 1) are recognised; their top-level custom
sections and the names of their top-level imports (``plugbox:plugin/kv@1.0.0``, ...) are read,
which is what the capability check needs. Their exports are not parsed yet.

:func:`check_capabilities` is the static capability check: every plugbox service the module
imports must be requested by the manifest, and requested services that are never imported are
reported (least privilege).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal

from . import _abispec
from ._errors import CapabilityError, IncompatibleAbiError, ModuleInterfaceError

if TYPE_CHECKING:
    from ._manifest import Manifest

__all__ = [
    "CapabilityReport",
    "Export",
    "Import",
    "ModuleInfo",
    "capability_report",
    "check_capabilities",
    "check_module_interface",
    "imported_services",
    "inspect_module",
]

_log = logging.getLogger("plugbox.capabilities")

ItemKind = Literal["func", "table", "memory", "global", "tag",
                   # component export sorts
                   "core", "value", "type", "component", "instance"]


@dataclass(frozen=True)
class Import:
    """One import of a core module. ``params``/``results`` are set for functions (and tags)."""

    module: str
    name: str
    kind: ItemKind
    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()


@dataclass(frozen=True)
class Export:
    """One export. ``params``/``results`` are set for core functions (and tags); a component's
    exports carry their sort (``func``, ``instance``, ...) only."""

    name: str
    kind: ItemKind
    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleInfo:
    """What :func:`inspect_module` found. For components, ``imports`` is empty and
    ``exports`` lists the top-level exports by name and sort (no signatures).

    ``custom_sections`` maps a section's name to its contents; when a name occurs more than
    once, the first occurrence is kept (a duplicated ``plugbox:*`` section is refused).
    ``component_imports`` holds a component's top-level import names in order (interface
    names such as ``plugbox:plugin/kv@1.0.0``); it is empty for core modules.
    """

    kind: Literal["core", "component"]
    imports: tuple[Import, ...]
    exports: tuple[Export, ...]
    custom_sections: Mapping[str, bytes] = field(hash=False)
    component_imports: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Low-level reading


class _Malformed(Exception):
    """Internal: a structural error at a byte offset; turned into ModuleInterfaceError."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


class _Reader:
    """Bounds-checked cursor over ``data[pos:end]``; every read raises ``_Malformed``."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def fail(self, message: str) -> _Malformed:
        return _Malformed(self.pos, message)

    def byte(self, what: str) -> int:
        if self.pos >= self.end:
            raise self.fail(f"unexpected end of data while reading {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, size: int, what: str) -> bytes:
        if size > self.end - self.pos:
            raise self.fail(
                f"{what} is {size} bytes long but only {self.end - self.pos} bytes remain"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unsigned(self, bits: int, what: str) -> int:
        """An unsigned LEB128 integer of at most ``bits`` bits.

        As the spec requires, at most ceil(bits / 7) bytes; checking the decoded value's range
        is equivalent to requiring the unused bits of the last byte to be zero.
        """
        start = self.pos
        result = 0
        shift = 0
        for _ in range((bits + 6) // 7):
            byte = self.byte(what)
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if result >> bits:
                    raise _Malformed(start, f"malformed LEB128 {what}: out of range for u{bits}")
                return result
        raise _Malformed(start, f"malformed LEB128 {what}: longer than {(bits + 6) // 7} bytes")

    def signed(self, bits: int, what: str) -> int:
        """A signed LEB128 integer of at most ``bits`` bits (s33 for heap types).

        The range check after sign extension is equivalent to the spec's rule that the unused
        bits of the last byte repeat the sign bit.
        """
        start = self.pos
        result = 0
        shift = 0
        for _ in range((bits + 6) // 7):
            byte = self.byte(what)
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte & 0x40:
                    result -= 1 << shift
                if not -(1 << (bits - 1)) <= result < 1 << (bits - 1):
                    raise _Malformed(start, f"malformed LEB128 {what}: out of range for s{bits}")
                return result
        raise _Malformed(start, f"malformed LEB128 {what}: longer than {(bits + 6) // 7} bytes")

    def u32(self, what: str) -> int:
        return self.unsigned(32, what)

    def name(self, what: str) -> str:
        size = self.u32(f"length of {what}")
        start = self.pos
        raw = self.take(size, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed(start + exc.start, f"{what} is not valid UTF-8") from None

    def count(self, what: str, min_item_size: int = 1) -> int:
        """A vector length, sanity-checked against the bytes left so a forged huge count
        fails at once instead of after a long loop."""
        start = self.pos
        n = self.u32(f"number of {what}")
        if n * min_item_size > self.end - self.pos:
            left = self.end - self.pos
            raise _Malformed(start, f"{n} {what} cannot fit in the {left} bytes left")
        return n


# Value types as the binary encodes them (single-byte forms).
_VALTYPES: Final = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
    0x6E: "anyref",
    0x6D: "eqref",
    0x6C: "i31ref",
    0x6B: "structref",
    0x6A: "arrayref",
    0x69: "exnref",
    0x71: "nullref",
    0x72: "nullexternref",
    0x73: "nullfuncref",
    0x74: "nullexnref",
}

# Abstract heap types (the single-byte negative s33 values).
_HEAPTYPES: Final = {
    0x70: "func",
    0x6F: "extern",
    0x6E: "any",
    0x6D: "eq",
    0x6C: "i31",
    0x6B: "struct",
    0x6A: "array",
    0x69: "exn",
    0x71: "none",
    0x72: "noextern",
    0x73: "nofunc",
    0x74: "noexn",
}

_KINDS: Final[dict[int, ItemKind]] = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}

# Known core sections in the order the spec requires (custom sections, id 0, may go anywhere).
_SECTION_ORDER: Final = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)
_SECTION_NAMES: Final = {
    1: "type",
    2: "import",
    3: "function",
    4: "table",
    5: "memory",
    13: "tag",
    6: "global",
    7: "export",
    8: "start",
    9: "element",
    12: "data count",
    10: "code",
    11: "data",
}

_CORE_VERSION: Final = b"\x01\x00\x00\x00"
_COMPONENT_VERSION: Final = b"\x0d\x00\x01\x00"  # version 0x0d, layer 1
_MAX_COMPONENT_SECTION_ID: Final = 12


def _heap_type(r: _Reader) -> str:
    start = r.pos
    first = r.data[r.pos] if r.pos < r.end else None
    if first is not None and first in _HEAPTYPES:
        r.pos += 1
        return _HEAPTYPES[first]
    value = r.signed(33, "heap type")
    if value < 0:
        raise _Malformed(start, f"unknown heap type {value}")
    return str(value)


def _valtype(r: _Reader) -> str:
    start = r.pos
    code = r.byte("value type")
    if code in _VALTYPES:
        return _VALTYPES[code]
    if code == 0x64:
        return f"(ref {_heap_type(r)})"
    if code == 0x63:
        return f"(ref null {_heap_type(r)})"
    raise _Malformed(start, f"unknown value type 0x{code:02x}")


def _reftype(r: _Reader) -> str:
    start = r.pos
    kind = _valtype(r)
    if kind in ("i32", "i64", "f32", "f64", "v128"):
        raise _Malformed(start, f"expected a reference type, found {kind}")
    return kind


def _limits(r: _Reader) -> None:
    start = r.pos
    flags = r.byte("limits flags")
    # bit 0: has max; bit 1: shared; bit 2: 64-bit; bit 3: custom page size.
    if flags & ~0x0F:
        raise _Malformed(start, f"invalid limits flags 0x{flags:02x}")
    bits = 64 if flags & 0x04 else 32
    r.unsigned(bits, "limits minimum")
    if flags & 0x01:
        r.unsigned(bits, "limits maximum")
    if flags & 0x08:
        r.u32("page size")


def _functype(r: _Reader) -> tuple[tuple[str, ...], tuple[str, ...]]:
    params = tuple(_valtype(r) for _ in range(r.count("parameters")))
    results = tuple(_valtype(r) for _ in range(r.count("results")))
    return params, results


def _type_section(r: _Reader) -> list[tuple[tuple[str, ...], tuple[str, ...]] | None]:
    """Function types by index; ``None`` would stand for non-function types, which we refuse."""
    types: list[tuple[tuple[str, ...], tuple[str, ...]] | None] = []
    for _ in range(r.count("types")):
        start = r.pos
        form = r.byte("type form")
        if form == 0x60:
            types.append(_functype(r))
        elif form in (0x4E, 0x50, 0x4F, 0x5F, 0x5E):
            # Recursive groups, subtypes, structs and arrays belong to the GC proposal. The
            # plugbox ABI needs none of them, and parsing them fully is not worth the risk.
            raise _Malformed(
                start, "the module defines GC-proposal types, which plugbox does not support"
            )
        else:
            raise _Malformed(start, f"unknown type form 0x{form:02x}")
    return types


def _func_type_at(
    types: list[tuple[tuple[str, ...], tuple[str, ...]] | None], r: _Reader, start: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    index = r.u32("type index")
    if index >= len(types):
        raise _Malformed(start, f"type index {index} out of range ({len(types)} types)")
    sig = types[index]
    if sig is None:  # pragma: no cover - non-function types are refused when read
        raise _Malformed(start, f"type {index} is not a function type")
    return sig


# --------------------------------------------------------------------------------------------
# Public entry points


def inspect_module(data: bytes) -> ModuleInfo:
    """Parse the interface of a WebAssembly binary without compiling it.

    Raises :class:`~plugbox.ModuleInterfaceError` when ``data`` is not a well-formed
    WebAssembly core module or component (bad magic, unknown version, truncation, malformed
    LEB128, sections out of order, out-of-range indices, ...).
    """
    data = bytes(data)
    try:
        if len(data) < 8 or data[:4] != b"\x00asm":
            raise _Malformed(0, "not a WebAssembly binary (missing the \\0asm magic number)")
        version = data[4:8]
        if version == _CORE_VERSION:
            return _inspect_core(data)
        if version == _COMPONENT_VERSION:
            return _inspect_component(data)
        raise _Malformed(
            4,
            f"unsupported WebAssembly binary version {version.hex()} (expected 01000000 for a "
            f"core module or 0d000100 for a component)",
        )
    except _Malformed as exc:
        raise ModuleInterfaceError(
            f"not a valid WebAssembly module: {exc.message} (at byte offset {exc.offset})"
        ) from None


def _inspect_core(data: bytes) -> ModuleInfo:
    r = _Reader(data, 8)
    types: list[tuple[tuple[str, ...], tuple[str, ...]] | None] = []
    imports: list[Import] = []
    func_sigs: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # imported, then defined
    counts = {"table": 0, "memory": 0, "global": 0, "tag": 0}
    exports: list[Export] = []
    custom: dict[str, bytes] = {}
    defined_funcs = 0
    code_seen = False
    last_order = -1

    while not r.at_end():
        section_start, sid, s = _next_section(r, data)
        if sid == 0:
            _custom_section(s, data, custom, section_start)
            continue
        if sid not in _SECTION_NAMES:
            raise _Malformed(section_start, f"unknown section id {sid}")
        order = _SECTION_ORDER.index(sid)
        if order <= last_order:
            raise _Malformed(
                section_start,
                f"{_SECTION_NAMES[sid]} section is duplicated or out of order",
            )
        last_order = order

        if sid == 1:
            types = _type_section(s)
        elif sid == 2:
            for _ in range(s.count("imports", 4)):
                item_start = s.pos
                module = s.name("import module name")
                field_name = s.name("import name")
                kind_code = s.byte("import kind")
                kind = _KINDS.get(kind_code)
                if kind == "func":
                    params, results = _func_type_at(types, s, item_start)
                    func_sigs.append((params, results))
                    imports.append(Import(module, field_name, "func", params, results))
                    continue
                if kind == "table":
                    _reftype(s)
                    _limits(s)
                elif kind == "memory":
                    _limits(s)
                elif kind == "global":
                    _valtype(s)
                    mutability = s.byte("global mutability")
                    if mutability > 1:
                        raise s.fail(f"invalid global mutability {mutability}")
                elif kind == "tag":
                    attribute = s.byte("tag attribute")
                    if attribute != 0:
                        raise s.fail(f"invalid tag attribute {attribute}")
                    params, results = _func_type_at(types, s, item_start)
                    counts["tag"] += 1
                    imports.append(Import(module, field_name, "tag", params, results))
                    continue
                else:
                    raise _Malformed(item_start, f"unknown import kind 0x{kind_code:02x}")
                counts[kind] += 1
                imports.append(Import(module, field_name, kind))
        elif sid == 3:
            defined_funcs = s.count("functions")
            for _ in range(defined_funcs):
                func_sigs.append(_func_type_at(types, s, s.pos))
        elif sid in (4, 5, 6, 13):
            # Only the item counts matter (to range-check export indices); skip the bodies.
            kind_name = {4: "table", 5: "memory", 6: "global", 13: "tag"}[sid]
            counts[kind_name] += s.count(f"{kind_name}s")
            continue
        elif sid == 7:
            seen: set[str] = set()
            for _ in range(s.count("exports", 3)):
                item_start = s.pos
                export_name = s.name("export name")
                if export_name in seen:
                    raise _Malformed(item_start, f"duplicate export name {export_name!r}")
                seen.add(export_name)
                kind_code = s.byte("export kind")
                export_kind = _KINDS.get(kind_code)
                if export_kind is None:
                    raise _Malformed(item_start, f"unknown export kind 0x{kind_code:02x}")
                index = s.u32("export index")
                total = len(func_sigs) if export_kind == "func" else counts[export_kind]
                if index >= total:
                    raise _Malformed(
                        item_start,
                        f"export {export_name!r} refers to {export_kind} {index}, but the "
                        f"module has only {total}",
                    )
                if export_kind == "func":
                    params, results = func_sigs[index]
                    exports.append(Export(export_name, "func", params, results))
                else:
                    exports.append(Export(export_name, export_kind))
        elif sid == 10:
            code_seen = True
            start = s.pos
            bodies = s.count("function bodies")
            if bodies != defined_funcs:
                raise _Malformed(
                    start,
                    f"the code section has {bodies} bodies for {defined_funcs} declared functions",
                )
            continue  # function bodies are not needed for the interface check
        else:
            continue  # start, element, data count, data: not needed
        if not s.at_end():
            raise _Malformed(
                s.pos,
                f"{_SECTION_NAMES[sid]} section has {s.end - s.pos} unexpected trailing bytes",
            )

    if defined_funcs and not code_seen:
        raise _Malformed(len(data), f"{defined_funcs} functions are declared but there is no code")
    return ModuleInfo("core", tuple(imports), tuple(exports), custom)


def _component_externdesc(r: _Reader) -> None:
    """Skip one component ``externdesc`` (only the import names are kept)."""
    start = r.pos
    tag = r.byte("extern descriptor")
    if tag == 0x00:  # core module: 0x11 typeidx
        sort = r.byte("core sort")
        if sort != 0x11:
            raise _Malformed(start, f"invalid core extern sort 0x{sort:02x} (expected module)")
        r.u32("type index")
    elif tag in (0x01, 0x04, 0x05):  # func, component, instance: typeidx
        r.u32("type index")
    elif tag == 0x02:  # value: eq valueidx | valtype
        bound = r.byte("value bound")
        if bound == 0x00:
            r.u32("value index")
        elif bound == 0x01:
            r.signed(33, "value type")
        else:
            raise _Malformed(start, f"invalid value bound 0x{bound:02x}")
    elif tag == 0x03:  # type: eq typeidx | sub resource
        bound = r.byte("type bound")
        if bound == 0x00:
            r.u32("type index")
        elif bound != 0x01:
            raise _Malformed(start, f"invalid type bound 0x{bound:02x}")
    else:
        raise _Malformed(start, f"unknown extern descriptor 0x{tag:02x}")


def _component_imports(s: _Reader) -> list[str]:
    names: list[str] = []
    for _ in range(s.count("component imports", 3)):
        start = s.pos
        prefix = s.byte("import name prefix")
        if prefix not in (0x00, 0x01, 0x02):
            raise _Malformed(start, f"invalid import name prefix 0x{prefix:02x}")
        name = s.name("import name")
        if prefix == 0x02:  # name options: implements / version suffix
            for _ in range(s.count("import name options", 2)):
                opt_start = s.pos
                opt = s.byte("import name option")
                if opt not in (0x00, 0x01):
                    raise _Malformed(opt_start, f"invalid import name option 0x{opt:02x}")
                s.name("import name option")
        _component_externdesc(s)
        if name in names:
            raise _Malformed(start, f"duplicate component import {name!r}")
        names.append(name)
    if not s.at_end():
        raise _Malformed(s.pos, f"import section has {s.end - s.pos} unexpected trailing bytes")
    return names


def _component_exports(s: _Reader) -> list[tuple[str, ItemKind]]:
    """``(name, sort)`` of a component's top-level exports; sort is ``func``, ``instance``..."""
    sorts: dict[int, ItemKind] = {
        0x01: "func", 0x02: "value", 0x03: "type", 0x04: "component", 0x05: "instance"
    }
    out: list[tuple[str, ItemKind]] = []
    for _ in range(s.count("component exports", 3)):
        start = s.pos
        prefix = s.byte("export name prefix")
        if prefix not in (0x00, 0x01):
            raise _Malformed(start, f"invalid export name prefix 0x{prefix:02x}")
        name = s.name("export name")
        sort_byte = s.byte("export sort")
        sort: ItemKind
        if sort_byte == 0x00:
            s.byte("core sort")
            sort = "core"
        elif sort_byte in sorts:
            sort = sorts[sort_byte]
        else:
            raise _Malformed(start, f"invalid export sort 0x{sort_byte:02x}")
        s.u32("export index")
        has_type = s.byte("export type flag")
        if has_type == 0x01:
            _component_externdesc(s)
        elif has_type != 0x00:
            raise _Malformed(start, f"invalid export type flag 0x{has_type:02x}")
        out.append((name, sort))
    if not s.at_end():
        raise _Malformed(s.pos, f"export section has {s.end - s.pos} unexpected trailing bytes")
    return out


def _next_section(r: _Reader, data: bytes) -> tuple[int, int, _Reader]:
    """Read one section header (core modules and components share the framing); returns
    (offset, id, a reader over its contents) and moves ``r`` past it."""
    section_start = r.pos
    sid = r.byte("section id")
    size = r.u32("section size")
    if size > r.end - r.pos:
        raise _Malformed(
            section_start,
            f"section {sid} is {size} bytes long but only {r.end - r.pos} bytes remain",
        )
    s = _Reader(data, r.pos, r.pos + size)
    r.pos += size
    return section_start, sid, s


def _custom_section(s: _Reader, data: bytes, custom: dict[str, bytes], start: int) -> None:
    """Record a custom section; the first of a name wins, and a duplicated ``plugbox:*``
    section (which could smuggle a second ABI version) is refused."""
    name = s.name("custom section name")
    if name in custom:
        if name.startswith("plugbox:"):
            raise _Malformed(start, f"custom section {name!r} appears twice")
        return
    custom[name] = data[s.pos : s.end]


def _inspect_component(data: bytes) -> ModuleInfo:
    r = _Reader(data, 8)
    custom: dict[str, bytes] = {}
    imports: list[str] = []
    exports: list[Export] = []
    while not r.at_end():
        section_start, sid, s = _next_section(r, data)
        if sid > _MAX_COMPONENT_SECTION_ID:
            raise _Malformed(section_start, f"unknown component section id {sid}")
        if sid == 0:
            _custom_section(s, data, custom, section_start)
        elif sid == 10:
            # Top-level imports only: nested components' imports are satisfied inside the
            # component, while these are what the host must provide.
            for name in _component_imports(s):
                if name in imports:
                    raise _Malformed(section_start, f"duplicate component import {name!r}")
                imports.append(name)
        elif sid == 11:
            exports.extend(Export(name, sort, (), ()) for name, sort in _component_exports(s))
    return ModuleInfo("component", (), tuple(exports), custom, tuple(imports))


def imported_services(info: ModuleInfo) -> set[str]:
    """The plugbox services (permission names) whose functions the module imports.

    Import modules of any ABI 1.x version count (``plugbox:plugin/kv@1.0.0`` -> ``kv``);
    imports outside the ABI are ignored here (:func:`check_module_interface` refuses them).
    """
    return {service for _, service in _service_imports(info)}


def _service_imports(info: ModuleInfo) -> list[tuple[str, str]]:
    """``(import name, service)`` for every import of a plugbox service interface.

    Core imports are named ``module#field`` (``plugbox:plugin/kv@1.0.0#get``); component
    imports by their interface name (``plugbox:plugin/kv@1.0.0``). The shared ``types``
    interface and imports outside the ABI are left out.
    """
    found: list[tuple[str, str]] = []
    for imp in info.imports:
        parsed = _parse_import_module(imp.module)
        if parsed is not None and parsed[0] in _abispec.SERVICES:
            found.append((f"{imp.module}#{imp.name}", parsed[0]))
    for name in info.component_imports:
        parsed = _parse_import_module(name)
        if parsed is not None and parsed[0] in _abispec.SERVICES:
            found.append((name, parsed[0]))
    return found


_IMPORT_MODULE_RE: Final = re.compile(
    r"plugbox:plugin/([a-z][a-z0-9-]*)@([0-9]+\.[0-9]+\.[0-9]+)"
)


def _parse_import_module(module: str) -> tuple[str, str] | None:
    """``(service, version)`` of ``plugbox:plugin/<service>@<version>``, else ``None``."""
    match = _IMPORT_MODULE_RE.fullmatch(module)
    return None if match is None else (match.group(1), match.group(2))


_WASI_IMPORT_RE: Final = re.compile(r"wasi:[a-z][a-z0-9-]*/[a-z][a-z0-9-]*@0\.2\.[0-9]+")
_TYPE_IMPORT_RE: Final = re.compile(r"[a-z][a-z0-9-]*")


def _check_component_imports(
    info: ModuleInfo,
    manifest: Manifest,
    abi_version: str,
    refuse: Callable[[str], ModuleInterfaceError],
) -> frozenset[str]:
    """A component may import the plugbox interfaces at a runnable 1.x version, WASI 0.2
    interfaces (the runtime serves them deny-by-default: no files, env, args or sockets), and
    the world's type names (``error``). Anything else has no provider and is refused here,
    before the (slow) component compile."""
    from ._manifest import abi_compatible

    services: set[str] = set()
    for name in info.component_imports:
        parsed = _parse_import_module(name)
        if parsed is not None:
            iface, version = parsed
            if iface not in (*_abispec.SERVICES, "types"):
                raise refuse(
                    f"component imports {name}, which plugbox ABI {abi_version} does not "
                    f"define; its interfaces are {', '.join(_abispec.SERVICES)} and types"
                )
            if not abi_compatible(version, abi_version):
                raise IncompatibleAbiError(
                    f"plugin {manifest.name!r}: component imports {name}, built for ABI "
                    f"{version}, which this runtime (ABI {abi_version}) cannot run; rebuild "
                    "the plugin against this ABI",
                    plugin=manifest.name,
                )
            if iface != "types":
                services.add(iface)
        elif _WASI_IMPORT_RE.fullmatch(name) or _TYPE_IMPORT_RE.fullmatch(name):
            continue
        else:
            raise refuse(
                f"component imports {name!r}, which neither the plugbox ABI nor WASI 0.2 "
                "provides; plugins may import only plugbox:plugin/* and wasi:*@0.2.x interfaces"
            )
    funcs = {e.name for e in info.exports if e.kind == "func"}
    for required in ("on-init", "on-hook"):
        if required not in funcs:
            raise refuse(
                f"the component exports no function {required!r}; a plugbox component must "
                f"export the plugin world's on-init and on-hook (build it against "
                f"abi/plugbox.wit, world plugin)"
            )
    return frozenset(services)


def _sig(params: tuple[str, ...], results: tuple[str, ...]) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"


def check_module_interface(
    info: ModuleInfo, manifest: Manifest, *, abi_version: str = _abispec.ABI_VERSION
) -> frozenset[str]:
    """Check a module's interface against the plugbox ABI and its manifest, before compiling.

    Every import must be a function of the ABI with exactly the ABI's signature (no WASI, no
    stray host functions, no imported memories, tables, globals or tags); every required export
    must be present with the right kind and signature, and optional exports, when present, must
    have theirs. The ABI versions the module declares (its ``plugbox:abi-version`` custom
    section and the ``@x.y.z`` of its import modules) must be runnable by ``abi_version`` and
    agree with the manifest's ``abi``.

    Returns the services the module imports. Raises :class:`~plugbox.ModuleInterfaceError`
    or :class:`~plugbox.IncompatibleAbiError`.
    """
    from ._manifest import abi_compatible, parse_abi_version

    plugin = manifest.name
    runtime_major, runtime_minor = parse_abi_version(abi_version)
    abi = f"{runtime_major}.{runtime_minor}"
    manifest_major, manifest_minor = parse_abi_version(manifest.abi)

    def refuse(message: str) -> ModuleInterfaceError:
        return ModuleInterfaceError(f"plugin {plugin!r}: {message}", plugin=plugin)

    if info.kind == "component":
        return _check_component_imports(info, manifest, abi_version, refuse)

    # The declared ABI version, when the module carries one.
    declared = info.custom_sections.get(_abispec.ABI_VERSION_SECTION)
    if declared is not None:
        try:
            text = declared.decode("utf-8").strip()
            declared_major, declared_minor = parse_abi_version(text)
        except (UnicodeDecodeError, ValueError):
            raise refuse(
                f"the {_abispec.ABI_VERSION_SECTION} custom section holds "
                f"{declared[:40]!r}, not an ABI version such as 1.0"
            ) from None
        if not abi_compatible(text, abi_version):
            raise IncompatibleAbiError(
                f"plugin {plugin!r}: the module was built for plugbox ABI "
                f"{declared_major}.{declared_minor} (its {_abispec.ABI_VERSION_SECTION} section), "
                f"but this runtime implements ABI {abi_version}; rebuild the plugin against "
                f"ABI {abi} or use a plugbox release implementing ABI "
                f"{declared_major}.{declared_minor}",
                plugin=plugin,
            )
        if (declared_major, declared_minor) != (manifest_major, manifest_minor):
            raise IncompatibleAbiError(
                f"plugin {plugin!r}: the module declares plugbox ABI "
                f"{declared_major}.{declared_minor} (its {_abispec.ABI_VERSION_SECTION} "
                f"section) but its manifest {manifest.path} says abi {manifest.abi!r} ($.abi); "
                f"they must agree: correct $.abi or rebuild the module",
                plugin=plugin,
            )

    for imp in info.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.kind != "func":
            raise refuse(
                f"the module imports a {imp.kind} ({where}); plugins must define and export "
                f"their own memory and may import only plugbox:plugin/* functions"
            )
        parsed = _parse_import_module(imp.module)
        if parsed is None or parsed[0] not in _abispec.SERVICES:
            hint = ""
            if imp.module.startswith("wasi"):
                hint = (
                    " (WASI imports come from building for a WASI target: build for "
                    "wasm32-unknown-unknown instead)"
                )
            raise refuse(
                f"module imports {where}, which is not part of the plugbox ABI {abi}; "
                f"plugins may import only plugbox:plugin/* functions{hint}"
            )
        service, version = parsed
        if not abi_compatible(version, abi_version):
            raise IncompatibleAbiError(
                f"plugin {plugin!r}: the module imports {where}, from plugbox ABI {version}, "
                f"but this runtime implements ABI {abi_version}; rebuild the plugin against "
                f"ABI {abi}",
                plugin=plugin,
            )
        if not abi_compatible(version, manifest.abi):
            raise IncompatibleAbiError(
                f"plugin {plugin!r}: the module imports {where}, from plugbox ABI {version}, "
                f"newer than the abi {manifest.abi!r} its manifest declares ($.abi in "
                f"{manifest.path}); they must agree: correct $.abi or rebuild the module",
                plugin=plugin,
            )
        # Within a compatible major.minor, the signatures are those of this runtime's ABI.
        expected = _abispec.IMPORTS.get((_abispec.import_module(service), imp.name))
        if expected is None:
            raise refuse(
                f"module imports {where}, which is not part of the plugbox ABI {abi}: the "
                f"{service} interface has no function {imp.name!r}"
            )
        if (imp.params, imp.results) != expected:
            raise refuse(
                f"module imports {where} with signature {_sig(imp.params, imp.results)}, but "
                f"the plugbox ABI {abi} defines it as {_sig(*expected)}; rebuild the plugin "
                f"against plugbox ABI {abi}"
            )

    exports = {exp.name: exp for exp in info.exports}
    for name, (kind, params, results) in _abispec.EXPORTS.items():
        if name not in exports:
            raise refuse(
                f"the module does not export {name!r}, which the plugbox ABI {abi} requires "
                f"(a {kind}"
                + (f" {_sig(params, results)}" if kind == "func" else "")
                + "); build it with the plugbox SDK or add the export"
            )
    for name, (kind, params, results) in {**_abispec.EXPORTS, **_abispec.OPTIONAL_EXPORTS}.items():
        exp = exports.get(name)
        if exp is None:
            continue
        if exp.kind != kind:
            raise refuse(
                f"the module exports {name!r} as a {exp.kind}, but the plugbox ABI {abi} "
                f"requires a {kind}"
            )
        if kind == "func" and (exp.params, exp.results) != (params, results):
            raise refuse(
                f"the module exports {name!r} with signature {_sig(exp.params, exp.results)}, "
                f"but the plugbox ABI {abi} requires {_sig(params, results)}"
            )
    return frozenset(imported_services(info))


# --------------------------------------------------------------------------------------------
# Static capability check


@dataclass(frozen=True)
class CapabilityReport:
    """The module's imports against the manifest's permissions.

    ``imported``: services the module imports; ``requested``: services the manifest requests;
    ``unrequested``: ``(import, permission)`` pairs for imports whose permission is not
    requested (the plugin is refused unless the host allows it explicitly); ``unused``:
    requested permissions the module never imports (harmless, but more than it needs).
    """

    imported: frozenset[str]
    requested: frozenset[str]
    unrequested: tuple[tuple[str, str], ...]
    unused: frozenset[str]

    @property
    def ok(self) -> bool:
        """True when every import is covered by a requested permission."""
        return not self.unrequested


#: What to add to ``permissions`` in plugbox.json to request each service.
_PERMISSION_SNIPPETS: Final = {
    "log": '"log": true',
    "config": '"config": true',
    "clock": '"clock": true',
    "random": '"random": true',
    "kv": '"kv": {}',
    "events": '"events": {"topics": ["my-topic.*"]}',
    "http": '"http": {"hosts": ["api.example.com"]}',
}


def capability_report(info: ModuleInfo, manifest: Manifest) -> CapabilityReport:
    """Compare the services ``info`` imports with those ``manifest`` requests (no raising)."""
    requested = manifest.permissions.services()
    pairs = _service_imports(info)
    imported = frozenset(service for _, service in pairs)
    unrequested = tuple((name, service) for name, service in pairs if service not in requested)
    return CapabilityReport(imported, requested, unrequested, requested - imported)


def check_capabilities(
    info: ModuleInfo, manifest: Manifest, *, allow_unrequested_imports: bool = False
) -> CapabilityReport:
    """The static capability check made at load, before compiling.

    Every plugbox service the module imports must be requested in the manifest, else
    :class:`~plugbox.CapabilityError` naming the import and the missing permission; a module
    cannot even link a service it did not ask for. Requested permissions the module never
    imports are logged as a WARNING. ``allow_unrequested_imports`` (testing and diagnostics
    only) lets unrequested imports through; they stay denied when called.
    """
    report = capability_report(info, manifest)
    plugin = manifest.name
    if report.unrequested and not allow_unrequested_imports:
        name, service = report.unrequested[0]
        others = sorted({f"{n} ({s})" for n, s in report.unrequested[1:]})
        more = f" (also unrequested: {', '.join(others)})" if others else ""
        raise CapabilityError(
            f"plugin {plugin!r}: module imports {name} but plugbox.json does not request the "
            f"\"{service}\" permission; add {_PERMISSION_SNIPPETS[service]} to "
            f"permissions or remove the import{more}",
            plugin=plugin,
            permission=service,
            import_name=name,
        )
    if report.unrequested:
        _log.info(
            "plugin %r imports %s without requesting the permission; loading anyway "
            "(allow_unrequested_imports=True): those calls will be denied",
            plugin, ", ".join(sorted({s for _, s in report.unrequested})),
        )
    for service in sorted(report.unused):
        _log.warning(
            "plugin %r requests the %r permission but its module never imports the %s "
            "interface; remove it from permissions in %s (least privilege)",
            plugin, service, _abispec.import_module(service), manifest.path,
        )
    return report

