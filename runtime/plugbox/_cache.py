"""On-disk cache of compiled modules and components.

Compiling is the slow part of loading (milliseconds for a Rust plugin, ~10 s for a Python
component), so compiled artifacts are kept on disk, keyed by the *verified* module sha256, the
wasmtime version and the engine settings. Nothing reaches this cache before the manifest, hash
and static checks passed.

Deserializing a wasmtime artifact trusts it to be valid machine code, so every entry has a
SHA-256 digest beside it (``<key>.cwasm.sha256``) that is checked before wasmtime sees the
file: a corrupt, truncated or foreign entry is ignored, removed and rebuilt. The artifact itself
is stored raw so wasmtime can map it from disk (``deserialize_file``) instead of receiving a
40 MB copy through Python; the digest is computed over a memory map for the same reason.
Writes go to temporary files in the same directory, renamed into place artifact first, so a
reader either sees a digest that matches or treats the entry as missing.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["ArtifactCache"]

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
        """Where the artifact for a module lives (its digest sits beside it)."""
        key = hashlib.sha256(f"{module_sha256}\0{self.salt}".encode()).hexdigest()
        return self.directory / f"{key}.cwasm"

    def get(self, module_sha256: str, load_file: Callable[[Path], T]) -> T | None:
        """The cached artifact loaded with ``load_file(path)``, or None when absent or
        unusable (in which case the entry is removed)."""
        path = self.path_for(module_sha256)
        digest_path = path.with_name(path.name + ".sha256")
        try:
            expected = digest_path.read_text(encoding="ascii").strip()
            actual = _file_sha256(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            _log.warning("compiled cache: cannot read %s (%s); recompiling", path, exc)
            self._discard(path)
            return None
        if actual != expected:
            _log.warning("compiled cache: %s is corrupt or incomplete; rebuilding it", path)
            self._discard(path)
            return None
        try:
            value = load_file(path)
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
            self._write(path, artifact)
            self._write(path.with_name(path.name + ".sha256"),
                        hashlib.sha256(artifact).hexdigest().encode("ascii"))
        except OSError as exc:
            _log.warning("compiled cache: cannot write %s (%s)", path, exc)

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            _unlink(Path(tmp))
            raise

    @staticmethod
    def _discard(path: Path) -> None:
        _unlink(path.with_name(path.name + ".sha256"))
        _unlink(path)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
