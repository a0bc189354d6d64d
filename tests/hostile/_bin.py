"""A tiny wasm binary writer for modules too big to go through WAT text quickly: a minimal
ABI-conforming module (memory, cabi_realloc, on-hook returning ok(empty)) plus bloat."""

from __future__ import annotations

from collections.abc import Sequence


def leb(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + leb(len(payload)) + payload


def _vec(items: list[bytes]) -> bytes:
    return leb(len(items)) + b"".join(items)


def _name(s: str) -> bytes:
    return leb(len(s)) + s.encode()


def abi_module(*, bodies: Sequence[bytes] = (), globals_: int = 0) -> bytes:
    """The minimal module plus one ``() -> ()`` function per entry of ``bodies`` (raw
    instruction bytes, ``end`` appended) and ``globals_`` immutable i32 globals."""
    i32 = 0x7F
    types = _vec([
        b"\x60" + _vec([bytes([i32])] * 4) + _vec([bytes([i32])]),  # realloc, on-hook
        b"\x60\x00\x00",                                              # bloat
    ])
    funcs = _vec([leb(0), leb(0)] + [leb(1)] * len(bodies))
    memory = _vec([b"\x00" + leb(1)])
    glob = _vec([bytes([i32, 0]) + b"\x41\x00\x0b"] * globals_)
    exports = _vec([
        _name("memory") + b"\x02" + leb(0),
        _name("cabi_realloc") + b"\x00" + leb(0),
        _name("on-hook") + b"\x00" + leb(1),
    ])

    def code(body: bytes) -> bytes:
        entry = b"\x00" + body + b"\x0b"
        return leb(len(entry)) + entry

    # realloc hands out 1024 (the host never allocates much here); on-hook returns the area
    # at 16, all zero: ok(empty list).
    codes = _vec([code(b"\x41\x80\x08"), code(b"\x41\x10")] + [code(b) for b in bodies])
    parts = [b"\x00asm\x01\x00\x00\x00", _section(1, types), _section(3, funcs),
             _section(5, memory)]
    if globals_:
        parts.append(_section(6, glob))
    parts += [_section(7, exports), _section(10, codes)]
    return b"".join(parts)
