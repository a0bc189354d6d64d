"""Running the registry under uvicorn, with the connection-level bounds uvicorn offers (how
many connections, how long an idle keep-alive lasts, how large a header may be)."""

from __future__ import annotations

import logging

from ._errors import RequestRefused
from ._service import Registry

__all__ = ["serve"]


def serve(directory: str, *, host: str = "127.0.0.1", port: int = 8080,
          db_url: str | None = None, limit_concurrency: int = 512) -> None:
    """Serve ``directory`` on ``host:port`` until interrupted (SIGINT/SIGTERM)."""
    try:
        import uvicorn
    except ImportError:
        raise RequestRefused(500, "config", "plugbox registry serve needs uvicorn and "
                            "Starlette: pip install 'plugbox[registry]'") from None
    from ._app import create_app

    registry = Registry(directory, db_url=db_url)
    try:
        config = uvicorn.Config(
            create_app(registry), host=host, port=port, log_level="warning",
            access_log=False, limit_concurrency=limit_concurrency, timeout_keep_alive=5,
            h11_max_incomplete_event_size=64 * 1024, lifespan="off")
        server = uvicorn.Server(config)
        logging.getLogger("plugbox.registry").info("registry %s on http://%s:%d",
                                                   directory, host, port)
        server.run()
    finally:
        registry.close()
