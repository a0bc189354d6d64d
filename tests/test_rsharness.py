"""The Rust SDK's native test harness and the Rust author's loop (issue 11 §4, §3, §5).

`cargo test` runs on plugin crates built from source here: the scaffold's (`plugbox new --lang
rust`), the README's example, and one with the mistakes an author makes (a service used
without its permission, an endless loop, hook names that differ from the manifest); each
asserts what the author sees. The last tests are the stale-build scenario: a failed
`plugbox build` of a Rust plugin moves the old module aside and `plugbox call` says so.

Native cargo builds of the SDK take seconds each: one CARGO_TARGET_DIR serves the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from plugbox import UsageError
from plugbox.authoring import _build, _pybuild
from plugbox.authoring._build import find_rust_toolchain
from plugbox.cli import main as plugbox_main
from plugbox.services._services import _NOT_GRANTED
from tests.test_rsloop import target_dir, toolchain

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "sdk-rust" / "README.md"


@pytest.fixture(scope="module")
def native_toolchain() -> tuple[str, str]:
    """(cargo, rustc) for native `cargo test`: the one `plugbox build` picks (Debian's rustc
    1.63 on the reference machine, so the harness is tested on it), else any on PATH."""
    try:
        return find_rust_toolchain()
    except UsageError:
        cargo, rustc = shutil.which("cargo"), shutil.which("rustc")
        if cargo is None or rustc is None:
            pytest.skip("no cargo/rustc on this machine: the Rust harness tests need one")
        return cargo, rustc


def _new_crate(where: Path, name: str) -> Path:
    cwd = Path.cwd()
    os.chdir(where)
    try:
        assert plugbox_main(["new", "--lang", "rust", name]) in (0, None)
    finally:
        os.chdir(cwd)
    return where / name


def _cargo_test(crate: Path, toolchain: tuple[str, str], target_dir: Path,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cargo, rustc = toolchain
    env = dict(os.environ, RUSTC=rustc, CARGO_TARGET_DIR=str(target_dir))
    env.pop("CARGO_BUILD_TARGET", None)
    return subprocess.run(
        [cargo, "test", "--offline", "--manifest-path", str(crate / "Cargo.toml")],
        env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def _manifest(crate: Path, **changes: object) -> None:
    path = crate / "plugbox.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.update(changes)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _readme_example() -> str:
    """The plugin of the README's "Testing" section (its rust block with `fn visit`)."""
    section = README.read_text(encoding="utf-8").split("\n## Testing", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```rust\n(.*?)```", section, re.S) if "fn visit" in b]
    assert len(blocks) == 1, "the README's Testing section shows one plugin with fn visit"
    return blocks[0]


# ----------------------------------------------------------------------- tests that pass


def test_the_scaffold_tests_its_hooks_through_the_harness(
    tmp_path: Path, native_toolchain: tuple[str, str], target_dir: Path
) -> None:
    crate = _new_crate(tmp_path, "hello")
    proc = _cargo_test(crate, native_toolchain, target_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for test in ("greets_by_name", "hooks_through_the_harness",
                 "logging_needs_the_log_permission"):
        assert f"test tests::{test} ... ok" in out
    assert "test result: ok. 3 passed" in out


def test_the_readme_example_uses_kv_config_and_log_and_passes(
    tmp_path: Path, native_toolchain: tuple[str, str], target_dir: Path
) -> None:
    example = _readme_example()
    # The denial the README asserts is word for word the runtime's.
    assert _NOT_GRANTED["kv"].replace('"', '\\"') in example
    crate = _new_crate(tmp_path, "visits")
    (crate / "src" / "lib.rs").write_text(example, encoding="utf-8")
    _manifest(crate, abi="1.1", hooks=["visit"],
              permissions={"log": True, "config": True, "kv": {}})
    proc = _cargo_test(crate, native_toolchain, target_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test tests::counts_visits_and_logs ... ok" in out
    assert "test tests::kv_without_the_permission_is_denied ... ok" in out


def test_the_counter_sample_tests_pass_natively(
    tmp_path: Path, native_toolchain: tuple[str, str], target_dir: Path
) -> None:
    """sample-plugins/rust/counter's own tests (kv incl. increment and quotas, events, clock),
    run on a copy of the workspace so the source tree is never written."""
    workspace = tmp_path / "rust"
    shutil.copytree(ROOT / "sample-plugins" / "rust", workspace, symlinks=False,
                    ignore=shutil.ignore_patterns("target", "*.wasm"))
    proc = _cargo_test(workspace / "counter", native_toolchain, target_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test tests::incr_get_list_reset ... ok" in out
    assert "test tests::quota_and_permissions_are_the_manifests ... ok" in out


# ------------------------------------------------------------- what an author's mistakes show

_MISTAKES = """
use plugbox_sdk::json::{self, Value};
use plugbox_sdk::{hooks, kv, Result};

fn remember(input: Value) -> Result<Value> {
    kv::set("last", input.to_json().as_bytes())?;
    Ok(input)
}

fn spin(_payload: Vec<u8>) -> Result<Vec<u8>> {
    loop {
        std::hint::spin_loop();
    }
}

hooks! {
    "remember" => json::handler(remember),
    "spin" => spin,
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugbox_sdk::testing::Harness;

    #[test]
    fn remember_without_kv() {
        let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR")).start().unwrap();
        plugin.call_json("remember", &Value::object([("x", 1)])).unwrap();
    }

    #[test]
    fn spin_forever() {
        let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR")).start().unwrap();
        plugin.call("spin", b"").unwrap();
    }

    #[test]
    fn hooks_differ_from_the_manifest() {
        let manifest = r#"{"name": "mistakes", "hooks": ["remember", "spin", "forget"]}"#;
        Harness::manifest_json(manifest).start().unwrap();
    }

    #[test]
    fn kv_outside_a_call() {
        kv::get("last").unwrap();
    }
}
"""


def test_mistakes_fail_the_test_with_the_runtimes_words(
    tmp_path: Path, native_toolchain: tuple[str, str], target_dir: Path
) -> None:
    crate = _new_crate(tmp_path, "mistakes")
    (crate / "src" / "lib.rs").write_text(_MISTAKES, encoding="utf-8")
    # No kv in the manifest; a short deadline for the endless loop.
    _manifest(crate, hooks=["remember", "spin"], permissions={},
              limits={"fuel": 100_000_000, "memory_bytes": 16 << 20, "deadline_ms": 300})
    proc = _cargo_test(crate, native_toolchain, target_dir, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "test result: FAILED. 0 passed; 4 failed" in out, out

    # A service the manifest does not request: the runtime's denial, word for word.
    denied = _NOT_GRANTED["kv"].replace('"', '\\"')
    assert f'Denied("{denied}")' in out, out
    # An endless loop ends at limits.deadline_ms, as in the runtime, instead of hanging.
    assert ("DeadlineExceeded: plugin 'mistakes', hook 'spin': exceeded its wall-clock deadline "
            "(300 ms). Raise limits.deadline_ms in plugbox.json") in out, out
    # Hook registration is checked against the manifest when the harness starts.
    assert ("plugin 'mistakes': the hooks do not match plugbox.json: hooks! registers "
            '["remember", "spin"], "hooks" lists ["remember", "spin", "forget"]') in out, out
    # A host service outside the harness says why instead of the old bare panic.
    assert "plugbox host service kv.get called outside the test harness" in out, out


# --------------------------------------------------------------------------- stale builds


def _call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | None, str]:
    capsys.readouterr()
    status = plugbox_main(["call", *args])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def _run_build(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | None, str]:
    capsys.readouterr()
    status = plugbox_main(["build", *args])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_the_stale_mechanism_is_one_shared_with_python() -> None:
    assert _pybuild.StaleBuildError is _build.StaleBuildError
    assert _pybuild.stale_build_error is _build.stale_build_error
    assert issubclass(_build.StaleBuildError, UsageError)


def test_a_failed_rust_build_is_stale_and_call_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    toolchain: tuple[str, str], target_dir: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARGO_TARGET_DIR", str(target_dir))
    crate = _new_crate(tmp_path, "hello")
    status, out = _run_build(capsys, "hello")
    assert status in (0, None), out
    module = crate / "plugin.wasm"
    good = module.read_bytes()
    status, out = _call(capsys, "hello", "echo", "--text", "hi")
    assert status in (0, None) and "hi" in out, out

    # 1. A compile error: the build fails and the old module is moved aside.
    lib = crate / "src" / "lib.rs"
    source = lib.read_text(encoding="utf-8")
    lib.write_text(source.replace("Ok(payload)", "Ok(oops)", 1), encoding="utf-8")
    status, out = _run_build(capsys, "hello")
    assert status == 1, out
    assert "BuildError: cargo build of" in out
    assert "error[E0425]: cannot find value `oops` in this scope" in out
    assert not module.exists()
    assert (crate / "plugin.wasm.stale").read_bytes() == good
    record = json.loads((crate / "plugin.wasm.stale.json").read_text(encoding="utf-8"))
    assert record["plugin"] == "hello" and record["error"] == "BuildError"
    assert record["previous_module"] == "plugin.wasm.stale"

    status, out = _call(capsys, "hello", "echo", "--text", "hi")
    assert status == 2, out
    assert "StaleBuildError: plugin 'hello': the build is stale: the last `plugbox build` " \
           "failed at " in out, out
    assert "with BuildError: cargo build of" in out
    assert "error[E0425]: cannot find value `oops` in this scope; the previous plugin.wasm was " \
           "moved to plugin.wasm.stale and is not called. Fix the error and run `plugbox " \
           f"build {crate}`" in out, out
    # A second failed build keeps the record and never brings a module back.
    status, _ = _run_build(capsys, "hello")
    assert status == 1 and not module.exists()

    # 2. Fixed: the build succeeds, the marks are gone, the call runs the new module.
    lib.write_text(source, encoding="utf-8")
    status, out = _run_build(capsys, "hello")
    assert status in (0, None), out
    assert not (crate / "plugin.wasm.stale").exists()
    assert not (crate / "plugin.wasm.stale.json").exists()
    status, out = _call(capsys, "hello", "echo", "--text", "hi")
    assert status in (0, None) and "hi" in out, out

    # 3. Hook names that differ from the manifest fail the build the same way.
    _manifest(crate, hooks=["echo", "greet", "farewell"])
    status, out = _run_build(capsys, "hello")
    assert status == 1, out
    assert "the module's hooks do not match plugbox.json" in out
    assert not module.exists() and (crate / "plugin.wasm.stale").is_file()
    status, out = _call(capsys, "hello", "echo", "--text", "hi")
    assert status == 2 and "the build is stale" in out and "do not match plugbox.json" in out
