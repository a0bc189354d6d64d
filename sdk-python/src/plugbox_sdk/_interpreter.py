"""The plugbox Python runtime: one shared component that runs Python plugins given as bundles.

plugbox builds this module into ONE WebAssembly component with componentize-py (the world
``interpreter`` that ``plugbox.engine._pyinterp`` writes: ``plugin-bulk`` of abi/plugbox.wit
with every service imported, plus ``load-bundle``). Each plugin instance gets its bundle once,
before ``on-init``: ``load-bundle`` installs a meta-path finder over the bundle's sources (held
in memory; the component has no filesystem) and imports the bundle's entry module, whose
``@hook`` functions register as they do in a per-plugin component. Hooks then run through the
same SDK entry points as there (:mod:`plugbox_sdk._component`).

componentize-py pre-initialises the component at build time and keeps only the modules
imported then, so this module imports the whole SDK and :data:`PRELOADED` (the standard
library a bundle may use) at import time. Never imported by plugin code.

The host sends the bundle as JSON text: ``{"entry": "app", "files": {"app.py": "...", ...}}``
(the host reads and checks the signed zip; see ``plugbox._pybundle``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
from types import ModuleType
from typing import Any, Final, Sequence

from . import _component, _hooks  # noqa: F401 -- the SDK's entry points; imports the bindings
from . import clock, config, events, host, http, kv, log, random  # noqa: F401
from ._errors import Error

#: The standard library modules a bundle may import (imported here, at pre-init). Keep in step
#: with ``plugbox._pybundle.PRELOADED``, which the build's import check reads.
PRELOADED: Final = (
    "abc", "argparse", "array", "ast", "base64", "binascii", "bisect", "calendar", "cmath",
    "codecs", "collections", "collections.abc", "colorsys", "contextlib", "contextvars",
    "copy", "copyreg", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "email.message", "email.parser", "email.utils", "enum", "errno", "fnmatch", "fractions",
    "functools", "gettext", "glob", "hashlib", "heapq", "hmac", "html", "html.entities",
    "html.parser", "importlib", "importlib.metadata",
    "importlib.resources", "inspect", "io", "ipaddress", "itertools", "json", "keyword",
    "locale", "logging", "math", "mimetypes", "numbers", "operator", "os", "os.path",
    "pathlib", "pkgutil", "posixpath", "pprint", "quopri", "random", "re", "reprlib",
    "secrets", "shlex", "statistics", "string", "stringprep", "struct", "sys", "textwrap",
    "time", "token", "tokenize", "traceback", "types", "typing", "unicodedata", "urllib",
    "urllib.parse", "uuid", "warnings", "weakref", "xml", "xml.dom", "xml.dom.minidom",
    "xml.etree", "xml.etree.ElementTree", "zlib", "zoneinfo",
)

_missing: list[str] = []
for _name in PRELOADED:
    try:
        importlib.import_module(_name)
    except ImportError:  # recorded: the build of the runtime reports it
        _missing.append(_name)

#: Modules of PRELOADED that this CPython build lacks.
MISSING: Final = tuple(_missing)


class _StdlibSource(importlib.abc.Loader):
    """Serves a preloaded standard library module's source from memory: the component has no
    files at run time, and some packages re-execute a stdlib module from its spec (markdown
    makes its own copy of ``html.parser`` with ``spec.loader.exec_module``)."""

    def __init__(self, source: bytes) -> None:
        self.source = source

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        origin = spec.origin if spec is not None and spec.origin else "<stdlib>"
        exec(compile(self.source, origin, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, fullname: str) -> str:
        return self.source.decode("utf-8")


for _name in PRELOADED:
    _spec = getattr(sys.modules.get(_name), "__spec__", None)
    if (_spec is not None and isinstance(_spec.loader, importlib.machinery.SourceFileLoader)
            and _spec.origin):
        try:
            _spec.loader = _StdlibSource(_spec.loader.get_data(_spec.origin))
        except OSError:
            continue
        sys.modules[_name].__loader__ = _spec.loader

#: The bundle's files by path, once loaded (one bundle per instance).
_files: dict[str, str] = {}
_loaded: list[str] = []


class _BundleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds modules in the loaded bundle: ``a.b`` is ``a/b.py`` or ``a/b/__init__.py``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        base = fullname.replace(".", "/")
        for rel, package in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
            if rel in _files:
                spec = importlib.util.spec_from_loader(fullname, self, is_package=package)
                if spec is None:
                    return None
                spec.origin = f"bundle:/{rel}"
                spec.has_location = True
                if package:
                    spec.submodule_search_locations = [f"bundle:/{base}"]
                return spec
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None and spec.origin is not None
        rel = spec.origin[len("bundle:/"):]
        code = compile(_files[rel], spec.origin, "exec", dont_inherit=True)
        module.__file__ = spec.origin
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str | None:
        base = fullname.replace(".", "/")
        return _files.get(f"{base}.py", _files.get(f"{base}/__init__.py"))


_FINDER: Final = _BundleFinder()


def load_bundle(bundle: str) -> None:
    """Install the bundle (JSON text, see the module docstring) and import its entry module.

    Raises the SDK's :class:`Error` (``invalid-input`` for a malformed bundle, ``failure`` with
    the traceback when importing the entry module fails)."""
    if _loaded:
        raise Error.from_kind("invalid-input", "a bundle is already loaded in this instance")
    try:
        doc: Any = json.loads(bundle)
        entry = doc["entry"]
        files = doc["files"]
        if not isinstance(entry, str) or not isinstance(files, dict):
            raise TypeError("entry must be a string and files an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise Error.from_kind("invalid-input", f"load-bundle: malformed bundle: {exc}") from None
    _files.update({str(k): str(v) for k, v in files.items()})
    sys.meta_path.insert(0, _FINDER)
    _loaded.append(entry)
    try:
        importlib.import_module(entry)
    except Error:
        raise
    except BaseException as exc:  # noqa: BLE001 -- reported to the host with its traceback
        import traceback

        text = "".join(traceback.format_exception(exc))
        raise Error.from_kind(
            "failure", f"importing the bundle's {entry}.py failed: {type(exc).__name__}: {exc}\n"
            f"{text[-4000:]}") from None
