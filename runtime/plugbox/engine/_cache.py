"""On-disk cache of compiled modules and components.

Compiling is the slow part of loading (milliseconds for a Rust plugin, ~10 s for a Python
component), so compiled artifacts are kept on disk, keyed by the *verified* module sha256, the
wasmtime version and the engine settings. Nothing reaches this cache before the manifest, hash
and static checks passed.

Deserializing a wasmtime artifact trusts it to be valid machine code, so every entry has an
HMAC-SHA256 beside it (``<key>.cwasm.hmac``), keyed by a secret that only this user can read
(``<cache_dir>.key``, beside the cache directory: ``state_dir/cache.key`` by default) and
computed over the entry's name and bytes. It is checked before wasmtime sees the file: a
corrupt, truncated, foreign or renamed entry is ignored, removed and rebuilt, and a party that
can write into the cache directory but cannot read the key cannot get code of its choosing
loaded (docs/trust.md, "The compiled cache"). The artifact itself is stored raw so wasmtime can
map it from disk (``deserialize_file``) instead of receiving a 40 MB copy through Python; the
HMAC is computed over a memory map of the open file, and on Linux wasmtime is handed that same
open file (``/proc/self/fd/N``), so the bytes checked are the bytes loaded.

Writes go to temporary files (``.tmp-*``) in the same directory, locked while written and
renamed into place artifact first, so a reader either sees an HMAC that matches or treats the
entry as missing. Temporary files left by a writer that died (a SIGKILL during a compile leaves
up to ~100 MB) are removed when a Runtime starts: those no writer holds locked (a dead process
holds no locks). A writer in another process that has created its file but not yet locked it
may lose that one write; that costs a recompile later, never a wrong entry.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import mmap
import os
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from .._errors import StateError, state_error

try:
    import fcntl
except ImportError:  # Windows: temporary files are swept by age alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["ArtifactCache"]

_log = logging.getLogger("plugbox.cache")

T = TypeVar("T")

_KEY_BYTES = 32
_TMP_PREFIX = ".tmp-"
#: A temporary file that is still locked (or where locks cannot be tested) is swept once this
#: old (seconds); one that no writer holds, at once.
_TMP_ANY_AGE = 24 * 3600.0


def entry_mac(key: bytes, name: str, view: bytes | mmap.mmap) -> str:
    """The HMAC (hex) a cache entry named ``name`` with contents ``view`` has under ``key``
    (what its ``.hmac`` sidecar holds)."""
    mac = hmac.new(key, name.encode() + b"\0", hashlib.sha256)
    mac.update(view)
    return mac.hexdigest()


class ArtifactCache:
    """Compiled-artifact cache in ``directory``; ``salt`` identifies the engine (version and
    settings) so artifacts from another engine are never offered to it. ``key_file`` holds the
    HMAC key (default: ``<directory>.key`` beside the directory), created on first use.

    Raises :class:`~plugbox.StateError` when the key cannot be created or read, or is not a
    regular file private to this user (it may have been replaced)."""

    def __init__(self, directory: Path, salt: str, *, key_file: Path | None = None) -> None:
        self.directory = directory
        self.salt = salt
        self.key_file = key_file if key_file is not None else directory.with_name(
            directory.name + ".key")
        self.hits = 0
        self.misses = 0
        self._key = _load_or_create_key(self.key_file)
        self.swept = _sweep(directory)

    def path_for(self, module_sha256: str) -> Path:
        """Where the artifact for a module lives (its HMAC sits beside it)."""
        key = hashlib.sha256(f"{module_sha256}\0{self.salt}".encode()).hexdigest()
        return self.directory / f"{key}.cwasm"

    def _mac(self, name: str, view: bytes | mmap.mmap) -> str:
        return entry_mac(self._key, name, view)

    def get(self, module_sha256: str, load_file: Callable[[Path], T]) -> T | None:
        """The cached artifact loaded with ``load_file(path)``, or None when absent or
        unusable (in which case the entry is removed)."""
        path = self.path_for(module_sha256)
        try:
            with _open_private(path.with_name(path.name + ".hmac")) as sidecar:
                expected = sidecar.read(128).decode("ascii").strip()
            f = _open_private(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            _log.warning("compiled cache: cannot read %s (%s); recompiling", path, exc)
            self._discard(path)
            return None
        with f:
            try:
                actual = self._mac(path.name, _mapped(f))
            except (OSError, ValueError) as exc:
                _log.warning("compiled cache: cannot read %s (%s); recompiling", path, exc)
                self._discard(path)
                return None
            if not hmac.compare_digest(actual, expected):
                _log.warning("compiled cache: %s is corrupt, incomplete or not made by this "
                             "cache; rebuilding it", path)
                self._discard(path)
                return None
            same_file = (Path(f"/proc/self/fd/{f.fileno()}") if sys.platform.startswith("linux")
                         else path)
            try:
                value = load_file(same_file)
            except Exception as exc:  # wasmtime refuses artifacts from other versions/settings
                _log.warning("compiled cache: %s rejected by wasmtime (%s); rebuilding", path,
                             exc)
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
            self._write(path.with_name(path.name + ".hmac"),
                        self._mac(path.name, artifact).encode("ascii"))
            _unlink(path.with_name(path.name + ".sha256"))  # the digest of plugbox <= 0.1
        except OSError as exc:
            _log.warning("compiled cache: cannot write %s (%s)", path, exc)

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=_TMP_PREFIX, suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                if fcntl is not None:  # tells a sweeping Runtime that this file is being written
                    fcntl.flock(out.fileno(), fcntl.LOCK_EX)
                out.write(data)
                out.flush()
                os.replace(tmp, path)
        except BaseException:
            _unlink(Path(tmp))
            raise

    @staticmethod
    def _discard(path: Path) -> None:
        _unlink(path.with_name(path.name + ".hmac"))
        _unlink(path.with_name(path.name + ".sha256"))  # the digest of plugbox <= 0.1
        _unlink(path)


def _open_private(path: Path) -> IO[bytes]:
    """``path`` opened for reading without following a symlink; it must be a regular file
    (non-blocking, so a FIFO planted in its place cannot hang the open)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise ValueError("not a regular file")
    return f


def _mapped(f: IO[bytes]) -> bytes | mmap.mmap:
    if os.fstat(f.fileno()).st_size == 0:
        return b""
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _load_or_create_key(key_file: Path) -> bytes:
    """The cache's HMAC key, created (0600, published atomically) if missing."""
    try:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = _open_private(key_file)
        except FileNotFoundError:
            fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=_TMP_PREFIX)  # 0600
            try:
                os.write(fd, secrets.token_bytes(_KEY_BYTES))
                os.fsync(fd)
                os.close(fd)
                try:
                    os.link(tmp, key_file)  # fails if another process published one first
                except FileExistsError:
                    pass
                except OSError:  # no hard links here: last writer wins, costing a recompile
                    os.replace(tmp, key_file)
            finally:
                _unlink(Path(tmp))
            f = _open_private(key_file)
        with f:
            info = os.fstat(f.fileno())
            key = f.read(_KEY_BYTES + 1)
    except ValueError:
        raise _unsafe_key(key_file, "is not a regular file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe_key(key_file, "is a symbolic link") from None
        raise state_error(key_file, exc, "creating the compiled cache's key") from None
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise _unsafe_key(key_file, f"belongs to uid {info.st_uid}, not to this user")
    if os.name == "posix" and info.st_mode & 0o077:
        raise _unsafe_key(key_file, f"is readable or writable by others "
                                    f"(mode {stat.S_IMODE(info.st_mode):o})")
    if len(key) != _KEY_BYTES:
        raise _unsafe_key(key_file, f"holds {len(key)} bytes, not {_KEY_BYTES}")
    return key


def _unsafe_key(key_file: Path, what: str) -> StateError:
    return StateError(
        f"the compiled cache's key {key_file} {what}, so cached native code cannot be trusted: "
        "delete it (plugbox then creates a new key and recompiles), and check who else can "
        "write to its directory.", path=str(key_file))


def _sweep(directory: Path) -> int:
    """Remove temporary files dead writers left behind; how many were removed."""
    try:
        candidates = [e for e in os.scandir(directory) if e.name.startswith(_TMP_PREFIX)]
    except OSError:
        return 0
    now, swept = time.time(), 0
    for entry in candidates:
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age < _TMP_ANY_AGE and _held(entry.path):
                continue
            os.unlink(entry.path)
            swept += 1
        except OSError:
            continue
    if swept:
        _log.info("compiled cache: removed %d temporary file(s) left by interrupted writes in "
                  "%s", swept, directory)
    return swept


def _held(path: str) -> bool:
    """Whether a writer holds ``path`` locked (or that cannot be told)."""
    if fcntl is None:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the lock just taken
    return False


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
