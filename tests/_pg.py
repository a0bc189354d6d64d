"""A real PostgreSQL server for the tests: ``initdb`` into a temporary directory, listening on
127.0.0.1 only (on a free port; its unix socket stays in that directory), stopped at the end
of the session. Used by the ``pg_server`` / ``pg_url`` fixtures in tests/conftest.py.

Debian keeps the server programs in /usr/lib/postgresql/<version>/bin (not on PATH); the
newest version found there, else ``initdb`` on PATH, is used. PostgreSQL refuses to run as
root, so a root test run starts it as the ``postgres`` user (Debian's package creates it),
with the data directory owned by that user. Without the programs, or without psycopg, the
fixtures skip with the reason (pytest's ``-ra`` prints it).

Start-up is kept to a few seconds: ``--no-sync``, ``fsync=off`` and trust authentication for
the one superuser (the server listens on loopback only and lives for one test session).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The superuser initdb creates; tests connect as it over TCP with trust authentication.
SUPERUSER = "plugbox"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        bin_dir = Path(found).resolve().parent
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    return None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return ("psycopg is not installed (pip install 'plugbox[postgres]'; "
                "`python3 dev.py setup` does it)")
    if find_bin_dir() is None:
        return ("PostgreSQL's server programs (initdb, pg_ctl) were not found in "
                "/usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql; "
                "`python3 dev.py setup` does it)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return ("the tests run as root, which PostgreSQL refuses, and there is no "
                    "`postgres` user to run it as (Debian's postgresql package creates one)")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running server; :meth:`url` names one of its databases."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None
    started_in: float = 0.0
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *args: str) -> list[str]:
        if self.run_as is None:
            return list(args)
        return ["runuser", "-u", self.run_as, "--", *args]

    def _run(self, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}{tail}")

    def start(self) -> None:
        started = time.monotonic()
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions")
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-p {self.port}",
            f"-c unix_socket_directories={self.root}",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=100", "-c shared_buffers=16MB",
        ])
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
                  str(self.root / "server.log"), "-o", options, "-w", "-t", "60", "start")
        self.started_in = time.monotonic() - started

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                      "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def start_server() -> PgServer:
    """initdb + start; the caller stops it."""
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    run_as = "postgres" if os.geteuid() == 0 else None
    # Not under pytest's tmp dir: that is private to the test user (mode 700), and the server
    # may run as another user.
    root = Path(tempfile.mkdtemp(prefix="plugbox-pg-"))
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PgServer(bin_dir=bin_dir, root=root, port=_free_port(), run_as=run_as)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server
