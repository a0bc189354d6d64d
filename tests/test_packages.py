"""``.plugbox`` packages: packing, loading from a package, and a reader that refuses hostile
archives (traversal, absolute paths, links, duplicates, oversized entries, bombs, unknown
members) without ever writing outside its target."""

from __future__ import annotations

import io
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest

import plugbox
from plugbox.trust._package import (
    PackageLimits,
    extract_package,
    is_package,
    read_package,
    staged_plugin,
    write_package,
)
from plugbox.trust._signing import SecretKey, sign_bytes
from tests.conftest import COUNTER_BODY, wat_module, write_plugin

MODULE = wat_module(COUNTER_BODY)


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    directory = write_plugin(tmp_path / "plugin", MODULE, name="counter-wat")
    (directory / "README.md").write_text("# counter\n")
    (directory / "LICENSE").write_text("MIT\n")
    return directory


@pytest.fixture
def key(tmp_path: Path) -> SecretKey:
    key = SecretKey.generate()
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "release.pub").write_text(key.public_key().to_text())
    return key


def sign(directory: Path, key: SecretKey) -> None:
    data = (directory / "plugbox.json").read_bytes()
    (directory / "plugbox.json.minisig").write_text(
        sign_bytes(data, key, trusted_comment="packaged").to_text())


def manifest_for(module_path: str = "plugin.wasm") -> bytes:
    return (
        b'{"manifest_version": 1, "name": "z", "version": "0.1.0", "abi": "1.0", '
        b'"module": {"path": "' + module_path.encode() + b'", "sha256": "' + b"0" * 64
        + b'"}, "hooks": ["run"]}'
    )


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]],
             compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(buffer, "w", compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buffer.getvalue()


def good_entries() -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    return [("plugbox.json", manifest_for()), ("plugin.wasm", MODULE)]


def refused(data: bytes, tmp_path: Path, match: str,
            limits: PackageLimits = PackageLimits()) -> plugbox.PackageError:
    """Assert the package is refused by the reader and by extraction, writing nothing."""
    (tmp_path / "pkg.plugbox").write_bytes(data)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(plugbox.PackageError, match=match) as info:
        read_package(data, limits)
    with pytest.raises(plugbox.PackageError, match=match):
        extract_package(tmp_path / "pkg.plugbox", tmp_path / "out", limits)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "out") == before
    return info.value


# -- packing and loading ---------------------------------------------------------------------------


def test_pack_then_read_gives_back_every_file(plugin_dir: Path, key: SecretKey,
                                              tmp_path: Path) -> None:
    sign(plugin_dir, key)
    names = write_package(plugin_dir, tmp_path / "dist" / "counter.plugbox")
    assert names == ["plugbox.json", "LICENSE", "README.md", "plugbox.json.minisig",
                     "plugin.wasm"]
    members = read_package(tmp_path / "dist" / "counter.plugbox")
    assert members == {name: (plugin_dir / name).read_bytes() for name in names}
    assert is_package(tmp_path / "dist" / "counter.plugbox")
    assert not is_package(plugin_dir) and not is_package(plugin_dir / "plugbox.json")


def test_packing_is_reproducible_and_refuses_to_overwrite(plugin_dir: Path,
                                                          tmp_path: Path) -> None:
    write_package(plugin_dir, tmp_path / "a.plugbox")
    write_package(plugin_dir, tmp_path / "b.plugbox")
    assert (tmp_path / "a.plugbox").read_bytes() == (tmp_path / "b.plugbox").read_bytes()
    with pytest.raises(plugbox.UsageError, match="already exists"):
        write_package(plugin_dir, tmp_path / "a.plugbox")
    write_package(plugin_dir, tmp_path / "a.plugbox", force=True)


def test_runtime_loads_and_verifies_a_signed_package(plugin_dir: Path, key: SecretKey,
                                                     tmp_path: Path, cache_dir: Path) -> None:
    sign(plugin_dir, key)
    package = tmp_path / "counter.plugbox"
    write_package(plugin_dir, package)
    trust = plugbox.TrustPolicy(tmp_path / "trusted")
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache_dir, trust=trust) as rt:
        plugin = rt.load(package)
        assert plugin.call("run", b"") == b"\x01\x00\x00\x00"
        assert [(s.key_name, s.trusted_comment) for s in plugin.signers] == [
            ("release", "packaged")]
        manifest, wasm = rt.verify(package)
        assert manifest.name == "counter-wat" and wasm == MODULE


def test_a_tampered_package_is_refused_before_compiling(plugin_dir: Path, key: SecretKey,
                                                        tmp_path: Path, cache_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    sign(plugin_dir, key)
    members = {p.name: p.read_bytes() for p in plugin_dir.iterdir()}
    members["plugbox.json"] = members["plugbox.json"].replace(b'"run"', b'"go"')
    package = tmp_path / "evil.plugbox"
    package.write_bytes(make_zip(list(members.items())))
    trust = plugbox.TrustPolicy(tmp_path / "trusted")
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache_dir, trust=trust) as rt:
        with pytest.raises(plugbox.SignatureError):
            rt.load(package)
        # An unsigned package is refused too; the unpacked copy is always removed.
        unsigned = tmp_path / "unsigned.plugbox"
        write_package(write_plugin(tmp_path / "u", MODULE), unsigned)
        with pytest.raises(plugbox.UntrustedSignerError):
            rt.load(unsigned)
    assert list(scratch.iterdir()) == []


def test_staged_plugin_passes_directories_through_and_cleans_up_packages(
        plugin_dir: Path, tmp_path: Path) -> None:
    with staged_plugin(plugin_dir) as path:
        assert path == plugin_dir
    write_package(plugin_dir, tmp_path / "p.plugbox")
    with staged_plugin(tmp_path / "p.plugbox") as path:
        assert (path / "plugbox.json").read_bytes() == (plugin_dir / "plugbox.json").read_bytes()
        assert path.parent.stat().st_mode & 0o777 == 0o700
    assert not path.exists()


def test_extract_refuses_a_non_empty_target_and_creates_a_missing_one(
        plugin_dir: Path, tmp_path: Path) -> None:
    package = tmp_path / "p.plugbox"
    write_package(plugin_dir, package)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(plugbox.UsageError, match="not empty"):
        extract_package(package, tmp_path / "busy")
    out = extract_package(package, tmp_path / "new" / "dir")
    assert (out / "plugin.wasm").read_bytes() == MODULE


def test_a_module_in_a_subdirectory_is_allowed(tmp_path: Path) -> None:
    data = make_zip([("plugbox.json", manifest_for("build/out/plugin.wasm")),
                     ("build/", b""), ("build/out/plugin.wasm", MODULE)])
    out = extract_package(data, tmp_path / "out")
    assert (out / "build" / "out" / "plugin.wasm").read_bytes() == MODULE


# -- hostile archives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.txt", "escape"),
        ("signatures/../../evil.minisig", "escape"),
        ("/etc/evil", "absolute"),
        ("C:evil", "absolute"),
        ("dir\\..\\evil", "backslash"),
        ("./plugbox.json", "'.' path segment"),
        ("a//b", "empty"),
        ("evil\x00.txt", "control"),
        ("\u202eevil", "control"),
    ],
)
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str, match: str) -> None:
    # zipfile itself cuts names at a NUL, so that one is written as a placeholder and patched.
    placeholder = name.replace("\x00", "X")
    data = make_zip([*good_entries(), (placeholder, b"x")])
    data = data.replace(placeholder.encode(), name.encode())
    error = refused(data, tmp_path, match)
    assert error.entry == name


def test_a_module_path_that_escapes_is_refused(tmp_path: Path) -> None:
    refused(make_zip([("plugbox.json", manifest_for("../plugin.wasm")),
                      ("plugin.wasm", MODULE)]), tmp_path, "escape")
    refused(make_zip([("plugbox.json", manifest_for("signatures/x.wasm")),
                      ("signatures/x.wasm", MODULE)]), tmp_path, "reserved")


@pytest.mark.parametrize(("mode", "match"), [
    (stat.S_IFLNK | 0o777, "symbolic link"),
    (stat.S_IFCHR | 0o644, "not a regular file"),
    (stat.S_IFIFO | 0o644, "not a regular file"),
])
def test_links_and_special_files_are_refused(tmp_path: Path, mode: int, match: str) -> None:
    info = zipfile.ZipInfo("README")
    info.create_system = 3
    info.external_attr = mode << 16
    refused(make_zip([*good_entries(), (info, b"/etc/passwd")]), tmp_path, match)


@pytest.mark.parametrize("second", ["plugin.wasm", "PLUGIN.WASM", "plugin.wasm/"])
def test_duplicate_members_are_refused(tmp_path: Path, second: str) -> None:
    refused(make_zip([*good_entries(), (second, b"other")]), tmp_path, "appears twice")


def test_case_folded_signature_duplicates_are_refused(tmp_path: Path) -> None:
    refused(make_zip([*good_entries(), ("signatures/AB.minisig", b""),
                      ("signatures/ab.minisig", b"")]), tmp_path, "appears twice")


@pytest.mark.parametrize(("name", "match"), [
    ("install.sh", "unknown member"),
    ("signatures/notes.txt", "unknown member"),
    ("signatures/sub/x.minisig", "unknown member"),
    ("bin/", "unknown directory"),
    ("README.rst", "unknown member"),
])
def test_unknown_members_are_refused(tmp_path: Path, name: str, match: str) -> None:
    refused(make_zip([*good_entries(), (name, b"")]), tmp_path, match)


def test_missing_manifest_or_module_and_non_zips_are_refused(tmp_path: Path) -> None:
    refused(make_zip([("plugin.wasm", MODULE)]), tmp_path, "no plugbox.json")
    refused(make_zip([("plugbox.json", manifest_for())]), tmp_path, "no module")
    refused(make_zip([("plugbox.json", b"{not json"), ("plugin.wasm", MODULE)]), tmp_path,
            "not valid JSON")
    refused(b"hello, not a zip", tmp_path, "not a .plugbox package")
    refused(b"#!/bin/sh\n" + make_zip(good_entries()), tmp_path, "not a .plugbox package")
    refused(make_zip(good_entries())[:-30], tmp_path, "corrupt zip")


def test_oversized_members_are_refused_while_decompressing(tmp_path: Path) -> None:
    big = make_zip([("plugbox.json", manifest_for()), ("plugin.wasm", MODULE + bytes(5000))])
    refused(big, tmp_path, "larger than its cap", PackageLimits(max_module_bytes=4096))
    refused(big, tmp_path, "unpacks to more than", PackageLimits(max_total_bytes=4096))
    refused(big, tmp_path, "larger than", PackageLimits(max_package_bytes=200))
    refused(make_zip([*good_entries(), ("README", b"x" * 5000)]), tmp_path,
            "larger than its cap", PackageLimits(max_doc_bytes=1000))
    refused(make_zip([*good_entries(), ("signatures/a.minisig", b"x" * 20000)]), tmp_path,
            "larger than its cap")
    refused(make_zip([*good_entries(), *[(f"signatures/{i}.minisig", b"") for i in range(40)]]),
            tmp_path, "members", PackageLimits(max_members=20))
    refused(make_zip([*good_entries(), *[(f"signatures/{i}.minisig", b"") for i in range(40)]]),
            tmp_path, "signatures")


def _patch_sizes(data: bytes, name: str, file_size: int) -> bytes:
    """Rewrite the uncompressed size of ``name`` in its local and central headers."""
    out = bytearray(data)
    encoded = name.encode()
    pos = 0
    while (pos := out.find(b"PK\x03\x04", pos)) >= 0:
        (length,) = struct.unpack_from("<H", out, pos + 26)
        if bytes(out[pos + 30:pos + 30 + length]) == encoded:
            struct.pack_into("<I", out, pos + 22, file_size)
        pos += 4
    pos = 0
    while (pos := out.find(b"PK\x01\x02", pos)) >= 0:
        (length,) = struct.unpack_from("<H", out, pos + 28)
        if bytes(out[pos + 46:pos + 46 + length]) == encoded:
            struct.pack_into("<I", out, pos + 24, file_size)
        pos += 4
    return bytes(out)


def test_compression_bombs_are_stopped_without_trusting_the_headers(tmp_path: Path) -> None:
    bomb = make_zip([("plugbox.json", manifest_for()), ("plugin.wasm", bytes(40 << 20))])
    assert len(bomb) < 100_000
    refused(bomb, tmp_path, "expands more than")
    # Headers that understate the size: decompression stops at the claimed size and the
    # CRC/size check fails; headers that overstate it: the caps count real bytes.
    refused(_patch_sizes(bomb, "plugin.wasm", 100), tmp_path, "corrupt|header says")
    refused(_patch_sizes(bomb, "plugin.wasm", 0xFFFF_FFF0), tmp_path,
            "expands more than|larger than")
    refused(_patch_sizes(bomb, "plugin.wasm", 0xFFFF_FFF0), tmp_path, "larger than its cap",
            PackageLimits(max_ratio=10**9, max_module_bytes=2 << 20))


def test_overlapping_members_are_refused(tmp_path: Path) -> None:
    data = bytearray(make_zip([*good_entries(), ("README", b"readme")]))
    # Point README's directory entry at the module's local header (a "zip bomb" layout).
    pos, offsets = 0, {}
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        (length,) = struct.unpack_from("<H", data, pos + 28)
        name = bytes(data[pos + 46:pos + 46 + length]).decode()
        offsets[name] = pos
        pos += 4
    module_offset = struct.unpack_from("<I", data, offsets["plugin.wasm"] + 42)[0]
    struct.pack_into("<I", data, offsets["README"] + 42, module_offset)
    refused(bytes(data), tmp_path, "overlap")


def test_encrypted_and_exotic_compression_members_are_refused(tmp_path: Path) -> None:
    data = bytearray(make_zip(good_entries()))
    pos = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, pos + 8, struct.unpack_from("<H", data, pos + 8)[0] | 1)
    refused(bytes(data), tmp_path, "encrypted")
    refused(make_zip(good_entries(), zipfile.ZIP_BZIP2), tmp_path, "compression method")
