"""``plugbox build`` and ``plugbox new``: the plugin author's commands.

Wired into the ``plugbox`` command line with one call, ``add_authoring_commands(subparsers)``
(or ``add_build`` / ``add_new`` one by one). Same exit codes as the rest of the CLI: 0 success,
1 the build failed, 2 invalid input or usage. Progress goes to stderr, the result (the built
module's path, the new plugin's path) to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from .._errors import ManifestError, PlugboxError, UsageError

__all__ = ["add_authoring_commands", "add_build", "add_new", "cmd_build", "cmd_new"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


def _fail(exc: PlugboxError) -> int:
    print(f"plugbox: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, (UsageError, ManifestError)) else EXIT_FAILED


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _plugin_language(path: Path) -> str:
    """``python`` (``app.py``) or ``rust`` (``Cargo.toml``) for the plugin directory ``path``."""
    directory = path.parent if path.name == "plugbox.json" else path
    if (directory / "app.py").is_file():
        return "python"
    if (directory / "Cargo.toml").is_file():
        return "rust"
    raise UsageError(
        f"{directory}: neither app.py (a Python plugin) nor Cargo.toml (a Rust plugin) is "
        "there; `plugbox new --lang python|rust NAME` creates a plugin to start from"
    )


def cmd_build(args: argparse.Namespace) -> int:
    """``plugbox build PATH [--out DIR] [--force] [--quiet]``."""
    from ..authoring._pybuild import build_python_plugin
    from ..authoring._scaffold import build_rust_crate

    path = Path(args.path)
    progress = None if args.quiet else _progress
    try:
        if not path.exists():
            raise UsageError(f"{path}: no such plugin directory")
        if _plugin_language(path) == "python":
            # Warnings are shown with --quiet too: they are about the plugin, not progress.
            module = build_python_plugin(path, progress=progress, out_dir=args.out,
                                         force=args.force, warn=_progress)
        else:
            module = build_rust_crate(path, progress=progress, out_dir=args.out)
    except PlugboxError as exc:
        return _fail(exc)
    print(module)
    return EXIT_OK


def cmd_new(args: argparse.Namespace) -> int:
    """``plugbox new NAME [--lang python|rust] [--dir DIR]``."""
    from ..authoring._scaffold import new_plugin

    try:
        root = new_plugin(args.name, args.lang, args.dir)
    except PlugboxError as exc:
        return _fail(exc)
    shown = root if args.dir != "." else Path(args.name)
    test = (
        f"python -m pytest -q {shown / 'test_app.py'}"
        if args.lang == "python"
        else f"cargo test --offline --manifest-path {shown / 'Cargo.toml'}"
    )
    _progress(
        f"created a {args.lang} plugin in {root}; next:\n"
        f"  {test}\n"
        f"  plugbox build {shown}\n"
        f"  plugbox call {shown} greet --text '{{\"name\": \"Ada\"}}'"
    )
    print(root)
    return EXIT_OK


def add_build(sub: Any) -> None:
    """Add ``plugbox build`` to the subparsers ``sub``."""
    build = sub.add_parser(
        "build",
        help="build a plugin from source (Python with componentize-py, or Rust with cargo)",
        description=(
            "Build the plugin in PATH: a Python plugin (app.py) into a WebAssembly component "
            "with componentize-py, a Rust plugin (Cargo.toml) into a core module with cargo. "
            "Writes the module to the manifest's module.path and its sha256 into plugbox.json "
            "(or stages both in --out). A Python build is skipped while its sources, the SDK, "
            "the WIT and componentize-py are unchanged."
        ),
    )
    build.add_argument("path", metavar="PATH", type=Path, help="the plugin directory")
    build.add_argument(
        "--out", metavar="DIR", type=Path, default=None,
        help="stage the built plugin (manifest, module, README) in DIR; PATH is not written",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    build.set_defaults(func=cmd_build)


def add_new(sub: Any) -> None:
    """Add ``plugbox new`` to the subparsers ``sub``."""
    new = sub.add_parser(
        "new",
        help="create a plugin folder to start from (Python or Rust)",
        description=(
            "Create DIR/NAME with a working plugin (hooks echo and greet), its plugbox.json, a "
            "test and a README with the commands to test, build and call it."
        ),
    )
    new.add_argument("name", metavar="NAME", help="the plugin name, e.g. hello-plugin")
    new.add_argument("--lang", choices=("python", "rust"), default="python",
                     help="the language (default: python)")
    new.add_argument("--dir", metavar="DIR", default=".",
                     help="where to create the folder (default: the current directory)")
    new.set_defaults(func=cmd_new)


def add_authoring_commands(sub: Any) -> None:
    """Add ``plugbox build`` and ``plugbox new`` to the subparsers ``sub``."""
    add_build(sub)
    add_new(sub)
