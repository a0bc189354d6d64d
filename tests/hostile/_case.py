"""The case table and what a case builder gets to work with (:class:`Env`)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

import plugbox
from plugbox._policy import Policy
from tests.conftest import write_plugin

#: ``expect`` entry for "the runtime must survive this and the case's own checks pass".
OK = "ok"


@dataclass(frozen=True)
class Case:
    """One hostile input. ``run(env)`` builds and launches the attack in the child; the outcome
    (its return, or the exception it raises) must be one of ``expect``: plugbox error classes,
    or :data:`OK`. ``check(error)``, when given, asserts more about the error raised (message
    shape, elapsed time). ``timeout`` (seconds) and ``rss_mib`` (peak host RSS growth) bound
    the child; ``rust`` marks cases that need the built Rust samples."""

    id: str
    section: str
    run: Callable[[Env], object]
    expect: tuple[type[BaseException] | str, ...]
    timeout: float = 10.0
    rss_mib: int = 200
    rust: bool = False
    check: Callable[[BaseException], None] | None = None


CASES: dict[str, Case] = {}


def case(
    id: str,
    section: str,
    *expect: type[BaseException] | str,
    timeout: float = 10.0,
    rss_mib: int = 200,
    rust: bool = False,
    check: Callable[[BaseException], None] | None = None,
) -> Callable[[Callable[[Env], object]], Callable[[Env], object]]:
    """Register the decorated builder as case ``id`` (ids are unique across the corpus)."""

    def register(fn: Callable[[Env], object]) -> Callable[[Env], object]:
        add(Case(id, section, fn, tuple(expect) or (OK,), timeout, rss_mib, rust, check))
        return fn

    return register


def add(c: Case) -> None:
    """Register ``c``; used directly by table-driven builder modules."""
    if c.id in CASES:
        raise ValueError(f"duplicate hostile case id {c.id!r}")
    CASES[c.id] = c


def test_policy(**kw: Any) -> Policy:
    """The corpus' default host policy: the tests' policy (loopback HTTP) plus ``kw``."""
    return Policy(**{"http_hosts": ("127.0.0.1:*",), **kw})


@dataclass
class Env:
    """What a case builder works with, inside the child: a private temp dir, the session's
    compiled-artifact cache, a lazily created default :class:`plugbox.Runtime` and helpers to
    stage modules as plugins."""

    tmp: Path
    cache_dir: Path
    rust: dict[str, Path] = field(default_factory=dict)
    default: plugbox.Runtime | None = None
    extra: list[plugbox.Runtime] = field(default_factory=list)
    _names: itertools.count = field(default_factory=itertools.count)

    def runtime(self) -> plugbox.Runtime:
        """The default runtime (created on first use; the echo check reuses it if open)."""
        if self.default is None:
            self.default = plugbox.Runtime(state_dir=self.tmp / "state", cache_dir=self.cache_dir,
                                           policy=test_policy())
        return self.default

    def new_runtime(self, **kw: Any) -> plugbox.Runtime:
        """Another runtime (own state dir unless given), closed when the case ends."""
        kw.setdefault("state_dir", self.tmp / f"state{next(self._names)}")
        kw.setdefault("cache_dir", self.cache_dir)
        kw.setdefault("policy", test_policy())
        rt = plugbox.Runtime(**kw)
        self.extra.append(rt)
        return rt

    def plugin(self, module: bytes | str, **manifest: Any) -> Path:
        """Stage ``module`` (wasm bytes or WAT text) as a plugin dir with a valid manifest."""
        wasm = wasmtime.wat2wasm(module) if isinstance(module, str) else module
        return write_plugin(self.tmp / f"plugin{next(self._names)}", bytes(wasm), **manifest)

    def load(self, module: bytes | str, *, config: dict[str, Any] | None = None,
             mode: str = "persistent", runtime: plugbox.Runtime | None = None,
             **manifest: Any) -> plugbox.Plugin:
        """Stage ``module`` and load it into ``runtime`` (default: the default runtime)."""
        rt = runtime or self.runtime()
        return rt.load(self.plugin(module, **manifest), config=config,
                       mode=mode)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close every runtime the case made (the default one is left for the echo check)."""
        for rt in self.extra:
            try:
                rt.close()
            except Exception:  # a case may have broken it on purpose; the echo check decides
                pass


def timed(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and return its result; whatever it raises, it must end within ``seconds``."""
    started = time.monotonic()
    try:
        return fn()
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"took {elapsed:.2f} s (bound {seconds} s)"
