"""The static wasm reader and interface check: modules built from WAT text, the dummy module
wasm-tools generates from the WIT, and malformed or random bytes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugbox import (
    IncompatibleAbiError,
    ModuleInterfaceError,
    PlugboxError,
)
from plugbox.engine._abispec import ABI_VERSION_SECTION, EXPORTS, IMPORTS, SERVICES
from plugbox._manifest import Manifest, load_manifest
from plugbox.engine._wasmparse import (
    Export,
    Import,
    _Malformed,
    _Reader,
    check_module_interface,
    imported_services,
    inspect_module,
)

from tests.hostile._bin import leb

REPO = Path(__file__).resolve().parent.parent
WASM_TOOLS = Path(sys.executable).parent / "wasm-tools"

EXPORTS_WAT = """
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))
"""

VALID_WAT = """
(module
  (import "plugbox:plugin/log@1.0.0" "log" (func (param i32 i32 i32)))
  (import "plugbox:plugin/kv@1.0.0" "get" (func (param i32 i32 i32)))
  (import "plugbox:plugin/clock@1.0.0" "now" (func (result i64)))
  (import "plugbox:plugin/http@1.0.0" "fetch"
    (func (param i32 i32 i32 i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global (export "__heap_base") i32 (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
  (func (export "on-init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))
  (func (export "cabi_post_on-hook") (param i32))
  (func (export "_initialize"))
  (@custom "plugbox:abi-version" "1.0")
)
"""


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def module_with(imports: str = "", exports: str = EXPORTS_WAT, extra: str = "") -> bytes:
    return wat(f"(module {imports} {exports} {extra})")


VALID = wat(VALID_WAT)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return make_manifest(tmp_path, abi="1.0")


def make_manifest(directory: Path, *, abi: str) -> Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plugbox.json").write_text(
        json.dumps(
            {
                "manifest_version": 1,
                "name": "probe",
                "version": "0.1.0",
                "abi": abi,
                "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(b"").hexdigest()},
                "hooks": ["run"],
            }
        )
    )
    return load_manifest(directory)


def check(data: bytes, manifest: Manifest, abi_version: str = "1.0.0") -> frozenset[str]:
    return check_module_interface(inspect_module(data), manifest, abi_version=abi_version)


# -- reading -----------------------------------------------------------------------------------


def test_valid_module_is_read_completely() -> None:
    info = inspect_module(VALID)
    assert info.kind == "core"
    assert info.imports == (
        Import("plugbox:plugin/log@1.0.0", "log", "func", ("i32", "i32", "i32"), ()),
        Import("plugbox:plugin/kv@1.0.0", "get", "func", ("i32", "i32", "i32"), ()),
        Import("plugbox:plugin/clock@1.0.0", "now", "func", (), ("i64",)),
        Import("plugbox:plugin/http@1.0.0", "fetch", "func", ("i32",) * 9, ()),
    )
    assert info.exports == (
        Export("memory", "memory"),
        Export("__heap_base", "global"),
        Export("cabi_realloc", "func", ("i32",) * 4, ("i32",)),
        Export("on-init", "func", ("i32", "i32"), ("i32",)),
        Export("on-hook", "func", ("i32",) * 4, ("i32",)),
        Export("cabi_post_on-hook", "func", ("i32",), ()),
        Export("_initialize", "func", (), ()),
    )
    assert info.custom_sections[ABI_VERSION_SECTION] == b"1.0"


def test_value_types_are_named() -> None:
    data = module_with(
        imports='(import "m" "f" (func (param i32 i64 f32 f64 v128 funcref externref)'
        " (result f64)))"
    )
    (imp,) = inspect_module(data).imports
    assert imp.params == ("i32", "i64", "f32", "f64", "v128", "funcref", "externref")
    assert imp.results == ("f64",)


def test_exported_function_signature_follows_imported_function_indices() -> None:
    # Function indices count imports first; an exported import keeps its own signature.
    data = module_with(
        imports='(import "m" "f" (func $f (param i64)))',
        extra='(export "reexported" (func $f))',
    )
    exports = {e.name: e for e in inspect_module(data).exports}
    assert exports["reexported"] == Export("reexported", "func", ("i64",), ())


def test_non_function_imports_are_read() -> None:
    data = module_with(
        imports="""
        (import "env" "mem" (memory 1 2))
        (import "env" "tab" (table 1 funcref))
        (import "env" "g" (global (mut i32)))
        """,
        exports='(func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))',
    )
    kinds = [(i.module, i.name, i.kind) for i in inspect_module(data).imports]
    assert kinds == [("env", "mem", "memory"), ("env", "tab", "table"), ("env", "g", "global")]


def test_wit_dummy_module_and_its_component() -> None:
    """The module wasm-tools lowers from the WIT itself passes; its component is recognised."""
    if not WASM_TOOLS.exists():  # pragma: no cover - the dev venv ships wasm-tools
        pytest.skip("wasm-tools not installed")
    core = subprocess.run(
        [str(WASM_TOOLS), "component", "embed", "--world", "plugin", "--dummy-names", "legacy",
         str(REPO / "abi" / "plugbox.wit")],
        check=True, capture_output=True,
    ).stdout
    info = inspect_module(core)
    assert {(i.module, i.name): (i.params, i.results) for i in info.imports} == IMPORTS
    assert imported_services(info) == set(SERVICES)
    exports = {e.name: (e.kind, e.params, e.results) for e in info.exports}
    for name, spec in EXPORTS.items():
        assert exports[name] == spec
    component = subprocess.run(
        [str(WASM_TOOLS), "component", "new", "-"], input=core, check=True, capture_output=True
    ).stdout
    cinfo = inspect_module(component)
    assert cinfo.kind == "component"
    assert cinfo.imports == ()
    funcs = {e.name for e in cinfo.exports if e.kind == "func"}
    assert {"on-init", "on-hook"} <= funcs
    assert "producers" in cinfo.custom_sections


# -- the interface check -------------------------------------------------------------------------


def test_valid_module_passes(manifest: Manifest) -> None:
    assert check(VALID, manifest) == frozenset({"log", "kv", "clock", "http"})
    assert imported_services(inspect_module(VALID)) == {"log", "kv", "clock", "http"}


def test_minimal_module_passes(manifest: Manifest) -> None:
    assert check(module_with(), manifest) == frozenset()


def test_wasi_import_is_refused(manifest: Manifest) -> None:
    data = module_with(
        '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))'
    )
    with pytest.raises(ModuleInterfaceError) as info:
        check(data, manifest)
    message = str(info.value)
    assert message.startswith(
        "plugin 'probe': module imports wasi_snapshot_preview1.fd_write, which is not part of "
        "the plugbox ABI 1.0; plugins may import only plugbox:plugin/* functions"
    )
    assert "wasm32-unknown-unknown" in message
    assert info.value.plugin == "probe"


@pytest.mark.parametrize(
    ("module", "name", "phrase"),
    [
        ("env", "abort", "not part of the plugbox ABI 1.0"),
        ("plugbox:plugin/fs@1.0.0", "open", "not part of the plugbox ABI 1.0"),
        ("plugbox:plugin/kv", "get", "not part of the plugbox ABI 1.0"),
        ("plugbox:plugin/kv@1.0.0", "frobnicate", "has no function 'frobnicate'"),
        ("plugbox:plugin/types@1.0.0", "error", "not part of the plugbox ABI 1.0"),
    ],
)
def test_imports_outside_the_abi_are_refused(
    manifest: Manifest, module: str, name: str, phrase: str
) -> None:
    data = module_with(f'(import "{module}" "{name}" (func (param i32 i32 i32)))')
    with pytest.raises(ModuleInterfaceError, match=phrase):
        check(data, manifest)


def test_wrong_import_signature_is_refused(manifest: Manifest) -> None:
    data = module_with('(import "plugbox:plugin/kv@1.0.0" "get" (func (param i32 i32)))')
    with pytest.raises(ModuleInterfaceError) as info:
        check(data, manifest)
    assert "plugbox:plugin/kv@1.0.0.get with signature (i32, i32) -> ()" in str(info.value)
    assert "defines it as (i32, i32, i32) -> ()" in str(info.value)


def test_wrong_import_result_is_refused(manifest: Manifest) -> None:
    data = module_with('(import "plugbox:plugin/clock@1.0.0" "now" (func (result i32)))')
    with pytest.raises(ModuleInterfaceError, match=r"\(\) -> \(i64\)"):
        check(data, manifest)


@pytest.mark.parametrize(
    ("imports", "kind"),
    [
        ('(import "env" "memory" (memory 1))', "memory"),
        ('(import "plugbox:plugin/kv@1.0.0" "memory" (memory 1))', "memory"),
        ('(import "env" "table" (table 1 funcref))', "table"),
        ('(import "env" "g" (global i32))', "global"),
    ],
)
def test_imported_memory_table_global_are_refused(
    manifest: Manifest, imports: str, kind: str
) -> None:
    exports = """
      (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
      (func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))
    """
    # Even re-exporting an imported memory as "memory" does not make it acceptable.
    if kind == "memory":
        exports += '(export "memory" (memory 0))'
    else:
        exports += '(memory (export "memory") 1)'
    with pytest.raises(ModuleInterfaceError, match=f"imports a {kind} .*may import only plugbox:"):
        check(module_with(imports, exports), manifest)


def test_imported_tag_is_refused(manifest: Manifest) -> None:
    # wat2wasm here has no exception-handling support, so the tag import is added to a parsed
    # module's info; the binary reading of tag imports is covered by the fuzz tests.
    info = inspect_module(VALID)
    tag = Import("env", "exn", "tag", ("i32",), ())
    with pytest.raises(ModuleInterfaceError, match="imports a tag"):
        check_module_interface(replace(info, imports=(tag, *info.imports)), manifest)


def test_missing_on_hook_is_refused(manifest: Manifest) -> None:
    exports = """
      (memory (export "memory") 1)
      (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
    """
    with pytest.raises(ModuleInterfaceError) as info:
        check(module_with(exports=exports), manifest)
    assert "does not export 'on-hook'" in str(info.value)
    assert "(i32, i32, i32, i32) -> (i32)" in str(info.value)


@pytest.mark.parametrize(
    ("exports", "phrase"),
    [
        (
            """(memory (export "memory") 1)
               (func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))""",
            "does not export 'cabi_realloc'",
        ),
        (
            """(func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
               (func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))""",
            "does not export 'memory'",
        ),
        (
            """(memory 1)
               (func (export "memory"))
               (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
               (func (export "on-hook") (param i32 i32 i32 i32) (result i32) (i32.const 0))""",
            "exports 'memory' as a func",
        ),
        (
            """(memory (export "memory") 1)
               (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
               (func (export "on-hook") (param i32 i32) (result i32) (i32.const 0))""",
            "exports 'on-hook' with signature (i32, i32) -> (i32)",
        ),
        (
            EXPORTS_WAT + '(func (export "on-init") (param i32 i32))',
            "exports 'on-init' with signature (i32, i32) -> ()",
        ),
        (
            EXPORTS_WAT + '(func (export "_initialize") (result i32) (i32.const 0))',
            "exports '_initialize'",
        ),
        (
            EXPORTS_WAT + '(global (export "cabi_post_on-hook") i32 (i32.const 0))',
            "exports 'cabi_post_on-hook' as a global",
        ),
    ],
)
def test_export_problems_are_refused(manifest: Manifest, exports: str, phrase: str) -> None:
    with pytest.raises(ModuleInterfaceError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        check(module_with(exports=exports), manifest)


def test_component_without_the_world_exports_is_refused(manifest: Manifest) -> None:
    info = inspect_module(b"\x00asm\x0d\x00\x01\x00")
    assert info.kind == "component"
    with pytest.raises(ModuleInterfaceError, match="component exports no function 'on-init'"):
        check_module_interface(info, manifest)


# -- ABI versions in the module ------------------------------------------------------------------


def section(version: str) -> str:
    return f'(@custom "plugbox:abi-version" "{version}")'


@pytest.mark.parametrize(
    ("declared", "manifest_abi", "runtime", "error"),
    [
        ("1.0", "1.0", "1.0.0", None),
        ("1.0.0", "1.0", "1.0.0", None),
        (" 1.0\n", "1.0", "1.0.0", None),  # surrounding whitespace is tolerated
        ("1.0", "1.0", "1.3.0", None),
        ("1.1", "1.1", "1.1.0", None),
        ("1.1", "1.1", "1.0.0", IncompatibleAbiError),  # newer minor than the runtime
        ("2.0", "2.0", "1.0.0", IncompatibleAbiError),  # other major
        ("1.0", "1.1", "1.1.0", IncompatibleAbiError),  # disagrees with the manifest
        ("1.1", "1.0", "1.1.0", IncompatibleAbiError),
        ("one", "1.0", "1.0.0", ModuleInterfaceError),
        ("\xff", "1.0", "1.0.0", ModuleInterfaceError),
    ],
)
def test_abi_version_section(
    tmp_path: Path,
    declared: str,
    manifest_abi: str,
    runtime: str,
    error: type[Exception] | None,
) -> None:
    m = make_manifest(tmp_path, abi=manifest_abi)
    if declared == "\xff":
        extra = '(@custom "plugbox:abi-version" "\\ff")'
    else:
        extra = section(declared.replace("\n", "\\n"))
    data = module_with(extra=extra)
    if error is None:
        check(data, m, runtime)
    else:
        with pytest.raises(error) as info:
            check(data, m, runtime)
        assert "plugin 'probe'" in str(info.value)


def test_duplicate_abi_version_section_is_malformed() -> None:
    with pytest.raises(ModuleInterfaceError, match="appears twice"):
        inspect_module(module_with(extra=section("1.0") + section("1.0")))


def test_other_duplicate_custom_sections_keep_the_first() -> None:
    info = inspect_module(module_with(extra='(@custom "x" "a") (@custom "x" "b")'))
    assert info.custom_sections["x"] == b"a"


@pytest.mark.parametrize(
    ("version", "manifest_abi", "runtime", "ok"),
    [
        ("1.0.0", "1.0", "1.0.0", True),
        ("1.0.0", "1.0", "1.2.0", True),
        ("1.0.5", "1.0", "1.0.0", True),
        ("1.1.0", "1.1", "1.0.0", False),
        ("2.0.0", "1.0", "1.0.0", False),
        ("1.1.0", "1.0", "1.1.0", False),  # newer than the manifest says
        ("1.0.0", "1.1", "1.1.0", True),  # older imports in a newer plugin are fine
    ],
)
def test_import_module_versions(
    tmp_path: Path, version: str, manifest_abi: str, runtime: str, ok: bool
) -> None:
    m = make_manifest(tmp_path, abi=manifest_abi)
    data = module_with(f'(import "plugbox:plugin/log@{version}" "log" (func (param i32 i32 i32)))')
    if ok:
        assert check(data, m, runtime) == frozenset({"log"})
    else:
        with pytest.raises(IncompatibleAbiError, match=f"@{version}"):
            check(data, m, runtime)


# -- malformed binaries ------------------------------------------------------------------------


_leb = leb  # unsigned LEB128


HEADER = b"\x00asm\x01\x00\x00\x00"


def sect(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _leb(len(body)) + body


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"", "missing the \\0asm magic"),
        (b"\x00asm", "missing the \\0asm magic"),
        (b"\x7fELF\x01\x00\x00\x00", "missing the \\0asm magic"),
        (b"\x00asm\x02\x00\x00\x00", "unsupported WebAssembly binary version"),
        (b"\x00asm\x0c\x00\x01\x00", "unsupported WebAssembly binary version"),
        (HEADER + b"\x01", "unexpected end of data while reading section size"),
        (HEADER + b"\x01\x05\x00", "section 1 is 5 bytes long but only 1 bytes remain"),
        (HEADER + b"\x01\x80\x80\x80\x80\x80\x00", "longer than 5 bytes"),
        (HEADER + b"\x01\xff\xff\xff\xff\x7f", "out of range for u32"),
        (HEADER + b"\x0e\x00", "unknown section id 14"),
        (HEADER + sect(3, b"\x00") + sect(1, b"\x00"),
         "type section is duplicated or out of order"),
        (HEADER + sect(1, b"\x00") + sect(1, b"\x00"), "duplicated or out of order"),
        (HEADER + sect(1, b"\x01\x61\x00\x00"), "unknown type form 0x61"),
        (HEADER + sect(1, b"\x01\x4e\x00"), "GC-proposal types"),
        (HEADER + sect(1, b"\x01\x60\x01\x40\x00"), "unknown value type 0x40"),
        (HEADER + sect(1, b"\x01\x60\x00\x00\x00"), "1 unexpected trailing bytes"),
        (HEADER + sect(1, b"\xff\xff\xff\xff\x0f"), "cannot fit"),
        (HEADER + sect(2, b"\x01\x01m\x01f\x00\x00"), "type index 0 out of range"),
        (HEADER + sect(2, b"\x01\x01m\x01f\x07\x00"), "unknown import kind 0x07"),
        (HEADER + sect(2, b"\x01\x01m\x01f\x02\x10\x00"), "invalid limits flags"),
        (HEADER + sect(2, b"\x01\x01m\x01f\x03\x7f\x02"), "invalid global mutability"),
        (HEADER + sect(2, b"\x01\x01m\x01f\x01\x7f\x00\x00"), "expected a reference type"),
        (HEADER + sect(2, b"\x01\x01\xff\x01f\x00\x00"), "not valid UTF-8"),
        (HEADER + sect(0, b"\x02\xc3\x28"), "custom section name is not valid UTF-8"),
        (HEADER + sect(0, b""), "unexpected end of data"),
        (HEADER + sect(7, b"\x01\x01e\x00\x00"), "refers to func 0, but the module has only 0"),
        (HEADER + sect(7, b"\x01\x01e\x02\x00"), "refers to memory 0"),
        (HEADER + sect(7, b"\x01\x01e\x09\x00"), "unknown export kind"),
        (HEADER + sect(5, b"\x01\x00\x01") + sect(7, b"\x02\x01e\x02\x00\x01e\x02\x00"),
         "duplicate export name 'e'"),
        (HEADER + sect(1, b"\x01\x60\x00\x00") + sect(3, b"\x01\x00"), "there is no code"),
        (HEADER + sect(1, b"\x01\x60\x00\x00") + sect(3, b"\x01\x00")
         + sect(10, b"\x02\x02\x00\x0b\x02\x00\x0b"),
         "2 bodies for 1 declared functions"),
        (HEADER + sect(1, b"\x01\x60\x00\x00") + sect(3, b"\x01\x05"), "type index 5 out of range"),
        (b"\x00asm\x0d\x00\x01\x00" + b"\x0d\x00", "unknown component section id 13"),
        (b"\x00asm\x0d\x00\x01\x00" + b"\x01\x09\x00", "section 1 is 9 bytes long"),
        (b"\x00asm\x0d\x00\x01\x00" + sect(0, b"\x05abc"),
         "custom section name is 5 bytes long but only 3 bytes remain"),
    ],
)
def test_malformed_binaries_raise_module_interface_error(data: bytes, phrase: str) -> None:
    with pytest.raises(ModuleInterfaceError) as info:
        inspect_module(data)
    assert str(info.value).startswith("not a valid WebAssembly module: ")
    assert "at byte offset" in str(info.value)
    assert phrase in str(info.value)


def test_every_truncation_of_a_valid_module_is_refused_cleanly() -> None:
    for end in range(len(VALID)):
        try:
            inspect_module(VALID[:end])
        except ModuleInterfaceError:
            continue
        # A cut that falls exactly between sections leaves a well-formed (shorter) module.
        assert end >= 8


@pytest.mark.parametrize(
    ("data", "bits", "value"),
    [
        (b"\x00", 32, 0),
        (b"\x7f", 32, 127),
        (b"\x80\x01", 32, 128),
        (b"\xff\xff\xff\xff\x0f", 32, 2**32 - 1),
        (b"\x80\x80\x80\x80\x00", 32, 0),  # padded but within 5 bytes: allowed
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 64, 2**64 - 1),
    ],
)
def test_unsigned_leb128(data: bytes, bits: int, value: int) -> None:
    r = _Reader(data)
    assert r.unsigned(bits, "n") == value
    assert r.at_end()


@pytest.mark.parametrize(
    ("data", "bits"),
    [
        (b"\xff\xff\xff\xff\x1f", 32),  # unused bits set
        (b"\x80\x80\x80\x80\x80\x00", 32),  # six bytes
        (b"\x80", 32),  # truncated
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x03", 64),
    ],
)
def test_unsigned_leb128_malformed(data: bytes, bits: int) -> None:
    with pytest.raises(_Malformed):
        _Reader(data).unsigned(bits, "n")


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"\x00", 0),
        (b"\x7f", -1),
        (b"\x40", -64),
        (b"\x3f", 63),
        (b"\xc0\x00", 64),
        (b"\xff\xff\xff\xff\x0f", 2**32 - 1),  # largest s33
        (b"\x80\x80\x80\x80\x70", -(2**32)),  # smallest s33
    ],
)
def test_signed_leb128_s33(data: bytes, value: int) -> None:
    r = _Reader(data)
    assert r.signed(33, "n") == value
    assert r.at_end()


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff\x1f",  # 2**33 - 1: the sign bit is not repeated
        b"\x80\x80\x80\x80\x60",
        b"\x80\x80\x80\x80\x80\x00",
    ],
)
def test_signed_leb128_s33_malformed(data: bytes) -> None:
    with pytest.raises(_Malformed):
        _Reader(data).signed(33, "n")


# -- fuzzing -------------------------------------------------------------------------------------


def _only_plugbox_errors(data: bytes, manifest: Manifest) -> None:
    try:
        info = inspect_module(data)
    except PlugboxError:
        return
    try:
        check_module_interface(info, manifest)
    except PlugboxError:
        pass


FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_only_ever_succeed_or_raise_plugbox_errors(
    manifest: Manifest, data: bytes
) -> None:
    _only_plugbox_errors(data, manifest)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_after_a_valid_header(manifest: Manifest, data: bytes) -> None:
    _only_plugbox_errors(HEADER + data, manifest)
    _only_plugbox_errors(b"\x00asm\x0d\x00\x01\x00" + data, manifest)


@FUZZ
@given(
    st.integers(min_value=0, max_value=len(VALID)),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255)),
        max_size=4,
    ),
)
def test_truncated_and_mutated_valid_module(
    manifest: Manifest, end: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(VALID)
    for index, value in flips:
        data[index] = value
    _only_plugbox_errors(bytes(data[:end]), manifest)


def test_reader_never_compiles(monkeypatch: pytest.MonkeyPatch, manifest: Manifest) -> None:
    """inspect_module and the check are pure Python: wasmtime's compiler is never touched."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled")

    monkeypatch.setattr(wasmtime.Module, "__init__", boom)
    monkeypatch.setattr(wasmtime.Module, "validate", boom)
    check(VALID, manifest)


def _core_module(*sections: tuple[int, bytes]) -> bytes:
    return b"\0asm\1\0\0\0" + b"".join(bytes([sid]) + leb(len(body)) + body
                                      for sid, body in sections)


def test_function_and_code_sections_are_read_with_multibyte_sizes() -> None:
    # Two functions of type 0; bodies of 2 and 300 bytes (a two-byte size) read as such.
    types = (1, b"\x01\x60\x00\x00")
    funcs = (3, bytes([0x02, 0x00, 0x00]))
    body_small, body_big = b"\x00\x0b", b"\x00" + b"\x01" * 298 + b"\x0b"
    code = (10, b"\x02" + b"\x02" + body_small + b"\xac\x02" + body_big)
    info = inspect_module(_core_module(types, funcs, code))
    assert info.shape is not None
    (core,) = info.shape.modules
    assert core.largest_body == 300 and core.functions == 2


@pytest.mark.parametrize(
    ("sections", "phrase"),
    [
        ([(1, b"\x01\x60\x00\x00"), (3, b"\x01\x05")], "type index 5 out of range"),
        ([(1, b"\x01\x60\x00\x00"), (3, b"\x01\x00"), (10, b"\x01\x7f\x00")],
         "function body size says 127 bytes but only 1 bytes remain"),
        ([(1, b"\x01\x60\x00\x00"), (3, b"\x01\x00"), (10, b"\x01\xff\xff\xff\xff\x7f\x00")],
         "out of range for u32"),
        ([(1, b"\x01\x60\x00\x00"), (3, b"\x01\x00"), (10, b"\x01\xff\xff\xff\xff\xff\x00")],
         "longer than 5 bytes"),
    ],
)
def test_malformed_function_and_code_sections_are_refused(
        sections: list[tuple[int, bytes]], phrase: str) -> None:
    with pytest.raises(_Malformed, match=phrase):
        _inspect_core_only(_core_module(*sections))


def _inspect_core_only(data: bytes) -> None:
    from plugbox.engine._wasmparse import _inspect_core

    _inspect_core(data)


def test_a_start_function_is_recorded_for_the_instantiation_path() -> None:
    # Only modules with a start function run guest code while instantiating, so only their
    # instantiation releases the GIL (it keeps the deadline honest under Python-thread load).
    without = inspect_module(wasmtime.wat2wasm("(module (func))"))
    with_start = inspect_module(wasmtime.wat2wasm("(module (func $s) (start $s))"))
    assert without.shape is not None and with_start.shape is not None
    assert [m.start for m in without.shape.modules] == [False]
    assert [m.start for m in with_start.shape.modules] == [True]
