"""The shared plugbox Python runtime component: built and compiled once per machine and user.

Python bundles (``plugbox._pybundle``) run on one interpreter component. It lives in a
user-level cache shared by every state directory (:func:`user_cache_dir`:
``$PLUGBOX_CACHE_DIR``, else ``$XDG_CACHE_HOME/plugbox``, else ``~/.cache/plugbox``):

- ``python/``: the interpreter's ``.wasm``, built by componentize-py from the recipe
  (:func:`plugbox._pybundle.recipe_id`) on first use (about 10 s; ``python3 dev.py setup``
  does it ahead of time), keyed by the recipe;
- ``compiled/``: wasmtime's compiled artifact of it, keyed by its sha256 and the engine's
  settings (about 20 s to compile, once).

Both are :class:`~plugbox.engine._cache.ArtifactCache` entries: each carries an HMAC under a
key only this user can read (``cache.key``), checked before the bytes are used, so a tampered
or truncated interpreter or artifact is discarded and rebuilt, never run. A process keeps the
compiled component per engine, so every bundle plugin of a Runtime shares it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import wasmtime
from wasmtime.component import Component

from .._errors import StateError, UsageError
from .._pybundle import (INTERPRETER_ENTRY, INTERPRETER_MODULE, INTERPRETER_WORLD,
                         INTERPRETER_WORLD_NAME, find_componentize_py, recipe_id, sdk_location,
                         user_cache_dir)
from ._cache import ArtifactCache
from ._fastpath import Engine
from ._fastpath_component import compile_component, deserialize_component
from ._wasmparse import ModuleInfo, inspect_module
from ._wit import WIT_FILENAME, wit_dir

__all__ = ["Interpreter", "interpreter", "interpreter_cached", "user_cache_dir"]

Progress = Callable[[str], None]

#: Seconds componentize-py may take to build the interpreter.
BUILD_TIMEOUT: Final = 900.0


@dataclass(frozen=True)
class Interpreter:
    """The interpreter component, compiled for one engine."""

    recipe: str
    sha256: str
    wasm_size: int
    info: ModuleInfo
    component: Component
    #: What this process did to get it: "memory", "cache", "compiled" or "built".
    source: str


_LOCK = threading.Lock()
_MEMO: weakref.WeakKeyDictionary[Engine, dict[tuple[str, str], Interpreter]] = (
    weakref.WeakKeyDictionary())


def _caches(root: Path, engine: Engine) -> tuple[ArtifactCache, ArtifactCache]:
    key = root / "cache.key"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateError(
            f"cannot create the plugbox user cache {root} ({exc}); set PLUGBOX_CACHE_DIR to a "
            "writable directory", path=str(root)) from None
    return (ArtifactCache(root / "python", salt="plugbox-python-interpreter-wasm", key_file=key),
            ArtifactCache(root / "compiled", salt=engine.settings, key_file=key))


def interpreter_cached(engine: Engine, root: Path | None = None) -> bool:
    """Whether the interpreter for this recipe is built and compiled for ``engine`` already."""
    root = root if root is not None else user_cache_dir()
    wasm_cache, compiled = _caches(root, engine)
    path = wasm_cache.path_for(recipe_id())
    if not path.is_file():
        return False
    return compiled.path_for(hashlib.sha256(path.read_bytes()).hexdigest()).is_file()


def interpreter(engine: Engine, *, root: Path | None = None,
                progress: Progress | None = None) -> Interpreter:
    """The interpreter compiled for ``engine``: from this process's memory, else the user cache
    (HMAC-checked), else built with componentize-py and/or compiled now (with ``progress``).

    Raises:
        UsageError: it must be built and componentize-py or the SDK is missing, or the build
            failed.
        StateError: the user cache cannot be created.
    """
    root = root if root is not None else user_cache_dir()
    recipe = recipe_id()
    with _LOCK:
        per_engine = _MEMO.setdefault(engine, {})
        found = per_engine.get((str(root), recipe))
        if found is not None:
            return Interpreter(found.recipe, found.sha256, found.wasm_size, found.info,
                               found.component, "memory")
        say = progress or (lambda _m: None)
        wasm_cache, compiled_cache = _caches(root, engine)
        source = "cache"
        wasm = wasm_cache.get(recipe, lambda path: path.read_bytes())
        if wasm is None:
            wasm = _build(recipe, say)
            wasm_cache.put(recipe, wasm)
            source = "built"
        sha = hashlib.sha256(wasm).hexdigest()
        component = compiled_cache.get(sha, lambda path: deserialize_component(engine, path))
        if component is None:
            started = time.monotonic()
            say(f"plugbox: compiling the Python runtime ({len(wasm) / 1e6:.0f} MB) once for this "
                f"machine into {root} (about 20 s; later loads take milliseconds)")
            try:
                component = compile_component(engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise UsageError(f"the plugbox Python runtime does not compile: {exc}; remove "
                                 f"{root} and try again") from None
            compiled_cache.put(sha, bytes(component.serialize()))
            say(f"plugbox: Python runtime compiled ({time.monotonic() - started:.1f} s)")
            source = "compiled" if source == "cache" else source
        found = Interpreter(recipe, sha, len(wasm), inspect_module(wasm), component, source)
        per_engine[(str(root), recipe)] = found
        return found


def _build(recipe: str, say: Progress) -> bytes:
    """Run componentize-py on the interpreter's entry and world; the component's bytes."""
    program, version = find_componentize_py()
    sdk = sdk_location()
    started = time.monotonic()
    say(f"plugbox: building the Python runtime {recipe} with componentize-py {version} "
        "(once per machine; about 10 s)")
    with tempfile.TemporaryDirectory(prefix="plugbox-pyinterp-") as scratch:
        work = Path(scratch)
        (work / f"{INTERPRETER_MODULE}.py").write_text(INTERPRETER_ENTRY, encoding="utf-8")
        (work / "wit" / "deps").mkdir(parents=True)
        (work / "wit" / "world.wit").write_text(INTERPRETER_WORLD, encoding="utf-8")
        shutil.copyfile(wit_dir() / WIT_FILENAME, work / "wit" / "deps" / WIT_FILENAME)
        out = work / "interpreter.wasm"
        cmd = [program, "-d", str(work / "wit"), "-w", INTERPRETER_WORLD_NAME, "componentize",
               INTERPRETER_MODULE, "-p", str(work), "-p", str(sdk), "-o", str(out)]
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL,
                                  env=dict(os.environ, RUST_BACKTRACE="0"))
        except subprocess.TimeoutExpired:
            raise UsageError(f"building the plugbox Python runtime took over {BUILD_TIMEOUT:g} s "
                             "and was stopped") from None
        except OSError as exc:
            raise UsageError(f"cannot run {program}: {exc}") from None
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-30:])
            raise UsageError(f"building the plugbox Python runtime failed (componentize-py exit "
                             f"{proc.returncode}):\n{tail}\n(command: {' '.join(cmd)})")
        data = out.read_bytes()
    say(f"plugbox: Python runtime built ({len(data) / 1e6:.1f} MB, "
        f"{time.monotonic() - started:.1f} s)")
    return data
