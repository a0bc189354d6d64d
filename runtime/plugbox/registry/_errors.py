"""The registry's errors (issue 12), one hierarchy::

    PlugboxError
    └── RegistryError              a registry cannot be used: not configured, unreachable,
        │                          malformed data, nothing compatible to install (.registry)
        ├── RequestRefused         the server refuses a request (.status, .code: what its JSON
        │                          API answers as {"error": {"code", "message"}}; raised only
        │                          inside the server, every refusal of it is one of these)
        ├── ResolutionError        the requirements cannot be met together (.conflicts)
        └── UpdateAttackError      the TUF client refused what the registry served (.attack)
            ├── RollbackAttackError     metadata older than what this host trusts already
            ├── FreezeAttackError       expired metadata (a mirror stuck in the past)
            ├── MixAndMatchError        metadata of versions that do not belong together
            ├── ArbitraryPackageError   a target whose length or hash differs from its signed info
            └── EndlessDataError        metadata or a target larger than allowed
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from .._errors import PlugboxError

__all__ = [
    "ArbitraryPackageError",
    "EndlessDataError",
    "FreezeAttackError",
    "MixAndMatchError",
    "RegistryError",
    "RequestRefused",
    "ResolutionError",
    "RollbackAttackError",
    "UpdateAttackError",
]


class RegistryError(PlugboxError):
    """A registry could not be used for what was asked; ``registry`` names it (or None)."""

    def __init__(self, message: str, *, registry: str | None = None,
                 plugin: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.registry = registry


class ResolutionError(RegistryError):
    """No set of versions satisfies every requirement. ``conflicts`` lists each requirement
    involved as ``{"plugin": who wants it (None: the command), "wants": "name specifier"}``."""

    def __init__(self, message: str, *, conflicts: Sequence[Mapping[str, str | None]],
                 plugin: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.conflicts = [dict(c) for c in conflicts]


class UpdateAttackError(RegistryError):
    """The registry (or something between it and this host) served metadata or a package
    that TUF verification refuses; nothing from it was trusted or installed. ``attack`` is
    ``rollback``, ``freeze``, ``mix-and-match``, ``arbitrary-package``, ``endless-data`` or
    ``untrusted`` (a bad or missing signature)."""

    attack: str = "untrusted"

    def __init__(self, message: str, *, registry: str | None = None,
                 plugin: str | None = None) -> None:
        super().__init__(message, registry=registry, plugin=plugin)


class RollbackAttackError(UpdateAttackError):
    """Metadata older than the version this host trusts already."""

    attack = "rollback"


class FreezeAttackError(UpdateAttackError):
    """Expired metadata: the registry (or a mirror) serves a state frozen in the past."""

    attack = "freeze"


class MixAndMatchError(UpdateAttackError):
    """Metadata files whose versions do not match what the snapshot and timestamp say."""

    attack = "mix-and-match"


class ArbitraryPackageError(UpdateAttackError):
    """A downloaded file whose length or hash differs from its signed target info."""

    attack = "arbitrary-package"


class EndlessDataError(UpdateAttackError):
    """Metadata or a target larger than its signed length or the configured maximum."""

    attack = "endless-data"


ATTACKS: Final = {cls.attack: cls for cls in (RollbackAttackError, FreezeAttackError,
                                              MixAndMatchError, ArbitraryPackageError,
                                              EndlessDataError)}


class RequestRefused(RegistryError):
    """A request the registry server refuses or cannot serve (what its JSON API answers).

    ``code`` is stable (clients branch on it: ``unauthorized``, ``forbidden``, ``not-found``,
    ``conflict``, ``invalid-package``, ``invalid-request``, ``too-large``, ``too-slow``,
    ``rate-limited``, ``storage-full``, ``unavailable``, ...); ``status`` the HTTP status;
    ``retry_after`` seconds for 429/503; ``detail`` optional JSON-ready facts (the failed
    verify checks of an upload)."""

    def __init__(self, status: int, code: str, message: str, *, plugin: str | None = None,
                 retry_after: float | None = None, detail: Any = None) -> None:
        super().__init__(message, plugin=plugin)
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        """The response body: ``{"error": {"code", "message"[, "detail"]}}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"error": error}
