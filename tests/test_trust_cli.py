"""The trust-chain command line: plugbox keygen, sign, verify, pack, unpack; signers in inspect;
trust options of call. In-process through main(), with real files (and the real minisign)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugbox.cli._main import main
from plugbox.trust._signing import PublicKey, Signature
from tests.conftest import COUNTER_BODY, ECHO_BODY, wat_module, write_plugin


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


class Keys:
    """Key pairs made with plugbox keygen; public keys collected in ``trusted``."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.trusted = root / "trusted"
        self.trusted.mkdir(parents=True)
        self.capsys = capsys

    def make(self, name: str, *, trust: bool = True) -> tuple[Path, str]:
        """(secret key path, key id)."""
        out = self.root / name
        code, text, _ = run(self.capsys, "keygen", "--output-dir", str(out), "--comment", name)
        assert code == 0, text
        key_id = PublicKey.from_file(out / "plugbox.pub").key_id_hex
        assert key_id in text
        if trust:
            shutil.copy(out / "plugbox.pub", self.trusted / f"{name}.pub")
        return out / "plugbox.key", key_id


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Keys:
    return Keys(tmp_path / "keys", capsys)


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "plugin", wat_module(COUNTER_BODY), name="counter-wat")


def statuses(doc: dict[str, Any]) -> dict[str, bool | None]:
    return {name: check["ok"] for name, check in doc["checks"].items()}


# -- keygen and sign ----------------------------------------------------------------------------


def test_keygen_writes_a_private_key_and_refuses_to_overwrite(
        tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    secret, key_id = keys.make("alice")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "alice" in (secret.parent / "plugbox.pub").read_text()
    code, _, err = run(capsys, "keygen", "--output-dir", str(secret.parent))
    assert code == 2 and "already exists" in err
    assert run(capsys, "keygen", "--output-dir", str(secret.parent), "--force")[0] == 0
    assert PublicKey.from_file(secret.parent / "plugbox.pub").key_id_hex != key_id


def test_sign_writes_the_first_signature_then_one_file_per_further_signer(
        plugin: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    alice, alice_id = keys.make("alice")
    bob, bob_id = keys.make("bob")
    code, out, _ = run(capsys, "sign", str(plugin), "--key", str(alice))
    assert code == 0 and alice_id in out
    first = Signature.from_file(plugin / "plugbox.json.minisig")
    assert first.key_id_hex == alice_id and first.algorithm == "ED"
    assert "plugin:counter-wat 0.1.0" in first.trusted_comment
    assert run(capsys, "sign", str(plugin / "plugbox.json"), "--key", str(bob),
               "--trusted-comment", "reviewed by bob")[0] == 0
    second = Signature.from_file(plugin / "signatures" / f"{bob_id}.minisig")
    assert second.trusted_comment == "reviewed by bob"
    # The same key signing again replaces its own signature rather than adding one.
    assert run(capsys, "sign", str(plugin), "--key", str(alice), "--trusted-comment", "v2")[0] == 0
    assert Signature.from_file(plugin / "plugbox.json.minisig").trusted_comment == "v2"
    assert sorted(p.name for p in (plugin / "signatures").iterdir()) == [f"{bob_id}.minisig"]
    assert run(capsys, "sign", str(plugin), "--key", str(alice), "--signer-file")[0] == 0
    assert (plugin / "signatures" / f"{alice_id}.minisig").exists()


def test_sign_reads_the_key_from_stdin(plugin: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    secret, key_id = keys.make("ci")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(secret.read_bytes())))
    assert run(capsys, "sign", str(plugin), "--key", "-")[0] == 0
    assert Signature.from_file(plugin / "plugbox.json.minisig").key_id_hex == key_id


def test_sign_refuses_a_manifest_that_does_not_match_its_module(
        plugin: Path, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret, _ = keys.make("alice")
    (plugin / "plugin.wasm").write_bytes(wat_module(ECHO_BODY))
    code, _, err = run(capsys, "sign", str(plugin), "--key", str(secret))
    assert code == 1 and "HashMismatchError" in err
    assert not (plugin / "plugbox.json.minisig").exists()
    (tmp_path / "bad.key").write_text("untrusted comment: x\nAAAA\n")
    code, _, err = run(capsys, "sign", str(plugin), "--key", str(tmp_path / "bad.key"))
    assert code == 2 and "KeyFileError" in err
    assert run(capsys, "sign", str(tmp_path / "nowhere"), "--key", str(secret))[0] == 2


@pytest.mark.skipif(shutil.which("minisign") is None, reason="minisign is not installed")
def test_cli_signatures_verify_with_minisign_and_minisign_keys_sign_with_the_cli(
        plugin: Path, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["minisign", "-G", "-W", "-p", str(keys.trusted / "ms.pub"),
                    "-s", str(tmp_path / "ms.key")], check=True, capture_output=True)
    assert run(capsys, "sign", str(plugin), "--key", str(tmp_path / "ms.key"),
               "--trusted-comment", "cli with a minisign key")[0] == 0
    proc = subprocess.run(["minisign", "-V", "-m", str(plugin / "plugbox.json"),
                           "-p", str(keys.trusted / "ms.pub")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cli with a minisign key" in proc.stdout
    assert run(capsys, "verify", str(plugin), "--trusted-keys", str(keys.trusted))[0] == 0


# -- verify -----------------------------------------------------------------------------------


def test_verify_a_signed_plugin_lists_every_check(plugin: Path, keys: Keys,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    secret, key_id = keys.make("alice")
    run(capsys, "sign", str(plugin), "--key", str(secret), "--trusted-comment", "release 1")
    code, doc = run_json(capsys, "verify", str(plugin), "--trusted-keys", str(keys.trusted))
    assert code == 0 and doc["ok"] is True
    assert statuses(doc) == {"schema": True, "signatures": True, "policy": True, "compat": True,
                             "hash": True, "interface": True, "capabilities": True,
                             "runnable": True}
    (sig,) = doc["checks"]["signatures"]["signatures"]
    assert (sig["status"], sig["key_id"], sig["key_name"], sig["trusted_comment"]) == (
        "valid", key_id, "alice", "release 1")
    policy = doc["checks"]["policy"]
    assert (policy["mode"], policy["threshold"], policy["revoked"]) == ("require", 1, [])
    assert policy["signers"][0]["key_id"] == key_id
    assert doc["plugin"]["name"] == "counter-wat"
    code, out, _ = run(capsys, "verify", str(plugin), "--trusted-keys", str(keys.trusted))
    assert code == 0 and "VERIFIED" in out and key_id in out


@pytest.mark.parametrize(("tamper", "failed", "error"), [
    ("module", "hash", "HashMismatchError"),
    ("manifest", "signatures", "SignatureError"),
    ("signature", "signatures", "SignatureError"),
])
def test_verify_detects_tampering(plugin: Path, keys: Keys, capsys: pytest.CaptureFixture[str],
                                  tamper: str, failed: str, error: str) -> None:
    secret, _ = keys.make("alice")
    run(capsys, "sign", str(plugin), "--key", str(secret))
    if tamper == "module":
        data = bytearray((plugin / "plugin.wasm").read_bytes())
        data[-3] ^= 0x01
        (plugin / "plugin.wasm").write_bytes(bytes(data))
    elif tamper == "manifest":
        path = plugin / "plugbox.json"
        path.write_text(path.read_text().replace('"run"', '"go"'))
    else:
        path = plugin / "plugbox.json.minisig"
        lines = path.read_text().splitlines()
        lines[3] = ("A" if lines[3][0] != "A" else "B") + lines[3][1:]
        path.write_text("\n".join(lines) + "\n")
    code, doc = run_json(capsys, "verify", str(plugin), "--trusted-keys", str(keys.trusted))
    assert code == 1 and doc["ok"] is False
    assert doc["checks"][failed]["ok"] is False
    assert doc["checks"][failed]["error"]["type"] == error


def test_verify_refuses_untrusted_and_revoked_signers(plugin: Path, keys: Keys,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    keys.make("alice")
    mallory, mallory_id = keys.make("mallory", trust=False)
    run(capsys, "sign", str(plugin), "--key", str(mallory))
    code, doc = run_json(capsys, "verify", str(plugin), "--trusted-keys", str(keys.trusted))
    assert code == 1
    assert doc["checks"]["signatures"]["ok"] is True  # nothing tampered, just not trusted
    assert doc["checks"]["policy"]["error"]["type"] == "UntrustedSignerError"
    assert doc["checks"]["policy"]["error"]["key_ids"] == [mallory_id]
    assert doc["checks"]["signatures"]["signatures"][0]["status"] == "unknown-key"
    shutil.copy(mallory.parent / "plugbox.pub", keys.trusted / "mallory.pub")
    assert run(capsys, "verify", str(plugin), "--trusted-keys", str(keys.trusted))[0] == 0
    code, doc = run_json(capsys, "verify", str(plugin), "--trusted-keys", str(keys.trusted),
                         "--revoked", mallory_id.lower())
    assert code == 1
    assert doc["checks"]["policy"]["error"]["type"] == "RevokedKeyError"
    assert doc["checks"]["policy"]["revoked"] == [mallory_id]


def test_verify_threshold(plugin: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    alice, _ = keys.make("alice")
    bob, _ = keys.make("bob")
    run(capsys, "sign", str(plugin), "--key", str(alice))
    argv = ("verify", str(plugin), "--trusted-keys", str(keys.trusted), "--threshold", "2")
    code, doc = run_json(capsys, *argv)
    assert code == 1 and "1 valid signature(s) by trusted keys, 2 required" in (
        doc["checks"]["policy"]["error"]["message"])
    run(capsys, "sign", str(plugin), "--key", str(bob))
    code, doc = run_json(capsys, *argv)
    assert code == 0
    assert sorted(s["key_name"] for s in doc["checks"]["policy"]["signers"]) == ["alice", "bob"]
    assert run(capsys, *argv[:-1], "3")[0] == 2  # can never be met with two keys


def test_verify_usage_and_unreadable_input_exit_2(plugin: Path, keys: Keys, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    keys.make("alice")
    trusted = str(keys.trusted)
    assert run(capsys, "verify", str(plugin))[0] == 2  # --trusted-keys is required
    assert run(capsys, "verify", str(tmp_path / "missing"), "--trusted-keys", trusted)[0] == 2
    assert run(capsys, "verify", str(tmp_path), "--trusted-keys", trusted)[0] == 2
    assert run(capsys, "verify", str(plugin), "--trusted-keys", str(tmp_path / "nokeys"))[0] == 2
    code, doc = run_json(capsys, "verify", str(plugin), "--trusted-keys", trusted,
                         "--revoked", "xyz")
    assert code == 2 and doc["error"]["type"] == "UsageError"
    # An invalid manifest is a refusal, not a usage error, for verify.
    (plugin / "plugbox.json").write_text('{"name": 1}')
    code, doc = run_json(capsys, "verify", str(plugin), "--trusted-keys", trusted)
    assert code == 1 and doc["checks"]["schema"]["ok"] is False
    # As Runtime.load does, the signatures are checked before the schema (the file was
    # rewritten, so no signature covers it), and nothing after the schema is checked.
    assert doc["checks"]["policy"]["ok"] is False
    assert doc["checks"]["hash"]["ok"] is None


# -- inspect ------------------------------------------------------------------------------------


def test_inspect_shows_who_signed(plugin: Path, keys: Keys,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_json(capsys, "inspect", str(plugin))
    assert code == 0
    assert report["signatures"]["signatures"] == []
    assert "unsigned" in report["signatures"]["detail"]
    code, out, _ = run(capsys, "inspect", str(plugin))
    assert "unsigned" in out

    alice, alice_id = keys.make("alice")
    run(capsys, "sign", str(plugin), "--key", str(alice), "--trusted-comment", "release 7")
    code, report = run_json(capsys, "inspect", str(plugin))
    assert code == 0
    (sig,) = report["signatures"]["signatures"]
    assert (sig["status"], sig["key_id"], sig["trusted_comment"], sig["algorithm"]) == (
        "unverified", alice_id, "release 7", "ED")
    assert report["signatures"]["verified"] is False

    code, report = run_json(capsys, "inspect", str(plugin), "--trusted-keys", str(keys.trusted))
    assert code == 0 and report["signatures"]["ok"] is True
    assert report["signatures"]["signers"] == [{
        "key_id": alice_id, "key_name": "alice", "key_file": str(keys.trusted / "alice.pub"),
        "trusted_comment": "release 7", "algorithm": "ED",
        "signature_file": "plugbox.json.minisig"}]
    code, out, _ = run(capsys, "inspect", str(plugin), "--trusted-keys", str(keys.trusted))
    assert code == 0
    assert "Signatures" in out and alice_id in out and "release 7" in out and "alice" in out

    # With trusted keys given, a bad signature makes inspect refuse the plugin.
    path = plugin / "plugbox.json"
    path.write_text(path.read_text().replace('"run"', '"go"'))
    code, report = run_json(capsys, "inspect", str(plugin), "--trusted-keys", str(keys.trusted))
    assert code == 1 and report["signatures"]["error"]["type"] == "SignatureError"
    assert report["signatures"]["signatures"][0]["status"] == "invalid"


# -- pack, unpack, packages everywhere ----------------------------------------------------------


def test_pack_verify_inspect_call_and_unpack_a_package(
        plugin: Path, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret, key_id = keys.make("release")
    run(capsys, "sign", str(plugin), "--key", str(secret))
    package = tmp_path / "dist" / "counter.plugbox"
    code, out, err = run(capsys, "pack", str(plugin), "-o", str(package))
    assert code == 0 and "plugbox.json.minisig" in out and err == ""
    assert run(capsys, "pack", str(plugin), "-o", str(package))[0] == 2  # exists
    code, doc = run_json(capsys, "verify", str(package), "--trusted-keys", str(keys.trusted))
    assert code == 0 and doc["package"] is True and doc["checks"]["package"]["ok"] is True
    assert doc["plugin"]["manifest"] == f"{package}#plugbox.json"
    code, report = run_json(capsys, "inspect", str(package), "--trusted-keys", str(keys.trusted))
    assert code == 0 and report["package"] == str(package.resolve())
    assert report["signatures"]["signers"][0]["key_id"] == key_id
    code, out, _ = run(capsys, "call", str(package), "run", "--trusted-keys", str(keys.trusted),
                       "--state-dir", str(tmp_path / "state"), "--json")
    assert code == 0 and json.loads(out)["result_base64"] == "AQAAAA=="
    code, out, _ = run(capsys, "unpack", str(package), "-o", str(tmp_path / "out"))
    assert code == 0
    assert (tmp_path / "out" / "plugin.wasm").read_bytes() == (plugin / "plugin.wasm").read_bytes()
    code, _, err = run(capsys, "unpack", str(package), "-o", str(tmp_path / "out"))
    assert code == 2 and "not empty" in err


def test_hostile_and_unsigned_packages(plugin: Path, keys: Keys, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import zipfile

    keys.make("release")
    code, _, err = run(capsys, "pack", str(plugin), "-o", str(tmp_path / "u.plugbox"))
    assert code == 0 and "unsigned" in err
    code, doc = run_json(capsys, "verify", str(tmp_path / "u.plugbox"),
                         "--trusted-keys", str(keys.trusted))
    assert code == 1 and doc["checks"]["policy"]["error"]["type"] == "UntrustedSignerError"
    evil = tmp_path / "evil.plugbox"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("plugbox.json", (plugin / "plugbox.json").read_bytes())
        zf.writestr("plugin.wasm", (plugin / "plugin.wasm").read_bytes())
        zf.writestr("../../escaped.txt", b"pwned")
    code, doc = run_json(capsys, "verify", str(evil), "--trusted-keys", str(keys.trusted))
    assert code == 1 and doc["checks"]["package"]["error"]["type"] == "PackageError"
    assert doc["checks"]["package"]["error"]["entry"] == "../../escaped.txt"
    code, _, err = run(capsys, "unpack", str(evil), "-o", str(tmp_path / "x" / "y"))
    assert code == 1 and "PackageError" in err
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "x" / "y").exists()
    assert run(capsys, "inspect", str(evil))[0] == 1
    assert run(capsys, "sign", str(evil), "--key", "k")[0] == 2


# -- call with a trust policy -----------------------------------------------------------------


def test_call_checks_signatures_when_given_trusted_keys(
        plugin: Path, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys.make("alice")
    state = str(tmp_path / "state")
    code, doc = run_json(capsys, "call", str(plugin), "run", "--trusted-keys", str(keys.trusted),
                         "--state-dir", state)
    assert code == 1 and doc["error"]["type"] == "UntrustedSignerError"
    code, _, err = run(capsys, "call", str(plugin), "run", "--trusted-keys", str(keys.trusted),
                       "--trust-mode", "warn", "--state-dir", state)
    assert code == 0 and "counter-wat" in err  # the warning names the plugin
    code, _, err = run(capsys, "call", str(plugin), "run", "--trust-mode", "off",
                       "--state-dir", state)
    assert code == 0 and "SIGNATURE CHECKS ARE OFF" in err
    # Without trust options, this development command does not check signatures.
    assert run(capsys, "call", str(plugin), "run", "--state-dir", state)[:3:2] == (0, "")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    for command in ("inspect", "call", "verify", "sign", "keygen", "pack", "unpack"):
        assert command in err
