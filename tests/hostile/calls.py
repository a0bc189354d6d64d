"""Attacks made during calls: re-entrant host calls from ``cabi_realloc`` and subscribers,
recursion on small-stack threads (section 1), deadlines under load and closing during a call
(section 2), oversized host-service inputs, log floods, huge error messages and negative
offsets (section 5), and absurd per-call limits (section 7)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import plugbox
from plugbox import (
    AbiViolation,
    DeadlineExceeded,
    FuelExhausted,
    GuestError,
    PlugboxError,
    StackOverflow,
    UsageError,
)
from plugbox.engine._fastpath import use_accelerator

from ._case import OK, Case, Env, add, timed
from ._wat import ECHO, FORWARD_ERR, OK_EMPTY, data, grow_to, imp, module, ret_err, ret_ok

S1 = "1 host callbacks total, re-entrancy defined"
S2 = "2 deadlines hold"
S5 = "5 host-service inputs bounded"
S7 = "7 per-call limits"
PAYLOAD = b"hostile corpus \x00\xff payload"
LOOP = "(loop $l (br $l))"
BIG = 60 << 20  # 60 MiB: the guest's buffer for oversized inputs starts at 64 KiB
HIGH = {"memory_bytes": 300 << 20}


def _call(env: Env, wat: str, *, hook_payload: bytes = PAYLOAD, call: dict[str, Any] | None = None,
          config: dict[str, Any] | None = None, result: bytes | None = None,
          **manifest: Any) -> None:
    plugin = env.load(wat, config=config, **manifest)
    got = plugin.call("run", hook_payload, **(call or {}))
    assert result is None or got == result, f"returned {got[:60]!r}, expected {result[:60]!r}"


def _calls(name: str, section: str, wat: Callable[[], str], *expect: Any,
           check: Callable[[BaseException], None] | None = None, rss_mib: int = 200,
           timeout: float = 10.0, twin: bool = False, **kw: Any) -> None:
    """Register a load-then-call case; ``twin`` adds a ``-py`` copy run on the pure-ctypes
    call path instead of the C accelerator."""

    def run(env: Env, accelerated: bool = True) -> None:
        use_accelerator(accelerated)
        _call(env, wat(), **kw)

    add(Case(name, section, run, tuple(expect) or (OK,), timeout, rss_mib, check=check))
    if twin:
        add(Case(name + "-py", section, lambda env: run(env, False), tuple(expect) or (OK,),
                 timeout, rss_mib, check=check))


def unsigned_offsets(exc: BaseException) -> None:
    """Guest offsets print unsigned: no ``+-1`` and no negative addresses."""
    text = str(exc)
    assert not re.search(r"(\+-|0x-|\s-\d)", text), f"signed offset in {text!r}"


# -- section 1: cabi_realloc calling host services, re-entering ---------------------------------

def _reentrant(service: str, func: str, call: str, perms: dict[str, Any], *,
               armed_by_hook: bool = True, bounded: int = 0, setup: str = "") -> str:
    """A module whose cabi_realloc calls ``call`` (a host function that allocates its result
    in guest memory, so the host calls cabi_realloc again) before allocating. With
    ``armed_by_hook`` only allocations made after on-hook starts do so; ``bounded`` caps the
    nesting depth in the guest (0: unbounded)."""
    guard = "(if (global.get $armed) (then {inner}))" if armed_by_hook else "{inner}"
    inner = call
    if bounded:
        inner = (f"(if (i32.lt_u (global.get $depth) (i32.const {bounded})) (then "
                 f"(global.set $depth (i32.add (global.get $depth) (i32.const 1))) {call}))")
    return module(
        imports=imp(service, func) + (imp("kv", "set") if setup else ""),
        extra="(global $armed (mut i32) (i32.const 0))" + data(512, b"k"),
        realloc_prologue=guard.format(inner=inner),
        body=setup + "(global.set $armed (i32.const 1))" + call
             + "(global.set $armed (i32.const 0))" + ECHO,
    )


_KV_SET = ("(call $kv.set (i32.const 512) (i32.const 1) (i32.const 512) (i32.const 1) "
           "(i32.const 320))")
REENTRY = {
    "random": ("random", "bytes", "(call $random.bytes (i32.const 8) (i32.const 256))",
               {"random": True}, ""),
    "config-get-all": ("config", "get-all", "(call $config.get-all (i32.const 256))",
                       {"config": True}, ""),
    "config-get": ("config", "get", "(call $config.get (i32.const 512) (i32.const 1) "
                                    "(i32.const 256))", {"config": True}, ""),
    "kv-get": ("kv", "get", "(call $kv.get (i32.const 512) (i32.const 1) (i32.const 256))",
               {"kv": {}}, _KV_SET),
    "kv-list-keys": ("kv", "list-keys", "(call $kv.list-keys (i32.const 512) (i32.const 0) "
                                        "(i32.const 256))", {"kv": {}}, _KV_SET),
}
for _name, (_svc, _fn, _expr, _perms, _setup) in REENTRY.items():
    for _armed in (True, False):
        _calls(f"realloc-reenters-{_name}" + ("" if _armed else "-from-arguments"), S1,
               lambda s=_svc, f=_fn, e=_expr, p=_perms, st=_setup, a=_armed: _reentrant(
                   s, f, e, p, armed_by_hook=a, setup=st),
               StackOverflow, AbiViolation, permissions=_perms, config={"k": 1}, twin=True,
               rss_mib=150, timeout=15)
_calls("realloc-reenters-random-depth-3", S1,
       lambda: _reentrant("random", "bytes", REENTRY["random"][2], {"random": True}, bounded=3),
       OK, AbiViolation, permissions={"random": True}, result=PAYLOAD, twin=True)
for _svc, _fn, _expr, _perms in (
    ("log", "log", "(call $log.log (i32.const 2) (i32.const 512) (i32.const 1))", {"log": True}),
    ("clock", "now", "(drop (call $clock.now))", {"clock": True}),
    ("events", "emit", "(call $events.emit (i32.const 512) (i32.const 1) (i32.const 512) "
                       "(i32.const 1) (i32.const 288))", {"events": {"topics": ["*"]}}),
):
    _calls(f"realloc-calls-{_svc}-{_fn}", S1,
           lambda s=_svc, f=_fn, e=_expr, p=_perms: _reentrant(s, f, e, p),
           OK, AbiViolation, permissions=_perms, result=PAYLOAD)

_calls("post-return-calls-host-recursively", S1,
       lambda: module(imports=imp("random", "bytes"),
                      post_body="(call $random.bytes (i32.const 8) (i32.const 256))",
                      realloc_prologue="(call $random.bytes (i32.const 8) (i32.const 256))"),
       StackOverflow, AbiViolation, permissions={"random": True}, twin=True)
_calls("post-return-loops", S1, lambda: module(post_body=LOOP), FuelExhausted,
       limits={"fuel": 5_000_000})
_calls("realloc-loops", S1, lambda: module(realloc_prologue=LOOP), FuelExhausted,
       limits={"fuel": 5_000_000})
_calls("realloc-recurses", S1,
       lambda: module(realloc_prologue="(drop (call $alloc (i32.const 0) (i32.const 0) "
                                       "(i32.const 1) (i32.const 1)))"), StackOverflow)


# -- section 1: recursion on threads with small stacks ----------------------------------------

_RECURSE = module(extra="(func $r (param i32) (result i32) (i32.add (call $r (local.get 0)) "
                        "(i32.const 1)))", body="(drop (call $r (i32.const 0)))" + OK_EMPTY)
_BIG_FRAMES = module(
    extra="(func $r (param i64) (result i64) (local i64 i64 i64 i64 i64 i64 i64 i64) "
          "(local.set 1 (local.get 0)) (local.set 8 (i64.mul (local.get 1) (i64.const 3))) "
          "(i64.add (call $r (local.get 8)) (local.get 8)))",
    body="(drop (call $r (i64.const 1)))" + OK_EMPTY)


def on_thread(stack: int, fn: Callable[[], object]) -> None:
    """Run ``fn`` on a new thread with a ``stack``-byte stack; re-raise what it raised."""
    box: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append(exc)

    old = threading.stack_size(stack)
    try:
        t = threading.Thread(target=target)
        t.start()
    finally:
        threading.stack_size(old)
    t.join()
    if box:
        raise box[0]


def _small_stack(wat: str, stack: int, *, rt_kw: dict[str, Any] | None = None,
                 perms: dict[str, Any] | None = None) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        rt = env.new_runtime(**rt_kw) if rt_kw else env.runtime()
        plugin = env.load(wat, runtime=rt, permissions=perms or {})
        on_thread(stack, lambda: plugin.call("run", PAYLOAD))

    return run


for _kib in (256, 320, 512):
    add(Case(f"small-stack-{_kib}k-recursion", S1, _small_stack(_RECURSE, _kib << 10),
             (StackOverflow,)))
add(Case("small-stack-256k-big-frames", S1, _small_stack(_BIG_FRAMES, 256 << 10),
         (StackOverflow,)))
add(Case("small-stack-384k-host-max-stack-1m", S1,
         _small_stack(_RECURSE, 384 << 10, rt_kw={"max_wasm_stack": 1 << 20}), (StackOverflow,)))
add(Case("small-stack-256k-realloc-reentry", S1,
         _small_stack(_reentrant(*REENTRY["random"][:4]), 256 << 10, perms={"random": True}),
         (StackOverflow, AbiViolation)))


# -- section 1: event subscribers calling plugins -------------------------------------------

def _emitter(after: str = "", body_tail: str = ECHO, setup: str = "") -> str:
    """A module that, when its payload is non-empty, emits topic "t" then runs ``after``."""
    return module(
        imports=imp("events", "emit") + imp("kv", "set") + imp("kv", "get"),
        extra=data(512, b"t") + data(520, b"k") + data(528, b"A"),
        body=setup + "(if (local.get $pl) (then (call $events.emit (i32.const 512) (i32.const 1)"
             " (i32.const 512) (i32.const 1) (i32.const 256))" + FORWARD_ERR + after + "))"
             + body_tail)


_EMITS = {"events": {"topics": ["*"]}, "kv": {}}


def _subscriber_case(*, emitter_limits: dict[str, Any], nested: str,
                     mode: str = "persistent") -> Callable[[Env], None]:
    """A emits; the subscriber makes a nested call (``nested``: 'other' plugin B, or 'self'
    with an empty payload, or 'self-recursive' with a payload so A emits again)."""

    def run(env: Env) -> None:
        rt = env.runtime()
        a = env.load(_emitter(), name="emitter", permissions=_EMITS, limits=emitter_limits,
                     mode=mode)
        b = env.load(module(), name="other")
        seen: list[Any] = []

        def sub(event: plugbox.Event) -> None:
            try:
                if nested == "other":
                    seen.append(b.call("run", b"nested"))
                elif nested == "self":
                    seen.append(a.call("run", b""))
                else:
                    seen.append(a.call("run", b"again"))
            except BaseException as exc:  # noqa: BLE001 - re-raised by the case
                seen.append(exc)

        rt.events.subscribe("t", sub)
        started = time.monotonic()
        got = a.call("run", PAYLOAD)
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"the nested call took {elapsed:.1f} s (must fail fast or work)"
        errors = [x for x in seen if isinstance(x, BaseException)]
        if errors:
            raise errors[0]
        assert got == PAYLOAD, f"emitter returned {got[:40]!r}"
        assert seen and seen[0] in (b"nested", b""), f"nested call returned {seen[:1]!r}"

    return run


add(Case("subscriber-calls-other-plugin", S1,
         _subscriber_case(emitter_limits={}, nested="other"), (OK,), timeout=10))
add(Case("subscriber-calls-emitter-pool-1", S1,
         _subscriber_case(emitter_limits={"instances": 1}, nested="self"), (PlugboxError,),
         timeout=10))
add(Case("subscriber-calls-emitter-pool-4", S1,
         _subscriber_case(emitter_limits={"instances": 4}, nested="self"), (OK,), timeout=10))
add(Case("subscriber-calls-emitter-fresh-mode", S1,
         _subscriber_case(emitter_limits={"instances": 4}, nested="self", mode="fresh"), (OK,),
         timeout=10))
add(Case("subscriber-recursive-emit", S1,
         _subscriber_case(emitter_limits={"instances": 16}, nested="self-recursive"),
         (PlugboxError,), timeout=15))


def _state_restored(env: Env) -> None:
    """After a nested call into another plugin returns, the outer call's host services still
    act for the outer plugin (its own kv namespace), not for the inner one or for nobody."""
    rt = env.runtime()
    kv_set_a = ("(call $kv.set (i32.const 520) (i32.const 1) (i32.const 528) (i32.const 1) "
                "(i32.const 256))")
    kv_get = "(call $kv.get (i32.const 520) (i32.const 1) (i32.const 256))"
    a = env.load(_emitter(after=kv_get, setup=kv_set_a,
                          body_tail=ret_ok("(i32.load (i32.const 264))",
                                           "(i32.load (i32.const 268))")),
                 name="outer", permissions=_EMITS)
    b = env.load(module(imports=imp("kv", "set"), extra=data(520, b"k") + data(528, b"B"),
                        body="(call $kv.set (i32.const 520) (i32.const 1) (i32.const 528) "
                             "(i32.const 1) (i32.const 256))" + ECHO),
                 name="inner", permissions={"kv": {}})
    rt.events.subscribe("t", lambda e: b.call("run", b"x"))
    got = a.call("run", PAYLOAD)
    assert got == b"A", f"outer plugin read {got!r} from its own kv after the nested call"


add(Case("subscriber-nested-call-state-restored", S1, _state_restored, (OK,), timeout=10))


def _subscriber_closes(what: str) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        rt = env.runtime()
        a = env.load(_emitter(), name="emitter", permissions=_EMITS)
        rt.events.subscribe("t", lambda e: (rt if what == "runtime" else a).close())
        a.call("run", PAYLOAD)

    return run


add(Case("subscriber-closes-emitting-plugin", S1, _subscriber_closes("plugin"),
         (OK, PlugboxError), timeout=10))
add(Case("subscriber-closes-runtime", S1, _subscriber_closes("runtime"), (OK, PlugboxError),
         timeout=10))


# -- section 2: deadlines under load, pool waits, close during a call ----------------------

_LOOPER = module(body=LOOP + OK_EMPTY)
_UNBOUNDED = {"fuel": 10_000_000_000, "deadline_ms": 60_000}


def _background(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    box: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            box.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _pool_wait_deadline(env: Env) -> None:
    plugin = env.load(_LOOPER, limits={"instances": 1, **_UNBOUNDED})
    holder, _ = _background(lambda: plugin.call("run", b"", deadline_ms=4000))
    time.sleep(0.3)
    timed(1.5, lambda: plugin.call("run", b"", deadline_ms=200))


add(Case("deadline-counts-pool-wait", S2, _pool_wait_deadline, (DeadlineExceeded,),
         timeout=15))


def _closed_message(exc: BaseException) -> None:
    assert not isinstance(exc, (plugbox.GuestError, plugbox.FuelExhausted)), type(exc)
    assert "close" in str(exc).lower(), f"message does not say it was closed: {exc}"


def _close_during(what: str, *, waiting: bool = False) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        rt = env.runtime()
        plugin = env.load(_LOOPER, limits={"instances": 1, **_UNBOUNDED})
        first, box = _background(lambda: plugin.call("run", b"", deadline_ms=20_000))
        if waiting:
            time.sleep(0.2)
            first, box = _background(lambda: plugin.call("run", b"", deadline_ms=20_000))
        time.sleep(0.3)
        started = time.monotonic()
        (rt if what == "runtime" else plugin).close()
        first.join(5)
        elapsed = time.monotonic() - started
        assert not first.is_alive() and elapsed < 3, f"call still running {elapsed:.1f} s after close"
        assert box, "the call in flight returned normally after close()"
        raise box[0]

    return run


add(Case("close-runtime-during-call", S2, _close_during("runtime"), (PlugboxError,),
         timeout=15, check=_closed_message))
add(Case("close-plugin-during-call", S2, _close_during("plugin"), (PlugboxError,),
         timeout=15, check=_closed_message))
add(Case("close-runtime-during-pool-wait", S2, _close_during("runtime", waiting=True),
         (PlugboxError,), timeout=15, check=_closed_message))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(1)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def capture(name: str = "plugbox") -> _Records:
    """Collect every record logged under ``name`` (at every level)."""
    handler = _Records()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(1)
    return handler


def _slow_host_service(env: Env) -> None:
    rt = env.runtime()
    a = env.load(_emitter(), name="emitter", permissions=_EMITS)
    rt.events.subscribe("t", lambda e: time.sleep(0.5))
    logs = capture()
    a.call("run", PAYLOAD, deadline_ms=100)
    assert any(re.search("deadline|overrun|late", r.getMessage(), re.I) for r in logs.records
               if r.levelno >= logging.WARNING), "a call 5x past its deadline returned silently"


add(Case("deadline-slow-host-service", S2, _slow_host_service, (DeadlineExceeded, OK),
         timeout=10))


def _under_load(kind: str) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        plugin = env.load(_LOOPER, limits=_UNBOUNDED)
        stop = threading.Event()
        if kind == "spin":
            def load() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
            workers = 4
        else:
            flood = env.load(module(imports=imp("clock", "monotonic"), body=(
                "(local.set $hl (i32.const 2000)) (loop $l (drop (call $clock.monotonic)) "
                "(local.set $hl (i32.sub (local.get $hl) (i32.const 1))) "
                "(br_if $l (local.get $hl)))" + OK_EMPTY)),
                permissions={"clock": True}, limits={"instances": 8})

            def load() -> None:
                while not stop.is_set():
                    flood.call("run", b"")
            workers = 6
        threads = [threading.Thread(target=load, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.1)
            timed(1.0, lambda: plugin.call("run", b"", deadline_ms=100))
        finally:
            stop.set()
            for t in threads:
                t.join(5)

    return run


add(Case("deadline-with-4-threads-spinning", S2, _under_load("spin"), (DeadlineExceeded,),
         timeout=15))
add(Case("deadline-with-6-threads-flooding-host-calls", S2, _under_load("flood"),
         (DeadlineExceeded,), timeout=15))
add(Case("deadline-1ms", S2,
         lambda env: timed(0.5, lambda: env.load(_LOOPER, limits=_UNBOUNDED).call(
             "run", b"", deadline_ms=1)), (DeadlineExceeded,)))


# -- section 5: every guest length checked against its cap before the copy -----------------

_BIG_ARG = f"(i32.const 65536) (i32.const {BIG})"
_KEY = "(i32.const 512) (i32.const 1)"
_HTTP = {"http": {"hosts": ["127.0.0.1:*"], "methods": ["GET", "POST"]}}
#: (id, service, function, args, permissions, MiB of guest memory needed). The guest's buffer
#: is never touched, so it costs no RSS: growth past the bound (about 10 MiB is the baseline)
#: means the host copied the input before checking its length.
OVERSIZED = [
    ("kv-get-60mib-key", "kv", "get", f"{_BIG_ARG} (i32.const 256)", {"kv": {}}, 61),
    ("kv-set-60mib-key", "kv", "set", f"{_BIG_ARG} {_KEY} (i32.const 256)", {"kv": {}}, 61),
    ("kv-set-60mib-value", "kv", "set", f"{_KEY} {_BIG_ARG} (i32.const 256)", {"kv": {}}, 61),
    ("kv-delete-60mib-key", "kv", "delete", f"{_BIG_ARG} (i32.const 256)", {"kv": {}}, 61),
    ("kv-list-keys-60mib-prefix", "kv", "list-keys", f"{_BIG_ARG} (i32.const 256)", {"kv": {}},
     61),
    ("kv-list-keys-256mib-prefix", "kv", "list-keys",
     f"(i32.const 65536) (i32.const {256 << 20}) (i32.const 256)", {"kv": {}}, 257),
    ("config-get-60mib-key", "config", "get", f"{_BIG_ARG} (i32.const 256)", {"config": True},
     61),
    ("events-emit-60mib-topic", "events", "emit", f"{_BIG_ARG} {_KEY} (i32.const 256)",
     {"events": {"topics": ["*"]}}, 61),
    ("events-emit-60mib-payload", "events", "emit", f"{_KEY} {_BIG_ARG} (i32.const 256)",
     {"events": {"topics": ["*"]}}, 61),
    ("random-bytes-2gib", "random", "bytes", "(i32.const -2147483648) (i32.const 256)",
     {"random": True}, 1),
    ("random-bytes-u32-max", "random", "bytes", "(i32.const -1) (i32.const 256)",
     {"random": True}, 1),
    ("http-60mib-url", "http", "fetch",
     f"(i32.const 600) (i32.const 3) {_BIG_ARG} (i32.const 0) (i32.const 0) (i32.const 0) "
     "(i32.const 0) (i32.const 256)", _HTTP, 61),
    ("http-60mib-method", "http", "fetch",
     f"{_BIG_ARG} (i32.const 640) (i32.const 19) (i32.const 0) (i32.const 0) (i32.const 0) "
     "(i32.const 0) (i32.const 256)", _HTTP, 61),
    ("http-60mib-body", "http", "fetch",
     f"(i32.const 608) (i32.const 4) (i32.const 640) (i32.const 19) (i32.const 0) "
     f"(i32.const 0) {_BIG_ARG} (i32.const 256)", _HTTP, 61),
    ("http-1m-headers", "http", "fetch",
     "(i32.const 600) (i32.const 3) (i32.const 640) (i32.const 19) (i32.const 65536) "
     "(i32.const 1000000) (i32.const 0) (i32.const 0) (i32.const 256)", _HTTP, 17),
    ("http-60mib-header-name", "http", "fetch",
     "(i32.const 600) (i32.const 3) (i32.const 640) (i32.const 19) (i32.const 704) "
     "(i32.const 1) (i32.const 0) (i32.const 0) (i32.const 256)", _HTTP, 61),
    ("http-60mib-header-value", "http", "fetch",
     "(i32.const 600) (i32.const 3) (i32.const 640) (i32.const 19) (i32.const 720) "
     "(i32.const 1) (i32.const 0) (i32.const 0) (i32.const 256)", _HTTP, 61),
]
# Static data the http cases point at: methods, a URL nobody listens on, and two header
# tuples, one with a 60 MiB name, one with a 60 MiB value.
_HTTP_DATA = (data(600, b"GET") + data(608, b"POST") + data(640, b"http://127.0.0.1:9/x")
              + data(704, (65536).to_bytes(4, "little") + BIG.to_bytes(4, "little")
                     + (512).to_bytes(4, "little") + (1).to_bytes(4, "little"))
              + data(720, (512).to_bytes(4, "little") + (1).to_bytes(4, "little")
                     + (65536).to_bytes(4, "little") + BIG.to_bytes(4, "little")))

for _id, _svc, _fn, _args, _perms, _mib in OVERSIZED:
    _calls(_id, S5, lambda s=_svc, f=_fn, a=_args, m=_mib: module(
        imports=imp(s, f), extra=data(512, b"k") + _HTTP_DATA,
        body=grow_to(m) + f"(call ${s}.{f} {a})" + FORWARD_ERR + OK_EMPTY),
        GuestError, AbiViolation, permissions=_perms, limits=HIGH, rss_mib=40, timeout=15)

_calls("log-60mib-message", S5, lambda: module(
    imports=imp("log", "log"),
    body=grow_to(61) + f"(call $log.log (i32.const 2) {_BIG_ARG})" + OK_EMPTY),
    OK, permissions={"log": True}, limits=HIGH, rss_mib=40, timeout=15)


# -- section 5: log floods --------------------------------------------------------------------

def _flood(records_per_call: int, *, message: bytes = b"flood", seconds: float = 1.2,
           level: int = 2, withhold: bool = False) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        wat = module(imports=imp("log", "log"), extra=data(1024, message), body=(
            f"(local.set $hl (i32.const {records_per_call})) (loop $l (call $log.log "
            f"(i32.const {level}) (i32.const 1024) (i32.const {len(message)})) "
            "(local.set $hl (i32.sub (local.get $hl) (i32.const 1))) "
            "(br_if $l (local.get $hl)))" + OK_EMPTY),
            memory=f'(memory (export "memory") {1 + len(message) // 65536 + 1})')
        rt = env.runtime()
        plugin = rt.load(env.plugin(wat, name="flooder", permissions={"log": True}),
                         withhold={"log"} if withhold else set())
        logs = capture()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            plugin.call("run", b"")
        elapsed = time.monotonic() - started
        got = [r for r in logs.records if r.name.startswith("plugbox")]
        allowed = 10 if withhold else 1000 + 200 * elapsed + 10
        assert len(got) <= allowed, (f"{len(got)} records in {elapsed:.1f} s "
                                     f"(allowed {allowed:.0f})")
        for r in got:
            text = r.getMessage()
            assert len(text.encode()) <= 4096 + 512, f"a record of {len(text)} characters"
            assert not re.search(r"[\r\x1b]", text), f"raw control character in {text[:80]!r}"
            # a multi-line message stays multi-line, but no line after the first can pass for
            # a record of its own: each is indented (services LOG_CONTINUATION)
            assert all(line.startswith("    ") for line in text.split("\n")[1:]), (
                f"an unindented line in {text[:80]!r}")

    return run


add(Case("log-flood-one-call-200k-records", S5, _flood(200_000, seconds=0.01), (OK,),
         timeout=20))
add(Case("log-flood-many-calls", S5, _flood(2000), (OK,), timeout=20))
add(Case("log-flood-8kib-messages", S5, _flood(500, message=b"x" * 8192), (OK,), timeout=20))
add(Case("log-flood-control-characters", S5,
         _flood(50, message=b"ok\nFORGED plugbox.host: all good\r\x1b[2J", seconds=0.2), (OK,)))
add(Case("log-flood-denied", S5, _flood(2000, withhold=True), (OK,), timeout=20))


# -- section 5: huge error messages, negative and high offsets ---------------------------------

_SIXTEEN = 16 << 20


def _short_error(exc: BaseException) -> None:
    assert len(str(exc)) < 1 << 20, f"message of {len(str(exc))} characters kept whole"
    assert len(getattr(exc, "detail", "")) < 1 << 20, "detail kept whole"


_FILL = f"(memory.fill (i32.const 65536) (i32.const 97) (i32.const {_SIXTEEN}))"
_calls("error-message-16mib", S5, lambda: module(
    body=grow_to(17) + _FILL + ret_err(4, "(i32.const 65536)", f"(i32.const {_SIXTEEN})")),
    GuestError, check=_short_error, rss_mib=200)
_calls("error-message-16mib-bad-utf8-tail", S5, lambda: module(
    body=grow_to(17) + _FILL + f"(i32.store8 (i32.const {65536 + _SIXTEEN - 1}) (i32.const 255))"
    + ret_err(4, "(i32.const 65536)", f"(i32.const {_SIXTEEN})")),
    GuestError, AbiViolation, check=_short_error, rss_mib=200)
_calls("error-message-invalid-utf8", S5, lambda: module(
    extra=data(512, b"\xff\xfe\xc3\x28"), body=ret_err(4, "(i32.const 512)", "(i32.const 4)")),
    AbiViolation)

NEGATIVE = {
    "result-ptr-minus-4": "(i32.const -4)",
    "result-ptr-2gib": "(i32.const -2147483648)",
    "result-ptr-misaligned": "(i32.const 18)",
    "result-list-ptr-minus-1": ret_ok("(i32.const -1)", "(i32.const 4)"),
    "result-list-len-minus-1": ret_ok("(i32.const 1024)", "(i32.const -1)"),
    "result-list-ptr-2gib": ret_ok("(i32.const -2147483648)", "(i32.const 16)"),
    "result-list-len-2gib": ret_ok("(i32.const 0)", "(i32.const -2147483648)"),
    "error-message-len-minus-1": ret_err(4, "(i32.const 512)", "(i32.const -1)"),
    "error-message-ptr-2gib": ret_err(4, "(i32.const -2147483648)", "(i32.const 4)"),
    "result-tag-2": "(i32.store8 (i32.const 16) (i32.const 2)) (i32.const 16)",
    "error-discriminant-5": ret_err(5, "(i32.const 512)", "(i32.const 1)"),
    "error-discriminant-255": ret_err(255, "(i32.const 512)", "(i32.const 1)"),
}
for _id, _body in NEGATIVE.items():
    _calls(_id, S5, lambda b=_body: module(body=b), AbiViolation, check=unsigned_offsets)

HOST_ARGS = {
    "log-ptr-minus-1": ("log", "log", "(call $log.log (i32.const 2) (i32.const -1) (i32.const 4))",
                        {"log": True}),
    "log-len-minus-1": ("log", "log", "(call $log.log (i32.const 2) (i32.const 512) "
                                      "(i32.const -1))", {"log": True}),
    "log-ptr-2gib": ("log", "log", "(call $log.log (i32.const 2) (i32.const -2147483648) "
                                   "(i32.const 4))", {"log": True}),
    "log-level-5": ("log", "log", "(call $log.log (i32.const 5) (i32.const 512) (i32.const 1))",
                    {"log": True}),
    "log-level-minus-1": ("log", "log", "(call $log.log (i32.const -1) (i32.const 512) "
                                        "(i32.const 1))", {"log": True}),
    "kv-get-retptr-minus-4": ("kv", "get", "(call $kv.get (i32.const 512) (i32.const 1) "
                                           "(i32.const -4))", {"kv": {}}),
    "kv-get-retptr-misaligned": ("kv", "get", "(call $kv.get (i32.const 512) (i32.const 1) "
                                              "(i32.const 258))", {"kv": {}}),
    "kv-get-key-ptr-2gib": ("kv", "get", "(call $kv.get (i32.const -2147483648) (i32.const 1) "
                                         "(i32.const 256))", {"kv": {}}),
    "kv-set-value-len-minus-1": ("kv", "set", "(call $kv.set (i32.const 512) (i32.const 1) "
                                              "(i32.const 512) (i32.const -1) (i32.const 256))",
                                 {"kv": {}}),
    "http-headers-len-minus-1": ("http", "fetch",
                                 "(call $http.fetch (i32.const 600) (i32.const 3) (i32.const 640)"
                                 " (i32.const 19) (i32.const 704) (i32.const -1) (i32.const 0)"
                                 " (i32.const 0) (i32.const 256))", _HTTP),
}
for _id, (_svc, _fn, _expr, _perms) in HOST_ARGS.items():
    # A log level is a value, not an offset: only offsets must print unsigned.
    _calls(_id, S5, lambda s=_svc, f=_fn, e=_expr: module(
        imports=imp(s, f), extra=data(512, b"k") + _HTTP_DATA, body=e + OK_EMPTY),
        AbiViolation, check=None if "level" in _id else unsigned_offsets, permissions=_perms)

for _id, _ret in (("realloc-returns-minus-1", "(i32.const -1)"),
                  ("realloc-returns-2gib", "(i32.const -2147483648)"),
                  ("realloc-returns-end-of-memory", "(i32.const 65534)")):
    _calls(_id, S5, lambda r=_ret: module(realloc=f'(func (export "cabi_realloc") (param i32 '
                                                  f'i32 i32 i32) (result i32) {r})'),
           AbiViolation, check=unsigned_offsets)
_calls("realloc-misaligned-for-list", S5, lambda: module(
    imports=imp("kv", "set") + imp("kv", "list-keys"), extra=data(512, b"k"),
    realloc_prologue="(if (i32.eq (local.get 2) (i32.const 4)) (then (return (i32.const 4098))))",
    body=_KV_SET + "(call $kv.list-keys (i32.const 512) (i32.const 0) (i32.const 256))"
         + OK_EMPTY), AbiViolation, permissions={"kv": {}}, check=unsigned_offsets)


# -- section 7: negative or absurd per-call limits -------------------------------------------

LIMITS = {
    "call-fuel-minus-1": ({"fuel": -1}, (UsageError,)),
    "call-fuel-minus-2-63": ({"fuel": -(2 ** 63)}, (UsageError,)),
    "call-deadline-minus-1000": ({"deadline_ms": -1000}, (UsageError,)),
    "call-deadline-minus-1": ({"deadline_ms": -1}, (UsageError,)),
    "call-fuel-zero": ({"fuel": 0}, (UsageError, FuelExhausted)),
    "call-deadline-zero": ({"deadline_ms": 0}, (UsageError, DeadlineExceeded)),
    "call-fuel-2-64": ({"fuel": 2 ** 64}, (OK, UsageError)),
    "call-deadline-2-64": ({"deadline_ms": 2 ** 64}, (OK, UsageError)),
    "call-fuel-string": ({"fuel": "1000"}, (UsageError,)),
    "call-deadline-nan": ({"deadline_ms": float("nan")}, (UsageError,)),
    "call-deadline-float-inf": ({"deadline_ms": float("inf")}, (UsageError, OK)),
}
for _id, (_kw, _expect) in LIMITS.items():
    _calls(_id, S7, module, *_expect, call=_kw, result=PAYLOAD)


def _json_negative(env: Env) -> None:
    env.load(module()).call_json("run", {"a": 1}, fuel=-5)


add(Case("call-json-fuel-minus-5", S7, _json_negative, (UsageError,)))
