"""The plugin registry (issue 12): a server teams run to publish, discover and download
plugins, with publishers' keys, yanks, advisories, reviews and TUF metadata
(docs/registry.md). The server needs the ``plugbox[registry]`` extra (Starlette, uvicorn).

:class:`Registry` is the state and its operations; :func:`create_app` its ASGI application;
:func:`init_registry` creates a registry directory; :func:`serve` runs it under uvicorn.
The TUF repository is ``_tuf.TufRepository``, the client ``_client.RegistryClient``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import (ArbitraryPackageError, EndlessDataError, FreezeAttackError, MixAndMatchError,
                      RegistryError, RequestRefused, ResolutionError, RollbackAttackError,
                      UpdateAttackError)
from ._service import Account, Registry, RegistryLimits, init_registry

__all__ = ["Account", "ArbitraryPackageError", "EndlessDataError", "FreezeAttackError",
           "MixAndMatchError", "Registry", "RegistryError", "RegistryLimits", "RequestRefused",
           "ResolutionError", "RollbackAttackError", "UpdateAttackError", "create_app",
           "init_registry", "serve"]

if TYPE_CHECKING:
    from starlette.applications import Starlette


def create_app(registry: Registry) -> Starlette:
    """The Starlette application serving ``registry`` (imports Starlette on first use)."""
    from ._app import create_app as make

    return make(registry)


def serve(directory: str, *, host: str = "127.0.0.1", port: int = 8080,
          db_url: str | None = None) -> None:
    """Run the registry in ``directory`` under uvicorn until interrupted."""
    from ._server import serve as run

    run(directory, host=host, port=port, db_url=db_url)
