"""Host-service inputs are bounded before they are copied (issue 7, section 5).

A hand-written guest passes each host function a length of its choosing; the host must refuse
(or, for log, cut) an input over its cap without copying it, so what a call costs the host is
bounded by the cap, not by the length claimed. Memory is measured in a child process (VmHWM),
behaviour in-process on the core fast path (C and pure-ctypes) and on a component.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import plugbox
from plugbox.engine import _fastpath
from plugbox.services._events import EventBus
from plugbox.services._kvstore import KvStore
from plugbox._permissions import EventsPermission, HttpPermission, KvPermission, Permissions
from plugbox._policy import Policy
from plugbox.services._services import (
    CONFIG_KEY_MAX,
    EVENT_PAYLOAD_MAX,
    EVENT_TOPIC_MAX,
    HTTP_HEADER_NAME_MAX,
    HTTP_HEADER_VALUE_MAX,
    HTTP_HEADERS_MAX,
    HTTP_METHOD_MAX,
    HTTP_URL_MAX,
    KV_KEY,
    KV_KEY_MAX,
    KV_VALUE_MAX,
    LOG_MESSAGE_MAX,
    SHOWN_MAX,
    HostCallError,
    HostServices,
    utf8_prefix,
)
from tests.conftest import BUMP_REALLOC, REPO, write_plugin

# -- the hostile guest -------------------------------------------------------------------------

KV = "plugbox:plugin/kv@1.0.0"
BIG_AT = 65536  # a region of untouched (zero) guest memory
PAGES = 1 + 1024 + 2  # room for 64 MiB at BIG_AT
BODY_MAX = 4096  # the plugin's permissions.http.max_request_bytes

# on-hook reads (selector, length, pointer) from its payload and makes one host call with that
# (pointer, length) in the position the selector names; pointer 0 means "the payload's bytes
# after these 12". It returns the call's 16-byte return area as its own result, so an error the
# host wrote there comes back as the hook's error. (sel 15 also takes its retptr from the
# pointer; sel 16 logs `length` times.)
GUEST = ("""
(module
  (import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))
  (import "plugbox:plugin/config@1.0.0" "get" (func $config_get (param i32 i32 i32)))
  (import "plugbox:plugin/kv@1.0.0" "get" (func $kv_get (param i32 i32 i32)))
  (import "plugbox:plugin/kv@1.0.0" "set" (func $kv_set (param i32 i32 i32 i32 i32)))
  (import "plugbox:plugin/kv@1.0.0" "delete" (func $kv_delete (param i32 i32 i32)))
  (import "plugbox:plugin/kv@1.0.0" "list-keys" (func $kv_list (param i32 i32 i32)))
  (import "plugbox:plugin/events@1.0.0" "emit" (func $emit (param i32 i32 i32 i32 i32)))
  (import "plugbox:plugin/http@1.0.0" "fetch"
    (func $fetch (param i32 i32 i32 i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") PAGES)
  (data (i32.const 2048) "k")
  (data (i32.const 2056) "t.x")
  (data (i32.const 2064) "GET")
  (data (i32.const 2080) "http://127.0.0.1:9/")
  (data (i32.const 2112) "x-a")
  (global $heap (mut i32) (i32.const 8192))
""" + BUMP_REALLOC.format(prologue="") + """
  (func (export "on-init") (param i32 i32) (result i32)
    (i64.store (i32.const 32) (i64.const 0)) (i64.store (i32.const 40) (i64.const 0))
    (i32.const 32))
  (func (export "on-hook") (param $hp i32) (param $hl i32) (param $pp i32) (param $pl i32)
        (result i32)
    (local $sel i32) (local $n i32) (local $p i32)
    (local.set $sel (i32.load (local.get $pp)))
    (local.set $n (i32.load offset=4 (local.get $pp)))
    (local.set $p (i32.load offset=8 (local.get $pp)))
    (if (i32.eqz (local.get $p)) (then (local.set $p (i32.add (local.get $pp) (i32.const 12)))))
    (i64.store (i32.const 32) (i64.const 0)) (i64.store (i32.const 40) (i64.const 0))
    (i64.store (i32.const 48) (i64.const 0))
    (block $done
    (block $s16 (block $s15 (block $s14 (block $s13 (block $s12 (block $s11 (block $s10
    (block $s9 (block $s8 (block $s7 (block $s6 (block $s5 (block $s4 (block $s3 (block $s2
    (block $s1 (block $s0
      (br_table $s0 $s1 $s2 $s3 $s4 $s5 $s6 $s7 $s8 $s9 $s10 $s11 $s12 $s13 $s14 $s15 $s16
                $done (local.get $sel)))
      (call $log (i32.const 2) (local.get $p) (local.get $n)) (br $done))
      (call $config_get (local.get $p) (local.get $n) (i32.const 32)) (br $done))
      (call $kv_get (local.get $p) (local.get $n) (i32.const 32)) (br $done))
      (call $kv_set (local.get $p) (local.get $n) (i32.const 2048) (i32.const 1) (i32.const 32))
      (br $done))
      (call $kv_set (i32.const 2048) (i32.const 1) (local.get $p) (local.get $n) (i32.const 32))
      (br $done))
      (call $kv_delete (local.get $p) (local.get $n) (i32.const 32)) (br $done))
      (call $kv_list (local.get $p) (local.get $n) (i32.const 32)) (br $done))
      (call $emit (local.get $p) (local.get $n) (i32.const 2048) (i32.const 1) (i32.const 32))
      (br $done))
      (call $emit (i32.const 2056) (i32.const 3) (local.get $p) (local.get $n) (i32.const 32))
      (br $done))
      (call $fetch (local.get $p) (local.get $n) (i32.const 2080) (i32.const 19)
                   (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 32))
      (br $done))
      (call $fetch (i32.const 2064) (i32.const 3) (local.get $p) (local.get $n)
                   (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 32))
      (br $done))
      (call $fetch (i32.const 2064) (i32.const 3) (i32.const 2080) (i32.const 19)
                   (local.get $p) (local.get $n) (i32.const 0) (i32.const 0) (i32.const 32))
      (br $done))
      ;; one header: name "x-a", value (p, n)
      (i32.store (i32.const 1024) (i32.const 2112)) (i32.store (i32.const 1028) (i32.const 3))
      (i32.store (i32.const 1032) (local.get $p)) (i32.store (i32.const 1036) (local.get $n))
      (call $fetch (i32.const 2064) (i32.const 3) (i32.const 2080) (i32.const 19)
                   (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 32))
      (br $done))
      ;; one header: name (p, n), value "x-a"
      (i32.store (i32.const 1024) (local.get $p)) (i32.store (i32.const 1028) (local.get $n))
      (i32.store (i32.const 1032) (i32.const 2112)) (i32.store (i32.const 1036) (i32.const 3))
      (call $fetch (i32.const 2064) (i32.const 3) (i32.const 2080) (i32.const 19)
                   (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 32))
      (br $done))
      (call $fetch (i32.const 2064) (i32.const 3) (i32.const 2080) (i32.const 19)
                   (i32.const 0) (i32.const 0) (local.get $p) (local.get $n) (i32.const 32))
      (br $done))
      (call $kv_get (i32.const 2048) (i32.const 1) (local.get $p)) (br $done))
      (loop $more
        (if (local.get $n) (then
          (call $log (i32.const 2) (i32.const 2056) (i32.const 3))
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br $more)))))
    (i32.const 32))
  (func (export "cabi_post_on-hook") (param i32)
    (global.set $heap (i32.const 8192)))
)
""").replace("PAGES", str(PAGES))

(LOG, CONFIG, KV_GET, KV_SET_KEY, KV_SET_VALUE, KV_DELETE, KV_LIST, EMIT_TOPIC, EMIT_PAYLOAD,
 HTTP_METHOD, HTTP_URL, HTTP_HEADERS, HTTP_HEADER_VALUE, HTTP_HEADER_NAME, HTTP_BODY,
 KV_GET_RETPTR, LOG_FLOOD) = range(17)

PERMISSIONS: dict[str, Any] = {
    "log": True, "config": True, "kv": {}, "events": {"topics": ["t.*"]},
    "http": {"hosts": ["127.0.0.1:*"], "max_request_bytes": BODY_MAX},
}
LIMITS = {"memory_bytes": 128 << 20}


def stage(directory: Path) -> Path:
    """The hostile guest as a core-module plugin."""
    return write_plugin(directory, wasmtime.wat2wasm(GUEST), name="bounds", permissions=PERMISSIONS,
                        limits=LIMITS)


def args(sel: int, n: int, ptr: int = 0, data: bytes = b"") -> bytes:
    """The hook payload: make call ``sel`` with length ``n`` at ``ptr`` (0: at ``data``)."""
    return struct.pack("<III", sel, n, ptr) + data


@pytest.fixture(params=["accelerated", "pure-ctypes"])
def core(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[plugbox.Plugin]:
    """The hostile guest loaded as a core module, on the C and on the ctypes call sequence."""
    was = _fastpath._call_entry is not _fastpath._py_call_entry
    _fastpath.use_accelerator(request.param == "accelerated")
    try:
        with plugbox.Runtime(state_dir=tmp_path / "state",
                             policy=Policy(http_hosts=("127.0.0.1:*",))) as rt:
            yield rt.load(stage(tmp_path / "plugin"), config={"k": 1})
    finally:
        _fastpath.use_accelerator(was)


def refusal(plugin: plugbox.Plugin, payload: bytes) -> plugbox.GuestError:
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("run", payload)
    return info.value


# Every capped input: (selector, largest length accepted, kind and message over the cap). The
# message is formatted with ``n``, the length passed.
CAPPED = [
    (CONFIG, CONFIG_KEY_MAX, "invalid-input",
     "config: key of {n} bytes is longer than the maximum of 1024 bytes"),
    (KV_GET, KV_KEY_MAX, "invalid-input", "kv: key must be 1 to 256 bytes of UTF-8, got {n} bytes"),
    (KV_SET_KEY, KV_KEY_MAX, "invalid-input",
     "kv: key must be 1 to 256 bytes of UTF-8, got {n} bytes"),
    (KV_SET_VALUE, KV_VALUE_MAX, "limit-reached",
     "kv: value of {n} bytes exceeds the maximum of 1048576 bytes"),
    (KV_DELETE, KV_KEY_MAX, "invalid-input",
     "kv: key must be 1 to 256 bytes of UTF-8, got {n} bytes"),
    (KV_LIST, KV_KEY_MAX, "invalid-input",
     "kv: prefix of {n} bytes is longer than the maximum of 256 bytes (no key is longer)"),
    # Topics are capped in characters; over 4 bytes a character, they are not even copied.
    (EMIT_TOPIC, EVENT_TOPIC_MAX, "invalid-input",
     "events: topic must be 1 to 256 characters, got {n} bytes"),
    (EMIT_PAYLOAD, EVENT_PAYLOAD_MAX, "limit-reached",
     "events: payload of {n} bytes exceeds the maximum of 1048576 bytes"),
    (HTTP_METHOD, HTTP_METHOD_MAX, "invalid-input",
     "http: method of {n} bytes is longer than the maximum of 32 bytes"),
    (HTTP_URL, HTTP_URL_MAX, "invalid-input",
     "http: URL of {n} bytes is longer than the maximum of 8192 bytes"),
    (HTTP_HEADERS, HTTP_HEADERS_MAX, "limit-reached",
     "http: {n} request headers, more than the maximum of 100"),
    (HTTP_HEADER_VALUE, HTTP_HEADER_VALUE_MAX, "invalid-input",
     "http: header value of {n} bytes is longer than the maximum of 8192 bytes"),
    (HTTP_HEADER_NAME, HTTP_HEADER_NAME_MAX, "invalid-input",
     "http: header name of {n} bytes is longer than the maximum of 256 bytes"),
    (HTTP_BODY, BODY_MAX, "limit-reached",
     f"http: request body of {{n}} bytes exceeds max_request_bytes ({BODY_MAX}); raise "
     "permissions.http.max_request_bytes in plugbox.json"),
]
IDS = ["config-key", "kv-get-key", "kv-set-key", "kv-set-value", "kv-delete-key", "kv-prefix",
       "topic", "payload", "method", "url", "header-count", "header-value", "header-name",
       "body"]


def over(sel: int, cap: int) -> int:
    """The smallest length refused before copying (topics: more than 4 bytes a character)."""
    return 4 * cap + 1 if sel == EMIT_TOPIC else cap + 1


def at_cap(sel: int, cap: int) -> bytes:
    """An input of exactly the cap, as the payload's data."""
    if sel == HTTP_HEADERS:  # a table of `cap` headers "x-a: x-a"
        return struct.pack("<IIII", 2112, 3, 2112, 3) * cap
    return b"k" * cap


@pytest.mark.parametrize(("sel", "cap", "kind", "message"), CAPPED, ids=IDS)
def test_an_input_over_its_cap_is_refused_with_a_message_naming_the_cap(
    core: plugbox.Plugin, sel: int, cap: int, kind: str, message: str
) -> None:
    n = over(sel, cap)
    err = refusal(core, args(sel, n, BIG_AT))
    assert (err.kind, err.detail) == (kind, message.format(n=n))
    # At the cap the input is read and reaches the service, which may refuse it for other
    # reasons (an unknown method, nobody listening on port 9), never for its length.
    try:
        core.call("run", args(sel, cap, 0, at_cap(sel, cap)))
    except plugbox.PluginCallError as other:
        assert max(message.split("{n}"), key=len) not in str(other), other


def test_an_over_long_range_outside_memory_is_still_an_abi_violation(
    core: plugbox.Plugin,
) -> None:
    # Length check or not, a range that leaves memory breaks the ABI; offsets print unsigned.
    with pytest.raises(plugbox.AbiViolation, match=r"kv prefix at 0x400\+4294967295 lies outside"):
        core.call("run", args(KV_LIST, 0xFFFFFFFF, 0x400))
    with pytest.raises(plugbox.AbiViolation, match=r"kv key at 0x400\+4294967295 lies outside"):
        core.call("run", args(KV_GET, 0xFFFFFFFF, 0x400))
    with pytest.raises(plugbox.AbiViolation, match=r"header list at 0x400\+160000000 lies outside"):
        core.call("run", args(HTTP_HEADERS, 10_000_000, 0x400))
    with pytest.raises(plugbox.AbiViolation, match=r"log message at 0x400\+4294967295 lies"):
        core.call("run", args(LOG, 0xFFFFFFFF, 0x400))


def test_offsets_at_or_above_2_gib_are_unsigned(core: plugbox.Plugin) -> None:
    with pytest.raises(plugbox.AbiViolation, match=r"kv key at 0x80000000\+1 lies outside"):
        core.call("run", args(KV_GET, 1, 0x80000000))
    with pytest.raises(plugbox.AbiViolation, match=r"event payload at 0xfffffff0\+16 lies outs"):
        core.call("run", args(EMIT_PAYLOAD, 16, 0xFFFFFFF0))
    with pytest.raises(plugbox.AbiViolation, match=r"return area 0x80000000\+16 lies outside"):
        core.call("run", args(KV_GET_RETPTR, 0, 0x80000000))
    assert core.call("run", args(KV_GET, 1, 2048)) == b""  # ok(none): the instance is fine


def test_a_long_log_message_is_cut_at_the_cap_and_marked_with_its_size(
    core: plugbox.Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    # "a" + 3000 x "é": the cap (4096 bytes) falls inside a 2-byte character, which is dropped
    # rather than making the copied part invalid UTF-8.
    text = ("a" + "é" * 3000).encode()
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.bounds"):
        core.call("run", args(LOG, len(text), 0, text))
        core.call("run", args(LOG, 40 << 20, BIG_AT))  # 40 MiB of NULs, never copied whole
    cut, zeros = (r.getMessage() for r in caplog.records if r.name == "plugbox.plugin.bounds")
    assert len(cut.encode()) <= LOG_MESSAGE_MAX and cut.startswith("aéé")
    assert cut.endswith(f"[truncated, {len(text)} bytes]") and "\ufffd" not in cut
    assert len(zeros.encode()) <= LOG_MESSAGE_MAX and zeros.startswith("\\x00\\x00")
    assert zeros.endswith(f"[truncated, {40 << 20} bytes]")


def test_a_guest_log_flood_stays_within_rate_and_burst_notices_included(
    core: plugbox.Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.bounds"):
        start = time.monotonic()
        core.call("run", args(LOG_FLOOD, 30_000), deadline_ms=30_000)
        elapsed = time.monotonic() - start
    records = [r for r in caplog.records if r.name == "plugbox.plugin.bounds"]
    # The plugin's HostServices exist since load, but its bucket holds at most the burst.
    assert len(records) <= 1000 + 200 * elapsed
    assert any("dropping records" in r.getMessage() for r in records)


# -- host memory, measured in a child process ----------------------------------------------------

CHILD = """
import json, struct, sys
from pathlib import Path
import plugbox
from plugbox._policy import Policy
sys.path.insert(0, {repo!r})
from tests.test_service_bounds import stage, args, BIG_AT, HTTP_HEADERS

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

tmp = Path({tmp!r})
out = {{}}
with plugbox.Runtime(state_dir=tmp / "state", policy=Policy(http_hosts=("127.0.0.1:*",))) as rt:
    plugin = rt.load(stage(tmp / "plugin"), config={{"k": 1}})
    for sel in range(15):  # warm every path with a small input first
        try:
            plugin.call("run", args(sel, 1, 2048))
        except plugbox.PlugboxError:
            pass
    for sel in range(15):
        before = hwm()
        start = __import__("time").monotonic()
        try:
            n = {big} // 16 if sel == HTTP_HEADERS else {big}  # 16-byte entries
            plugin.call("run", args(sel, n, BIG_AT), deadline_ms=30_000)
            outcome = "ok"
        except plugbox.PlugboxError as exc:
            outcome = type(exc).__name__ + ": " + str(exc)[:200]
        out[sel] = [hwm() - before, __import__("time").monotonic() - start, outcome]
print(json.dumps(out))
"""


def test_over_long_inputs_cost_the_host_no_memory(tmp_path: Path) -> None:
    big = 60 << 20  # today's cost of a 60 MiB list-keys prefix: ~670 MiB of host RSS
    script = CHILD.format(repo=str(REPO), tmp=str(tmp_path), big=big)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for sel, (growth, seconds, outcome) in results.items():
        assert growth < 16 << 20, (sel, growth, outcome)  # bounded by the caps, not by 60 MiB
        assert seconds < 5, (sel, seconds, outcome)
        assert outcome.startswith("GuestError") or int(sel) == LOG, (sel, outcome)


# -- the same caps on a component ------------------------------------------------------------

WASM_TOOLS = shutil.which("wasm-tools") or str(Path(sys.executable).parent / "wasm-tools")


@pytest.fixture(scope="module")
def component_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[plugbox.Plugin]:
    if not Path(WASM_TOOLS).exists():
        pytest.skip("wasm-tools is not installed")
    tmp = tmp_path_factory.mktemp("bounds-component")
    (tmp / "core.wasm").write_bytes(wasmtime.wat2wasm(GUEST))
    wit = REPO / "abi" / "plugbox.wit"
    for cmd in (["component", "embed", "--world", "plugin", str(wit), str(tmp / "core.wasm"),
                 "-o", str(tmp / "e.wasm")],
                ["component", "new", str(tmp / "e.wasm"), "-o", str(tmp / "c.wasm")]):
        proc = subprocess.run([WASM_TOOLS, *cmd], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    directory = write_plugin(tmp / "plugin", (tmp / "c.wasm").read_bytes(), name="bounds",
                             permissions=PERMISSIONS, limits=LIMITS)
    with plugbox.Runtime(state_dir=tmp / "state",
                         policy=Policy(http_hosts=("127.0.0.1:*",))) as rt:
        yield rt.load(directory, config={"k": 1})


@pytest.mark.parametrize(("sel", "cap", "kind", "message"), CAPPED, ids=IDS)
def test_a_component_input_over_its_cap_is_refused_before_conversion(
    component_plugin: plugbox.Plugin, sel: int, cap: int, kind: str, message: str
) -> None:
    n = over(sel, cap)
    err = refusal(component_plugin, args(sel, n, BIG_AT))
    assert (err.kind, err.detail) == (kind, message.format(n=n))


def test_a_component_log_message_is_cut_at_the_cap(
    component_plugin: plugbox.Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    text = ("a" + "é" * 3000).encode()
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.bounds"):
        component_plugin.call("run", args(LOG, len(text), 0, text))
    (cut,) = (r.getMessage() for r in caplog.records if r.name == "plugbox.plugin.bounds")
    assert len(cut.encode()) <= LOG_MESSAGE_MAX and cut.startswith("aéé")
    assert cut.endswith(f"[truncated, {len(text)} bytes]") and "\ufffd" not in cut


# -- HostServices itself ---------------------------------------------------------------------


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., HostServices]]:
    store = KvStore(tmp_path / "kv.sqlite3")

    def make(permissions: Permissions | None = None, config: dict[str, Any] | None = None,
             **kw: Any) -> HostServices:
        return HostServices(
            plugin="demo", config=config or {}, kv=store, events=EventBus(),
            permissions=permissions or Permissions(
                log=True, config=True, kv=KvPermission(), events=EventsPermission(("t.*",)),
                http=HttpPermission(hosts=("127.0.0.1:*",))),
            **kw,
        )

    yield make
    store.close()


def test_a_log_flood_yields_at_most_rate_plus_burst_records_notices_included(
    services: Callable[..., HostServices], caplog: pytest.LogCaptureFixture
) -> None:
    # The documented defaults (200 records/s, burst 1000), flooded for 0.6 s: the notices a
    # flood causes used to come on top of the rate (3 records per token).
    start = time.monotonic()
    hs = services()
    sent = 0
    with caplog.at_level(logging.INFO, logger="plugbox.plugin.demo"):
        while sent < 3000 or time.monotonic() - start < 0.6:  # well past the burst
            hs.log(2, "x")
            sent += 1
        elapsed = time.monotonic() - start
        time.sleep(0.2)  # the rate fell: the next record ends the flood with its count
        hs.log(2, "after")
    messages = [r.getMessage() for r in caplog.records if r.name == "plugbox.plugin.demo"]
    assert len(messages) - 2 <= 1000 + 200 * elapsed  # the flood, notices included
    assert len(messages) - 2 >= 999  # the burst (less the flood notice's token) got through
    # A pause of the flooding thread (scheduling) may split the flood in two: each part is
    # announced once and its drops are counted exactly once.
    starts = [m for m in messages if "dropping records until the rate falls" in m]
    counts = [int(m.split(": ")[1].split()[0]) for m in messages if m.endswith("were dropped")]
    assert len(starts) == len(counts) >= 1 and sum(counts) == hs.log_dropped
    assert messages[-1] == "after"


def test_an_over_cap_input_of_an_ungranted_service_is_denied_first(
    services: Callable[..., HostServices],
) -> None:
    hs = services(Permissions(log=True))
    err = hs.input_error(KV_KEY, 10**9)
    assert err.kind == "denied" and err.permission == "kv"
    err = services().input_error(KV_KEY, 10**9)
    assert err.kind == "invalid-input" and "got 1000000000 bytes" in err.message


def test_the_service_methods_check_the_same_caps(services: Callable[..., HostServices]) -> None:
    hs = services()
    for call, kind in (
        (lambda: hs.kv_list_keys("é" * 129), "invalid-input"),  # 258 bytes
        (lambda: hs.config_get("k" * (CONFIG_KEY_MAX + 1)), "invalid-input"),
        (lambda: hs.http_fetch("G" * 33, "http://127.0.0.1:9/", [], b"", timeout=1),
         "invalid-input"),
        (lambda: hs.http_fetch("GET", "http://127.0.0.1:9/" + "a" * HTTP_URL_MAX, [], b"",
                               timeout=1), "invalid-input"),
        (lambda: hs.http_fetch("GET", "http://127.0.0.1:9/", [("a", "b")] * 101, b"",
                               timeout=1), "limit-reached"),
        (lambda: hs.http_fetch("GET", "http://127.0.0.1:9/", [("a", "b" * 8193)], b"",
                               timeout=1), "invalid-input"),
    ):
        with pytest.raises(HostCallError) as info:
            call()
        assert info.value.kind == kind and "maximum" in info.value.message
    assert hs.kv_list_keys("é" * 128) == []  # 256 bytes: at the cap


def test_guest_strings_are_cut_in_error_messages(services: Callable[..., HostServices]) -> None:
    hs = services()
    for call in (
        lambda: hs.events_emit("x" * EVENT_TOPIC_MAX, b""),  # not an allowed topic
        lambda: hs.http_fetch("GET", "a" * 5000 + "://h/", [], b"", timeout=1),
        lambda: hs.http_fetch("GET", "http://" + "h" * 8000 + "/", [], b"", timeout=1),
        lambda: hs.http_fetch("GET", "http://127.0.0.1:9/", [("bad name" * 30, "v")], b"",
                              timeout=1),
        lambda: hs.http_fetch("G T" * 10, "http://127.0.0.1:9/", [], b"", timeout=1),
    ):
        with pytest.raises(HostCallError) as info:
            call()
        assert len(info.value.message) < 2 * SHOWN_MAX + 250, info.value.message


def test_a_host_config_key_over_the_cap_is_refused_at_load(
    services: Callable[..., HostServices],
) -> None:
    with pytest.raises(plugbox.UsageError, match="longer than 1024 bytes"):
        services(config={"k" * (CONFIG_KEY_MAX + 1): 1})


@pytest.mark.parametrize("text", ["", "a", "é", "aé", "€", "a€", "😀", "a😀", "ab😀c"])
def test_utf8_prefix_drops_only_a_cut_character(text: str) -> None:
    data = text.encode()
    for cut in range(len(data) + 1):
        kept = utf8_prefix(data[:cut])
        kept.decode()  # always valid
        assert data[:cut].startswith(kept) and cut - len(kept) <= 3
        assert kept == data[:cut] or not _is_valid(data[:cut])


def _is_valid(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True

