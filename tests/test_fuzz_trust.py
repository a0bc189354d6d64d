"""Fuzzing the parsers that read untrusted input before anything is trusted: the manifest
(``load_manifest``), minisign signatures and keys, and the ``.plugbox`` package reader.

Every case must end in success or a typed :class:`plugbox.PlugboxError`, never another
exception. Several thousand cases in all; the file runs in well under a minute.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import plugbox
from plugbox.trust._package import PackageLimits, read_package
from plugbox.trust._signing import PublicKey, SecretKey, Signature, sign_bytes, verify_bytes
from plugbox.trust._trust import TrustPolicy

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                max_examples=1500)
FAST = settings(FUZZ, max_examples=1000)


def outcome(error: BaseException | None) -> None:
    """Record how far a case got (see pytest --hypothesis-show-statistics)."""
    if error is None:
        event("accepted")
        return
    where = getattr(error, "json_path", None) or getattr(error, "entry", None) or ""
    event(f"{type(error).__name__} {where}"[:60])


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Module-scoped: hypothesis runs many examples per test and dislikes function fixtures.
    with tempfile.TemporaryDirectory(prefix="plugbox-fuzz-") as tmp:
        yield Path(tmp)


# -- byte-level mutation ----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few random edits: byte flips, insertions, deletions, truncation."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[i:]
        else:
            j = draw(st.integers(0, len(data) - 1))
            data[i:i] = data[j:j + draw(st.integers(1, 64))]
    return bytes(data)


# -- manifests --------------------------------------------------------------------------------


VALID_MANIFEST: dict[str, Any] = {
    "manifest_version": 1,
    "name": "fuzzed",
    "version": "1.2.3",
    "description": "a plugin",
    "authors": ["A <a@example.com>"],
    "license": "MIT",
    "abi": "1.0",
    "host": ">=0.1",
    "module": {"path": "plugin.wasm", "sha256": "0" * 64},
    "hooks": ["run", "text.stats"],
    "permissions": {"log": True, "kv": {"quota_bytes": 1000}, "events": {"topics": ["a.*"]},
                    "http": {"hosts": ["api.example.com"], "methods": ["GET"]}},
    "limits": {"fuel": 1000, "memory_bytes": 1 << 20},
    "config_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)

# Field names the schema knows, so that random documents get past the first checks often.
field_names = st.sampled_from(sorted({*VALID_MANIFEST, *VALID_MANIFEST["permissions"],
                                      "path", "sha256", "topics", "quota_keys"}))


@st.composite
def manifest_docs(draw: st.DrawFn) -> Any:
    doc: Any = json.loads(json.dumps(VALID_MANIFEST))
    for _ in range(draw(st.integers(0, 4))):
        # Walk to a random object inside the document and change one entry.
        target = doc
        while isinstance(target, dict) and target and draw(st.booleans()):
            child = target[draw(st.sampled_from(sorted(target)))]
            if not isinstance(child, dict):
                break
            target = child
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["delete", "replace", "retype", "retype", "add"]))
        if action == "delete" and target:
            del target[draw(st.sampled_from(sorted(target)))]
        elif action == "retype" and target:
            # A new value of the same JSON type: often still valid, reaching deeper code.
            key = draw(st.sampled_from(sorted(target)))
            old = target[key]
            if isinstance(old, bool):
                target[key] = draw(st.booleans())
            elif isinstance(old, int):
                target[key] = draw(st.integers(-2, 2**66) | st.sampled_from([0, 1, 2**63]))
            elif isinstance(old, str):
                target[key] = draw(st.text(max_size=30) | st.from_regex(r"[a-z][a-z0-9.*:-]{0,20}",
                                                                         fullmatch=True))
            elif isinstance(old, list):
                target[key] = draw(st.lists(st.text(max_size=10), max_size=4))
        elif action == "replace" and target:
            target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
        else:
            target[draw(field_names | st.text(max_size=8))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        doc = draw(json_values)
    return doc


def _load(scratch: Path, data: bytes) -> None:
    (scratch / "plugbox.json").write_bytes(data)
    try:
        manifest = plugbox.load_manifest(scratch)
    except plugbox.PlugboxError as exc:
        outcome(exc)
        return
    outcome(None)
    assert manifest.name and manifest.module_path.is_relative_to(scratch.resolve())


@FUZZ
@given(doc=manifest_docs())
def test_fuzz_manifest_documents(scratch: Path, doc: Any) -> None:
    _load(scratch, json.dumps(doc).encode())


@FAST
@given(data=mutated(json.dumps(VALID_MANIFEST, indent=2).encode()))
def test_fuzz_manifest_bytes(scratch: Path, data: bytes) -> None:
    _load(scratch, data)


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_fuzz_manifest_noise(scratch: Path, data: bytes) -> None:
    _load(scratch, data)


# -- signatures and keys ----------------------------------------------------------------------


KEY = SecretKey.generate()
MESSAGE = json.dumps(VALID_MANIFEST).encode()
SIGNATURE = sign_bytes(MESSAGE, KEY, trusted_comment="timestamp:1\tfile:plugbox.json").to_text()
PUBLIC = KEY.public_key("fuzz public key").to_text()
SECRET = KEY.to_text()


@st.composite
def mutated_lines(draw: st.DrawFn, original: str) -> bytes:
    """Edits that keep the line structure more often than byte noise does: a line's base64
    re-encoded with changed bytes, lines dropped, duplicated or swapped."""
    lines = original.splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    action = draw(st.sampled_from(["rebase64", "drop", "dup", "swap", "comment"]))
    if action == "rebase64":
        try:
            raw = bytearray(base64.b64decode(lines[i], validate=True))
        except ValueError:
            raw = bytearray(lines[i].encode())
        if raw:
            j = draw(st.integers(0, len(raw) - 1))
            raw[j] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
        lines[i] = base64.b64encode(bytes(raw)).decode()
    elif action == "drop":
        del lines[i]
    elif action == "dup":
        lines.insert(i, lines[i])
    elif action == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines[i] = draw(st.sampled_from(["untrusted comment: ", "trusted comment: ", ""])) + (
            draw(st.text(max_size=30)))
    return ("\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))).encode(
        "utf-8", "surrogatepass")


def _signature(data: bytes) -> None:
    try:
        sig = Signature.parse(data)
    except plugbox.PlugboxError as exc:
        outcome(exc)
        return
    try:
        verify_bytes(MESSAGE, sig, KEY.public_key())
    except plugbox.PlugboxError as exc:
        outcome(exc)
        return
    outcome(None)
    # Whatever verifies must be the untouched signature (same signature and comment).
    original = Signature.parse(SIGNATURE)
    assert (sig.signature, sig.trusted_comment_bytes) == (
        original.signature, original.trusted_comment_bytes)


@FUZZ
@given(data=mutated(SIGNATURE.encode()) | mutated_lines(SIGNATURE) | st.binary(max_size=200))
def test_fuzz_signature_files(data: bytes) -> None:
    _signature(data)


@FAST
@given(data=mutated(PUBLIC.encode()) | mutated_lines(PUBLIC) | st.binary(max_size=120))
def test_fuzz_public_key_files(data: bytes) -> None:
    try:
        key = PublicKey.parse(data)
    except plugbox.PlugboxError:
        return
    try:
        verify_bytes(MESSAGE, Signature.parse(SIGNATURE), key)
    except plugbox.SignatureError:
        assert key.key != KEY.public or key.key_id != KEY.key_id


@FAST
@given(data=mutated(SECRET.encode()) | mutated_lines(SECRET) | st.binary(max_size=300))
def test_fuzz_secret_key_files(data: bytes) -> None:
    try:
        key = SecretKey.parse(data)
    except plugbox.PlugboxError:
        return
    # A secret key that parses signs something its own public key verifies.
    verify_bytes(b"m", sign_bytes(b"m", key, trusted_comment="c"), key.public_key())


@settings(FUZZ, max_examples=500)
@given(files=st.lists(mutated(SIGNATURE.encode()) | mutated_lines(SIGNATURE), min_size=1,
                      max_size=3))
def test_fuzz_trust_policy_on_signature_files(scratch: Path, files: list[bytes]) -> None:
    plugin = scratch / "trust"
    sigs = plugin / "signatures"
    sigs.mkdir(parents=True, exist_ok=True)
    for old in sigs.iterdir():
        old.unlink()
    (plugin / "plugbox.json.minisig").write_bytes(files[0])
    for n, data in enumerate(files[1:]):
        (sigs / f"{n}.minisig").write_bytes(data)
    report = TrustPolicy([KEY.public_key()]).evaluate(plugin, MESSAGE, plugin="fuzzed")
    assert report.error is None or isinstance(report.error, plugbox.PlugboxError)
    assert len(report.checks) == len(files)


# -- packages ---------------------------------------------------------------------------------


MODULE = b"\x00asm\x01\x00\x00\x00" + bytes(200)
PACKAGE_MANIFEST = json.dumps(VALID_MANIFEST).encode()
LIMITS = PackageLimits(max_module_bytes=64 << 10, max_total_bytes=128 << 10, ratio_floor=4096)


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data, method in entries:
                info = zipfile.ZipInfo(name)
                info.compress_type = method
                zf.writestr(info, data)
    return buffer.getvalue()


VALID_PACKAGE = _zip([("plugbox.json", PACKAGE_MANIFEST, zipfile.ZIP_DEFLATED),
                      ("plugin.wasm", MODULE, zipfile.ZIP_DEFLATED),
                      ("plugbox.json.minisig", SIGNATURE.encode(), zipfile.ZIP_STORED),
                      ("README.md", b"# readme\n" * 20, zipfile.ZIP_DEFLATED)])

member_names = st.sampled_from([
    "plugbox.json", "plugin.wasm", "plugbox.json.minisig", "signatures/a.minisig",
    "signatures/A.minisig", "signatures/", "README", "LICENSE.txt", "../x", "/abs",
    "a\\b", "x/../plugin.wasm", "bin/", "evil.sh", "PLUGBOX.JSON", "signatures/x/y.minisig",
    "./README", "",
]) | st.text(max_size=12)


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    entries = [("plugbox.json", PACKAGE_MANIFEST, zipfile.ZIP_DEFLATED)]
    for _ in range(draw(st.integers(0, 5))):
        data = draw(st.sampled_from([MODULE, b"", bytes(50_000), SIGNATURE.encode()])
                    | st.binary(max_size=64))
        entries.append((draw(member_names), data,
                        draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))))
    if draw(st.booleans()):
        entries.pop(0)
    return _zip(entries)


def _package(data: bytes) -> None:
    try:
        members = read_package(data, LIMITS)
    except plugbox.PackageError as exc:
        outcome(exc)
        return
    outcome(None)
    assert "plugbox.json" in members
    assert sum(len(v) for v in members.values()) <= LIMITS.max_total_bytes


@FUZZ
@given(data=mutated(VALID_PACKAGE))
def test_fuzz_package_bytes(data: bytes) -> None:
    _package(data)


@FAST
@given(data=archives())
def test_fuzz_package_archives(data: bytes) -> None:
    _package(data)


@settings(FUZZ, max_examples=500)
@given(data=archives().flatmap(mutated) | st.binary(max_size=400)
       | st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b))
def test_fuzz_package_noise(data: bytes) -> None:
    _package(data)
