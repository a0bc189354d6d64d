"""The author's loop for Python plugins (issue 11 section 3): the native harness enforces the
deadline, ``plugbox build`` warns about services the manifest does not request, and a failed
build never leaves a stale ``plugin.wasm`` to be called silently."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox import _policy
from plugbox_sdk import testing
from plugbox_sdk.testing import _deadline
from tests.test_sdk_python import MakePlugin, make_plugin  # noqa: F401 (a fixture)

DEADLINE_MS = 300


# -- 1. the native harness's deadline --------------------------------------------------------

SPIN = """
    from plugbox_sdk import hook

    def step(n):
        return (n * 31 + 7) % 1000003

    @hook("spin")
    def spin(payload):
        try:
            while True:
                pass
        except Exception:
            return b"swallowed by except Exception"

    @hook("busy")
    def busy(payload):
        n = 0
        while n >= 0:
            n = step(n)
        return b"unreachable"

    @hook("stubborn")
    def stubborn(payload):
        try:
            while True:
                pass
        except:  # noqa: E722 - a bare except catches BaseException too
            pass
        while True:  # the interrupt is raised again until the hook is gone
            pass

    @hook("late")
    def late(payload):
        try:
            while True:
                pass
        except BaseException:
            return b"returned normally after the deadline"

    @hook("ok")
    def ok(payload):
        return b"fine:" + payload
"""


def _spin_plugin(make_plugin: MakePlugin) -> Path:
    return make_plugin(SPIN, hooks=["spin", "busy", "stubborn", "late", "ok"], name="spinner",
                       limits={"deadline_ms": DEADLINE_MS})


def _timed_deadline(harness: testing.Harness, hook: str) -> tuple[plugbox.DeadlineExceeded,
                                                                   float]:
    started = time.monotonic()
    with pytest.raises(plugbox.DeadlineExceeded) as caught:
        harness.call(hook)
    return caught.value, (time.monotonic() - started) * 1000


@pytest.mark.parametrize("hook", ["spin", "busy"])
def test_native_infinite_loop_ends_with_deadline_exceeded(make_plugin: MakePlugin,
                                                          hook: str) -> None:
    harness = testing.load(_spin_plugin(make_plugin), backend="native")
    err, elapsed = _timed_deadline(harness, hook)
    assert DEADLINE_MS <= elapsed < 2 * DEADLINE_MS
    assert (err.plugin, err.hook, err.limit) == ("spinner", hook, "deadline")
    assert f"plugin 'spinner', hook {hook!r}" in err.message
    assert f"({DEADLINE_MS} ms)" in err.message
    assert "limits.deadline_ms" in err.message and "fuel is not counted natively" in err.message
    # The harness keeps working: other hooks, and the same hook again.
    assert harness.call("ok", b"x") == b"fine:x"
    _timed_deadline(harness, hook)
    assert harness.call("ok", b"y") == b"fine:y"


def test_native_deadline_survives_a_bare_except(make_plugin: MakePlugin) -> None:
    harness = testing.load(_spin_plugin(make_plugin), backend="native")
    _, elapsed = _timed_deadline(harness, "stubborn")
    assert elapsed < 2 * DEADLINE_MS
    # Caught and returned from: the call still ran past its deadline, as the runtime says.
    _timed_deadline(harness, "late")
    assert harness.call("ok") == b"fine:"


def test_native_deadline_leaves_no_interrupt_behind(make_plugin: MakePlugin) -> None:
    harness = testing.load(_spin_plugin(make_plugin), backend="native")
    _timed_deadline(harness, "spin")
    # Nothing pending is delivered to the test's own code later.
    total = 0
    for i in range(2_000_000):
        total += i
    assert total == sum(range(2_000_000))
    assert threading.active_count() == 1 or all(
        t.name != "plugbox-test-deadline" for t in threading.enumerate())


def test_native_fast_calls_are_untouched(make_plugin: MakePlugin) -> None:
    harness = testing.load(_spin_plugin(make_plugin), backend="native")
    for i in range(200):
        assert harness.call("ok", str(i)) == f"fine:{i}".encode()


def test_native_deadline_applies_to_init(make_plugin: MakePlugin) -> None:
    path = make_plugin("""
        from plugbox_sdk import init, hook

        @init
        def setup(config):
            while True:
                pass

        @hook("ok")
        def ok(payload):
            return b""
    """, hooks=["ok"], name="slow-init", limits={"deadline_ms": DEADLINE_MS})
    with pytest.raises(plugbox.DeadlineExceeded) as caught:
        testing.load(path, backend="native")
    assert (caught.value.plugin, caught.value.hook) == ("slow-init", "on-init")


def test_native_default_deadline_is_the_runtimes(make_plugin: MakePlugin) -> None:
    assert _deadline.DEFAULT_DEADLINE_MS == _policy.DEFAULT_COMPONENT_LIMITS.deadline_ms
    harness = testing.load(make_plugin(SPIN, hooks=["ok"]), backend="native")
    assert getattr(harness, "deadline_ms") == _policy.DEFAULT_COMPONENT_LIMITS.deadline_ms


def test_native_deadline_without_the_runtime_is_a_timeout_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "plugbox.engine._fastpath", None)
    err = _deadline.deadline_error("p", "h", 100, 123.0)
    assert isinstance(err, TimeoutError)
    assert "plugin 'p', hook 'h'" in str(err) and "limits.deadline_ms" in str(err)


# -- 2. plugbox build warns about services the manifest does not request --------------------

USES = """
    import plugbox_sdk
    import plugbox_sdk.clock
    import plugbox_sdk as sdk
    from plugbox_sdk import hook, kv, log as logger
    from plugbox_sdk.events import emit
    from plugbox_sdk.http import Request

    @hook("go")
    def go(payload):
        plugbox_sdk.random.token_bytes(4)
        sdk.config.get("x")
        kv.get("k")
        kv.set("k", b"v")
        return b""
"""


def test_service_uses_finds_imports_and_attribute_uses() -> None:
    from plugbox.authoring import _pybuild

    found = _pybuild.service_uses(textwrap.dedent(USES))
    assert found == [(3, "clock"), (5, "kv"), (5, "log"), (6, "events"), (7, "http"),
                     (11, "random"), (12, "config")]
    assert _pybuild.service_uses("def broken(:\n") == []
    # Not the SDK: a local module named kv, or an attribute of something else.
    assert _pybuild.service_uses("import kv\nfrom mylib import http\nx.kv.get('a')\n") == []


def test_build_warning_names_file_line_service_and_permission(make_plugin: MakePlugin) -> None:
    from plugbox.authoring import _pybuild

    plugin = make_plugin(USES, hooks=["go"], name="needy", permissions={"kv": {}, "log": True})
    (plugin / "helper.py").write_text("from plugbox_sdk import http\n")
    warnings = _pybuild.unrequested_service_warnings(plugin, {"kv", "log"}, plugin="needy")
    by_service = {w.split("uses plugbox_sdk.")[1].split()[0]: w for w in warnings}
    assert set(by_service) == {"clock", "events", "http", "random", "config"}
    app = plugin / "app.py"
    assert by_service["clock"].startswith(f"warning: {app}:3: plugin 'needy' uses "
                                          "plugbox_sdk.clock but plugbox.json does not request "
                                          "the 'clock' service")
    assert 'add "clock": true to "permissions"' in by_service["clock"]
    assert 'add "events": {"topics": ["<topic pattern>"]}' in by_service["events"]
    assert f"{app}:12:" in by_service["config"] and '"config": true' in by_service["config"]
    assert f"{plugin / 'helper.py'}:1:" in [w for w in warnings if "helper" in w][0]
    # http is used in two files: one warning each.
    assert sum("plugbox_sdk.http" in w for w in warnings) == 2
    # Granted services, and repeated uses, do not add warnings.
    assert _pybuild.unrequested_service_warnings(
        plugin, {"kv", "log", "clock", "events", "http", "random", "config"}, plugin="needy"
    ) == []


def test_build_command_warns_before_building(make_plugin: MakePlugin,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The warning comes from `plugbox build` (with -q too), not at call time. The manifest
    declares a hook app.py does not register, so the build stops before componentize-py."""
    from plugbox.authoring import _pybuild
    from plugbox.cli._main import main

    try:
        _pybuild.find_componentize_py()
    except plugbox.UsageError:
        pytest.skip("componentize-py is not installed")
    plugin = make_plugin("""
        from plugbox_sdk import hook, kv

        @hook("go")
        def go(payload):
            return kv.get("k") or b""
    """, hooks=["go", "missing"], name="forgetful")
    assert main(["build", "-q", str(plugin)]) == 2
    err = capsys.readouterr().err
    assert (f"warning: {plugin / 'app.py'}:2: plugin 'forgetful' uses plugbox_sdk.kv but "
            "plugbox.json does not request the 'kv' service, so its calls are denied at run "
            'time; add "kv": {} to "permissions"') in err
    assert err.index("warning:") < err.index("registers no handler")


# -- 3. a failed build leaves no stale plugin.wasm to call silently --------------------------

REPO = Path(__file__).resolve().parent.parent
#: Persistent across runs, like tests/conftest.py's built_samples: the one real build here is
#: skipped while the plugin's sources are unchanged.
WORK = REPO / ".build" / "pytest-pyloop"

GOOD_APP = """\
from plugbox_sdk import hook


@hook("ping")
def ping(payload):
    return b"pong:" + payload
"""

BROKEN_APP = GOOD_APP + "\n\ndef broken(:\n    pass\n"


def _staleable_plugin() -> Path:
    """A plugin folder under .build/ whose app.py is reset to the good version each time."""
    directory = WORK / "staleable"
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "app.py").is_file() or (directory / "app.py").read_text() != GOOD_APP:
        (directory / "app.py").write_text(GOOD_APP)
    manifest = directory / "plugbox.json"
    if not manifest.is_file():
        manifest.write_text(json.dumps({
            "manifest_version": 1, "name": "staleable", "version": "0.1.0", "abi": "1.0",
            "module": {"path": "plugin.wasm", "sha256": "0" * 64}, "hooks": ["ping"],
            "permissions": {},
        }, indent=2) + "\n")
    return directory


def test_failed_build_moves_the_old_module_aside_and_call_says_stale(
        capsys: pytest.CaptureFixture[str]) -> None:
    from plugbox.authoring import _pybuild
    from plugbox.cli._main import main

    try:
        _pybuild.find_componentize_py()
    except plugbox.UsageError:
        pytest.skip("componentize-py is not installed")
    plugin = _staleable_plugin()
    module = _pybuild.build_python_plugin(plugin)  # real (or up to date from an earlier run)
    state = WORK / "state"
    assert main(["call", str(plugin), "ping", "--text", "x", "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out.strip() == "pong:x"
    old = module.read_bytes()

    (plugin / "app.py").write_text(BROKEN_APP)
    try:
        assert main(["build", "-q", str(plugin)]) == 2
        err = capsys.readouterr().err
        assert f"{plugin / 'app.py'}:9" in err and "SyntaxError" in err
        # The old module is not where anything would load it from; the failure is recorded.
        assert not module.exists()
        assert (plugin / "plugin.wasm.stale").read_bytes() == old
        record = json.loads((plugin / "plugin.wasm.stale.json").read_text())
        assert record["plugin"] == "staleable" and record["error"] == "UsageError"
        assert record["previous_module"] == "plugin.wasm.stale"

        assert main(["call", str(plugin), "ping", "--text", "x",
                     "--state-dir", str(state)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "StaleBuildError: plugin 'staleable': the build is stale: the last `plugbox " \
               "build` failed" in captured.err
        assert "SyntaxError" in captured.err
        assert "the previous plugin.wasm was moved to plugin.wasm.stale and is not called" \
            in captured.err
        assert f"Fix the error and run `plugbox build {plugin}`" in captured.err

        # The component test backend says the same instead of "build it first".
        with pytest.raises(_pybuild.StaleBuildError, match="the build is stale"):
            testing.load(plugin, backend="component")

        # A second failure keeps the first moved module (nothing new to move).
        assert main(["build", "-q", str(plugin)]) == 2
        assert (plugin / "plugin.wasm.stale").read_bytes() == old
    finally:
        (plugin / "app.py").write_text(GOOD_APP)
    capsys.readouterr()


def test_stale_record_is_read_without_a_build(tmp_path: Path) -> None:
    from plugbox.authoring import _pybuild

    module = tmp_path / "plugin.wasm"
    assert _pybuild.stale_build_error(module, "p") is None
    (tmp_path / "plugin.wasm.stale.json").write_text(json.dumps({
        "failed_at": "2026-01-01T00:00:00Z", "error": "BuildError",
        "summary": "app.py:3: componentize-py failed", "previous_module": None,
        "plugin_dir": str(tmp_path)}))
    err = _pybuild.stale_build_error(module, "p")
    assert isinstance(err, plugbox.UsageError) and err.plugin == "p"
    assert "failed at 2026-01-01T00:00:00Z with BuildError: app.py:3: componentize-py " \
           "failed; there is no plugin.wasm from an earlier build" in err.message
    # The record and a moved module are not plugin sources (no rebuild because of them).
    (tmp_path / "plugin.wasm.stale").write_bytes(b"old")
    (tmp_path / "app.py").write_text("")
    assert [p.name for p in _pybuild._source_files(tmp_path, [])] == ["app.py"]
