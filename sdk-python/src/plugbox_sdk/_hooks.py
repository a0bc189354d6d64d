"""Hook registration (``@hook``, ``@init``) and the dispatch behind ``on-init`` / ``on-hook``.

Decorators register into the *active* :class:`Registry`: the process-wide default inside a
component (one plugin per process), or a fresh one per plugin while
:mod:`plugbox_sdk.testing` imports a plugin (see :func:`collecting`), so many plugins can be
loaded side by side in one test process.

:meth:`Registry.dispatch` and :meth:`Registry.run_init` implement the ABI's error semantics in
plain Python: a :class:`plugbox_sdk.Error` keeps its kind, any other exception becomes
``failure`` with its text, an unknown hook is ``not-found``. The component glue and the test
harness both call them, so both see exactly the same behaviour.
"""

from __future__ import annotations

import contextlib
import json
import re
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from . import _host
from ._errors import (
    DeniedError,
    Error,
    FailureError,
    InvalidInputError,
    LimitReachedError,
    NotFoundError,
)

__all__ = ["Handler", "Registry", "collecting", "default_registry", "hook", "init"]

#: The manifest's pattern for hook names (schemas/manifest-v1.schema.json).
_HOOK_NAME: Final = re.compile(r"[a-z][a-z0-9._-]{0,127}")

F = TypeVar("F", bound=Callable[..., Any])

#: A hook function: bytes in, bytes out (str is encoded as UTF-8, None is empty), or, with
#: ``json=True``, a JSON value in and out.
HookFunction = Callable[[Any], Any]
#: The init function: the configuration object in, nothing out.
InitFunction = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Handler:
    """One registered hook."""

    #: The hook name, as listed in the manifest's ``hooks``.
    name: str
    #: The decorated function.
    function: HookFunction
    #: True when the SDK decodes the payload and encodes the result as JSON.
    json: bool


class Registry:
    """The hooks and init function of one plugin."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.init_function: InitFunction | None = None

    # -- registration ------------------------------------------------------------------------

    def add_hook(self, name: str, function: HookFunction, *, json: bool = False) -> None:
        """Register ``function`` for hook ``name``.

        Raises:
            ValueError: the name is not a valid hook name, or is registered already.
        """
        if not isinstance(name, str) or not _HOOK_NAME.fullmatch(name):
            raise ValueError(
                f"invalid hook name {name!r}: use lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter, at most 128 characters (e.g. 'text.stats')"
            )
        if name in self.handlers:
            previous = self.handlers[name].function
            raise ValueError(
                f"hook {name!r} is registered twice: by {_describe(previous)} and by "
                f"{_describe(function)}"
            )
        self.handlers[name] = Handler(name, function, json)

    def set_init(self, function: InitFunction) -> None:
        """Register the init function.

        Raises:
            ValueError: an init function is registered already.
        """
        if self.init_function is not None:
            raise ValueError(
                f"two init functions: {_describe(self.init_function)} and {_describe(function)}; "
                "a plugin has at most one"
            )
        self.init_function = function

    # -- dispatch ----------------------------------------------------------------------------

    def run_init(self, config_json: str) -> None:
        """``on-init``: decode the configuration and run the init function, if any.

        Raises:
            Error: the init function failed (any exception is mapped as in :meth:`dispatch`).
        """
        if self.init_function is None:
            return
        try:
            config = json.loads(config_json) if config_json else {}
        except ValueError as exc:
            raise InvalidInputError(f"the configuration is not valid JSON: {exc}") from None
        _call_mapped("init", self.init_function, config)

    def dispatch(self, hook: str, payload: bytes) -> bytes:
        """``on-hook``: run the handler of ``hook`` on ``payload``.

        Raises:
            Error: ``not-found`` for an unregistered hook; the handler's own
                :class:`~plugbox_sdk.Error`; ``invalid-input`` for a JSON hook whose payload is
                not JSON; ``failure`` for any other exception (with its type and text) and for a
                result of the wrong type.
        """
        handler = self.handlers.get(hook)
        if handler is None:
            raise NotFoundError(f"unknown hook {json.dumps(hook)}")
        if handler.json:
            try:
                argument: Any = json.loads(payload) if payload else None
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidInputError(
                    f"hook {hook!r}: the payload is not valid JSON: {exc}"
                ) from None
            result = _call_mapped(hook, handler.function, argument)
            try:
                text = json.dumps(
                    result, ensure_ascii=False, separators=(",", ":"), allow_nan=False
                )
            except (TypeError, ValueError) as exc:
                raise FailureError(
                    f"hook {hook!r} returned a value that is not JSON-serialisable: {exc}"
                ) from None
            return text.encode("utf-8")
        result = _call_mapped(hook, handler.function, bytes(payload))
        if isinstance(result, bytes):
            return result
        if isinstance(result, (bytearray, memoryview)):
            return bytes(result)
        if isinstance(result, str):
            return result.encode("utf-8")
        if result is None:
            return b""
        raise FailureError(
            f"hook {hook!r} returned {type(result).__name__}; a hook returns bytes (or str, "
            f"or None for no result), or register it with @hook({hook!r}, json=True) to "
            "return JSON values"
        )


def _describe(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", "?")
    name = getattr(function, "__qualname__", repr(function))
    return f"{module}.{name}"


def _call_mapped(what: str, function: Callable[[Any], Any], argument: Any) -> Any:
    """``function(argument)``, with every exception turned into an :class:`Error`."""
    try:
        return function(argument)
    except Error:
        raise
    except Exception as exc:
        # The traceback is the author's best clue; the host drops it when `log` is not granted.
        _log_traceback(what, exc)
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # Resource exhaustion and sandbox refusals keep their meaning across the ABI: the
        # host cannot see inside a component, so it reads these (text starting with the
        # exception's name) to raise MemoryLimitExceeded, StackOverflow or PermissionDenied.
        if isinstance(exc, (MemoryError, RecursionError)):
            raise LimitReachedError(text) from exc
        if isinstance(exc, PermissionError):
            raise DeniedError(text) from exc
        raise FailureError(text) from exc


def _log_traceback(what: str, exc: Exception) -> None:
    try:
        host = _host.current()
        text = "".join(traceback.format_exception(exc)).rstrip()
        host.log(4, f"{what} raised {type(exc).__name__}:\n{text}")
    except Exception:  # noqa: BLE001
        # Best effort only: failing here would replace the plugin's error with our own.
        pass


# -- the active registry ---------------------------------------------------------------------

_default = Registry()
_active: Registry = _default


def default_registry() -> Registry:
    """The process-wide registry, which a component's plugin registers into."""
    return _default


@contextlib.contextmanager
def collecting() -> Iterator[Registry]:
    """Register into a fresh :class:`Registry` inside the ``with`` block (for the harness)."""
    global _active
    previous, _active = _active, Registry()
    try:
        yield _active
    finally:
        _active = previous


def hook(name: str, *, json: bool = False) -> Callable[[F], F]:
    """Register the decorated function as the handler of hook ``name``.

    ::

        @hook("echo")
        def echo(payload: bytes) -> bytes:
            return payload

        @hook("greet", json=True)
        def greet(value: dict) -> dict:
            return {"greeting": f"Hello, {value['name']}!"}

    A bytes hook takes the payload as ``bytes`` and returns ``bytes`` (``str`` is sent as UTF-8,
    ``None`` as an empty result). With ``json=True`` the SDK decodes the payload (an empty
    payload reads as ``None``; invalid JSON fails with ``invalid-input`` before the function
    runs) and encodes the returned value. Raise a :class:`plugbox_sdk.Error` subclass to return
    that ABI error; any other exception becomes ``failure`` with its text. The function is
    returned unchanged, so it can still be called directly.

    Raises:
        ValueError: ``name`` is not a valid hook name or is registered twice.
    """

    def register(function: F) -> F:
        _active.add_hook(name, function, json=json)
        return function

    if callable(name):
        raise TypeError("use @hook(\"name\"), not a bare @hook: the hook name is required")
    return register


def init(function: F) -> F:
    """Register the decorated function to run once per instance, before any hook.

    It receives the plugin's configuration (the host's ``config``) as a ``dict``; raising makes
    loading the plugin fail. At most one per plugin; without one, any configuration is accepted.
    This is the place for set-up that needs host services, which are not available at import
    time.

    Raises:
        ValueError: an init function is registered already.
    """
    _active.set_init(function)
    return function


#: The hook the host calls for a health check (declare it in the manifest's ``hooks``).
HEALTH_HOOK = "plugbox.health"
_HEALTH_STATUSES = ("ok", "degraded", "failing")


def health(function: Callable[[], Any]) -> Callable[[], Any]:
    """Register the decorated function as the plugin's health check (hook ``plugbox.health``,
    which the manifest's ``hooks`` must list). The host runs it on a schedule, after on-init
    and as the last gate of an upgrade (a ``failing`` report rolls the upgrade back)::

        @health
        def check() -> dict:
            return {"status": "degraded", "details": {"queue": len(_queue)}}

    It takes no argument and returns a status (``"ok"``, ``"degraded"`` or ``"failing"``) or a
    dict ``{"status": ..., "details": {...}}``. Raising reports ``failing`` with the error.

    Raises:
        ValueError: a health check is registered already.
    """

    def report(_value: Any) -> dict[str, Any]:
        got = function()
        out = {"status": got, "details": {}} if isinstance(got, str) else got
        if (not isinstance(out, dict) or out.get("status") not in _HEALTH_STATUSES
                or not isinstance(out.get("details", {}), dict)):
            raise ValueError(
                f"health check {_describe(function)} must return 'ok', 'degraded', 'failing' "
                f"or {{'status': ..., 'details': {{...}}}}, not {got!r}"
            )
        return {"status": out["status"], "details": out.get("details", {})}

    report.__qualname__ = getattr(function, "__qualname__", "health")
    report.__module__ = getattr(function, "__module__", __name__)
    _active.add_hook(HEALTH_HOOK, report, json=True)
    return function
