"""Building Python plugins (plugbox.authoring._pybuild), scaffolding (plugbox.authoring._scaffold) and the
authoring commands (plugbox.cli._authoring).

componentize-py takes seconds per build, so this file runs at most two per test run: the
``py-hostile`` sample and a scaffolded plugin, each built into ``.build/pytest-pybuild/`` and
left there with its stamp, so later runs rebuild only when a source changed. Everything else
(errors, cache keys, parsing) is tested without componentize-py. Calls into the built
components need the runtime's component support and are skipped until it is there.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.authoring import _pybuild, _scaffold
from plugbox.engine import _wit
from plugbox.authoring._build import BuildError, find_wasm_tools
from plugbox.cli._authoring import add_authoring_commands
from plugbox._policy import Policy

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample-plugins" / "python"
#: Persistent across runs (like .build/cargo-target): built components, their stamps, and the
#: runtime's compiled-artifact cache.
WORK = REPO / ".build" / "pytest-pybuild"
COMPONENT_MAGIC = b"\x00asm\x0d\x00\x01\x00"


def _plugbox_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plugbox")
    add_authoring_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _componentize_available() -> bool:
    try:
        _pybuild.find_componentize_py()
    except plugbox.UsageError:
        return False
    return True


needs_componentize = pytest.mark.skipif(
    not _componentize_available(), reason="componentize-py is not installed"
)


@pytest.fixture(scope="session")
def component_runtime() -> Iterator[plugbox.Runtime]:
    """A runtime with a persistent artifact cache: compiling an 18 MB component takes
    seconds, loading it from the cache a fraction of one."""
    state = WORK / "state"
    shutil.rmtree(state / "kv", ignore_errors=True)
    with plugbox.Runtime(state_dir=state / "kv", cache_dir=WORK / "artifact-cache",
                         policy=Policy(http_hosts=("127.0.0.1:*",))) as runtime:
        yield runtime


def _skip_unless_components(runtime: plugbox.Runtime, plugin: Path) -> None:
    try:
        runtime.verify(plugin)
    except plugbox.ModuleInterfaceError as exc:
        if "component" in str(exc):
            pytest.skip(f"the runtime does not load components yet: {exc}")
        raise


# -- the WIT ---------------------------------------------------------------------------------


def test_packaged_wit_is_identical_to_the_abi() -> None:
    packaged = REPO / "runtime" / "plugbox" / "abi" / "plugbox.wit"
    assert packaged.read_bytes() == (REPO / "abi" / "plugbox.wit").read_bytes(), (
        "runtime/plugbox/abi/plugbox.wit is a copy of abi/plugbox.wit: "
        "cp abi/plugbox.wit runtime/plugbox/abi/plugbox.wit"
    )
    assert _wit.wit_dir() == REPO / "abi"  # a checkout uses the source of truth


# -- pieces of the build, without componentize-py --------------------------------------------


def test_entry_module_is_valid_python_naming_the_world_class() -> None:
    source = _pybuild.entry_module_source("it's-a-name")
    tree = ast.parse(source)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["WitWorld", "Bulk"]  # the world's exports and the bulk interface
    assert "import app" in source and "Do not edit" in source


def _fingerprint(directory: Path, hooks: tuple[str, ...] = ("a",)) -> str:
    return _pybuild._fingerprint(directory, _pybuild.sdk_location(),
                                 _wit.wit_dir() / "plugbox.wit", "0.25.1", hooks, exclude=[])


def test_fingerprint_covers_sources_not_tests_or_outputs(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "data.json").write_text("{}")
    base = _fingerprint(tmp_path)
    for name, text in [("test_app.py", "t"), ("README.md", "r"), ("plugin.wasm", "w"),
                       ("plugin.wasm.pybuild.json", "{}"), ("plugbox.json", "{}"),
                       (".hidden", "h")]:
        (tmp_path / name).write_text(text)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_text("c")
    assert _fingerprint(tmp_path) == base
    assert _fingerprint(tmp_path, hooks=("a", "b")) != base
    (tmp_path / "data.json").write_text("{ }")
    changed = _fingerprint(tmp_path)
    assert changed != base
    (tmp_path / "helper.py").write_text("y = 2\n")
    assert _fingerprint(tmp_path) != changed


def _python_plugin(directory: Path, code: str, hooks: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(code)
    (directory / "plugbox.json").write_text(json.dumps({
        "manifest_version": 1, "name": "broken", "version": "0.1.0", "abi": "1.0",
        "module": {"path": "plugin.wasm", "sha256": "0" * 64}, "hooks": hooks,
    }, indent=2))
    return directory


@needs_componentize
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import json\n\nVALUE = json.loads('{}')['missing']\n",
         r"app.py:3: importing the plugin failed: KeyError: 'missing'"),
        ("def broken(:\n    pass\n", r"app.py:1: importing the plugin failed: SyntaxError"),
        ("import helper_that_is_missing\n",
         r"app.py:1: importing the plugin failed: ModuleNotFoundError"),
        ("from plugbox_sdk import kv\nkv.get('x')\n",
         r"app.py:2: importing the plugin failed: NoHostError: .*move the call into a hook"),
    ],
)
def test_a_broken_app_fails_before_componentize_py_with_file_and_line(
    tmp_path: Path, code: str, expected: str
) -> None:
    plugin = _python_plugin(tmp_path / "p", code, ["a"])
    with pytest.raises(plugbox.UsageError, match=expected) as info:
        _pybuild.build_python_plugin(plugin)
    assert str(plugin / "app.py") in str(info.value)
    assert "importlib" not in str(info.value)  # the traceback starts in the plugin's code
    assert not (plugin / "plugin.wasm").exists()


@needs_componentize
def test_manifest_hooks_need_handlers(tmp_path: Path) -> None:
    plugin = _python_plugin(tmp_path / "p", "from plugbox_sdk import hook\n", ["a", "b"])
    with pytest.raises(plugbox.UsageError, match=r"declares hook\(s\) 'a', 'b' but .* registers "
                                                 r"no handler for them"):
        _pybuild.build_python_plugin(plugin)


def test_missing_app_and_missing_componentize_py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = _python_plugin(tmp_path / "p", "", ["a"])
    (plugin / "app.py").unlink()
    with pytest.raises(plugbox.UsageError, match="no app.py; a Python plugin's code is app.py"):
        _pybuild.build_python_plugin(plugin)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(plugbox.UsageError, match=r"pip install componentize-py==0\.25\.1"):
        _pybuild.find_componentize_py()


def test_componentize_py_failures_are_reported_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = "from plugbox_sdk import hook\n\n@hook('a')\ndef a(p): return p\n\n" \
           "@hook('extra')\ndef extra(p): return p\n"
    plugin = _python_plugin(tmp_path / "p", code, ["a"])
    monkeypatch.setattr(_pybuild, "find_componentize_py", lambda: ("false", "0.25.1"))
    lines: list[str] = []
    with pytest.raises(BuildError, match="componentize-py failed"):
        _pybuild.build_python_plugin(plugin, progress=lines.append)
    assert any("registers hook(s) 'extra' that plugbox.json does not declare" in line
               for line in lines)
    assert lines[0].startswith("checking app.py") and lines[0].endswith(" s)")


def test_componentize_py_tracebacks_are_mapped_back_to_real_paths(tmp_path: Path) -> None:
    output = (
        "Traceback (most recent call last):\n  File \"/x/bin/componentize-py\", line 8\n"
        "AssertionError: Traceback (most recent call last):\n"
        '  File "/0/plugbox_entry.py", line 9, in <module>\n    import app\n'
        '  File "/1/app.py", line 4, in <module>\n    import distutils\n'
        "ModuleNotFoundError: No module named 'distutils'\n\n\nCaused by:\n    stuff\n"
    )
    mounts = [tmp_path / "scratch", tmp_path / "plugin", tmp_path / "sdk"]
    where, detail = _pybuild._componentize_error(output, mounts)
    assert where == f"{tmp_path / 'plugin' / 'app.py'}:4"
    assert detail.endswith("ModuleNotFoundError: No module named 'distutils'")
    assert "Caused by" not in detail and f'"{tmp_path / "scratch"}' in detail


# -- one real build: the py-hostile sample ---------------------------------------------------


@pytest.fixture(scope="session")
def built_hostile() -> tuple[Path, list[str]]:
    """sample-plugins/python/hostile built with componentize-py into .build/pytest-pybuild/
    (a cache hit unless its sources, the SDK, the WIT or componentize-py changed)."""
    if not _componentize_available():
        pytest.skip("componentize-py is not installed")
    lines: list[str] = []
    module = _pybuild.build_python_plugin(SAMPLES / "hostile", progress=lines.append,
                                          out_dir=WORK / "py-hostile")
    return module, lines


def test_build_writes_a_component_and_pins_its_sha256(
    built_hostile: tuple[Path, list[str]],
) -> None:
    module, lines = built_hostile
    assert module == WORK / "py-hostile" / "plugin.wasm"
    data = module.read_bytes()
    assert data[:8] == COMPONENT_MAGIC
    proc = subprocess.run([find_wasm_tools(), "validate", str(module)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    staged = json.loads((module.parent / "plugbox.json").read_text())
    assert staged["module"]["sha256"] == hashlib.sha256(data).hexdigest()
    source = json.loads((SAMPLES / "hostile" / "plugbox.json").read_text())
    assert source["module"]["sha256"] == "0" * 64  # out_dir leaves the source alone
    assert staged["hooks"] == source["hooks"]
    assert (module.parent / "README.md").is_file()
    stamp = json.loads((module.parent / "plugin.wasm.pybuild.json").read_text())
    assert stamp["sha256"] == staged["module"]["sha256"]
    assert stamp["componentize_py"] == _pybuild.COMPONENTIZE_PY_VERSION
    assert all(line.endswith(" s)") or line.startswith("  ...") for line in lines)


def test_an_unchanged_plugin_is_not_rebuilt(built_hostile: tuple[Path, list[str]]) -> None:
    module, _ = built_hostile
    before = module.stat().st_mtime_ns
    lines: list[str] = []
    again = _pybuild.build_python_plugin(SAMPLES / "hostile", progress=lines.append,
                                         out_dir=WORK / "py-hostile")
    assert again == module and module.stat().st_mtime_ns == before
    assert len(lines) == 1 and "is up to date" in lines[0]


def test_hostile_python_is_contained(
    built_hostile: tuple[Path, list[str]], component_runtime: plugbox.Runtime
) -> None:
    plugin_dir = built_hostile[0].parent
    _skip_unless_components(component_runtime, plugin_dir)
    plugin = component_runtime.load(plugin_dir)
    assert plugin.call("echo", b"hi") == b"hi"
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("read-file", b"/etc/passwd")
    assert info.value.kind == "failure" and "root:" not in str(info.value)
    env = json.loads(plugin.call("read-env"))
    assert not set(env) & set(os.environ), "the host's environment leaked into the plugin"
    sockets_before = plugin._template.sockets_denied  # type: ignore[union-attr]
    with pytest.raises(plugbox.PermissionDenied) as denied:
        plugin.call("open-socket", b"127.0.0.1:9")
    assert denied.value.permission == "wasi:sockets"
    assert "PermissionError" in str(denied.value)
    assert plugin._template.sockets_denied == sockets_before + 1  # type: ignore[union-attr]
    with pytest.raises(plugbox.FuelExhausted):
        plugin.call("loop")
    with pytest.raises(plugbox.StackOverflow) as stack:
        plugin.call("recurse")
    assert "RecursionError" in str(stack.value)
    # Python frames live on the heap: with the recursion limit lifted, fuel runs out first.
    with pytest.raises(plugbox.FuelExhausted):
        plugin.call("recurse-unlimited")
    with pytest.raises(plugbox.MemoryLimitExceeded) as memory:
        plugin.call("bomb")
    assert "MemoryError" in str(memory.value) and memory.value.limit == "memory"
    assert plugin.call("echo", b"still serving") == b"still serving"


def test_component_stdout_and_stderr_reach_the_log_capped_per_call(
    built_hostile: tuple[Path, list[str]], component_runtime: plugbox.Runtime,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # py-hostile requests nothing; a copy whose manifest grants `log` (the module, and so its
    # sha256, is unchanged) shows where its output goes.
    logged = tmp_path / "py-hostile-logged"
    shutil.copytree(built_hostile[0].parent, logged)
    manifest = json.loads((logged / "plugbox.json").read_text())
    manifest["permissions"]["log"] = True
    (logged / "plugbox.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.py-hostile"):
        assert component_runtime.load(logged).call("print") == b"printed"
        silent = component_runtime.load(built_hostile[0].parent)
        before = len(caplog.records)
        assert silent.call("print") == b"printed"
        assert not [r for r in caplog.records[before:] if r.name == "plugbox.plugin.py-hostile"]
    lines = [r.getMessage() for r in caplog.records if r.name == "plugbox.plugin.py-hostile"]
    stdout = [line for line in lines if line.startswith("[stdout] line ")]
    assert 600 <= len(stdout) <= 660  # 64 KiB of the 100 KB, in 100-byte lines
    assert stdout[0] == "[stdout] line 0000 " + "x" * 90
    assert any(line.startswith("[stdout] ... ") and "dropped" in line for line in lines)
    assert "[stderr] to stderr" in lines


def test_the_component_backend_runs_the_built_plugin(
    built_hostile: tuple[Path, list[str]], component_runtime: plugbox.Runtime
) -> None:
    from plugbox_sdk import FailureError, NotFoundError, testing

    plugin_dir = built_hostile[0].parent
    _skip_unless_components(component_runtime, plugin_dir)
    harness = testing.load(plugin_dir, backend="component", cache_dir=WORK / "artifact-cache")
    try:
        assert harness.backend == "component"
        assert harness.call("echo", "same API") == b"same API"
        with pytest.raises(NotFoundError):
            harness.call("undeclared")
        with pytest.raises(FailureError, match="FileNotFoundError|PermissionError"):
            harness.call("read-file")
    finally:
        harness.close()


# -- scaffolding -----------------------------------------------------------------------------


def test_new_plugin_refuses_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(plugbox.UsageError, match="invalid plugin name 'Bad'"):
        _scaffold.new_plugin("Bad", "python", tmp_path)
    with pytest.raises(plugbox.UsageError, match="unknown language 'go'"):
        _scaffold.new_plugin("ok", "go", tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(plugbox.UsageError, match="already exists and is not empty"):
        _scaffold.new_plugin("taken", "python", tmp_path)
    monkeypatch.setenv("PLUGBOX_SDK_RUST", str(tmp_path))
    with pytest.raises(plugbox.UsageError, match="PLUGBOX_SDK_RUST=.*no Cargo.toml"):
        _scaffold.new_plugin("ok", "rust", tmp_path)
    monkeypatch.delenv("PLUGBOX_SDK_RUST")
    assert _scaffold.rust_sdk_dir() == REPO / "sdk-rust"


def _run_pytest(test_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env},
        cwd=test_file.parent,
    )


def test_new_python_plugin_tests_builds_and_answers(
    tmp_path: Path, component_runtime: plugbox.Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _plugbox_cli(["new", "hello-py", "--dir", str(tmp_path)]) == 0
    fresh = tmp_path / "hello-py"
    assert capsys.readouterr().out.strip() == str(fresh)
    assert sorted(p.name for p in fresh.iterdir()) == [
        ".gitignore", "README.md", "app.py", "plugbox.json", "test_app.py"]
    native = _run_pytest(fresh / "test_app.py")
    assert native.returncode == 0, native.stdout + native.stderr
    assert "4 passed" in native.stdout

    if not _componentize_available():
        pytest.skip("componentize-py is not installed")
    # Build in a persistent copy so an unchanged scaffold is a cache hit on later runs.
    plugin = WORK / "scaffold" / "hello-py"
    plugin.mkdir(parents=True, exist_ok=True)
    for file in fresh.iterdir():
        shutil.copyfile(file, plugin / file.name)
    assert _plugbox_cli(["build", str(plugin)]) == 0
    module = Path(capsys.readouterr().out.strip())
    assert module == plugin / "plugin.pybundle"  # a new plugin is a source bundle
    pinned = json.loads((plugin / "plugbox.json").read_text())["module"]["sha256"]
    assert pinned == hashlib.sha256(module.read_bytes()).hexdigest()

    _skip_unless_components(component_runtime, plugin)
    greeting = component_runtime.load(plugin).call_json("greet", {"name": "Ada"})
    assert greeting == {"greeting": "Hello, Ada!"}
    built = _run_pytest(plugin / "test_app.py", PLUGBOX_TEST_BACKEND="component",
                        PLUGBOX_HOME=str(WORK / "state" / "home"))
    assert built.returncode == 0, built.stdout + built.stderr


def test_new_rust_plugin_builds_and_answers(
    tmp_path: Path, runtime: plugbox.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = _scaffold.new_plugin("hello-rs", "rust", tmp_path)
    cargo_toml = (plugin / "Cargo.toml").read_text()
    assert f'path = "{(REPO / "sdk-rust").as_posix()}"' in cargo_toml
    # A shared target directory keeps the SDK compiled between runs.
    monkeypatch.setenv("CARGO_TARGET_DIR", str(WORK / "cargo-target"))
    lines: list[str] = []
    module = _scaffold.build_rust_crate(plugin, progress=lines.append)
    assert module == plugin / "plugin.wasm" and module.read_bytes()[:4] == b"\x00asm"
    pinned = json.loads((plugin / "plugbox.json").read_text())["module"]["sha256"]
    assert pinned == hashlib.sha256(module.read_bytes()).hexdigest()
    assert lines[-1].startswith(f"wrote {module}")
    loaded = runtime.load(plugin)
    assert loaded.call_json("greet", {"name": "Ada"}) == {"greeting": "Hello, Ada!"}
    assert loaded.call("echo", b"any bytes") == b"any bytes"
    with pytest.raises(plugbox.GuestError, match="name must not be empty"):
        loaded.call_json("greet", {"name": " "})


def test_build_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _plugbox_cli(["build", str(tmp_path / "missing")]) == 2
    assert "no such plugin directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _plugbox_cli(["build", str(tmp_path / "empty")]) == 2
    assert "neither app.py (a Python plugin) nor Cargo.toml" in capsys.readouterr().err
    assert _plugbox_cli(["new", "Bad Name", "--dir", str(tmp_path)]) == 2
    assert "invalid plugin name" in capsys.readouterr().err


# -- the SDK's component glue, against the real generated bindings ---------------------------


def _load_bindings(out: Path, services: list[str]) -> dict[str, object]:
    """Generate ``componentize-py bindings`` for the build world importing ``services`` into
    ``out``, and import them with plugbox_sdk's component glue on top."""
    import importlib

    program, _ = _pybuild.find_componentize_py()
    wit = out / "wit"
    (wit / "deps").mkdir(parents=True)
    (wit / "world.wit").write_text(_pybuild.world_wit(services))
    shutil.copyfile(_wit.wit_dir() / "plugbox.wit", wit / "deps" / "plugbox.wit")
    subprocess.run([program, "-d", str(wit), "-w", "plugin", "bindings", str(out / "py")],
                   check=True, capture_output=True, timeout=120)
    sys.path.insert(0, str(out / "py"))
    modules: dict[str, object] = {
        name: importlib.import_module(f"wit_world.imports.{name}")
        for name in ("types", *services)
    }
    modules["Err"] = importlib.import_module("componentize_py_types").Err
    modules["glue"] = importlib.import_module("plugbox_sdk._component")
    return modules


@pytest.fixture
def bindings(tmp_path: Path) -> Iterator[Callable[[list[str]], dict[str, object]]]:
    """Factory: the generated bindings of a build world, importable, plus plugbox_sdk's
    component glue; sys.path and sys.modules are restored afterwards."""
    if not _componentize_available():
        pytest.skip("componentize-py is not installed")
    saved_modules, saved_path = dict(sys.modules), list(sys.path)
    try:
        yield lambda services: _load_bindings(tmp_path, services)
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - set(saved_modules):
            del sys.modules[name]
        from plugbox_sdk import _host

        _host.install(None)


def test_world_imports_only_the_requested_services() -> None:
    wit = _pybuild.world_wit(["kv", "log"])
    assert "import plugbox:plugin/log@1.1.0;\n    import plugbox:plugin/kv@1.1.0;" in wit
    assert "plugbox:plugin/config" not in wit and "export on-hook" in wit
    with pytest.raises(ValueError, match="unknown services: files"):
        _pybuild.world_wit(["files"])


def test_component_glue_without_a_service_answers_like_the_host(
    bindings: Callable[[list[str]], dict[str, object]],
) -> None:
    from plugbox_sdk import DeniedError

    glue: Any = bindings(["log"])["glue"]
    host = glue.ComponentHost()
    with pytest.raises(DeniedError, match='kv: permission not granted; add "kv" to permissions'):
        host.kv_get("k")
    with pytest.raises(DeniedError, match="http: permission not granted"):
        host.http_fetch("GET", "http://x/", [], b"")
    assert (host.clock_now(), host.clock_monotonic()) == (0, 0)


def test_component_glue_maps_errors_both_ways(
    bindings: Callable[[list[str]], dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugbox_sdk import DeniedError, LimitReachedError, _hooks, http, kv, log

    modules: Any = bindings(["log", "kv", "http"])
    types, Err, glue = modules["types"], modules["Err"], modules["glue"]
    logged: list[tuple[object, str]] = []

    def kv_get(key: str) -> bytes | None:
        raise Err(types.Error_Denied("kv: permission not granted"))

    def kv_set(key: str, value: bytes) -> None:
        raise Err(types.Error_LimitReached("kv: quota"))

    def fetch(req: object) -> object:
        return modules["http"].Response(200, [("a", "b")], req.body + b"!")

    monkeypatch.setattr(modules["kv"], "get", kv_get)
    monkeypatch.setattr(modules["kv"], "set", kv_set)
    monkeypatch.setattr(modules["http"], "fetch", fetch)
    monkeypatch.setattr(modules["log"], "log", lambda level, msg: logged.append((level, msg)))

    registry = _hooks.Registry()
    registry.add_hook("get", lambda p: kv.get("k"))
    registry.add_hook("set", lambda p: kv.set("k", p))
    registry.add_hook("fetch", lambda p: http.fetch("http://h/", "POST", body=p).body)
    registry.add_hook("log", lambda p: log.warn(p.decode()))
    monkeypatch.setattr(_hooks, "_default", registry)

    with pytest.raises(Err) as info:
        glue.on_hook("get", b"")
    assert info.value.value == types.Error_Denied("kv: permission not granted")
    with pytest.raises(Err) as info:
        glue.on_hook("set", b"v")
    assert info.value.value == types.Error_LimitReached("kv: quota")
    with pytest.raises(Err) as info:
        glue.on_hook("nope", b"")
    assert info.value.value == types.Error_NotFound('unknown hook "nope"')
    assert glue.on_hook("fetch", b"body") == b"body!"
    assert glue.on_hook("log", b"careful") == b""
    assert logged == [(modules["log"].Level.WARN, "careful")]
    glue.on_init("{}")
    # Inside the hook, the SDK saw its own errors, not the bindings' Err.
    host = glue.ComponentHost()
    with pytest.raises(DeniedError):
        host.kv_get("k")
    with pytest.raises(LimitReachedError):
        host.kv_set("k", b"")
