"""The ``plugbox`` command line.

Subcommands: ``inspect`` and ``call`` (look at and run a plugin); ``keygen``, ``sign``,
``verify`` (the trust chain, see docs/trust.md); ``pack`` and ``unpack`` (``.plugbox``
packages, see docs/packages.md). Each subcommand is one ``_add_<name>`` function that declares
its arguments and points at its ``_cmd_<name>``; :data:`_COMMANDS` lists them, so adding a
subcommand is adding one function to that tuple.

Exit codes: 0 success; 1 the plugin was refused or failed (any :class:`~plugbox.PlugboxError`
other than a usage or manifest error; for ``verify``: invalid, tampered, untrusted or revoked);
2 invalid input or usage (bad arguments, a missing path or key, a manifest that is not valid
JSON or fails the schema, except under ``verify`` where an invalid manifest is a refusal).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..engine import _abispec
from ._authoring import add_build, add_new
from ._common import clean as _clean, positive_int as _positive_int
from ._discover import add_discover
from ._doctor import add_doctor
from ._dev import add_dev
from ._plugins import add_plugins
from ._registry import add_registry
from ._registry_client import add_registry_client
from .._errors import (
    CapabilityError,
    GuestError,
    GuestTrap,
    HashMismatchError,
    IncompatibleAbiError,
    IncompatibleHostError,
    KeyFileError,
    ManifestError,
    ModuleInterfaceError,
    PackageError,
    PlugboxError,
    PolicyViolationError,
    SignatureError,
    UsageError,
    VerificationError,
)
from .._manifest import (
    MANIFEST_FILENAME,
    Manifest,
    check_compatibility,
    check_module_hash,
    load_manifest,
    read_manifest,
    read_module,
    validate_manifest,
    verify_module,
)
from ..trust._package import extract_package, is_package, read_package, write_package
from .._permissions import Limits
from .._plugin import CallRecord
from .._policy import DEFAULT_MAX_LIMITS, Policy, check_runnable_limits
from .._pybundle import is_bundle_manifest, read_bundle, recipe_id
from ..trust._signing import SecretKey, sign_bytes, write_keypair
from ..trust._trust import (
    PRIMARY_SIGNATURE,
    SIGNATURES_DIR,
    SignatureCheck,
    TrustMode,
    TrustPolicy,
    TrustReport,
    inspect_signatures,
    read_signature_file,
)
from ..engine._wasmparse import (
    CapabilityReport,
    ModuleInfo,
    capability_report,
    check_capabilities,
    check_module_interface,
    imported_services,
    inspect_module,
)

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2

# Marks a bare ``--json`` (output format only) as opposed to ``--json PAYLOAD``.
_BARE_JSON: Final = object()


def _version() -> str:
    from .._version import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# Output helpers


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
    if isinstance(exc, GuestTrap) and exc.panic_message is not None:
        doc["panic"] = {"message": exc.panic_message, "location": exc.panic_location}
    if isinstance(exc, GuestError):
        doc["kind"] = exc.kind
        doc["detail"] = exc.detail
    # Trust-chain errors carry what they are about (key id, archive member, import).
    for attr in ("key_id", "key_ids", "entry", "import_name", "path"):
        value = getattr(exc, attr, None)
        if value is not None:
            doc[attr] = list(value) if isinstance(value, tuple) else value
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


def _signatures_report(manifest: Manifest, trust: TrustPolicy | None) -> dict[str, Any]:
    """Who signed the plugin. Without a trust policy the signatures are only parsed, and their
    trusted comments are unverified; with one they are verified and judged."""
    if trust is None:
        checks = inspect_signatures(manifest.directory)
        malformed = [c for c in checks if c.status == "malformed"]
        return {
            "verified": False,
            "ok": None,
            "detail": (
                f"{len(checks)} signature(s) found, not verified (give --trusted-keys to verify)"
                if checks else "unsigned: no plugbox.json.minisig or signatures/*.minisig"
            ) + (f"; {len(malformed)} malformed" if malformed else ""),
            "error": None,
            "signatures": [c.to_json() for c in checks],
            "signers": [],
        }
    report = trust.evaluate(manifest.directory, manifest.data, plugin=manifest.name)
    return {
        "verified": True,
        "ok": report.ok,
        "detail": _trust_detail(report),
        "error": None if report.error is None else _error_json(report.error),
        "signatures": [c.to_json() for c in report.checks],
        "signers": [s.to_json() for s in report.signers],
    }


def _trust_detail(report: TrustReport) -> str:
    names = ", ".join(f"{s.key_name} ({s.key_id})" for s in report.signers) or "no trusted key"
    return (f"signed by {names}; {len(report.signers)} of {report.threshold} required "
            f"trusted signature(s)")


def _capabilities_report(info: ModuleInfo | None, manifest: Manifest) -> dict[str, Any]:
    """The capability check as ``Runtime.load`` makes it (:func:`check_capabilities`, whose
    CapabilityError refuses the plugin), with the report's details."""
    if info is None:
        return {"ok": None, "detail": "not checked (the module could not be read)",
                "error": None, "imported": [], "requested": sorted(manifest.permissions.services()),
                "unrequested": [], "unused": []}
    doc = _capabilities_json(capability_report(info, manifest))
    try:
        check_capabilities(info, manifest)
        doc["error"] = None
    except CapabilityError as exc:
        doc["ok"] = False
        doc["error"] = _error_json(exc)
    return doc


_VALIDATOR: list[Any] = []  # one wasmtime engine for validation, made on first use


def _runnable_check(manifest: Manifest, wasm: bytes, info: ModuleInfo | None,
                    limits: Limits, policy: Policy) -> dict[str, Any]:
    """:func:`plugbox._runtime.check_runnable` (what ``Runtime.load`` checks before compiling:
    limits, compile budget, module shape, validation) as a report entry."""
    import wasmtime

    from .._runtime import check_runnable

    if info is None:
        return _check(None, "not checked (the module could not be read)")
    if not _VALIDATOR:
        _VALIDATOR.append(wasmtime.Engine())
    try:
        check_runnable(manifest, wasm, info, limits, policy, _VALIDATOR[0])
    except (ModuleInterfaceError, PolicyViolationError) as exc:
        return _check(False, "Runtime.load would refuse to compile or start it", exc)
    return _check(True, "validates; fits its limits and the compile budget")


def _passes(checks: Mapping[str, Mapping[str, Any]]) -> bool:
    """The one verdict both ``inspect`` and ``verify`` report: no check failed (``None`` is a
    check that was skipped, or does not apply). ``Runtime.load`` refuses exactly the plugins
    for which a check it makes fails, so this agrees with it."""
    return all(check["ok"] is not False for check in checks.values())


def _capabilities_json(caps: CapabilityReport) -> dict[str, Any]:
    if caps.unrequested:
        services = sorted({service for _, service in caps.unrequested})
        detail = (f"imports {', '.join(services)} without requesting the permission: "
                  f"Runtime.load refuses it (CapabilityError)")
    else:
        detail = "every import is covered by a requested permission"
    if caps.unused:
        detail += f"; requested but never imported: {', '.join(sorted(caps.unused))}"
    return {
        "ok": caps.ok,
        "detail": detail,
        "imported": sorted(caps.imported),
        "requested": sorted(caps.requested),
        "unrequested": [{"import": name, "permission": service}
                        for name, service in caps.unrequested],
        "unused": sorted(caps.unused),
    }


def _inspect_report(manifest: Manifest, policy: Policy,
                    trust: TrustPolicy | None = None) -> dict[str, Any]:
    """Every pre-compilation check on the plugin, as a JSON-ready dict. Raises ManifestError
    for problems that make the input itself invalid (missing module, bad host specifier).

    Signatures count towards ``ok`` only when ``trust`` is given; the capability check counts
    as ``Runtime.load`` makes it (an unrequested import refuses the plugin), and ``ok`` is
    decided by :func:`_passes`, as for ``verify``."""
    checks: dict[str, dict[str, Any]] = {}
    signatures = _signatures_report(manifest, trust)
    # Read once, inside the plugin directory and capped; a mismatch is still inspected: knowing
    # what the module is helps decide whether to re-pin it.
    data = read_module(manifest)
    actual_sha256 = hashlib.sha256(data).hexdigest()
    try:
        check_module_hash(manifest, actual_sha256)
        checks["sha256"] = _check(True, f"matches {manifest.module_sha256}")
    except HashMismatchError as exc:
        checks["sha256"] = _check(False, "the module does not match the pinned sha256", exc)

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
    bundle = is_bundle_manifest(manifest.raw)
    if bundle:
        _bundle_checks(manifest, data, checks)
    else:
        try:
            info = inspect_module(data)
            checks["module"] = _check(True, f"well-formed {info.kind} module")
        except ModuleInterfaceError as exc:
            checks["module"] = _check(False, "not a well-formed WebAssembly binary", exc)

    if bundle:
        pass  # interface: _bundle_checks
    elif info is None:
        checks["interface"] = _check(None, "not checked (the module could not be read)")
    else:
        try:
            check_module_interface(info, manifest)
            checks["interface"] = _check(
                True, f"imports and exports match the plugbox ABI {_abispec.ABI_VERSION}"
            )
        except (ModuleInterfaceError, IncompatibleAbiError) as exc:
            checks["interface"] = _check(False, "the module does not fit the plugbox ABI", exc)

    component = info is not None and info.kind == "component"
    try:
        _, effective = policy.resolve(manifest, component=component)
        policy_check = _check(True, "within the host policy's caps")
    except PolicyViolationError as exc:
        effective = manifest.limits.fill(policy.effective_defaults(component=component))
        policy_check = _check(False, "refused by the host policy", exc)
    policy_check["http_hosts"] = list(policy.http_hosts)
    if bundle:
        try:
            check_runnable_limits(manifest, effective)
            checks["runnable"] = _check(True, "fits its limits (the shared Python runtime runs it)")
        except PolicyViolationError as exc:
            checks["runnable"] = _check(False, "Runtime.load would refuse to start it", exc)
    else:
        checks["runnable"] = _runnable_check(manifest, data, info, effective, policy)

    services = sorted(imported_services(info)) if info is not None else []
    requested = manifest.permissions.services()
    capabilities = _capabilities_report(info, manifest)
    if bundle:
        capabilities["ok"] = None
        capabilities["detail"] = (
            "not a static check for bundles: the shared Python runtime imports every service, "
            "and the host checks this plugin's permissions on every call (`plugbox build` "
            "checks the bundle's plugbox_sdk imports against them)")
    return {
        "ok": _passes({**checks, "signatures": signatures, "capabilities": capabilities}),
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
            "kind": "python-bundle" if bundle else None if info is None else info.kind,
            "size": len(data),
            "sha256": manifest.module_sha256,
            "actual_sha256": actual_sha256,
            "custom_sections": [] if info is None else sorted(info.custom_sections),
        },
        "checks": checks,
        # The policy is the host's choice, not a property of the plugin, so it is reported
        # (as it stands for this command line) but does not decide "ok" or the exit code.
        "policy": policy_check,
        "signatures": signatures,
        "capabilities": capabilities,
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


def _bundle_checks(manifest: Manifest, data: bytes, checks: dict[str, dict[str, Any]]) -> None:
    """The ``module`` and ``interface`` checks of a Python bundle, as ``Runtime.load`` makes
    them before anything is instantiated: the bundle reads within its bounds, and it was built
    for this plugbox's Python runtime (its recipe)."""
    try:
        read = read_bundle(data, manifest.name)
    except ModuleInterfaceError as exc:
        checks["module"] = _check(False, "not a well-formed Python bundle", exc)
        checks["interface"] = _check(None, "not checked (the bundle could not be read)")
        return
    deps = read.lock.get("dependencies", [])
    checks["module"] = _check(True, f"well-formed Python bundle: {len(read.files)} files, "
                                    f"entry {read.entry!r}, {len(deps) if isinstance(deps, list) else 0} "
                                    "locked dependencies")
    ours = recipe_id()
    if read.recipe == ours:
        checks["interface"] = _check(True, f"built for this plugbox's Python runtime {ours}")
    else:
        checks["interface"] = _check(
            False, f"built for the Python runtime {read.recipe or '(none recorded)'}, this "
                   f"plugbox runs {ours}; rebuild it with `plugbox build {manifest.directory}`")


_CHECK_LABELS: Final = {
    "sha256": "sha256",
    "abi": "ABI",
    "host": "host",
    "module": "module",
    "interface": "interface",
    "runnable": "runnable",
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
    _print_signatures(console, report["signatures"])

    perms = Table(title="Permissions", title_justify="left")
    perms.add_column("service")
    perms.add_column("requested")
    perms.add_column("imported")
    perms.add_column("details")
    imported = set(report["imported_services"])
    for service in _abispec.SERVICES:
        if service == "host":  # ABI 1.1: requested as permissions.functions / .dispatch
            host = {k: report["permissions"][k] for k in ("functions", "dispatch")
                    if report["permissions"][k]}
            value: Any = host or None
        else:
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
                + " without requesting the permission; Runtime.load refuses it "
                "(CapabilityError) unless allow_unrequested_imports=True, and then those calls "
                "are denied",
                style="yellow",
            )
        )
    if report["capabilities"]["unused"]:
        console.print(
            Text(
                "  note: requested but never imported: "
                + ", ".join(report["capabilities"]["unused"])
                + " (remove them from permissions: least privilege)",
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
        if report["signatures"]["ok"] is False:
            failed.append("signature")
        if report["capabilities"]["ok"] is False:
            failed.append("capabilities")
        console.print(
            Text(f"REFUSED: the plugin fails the {', '.join(failed)} check(s)", style="bold red")
        )


_SIGNATURE_STYLES: Final = {
    "valid": "bold green",
    "duplicate": "green",
    "unverified": "yellow",
    "unknown-key": "yellow",
    "revoked": "bold red",
    "invalid": "bold red",
    "malformed": "bold red",
}


def _print_signatures(console: Console, signatures: dict[str, Any]) -> None:
    """The Signatures table: who signed, with which key id, and the trusted comment."""
    if not signatures["signatures"]:
        console.print(Text("Signatures: none (the plugin is unsigned)", style="yellow"))
        console.print()
        return
    table = Table(title="Signatures", title_justify="left")
    table.add_column("status", no_wrap=True)
    table.add_column("key id", no_wrap=True)
    table.add_column("key")
    table.add_column("alg", no_wrap=True)
    table.add_column("trusted comment")
    table.add_column("file")
    for sig in signatures["signatures"]:
        comment = sig["trusted_comment"]
        if comment is not None and sig["status"] == "unverified":
            comment += " (unverified)"
        table.add_row(
            Text(sig["status"], style=_SIGNATURE_STYLES.get(sig["status"], "")),
            sig["key_id"] or "-",
            Text(_clean(sig["key_name"] or "-")),
            sig["algorithm"] or "-",
            Text(_clean(comment if comment is not None else sig["detail"])),
            Text(_clean(sig["file"])),
        )
    console.print(table)
    detail = signatures["error"]["message"] if signatures["error"] else signatures["detail"]
    style = {True: "green", False: "bold red", None: "dim"}[signatures["ok"]]
    console.print(Text("  " + _clean(detail), style=style))
    console.print()


def _cmd_inspect(args: argparse.Namespace) -> int:
    as_json: bool = args.json
    try:
        policy = Policy(http_hosts=tuple(args.allow_http))
        trust = _trust_policy(args, default=None)
        with _staged(args.path) as path:
            manifest = load_manifest(path)
            report = _inspect_report(manifest, policy, trust)
        report["package"] = str(Path(args.path).resolve()) if is_package(args.path) else None
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE)
    except PackageError as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_REFUSED)
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
    problem: str | None = None
    if not result:
        problem = None  # an empty result: no value (null), as call_json reads it
    elif text is None:
        problem = "the result is not UTF-8 text, so not JSON; its bytes are in result_base64"
    else:
        try:
            decoded = json.loads(text)
        except ValueError as exc:
            problem = f"the result is not JSON ({exc}); its text is in result_text"
    out: dict[str, Any] = {
        "plugin": plugin,
        "hook": hook,
        "ok": True,
        "result": decoded,
        "result_is_json": problem is None,
        "result_text": text,
        "result_base64": base64.b64encode(result).decode("ascii"),
    }
    if problem is not None:
        out["note"] = problem
    return out


#: ``--log-level`` names -> logging levels (trace is plugbox's level 5).
_LOG_LEVELS: Final = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO,
                      "warning": logging.WARNING, "error": logging.ERROR}


class _PluginLogs(logging.Handler):
    """Collects the records of one plugin's logger during ``plugbox call`` and, unless
    ``quiet``, prints each on stderr as ``[level] plugin: message`` as it arrives."""

    def __init__(self, plugin: str, level: int, *, quiet: bool) -> None:
        super().__init__(level)
        self.records: list[dict[str, Any]] = []
        self.quiet = quiet
        self._logger = logging.getLogger(f"plugbox.plugin.{plugin}")
        self._saved = (self._logger.level, self._logger.propagate)

    def __enter__(self) -> _PluginLogs:
        self._logger.setLevel(self.level)
        self._logger.propagate = False
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]

    def emit(self, record: logging.LogRecord) -> None:
        level = logging.getLevelName(record.levelno).lower()
        message = record.getMessage()
        self.records.append({"level": level, "message": message,
                             "lines": list(getattr(record, "lines", (message,))),
                             "hook": getattr(record, "hook", None)})
        if not self.quiet:
            shown = _clean(message, keep_newlines=True) if sys.stderr.isatty() else message
            sys.stderr.write(f"[{level}] {record.name.removeprefix('plugbox.plugin.')}: "
                             f"{shown}\n")


def _stats_json(record: CallRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"seconds": round(record.seconds, 6), "fuel_used": record.fuel_used,
            "memory_bytes": record.memory_bytes}


def _stale_build(manifest: Manifest) -> UsageError | None:
    """The error for a plugin whose last ``plugbox build`` failed (its old module is stale)."""
    from ..authoring._pybuild import stale_build_error

    return stale_build_error(manifest.module_path, manifest.name)


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
        trust = _trust_policy(args, default=None)
        # Read the manifest first: bad input fails fast, and errors can name the plugin.
        with _staged(args.path) as path:
            manifest = load_manifest(path)
            stale = _stale_build(manifest)
        if stale is not None:
            raise stale
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE, hook=hook)
    except PackageError as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_REFUSED, hook=hook)

    from .._runtime import Runtime

    plugin_name = manifest.name
    calls: list[CallRecord] = []
    logs = _PluginLogs(plugin_name, _LOG_LEVELS[args.log_level], quiet=as_json)
    try:
        with logs, Runtime(state_dir=args.state_dir, policy=policy, trust=trust) as runtime:
            runtime.add_call_monitoring(lambda record: None, calls.append)
            plugin = runtime.load(args.path, config=config,
                                  allow_unrequested_imports=args.allow_unrequested_imports)
            result = plugin.call(hook, payload, fuel=args.fuel, deadline_ms=args.deadline_ms)
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE, plugin=plugin_name, hook=hook,
                             logs=logs.records, stats=_stats_json(calls[-1] if calls else None))
    except PlugboxError as exc:
        return _report_error(
            exc, as_json=as_json, code=EXIT_REFUSED, plugin=plugin_name, hook=hook,
            logs=logs.records, stats=_stats_json(calls[-1] if calls else None),
        )
    except OSError as exc:  # e.g. a state directory that cannot be created
        return _usage_error(f"cannot set up the runtime: {exc}", as_json=as_json)

    if as_json:
        _print_json({**_result_json(plugin_name, hook, result), "logs": logs.records,
                     "stats": _stats_json(calls[-1] if calls else None)})
    else:
        _print_result(result)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Trust options shared by inspect, call and verify


@contextlib.contextmanager
def _staged(path: str) -> Iterator[Path]:
    """``path`` as a plugin directory or manifest: a ``.plugbox`` package is checked and
    unpacked into a private temporary directory for the duration."""
    from ..trust._package import staged_plugin

    with staged_plugin(path) as staged:
        yield staged


def _trust_policy(args: argparse.Namespace, *, default: TrustMode | None) -> TrustPolicy | None:
    """The trust policy the options describe; ``None`` when they describe none (no keys, no
    --trust-mode) and ``default`` is ``None``. With keys the mode defaults to ``require``."""
    keys: list[str] = list(getattr(args, "trusted_keys", None) or [])
    mode: TrustMode | None = getattr(args, "trust_mode", None)
    if not keys and mode is None and default is None:
        return None
    chosen: TrustMode = mode or ("require" if keys else default or "require")
    return TrustPolicy(
        keys,
        mode=chosen,
        threshold=getattr(args, "threshold", 1),
        revoked=frozenset(getattr(args, "revoked", None) or ()),
    )


def _add_trust_options(parser: argparse.ArgumentParser, *, required: bool,
                       with_mode: bool = False) -> None:
    parser.add_argument(
        "--trusted-keys", metavar="DIR", action="append", required=required, default=[],
        help="directory of trusted minisign public keys (*.pub), or one key file; repeatable",
    )
    parser.add_argument(
        "--threshold", metavar="N", type=_positive_int, default=1,
        help="distinct trusted keys that must have signed (default 1)",
    )
    parser.add_argument(
        "--revoked", metavar="KEYID", nargs="+", action="extend", default=[],
        help="key ids (16 hex digits, as minisign prints them) whose signatures never count",
    )
    if with_mode:
        parser.add_argument(
            "--trust-mode", choices=("require", "warn", "off"), default=None,
            help="require (default with --trusted-keys), warn, or off (development only); "
            "without --trusted-keys and --trust-mode, signatures are not checked",
        )


# --------------------------------------------------------------------------------------------
# plugbox verify


def _verify_check(ok: bool | None, detail: str, error: PlugboxError | None = None,
                  **extra: Any) -> dict[str, Any]:
    return {**_check(ok, detail, error), **extra}


def _verify_report(path: Path, trust: TrustPolicy, package: bool) -> dict[str, Any]:
    """Every check ``plugbox verify`` makes, in the order ``Runtime.load`` makes them; nothing
    is compiled. Raises UsageError for input that cannot be read at all."""
    checks: dict[str, dict[str, Any]] = {}
    doc: dict[str, Any] = {"ok": False, "path": str(path), "package": package, "plugin": None,
                           "checks": checks}

    def skip(*names: str) -> None:
        for name in names:
            checks.setdefault(name, _verify_check(None, "not checked (an earlier check failed)"))

    def finish() -> dict[str, Any]:
        skip("schema", "signatures", "compat", "hash", "interface", "capabilities", "runnable",
             "policy")
        doc["ok"] = _passes(checks)
        return doc

    # Read once with the cheap checks, then signatures, then the schema: as Runtime.load does.
    try:
        source = read_manifest(path)
    except ManifestError as exc:
        checks["schema"] = _verify_check(False, "plugbox.json is invalid", exc)
        return finish()
    report = trust.evaluate(source.directory, source.data, plugin=source.name)
    tampered = isinstance(report.error, SignatureError)
    checks["signatures"] = _verify_check(
        not tampered,
        "every signature by a trusted key verifies" if not tampered
        else "a signature does not verify or cannot be read (tampering)",
        report.error if tampered else None,
        signatures=[c.to_json() for c in report.checks],
    )
    checks["policy"] = _verify_check(
        report.ok, _trust_detail(report), report.error,
        mode=trust.mode, threshold=trust.threshold, revoked=sorted(trust.revoked),
        trusted_keys=[{"key_id": k.key_id_hex, "name": k.name,
                       "file": None if k.path is None else str(k.path)} for k in trust.keys],
        signers=[s.to_json() for s in report.signers],
    )
    try:
        manifest = validate_manifest(source)
    except ManifestError as exc:
        checks["schema"] = _verify_check(False, "plugbox.json is invalid", exc)
        return finish()
    doc["plugin"] = {"name": manifest.name, "version": manifest.version,
                     "manifest": str(manifest.path), "module_sha256": manifest.module_sha256}
    checks["schema"] = _verify_check(True, "plugbox.json matches the manifest schema")

    try:
        check_compatibility(manifest, runtime_version=_version(),
                            abi_version=_abispec.ABI_VERSION)
        checks["compat"] = _verify_check(
            True, f"ABI {manifest.abi} and host {manifest.host or 'any'} fit plugbox "
            f"{_version()} (ABI {_abispec.ABI_VERSION})")
    except (IncompatibleAbiError, IncompatibleHostError, ManifestError) as exc:
        checks["compat"] = _verify_check(False, "this runtime cannot run the plugin", exc)

    try:
        wasm = verify_module(manifest)
        checks["hash"] = _verify_check(True, f"the module matches sha256 {manifest.module_sha256}")
    except (HashMismatchError, ManifestError) as exc:
        checks["hash"] = _verify_check(False, "the module does not match the manifest", exc)
        return finish()

    try:
        info = inspect_module(wasm)
        check_module_interface(info, manifest)
        what = "core module" if info.kind == "core" else "component"
        checks["interface"] = _verify_check(
            True, f"a {what} fitting the plugbox ABI {_abispec.ABI_VERSION}")
    except (ModuleInterfaceError, IncompatibleAbiError) as exc:
        checks["interface"] = _verify_check(False, "the module does not fit the plugbox ABI", exc)
        return finish()

    caps = _capabilities_report(info, manifest)
    checks["capabilities"] = _verify_check(
        caps["ok"], caps["detail"], None,
        **{k: caps[k] for k in ("imported", "requested", "unrequested", "unused")})
    checks["capabilities"]["error"] = caps["error"]
    # The default policy's budget: a host may raise it, which this command cannot know.
    policy = Policy()
    defaults = policy.effective_defaults(component=info.kind == "component")
    checks["runnable"] = _runnable_check(manifest, wasm, info, manifest.limits.fill(defaults),
                                         policy)
    return finish()


_VERIFY_LABELS: Final = {
    "package": "package",
    "schema": "schema",
    "signatures": "signatures",
    "compat": "compat",
    "hash": "hash",
    "interface": "interface",
    "capabilities": "capabilities",
    "runnable": "runnable",
    "policy": "trust policy",
}


def _print_verify(doc: dict[str, Any]) -> None:
    console = Console(file=sys.stdout, highlight=False)
    plugin = doc["plugin"]
    title = Text(_clean(plugin["name"] + " " + plugin["version"]) if plugin else
                 _clean(doc["path"]), style="bold")
    console.print(title)
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column()
    for key, label in _VERIFY_LABELS.items():
        check = doc["checks"].get(key)
        if check is None:
            continue
        detail = check["error"]["message"] if check["error"] else check["detail"]
        table.add_row(_status(check["ok"]), label, Text(_clean(detail)))
    console.print(table)
    sigs = doc["checks"].get("signatures", {}).get("signatures")
    if sigs:
        console.print()
        _print_signatures(console, {**doc["checks"]["signatures"], "signatures": sigs,
                                    "ok": doc["checks"]["policy"]["ok"],
                                    "detail": doc["checks"]["policy"]["detail"],
                                    "error": doc["checks"]["policy"]["error"]})
    for name in doc["checks"].get("capabilities", {}).get("unused", []):
        console.print(Text(f"  warning: the {name!r} permission is requested but never "
                           f"imported", style="yellow"))
    if doc["ok"]:
        signers = doc["checks"]["policy"]["signers"]
        who = ", ".join(f"{_clean(s['key_name'])} ({s['key_id']})" for s in signers)
        console.print(Text(f"VERIFIED: signed by {who}", style="bold green"))
    else:
        failed = [_VERIFY_LABELS[k] for k, c in doc["checks"].items() if c["ok"] is False]
        console.print(Text(f"REFUSED: fails the {', '.join(failed)} check(s)",
                           style="bold red"))


def _cmd_verify(args: argparse.Namespace) -> int:
    as_json: bool = args.json
    given = Path(args.path)
    if not given.exists():
        return _usage_error(f"{given}: no such file or directory; expected a plugin directory, "
                            f"its {MANIFEST_FILENAME} or a .plugbox package", as_json=as_json)
    if given.is_dir() and not (given / MANIFEST_FILENAME).is_file():
        return _usage_error(f"{given}: no {MANIFEST_FILENAME} in this directory",
                            as_json=as_json)
    try:
        trust = _trust_policy(args, default="require")
        assert trust is not None
    except UsageError as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE)
    package = is_package(given)
    try:
        with contextlib.ExitStack() as stack:
            path = given
            doc: dict[str, Any]
            package_check: dict[str, Any] | None = None
            if package:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="plugbox-verify-")))
                try:
                    path = extract_package(given, tmp / "plugin")
                    package_check = _verify_check(True, "a well-formed .plugbox package")
                except PackageError as exc:
                    package_check = _verify_check(False, "unsafe or malformed package", exc)
            if package_check is not None and not package_check["ok"]:
                doc = {"ok": False, "path": str(given), "package": True, "plugin": None,
                       "checks": {"package": package_check}}
            else:
                doc = _verify_report(path, trust, package)
                if package_check is not None:
                    doc["checks"] = {"package": package_check, **doc["checks"]}
                    if doc["plugin"] is not None:  # not the temporary unpacked copy
                        doc["plugin"]["manifest"] = f"{given}#{MANIFEST_FILENAME}"
                doc["path"] = str(given)
    except (UsageError, ManifestError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE)
    if as_json:
        _print_json(doc)
    else:
        _print_verify(doc)
    return EXIT_OK if doc["ok"] else EXIT_REFUSED


# --------------------------------------------------------------------------------------------
# plugbox keygen / sign


def _cmd_keygen(args: argparse.Namespace) -> int:
    try:
        key_path, pub_path, key = write_keypair(args.output_dir, comment=args.comment,
                                                force=args.force)
    except UsageError as exc:
        return _report_error(exc, as_json=False, code=EXIT_USAGE)
    sys.stdout.write(
        f"key id      {key.key_id_hex}\n"
        f"secret key  {key_path} (unencrypted, mode 0600: keep it secret, e.g. in a CI secret)\n"
        f"public key  {pub_path} (copy it into the trusted-keys directory of the hosts)\n"
    )
    return EXIT_OK


def _read_secret_key(source: str) -> SecretKey:
    if source == "-":
        return SecretKey.parse(sys.stdin.buffer.read(8192))
    return SecretKey.from_file(source)


def _signature_destination(directory: Path, key_id: str, signer_file: bool) -> Path:
    """Where a new signature goes: ``plugbox.json.minisig`` for the first signer (or the same
    key re-signing), ``signatures/<keyid>.minisig`` for further signers."""
    primary = directory / PRIMARY_SIGNATURE
    extra = directory / SIGNATURES_DIR / f"{key_id}.minisig"
    if signer_file:
        return extra
    if not primary.exists():
        return primary
    try:
        if read_signature_file(primary, directory).key_id_hex == key_id:
            return primary
    except SignatureError:
        pass  # an unreadable first signature is left for the user to look at
    return extra


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cmd_sign(args: argparse.Namespace) -> int:
    given = Path(args.path)
    if is_package(given):
        return _usage_error(f"{given} is a package; sign the plugin directory, then pack it",
                            as_json=False)
    try:
        key = _read_secret_key(args.key)
        manifest = load_manifest(given)
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=False, code=EXIT_USAGE)
    try:
        # A signature vouches for the module through its pinned sha256: never sign a manifest
        # that does not match the module next to it.
        verify_module(manifest)
    except HashMismatchError as exc:
        return _report_error(exc, as_json=False, code=EXIT_REFUSED)
    except ManifestError as exc:
        return _report_error(exc, as_json=False, code=EXIT_USAGE)
    try:
        data = manifest.data
        comment = args.trusted_comment
        if comment is None:
            comment = (f"timestamp:{int(time.time())}\tfile:{MANIFEST_FILENAME}\t"
                       f"plugin:{manifest.name} {manifest.version}")
        signature = sign_bytes(data, key, trusted_comment=comment)
        dest = _signature_destination(manifest.directory, key.key_id_hex, args.signer_file)
        _write_atomically(dest, signature.to_text())
    except (UsageError, ManifestError) as exc:
        return _report_error(exc, as_json=False, code=EXIT_USAGE)
    except OSError as exc:
        return _usage_error(f"cannot write the signature: {exc.strerror or exc}", as_json=False)
    sys.stdout.write(
        f"signed {manifest.name} {manifest.version} ({MANIFEST_FILENAME}, module sha256 "
        f"{manifest.module_sha256}) with key {key.key_id_hex}\n"
        f"signature  {dest}\n"
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# plugbox pack / unpack


def _cmd_pack(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    try:
        manifest = load_manifest(directory)
        if manifest.directory != directory.resolve():
            raise UsageError(f"{directory}: pack takes the plugin directory")
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=False, code=EXIT_USAGE)
    try:
        verify_module(manifest)
        members = write_package(directory, args.output, force=args.force)
    except (ManifestError, UsageError) as exc:
        return _report_error(exc, as_json=False, code=EXIT_USAGE)
    except PlugboxError as exc:
        return _report_error(exc, as_json=False, code=EXIT_REFUSED)
    sys.stdout.write(f"packed {manifest.name} {manifest.version} into {args.output}\n")
    for name in members:
        sys.stdout.write(f"  {name}\n")
    if not any(n == PRIMARY_SIGNATURE or n.startswith(SIGNATURES_DIR + "/") for n in members):
        sys.stderr.write("plugbox: note: the package is unsigned; hosts that require "
                         "signatures will refuse it (plugbox sign DIR --key KEY, then pack)\n")
    return EXIT_OK


def _cmd_unpack(args: argparse.Namespace) -> int:
    try:
        target = extract_package(args.package, args.output)
    except UsageError as exc:
        return _report_error(exc, as_json=False, code=EXIT_USAGE)
    except PackageError as exc:
        return _report_error(exc, as_json=False, code=EXIT_REFUSED)
    for name in sorted(read_package(args.package)):
        sys.stdout.write(f"{target / name}\n")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Argument parsing: one _add_<command> function per subcommand


_ALLOW_HTTP_HELP: Final = (
    "allow plugins to request HTTP to hosts matching PATTERN (host or host:port, "
    "fnmatch wildcards); repeatable"
)
_PATH_HELP: Final = "plugin directory, its plugbox.json, or a .plugbox package"

def _add_inspect(sub: Any) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="show what a plugin is and asks for, and whether it passes the checks",
        description=(
            "Show a plugin's manifest, sha256 check, ABI and host compatibility, signatures, "
            "imports, exports, permissions and limits, and check its module against the plugbox "
            "ABI. The module is parsed, never compiled or run. Signatures are verified when "
            "--trusted-keys is given (and then count towards the result); otherwise they are "
            "listed unverified. Exit 0 when every check passes, 1 when the plugin would be "
            "refused, 2 when the input is invalid."
        ),
    )
    inspect.add_argument("path", metavar="PATH", help=_PATH_HELP)
    inspect.add_argument("--json", action="store_true", help="print a machine-readable report")
    inspect.add_argument(
        "--allow-http", metavar="PATTERN", action="append", default=[], help=_ALLOW_HTTP_HELP
    )
    _add_trust_options(inspect, required=False)
    inspect.set_defaults(func=_cmd_inspect)


def _add_call(sub: Any) -> None:
    call = sub.add_parser(
        "call",
        help="load a plugin and call one of its hooks",
        description=(
            "Load a plugin (after every check) and call HOOK with a payload from --json, "
            "--file or --text (empty if none). Prints the result; with --json, a "
            "machine-readable JSON document. Put --json after HOOK. Signatures are checked "
            "when --trusted-keys is given (mode require unless --trust-mode says otherwise); "
            "without it this development command does not check them."
        ),
    )
    call.add_argument("path", metavar="PATH", help=_PATH_HELP)
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
        "--allow-http", metavar="PATTERN", action="append", default=[], help=_ALLOW_HTTP_HELP
    )
    call.add_argument(
        "--allow-unrequested-imports", action="store_true",
        help="diagnostics only: load a module that imports services its manifest does not "
        "request (those calls are then denied)",
    )
    call.add_argument(
        "--log-level", choices=tuple(_LOG_LEVELS), default="debug",
        help="the least level of the plugin's log records to show (default: debug); they "
        "go to stderr, and into the --json output as \"logs\"",
    )
    _add_trust_options(call, required=False, with_mode=True)
    call.set_defaults(func=_cmd_call)


def _add_verify(sub: Any) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a plugin's integrity and signatures against trusted keys",
        description=(
            "Check a plugin directory, manifest or .plugbox package as Runtime.load would, "
            "without compiling it: package safety, manifest schema, signatures by trusted keys "
            "(threshold, revocations), compatibility, module sha256, ABI interface, "
            "capabilities, and whether it can run (limits, compile budget, module shape, "
            "validation). Exit 0 when valid and trusted; 1 when invalid, tampered, untrusted "
            "or revoked; 2 when the input or the keys cannot be read."
        ),
    )
    verify.add_argument("path", metavar="PATH", help=_PATH_HELP)
    verify.add_argument("--json", action="store_true",
                        help="print each check and its outcome as JSON")
    _add_trust_options(verify, required=True)
    verify.set_defaults(func=_cmd_verify)


def _add_keygen(sub: Any) -> None:
    keygen = sub.add_parser(
        "keygen",
        help="make a signing key pair (minisign format)",
        description=(
            "Write plugbox.key (an unencrypted minisign secret key, mode 0600, usable with "
            "minisign -S -s too) and plugbox.pub (the public key for hosts' trusted keys)."
        ),
    )
    keygen.add_argument("--output-dir", metavar="DIR", default=".",
                        help="where to write the key pair (default: the current directory)")
    keygen.add_argument("--comment", metavar="C", default=None,
                        help="label for the keys' untrusted comments")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    keygen.set_defaults(func=_cmd_keygen)


def _add_sign(sub: Any) -> None:
    sign = sub.add_parser(
        "sign",
        help="sign a plugin's plugbox.json with a minisign secret key",
        description=(
            "Sign the exact bytes of the plugin's plugbox.json (which pins the module's sha256) "
            "after checking that the module matches it. The first signature goes to "
            "plugbox.json.minisig, further signers' to signatures/<keyid>.minisig."
        ),
    )
    sign.add_argument("path", metavar="PATH", help="plugin directory or its plugbox.json")
    sign.add_argument("--key", metavar="SECRET", required=True,
                      help="unencrypted minisign secret key file (- to read it from stdin)")
    sign.add_argument("--trusted-comment", metavar="T", default=None,
                      help="trusted comment (default: timestamp, file and plugin name/version)")
    sign.add_argument("--signer-file", action="store_true",
                      help="write signatures/<keyid>.minisig even if there is no first signature")
    sign.set_defaults(func=_cmd_sign)


def _add_pack(sub: Any) -> None:
    pack = sub.add_parser(
        "pack",
        help="pack a plugin directory into a .plugbox file",
        description=(
            "Write a reproducible .plugbox package (a zip archive) holding plugbox.json, the "
            "module, the signatures, README and LICENSE. The module must match the manifest."
        ),
    )
    pack.add_argument("directory", metavar="DIR", help="the plugin directory")
    pack.add_argument("-o", "--output", metavar="FILE", required=True,
                      help="the package to write (FILE.plugbox)")
    pack.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    pack.set_defaults(func=_cmd_pack)


def _add_unpack(sub: Any) -> None:
    unpack = sub.add_parser(
        "unpack",
        help="unpack a .plugbox file into a directory",
        description=(
            "Check a .plugbox package completely (unsafe names, links, duplicates, size and "
            "compression caps) and only then write it into DIR, which must be new or empty. "
            "Signatures are not checked here: use plugbox verify."
        ),
    )
    unpack.add_argument("package", metavar="FILE", help="the .plugbox package")
    unpack.add_argument("-o", "--output", metavar="DIR", required=True,
                        help="the directory to create (or an empty one)")
    unpack.set_defaults(func=_cmd_unpack)


#: The subcommands, in the order ``plugbox --help`` lists them.

_COMMANDS: Final[tuple[Callable[[Any], None], ...]] = (
    _add_inspect,
    _add_call,
    _add_verify,
    _add_sign,
    _add_keygen,
    _add_pack,
    _add_unpack,
    add_build,
    add_new,
    add_discover,
    add_dev,
    add_plugins,
    add_registry_client,
    add_doctor,
    add_registry,
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plugbox",
        description="Inspect, call, sign, verify and package plugbox WebAssembly plugins.",
        epilog="Exit status: 0 ok; 1 the plugin was refused or failed; 2 invalid input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"plugbox {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


class _StderrHandler(logging.Handler):
    """Shows plugbox's warnings (trust mode warn/off, unused permissions, denied calls) on the
    stderr of the moment, prefixed like the CLI's own messages."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _clean(record.getMessage())
            sys.stderr.write(f"plugbox: {record.levelname.lower()}: {text}\n")
        except Exception:  # logging must never take the command down
            self.handleError(record)


def _show_warnings() -> None:
    logger = logging.getLogger("plugbox")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(logging.WARNING)
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``plugbox`` command line with ``argv`` (default ``sys.argv[1:]``); returns the
    exit status."""
    _show_warnings()
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
