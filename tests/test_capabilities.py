"""The static capability check: every service a module imports must be requested by its manifest;
requested-but-unused permissions are reported. Core modules and components."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

import plugbox
from plugbox.cli._main import main
from plugbox.engine._wasmparse import capability_report, check_capabilities, inspect_module
from tests.conftest import ECHO_BODY, wat_module, write_plugin

KV_GET = '(import "plugbox:plugin/kv@1.0.0" "get" (func $kv_get (param i32 i32 i32)))'
LOG = '(import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))'
CLOCK = '(import "plugbox:plugin/clock@1.0.0" "now" (func $now (result i64)))'

# Logs an empty message at level info, then echoes the payload.
LOG_THEN_ECHO = "(call $log (i32.const 2) (i32.const 64) (i32.const 0))" + ECHO_BODY


Make = Callable[..., Path]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    counter = iter(range(100))

    def make(imports: str = "", body: str = ECHO_BODY, **manifest: object) -> Path:
        return write_plugin(tmp_path / f"p{next(counter)}", wat_module(body, imports),
                            name="x", **manifest)

    return make


def test_an_import_without_its_permission_is_refused_at_load(
        make: Make, runtime: plugbox.Runtime) -> None:
    directory = make(KV_GET)
    with pytest.raises(plugbox.CapabilityError) as info:
        runtime.load(directory)
    err = info.value
    assert str(err) == (
        "plugin 'x': module imports plugbox:plugin/kv@1.0.0#get but plugbox.json does not "
        "request the \"kv\" permission; add \"kv\": {} to permissions or remove the import")
    assert (err.plugin, err.permission, err.import_name) == (
        "x", "kv", "plugbox:plugin/kv@1.0.0#get")
    assert isinstance(err, plugbox.ModuleInterfaceError)
    assert isinstance(err, plugbox.VerificationError)
    with pytest.raises(plugbox.CapabilityError):
        runtime.verify(directory)


def test_every_unrequested_import_is_named(make: Make, runtime: plugbox.Runtime) -> None:
    with pytest.raises(plugbox.CapabilityError, match=r"also unrequested: "
                       r"plugbox:plugin/clock@1.0.0#now \(clock\)") as info:
        runtime.load(make(KV_GET + CLOCK, permissions={"log": True}))
    assert info.value.permission == "kv"
    with pytest.raises(plugbox.CapabilityError, match='add "clock": true'):
        runtime.load(make(CLOCK))


def test_requested_imports_load(make: Make, runtime: plugbox.Runtime) -> None:
    plugin = runtime.load(make(KV_GET + LOG, permissions={"kv": {}, "log": True}))
    assert plugin.call("run", b"hi") == b"hi"


def test_requested_but_unused_permissions_are_warned_about(
        make: Make, runtime: plugbox.Runtime, caplog: pytest.LogCaptureFixture) -> None:
    directory = make(LOG, permissions={"log": True, "kv": {}, "clock": True})
    with caplog.at_level(logging.WARNING, logger="plugbox.capabilities"):
        runtime.load(directory)
    messages = [r.getMessage() for r in caplog.records if r.name == "plugbox.capabilities"]
    assert len(messages) == 2
    assert "plugin 'x' requests the 'clock' permission but its module never imports" in (
        messages[0])
    assert "'kv'" in messages[1]


def test_allow_unrequested_imports_loads_and_the_calls_stay_denied(
        make: Make, runtime: plugbox.Runtime) -> None:
    directory = make(LOG, LOG_THEN_ECHO)
    with pytest.raises(plugbox.CapabilityError):
        runtime.load(directory)
    plugin = runtime.load(directory, allow_unrequested_imports=True)
    assert plugin.call("run", b"payload") == b"payload"
    assert plugin.services.denied["log"] == 1
    manifest, _ = runtime.verify(directory, allow_unrequested_imports=True)
    assert manifest.name == "x"


def test_capability_report_lists_both_directions(make: Make) -> None:
    directory = make(KV_GET + LOG, permissions={"log": True, "random": True})
    manifest = plugbox.load_manifest(directory)
    info = inspect_module((directory / "plugin.wasm").read_bytes())
    report = capability_report(info, manifest)
    assert report.imported == {"kv", "log"}
    assert report.requested == {"log", "random"}
    assert report.unrequested == (("plugbox:plugin/kv@1.0.0#get", "kv"),)
    assert report.unused == {"random"}
    assert not report.ok
    assert check_capabilities(info, manifest, allow_unrequested_imports=True) == report


def test_inspect_and_verify_list_capabilities(make: Make, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from plugbox.trust._signing import write_keypair

    directory = make(KV_GET, permissions={"random": True})
    # Load refuses it, so inspect does too (exit 1), and describes why.
    assert main(["inspect", str(directory), "--json"]) == 1
    caps = json.loads(capsys.readouterr().out)["capabilities"]
    assert caps.pop("error")["type"] == "CapabilityError"
    assert caps == {
        "ok": False,
        "detail": "imports kv without requesting the permission: Runtime.load refuses it "
                  "(CapabilityError); requested but never imported: random",
        "imported": ["kv"], "requested": ["random"],
        "unrequested": [{"import": "plugbox:plugin/kv@1.0.0#get", "permission": "kv"}],
        "unused": ["random"],
    }
    key_path, pub_path, _ = write_keypair(tmp_path / "keys")
    assert main(["sign", str(directory), "--key", str(key_path)]) == 0
    capsys.readouterr()
    assert main(["verify", str(directory), "--trusted-keys", str(pub_path), "--json"]) == 1
    check = json.loads(capsys.readouterr().out)["checks"]["capabilities"]
    assert check["ok"] is False and check["unused"] == ["random"]
    assert check["error"]["type"] == "CapabilityError"
    assert check["error"]["import_name"] == "plugbox:plugin/kv@1.0.0#get"


# -- components -------------------------------------------------------------------------------


WASM_TOOLS = shutil.which("wasm-tools") or str(Path(sys.executable).parent / "wasm-tools")
WIT = Path(__file__).resolve().parent.parent / "abi" / "plugbox.wit"

COMPONENT_CORE = """
(module
  {imports}
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
  (func (export "on-init") (param i32 i32) (result i32) i32.const 0)
  (func (export "cabi_post_on-init") (param i32))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32) i32.const 0)
  (func (export "cabi_post_on-hook") (param i32))
)
"""


def component(tmp_path: Path, imports: str) -> bytes:
    if not Path(WASM_TOOLS).exists():
        pytest.skip("wasm-tools is not installed")
    core = tmp_path / "core.wasm"
    core.write_bytes(wasmtime.wat2wasm(COMPONENT_CORE.format(imports=imports)))
    for args in (["component", "embed", "--world", "plugin", str(WIT), str(core), "-o", str(tmp_path / "e.wasm")],
                 ["component", "new", str(tmp_path / "e.wasm"), "-o", str(tmp_path / "c.wasm")]):
        proc = subprocess.run([WASM_TOOLS, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    return (tmp_path / "c.wasm").read_bytes()


def test_components_are_checked_on_their_imported_interfaces(tmp_path: Path) -> None:
    data = component(tmp_path, KV_GET + LOG)
    info = inspect_module(data)
    assert info.kind == "component"
    # wasm-tools names the interfaces at the WIT's version (1.1.0), whatever minor the core
    # module imported them from.
    assert {"plugbox:plugin/kv@1.1.0", "plugbox:plugin/log@1.1.0"} <= set(info.component_imports)
    directory = write_plugin(tmp_path / "c", data, name="comp", permissions={"log": True})
    manifest = plugbox.load_manifest(directory)
    with pytest.raises(plugbox.CapabilityError) as err:
        check_capabilities(info, manifest)
    assert err.value.import_name == "plugbox:plugin/kv@1.1.0"
    assert err.value.permission == "kv"
    # The shared types interface needs no permission.
    granted = write_plugin(tmp_path / "d", data, name="comp",
                           permissions={"log": True, "kv": {}})
    report = check_capabilities(info, plugbox.load_manifest(granted))
    assert report.ok and report.imported == {"kv", "log"}
