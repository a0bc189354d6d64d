"""Payload encoding across the component boundary (issue 11, section 2).

Python plugins export ``bulk#on-hook-hex`` (abi/plugbox.wit): payload and result travel as
hexadecimal text, so the cost does not depend on the bytes' values. Components built before it
exist export only ``on-hook-text`` (latin-1 code points) and keep working; a guest that answers
``on-hook-hex`` with something other than hexadecimal text is an AbiViolation naming plugin and
hook. Speed is measured in bench/run.py (section ``python``), not here.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

import plugbox
from plugbox.engine import _fastpath_component as fc
from tests.conftest import BUMP_REALLOC, REPO, write_plugin

WASM_TOOLS = Path(sys.executable).parent / "wasm-tools"
needs_wasm_tools = pytest.mark.skipif(not WASM_TOOLS.exists(), reason="wasm-tools not installed")
WIT = REPO / "abi" / "plugbox.wit"
CACHE = REPO / ".build" / "pytest-pybuild" / "artifact-cache"
BULK = "plugbox:plugin/bulk@1.1.0"
HEX_LINE = "    on-hook-hex: func(hook: string, payload: string) -> result<string, error>;\n"


@pytest.fixture(scope="module")
def py_echo() -> Path:
    """The Python echo sample built from source by plugbox build (shared with
    test_python_samples' build under .build/pytest-pybuild while its sources are unchanged)."""
    from plugbox.authoring import _pybuild

    module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / "echo",
                                          out_dir=REPO / ".build" / "pytest-pybuild" / "py-echo")
    return module.parent


@pytest.fixture(params=["c", "binascii"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The host's hex codec: _speedups' bulk functions, or the binascii fallback used when the
    accelerator lacks them."""
    if request.param == "c":
        if fc._bulk_hex_into is None or fc._bulk_unhex is None:
            pytest.skip("the C accelerator's bulk functions are not built")
    else:
        monkeypatch.setattr(fc, "_bulk_hex_into", None)
        monkeypatch.setattr(fc, "_bulk_unhex", None)
    return str(request.param)


@pytest.fixture
def rt(tmp_path: Path) -> plugbox.Runtime:
    with plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=CACHE) as runtime:
        yield runtime


def test_python_plugin_round_trips_random_bytes_of_every_size(
        rt: plugbox.Runtime, py_echo: Path, codec: str) -> None:
    echo = rt.load(py_echo)
    instance = echo._idle[0]  # type: ignore[union-attr]
    assert instance._hex is not None, "plugbox build must export bulk#on-hook-hex"
    gen = random.Random(11)
    payloads = [b"", b"\x00", b"\xff", b"\x80", bytes(range(256)), bytes(range(255, -1, -1)),
                *(gen.randbytes(n) for n in (2, 3, 127, 128, 1023, 1024, 65535, 65536)),
                gen.randbytes(1 << 20), bytes(1 << 20), b"\xff" * (1 << 20),
                bytes(gen.choices(range(32, 127), k=1 << 20))]
    for payload in payloads:
        got = echo.call("echo", payload)
        assert got == payload, f"{len(payload)} bytes came back changed"


def _component(tmp_path: Path, name: str, *, hex_body: str | None,
               text_body: str = "") -> bytes:
    """A hand-made component of world plugin-bulk. ``hex_body`` (the result area's address,
    as WAT) makes it export bulk#on-hook-hex; None builds it against abi/plugbox.wit without
    on-hook-hex, as components were built before it existed. on-hook-text echoes its payload
    string unless ``text_body`` says otherwise."""
    wit_text = WIT.read_text()
    assert HEX_LINE in wit_text
    funcs = f"""
  (func (export "{BULK}#on-hook-text") (param i32 i32 i32 i32) (result i32)
    (global.set $calls_text (i32.add (global.get $calls_text) (i32.const 1)))
    {text_body or '''(i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get 2))
    (i32.store (i32.const 24) (local.get 3))
    (i32.const 16)'''})
  (func (export "cabi_post_{BULK}#on-hook-text") (param i32)
    (global.set $heap (i32.const 4096)))
"""
    if hex_body is not None:
        funcs += f"""
  (func (export "{BULK}#on-hook-hex") (param i32 i32 i32 i32) (result i32)
    {hex_body})
  (func (export "cabi_post_{BULK}#on-hook-hex") (param i32)
    (global.set $heap (i32.const 4096)))
"""
    else:
        wit_text = wit_text.replace(HEX_LINE, "")
    wat = f"""
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $calls_text (mut i32) (i32.const 0))
  (data (i32.const 256) "zz")
  (data (i32.const 264) "abc")
  (data (i32.const 272) "\\c3\\a9\\c3\\a9")
  (data (i32.const 280) "0aFf")
  (data (i32.const 300) "text")
{BUMP_REALLOC.format(prologue="")}
  (func (export "on-init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 8) (i32.const 0)) (i32.const 8))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get 2))
    (i32.store (i32.const 24) (local.get 3))
    (i32.const 16))
  (func (export "cabi_post_on-hook") (param i32) (global.set $heap (i32.const 4096)))
  {funcs}
)
"""
    work = tmp_path / name
    work.mkdir()
    (work / "wit").mkdir()
    (work / "wit" / "plugbox.wit").write_text(wit_text)
    (work / "core.wasm").write_bytes(bytes(wasmtime.wat2wasm(wat)))
    for args in (["component", "embed", str(work / "wit"), "--world", "plugin-bulk",
                  str(work / "core.wasm"), "-o", str(work / "embedded.wasm")],
                 ["component", "new", str(work / "embedded.wasm"), "-o", str(work / "c.wasm")]):
        subprocess.run([str(WASM_TOOLS), *args], check=True, capture_output=True, timeout=120)
    return (work / "c.wasm").read_bytes()


def _answer(ptr: int, length: int) -> str:
    """WAT: return ok(string at ptr, length)."""
    return f"""(i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const {ptr}))
    (i32.store (i32.const 24) (i32.const {length}))
    (i32.const 16)"""


@needs_wasm_tools
def test_components_without_on_hook_hex_keep_the_latin1_text_path(
        rt: plugbox.Runtime, tmp_path: Path) -> None:
    old = write_plugin(tmp_path / "old", _component(tmp_path, "old", hex_body=None),
                       name="old-bulk", hooks=("echo",))
    plugin = rt.load(old)
    instance = plugin._idle[0]  # type: ignore[union-attr]
    assert instance._hex is None and instance._text is not None
    gen = random.Random(12)
    for payload in (b"", bytes(range(256)), gen.randbytes(4097), gen.randbytes(1 << 20)):
        assert plugin.call("echo", payload) == payload


@needs_wasm_tools
def test_the_host_prefers_on_hook_hex_when_both_are_exported(
        rt: plugbox.Runtime, tmp_path: Path, codec: str) -> None:
    # on-hook-hex answers "0aFf" whatever it is sent (both cases of hex digits are accepted);
    # on-hook-text would answer "text".
    both = write_plugin(tmp_path / "both", _component(
        tmp_path, "both", hex_body=_answer(280, 4), text_body=_answer(300, 4)),
        name="both-bulk", hooks=("echo",))
    plugin = rt.load(both)
    assert plugin.call("echo", b"\x00\xff") == b"\x0a\xff"


@needs_wasm_tools
@pytest.mark.parametrize("case, body, words", [
    ("not-hex", _answer(256, 2), ["not hexadecimal", "two hex digits per byte"]),
    ("odd-length", _answer(264, 3), ["odd number", "3 characters", "plugbox build"]),
    ("non-ascii", _answer(272, 4), ["not hexadecimal"]),
    # A length past the end of the guest's memory: wasmtime refuses it before anything is
    # copied.
    ("oversize", _answer(256, 0x7FFF_FFF0), ["canonical abi"]),
])
def test_malformed_on_hook_hex_results_are_abi_violations(
        rt: plugbox.Runtime, tmp_path: Path, case: str, body: str, words: list[str],
        codec: str) -> None:
    plugin_dir = write_plugin(tmp_path / case, _component(tmp_path, case, hex_body=body),
                              name=f"bad-{case}", hooks=("echo",))
    plugin = rt.load(plugin_dir)
    with pytest.raises(plugbox.AbiViolation) as info:
        plugin.call("echo", b"payload")
    err = info.value
    assert isinstance(err, plugbox.PluginCallError)
    assert err.plugin == f"bad-{case}" and err.hook == "echo"
    text = str(err)
    assert f"bad-{case}" in text and "'echo'" in text
    for word in words:
        assert word in text.lower(), text
    # The instance stays usable for the next call (the ABI violation is the guest's answer).
    with pytest.raises(plugbox.AbiViolation):
        plugin.call("echo", b"")
