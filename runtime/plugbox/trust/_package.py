"""``.plugbox`` packages: one file holding a plugin's manifest, module and signatures.

A package is a zip archive (see docs/packages.md) with exactly these members::

    plugbox.json                the manifest, byte for byte as signed
    <module.path>               the module, at the path the manifest names (e.g. plugin.wasm)
    plugbox.json.minisig        optional: the first signature
    signatures/<name>.minisig   optional: further signatures
    README[.md|.txt]            optional
    LICENSE[.md|.txt]           optional

The reader treats the archive as hostile. It refuses, each with a :class:`~plugbox.PackageError`
naming the member: names that are absolute, contain ``..``/``.``/empty segments, backslashes,
drive letters or control characters; symlinks and other non-regular members (zip has no hard
links; any non-file, non-directory mode is refused); duplicate names (also after case folding
and Unicode normalisation, so that nothing collides on macOS or Windows); unknown members;
encrypted members and compression methods other than stored and deflate; data before the first
member and members that overlap (the "overlapping files" bomb). Sizes are enforced while
decompressing, counting the bytes actually produced, never trusting the sizes in the headers:
per-member caps, a cap on the total, and a cap on each member's compression ratio. Nothing is
written to disk until every member has been read and checked, and then only the fixed set of
names above, inside a new or empty directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import struct
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .._errors import ManifestError, PackageError, UsageError
from .._manifest import (
    MANIFEST_FILENAME,
    MAX_MANIFEST_BYTES,
    MAX_MODULE_BYTES,
    PluginFileRefused,
    read_plugin_file,
)
from ._trust import MAX_SIGNATURES, PRIMARY_SIGNATURE, SIGNATURES_DIR

__all__ = [
    "PACKAGE_SUFFIX",
    "PackageLimits",
    "extract_package",
    "is_package",
    "package_members",
    "read_package",
    "staged_plugin",
    "write_package",
]

#: The file name suffix of a package.
PACKAGE_SUFFIX: Final = ".plugbox"

_ZIP_MAGIC: Final = b"PK\x03\x04"
_DOC_NAMES: Final = frozenset(
    f"{stem}{ext}" for stem in ("README", "LICENSE") for ext in ("", ".md", ".txt")
)
_SIG_SUFFIX: Final = ".minisig"
_CHUNK: Final = 64 * 1024
# Fixed timestamp for written members, so the same plugin always packs to the same bytes.
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class PackageLimits:
    """Caps the package reader enforces. Sizes are uncompressed bytes, counted while
    decompressing.

    ``max_package_bytes``: the archive file itself; ``max_module_bytes``: the module;
    ``max_doc_bytes``: README/LICENSE; ``max_total_bytes``: all members together;
    ``max_ratio``: uncompressed/compressed size of any member larger than ``ratio_floor``
    bytes (small members compress arbitrarily well legitimately); ``max_members``: archive
    entries, directories included.
    """

    max_package_bytes: int = 128 << 20
    max_module_bytes: int = MAX_MODULE_BYTES
    max_doc_bytes: int = 1 << 20
    max_total_bytes: int = 128 << 20
    max_ratio: int = 100
    ratio_floor: int = 1 << 20
    max_members: int = 64


def is_package(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file named ``*.plugbox`` or starting with the zip signature."""
    file = Path(path)
    if not file.is_file():
        return False
    if file.name.endswith(PACKAGE_SUFFIX):
        return True
    try:
        # Non-blocking and checked on the descriptor: a FIFO swapped in is never waited on.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(file, flags)
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 4) == _ZIP_MAGIC
        finally:
            os.close(fd)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Names


def _check_name(name: str) -> None:
    """Refuse a member name that could escape the target or mean different files elsewhere."""
    if not name:
        raise PackageError("a package member has an empty name", entry=name)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise PackageError(f"package member {name!r} has control characters in its name",
                           entry=name)
    if "\\" in name:
        raise PackageError(f"package member {name!r} contains a backslash; member names use '/'",
                           entry=name)
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":"):
        raise PackageError(f"package member {name!r} has an absolute path", entry=name)
    parts = name.rstrip("/").split("/")
    if any(part == ".." for part in parts):
        raise PackageError(f"package member {name!r} tries to escape the package directory "
                           f"('..' in its path)", entry=name)
    if any(part in ("", ".") for part in parts):
        raise PackageError(f"package member {name!r} has an empty or '.' path segment",
                           entry=name)


def _fold(name: str) -> str:
    # Two names that are equal after NFC normalisation and case folding are the same file on
    # macOS and Windows; a package must not be able to mean different things there.
    return unicodedata.normalize("NFC", name).casefold()


def _module_path(manifest: bytes) -> str:
    """The module path named by a package's manifest (only what the reader needs; the full
    schema check happens when the plugin is loaded)."""
    try:
        doc = json.loads(manifest.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        raise PackageError(f"the package's {MANIFEST_FILENAME} is not valid JSON: {exc}",
                           entry=MANIFEST_FILENAME) from exc
    module = doc.get("module") if isinstance(doc, dict) else None
    path = module.get("path") if isinstance(module, dict) else None
    if not isinstance(path, str):
        raise PackageError(f"the package's {MANIFEST_FILENAME} has no module.path string",
                           entry=MANIFEST_FILENAME)
    _check_name(path)
    if path.endswith("/"):
        raise PackageError(f"module.path {path!r} names a directory", entry=path)
    if _fold(path) in {_fold(n) for n in (MANIFEST_FILENAME, PRIMARY_SIGNATURE, *_DOC_NAMES)} \
            or _fold(path).startswith(_fold(SIGNATURES_DIR) + "/"):
        raise PackageError(f"module.path {path!r} collides with a reserved package member",
                           entry=path)
    return path


def _signature_member(name: str) -> bool:
    head, _, tail = name.partition("/")
    return (head == SIGNATURES_DIR and "/" not in tail and tail.endswith(_SIG_SUFFIX)
            and len(tail) > len(_SIG_SUFFIX))


# --------------------------------------------------------------------------------------------
# Reading


def _zip_errors() -> tuple[type[BaseException], ...]:
    # zipfile reports corrupt archives through many exception types.
    return (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
            struct.error, NotImplementedError, RuntimeError, IndexError, OverflowError,
            KeyError, UnicodeDecodeError, TypeError)


def _check_layout(data: bytes, infos: list[zipfile.ZipInfo]) -> None:
    """No data before the first member, and no two members sharing bytes."""
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        offset = info.header_offset
        header = data[offset:offset + 30]
        if len(header) < 30 or header[:4] != _ZIP_MAGIC:
            raise PackageError(f"package member {info.filename!r} has no local header where the "
                               f"directory says", entry=info.filename)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        end = offset + 30 + name_len + extra_len + info.compress_size
        if end > len(data):
            raise PackageError(f"package member {info.filename!r} runs past the end of the "
                               f"archive", entry=info.filename)
        spans.append((offset, end, info.filename))
    spans.sort()
    if spans and spans[0][0] != 0:
        raise PackageError("the package has data before its first member; a .plugbox must be "
                           "a plain zip archive")
    for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
        if start < end:
            raise PackageError(f"package members {name!r} and {other!r} overlap (a known "
                               f"zip-bomb technique)", entry=other)


def _member_cap(name: str, module: str | None, limits: PackageLimits) -> int:
    if name == MANIFEST_FILENAME:
        return MAX_MANIFEST_BYTES
    if name == PRIMARY_SIGNATURE or _signature_member(name):
        from ._signing import MAX_SIGNATURE_FILE_BYTES

        return MAX_SIGNATURE_FILE_BYTES
    if name in _DOC_NAMES:
        return limits.max_doc_bytes
    if module is not None and name == module:
        return limits.max_module_bytes
    raise AssertionError(name)  # pragma: no cover - names are checked before reading


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, total: list[int],
                 limits: PackageLimits) -> bytes:
    """A member's bytes, counting what decompression actually produces against the caps."""
    name = info.filename
    out = bytearray()
    floor = max(limits.ratio_floor, 1)
    with zf.open(info) as stream:
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            out += chunk
            total[0] += len(chunk)
            if len(out) > cap:
                raise PackageError(f"package member {name!r} is larger than its cap of {cap} "
                                   f"bytes", entry=name)
            if total[0] > limits.max_total_bytes:
                raise PackageError(f"the package unpacks to more than {limits.max_total_bytes} "
                                   f"bytes", entry=name)
            if len(out) > floor and len(out) > limits.max_ratio * max(info.compress_size, 1):
                raise PackageError(
                    f"package member {name!r} expands more than {limits.max_ratio} times "
                    f"(a compression bomb?)", entry=name)
    if len(out) != info.file_size:
        raise PackageError(f"package member {name!r} is {len(out)} bytes, not the "
                           f"{info.file_size} its header says", entry=name)
    return bytes(out)


def read_package(path: str | os.PathLike[str] | bytes,
                 limits: PackageLimits = PackageLimits()) -> dict[str, bytes]:
    """Read and check a ``.plugbox`` package (a path, or the archive's bytes) in memory.

    Returns member name -> bytes for every file member (directories left out). Raises
    :class:`~plugbox.PackageError` for anything malformed or unsafe (see the module
    docstring), :class:`~plugbox.UsageError` when the file cannot be read.
    """
    if isinstance(path, bytes):
        data = path
        if len(data) > limits.max_package_bytes:
            raise PackageError(f"the package is larger than {limits.max_package_bytes} bytes")
    else:
        file = Path(path)
        try:
            # A regular file, size-checked before it is read, opened without blocking.
            real = file.resolve(strict=True)
            data = read_plugin_file(real.parent, real.name, limits.max_package_bytes)
        except (OSError, RuntimeError) as exc:
            raise UsageError(f"{file}: cannot read the package: {exc}") from exc
        except PluginFileRefused as exc:
            if exc.kind == "too-large":
                raise PackageError(f"{file}: the package is larger than "
                                   f"{limits.max_package_bytes} bytes") from exc
            raise UsageError(f"{file}: cannot read the package: it {exc.reason}") from exc
    if not data.startswith(_ZIP_MAGIC):
        raise PackageError("not a .plugbox package: it does not start with a zip member "
                           "header (a .plugbox is a zip archive; make one with plugbox pack)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return _read_members(zf, data, limits)
    except PackageError:
        raise
    except _zip_errors() as exc:
        raise PackageError(f"not a valid .plugbox package (corrupt zip archive): "
                           f"{type(exc).__name__}: {exc}") from exc


def _read_members(zf: zipfile.ZipFile, data: bytes, limits: PackageLimits) -> dict[str, bytes]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise PackageError(f"the package has {len(infos)} members; at most "
                           f"{limits.max_members} are allowed")
    seen: dict[str, str] = {}
    for info in infos:
        name = info.filename
        # zipfile cuts a name at its first NUL; the original shows what the archive says.
        _check_name(info.orig_filename)
        _check_name(name)
        folded = _fold(name.rstrip("/"))
        if folded in seen:
            raise PackageError(f"package member {name!r} appears twice"
                               + ("" if seen[folded] == name else f" (as {seen[folded]!r})"),
                               entry=name)
        seen[folded] = name
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise PackageError(f"package member {name!r} is a symbolic link; packages may hold "
                               f"only regular files", entry=name)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise PackageError(f"package member {name!r} is not a regular file (mode "
                               f"{oct(mode)})", entry=name)
        if kind == stat.S_IFDIR and not info.is_dir():
            raise PackageError(f"package member {name!r} is a directory without a trailing "
                               f"'/'", entry=name)
        if info.flag_bits & 0x1:
            raise PackageError(f"package member {name!r} is encrypted", entry=name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PackageError(f"package member {name!r} uses compression method "
                               f"{info.compress_type}; only stored and deflate are allowed",
                               entry=name)
    _check_layout(data, infos)

    by_name = {info.filename: info for info in infos}
    if MANIFEST_FILENAME not in by_name:
        raise PackageError(f"the package has no {MANIFEST_FILENAME} at its top level")
    total = [0]
    manifest = _read_member(zf, by_name[MANIFEST_FILENAME], MAX_MANIFEST_BYTES, total, limits)
    module = _module_path(manifest)
    module_dirs = {"/".join(module.split("/")[:i]) + "/" for i in range(1, module.count("/") + 1)}

    signatures = 0
    for info in infos:
        name = info.filename
        if info.is_dir():
            if name != SIGNATURES_DIR + "/" and name not in module_dirs:
                raise PackageError(f"unknown directory {name!r} in the package", entry=name)
            continue
        if name in (MANIFEST_FILENAME, module, PRIMARY_SIGNATURE) or name in _DOC_NAMES:
            pass
        elif _signature_member(name):
            pass
        else:
            raise PackageError(
                f"unknown member {name!r} in the package; a .plugbox holds only "
                f"{MANIFEST_FILENAME}, the module ({module}), {PRIMARY_SIGNATURE}, "
                f"{SIGNATURES_DIR}/*.minisig, README and LICENSE", entry=name)
        if name == PRIMARY_SIGNATURE or _signature_member(name):
            signatures += 1
    if signatures > MAX_SIGNATURES:
        raise PackageError(f"the package has {signatures} signatures; at most {MAX_SIGNATURES}")
    if module not in by_name or by_name[module].is_dir():
        raise PackageError(f"the package has no module {module!r} (the manifest's module.path)",
                           entry=module)

    members = {MANIFEST_FILENAME: manifest}
    for info in infos:
        if info.is_dir() or info.filename == MANIFEST_FILENAME:
            continue
        cap = _member_cap(info.filename, module, limits)
        members[info.filename] = _read_member(zf, info, cap, total, limits)
    return members


# --------------------------------------------------------------------------------------------
# Extracting


def extract_package(path: str | os.PathLike[str] | bytes, target: str | os.PathLike[str],
                    limits: PackageLimits = PackageLimits()) -> Path:
    """Check a package completely, then write its members into ``target`` (created if
    missing; refused if not empty). Returns ``target``.

    Raises :class:`~plugbox.PackageError` for an unsafe package (nothing is written then) and
    :class:`~plugbox.UsageError` for a non-empty or unusable target.
    """
    members = read_package(path, limits)
    out = Path(target)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"{out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise UsageError(f"{out} is not empty; unpack into a new or empty directory")
        root = out.resolve()
        for name, content in members.items():
            dest = root.joinpath(*name.split("/"))
            # Names were validated already; this makes escaping impossible even so.
            if root not in dest.resolve().parents:
                raise PackageError(f"package member {name!r} would be written outside {root}",
                                   entry=name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(dest, flags, 0o644)
            with os.fdopen(fd, "wb") as stream:
                stream.write(content)
    except OSError as exc:
        raise UsageError(f"cannot unpack into {out}: {exc.strerror or exc}") from exc
    return out


@contextlib.contextmanager
def staged_plugin(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a plugin directory or manifest path for ``path``.

    A plugin directory or ``plugbox.json`` is yielded as is. A ``.plugbox`` package is checked
    and unpacked into a private temporary directory (mode 0700), removed on exit; everything
    after that (signatures, hash, compile) sees exactly what a directory would show.
    """
    given = Path(path)
    if not is_package(given):
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="plugbox-package-") as tmp:
        os.chmod(tmp, 0o700)
        yield extract_package(given, Path(tmp) / "plugin")


# --------------------------------------------------------------------------------------------
# Writing


def package_members(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """The files of the plugin in ``directory`` that go into its package: member name ->
    file. The manifest must parse far enough to name its module."""
    return _plugin_members(Path(directory))[1]


def _plugin_members(root: Path) -> tuple[str, dict[str, Path]]:
    """(the module's member name, :func:`package_members`)."""
    manifest = root / MANIFEST_FILENAME
    if not manifest.is_file():
        raise ManifestError(f"{root}: no {MANIFEST_FILENAME} in this directory")
    try:
        module = _module_path(_read_plugin_member(root, MANIFEST_FILENAME, MAX_MANIFEST_BYTES))
    except PackageError as exc:
        raise ManifestError(f"{manifest}: {exc.message}") from exc
    members: dict[str, Path] = {MANIFEST_FILENAME: manifest, module: root / module}
    if (root / PRIMARY_SIGNATURE).is_file():
        members[PRIMARY_SIGNATURE] = root / PRIMARY_SIGNATURE
    sig_dir = root / SIGNATURES_DIR
    if sig_dir.is_dir():
        for file in sorted(sig_dir.iterdir()):
            name = f"{SIGNATURES_DIR}/{file.name}"
            if file.is_file() and _signature_member(name):
                members[name] = file
    for doc in sorted(_DOC_NAMES):
        if (root / doc).is_file():
            members[doc] = root / doc
    return module, members


def _read_plugin_member(root: Path, name: str, cap: int) -> bytes:
    """A plugin file to pack, read as the loader reads it (inside ``root``, regular, capped)."""
    try:
        return read_plugin_file(root, name, cap)
    except PluginFileRefused as exc:
        raise UsageError(f"cannot pack {root / name}: the file {exc.reason}") from exc


def write_package(directory: str | os.PathLike[str], output: str | os.PathLike[str], *,
                  force: bool = False) -> list[str]:
    """Pack the plugin in ``directory`` into the package ``output``; returns the member names.

    The archive is reproducible: members in a fixed order, fixed timestamps and modes. It is
    written to a temporary file and renamed, so a failed pack leaves no partial package. Refuses
    to overwrite ``output`` unless ``force``.
    """
    out = Path(output)
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"{out} already exists (use --force to overwrite it)")
    root = Path(directory)
    module, members = _plugin_members(root)
    order = [MANIFEST_FILENAME, *sorted(n for n in members if n != MANIFEST_FILENAME)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in order:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so external_attr holds a mode
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            cap = _member_cap(name, module, PackageLimits())
            zf.writestr(info, _read_plugin_member(root, name, cap))
    # Check the result with the reader: a package plugbox cannot read back is never written.
    read_package(buffer.getvalue())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".plugbox-pack-", dir=out.parent)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(buffer.getvalue())
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return order
