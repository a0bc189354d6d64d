"""Address space for wasmtime's pooling allocator, admitted process-wide before it is mapped.

A pooled Runtime reserves, when its engine is created, one slot of virtual address space per
pooled instance: ``SLOT_RESERVATION`` (4 GiB, so a 32-bit guest address can never leave its
slot and compiled code needs no bounds checks) plus a ``SLOT_GUARD``. 500 slots are about
2 TiB; x86-64 and AArch64 give a process 128 TiB (less under ``ulimit -v``). wasmtime cannot
report a failed reservation (its C API panics, which aborts the process), so before it tries,
:func:`admitted` maps the same amount plus a headroom (as much again, at most 1 TiB) with ``PROT_NONE`` (no memory is
committed) and unmaps it again: if that fails, the Runtime is refused with a
:class:`~plugbox.UsageError` instead. The lock makes probe and reservation one step for the
threads of this process.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from .._errors import UsageError

__all__ = ["SLOT_GUARD", "SLOT_RESERVATION", "admitted", "pool_bytes"]

SLOT_RESERVATION: Final = 4 << 30
SLOT_GUARD: Final = 32 << 20
#: Per slot, beyond its memory: the table, instance and bookkeeping slots (measured ~2 MiB).
_SLOT_OTHER: Final = 4 << 20
#: Per pooled engine, whatever the slot count (measured ~100 MiB: other pools, the ticker's stack).
_ENGINE_OTHER: Final = 256 << 20
#: Address space left for everything else in the process (heap, stacks, on-demand memories):
#: as much as the pool takes, at most 1 TiB.
HEADROOM: Final = 1 << 40

_lock = threading.RLock()  # re-entrant: gc.collect() below may run a Runtime's finalizer
_live: dict[int, int] = {}  # admission ticket -> bytes, for the error message
_next_ticket = iter(range(1, sys.maxsize))


def pool_bytes(slots: int, max_memory_bytes: int) -> int:
    """Address space the pooling allocator reserves for ``slots`` instances whose memories
    may grow to ``max_memory_bytes``."""
    per_memory = max(SLOT_RESERVATION, -(-max_memory_bytes // (64 << 10)) * (64 << 10))
    return slots * (per_memory + SLOT_GUARD + _SLOT_OTHER) + _ENGINE_OTHER if slots else 0


def _can_map(nbytes: int) -> bool:
    """Whether ``nbytes`` of address space can be reserved right now (maps and unmaps it)."""
    if sys.platform == "win32":  # no cheap probe; wasmtime reserves with VirtualAlloc
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    noreserve = 0x4000 if sys.platform.startswith("linux") else 0
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | noreserve
    addr = libc.mmap(None, nbytes, 0, flags, -1, 0)  # PROT_NONE
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return False
    libc.munmap(addr, nbytes)
    return True


def _tib(nbytes: int) -> str:
    return f"{nbytes / (1 << 40):.2f} TiB"


@contextmanager
def admitted(nbytes: int, slots: int) -> Iterator[Callable[[], None]]:
    """Run the body (which creates the engine) only if ``nbytes`` can be reserved; yields the
    function that gives the admission back (call it once the engine is closed).

    Raises :class:`~plugbox.UsageError` (``limit="address-space"``) when the reservation would
    not fit, after one garbage collection (Runtimes dropped without ``close()`` give theirs
    back when collected).
    """
    probe = nbytes + min(nbytes, HEADROOM)
    with _lock:
        if nbytes and not _can_map(probe):
            gc.collect()
            if not _can_map(probe):
                held = sum(_live.values())
                raise UsageError(
                    f"cannot reserve {_tib(nbytes)} of address space for a Runtime with "
                    f"pooled_instances={slots} (each pooled slot reserves 4 GiB so guest "
                    f"memory needs no bounds checks); {len(_live)} Runtime(s) of this process "
                    f"hold {_tib(held)}. Close Runtimes you no longer use, share one Runtime, "
                    "or pass a smaller pooled_instances (0 maps memory per instance on demand).",
                    limit="address-space",
                )
        ticket = next(_next_ticket)
        _live[ticket] = nbytes

        def release() -> None:
            _live.pop(ticket, None)

        try:
            yield release
        except BaseException:
            release()
            raise
