"""Static properties of the Rust SDK's output: the sample plugins, built from source.

These check what can be seen without running a module: which host services each sample
imports (only those it calls: the linker drops the rest), that every module has the ABI's
exports with the ABI's types and declares the ABI version, and that staging writes real
sha256 digests without touching the source tree. Running the modules is the runtime tests' job.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from plugbox import UsageError
from plugbox.engine import _abispec
from plugbox.authoring._build import (
    BuildError,
    ModuleInterface,
    build_rust_plugins,
    custom_sections,
    find_rust_toolchain,
    module_interface,
    workspace_plugins,
)

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "sample-plugins" / "rust"
SDK = ROOT / "sdk-rust"
SCHEMA = ROOT / "runtime" / "plugbox" / "schemas" / "manifest-v1.schema.json"
SAMPLES = ("echo", "word-stats", "counter", "fetcher", "hostile", "probe", "web-greeter")

#: The services each sample imports, exactly.
EXPECTED_SERVICES: dict[str, frozenset[str]] = {
    "echo": frozenset(),
    "word-stats": frozenset({"log", "config"}),
    "counter": frozenset({"kv", "events", "clock"}),
    "fetcher": frozenset({"http", "random", "clock", "log"}),
    "hostile": frozenset({"log"}),
    "web-greeter": frozenset(),
    "probe": frozenset(_abispec.SERVICES) - {"host"},  # a 1.0 plugin: no ABI 1.1 interface
}


def _source_manifests() -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(WORKSPACE.glob("*/plugbox.json"))}


@pytest.fixture(scope="session")
def toolchain() -> tuple[str, str]:
    try:
        return find_rust_toolchain()
    except UsageError as exc:
        pytest.skip(f"no Rust toolchain for wasm32-unknown-unknown: {exc}")


@pytest.fixture(scope="session")
def staged(
    toolchain: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every sample built once (one cargo build) and staged into a temp dir."""
    before = _source_manifests()
    result = build_rust_plugins(WORKSPACE, tmp_path_factory.mktemp("samples"))
    assert _source_manifests() == before, "staging modified the source manifests"
    return result


@pytest.fixture(scope="session")
def interfaces(staged: dict[str, Path]) -> dict[str, ModuleInterface]:
    return {name: module_interface(path / "plugin.wasm") for name, path in staged.items()}


def _services(iface: ModuleInterface) -> frozenset[str]:
    return frozenset(_abispec.SERVICE_OF_MODULE[module] for module, _ in iface.imports)


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------------------------ imports


def test_all_samples_are_built(staged: dict[str, Path]) -> None:
    assert sorted(staged) == sorted(SAMPLES)


def test_echo_imports_nothing(interfaces: dict[str, ModuleInterface]) -> None:
    assert interfaces["echo"].imports == {}


def test_word_stats_imports_only_log_and_config(interfaces: dict[str, ModuleInterface]) -> None:
    # The SDK imports each function from the ABI version that added it: 1.0 ones at 1.0.0.
    assert set(interfaces["word-stats"].imports) == {
        (_abispec.import_module("log", "1.0.0"), "log"),
        (_abispec.import_module("config", "1.0.0"), "get"),
    }


def test_counter_imports_increment_from_1_1(interfaces: dict[str, ModuleInterface]) -> None:
    imports = set(interfaces["counter"].imports)
    assert (_abispec.import_module("kv", "1.1.0"), "increment") in imports
    assert (_abispec.import_module("kv", "1.0.0"), "get") in imports


#: The services of ABI 1.0; the samples other than counter are 1.0 plugins.
SERVICES_1_0 = EXPECTED_SERVICES["probe"]


def test_probe_imports_every_service(interfaces: dict[str, ModuleInterface]) -> None:
    assert _services(interfaces["probe"]) == SERVICES_1_0


@pytest.mark.parametrize("name", SAMPLES)
def test_imports_are_exactly_the_services_used(
    name: str, interfaces: dict[str, ModuleInterface]
) -> None:
    assert _services(interfaces[name]) == EXPECTED_SERVICES[name]


def test_samples_together_use_every_service(interfaces: dict[str, ModuleInterface]) -> None:
    used = frozenset().union(
        *(_services(interfaces[n]) for n in ("word-stats", "counter", "fetcher"))
    )
    assert used == SERVICES_1_0


@pytest.mark.parametrize("name", SAMPLES)
def test_every_import_has_the_abi_signature(
    name: str, interfaces: dict[str, ModuleInterface]
) -> None:
    for key, (kind, params, results) in interfaces[name].imports.items():
        assert kind == "func", key
        canonical = _abispec.canonical_import(*key)
        assert canonical is not None, key
        assert _abispec.IMPORTS[canonical] == (params, results), key


# ------------------------------------------------------------------------------------ exports


@pytest.mark.parametrize("name", SAMPLES)
def test_exports_follow_the_abi(name: str, interfaces: dict[str, ModuleInterface]) -> None:
    exports = interfaces[name].exports
    for export, signature in _abispec.EXPORTS.items():
        assert exports.get(export) == signature, export
    for export, signature in _abispec.OPTIONAL_EXPORTS.items():
        if export in exports:
            assert exports[export] == signature, export


@pytest.mark.parametrize("name", [n for n in SAMPLES if n != "hostile"])
def test_sdk_plugins_export_init_and_post_returns(
    name: str, interfaces: dict[str, ModuleInterface]
) -> None:
    exports = interfaces[name].exports
    for export in ("on-init", "cabi_post_on-init", "cabi_post_on-hook"):
        assert exports.get(export) == _abispec.OPTIONAL_EXPORTS[export], export


@pytest.mark.parametrize("name", SAMPLES)
def test_module_declares_abi_version_once(name: str, staged: dict[str, Path]) -> None:
    sections = custom_sections((staged[name] / "plugin.wasm").read_bytes())
    declared = [c for n, c in sections if n == _abispec.ABI_VERSION_SECTION]
    # counter uses kv.increment (hooks! { abi: "1.1", ... }); the others are 1.0 plugins.
    assert declared == [b"1.1.0" if name == "counter" else b"1.0.0"]


# ------------------------------------------------------------------------------------ staging


@pytest.mark.parametrize("name", SAMPLES)
def test_staged_manifest_pins_the_module(name: str, staged: dict[str, Path]) -> None:
    manifest = _load(staged[name] / "plugbox.json")
    module = staged[name] / manifest["module"]["path"]
    assert hashlib.sha256(module.read_bytes()).hexdigest() == manifest["module"]["sha256"]
    source = _load(WORKSPACE / name / "plugbox.json")
    source["module"]["sha256"] = manifest["module"]["sha256"]
    assert manifest == source  # nothing but the digest differs
    jsonschema.validate(manifest, _load(SCHEMA))
    assert (staged[name] / "README.md").read_bytes() == (WORKSPACE / name / "README.md").read_bytes()


@pytest.mark.parametrize("name", [n for n in SAMPLES if n != "probe"])
def test_manifest_requests_exactly_the_imported_services(
    name: str, staged: dict[str, Path], interfaces: dict[str, ModuleInterface]
) -> None:
    requested = frozenset(_load(staged[name] / "plugbox.json").get("permissions", {}))
    assert requested == _services(interfaces[name])


def test_probe_requests_no_permissions(staged: dict[str, Path]) -> None:
    assert _load(staged["probe"] / "plugbox.json").get("permissions", {}) == {}


@pytest.mark.parametrize("name", SAMPLES)
def test_manifest_hooks_match_the_readme(name: str) -> None:
    """Every hook the manifest declares is documented in the plugin's README."""
    manifest = _load(WORKSPACE / name / "plugbox.json")
    readme = (WORKSPACE / name / "README.md").read_text(encoding="utf-8")
    for hook in manifest["hooks"]:
        assert f"`{hook}`" in readme or f" {hook} " in readme, hook


def test_source_manifests_are_pinned_to_the_reference_build(
    toolchain: tuple[str, str], staged: dict[str, Path]
) -> None:
    """The committed sha256 digests are those of the reference toolchain's build (Debian's
    rustc 1.63). After changing the SDK or a sample, re-pin with
    `python -m plugbox.authoring._build --pin`."""
    version = subprocess.run(
        [toolchain[1], "--version"], capture_output=True, text=True, check=True
    ).stdout
    if not version.startswith("rustc 1.63.0"):
        pytest.skip(f"digests are pinned for rustc 1.63.0, this is {version.strip()}")
    stale = {
        name: _load(WORKSPACE / name / "plugbox.json")["module"]["sha256"]
        for name in SAMPLES
        if _load(WORKSPACE / name / "plugbox.json")["module"]["sha256"]
        != _load(staged[name] / "plugbox.json")["module"]["sha256"]
    }
    assert not stale, f"stale sha256 in sample manifests: {sorted(stale)}; run `python -m plugbox.authoring._build --pin`"


def test_build_reuses_the_target_dir_and_is_reproducible(
    staged: dict[str, Path], tmp_path: Path
) -> None:
    again = build_rust_plugins(WORKSPACE, tmp_path, ["echo", "word-stats"])
    assert sorted(again) == ["echo", "word-stats"]
    for name in again:
        assert (again[name] / "plugin.wasm").read_bytes() == (staged[name] / "plugin.wasm").read_bytes()


def test_unknown_plugin_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no plugin named 'nope'"):
        build_rust_plugins(WORKSPACE, tmp_path, ["nope"])


def test_workspace_plugins_reads_members() -> None:
    plugins = workspace_plugins(WORKSPACE)
    assert sorted(plugins) == sorted(SAMPLES)
    assert plugins["word-stats"].wasm_file == "word_stats.wasm"
    assert plugins["word-stats"].package == "word-stats"


def test_cargo_failure_is_a_build_error(toolchain: tuple[str, str], tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "broken" / "src").mkdir(parents=True)
    (ws / "Cargo.toml").write_text('[workspace]\nmembers = ["broken"]\n')
    (ws / "broken" / "Cargo.toml").write_text(
        '[package]\nname = "broken"\nversion = "0.1.0"\nedition = "2021"\n'
        '[lib]\ncrate-type = ["cdylib"]\n'
    )
    (ws / "broken" / "src" / "lib.rs").write_text("this is not rust\n")
    (ws / "broken" / "plugbox.json").write_text(
        json.dumps({"name": "broken", "module": {"path": "plugin.wasm", "sha256": "0" * 64}})
    )
    with pytest.raises(BuildError, match="cargo build"):
        build_rust_plugins(ws, tmp_path / "out", target_dir=tmp_path / "target")


# --------------------------------------------------------------------------- SDK unit tests


def test_sdk_unit_tests_pass_natively(toolchain: tuple[str, str], tmp_path: Path) -> None:
    """The SDK's own Rust unit tests (JSON parser, errors), run on the build machine."""
    cargo, rustc = toolchain
    env = dict(os.environ, RUSTC=rustc, CARGO_TARGET_DIR=str(ROOT / ".build" / "cargo-native"))
    proc = subprocess.run(
        [cargo, "test", "--offline", "--lib", "--manifest-path", str(SDK / "Cargo.toml")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    if proc.returncode != 0 and "can't find crate for `std`" in proc.stderr:
        pytest.skip("the toolchain has no standard library for the build machine")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test result: ok" in proc.stdout
