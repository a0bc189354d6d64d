"""The plugbox command line, in-process through main() and once through the console script."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import plugbox
from plugbox import __version__
from plugbox.cli._main import main

# A minimal plugin module: a bump allocator and an on-hook whose body is spliced in. The result
# area is at 16: tag (0 ok, 1 err) at 16, then list ptr/len at 20/24, or for err the error case
# at 20 and the message ptr/len at 24/28.
TEMPLATE = """
(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get 3) (i32.const 7))
                                                       (i32.const -8))))
    (local.get $p))
  (func (export "on-hook") (param $hp i32) (param $hl i32) (param $pp i32) (param $pl i32)
        (result i32)
    {body})
  (func (export "cabi_post_on-hook") (param i32)
    (global.set $heap (i32.const 4096)))
)
"""

ECHO = """
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get $pp))
    (i32.store (i32.const 24) (local.get $pl))
    (i32.const 16)
"""

LOOP = "(loop $l (br $l)) (i32.const 16)"

# err(failure("boom")): "boom" is stored at 64.
FAIL = """
    (i32.store (i32.const 64) (i32.const 0x6d6f6f62))
    (i32.store8 (i32.const 16) (i32.const 1))
    (i32.store8 (i32.const 20) (i32.const 4))
    (i32.store (i32.const 24) (i32.const 64))
    (i32.store (i32.const 28) (i32.const 4))
    (i32.const 16)
"""


def module(body: str = ECHO, imports: str = "") -> bytes:
    return bytes(wasmtime.wat2wasm(TEMPLATE.format(body=body, imports=imports)))


@pytest.fixture
def plugin(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``plugin(body=..., imports=..., **manifest_fields)`` -> a plugin directory."""
    counter = iter(range(1000))

    def make(body: str = ECHO, imports: str = "", wasm: bytes | None = None,
             **fields: Any) -> Path:
        directory = tmp_path / f"plugin{next(counter)}"
        directory.mkdir()
        data = module(body, imports) if wasm is None else wasm
        (directory / "plugin.wasm").write_bytes(data)
        doc: dict[str, Any] = {
            "manifest_version": 1,
            "name": "echo",
            "version": "0.1.0",
            "description": "Echoes its payload",
            "abi": "1.0",
            "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(data).hexdigest()},
            "hooks": ["run"],
        }
        doc.update(fields)
        (directory / "plugbox.json").write_text(json.dumps(doc))
        return directory

    return make


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv)
    return code, json.loads(out)


def verify_signed(capsys: pytest.CaptureFixture[str], directory: Path,
                  keys: Path) -> tuple[int, Any]:
    """Sign ``directory`` with a new key in ``keys``, then ``plugbox verify --json`` it."""
    assert main(["keygen", "--output-dir", str(keys)]) == 0
    assert main(["sign", str(directory), "--key", str(keys / "plugbox.key")]) == 0
    capsys.readouterr()
    return run_json(capsys, "verify", str(directory), "--trusted-keys",
                    str(keys / "plugbox.pub"), "--json")


# -- usage ---------------------------------------------------------------------------------------


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "inspect" in err and "call" in err


@pytest.mark.parametrize(
    "argv",
    [["bogus"], ["inspect"], ["call", "somewhere"], ["inspect", "x", "--nope"],
     ["call", "x", "run", "--fuel", "0"], ["call", "x", "run", "--deadline-ms", "soon"]],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert run(capsys, *argv)[0] == 2


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"plugbox {__version__}"
    code, out, _ = run(capsys, "inspect", "--help")
    assert code == 0 and "never compiled" in out
    code, out, _ = run(capsys, "call", "--help")
    assert code == 0 and "--allow-http" in out


# -- inspect -------------------------------------------------------------------------------------


LOG_IMPORT = '(import "plugbox:plugin/log@1.0.0" "log" (func (param i32 i32 i32)))'
KV_IMPORT = '(import "plugbox:plugin/kv@1.0.0" "get" (func (param i32 i32 i32)))'


def test_inspect_good_plugin(plugin: Callable[..., Path],
                             capsys: pytest.CaptureFixture[str]) -> None:
    directory = plugin(imports=LOG_IMPORT + KV_IMPORT, permissions={"log": True, "kv": {}},
                       limits={"fuel": 12345}, license="MIT")
    code, out, _ = run(capsys, "inspect", str(directory))
    assert code == 0
    for text in ("echo 0.1.0", "Echoes its payload", "(MIT)", "sha256", "interface",
                 "plugbox:plugin/kv@1.0.0.get", "(i32, i32, i32) -> ()", "on-hook", "12345",
                 "OK: the plugin passes every check"):
        assert text in out, text
    assert "without requesting" not in out


def test_inspect_and_verify_agree_with_load_on_an_unrequested_import(
        plugin: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # kv is imported but not requested: Runtime.load refuses it, so inspect must not say OK.
    directory = plugin(imports=LOG_IMPORT + KV_IMPORT, permissions={"log": True})
    code, out, _ = run(capsys, "inspect", str(directory))
    assert code == 1
    assert "OK: the plugin passes" not in out
    assert "REFUSED" in out and "capabilities" in out
    assert "imports kv without requesting the permission" in out
    code, report = run_json(capsys, "inspect", str(directory), "--json")
    assert code == 1 and report["ok"] is False
    assert report["capabilities"]["ok"] is False
    assert report["capabilities"]["error"]["type"] == "CapabilityError"
    assert report["capabilities"]["error"]["permission"] == "kv"

    code, doc = verify_signed(capsys, directory, tmp_path / "keys")
    assert code == 1 and doc["ok"] is False
    assert doc["checks"]["capabilities"]["ok"] is False
    # Both commands report the refusal Runtime.load makes, word for word.
    assert doc["checks"]["capabilities"]["error"] == report["capabilities"]["error"]
    with plugbox.Runtime(state_dir=tmp_path / "state", pooled_instances=0) as runtime:
        with pytest.raises(plugbox.CapabilityError) as refused:
            runtime.load(directory)
    assert refused.value.message == report["capabilities"]["error"]["message"]


@pytest.mark.parametrize(
    ("variant", "error", "phrase"),
    [
        ({"limits": {"memory_bytes": 1}}, "PolicyViolationError", "below one WebAssembly page"),
        ({"memory_pages": 40, "limits": {"memory_bytes": 1 << 20}}, "PolicyViolationError",
         "memory"),
        ({"body": "(i64.const 1)"}, "ModuleInterfaceError", ""),
    ],
    ids=["memory-bytes-1", "memory-min-above-limit", "invalid-body"],
)
def test_inspect_and_verify_agree_with_load_on_what_cannot_run(
        plugin: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        variant: dict[str, Any], error: str, phrase: str) -> None:
    fields = dict(variant)
    pages = fields.pop("memory_pages", 1)
    wat = TEMPLATE.format(body=fields.pop("body", ECHO), imports="")
    wat = wat.replace('(memory (export "memory") 1)', f'(memory (export "memory") {pages})')
    directory = plugin(wasm=bytes(wasmtime.wat2wasm(wat)), **fields)
    with plugbox.Runtime(state_dir=tmp_path / "state", pooled_instances=0) as runtime:
        with pytest.raises(plugbox.VerificationError) as refused:
            runtime.verify(directory)
    assert type(refused.value).__name__ == error and phrase in refused.value.message
    code, report = run_json(capsys, "inspect", str(directory), "--json")
    assert code == 1 and report["ok"] is False
    assert report["checks"]["runnable"]["error"]["message"] == refused.value.message
    code, doc = verify_signed(capsys, directory, tmp_path / "keys")
    assert code == 1 and doc["checks"]["runnable"]["ok"] is False
    assert doc["checks"]["runnable"]["error"]["message"] == refused.value.message


def test_inspect_json_report(plugin: Callable[..., Path],
                             capsys: pytest.CaptureFixture[str]) -> None:
    directory = plugin(imports=LOG_IMPORT, permissions={"log": True, "kv": {}},
                       limits={"fuel": 12345}, hooks=["run", "other"])
    code, report = run_json(capsys, "inspect", str(directory), "--json")
    assert code == 0
    assert report["ok"] is True
    assert set(report) >= {"ok", "manifest", "plugin", "module", "checks", "policy", "imports",
                           "imported_services", "exports", "permissions", "limits"}
    assert report["manifest"] == str((directory / "plugbox.json").resolve())
    assert report["plugin"]["name"] == "echo"
    assert report["plugin"]["hooks"] == ["run", "other"]
    assert report["module"]["kind"] == "core"
    assert report["module"]["sha256"] == report["module"]["actual_sha256"]
    assert {name: check["ok"] for name, check in report["checks"].items()} == {
        "sha256": True, "abi": True, "host": True, "module": True, "interface": True,
        "runnable": True}
    assert report["imports"] == [{
        "module": "plugbox:plugin/log@1.0.0", "name": "log", "kind": "func",
        "params": ["i32", "i32", "i32"], "results": [], "service": "log"}]
    assert report["imported_services"] == ["log"]
    assert {e["name"] for e in report["exports"]} == {
        "memory", "cabi_realloc", "on-hook", "cabi_post_on-hook"}
    assert report["permissions"]["log"] is True
    assert report["permissions"]["kv"] == {"quota_bytes": 1 << 20, "quota_keys": 1000}
    assert report["permissions"]["http"] is None
    assert report["limits"]["requested"] == {"fuel": 12345}
    assert report["limits"]["effective"]["fuel"] == 12345
    assert report["limits"]["effective"]["deadline_ms"] == 5000  # the default
    assert report["policy"]["ok"] is True


def test_inspect_hash_mismatch_exits_1_but_still_describes_the_module(
    plugin: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    directory = plugin(imports=LOG_IMPORT)
    wasm = directory / "plugin.wasm"
    tampered = module(LOOP, LOG_IMPORT)
    wasm.write_bytes(tampered)
    code, report = run_json(capsys, "inspect", str(directory), "--json")
    assert code == 1
    assert report["ok"] is False
    assert report["checks"]["sha256"]["ok"] is False
    assert report["checks"]["sha256"]["error"]["type"] == "HashMismatchError"
    assert report["module"]["actual_sha256"] == hashlib.sha256(tampered).hexdigest()
    assert report["checks"]["interface"]["ok"] is True
    assert report["imported_services"] == ["log"]
    code, out, _ = run(capsys, "inspect", str(directory))
    assert code == 1 and "REFUSED" in out and "sha256" in out


def test_inspect_wasi_module_exits_1(plugin: Callable[..., Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    wasi = ('(import "wasi_snapshot_preview1" "fd_write" '
            '(func (param i32 i32 i32 i32) (result i32)))')
    code, report = run_json(capsys, "inspect", str(plugin(imports=wasi)), "--json")
    assert code == 1
    check = report["checks"]["interface"]
    assert check["ok"] is False
    assert check["error"]["type"] == "ModuleInterfaceError"
    assert "wasi_snapshot_preview1.fd_write" in check["error"]["message"]
    assert report["imports"][0]["service"] is None


@pytest.mark.parametrize(
    ("fields", "check"),
    [({"abi": "2.0"}, "abi"), ({"abi": "1.9"}, "abi"), ({"host": ">=99.0"}, "host")],
)
def test_inspect_incompatible_plugin_exits_1(
    plugin: Callable[..., Path], capsys: pytest.CaptureFixture[str],
    fields: dict[str, str], check: str,
) -> None:
    code, report = run_json(capsys, "inspect", str(plugin(**fields)), "--json")
    assert code == 1
    assert report["checks"][check]["ok"] is False


def test_inspect_garbage_module_exits_1(plugin: Callable[..., Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_json(capsys, "inspect", str(plugin(wasm=b"\x00asm\x01\x00\x00\x00\x01\xff")),
                            "--json")
    assert code == 1
    assert report["checks"]["module"]["ok"] is False
    assert report["checks"]["interface"]["ok"] is None
    assert report["module"]["kind"] is None


def test_inspect_reports_the_policy_without_failing_on_it(
    plugin: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    directory = plugin(permissions={"http": {"hosts": ["127.0.0.1:*"]}})
    code, report = run_json(capsys, "inspect", str(directory), "--json")
    assert code == 0
    assert report["policy"]["ok"] is False
    assert report["policy"]["error"]["type"] == "PolicyViolationError"
    assert report["policy"]["error"]["permission"] == "http"
    code, report = run_json(capsys, "inspect", str(directory), "--json",
                            "--allow-http", "127.0.0.1:*")
    assert code == 0 and report["policy"]["ok"] is True
    assert report["policy"]["http_hosts"] == ["127.0.0.1:*"]


def test_inspect_invalid_input_exits_2(plugin: Callable[..., Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "inspect", str(tmp_path / "missing"))
    assert code == 2 and "ManifestError" in err and "no such file or directory" in err

    code, doc = run_json(capsys, "inspect", str(tmp_path / "missing"), "--json")
    assert code == 2
    assert doc["ok"] is False
    assert set(doc["error"]) >= {"type", "message", "plugin", "hook", "limit", "permission"}

    bad_json = plugin()
    (bad_json / "plugbox.json").write_text('{"name": }')
    code, doc = run_json(capsys, "inspect", str(bad_json), "--json")
    assert code == 2 and doc["error"]["type"] == "ManifestError"
    assert "plugbox.json:1:10: invalid JSON" in doc["error"]["message"]

    code, doc = run_json(capsys, "inspect", str(plugin(hooks=[])), "--json")
    assert code == 2 and doc["error"]["json_path"] == "$.hooks"

    missing_module = plugin()
    (missing_module / "plugin.wasm").unlink()
    code, doc = run_json(capsys, "inspect", str(missing_module), "--json")
    assert code == 2 and doc["error"]["json_path"] == "$.module.path"

    code, doc = run_json(capsys, "inspect", str(plugin(host="0.1")), "--json")
    assert code == 2 and doc["error"]["json_path"] == "$.host"


def test_inspect_never_compiles(plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect compiled the module")

    validated: list[bytes] = []
    real_validate = wasmtime.Module.validate
    monkeypatch.setattr(wasmtime.Module, "__init__", refuse)
    monkeypatch.setattr(wasmtime.Module, "deserialize", refuse)
    # Validation (linear, no code generated) is the one step inspect shares with load.
    monkeypatch.setattr(wasmtime.Module, "validate",
                        staticmethod(lambda e, w: (validated.append(w), real_validate(e, w))))
    assert run(capsys, "inspect", str(plugin()))[0] == 0
    assert len(validated) == 1


def test_inspect_escapes_control_characters(plugin: Callable[..., Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    directory = plugin(description="evil \x1b]0;pwned\x07 \u202etxt.exe")
    code, out, _ = run(capsys, "inspect", str(directory))
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "evil \\x1b]0;pwned\\x07 \\u202etxt.exe" in out


def test_console_script(plugin: Callable[..., Path]) -> None:
    script = Path(sys.executable).parent / "plugbox"
    if not script.exists():  # pragma: no cover - the venv installs it
        pytest.skip("plugbox console script not installed")
    proc = subprocess.run([str(script), "inspect", str(plugin()), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plugin"]["name"] == "echo"
    proc = subprocess.run([str(script), "inspect", "/nonexistent/plugin"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no such file or directory" in proc.stderr


# -- call ----------------------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "state")


def test_call_json_payload_gives_json_output(plugin: Callable[..., Path], state: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "call", str(plugin()), "run", "--json", '{"a": [1, 2]}',
                         "--state-dir", state)
    assert code == 0
    stats = doc.pop("stats")
    assert doc == {
        "plugin": "echo",
        "hook": "run",
        "ok": True,
        "result": {"a": [1, 2]},
        "result_is_json": True,
        "result_text": '{"a": [1, 2]}',
        "result_base64": base64.b64encode(b'{"a": [1, 2]}').decode(),
        "logs": [],
    }
    # what the call used: a WAT echo runs a few instructions in its one page of memory
    assert stats["seconds"] > 0 and 0 < stats["fuel_used"] < 1000
    assert stats["memory_bytes"] == 65536


def test_call_human_output(plugin: Callable[..., Path], state: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(plugin())
    assert run(capsys, "call", directory, "run", "--text", "hello", "--state-dir", state) == (
        0, "hello\n", "")
    code, out, _ = run(capsys, "call", directory, "run", "--text", '{"b":1}', "--state-dir", state)
    assert code == 0 and out == '{\n  "b": 1\n}\n'  # JSON results are pretty-printed
    assert run(capsys, "call", directory, "run", "--state-dir", state) == (0, "", "")


def test_bare_json_switches_only_the_output(plugin: Callable[..., Path], state: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "call", str(plugin()), "run", "--text", "plain words", "--json",
                         "--state-dir", state)
    assert code == 0
    assert doc["result"] is None and doc["result_is_json"] is False
    assert doc["result_text"] == "plain words"
    assert doc["note"].startswith("the result is not JSON (Expecting value")
    assert doc["note"].endswith("its text is in result_text")


def test_call_binary_file_payload(plugin: Callable[..., Path], state: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    payload = bytes(range(256))
    (tmp_path / "payload.bin").write_bytes(payload)
    directory = str(plugin())
    code, doc = run_json(capsys, "call", directory, "run", "--file", str(tmp_path / "payload.bin"),
                         "--json", "--state-dir", state)
    assert code == 0
    assert doc["result_text"] is None and doc["result"] is None
    assert doc["note"] == ("the result is not UTF-8 text, so not JSON; its bytes are in "
                           "result_base64")
    assert base64.b64decode(doc["result_base64"]) == payload
    code, out, err = run(capsys, "call", directory, "run", "--file",
                         str(tmp_path / "payload.bin"), "--state-dir", state)
    assert code == 0 and base64.b64decode(out) == payload and "base64" in err


def test_call_payload_from_stdin(plugin: Callable[..., Path], state: str,
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    code, out, _ = run(capsys, "call", str(plugin()), "run", "--file", "-", "--state-dir", state)
    assert (code, out) == (0, "from stdin\n")


@pytest.mark.parametrize(
    "args",
    [
        ["--json", "{not json"],
        ["--json", "{}", "--text", "x"],
        ["--text", "x", "--file", "y"],
        ["--file", "/nonexistent/payload"],
        ["--json", "--config", "{bad"],
        ["--json", "--config", "[1, 2]"],
        ["--json", "--config", "@/nonexistent/config.json"],
    ],
)
def test_call_invalid_input_exits_2(plugin: Callable[..., Path], state: str,
                                    capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run(capsys, "call", str(plugin()), "run", *args, "--state-dir", state)
    assert code == 2
    if "--json" in args:
        doc = json.loads(out)
        assert doc["ok"] is False and doc["error"]["type"] == "UsageError"
    else:
        assert "UsageError" in err


def test_call_config(plugin: Callable[..., Path], state: str, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    directory = str(plugin(config_schema=schema))
    (tmp_path / "config.json").write_text('{"n": 3}')
    assert run(capsys, "call", directory, "run", "--text", "x", "--config", '{"n": 1}',
               "--state-dir", state)[0] == 0
    assert run(capsys, "call", directory, "run", "--text", "x", "--config",
               f"@{tmp_path / 'config.json'}", "--state-dir", state)[0] == 0
    code, doc = run_json(capsys, "call", directory, "run", "--json", "--config", '{"n": "one"}',
                         "--state-dir", state)
    assert code == 2
    assert doc["error"]["type"] == "UsageError" and "$.n" in doc["error"]["message"]


def test_call_manifest_problems_exit_2(plugin: Callable[..., Path], state: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "call", str(tmp_path / "missing"), "run", "--json",
                         "--state-dir", state)
    assert code == 2 and doc["error"]["type"] == "ManifestError"
    code, _, err = run(capsys, "call", str(plugin(name="Bad Name")), "run", "--state-dir", state)
    assert code == 2 and "$.name" in err


def _failure(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, doc = run_json(capsys, "call", *argv, "--json")
    assert code == 1
    assert doc["ok"] is False
    error: dict[str, Any] = doc["error"]
    assert set(error) >= {"type", "message", "plugin", "hook", "limit", "permission"}
    return error


def test_call_unknown_hook_exits_1(plugin: Callable[..., Path], state: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    error = _failure(capsys, str(plugin()), "nope", "--state-dir", state)
    assert error["type"] == "UnknownHookError"
    assert (error["plugin"], error["hook"]) == ("echo", "nope")


def test_call_fuel_exhausted_exits_1(plugin: Callable[..., Path], state: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    error = _failure(capsys, str(plugin(LOOP)), "run", "--fuel", "100000", "--state-dir", state)
    assert error["type"] == "FuelExhausted"
    assert error["limit"] == "fuel"
    assert error["hook"] == "run"


def test_call_deadline_above_default_caps(plugin: Callable[..., Path], state: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # --fuel above the default cap is honoured (the CLI user is the host), so the deadline is
    # what stops this loop.
    error = _failure(capsys, str(plugin(LOOP)), "run", "--fuel", str(10**15),
                     "--deadline-ms", "100", "--state-dir", state)
    assert error["type"] == "DeadlineExceeded"
    assert error["limit"] == "deadline"


def test_call_guest_error_exits_1(plugin: Callable[..., Path], state: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    error = _failure(capsys, str(plugin(FAIL)), "run", "--state-dir", state)
    assert error["type"] == "GuestError"
    assert (error["kind"], error["detail"]) == ("failure", "boom")
    code, _, err = run(capsys, "call", str(plugin(FAIL)), "run", "--state-dir", state)
    assert code == 1 and "GuestError" in err and "boom" in err


def test_call_refused_plugin_exits_1(plugin: Callable[..., Path], state: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    directory = plugin()
    (directory / "plugin.wasm").write_bytes(module(LOOP))
    assert _failure(capsys, str(directory), "run", "--state-dir", state)["type"] == (
        "HashMismatchError")
    wasi = '(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))'
    assert _failure(capsys, str(plugin(imports=wasi)), "run", "--state-dir", state)["type"] == (
        "ModuleInterfaceError")


def test_call_http_permission_needs_allow_http(plugin: Callable[..., Path], state: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(plugin(permissions={"http": {"hosts": ["127.0.0.1:*"]}}))
    error = _failure(capsys, directory, "run", "--state-dir", state)
    assert error["type"] == "PolicyViolationError" and error["permission"] == "http"
    code, doc = run_json(capsys, "call", directory, "run", "--json", '"hi"', "--state-dir", state,
                         "--allow-http", "127.0.0.1:*")
    assert code == 0 and doc["result"] == "hi"
