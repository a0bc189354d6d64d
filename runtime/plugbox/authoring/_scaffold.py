"""``plugbox new``: scaffold a plugin folder that builds and answers ``plugbox call`` as generated.

:func:`new_plugin` writes, for ``lang="python"``: ``app.py`` (hooks ``echo`` and ``greet``),
``plugbox.json``, ``test_app.py`` (plugbox_sdk.testing; runs natively, or against the build
with ``PLUGBOX_TEST_BACKEND=component``), ``README.md`` with the exact commands, and a
``.gitignore`` for the build outputs. For ``lang="rust"``: ``Cargo.toml``, ``Cargo.lock`` (format
version 3, which every cargo from 1.63 on reads and keeps), ``src/lib.rs`` (the same two hooks,
a ``cargo test`` unit test of the pure part and tests of the hooks through the SDK's native
harness, ``plugbox_sdk::testing``), ``plugbox.json``, ``README.md`` and ``.gitignore``.

:func:`build_rust_crate` builds such a single-crate Rust plugin for ``plugbox build``: cargo for
``wasm32-unknown-unknown`` (toolchain found by :func:`plugbox.authoring._build.find_rust_toolchain`), the
module copied to the manifest's ``module.path`` and its sha256 pinned in the manifest.

How a Rust plugin finds the SDK: ``Cargo.toml`` gets a path dependency on the ``sdk-rust``
directory named by ``$PLUGBOX_SDK_RUST`` when set, else the ``sdk-rust`` of the checkout this
plugbox runs from (``<checkout>/runtime/plugbox`` -> ``<checkout>/sdk-rust``), as an absolute
path. Without either, :func:`new_plugin` raises :class:`~plugbox.UsageError` saying so.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from ._build import (
    WASM_TARGET,
    BuildError,
    check_module_hooks,
    clear_failed_build,
    find_rust_toolchain,
    mark_failed_build,
)
from .._errors import UsageError
from .._manifest import MANIFEST_FILENAME, load_manifest
from ._pybuild import _write_manifest_sha

__all__ = ["LANGS", "build_rust_crate", "new_plugin", "rust_sdk_dir"]

#: The languages :func:`new_plugin` scaffolds.
LANGS: Final = ("python", "rust")

_NAME: Final = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_PLACEHOLDER_SHA: Final = "0" * 64

Progress = Callable[[str], None]

# ------------------------------------------------------------------------------------ templates

_MANIFEST: Final = """\
{{
  "manifest_version": 1,
  "name": "{name}",
  "version": "0.1.0",
  "description": "{description}",
  "abi": "1.0",
  "host": ">=0.1,<1.0",
  "module": {{
{module}    "sha256": "{sha}"
  }},
  "hooks": ["echo", "greet"],
  "permissions": {{
    "log": true
  }},
  "limits": {{
    "fuel": {fuel},
    "memory_bytes": {memory},
    "deadline_ms": {deadline}
  }}
}}
"""

_PY_APP: Final = '''\
"""{name}: a plugbox plugin in Python.

Hooks: `echo` returns its payload unchanged; `greet` takes {{"name": "Ada"}} and returns
{{"greeting": "Hello, Ada!"}}. Import every module you need here at the top: the component
keeps only the modules imported when it is built.
"""

from plugbox_sdk import InvalidInputError, hook, log


@hook("echo")
def echo(payload: bytes) -> bytes:
    """Bytes in, the same bytes out."""
    return payload


@hook("greet", json=True)
def greet(value: object) -> dict:
    """{{"name": "Ada"}} in, {{"greeting": "Hello, Ada!"}} out."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise InvalidInputError('expected a JSON object with a string field "name"')
    name = value["name"].strip()
    if not name:
        raise InvalidInputError("name must not be empty")
    log.info(f"greeting {{name}}")
    return {{"greeting": f"Hello, {{name}}!"}}
'''

_PY_TEST: Final = '''\
"""Tests of {name}: natively by default (fast, no build), or against the built component with
PLUGBOX_TEST_BACKEND=component (run `plugbox build` first)."""

from pathlib import Path

import pytest

from plugbox_sdk import InvalidInputError, NotFoundError, testing

HERE = Path(__file__).resolve().parent


@pytest.fixture
def plugin():
    harness = testing.load(HERE)
    yield harness
    harness.close()


def test_echo_returns_the_payload(plugin):
    assert plugin.call("echo", b"\\x00any bytes\\xff") == b"\\x00any bytes\\xff"


def test_greet(plugin):
    assert plugin.call_json("greet", {{"name": "Ada"}}) == {{"greeting": "Hello, Ada!"}}
    assert plugin.logs[-1].message == "greeting Ada"


def test_greet_rejects_an_empty_name(plugin):
    with pytest.raises(InvalidInputError, match="name must not be empty"):
        plugin.call_json("greet", {{"name": ""}})


def test_unknown_hook_is_not_found(plugin):
    with pytest.raises(NotFoundError):
        plugin.call("missing")
'''

_PY_README: Final = """\
# {name}

A plugbox plugin in Python: `app.py` registers the hooks with `plugbox_sdk`, `plugbox.json`
declares them and the permissions they need (`log`).

- `echo`: returns its payload unchanged.
- `greet`: `{{"name": "Ada"}}` in, `{{"greeting": "Hello, Ada!"}}` out; an empty name is
  `invalid-input`.

## Test, build, call

Needs plugbox, plugbox-sdk and componentize-py 0.25.1 (`python3 dev.py setup` in the plugbox
repository installs all three into its `.venv`). From the directory that holds `{name}/`:

```console
$ python -m pytest -q {name}/test_app.py
....                                                                     [100%]
4 passed
$ plugbox build {name}
checking app.py: importing it with plugbox_sdk (0.0 s)
app.py registers: echo, greet (0.1 s)
wrote .../{name}/plugin.pybundle (Python bundle, 1.0 KiB, 0 dependencies, sha256 ...); module.sha256 updated in plugbox.json (0.1 s)
$ plugbox call {name} greet --text '{{"name": "Ada"}}'
{{
  "greeting": "Hello, Ada!"
}}
$ PLUGBOX_TEST_BACKEND=component python -m pytest -q {name}/test_app.py
....                                                                     [100%]
4 passed
```

`plugbox build` writes a source bundle to `plugin.pybundle` (your modules, the pure-Python
dependencies listed in a `pyproject.toml` or `requirements.txt` beside `app.py`, and a lock of
their hashes) and its sha256 into `plugbox.json`; it rebuilds only when a source or a
dependency changed. The bundle runs on plugbox's one shared Python runtime, compiled once per
machine and user (docs/python-bundles.md in the plugbox repository; a manifest without
`"kind": "python-bundle"` builds an 18 MB componentize-py component instead). The native tests
run `app.py` in your CPython against a fake host that enforces `plugbox.json`; the component
run uses the real sandbox.

Rules of the sandbox: import only your own modules, your pure-Python dependencies and the
standard-library modules the runtime preloads (`plugbox build` names any other import with
file:line); call host services (`log`, `kv`, `http`, ...) from hooks or an
`@init` function, never at import time; there are no files, environment variables or sockets.
"""

_PY_GITIGNORE: Final = """\
# Built by `plugbox build`.
*.wasm
*.pybundle
*.wasm.tmp
*.pybuild.json
__pycache__/
"""

_RS_CARGO: Final = """\
[package]
name = "{crate}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
plugbox-sdk = {{ path = "{sdk}" }}

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A workspace of its own, so the crate also builds when created inside another workspace.
[workspace]
"""

_RS_LIB: Final = """\
//! {name}: a plugbox plugin in Rust.
//!
//! Hooks: `echo` returns its payload unchanged; `greet` takes `{{"name": "Ada"}}` and returns
//! `{{"greeting": "Hello, Ada!"}}`.

use plugbox_sdk::json::{{self, Value}};
use plugbox_sdk::{{hooks, log, Error, Result}};

/// `echo`: bytes in, the same bytes out.
fn echo(payload: Vec<u8>) -> Result<Vec<u8>> {{
    Ok(payload)
}}

/// The greeting for `name`: the pure part of `greet`, unit-tested natively.
pub fn greeting(name: &str) -> Result<String> {{
    let name = name.trim();
    if name.is_empty() {{
        return Err(Error::invalid_input("name must not be empty"));
    }}
    Ok(format!("Hello, {{}}!", name))
}}

/// `greet`: `{{"name": "Ada"}}` in, `{{"greeting": "Hello, Ada!"}}` out.
fn greet(input: Value) -> Result<Value> {{
    let name = input.require_str("name")?.trim().to_string();
    let text = greeting(&name)?;
    log::info(&format!("greeting {{}}", name));
    Ok(Value::object([("greeting", text)]))
}}

hooks! {{
    "echo" => echo,
    "greet" => json::handler(greet),
}}

#[cfg(test)]
mod tests {{
    use super::*;
    use plugbox_sdk::testing::Harness;

    #[test]
    fn greets_by_name() {{
        assert_eq!(greeting(" Ada ").unwrap(), "Hello, Ada!");
        assert_eq!(greeting("").unwrap_err().kind(), "invalid-input");
    }}

    /// The hooks as the host calls them (on-init, then on-hook), against the SDK's fake host,
    /// which grants exactly what plugbox.json requests.
    #[test]
    fn hooks_through_the_harness() {{
        let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR"))
            .start()
            .unwrap();
        assert_eq!(plugin.call("echo", b"any bytes").unwrap(), b"any bytes");
        let out = plugin
            .call_json("greet", &Value::object([("name", "Ada")]))
            .unwrap();
        assert_eq!(out["greeting"].as_str(), Some("Hello, Ada!"));
        assert_eq!(plugin.logs()[0].message, "greeting Ada");
        let err = plugin
            .call_json("greet", &Value::object([("name", "")]))
            .unwrap_err();
        assert_eq!(err.kind(), "invalid-input");
    }}

    /// Without the `log` permission the records are dropped (and counted as denied).
    #[test]
    fn logging_needs_the_log_permission() {{
        let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR"))
            .withhold("log")
            .start()
            .unwrap();
        plugin
            .call_json("greet", &Value::object([("name", "Ada")]))
            .unwrap();
        assert!(plugin.logs().is_empty());
        assert_eq!(plugin.denied(), ["log"]);
    }}
}}
"""

_RS_README: Final = """\
# {name}

A plugbox plugin in Rust, built on the plugbox Rust SDK (`plugbox-sdk`, a path dependency on
`{sdk}`).

- `echo`: returns its payload unchanged.
- `greet`: `{{"name": "Ada"}}` in, `{{"greeting": "Hello, Ada!"}}` out; an empty name is
  `invalid-input`.

## Test, build, call

Needs a Rust toolchain that targets `wasm32-unknown-unknown` (`python3 dev.py setup` in the
plugbox repository finds or installs one). From the directory that holds `{name}/`:

```console
$ cargo test --offline --manifest-path {name}/Cargo.toml
...
test tests::greets_by_name ... ok
test tests::hooks_through_the_harness ... ok
test tests::logging_needs_the_log_permission ... ok
$ plugbox build {name}
cargo build --offline --release --target wasm32-unknown-unknown (0.0 s)
...
$ plugbox call {name} greet --text '{{"name": "Ada"}}'
{{
  "greeting": "Hello, Ada!"
}}
$ plugbox call {name} echo --text 'any bytes'
any bytes
```

`cargo test` runs natively: `plugbox_sdk::testing::Harness` calls the hooks through the same
init and dispatch as the wasm exports, with the host services served by an in-memory fake host
that grants exactly what `plugbox.json` requests (a service it does not request answers
`denied`, with the runtime's message); see the SDK's README, "Testing".

`plugbox build` picks a toolchain that has the wasm32 standard library, runs cargo, copies the
module to `plugin.wasm`, writes its sha256 into `plugbox.json`, and fails if the hooks
`hooks!` registers differ from the manifest's `hooks`. By hand, with Debian's toolchain:
`RUSTC=/usr/bin/rustc /usr/bin/cargo build --offline --release --target wasm32-unknown-unknown`
(with a rustup toolchain that has the target: `cargo build --release --target
wasm32-unknown-unknown`), copy `target/wasm32-unknown-unknown/release/{lib}.wasm` to `plugin.wasm`, and put its
`sha256sum` into `module.sha256`.
"""

#: A lock file in format version 3: cargo keeps the version of the lock file it finds, and
#: Debian's cargo (rustc 1.63, the toolchain ``plugbox build`` falls back to) cannot read the
#: version 4 a newer cargo writes when the crate has none (as ``cargo test`` would, first).
_RS_LOCK: Final = """\
# This file is automatically @generated by Cargo.
# It is not intended for manual editing.
version = 3

[[package]]
name = "{crate}"
version = "0.1.0"
dependencies = [
 "plugbox-sdk",
]

[[package]]
name = "plugbox-sdk"
version = "{sdk_version}"
"""

_RS_GITIGNORE: Final = """\
/target/
*.wasm
# Left by a failed `plugbox build` (the previous module and the failure's record).
*.wasm.stale
*.wasm.stale.json
"""


# ------------------------------------------------------------------------------------- helpers


def rust_sdk_dir() -> Path:
    """The ``sdk-rust`` directory a new Rust plugin depends on (see the module docstring).

    Raises:
        UsageError: neither ``$PLUGBOX_SDK_RUST`` nor a checkout's ``sdk-rust`` exists.
    """
    env = os.environ.get("PLUGBOX_SDK_RUST")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "Cargo.toml").is_file():
            raise UsageError(f"PLUGBOX_SDK_RUST={env}: no Cargo.toml there")
        return path
    checkout = Path(__file__).resolve().parents[3] / "sdk-rust"  # runtime/plugbox/authoring/
    if (checkout / "Cargo.toml").is_file():
        return checkout
    raise UsageError(
        "cannot find the plugbox Rust SDK: set PLUGBOX_SDK_RUST to its directory (sdk-rust in "
        "the plugbox repository)"
    )


def _sdk_version(sdk: Path) -> str:
    """The ``package.version`` of the Rust SDK at ``sdk`` (for the new crate's Cargo.lock).

    Raises:
        UsageError: its Cargo.toml is unreadable or has no version.
    """
    try:
        with (sdk / "Cargo.toml").open("rb") as f:
            version = tomllib.load(f).get("package", {}).get("version")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read the Rust SDK's {sdk / 'Cargo.toml'}: {exc}") from exc
    if not isinstance(version, str):
        raise UsageError(f"the Rust SDK's {sdk / 'Cargo.toml'} has no package.version")
    return version


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"invalid plugin name {name!r}: 1-64 characters, lowercase letters, digits, '.', "
            "'_' or '-', starting with a letter (e.g. hello-plugin)"
        )


def _write(files: dict[str, str], root: Path) -> None:
    for rel, text in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")


def new_plugin(
    name: str, lang: Literal["python", "rust"] | str, directory: str | os.PathLike[str] = "."
) -> Path:
    """Create the plugin folder ``directory/name`` for ``lang``; returns its path.

    Raises:
        UsageError: a bad name or language, the folder exists and is not empty, or (Rust)
            the Rust SDK cannot be found.
    """
    _check_name(name)
    if lang not in LANGS:
        raise UsageError(f"unknown language {lang!r}; plugbox new supports {', '.join(LANGS)}")
    root = Path(directory) / name
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"{root} already exists and is not empty; choose another name or place")
    if lang == "python":
        files = {
            "app.py": _PY_APP.format(name=name),
            MANIFEST_FILENAME: _MANIFEST.format(
                name=name, description="Echoes bytes and greets people (Python).",
                module='    "kind": "python-bundle",\n    "path": "plugin.pybundle",\n',
                sha=_PLACEHOLDER_SHA, fuel=5_000_000_000, memory=128 << 20, deadline=10_000,
            ),
            "test_app.py": _PY_TEST.format(name=name),
            "README.md": _PY_README.format(name=name),
            ".gitignore": _PY_GITIGNORE,
        }
    else:
        sdk = rust_sdk_dir()
        crate = re.sub(r"[^a-z0-9_-]", "-", name)
        files = {
            "Cargo.toml": _RS_CARGO.format(crate=crate, sdk=sdk.as_posix()),
            "Cargo.lock": _RS_LOCK.format(crate=crate, sdk_version=_sdk_version(sdk)),
            "src/lib.rs": _RS_LIB.format(name=name),
            MANIFEST_FILENAME: _MANIFEST.format(
                name=name, description="Echoes bytes and greets people (Rust).",
                module='    "path": "plugin.wasm",\n', sha=_PLACEHOLDER_SHA, fuel=100_000_000, memory=16 << 20, deadline=2_000,
            ),
            "README.md": _RS_README.format(name=name, sdk=sdk.as_posix(),
                                           lib=crate.replace("-", "_")),
            ".gitignore": _RS_GITIGNORE,
        }
    root.mkdir(parents=True, exist_ok=True)
    _write(files, root)
    return root


# --------------------------------------------------------------------------------- rust builds


def _cargo_build(cmd: list[str], crate_dir: Path, env: dict[str, str], timeout: float,
                 plugin: str, built: Path) -> bytes:
    """Run the cargo build ``cmd``; the module's bytes.

    Raises:
        BuildError: cargo failed or timed out, or did not write ``built``.
    """
    try:
        proc = subprocess.run(cmd, cwd=crate_dir, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"cargo build of {crate_dir} took longer than {timeout:g}s",
                         plugin=plugin) from exc
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        # The first compiler error leads, so one-line summaries (the stale-build notice) say
        # what broke.
        first = next((line.strip() for line in lines if line.startswith("error")), None)
        tail = "\n".join(lines[-40:])
        raise BuildError(
            f"cargo build of {crate_dir} failed (exit {proc.returncode})"
            f"{': ' + first if first else ''}\n  {' '.join(cmd)}\n{tail}",
            plugin=plugin,
        )
    if not built.is_file():
        raise BuildError(f"cargo built {crate_dir} but {built} is missing: is the crate a "
                         "cdylib?", plugin=plugin)
    return built.read_bytes()


def build_rust_crate(
    path: Path,
    *,
    progress: Progress | None = None,
    out_dir: Path | None = None,
    timeout: float = 1800,
) -> Path:
    """Build the single-crate Rust plugin in ``path`` (``Cargo.toml`` + ``plugbox.json``).

    The module goes to the manifest's ``module.path`` and its sha256 into the manifest (or,
    with ``out_dir``, both are staged there and ``path`` is left untouched). cargo's own
    incremental build makes an unchanged crate cheap to rebuild. Returns the module's path.

    Raises:
        ManifestError: the manifest is missing or invalid.
        UsageError: no Cargo.toml or no wasm32 toolchain.
        BuildError: cargo failed, or the hooks the module registers (its ``plugbox:hooks``
            section) differ from the manifest's ``hooks``. The previous module is then moved
            to ``<module>.stale`` and the failure recorded in ``<module>.stale.json``
            (:func:`plugbox.authoring._build.mark_failed_build`, as for Python plugins), so
            ``plugbox call`` reports the build as stale instead of running the old module;
            the next successful build removes both.
    """
    import time

    report = progress or (lambda _message: None)
    started = time.monotonic()
    manifest = load_manifest(Path(path))
    crate_dir = manifest.directory
    cargo_toml = crate_dir / "Cargo.toml"
    if not cargo_toml.is_file():
        raise UsageError(f"{crate_dir}: no Cargo.toml")
    with cargo_toml.open("rb") as f:
        cargo_doc = tomllib.load(f)
    package = cargo_doc.get("package", {}).get("name")
    if not isinstance(package, str):
        raise UsageError(f"{cargo_toml}: no package.name")
    lib = cargo_doc.get("lib", {}).get("name") or package.replace("-", "_")
    cargo, rustc = find_rust_toolchain()
    env = dict(os.environ, RUSTC=rustc)
    env.pop("CARGO_BUILD_TARGET", None)
    target_dir = Path(env.get("CARGO_TARGET_DIR") or crate_dir / "target")
    cmd = [cargo, "build", "--offline", "--release", "--target", WASM_TARGET,
           "--manifest-path", str(cargo_toml)]
    dest_root = crate_dir if out_dir is None else Path(out_dir).resolve()
    dest = dest_root / manifest.module_path.relative_to(crate_dir)
    report(f"cargo build --offline --release --target {WASM_TARGET} "
           f"({time.monotonic() - started:.1f} s)")
    try:
        data = _cargo_build(cmd, crate_dir, env, timeout, manifest.name,
                            target_dir / WASM_TARGET / "release" / f"{lib}.wasm")
        check_module_hooks(manifest.name, data, list(manifest.hooks))
    except BuildError as exc:
        # As the Python build does: the old module no longer matches the sources, so it is
        # moved aside and `plugbox call` says the build is stale instead of running it.
        mark_failed_build(dest, manifest.name, crate_dir, exc)
        raise
    clear_failed_build(dest)
    digest = hashlib.sha256(data).hexdigest()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    _write_manifest_sha(manifest.path, dest_root / MANIFEST_FILENAME, digest)
    if out_dir is not None and (crate_dir / "README.md").is_file():
        shutil.copyfile(crate_dir / "README.md", dest_root / "README.md")
    report(f"wrote {dest} ({len(data)} bytes, sha256 {digest[:16]}...); module.sha256 updated "
           f"({time.monotonic() - started:.1f} s)")
    return dest
