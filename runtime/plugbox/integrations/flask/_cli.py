"""``flask plugins ...`` (the lifecycle commands of ``plugbox plugins``, on the app's host)
and ``flask <plugin> <command> ARGS`` (commands plugins declare in ``web.commands``)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any, Final

import click
import flask
from flask.cli import with_appcontext

from ..._errors import PlugboxError
from ...cli import _plugins

if TYPE_CHECKING:
    from ...host._host import HostedPlugin
    from ._ext import _AppState

__all__ = ["register_cli"]

_log = logging.getLogger("plugbox.integrations.flask")

#: Names a plugin's command group cannot take (Flask's own commands, and ours).
RESERVED: Final = frozenset({"run", "shell", "routes", "plugins"})
_STATE_OPTIONS: Final = ("state_dir", "state_url", "trusted_keys", "trust_mode", "revoked")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flask")
    _plugins.add_plugins(parser.add_subparsers(dest="command"))
    return parser


def register_cli(app: flask.Flask, state: _AppState) -> None:
    """Add ``plugins`` and one group per plugin declaring commands to ``app.cli``."""
    @click.command("plugins", add_help_option=False,
                   context_settings={"ignore_unknown_options": True,
                                     "allow_extra_args": True},
                   help="Manage the app's plugins: list, info, install, enable, disable, "
                        "upgrade, rollback, pin, uninstall, config, deps, audit (the "
                        "commands of `plugbox plugins`, on this app's PluginHost).")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @with_appcontext
    def plugins(args: tuple[str, ...]) -> None:
        ns = _parser().parse_args(["plugins", *args])
        if not hasattr(ns, "plugins_func"):
            sys.exit(ns.func(ns))
        given = [o for o in _STATE_OPTIONS if getattr(ns, o, None)]
        if given:
            raise click.UsageError(
                f"--{given[0].replace('_', '-')} does not apply to `flask plugins`: it works on "
                "the application's PluginHost (its state and trust policy)")
        ns.app = "flask"  # the app declared its points: no stand-ins (see _plugins._prepare)
        try:
            code = ns.plugins_func(state.host, ns)
        except PlugboxError as exc:
            code = _plugins._fail(exc, ns)
        sys.exit(code)

    app.cli.add_command(plugins)
    for hp in state.host.plugins:
        web = hp.manifest.web
        if web is None or not web.commands or "flask.command" not in hp.manifest.implements:
            continue
        if hp.name in RESERVED or hp.name in app.cli.commands:
            _log.warning("plugin %r: its commands are not registered, `flask %s` is taken",
                         hp.name, hp.name)
            continue
        app.cli.add_command(_group(state, hp))


def _group(state: _AppState, hp: HostedPlugin) -> click.Group:
    web = hp.manifest.web
    assert web is not None
    group = click.Group(hp.name, help=f"Commands of plugin {hp.name} ({hp.manifest.version}).")
    for name, text in web.commands:
        group.add_command(_command(state, hp.name, name, text))
    return group


def _command(state: _AppState, plugin: str, name: str, text: str) -> click.Command:
    @click.command(name, help=text or None, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def run(argv: tuple[str, ...]) -> None:
        try:
            out: Any = state.host.call_plugin("flask.command", plugin,
                                              {"command": name, "argv": list(argv)})
        except PlugboxError as exc:
            click.echo(f"flask {plugin} {name}: the plugin failed: {exc}", err=True)
            sys.exit(1)
        click.echo(str(out.get("stdout", "")), nl=False)
        if out.get("stderr"):
            click.echo(str(out["stderr"]), nl=False, err=True)
        sys.exit(int(out["exit_code"]))
    return run
