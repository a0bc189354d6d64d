"""Signatures: minisign formats and interop (both ways, with the real minisign binary), and the
trust policy in Runtime.load / Runtime.verify: tampering, untrusted and revoked keys, threshold,
modes require/warn/off, signers on the plugin."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

import plugbox
from plugbox.trust._signing import (
    PublicKey,
    SecretKey,
    Signature,
    normalize_key_id,
    sign_bytes,
    verify_bytes,
    write_keypair,
)
from plugbox.trust._trust import PRIMARY_SIGNATURE, SIGNATURES_DIR
from tests.conftest import COUNTER_BODY, ECHO_BODY, wat_module, write_plugin

MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(MINISIGN is None, reason="minisign is not installed "
                                    "(apt-get install minisign)")


def minisign(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    assert MINISIGN is not None
    return subprocess.run([MINISIGN, *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def make_key(directory: Path, name: str) -> tuple[SecretKey, Path]:
    """A key pair: the secret key, and its public key written as ``directory/<name>.pub``."""
    key = SecretKey.generate()
    directory.mkdir(parents=True, exist_ok=True)
    pub = directory / f"{name}.pub"
    pub.write_text(key.public_key(f"{name} public key").to_text())
    return key, pub


def sign_plugin(directory: Path, key: SecretKey, *, comment: str = "release",
                extra: bool = False) -> Path:
    """Sign ``directory/plugbox.json`` as plugbox sign does; returns the signature file."""
    data = (directory / "plugbox.json").read_bytes()
    dest = (directory / SIGNATURES_DIR / f"{key.key_id_hex}.minisig" if extra
            else directory / PRIMARY_SIGNATURE)
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(sign_bytes(data, key, trusted_comment=comment).to_text())
    return dest


@pytest.fixture
def trusted(tmp_path: Path) -> Path:
    return tmp_path / "trusted"


@pytest.fixture
def alice(trusted: Path) -> SecretKey:
    return make_key(trusted, "alice")[0]


@pytest.fixture
def bob(trusted: Path) -> SecretKey:
    return make_key(trusted, "bob")[0]


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "plugin", wat_module(COUNTER_BODY), name="counter-wat")


def runtime(tmp_path: Path, cache_dir: Path, trust: plugbox.TrustPolicy | None) -> plugbox.Runtime:
    return plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=cache_dir, trust=trust)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- formats -------------------------------------------------------------------------------------


def test_keys_and_signatures_round_trip_through_their_text_form(tmp_path: Path) -> None:
    key = SecretKey.generate()
    again = SecretKey.parse(key.to_text())
    assert (again.key_id, again.seed, again.public) == (key.key_id, key.seed, key.public)
    pub = key.public_key("c")
    assert PublicKey.parse(pub.to_text()) == PublicKey(pub.key_id, pub.key, "c")
    assert PublicKey.from_base64(pub.to_base64()).key == key.public
    sig = sign_bytes(b"data", key, trusted_comment="tc")
    parsed = Signature.parse(sig.to_text())
    assert parsed == sig
    assert parsed.algorithm == "ED" and parsed.trusted_comment == "tc"
    verify_bytes(b"data", parsed, pub)
    assert "seed" not in repr(key) and key.seed.hex() not in repr(key)


def test_write_keypair_makes_a_private_secret_key_and_refuses_to_overwrite(
        tmp_path: Path) -> None:
    key_path, pub_path, key = write_keypair(tmp_path / "keys", comment="ci")
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert SecretKey.from_file(key_path).seed == key.seed
    assert PublicKey.from_file(pub_path).key_id == key.key_id
    assert key.key_id_hex in pub_path.read_text()
    with pytest.raises(plugbox.UsageError, match="already exists"):
        write_keypair(tmp_path / "keys")
    _, _, other = write_keypair(tmp_path / "keys", force=True)
    assert other.key_id != key.key_id


def test_verification_failures_say_what_failed() -> None:
    key, other = SecretKey.generate(), SecretKey.generate()
    pub = key.public_key()
    sig = sign_bytes(b"data", key, trusted_comment="tc")
    with pytest.raises(plugbox.SignatureError, match="modified after signing"):
        verify_bytes(b"dat4", sig, pub)
    with pytest.raises(plugbox.SignatureError, match=f"made by key {key.key_id_hex}"):
        verify_bytes(b"data", sig, other.public_key())
    forged = Signature(sig.algorithm, sig.key_id, sig.signature, b"tc2", sig.global_signature)
    with pytest.raises(plugbox.SignatureError, match="trusted comment"):
        verify_bytes(b"data", forged, pub)
    # Same key id, different key: the signature itself fails.
    impostor = PublicKey(key.key_id, other.public)
    with pytest.raises(plugbox.SignatureError, match="does not verify"):
        verify_bytes(b"data", sig, impostor)


def test_password_protected_and_corrupted_secret_keys_are_refused() -> None:
    text = SecretKey.generate().to_text()
    comment, line = text.splitlines()
    raw = bytearray(base64.b64decode(line))
    encrypted = bytes(raw[:2]) + b"Sc" + bytes(raw[4:])
    with pytest.raises(plugbox.KeyFileError, match="password") as info:
        SecretKey.parse(f"{comment}\n{base64.b64encode(encrypted).decode()}\n")
    assert "minisign -G -W" in str(info.value)
    raw[70] ^= 0x01  # inside the seed: the checksum (and the public half) no longer match
    with pytest.raises(plugbox.KeyFileError, match="corrupted"):
        SecretKey.parse(f"{comment}\n{base64.b64encode(bytes(raw)).decode()}\n")


def test_legacy_unhashed_signatures_are_accepted() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = SecretKey.generate()
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    sig = private.sign(b"payload")
    legacy = Signature("Ed", key.key_id, sig, b"old", private.sign(sig + b"old"))
    verify_bytes(b"payload", Signature.parse(legacy.to_text()), key.public_key())
    with pytest.raises(plugbox.SignatureError):
        # The same signature read as prehashed must not verify.
        verify_bytes(b"payload", Signature("ED", key.key_id, sig, b"old",
                                           legacy.global_signature), key.public_key())


# -- interop with the minisign binary --------------------------------------------------------


@needs_minisign
def test_manifest_signed_by_minisign_verifies_with_plugbox(
        tmp_path: Path, plugin_dir: Path, cache_dir: Path) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    proc = minisign("-G", "-W", "-p", str(trusted / "ms.pub"), "-s", str(tmp_path / "ms.key"))
    assert proc.returncode == 0, proc.stderr
    manifest = plugin_dir / "plugbox.json"
    proc = minisign("-S", "-s", str(tmp_path / "ms.key"), "-m", str(manifest),
                    "-t", "released by minisign")
    assert proc.returncode == 0, proc.stderr
    assert (plugin_dir / PRIMARY_SIGNATURE).exists()  # minisign's default name is ours
    # The key id plugbox shows is the one minisign writes into the public key's comment
    # (minisign prints it with %llX, so without leading zeros; plugbox always shows 16 digits).
    pub = PublicKey.from_file(trusted / "ms.pub")
    prefix, _, shown = pub.comment.rpartition(" ")
    key_id = int.from_bytes(pub.key_id, "little")
    assert prefix == "minisign public key" and int(shown, 16) == key_id
    assert pub.key_id_hex == f"{key_id:016X}" == normalize_key_id(shown)
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        plugin = rt.load(plugin_dir)
        (signer,) = plugin.signers
    assert signer.key_id == pub.key_id_hex
    assert signer.trusted_comment == "released by minisign"
    assert signer.algorithm == "ED" and signer.key_name == "ms"
    # minisign's unencrypted secret key also signs with plugbox.
    key = SecretKey.from_file(tmp_path / "ms.key")
    assert key.key_id == pub.key_id and key.public == pub.key


@needs_minisign
def test_legacy_minisign_signature_verifies_with_plugbox(tmp_path: Path) -> None:
    proc = minisign("-G", "-W", "-p", str(tmp_path / "k.pub"), "-s", str(tmp_path / "k.key"))
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "f").write_bytes(b"legacy payload")
    proc = minisign("-S", "-l", "-s", str(tmp_path / "k.key"), "-m", str(tmp_path / "f"))
    assert proc.returncode == 0, proc.stderr
    sig = Signature.from_file(tmp_path / "f.minisig")
    assert sig.algorithm == "Ed"
    verify_bytes(b"legacy payload", sig, PublicKey.from_file(tmp_path / "k.pub"))


@needs_minisign
def test_plugbox_signature_and_keys_work_with_minisign(tmp_path: Path, plugin_dir: Path) -> None:
    key_path, pub_path, key = write_keypair(tmp_path / "keys")
    sig_path = sign_plugin(plugin_dir, key, comment="released by plugbox")
    manifest = plugin_dir / "plugbox.json"
    proc = minisign("-V", "-m", str(manifest), "-x", str(sig_path), "-p", str(pub_path))
    assert proc.returncode == 0, proc.stderr
    assert "Trusted comment: released by plugbox" in proc.stdout
    # -H: minisign insists on a prehashed signature, which is what plugbox writes.
    assert minisign("-V", "-H", "-m", str(manifest), "-x", str(sig_path),
                    "-p", str(pub_path)).returncode == 0
    # plugbox's secret key file is usable by minisign -S, and minisign -R derives the same
    # public key from it.
    (tmp_path / "other").write_bytes(b"x")
    proc = minisign("-S", "-s", str(key_path), "-m", str(tmp_path / "other"), "-t", "t")
    assert proc.returncode == 0, proc.stderr
    verify_bytes(b"x", Signature.from_file(tmp_path / "other.minisig"), key.public_key())
    proc = minisign("-R", "-s", str(key_path), "-p", str(tmp_path / "derived.pub"))
    assert proc.returncode == 0, proc.stderr
    assert PublicKey.from_file(tmp_path / "derived.pub").key == key.public
    # And minisign rejects a tampered manifest, as plugbox does.
    manifest.write_bytes(manifest.read_bytes().replace(b"0.1.0", b"0.1.1"))
    assert minisign("-V", "-m", str(manifest), "-x", str(sig_path),
                    "-p", str(pub_path)).returncode != 0


# -- the trust policy at load ----------------------------------------------------------------------


def test_signed_plugin_loads_with_its_signers(tmp_path: Path, trusted: Path, alice: SecretKey,
                                              plugin_dir: Path, cache_dir: Path) -> None:
    sign_plugin(plugin_dir, alice, comment="v0.1.0 release")
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        plugin = rt.load(plugin_dir)
        assert plugin.call("run", b"") == b"\x01\x00\x00\x00"
        assert plugin.signers == (plugbox.SignerInfo(
            key_id=alice.key_id_hex, key_name="alice", key_file=str(trusted / "alice.pub"),
            trusted_comment="v0.1.0 release", algorithm="ED",
            signature_file=PRIMARY_SIGNATURE),)
        manifest, wasm = rt.verify(plugin_dir)
        assert manifest.name == "counter-wat" and wasm == (plugin_dir / "plugin.wasm").read_bytes()


def test_signatures_are_checked_before_the_module_is_hashed_or_compiled(
        tmp_path: Path, trusted: Path, alice: SecretKey, plugin_dir: Path, cache_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import plugbox._runtime as runtime_module

    def refuse(*args: object) -> bytes:
        raise AssertionError("the module was read before the signatures were checked")

    monkeypatch.setattr(runtime_module, "verify_module", refuse)
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        with pytest.raises(plugbox.UntrustedSignerError, match="is not signed"):
            rt.load(plugin_dir)
        with pytest.raises(plugbox.UntrustedSignerError):
            rt.verify(plugin_dir)


def test_a_flipped_byte_in_the_module_is_refused(tmp_path: Path, trusted: Path,
                                                 alice: SecretKey, plugin_dir: Path,
                                                 cache_dir: Path) -> None:
    sign_plugin(plugin_dir, alice)
    flip(plugin_dir / "plugin.wasm", 40)
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        # The signature still holds (the manifest is intact); the pinned sha256 does not.
        with pytest.raises(plugbox.HashMismatchError):
            rt.load(plugin_dir)


@pytest.mark.parametrize("edit", ["version", "whitespace", "sha256"])
def test_a_changed_manifest_is_refused(tmp_path: Path, trusted: Path, alice: SecretKey,
                                       plugin_dir: Path, cache_dir: Path, edit: str) -> None:
    sign_plugin(plugin_dir, alice)
    manifest = plugin_dir / "plugbox.json"
    text = manifest.read_text()
    if edit == "version":
        text = text.replace('"0.1.0"', '"0.1.1"')
    elif edit == "whitespace":
        text = text + " "  # same JSON, different bytes: exact bytes are what is signed
    else:  # a swapped module, with the manifest re-pinned to it
        other = wat_module(ECHO_BODY)
        (plugin_dir / "plugin.wasm").write_bytes(other)
        doc = json.loads(text)
        doc["module"]["sha256"] = hashlib.sha256(other).hexdigest()
        text = json.dumps(doc, indent=2)
    manifest.write_text(text)
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        with pytest.raises(plugbox.SignatureError, match="does not verify") as info:
            rt.load(plugin_dir)
    assert info.value.key_id == alice.key_id_hex
    assert info.value.plugin == "counter-wat"


def test_a_swapped_module_without_repinning_is_refused(tmp_path: Path, trusted: Path,
                                                       alice: SecretKey, plugin_dir: Path,
                                                       cache_dir: Path) -> None:
    sign_plugin(plugin_dir, alice)
    (plugin_dir / "plugin.wasm").write_bytes(wat_module(ECHO_BODY))
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        with pytest.raises(plugbox.HashMismatchError):
            rt.load(plugin_dir)


@pytest.mark.parametrize("where", ["signature", "global signature", "trusted comment",
                                   "key id", "garbage"])
def test_a_flipped_byte_in_the_signature_is_refused(tmp_path: Path, trusted: Path,
                                                    alice: SecretKey, plugin_dir: Path,
                                                    cache_dir: Path, where: str) -> None:
    sig_path = sign_plugin(plugin_dir, alice, comment="release")
    lines = sig_path.read_text().splitlines()
    if where in ("signature", "key id", "global signature"):
        index = 3 if where == "global signature" else 1
        raw = bytearray(base64.b64decode(lines[index]))
        raw[{"signature": 40, "key id": 3, "global signature": 10}[where]] ^= 0x01
        lines[index] = base64.b64encode(bytes(raw)).decode()
    elif where == "trusted comment":
        lines[2] = "trusted comment: releasf"
    else:
        lines[1] = lines[1][:-4] + "!!!!"
    sig_path.write_text("\n".join(lines) + "\n")
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        expected = (plugbox.UntrustedSignerError if where == "key id"
                    else plugbox.SignatureError)
        # A flipped key id names a key nobody trusts: not counted, so the plugin is untrusted.
        with pytest.raises(expected):
            rt.load(plugin_dir)


def test_an_untrusted_key_is_refused(tmp_path: Path, trusted: Path, alice: SecretKey,
                                     plugin_dir: Path, cache_dir: Path) -> None:
    mallory, _ = make_key(tmp_path / "elsewhere", "mallory")
    sign_plugin(plugin_dir, mallory)
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        with pytest.raises(plugbox.UntrustedSignerError, match="untrusted key") as info:
            rt.load(plugin_dir)
    assert not isinstance(info.value, plugbox.RevokedKeyError)
    assert info.value.key_ids == (mallory.key_id_hex,)


def test_a_revoked_key_is_refused(tmp_path: Path, trusted: Path, alice: SecretKey,
                                  bob: SecretKey, plugin_dir: Path, cache_dir: Path) -> None:
    sign_plugin(plugin_dir, alice)
    policy = plugbox.TrustPolicy(trusted, revoked={alice.key_id_hex.lower()})
    with runtime(tmp_path, cache_dir, policy) as rt:
        with pytest.raises(plugbox.RevokedKeyError, match=alice.key_id_hex) as info:
            rt.load(plugin_dir)
        assert info.value.key_ids == (alice.key_id_hex,)
        # A signature by a key that is not revoked makes up for it.
        sign_plugin(plugin_dir, bob, extra=True)
        assert [s.key_name for s in rt.load(plugin_dir).signers] == ["bob"]


def test_a_signature_made_for_another_plugin_is_refused(tmp_path: Path, trusted: Path,
                                                        alice: SecretKey, plugin_dir: Path,
                                                        cache_dir: Path) -> None:
    other = write_plugin(tmp_path / "other", wat_module(ECHO_BODY), name="echo-wat")
    sign_plugin(other, alice)
    shutil.copy(other / PRIMARY_SIGNATURE, plugin_dir / PRIMARY_SIGNATURE)
    with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(trusted)) as rt:
        with pytest.raises(plugbox.SignatureError, match="different file"):
            rt.load(plugin_dir)
        rt.load(other)


def test_threshold_needs_distinct_trusted_keys(tmp_path: Path, trusted: Path, alice: SecretKey,
                                               bob: SecretKey, plugin_dir: Path,
                                               cache_dir: Path) -> None:
    policy = plugbox.TrustPolicy(trusted, threshold=2)
    sign_plugin(plugin_dir, alice)
    # The same key signing twice counts once.
    sign_plugin(plugin_dir, alice, extra=True, comment="again")
    with runtime(tmp_path, cache_dir, policy) as rt:
        with pytest.raises(plugbox.UntrustedSignerError, match="1 valid signature"):
            rt.load(plugin_dir)
        sign_plugin(plugin_dir, bob, extra=True)
        plugin = rt.load(plugin_dir)
    assert sorted(s.key_name for s in plugin.signers) == ["alice", "bob"]
    assert {s.signature_file for s in plugin.signers} == {
        PRIMARY_SIGNATURE, f"{SIGNATURES_DIR}/{bob.key_id_hex}.minisig"}


def test_warn_mode_loads_and_logs_the_failure(tmp_path: Path, trusted: Path, alice: SecretKey,
                                              plugin_dir: Path, cache_dir: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    policy = plugbox.TrustPolicy(trusted, mode="warn")
    with caplog.at_level(logging.WARNING, logger="plugbox.trust"):
        with runtime(tmp_path, cache_dir, policy) as rt:
            plugin = rt.load(plugin_dir)
            assert plugin.signers == ()
    (record,) = [r for r in caplog.records if r.name == "plugbox.trust"]
    assert record.levelno == logging.WARNING
    assert "counter-wat" in record.getMessage() and "not signed" in record.getMessage()


def test_off_mode_warns_on_every_load_and_development_mode_only_at_debug(
        tmp_path: Path, plugin_dir: Path, cache_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="plugbox.trust"):
        with runtime(tmp_path, cache_dir, plugbox.TrustPolicy(mode="off")) as rt:
            rt.load(plugin_dir)
            rt.load(plugin_dir)
        loud = [r for r in caplog.records if r.name == "plugbox.trust"]
        assert [r.levelno for r in loud] == [logging.WARNING, logging.WARNING]
        assert all("counter-wat" in r.getMessage() and "OFF" in r.getMessage() for r in loud)
        caplog.clear()
        with runtime(tmp_path, cache_dir, None) as rt:  # the library default
            assert rt.trust.is_development
            assert rt.load(plugin_dir).signers == ()
        quiet = [r for r in caplog.records if r.name == "plugbox.trust"]
        assert [r.levelno for r in quiet] == [logging.DEBUG]


def test_trust_policy_rejects_impossible_settings(tmp_path: Path, trusted: Path,
                                                  alice: SecretKey) -> None:
    with pytest.raises(plugbox.UsageError, match="at least one trusted"):
        plugbox.TrustPolicy()
    with pytest.raises(plugbox.UsageError, match="can never be met"):
        plugbox.TrustPolicy(trusted, threshold=2)
    with pytest.raises(plugbox.UsageError, match="at least one trusted"):
        plugbox.TrustPolicy(trusted, revoked=[alice.key_id_hex])
    with pytest.raises(plugbox.UsageError, match="mode"):
        plugbox.TrustPolicy(trusted, mode="strict")  # type: ignore[arg-type]
    with pytest.raises(plugbox.UsageError, match="threshold"):
        plugbox.TrustPolicy(trusted, threshold=0)
    with pytest.raises(plugbox.UsageError, match="key id"):
        plugbox.TrustPolicy(trusted, revoked=["nothex"])
    with pytest.raises(plugbox.KeyFileError, match="no such trusted key"):
        plugbox.TrustPolicy(tmp_path / "missing")
    (trusted / "broken.pub").write_text("untrusted comment: x\nnot base64\n")
    with pytest.raises(plugbox.KeyFileError, match="broken.pub"):
        plugbox.TrustPolicy(trusted)
    (trusted / "broken.pub").unlink()
    clash = PublicKey(alice.key_id, bytes(32))
    with pytest.raises(plugbox.UsageError, match="share the key id"):
        plugbox.TrustPolicy([trusted, clash])
    # Key objects, key files and directories mix; warn mode may have no keys at all.
    policy = plugbox.TrustPolicy([alice.public_key(), trusted / "alice.pub"])
    assert [k.key_id_hex for k in policy.keys] == [alice.key_id_hex]
    assert plugbox.TrustPolicy(mode="warn").keys == ()


def test_the_manifest_must_not_change_between_validation_and_signature_check(
        tmp_path: Path, trusted: Path, alice: SecretKey, plugin_dir: Path) -> None:
    sign_plugin(plugin_dir, alice)
    manifest = plugbox.load_manifest(plugin_dir)
    policy = plugbox.TrustPolicy(trusted)
    assert [s.key_name for s in policy.check(manifest)] == ["alice"]
    # Re-signed after a change: the signature is valid for the new bytes, but the check is
    # made over the bytes that were read and validated (the file is never read again).
    path = plugin_dir / "plugbox.json"
    path.write_text(path.read_text().replace('"0.1.0"', '"6.6.6"'))
    sign_plugin(plugin_dir, alice)
    with pytest.raises(plugbox.SignatureError, match="does not verify"):
        policy.check(manifest)


def test_key_ids_without_leading_zeros_are_accepted_as_minisign_prints_them() -> None:
    assert normalize_key_id("e45308d1d080788") == "0E45308D1D080788"
    assert normalize_key_id("0E45308D1D080788") == "0E45308D1D080788"
    for bad in ("", "0E45308D1D0807880", "XYZ"):
        with pytest.raises(ValueError):
            normalize_key_id(bad)
