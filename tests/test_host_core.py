"""PluginHost core: extension points, add, and dispatch in every mode and failure policy, with
the sample Rust plugins (staged under new names with ``implements`` in their manifests) and
hand-written WAT modules."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from tests.conftest import const_body, wat_module, write_plugin


def stage(src: Path, dst: Path, name: str, **changes: Any) -> Path:
    """A copy of the staged plugin ``src`` named ``name``, its manifest updated with
    ``changes`` (the module is unchanged, so its pinned sha256 still holds)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "plugbox.json").read_text())
    doc["name"] = name
    doc.update(changes)
    (dst / "plugbox.json").write_text(json.dumps(doc))
    return dst


@pytest.fixture
def make(tmp_path: Path, rust_plugins: dict[str, Path]) -> Callable[..., Path]:
    """``make(sample, name, point=..., hook=..., versions=..., before=..., after=...)``: the
    Rust sample staged as plugin ``name`` implementing ``point`` with that hook."""
    def build(sample: str, name: str, point: str = "text.echo", hook: str = "echo",
              **impl: Any) -> Path:
        return stage(rust_plugins[sample], tmp_path / "plugins" / name, name,
                     implements={point: {"hook": hook, **impl}})
    return build


@pytest.fixture
def const(tmp_path: Path) -> Callable[..., Path]:
    """``const(name, text, point=...)``: a WAT plugin whose hook ``run`` returns ``text``."""
    def build(name: str, text: str, point: str = "text.echo", **impl: Any) -> Path:
        body, fields = const_body(text)
        return write_plugin(tmp_path / "plugins" / name, wat_module(body, fields), name=name,
                            hooks=("run",), implements={point: {"hook": "run", **impl}})
    return build


# -- each, first, pipeline, notify -------------------------------------------------------------


def test_each_calls_every_plugin_in_priority_order(host: plugbox.PluginHost,
                                                     make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", mode="each")
    host.add(make("echo", "low"), priority=0)
    host.add(make("echo", "high"), priority=5)
    host.add(make("echo", "mid"), priority=2)
    res = host.call("text.echo", {"text": "hello"})
    assert [r.plugin for r in res.results] == ["high", "mid", "low"]
    assert all(r.value == {"text": "hello"} for r in res.results)
    assert res.value is None and res.failures == [] and res.ok
    assert [hp.name for hp in host.plugins] == ["high", "mid", "low"]
    assert res.to_json() == {
        "point": "text.echo", "mode": "each", "value": None,
        "results": [{"plugin": p, "value": {"text": "hello"}} for p in ("high", "mid", "low")],
        "failures": [],
    }


def test_equal_priority_keeps_add_order(host: plugbox.PluginHost,
                                        make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    for name in ("b-first", "a-second", "c-third"):
        host.add(make("echo", name))
    assert [r.plugin for r in host.call("text.echo", 1).results] == [
        "b-first", "a-second", "c-third"]


def test_first_stops_at_the_first_non_null_result(host: plugbox.PluginHost,
                                                   const: Callable[..., Path],
                                                   make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", mode="first")
    host.add(const("nothing", "null"), priority=10)
    host.add(make("echo", "answer"), priority=5)
    host.add(const("never", '"unreached"'), priority=1)
    res = host.call("text.echo", {"q": 1})
    assert res.value == {"q": 1}
    assert [(r.plugin, r.value) for r in res.results] == [("answer", {"q": 1})]
    never = host.get("never")
    assert never is not None and never.plugin.calls == 0


def test_first_with_no_answer_is_none(host: plugbox.PluginHost,
                                      const: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", mode="first")
    host.add(const("nothing", "null"))
    res = host.call("text.echo", 1)
    assert res.value is None and res.results == []


def test_pipeline_feeds_each_output_to_the_next(host: plugbox.PluginHost,
                                                 const: Callable[..., Path],
                                                 make: Callable[..., Path]) -> None:
    host.extension_point("text.clean", version="1.0.0", mode="pipeline")
    host.add(const("rewrite", '{"text": "b a b c b"}', point="text.clean"), priority=2)
    host.add(make("word-stats", "stats", point="text.clean", hook="text.stats"), priority=1)
    res = host.call("text.clean", {"text": "ignored"})
    assert res.value["words"] == 5 and res.value["top"][0] == {"word": "b", "count": 3}
    assert [r.plugin for r in res.results] == ["rewrite", "stats"]
    assert res.results[0].value == {"text": "b a b c b"}


def test_pipeline_skips_an_isolated_failure_and_without_stages_returns_the_input(
        host: plugbox.PluginHost, make: Callable[..., Path]) -> None:
    host.extension_point("text.clean", version="1.0.0", mode="pipeline", fuel=100_000)
    host.add(make("hostile", "spinner", point="text.clean", hook="loop"), priority=2)
    res = host.call("text.clean", {"text": "x"})
    assert res.value == {"text": "x"} and res.results == []
    assert isinstance(res.failures[0].error, plugbox.FuelExhausted)
    host.add(make("echo", "echo", point="text.clean"), priority=1)
    res = host.call("text.clean", {"text": "y"})
    assert res.value == {"text": "y"} and [f.plugin for f in res.failures] == ["spinner"]


def test_notify_discards_results_but_records_failures(host: plugbox.PluginHost,
                                                       make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", mode="notify", fuel=100_000)
    host.add(make("echo", "listener"))
    host.add(make("hostile", "spinner", hook="loop"))
    res = host.call("text.echo", {"event": 1})
    assert res.results == [] and res.value is None
    assert [(f.plugin, f.kind) for f in res.failures] == [("spinner", "FuelExhausted")]
    listener = host.get("listener")
    assert listener is not None and listener.plugin.calls == 1


# -- failure policies ------------------------------------------------------------------------


def test_isolate_records_the_failure_and_runs_the_others(host: plugbox.PluginHost,
                                                         make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", failure="isolate", fuel=1_000_000)
    host.add(make("hostile", "spinner", hook="loop"), priority=9)
    host.add(make("echo", "fine"))
    res = host.call("text.echo", [1, 2])
    assert [r.plugin for r in res.results] == ["fine"]
    assert len(res.failures) == 1 and not res.ok
    failure = res.failures[0]
    assert failure.plugin == "spinner" and isinstance(failure.error, plugbox.FuelExhausted)
    assert res.to_json()["failures"] == [
        {"plugin": "spinner", "error": str(failure.error), "kind": "FuelExhausted"}]


def test_propagate_raises_the_first_failure(host: plugbox.PluginHost,
                                            make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", failure="propagate", fuel=1_000_000)
    host.add(make("hostile", "spinner", hook="loop"), priority=9)
    host.add(make("echo", "fine"))
    with pytest.raises(plugbox.FuelExhausted) as info:
        host.call("text.echo", 1)
    assert info.value.plugin == "spinner"
    assert "text.echo" in "".join(getattr(info.value, "__notes__", []))
    fine = host.get("fine")
    assert fine is not None and fine.plugin.calls == 0  # the dispatch stopped


# -- schemas ---------------------------------------------------------------------------------


def test_output_schema_failure_is_that_plugins_failure_with_the_json_path(
        host: plugbox.PluginHost, make: Callable[..., Path], const: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", output_schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    host.add(make("echo", "echo"))
    host.add(const("good", '{"n": 7}'))
    res = host.call("text.echo", {"n": "seven"})
    assert [r.plugin for r in res.results] == ["good"]
    (failure,) = res.failures
    assert failure.plugin == "echo" and isinstance(failure.error, plugbox.InvalidResultError)
    assert failure.error.json_path == "$.n" and "$.n" in str(failure.error)
    assert failure.error.point == "text.echo"


def test_output_schema_failure_propagates(host: plugbox.PluginHost,
                                          make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", failure="propagate",
                         output_schema={"type": "array"})
    host.add(make("echo", "echo"))
    with pytest.raises(plugbox.InvalidResultError, match=r"invalid at \$"):
        host.call("text.echo", {"not": "an array"})


def test_a_result_that_is_not_json_is_a_failure(host: plugbox.PluginHost,
                                                const: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    host.add(const("garbage", "{not json"))
    (failure,) = host.call("text.echo", 1).failures
    assert isinstance(failure.error, plugbox.InvalidResultError)
    assert "not JSON" in str(failure.error)


def test_input_schema_refuses_the_payload_with_the_json_path(host: plugbox.PluginHost,
                                                             make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0", input_schema={
        "type": "object", "properties": {"text": {"type": "string", "maxLength": 5}}})
    host.add(make("echo", "echo"))
    with pytest.raises(plugbox.PayloadError) as info:
        host.call("text.echo", {"text": "far too long"})
    assert info.value.json_path == "$.text" and info.value.point == "text.echo"
    assert isinstance(info.value, plugbox.UsageError)
    echo = host.get("echo")
    assert echo is not None and echo.plugin.calls == 0
    with pytest.raises(plugbox.PayloadError, match="not JSON-serialisable"):
        host.call("text.echo", {"text": {1, 2}})


def test_bad_schemas_are_refused_at_declaration(host: plugbox.PluginHost) -> None:
    with pytest.raises(plugbox.UsageError, match="not a valid JSON Schema"):
        host.extension_point("a.b", version="1.0.0", input_schema={"type": "nonsense"})
    with pytest.raises(plugbox.UsageError, match="RE2"):
        host.extension_point("a.c", version="1.0.0",
                             output_schema={"pattern": "(?=lookahead)"})
    with pytest.raises(plugbox.UsageError, match="larger than"):
        host.extension_point("a.d", version="1.0.0",
                             input_schema={"enum": ["x" * 1000] * 100})
    with pytest.raises(plugbox.UsageError, match="semantic version"):
        host.extension_point("a.e", version="one")
    with pytest.raises(plugbox.UsageError, match="mode"):
        host.extension_point("a.f", version="1.0.0", mode="all")
    with pytest.raises(plugbox.UsageError, match="background=True needs mode='notify'"):
        host.extension_point("a.g", version="1.0.0", background=True)
    host.extension_point("a.h", version="1.0.0")
    with pytest.raises(plugbox.UsageError, match="already declared"):
        host.extension_point("a.h", version="2.0.0")


def test_bytes_points_carry_bytes(host: plugbox.PluginHost, make: Callable[..., Path]) -> None:
    host.extension_point("blob.echo", version="1.0.0", payload="bytes", mode="first")
    host.add(make("echo", "echo", point="blob.echo"))
    res = host.call("blob.echo", b"\x00\xffraw")
    assert res.value == b"\x00\xffraw"
    assert res.to_json()["value"] == "AP9yYXc="  # base64
    with pytest.raises(plugbox.PayloadError, match="must be bytes"):
        host.call("blob.echo", "text")


# -- refusals at add -------------------------------------------------------------------------


def test_a_plugin_implementing_an_undeclared_point_is_refused(
        host: plugbox.PluginHost, make: Callable[..., Path]) -> None:
    host.extension_point("text.other", version="1.0.0")
    with pytest.raises(plugbox.IncompatiblePointError) as info:
        host.add(make("echo", "echo", point="text.missing"))
    assert info.value.point == "text.missing" and info.value.versions == ()
    assert "text.missing" in str(info.value) and "text.other" in str(info.value)
    assert isinstance(info.value, plugbox.VerificationError)
    assert host.plugins == () and host.runtime.plugins == ()  # nothing was loaded


def test_a_version_not_on_offer_is_refused_naming_the_versions(
        host: plugbox.PluginHost, make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="2.1.0")
    with pytest.raises(plugbox.IncompatiblePointError) as info:
        host.add(make("echo", "old", versions=">=1.0,<2"))
    assert info.value.point == "text.echo" and info.value.versions == ("2.1.0",)
    assert "2.1.0" in str(info.value) and ">=1.0,<2" in str(info.value)
    assert host.add(make("echo", "new", versions=">=2.0,<3")).name == "new"


def test_unknown_point_and_duplicate_plugin_are_usage_errors(
        host: plugbox.PluginHost, make: Callable[..., Path], tmp_path: Path,
        rust_plugins: dict[str, Path]) -> None:
    with pytest.raises(plugbox.UsageError, match="no extension point 'nope'"):
        host.call("nope", 1)
    host.extension_point("text.echo", version="1.0.0")
    host.add(make("echo", "echo"))
    with pytest.raises(plugbox.UsageError, match="already added"):
        host.add(stage(rust_plugins["echo"], tmp_path / "again", "echo",
                       implements={"text.echo": {"hook": "echo"}}))
    with pytest.raises(plugbox.UsageError, match="priority"):
        host.add(make("echo", "other"), priority="high")


# -- ordering --------------------------------------------------------------------------------


def test_before_and_after_constraints_win_over_priority(host: plugbox.PluginHost,
                                                        make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    host.add(make("echo", "a"), priority=10)
    host.add(make("echo", "b", before=["a"]), priority=0)
    host.add(make("echo", "c", after=["b"]), priority=20)
    host.add(make("echo", "d", before=["not-here"]), priority=5)
    order = [r.plugin for r in host.call("text.echo", 1).results]
    # b must precede a; c must follow b; among the ready ones, higher priority first.
    assert order == ["d", "b", "c", "a"]
    assert [hp.name for hp in host.implementations("text.echo")] == order


def test_a_constraint_cycle_is_refused_naming_the_plugins(host: plugbox.PluginHost,
                                                          make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    host.add(make("echo", "a", before=["b"]))
    host.add(make("echo", "b", before=["c"]))
    with pytest.raises(plugbox.OrderCycleError) as info:
        host.add(make("echo", "c", before=["a"]))
    assert set(info.value.plugins) == {"a", "b", "c"} and info.value.point == "text.echo"
    cycle = " -> ".join((*info.value.plugins, info.value.plugins[0]))
    assert cycle in str(info.value)
    assert cycle in ("a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c")
    assert [hp.name for hp in host.plugins] == ["a", "b"]
    assert [r.plugin for r in host.call("text.echo", 1).results] == ["a", "b"]


def test_disabled_plugins_are_not_dispatched(host: plugbox.PluginHost,
                                             make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    host.add(make("echo", "on"))
    off = host.add(make("echo", "off"), enabled=False)
    assert [r.plugin for r in host.call("text.echo", 1).results] == ["on"]
    assert off.plugin.calls == 0 and not off.enabled


def test_remove_stops_dispatching_and_closes(host: plugbox.PluginHost,
                                             make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    gone = host.add(make("echo", "gone"))
    host.add(make("echo", "stays"))
    host.remove("gone")
    assert gone.plugin.closed and host.get("gone") is None
    assert [r.plugin for r in host.call("text.echo", 1).results] == ["stays"]
    with pytest.raises(plugbox.UsageError, match="no plugin named 'gone'"):
        host.remove("gone")


# -- per-point limits ------------------------------------------------------------------------


def test_point_fuel_tightens_the_plugins_own(host: plugbox.PluginHost,
                                             make: Callable[..., Path]) -> None:
    host.extension_point("tight", version="1.0.0", fuel=20_000)
    host.extension_point("loose", version="1.0.0")
    p = make("word-stats", "stats", point="tight", hook="text.stats")
    doc = json.loads((p / "plugbox.json").read_text())
    doc["implements"]["loose"] = {"hook": "text.stats"}
    (p / "plugbox.json").write_text(json.dumps(doc))
    host.add(p)
    text = {"text": "many words " * 2000}  # counting them costs far more than 20 000 fuel
    (failure,) = host.call("tight", text).failures
    assert isinstance(failure.error, plugbox.FuelExhausted)
    assert host.call("loose", text).results[0].value["words"] == 4000


def test_point_deadline_tightens_the_plugins_own(host: plugbox.PluginHost,
                                                 make: Callable[..., Path], tmp_path: Path,
                                                 rust_plugins: dict[str, Path]) -> None:
    host.extension_point("spin", version="1.0.0", deadline_ms=100)
    host.add(stage(rust_plugins["hostile"], tmp_path / "slow", "slow",
                   implements={"spin": {"hook": "loop"}},
                   limits={"fuel": 10_000_000_000, "deadline_ms": 20_000}))
    started = time.monotonic()
    (failure,) = host.call("spin", None).failures
    assert isinstance(failure.error, plugbox.DeadlineExceeded)
    assert time.monotonic() - started < 10  # the plugin's own 20 s did not apply


def test_point_memory_caps_the_plugins_memory_at_load(host: plugbox.PluginHost,
                                                      make: Callable[..., Path]) -> None:
    host.extension_point("mem.small", version="1.0.0", memory_bytes=2 << 20)
    host.extension_point("mem.large", version="1.0.0", memory_bytes=8 << 20)
    p = make("hostile", "bomber", point="mem.small", hook="bomb")
    doc = json.loads((p / "plugbox.json").read_text())
    doc["implements"]["mem.large"] = {"hook": "bomb"}
    (p / "plugbox.json").write_text(json.dumps(doc))
    hosted = host.add(p)
    assert hosted.plugin.limits.memory_bytes == 2 << 20  # the tightest point; manifest: 16 MiB
    (failure,) = host.call("mem.large", None).failures
    assert isinstance(failure.error, plugbox.MemoryLimitExceeded)


# -- background notify, concurrent each, threads ---------------------------------------------


def test_background_notify_does_not_block_and_records_failures(
        host: plugbox.PluginHost, tmp_path: Path, rust_plugins: dict[str, Path]) -> None:
    # 500 ms: the loop cannot burn its 10^10 fuel that fast, so its deadline ends it
    host.extension_point("spin", version="1.0.0", mode="notify", background=True,
                         deadline_ms=500)
    host.add(stage(rust_plugins["hostile"], tmp_path / "slow", "slow",
                   implements={"spin": {"hook": "loop"}},
                   limits={"fuel": 10_000_000_000, "deadline_ms": 20_000}))
    started = time.monotonic()
    res = host.call("spin", None)
    # returned while the plugin still runs: it fails no earlier than its deadline
    assert time.monotonic() - started < 0.5 and not host.background_failures
    assert res.results == [] and res.failures == []
    deadline = time.monotonic() + 30
    while not host.background_failures and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = host.background_failures
    assert record.point == "spin"
    assert [(f.plugin, f.kind) for f in record.failures] == [("slow", "DeadlineExceeded")]


def test_concurrent_each_runs_implementations_at_the_same_time(
        host: plugbox.PluginHost, tmp_path: Path, rust_plugins: dict[str, Path]) -> None:
    # 500 ms deadlines: the loops cannot burn their 10^10 fuel that fast
    host.extension_point("spin", version="1.0.0", concurrent=True, deadline_ms=500)
    host.extension_point("spin.seq", version="1.0.0", deadline_ms=500)
    for index in range(3):
        host.add(stage(rust_plugins["hostile"], tmp_path / f"s{index}", f"slow{index}",
                       implements={"spin": {"hook": "loop"}, "spin.seq": {"hook": "loop"}},
                       limits={"fuel": 10_000_000_000, "deadline_ms": 20_000}), priority=-index)
    started = time.monotonic()
    res = host.call("spin", None)
    concurrent = time.monotonic() - started
    assert [f.plugin for f in res.failures] == ["slow0", "slow1", "slow2"]  # still in order
    assert all(f.kind == "DeadlineExceeded" for f in res.failures)
    started = time.monotonic()
    host.call("spin.seq", None)
    sequential = time.monotonic() - started
    assert sequential >= 1.45  # three 0.5 s deadlines, one after the other
    assert concurrent < 1.25  # three 0.5 s deadlines at once (generous: the machine is shared)


def test_dispatch_is_thread_safe(host: plugbox.PluginHost, make: Callable[..., Path]) -> None:
    host.extension_point("text.echo", version="1.0.0")
    for index in range(3):
        host.add(make("echo", f"echo{index}"), priority=index)
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller(n: int) -> None:
        try:
            for i in range(40):
                res = host.call("text.echo", {"thread": n, "i": i})
                names = [r.plugin for r in res.results]
                # another thread adds and removes "churn" meanwhile
                assert [x for x in names if x != "churn"] == ["echo2", "echo1", "echo0"]
                assert all(r.value == {"thread": n, "i": i} for r in res.results)
                assert all(f.plugin == "churn" for f in res.failures)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def churn() -> None:
        try:
            path = make("echo", "churn")
            while not stop.is_set():
                host.add(path, priority=-1)
                host.remove("churn")
        except BaseException as exc:
            errors.append(exc)

    churner = threading.Thread(target=churn)
    churner.start()
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    churner.join()
    assert errors == []


def test_closed_host_refuses_calls(tmp_path: Path, make: Callable[..., Path],
                                   cache_dir: Path) -> None:
    host = plugbox.PluginHost(state_dir=tmp_path / "st", runtime_options={"cache_dir": cache_dir})
    host.extension_point("text.echo", version="1.0.0")
    hosted = host.add(make("echo", "echo"))
    host.close()
    host.close()
    assert hosted.plugin.closed
    with pytest.raises(plugbox.UsageError, match="closed"):
        host.call("text.echo", 1)
    with pytest.raises(plugbox.UsageError, match="closed"):
        host.extension_point("x.y", version="1.0.0")


def test_a_point_memory_cap_no_module_can_run_under_is_refused_at_add(
        host: plugbox.PluginHost, make: Callable[..., Path]) -> None:
    host.extension_point("mem.tiny", version="1.0.0", memory_bytes=32768)  # under one page
    with pytest.raises(plugbox.PolicyViolationError) as info:
        host.add(make("echo", "echo", point="mem.tiny"))
    assert "'mem.tiny'" in "".join(getattr(info.value, "__notes__", []))
    assert host.plugins == ()


def test_host_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(plugbox.UsageError, match="pass it to PluginHost itself"):
        plugbox.PluginHost(state_dir=tmp_path, runtime_options={"policy": None})
    with pytest.raises(plugbox.UsageError, match="the host is the router"):
        plugbox.PluginHost(state_dir=tmp_path, runtime_options={"router": None})
    with pytest.raises(plugbox.UsageError, match="max_workers"):
        plugbox.PluginHost(state_dir=tmp_path, max_workers=0)


def test_a_closed_host_dropped_frees_its_runtime_without_the_garbage_collector(
        tmp_path: Path, make: Callable[..., Path], cache_dir: Path) -> None:
    # Each Runtime reserves terabytes of address space until it is freed: the host must not
    # sit in a reference cycle with it (the runtime holds the host's router).
    import gc
    import weakref

    path = make("echo", "echo")
    gc.collect()
    gc.disable()
    try:
        host = plugbox.PluginHost(state_dir=tmp_path / "st",
                                  runtime_options={"cache_dir": cache_dir})
        host.extension_point("text.echo", version="1.0.0")
        host.function("f", lambda value: value)
        host.add(path)
        assert host.call("text.echo", 1).values == [1]
        runtime = weakref.ref(host.runtime)
        host.close()
        del host
        assert runtime() is None
    finally:
        gc.enable()
