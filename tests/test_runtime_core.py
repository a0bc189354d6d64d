"""Runtime core against hand-written WAT modules: instance modes, the pool, the compiled cache,
limits, ABI violations and lifetimes. (Rust-built samples are exercised in test_samples.py.)"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import plugbox
from plugbox._policy import Policy
from tests.conftest import COUNTER_BODY, ECHO_BODY, wat_module, write_plugin

LOOP_BODY = "(loop $l (br $l)) (i32.const 16)"
RECURSE = "(func $r (param i32) (result i32) (i32.add (call $r (local.get 0)) (i32.const 1)))"
BOMB_BODY = """
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable
"""


def _count(raw: bytes) -> int:
    return int(struct.unpack("<I", raw)[0])


def test_echo_round_trips_payloads_of_every_size(runtime: plugbox.Runtime,
                                                 wat_plugin: Callable[..., Path]) -> None:
    plugin = runtime.load(wat_plugin(ECHO_BODY, hooks=("echo",)))
    for size in (0, 1, 16, 1024, 65536, 1 << 20, 3 << 20):
        payload = bytes(i % 251 for i in range(size))
        assert plugin.call("echo", payload) == payload
    assert plugin.call_json("echo", {"a": [1, 2]}) == {"a": [1, 2]}


def test_persistent_mode_keeps_state_and_fresh_mode_does_not(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    directory = wat_plugin(COUNTER_BODY)
    persistent = runtime.load(directory)
    fresh = runtime.load(directory, mode="fresh")
    assert [_count(persistent.call("run")) for _ in range(3)] == [1, 2, 3]
    assert [_count(fresh.call("run")) for _ in range(3)] == [1, 1, 1]


def test_unknown_hook_is_refused_before_entering_the_plugin(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(COUNTER_BODY))
    with pytest.raises(plugbox.UnknownHookError) as info:
        plugin.call("nope")
    assert info.value.plugin == "wat-plugin" and info.value.hook == "nope"
    assert "'run'" in str(info.value) or "run" in str(info.value)
    assert _count(plugin.call("run")) == 1  # the refused call never reached the guest


def test_concurrent_callers_get_separate_instances_from_a_bounded_pool(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(ECHO_BODY, hooks=("echo",),
                                     limits={"instances": 3}))
    errors: list[BaseException] = []

    def worker(tag: int) -> None:
        try:
            for i in range(300):
                payload = f"{tag}:{i}".encode() * (1 + i % 7)
                assert plugin.call("echo", payload) == payload
        except BaseException as exc:  # surface failures from threads
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert plugin._live <= 3  # never more instances than the pool allows


def test_fuel_exhaustion_is_typed_and_the_plugin_keeps_serving(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    looping = runtime.load(wat_plugin(LOOP_BODY, limits={"fuel": 1_000_000}))
    with pytest.raises(plugbox.FuelExhausted) as info:
        looping.call("run")
    err = info.value
    assert (err.plugin, err.hook, err.limit) == ("wat-plugin", "run", "fuel")
    assert "limits.fuel" in str(err)
    assert isinstance(err, plugbox.LimitExceeded) and isinstance(err, plugbox.PlugboxError)
    assert looping.instances_discarded == 1
    with pytest.raises(plugbox.FuelExhausted):
        looping.call("run")  # a replacement instance was made


def test_deadline_stops_a_loop_that_has_fuel_to_spare(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(LOOP_BODY, limits={"deadline_ms": 50}))
    with pytest.raises(plugbox.DeadlineExceeded) as info:
        plugin.call("run", fuel=10**15)
    assert info.value.limit == "deadline"
    assert "limits.deadline_ms" in str(info.value)


def test_deep_recursion_is_a_stack_overflow(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin("(drop (call $r (i32.const 1))) (i32.const 16)",
                                     imports=RECURSE))
    with pytest.raises(plugbox.StackOverflow) as info:
        plugin.call("run")
    assert info.value.limit == "stack"


def test_memory_bomb_hits_the_cap(runtime: plugbox.Runtime,
                                  wat_plugin: Callable[..., Path]) -> None:
    plugin = runtime.load(wat_plugin(BOMB_BODY, limits={"memory_bytes": 4 << 20}))
    with pytest.raises(plugbox.MemoryLimitExceeded) as info:
        plugin.call("run")
    assert info.value.limit == "memory"
    assert "limits.memory_bytes" in str(info.value)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("(i32.const 0x7ffffff0)", "result pointer"),
        ("(i32.const 18)", "misaligned"),
        ("(i32.store8 (i32.const 16) (i32.const 7)) (i32.const 16)", "discriminant 7"),
        ("(i32.store8 (i32.const 16) (i32.const 0)) (i32.store (i32.const 20) (i32.const 65000))"
         " (i32.store (i32.const 24) (i32.const 100000)) (i32.const 16)", "outside guest memory"),
        ("(i32.store8 (i32.const 16) (i32.const 1)) (i32.store8 (i32.const 20) (i32.const 9))"
         " (i32.const 16)", "unknown discriminant 9"),
        ("(i32.store8 (i32.const 16) (i32.const 1)) (i32.store8 (i32.const 20) (i32.const 4))"
         " (i32.store (i32.const 64) (i32.const 0xfffe)) (i32.store (i32.const 24) (i32.const 64))"
         " (i32.store (i32.const 28) (i32.const 2)) (i32.const 16)", "UTF-8"),
    ],
)
def test_abi_violations_in_results_are_typed(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path], body: str, fragment: str
) -> None:
    plugin = runtime.load(wat_plugin(body))
    with pytest.raises(plugbox.AbiViolation) as info:
        plugin.call("run")
    assert fragment in str(info.value)
    assert info.value.plugin == "wat-plugin" and info.value.hook == "run"


def test_guest_error_result_carries_kind_and_message(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    body = """
        (i32.store8 (i32.const 16) (i32.const 1)) (i32.store8 (i32.const 20) (i32.const 2))
        (i32.store (i32.const 64) (i32.const 0x21646162))  ;; "bad!"
        (i32.store (i32.const 24) (i32.const 64)) (i32.store (i32.const 28) (i32.const 4))
        (i32.const 16)
    """
    plugin = runtime.load(wat_plugin(body))
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("run")
    assert info.value.kind == "invalid-input" and info.value.detail == "bad!"
    assert plugin.instances_discarded == 0  # a clean error result keeps the instance


def test_a_trapping_plugin_does_not_disturb_another(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    good = runtime.load(wat_plugin(COUNTER_BODY, name="good"))
    bad = runtime.load(wat_plugin(LOOP_BODY, name="bad", limits={"fuel": 10_000}))
    assert _count(good.call("run")) == 1
    for _ in range(5):
        with pytest.raises(plugbox.FuelExhausted):
            bad.call("run")
    assert _count(good.call("run")) == 2


def test_compiled_cache_is_reused_and_corrupt_entries_are_rebuilt(
    tmp_path: Path, wat_plugin: Callable[..., Path]
) -> None:
    directory = wat_plugin(COUNTER_BODY)
    cache = tmp_path / "cache"
    with plugbox.Runtime(state_dir=tmp_path / "s1", cache_dir=cache) as rt:
        rt.load(directory)
        assert (rt.cache.hits, rt.cache.misses) == (0, 1)
    [entry] = list(cache.glob("*.cwasm"))
    with plugbox.Runtime(state_dir=tmp_path / "s2", cache_dir=cache) as rt:
        assert _count(rt.load(directory).call("run")) == 1
        assert (rt.cache.hits, rt.cache.misses) == (1, 0)
    blob = bytearray(entry.read_bytes())
    blob[-100] ^= 0xFF
    entry.write_bytes(bytes(blob))
    with plugbox.Runtime(state_dir=tmp_path / "s3", cache_dir=cache) as rt:
        assert _count(rt.load(directory).call("run")) == 1
        assert (rt.cache.hits, rt.cache.misses) == (0, 1)
    entry.write_bytes(b"not an artifact")
    with plugbox.Runtime(state_dir=tmp_path / "s4", cache_dir=cache) as rt:
        assert _count(rt.load(directory).call("run")) == 1
        assert rt.cache.misses == 1
    # A foreign entry whose HMAC matches (made with the cache's own key, which only this user
    # can read): wasmtime itself refuses it, and it is rebuilt.
    key = (tmp_path / "cache.key").read_bytes()

    def mac(data: bytes) -> str:
        return hmac.new(key, entry.name.encode() + b"\0" + data, hashlib.sha256).hexdigest()

    digest = entry.with_name(entry.name + ".hmac")
    entry.write_bytes(b"\x7fELF not a wasmtime artifact")
    digest.write_text(mac(entry.read_bytes()))
    with plugbox.Runtime(state_dir=tmp_path / "s5", cache_dir=cache) as rt:
        assert _count(rt.load(directory).call("run")) == 1
        assert (rt.cache.hits, rt.cache.misses) == (0, 1)
    digest.unlink()  # an entry without its HMAC is incomplete: rebuilt
    with plugbox.Runtime(state_dir=tmp_path / "s6", cache_dir=cache) as rt:
        rt.load(directory)
        assert (rt.cache.hits, rt.cache.misses) == (0, 1)
    assert digest.read_text() == mac(entry.read_bytes())
    # A plain sha256 beside a swapped artifact, as anyone who can write the directory could
    # make, is not enough.
    entry.write_bytes(b"\x7fELF not a wasmtime artifact")
    digest.write_text(hashlib.sha256(entry.read_bytes()).hexdigest())
    with plugbox.Runtime(state_dir=tmp_path / "s7", cache_dir=cache) as rt:
        assert _count(rt.load(directory).call("run")) == 1
        assert (rt.cache.hits, rt.cache.misses) == (0, 1)


def test_nothing_is_compiled_when_the_hash_does_not_match(tmp_path: Path) -> None:
    directory = write_plugin(tmp_path / "p", wat_module(COUNTER_BODY))
    (directory / "plugin.wasm").write_bytes(wat_module(ECHO_BODY))  # swapped module
    cache = tmp_path / "cache"
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache) as rt:
        with pytest.raises(plugbox.HashMismatchError):
            rt.load(directory)
        assert rt.cache.misses == 0
    assert not list(cache.glob("*.cwasm")) if cache.exists() else True


def test_policy_caps_are_enforced_at_load(tmp_path: Path,
                                          wat_plugin: Callable[..., Path]) -> None:
    directory = wat_plugin(COUNTER_BODY, limits={"fuel": 10**12})
    strict = Policy(max_limits=plugbox.Limits(fuel=10**9))
    with plugbox.Runtime(state_dir=tmp_path / "s", policy=strict) as rt:
        with pytest.raises(plugbox.PolicyViolationError) as info:
            rt.load(directory)
        assert "fuel" in str(info.value)


def test_monitoring_sees_calls_and_can_be_removed(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(LOOP_BODY, limits={"fuel": 10_000}))
    seen: list[tuple[str, str, str | None]] = []
    undo = runtime.add_call_monitoring(
        lambda rec: seen.append(("before", rec.hook, None)),
        lambda rec: seen.append(("after", rec.hook, type(rec.error).__name__)),
    )
    with pytest.raises(plugbox.FuelExhausted):
        plugin.call("run")
    undo()
    with pytest.raises(plugbox.FuelExhausted):
        plugin.call("run")
    assert seen == [("before", "run", None), ("after", "run", "FuelExhausted")]


def test_close_is_idempotent_and_use_after_close_is_a_usage_error(
    tmp_path: Path, wat_plugin: Callable[..., Path]
) -> None:
    rt = plugbox.Runtime(state_dir=tmp_path / "s")
    plugin = rt.load(wat_plugin(COUNTER_BODY))
    plugin.close()
    plugin.close()
    with pytest.raises(plugbox.UsageError):
        plugin.call("run")
    other = rt.load(wat_plugin(COUNTER_BODY))
    rt.close()
    rt.close()
    assert other.closed
    with pytest.raises(plugbox.UsageError):
        rt.load(wat_plugin(COUNTER_BODY))


def test_epoch_ticker_stops_on_close(tmp_path: Path) -> None:
    def threads() -> int:  # OS threads, so the native ticker counts too
        return len(os.listdir("/proc/self/task"))

    before = threads()
    rt = plugbox.Runtime(state_dir=tmp_path / "s")
    assert rt.engine.ticking and threads() == before + 1
    rt.close()
    assert not rt.engine.ticking and threads() == before


def test_limit_messages_quote_the_limits_in_force_for_the_call(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin(LOOP_BODY, limits={"fuel": 1_000_000, "deadline_ms": 1000}))
    with pytest.raises(plugbox.FuelExhausted) as fuel:
        plugin.call("run", fuel=12_345)
    assert "12,345 fuel" in str(fuel.value)
    with pytest.raises(plugbox.DeadlineExceeded) as deadline:
        plugin.call("run", fuel=10**15, deadline_ms=40)
    assert "40 ms" in str(deadline.value)


def test_trap_messages_name_the_trap_not_the_backtrace_header(
    runtime: plugbox.Runtime, wat_plugin: Callable[..., Path]
) -> None:
    plugin = runtime.load(wat_plugin("unreachable"))
    with pytest.raises(plugbox.GuestTrap) as info:
        plugin.call("run")
    assert "unreachable" in str(info.value)
    assert "error while executing" not in str(info.value)
