"""Who vouches for a plugin: signature discovery, the trust policy, and its verdict.

A plugin directory carries detached minisign signatures of the exact bytes of its
``plugbox.json`` (which pins the module's sha256): the first as ``plugbox.json.minisig``,
further ones as ``signatures/*.minisig``. :class:`TrustPolicy` decides, from a set of trusted
public keys, a ``threshold`` of distinct trusted signers and a list of revoked key ids, whether
a plugin may be loaded. ``Runtime.load`` asks it right after reading the manifest (once: the
bytes checked are the bytes parsed) and its cheap structural checks, before the schema is
applied and before the module is hashed or compiled. Signature files are read like every other
plugin file: regular files inside the plugin directory, size-capped, never blocking
(:func:`plugbox._manifest.read_plugin_file`). See docs/trust.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from .._errors import (
    KeyFileError,
    RevokedKeyError,
    SignatureError,
    UntrustedSignerError,
    UsageError,
    VerificationError,
)
from .._manifest import PluginFileRefused, read_plugin_file
from ._signing import (
    MAX_SIGNATURE_FILE_BYTES,
    PublicKey,
    Signature,
    normalize_key_id,
    verify_bytes,
)

if TYPE_CHECKING:
    from .._manifest import Manifest, ManifestSource

__all__ = [
    "MAX_SIGNATURES",
    "PRIMARY_SIGNATURE",
    "SIGNATURES_DIR",
    "SignatureCheck",
    "SignerInfo",
    "TrustMode",
    "TrustPolicy",
    "TrustReport",
    "inspect_signatures",
    "read_signature_file",
    "signature_files",
]

_log = logging.getLogger("plugbox.trust")

TrustMode = Literal["require", "warn", "off"]
_MODES: Final = ("require", "warn", "off")

#: The first signature of a plugin, next to its manifest.
PRIMARY_SIGNATURE: Final = "plugbox.json.minisig"
#: The directory, next to the manifest, holding further signers' ``*.minisig`` files.
SIGNATURES_DIR: Final = "signatures"
#: More signature files than this are refused: checking each costs two Ed25519 verifications,
#: and no real plugin needs dozens of signers.
MAX_SIGNATURES: Final = 32
# Entries of signatures/ looked at: listing a directory of millions of files is work too.
_MAX_SIGNATURE_DIR_ENTRIES: Final = 1024

SignatureStatus = Literal["valid", "duplicate", "invalid", "malformed", "unknown-key", "revoked",
                          "unverified"]


@dataclass(frozen=True)
class SignerInfo:
    """A trusted key whose valid signature vouches for a loaded plugin.

    ``key_id``: 16 hex digits as minisign prints them; ``key_name``: the trusted key's file name
    without ``.pub`` (or its key id); ``key_file``: that file, when the key came from one;
    ``trusted_comment``: the signature's trusted comment (covered by the signature);
    ``algorithm``: ``ED`` (prehashed) or ``Ed`` (legacy); ``signature_file``: the signature's
    path relative to the plugin directory.
    """

    key_id: str
    key_name: str
    key_file: str | None
    trusted_comment: str
    algorithm: str
    signature_file: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return {
            "key_id": self.key_id,
            "key_name": self.key_name,
            "key_file": self.key_file,
            "trusted_comment": self.trusted_comment,
            "algorithm": self.algorithm,
            "signature_file": self.signature_file,
        }


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome for one signature file.

    ``status``: ``valid``; ``duplicate`` (valid, but its key already counted);
    ``invalid`` (by a trusted key, but does not verify: tampering); ``malformed`` (not a
    minisign signature); ``unknown-key`` (by a key the policy does not trust: not counted);
    ``revoked`` (by a revoked key id: not counted); ``unverified`` (only parsed: no keys given).
    """

    file: str
    status: SignatureStatus
    detail: str
    key_id: str | None = None
    algorithm: str | None = None
    trusted_comment: str | None = None
    key_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return {
            "file": self.file,
            "status": self.status,
            "detail": self.detail,
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "trusted_comment": self.trusted_comment,
            "key_name": self.key_name,
        }


@dataclass(frozen=True)
class TrustReport:
    """The trust policy's verdict on one plugin: every signature's :class:`SignatureCheck`,
    the trusted :class:`SignerInfo` that count, and the error that refuses the plugin (``None``
    when the policy is satisfied)."""

    mode: TrustMode
    threshold: int
    checks: tuple[SignatureCheck, ...]
    signers: tuple[SignerInfo, ...]
    error: VerificationError | None

    @property
    def ok(self) -> bool:
        """True when the plugin satisfies the policy."""
        return self.error is None


def signature_files(directory: Path) -> list[Path]:
    """The signature files of the plugin in ``directory``: ``plugbox.json.minisig`` first (if
    present), then ``signatures/*.minisig`` sorted by name. Raises
    :class:`~plugbox.SignatureError` when ``signatures/`` has more than 1024 entries (it is not
    listed further)."""
    files: list[Path] = []
    primary = directory / PRIMARY_SIGNATURE
    if primary.is_file():
        files.append(primary)
    extra = directory / SIGNATURES_DIR
    if extra.is_dir():
        entries: list[Path] = []
        try:
            with os.scandir(extra) as scan:
                for entry in scan:
                    if len(entries) >= _MAX_SIGNATURE_DIR_ENTRIES:
                        raise SignatureError(
                            f"{extra} has more than {_MAX_SIGNATURE_DIR_ENTRIES} entries; a "
                            f"plugin carries at most {MAX_SIGNATURES} signatures",
                            path=str(extra))
                    entries.append(Path(entry.path))
        except OSError:
            entries = []
        files.extend(p for p in sorted(entries) if p.name.endswith(".minisig") and p.is_file())
    return files


def read_signature_file(file: Path, directory: Path) -> Signature:
    """Parse the signature ``file`` of the plugin in ``directory``, read like every plugin
    file (inside the directory, a regular file, capped, never blocking); raises
    :class:`~plugbox.SignatureError`."""
    try:
        data = read_plugin_file(directory, _relative(file, directory), MAX_SIGNATURE_FILE_BYTES)
    except PluginFileRefused as exc:
        raise SignatureError(f"{file}: the signature file {exc.reason}",
                             path=str(file)) from exc
    return Signature.parse(data, path=file)


def _relative(file: Path, directory: Path) -> str:
    try:
        return file.relative_to(directory).as_posix()
    except ValueError:
        return str(file)


def inspect_signatures(directory: Path) -> tuple[SignatureCheck, ...]:
    """Parse (without verifying) every signature of the plugin in ``directory``: who claims to
    have signed it. Trusted comments shown this way are *unverified*."""
    checks: list[SignatureCheck] = []
    try:
        files = signature_files(directory)
    except SignatureError as exc:
        return (SignatureCheck(SIGNATURES_DIR, "malformed", exc.message),)
    for file in files[: MAX_SIGNATURES + 1]:
        name = _relative(file, directory)
        try:
            sig = read_signature_file(file, directory)
        except SignatureError as exc:
            checks.append(SignatureCheck(name, "malformed", exc.message))
            continue
        checks.append(SignatureCheck(
            name, "unverified", "parsed only: no trusted keys were given to verify it",
            key_id=sig.key_id_hex, algorithm=sig.algorithm,
            trusted_comment=sig.trusted_comment,
        ))
    return tuple(checks)


def _load_keys(
    trusted_keys: str | os.PathLike[str] | PublicKey | Iterable[str | os.PathLike[str] | PublicKey],
) -> tuple[PublicKey, ...]:
    items: list[str | os.PathLike[str] | PublicKey]
    if isinstance(trusted_keys, (str, os.PathLike, PublicKey)):
        items = [trusted_keys]
    else:
        items = list(trusted_keys)
    keys: list[PublicKey] = []
    for item in items:
        if isinstance(item, PublicKey):
            keys.append(item)
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise UsageError(
                f"TrustPolicy(trusted_keys=...) takes a directory of *.pub files, key files or "
                f"PublicKey objects, not {item!r}"
            )
        path = Path(item)
        if path.is_dir():
            try:
                files = sorted(p for p in path.iterdir() if p.name.endswith(".pub"))
            except OSError as exc:
                raise KeyFileError(f"{path}: cannot list the trusted keys: "
                                   f"{exc.strerror or exc}", path=str(path)) from exc
            keys.extend(PublicKey.from_file(f) for f in files if f.is_file())
        elif path.exists():
            keys.append(PublicKey.from_file(path))
        else:
            raise KeyFileError(
                f"{path}: no such trusted key file or directory (give a directory of minisign "
                f"*.pub files, or key files)",
                path=str(path),
            )
    return tuple(keys)


class TrustPolicy:
    """Which signatures a runtime requires before it loads a plugin.

    ``trusted_keys``: a directory of minisign public keys (every ``*.pub`` in it), a key file,
    a :class:`~plugbox.trust._signing.PublicKey`, or a list of these. ``mode``:

    * ``"require"`` (the default, and what any install path should use): the plugin must carry
      valid signatures by at least ``threshold`` distinct trusted, non-revoked keys, and every
      signature by a trusted key must verify; otherwise loading raises
      :class:`~plugbox.SignatureError`, :class:`~plugbox.UntrustedSignerError` or
      :class:`~plugbox.RevokedKeyError`.
    * ``"warn"``: the same checks, but a failure is logged as a WARNING naming the plugin and
      the plugin loads anyway.
    * ``"off"``: signatures are not read at all. For development only: every load logs a
      WARNING naming the plugin.

    ``revoked``: key ids (16 hex digits, as minisign prints them) whose signatures never count,
    even if the key is in ``trusted_keys``.

    ``plugbox.Runtime()`` without ``trust=`` uses :meth:`development`: mode ``off`` that logs at
    DEBUG only, so that library code and tests can load unsigned plugins quietly. The
    ``plugbox`` command line's ``verify`` always requires signatures; hosts that install plugins
    from elsewhere should pass ``TrustPolicy(trusted_keys=..., mode="require")``.
    """

    __slots__ = ("keys", "mode", "threshold", "revoked", "_by_id", "_development")

    keys: tuple[PublicKey, ...]
    mode: TrustMode
    threshold: int
    revoked: frozenset[str]

    def __init__(
        self,
        trusted_keys: (
            str | os.PathLike[str] | PublicKey | Iterable[str | os.PathLike[str] | PublicKey]
        ) = (),
        *,
        mode: TrustMode = "require",
        threshold: int = 1,
        revoked: Iterable[str] = frozenset(),
    ) -> None:
        if mode not in _MODES:
            raise UsageError(f"TrustPolicy(mode=...) must be 'require', 'warn' or 'off', not "
                             f"{mode!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise UsageError(f"TrustPolicy(threshold=...) must be a positive integer, not "
                             f"{threshold!r}")
        if isinstance(revoked, str):
            raise UsageError("TrustPolicy(revoked=...) must be a collection of key ids, not a "
                             "single string")
        try:
            revoked_ids = frozenset(normalize_key_id(k) for k in revoked)
        except (ValueError, AttributeError) as exc:
            raise UsageError(f"TrustPolicy(revoked=...): {exc}") from exc
        keys = _load_keys(trusted_keys)
        by_id: dict[str, PublicKey] = {}
        for key in keys:
            known = by_id.get(key.key_id_hex)
            if known is not None and known.key != key.key:
                raise UsageError(
                    f"two different trusted keys share the key id {key.key_id_hex} "
                    f"({known.name} and {key.name}); key ids must be unique"
                )
            by_id.setdefault(key.key_id_hex, key)
        usable = [k for k in by_id if k not in revoked_ids]
        if mode == "require" and not usable:
            raise UsageError(
                "TrustPolicy(mode='require') needs at least one trusted, non-revoked public key "
                "(trusted_keys=DIR of minisign *.pub files); nothing could ever load otherwise"
            )
        if mode != "off" and usable and threshold > len(usable):
            raise UsageError(
                f"TrustPolicy(threshold={threshold}) can never be met with "
                f"{len(usable)} trusted, non-revoked key(s)"
            )
        self.keys = tuple(by_id.values())
        self.mode = mode
        self.threshold = threshold
        self.revoked = revoked_ids
        self._by_id: Mapping[str, PublicKey] = by_id
        self._development = False

    @classmethod
    def development(cls) -> TrustPolicy:
        """The library default: signatures are not checked, and that is logged at DEBUG only.

        Meant for tests and local development; the plugins' signers are then empty.
        """
        policy = cls(mode="off")
        policy._development = True
        return policy

    @property
    def is_development(self) -> bool:
        """True for :meth:`development` (mode off without the per-load warning)."""
        return self._development

    def __repr__(self) -> str:
        keys = ", ".join(k.name for k in self.keys)
        return (f"TrustPolicy(mode={self.mode!r}, threshold={self.threshold}, keys=[{keys}], "
                f"revoked={sorted(self.revoked)})")

    # -- the verdict ---------------------------------------------------------------------

    def evaluate(self, directory: Path, manifest_bytes: bytes, *,
                 plugin: str | None = None) -> TrustReport:
        """Check every signature of the plugin in ``directory`` against ``manifest_bytes`` (the
        exact bytes of its ``plugbox.json``) and decide, whatever the mode, whether this
        policy's requirements are met. Never raises for a problem with the plugin: the error
        that would refuse it is in :attr:`TrustReport.error`."""
        label = f"plugin {plugin!r}" if plugin else str(directory)
        try:
            files = signature_files(directory)
        except SignatureError as exc:
            return TrustReport(self.mode, self.threshold, (), (), SignatureError(
                f"{label}: {exc.message}", plugin=plugin, path=exc.path))
        checks: list[SignatureCheck] = []
        signers: list[SignerInfo] = []
        counted: set[str] = set()
        revoked_seen: list[str] = []
        unknown_seen: list[str] = []
        tampered: SignatureError | None = None

        if len(files) > MAX_SIGNATURES:
            too_many = SignatureError(
                f"{label} has {len(files)} signature files; at most {MAX_SIGNATURES} are read",
                plugin=plugin,
            )
            return TrustReport(self.mode, self.threshold, (), (), too_many)

        for file in files:
            name = _relative(file, directory)
            try:
                sig = read_signature_file(file, directory)
            except SignatureError as exc:
                checks.append(SignatureCheck(name, "malformed", exc.message))
                tampered = tampered or SignatureError(
                    f"{label}: {exc.message}. A signature file that cannot be read is treated "
                    f"as tampering; remove it or replace it with a valid signature",
                    plugin=plugin, path=str(file),
                )
                continue
            key_id = sig.key_id_hex
            common = {"key_id": key_id, "algorithm": sig.algorithm,
                      "trusted_comment": sig.trusted_comment}
            if key_id in self.revoked:
                revoked_seen.append(key_id)
                checks.append(SignatureCheck(name, "revoked", f"key {key_id} is revoked",
                                             **common))
                continue
            key = self._by_id.get(key_id)
            if key is None:
                unknown_seen.append(key_id)
                checks.append(SignatureCheck(name, "unknown-key",
                                             f"key {key_id} is not a trusted key", **common))
                continue
            try:
                verify_bytes(manifest_bytes, sig, key)
            except SignatureError as exc:
                checks.append(SignatureCheck(name, "invalid", exc.message, key_name=key.name,
                                             **common))
                tampered = tampered or SignatureError(
                    f"{label}: {name}: {exc.message}", plugin=plugin, key_id=key_id,
                    path=str(file),
                )
                continue
            if key_id in counted:
                checks.append(SignatureCheck(
                    name, "duplicate",
                    f"valid, but key {key_id} already signed; each key counts once",
                    key_name=key.name, **common))
                continue
            counted.add(key_id)
            checks.append(SignatureCheck(name, "valid", f"valid signature by {key.name}",
                                         key_name=key.name, **common))
            signers.append(SignerInfo(
                key_id=key_id,
                key_name=key.name,
                key_file=None if key.path is None else str(key.path),
                trusted_comment=sig.trusted_comment,
                algorithm=sig.algorithm,
                signature_file=name,
            ))

        error: VerificationError | None = tampered
        if error is None and len(counted) < self.threshold:
            error = self._shortfall(label, plugin, directory, files, len(counted),
                                    revoked_seen, unknown_seen)
        return TrustReport(self.mode, self.threshold, tuple(checks), tuple(signers), error)

    def _shortfall(
        self, label: str, plugin: str | None, directory: Path, files: list[Path], valid: int,
        revoked_seen: list[str], unknown_seen: list[str],
    ) -> UntrustedSignerError:
        found = tuple(dict.fromkeys([*revoked_seen, *unknown_seen]))
        need = (f"{self.threshold} distinct trusted keys" if self.threshold > 1
                else "a trusted key")
        if not files:
            return UntrustedSignerError(
                f"{label} is not signed: there is no {PRIMARY_SIGNATURE} or "
                f"{SIGNATURES_DIR}/*.minisig in {directory}, and this runtime requires a "
                f"signature by {need}. Sign it with 'plugbox sign {directory} --key KEY', or "
                f"load it with TrustPolicy(mode='warn') or mode='off' during development",
                plugin=plugin,
            )
        parts = [f"{valid} valid signature(s) by trusted keys, {self.threshold} required"]
        if revoked_seen:
            parts.append(f"revoked key(s): {', '.join(dict.fromkeys(revoked_seen))}")
        if unknown_seen:
            parts.append(f"untrusted key(s): {', '.join(dict.fromkeys(unknown_seen))}")
        cls = RevokedKeyError if revoked_seen else UntrustedSignerError
        hint = (
            "get it re-signed by a key that is not revoked" if revoked_seen
            else "add the signer's public key to the trusted keys if you trust it, or get the "
                 "plugin signed by a trusted key"
        )
        return cls(f"{label} is not signed by {need} ({'; '.join(parts)}); {hint}",
                   plugin=plugin, key_ids=found)

    def check(self, manifest: Manifest | ManifestSource) -> tuple[SignerInfo, ...]:
        """Apply this policy to the plugin whose manifest was just read.

        ``manifest`` is a validated :class:`~plugbox.Manifest` or, so that signatures are
        checked before the (more expensive) schema validation, a
        :func:`~plugbox._manifest.read_manifest` result. The signatures are checked against the
        bytes it was parsed from (``manifest.data``), never a second read of the file.
        Returns the trusted signers (empty in mode ``off``). In mode ``require`` raises what
        :meth:`evaluate` found; in mode ``warn`` logs it as a WARNING instead.
        """
        plugin = manifest.name
        if self.mode == "off":
            level = logging.DEBUG if self._development else logging.WARNING
            _log.log(level, "SIGNATURE CHECKS ARE OFF: loading plugin %r (%s) without checking "
                     "who signed it; use this for development only", plugin, manifest.path)
            return ()
        report = self.evaluate(manifest.directory, manifest.data, plugin=plugin)
        if report.error is not None:
            if self.mode == "require":
                raise report.error
            _log.warning("plugin %r loads although its signatures fail the trust policy "
                         "(mode 'warn'): %s", plugin, report.error.message)
        return report.signers
