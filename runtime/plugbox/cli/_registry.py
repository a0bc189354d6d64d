"""``plugbox registry``: create and run a plugin registry (docs/registry.md).

``init DIR`` creates the registry (database, package store, TUF keys and metadata, the first
admin and its token, shown once); ``serve DIR`` runs it under uvicorn; ``account DIR NAME``
creates an account directly in the database (for operators; the API's ``POST
/api/v1/accounts`` does the same for admins). Each reports with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._errors import PlugboxError

__all__ = ["add_registry"]


def _report(doc: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(text)


def _fail(exc: PlugboxError, as_json: bool) -> int:
    code = getattr(exc, "code", "error")
    if as_json:
        print(json.dumps({"ok": False, "error": {"code": code, "type": type(exc).__name__,
                                                 "message": exc.message}}, indent=2))
    else:
        print(f"plugbox: error: {exc.message}", file=sys.stderr)
    return 2 if code in ("invalid-request", "config") else 1


def _cmd_init(args: argparse.Namespace) -> int:
    from ..registry import init_registry

    try:
        limits = json.loads(args.limits) if args.limits else None
        doc = init_registry(Path(args.directory), db_url=args.db_url, admin=args.admin,
                            offline_root_dir=Path(args.offline_root_dir)
                            if args.offline_root_dir else None, limits=limits)
    except ValueError as exc:
        print(f"plugbox: error: --limits is not a JSON object: {exc}", file=sys.stderr)
        return 2
    except PlugboxError as exc:
        return _fail(exc, args.json)
    _report({"ok": True, **doc}, args.json,
            f"registry created in {doc['directory']} (database {doc['database']})\n"
            f"admin {doc['admin']!r} token (shown once): {doc['token']}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..registry import serve

    try:
        serve(args.directory, host=args.host, port=args.port, db_url=args.db_url)
    except PlugboxError as exc:
        return _fail(exc, args.json)
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_account(args: argparse.Namespace) -> int:
    from ..registry import Account, Registry

    try:
        with Registry(args.directory, db_url=args.db_url) as registry:
            operator = Account("operator", admin=True, reviewer=True, token_id="-")
            doc = registry.create_account(operator, args.name, admin=args.admin,
                                          reviewer=args.reviewer)
    except PlugboxError as exc:
        return _fail(exc, args.json)
    _report({"ok": True, **doc}, args.json,
            f"account {args.name!r} created; its token (shown once): {doc['token']}")
    return 0


def add_registry(sub: Any) -> None:
    """Declare ``plugbox registry`` and its subcommands on the subparsers ``sub``."""
    parser = sub.add_parser(
        "registry", help="create and run a plugin registry server",
        description="Create (init), run (serve) and administer (account) a plugbox registry: "
                    "publishers, packages, search, yanks, advisories, reviews and TUF "
                    "metadata over a JSON HTTP API (docs/registry.md).")
    cmds = parser.add_subparsers(dest="registry_sub", metavar="COMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])

    def db_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db-url", metavar="URL", default=None,
                       help="postgresql://... to keep the registry's database in PostgreSQL "
                            "(default: registry.sqlite3 in DIR, or what init recorded)")
        p.add_argument("--json", action="store_true", help="report as JSON")

    init = cmds.add_parser("init", help="create a registry in a new or empty directory",
                           description="Create the registry's database, package store, TUF "
                                       "repository (keys and signed metadata) and its first "
                                       "admin account; prints the admin's token once.")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--admin", metavar="NAME", default="admin",
                      help="the first admin account's name (default: admin)")
    init.add_argument("--offline-root-dir", metavar="DIR", default=None,
                      help="write the TUF root key here (e.g. removable media) instead of "
                           "into the registry directory; needed again only to sign a new root")
    init.add_argument("--limits", metavar="JSON", default=None,
                      help="server limits as a JSON object (see docs/registry.md)")
    db_option(init)
    init.set_defaults(func=_cmd_init)

    serve = cmds.add_parser("serve", help="run the registry's HTTP server",
                            description="Serve the registry's JSON API and TUF metadata under "
                                        "uvicorn until interrupted. Several processes may "
                                        "serve one registry when its database is PostgreSQL.")
    serve.add_argument("directory", metavar="DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    db_option(serve)
    serve.set_defaults(func=_cmd_serve)

    account = cmds.add_parser("account", help="create an account and print its token",
                              description="Create an account directly in the registry's "
                                          "database and print its first API token once.")
    account.add_argument("directory", metavar="DIR")
    account.add_argument("name", metavar="NAME")
    account.add_argument("--admin", action="store_true", help="make it an admin")
    account.add_argument("--reviewer", action="store_true",
                         help="let it record security reviews")
    db_option(account)
    account.set_defaults(func=_cmd_account)
