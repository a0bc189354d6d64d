"""The Rust sample plugins, built from source, end to end through the runtime: every host
service, permission checks, limits and hostile guests."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

import plugbox
from plugbox._policy import Policy
from tests.conftest import HOSTILE_EXPECTATIONS


# -- echo ------------------------------------------------------------------------------------


def test_echo_returns_payloads_unchanged(runtime: plugbox.Runtime,
                                         rust_plugins: dict[str, Path]) -> None:
    echo = runtime.load(rust_plugins["echo"])
    for size in (0, 16, 1024, 65536, 1 << 20):
        payload = bytes(i * 7 % 256 for i in range(size))
        assert echo.call("echo", payload) == payload


# -- word-stats: log + config ----------------------------------------------------------------

TEXT = "The cat and the hat. The CAT sat; a hat? Don't stop: the end."


def _expected_stats(text: str, top_n: int) -> dict[str, object]:
    words = [w.strip("'").lower() for w in re.split(r"[^\w']+", text) if w.strip("'")]
    counts = Counter(words)
    ranked = sorted(sorted(counts.items()), key=lambda kv: -kv[1])[:top_n]
    return {
        "words": len(words),
        "unique_words": len(counts),
        "top": [{"word": w, "count": c} for w, c in ranked],
    }


def test_word_stats_counts_words_with_configured_top_n(
    runtime: plugbox.Runtime, rust_plugins: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    stats = runtime.load(rust_plugins["word-stats"], config={"top_n": 2})
    with caplog.at_level(logging.DEBUG, logger="plugbox.plugin.word-stats"):
        result = stats.call_json("text.stats", {"text": TEXT})
    assert result == _expected_stats(TEXT, 2)
    assert result["top"][0] == {"word": "the", "count": 4}
    assert any(r.name == "plugbox.plugin.word-stats" and "words" in r.getMessage()
               for r in caplog.records)
    # payload overrides config
    assert len(stats.call_json("text.stats", {"text": TEXT, "top_n": 5})["top"]) == 5


def test_word_stats_bad_input_is_a_guest_error(runtime: plugbox.Runtime,
                                               rust_plugins: dict[str, Path]) -> None:
    stats = runtime.load(rust_plugins["word-stats"])
    with pytest.raises(plugbox.GuestError) as info:
        stats.call_json("text.stats", {"no_text": 1})
    assert info.value.kind == "invalid-input"
    assert "text" in info.value.detail
    with pytest.raises(plugbox.GuestError):
        stats.call("text.stats", b"\xff not json")


def test_host_config_is_validated_against_the_config_schema(
    runtime: plugbox.Runtime, rust_plugins: dict[str, Path]
) -> None:
    with pytest.raises(plugbox.UsageError) as info:
        runtime.load(rust_plugins["word-stats"], config={"top_n": 0})
    assert "top_n" in str(info.value)


def test_withheld_service_is_denied_at_call_time(runtime: plugbox.Runtime,
                                                 rust_plugins: dict[str, Path]) -> None:
    stats = runtime.load(rust_plugins["word-stats"], config={"top_n": 1},
                         withhold={"config"})
    with pytest.raises(plugbox.PermissionDenied) as info:
        stats.call_json("text.stats", {"text": TEXT})
    assert info.value.permission == "config"
    assert info.value.plugin == "word-stats" and info.value.hook == "text.stats"
    assert stats.services.denied["config"] >= 1


# -- counter: kv + events + clock ------------------------------------------------------------


def test_counter_persists_in_kv_across_runtime_restarts(
    tmp_path: Path, rust_plugins: dict[str, Path], policy: Policy
) -> None:
    state = tmp_path / "state"
    with plugbox.Runtime(state_dir=state, policy=policy) as rt:
        counter = rt.load(rust_plugins["counter"])
        before = time.time_ns()
        assert counter.call_json("counter.incr", {"name": "hits"})["value"] == 1
        assert counter.call_json("counter.incr", {"name": "hits", "by": 41})["value"] == 42
        got = counter.call_json("counter.get", {"name": "hits"})
        assert got["value"] == 42 and before <= got["updated_at"] <= time.time_ns()
    with plugbox.Runtime(state_dir=state, policy=policy) as rt:
        counter = rt.load(rust_plugins["counter"], mode="fresh")
        assert counter.call_json("counter.get", {"name": "hits"})["value"] == 42
        assert counter.call_json("counter.incr", {"name": "other"})["value"] == 1
        listed = counter.call_json("counter.list", {})
        assert json.dumps(listed).count("hits") == 1 and "other" in json.dumps(listed)


def test_counter_emits_events_to_subscribers(runtime: plugbox.Runtime,
                                             rust_plugins: dict[str, Path]) -> None:
    counter = runtime.load(rust_plugins["counter"])
    seen: list[plugbox.Event] = []
    unsubscribe = runtime.events.subscribe("counter.*", seen.append)
    counter.call_json("counter.incr", {"name": "x", "by": 3})
    unsubscribe()
    counter.call_json("counter.incr", {"name": "x"})
    assert len(seen) == 1
    assert (seen[0].plugin, seen[0].topic) == ("counter", "counter.changed")
    assert seen[0].json() == {"name": "x", "value": 3, "previous": 0}


def test_kv_is_private_to_each_plugin(tmp_path: Path, runtime: plugbox.Runtime,
                                      rust_plugins: dict[str, Path]) -> None:
    twin = tmp_path / "counter-twin"
    shutil.copytree(rust_plugins["counter"], twin)
    manifest = json.loads((twin / "plugbox.json").read_text())
    manifest["name"] = "counter-twin"
    (twin / "plugbox.json").write_text(json.dumps(manifest))
    first = runtime.load(rust_plugins["counter"])
    second = runtime.load(twin)
    first.call_json("counter.incr", {"name": "shared", "by": 5})
    assert second.call_json("counter.get", {"name": "shared"})["value"] == 0
    assert runtime.kv.list_keys("counter-twin", "", 100) == []


def test_kv_quota_surfaces_as_limit_reached(runtime: plugbox.Runtime,
                                            rust_plugins: dict[str, Path]) -> None:
    counter = runtime.load(rust_plugins["counter"])  # quota_keys: 200, 2 keys a counter
    for i in range(100):
        counter.call_json("counter.incr", {"name": f"c{i}"})
    with pytest.raises(plugbox.GuestError) as info:
        counter.call_json("counter.incr", {"name": "one-too-many"})
    assert info.value.kind == "limit-reached"
    assert counter.call_json("counter.incr", {"name": "c1"})["value"] == 2  # still serving


# -- fetcher: http + random + clock + log ----------------------------------------------------


def test_fetcher_reaches_an_allow_listed_local_server(
    runtime: plugbox.Runtime, rust_plugins: dict[str, Path], http_server: str
) -> None:
    fetcher = runtime.load(rust_plugins["fetcher"])
    first = fetcher.call_json("fetch", {"url": f"{http_server}/hello"})
    second = fetcher.call_json("fetch", {"url": f"{http_server}/hello"})
    assert first["status"] == 200
    body = json.loads(first["body"])
    assert body["path"] == "/hello"
    assert body["rid"] == first["request_id"]  # the header the plugin sent arrived
    assert re.fullmatch(r"[0-9a-f]{16}", first["request_id"])
    assert first["request_id"] != second["request_id"]  # random service


def test_fetcher_is_denied_hosts_outside_its_allow_list(
    runtime: plugbox.Runtime, rust_plugins: dict[str, Path], http_server: str
) -> None:
    fetcher = runtime.load(rust_plugins["fetcher"])
    port = http_server.rsplit(":", 1)[1]
    with pytest.raises(plugbox.PermissionDenied) as info:
        fetcher.call_json("fetch", {"url": f"http://localhost:{port}/"})
    assert info.value.permission == "http"
    assert "localhost" in str(info.value)


def test_http_is_cut_off_by_the_call_deadline(
    runtime: plugbox.Runtime, rust_plugins: dict[str, Path], http_server: str
) -> None:
    fetcher = runtime.load(rust_plugins["fetcher"])
    with pytest.raises(plugbox.PluginCallError) as info:
        fetcher.call_json("fetch", {"url": f"{http_server}/slow"}, deadline_ms=300)
    # Either the host's timeout reached the plugin as a failure, or the epoch stopped it.
    err = info.value
    assert (isinstance(err, plugbox.GuestError) and err.kind == "failure"
            and "tim" in err.detail.lower()) or isinstance(err, plugbox.DeadlineExceeded)


def test_http_beyond_the_host_policy_is_refused_at_load(
    tmp_path: Path, rust_plugins: dict[str, Path]
) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt:  # default policy: no http hosts
        with pytest.raises(plugbox.PolicyViolationError) as info:
            rt.load(rust_plugins["fetcher"])
    assert "http" in str(info.value)


# -- probe: deny by default ------------------------------------------------------------------


def test_every_service_is_denied_without_permission(runtime: plugbox.Runtime,
                                                    rust_plugins: dict[str, Path]) -> None:
    # probe imports every service and requests none: the static capability check refuses it
    # unless told to let it through, and then every call is denied at run time.
    with pytest.raises(plugbox.CapabilityError):
        runtime.load(rust_plugins["probe"])
    probe = runtime.load(rust_plugins["probe"], allow_unrequested_imports=True)
    report = probe.call_json("probe", {})
    assert report["log"] == "called"
    assert report["clock"] == "zero"
    for service in ("config", "kv", "events", "random", "http"):
        assert report[service].startswith("denied: "), (service, report[service])
        assert service in report[service]
    assert set(probe.services.denied) == {
        "log", "config", "kv", "events", "clock", "random", "http"
    }
    assert runtime.kv.list_keys("probe", "", 10) == []


# -- hostile guests --------------------------------------------------------------------------

HOSTILE = HOSTILE_EXPECTATIONS


@pytest.mark.parametrize("mode", ["persistent", "fresh"])
def test_hostile_plugins_are_contained_and_the_host_serves_on(
    runtime: plugbox.Runtime, rust_plugins: dict[str, Path], mode: str
) -> None:
    hostile = runtime.load(rust_plugins["hostile"], mode=mode)  # type: ignore[arg-type]
    neighbour = runtime.load(rust_plugins["word-stats"])
    for hook, options, expected in HOSTILE:
        with pytest.raises(expected) as info:
            hostile.call(hook, b"", **options)
        err = info.value
        assert type(err) is expected, (hook, type(err), err)
        assert err.plugin == "hostile" and err.hook == hook
        assert "hostile" in str(err) and hook in str(err)
        assert hostile.call("echo", b"still here") == b"still here"
    assert neighbour.call_json("text.stats", {"text": "a b a"})["words"] == 3
    if mode == "persistent":
        assert hostile.instances_discarded == len(HOSTILE)
