"""``plugbox discover``: list the plugins found in plugin directories, explicit paths and
installed distributions (entry-point group ``plugbox.plugins``), and the broken ones with their
reasons. Reads manifests only (see :mod:`plugbox.host._discovery`). Exit 0 when every plugin
could be read, 1 when there was a problem."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from ._common import clean, positive_int
from ..host._discovery import ENTRY_POINT_GROUP, DiscoveryLimits, discover

__all__ = ["add_discover"]

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1


def _cmd_discover(args: argparse.Namespace) -> int:
    report = discover(args.directories, paths=args.path, entry_points=args.entry_points,
                      limits=DiscoveryLimits(max_depth=args.max_depth))
    if args.json:
        # ensure_ascii (the default) keeps every non-ASCII or control character escaped.
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        for c in report.candidates:
            sys.stdout.write(clean(f"{c.name} {c.version}  {c.source}  ({c.origin})") + "\n")
        for p in report.problems:
            sys.stderr.write(clean(f"plugbox: {type(p.error).__name__}: {p.reason}") + "\n")
        if not report.candidates and not report.problems:
            sys.stderr.write("plugbox: no plugins found\n")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def add_discover(sub: Any) -> None:
    """Declare ``plugbox discover`` on the subparsers ``sub``."""
    parser = sub.add_parser(
        "discover",
        help="list the plugins in plugin directories and installed packages",
        description=(
            "Find plugins in plugin directories (plugin folders holding plugbox.json, and "
            ".plugbox files, in sub-directories too), in explicit --path arguments and, with "
            f"--entry-points, in installed Python distributions (entry-point group "
            f"{ENTRY_POINT_GROUP}). Reads manifests only: nothing is verified, compiled or "
            "run. Broken plugins are listed with their reasons on stderr; the others are still "
            "found. Exit 0 when every plugin could be read, 1 otherwise."
        ),
    )
    parser.add_argument("directories", metavar="DIR", nargs="*", help="a plugin directory")
    parser.add_argument("--path", metavar="PATH", action="append", default=[],
                        help="one plugin: directory, plugbox.json or .plugbox; repeatable")
    parser.add_argument("--entry-points", action="store_true",
                        help=f"also search installed distributions ({ENTRY_POINT_GROUP})")
    parser.add_argument("--max-depth", metavar="N", type=positive_int,
                        default=DiscoveryLimits.max_depth,
                        help="directory levels searched below each DIR (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    parser.set_defaults(func=_cmd_discover)
