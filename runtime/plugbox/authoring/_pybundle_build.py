"""``plugbox build`` of a Python plugin into a source bundle (the default form).

Used by :func:`plugbox.authoring._pybuild.build_python_plugin` when the manifest says
``"module": {"kind": "python-bundle", ...}``. A build:

1. reads the plugin's dependencies: ``[project] dependencies`` of the plugin folder's
   ``pyproject.toml``, else the lines of ``requirements.txt``;
2. skips everything when nothing changed (the stamp ``<module>.pybuild.json`` holds a
   fingerprint of the sources, the dependency declarations, the SDK and the interpreter
   recipe, and the bundle's sha256);
3. resolves the dependencies with ``pip download --only-binary :all:`` into a scratch
   directory (pip's own options apply: ``PIP_INDEX_URL``, ``PIP_FIND_LINKS``,
   ``PIP_NO_INDEX``...; when every requirement is pinned with ``==``, the wheels an earlier
   build resolved for exactly that set are reused from ``<user cache>/wheels``, checked
   against their sha256, without running pip), refuses every wheel that is not pure Python (a platform tag, or a
   compiled file inside) naming it, and records each wheel's name, version and sha256 in the
   lock;
4. imports ``app.py`` natively with the dependencies on the path and checks the hooks it
   registers against the manifest (as for a component);
5. checks the bundle's sources with ``ast``: services used but not requested (the same
   warnings as for a component), and imports the interpreter cannot satisfy -- a module
   neither in the bundle nor preloaded by the interpreter, or one that cannot work in the
   sandbox (``socket``, ``subprocess``, ``threading``, ...) -- as a BuildError naming each
   ``file:line`` in the plugin's own files (imports guarded by ``try``/``if`` are the code's
   own fallbacks and not reported); in a dependency's files, imports at module level outside
   ``try``/``if`` are warnings (that module may never be imported: a ``__main__``, test
   helpers), each naming ``<dependency>/path:line``;
6. writes the deterministic zip (``plugbox._pybundle.write_bundle``) to ``module.path`` and its
   sha256 into the manifest.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from .._errors import UsageError
from .._manifest import MANIFEST_FILENAME, Manifest
from .._pybundle import (BANNED_MODULES, BUNDLE_FORMAT, LOCK_NAME, META_NAME, preloaded_modules,
                         recipe_id, user_cache_dir, write_bundle)
from .._version import __version__
from ._build import BuildError, clear_failed_build
from ._pybuild import (APP_MODULE, STAMP_SUFFIX, _mark_failed, _read_stamp,
                       _sha256_file, _source_files, _stage_outputs, check_hooks,
                       sdk_location, unrequested_service_warnings)

__all__ = ["build_bundle", "import_problems", "read_requirements"]

Progress = Callable[[str], None]

#: Bump when the bundle build's inputs or output change.
_BUNDLE_BUILD_FORMAT: Final = 1
#: Files of a wheel that never go into a bundle.
_SKIP_WHEEL_FILE: Final = re.compile(r"(^|/)(__pycache__/|[^/]+\.pyc$)|\.dist-info/(RECORD|WHEEL|INSTALLER|REQUESTED|direct_url\.json)$")
#: Suffixes of compiled extension modules.
_COMPILED: Final = (".so", ".pyd", ".dylib", ".dll")
#: A pure-Python wheel's file name ends with ``-none-any.whl``.
_PURE_TAG: Final = re.compile(r"-[^-]+-none-any\.whl$")


def read_requirements(plugin_dir: Path) -> tuple[list[str], str | None]:
    """The plugin's declared dependencies and where they were declared (None: nowhere).

    Raises:
        UsageError: ``pyproject.toml`` does not parse or its ``dependencies`` is not a list
            of strings.
    """
    pyproject = plugin_dir / "pyproject.toml"
    if pyproject.is_file():
        try:
            doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{pyproject}: not valid TOML: {exc}") from None
        deps = doc.get("project", {}).get("dependencies")
        if deps is not None:
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                raise UsageError(f"{pyproject}: [project] dependencies must be a list of "
                                 "requirement strings such as \"markdown==3.6\"")
            return [d.strip() for d in deps if d.strip()], str(pyproject)
    requirements = plugin_dir / "requirements.txt"
    if requirements.is_file():
        lines = []
        for raw in requirements.read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if line:
                if line.startswith("-"):
                    raise UsageError(
                        f"{requirements}: {line!r}: only requirement lines are read; give pip "
                        "options through its environment variables (PIP_INDEX_URL, "
                        "PIP_FIND_LINKS, PIP_NO_INDEX)")
                lines.append(line)
        return lines, str(requirements)
    return [], None


def _bundle_sources(plugin_dir: Path, exclude: Iterable[Path]) -> list[Path]:
    """The plugin folder's files that affect its bundle (bundles built before excluded)."""
    return [f for f in _source_files(plugin_dir, exclude)
            if not f.name.endswith((".pybundle", ".pybundle.tmp"))]


def _fingerprint(manifest: Manifest, sdk_dir: Path, recipe: str, requirements: list[str],
                 exclude: Iterable[Path]) -> str:
    h = hashlib.sha256(f"plugbox-pybundle {_BUNDLE_BUILD_FORMAT}\n{recipe}\n".encode())
    h.update(json.dumps(sorted(manifest.hooks)).encode() + b"\n")
    h.update(json.dumps(requirements).encode() + b"\n")
    h.update(json.dumps(sorted(manifest.permissions.services())).encode() + b"\n")
    for file in _bundle_sources(manifest.directory, exclude):
        h.update(f"plugin:{file.relative_to(manifest.directory).as_posix()}\n".encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())
    # The recipe covers the SDK's sources; the environment's packages never enter a bundle.
    return h.hexdigest()


# ------------------------------------------------------------------------------ dependencies


def _pip_download(requirements: list[str], dest: Path, timeout: float) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input",
           "--only-binary", ":all:", "--dest", str(dest), *requirements]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BuildError(f"pip download of {', '.join(requirements)} took over {timeout:g} s "
                         "and was stopped") from None
    except OSError as exc:
        raise BuildError(f"cannot run pip: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        hint = ""
        if "no matching distribution" in tail.lower():
            hint = ("\n(bundles take wheels only -- `--only-binary :all:` -- and only "
                    "pure-Python ones: a package published as a source distribution alone, or "
                    "only with compiled wheels, cannot go into a bundle)")
        raise BuildError(f"resolving the plugin's dependencies ({', '.join(requirements)}) with "
                         f"pip failed:\n{tail}{hint}")


def _wheel_files(wheel: Path, plugin: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """A pure-Python wheel's files for the bundle, and its lock entry. Refuses a wheel with a
    platform tag or a compiled module with a BuildError naming it."""
    parts = wheel.name[:-len(".whl")].split("-")
    name, version = (parts[0], parts[1]) if len(parts) >= 2 else (wheel.name, "?")
    data = wheel.read_bytes()
    compiled: list[str] = []
    skipped: list[str] = []
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if info.filename.endswith(_COMPILED):
                    compiled.append(info.filename)
                    continue
                if (_SKIP_WHEEL_FILE.search(info.filename)
                        or info.filename.split("/", 1)[0].endswith(".data")):
                    continue
                content = zf.read(info)
                try:
                    content.decode("utf-8")
                except UnicodeDecodeError:
                    skipped.append(info.filename)  # bundles hold text only
                    continue
                files[info.filename] = content
    except zipfile.BadZipFile as exc:
        raise BuildError(f"{wheel.name}: not a valid wheel ({exc})", plugin=plugin) from None
    if compiled or not _PURE_TAG.search(wheel.name):
        what = (f"it contains compiled code ({', '.join(compiled[:3])})" if compiled
                else "it is built for one platform (its tag is not none-any)")
        raise BuildError(
            f"plugin {plugin!r}: the dependency {name} {version} ({wheel.name}) is not pure "
            f"Python: {what}. A Python bundle runs on plugbox's WebAssembly CPython, which "
            "cannot load native extensions; use a pure-Python alternative, or a "
            "pure-Python release of it if there is one", plugin=plugin)
    entry = {"name": name, "version": version, "wheel": wheel.name,
             "sha256": hashlib.sha256(data).hexdigest(), "files": len(files)}
    if skipped:
        entry["skipped_binary_files"] = skipped[:20]
    return files, entry


_PINNED: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*===?\s*[A-Za-z0-9.+!_-]+$")
_PIP_SETTINGS: Final = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")


def _resolution_key(requirements: list[str]) -> str | None:
    """The wheel cache's key for ``requirements``: only when every one is pinned with ``==``
    (an unpinned one may resolve differently tomorrow), with pip's index settings."""
    if not all(_PINNED.match(r) for r in requirements):
        return None
    text = json.dumps([sorted(requirements), [os.environ.get(k) for k in _PIP_SETTINGS],
                       sys.version_info[:2]])
    return hashlib.sha256(text.encode()).hexdigest()


def _wheel_cache() -> Path:
    return user_cache_dir() / "wheels"


def _cached_resolution(requirements: list[str], dest: Path) -> bool:
    """Copy the wheels an earlier build resolved for exactly these pinned requirements into
    ``dest`` (each checked against the sha256 recorded then); False when there are none."""
    key = _resolution_key(requirements)
    if key is None:
        return False
    try:
        index = json.loads((_wheel_cache() / f"{key}.json").read_text(encoding="utf-8"))
        for name, digest in index.items():
            data = (_wheel_cache() / digest).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest or "/" in name:
                return False
            (dest / name).write_bytes(data)
    except (OSError, ValueError, AttributeError):
        for stale in dest.iterdir():
            stale.unlink()
        return False
    return True


def _remember_resolution(requirements: list[str], dest: Path) -> None:
    key = _resolution_key(requirements)
    if key is None:
        return
    try:
        cache = _wheel_cache()
        cache.mkdir(parents=True, exist_ok=True)
        index = {}
        for wheel in dest.iterdir():
            data = wheel.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            (cache / digest).write_bytes(data)
            index[wheel.name] = digest
        (cache / f"{key}.json").write_text(json.dumps(index), encoding="utf-8")
    except OSError:
        pass  # only costs a pip run next time


def resolve_dependencies(requirements: list[str], scratch: Path, plugin: str,
                         timeout: float = 300) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """Download and unpack the dependencies; their files (bundle paths) and lock entries."""
    if not requirements:
        return {}, []
    dest = scratch / "wheels"
    dest.mkdir()
    if not _cached_resolution(requirements, dest):
        _pip_download(requirements, dest, timeout)
        _remember_resolution(requirements, dest)
    files: dict[str, bytes] = {}
    owners: dict[str, str] = {}
    lock: list[dict[str, Any]] = []
    for wheel in sorted(dest.iterdir()):
        if wheel.suffix != ".whl":
            raise BuildError(f"plugin {plugin!r}: pip fetched {wheel.name}, not a wheel; only "
                             "pure-Python wheels go into a bundle", plugin=plugin)
        found, entry = _wheel_files(wheel, plugin)
        for path, content in found.items():
            if path in files and files[path] != content:
                raise BuildError(f"plugin {plugin!r}: {path} is in both {owners[path]} and "
                                 f"{wheel.name}", plugin=plugin)
            files[path] = content
            owners[path] = wheel.name
        lock.append(entry)
    return files, lock


# ----------------------------------------------------------------------------- import check


def _imports(tree: ast.Module, module_level_only: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of each absolute import in ``tree``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, guarded: bool, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            # A guarded import (try, if) is the code's own fallback: never reported.
            child_guarded = guarded or isinstance(child, (ast.Try, ast.If))
            child_nested = nested or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
            if not guarded and not (module_level_only and nested):
                if isinstance(child, ast.Import):
                    found.extend((child.lineno, a.name) for a in child.names)
                elif (isinstance(child, ast.ImportFrom) and child.level == 0
                      and child.module):
                    found.append((child.lineno, child.module))
            visit(child, child_guarded, child_nested)

    visit(tree, False, False)
    return found


def import_problems(files: dict[str, bytes], own: set[str], preloaded: frozenset[str],
                    where: Callable[[str], str]) -> list[str]:
    """``file:line: ...`` for every import the interpreter cannot satisfy (see the module
    docstring); ``own`` are the plugin's own files (all imports checked), ``where`` maps a
    bundle path to the path shown."""
    provided = {p[:-3].replace("/", ".").removesuffix(".__init__")
                for p in files if p.endswith(".py")}
    top_level = {m.split(".")[0] for m in provided}
    problems: list[str] = []
    for path in sorted(p for p in files if p.endswith(".py")):
        try:
            tree = ast.parse(files[path].decode("utf-8"), filename=path)
        except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
            if path in own:
                problems.append(f"{where(path)}:{getattr(exc, 'lineno', 1) or 1}: does not "
                                f"parse: {exc}")
            continue
        for line, module in _imports(tree, module_level_only=path not in own):
            parts = module.split(".")
            prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            if module == "__future__" or module in provided or parts[0] in top_level:
                continue
            banned = sorted(prefixes & BANNED_MODULES)
            if banned:
                problems.append(
                    f"{where(path)}:{line}: imports {module}, which cannot work in the plugbox "
                    f"sandbox ({banned[0]}: no sockets, processes, threads or native code); "
                    "use the SDK's services instead (plugbox_sdk.http for HTTP)")
            elif module not in preloaded and parts[0] not in preloaded:
                problems.append(
                    f"{where(path)}:{line}: imports {module}, which the plugbox Python runtime "
                    "does not have: it is neither in the bundle (declare a dependency in "
                    "pyproject.toml or requirements.txt) nor in the standard library modules "
                    "the runtime preloads (plugbox_sdk/_interpreter.py PRELOADED)")
    return problems


# ---------------------------------------------------------------------------------- the build


def build_bundle(
    manifest: Manifest, app: Path, output: Path, stamp: Path, target_dir: Path,
    manifest_out: Path, out_dir: Path | None, *, force: bool, stage: Progress,
    warning: Progress, timeout: float,
) -> Path:
    """Build the bundle (see the module docstring); returns its path."""
    started = time.monotonic()
    plugin_dir = manifest.directory
    exclude = [target_dir] if out_dir is not None else []
    sdk_dir = sdk_location()
    recipe = recipe_id(sdk_dir)
    requirements, declared_in = read_requirements(plugin_dir)
    services = sorted(manifest.permissions.services()
                      | ({"host"} if manifest.extension_points else set()))
    for text in unrequested_service_warnings(plugin_dir, services, plugin=manifest.name,
                                             exclude=exclude):
        warning(text)
    fingerprint = _fingerprint(manifest, sdk_dir, recipe, requirements, exclude)
    previous = _read_stamp(stamp)
    if (not force and previous.get("fingerprint") == fingerprint and output.is_file()
            and previous.get("sha256") == _sha256_file(output)):
        _stage_outputs(manifest.path, plugin_dir, target_dir, manifest_out,
                       str(previous["sha256"]), out_dir)
        stage(f"{output.name} is up to date: sources, dependencies, SDK and runtime unchanged")
        return output
    try:
        digest, size, lock = _build_bundle(manifest, app, sdk_dir, recipe, requirements,
                                           declared_in, exclude, output, stage, warning,
                                           timeout)
    except (UsageError, BuildError) as exc:
        _mark_failed(output, manifest.name, plugin_dir, exc)
        raise
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "sha256": digest,
                                 "recipe": recipe, "form": "bundle",
                                 "dependencies": lock,
                                 "seconds": round(time.monotonic() - started, 2)},
                                indent=1) + "\n", encoding="utf-8")
    clear_failed_build(output)
    _stage_outputs(manifest.path, plugin_dir, target_dir, manifest_out, digest, out_dir)
    where = MANIFEST_FILENAME if out_dir is None else str(manifest_out)
    stage(f"wrote {output} (Python bundle, {size / 1024:.1f} KiB, {len(lock)} "
          f"dependenc{'y' if len(lock) == 1 else 'ies'}, sha256 {digest[:16]}...); "
          f"module.sha256 updated in {where}")
    return output


def _build_bundle(
    manifest: Manifest, app: Path, sdk_dir: Path, recipe: str, requirements: list[str],
    declared_in: str | None, exclude: list[Path], output: Path, stage: Progress,
    warning: Progress, timeout: float,
) -> tuple[str, int, list[dict[str, Any]]]:
    plugin_dir = manifest.directory
    own: dict[str, bytes] = {}
    for file in _bundle_sources(plugin_dir, exclude):
        if file.suffix == ".py":
            own[file.relative_to(plugin_dir).as_posix()] = file.read_bytes()
    with tempfile.TemporaryDirectory(prefix="plugbox-pybundle-") as scratch:
        scratch_dir = Path(scratch)
        deps: dict[str, bytes] = {}
        lock: list[dict[str, Any]] = []
        if requirements:
            stage(f"resolving {len(requirements)} dependenc"
                  f"{'y' if len(requirements) == 1 else 'ies'} from {declared_in} with pip "
                  "(pure-Python wheels only)")
            deps, lock = resolve_dependencies(requirements, scratch_dir, manifest.name,
                                              timeout=min(timeout, 300))
            site = scratch_dir / "site"
            for path, content in deps.items():
                target = site / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            stage("dependencies: " + ", ".join(f"{d['name']} {d['version']}" for d in lock))
            check_hooks(manifest, app, sdk_dir, stage, warning, extra_path=[site])
        else:
            check_hooks(manifest, app, sdk_dir, stage, warning)
    clash = sorted(set(own) & set(deps))
    if clash:
        raise BuildError(f"plugin {manifest.name!r}: {clash[0]} is both the plugin's and a "
                         "dependency's; rename the plugin's module", plugin=manifest.name)
    files = {**deps, **own}
    found = import_problems(
        files, set(own), preloaded_modules(sdk_dir),
        lambda p: str(plugin_dir / p) if p in own else f"<dependency>/{p}")
    problems = [text for text in found if not text.startswith("<dependency>/")]
    # A dependency's module may never be imported (its __main__, test helpers): a warning.
    for text in found:
        if text.startswith("<dependency>/"):
            warning(f"warning: {text}; importing that module will fail at run time")
    if problems:
        more = (f"\n({len(problems) - 1} more import(s) the plugbox Python runtime cannot "
                "satisfy:)\n" + "\n".join(problems[1:]) if problems[1:] else "")
        raise BuildError(f"{problems[0]}{more}", plugin=manifest.name)
    meta = {"format": BUNDLE_FORMAT, "plugin": manifest.name, "version": manifest.version,
            "entry": APP_MODULE, "built_by": f"plugbox {__version__}",
            "interpreter": {"recipe": recipe}}
    lock_doc = {"requirements": requirements, "declared_in":
                os.path.basename(declared_in) if declared_in else None, "dependencies": lock}
    data = write_bundle(files, meta, lock_doc)
    digest = hashlib.sha256(data).hexdigest()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, output)
    assert META_NAME and LOCK_NAME
    return digest, len(data), lock
