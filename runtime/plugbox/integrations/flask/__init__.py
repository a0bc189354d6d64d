"""plugbox as a Flask extension (issue 14 §1): request hooks, template filters, tests,
globals and context processors, routes, static files, templates and CLI commands served by
sandboxed plugins, through a :class:`plugbox.PluginHost`::

    from flask import Flask
    from plugbox.integrations.flask import Plugbox

    host = plugbox.PluginHost(state_dir="state")
    app = Flask(__name__)
    Plugbox(app, host=host, identity=lambda: (current_user_name(), current_roles()))

Needs the extra: ``pip install 'plugbox[flask]'``. See docs/flask.md.
"""

from __future__ import annotations

from ..._errors import UsageError


class MissingExtraError(UsageError, ImportError):
    """An optional dependency of this module is not installed (the message names the
    extra to install)."""


try:
    import flask as _flask  # noqa: F401
    import nh3 as _nh3  # noqa: F401
except ImportError as exc:
    raise MissingExtraError(f"plugbox.integrations.flask needs {exc.name or 'flask'}: "
                            "pip install 'plugbox[flask]'") from exc

from ._ext import BYTES_TYPES, DEFAULT_REQUEST_HEADERS, DEFAULT_RESPONSE_HEADERS, Identity, \
    Plugbox, csrf_token
from ._points import CLOSABLE, POINTS, VERSION, declare_points

__all__ = ["BYTES_TYPES", "CLOSABLE", "DEFAULT_REQUEST_HEADERS", "DEFAULT_RESPONSE_HEADERS",
           "POINTS", "VERSION", "Identity", "MissingExtraError", "Plugbox", "csrf_token",
           "declare_points"]
