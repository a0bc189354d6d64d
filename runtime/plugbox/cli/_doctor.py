"""``plugbox doctor``: check the environment a host runs plugins in (issue 10 §3): Python and
wasmtime versions, the C accelerator, the toolchains that build plugins, the compiled cache
(size, and every entry's HMAC), the state databases (SQLite ``quick_check``, and the lifecycle
state against the managed store), the trusted keys and revocations, and the clock. Each check
is ``ok``, ``warn`` or ``fail`` with a fix; exit 1 when any fails.

Read-only: nothing is created, repaired or compiled (a PluginHost is opened on the state only
when its lifecycle database exists, to compare it with the managed store)."""

from __future__ import annotations

import argparse
import hmac
import importlib.metadata
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from ._common import clean
from .._errors import PlugboxError

__all__ = ["Check", "add_doctor", "run_checks"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1

#: Free space under the state dir below which doctor warns / fails.
DISK_WARN_BYTES: Final = 200 * 1024 * 1024
DISK_FAIL_BYTES: Final = 10 * 1024 * 1024
#: At most this many cache entries (and bytes) are read to check their HMACs.
CACHE_CHECK_ENTRIES: Final = 500
CACHE_CHECK_BYTES: Final = 2 * 1024 * 1024 * 1024
#: A clock before this is surely wrong (signature and update expiry checks rely on it).
CLOCK_FLOOR: Final = 1_735_689_600  # 2025-01-01T00:00:00Z


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``status`` is ``ok``, ``warn`` or ``fail``; ``fix`` says what to
    do when it is not ``ok``."""

    name: str
    status: str
    detail: str
    fix: str | None = None


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


# -- the checks -------------------------------------------------------------------------------


def check_python() -> Check:
    v = sys.version_info
    text = f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if v < (3, 11):
        return Check("python", "fail", text, "plugbox needs Python 3.11 or newer")
    return _ok("python", text)


def _required(package: str) -> Requirement | None:
    try:
        for line in importlib.metadata.requires("plugbox") or ():
            req = Requirement(line)
            if req.name == package and req.marker is None:
                return req
    except (importlib.metadata.PackageNotFoundError, InvalidRequirement):
        pass
    return None


def check_wasmtime() -> Check:
    try:
        version = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        return Check("wasmtime", "fail", "wasmtime-py is not installed",
                     "pip install plugbox (it depends on the supported wasmtime)")
    req = _required("wasmtime")
    try:
        supported = req is None or Version(version) in req.specifier
    except InvalidVersion:
        supported = False
    if not supported:
        return Check("wasmtime", "fail", f"wasmtime {version}, but plugbox supports "
                     f"wasmtime{req.specifier if req else ''}",
                     f"pip install 'wasmtime{req.specifier if req else ''}'")
    try:
        import wasmtime

        wasmtime.Engine()
    except Exception as exc:  # noqa: BLE001 - the native library may fail in any way
        return Check("wasmtime", "fail", f"wasmtime {version} cannot create an engine: {exc}",
                     "reinstall wasmtime for this platform")
    return _ok("wasmtime", f"wasmtime {version} (supported: wasmtime"
                           f"{req.specifier if req else ' any'})")


def check_accelerator() -> Check:
    from ..engine import _fastpath

    if _fastpath.ACCELERATED:
        return _ok("accelerator", "the C accelerator (plugbox.engine._speedups) is in use")
    why = ("disabled by PLUGBOX_NO_SPEEDUPS" if os.environ.get("PLUGBOX_NO_SPEEDUPS")
           else "not built")
    return Check("accelerator", "warn", f"the C accelerator is {why}: calls take the slower "
                 "pure-Python path (same behaviour)",
                 "unset PLUGBOX_NO_SPEEDUPS" if "PLUGBOX" in why else
                 "install a C compiler and the Python headers, then reinstall plugbox")


def check_rust() -> Check:
    import subprocess

    from ..authoring._build import find_rust_toolchain
    from .._errors import UsageError

    try:
        cargo, rustc = find_rust_toolchain()
    except UsageError as exc:
        return Check("rust-toolchain", "warn", f"no Rust toolchain builds wasm32 plugins: "
                     f"{exc.message}", "only needed to build Rust plugins; see the message")
    try:
        version = subprocess.run([rustc, "--version"], capture_output=True, text=True,
                                 timeout=30, stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"{rustc} ({exc})"
    return _ok("rust-toolchain", f"{version or rustc} with cargo {cargo} builds "
                                 "wasm32-unknown-unknown")


def check_componentize() -> Check:
    from ..authoring._pybuild import find_componentize_py
    from .._errors import UsageError

    try:
        program, version = find_componentize_py()
    except UsageError as exc:
        return Check("python-toolchain", "warn", f"Python plugins cannot be built: "
                     f"{exc.message}", "only needed to build Python plugins; pip install "
                     "componentize-py")
    return _ok("python-toolchain", f"componentize-py {version} ({program})")


def check_state_dir(state_dir: Path) -> Check:
    if not state_dir.exists():
        return _ok("state-dir", f"{state_dir} does not exist yet (created on first use)")
    if not state_dir.is_dir():
        return Check("state-dir", "fail", f"{state_dir} is not a directory",
                     "point --state-dir (or PLUGBOX_HOME) at a directory")
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return Check("state-dir", "fail", f"{state_dir} is not writable by this user",
                     f"fix its permissions (chown/chmod) or use another state dir")
    free = shutil.disk_usage(state_dir).free
    text = f"{state_dir}: writable, {free / 2**20:,.0f} MiB free"
    if free < DISK_FAIL_BYTES:
        return Check("state-dir", "fail", text, "free disk space: kv writes and installs fail")
    if free < DISK_WARN_BYTES:
        return Check("state-dir", "warn", text, "free disk space before installs fail")
    return _ok("state-dir", text)


def check_cache(cache_dir: Path) -> Check:
    """Size of the compiled cache and the HMAC of each entry (bounded)."""
    from ..engine import _cache

    entries = sorted(cache_dir.glob("*.cwasm")) if cache_dir.is_dir() else []
    if not entries:
        return _ok("cache", f"{cache_dir}: empty")
    size = sum(p.stat().st_size for p in entries if p.exists())
    key_file = cache_dir.with_name(cache_dir.name + ".key")
    try:
        key = _cache._load_or_create_key(key_file) if key_file.exists() else None
    except PlugboxError as exc:
        return Check("cache", "fail", f"{cache_dir}: {len(entries)} entries, "
                     f"{size / 2**20:,.1f} MiB; its key is unusable: {exc.message}",
                     f"remove {cache_dir} and {key_file}; plugins are recompiled on next load")
    bad: list[str] = []
    checked = read = 0
    for path in entries:
        if checked >= CACHE_CHECK_ENTRIES or read >= CACHE_CHECK_BYTES:
            break
        checked += 1
        sidecar = path.with_name(path.name + ".hmac")
        try:
            expected = sidecar.read_bytes()[:128].decode("ascii").strip()
            data = path.read_bytes()
        except (OSError, UnicodeDecodeError):
            bad.append(path.name)
            continue
        read += len(data)
        if key is None:
            bad.append(path.name)
            continue
        if not hmac.compare_digest(_cache.entry_mac(key, path.name, data), expected):
            bad.append(path.name)
    text = (f"{cache_dir}: {len(entries)} entries, {size / 2**20:,.1f} MiB; {checked} "
            f"checked")
    if bad:
        return Check("cache", "warn", f"{text}, {len(bad)} corrupt or not made by this cache "
                     f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
                     "nothing to do: a bad entry is discarded and recompiled when it is next "
                     f"used; remove {cache_dir} to rebuild everything now")
    return _ok("cache", f"{text}, all valid")


def _quick_check(path: Path) -> str | None:
    """None when ``path`` passes SQLite's quick_check, else what is wrong."""
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return f"cannot open it: {exc}"
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        return f"cannot read it: {exc}"
    finally:
        db.close()
    verdict = "; ".join(str(r[0]) for r in rows[:5])
    return None if verdict == "ok" else verdict


def check_databases(state_dir: Path, state_url: str | None) -> list[Check]:
    """SQLite files under the state dir (quick_check), and the lifecycle state against the
    managed store (``PluginHost.check_integrity``)."""
    out: list[Check] = []
    for name in ("plugbox.sqlite3", "lifecycle.sqlite3"):
        path = state_dir / name
        if not path.exists():
            continue
        problem = _quick_check(path)
        out.append(_ok(f"database {name}", f"{path}: SQLite quick_check ok") if problem is None
                   else Check(f"database {name}", "fail", f"{path}: {problem}",
                              "restore it from a backup; `sqlite3 FILE .recover` may save "
                              "what is left"))
    if state_url is None and not (state_dir / "lifecycle.sqlite3").exists():
        return out
    from ..host._host import PluginHost
    from ..services._db import redacted

    where = redacted(state_url) if state_url else str(state_dir)
    try:
        with PluginHost(state_dir=state_dir, state_url=state_url) as host:
            problems = host.check_integrity()
    except PlugboxError as exc:
        out.append(Check("lifecycle", "warn", f"{where}: the lifecycle state could not be "
                         f"opened: {exc.message}", "stop the hosts using it and run doctor "
                         "again, or check the URL"))
        return out
    if problems:
        out.append(Check("lifecycle", "fail", f"{where}: {len(problems)} problem(s): "
                         + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
                         "start a PluginHost on it (start() finishes or undoes interrupted "
                         "operations and sweeps leftovers); reinstall plugins whose files "
                         "are gone"))
    else:
        out.append(_ok("lifecycle", f"{where}: the lifecycle database and the managed store "
                                    "agree"))
    return out


def check_trust(trusted_keys: Sequence[str], revoked: Iterable[str]) -> Check:
    from ..trust._signing import normalize_key_id
    from ..trust._trust import TrustPolicy
    from .._errors import UsageError

    revoked = list(revoked)
    if not trusted_keys:
        return Check("trust", "warn", "no trusted keys given: signatures cannot be checked "
                     "here", "pass --trusted-keys DIR (the keys your host's TrustPolicy "
                     "uses) to check them")
    try:
        policy = TrustPolicy(list(trusted_keys), mode="warn", revoked=revoked)
    except PlugboxError as exc:
        return Check("trust", "fail", f"the trusted keys cannot be used: {exc.message}",
                     "fix or remove the key file named")
    except (ValueError, UsageError) as exc:  # pragma: no cover - UsageError is a PlugboxError
        return Check("trust", "fail", str(exc), "fix the key ids")
    ids = [k.key_id_hex for k in policy.keys]
    revoked_ids = {normalize_key_id(r) for r in revoked}
    dead = [k.name for k in policy.keys if k.key_id_hex in revoked_ids]
    usable = len(ids) - len(dead)
    text = (f"{len(ids)} trusted key(s) ({', '.join(k.name for k in policy.keys)}), "
            f"{len(revoked_ids)} revoked id(s)")
    if not usable:
        return Check("trust", "fail", f"{text}: every trusted key is revoked",
                     "add a key that is not revoked; nothing signed can load in require mode")
    if dead:
        return Check("trust", "warn", f"{text}; trusted but revoked: {', '.join(dead)}",
                     "remove the revoked keys from the trusted set")
    return _ok("trust", text)


def check_clock(now: Callable[[], float] = time.time) -> Check:
    t = now()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    if t < CLOCK_FLOOR:
        return Check("clock", "fail", f"the system clock says {stamp}, which is in the past",
                     "set the clock (NTP): signature and update expiry checks rely on it")
    a = time.monotonic()
    b = time.monotonic()
    if b < a:  # pragma: no cover - a broken platform
        return Check("clock", "fail", "the monotonic clock runs backwards",
                     "deadlines cannot be enforced; fix the platform's clock source")
    return _ok("clock", f"{stamp} (UTC)")


def run_checks(*, state_dir: Path, cache_dir: Path | None = None, state_url: str | None = None,
               trusted_keys: Sequence[str] = (), revoked: Iterable[str] = ()) -> list[Check]:
    """Every check, in the order ``plugbox doctor`` prints them."""
    checks = [check_python(), check_wasmtime(), check_accelerator(), check_rust(),
              check_componentize(), check_state_dir(state_dir),
              check_cache(cache_dir if cache_dir is not None else state_dir / "cache")]
    checks += check_databases(state_dir, state_url)
    checks += [check_trust(trusted_keys, revoked), check_clock()]
    return checks


# -- the command ------------------------------------------------------------------------------

_STYLE: Final = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .._runtime import default_state_dir

    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    checks = run_checks(state_dir=state_dir, cache_dir=args.cache_dir,
                        state_url=args.state_url, trusted_keys=args.trusted_keys,
                        revoked=args.revoked)
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        sys.stdout.write(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]},
                                    indent=2) + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in ("check", "status", "detail"):
            table.add_column(column, overflow="fold")
        for c in checks:
            detail = clean(c.detail) + (f"\nfix: {clean(c.fix)}" if c.fix and c.status != "ok"
                                        else "")
            table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", detail)
        Console(highlight=False, soft_wrap=False).print(table)
        bad = [c.name for c in checks if c.status == "fail"]
        sys.stdout.write(f"doctor: {'failed: ' + ', '.join(bad) if bad else 'no failures'}\n")
    return EXIT_FAILED if failed else EXIT_OK


def add_doctor(sub: Any) -> None:
    """Declare ``plugbox doctor`` on the subparsers ``sub``."""
    parser = sub.add_parser(
        "doctor",
        help="check the environment plugins run in",
        description=(
            "Check Python and wasmtime, the C accelerator, the Rust and Python toolchains "
            "that build plugins, the state dir, the compiled cache (every entry's HMAC), the "
            "state databases (SQLite quick_check; the lifecycle state against the managed "
            "store), trusted keys and revocations, and the clock. Each check is ok, warn or "
            "fail with a fix. Read-only. Exit 1 when any check fails."
        ),
    )
    parser.add_argument("--state-dir", metavar="DIR", type=Path,
                        help="the host's state dir (default: $PLUGBOX_HOME, else "
                        "$XDG_STATE_HOME/plugbox)")
    parser.add_argument("--state-url", metavar="URL",
                        help="the lifecycle database, when it is not the state dir's SQLite "
                        "file (postgresql://...)")
    parser.add_argument("--cache-dir", metavar="DIR", type=Path,
                        help="the compiled cache (default: STATE_DIR/cache)")
    parser.add_argument("--trusted-keys", metavar="DIR", action="append", default=[],
                        help="trusted minisign public keys (a directory or a file); "
                        "repeatable")
    parser.add_argument("--revoked", metavar="KEYID", nargs="+", action="extend", default=[],
                        help="revoked key ids")
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    parser.set_defaults(func=_cmd_doctor)
