"""WAT building blocks: an ABI-conforming module with every part replaceable, the plugbox
imports with their exact core signatures, and a few result shapes.

Scratch layout of the modules built here: the export result area at 16, import return areas at
256 (16 or 24 bytes), static data from 512, the bump heap from 4096.
"""

from __future__ import annotations

from tests.conftest import BUMP_REALLOC

VERSION = "1.0.0"

#: (interface, function) -> core signature, as abi/README.md section 5 lowers them.
SIGNATURES = {
    ("log", "log"): "(param i32 i32 i32)",
    ("config", "get"): "(param i32 i32 i32)",
    ("config", "get-all"): "(param i32)",
    ("kv", "get"): "(param i32 i32 i32)",
    ("kv", "set"): "(param i32 i32 i32 i32 i32)",
    ("kv", "delete"): "(param i32 i32 i32)",
    ("kv", "list-keys"): "(param i32 i32 i32)",
    ("events", "emit"): "(param i32 i32 i32 i32 i32)",
    ("clock", "now"): "(result i64)",
    ("clock", "monotonic"): "(result i64)",
    ("random", "bytes"): "(param i32 i32)",
    ("http", "fetch"): "(param i32 i32 i32 i32 i32 i32 i32 i32 i32)",
}


def imp(service: str, func: str, *, version: str = VERSION, sig: str | None = None,
        name: str | None = None) -> str:
    """One import line; the function is ``$<service>.<func>`` unless ``name`` is given."""
    signature = SIGNATURES[(service, func)] if sig is None else sig
    return (f'(import "plugbox:plugin/{service}@{version}" "{func}" '
            f'(func ${name or f"{service}.{func}"} {signature}))')


REALLOC = BUMP_REALLOC

POST = """
  (func (export "cabi_post_on-hook") (param i32)
    {post_body}
    (global.set $heap (i32.const 4096)))
"""

TEMPLATE = """
(module
  {imports}
  {memory}
  (global $heap (mut i32) (i32.const 4096))
  (global $depth (mut i32) (i32.const 0))
  {realloc}
  (func $on_hook (export "on-hook") (param $hp i32) (param $hl i32) (param $pp i32)
        (param $pl i32) (result i32)
    {body})
  {post}
  {extra}
)
"""

#: on-hook body: ok(payload).
ECHO = """
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get $pp))
    (i32.store (i32.const 24) (local.get $pl))
    (i32.const 16)"""

#: on-hook body tail: ok(empty).
OK_EMPTY = """
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (i32.store (i32.const 24) (i32.const 0))
    (i32.const 16)"""

#: After an import that wrote a result<_, error>-shaped area at 256: return its error as ours
#: (an error's layout at +4 is the same in every result), else fall through.
FORWARD_ERR = """
    (if (i32.eq (i32.load8_u (i32.const 256)) (i32.const 1))
      (then (return (i32.const 256))))"""


def ret_ok(ptr: str, length: str) -> str:
    """on-hook body tail returning ok(list at ptr, length); both are WAT expressions."""
    return f"""
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) {ptr})
    (i32.store (i32.const 24) {length})
    (i32.const 16)"""


def ret_err(kind: int, ptr: str, length: str) -> str:
    """on-hook body tail returning err(kind, message at ptr, length)."""
    return f"""
    (i32.store8 (i32.const 16) (i32.const 1))
    (i32.store8 (i32.const 20) (i32.const {kind}))
    (i32.store (i32.const 24) {ptr})
    (i32.store (i32.const 28) {length})
    (i32.const 16)"""


def grow_to(mib: int) -> str:
    """Instructions growing memory to at least ``mib`` MiB (untouched, so it costs no RSS);
    traps if the growth is refused."""
    return f"""
    (if (i32.lt_u (memory.size) (i32.const {mib * 16 + 1}))
      (then (if (i32.eq (memory.grow (i32.sub (i32.const {mib * 16 + 1}) (memory.size)))
                        (i32.const -1)) (then unreachable))))"""


def module(body: str = ECHO, *, imports: str = "", extra: str = "",
           memory: str = '(memory (export "memory") 1)', realloc_prologue: str = "",
           realloc: str | None = None, post_body: str = "", post: str | None = None) -> str:
    """A whole module in WAT: the conforming template with the named parts replaced."""
    return TEMPLATE.format(
        imports=imports, memory=memory, body=body, extra=extra,
        realloc=(REALLOC.format(prologue=realloc_prologue) if realloc is None
                 else realloc),
        post=POST.format(post_body=post_body) if post is None else post,
    )


def data(offset: int, text: bytes) -> str:
    """A data segment writing ``text`` at ``offset``."""
    escaped = "".join(f"\\{b:02x}" for b in text)
    return f'(data (i32.const {offset}) "{escaped}")'
