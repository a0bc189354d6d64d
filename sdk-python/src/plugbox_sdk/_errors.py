"""The ABI's one error type, as a Python exception tree.

::

    Error                   base; ``kind`` is one of the five ABI cases, ``message`` the text
    ├── DeniedError         denied         the plugin lacks the permission / refused by policy
    ├── NotFoundError       not-found      unknown hook, missing thing
    ├── InvalidInputError   invalid-input  malformed payload, key, URL, ...
    ├── LimitReachedError   limit-reached  a quota, size or rate limit
    └── FailureError        failure        anything else (I/O, remote failure, plugin bug)

A hook raises one of these to return the ABI ``error`` to the host; host services raise them
when the host answers with an error. ``Error(message)`` itself is a ``failure``.
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "ERROR_KINDS",
    "DeniedError",
    "Error",
    "FailureError",
    "InvalidInputError",
    "LimitReachedError",
    "NotFoundError",
]

#: The cases of the WIT ``error`` variant, in discriminant order.
ERROR_KINDS: Final = ("denied", "not-found", "invalid-input", "limit-reached", "failure")


class Error(Exception):
    """An ABI error: ``kind`` (one of :data:`ERROR_KINDS`) and a human-readable ``message``.

    Raise a subclass (``raise InvalidInputError("name must not be empty")``) or build one from
    a kind name with :meth:`from_kind`. ``str(e)`` is ``"kind: message"``, as in the Rust SDK.
    """

    #: The ABI case this class stands for.
    kind: ClassVar[str] = "failure"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = str(message)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __eq__(self, other: object) -> bool:
        # Value semantics, so tests can compare errors (exceptions compare by identity).
        if not isinstance(other, Error):
            return NotImplemented
        return (self.kind, self.message) == (other.kind, other.message)

    def __hash__(self) -> int:
        return hash((self.kind, self.message))

    @staticmethod
    def from_kind(kind: str, message: str) -> Error:
        """The error of ABI case ``kind`` (``"not-found"``, ...) with ``message``.

        Raises:
            ValueError: ``kind`` is not one of :data:`ERROR_KINDS`.
        """
        cls = _BY_KIND.get(kind)
        if cls is None:
            raise ValueError(f"unknown ABI error kind {kind!r}; expected one of {ERROR_KINDS}")
        return cls(message)

    def context(self, context: str) -> Error:
        """The same kind of error with ``"context: "`` put before the message."""
        return type(self)(f"{context}: {self.message}")


class DeniedError(Error):
    """``denied``: the plugin lacks the permission, or the host refused the request by policy."""

    kind = "denied"


class NotFoundError(Error):
    """``not-found``: the thing asked for does not exist (unknown hook, missing key, ...)."""

    kind = "not-found"


class InvalidInputError(Error):
    """``invalid-input``: the input was malformed (bad payload, bad key, bad URL, ...)."""

    kind = "invalid-input"


class LimitReachedError(Error):
    """``limit-reached``: a quota, size or rate limit was reached."""

    kind = "limit-reached"


class FailureError(Error):
    """``failure``: anything else went wrong (I/O error, remote failure, plugin bug)."""

    kind = "failure"


_BY_KIND: Final[dict[str, type[Error]]] = {
    "denied": DeniedError,
    "not-found": NotFoundError,
    "invalid-input": InvalidInputError,
    "limit-reached": LimitReachedError,
    "failure": FailureError,
}
