"""The ABI's single source of truth, ``abi/plugbox.wit``, against everything derived from it.

(a) the WIT parses and names the package ``plugbox:plugin@1.1.0``;
(b) its core-module lowering (``wasm-tools component embed --dummy-names legacy``) has exactly
    the imports and exports, with exactly the function types, that ``plugbox.engine._abispec`` lists;
(c) a module built with the Rust SDK declares the ABI version in its ``plugbox:abi-version``
    custom section, and ``wasm-tools component new`` turns it into a valid component of the
    ``plugin`` world (so the SDK's hand-written lowering matches the canonical one).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from plugbox import UsageError
from plugbox.engine import _abispec
from plugbox.authoring._build import (
    Signature,
    build_rust_plugins,
    custom_sections,
    find_rust_toolchain,
    find_wasm_tools,
    module_interface,
    parse_wat_interface,
)

ROOT = Path(__file__).resolve().parents[1]
WIT = ROOT / "abi" / "plugbox.wit"
WORKSPACE = ROOT / "sample-plugins" / "rust"


def wasm_tools(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs wasm-tools (the one next to sys.executable), failing the test on a non-zero exit."""
    proc = subprocess.run(
        [find_wasm_tools(), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"wasm-tools {' '.join(args)} failed:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def dummy_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The WIT's canonical core-module lowering, as wasm-tools generates it."""
    out = tmp_path_factory.mktemp("abi") / "dummy.wasm"
    wasm_tools("component", "embed", "--world", "plugin", "--dummy-names", "legacy", str(WIT), "-o", str(out))
    return out


@pytest.fixture(scope="session")
def echo_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The echo sample built with the Rust SDK (skipped only when no wasm32 toolchain exists)."""
    try:
        find_rust_toolchain()
    except UsageError as exc:
        pytest.skip(f"no Rust toolchain for wasm32-unknown-unknown: {exc}")
    staged = build_rust_plugins(WORKSPACE, tmp_path_factory.mktemp("staged"), ["echo"])
    return staged["echo"] / "plugin.wasm"


# ------------------------------------------------------------------------------------------ (a)


def test_wit_parses_and_names_the_package() -> None:
    text = wasm_tools("component", "wit", str(WIT)).stdout
    assert re.search(r"^package plugbox:plugin@1\.1\.0;$", text, re.M), text[:500]
    assert _abispec.ABI_VERSION == "1.1.0"
    # Every service of the ABI table is an interface the world imports.
    world = text[text.index("world plugin") :]
    for service in _abispec.SERVICES:
        assert re.search(rf"^\s*import {service};$", world, re.M), service
    assert re.search(r"^\s*export on-init: func\(", world, re.M)
    assert re.search(r"^\s*export on-hook: func\(", world, re.M)


def test_wit_error_variant_matches_error_kinds() -> None:
    text = wasm_tools("component", "wit", str(WIT)).stdout
    body = re.search(r"variant error \{(.*?)\}", text, re.S)
    assert body is not None
    cases = tuple(re.findall(r"^\s*([a-z-]+)\(string\),$", body.group(1), re.M))
    assert cases == _abispec.ERROR_KINDS


# ------------------------------------------------------------------------------------------ (b)


def test_lowering_imports_match_abispec(dummy_module: Path) -> None:
    iface = module_interface(dummy_module)
    got = {key: (params, results) for key, (kind, params, results) in iface.imports.items()}
    assert all(kind == "func" for kind, _, _ in iface.imports.values())
    assert got == _abispec.IMPORTS
    # The import modules are exactly the versioned service interfaces.
    assert {module for module, _ in got} == {
        m for m in _abispec.SERVICE_OF_MODULE if m.endswith("@" + _abispec.ABI_VERSION)}


def test_lowering_exports_match_abispec(dummy_module: Path) -> None:
    exports: dict[str, Signature] = dict(module_interface(dummy_module).exports)
    expected: dict[str, Signature] = {**_abispec.EXPORTS, **_abispec.OPTIONAL_EXPORTS}
    # `_initialize` is a convention of the dummy module, not of the WIT: ignore whether it is
    # there, but when it is, its type must match.
    if "_initialize" in exports:
        assert exports.pop("_initialize") == expected["_initialize"]
    expected.pop("_initialize")
    assert exports == expected
    assert not set(_abispec.EXPORTS) & set(_abispec.OPTIONAL_EXPORTS)


def test_wat_parser_handles_names_and_indices() -> None:
    """The WAT parser maps functions to their types by index, with or without a name section."""
    wat = """(module
  (type (;0;) (func (param i32 i32 i32)))
  (type (;1;) (func (result i64)))
  (type (;2;) (func (param i32 i32 i32 i32) (result i32)))
  (import "plugbox:plugin/log@1.0.0" "log" (func $_ZN3log17h0E (;0;) (type 0) (param i32 i32 i32)))
  (import "plugbox:plugin/clock@1.0.0" "now" (func (;1;) (type 1)))
  (memory (;0;) 17)
  (export "memory" (memory 0))
  (export "on-hook" (func 2))
  (export "__data\\5fend" (global 0))
  (func $hook (;2;) (type 2) (param i32 i32 i32 i32) (result i32)
    unreachable
  )
)"""
    iface = parse_wat_interface(wat)
    assert iface.imports == {
        ("plugbox:plugin/log@1.0.0", "log"): ("func", ("i32", "i32", "i32"), ()),
        ("plugbox:plugin/clock@1.0.0", "now"): ("func", (), ("i64",)),
    }
    assert iface.exports == {
        "memory": ("memory", (), ()),
        "on-hook": ("func", ("i32",) * 4, ("i32",)),
        "__data_end": ("global", (), ()),
    }


# ------------------------------------------------------------------------------------------ (c)


def test_sdk_module_declares_the_abi_version(echo_module: Path) -> None:
    # echo uses only 1.0 functions, so the SDK builds it as a 1.0 plugin (hooks! without
    # `abi: "1.1"`), which runs on every 1.x host.
    sections = custom_sections(echo_module.read_bytes())
    declared = [content for name, content in sections if name == _abispec.ABI_VERSION_SECTION]
    assert declared == [b"1.0.0"]
    # wasm-tools agrees.
    text = wasm_tools("print", str(echo_module)).stdout
    assert '(@custom "plugbox:abi-version"' in text


def test_sdk_module_becomes_a_valid_component(echo_module: Path, tmp_path: Path) -> None:
    embedded = tmp_path / "embedded.wasm"
    component = tmp_path / "component.wasm"
    wasm_tools("component", "embed", "--world", "plugin", str(WIT), str(echo_module), "-o", str(embedded))
    wasm_tools("component", "new", str(embedded), "-o", str(component))
    wasm_tools("validate", str(component))
    text = wasm_tools("component", "wit", str(component)).stdout
    assert "export on-hook: func(hook: string, payload: list<u8>) -> result<list<u8>, error>;" in text
    # The version marker survives inside the component's core module.
    printed = wasm_tools("print", str(component)).stdout
    assert re.search(r'\(@custom "plugbox:abi-version" \([a-z ]+\) "1\.0\.0"\)', printed)
