"""Shared fixtures: sample plugins built from source once per run, runtimes in temp dirs, and
hand-written WAT modules staged as plugins."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import plugbox
from plugbox._policy import Policy

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def rust_plugins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every sample in sample-plugins/rust, built from source with cargo and staged (module +
    manifest with its real sha256) in a temp dir. name -> plugin directory."""
    from plugbox.authoring._build import build_rust_plugins

    out = tmp_path_factory.mktemp("rust-plugins")
    return build_rust_plugins(REPO / "sample-plugins" / "rust", out)


#: The Python samples the tests build (staged name -> folder under sample-plugins/python).
PYTHON_SAMPLES = {"py-echo": "echo", "text-tools": "text-tools", "kv-notes": "kv-notes",
                  "py-fetcher": "py-fetcher"}


@pytest.fixture(scope="session")
def built_samples() -> dict[str, Path]:
    """The Python samples built from source with ``plugbox build`` (componentize-py), once per
    run and cached under .build/pytest-pybuild while their sources are unchanged.
    name -> staged plugin directory."""
    from plugbox.authoring import _pybuild

    out = {}
    for name, folder in PYTHON_SAMPLES.items():
        module = _pybuild.build_python_plugin(REPO / "sample-plugins" / "python" / folder,
                                              out_dir=REPO / ".build" / "pytest-pybuild" / name)
        out[name] = module.parent
    return out


@pytest.fixture(params=[True, False], ids=["c", "ctypes"])
def accel(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run the test on the C accelerator's call path and on the pure-ctypes twin."""
    from plugbox.engine import _fastpath

    if request.param and not _fastpath.ACCELERATED:
        pytest.skip("accelerator not built (no C compiler at install time)")
    _fastpath.use_accelerator(request.param)
    try:
        yield request.param
    finally:
        _fastpath.use_accelerator(True)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compiled-artifact cache shared by the run's runtimes (compiling is the slow part)."""
    return tmp_path_factory.mktemp("artifact-cache")


@pytest.fixture
def policy() -> Policy:
    """The tests' host policy: loopback HTTP allowed, everything else default."""
    return Policy(http_hosts=("127.0.0.1:*",))


@pytest.fixture
def runtime(tmp_path: Path, cache_dir: Path, policy: Policy) -> Iterator[plugbox.Runtime]:
    with plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=cache_dir, policy=policy) as rt:
        yield rt


def write_plugin(
    directory: Path,
    module: bytes,
    *,
    name: str = "wat-plugin",
    hooks: tuple[str, ...] = ("run",),
    **manifest: Any,
) -> Path:
    """Stage ``module`` as a plugin in ``directory`` with a valid manifest; returns the dir."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plugin.wasm").write_bytes(module)
    doc: dict[str, Any] = {
        "manifest_version": 1,
        "name": name,
        "version": "0.1.0",
        "abi": "1.0",
        "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(module).hexdigest()},
        "hooks": list(hooks),
    }
    doc.update(manifest)
    (directory / "plugbox.json").write_text(json.dumps(doc, indent=2))
    return directory


#: ``cabi_realloc`` over a bump heap at ``$heap`` (a global the module defines), growing memory
#: as needed; ``{prologue}`` runs first. Shared by the WAT modules of the tests.
BUMP_REALLOC = """
  (func $alloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32) (local $need i32)
    {prologue}
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.set $need (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $need) (i32.const 16))
                                              (i32.const 1))) (i32.const -1))
              (then unreachable))))
    (local.get $p))
"""

# A minimal ABI-conforming module: a bump allocator reset by post-return, and hooks chosen by
# the length of the hook name so the WAT stays short. ``{body}`` computes the on-hook result.
WAT_TEMPLATE = """
(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $count (mut i32) (i32.const 0))
""" + BUMP_REALLOC.format(prologue="") + """  (func (export "on-hook") (param $hp i32) (param $hl i32) (param $pp i32) (param $pl i32)
        (result i32)
    {body})
  (func (export "cabi_post_on-hook") (param i32)
    (global.set $heap (i32.const 4096)))
)
"""

# on-hook body: count calls in a global, return ok(4-byte little-endian count).
COUNTER_BODY = """
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 64) (global.get $count))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 64))
    (i32.store (i32.const 24) (i32.const 4))
    (i32.const 16)
"""

ECHO_BODY = """
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get $pp))
    (i32.store (i32.const 24) (local.get $pl))
    (i32.const 16)
"""


def wat_module(body: str, imports: str = "") -> bytes:
    """Compile the template with ``body`` as on-hook to wasm bytes."""
    return wasmtime.wat2wasm(WAT_TEMPLATE.format(body=body, imports=imports))


@pytest.fixture
def wat_plugin(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``wat_plugin(body, name=..., hooks=..., **manifest)`` -> plugin dir."""
    counter = iter(range(1000))

    def make(body: str, *, imports: str = "", **manifest: Any) -> Path:
        return write_plugin(tmp_path / f"wat{next(counter)}", wat_module(body, imports),
                            **manifest)

    return make


class _LocalHandler(BaseHTTPRequestHandler):
    """The tests' HTTP endpoint. ``/slow`` answers after 2 s, ``/missing`` is a 404,
    ``/redirect-in`` redirects to ``/hello`` on the same server, ``/redirect-out`` to a host no
    test allows; anything else answers JSON naming the path and two request headers."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path in ("/redirect-in", "/redirect-out"):
            self.send_response(302)
            self.send_header("location", "/hello" if self.path == "/redirect-in"
                             else "http://evil.example.com/")
            self.end_headers()
            return
        if self.path.startswith("/slow"):
            time.sleep(2)
        body = json.dumps({"path": self.path, "rid": self.headers.get("x-request-id"),
                           "ua": self.headers.get("user-agent")}).encode()
        try:
            self.send_response(404 if self.path == "/missing" else 200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a /slow client gave up at its deadline, as its test intends

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def http_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (port chosen by the OS) for the run; its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _LocalHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


#: What each hook of the Rust ``hostile`` sample must raise: (hook, call options, error).
HOSTILE_EXPECTATIONS: list[tuple[str, dict[str, int], type[plugbox.PluginCallError]]] = [
    ("loop", {}, plugbox.FuelExhausted),
    ("loop", {"fuel": 10**15, "deadline_ms": 100}, plugbox.DeadlineExceeded),
    ("bomb", {}, plugbox.MemoryLimitExceeded),
    ("recurse", {}, plugbox.StackOverflow),
    ("bad-result-ptr", {}, plugbox.AbiViolation),
    ("bad-result-len", {}, plugbox.AbiViolation),
    ("bad-tag", {}, plugbox.AbiViolation),
    ("bad-error-utf8", {}, plugbox.AbiViolation),
    ("bad-host-ptr", {}, plugbox.AbiViolation),
    ("bad-host-utf8", {}, plugbox.AbiViolation),
]



# -- PostgreSQL: a real server for the session (tests/_pg.py) --------------------------------

_pg_started: dict[str, float] = {}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL server started for this session (initdb in a temp dir, 127.0.0.1 only);
    skips with the reason when PostgreSQL or psycopg is missing."""
    from tests import _pg

    reason = _pg.missing_reason()
    if reason is not None:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    server = _pg.start_server()
    _pg_started["start_s"] = server.started_in
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return str(pg_server.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def kv_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A plugin kv store on each backend: the SQLite KvStore in tmp_path, and PgKvStore on a
    fresh PostgreSQL database (skipped with the reason when PostgreSQL is missing)."""
    if request.param == "sqlite":
        from plugbox.services._kvstore import KvStore

        store: Any = KvStore(tmp_path / "state" / "kv.sqlite3")
    else:
        from plugbox.services._kvstore_pg import PgKvStore

        store = PgKvStore(request.getfixturevalue("pg_url"))
    yield store
    store.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "start_s" in _pg_started:
        terminalreporter.write_line(
            f"PostgreSQL test server: initdb + start took {_pg_started['start_s']:.2f} s")


# -- PluginHost tests ---------------------------------------------------------------------

def const_body(text: str) -> tuple[str, str]:
    """(body, module-level fields) of a WAT on-hook returning ``text`` whatever the payload."""
    data = text.encode()
    escaped = "".join(f"\\{b:02x}" for b in data)
    body = f"""
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 1024))
    (i32.store (i32.const 24) (i32.const {len(data)}))
    (i32.const 16)"""
    return body, f'(data (i32.const 1024) "{escaped}")'


@pytest.fixture
def host(tmp_path: Path, cache_dir: Path) -> Iterator[plugbox.PluginHost]:
    """A PluginHost on a fresh state dir sharing the session's compiled cache."""
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as h:
        yield h


@pytest.fixture
def const(tmp_path: Path) -> Callable[..., Path]:
    """``const(name, text, **manifest)``: a WAT plugin whose hook ``run`` returns ``text``."""
    def build(name: str, text: str, **fields: Any) -> Path:
        body, data = const_body(text)
        return write_plugin(tmp_path / "plugins" / name, wat_module(body, data), name=name,
                            hooks=("run",), **fields)
    return build


# -- Rust plugins built from source ----------------------------------------------------------

RUST_WORKSPACE = """[workspace]
members = ["plugbox-sdk", "{name}"]
resolver = "2"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"""

RUST_CRATE = """[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
rust-version = "1.63"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
plugbox-sdk = {{ path = "../plugbox-sdk" }}
"""


def build_rust_crate(factory: pytest.TempPathFactory, name: str, lib_rs: str,
                     hooks: list[str], abi: str = "1.0") -> Path:
    """Build a one-crate cargo workspace (``lib_rs`` with the SDK) into a staged plugin
    ``name`` declaring ``hooks``; skips the test when no Rust toolchain for wasm32 is here."""
    from plugbox.authoring._build import build_rust_plugins, find_rust_toolchain

    try:
        find_rust_toolchain()
    except plugbox.UsageError as exc:
        pytest.skip(f"no Rust toolchain for wasm32-unknown-unknown: {exc}")
    workspace = factory.mktemp(name)
    (workspace / "Cargo.toml").write_text(RUST_WORKSPACE.format(name=name))
    os.symlink(REPO / "sdk-rust", workspace / "plugbox-sdk")
    crate = workspace / name
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text(RUST_CRATE.format(name=name))
    (crate / "src" / "lib.rs").write_text(lib_rs)
    (crate / "plugbox.json").write_text(json.dumps({
        "manifest_version": 1, "name": name, "version": "0.1.0", "abi": abi,
        "module": {"path": "plugin.wasm", "sha256": "0" * 64}, "hooks": hooks}))
    out = factory.mktemp(f"{name}-out")
    return build_rust_plugins(workspace, out, target_dir=workspace / "target")[name]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (failing the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
