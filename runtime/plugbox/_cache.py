"""On-disk cache of compiled modules.

Compiling is the slow part of loading (milliseconds for a Rust plugin, seconds for a large
component), so compiled artifacts are kept on disk, keyed by the *verified* module sha256, the
wasmtime version and the engine settings. Nothing reaches this cache before the manifest, hash
and static checks passed.

Deserializing a wasmtime artifact trusts it to be valid machine code, so every entry carries a
SHA-256 of its payload that is checked before wasmtime sees a byte: a corrupt, truncated or
foreign entry is ignored, removed and rebuilt. Writes go to a temporary file in the same
directory and are renamed into place, so readers never see half an entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["ArtifactCache"]

_MAGIC = b"plugbox-artifact-v1\n"
_log = logging.getLogger("plugbox.cache")

T = TypeVar("T")


class ArtifactCache:
    """Compiled-artifact cache in ``directory``; ``salt`` identifies the engine (version and
    settings) so artifacts from another engine are never offered to it."""

    def __init__(self, directory: Path, salt: str) -> None:
        self.directory = directory
        self.salt = salt
        self.hits = 0
        self.misses = 0

    def path_for(self, module_sha256: str) -> Path:
        """Where the artifact for a module lives."""
        key = hashlib.sha256(f"{module_sha256}\0{self.salt}".encode()).hexdigest()
        return self.directory / f"{key}.cwasm"

    def get(self, module_sha256: str, load: Callable[[bytes], T]) -> T | None:
        """The cached artifact loaded with ``load``, or None when absent or unusable."""
        path = self.path_for(module_sha256)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            _log.warning("compiled cache: cannot read %s (%s); recompiling", path, exc)
            return None
        header_len = len(_MAGIC) + 32
        if (
            len(blob) < header_len
            or not blob.startswith(_MAGIC)
            or hashlib.sha256(blob[header_len:]).digest() != blob[len(_MAGIC):header_len]
        ):
            _log.warning("compiled cache: %s is corrupt or foreign; rebuilding it", path)
            self._discard(path)
            return None
        try:
            value = load(blob[header_len:])
        except Exception as exc:  # wasmtime refuses artifacts from other versions/settings
            _log.warning("compiled cache: %s rejected by wasmtime (%s); rebuilding", path, exc)
            self._discard(path)
            return None
        self.hits += 1
        return value

    def put(self, module_sha256: str, artifact: bytes) -> None:
        """Store an artifact atomically. Failures only cost a recompile later, so are logged."""
        self.misses += 1
        path = self.path_for(module_sha256)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".cwasm")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(_MAGIC)
                    out.write(hashlib.sha256(artifact).digest())
                    out.write(artifact)
                os.replace(tmp, path)
            except BaseException:
                self._discard(Path(tmp))
                raise
        except OSError as exc:
            _log.warning("compiled cache: cannot write %s (%s)", path, exc)

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass
