"""The registry client's errors (issue 12 §2, §3)::

    PlugboxError
    └── RegistryError              a registry cannot be used: not configured, unreachable,
        │                          malformed data, nothing compatible to install (.registry)
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
from typing import Final

from .._errors import PlugboxError

__all__ = [
    "ArbitraryPackageError",
    "EndlessDataError",
    "FreezeAttackError",
    "MixAndMatchError",
    "RegistryError",
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
