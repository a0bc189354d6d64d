"""``plugbox dev PATH``: the plugin author's edit-build-reload loop.

Watches a plugin's sources with the ``watchfiles`` package (the ``plugbox[dev-tools]`` extra),
rebuilds on every change (Rust with cargo, Python with componentize-py: the same build
functions as ``plugbox build``), hot-reloads the new build into a :class:`plugbox.PluginHost`
that the command starts itself, and calls ``--hook`` or ``--point`` with ``--payload`` after
each build. Each build's outcome and the call's are printed (``--json``: one JSON document per
line and build). A build or load that fails leaves the previous build serving.

Builds are staged in a private temporary directory (one sub-directory per build), so the
plugin's own directory is never rewritten by the loop (which would trigger it again) and a
half-written module is never loaded. ``--once`` builds, loads and calls once and exits: no
watcher, so it works without ``watchfiles``.

Exit codes: 0 the (last) build and call succeeded, or the loop was stopped with Ctrl-C; 1 the
(last) build, load or call failed; 2 invalid input or usage (no such directory, no toolchain,
``watchfiles`` missing).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fnmatch
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ._common import positive_int
from .._errors import ManifestError, PlugboxError, UsageError
from .._manifest import Manifest, load_manifest

__all__ = ["DevLoop", "add_dev", "point_version"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

#: Directories and files the loop never reacts to: build outputs (cargo's ``target``, built
#: modules, the Python build's stamps) and ``Cargo.lock``, which cargo rewrites itself during
#: the first build (reacting to it would rebuild for nothing).
IGNORED_DIRS: Final = ("target",)
IGNORED_FILES: Final = ("*.wasm", "*.wasm.tmp", "*.pybuild.json", "Cargo.lock")
#: Builds whose staging directory is kept: the one serving and the newest.
_KEEP_BUILDS: Final = 2


def point_version(specifier: str) -> str:
    """A point version that satisfies the PEP 440 ``specifier`` of an ``implements`` entry,
    for the extension points ``plugbox dev`` declares on the plugin's behalf: the lowest
    version a clause names (or the micro version after it) that the whole specifier accepts
    (``">=1.2,<2"`` -> ``"1.2.0"``, ``">1.0,<2"`` -> ``"1.0.1"``), else ``"1.0.0"`` (also for an
    empty specifier)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        spec = SpecifierSet(specifier)
    except InvalidSpecifier:
        return "1.0.0"
    candidates: list[Version] = []
    for clause in spec:
        text = clause.version.rstrip(".*")
        with contextlib.suppress(InvalidVersion):
            named = Version(text)
            # The next micro version too, for exclusive bounds (">1.0" accepts "1.0.1").
            candidates += [named, Version(f"{named.major}.{named.minor}.{named.micro + 1}")]
    for version in sorted(candidates):
        if spec.contains(version, prereleases=True):
            # Points are declared at semantic versions: MAJOR.MINOR.PATCH.
            return f"{version.major}.{version.minor}.{version.micro}"
    return "1.0.0"


def _language(directory: Path) -> str:
    from ._authoring import _plugin_language

    return _plugin_language(directory)


def _build(directory: Path, language: str, out_dir: Path,
           progress: Callable[[str], None] | None) -> Path:
    """Build the plugin in ``directory`` into ``out_dir``; returns the module's path."""
    if language == "python":
        from ..authoring._pybuild import build_python_plugin

        return build_python_plugin(directory, progress=progress, out_dir=out_dir)
    from ..authoring._scaffold import build_rust_crate

    return build_rust_crate(directory, progress=progress, out_dir=out_dir)


def _decode(result: bytes) -> dict[str, Any]:
    """A hook's result bytes as JSON-ready fields (as ``plugbox call --json`` shows them)."""
    text: str | None
    try:
        text = result.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    value: Any = None
    if text is not None:
        with contextlib.suppress(ValueError):
            value = json.loads(text)
    return {"result": value, "result_text": text,
            "result_base64": base64.b64encode(result).decode("ascii")}


def _unavailable(name: str) -> Callable[[Any], Any]:
    from ..services._services import HostCallError

    def handler(_value: Any) -> Any:
        raise HostCallError("denied", f"host function {name!r} is a stand-in under plugbox "
                            "dev: the real host application provides it")

    return handler


@dataclass
class _Build:
    number: int
    directory: Path
    manifest: Manifest


@dataclass
class DevLoop:
    """One ``plugbox dev`` session: the host, the build staging area and the build that
    serves. :meth:`rebuild` builds, swaps and calls once and returns the build's report
    (the JSON document ``--json`` prints)."""

    source: Path
    hook: str | None = None
    point: str | None = None
    payload: bytes = b""
    config: dict[str, Any] | None = None
    state_dir: Path | None = None
    progress: Callable[[str], None] | None = None
    language: str = field(init=False)
    serving: _Build | None = field(init=False, default=None)
    builds: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from ..host._host import PluginHost

        if not self.source.is_dir():
            raise UsageError(f"{self.source}: no such plugin directory (plugbox dev takes the "
                             "directory holding plugbox.json and app.py or Cargo.toml)")
        self.language = _language(self.source)
        self._staging = Path(tempfile.mkdtemp(prefix="plugbox-dev-"))
        self._own_state: Path | None = None
        state = self.state_dir
        if state is None:
            # A throwaway state dir: a development session must not touch a real host's data.
            state = self._own_state = self._staging / "state"
        self.host = PluginHost(state_dir=state)
        self._kept: list[_Build] = []

    def close(self) -> None:
        """Close the host and remove the staged builds."""
        self.host.close()
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> DevLoop:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def rebuild(self, changed: Iterable[str] = ()) -> dict[str, Any]:
        """Build the plugin, hot-reload it if it built and loads, then call it once."""
        self.builds += 1
        number = self.builds
        report: dict[str, Any] = {
            "event": "build", "build": number, "ok": False, "stage": None,
            "changed": sorted(changed), "language": self.language, "seconds": None,
            "plugin": None, "version": None, "module": None, "sha256": None,
            "serving": None, "error": None, "call": None,
        }
        started = time.monotonic()
        out_dir = self._staging / f"build-{number}"
        try:
            module = _build(self.source, self.language, out_dir, self.progress)
            manifest = load_manifest(out_dir)
        except PlugboxError as exc:
            shutil.rmtree(out_dir, ignore_errors=True)
            return self._failed(report, "build", exc, started)
        report.update(module=str(module), sha256=manifest.module_sha256,
                      plugin=manifest.name, version=manifest.version)
        try:
            self._swap(_Build(number, out_dir, manifest))
        except PlugboxError as exc:
            return self._failed(report, "load", exc, started)
        report["seconds"] = round(time.monotonic() - started, 3)
        report["serving"] = number
        report["call"] = self._call()
        report["ok"] = report["call"] is None or report["call"]["ok"]
        if not report["ok"]:
            report["stage"] = "call"
        return report

    def _failed(self, report: dict[str, Any], stage: str, exc: PlugboxError,
                started: float) -> dict[str, Any]:
        from ._main import _error_json

        report.update(stage=stage, error=_error_json(exc),
                      seconds=round(time.monotonic() - started, 3),
                      serving=None if self.serving is None else self.serving.number)
        return report

    def _declare(self, manifest: Manifest) -> None:
        """Declare what the plugin needs from a host application that is not there: the
        points it implements (at a version its specifier accepts) and stand-ins for the host
        functions it asks for (they answer ``denied``)."""
        for name, impl in manifest.implements.items():
            if name not in self.host.points:
                self.host.extension_point(name, version=point_version(impl.versions))
        for pattern in manifest.permissions.functions:
            if not any(fnmatch.fnmatchcase(fn, pattern) for fn in self.host.functions):
                # A function named like the pattern satisfies the host's check for it.
                self.host.function(pattern, _unavailable(pattern))

    def _swap(self, build: _Build) -> None:
        """Replace the serving build by ``build``; if ``build`` does not load, the previous
        one is loaded again and serves (the loop is the host's only caller, so no call
        falls between the two)."""
        previous = self.serving
        self._declare(build.manifest)
        if previous is not None:
            self.host.remove(previous.manifest.name)
        try:
            self.host.add(build.directory, config=self.config)
        except PlugboxError:
            if previous is not None:
                self.host.add(previous.directory, config=self.config)
            shutil.rmtree(build.directory, ignore_errors=True)
            raise
        self.serving = build
        self._kept.append(build)
        while len(self._kept) > _KEEP_BUILDS:
            shutil.rmtree(self._kept.pop(0).directory, ignore_errors=True)

    def _call(self) -> dict[str, Any] | None:
        from ._main import _error_json

        if self.hook is None and self.point is None:
            return None
        assert self.serving is not None
        started = time.monotonic()
        doc: dict[str, Any]
        try:
            if self.hook is not None:
                doc = {"hook": self.hook, "point": None}
                hosted = self.host.get(self.serving.manifest.name)
                assert hosted is not None
                doc.update(_decode(hosted.plugin.call(self.hook, self.payload)))
                doc["ok"] = True
            else:
                assert self.point is not None
                value = json.loads(self.payload) if self.payload else None
                result = self.host.call(self.point, value).to_json()
                doc = {"hook": None, "point": self.point, "result": result,
                       "ok": not result["failures"]}
            doc["error"] = None
        except PlugboxError as exc:
            doc = {"hook": self.hook, "point": self.point, "ok": False,
                   "error": _error_json(exc)}
        doc["ms"] = round((time.monotonic() - started) * 1000, 3)
        return doc


# --------------------------------------------------------------------------------------------
# Watching


def source_filter(directory: Path) -> Callable[[Any, str], bool]:
    """The watchfiles filter of the loop: watchfiles' defaults (VCS, caches, editor swap
    files) plus :data:`IGNORED_DIRS` and :data:`IGNORED_FILES`."""
    import watchfiles

    default = watchfiles.DefaultFilter()
    root = directory.resolve()

    def accept(change: Any, path: str) -> bool:
        if not default(change, path):
            return False
        name = Path(path).name
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_FILES):
            return False
        # Not in DefaultFilter's ignore_dirs: it matches directory names anywhere on the path,
        # also above the plugin (one kept under some "target" directory).
        with contextlib.suppress(ValueError):
            parts = Path(path).resolve().relative_to(root).parts[:-1]
            return not any(part in IGNORED_DIRS for part in parts)
        return True

    return accept


def _changes(directory: Path, debounce_ms: int) -> Iterator[set[str] | None]:
    """Yield ``None`` once the watcher runs (then build: nothing changed before it is missed),
    then the sets of changed paths (relative to ``directory``)."""
    import watchfiles

    # yield_on_timeout makes the generator yield an empty set once the watcher is set up.
    started = False
    for changes in watchfiles.watch(directory, watch_filter=source_filter(directory),
                                    debounce=debounce_ms, rust_timeout=1000,
                                    yield_on_timeout=True, raise_interrupt=False):
        if not started:
            # Changes seen before the first build are in it: not a reason for another.
            started = True
            yield None
        elif changes:
            paths = _lasting(changes)
            if paths:
                yield {_relative(path, directory) for path in paths}


def _lasting(changes: Iterable[tuple[Any, str]]) -> set[str]:
    """The paths of ``changes`` less the transient ones: files that were created and deleted
    again within one batch (an editor's or ``sed -i``'s temporary file)."""
    import watchfiles

    kinds: dict[str, set[Any]] = {}
    for change, path in changes:
        kinds.setdefault(path, set()).add(change)
    return {path for path, seen in kinds.items()
            if not ({watchfiles.Change.added, watchfiles.Change.deleted} <= seen
                    and not Path(path).exists())}


def _relative(path: str, directory: Path) -> str:
    try:
        return Path(path).resolve().relative_to(directory.resolve()).as_posix()
    except ValueError:
        return path


# --------------------------------------------------------------------------------------------
# Output


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.text import Text

    from ._common import clean as _clean

    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    head = Text(f"[build {report['build']}] ", style="bold")
    if report["stage"] in ("build", "load"):
        head.append("FAILED", style="bold red")
        head.append(f" ({report['stage']}, {report['seconds']:.1f} s)")
        if report["changed"]:
            head.append("  after " + _clean(", ".join(report["changed"])), style="dim")
        console.print(head)
        error = report["error"]
        console.print(Text("  " + _clean(f"{error['type']}: {error['message']}",
                                         keep_newlines=True), style="red"))
        serving = report["serving"]
        console.print(Text(f"  still serving build {serving}" if serving is not None
                           else "  nothing serving yet: fix the error and save",
                           style="yellow"))
        return
    head.append("ok", style="bold green")
    head.append(f" {report['language']} {report['seconds']:.1f} s  ")
    head.append(_clean(f"{report['plugin']} {report['version']}"))
    head.append(f"  sha256 {report['sha256'][:12]}", style="dim")
    if report["changed"]:
        head.append("  after " + _clean(", ".join(report["changed"])), style="dim")
    console.print(head)
    call = report["call"]
    if call is None:
        return
    target = call["hook"] or call["point"]
    line = Text(f"  {_clean(target)} ")
    if call["ok"]:
        shown = (json.dumps(call["result"], ensure_ascii=False) if call.get("point")
                 or call.get("result") is not None else call.get("result_text")
                 or call.get("result_base64", ""))
        line.append("-> ", style="green")
        line.append(_clean(shown or ""))
    elif call["error"] is not None:
        line.append("FAILED ", style="bold red")
        line.append(_clean(f"{call['error']['type']}: {call['error']['message']}"))
    else:
        line.append("FAILED ", style="bold red")
        failures = call["result"]["failures"]
        line.append(_clean("; ".join(f"{f['plugin']}: {f['kind']}: {f['error']}"
                                     for f in failures)))
    line.append(f"  ({call['ms']:.1f} ms)", style="dim")
    console.print(line)


def _emit(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        # One document per line, flushed: a reader follows the loop as it goes.
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _print_report(report)
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# The command


def _payload(args: argparse.Namespace) -> bytes:
    if args.payload is not None and args.text is not None:
        raise UsageError("give --payload or --text, not both")
    if args.text is not None:
        text: str = args.text
        return text.encode("utf-8")
    if args.payload is None:
        return b""
    payload: str = args.payload
    try:
        json.loads(payload)
    except ValueError as exc:
        raise UsageError(f"--payload must be valid JSON ({exc}); to send plain text to a "
                         "hook use --text") from exc
    return payload.encode("utf-8")


def _cmd_dev(args: argparse.Namespace) -> int:
    from ._main import _read_config, _report_error

    as_json: bool = args.json
    progress = None if args.quiet or as_json else (
        lambda line: print(line, file=sys.stderr, flush=True))
    try:
        if args.point is not None and args.text is not None:
            raise UsageError("an extension point takes a JSON payload: use --payload")
        payload = _payload(args)
        config = _read_config(args.config)
        if not args.once:
            try:
                import watchfiles  # noqa: F401
            except ImportError:
                raise UsageError("plugbox dev watches sources with the watchfiles package, "
                                 "which is not installed: pip install 'plugbox[dev-tools]' "
                                 "(or use --once)") from None
        loop = DevLoop(Path(args.path), hook=args.hook, point=args.point, payload=payload,
                       config=config, state_dir=args.state_dir, progress=progress)
    except (UsageError, ManifestError) as exc:
        return _report_error(exc, as_json=as_json, code=EXIT_USAGE)
    with loop:
        if args.once:
            report = loop.rebuild()
            _emit(report, as_json)
            return EXIT_OK if report["ok"] else EXIT_FAILED
        last: dict[str, Any] | None = None
        for changed in _changes(loop.source, args.debounce_ms):
            if changed is None and not as_json:
                sys.stderr.write(f"plugbox: watching {loop.source} ({loop.language}); "
                                 "Ctrl-C to stop\n")
            last = loop.rebuild(changed or ())
            _emit(last, as_json)
            if args.max_builds is not None and loop.builds >= args.max_builds:
                break
        # Stopped by Ctrl-C (watchfiles returns) or by --max-builds.
        return EXIT_OK if last is None or last["ok"] or args.max_builds is None \
            else EXIT_FAILED


def add_dev(sub: Any) -> None:
    """Declare ``plugbox dev`` on the subparsers ``sub``."""
    dev = sub.add_parser(
        "dev",
        help="rebuild a plugin on every change and hot-reload it into a host",
        description=(
            "Watch the plugin in PATH (a Python plugin with app.py, or a Rust crate), rebuild "
            "it on every change, hot-reload it into a PluginHost this command runs, and call "
            "--hook or --point with --payload after each build. Prints each build's outcome "
            "and the call's (--json: one JSON line per build). A build that fails leaves the "
            "previous one serving. The host declares the extension points the plugin "
            "implements and stand-ins (answering denied) for the host functions it asks for. "
            "Needs the watchfiles package (plugbox[dev-tools]) unless --once."
        ),
    )
    dev.add_argument("path", metavar="PATH", type=Path, help="the plugin directory")
    target = dev.add_mutually_exclusive_group()
    target.add_argument("--hook", metavar="HOOK", help="call this hook after each build")
    target.add_argument("--point", metavar="POINT",
                        help="dispatch this extension point after each build")
    dev.add_argument("--payload", metavar="JSON", default=None,
                     help="the call's payload: JSON text (for a hook, its bytes)")
    dev.add_argument("--text", metavar="T", default=None,
                     help="a hook's payload as plain text (UTF-8)")
    dev.add_argument("--config", metavar="JSON",
                     help="the plugin's configuration: a JSON object, or @FILE")
    dev.add_argument("--state-dir", metavar="DIR", type=Path, default=None,
                     help="the host's state directory (default: a temporary one, removed "
                     "at exit)")
    dev.add_argument("--once", action="store_true",
                     help="build, load and call once, then exit (no watching)")
    dev.add_argument("--max-builds", metavar="N", type=positive_int, default=None,
                     help="stop after N builds (the first one included)")
    dev.add_argument("--debounce-ms", metavar="MS", type=positive_int, default=400,
                     help="wait this long for more changes before rebuilding (default 400)")
    dev.add_argument("--json", action="store_true",
                     help="print one JSON document per build, one per line")
    dev.add_argument("-q", "--quiet", action="store_true", help="no build progress on stderr")
    dev.set_defaults(func=_cmd_dev)
