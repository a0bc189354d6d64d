"""The ``plugbox`` command line: ``plugbox inspect`` and ``plugbox call``.

Exit codes: 0 success; 1 the plugin was refused or failed (any :class:`~plugbox.PlugboxError`
other than a usage or manifest error); 2 invalid input or usage (bad arguments, a missing path,
a manifest that is not valid JSON or fails the schema).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import _abispec
from ._errors import (
    GuestError,
    HashMismatchError,
    IncompatibleAbiError,
    IncompatibleHostError,
    ManifestError,
    ModuleInterfaceError,
    PlugboxError,
    PolicyViolationError,
    UsageError,
)
from ._manifest import Manifest, check_compatibility, load_manifest, verify_module
from ._policy import DEFAULT_MAX_LIMITS, Policy
from ._wasmparse import ModuleInfo, check_module_interface, imported_services, inspect_module

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2

# Marks a bare ``--json`` (output format only) as opposed to ``--json PAYLOAD``.
_BARE_JSON: Final = object()


def _version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# Output helpers


def _clean(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control and format characters escaped.

    Manifests and results come from untrusted plugins; printed raw, an escape sequence could
    rewrite the terminal, and a bidi override could make text read differently than it is.
    """
    out = []
    for ch in text:
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _error_json(exc: PlugboxError) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": exc.message,
        "plugin": exc.plugin,
        "hook": exc.hook,
        "limit": exc.limit,
        "permission": exc.permission,
    }
    if isinstance(exc, ManifestError):
        doc["json_path"] = exc.json_path
    if isinstance(exc, GuestError):
        doc["kind"] = exc.kind
        doc["detail"] = exc.detail
    return doc


def _print_json(doc: Any) -> None:
    # ensure_ascii (the default) keeps every non-ASCII or control character escaped.
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _report_error(exc: PlugboxError, *, as_json: bool, code: int, **extra: Any) -> int:
    if as_json:
        _print_json({**extra, "ok": False, "error": _error_json(exc)})
    else:
        console = Console(file=sys.stderr, highlight=False)
        line = Text("plugbox: ", style="bold")
        line.append(f"{type(exc).__name__}: ", style="bold red")
        line.append(_clean(str(exc)))
        # soft_wrap: no hard line breaks inside a message that may be copied or grepped.
        console.print(line, soft_wrap=True)
    return code


def _usage_error(message: str, *, as_json: bool) -> int:
    return _report_error(UsageError(message), as_json=as_json, code=EXIT_USAGE)


def _sig(params: Sequence[str], results: Sequence[str]) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"


# --------------------------------------------------------------------------------------------
# plugbox inspect


def _check(ok: bool | None, detail: str, error: PlugboxError | None = None) -> dict[str, Any]:
    return {"ok": ok, "detail": detail, "error": None if error is None else _error_json(error)}


def _inspect_report(manifest: Manifest, policy: Policy) -> dict[str, Any]:
    """Every pre-compilation check on the plugin, as a JSON-ready dict. Raises ManifestError
    for problems that make the input itself invalid (missing module, bad host specifier)."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        data = verify_module(manifest)
        checks["sha256"] = _check(True, f"matches {manifest.module_sha256}")
    except HashMismatchError as exc:
        # Inspect the module anyway: knowing what it is helps decide whether to re-pin it.
        data = manifest.module_path.read_bytes()
        checks["sha256"] = _check(False, "the module does not match the pinned sha256", exc)
    actual_sha256 = hashlib.sha256(data).hexdigest()

    runtime_version = _version()
    try:
        check_compatibility(
            manifest, runtime_version=runtime_version, abi_version=_abispec.ABI_VERSION
        )
        checks["abi"] = _check(
            True, f"ABI {manifest.abi}; this runtime implements {_abispec.ABI_VERSION}"
        )
        host_detail = (
            f"{manifest.host} includes plugbox {runtime_version}"
            if manifest.host
            else "no host requirement"
        )
        checks["host"] = _check(True, host_detail)
    except IncompatibleAbiError as exc:
        checks["abi"] = _check(False, f"ABI {manifest.abi} cannot run here", exc)
        checks["host"] = _check(None, "not checked (ABI incompatible)")
    except IncompatibleHostError as exc:
        checks["abi"] = _check(
            True, f"ABI {manifest.abi}; this runtime implements {_abispec.ABI_VERSION}"
        )
        checks["host"] = _check(False, f"{manifest.host} excludes plugbox {runtime_version}", exc)

    info: ModuleInfo | None = None
    try:
        info = inspect_module(data)
        checks["module"] = _check(True, f"well-formed {info.kind} module")
    except ModuleInterfaceError as exc:
        checks["module"] = _check(False, "not a well-formed WebAssembly binary", exc)

    if info is None:
        checks["interface"] = _check(None, "not checked (the module could not be read)")
    else:
        try:
            check_module_interface(info, manifest)
            checks["interface"] = _check(
                True, f"imports and exports match the plugbox ABI {_abispec.ABI_VERSION}"
            )
        except (ModuleInterfaceError, IncompatibleAbiError) as exc:
            checks["interface"] = _check(False, "the module does not fit the plugbox ABI", exc)

    try:
        _, effective = policy.resolve(manifest)
        policy_check = _check(True, "within the host policy's caps")
    except PolicyViolationError as exc:
        effective = manifest.limits.fill(policy.effective_defaults())
        policy_check = _check(False, "refused by the host policy", exc)
    policy_check["http_hosts"] = list(policy.http_hosts)

    services = sorted(imported_services(info)) if info is not None else []
    requested = manifest.permissions.services()
    return {
        "ok": all(check["ok"] is not False for check in checks.values()),
        "manifest": str(manifest.path),
        "plugin": {
            "name": manifest.name,
            "version": manifest.version,
            "description": manifest.description,
            "authors": list(manifest.authors),
            "license": manifest.license,
            "abi": manifest.abi,
            "host": manifest.host,
            "hooks": list(manifest.hooks),
        },
        "module": {
            "path": str(manifest.module_path),
            "kind": None if info is None else info.kind,
            "size": len(data),
            "sha256": manifest.module_sha256,
            "actual_sha256": actual_sha256,
            "custom_sections": [] if info is None else sorted(info.custom_sections),
        },
        "checks": checks,
        # The policy is the host's choice, not a property of the plugin, so it is reported
        # (as it stands for this command line) but does not decide "ok" or the exit code.
        "policy": policy_check,
        "imports": [
            {
                "module": imp.module,
                "name": imp.name,
                "kind": imp.kind,
                "params": list(imp.params),
                "results": list(imp.results),
                "service": _abispec.SERVICE_OF_MODULE.get(imp.module),
            }
            for imp in (info.imports if info is not None else ())
        ],
        "imported_services": services,
        # Imported but not requested: the plugin loads, but those calls will be denied.
        "unrequested_services": sorted(set(services) - requested),
        "exports": [
            {"name": e.name, "kind": e.kind, "params": list(e.params), "results": list(e.results)}
            for e in (info.exports if info is not None else ())
        ],
        "permissions": dataclasses.asdict(manifest.permissions),
        "limits": {
            "requested": manifest.limits.requested(),
            "effective": dataclasses.asdict(effective),
            "max": dataclasses.asdict(policy.max_limits),
        },
    }


_CHECK_LABELS: Final = {
    "sha256": "sha256",
    "abi": "ABI",
    "host": "host",
    "module": "module",
    "interface": "interface",
}


def _status(ok: bool | None) -> Text:
    if ok is True:
        return Text("ok", style="bold green")
    if ok is False:
        return Text("FAIL", style="bold red")
    return Text("skip", style="dim")


def _print_inspect(report: dict[str, Any]) -> None:
    console = Console(file=sys.stdout, highlight=False)
    plugin = report["plugin"]
    module = report["module"]

    title = Text(_clean(plugin["name"]), style="bold")
    title.append(" " + _clean(plugin["version"]))
    if plugin["license"]:
        title.append(f"  ({_clean(plugin['license'])})", style="dim")
    console.print(title)
    if plugin["description"]:
        console.print(Text("  " + _clean(plugin["description"])))
    if plugin["authors"]:
        console.print(Text("  by " + ", ".join(_clean(a) for a in plugin["authors"]), style="dim"))
    console.print(Text(f"  manifest  {_clean(report['manifest'])}"))
    kind = f"{module['kind']} module" if module["kind"] else "unreadable module"
    console.print(Text(f"  module    {_clean(module['path'])} ({kind}, {module['size']} bytes)"))
    console.print(Text("  hooks     " + ", ".join(_clean(h) for h in plugin["hooks"])))
    console.print()

    checks = Table(title="Checks", title_justify="left", show_header=False, box=None)
    checks.add_column(no_wrap=True)
    checks.add_column(no_wrap=True)
    checks.add_column()
    for key, label in _CHECK_LABELS.items():
        check = report["checks"][key]
        detail = check["error"]["message"] if check["error"] else check["detail"]
        checks.add_row(_status(check["ok"]), label, Text(_clean(detail)))
    policy = report["policy"]
    policy_detail = policy["error"]["message"] if policy["error"] else policy["detail"]
    checks.add_row(
        Text("ok", style="bold green") if policy["ok"] else Text("note", style="bold yellow"),
        "policy",
        Text(_clean(policy_detail) + " (the command line's policy; does not affect the result)"),
    )
    console.print(checks)
    console.print()

    perms = Table(title="Permissions", title_justify="left")
    perms.add_column("service")
    perms.add_column("requested")
    perms.add_column("imported")
    perms.add_column("details")
    imported = set(report["imported_services"])
    for service in _abispec.SERVICES:
        value = report["permissions"][service]
        asked = value is not None and value is not False
        details = ""
        if isinstance(value, dict):
            details = ", ".join(
                f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                for k, v in value.items()
            )
        perms.add_row(
            service,
            Text("yes", style="green") if asked else Text("no", style="dim"),
            Text("yes") if service in imported else Text("no", style="dim"),
            Text(_clean(details)),
        )
    console.print(perms)
    if report["unrequested_services"]:
        console.print(
            Text(
                "  note: the module imports "
                + ", ".join(report["unrequested_services"])
                + " without requesting the permission; those calls will be denied",
                style="yellow",
            )
        )
    console.print()

    limits = Table(title="Limits", title_justify="left")
    limits.add_column("limit")
    limits.add_column("requested", justify="right")
    limits.add_column("effective", justify="right")
    limits.add_column("host cap", justify="right")
    for name, effective in report["limits"]["effective"].items():
        asked = report["limits"]["requested"].get(name)
        limits.add_row(
            name,
            Text(str(asked)) if asked is not None else Text("default", style="dim"),
            str(effective),
            str(report["limits"]["max"][name]),
        )
    console.print(limits)
    console.print()

    if report["imports"]:
        imports = Table(title="Imports", title_justify="left")
        imports.add_column("service")
        imports.add_column("import")
        imports.add_column("signature")
        # Grouped by service; imports outside the ABI ("~" sorts last) at the end.
        rows = sorted(
            report["imports"], key=lambda i: (i["service"] or "~", i["module"], i["name"])
        )
        for imp in rows:
            imports.add_row(
                Text(imp["service"] or "(not in ABI)", style="" if imp["service"] else "red"),
                Text(_clean(f"{imp['module']}.{imp['name']}")),
                _sig(imp["params"], imp["results"]) if imp["kind"] == "func" else imp["kind"],
            )
        console.print(imports)
        console.print()
    elif module["kind"] == "core":
        console.print(Text("Imports: none"))
        console.print()

    if report["exports"]:
        exports = Table(title="Exports", title_justify="left")
        exports.add_column("export")
        exports.add_column("kind")
        exports.add_column("signature")
        for exp in report["exports"]:
            exports.add_row(
                Text(_clean(exp["name"])),
                exp["kind"],
                _sig(exp["params"], exp["results"]) if exp["kind"] == "func" else "",
            )
        console.print(exports)
        console.print()

    if report["ok"]:
        console.print(Text("OK: the plugin passes every check", style="bold green"))
    else:
        failed = [_CHECK_LABELS[k] for k, c in report["checks"].items() if c["ok"] is False]
        console.print(
            Text(f"REFUSED: the plugin fails the {', '.join(failed)} check(s)", style="bold red")
        )


def _cmd_inspect(args: argparse.Namespace) -> int:
    as_json: bool = args.json
    try:
        policy = Policy(http_hosts=tuple(args.allow_http))
        manifest = load_manifest(args.path)
        report = _inspect_report(manifest, policy)
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE)
    if as_json:
        _print_json(report)
    else:
        _print_inspect(report)
    return EXIT_OK if report["ok"] else EXIT_REFUSED


# --------------------------------------------------------------------------------------------
# plugbox call


def _read_payload(args: argparse.Namespace) -> bytes:
    """The payload from --json PAYLOAD, --file or --text; raises UsageError."""
    sources = [
        name
        for name, given in (
            ("--json PAYLOAD", args.json is not None and args.json is not _BARE_JSON),
            ("--file", args.file is not None),
            ("--text", args.text is not None),
        )
        if given
    ]
    if len(sources) > 1:
        raise UsageError(f"give at most one payload; got {' and '.join(sources)}")
    if args.text is not None:
        text: str = args.text
        return text.encode("utf-8")
    if args.file is not None:
        if args.file == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(args.file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --file {args.file}: {exc.strerror or exc}") from exc
    if args.json is not None and args.json is not _BARE_JSON:
        payload: str = args.json
        try:
            json.loads(payload)
        except ValueError as exc:
            raise UsageError(
                f"--json PAYLOAD must be valid JSON ({exc}); to send plain text use --text"
            ) from exc
        return payload.encode("utf-8")
    return b""


def _read_config(text: str | None) -> dict[str, Any] | None:
    """The --config object: inline JSON, or @FILE to read it from a file."""
    if text is None:
        return None
    source = "--config"
    if text.startswith("@"):
        source = f"--config file {text[1:]}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {source}: {exc}") from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} must be valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{source} must be a JSON object, such as '{{\"key\": 1}}'")
    return value


def _print_result(result: bytes) -> None:
    try:
        text = result.decode("utf-8")
    except UnicodeDecodeError:
        sys.stderr.write("plugbox: the result is not UTF-8 text; printing it as base64\n")
        sys.stdout.write(base64.b64encode(result).decode("ascii") + "\n")
        return
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    # Escape control characters only for a terminal; piped output stays byte-exact.
    if sys.stdout.isatty():
        text = _clean(text, keep_newlines=True)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


def _result_json(plugin: str, hook: str, result: bytes) -> dict[str, Any]:
    text: str | None
    try:
        text = result.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    decoded: Any = None
    if text is not None:
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
    return {
        "plugin": plugin,
        "hook": hook,
        "ok": True,
        "result": decoded,
        "result_text": text,
        "result_base64": base64.b64encode(result).decode("ascii"),
    }


def _cmd_call(args: argparse.Namespace) -> int:
    as_json = args.json is not None
    hook: str = args.hook
    try:
        payload = _read_payload(args)
        config = _read_config(args.config)
        # The CLI's user is the host: an explicit --fuel or --deadline-ms above the default
        # caps raises the caps instead of being silently cut down to them.
        max_limits = dataclasses.replace(
            DEFAULT_MAX_LIMITS,
            fuel=max(DEFAULT_MAX_LIMITS.fuel, args.fuel or 0),
            deadline_ms=max(DEFAULT_MAX_LIMITS.deadline_ms, args.deadline_ms or 0),
        )
        policy = Policy(max_limits=max_limits, http_hosts=tuple(args.allow_http))
        # Read the manifest first: bad input fails fast, and errors can name the plugin.
        manifest = load_manifest(args.path)
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE, hook=hook)

    from ._runtime import Runtime

    plugin_name = manifest.name
    try:
        with Runtime(state_dir=args.state_dir, policy=policy) as runtime:
            plugin = runtime.load(args.path, config=config)
            result = plugin.call(hook, payload, fuel=args.fuel, deadline_ms=args.deadline_ms)
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE, plugin=plugin_name, hook=hook)
    except PlugboxError as exc:
        return _report_error(
            exc, as_json=as_json, code=EXIT_REFUSED, plugin=plugin_name, hook=hook
        )
    except OSError as exc:  # e.g. a state directory that cannot be created
        return _usage_error(f"cannot set up the runtime: {exc}", as_json=as_json)

    if as_json:
        _print_json(_result_json(plugin_name, hook, result))
    else:
        _print_result(result)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Argument parsing


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plugbox",
        description="Inspect and call plugbox WebAssembly plugins.",
        epilog="Exit status: 0 ok; 1 the plugin was refused or failed; 2 invalid input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"plugbox {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    allow_http_help = (
        "allow plugins to request HTTP to hosts matching PATTERN (host or host:port, "
        "fnmatch wildcards); repeatable"
    )

    inspect = sub.add_parser(
        "inspect",
        help="show what a plugin is and asks for, and whether it passes the checks",
        description=(
            "Show a plugin's manifest, sha256 check, ABI and host compatibility, imports, "
            "exports, permissions and limits, and check its module against the plugbox ABI. "
            "The module is parsed, never compiled or run. Exit 0 when every check passes, 1 "
            "when the plugin would be refused, 2 when the input is invalid."
        ),
    )
    inspect.add_argument("path", metavar="PATH", help="plugin directory or its plugbox.json")
    inspect.add_argument("--json", action="store_true", help="print a machine-readable report")
    inspect.add_argument(
        "--allow-http", metavar="PATTERN", action="append", default=[], help=allow_http_help
    )
    inspect.set_defaults(func=_cmd_inspect)

    call = sub.add_parser(
        "call",
        help="load a plugin and call one of its hooks",
        description=(
            "Load a plugin (after every check) and call HOOK with a payload from --json, "
            "--file or --text (empty if none). Prints the result; with --json, a "
            "machine-readable JSON document. Put --json after HOOK."
        ),
    )
    call.add_argument("path", metavar="PATH", help="plugin directory or its plugbox.json")
    call.add_argument("hook", metavar="HOOK", help="the hook to call, e.g. text.stats")
    call.add_argument(
        "--json",
        metavar="PAYLOAD",
        nargs="?",
        const=_BARE_JSON,
        default=None,
        help="send PAYLOAD (JSON text) as the payload; with or without PAYLOAD, print "
        "machine-readable JSON output",
    )
    call.add_argument("--file", metavar="F", help="send the bytes of file F (- for stdin)")
    call.add_argument("--text", metavar="T", help="send the text T (UTF-8)")
    call.add_argument(
        "--config", metavar="JSON", help="the plugin's configuration: a JSON object, or @FILE"
    )
    call.add_argument("--fuel", metavar="N", type=_positive_int, help="fuel for this call")
    call.add_argument(
        "--deadline-ms", metavar="N", type=_positive_int, help="wall-clock deadline in ms"
    )
    call.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        help="directory for the key-value store and compiled-module cache "
        "(default: $PLUGBOX_HOME, else $XDG_STATE_HOME/plugbox)",
    )
    call.add_argument(
        "--allow-http", metavar="PATTERN", action="append", default=[], help=allow_http_help
    )
    call.set_defaults(func=_cmd_call)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``plugbox`` command line with ``argv`` (default ``sys.argv[1:]``); returns the
    exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help/--version (0) and on bad arguments (2); report, not exit,
        # so that main() can be called in-process.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    code: int = args.func(args)
    return code
