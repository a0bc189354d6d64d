"""``plugbox plugins`` (issue 9 §8): every subcommand in human and --json form, its exit codes,
--state-dir, --app, and once through the console script. In-process through main(argv), with
the small WAT plugins of test_lifecycle_core; one Rust and one Python sample."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox.cli import _plugins
from plugbox.cli._main import main
from tests.conftest import REPO, const_body, wat_module, write_plugin
from tests.test_lifecycle_core import make_plugin

SCHEMA = {"type": "object", "additionalProperties": False,
          "properties": {"greeting": {"type": "string", "default": "hello"},
                         "port": {"type": "integer"},
                         "token": {"type": "string", "writeOnly": True}}}


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def doc(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def cli(state: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """``cli("list", "--json")``: ``plugbox plugins list --json --state-dir STATE``."""
    def run(*argv: Any, state_dir: bool = True) -> Result:
        args = ["plugins", *map(str, argv)]
        if state_dir:
            args += ["--state-dir", str(state)]
        code = main(args)
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


@pytest.fixture
def plugin(tmp_path: Path) -> Callable[..., Path]:
    """``plugin(name, version, **manifest)``: a WAT plugin implementing ``text.echo``, a point
    no host of these tests declares (without --app the CLI declares a stand-in)."""
    def build(name: str = "alpha", version: str = "1.0.0", **manifest: Any) -> Path:
        return make_plugin(tmp_path / "src", name, version, f"{name} {version}", **manifest)
    return build


def open_host(state: Path) -> plugbox.PluginHost:
    host = plugbox.PluginHost(state_dir=state)
    host.extension_point("text.echo", version="1.0.0")
    return host


# -- without --app: the lifecycle state alone ---------------------------------------------------


def test_plugin_host_refuses_undeclared_points_so_the_cli_declares_stand_ins(
        cli: Run, plugin: Callable[..., Path], state: Path) -> None:
    # What PluginHost._admit does: a host without the point refuses the plugin ...
    with plugbox.PluginHost(state_dir=state) as host, \
            pytest.raises(plugbox.IncompatiblePointError, match="does not declare"):
        host.install(plugin())
    # ... so plugbox plugins without --app declares a stand-in for it, and installs it.
    result = cli("install", plugin())
    assert result.code == 0, result.err
    assert result.out == "installed alpha 1.0.0 (enabled)\n"
    with open_host(state) as host:
        host.start()
        assert host.info("alpha").state == "enabled"
        assert host.call("text.echo", {}).values == ["alpha 1.0.0"]


def test_install_json_and_disabled(cli: Run, plugin: Callable[..., Path]) -> None:
    result = cli("install", plugin("beta"), "--disabled")
    assert result.out == "installed beta 1.0.0 (not enabled: plugbox plugins enable beta)\n"
    doc = cli("install", plugin(), "--json", "--disabled").doc
    assert doc["ok"] is True and doc["command"] == "install"
    assert (doc["plugin"]["name"], doc["plugin"]["state"]) == ("alpha", "installed")
    assert doc["plugin"]["enabled"] is False


def test_install_from_a_package(cli: Run, plugin: Callable[..., Path], tmp_path: Path) -> None:
    from plugbox.trust._package import write_package

    write_package(plugin(), tmp_path / "alpha.plugbox")
    result = cli("install", tmp_path / "alpha.plugbox")
    assert result.code == 0 and "installed alpha 1.0.0" in result.out


def test_install_that_does_not_verify_exits_1_and_records_nothing(
        cli: Run, plugin: Callable[..., Path]) -> None:
    src = plugin()
    (src / "plugin.wasm").write_bytes(b"\0asm\1\0\0\0")  # the pinned sha256 no longer holds
    result = cli("install", src)
    assert result.code == 1
    assert "HashMismatchError" in result.err and "sha256" in result.err
    result = cli("install", src, "--json")
    assert result.code == 1
    assert result.doc["ok"] is False and result.doc["error"]["type"] == "HashMismatchError"
    assert cli("list", "--json").doc["plugins"] == []


def test_install_of_an_unsigned_plugin_under_trusted_keys_exits_1(
        cli: Run, plugin: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--output-dir", str(tmp_path / "keys")]) == 0
    capsys.readouterr()
    result = cli("install", plugin(), "--trusted-keys", tmp_path / "keys" / "plugbox.pub")
    assert result.code == 1
    assert "UntrustedSignerError" in result.err and "is not signed" in result.err
    assert cli("list", "--json").doc["plugins"] == []


def test_install_of_a_plugin_failing_on_init_exits_1_and_info_shows_the_reason(
        cli: Run, tmp_path: Path) -> None:
    body, fields = const_body('"x"')
    trap = fields + '\n  (func (export "on-init") (param i32 i32) (result i32) unreachable)'
    src = write_plugin(tmp_path / "bad", wat_module(body, trap), name="bad", hooks=("run",),
                       implements={"text.echo": {"hook": "run"}})
    result = cli("install", src)
    assert result.code == 1 and "on-init failed" in result.err
    result = cli("info", "bad")
    assert result.code == 0
    assert "state     failed (on-init failed" in result.out
    doc = cli("info", "bad", "--json").doc["plugin"]
    assert doc["state"] == "failed" and doc["reason"].startswith("on-init failed")


def test_list_and_info(cli: Run, plugin: Callable[..., Path]) -> None:
    assert cli("list").err == "plugbox: no plugins installed\n"
    cli("install", plugin("alpha"))
    cli("install", plugin("beta"), "--disabled")
    result = cli("list")
    assert result.code == 0
    assert "Installed plugins" in result.out
    lines = {line.split()[1]: line for line in result.out.splitlines() if "1.0.0" in line}
    assert "enabled" in lines["alpha"] and "installed" in lines["beta"]
    docs = cli("list", "--json").doc["plugins"]
    assert [(d["name"], d["state"]) for d in docs] == [("alpha", "enabled"),
                                                      ("beta", "installed")]
    out = cli("info", "alpha").out
    assert out.startswith("alpha 1.0.0\n")
    assert "  state     enabled\n" in out and "  pinned    no\n" in out
    assert "plugins/alpha/1.0.0" in out
    doc = cli("info", "alpha", "--json").doc
    assert doc["ok"] and doc["plugin"]["versions"] == ["1.0.0"]
    assert doc["plugin"]["state"] == "enabled" and doc["plugin"]["reason"] is None


def test_enable_disable_pin_unpin(cli: Run, plugin: Callable[..., Path], state: Path) -> None:
    cli("install", plugin(), "--disabled")
    result = cli("enable", "alpha")
    assert (result.code, result.out) == (0, "enabled alpha\n")
    assert cli("disable", "alpha").out == "disabled alpha\n"
    assert cli("enable", "alpha", "--json").doc["enabled"] == ["alpha"]
    assert cli("disable", "alpha", "--json").doc["disabled"] == ["alpha"]
    assert cli("pin", "alpha").out.startswith("pinned alpha at 1.0.0")
    assert cli("info", "alpha", "--json").doc["plugin"]["pinned"] is True
    assert cli("unpin", "alpha").out == "unpinned alpha (1.0.0)\n"
    assert cli("pin", "alpha", "--json").doc["plugin"]["pinned"] is True
    assert cli("unpin", "alpha", "--json").doc["plugin"]["pinned"] is False
    with open_host(state) as host:
        assert host.info("alpha").state == "disabled"


def test_uninstall_and_purge(cli: Run, plugin: Callable[..., Path], state: Path) -> None:
    cli("install", plugin(), "--config", json.dumps({}))
    result = cli("uninstall", "alpha")
    assert result.code == 0 and "uninstalled alpha (kv data and config kept" in result.out
    cli("install", plugin())
    doc = cli("uninstall", "alpha", "--purge", "--json").doc
    assert doc == {"command": "uninstall", "ok": True, "plugin": "alpha", "purged": True,
                   "disabled": []}
    assert cli("list", "--json").doc["plugins"] == []
    assert not (state / "plugins" / "alpha").exists()


def test_state_url_names_the_lifecycle_database(cli: Run, plugin: Callable[..., Path],
                                                tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    assert cli("install", plugin(), "--state-url", url).code == 0
    assert (tmp_path / "elsewhere.sqlite3").is_file()
    assert [p["name"] for p in cli("list", "--state-url", url, "--json").doc["plugins"]] == [
        "alpha"]
    assert cli("list", "--json").doc["plugins"] == []  # the state dir's own database


def test_a_postgresql_state_url_is_shared_by_two_state_dirs(
        cli: Run, plugin: Callable[..., Path], tmp_path: Path, pg_url: str) -> None:
    """The lifecycle state (and the plugins' kv data) in PostgreSQL: another state dir, as
    another machine would have, sees what the first installed and serves it."""
    assert cli("install", plugin(), "--state-url", pg_url).code == 0
    other = ("--state-url", pg_url, "--state-dir", str(tmp_path / "machine-b"))
    listed = cli("list", *other, "--json", state_dir=False).doc["plugins"]
    assert [(p["name"], p["state"]) for p in listed] == [("alpha", "enabled")]
    assert cli("disable", "alpha", *other, state_dir=False).code == 0
    assert cli("info", "alpha", "--state-url", pg_url, "--json").doc["plugin"]["state"] == \
        "disabled"


@pytest.mark.parametrize("argv", [
    ("info", "nope"), ("enable", "nope"), ("disable", "nope"), ("pin", "nope"),
    ("unpin", "nope"), ("uninstall", "nope"), ("rollback", "nope"), ("config", "get", "nope"),
    ("config", "set", "nope", "a=1"), ("config", "history", "nope"), ("deps", "nope"),
])
def test_not_installed_exits_2_naming_the_plugin(cli: Run, argv: tuple[str, ...]) -> None:
    result = cli(*argv)
    assert result.code == 2, (result.out, result.err)
    assert "'nope'" in result.err and "not installed" in result.err or \
        "no plugin 'nope'" in result.err
    result = cli(*argv, "--json")
    assert result.code == 2
    assert result.doc["ok"] is False and "nope" in result.doc["error"]["message"]


def test_audit(cli: Run, plugin: Callable[..., Path]) -> None:
    assert cli("audit").err == "plugbox: no audit entries\n"
    cli("install", plugin(), "--actor", "ops:ann")
    cli("disable", "alpha")
    result = cli("audit", "alpha")
    assert result.code == 0 and "Audit log" in result.out
    assert "ops:ann" in result.out and "install" in result.out
    entries = cli("audit", "alpha", "--json").doc["entries"]
    assert [e["action"] for e in entries] == ["disable", "install"]  # newest first
    assert entries[1]["actor"] == "ops:ann" and entries[0]["actor"].startswith("cli:")
    assert entries[1]["to_version"] == "1.0.0"
    assert len(cli("audit", "--limit", "1", "--json").doc["entries"]) == 1


def test_bad_usage_exits_2(cli: Run) -> None:
    assert cli(state_dir=False).code == 2
    assert cli("config", state_dir=False).code == 2
    assert cli("audit", "--limit", "0").code == 2
    result = cli("config", "set", "alpha")
    assert result.code == 2 and "--file" in result.err


# -- upgrade, rollback --------------------------------------------------------------------------


def test_upgrade_same_permissions(cli: Run, plugin: Callable[..., Path], state: Path) -> None:
    cli("install", plugin())
    result = cli("upgrade", plugin(version="1.1.0"))
    assert (result.code, result.out) == (0, "upgraded alpha 1.0.0 -> 1.1.0\n"), result.err
    result = cli("upgrade", plugin(version="1.1.0"))
    assert result.code == 0 and "active already" in result.out
    doc = cli("upgrade", plugin(version="1.2.0"), "--json").doc
    assert (doc["ok"], doc["status"], doc["from_version"], doc["to_version"]) == (
        True, "upgraded", "1.1.0", "1.2.0")
    with open_host(state) as host:
        host.start()
        assert host.call("text.echo", {}).values == ["alpha 1.2.0"]


def test_upgrade_asking_for_more_is_declined_without_a_terminal_and_granted_by_yes(
        cli: Run, plugin: Callable[..., Path]) -> None:
    cli("install", plugin())
    more = plugin(version="1.1.0", permissions={"kv": {}})
    result = cli("upgrade", more)
    assert result.code == 1
    assert "services: + kv" in result.err and "--yes" in result.err
    assert cli("info", "alpha", "--json").doc["plugin"]["version"] == "1.0.0"
    result = cli("upgrade", more, "--json")
    assert result.code == 1
    assert result.doc["status"] == "needs-consent"
    assert result.doc["diff"]["added"]["services"] == ["kv"]
    result = cli("upgrade", more, "--yes")
    assert result.code == 0 and result.out.startswith("upgraded alpha 1.0.0 -> 1.1.0")
    assert "kv" in cli("info", "alpha", "--json").doc["plugin"]["grant"]["services"]


@pytest.mark.parametrize("answer, code, version", [("y\n", 0, "1.1.0"), ("n\n", 1, "1.0.0"),
                                                   ("\n", 1, "1.0.0")])
def test_upgrade_asks_on_a_terminal(cli: Run, plugin: Callable[..., Path],
                                    monkeypatch: pytest.MonkeyPatch, answer: str, code: int,
                                    version: str) -> None:
    cli("install", plugin())
    monkeypatch.setattr(_plugins, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    result = cli("upgrade", plugin(version="1.1.0", permissions={"kv": {}}))
    assert result.code == code
    assert "services: + kv" in result.out and "[y/N]" in result.err
    assert cli("info", "alpha", "--json").doc["plugin"]["version"] == version


def test_upgrade_of_a_pinned_plugin_exits_2_naming_unpin(
        cli: Run, plugin: Callable[..., Path]) -> None:
    cli("install", plugin())
    cli("pin", "alpha")
    result = cli("upgrade", plugin(version="1.1.0"))
    assert result.code == 2 and "unpin" in result.err
    doc = cli("upgrade", plugin(version="1.1.0"), "--json").doc
    assert doc["error"]["type"] == "LifecycleError" and doc["error"]["operation"] == "upgrade"


def test_upgrade_that_fails_on_init_is_rolled_back_exit_1(
        cli: Run, plugin: Callable[..., Path], tmp_path: Path) -> None:
    cli("install", plugin())
    body, fields = const_body('"x"')
    trap = fields + '\n  (func (export "on-init") (param i32 i32) (result i32) unreachable)'
    bad = write_plugin(tmp_path / "bad", wat_module(body, trap), name="alpha", version="1.1.0",
                       hooks=("run",), implements={"text.echo": {"hook": "run"}})
    result = cli("upgrade", bad)
    assert result.code == 1 and "rolled back" in result.err and "1.0.0 kept serving" in \
        result.err
    assert cli("info", "alpha", "--json").doc["plugin"]["version"] == "1.0.0"


def test_rollback(cli: Run, plugin: Callable[..., Path]) -> None:
    cli("install", plugin())
    cli("upgrade", plugin(version="1.1.0"))
    cli("upgrade", plugin(version="1.2.0"))
    result = cli("rollback", "alpha")
    assert (result.code, result.out) == (0, "rolled back alpha to 1.1.0 (enabled)\n"), result.err
    doc = cli("rollback", "alpha", "--to", "1.0.0", "--json").doc
    assert doc["ok"] and doc["plugin"]["version"] == "1.0.0" and doc["warnings"] == []


def test_rollback_to_an_unknown_version_exits_2(cli: Run, plugin: Callable[..., Path]) -> None:
    cli("install", plugin())
    cli("upgrade", plugin(version="1.1.0"))
    result = cli("rollback", "alpha", "--to", "9.9.9")
    assert result.code == 2 and "9.9.9" in result.err
    assert cli("rollback", "alpha", "--to", "9.9.9", "--json").doc["error"]["type"] == \
        "LifecycleError"


def test_rollback_across_a_data_version_change_warns_and_asks(
        cli: Run, plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cli("install", plugin())
    cli("upgrade", plugin(version="2.0.0", data_version=1))
    result = cli("rollback", "alpha")  # no terminal, no --yes: declined
    assert result.code == 1 and "data" in result.err
    doc = cli("rollback", "alpha", "--json").doc
    assert doc["ok"] is False and doc["declined"] is True and doc["error"]["warning"]
    assert cli("info", "alpha", "--json").doc["plugin"]["version"] == "2.0.0"
    monkeypatch.setattr(_plugins, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    result = cli("rollback", "alpha")
    assert result.code == 1 and "warning:" in result.out and "[y/N]" in result.err
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    result = cli("rollback", "alpha")
    assert result.code == 0 and "rolled back alpha to 1.0.0" in result.out
    assert "warning:" in result.out
    cli("upgrade", plugin(version="2.0.0", data_version=1))
    monkeypatch.setattr(_plugins, "_interactive", lambda: False)
    doc = cli("rollback", "alpha", "--yes", "--json").doc
    assert doc["ok"] and doc["plugin"]["version"] == "1.0.0" and doc["warnings"]


# -- config -------------------------------------------------------------------------------------


def test_config_set_get_history_rollback_never_print_secrets(
        cli: Run, plugin: Callable[..., Path], tmp_path: Path) -> None:
    cli("install", plugin(config_schema=SCHEMA))
    result = cli("config", "set", "alpha", "port=8080", "token=s3cret-value")
    assert result.code == 0, result.err
    assert "s3cret" not in result.out + result.err and '"port": 8080' in result.out
    result = cli("config", "get", "alpha")
    assert result.code == 0 and '"greeting": "hello"' in result.out  # the default
    assert "s3cret" not in result.out and '"token": "' in result.out
    doc = cli("config", "get", "alpha", "--json").doc
    assert doc["config"]["port"] == 8080 and doc["config"]["token"] != "s3cret-value"
    (tmp_path / "c.json").write_text(json.dumps({"greeting": "hi", "token": "other-secret"}))
    doc = cli("config", "set", "alpha", "--file", tmp_path / "c.json", "--json").doc
    assert doc["ok"] and doc["config"]["greeting"] == "hi" and "port" not in doc["config"]
    result = cli("config", "history", "alpha")
    assert result.code == 0 and "Config history of alpha" in result.out
    history = cli("config", "history", "alpha", "--json")
    assert "secret" not in history.out + result.out
    revisions = history.doc["revisions"]
    assert [r["config"].get("port") for r in revisions][-2:] == [8080, None]
    first = revisions[-2]["revision"]
    result = cli("config", "rollback", "alpha", first)
    assert result.code == 0 and '"port": 8080' in result.out and "s3cret" not in result.out
    audit = cli("audit", "alpha", "--json").out
    assert "s3cret" not in audit and "other-secret" not in audit


def test_invalid_config_exits_2_with_the_json_path_and_applies_nothing(
        cli: Run, plugin: Callable[..., Path]) -> None:
    cli("install", plugin(config_schema=SCHEMA))
    cli("config", "set", "alpha", "port=1")
    result = cli("config", "set", "alpha", "port=not-a-number")
    assert result.code == 2 and "ConfigError" in result.err
    assert "$.port" in result.err
    doc = cli("config", "set", "alpha", "port=x", "--json").doc
    assert doc["error"]["type"] == "ConfigError" and doc["error"]["json_path"] == "$.port"
    assert cli("config", "get", "alpha", "--json").doc["config"]["port"] == 1


def test_config_set_from_stdin_and_a_file_that_is_not_an_object(
        cli: Run, plugin: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cli("install", plugin(config_schema=SCHEMA))
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"port": 7}'))
    assert cli("config", "set", "alpha", "--file", "-", "--json").doc["config"]["port"] == 7
    (tmp_path / "list.json").write_text("[1]")
    result = cli("config", "set", "alpha", "--file", tmp_path / "list.json")
    assert result.code == 2 and "JSON object" in result.err
    result = cli("config", "set", "alpha", "--file", tmp_path / "missing.json")
    assert result.code == 2 and "cannot read" in result.err
    assert cli("config", "get", "alpha", "--json").doc["config"]["port"] == 7


def test_config_assignments() -> None:
    base = {"db": {"host": "a"}, "n": 1}
    assert _plugins._assignments(["db.port=5432", "n=true", "s=text", 'q="3"'], base) == {
        "db": {"host": "a", "port": 5432}, "n": True, "s": "text", "q": "3"}
    assert base == {"db": {"host": "a"}, "n": 1}
    with pytest.raises(plugbox.UsageError, match="KEY=VALUE"):
        _plugins._assignments(["novalue"], {})
    with pytest.raises(plugbox.UsageError, match="not an object"):
        _plugins._assignments(["n.x=1"], base)


# -- dependencies -------------------------------------------------------------------------------


def test_deps_enable_and_dependency_refusal(cli: Run, plugin: Callable[..., Path]) -> None:
    cli("install", plugin("alpha"), "--disabled")
    cli("install", plugin("beta", requires={"alpha": ">=1.0"}), "--disabled")
    result = cli("enable", "beta")
    assert result.code == 0, result.err
    assert result.out.startswith("enabled alpha, beta\n") and "required by beta" in result.out
    result = cli("deps", "beta")
    assert result.code == 0 and "requires" in result.out and "alpha" in result.out
    doc = cli("deps", "beta", "--json").doc["dependencies"]
    assert [e["name"] for e in doc["requires"]] == ["alpha"]
    assert "beta" in json.dumps(cli("deps", "alpha", "--json").doc["dependencies"])
    assert "beta" in cli("deps", "alpha").out
    result = cli("disable", "alpha")
    assert result.code == 1 and "DependencyError" in result.err and "beta" in result.err
    assert "rerun with --cascade" in result.err
    doc = cli("disable", "alpha", "--json").doc
    assert doc["error"]["type"] == "DependencyError"
    assert cli("info", "alpha", "--json").doc["plugin"]["state"] == "enabled"
    result = cli("disable", "alpha", "--cascade")
    assert result.code == 0 and "beta" in result.out and "alpha" in result.out
    assert cli("info", "beta", "--json").doc["plugin"]["state"] == "disabled"
    cli("enable", "beta")
    assert cli("uninstall", "alpha").code == 1
    doc = cli("uninstall", "alpha", "--cascade", "--json").doc
    assert doc["ok"] and doc["disabled"] == ["beta"]


# -- --app --------------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A host application module ``plugapp`` in the working directory."""
    (tmp_path / "plugapp.py").write_text(textwrap.dedent("""
        import plugbox

        def make_host(state_dir=None, state_url=None):
            host = plugbox.PluginHost(state_dir=state_dir, state_url=state_url)
            host.extension_point("text.echo", version="1.0.0")
            return host

        def fixed_host():
            return plugbox.PluginHost(state_dir="elsewhere")

        def not_a_host(**kw):
            return 42
        """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "plugapp", raising=False)
    return "plugapp:make_host"


def test_app_declares_the_points(cli: Run, app: str, plugin: Callable[..., Path]) -> None:
    result = cli("install", plugin(), "--app", app)
    assert result.code == 0 and "installed alpha 1.0.0 (enabled)" in result.out
    # The application's host refuses what implements a point it does not declare: exit 1.
    result = cli("install", plugin("beta", implements={"other.point": {"hook": "run"}}),
                 "--app", app)
    assert result.code == 1 and "IncompatiblePointError" in result.err
    assert "other.point" in result.err
    assert [p["name"] for p in cli("list", "--app", app, "--json").doc["plugins"]] == ["alpha"]


def test_app_from_the_environment(cli: Run, app: str, plugin: Callable[..., Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_plugins.APP_ENV, app)
    result = cli("install", plugin("beta", implements={"other.point": {"hook": "run"}}))
    assert result.code == 1 and "other.point" in result.err


@pytest.mark.parametrize("spec, message", [
    ("plugapp", "MODULE:FUNCTION"), ("no_such_module:f", "cannot import"),
    ("plugapp:missing", "no attribute"), ("plugapp:fixed_host", "takes no state_dir"),
    ("plugapp:not_a_host", "not a plugbox.PluginHost"),
])
def test_bad_app_exits_2(cli: Run, app: str, spec: str, message: str) -> None:
    result = cli("list", "--app", spec)
    assert result.code == 2 and message in result.err, result.err


def test_app_and_trusted_keys_exit_2(cli: Run, app: str, tmp_path: Path) -> None:
    result = cli("list", "--app", app, "--trusted-keys", tmp_path)
    assert result.code == 2 and "own trust policy" in result.err


# -- real samples and a real process ------------------------------------------------------------


def test_rust_sample_install_info_uninstall(cli: Run,
                                            rust_plugins: dict[str, Path]) -> None:
    result = cli("install", rust_plugins["echo"])
    assert result.code == 0, result.err
    doc = cli("info", "echo", "--json").doc["plugin"]
    assert (doc["name"], doc["state"]) == ("echo", "enabled")
    assert cli("uninstall", "echo", "--purge").code == 0


def test_python_sample_installed_disabled_then_uninstalled(cli: Run, state: Path) -> None:
    from plugbox.authoring import _pybuild

    # The same build (and cache) as conftest's built_samples, for one sample only. Installed
    # without enabling: verified and copied into the managed store, not compiled (compiling
    # a Python component takes tens of seconds; test_host_python runs them).
    module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / "echo",
                                          out_dir=REPO / ".build" / "pytest-pybuild" / "py-echo")
    result = cli("install", module.parent, "--disabled")
    assert result.code == 0, result.err
    doc = cli("info", "py-echo", "--json").doc["plugin"]
    assert (doc["state"], doc["enabled"]) == ("installed", False)
    assert (state / "plugins" / "py-echo" / "0.1.0" / "plugin.wasm").is_file()
    assert cli("uninstall", "py-echo").code == 0
    assert not (state / "plugins" / "py-echo").exists()


def test_console_script(plugin: Callable[..., Path], state: Path) -> None:
    script = Path(sys.executable).parent / "plugbox"
    if not script.exists():  # pragma: no cover - the venv installs it
        pytest.skip("plugbox console script not installed")
    base = ["--state-dir", str(state)]
    proc = subprocess.run([str(script), "plugins", "install", str(plugin()), "--json", *base],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plugin"]["state"] == "enabled"
    proc = subprocess.run([str(script), "plugins", "info", "nope", *base],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no plugin 'nope'" in proc.stderr
