"""The registry client's command line (issue 12 §3): ``plugbox search TEXT``, ``plugbox
install NAME[==VERSION|SPEC]``, ``plugbox outdated``, ``plugbox upgrade NAME|--all``,
``plugbox audit``, and ``plugbox registries add|list|remove`` to configure the registries of
a host's state dir (URL plus the TUF root metadata, in order).

Each command takes the host options of ``plugbox plugins`` (``--state-dir``, ``--state-url``,
``--app``, the trust options) and ``--json``. Every listing and download is verified with
TUF first (``plugbox.registry._client``); installs and upgrades go through the host's
lifecycle. Exit codes: 0 success; 1 refused or failed (a TUF refusal, a conflict, an
unreachable registry, consent not given, an upgrade rolled back, and for ``audit``: an
installed version is hit by an advisory); 2 invalid input or usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._common import clean
from .._errors import PlugboxError, UsageError

if TYPE_CHECKING:
    from ..host._host import PluginHost
    from ..host._lifecycle import PermissionDiff
    from ..registry._client import InstallResult, RegistryClient

__all__ = ["add_registry_client"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
_ERROR_ATTRS: Final = ("registry", "attack", "conflicts", "path")


def _fail(exc: PlugboxError, args: argparse.Namespace) -> int:
    from ._plugins import _err_line, _error_doc, _exit_code, _print_json

    if args.json:
        doc = _error_doc(exc)
        for attr in _ERROR_ATTRS:
            value = getattr(exc, attr, None)
            if value is not None:
                doc[attr] = value
        _print_json({"command": args.registry_command, "ok": False, "error": doc})
    else:
        _err_line(f"{type(exc).__name__}: ", clean(str(exc)))
    return _exit_code(exc)


def _ok(args: argparse.Namespace, **doc: Any) -> None:
    from ._plugins import _print_json

    _print_json({"command": args.registry_command, "ok": True, **doc})


def _client(host: PluginHost, args: argparse.Namespace) -> RegistryClient:
    from ..registry._client import RegistryClient
    from ._plugins import _prepare

    def stand_ins(path: Path) -> None:
        _prepare(host, args, str(path))

    # Without --app the host's points are stand-ins declared per plugin: they do not limit
    # what is offered (the application's host, with --app, does).
    return RegistryClient(host.runtime.state_dir, host, strict_points=bool(args.app),
                          before_install=stand_ins)


def _allow(args: argparse.Namespace) -> bool | Callable[[PermissionDiff], bool]:
    from ._plugins import _ask, _may_ask

    if args.yes:
        return True
    if not _may_ask(args):
        return False

    def ask(diff: PermissionDiff) -> bool:
        sys.stderr.write("The new version asks for more permissions:\n" + diff.describe()
                         + "\n")
        return _ask("Grant them?")
    return ask


def _report(result: InstallResult, args: argparse.Namespace) -> int:
    from ._plugins import _err_line, _say

    code = EXIT_OK if result.ok else EXIT_REFUSED
    if args.json:
        from ._plugins import _print_json

        _print_json({"command": args.registry_command, **result.to_json()})
        return code
    for warning in result.warnings:
        _err_line("warning: ", clean(warning))
    if not result.actions:
        _say("nothing to do")
    for action in result.actions:
        line = f"{action['plugin']}: {action['from'] or '-'} -> {action['to']}: " \
               f"{action['status']}"
        if action.get("reason"):
            line += f" ({action['reason']})"
        if action["status"] == "needs-consent":
            line += "; rerun with --yes to grant the new permissions"
        _say(clean(line), "" if action["status"] in ("installed", "upgraded", "unchanged")
             else "bold red")
    return code


# -- commands -------------------------------------------------------------------------------


def _cmd_search(host: PluginHost, args: argparse.Namespace) -> int:
    from ._plugins import _console
    from rich.table import Table

    hits = _client(host, args).search(args.text)
    if args.json:
        _ok(args, results=hits)
        return EXIT_OK
    if not hits:
        sys.stderr.write("plugbox: no plugin this host can run matches\n")
        return EXIT_OK
    table = Table(title=f"Plugins matching {clean(args.text)!r}", title_justify="left")
    for column in ("name", "version", "registry", "description"):
        table.add_column(column)
    for hit in hits:
        table.add_row(clean(hit["name"]), clean(hit["version"]), clean(hit["registry"]),
                      clean(hit["description"]))
    _console().print(table)
    return EXIT_OK


def _cmd_install(host: PluginHost, args: argparse.Namespace) -> int:
    return _report(_client(host, args).install(args.requirement, allow=_allow(args),
                                               actor=_actor(args)), args)


def _cmd_upgrade(host: PluginHost, args: argparse.Namespace) -> int:
    client = _client(host, args)
    if args.all == (args.name is not None):
        raise UsageError("give a plugin NAME or --all, not both or neither")
    if args.all:
        result = client.upgrade_all(allow=_allow(args), actor=_actor(args))
    else:
        result = client.upgrade(args.name, allow=_allow(args), actor=_actor(args))
    return _report(result, args)


def _cmd_outdated(host: PluginHost, args: argparse.Namespace) -> int:
    from ._plugins import _say

    rows = _client(host, args).outdated()
    if args.json:
        _ok(args, outdated=rows)
        return EXIT_OK
    if not rows:
        _say("every installed plugin is at its newest compatible version")
    for row in rows:
        _say(clean(f"{row['name']}: {row['installed']} -> {row['latest']} ({row['registry']})"
                   + ("  pinned: not upgraded by upgrade --all" if row["pinned"] else "")))
    return EXIT_OK


def _cmd_audit(host: PluginHost, args: argparse.Namespace) -> int:
    from ._plugins import _say

    hits = _client(host, args).audit()
    code = EXIT_REFUSED if hits else EXIT_OK
    if args.json:
        from ._plugins import _print_json

        _print_json({"command": "audit", "ok": not hits, "vulnerable": hits})
        return code
    if not hits:
        _say("no installed version is affected by a known advisory")
    for hit in hits:
        adv = hit["advisory"]
        _say(clean(f"{hit['name']} {hit['installed']}: {adv['id']} ({adv['severity']}) "
                   f"{adv['text']}" + (f"; fixed in {adv['fixed_in']}" if adv["fixed_in"]
                                       else "")), "bold red")
    return code


def _cmd_registries(host: PluginHost | None, args: argparse.Namespace) -> int:
    from ..registry._client import RegistryClient
    from ._plugins import _say

    state = args.state_dir if host is None else host.runtime.state_dir
    client = RegistryClient(state)
    if args.registries_sub == "add":
        try:
            root = Path(args.root).read_bytes()
        except OSError as exc:
            raise UsageError(f"--root {args.root}: cannot read it ({exc})") from None
        reg = client.add_registry(args.name, args.url, root, position=args.position)
        if args.json:
            _ok(args, registry=reg.to_json())
        else:
            _say(clean(f"added registry {reg.name} at {reg.url}"))
    elif args.registries_sub == "remove":
        client.remove_registry(args.name)
        if args.json:
            _ok(args, removed=args.name)
        else:
            _say(clean(f"removed registry {args.name}"))
    else:
        regs = client.registries()
        if args.json:
            _ok(args, registries=[r.to_json() for r in regs])
        else:
            for i, reg in enumerate(regs, 1):
                _say(clean(f"{i}. {reg.name}  {reg.url}"))
            if not regs:
                sys.stderr.write("plugbox: no registry is configured\n")
    return EXIT_OK


def _actor(args: argparse.Namespace) -> str:
    from ._plugins import _actor as actor

    return actor(args)


def _run(args: argparse.Namespace) -> int:
    from ._plugins import _open_host

    command: Callable[[PluginHost, argparse.Namespace], int] = args.registry_func
    try:
        with _open_host(args) as host:
            return command(host, args)
    except PlugboxError as exc:
        return _fail(exc, args)


def add_registry_client(sub: Any) -> None:
    """Declare ``search``, ``install``, ``outdated``, ``upgrade``, ``audit`` and
    ``registries`` on the subparsers ``sub``."""
    from ._plugins import _common

    common = _common()

    def add(name: str, func: Callable[..., int], help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_,
                                                    parents=[common])
        p.set_defaults(func=_run, registry_func=func, registry_command=name)
        return p

    search = add("search", _cmd_search, "search the configured registries for plugins this "
                 "host can run (name, description, tags)")
    search.add_argument("text", metavar="TEXT", help="text to look for ('' lists all)")
    install = add("install", _cmd_install, "install a plugin and its dependencies from the "
                  "registries (TUF-verified), through the host's lifecycle")
    install.add_argument("requirement", metavar="NAME[==VERSION|SPEC]",
                         help="a plugin name, optionally with ==VERSION (also installs a "
                         "yanked version, with a warning) or a specifier such as '>=1,<2'")
    install.add_argument("--yes", action="store_true",
                         help="grant new permissions an upgrade of a dependency asks for")
    add("outdated", _cmd_outdated, "list installed plugins with a newer compatible version")
    upgrade = add("upgrade", _cmd_upgrade, "upgrade a plugin (or every unpinned one) to its "
                  "newest compatible version, with consent for new permissions")
    upgrade.add_argument("name", metavar="NAME", nargs="?", default=None)
    upgrade.add_argument("--all", action="store_true", help="every plugin that is not pinned")
    upgrade.add_argument("--yes", action="store_true", help="grant new permissions")
    add("audit", _cmd_audit, "list installed versions hit by a security advisory (exit 1 "
        "when there is one)")
    regs = sub.add_parser("registries", help="configure the registries of a host's state dir",
                          description="Add (URL plus its TUF root.json), list and remove the "
                          "registries the registry commands use, in order.")
    cmds = regs.add_subparsers(dest="registries_sub", metavar="COMMAND")
    regs.set_defaults(func=lambda args: (regs.print_help(sys.stderr), EXIT_USAGE)[1])
    for name, help_ in (("add", "add a registry (last, or at --position)"),
                        ("list", "list the registries in order"),
                        ("remove", "forget a registry and its trusted metadata")):
        p = cmds.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=_run, registry_func=_cmd_registries,
                       registry_command=f"registries {name}")
        if name in ("add", "remove"):
            p.add_argument("name", metavar="NAME")
        if name == "add":
            p.add_argument("url", metavar="URL", help="the registry's base URL")
            p.add_argument("--root", required=True, metavar="ROOT_JSON",
                           help="the registry's TUF root metadata, obtained out of band")
            p.add_argument("--position", type=int, default=None,
                           help="place in the order (0 first); default last")
