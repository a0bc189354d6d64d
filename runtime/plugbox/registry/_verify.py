"""What the registry checks before it accepts an upload: every check ``plugbox verify`` makes,
with the same functions, in the same order (the package reader, the manifest schema, the
signatures against the owner's registered keys, ABI compatibility, the module's sha256, the
ABI interface, the capabilities, and whether ``Runtime.load`` could compile and run it).

One difference, on purpose: the manifest's ``host`` specifier must parse, but need not contain
the registry's own plugbox version, because a registry serves hosts of many versions;
compatibility is a fact recorded per version and a search filter (docs/registry.md).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .._errors import PlugboxError
from .._manifest import (
    MANIFEST_FILENAME,
    Manifest,
    abi_compatible,
    read_manifest,
    validate_manifest,
    verify_module,
)
from .._policy import Policy
from .._runtime import check_runnable
from ..engine import _abispec
from ..engine._wasmparse import check_capabilities, check_module_interface, inspect_module
from ..trust._package import PackageLimits, extract_package
from ..trust._signing import PublicKey
from ..trust._trust import PRIMARY_SIGNATURE, SIGNATURES_DIR, TrustPolicy
from ._errors import RequestRefused

__all__ = ["VerifiedPackage", "peek_name", "verify_package"]

_ENGINE: list[wasmtime.Engine] = []


@dataclass(frozen=True)
class VerifiedPackage:
    """An accepted upload: the package's bytes and sha256, its manifest, the registered keys
    that signed it, and its signature files (member name -> text)."""

    data: bytes
    sha256: str
    manifest: Manifest
    signers: tuple[dict[str, Any], ...]
    signatures: dict[str, str]

    @property
    def name(self) -> str:
        """The plugin's name."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """The plugin's version."""
        return self.manifest.version

    def facts(self) -> dict[str, Any]:
        """What the registry records and serves about this version."""
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "description": m.description or "",
            "abi": m.abi,
            "host": m.host,
            "hooks": list(m.hooks),
            "permissions": sorted(m.permissions.services()),
            "extension_points": sorted(m.implements),
            "declares_points": sorted(m.extension_points),
            "requires": dict(m.requires),
            "optional": dict(m.optional),
            "conflicts": dict(m.conflicts),
            "module_sha256": m.module_sha256,
        }


def _refuse(check: str, exc: PlugboxError | str, name: str | None = None,
            directory: Path | None = None) -> RequestRefused:
    message = exc if isinstance(exc, str) else exc.message
    if directory is not None:  # the server's temporary paths mean nothing to the uploader
        message = message.replace(str(directory) + "/", "").replace(str(directory),
                                                                    "the package")
    return RequestRefused(422, "invalid-package",
                         f"the package fails the {check} check plugbox verify makes: {message}",
                         plugin=name, detail={"check": check,
                                              "type": None if isinstance(exc, str)
                                              else type(exc).__name__})


def _storage_full(exc: OSError) -> RequestRefused:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return RequestRefused(507, "storage-full", f"the registry's storage is full while "
                             f"checking the package ({exc.strerror}); nothing was published: "
                             f"retry later", retry_after=60)
    return RequestRefused(500, "storage", f"the registry's storage failed while checking the "
                         f"package: {exc.strerror or exc}")


def peek_name(members: dict[str, bytes]) -> tuple[str, str]:
    """The (name, version) a package's manifest claims, before anything else is checked, so the
    server can refuse a name owned by someone else early. RequestRefused when unreadable."""
    try:
        doc = json.loads(members[MANIFEST_FILENAME].decode("utf-8-sig"))
        name, version = doc["name"], doc["version"]
        if isinstance(name, str) and isinstance(version, str):
            return name, version
    except (ValueError, KeyError, TypeError, RecursionError):
        pass
    raise _refuse("schema", f"{MANIFEST_FILENAME} names no plugin name and version")


def verify_package(data: bytes, keys: Sequence[PublicKey],
                   limits: PackageLimits = PackageLimits()) -> VerifiedPackage:
    """Check an uploaded package completely (module docstring); raises RequestRefused 422
    ``invalid-package`` naming the failed check, or 403 ``untrusted-signer`` when no key of
    ``keys`` signed it."""
    try:
        from ..trust._package import read_package

        members = read_package(data, limits)
    except PlugboxError as exc:
        raise _refuse("package", exc) from None
    name, _ = peek_name(members)
    if not keys:
        raise RequestRefused(403, "no-keys",
                            f"the publisher of {name!r} has registered no signing key: register "
                            f"a minisign public key (POST /api/v1/accounts/NAME/keys) and sign "
                            f"the package with it", plugin=name)
    with tempfile.TemporaryDirectory(prefix="plugbox-registry-") as tmp:
        try:
            directory = extract_package(data, Path(tmp) / "plugin", limits)
        except PlugboxError as exc:
            if isinstance(exc.__cause__, OSError):  # the server's disk, not the package
                raise _storage_full(exc.__cause__) from None
            raise _refuse("package", exc, name) from None
        try:
            source = read_manifest(directory)
        except PlugboxError as exc:
            raise _refuse("schema", exc, name, directory) from None
        trust = TrustPolicy(list(keys), mode="require")
        report = trust.evaluate(source.directory, source.data, plugin=name)
        if report.error is not None:
            raise RequestRefused(
                403, "untrusted-signer",
                f"{name!r} is not signed by a key its publisher registered: "
                f"{report.error.message.replace(str(directory) + '/', '')}", plugin=name,
                detail={"check": "signatures",
                        "signatures": [c.to_json() for c in report.checks]})
        try:
            manifest = validate_manifest(source)
        except PlugboxError as exc:
            raise _refuse("schema", exc, name, directory) from None
        if not abi_compatible(manifest.abi, _abispec.ABI_VERSION):
            raise _refuse("compat", f"ABI {manifest.abi} is not served by this registry "
                          f"(ABI {_abispec.ABI_VERSION}): rebuild the plugin against it", name)
        if manifest.host is not None:
            try:
                SpecifierSet(manifest.host)
            except InvalidSpecifier:
                raise _refuse("compat", f"$.host {manifest.host!r} is not a PEP 440 "
                              f"specifier", name) from None
        try:
            wasm = verify_module(manifest)
            info = inspect_module(wasm)
            check_module_interface(info, manifest)
            check_capabilities(info, manifest)
        except PlugboxError as exc:
            raise _refuse("module", exc, name, directory) from None
        policy = Policy()
        limits_ = manifest.limits.fill(
            policy.effective_defaults(component=info.kind == "component"))
        if not _ENGINE:
            _ENGINE.append(wasmtime.Engine())
        try:
            check_runnable(manifest, wasm, info, limits_, policy, _ENGINE[0])
        except PlugboxError as exc:
            raise _refuse("runnable", exc, name, directory) from None
        signatures = {member: content.decode("utf-8", "replace")
                      for member, content in members.items()
                      if member == PRIMARY_SIGNATURE or member.startswith(SIGNATURES_DIR + "/")}
        return VerifiedPackage(
            data=data, sha256=hashlib.sha256(data).hexdigest(), manifest=manifest,
            signers=tuple({"key_id": s.key_id, "trusted_comment": s.trusted_comment,
                           "algorithm": s.algorithm, "signature_file": s.signature_file}
                          for s in report.signers),
            signatures=signatures)
