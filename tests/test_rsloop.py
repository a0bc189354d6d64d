"""The author's loop in Rust (issue 11 §4): sdk-rust/README.md's commands run as written,
`plugbox build` pins the module's sha256 itself (an author never pastes a hash), and a hook
name that differs between `hooks!` and plugbox.json fails the build, not the first call."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from plugbox import UsageError
from plugbox.authoring._build import (
    BuildError,
    check_module_hooks,
    find_rust_toolchain,
    module_hooks,
)
from plugbox.cli import main as plugbox_main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "sdk-rust" / "README.md"


@pytest.fixture(scope="module")
def toolchain() -> tuple[str, str]:
    try:
        return find_rust_toolchain()
    except UsageError as exc:
        pytest.skip(f"no Rust toolchain for wasm32-unknown-unknown: {exc}")


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cargo target dir for the module's crates, so the SDK compiles once."""
    return tmp_path_factory.mktemp("cargo-target")


@pytest.fixture()
def crate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toolchain: tuple[str, str],
          target_dir: Path) -> Path:
    """A fresh `plugbox new --lang rust hello` in tmp_path (the cwd)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARGO_TARGET_DIR", str(target_dir))
    assert plugbox_main(["new", "--lang", "rust", "hello"]) in (0, None)
    return tmp_path / "hello"


def _call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | None, str]:
    capsys.readouterr()
    status = plugbox_main(["call", *args])
    out = capsys.readouterr()
    return status, out.out + out.err


# ------------------------------------------------------------------------ hashes are never pasted


def test_build_pins_the_hash_and_a_rebuild_after_an_edit_repins_it(
    crate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    def pinned() -> str:
        return str(json.loads((crate / "plugbox.json").read_text())["module"]["sha256"])

    assert plugbox_main(["build", "hello"]) in (0, None)
    first = pinned()
    assert first == hashlib.sha256((crate / "plugin.wasm").read_bytes()).hexdigest()
    status, out = _call(capsys, "hello", "greet", "--text", '{"name": "Ada"}')
    assert status in (0, None), out
    assert "Hello, Ada!" in out

    lib = crate / "src" / "lib.rs"
    source = lib.read_text()
    assert "Hello, {}!" in source
    lib.write_text(source.replace("Hello, {}!", "Howdy, {}!"))
    assert plugbox_main(["build", "hello"]) in (0, None)
    second = pinned()
    assert second != first
    assert second == hashlib.sha256((crate / "plugin.wasm").read_bytes()).hexdigest()
    status, out = _call(capsys, "hello", "greet", "--text", '{"name": "Ada"}')
    assert status in (0, None), out
    assert "Howdy, Ada!" in out


# ---------------------------------------------------------------------- hooks checked at build


def test_the_sdk_records_the_hooks_in_a_custom_section(
    crate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plugbox_main(["build", "hello"]) in (0, None)
    assert module_hooks((crate / "plugin.wasm").read_bytes()) == ["echo", "greet"]


def _set_manifest_hooks(crate: Path, hooks: list[str]) -> None:
    path = crate / "plugbox.json"
    doc = json.loads(path.read_text())
    doc["hooks"] = hooks
    path.write_text(json.dumps(doc, indent=2) + "\n")


def test_a_manifest_hook_the_module_lacks_fails_the_build(crate: Path) -> None:
    _set_manifest_hooks(crate, ["echo", "greet", "farewell"])
    with pytest.raises(BuildError) as info:
        from plugbox.authoring._scaffold import build_rust_crate
        build_rust_crate(crate)
    message = str(info.value)
    assert info.value.plugin == "hello"
    assert "'farewell'" in message and "not-found" in message
    assert "hooks! registers ['echo', 'greet']" in message
    assert "lists ['echo', 'greet', 'farewell']" in message
    assert not (crate / "plugin.wasm").exists(), "a failed build must not write the module"


def test_a_registered_hook_the_manifest_lacks_fails_the_build(
    crate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _set_manifest_hooks(crate, ["echo"])
    capsys.readouterr()
    status = plugbox_main(["build", "hello"])
    err = capsys.readouterr().err
    assert status not in (0, None)
    assert "BuildError" in err or "hooks do not match" in err, err
    assert "hooks! registers 'greet' but the manifest does not declare it" in err
    assert "['echo', 'greet']" in err and "['echo']" in err
    assert not (crate / "plugin.wasm").exists()


def test_an_extra_and_a_missing_hook_are_both_named(crate: Path) -> None:
    lib = crate / "src" / "lib.rs"
    source = lib.read_text()
    assert '"greet" => json::handler(greet),' in source
    lib.write_text(source.replace('"greet" => json::handler(greet),',
                                  '"greet.v2" => json::handler(greet),'))
    from plugbox.authoring._scaffold import build_rust_crate
    with pytest.raises(BuildError) as info:
        build_rust_crate(crate)
    message = str(info.value)
    assert "declares 'greet' but hooks! does not register it" in message
    assert "hooks! registers 'greet.v2' but the manifest does not declare it" in message
    # The fix the message names works: declare what hooks! registers.
    _set_manifest_hooks(crate, ["echo", "greet.v2"])
    build_rust_crate(crate)
    assert module_hooks((crate / "plugin.wasm").read_bytes()) == ["echo", "greet.v2"]


def test_a_module_without_the_section_is_not_checked() -> None:
    bare = b"\0asm\x01\0\0\0"
    assert module_hooks(bare) is None
    check_module_hooks("p", bare, ["anything"])  # no section, nothing to compare


def test_the_staged_samples_record_exactly_their_manifest_hooks(
    tmp_path: Path, toolchain: tuple[str, str]
) -> None:
    """The workspace build (`python -m plugbox.authoring._build`) runs the same check; every
    sample built with the SDK's hooks! records the hooks its manifest declares."""
    from plugbox.authoring._build import build_rust_plugins

    staged = build_rust_plugins(ROOT / "sample-plugins" / "rust", tmp_path, toolchain=toolchain)
    recorded = {}
    for name, directory in staged.items():
        manifest = json.loads((directory / "plugbox.json").read_text())
        hooks = module_hooks((directory / manifest["module"]["path"]).read_bytes())
        if hooks is not None:
            assert hooks == manifest["hooks"], name
            recorded[name] = hooks
    assert {"echo", "word-stats", "counter", "fetcher", "probe"} <= set(recorded)


# ------------------------------------------------------------------- the README runs as written


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, output lines shown under it) for each `$ ` line of the console blocks of the
    README's "From `plugbox new` to `plugbox call`" section."""
    section = text.split("\n## From `plugbox new` to `plugbox call`", 1)[1].split("\n## ", 1)[0]
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line)
    return out


def test_the_readme_shows_the_scaffold_build_call_loop() -> None:
    commands = [c for c, _ in readme_commands(README.read_text(encoding="utf-8"))]
    assert "plugbox new --lang rust hello-plugin" in commands
    assert "plugbox build hello-plugin" in commands
    assert any(c.startswith("plugbox call . greet") for c in commands)
    # The by-hand build names the toolchain that has the wasm32 std on this reference machine.
    assert any(c.startswith("RUSTC=/usr/bin/rustc /usr/bin/cargo build --offline") for c in commands)


def test_the_readme_commands_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    toolchain: tuple[str, str],
) -> None:
    if toolchain[1] != "/usr/bin/rustc":
        pytest.skip("the README's by-hand commands name Debian's toolchain (/usr/bin/rustc)")
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)  # the by-hand copy reads target/
    cwd = tmp_path
    ran = 0
    for command, shown in readme_commands(README.read_text(encoding="utf-8")):
        argv = shlex.split(command)
        if argv[0] == "cd":
            cwd = (cwd / argv[1]).resolve()
            continue
        if argv[0] == "plugbox":
            monkeypatch.chdir(cwd)
            capsys.readouterr()
            status = plugbox_main(argv[1:])
            captured = capsys.readouterr()
            output = captured.out + captured.err
            expect_fail = any(line.startswith("plugbox: ") for line in shown)
            assert (status not in (0, None)) == expect_fail, f"`{command}` exited {status}:\n{output}"
        else:
            proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True,
                                  text=True, timeout=600)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{output}"
        for line in shown:
            line = line.strip()
            # Output lines the README shows verbatim (not elided, not machine-specific).
            if line and "..." not in line and not re.search(r"[0-9a-f]{64}|\d+\.\d+s|/path/to", line) \
                    and not line.startswith(("Compiling", "Finished", "Created", "wrote ")):
                assert line in output, f"`{command}`: the README shows {line!r}; got:\n{output}"
        ran += 1
    assert ran >= 6


def test_new_writes_a_lock_file_both_cargos_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cargo test` with a new cargo first would otherwise write lock format 4, which the
    Debian cargo `plugbox build` falls back to cannot parse."""
    import tomllib

    monkeypatch.chdir(tmp_path)
    assert plugbox_main(["new", "--lang", "rust", "hello"]) in (0, None)
    lock = tomllib.loads((tmp_path / "hello" / "Cargo.lock").read_text())
    sdk = tomllib.loads((ROOT / "sdk-rust" / "Cargo.toml").read_text())
    assert lock["version"] == 3
    assert {p["name"]: p["version"] for p in lock["package"]} == {
        "hello": "0.1.0", "plugbox-sdk": sdk["package"]["version"]}
