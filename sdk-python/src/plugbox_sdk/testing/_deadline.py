"""The native harness's wall-clock deadline: a hook that runs too long is interrupted.

In the runtime, a call that passes its manifest's ``limits.deadline_ms`` (or the host's
default for components, 10 s) ends with ``plugbox.DeadlineExceeded``, and one that executes
more than ``limits.fuel`` instructions with ``plugbox.FuelExhausted``. Natively there is no
instruction counter, so the native harness enforces the deadline only: a ``while True: pass``
in a hook ends with ``DeadlineExceeded`` (where the runtime might report ``FuelExhausted``
first, if the fuel runs out before the deadline) instead of hanging pytest.

How: a watchdog thread waits for the deadline; when it passes and the hook is still running,
it raises a private :class:`_Interrupt` in the calling thread with
``PyThreadState_SetAsyncExc`` (re-raising it every few milliseconds until the hook is gone),
and :func:`enforced` turns it into the typed error. ``_Interrupt`` derives from
``BaseException``, so a plugin's ``except Exception:`` does not swallow it, and the SDK's
dispatch (which maps ``Exception`` to ``failure``) lets it through.

Limits of the approach (CPython only):

- The exception is delivered between bytecodes: a call blocked in C (``time.sleep``, a socket
  read, a long regex match or ``sum(range(10**12))``) is interrupted only when it returns.
- A bare ``except:`` or ``except BaseException:`` in the plugin can catch it; it is re-raised
  every few milliseconds until the hook ends, and the call ends with ``DeadlineExceeded`` even
  if the plugin returned normally after the deadline. A loop that catches *every* exception on
  each turn cannot be stopped this way (it hangs natively; the component backend stops it).
- ``finally`` blocks and context managers of the plugin run as the exception unwinds, as they
  would not in the sandbox (where the instance is simply discarded).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator
from typing import Final

__all__ = ["DEFAULT_DEADLINE_MS", "deadline_error", "enforced"]

#: The deadline a component gets when its manifest requests none: the runtime's
#: ``plugbox._policy.DEFAULT_COMPONENT_LIMITS.deadline_ms`` (pinned equal by the tests).
DEFAULT_DEADLINE_MS: Final = 10_000

#: How often the watchdog re-raises the interrupt after the deadline while the hook runs on
#: (it was caught by a bare ``except`` or was pending in C code).
_REPEAT_S: Final = 0.01


class _Interrupt(BaseException):
    """Raised in the calling thread when the deadline passes; never escapes :func:`enforced`."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    obj = ctypes.py_object(exc) if exc is not None else None
    return int(set_async(ctypes.c_ulong(thread_id), obj))


def deadline_error(plugin: str, hook: str, deadline_ms: int, elapsed_ms: float) -> Exception:
    """The error the runtime raises for a call past its deadline: ``plugbox.DeadlineExceeded``
    (``TimeoutError`` when the runtime is not installed), with the runtime's message."""
    detail = (f" after {elapsed_ms:.0f} ms in the native test harness, which enforces the "
              "deadline only: fuel is not counted natively")
    try:
        from plugbox.engine._fastpath import deadline_error as runtime_error
    except ImportError:
        return TimeoutError(
            f"plugin {plugin!r}, hook {hook!r}: exceeded its wall-clock deadline "
            f"({deadline_ms} ms){detail}. Raise limits.deadline_ms in plugbox.json if the "
            "work is legitimate."
        )
    return runtime_error(plugin, hook, deadline_ms, detail)


class _Watchdog:
    def __init__(self, thread_id: int, seconds: float) -> None:
        self.thread_id = thread_id
        self.seconds = seconds
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.finished = False
        self.fired = False
        self.thread = threading.Thread(target=self._watch, name="plugbox-test-deadline",
                                       daemon=True)

    def _watch(self) -> None:
        wait = self.seconds
        while not self.done.wait(wait):
            with self.lock:
                if self.finished:
                    return
                self.fired = True
                _set_async_exc(self.thread_id, _Interrupt)
            wait = _REPEAT_S

    def finish(self) -> None:
        """Stop the watchdog; a pending interrupt not delivered yet is withdrawn."""
        with self.lock:
            self.finished = True
            if self.fired:
                _set_async_exc(self.thread_id, None)


@contextlib.contextmanager
def enforced(plugin: str, hook: str, deadline_ms: int) -> Iterator[None]:
    """Run the block under ``deadline_ms`` of wall-clock time in the calling thread.

    Raises:
        plugbox.DeadlineExceeded: the block was still running at the deadline (the block's
            own exception, if it raised one after being interrupted, is its ``__context__``).
    """
    started = time.monotonic()
    dog = _Watchdog(threading.get_ident(), deadline_ms / 1000.0)
    dog.thread.start()
    try:
        try:
            yield
        finally:
            _stop(dog)
    except BaseException:
        if not dog.fired:
            raise
        # Whatever the interrupted block raised on the way out (the interrupt itself, or an
        # error the plugin raised from a bare `except:`) stands for the deadline.
    if dog.fired:
        elapsed = (time.monotonic() - started) * 1000
        raise deadline_error(plugin, hook, deadline_ms, elapsed) from None


def _stop(dog: _Watchdog) -> None:
    """``dog.finish()``, retried if an interrupt lands before it took the lock (the watchdog
    re-raises every ``_REPEAT_S``, so a retry completes well before the next one)."""
    while not dog.finished:
        try:
            dog.finish()
        except _Interrupt:
            continue
    dog.done.set()
    dog.thread.join()
