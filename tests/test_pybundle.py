"""Python source bundles on the shared plugbox Python runtime (issue 11 §1 and its §5 tests).

Every plugin here is built from source with ``plugbox build`` (build_python_plugin) and run in
a real Runtime. The interpreter is built and compiled once for this module into a private user
cache (PLUGBOX_CACHE_DIR under tmp): the first test that loads a bundle pays for it. Dependencies
come from wheels this file writes, through pip with --no-index/--find-links (PIP_NO_INDEX,
PIP_FIND_LINKS): nothing leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.authoring._build import BuildError
from plugbox import (HashMismatchError, IncompatibleHostError, ModuleInterfaceError,
                     PermissionDenied, Runtime)
from plugbox._pybundle import (LOCK_NAME, META_NAME, read_bundle, recipe_id, write_bundle)
from plugbox.authoring._pybuild import StaleBuildError, build_python_plugin, stale_build_error
from plugbox.engine._cache import ArtifactCache
from plugbox.engine._pyinterp import interpreter

pytestmark = pytest.mark.skipif(shutil.which("componentize-py", path=str(Path(sys.executable).parent))
                                is None and shutil.which("componentize-py") is None,
                                reason="componentize-py is not installed (python3 dev.py setup)")

ZERO = "0" * 64


@pytest.fixture(scope="module", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private user-level cache for this module's interpreter."""
    root = tmp_path_factory.mktemp("usercache")
    old = os.environ.get("PLUGBOX_CACHE_DIR")
    os.environ["PLUGBOX_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("PLUGBOX_CACHE_DIR", None)
    else:
        os.environ["PLUGBOX_CACHE_DIR"] = old


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local wheel directory pip resolves from, with the index switched off."""
    d = tmp_path / "wheels"
    d.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(d))
    return d


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str | bytes],
               tag: str = "py3-none-any") -> Path:
    """Write a minimal wheel (METADATA, WHEEL, RECORD) with ``files``."""
    dist = f"{name}-{version}.dist-info"
    members: dict[str, bytes] = {p: c.encode() if isinstance(c, str) else c
                                 for p, c in files.items()}
    members[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    members[f"{dist}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                f"Tag: {tag}\n").encode()
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
              for p, b in members.items()]
    members[f"{dist}/RECORD"] = ("\n".join(record + [f"{dist}/RECORD,,"]) + "\n").encode()
    path = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, b in members.items():
            zf.writestr(p, b)
    return path


def write_plugin(directory: Path, app: str, *, name: str = "py-bundle", hooks: list[str],
                 permissions: dict[str, Any] | None = None,
                 files: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "manifest_version": 1, "name": name, "version": "0.1.0", "abi": "1.1",
        "module": {"kind": "python-bundle", "path": "plugin.pybundle", "sha256": ZERO},
        "hooks": hooks, "permissions": permissions or {},
        "limits": {"fuel": 5_000_000_000, "memory_bytes": 128 << 20, "deadline_ms": 10_000},
    }
    (directory / "plugbox.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (directory / "app.py").write_text(textwrap.dedent(app))
    for rel, text in (files or {}).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(textwrap.dedent(text))
    return directory


ECHO_APP = """\
    from plugbox_sdk import hook, kv, log
    from helpers.text import title

    @hook("echo")
    def echo(payload: bytes) -> bytes:
        return payload

    @hook("title", json=True)
    def make_title(value):
        log.info("title")
        return {"title": title(value["text"])}

    @hook("store", json=True)
    def store(value):
        kv.set("k", b"v")
        return {"stored": True}
"""
HELPERS = {"helpers/__init__.py": "", "helpers/text.py": """\
    import re
    import string

    def title(text):
        return string.capwords(re.sub(r"\\s+", " ", text))
"""}


def build(directory: Path, **kw: Any) -> tuple[Path, list[str]]:
    lines: list[str] = []
    out = build_python_plugin(directory, progress=lines.append, **kw)
    return out, lines


# ----------------------------------------------------------------------------- build and call


def test_a_bundle_without_dependencies_builds_small_and_deterministic_and_runs(
        tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "echo", ECHO_APP, hooks=["echo", "title", "store"],
                          permissions={"log": True}, files=HELPERS)
    out, lines = build(plugin)
    assert out == plugin / "plugin.pybundle"
    assert any("Python bundle" in line and "KiB" in line for line in lines)
    data = out.read_bytes()
    assert len(data) < 8 * 1024
    manifest = json.loads((plugin / "plugbox.json").read_text())
    assert manifest["module"]["sha256"] == hashlib.sha256(data).hexdigest()
    bundle = read_bundle(data, "py-bundle")
    assert set(bundle.files) == {"app.py", "helpers/__init__.py", "helpers/text.py"}
    assert bundle.recipe == recipe_id()
    assert bundle.lock["dependencies"] == []
    # Unchanged sources: skipped; forced: the same bytes (deterministic zip).
    _, again = build(plugin)
    assert any("up to date" in line for line in again)
    build(plugin, force=True)
    assert out.read_bytes() == data

    with Runtime(state_dir=tmp_path / "state") as rt:
        p = rt.load(plugin)
        payload = os.urandom(1024)
        assert p.call("echo", payload) == payload
        assert p.call_json("title", {"text": "hello   bundled  world"}) == {
            "title": "Hello Bundled World"}
        with pytest.raises(PermissionDenied) as info:
            p.call_json("store", {})
        assert info.value.permission == "kv"
        assert 'add "kv" to permissions in plugbox.json' in str(info.value)


def test_two_bundle_plugins_share_one_compiled_interpreter(tmp_path: Path) -> None:
    a = write_plugin(tmp_path / "a", ECHO_APP, name="py-a", hooks=["echo", "title", "store"],
                     files=HELPERS)
    b = write_plugin(tmp_path / "b", ECHO_APP, name="py-b", hooks=["echo", "title", "store"],
                     files=HELPERS)
    build(a)
    build(b)
    with Runtime(state_dir=tmp_path / "state") as rt:
        pa, pb = rt.load(a), rt.load(b)
        assert pa._template._component is pb._template._component  # type: ignore[union-attr]
        assert pa.call("echo", b"a") == b"a" and pb.call("echo", b"b") == b"b"


_PROBE = """
import json, sys, time
import plugbox
from plugbox.engine._pyinterp import interpreter
started = time.perf_counter()
with plugbox.Runtime(state_dir=sys.argv[1]) as rt:
    source = interpreter(rt.engine).source
    p = rt.load(sys.argv[2])
    out = p.call("echo", b"ping")
print(json.dumps({"source": source, "out": out.decode(), "s": time.perf_counter() - started}))
"""


def test_a_second_state_dir_in_a_new_process_does_not_compile_the_interpreter(
        tmp_path: Path, user_cache: Path) -> None:
    plugin = write_plugin(tmp_path / "p", ECHO_APP, hooks=["echo", "title", "store"],
                          files=HELPERS)
    build(plugin)
    with Runtime(state_dir=tmp_path / "first") as rt:  # built and compiled here if not yet
        rt.load(plugin)
    compiled = sorted(p.name for p in (user_cache / "compiled").iterdir())
    env = dict(os.environ, PLUGBOX_CACHE_DIR=str(user_cache))
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "second"), str(plugin)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["out"] == "ping"
    assert report["source"] == "cache"  # neither built nor compiled again
    assert "compiling the Python runtime" not in proc.stderr
    assert sorted(p.name for p in (user_cache / "compiled").iterdir()) == compiled
    assert not (tmp_path / "second" / "cache").exists() or not any(
        (tmp_path / "second" / "cache").glob("*.cwasm"))


def test_a_tampered_cached_interpreter_is_discarded_never_used(tmp_path: Path,
                                                                user_cache: Path) -> None:
    with Runtime(state_dir=tmp_path / "s") as rt:
        interpreter(rt.engine)
        # A copy of the user cache, so this module's cache stays good.
        copy = tmp_path / "copy"
        shutil.copytree(user_cache, copy)
        wasm_cache = ArtifactCache(copy / "python", salt="plugbox-python-interpreter-wasm",
                                   key_file=copy / "cache.key")
        entry = wasm_cache.path_for(recipe_id())
        assert wasm_cache.get(recipe_id(), lambda p: p.read_bytes()) is not None
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
        assert wasm_cache.get(recipe_id(), lambda p: p.read_bytes()) is None
        assert not entry.exists()  # removed, to be rebuilt on the next load


# ------------------------------------------------------------------------------- dependencies


DEP_APP = """\
    from plugbox_sdk import hook
    from tinydep import shout

    @hook("shout", json=True)
    def do_shout(value):
        return {"out": shout(value["text"])}
"""


def test_dependencies_are_resolved_into_the_bundle_with_a_lock(tmp_path: Path,
                                                               wheels: Path) -> None:
    wheel = make_wheel(wheels, "tinydep", "1.0",
                       {"tinydep/__init__.py": "def shout(s):\n    return s.upper() + '!'\n"})
    plugin = write_plugin(tmp_path / "dep", DEP_APP, name="py-dep", hooks=["shout"])
    (plugin / "requirements.txt").write_text("tinydep==1.0\n")
    out, lines = build(plugin)
    bundle = read_bundle(out.read_bytes(), "py-dep")
    assert "tinydep/__init__.py" in bundle.files
    [dep] = bundle.lock["dependencies"]
    assert dep["name"] == "tinydep" and dep["version"] == "1.0"
    assert dep["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert bundle.lock["requirements"] == ["tinydep==1.0"]
    assert any("dependencies: tinydep 1.0" in line for line in lines)
    with Runtime(state_dir=tmp_path / "state") as rt:
        assert rt.load(plugin).call_json("shout", {"text": "hi"}) == {"out": "HI!"}

    # A change of dependencies invalidates the build.
    make_wheel(wheels, "tinydep", "1.1",
               {"tinydep/__init__.py": "def shout(s):\n    return s.upper() + '!!'\n"})
    (plugin / "requirements.txt").write_text("tinydep==1.1\n")
    out, lines = build(plugin)
    assert not any("up to date" in line for line in lines)
    assert read_bundle(out.read_bytes(), "py-dep").lock["dependencies"][0]["version"] == "1.1"
    with Runtime(state_dir=tmp_path / "state2") as rt:
        assert rt.load(plugin).call_json("shout", {"text": "hi"}) == {"out": "HI!!"}


def test_pyproject_dependencies_are_read(tmp_path: Path, wheels: Path) -> None:
    make_wheel(wheels, "tinydep", "1.0",
               {"tinydep/__init__.py": "def shout(s):\n    return s + '?'\n"})
    plugin = write_plugin(tmp_path / "pp", DEP_APP, name="py-pp", hooks=["shout"])
    (plugin / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["tinydep"]\n')
    out, _ = build(plugin)
    lock = read_bundle(out.read_bytes(), "py-pp").lock
    assert lock["declared_in"] == "pyproject.toml" and lock["requirements"] == ["tinydep"]


@pytest.mark.parametrize("tag,files,why", [
    ("cp311-cp311-linux_x86_64", {"fastdep/__init__.py": "",
                                  "fastdep/_speed.cpython-311-x86_64-linux-gnu.so": b"\x7fELF"},
     "it contains compiled code (fastdep/_speed.cpython-311-x86_64-linux-gnu.so)"),
    ("py3-none-any", {"fastdep/__init__.py": "", "fastdep/_speed.so": b"\x7fELF"},
     "it contains compiled code (fastdep/_speed.so)"),
])
def test_a_dependency_with_compiled_code_is_refused_by_name(
        tmp_path: Path, wheels: Path, tag: str, files: dict[str, Any], why: str) -> None:
    wheel = make_wheel(wheels, "fastdep", "2.0", files, tag=tag)
    plugin = write_plugin(tmp_path / "fast", "from plugbox_sdk import hook\n\n@hook('x')\n"
                          "def x(p):\n    return p\n", name="py-fast", hooks=["x"])
    (plugin / "requirements.txt").write_text("fastdep\n")
    with pytest.raises(BuildError) as info:
        build(plugin)
    message = str(info.value)
    assert f"the dependency fastdep 2.0 ({wheel.name}) is not pure Python: {why}" in message
    assert "cannot load native extensions" in message
    assert not (plugin / "plugin.pybundle").exists()


# ------------------------------------------------------------------------------ static checks


def test_imports_the_runtime_cannot_satisfy_fail_the_build_with_file_and_line(
        tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "bad", """\
        import json
        from plugbox_sdk import hook

        @hook("x")
        def x(payload):
            import subprocess
            return payload
    """, name="py-bad", hooks=["x"], files={"lib.py": """\
        import socket
        try:
            import ujson
        except ImportError:
            ujson = None
        import notinstalled_pkg
    """})
    with pytest.raises(BuildError) as info:
        build(plugin)
    message = str(info.value)
    assert (f"{plugin / 'app.py'}:6: imports subprocess, which cannot work in the plugbox "
            "sandbox") in message
    assert f"{plugin / 'lib.py'}:1: imports socket, which cannot work in the plugbox sandbox" in message
    assert (f"{plugin / 'lib.py'}:6: imports notinstalled_pkg, which the plugbox Python runtime "
            "does not have: it is neither in the bundle (declare a dependency in "
            "pyproject.toml or requirements.txt)") in message
    assert "ujson" not in message  # guarded by try: the code's own fallback
    # The failed build is recorded; a call says the build is stale.
    stale = stale_build_error(plugin / "plugin.pybundle", "py-bad")
    assert isinstance(stale, StaleBuildError)
    assert "the build is stale" in str(stale) and "imports" in str(stale)


def test_a_service_used_but_not_requested_is_warned_at_build(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "warn", """\
        from plugbox_sdk import hook, kv

        @hook("x")
        def x(payload):
            return kv.get("a") or b""
    """, name="py-warn", hooks=["x"])
    warnings: list[str] = []
    build_python_plugin(plugin, progress=lambda _m: None, warn=warnings.append)
    assert any(f"{plugin / 'app.py'}:1: plugin 'py-warn' uses plugbox_sdk.kv" in w
               and "does not request the 'kv' service" in w for w in warnings), warnings


def test_a_hook_the_manifest_declares_but_app_lacks_fails_the_build(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "miss", "from plugbox_sdk import hook\n", name="py-miss",
                          hooks=["gone"])
    with pytest.raises(plugbox.UsageError) as info:
        build(plugin)
    assert "declares hook(s) 'gone' but" in str(info.value)


# ------------------------------------------------------------------------ tampering, pinning


def test_a_tampered_bundle_is_refused_before_anything_runs(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "t", ECHO_APP, hooks=["echo", "title", "store"],
                          files=HELPERS)
    out, _ = build(plugin)
    data = bytearray(out.read_bytes())
    data[40] ^= 1
    out.write_bytes(bytes(data))
    with Runtime(state_dir=tmp_path / "s") as rt, pytest.raises(HashMismatchError):
        rt.load(plugin)


def _rebundle(plugin: Path, change: Any) -> None:
    """Rewrite the plugin's bundle with ``change(files, meta)`` applied, and re-pin it."""
    out = plugin / "plugin.pybundle"
    bundle = read_bundle(out.read_bytes(), "x")
    files = {p: t.encode() for p, t in bundle.files.items()}
    meta = dict(bundle.meta)
    change(files, meta)
    data = write_bundle(files, meta, bundle.lock)
    out.write_bytes(data)
    manifest = json.loads((plugin / "plugbox.json").read_text())
    manifest["module"]["sha256"] = hashlib.sha256(data).hexdigest()
    (plugin / "plugbox.json").write_text(json.dumps(manifest))


def test_a_bundle_for_another_interpreter_is_refused_with_the_fix(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "old", ECHO_APP, name="py-old",
                          hooks=["echo", "title", "store"], files=HELPERS)
    build(plugin)
    _rebundle(plugin, lambda files, meta: meta.update(interpreter={"recipe": "py0.1-deadbeef"}))
    with Runtime(state_dir=tmp_path / "s") as rt, pytest.raises(IncompatibleHostError) as info:
        rt.load(plugin)
    message = str(info.value)
    assert "built for the plugbox Python runtime py0.1-deadbeef" in message
    assert f"this plugbox runs {recipe_id()}" in message
    assert f"rebuild it with `plugbox build {plugin}`" in message


def test_inspect_reports_a_bundle_and_its_interpreter_mismatch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from plugbox.cli import main

    plugin = write_plugin(tmp_path / "seen", ECHO_APP, name="py-seen",
                          hooks=["echo", "title", "store"], files=HELPERS)
    build(plugin)
    assert main(["inspect", str(plugin), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["module"]["kind"] == "python-bundle"
    assert report["checks"]["module"]["detail"].startswith("well-formed Python bundle: ")
    assert report["checks"]["interface"]["detail"] == \
        f"built for this plugbox's Python runtime {recipe_id()}"
    _rebundle(plugin, lambda files, meta: meta.update(interpreter={"recipe": "py0.1-deadbeef"}))
    assert main(["inspect", str(plugin), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["checks"]["interface"]["ok"] is False
    assert "built for the Python runtime py0.1-deadbeef" in report["checks"]["interface"]["detail"]
    assert f"rebuild it with `plugbox build {plugin}`" in report["checks"]["interface"]["detail"]


def test_a_bundle_whose_entry_fails_to_import_reports_the_traceback(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "boom", ECHO_APP, name="py-boom",
                          hooks=["echo", "title", "store"], files=HELPERS)
    build(plugin)
    _rebundle(plugin, lambda files, meta: files.update(
        {"app.py": b"import helpers.text\nraise ValueError('no config')\n"}))
    with Runtime(state_dir=tmp_path / "s") as rt, pytest.raises(plugbox.GuestError) as info:
        rt.load(plugin)
    message = str(info.value)
    assert "importing the bundle's app.py failed: ValueError: no config" in message
    assert 'File "bundle:/app.py", line 2' in message


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


GOOD_META = json.dumps({"format": 1, "entry": "app"}).encode()


@pytest.mark.parametrize("data,why", [
    (b"not a zip", "not a zip archive"),
    (_zip({"../evil.py": b"", META_NAME: GOOD_META, LOCK_NAME: b"{}"}), "unsafe entry name"),
    (_zip({"/abs.py": b"", META_NAME: GOOD_META, LOCK_NAME: b"{}"}), "unsafe entry name"),
    (_zip({"app.py": b"\xff\xfe", META_NAME: GOOD_META, LOCK_NAME: b"{}"}), "is not UTF-8 text"),
    (_zip({"app.py": b"", LOCK_NAME: b"{}"}), f"no {META_NAME}"),
    (_zip({"lib.py": b"", META_NAME: GOOD_META, LOCK_NAME: b"{}"}),
     "its entry module app.py is missing"),
    (_zip({"app.py": b"", META_NAME: b'{"format": 9}', LOCK_NAME: b"{}"}), "not bundle format 1"),
    (_zip({f"m{i}.py": b"" for i in range(4097)}), "over the cap of 4096"),
    (_zip({"big.py": b" " * (9 << 20), META_NAME: GOOD_META, LOCK_NAME: b"{}"}),
     "over the 8388608 byte cap"),
])
def test_the_bundle_reader_enforces_its_bounds(data: bytes, why: str) -> None:
    with pytest.raises(ModuleInterfaceError) as info:
        read_bundle(data, "py-x")
    assert why in str(info.value)
    assert "rebuild it with `plugbox build`" in str(info.value)


# ---------------------------------------------------------------------------- sign and package


def test_a_signed_packaged_bundle_loads_under_a_require_policy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from plugbox.cli._main import main

    plugin = write_plugin(tmp_path / "signed", ECHO_APP, name="py-signed",
                          hooks=["echo", "title", "store"], files=HELPERS)
    build(plugin)
    keys = tmp_path / "keys"
    assert main(["keygen", "--output-dir", str(keys), "--comment", "t"]) == 0
    assert main(["sign", str(plugin), "--key", str(keys / "plugbox.key")]) == 0
    package = tmp_path / "py-signed.plugbox"
    assert main(["pack", str(plugin), "-o", str(package)]) == 0
    capsys.readouterr()
    with zipfile.ZipFile(package) as zf:
        assert "plugin.pybundle" in zf.namelist()
    trust = plugbox.TrustPolicy(trusted_keys=[keys / "plugbox.pub"], mode="require")
    with Runtime(state_dir=tmp_path / "s", trust=trust) as rt:
        p = rt.load(package)
        assert p.signers and p.call("echo", b"signed") == b"signed"
    # A bundle changed after signing (and re-pinned) no longer verifies.
    _rebundle(plugin, lambda files, meta: files.update({"app.py": files["app.py"] + b"\n#x\n"}))
    with Runtime(state_dir=tmp_path / "s2", trust=trust) as rt, pytest.raises(
            plugbox.SignatureError):
        rt.load(plugin)


def test_pinned_dependencies_are_reused_from_the_wheel_cache_without_pip(
        tmp_path: Path, wheels: Path) -> None:
    wheel = make_wheel(wheels, "tinydep", "3.0",
                       {"tinydep/__init__.py": "def shout(s):\n    return s * 2\n"})
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    first = write_plugin(tmp_path / "one", DEP_APP, name="py-one", hooks=["shout"])
    (first / "requirements.txt").write_text("tinydep==3.0\n")
    build(first)
    wheel.unlink()  # pip could not find it any more: the second build must not need pip
    second = write_plugin(tmp_path / "two", DEP_APP, name="py-two", hooks=["shout"])
    (second / "requirements.txt").write_text("tinydep==3.0\n")
    out, _ = build(second)
    assert read_bundle(out.read_bytes(), "py-two").lock["dependencies"][0]["sha256"] == digest
    # An unpinned requirement always asks pip, which now finds nothing.
    (second / "requirements.txt").write_text("tinydep\n")
    with pytest.raises(BuildError) as info:
        build(second)
    assert "resolving the plugin's dependencies (tinydep) with pip failed" in str(info.value)


def test_a_dependency_module_the_runtime_cannot_import_is_a_warning(
        tmp_path: Path, wheels: Path) -> None:
    make_wheel(wheels, "tinydep", "1.0", {
        "tinydep/__init__.py": "def shout(s):\n    return s\n",
        "tinydep/cli.py": "import subprocess\n"})
    plugin = write_plugin(tmp_path / "dw", DEP_APP, name="py-dw", hooks=["shout"])
    (plugin / "requirements.txt").write_text("tinydep==1.0\n")
    warnings: list[str] = []
    build_python_plugin(plugin, progress=lambda _m: None, warn=warnings.append)
    assert any(w.startswith("warning: <dependency>/tinydep/cli.py:1: imports subprocess, which "
                            "cannot work in the plugbox sandbox") for w in warnings), warnings
