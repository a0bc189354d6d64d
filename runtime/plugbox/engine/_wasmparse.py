"""A small, strict WebAssembly binary reader for checks made before anything is compiled.

plugbox refuses a plugin whose module imports anything outside the ABI, or that wasmtime could
not run within the host's budget, *before* handing it to wasmtime, so a hostile module never
reaches the compiler unless its interface and its shape are right. This reader therefore parses
only what those checks need (the type, import, function and export sections, the memory and
table types, the item counts of the others, the sizes of function bodies, and custom sections)
and skips the code and data themselves. It is strict about structure: sections out of order or
duplicated, lengths that overrun, LEB128 integers that are over-long or out of range, names
that are not UTF-8, indices out of range. Every malformation is reported as
:class:`~plugbox.ModuleInterfaceError`, never as a Python ``IndexError`` or the like.

Components (the component-model binary, layer 1) are recognised; their top-level custom
sections, imports and exports (names and sorts) are read, which is what the capability check
needs, and their core modules, core instances and nested components are followed to count what
one instantiation creates (:class:`ModuleShape`).

:func:`check_module_interface` is the ABI check, :func:`check_module_shape` the compile and
instantiation budget (:func:`compile_refusal` types what only compiling can tell), and
:func:`check_capabilities` the static capability check: every plugbox service the module
imports must be requested by the manifest, and requested services that are never imported are
reported (least privilege).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from . import _abispec
from .._errors import (
    CapabilityError,
    IncompatibleAbiError,
    ModuleInterfaceError,
    PolicyViolationError,
)

if TYPE_CHECKING:
    from .._manifest import Manifest
    from .._permissions import Limits
    from .._policy import Policy

__all__ = [
    "MAX_GLOBALS",
    "MAX_MEMORIES_PER_MODULE",
    "MAX_MEMORY_PAGES",
    "MAX_TABLES_PER_MODULE",
    "MAX_TABLE_ELEMENTS",
    "CapabilityReport",
    "CoreShape",
    "Export",
    "Import",
    "MemoryType",
    "ModuleInfo",
    "ModuleShape",
    "StoreLimits",
    "TableType",
    "capability_report",
    "check_capabilities",
    "check_module_interface",
    "check_module_shape",
    "compile_refusal",
    "imported_services",
    "inspect_module",
    "is_component",
    "requested_services",
    "store_limits",
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
class MemoryType:
    """A linear memory a core module defines: sizes in pages of ``page_size`` bytes
    (``maximum`` is ``None`` when the module declares none)."""

    minimum: int
    maximum: int | None = None
    shared: bool = False
    memory64: bool = False
    page_size: int = 65536

    @property
    def minimum_bytes(self) -> int:
        """The bytes the memory has when instantiated."""
        return self.minimum * self.page_size

    @property
    def maximum_bytes(self) -> int | None:
        """The most bytes the memory may grow to by its own declaration, if it declares it."""
        return None if self.maximum is None else self.maximum * self.page_size


@dataclass(frozen=True)
class TableType:
    """A table a core module defines: sizes in elements (``maximum`` ``None`` when absent)."""

    minimum: int
    maximum: int | None = None
    table64: bool = False


@dataclass(frozen=True)
class CoreShape:
    """What one core module defines, which decides what instantiating and compiling it cost:
    its memories and tables, how many globals and functions, the size of its largest function
    body and of all its code."""

    memories: tuple[MemoryType, ...] = ()
    tables: tuple[TableType, ...] = ()
    globals: int = 0
    functions: int = 0
    largest_body: int = 0
    code_bytes: int = 0
    #: Whether a start function runs guest code while the module is instantiated.
    start: bool = False


@dataclass(frozen=True)
class ModuleShape:
    """The resources a module or component needs, read without compiling it.

    ``modules`` holds every core module defined (in a component: at any nesting depth, in
    order); ``instantiated`` pairs a module's index in ``modules`` with how many core instances
    of it one instantiation of the whole creates (a core module: ``((0, 1),)``). ``exact`` is
    False when a component instantiates a module or component the reader cannot attribute (one
    it imports or takes from an instance's exports), so the counts are a lower bound.
    """

    modules: tuple[CoreShape, ...] = ()
    instantiated: tuple[tuple[int, int], ...] = ()
    exact: bool = True

    @property
    def core_instances(self) -> int:
        """Core instances one instantiation creates."""
        return sum(times for _, times in self.instantiated)

    @property
    def memories(self) -> tuple[MemoryType, ...]:
        """Every memory one instantiation creates (a module's once per instance of it). Cap
        :attr:`core_instances` first: nested instantiations multiply, so a small hostile
        component can claim astronomically many."""
        return tuple(m for i, times in self.instantiated
                     for _ in range(times) for m in self.modules[i].memories)

    @property
    def memory_count(self) -> int:
        """``len(memories)``, without building the tuple."""
        return sum(times * len(self.modules[i].memories) for i, times in self.instantiated)

    @property
    def table_count(self) -> int:
        """Tables one instantiation creates."""
        return sum(times * len(self.modules[i].tables) for i, times in self.instantiated)

    @property
    def functions(self) -> int:
        """Functions defined over all core modules (each compiled once, however instantiated)."""
        return sum(m.functions for m in self.modules)


@dataclass(frozen=True)
class ModuleInfo:
    """What :func:`inspect_module` found. For components, ``imports`` is empty and
    ``exports`` lists the top-level exports by name and sort (no signatures).

    ``custom_sections`` maps a section's name to its contents; when a name occurs more than
    once, the first occurrence is kept (a duplicated ``plugbox:*`` section is refused).
    ``component_imports`` holds a component's top-level import names in order (interface
    names such as ``plugbox:plugin/kv@1.0.0``); it is empty for core modules. ``shape`` is
    what instantiating and compiling it costs (see :class:`ModuleShape`).
    """

    kind: Literal["core", "component"]
    imports: tuple[Import, ...]
    exports: tuple[Export, ...]
    custom_sections: Mapping[str, bytes] = field(hash=False)
    component_imports: tuple[str, ...] = ()
    shape: ModuleShape = field(default_factory=ModuleShape, hash=False)


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

    def skip(self, size: int, what: str) -> None:
        if size > self.end - self.pos:
            raise self.fail(
                f"{what} is {size} bytes long but only {self.end - self.pos} bytes remain"
            )
        self.pos += size

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
        pos = self.pos
        if pos < self.end and self.data[pos] < 0x80:  # one-byte values: most of them
            self.pos = pos + 1
            return self.data[pos]
        return self.unsigned(32, what)

    def u32s(self, count: int, what: str, *, skip: bool = False) -> list[int]:
        """``count`` u32 values in a row (``skip``: each is a size, skipped after it is read).

        The loop is inlined because large modules have tens of thousands of these (a Python
        component's function section and code section): one method call per value costs
        ~0.1 s per 10 MB module."""
        data, pos, end = self.data, self.pos, self.end
        out: list[int] = []
        append = out.append
        for _ in range(count):
            if pos + 5 <= end:  # room for the longest u32: decode inline
                value = 0
                for shift in (0, 7, 14, 21, 28):
                    byte = data[pos]
                    pos += 1
                    value |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                else:
                    self.pos = pos - 5
                    raise self.fail(f"malformed LEB128 {what}: longer than 5 bytes")
                if value >> 32:
                    self.pos = pos
                    raise self.fail(f"malformed LEB128 {what}: out of range for u32")
            else:
                self.pos = pos
                value = self.unsigned(32, what)
                pos = self.pos
            if skip:
                if value > end - pos:
                    self.pos = pos
                    raise self.fail(
                        f"{what} says {value} bytes but only {end - pos} bytes remain")
                pos += value
            append(value)
        self.pos = pos
        return out

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


def _limits(r: _Reader) -> tuple[int, int, int | None, int | None]:
    """``(flags, minimum, maximum, page size log2)`` of a memory or table type."""
    start = r.pos
    flags = r.byte("limits flags")
    # bit 0: has max; bit 1: shared; bit 2: 64-bit; bit 3: custom page size.
    if flags & ~0x0F:
        raise _Malformed(start, f"invalid limits flags 0x{flags:02x}")
    bits = 64 if flags & 0x04 else 32
    minimum = r.unsigned(bits, "limits minimum")
    maximum = r.unsigned(bits, "limits maximum") if flags & 0x01 else None
    page_log2 = r.u32("page size") if flags & 0x08 else None
    return flags, minimum, maximum, page_log2


def _memtype(r: _Reader) -> MemoryType:
    start = r.pos
    flags, minimum, maximum, page_log2 = _limits(r)
    if page_log2 is not None and page_log2 > 16:
        raise _Malformed(start, f"memory page size 2**{page_log2} is larger than 64 KiB")
    page = 1 << (16 if page_log2 is None else page_log2)
    return MemoryType(minimum, maximum, bool(flags & 0x02), bool(flags & 0x04), page)


def _tabletype(r: _Reader) -> TableType:
    start = r.pos
    if r.pos < r.end and r.data[r.pos] == 0x40:
        # 0x40 0x00: a table with an initialiser expression (function-references proposal).
        raise _Malformed(start, "the module defines a table with an initialiser expression "
                                "(function-references proposal), which plugbox does not support")
    _reftype(r)
    flags, minimum, maximum, page_log2 = _limits(r)
    if flags & 0x0A:
        raise _Malformed(start, f"invalid table limits flags 0x{flags:02x}")
    return TableType(minimum, maximum, bool(flags & 0x04))


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


def is_component(data: bytes) -> bool:
    """Whether ``data`` starts like a component (rather than a core module)."""
    return data[:8] == b"\x00asm" + _COMPONENT_VERSION


def _inspect_core(data: bytes, start: int = 0, end: int | None = None) -> ModuleInfo:
    """Read the core module in ``data[start:end]`` (magic and version already checked)."""
    r = _Reader(data, start + 8, end)
    memories: list[MemoryType] = []
    tables: list[TableType] = []
    largest_body = code_bytes = 0
    types: list[tuple[tuple[str, ...], tuple[str, ...]] | None] = []
    imports: list[Import] = []
    func_sigs: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # imported, then defined
    counts = {"table": 0, "memory": 0, "global": 0, "tag": 0}
    exports: list[Export] = []
    custom: dict[str, bytes] = {}
    defined_funcs = 0
    code_seen = False
    has_start = False
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
                    _tabletype(s)
                elif kind == "memory":
                    _memtype(s)
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
            section_at = s.pos
            for index in s.u32s(defined_funcs, "type index"):
                sig = types[index] if index < len(types) else None
                if sig is None:
                    raise _Malformed(section_at, f"type index {index} out of range or not a "
                                                 f"function type ({len(types)} types)")
                func_sigs.append(sig)
        elif sid == 4:
            n = s.count("tables", 3)
            tables.extend(_tabletype(s) for _ in range(n))
            counts["table"] += n
        elif sid == 5:
            n = s.count("memories", 2)
            memories.extend(_memtype(s) for _ in range(n))
            counts["memory"] += n
        elif sid in (6, 13):
            # Only the item counts matter (to range-check export indices); skip the bodies.
            kind_name = {6: "global", 13: "tag"}[sid]
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
            code_bytes = s.end - s.pos
            # Only their sizes matter (the compile budget).
            largest_body = max(s.u32s(bodies, "function body size", skip=True), default=0)
        elif sid == 8:
            has_start = True
            continue  # which function does not matter here; wasmtime validates it
        else:
            continue  # element, data count, data: not needed
        if not s.at_end():
            raise _Malformed(
                s.pos,
                f"{_SECTION_NAMES[sid]} section has {s.end - s.pos} unexpected trailing bytes",
            )

    if defined_funcs and not code_seen:
        raise _Malformed(r.end, f"{defined_funcs} functions are declared but there is no code")
    shape = CoreShape(tuple(memories), tuple(tables), counts["global"] - sum(
        1 for imp in imports if imp.kind == "global"), defined_funcs, largest_body, code_bytes,
        has_start)
    return ModuleInfo("core", tuple(imports), tuple(exports), custom,
                      shape=ModuleShape((shape,), ((0, 1),)))


def _component_externdesc(r: _Reader) -> int:
    """Skip one component ``externdesc``; returns its tag (0x00 core module, 0x04 component,
    ...), which says what index space an import adds to."""
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
    return tag


def _component_imports(s: _Reader) -> list[tuple[str, int]]:
    """``(name, extern descriptor tag)`` of each import in a component's import section."""
    names: list[tuple[str, int]] = []
    seen: set[str] = set()
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
        tag = _component_externdesc(s)
        if name in seen:
            raise _Malformed(start, f"duplicate component import {name!r}")
        seen.add(name)
        names.append((name, tag))
    if not s.at_end():
        raise _Malformed(s.pos, f"import section has {s.end - s.pos} unexpected trailing bytes")
    return names


_COMPONENT_SORTS: Final[dict[int, ItemKind]] = {
    0x01: "func", 0x02: "value", 0x03: "type", 0x04: "component", 0x05: "instance"
}
_CORE_SORTS: Final = frozenset({0x00, 0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12})
_CORE_MODULE_SORT: Final = 0x11


def _sort(s: _Reader, start: int) -> tuple[int, int | None]:
    """A component ``sort``: ``(sort byte, core sort byte or None)``."""
    sort = s.byte("sort")
    if sort == 0x00:
        core = s.byte("core sort")
        if core not in _CORE_SORTS:
            raise _Malformed(start, f"invalid core sort 0x{core:02x}")
        return sort, core
    if sort not in _COMPONENT_SORTS:
        raise _Malformed(start, f"invalid sort 0x{sort:02x}")
    return sort, None


def _component_exports(s: _Reader) -> list[tuple[str, ItemKind, int | None, int]]:
    """``(name, sort, core sort, index)`` of a component's exports; sort is ``func``,
    ``instance``, ... or ``core`` (then the core sort byte says which)."""
    out: list[tuple[str, ItemKind, int | None, int]] = []
    for _ in range(s.count("component exports", 3)):
        start = s.pos
        prefix = s.byte("export name prefix")
        if prefix not in (0x00, 0x01):
            raise _Malformed(start, f"invalid export name prefix 0x{prefix:02x}")
        name = s.name("export name")
        sort_byte, core = _sort(s, start)
        sort: ItemKind = "core" if core is not None else _COMPONENT_SORTS[sort_byte]
        index = s.u32("export index")
        has_type = s.byte("export type flag")
        if has_type == 0x01:
            _component_externdesc(s)
        elif has_type != 0x00:
            raise _Malformed(start, f"invalid export type flag 0x{has_type:02x}")
        out.append((name, sort, core, index))
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


#: Components nested deeper than this are refused (no toolchain nests more than a few levels,
#: and the reader recurses once per level).
MAX_COMPONENT_NESTING: Final = 32


class _Cost:
    """What instantiating one component creates: core instances per module (indices into the
    list of every core module read), and whether that is all of it."""

    __slots__ = ("instances", "exact")

    def __init__(self, exact: bool = True) -> None:
        self.instances: dict[int, int] = {}
        self.exact = exact

    def add(self, other: _Cost) -> None:
        for module, times in other.instances.items():
            self.instances[module] = self.instances.get(module, 0) + times
        self.exact = self.exact and other.exact


_UNKNOWN: Final = _Cost(exact=False)


class _Scope:
    """One component's core-module and component index spaces, as far as they matter for what
    instantiating it costs: a module index maps to its entry in the list of modules read (None:
    imported or aliased from an instance, so unknown); a component index to its cost."""

    __slots__ = ("modules", "components")

    def __init__(self) -> None:
        self.modules: list[int | None] = []
        self.components: list[_Cost] = []


def _nested_header(s: _Reader, version: bytes, what: str) -> None:
    start = s.pos
    header = s.take(8, f"{what} header")
    if header != b"\x00asm" + version:
        raise _Malformed(start, f"{what} does not start with the expected magic and version")


def _index(space: list[Any], r: _Reader, start: int, what: str) -> Any:
    index = r.u32(f"{what} index")
    if index >= len(space):
        raise _Malformed(start, f"{what} index {index} out of range ({len(space)} defined)")
    return space[index]


def _read_component(
    data: bytes, r: _Reader, scopes: list[_Scope], modules: list[CoreShape],
    top: tuple[dict[str, bytes], list[str], list[Export]] | None,
) -> _Cost:
    """Walk one component (``r`` positioned after its header) and return what instantiating
    it creates; nested modules are appended to ``modules``. ``top`` collects the custom
    sections, import names and exports of the outermost component."""
    if len(scopes) > MAX_COMPONENT_NESTING:
        raise _Malformed(r.pos, f"components are nested more than {MAX_COMPONENT_NESTING} deep")
    scope = _Scope()
    scopes.append(scope)
    cost = _Cost()
    while not r.at_end():
        section_start, sid, s = _next_section(r, data)
        if sid > _MAX_COMPONENT_SECTION_ID:
            raise _Malformed(section_start, f"unknown component section id {sid}")
        if sid == 0:
            if top is not None:
                _custom_section(s, data, top[0], section_start)
            continue
        if sid == 1:  # a core module
            _nested_header(s, _CORE_VERSION, "nested core module")
            modules.append(_inspect_core(data, s.pos - 8, s.end).shape.modules[0])
            scope.modules.append(len(modules) - 1)
            continue
        if sid == 4:  # a nested component: costs nothing until instantiated
            _nested_header(s, _COMPONENT_VERSION, "nested component")
            scope.components.append(_read_component(data, s, scopes, modules, None))
            continue
        if sid == 2:  # core instances
            for _ in range(s.count("core instances", 2)):
                start = s.pos
                form = s.byte("core instance form")
                if form == 0x00:
                    module = _index(scope.modules, s, start, "core module")
                    if module is None:
                        cost.exact = False
                    else:
                        cost.instances[module] = cost.instances.get(module, 0) + 1
                    for _ in range(s.count("instantiation arguments", 3)):
                        s.name("argument name")
                        if s.byte("argument sort") != 0x12:
                            raise _Malformed(start, "a core instantiation argument must be an "
                                                    "instance")
                        s.u32("instance index")
                elif form == 0x01:
                    for _ in range(s.count("inline exports", 3)):
                        s.name("export name")
                        if s.byte("core sort") not in _CORE_SORTS:
                            raise _Malformed(start, "invalid core sort in an inline export")
                        s.u32("index")
                else:
                    raise _Malformed(start, f"invalid core instance form 0x{form:02x}")
        elif sid == 5:  # component instances
            for _ in range(s.count("instances", 2)):
                start = s.pos
                form = s.byte("instance form")
                if form == 0x00:
                    cost.add(_index(scope.components, s, start, "component"))
                    for _ in range(s.count("instantiation arguments", 3)):
                        s.name("argument name")
                        _sort(s, start)
                        s.u32("index")
                elif form == 0x01:
                    for _ in range(s.count("inline exports", 3)):
                        if s.byte("export name prefix") not in (0x00, 0x01):
                            raise _Malformed(start, "invalid inline export name prefix")
                        s.name("export name")
                        _sort(s, start)
                        s.u32("index")
                else:
                    raise _Malformed(start, f"invalid instance form 0x{form:02x}")
        elif sid == 6:  # aliases: only modules and components matter here
            for _ in range(s.count("aliases", 3)):
                start = s.pos
                sort, core = _sort(s, start)
                target = s.byte("alias target")
                if target == 0x02:  # outer: count of enclosing components, index
                    depth = s.u32("outer alias count")
                    if depth >= len(scopes):
                        raise _Malformed(start, f"outer alias reaches {depth} components out, "
                                                f"but only {len(scopes) - 1} enclose it")
                    outer = scopes[-1 - depth]
                    if core == _CORE_MODULE_SORT:
                        scope.modules.append(_index(outer.modules, s, start, "core module"))
                    elif sort == 0x04:
                        scope.components.append(_index(outer.components, s, start, "component"))
                    else:
                        s.u32("index")
                    continue
                if target not in (0x00, 0x01):
                    raise _Malformed(start, f"invalid alias target 0x{target:02x}")
                s.u32("instance index")
                s.name("export name")
                # A module or component taken from an instance's exports: not attributable.
                if core == _CORE_MODULE_SORT:
                    scope.modules.append(None)
                elif sort == 0x04:
                    scope.components.append(_UNKNOWN)
        elif sid == 10:
            for name, tag in _component_imports(s):
                if tag == 0x00:
                    scope.modules.append(None)
                elif tag == 0x04:
                    scope.components.append(_UNKNOWN)
                if top is not None:
                    # Top-level imports only: nested components' imports are satisfied inside
                    # the component, while these are what the host must provide.
                    if name in top[1]:
                        raise _Malformed(section_start, f"duplicate component import {name!r}")
                    top[1].append(name)
        elif sid == 11:
            for name, kind, core, index in _component_exports(s):
                # An export is also a new index in its sort's index space.
                if core == _CORE_MODULE_SORT:
                    if index >= len(scope.modules):
                        raise _Malformed(section_start, f"export {name!r} refers to core module "
                                                        f"{index}, which is not defined")
                    scope.modules.append(scope.modules[index])
                elif kind == "component":
                    if index >= len(scope.components):
                        raise _Malformed(section_start, f"export {name!r} refers to component "
                                                        f"{index}, which is not defined")
                    scope.components.append(scope.components[index])
                if top is not None:
                    top[2].append(Export(name, kind, (), ()))
        else:
            continue  # core types, types, canonical functions, start, values: no cost
        if not s.at_end():
            raise _Malformed(s.pos, f"component section {sid} has {s.end - s.pos} unexpected "
                                    f"trailing bytes")
    scopes.pop()
    return cost


def _inspect_component(data: bytes) -> ModuleInfo:
    custom: dict[str, bytes] = {}
    imports: list[str] = []
    exports: list[Export] = []
    modules: list[CoreShape] = []
    cost = _read_component(data, _Reader(data, 8), [], modules, (custom, imports, exports))
    shape = ModuleShape(tuple(modules), tuple(sorted(cost.instances.items())), cost.exact)
    return ModuleInfo("component", (), tuple(exports), custom, tuple(imports), shape)


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
        parsed = _abispec.parse_import_module(imp.module)
        if parsed is not None and parsed[0] in _abispec.SERVICES:
            found.append((f"{imp.module}#{imp.name}", parsed[0]))
    for name in info.component_imports:
        parsed = _abispec.parse_import_module(name)
        if parsed is not None and parsed[0] in _abispec.SERVICES:
            found.append((name, parsed[0]))
    return found


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
    from .._manifest import abi_compatible, parse_abi_version

    services: set[str] = set()
    for name in info.component_imports:
        parsed = _abispec.parse_import_module(name)
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
            if iface == "host" and parse_abi_version(version) < (1, 1):
                raise refuse(
                    f"component imports {name}, but the host interface was added in plugbox "
                    "ABI 1.1: import plugbox:plugin/host@1.1.0"
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
    from .._manifest import abi_compatible, parse_abi_version

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

    seen: set[tuple[str, str]] = set()
    for imp in info.imports:
        where = f"{imp.module}.{imp.name}"
        if (imp.module, imp.name) in seen:
            raise refuse(
                f"the module imports {where} more than once; import each ABI function once "
                "(the linker cannot bind one name to two imports)"
            )
        seen.add((imp.module, imp.name))
        if imp.kind != "func":
            raise refuse(
                f"the module imports a {imp.kind} ({where}); plugins must define and export "
                f"their own memory and may import only plugbox:plugin/* functions"
            )
        parsed = _abispec.parse_import_module(imp.module)
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
        key = _abispec.canonical_import(imp.module, imp.name)
        expected = None if key is None else _abispec.IMPORTS[key]
        if expected is None:
            later = (_abispec.import_module(service), imp.name)
            if later in _abispec.SINCE:
                major, minor = _abispec.SINCE[later]
                raise refuse(
                    f"module imports {where}, but {imp.name!r} was added to the {service} "
                    f"interface in plugbox ABI {major}.{minor}, so {imp.module} has no such "
                    f"function; import it from plugbox:plugin/{service}@{major}.{minor}.0 and "
                    f"declare abi {major}.{minor}"
                )
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
    "host": '"functions": ["app.query"] or "dispatch": ["app.point"]',
}


def requested_services(manifest: Manifest) -> frozenset[str]:
    """The services ``manifest`` requests. ``host`` counts as requested when the manifest asks
    for host functions or dispatch points, or declares extension points of its own (which a
    plugin may always dispatch)."""
    requested = manifest.permissions.services()
    if "host" not in requested and manifest.raw.get("extension_points"):
        requested |= {"host"}
    return requested


def capability_report(info: ModuleInfo, manifest: Manifest) -> CapabilityReport:
    """Compare the services ``info`` imports with those ``manifest`` requests (no raising)."""
    requested = requested_services(manifest)
    pairs = _service_imports(info)
    imported = frozenset(service for _, service in pairs)
    unrequested = tuple((name, service) for name, service in pairs if service not in requested)
    return CapabilityReport(imported, requested, unrequested,
                            manifest.permissions.services() - imported)


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


# --------------------------------------------------------------------------------------------
# The compile and instantiation budget


#: Fixed caps on what one core instance may define. plugbox's engine reserves instance slots of
#: this shape (wasmtime's pooling-allocator defaults), so a module beyond them could never be
#: instantiated; it is refused before compiling instead.
MAX_MEMORIES_PER_MODULE: Final = 1
MAX_TABLES_PER_MODULE: Final = 1
MAX_TABLE_ELEMENTS: Final = 20_000
#: Globals live in the instance's fixed-size slot (1 MiB, 16 bytes each).
MAX_GLOBALS: Final = 10_000
#: A 32-bit memory addresses at most 4 GiB: 65,536 pages of 64 KiB.
MAX_MEMORY_PAGES: Final = 65_536


class StoreLimits(NamedTuple):
    """The store limiter's settings for one instance (``wasmtime_store_limiter``):
    ``memory_bytes`` applies to each memory, ``table_elements`` to each table; ``instances``,
    ``tables`` and ``memories`` count what the whole store may create."""

    memory_bytes: int
    table_elements: int
    instances: int
    tables: int
    memories: int


def _memory_share(memories: tuple[MemoryType, ...], cap: int) -> int:
    """The per-memory limit L under which ``memories`` together can never hold more than
    ``cap`` bytes: each memory stays within ``min(its maximum, L)``; the largest such L."""
    bounds = sorted(cap if m.maximum_bytes is None else min(m.maximum_bytes, cap)
                    for m in memories)
    remaining = cap
    for i, bound in enumerate(bounds):
        left = len(bounds) - i
        if bound * left > remaining:
            return remaining // left
        remaining -= bound
    return cap


def store_limits(shape: ModuleShape, memory_cap: int) -> StoreLimits:
    """The limiter settings that hold an instance of a module of ``shape`` to what
    :func:`check_module_shape` accepted: exactly the instances, memories and tables it counted,
    and memories that together stay within ``memory_cap``."""
    return StoreLimits(
        memory_bytes=_memory_share(shape.memories, memory_cap),
        table_elements=MAX_TABLE_ELEMENTS,
        instances=shape.core_instances,
        tables=shape.table_count,
        memories=shape.memory_count,
    )


def check_module_shape(info: ModuleInfo, manifest: Manifest, *, limits: Limits,
                       policy: Policy) -> None:
    """The compile and instantiation budget, checked on the parsed module before compiling.

    Refuses with :class:`~plugbox.ModuleInterfaceError` what plugbox cannot run at all (more
    than one memory or table in a core module, shared or 64-bit memories, custom page sizes, a
    memory above 4 GiB, a component whose core instances cannot be counted), and with
    :class:`~plugbox.PolicyViolationError` what is over a cap: the policy's compile budget
    (``max_functions``, ``max_function_body_bytes``, ``max_code_bytes``), its caps per
    component (``max_component_core_instances``, ``_memories``, ``_tables``), the fixed caps
    above, and memories whose initial size does not fit ``limits.memory_bytes``.
    """
    from .._policy import budget_violation

    plugin = manifest.name
    shape = info.shape
    component = info.kind == "component"

    def refuse(message: str) -> ModuleInterfaceError:
        return ModuleInterfaceError(f"plugin {plugin!r}: {message}", plugin=plugin)

    def over(what: str, cap_name: str, needed: int) -> PolicyViolationError:
        return budget_violation(manifest, what, cap_name, needed)

    def fixed(what: str, limit: str) -> PolicyViolationError:
        return PolicyViolationError(
            f"plugin {plugin!r}: {what}, more than plugbox's instance slots hold; rebuild the "
            "plugin to need less", plugin=plugin, limit=limit)

    for index, module in enumerate(shape.modules):
        where = f"core module {index} of the component" if component else "the module"
        if len(module.memories) > MAX_MEMORIES_PER_MODULE:
            raise refuse(f"{where} defines {len(module.memories)} memories; plugbox runs core "
                         f"modules with at most {MAX_MEMORIES_PER_MODULE} (the multi-memory "
                         "proposal is not supported): keep one memory, exported as 'memory'")
        for memory in module.memories:
            if memory.shared:
                raise refuse(f"{where} defines a shared memory (the threads proposal), which "
                             "plugbox does not support; build without threads and atomics")
            if memory.memory64:
                raise refuse(f"{where} defines a 64-bit memory (the memory64 proposal), which "
                             "plugbox does not support; build for a 32-bit target "
                             "(wasm32-unknown-unknown)")
            if memory.page_size != 65536:
                raise refuse(f"{where} uses {memory.page_size}-byte memory pages (the "
                             "custom-page-sizes proposal), which plugbox does not support")
            if memory.minimum > MAX_MEMORY_PAGES:
                raise refuse(f"{where} declares a memory of {memory.minimum} pages initially, "
                             f"more than a 32-bit memory can address ({MAX_MEMORY_PAGES} pages, "
                             "4 GiB)")
        if len(module.tables) > MAX_TABLES_PER_MODULE:
            raise refuse(f"{where} defines {len(module.tables)} tables; plugbox runs core "
                         f"modules with at most {MAX_TABLES_PER_MODULE}")
        for table in module.tables:
            if table.table64:
                raise refuse(f"{where} defines a 64-bit table (the memory64 proposal), which "
                             "plugbox does not support")
            if table.minimum > MAX_TABLE_ELEMENTS:
                raise fixed(f"{where} declares a table of {table.minimum} elements initially "
                            f"(the cap is {MAX_TABLE_ELEMENTS})", "table_elements")
        if module.globals > MAX_GLOBALS:
            raise fixed(f"{where} defines {module.globals} globals (the cap is {MAX_GLOBALS})",
                        "globals")
        if module.largest_body > policy.max_function_body_bytes:
            raise over(f"has a function body of {module.largest_body} bytes in {where}, above "
                       f"the host's cap of {policy.max_function_body_bytes} bytes (compiling "
                       "one huge function costs far more than many small ones)",
                       "max_function_body_bytes", module.largest_body)

    if shape.functions > policy.max_functions:
        raise over(f"defines {shape.functions} functions, above the host's cap of "
                   f"{policy.max_functions}", "max_functions", shape.functions)
    code = sum(m.code_bytes for m in shape.modules)
    if code > policy.max_code_bytes:
        raise over(f"has {code} bytes of code, above the host's cap of {policy.max_code_bytes} "
                   "bytes (compiling costs time and memory in proportion)", "max_code_bytes", code)

    if component:
        if not shape.exact:
            raise refuse("the component instantiates a core module or component it imports or "
                         "takes from another instance's exports, so plugbox cannot count what "
                         "it creates; build it with wit-component (componentize-py, "
                         "cargo-component, wasm-tools component new)")
        for count, noun, cap_name in (
            (shape.core_instances, "core instances", "max_component_core_instances"),
            (shape.memory_count, "memories", "max_component_memories"),
            (shape.table_count, "tables", "max_component_tables"),
        ):
            cap = getattr(policy, cap_name)
            if count > cap:
                raise over(f"creates {count} {noun} per instance of its component, above the "
                           f"host's cap of {cap}", cap_name, count)

    cap = limits.memory_bytes
    memories = shape.memories
    initial = sum(m.minimum_bytes for m in memories)
    largest = max((m.minimum_bytes for m in memories), default=0)
    if initial > cap or largest > _memory_share(memories, cap):
        needed = initial if initial > cap else _memory_needed(memories, largest)
        raise PolicyViolationError(
            f"plugin {plugin!r} ({manifest.path}): its memories need {needed} bytes from the "
            f"start (their declared initial sizes), above its memory limit of {cap} bytes; "
            f"raise limits.memory_bytes in plugbox.json to at least {needed} (within the host "
            "policy), or rebuild the plugin with a smaller initial memory",
            plugin=plugin, limit="memory_bytes",
        )


def _memory_needed(memories: tuple[MemoryType, ...], share: int) -> int:
    """The cap under which every memory gets at least ``share`` bytes (see _memory_share)."""
    return sum(share if m.maximum_bytes is None else min(m.maximum_bytes, share)
               for m in memories)


def _cause(message: str) -> str:
    """wasmtime's error chain on one line: the lines of ``message`` without the ``Caused by:``
    header and the ``0:`` numbering, joined by ``: `` and bounded."""
    parts = []
    for line in message.splitlines():
        line = re.sub(r"^\s*\d+:\s*", "", line).strip()
        if line and line != "Caused by:":
            parts.append(line.rstrip(":"))
    text = ": ".join(parts) or "no reason given"
    return text if len(text) <= 500 else text[:497] + "..."


def compile_refusal(plugin: str, message: str) -> ModuleInterfaceError | PolicyViolationError:
    """The typed refusal for a module or component wasmtime would not compile (``message`` is
    wasmtime's error): what the static checks cannot tell, such as invalid function bodies,
    proposals the engine does not enable, or an instance larger than the engine's slots."""
    cause = _cause(message)
    if any(marker in message for marker in ("does not fit in pooling allocator",
                                            "exceeds the configured maximum")):
        return PolicyViolationError(
            f"plugin {plugin!r}: the module needs more than this runtime's instance slots hold "
            f"({cause}); rebuild it to need less", plugin=plugin, limit="instance_size")
    return ModuleInterfaceError(
        f"plugin {plugin!r}: the module is not valid WebAssembly that plugbox can run, so it "
        f"cannot be compiled ({cause}); rebuild it with a supported toolchain",
        plugin=plugin)
