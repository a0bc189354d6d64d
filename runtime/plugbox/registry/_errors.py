"""The registry's one error type: :class:`RegistryError`, a :class:`plugbox.PlugboxError` with
the HTTP status and the machine-readable ``code`` the JSON API answers with
(``{"error": {"code": ..., "message": ...}}``). Every refusal of the server is one of these;
nothing else reaches a client (an unexpected exception is answered as ``internal`` without its
text, and logged)."""

from __future__ import annotations

from typing import Any

from .._errors import PlugboxError

__all__ = ["RegistryError"]


class RegistryError(PlugboxError):
    """A request the registry refuses or cannot serve.

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
