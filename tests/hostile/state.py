"""The runtime's own resources and state (section 7), plugin identity (section 8) and one
verdict for inspect, verify and load (section 9)."""

from __future__ import annotations

import contextlib
import gc
import io
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plugbox
from plugbox import CapabilityError, DeadlineExceeded, PlugboxError, UsageError
from plugbox.cli._main import main as cli_main
from plugbox.trust._signing import SecretKey, sign_bytes
from plugbox.trust._trust import PRIMARY_SIGNATURE

from ._case import OK, Case, Env, add, test_policy, timed
from ._wat import ECHO, OK_EMPTY, data, imp, module, ret_ok

S7 = "7 runtime resources and state"
S8 = "8 identity is the host's"
S9 = "9 one verdict for inspect, verify and load"
PAYLOAD = b"state case \x00\xff"


def _case(name: str, section: str, run: Callable[[Env], object], *expect: Any,
          timeout: float = 10.0, rss_mib: int = 200) -> None:
    add(Case(name, section, run, tuple(expect) or (OK,), timeout, rss_mib))


def _echo_on(env: Env, rt: plugbox.Runtime) -> None:
    got = rt.load(env.plugin(module())).call("run", PAYLOAD)
    assert got == PAYLOAD, got[:40]


# -- many runtimes, dropped runtimes, failed constructors --------------------------------------

def _many_runtimes(env: Env) -> None:
    """40 runtimes coexist (or the 41st-style failure is typed): never an abort."""
    runtimes = [env.new_runtime() for _ in range(40)]
    _echo_on(env, runtimes[-1])


def _dropped(env: Env) -> None:
    """Runtimes dropped without close() release their ticker threads (and reservations)."""
    before = threading.active_count()
    for i in range(50):
        rt = plugbox.Runtime(state_dir=env.tmp / f"drop{i}", cache_dir=env.cache_dir)
        del rt
    gc.collect()
    after = threading.active_count()
    assert after <= before + 2, f"{after - before} threads left by 50 dropped runtimes"


def _failing_constructor(env: Env) -> None:
    """A constructor that fails (the database path is a directory) releases what it made;
    retried 40 times it must keep failing typed, not abort the process."""
    state = env.tmp / "bad-state"
    (state / "plugbox.sqlite3").mkdir(parents=True)
    errors = []
    for _ in range(40):
        try:
            plugbox.Runtime(state_dir=state, cache_dir=env.cache_dir)
        except BaseException as exc:  # noqa: BLE001 - classified below
            errors.append(exc)
    assert len(errors) == 40, "a Runtime opened a directory as its database"
    raise errors[-1]


def _locked(env: Env) -> None:
    env.runtime()
    plugbox.Runtime(state_dir=env.tmp / "state", cache_dir=env.cache_dir)


_case("runtimes-40-coexist", S7, _many_runtimes, OK, PlugboxError, timeout=40, rss_mib=400)
_case("runtimes-50-dropped-without-close", S7, _dropped, OK, timeout=40, rss_mib=300)
_case("runtime-failing-constructor-retried-40x", S7, _failing_constructor, PlugboxError,
      timeout=40)
_case("runtime-database-locked-by-another", S7, _locked, PlugboxError, timeout=15)


# -- state failures are PlugboxErrors with the path ------------------------------------------

def _state(prepare: Callable[[Path], Path | None], *, use: bool = False
           ) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        state = env.tmp / "st"
        state = prepare(state) or state
        rt = plugbox.Runtime(state_dir=state, cache_dir=env.cache_dir)
        env.extra.append(rt)
        if use:
            _kv_roundtrip(env, rt)

    return run


def _kv_roundtrip(env: Env, rt: plugbox.Runtime) -> None:
    wat = module(imports=imp("kv", "set") + imp("kv", "get"), extra=data(512, b"k"), body=(
        "(call $kv.set (i32.const 512) (i32.const 1) (local.get $pp) (local.get $pl) "
        "(i32.const 256)) (call $kv.get (i32.const 512) (i32.const 1) (i32.const 256))"
        + ret_ok("(i32.load (i32.const 264))", "(i32.load (i32.const 268))")))
    got = rt.load(env.plugin(wat, permissions={"kv": {}})).call("run", PAYLOAD)
    assert got == PAYLOAD, got[:40]


def _file(p: Path) -> None:
    p.write_text("not a directory")


def _parent_file(p: Path) -> Path:
    p.write_text("x")
    return p / "inner"


def _db(content: bytes) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        p.mkdir()
        (p / "plugbox.sqlite3").write_bytes(content)

    return make


def _truncated(p: Path) -> None:
    p.mkdir()
    db = p / "plugbox.sqlite3"
    con = sqlite3.connect(db)
    con.execute("create table filler (x blob)")
    for _ in range(64):
        con.execute("insert into filler values (randomblob(4096))")
    con.commit()
    con.close()
    data_ = db.read_bytes()
    db.write_bytes(data_[: len(data_) // 2])


_case("state-dir-is-a-file", S7, _state(_file), PlugboxError)
_case("state-dir-parent-is-a-file", S7, _state(_parent_file), PlugboxError)
_case("database-is-a-directory", S7, _state(lambda p: (p / "plugbox.sqlite3").mkdir(parents=True)),
      PlugboxError)
_case("database-random-bytes", S7, _state(_db(bytes(range(256)) * 64), use=True), PlugboxError)
_case("database-text-file", S7, _state(_db(b"hello, this is not sqlite\n" * 100), use=True),
      PlugboxError)
_case("database-truncated", S7, _state(_truncated, use=True), PlugboxError)
_case("database-header-only", S7, _state(_db(b"SQLite format 3\x00" + b"\x00" * 84), use=True),
      PlugboxError)
_case("database-empty-file-is-fresh", S7, _state(_db(b""), use=True), OK, PlugboxError)


def _cache_is_file(env: Env) -> None:
    cache = env.tmp / "cache-file"
    cache.write_text("x")
    rt = env.new_runtime(cache_dir=cache)
    _echo_on(env, rt)


_case("cache-dir-is-a-file", S7, _cache_is_file, OK, PlugboxError)


def _tmp_swept(env: Env) -> None:
    cache = env.tmp / "swept-cache"
    cache.mkdir()
    for i in range(3):
        (cache / f".tmp-{i}abc.cwasm").write_bytes(b"\x00" * (1 << 20))
    rt = env.new_runtime(cache_dir=cache)
    _echo_on(env, rt)
    left = sorted(p.name for p in cache.glob(".tmp-*"))
    assert not left, f"leftover temporary files not swept on start: {left}"


_case("cache-leftover-tmp-files-swept", S7, _tmp_swept, OK)


def _swapped(env: Env) -> None:
    """Someone who can write the cache but not the state secret puts one module's compiled
    artifact (and whatever sits beside it) in place of another's: the host must not run the
    foreign native code. Layout-independent: files are matched by their suffix."""
    state = env.tmp / "swap-state"
    evil = module(extra=data(512, b"PWNED"), body=ret_ok("(i32.const 512)", "(i32.const 5)"))
    good_dir = env.plugin(module(), name="good")
    caches = {}
    for label, d in (("evil", env.plugin(evil, name="evil")), ("good", good_dir)):
        caches[label] = env.tmp / f"cache-{label}"
        with plugbox.Runtime(state_dir=state, cache_dir=caches[label]) as rt:
            rt.load(d).close()

    def by_suffix(directory: Path) -> dict[str, Path]:
        return {p.name.split(".", 1)[-1]: p for p in directory.iterdir()
                if not p.name.startswith(".")}

    evil_files, good_files = by_suffix(caches["evil"]), by_suffix(caches["good"])
    for suffix, target in good_files.items():
        if suffix in evil_files:
            shutil.copyfile(evil_files[suffix], target)
    with plugbox.Runtime(state_dir=state, cache_dir=caches["good"]) as rt:
        got = rt.load(good_dir).call("run", PAYLOAD)
    assert got == PAYLOAD, f"the host ran another module's cached native code: {got!r}"


_case("cache-artifact-swapped-for-another-modules", S7, _swapped, OK, PlugboxError)


def _damaged_artifact(damage: Callable[[bytes], bytes]) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        import hashlib

        cache = env.tmp / "dmg-cache"
        with plugbox.Runtime(state_dir=env.tmp / "dmg", cache_dir=cache) as rt:
            d = env.plugin(module())
            rt.load(d).close()
            path = rt.cache.path_for(plugbox.load_manifest(d).module_sha256)
        bad = damage(path.read_bytes())
        path.write_bytes(bad)
        path.with_name(path.name + ".sha256").write_text(hashlib.sha256(bad).hexdigest())
        with plugbox.Runtime(state_dir=env.tmp / "dmg", cache_dir=cache) as rt:
            got = rt.load(d).call("run", PAYLOAD)
        assert got == PAYLOAD, got[:40]

    return run


_case("cache-artifact-garbage-with-matching-digest", S7,
      _damaged_artifact(lambda b: bytes(range(256)) * 16), OK, PlugboxError)
_case("cache-artifact-truncated-with-matching-digest", S7,
      _damaged_artifact(lambda b: b[: len(b) // 2]), OK, PlugboxError)
_case("cache-artifact-bitflipped-code-with-matching-digest", S7,
      _damaged_artifact(lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF])
                        + b[len(b) // 2 + 1:]), OK, PlugboxError)


# -- absurd runtime and policy settings -------------------------------------------------------

SETTINGS: dict[str, Callable[[Env], object]] = {
    "runtime-max-wasm-stack-minus-1": lambda env: env.new_runtime(max_wasm_stack=-1),
    "runtime-pooled-instances-minus-1": lambda env: env.new_runtime(pooled_instances=-1),
    "policy-max-fuel-minus-1": lambda env: env.new_runtime(
        policy=test_policy(max_limits=plugbox.Limits(fuel=-1))),
    "policy-default-deadline-minus-1": lambda env: env.new_runtime(
        policy=test_policy(default_limits=plugbox.Limits(deadline_ms=-1))),
    "policy-max-memory-minus-1": lambda env: env.new_runtime(
        policy=test_policy(max_limits=plugbox.Limits(memory_bytes=-1))),
}
for _id, _fn in SETTINGS.items():
    _case(_id, S7, _fn, UsageError)


def _epoch_tick(ms: float) -> Callable[[Env], None]:
    """An odd epoch tick is refused, or deadlines still hold under it."""

    def run(env: Env) -> None:
        rt = env.new_runtime(epoch_tick_ms=ms)
        looper = rt.load(env.plugin(module(body="(loop $l (br $l))" + OK_EMPTY),
                                    limits={"fuel": 10_000_000_000}))
        timed(2.0, lambda: looper.call("run", b"", deadline_ms=100))

    return run


for _label, _ms in (("zero", 0), ("minus-1", -1), ("1ns", 1e-9), ("11-days", 1e9)):
    _case(f"runtime-epoch-tick-{_label}", S7, _epoch_tick(_ms), UsageError, DeadlineExceeded,
          timeout=10)


def _absurd_pool(env: Env) -> None:
    _echo_on(env, env.new_runtime(pooled_instances=10 ** 9))


def _absurd_stack(env: Env) -> None:
    _echo_on(env, env.new_runtime(max_wasm_stack=1 << 40))


_case("runtime-pooled-instances-1e9", S7, _absurd_pool, OK, PlugboxError, timeout=20)
_case("runtime-max-wasm-stack-1tib", S7, _absurd_stack, OK, PlugboxError)
_case("runtime-max-wasm-stack-4mib", S7,
      lambda env: _echo_on(env, env.new_runtime(max_wasm_stack=4 << 20)), OK, PlugboxError)


# -- section 8: a plugin's identity is what the host controls ---------------------------------

_SECRET_KV = module(imports=imp("kv", "set") + imp("kv", "get"), extra=data(512, b"secret"),
                    body=("(if (local.get $pl) (then (call $kv.set (i32.const 512) (i32.const 6)"
                          " (local.get $pp) (local.get $pl) (i32.const 256))))"
                          "(call $kv.get (i32.const 512) (i32.const 6) (i32.const 256))"
                          + ret_ok("(i32.load (i32.const 264))", "(i32.load (i32.const 268))")))


def signed(env: Env, wat: str, key: SecretKey, *, name: str, **manifest: Any) -> Path:
    """Stage ``wat`` as plugin ``name`` signed by ``key``."""
    d = env.plugin(wat, name=name, **manifest)
    (d / PRIMARY_SIGNATURE).write_text(
        sign_bytes((d / "plugbox.json").read_bytes(), key, trusted_comment="corpus").to_text())
    return d


def trusting(env: Env, *keys: SecretKey) -> plugbox.TrustPolicy:
    """A require-mode trust policy listing ``keys``."""
    trusted = env.tmp / "trusted"
    trusted.mkdir(exist_ok=True)
    for i, key in enumerate(keys):
        (trusted / f"k{i}.pub").write_text(key.public_key(f"k{i}").to_text())
    return plugbox.TrustPolicy(trusted, mode="require")


def _spoof(*, closed_first: bool, same_signer: bool = False,
           impostor: str = _SECRET_KV) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        alice, mallory = SecretKey.generate(), SecretKey.generate()
        state = env.tmp / "shared-state"
        rt = env.new_runtime(state_dir=state, trust=trusting(env, alice, mallory))
        real = rt.load(signed(env, _SECRET_KV, alice, name="counter", permissions={"kv": {}}))
        real.call("run", b"alice's secret")
        if closed_first:
            rt.close()
            rt = env.new_runtime(state_dir=state, trust=trusting(env, alice, mallory))
        fake = rt.load(signed(env, impostor, alice if same_signer else mallory, name="counter",
                              permissions={"kv": {}}))
        got = fake.call("run", b"")
        if same_signer:
            assert got == b"alice's secret", f"the same signer lost its data: {got!r}"
            return
        assert got != b"alice's secret", "a second signer read the first one's kv data"

    return run


_case("identity-second-signer-while-loaded", S8, _spoof(closed_first=False), PlugboxError)
_case("identity-second-signer-after-close", S8, _spoof(closed_first=True), PlugboxError)
_case("identity-same-signer-reloads", S8, _spoof(closed_first=True, same_signer=True), OK)


def _spoof_events(env: Env) -> None:
    """An impostor's events must not arrive as the real plugin's."""
    alice, mallory = SecretKey.generate(), SecretKey.generate()
    rt = env.new_runtime(trust=trusting(env, alice, mallory))
    emit = module(imports=imp("events", "emit"), extra=data(512, b"counter.changed"),
                  body="(call $events.emit (i32.const 512) (i32.const 15) (local.get $pp) "
                       "(local.get $pl) (i32.const 256))" + ECHO)
    perms = {"events": {"topics": ["counter.*"]}}
    rt.load(signed(env, emit, alice, name="counter", permissions=perms))
    rt.load(signed(env, emit, mallory, name="counter", permissions=perms))


_case("identity-second-signer-emits-as-first", S8, _spoof_events, PlugboxError)


# -- section 9: inspect says what load does ----------------------------------------------------

def _consistent(wat: str | Callable[[], str], **manifest: Any) -> Callable[[Env], None]:
    """``plugbox inspect`` must pass exactly the plugins ``Runtime.load`` accepts: the case
    then ends with load's own outcome."""

    def run(env: Env) -> None:
        d = env.plugin(wat() if callable(wat) else wat, **manifest)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli_main(["inspect", str(d)])
        said_ok = code == 0 or "passes every check" in out.getvalue()
        try:
            env.runtime().load(d).call("run", PAYLOAD)
        except PlugboxError:
            assert not said_ok, f"inspect passed (exit {code}) a plugin load refuses"
            raise
        assert said_ok, f"inspect refused (exit {code}) a plugin load accepts"

    return run


CONSISTENCY: dict[str, tuple[Callable[[Env], None], tuple[Any, ...]]] = {
    "inspect-kv-import-unrequested": (_consistent(module(imports=imp("kv", "get"))),
                                      (CapabilityError,)),
    "inspect-http-import-unrequested": (_consistent(module(imports=imp("http", "fetch"))),
                                        (CapabilityError,)),
    "inspect-log-import-unrequested": (_consistent(module(imports=imp("log", "log"))),
                                       (CapabilityError,)),
    "inspect-memory-min-above-limit": (
        _consistent(module(memory='(memory (export "memory") 2000)')), (PlugboxError,)),
    "inspect-memory-bytes-1": (_consistent(module(), limits={"memory_bytes": 1}),
                               (PlugboxError,)),
    "inspect-duplicate-import": (
        _consistent(module(imports=imp("log", "log", name="a") + imp("log", "log", name="b")),
                    permissions={"log": True}), (PlugboxError,)),
    "inspect-invalid-body": (_consistent(module(extra="(func (result i32) (i64.const 1))")),
                             (PlugboxError,)),
    "inspect-patch-level-import": (
        _consistent(module(imports=imp("log", "log", version="1.0.1")),
                    permissions={"log": True}), (OK,)),
    "inspect-plain-echo": (_consistent(module()), (OK,)),
}
for _id, (_fn, _expect) in CONSISTENCY.items():
    _case(_id, S9, _fn, *_expect)
