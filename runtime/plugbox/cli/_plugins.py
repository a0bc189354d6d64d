"""``plugbox plugins``: manage the plugins installed on a host from the shell (issue 9 §8).

Subcommands: ``list``, ``info NAME``, ``install SRC``, ``enable NAME``, ``disable NAME``,
``upgrade SRC``, ``rollback NAME [--to VERSION]``, ``pin NAME``, ``unpin NAME``,
``uninstall NAME [--purge]``, ``config get|set|history|rollback NAME``, ``deps NAME`` and
``audit [NAME]``. Each one opens a :class:`plugbox.PluginHost` on the lifecycle state
(``--state-dir DIR``, ``--state-url URL``), calls one lifecycle method and closes it; other
processes serving the same state pick the change up themselves (``PluginHost.refresh``).

The host application's extension points: ``--app MODULE:FUNCTION`` (or ``$PLUGBOX_APP``) names
a function of the application that returns its configured PluginHost (points declared,
functions registered, trust policy set). It is called with the keyword arguments
``state_dir`` and ``state_url`` when the command line gives them; a function that does not
take one of those is refused with a usage error rather than silently run on other state.
Without ``--app`` the command works on the lifecycle state alone, on a PluginHost with no
points of its own. Since ``PluginHost`` refuses a plugin implementing a point it does not
declare, the command declares, for each plugin it may load, stand-ins for the points it
implements (at a version its specifier accepts) and for the host functions it asks for (they
answer ``denied``), as ``plugbox dev`` does.

Exit codes (those of the other subcommands): 0 success; 1 refused or failed (verification,
a dependency refusal, a consent or confirmation not given, a plugin that failed to load or
on-init, an upgrade rolled back); 2 invalid input or usage (bad arguments, a plugin or a
version that is not installed, a config that fails its schema, a refused lifecycle operation
such as upgrading a pinned plugin: every :class:`plugbox.UsageError`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import getpass
import importlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._common import clean, positive_int
from .._errors import ManifestError, PlugboxError, UsageError
from .._manifest import Manifest, load_manifest, read_manifest, validate_manifest
from ..host._errors import DependencyError, LifecycleError

if TYPE_CHECKING:
    from ..host._host import PluginHost
    from ..host._lifecycle import PermissionDiff, PluginInfo

__all__ = ["add_plugins"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2

#: The environment variable ``--app`` defaults to.
APP_ENV: Final = "PLUGBOX_APP"

# Attributes of the lifecycle errors that --json reports besides _main._error_json's.
_ERROR_ATTRS: Final = ("operation", "json_path", "fix", "kind", "dependency", "specifier",
                       "plugins", "point", "versions", "warning")


# --------------------------------------------------------------------------------------------
# Output


def _error_doc(exc: PlugboxError) -> dict[str, Any]:
    from ._main import _error_json

    doc = _error_json(exc)
    for attr in _ERROR_ATTRS:
        value = getattr(exc, attr, None)
        if value is not None and attr not in doc:
            doc[attr] = list(value) if isinstance(value, tuple) else value
    return doc


def _exit_code(exc: PlugboxError) -> int:
    return EXIT_USAGE if isinstance(exc, (UsageError, ManifestError)) else EXIT_REFUSED


def _fail(exc: PlugboxError, args: argparse.Namespace, code: int | None = None,
          **extra: Any) -> int:
    """Report ``exc`` (stderr, or the --json document on stdout); the exit code."""
    code = _exit_code(exc) if code is None else code
    if args.json:
        _print_json({"command": args.plugins_command, **extra, "ok": False,
                     "error": _error_doc(exc)})
    else:
        _err_line(f"{type(exc).__name__}: ", clean(str(exc)))
        json_path = getattr(exc, "json_path", None)
        if json_path and str(json_path) not in str(exc):
            _err_line("at ", clean(str(json_path)))
        if isinstance(exc, DependencyError) and getattr(args, "cascade", True) is False:
            _err_line("hint: ", "rerun with --cascade to disable the plugins that require it "
                      "too")
    return code


def _print_json(doc: Any) -> None:
    # ensure_ascii (the default) keeps every non-ASCII or control character escaped.
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def _ok(args: argparse.Namespace, **doc: Any) -> None:
    _print_json({"command": args.plugins_command, "ok": True, **doc})


def _console(stderr: bool = False) -> Console:
    file = sys.stderr if stderr else sys.stdout
    # Not a terminal (a pipe, a file): wide enough that tables are not cut to 80 columns.
    return Console(file=file, highlight=False, width=None if file.isatty() else 160)


def _say(text: str, style: str = "") -> None:
    # soft_wrap: no hard line breaks inside a message that may be copied or grepped.
    _console().print(Text(text, style=style), soft_wrap=True)


def _err_line(head: str, text: str) -> None:
    line = Text("plugbox: ", style="bold")
    line.append(head, style="bold red")
    line.append(text)
    _console(stderr=True).print(line, soft_wrap=True)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"


_STATE_STYLES: Final = {"enabled": "bold green", "installed": "yellow", "disabled": "dim",
                        "failed": "bold red"}


def _state_text(info: PluginInfo) -> Text:
    return Text(info.state, style=_STATE_STYLES.get(info.state, ""))


def _print_info(info: PluginInfo) -> None:
    console = _console()
    title = Text(clean(info.name), style="bold")
    title.append(" " + clean(info.version))
    console.print(title, soft_wrap=True)
    state = _state_text(info)
    if info.reason:
        state.append(f" ({clean(info.reason)})")
    rows: list[tuple[str, Text | str]] = [
        ("state", state),
        ("enabled", "yes" if info.enabled else "no"),
        ("pinned", "yes" if info.pinned else "no"),
        ("loaded", "yes (in this process)" if info.loaded else "no (in this process)"),
        ("versions", ", ".join(clean(v) for v in info.versions) + "  (kept, newest first)"),
        ("source", clean(info.source)),
        ("path", clean(str(info.path)) if info.path else "-"),
    ]
    if info.requires:
        rows.append(("requires", ", ".join(clean(f"{k} {v}".strip())
                                           for k, v in info.requires.items())))
    grant = info.grant
    services = ", ".join(grant.get("services", ())) or "none"
    rows.append(("granted", clean(services)))
    for key, value in rows:
        line = Text(f"  {key:<9} ")
        line.append(value if isinstance(value, Text) else Text(value))
        console.print(line, soft_wrap=True)
    for warning in info.warnings:
        console.print(Text("  warning: " + clean(warning), style="bold yellow"), soft_wrap=True)


def _names(names: Sequence[str]) -> str:
    return ", ".join(clean(n) for n in names) or "nothing"


# --------------------------------------------------------------------------------------------
# The host


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        text: str = args.actor
        return text
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name (a container without passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"


def _app_host(spec: str, state_dir: Path | None, state_url: str | None) -> PluginHost:
    """The PluginHost of the application function ``spec`` (``MODULE:FUNCTION``); raises
    UsageError when it cannot be imported, called, or does not return a PluginHost."""
    from ..host._host import PluginHost

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--app {spec}: give MODULE:FUNCTION, such as myapp.plugins:make_host "
                         "(a function returning the application's configured PluginHost)")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # Like `python -m` and uvicorn: the application's modules are found from where the
        # command runs.
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"--app {spec}: cannot import {module_name} ({type(exc).__name__}: "
                         f"{exc}); run the command from the application's directory or set "
                         "PYTHONPATH") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"--app {spec}: {module_name} has no attribute {attr}") from None
    if not callable(target):
        raise UsageError(f"--app {spec}: {attr} is not a function; give a function that "
                         "returns the application's PluginHost")
    given = {key: value for key, value in (("state_dir", state_dir), ("state_url", state_url))
             if value is not None}
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key in given:
        if key not in parameters and not open_kw:
            raise UsageError(
                f"--app {spec}: {attr}() takes no {key} parameter, so "
                f"--{key.replace('_', '-')} cannot be applied to the host it makes; give it a "
                f"keyword parameter {key}=None passed on to PluginHost, or drop the option")
    try:
        host = target(**given)
    except PlugboxError:
        raise
    except Exception as exc:
        raise UsageError(f"--app {spec}: {attr}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(host, PluginHost):
        if callable(getattr(host, "close", None)):
            with contextlib.suppress(Exception):
                host.close()
        raise UsageError(f"--app {spec}: {attr}() returned {type(host).__name__}, not a "
                         "plugbox.PluginHost")
    return host


@contextlib.contextmanager
def _open_host(args: argparse.Namespace) -> Iterator[PluginHost]:
    from ..host._host import PluginHost
    from ._main import _trust_policy

    if args.app and (args.trusted_keys or args.trust_mode or args.revoked):
        raise UsageError("--trusted-keys/--trust-mode do not apply with --app: the "
                         "application's PluginHost has its own trust policy")
    trust = _trust_policy(args, default=None)
    if args.app:
        host = _app_host(args.app, args.state_dir, args.state_url)
    else:
        url: str | None = args.state_url
        # The state may be a running host's: its kv file is opened for sharing (the host
        # must open it so too: runtime_options={"shared_state": True}).
        options: dict[str, Any] = {"shared_state": True}
        if url is not None and url.startswith(("postgresql://", "postgres://")):
            options["state_url"] = url  # the plugins' kv data in the same database
        host = PluginHost(state_dir=args.state_dir, state_url=url, trust=trust,
                          runtime_options=options)
    try:
        yield host
    finally:
        host.close()


def _managed_manifests(host: PluginHost) -> list[Manifest]:
    """The manifests of every kept version in the managed store (unreadable ones skipped:
    the operation that needs them reports the problem)."""
    out = []
    for info in host.installed():
        base = info.path.parent if info.path is not None else None
        if base is None or not base.is_dir():
            continue
        for version in info.versions:
            with contextlib.suppress(PlugboxError, OSError):
                out.append(validate_manifest(read_manifest(base / version)))
    return out


def _declare_stand_ins(host: PluginHost, manifests: Sequence[Manifest]) -> None:
    """Without --app: declare the points ``manifests`` implement and the host functions they
    ask for, so that PluginHost admits them (see the module docstring). Points that a managed
    plugin declares itself are left to it."""
    from ._dev import _unavailable, point_version

    declared_by_plugins = {p for m in manifests for p in m.extension_points}
    for manifest in manifests:
        for name, impl in manifest.implements.items():
            if name not in host.points and name not in declared_by_plugins:
                host.extension_point(name, version=point_version(impl.versions),
                                     description="stand-in declared by plugbox plugins "
                                     "(no --app)")
        for pattern in manifest.permissions.functions:
            if not any(fnmatch.fnmatchcase(fn, pattern) for fn in host.functions):
                host.function(pattern, _unavailable(pattern))


def _prepare(host: PluginHost, args: argparse.Namespace, source: str | None = None) -> None:
    """Before an operation that may load plugins: the stand-ins, without --app."""
    if args.app:
        return
    manifests = _managed_manifests(host)
    if source is not None:
        with contextlib.suppress(PlugboxError, OSError):
            manifests.append(_source_manifest(source))
    _declare_stand_ins(host, manifests)


def _source_manifest(source: str) -> Manifest:
    from ..trust._package import staged_plugin

    with staged_plugin(source) as staged:
        return load_manifest(staged)


# --------------------------------------------------------------------------------------------
# Questions


def _interactive() -> bool:
    """True when the command may ask (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def _ask(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _may_ask(args: argparse.Namespace) -> bool:
    # --json is for scripts: it never asks (give --yes).
    return not args.json and _interactive()


# --------------------------------------------------------------------------------------------
# Commands


def _cmd_list(host: PluginHost, args: argparse.Namespace) -> int:
    plugins = host.installed()
    if args.json:
        _ok(args, plugins=[i.to_json() for i in plugins])
        return EXIT_OK
    if not plugins:
        sys.stderr.write("plugbox: no plugins installed\n")
        return EXIT_OK
    table = Table(title="Installed plugins", title_justify="left")
    for column in ("name", "version", "state", "pinned", "kept", "reason"):
        table.add_column(column, no_wrap=column != "reason")
    for info in plugins:
        table.add_row(Text(clean(info.name)), Text(clean(info.version)), _state_text(info),
                      "pinned" if info.pinned else "", str(len(info.versions)),
                      Text(clean(info.reason or "")))
    _console().print(table)
    return EXIT_OK


def _cmd_info(host: PluginHost, args: argparse.Namespace) -> int:
    info = host.info(args.name)
    if args.json:
        _ok(args, plugin=info.to_json())
    else:
        _print_info(info)
    return EXIT_OK


def _cmd_install(host: PluginHost, args: argparse.Namespace) -> int:
    from ._main import _read_config

    config = _read_config(args.config)
    _prepare(host, args, args.source)
    info = host.install(args.source, enable=not args.disabled, config=config,
                        actor=_actor(args))
    code = EXIT_REFUSED if info.state == "failed" else EXIT_OK
    if args.json:
        _print_json({"command": "install", "ok": code == EXIT_OK, "plugin": info.to_json()})
    elif info.state == "failed":
        _err_line("failed: ", clean(f"{info.name} {info.version} is installed but did not "
                                    f"start: {info.reason}; fix it and run plugbox plugins "
                                    f"upgrade, or enable it again"))
    else:
        state = ("enabled" if info.state == "enabled" else
                 f"not enabled: plugbox plugins enable {clean(info.name)}")
        _say(f"installed {clean(info.name)} {clean(info.version)} ({state})")
    return code


def _cmd_enable(host: PluginHost, args: argparse.Namespace) -> int:
    _prepare(host, args)
    enabled = list(host.enable(args.name, actor=_actor(args)))
    if args.json:
        _ok(args, plugin=args.name, enabled=enabled)
        return EXIT_OK
    others = [n for n in enabled if n != args.name]
    _say(f"enabled {_names(enabled)}")
    if others:
        _say(f"  ({_names(others)}: required by {clean(args.name)})", "dim")
    return EXIT_OK


def _cmd_disable(host: PluginHost, args: argparse.Namespace) -> int:
    disabled = list(host.disable(args.name, cascade=args.cascade, actor=_actor(args)))
    if args.json:
        _ok(args, plugin=args.name, disabled=disabled)
    else:
        _say(f"disabled {_names(disabled)}")
    return EXIT_OK


def _describe_diff(diff: PermissionDiff) -> list[str]:
    return [clean(line) for line in diff.describe().splitlines()]


def _cmd_upgrade(host: PluginHost, args: argparse.Namespace) -> int:
    _prepare(host, args, args.source)
    asked: list[bool] = []

    def consent(diff: PermissionDiff) -> bool:
        _say("the new version asks for permissions the current grant does not cover:")
        for line in _describe_diff(diff):
            _say("  " + line, "bold yellow")
        asked.append(_ask("grant them and upgrade?"))
        return asked[-1]

    allow: bool | Callable[[PermissionDiff], bool] = True if args.yes else (
        consent if _may_ask(args) else False)
    outcome = host.upgrade(args.source, allow=allow, actor=_actor(args))
    ok = outcome.status in ("upgraded", "unchanged")
    if args.json:
        _print_json({"command": "upgrade", "ok": ok, "status": outcome.status,
                     "plugin": outcome.plugin, "from_version": outcome.from_version,
                     "to_version": outcome.to_version, "diff": outcome.diff.to_json(),
                     "reason": outcome.reason,
                     "info": None if outcome.info is None else outcome.info.to_json()})
        return EXIT_OK if ok else EXIT_REFUSED
    name = clean(outcome.plugin)
    versions = f"{clean(outcome.from_version)} -> {clean(outcome.to_version)}"
    if outcome.status == "upgraded":
        _say(f"upgraded {name} {versions}")
        if not outcome.diff.empty:
            for line in _describe_diff(outcome.diff):
                _say("  granted " + line, "dim")
    elif outcome.status == "unchanged":
        _say(f"{name} {clean(outcome.to_version)} is active already; nothing to do")
    elif outcome.status == "needs-consent":
        if not asked:  # not shown yet
            _err_line("not granted: ", f"{name} {versions} asks for permissions the current "
                      "grant does not cover:")
            for line in _describe_diff(outcome.diff):
                sys.stderr.write(f"  {line}\n")
        _err_line("declined: ", f"{name} stays at {clean(outcome.from_version)}; rerun with "
                  "--yes to grant them (or answer y on a terminal)")
    else:  # rolled-back
        _err_line("rolled back: ", f"{name} {clean(outcome.to_version)} failed "
                  f"({clean(outcome.reason or 'no reason given')}); "
                  f"{clean(outcome.from_version)} kept serving and is active")
    return EXIT_OK if ok else EXIT_REFUSED


def _cmd_rollback(host: PluginHost, args: argparse.Namespace) -> int:
    host.info(args.name)  # not installed: refused before anything else
    _prepare(host, args)
    actor = _actor(args)
    try:
        info = host.rollback(args.name, to=args.to, confirm=args.yes, actor=actor)
    except LifecycleError as exc:
        warning = getattr(exc, "warning", None)
        if not warning:
            raise
        if not _may_ask(args):
            code = _fail(exc, args, EXIT_REFUSED, declined=True)
            if not args.json:
                _err_line("declined: ", f"{clean(args.name)} stays at its active version; "
                          "rerun with --yes to roll back anyway")
            return code
        _say("warning: " + clean(str(warning)), "bold yellow")
        if not _ask("roll back anyway?"):
            _err_line("declined: ", f"{clean(args.name)} stays at its active version")
            return EXIT_REFUSED
        info = host.rollback(args.name, to=args.to, confirm=True, actor=actor)
    if args.json:
        _ok(args, plugin=info.to_json(), warnings=list(info.warnings))
        return EXIT_OK
    _say(f"rolled back {clean(info.name)} to {clean(info.version)} ({info.state})")
    for warning in info.warnings:
        _say("  warning: " + clean(warning), "bold yellow")
    return EXIT_OK


def _cmd_pin(host: PluginHost, args: argparse.Namespace) -> int:
    pinned = args.plugins_command == "pin"
    method = host.pin if pinned else host.unpin
    info = method(args.name, actor=_actor(args))
    if args.json:
        _ok(args, plugin=info.to_json())
    elif pinned:
        _say(f"pinned {clean(info.name)} at {clean(info.version)} (upgrades refused until "
             "plugbox plugins unpin)")
    else:
        _say(f"unpinned {clean(info.name)} ({clean(info.version)})")
    return EXIT_OK


def _cmd_uninstall(host: PluginHost, args: argparse.Namespace) -> int:
    host.info(args.name)  # not installed: refused before anything else
    result: Any = host.uninstall(args.name, purge=args.purge, cascade=args.cascade,
                                 actor=_actor(args))
    disabled = [n for n in result if n != args.name] if isinstance(result, list) else []
    if args.json:
        _ok(args, plugin=args.name, purged=args.purge, disabled=disabled)
        return EXIT_OK
    if disabled:
        _say(f"disabled {_names(disabled)} (they require {clean(args.name)})")
    _say(f"uninstalled {clean(args.name)}" + (" and purged its kv data and config"
                                             if args.purge else
                                             " (kv data and config kept; --purge removes them)"))
    return EXIT_OK


# -- config


def _print_config(config: Mapping[str, Any]) -> None:
    sys.stdout.write(clean(json.dumps(config, indent=2, sort_keys=True),
                           keep_newlines=True) + "\n")


def _cmd_config_get(host: PluginHost, args: argparse.Namespace) -> int:
    host.info(args.name)
    config = host.config_of(args.name, redacted=True)
    if args.json:
        _ok(args, plugin=args.name, config=config)
    else:
        _print_config(config)
    return EXIT_OK


def _assignments(pairs: Sequence[str], base: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each ``KEY=VALUE`` applied: KEY a dotted path into nested objects, VALUE
    JSON when it parses as JSON (``3``, ``true``, ``[1]``, ``"3"``), else the text itself."""
    config = json.loads(json.dumps(base))  # a deep copy
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"config set: {pair!r} is not KEY=VALUE (KEY may be a dotted path "
                             "such as db.port; VALUE is JSON or plain text)")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, last = key.split(".")
        node = config
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    raise UsageError(f"config set: {key}: {part} is not an object in the "
                                     "current config; set it whole with --file")
                child = node[part] = {}
            node = child
        node[last] = value
    result: dict[str, Any] = config
    return result


def _cmd_config_set(host: PluginHost, args: argparse.Namespace) -> int:
    from ._main import _read_config

    if (args.file is None) == (not args.assignments):
        raise UsageError("config set NAME: give either --file F.json (the whole config) or "
                         "KEY=VALUE ... (changes to the current config), not both or neither")
    if args.file is not None:
        config = _read_config(sys.stdin.read() if args.file == "-" else "@" + args.file)
        assert config is not None
    else:
        config = _assignments(args.assignments, host.config_of(args.name))
    _prepare(host, args)
    host.configure(args.name, config, actor=_actor(args))
    shown = host.config_of(args.name, redacted=True)
    if args.json:
        _ok(args, plugin=args.name, config=shown)
    else:
        _say(f"configured {clean(args.name)}:")
        _print_config(shown)
    return EXIT_OK


def _cmd_config_history(host: PluginHost, args: argparse.Namespace) -> int:
    host.info(args.name)  # not installed: refused
    docs: list[dict[str, Any]] = [
        {"revision": r.revision, "at": r.at, "actor": r.actor, "config": dict(r.config)}
        for r in host.config_history(args.name, redacted=True)]
    if args.json:
        _ok(args, plugin=args.name, revisions=docs)
        return EXIT_OK
    if not docs:
        sys.stderr.write(f"plugbox: {clean(args.name)} has no stored config\n")
        return EXIT_OK
    table = Table(title=f"Config history of {clean(args.name)}", title_justify="left")
    for column in ("revision", "when (UTC)", "actor", "config"):
        table.add_column(column, no_wrap=column != "config")
    for doc in docs:
        table.add_row(str(doc["revision"]), _when(doc["at"]), Text(clean(doc["actor"] or "-")),
                      Text(clean(json.dumps(doc["config"], sort_keys=True))))
    _console().print(table)
    return EXIT_OK


def _cmd_config_rollback(host: PluginHost, args: argparse.Namespace) -> int:
    _prepare(host, args)
    host.rollback_config(args.name, args.revision, actor=_actor(args))
    shown = host.config_of(args.name, redacted=True)
    if args.json:
        _ok(args, plugin=args.name, config=shown)
    else:
        which = f"revision {args.revision}" if args.revision else "the previous config"
        _say(f"configured {clean(args.name)} from {which}:")
        _print_config(shown)
    return EXIT_OK


# -- deps and audit


def _cmd_deps(host: PluginHost, args: argparse.Namespace) -> int:
    host.info(args.name)
    report = host.dependencies(args.name)
    if args.json:
        _ok(args, plugin=args.name, dependencies=report)
        return EXIT_OK
    table = Table(title=f"Dependencies of {clean(args.name)}", title_justify="left")
    for column in ("kind", "plugin", "specifier", "installed", "enabled", "status"):
        table.add_column(column, no_wrap=column != "status")
    rows = 0
    for kind in ("requires", "optional", "conflicts"):
        for entry in report.get(kind) or ():
            ok = entry.get("ok", True)
            reason = clean(str(entry.get("reason") or ""))
            if not ok:
                status = Text("FAIL", style="bold red")
                status.append(" " + reason if reason else "")
            else:  # an optional plugin not used says why
                status = Text(reason, style="dim") if reason else Text("ok", style="green")
            table.add_row(kind, Text(clean(str(entry.get("name")))),
                          Text(clean(str(entry.get("specifier") or "any"))),
                          Text(clean(str(entry.get("installed") or "-"))),
                          "yes" if entry.get("enabled") else "no", status)
            rows += 1
    if rows:
        _console().print(table)
    else:
        _say(f"{clean(args.name)} requires nothing, uses no optional plugin and declares no "
             "conflict")
    users = report.get("dependents", report.get("required_by")) or []
    names = [u.get("name", "?") if isinstance(u, dict) else str(u) for u in users]
    _say("required by: " + (", ".join(clean(n) for n in names) or "no enabled plugin"))
    return EXIT_OK


def _cmd_audit(host: PluginHost, args: argparse.Namespace) -> int:
    entries = host.audit(args.name, limit=args.limit)
    if args.json:
        _ok(args, plugin=args.name, entries=[dataclasses.asdict(e) for e in entries])
        return EXIT_OK
    if not entries:
        sys.stderr.write("plugbox: no audit entries\n")
        return EXIT_OK
    table = Table(title="Audit log (newest first)", title_justify="left")
    for column in ("when (UTC)", "actor", "action", "plugin", "versions", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for e in entries:
        versions = f"{e.from_version or '-'} -> {e.to_version or '-'}"
        table.add_row(_when(e.at), Text(clean(e.actor or "-")), e.action,
                      Text(clean(e.plugin or "-")), Text(clean(versions)),
                      Text(clean(e.detail or "")))
    _console().print(table)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Health and quarantine (issue 10)


def _started(host: PluginHost, args: argparse.Namespace) -> None:
    """Load the enabled plugins (with their health gate and recorded quarantines)."""
    _prepare(host, args)
    host.start()


def _cmd_health(host: PluginHost, args: argparse.Namespace) -> int:
    from ..host._health import HealthReport

    if args.name is not None:
        host.info(args.name)  # not installed: refused first
    _started(host, args)
    reports: dict[str, HealthReport] = {}
    for info in host.installed():
        if args.name is not None and info.name != args.name or not info.enabled:
            continue
        if host.get(info.name) is not None:
            reports.update(host.check_health(info.name))
        else:  # it did not start: its recorded reason is its health
            reports[info.name] = HealthReport(info.name, info.version, "failing",
                                              reason=info.reason or f"state {info.state}",
                                              at=time.time())
    failing = [r.plugin for r in reports.values() if not r.healthy]
    if args.json:
        _print_json({"command": "health", "ok": not failing,
                     "plugins": [r.to_json() for r in reports.values()]})
    else:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in ("plugin", "version", "status", "details"):
            table.add_column(column, overflow="fold")
        style = {"ok": "green", "degraded": "yellow", "failing": "bold red", "unknown": "dim"}
        for r in reports.values():
            said = r.reason or (json.dumps(dict(r.details), sort_keys=True) if r.details
                                else ("no health hook: loaded and on-init passed"
                                      if r.status == "unknown" else ""))
            table.add_row(clean(r.plugin), clean(r.version),
                          f"[{style.get(r.status, '')}]{r.status}[/]", clean(said))
        _console().print(table)
        if not reports:
            _say("no enabled plugins")
    return EXIT_REFUSED if failing else EXIT_OK


def _breaker_json(state: Any) -> dict[str, Any]:
    return dataclasses.asdict(state)


def _cmd_quarantine(host: PluginHost, args: argparse.Namespace) -> int:
    host.info(args.name)
    _started(host, args)
    if host.get(args.name) is None:
        raise UsageError(f"quarantine {args.name!r}: it is not running (state "
                         f"{host.info(args.name).state}); only a running plugin can be "
                         f"quarantined", plugin=args.name)
    state = host.quarantine(args.name, args.reason, actor=_actor(args))
    if args.json:
        _ok(args, breaker=_breaker_json(state))
    else:
        _say(f"quarantined {clean(args.name)}: {clean(args.reason)} (hosts sharing this state "
             f"apply it within a second; plugbox plugins release {clean(args.name)} ends it)")
    return EXIT_OK


def _cmd_release(host: PluginHost, args: argparse.Namespace) -> int:
    host.info(args.name)
    _started(host, args)
    state = host.release(args.name, actor=_actor(args))
    if args.json:
        _ok(args, breaker=_breaker_json(state))
    else:
        _say(f"released {clean(args.name)}: it is dispatched to again")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Dispatch and arguments


def _run(args: argparse.Namespace) -> int:
    command: Callable[[PluginHost, argparse.Namespace], int] = args.plugins_func
    try:
        with _open_host(args) as host:
            return command(host, args)
    except PlugboxError as exc:
        return _fail(exc, args)


def _common() -> argparse.ArgumentParser:
    """The options every ``plugbox plugins`` subcommand takes."""
    from ._main import _add_trust_options

    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("host options")
    group.add_argument("--json", action="store_true", help="print a machine-readable report")
    group.add_argument("--state-dir", metavar="DIR", type=Path, default=None,
                       help="the host's state directory (default: $PLUGBOX_HOME, else "
                       "$XDG_STATE_HOME/plugbox)")
    group.add_argument("--state-url", metavar="URL", default=None,
                       help="the lifecycle database (sqlite:///PATH; a postgresql:// URL also "
                       "holds the plugins' kv data); default: the state dir's SQLite file")
    group.add_argument("--app", metavar="MODULE:FUNCTION", default=os.environ.get(APP_ENV),
                       help="a function of the host application returning its configured "
                       "PluginHost (called with state_dir=/state_url= when given); default "
                       f"${APP_ENV}; without it, stand-ins for the plugins' points are declared")
    group.add_argument("--actor", metavar="WHO", default=None,
                       help="who to record in the audit log (default cli:$USER)")
    _add_trust_options(common, required=False, with_mode=True)
    return common


def add_plugins(sub: Any) -> None:
    """Declare ``plugbox plugins`` and its subcommands on the subparsers ``sub``."""
    common = _common()
    parser = sub.add_parser(
        "plugins",
        help="manage the plugins installed on a host: install, upgrade, rollback, config",
        description=(
            "Manage the plugins installed on a host's lifecycle state (--state-dir, "
            "--state-url): list, inspect, install, enable, disable, upgrade with consent, "
            "roll back, pin, uninstall, configure, and read dependencies and the audit log. "
            "--app MODULE:FUNCTION names the host application's function returning its "
            "PluginHost (extension points and functions declared); without it, stand-ins for "
            "the points the plugins implement are declared. Exit 0 ok; 1 refused or failed "
            "(verification, dependencies, consent declined, load failure); 2 invalid input "
            "(bad arguments, not installed, unknown version, invalid config)."),
    )
    cmds = parser.add_subparsers(dest="plugins_sub", metavar="COMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    def add(name: str, func: Callable[[PluginHost, argparse.Namespace], int], help_: str,
            *, into: Any = cmds, command: str | None = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(name, help=help_, description=help_,
                                                     parents=[common])
        p.set_defaults(func=_run, plugins_func=func, plugins_command=command or name)
        return p

    def name_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="an installed plugin's name")

    add("list", _cmd_list, "list the installed plugins with their state and reason")
    name_arg(add("info", _cmd_info, "show an installed plugin: state and reason, versions, "
                 "pin, grant, source"))
    p = add("install", _cmd_install, "verify a plugin (directory, plugbox.json or .plugbox), "
            "copy it into the managed store and enable it")
    p.add_argument("source", metavar="SRC", help="plugin directory, its plugbox.json, or a "
                   ".plugbox package")
    p.add_argument("--disabled", action="store_true", help="install without enabling it")
    p.add_argument("--config", metavar="JSON", help="its configuration: a JSON object, or @FILE")
    name_arg(add("enable", _cmd_enable, "enable a plugin (and the plugins it requires)"))
    p = add("disable", _cmd_disable, "disable a plugin; refused while enabled plugins require "
            "it, unless --cascade")
    name_arg(p)
    p.add_argument("--cascade", action="store_true",
                   help="disable the enabled plugins that require it too")
    p = add("upgrade", _cmd_upgrade, "upgrade a plugin to the version at SRC; new permissions "
            "are shown and asked for (on a terminal), granted by --yes")
    p.add_argument("source", metavar="SRC", help="the new version: plugin directory, its "
                   "plugbox.json, or a .plugbox package")
    p.add_argument("--yes", action="store_true",
                   help="grant the permissions the new version asks for beyond the current "
                   "grant (without it and without a terminal, the upgrade is declined)")
    p = add("rollback", _cmd_rollback, "reactivate a kept version (default: the previous "
            "one); across a data format change, warns and asks (--yes confirms)")
    name_arg(p)
    p.add_argument("--to", metavar="VERSION", default=None, help="the kept version to activate")
    p.add_argument("--yes", action="store_true",
                   help="proceed across a data_version change without asking")
    name_arg(add("pin", _cmd_pin, "hold a plugin at its active version: upgrades are refused"))
    name_arg(add("unpin", _cmd_pin, "release a pin"))
    p = add("uninstall", _cmd_uninstall, "uninstall a plugin (kv data and config kept unless "
            "--purge)")
    name_arg(p)
    p.add_argument("--purge", action="store_true", help="also remove its kv data and config")
    p.add_argument("--cascade", action="store_true",
                   help="disable the enabled plugins that require it")

    config = cmds.add_parser("config", help="read, change and roll back a plugin's config",
                             description="read, change and roll back a plugin's config; "
                             "values the schema marks writeOnly are never printed")
    config.set_defaults(func=lambda args: _usage(config))
    ccmds = config.add_subparsers(dest="config_sub", metavar="ACTION")
    name_arg(add("get", _cmd_config_get, "print the plugin's config (values the schema marks "
                 "writeOnly hidden)", into=ccmds, command="config get"))
    p = add("set", _cmd_config_set, "replace the config (--file) or change keys of it "
            "(KEY=VALUE: dotted KEY, JSON or text VALUE); validated, nothing applied if it "
            "fails", into=ccmds, command="config set")
    name_arg(p)
    p.add_argument("assignments", metavar="KEY=VALUE", nargs="*", help="changes to the config")
    p.add_argument("--file", metavar="F.json", help="the whole config from a JSON file (- for "
                   "stdin)")
    name_arg(add("history", _cmd_config_history, "list the stored configs, oldest first",
                 into=ccmds, command="config history"))
    p = add("rollback", _cmd_config_rollback, "apply a stored config again (default: the "
            "previous one)", into=ccmds, command="config rollback")
    name_arg(p)
    p.add_argument("revision", metavar="REVISION", nargs="?", type=positive_int, default=None,
                   help="the revision number (plugbox plugins config history NAME)")

    name_arg(add("deps", _cmd_deps, "show what a plugin requires, uses optionally and "
                 "conflicts with, and the enabled plugins that require it"))
    p = add("health", _cmd_health, "load the enabled plugins and run their health checks "
            "(exit 1 when one is failing)")
    p.add_argument("name", metavar="NAME", nargs="?", default=None, help="a plugin's name")
    p = add("quarantine", _cmd_quarantine, "take a plugin out of dispatch until released "
            "(recorded: running hosts on this state apply it)")
    name_arg(p)
    p.add_argument("--reason", metavar="TEXT", default="quarantined by an operator",
                   help="why (shown to callers and in the audit log)")
    name_arg(add("release", _cmd_release, "end a plugin's quarantine (by its circuit breaker "
                 "or an operator)"))
    p = add("audit", _cmd_audit, "show the audit log (of one plugin, or all), newest first")
    p.add_argument("name", metavar="NAME", nargs="?", default=None, help="a plugin's name")
    p.add_argument("--limit", metavar="N", type=positive_int, default=50,
                   help="entries shown (default %(default)s)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE
