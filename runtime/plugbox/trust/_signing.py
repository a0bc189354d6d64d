"""minisign-compatible Ed25519 keys and signatures.

The file formats are minisign's, byte for byte, so that ``minisign -V`` verifies what plugbox
signs and plugbox verifies what ``minisign -S`` signs:

* **public key**: an ``untrusted comment:`` line, then base64 of
  ``"Ed" || key_id (8 bytes) || Ed25519 public key (32 bytes)``;
* **signature**: an ``untrusted comment:`` line; base64 of
  ``algorithm (2) || key_id (8) || Ed25519 signature (64)``, where algorithm ``"ED"`` signs the
  BLAKE2b-512 digest of the file (minisign's default; plugbox writes only this) and ``"Ed"``
  the file itself (legacy; still accepted); a ``trusted comment:`` line; and base64 of a
  *global* signature over ``signature || trusted comment``, which is what makes the trusted
  comment trustworthy;
* **secret key**: an ``untrusted comment:`` line, then base64 of ``"Ed" || kdf || "B2" ||
  salt (32) || opslimit (8) || memlimit (8) || key_id (8) || seed || public key (64) ||
  checksum (32)``. plugbox reads and writes the unencrypted variant only (kdf ``"\\0\\0"``, as
  ``minisign -G -W`` writes); password-encrypted keys (kdf ``"Sc"``) are refused with a clear
  message rather than prompting for a password.

Key ids are shown as minisign shows them: the 8 bytes read as a little-endian integer, in 16
upper-case hex digits.

The cryptography is the ``cryptography`` package's Ed25519 and ``hashlib``'s BLAKE2b; nothing
here is hand-written crypto. ``cryptography`` is imported only when a key is used, so loading
unsigned plugins in development mode does not need it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from .._errors import KeyFileError, SignatureError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "ALG_LEGACY",
    "ALG_PREHASHED",
    "MAX_SIGNATURE_FILE_BYTES",
    "PublicKey",
    "SecretKey",
    "Signature",
    "format_key_id",
    "normalize_key_id",
    "sign_bytes",
    "verify_bytes",
    "write_keypair",
]

Algorithm = Literal["ED", "Ed"]

#: Signs the BLAKE2b-512 digest of the file: minisign's default and what plugbox writes.
ALG_PREHASHED: Final = "ED"
#: Signs the file's bytes directly: minisign's legacy algorithm, accepted when verifying.
ALG_LEGACY: Final = "Ed"

_KEY_ALG: Final = b"Ed"
_KDF_NONE: Final = b"\x00\x00"
_KDF_SCRYPT: Final = b"Sc"
_CHK_ALG: Final = b"B2"
_KEY_ID_BYTES: Final = 8
_UNTRUSTED_PREFIX: Final = b"untrusted comment: "
_TRUSTED_PREFIX: Final = b"trusted comment: "

#: Public-key and secret-key files are two short lines; anything larger is the wrong file.
MAX_KEY_FILE_BYTES: Final = 4096
#: minisign caps a trusted comment line at 8 KiB; with the other lines that is under 9 KiB, so a
#: larger signature file is refused unread rather than parsed.
MAX_SIGNATURE_FILE_BYTES: Final = 16384
# minisign's TRUSTEDCOMMENTMAXBYTES (8192) counts the prefix and the terminating NUL.
_MAX_TRUSTED_COMMENT: Final = 8192 - len(_TRUSTED_PREFIX) - 1
# minisign reads the untrusted comment line into a 1024-byte buffer.
_MAX_UNTRUSTED_COMMENT: Final = 1024 - len(_UNTRUSTED_PREFIX) - 2


def _need_cryptography() -> None:
    """Explain how to get ``cryptography`` when it is missing (it is imported lazily)."""
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the package is a plugbox dependency
        raise UsageError(
            "signing and verifying plugins needs the 'cryptography' package "
            "(pip install cryptography)"
        ) from exc


def _private_key(seed: bytes) -> ed25519.Ed25519PrivateKey:
    _need_cryptography()
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def _public_bytes(private: ed25519.Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    _need_cryptography()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        # ValueError: 32 bytes that are not a valid curve point; such a key verifies nothing.
        return False
    return True


# --------------------------------------------------------------------------------------------
# Key ids


def format_key_id(raw: bytes) -> str:
    """A key id as minisign prints it: little-endian, 16 upper-case hex digits."""
    return raw[::-1].hex().upper()


def normalize_key_id(text: str) -> str:
    """``text`` as a canonical key id (16 upper-case hex digits); raises ``ValueError``.

    minisign prints key ids with ``%llX``, without leading zeros, so 1 to 16 digits are
    accepted and zero-padded."""
    cleaned = text.strip().upper()
    if not 1 <= len(cleaned) <= 16 or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise ValueError(f"not a key id (up to 16 hex digits, as minisign prints it): {text!r}")
    return cleaned.rjust(16, "0")


# --------------------------------------------------------------------------------------------
# Parsing helpers


def _lines(data: bytes) -> list[bytes]:
    """Lines without their ``\\n`` or ``\\r\\n``; trailing blank lines dropped."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _b64(line: bytes, size: int, what: str) -> bytes | None:
    """Strict standard base64 of exactly ``size`` bytes, else ``None``."""
    try:
        raw = base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def _read_capped(path: Path, cap: int, error: type[KeyFileError] | type[SignatureError],
                 what: str) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(cap + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}",
                    path=str(path)) from exc
    if len(data) > cap:
        raise error(
            f"{path}: larger than {cap} bytes, too large for a minisign {what}; is this the "
            f"right file?",
            path=str(path),
        )
    return data


def _comment_text(raw: bytes) -> str:
    # Comments are informative text; show undecodable bytes rather than refusing the file.
    return raw.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Public keys


@dataclass(frozen=True)
class PublicKey:
    """A minisign Ed25519 public key: ``key_id`` (8 raw bytes), ``key`` (32 bytes), the
    file's untrusted ``comment``, and the ``path`` it was read from (``None`` if parsed from
    text)."""

    key_id: bytes
    key: bytes = field(repr=False)
    comment: str = ""
    path: Path | None = None

    @property
    def key_id_hex(self) -> str:
        """The key id as minisign prints it (16 upper-case hex digits)."""
        return format_key_id(self.key_id)

    @property
    def name(self) -> str:
        """A short name for messages: the key file's name without ``.pub``, else the key id."""
        if self.path is not None:
            return self.path.name.removesuffix(".pub")
        return self.key_id_hex

    @classmethod
    def from_base64(cls, text: str | bytes, *, comment: str = "",
                    path: Path | None = None) -> PublicKey:
        """Parse the base64 key line alone (what ``minisign -P`` takes)."""
        line = text.encode("ascii", errors="replace") if isinstance(text, str) else text
        where = str(path) if path is not None else "public key"
        raw = _b64(line, 2 + _KEY_ID_BYTES + 32, "public key")
        if raw is None:
            raise KeyFileError(
                f"{where}: not a minisign public key (expected base64 of 42 bytes on the line "
                f"after the comment)",
                path=None if path is None else str(path),
            )
        if raw[:2] != _KEY_ALG:
            raise KeyFileError(
                f"{where}: unsupported public key algorithm {raw[:2]!r} (minisign keys are Ed)",
                path=None if path is None else str(path),
            )
        return cls(key_id=raw[2:10], key=raw[10:], comment=comment, path=path)

    @classmethod
    def parse(cls, data: bytes | str, *, path: Path | None = None) -> PublicKey:
        """Parse a minisign public key file's contents; raises :class:`~plugbox.KeyFileError`."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        where = str(path) if path is not None else "public key"
        lines = _lines(raw)
        if len(lines) != 2 or not lines[0].startswith(_UNTRUSTED_PREFIX):
            raise KeyFileError(
                f"{where}: not a minisign public key file (expected two lines: 'untrusted "
                f"comment: ...' and the base64 key, as written by minisign -G or plugbox keygen)",
                path=None if path is None else str(path),
            )
        comment = _comment_text(lines[0][len(_UNTRUSTED_PREFIX):])
        return cls.from_base64(lines[1], comment=comment, path=path)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Read a minisign public key file (``*.pub``)."""
        file = Path(path)
        return cls.parse(
            _read_capped(file, MAX_KEY_FILE_BYTES, KeyFileError, "public key"), path=file
        )

    def to_base64(self) -> str:
        """The base64 key line (what ``minisign -P`` takes)."""
        return base64.b64encode(_KEY_ALG + self.key_id + self.key).decode("ascii")

    def to_text(self) -> str:
        """The public key file's contents, in minisign's format."""
        comment = self.comment or f"minisign public key {self.key_id_hex}"
        return f"untrusted comment: {_one_line(comment)}\n{self.to_base64()}\n"


def _one_line(text: str, limit: int = _MAX_UNTRUSTED_COMMENT) -> str:
    # Comments are single lines in every minisign file; a newline would corrupt the format.
    flat = text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    encoded = flat.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


# --------------------------------------------------------------------------------------------
# Secret keys


@dataclass(frozen=True)
class SecretKey:
    """An unencrypted minisign secret key: ``key_id``, the Ed25519 ``seed`` (32 bytes, never
    shown in ``repr``) and its ``public`` key (32 bytes)."""

    key_id: bytes
    seed: bytes = field(repr=False)
    public: bytes = field(repr=False)
    path: Path | None = None

    @property
    def key_id_hex(self) -> str:
        """The key id as minisign prints it (16 upper-case hex digits)."""
        return format_key_id(self.key_id)

    @classmethod
    def generate(cls) -> SecretKey:
        """A new random key pair with a random key id (as ``minisign -G`` makes them)."""
        _need_cryptography()
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        private = ed25519.Ed25519PrivateKey.generate()
        seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(key_id=secrets.token_bytes(_KEY_ID_BYTES), seed=seed,
                   public=_public_bytes(private))

    def public_key(self, comment: str = "") -> PublicKey:
        """The matching public key."""
        return PublicKey(key_id=self.key_id, key=self.public, comment=comment)

    def _checksum(self) -> bytes:
        # minisign: BLAKE2b-256 over sig_alg || key_id || (seed || public key).
        return hashlib.blake2b(
            _KEY_ALG + self.key_id + self.seed + self.public, digest_size=32
        ).digest()

    @classmethod
    def parse(cls, data: bytes | str, *, path: Path | None = None) -> SecretKey:
        """Parse an unencrypted minisign secret key file; raises
        :class:`~plugbox.KeyFileError` (also for password-protected keys)."""
        raw_text = data.encode("utf-8") if isinstance(data, str) else data
        where = str(path) if path is not None else "secret key"
        file = None if path is None else str(path)
        lines = _lines(raw_text)
        if len(lines) != 2:
            raise KeyFileError(
                f"{where}: not a minisign secret key file (expected two lines: a comment and the "
                f"base64 key, as written by minisign -G -W or plugbox keygen)",
                path=file,
            )
        raw = _b64(lines[1], 158, "secret key")
        if raw is None:
            raise KeyFileError(
                f"{where}: not a minisign secret key (expected base64 of 158 bytes on the second "
                f"line)",
                path=file,
            )
        sig_alg, kdf_alg, chk_alg = raw[0:2], raw[2:4], raw[4:6]
        if sig_alg != _KEY_ALG:
            raise KeyFileError(f"{where}: unsupported key algorithm {sig_alg!r}", path=file)
        if chk_alg != _CHK_ALG:
            raise KeyFileError(f"{where}: unsupported checksum algorithm {chk_alg!r}", path=file)
        if kdf_alg == _KDF_SCRYPT:
            raise KeyFileError(
                f"{where}: this secret key is protected by a password, which plugbox does not "
                f"prompt for; make an unencrypted key for automated signing with "
                f"'plugbox keygen' or 'minisign -G -W', and keep it in a secret store",
                path=file,
            )
        if kdf_alg != _KDF_NONE:
            raise KeyFileError(f"{where}: unsupported key derivation {kdf_alg!r}", path=file)
        key_id, seed, public, checksum = raw[54:62], raw[62:94], raw[94:126], raw[126:158]
        key = cls(key_id=key_id, seed=seed, public=public, path=path)
        # minisign -W leaves the checksum zeroed for unencrypted keys; when one is present it
        # must match, so that a corrupted key is reported instead of making bad signatures.
        if checksum != bytes(32) and checksum != key._checksum():
            raise KeyFileError(f"{where}: the secret key's checksum does not match: the file "
                               f"is corrupted", path=file)
        if _public_bytes(_private_key(seed)) != public:
            raise KeyFileError(
                f"{where}: the secret key's public half does not match its seed: the file is "
                f"corrupted",
                path=file,
            )
        return key

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SecretKey:
        """Read an unencrypted minisign secret key file (``plugbox.key``, ``minisign -G -W``)."""
        file = Path(path)
        return cls.parse(
            _read_capped(file, MAX_KEY_FILE_BYTES, KeyFileError, "secret key"), path=file
        )

    def to_text(self, comment: str = "plugbox secret key (unencrypted)") -> str:
        """The secret key file's contents in minisign's unencrypted format (usable with
        ``minisign -S -s``)."""
        raw = (
            _KEY_ALG + _KDF_NONE + _CHK_ALG + bytes(32) + bytes(8) + bytes(8)
            + self.key_id + self.seed + self.public + self._checksum()
        )
        return (
            f"untrusted comment: {_one_line(comment)}\n"
            f"{base64.b64encode(raw).decode('ascii')}\n"
        )


def write_keypair(
    directory: str | os.PathLike[str],
    *,
    comment: str | None = None,
    force: bool = False,
    stem: str = "plugbox",
) -> tuple[Path, Path, SecretKey]:
    """Generate a key pair and write ``<stem>.key`` (mode 0600) and ``<stem>.pub`` into
    ``directory`` (created if needed). Refuses to overwrite existing files unless ``force``.

    Returns the secret key's path, the public key's path and the key.
    """
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror or exc}") from exc
    key_path, pub_path = out / f"{stem}.key", out / f"{stem}.pub"
    if not force:
        for existing in (key_path, pub_path):
            if existing.exists() or existing.is_symlink():
                raise UsageError(
                    f"{existing} already exists; refusing to overwrite a key (use --force to "
                    f"replace it, after making sure nothing still needs the old one)"
                )
    key = SecretKey.generate()
    label = comment or "plugbox"
    pub_text = key.public_key(f"{label} public key {key.key_id_hex}").to_text()
    secret_text = key.to_text(f"{label} secret key {key.key_id_hex} (unencrypted)")
    try:
        # The secret key is created 0600 from the start (never briefly world-readable), and
        # O_NOFOLLOW keeps a planted symlink from redirecting it.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        if not force:
            flags |= os.O_EXCL
        if force and key_path.is_symlink():
            key_path.unlink()
        fd = os.open(key_path, flags, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as stream:
            stream.write(secret_text)
        os.chmod(key_path, 0o600)
        pub_path.write_text(pub_text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the key pair into {out}: {exc.strerror or exc}") from exc
    return key_path, pub_path, key


# --------------------------------------------------------------------------------------------
# Signatures


@dataclass(frozen=True)
class Signature:
    """A parsed minisign signature (``.minisig``).

    ``trusted_comment_bytes`` is exactly what the global signature covers;
    :attr:`trusted_comment` is its text.
    """

    algorithm: Algorithm
    key_id: bytes
    signature: bytes = field(repr=False)
    trusted_comment_bytes: bytes
    global_signature: bytes = field(repr=False)
    untrusted_comment: str = ""

    @property
    def key_id_hex(self) -> str:
        """The signing key's id as minisign prints it."""
        return format_key_id(self.key_id)

    @property
    def trusted_comment(self) -> str:
        """The trusted comment as text (undecodable bytes replaced)."""
        return _comment_text(self.trusted_comment_bytes)

    @classmethod
    def parse(cls, data: bytes | str, *, path: Path | None = None) -> Signature:
        """Parse a ``.minisig`` file's contents; raises :class:`~plugbox.SignatureError`."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        where = str(path) if path is not None else "signature"
        file = None if path is None else str(path)

        def bad(problem: str) -> SignatureError:
            return SignatureError(
                f"{where}: not a valid minisign signature: {problem}", path=file
            )

        if len(raw) > MAX_SIGNATURE_FILE_BYTES:
            raise bad(f"larger than {MAX_SIGNATURE_FILE_BYTES} bytes")
        lines = _lines(raw)
        if len(lines) != 4:
            raise bad(
                f"expected 4 lines (untrusted comment, signature, trusted comment, global "
                f"signature), found {len(lines)}"
            )
        if not lines[0].startswith(_UNTRUSTED_PREFIX):
            raise bad("the first line must start with 'untrusted comment: '")
        sig = _b64(lines[1], 2 + _KEY_ID_BYTES + 64, "signature")
        if sig is None:
            raise bad("the second line is not base64 of a 74-byte signature")
        algorithm: Algorithm
        if sig[:2] == b"ED":
            algorithm = "ED"
        elif sig[:2] == b"Ed":
            algorithm = "Ed"
        else:
            raise bad(f"unsupported signature algorithm {sig[:2]!r} (expected ED or Ed)")
        if not lines[2].startswith(_TRUSTED_PREFIX):
            raise bad("the third line must start with 'trusted comment: '")
        trusted = lines[2][len(_TRUSTED_PREFIX):]
        if b"\x00" in trusted or b"\r" in trusted:
            # minisign handles the comment as a C string: a NUL would make it verify a
            # different (truncated) comment than plugbox does.
            raise bad("the trusted comment contains a NUL or carriage-return byte")
        if len(trusted) > _MAX_TRUSTED_COMMENT:
            raise bad(f"the trusted comment is longer than {_MAX_TRUSTED_COMMENT} bytes")
        global_sig = _b64(lines[3], 64, "global signature")
        if global_sig is None:
            raise bad("the fourth line is not base64 of a 64-byte global signature")
        return cls(
            algorithm=algorithm,
            key_id=sig[2:10],
            signature=sig[10:],
            trusted_comment_bytes=trusted,
            global_signature=global_sig,
            untrusted_comment=_comment_text(lines[0][len(_UNTRUSTED_PREFIX):]),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Signature:
        """Read and parse a ``.minisig`` file."""
        file = Path(path)
        return cls.parse(
            _read_capped(file, MAX_SIGNATURE_FILE_BYTES, SignatureError, "signature"), path=file
        )

    def to_text(self) -> str:
        """The ``.minisig`` file's contents in minisign's format."""
        sig = self.algorithm.encode("ascii") + self.key_id + self.signature
        return (
            f"untrusted comment: {_one_line(self.untrusted_comment)}\n"
            f"{base64.b64encode(sig).decode('ascii')}\n"
            f"trusted comment: {self.trusted_comment}\n"
            f"{base64.b64encode(self.global_signature).decode('ascii')}\n"
        )


def _message(data: bytes, algorithm: Algorithm) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest() if algorithm == "ED" else data


def sign_bytes(
    data: bytes,
    key: SecretKey,
    *,
    trusted_comment: str,
    untrusted_comment: str = "signature from plugbox secret key",
) -> Signature:
    """Sign ``data`` with ``key`` the way ``minisign -S`` does (prehashed ``ED``), with a
    trusted comment covered by the global signature.

    Raises :class:`~plugbox.UsageError` when the trusted comment cannot be stored (a newline or
    NUL, or longer than minisign allows).
    """
    if any(c in trusted_comment for c in "\r\n\x00"):
        raise UsageError("the trusted comment must be a single line without NUL characters")
    comment = trusted_comment.encode("utf-8")
    if len(comment) > _MAX_TRUSTED_COMMENT:
        raise UsageError(f"the trusted comment is longer than {_MAX_TRUSTED_COMMENT} bytes")
    private = _private_key(key.seed)
    signature = private.sign(_message(data, "ED"))
    global_signature = private.sign(signature + comment)
    return Signature(
        algorithm="ED",
        key_id=key.key_id,
        signature=signature,
        trusted_comment_bytes=comment,
        global_signature=global_signature,
        untrusted_comment=_one_line(untrusted_comment),
    )


def verify_bytes(data: bytes, signature: Signature, key: PublicKey) -> None:
    """Check ``signature`` over ``data`` with ``key``, as ``minisign -V`` does.

    The key ids must match, the signature must verify over the data (its BLAKE2b-512 digest
    for ``ED``), and the global signature over ``signature || trusted comment``. Raises
    :class:`~plugbox.SignatureError` naming which of these failed.
    """
    key_id = key.key_id_hex
    if signature.key_id != key.key_id:
        raise SignatureError(
            f"the signature was made by key {signature.key_id_hex}, not by key {key_id} "
            f"({key.name})",
            key_id=signature.key_id_hex,
        )
    if not _ed25519_verify(key.key, signature.signature, _message(data, signature.algorithm)):
        raise SignatureError(
            f"the signature by key {key_id} ({key.name}) does not verify: the signed file was "
            f"modified after signing, or the signature was made for a different file",
            key_id=key_id,
        )
    if not _ed25519_verify(
        key.key, signature.global_signature, signature.signature + signature.trusted_comment_bytes
    ):
        raise SignatureError(
            f"the trusted comment of the signature by key {key_id} ({key.name}) does not "
            f"verify: the comment or the global signature was modified after signing",
            key_id=key_id,
        )
