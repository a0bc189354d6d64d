"""Monitoring meets the lifecycle (issue 10 §2, §3): the health check as a gate after on-init
and at upgrades, quarantine recorded in the lifecycle state (across restarts and processes),
and the ``plugbox plugins health | quarantine | release`` commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox import BreakerPolicy
from plugbox.cli._main import main
from tests.conftest import ECHO_BODY, const_body, wait_for, wat_module, write_plugin

OK = '{"status":"ok","details":{"v":1}}'
FAILING = '{"status":"failing","details":{"db":"down"}}'
SCHEMA = {"type": "object", "required": ["status"]}


def reporting(root: Path, name: str, version: str, report: str) -> Path:
    """A plugin whose hooks (``run`` for point ``x``, and ``plugbox.health``) all return
    ``report``."""
    body, data = const_body(report)
    return write_plugin(root / f"{name}-{version}", wat_module(body, data), name=name,
                        version=version, hooks=("run", "plugbox.health"),
                        implements={"x": {"hook": "run"}})


def echo(root: Path, name: str) -> Path:
    return write_plugin(root / name, wat_module(ECHO_BODY), name=name,
                        implements={"x": {"hook": "run"}})


@pytest.fixture
def open_host(tmp_path: Path, cache_dir: Path) -> Iterator[Callable[..., plugbox.PluginHost]]:
    hosts: list[plugbox.PluginHost] = []

    def make(**kw: Any) -> plugbox.PluginHost:
        host = plugbox.PluginHost(state_dir=tmp_path / "state", runtime_options={
            "cache_dir": cache_dir, "pooled_instances": 0, "shared_state": True}, **kw)
        host.extension_point("x", version="1.0.0", output_schema=SCHEMA)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.close()


def test_a_failing_health_check_after_on_init_fails_the_install(
        open_host: Callable[..., plugbox.PluginHost], tmp_path: Path) -> None:
    host = open_host()
    host.start()
    info = host.install(reporting(tmp_path, "sick", "1.0.0", FAILING))
    assert info.state == "failed"
    assert info.reason == 'health check failed: {"db": "down"}'
    assert host.get("sick") is None and host.call("x", {}).results == []
    info = host.install(reporting(tmp_path, "well", "1.0.0", OK))
    assert info.state == "enabled" and host.health()["well"].status == "ok"


def test_a_failing_health_check_rolls_an_upgrade_back(
        open_host: Callable[..., plugbox.PluginHost], tmp_path: Path) -> None:
    host = open_host()
    host.start()
    host.install(reporting(tmp_path, "svc", "1.0.0", OK))
    outcome = host.upgrade(reporting(tmp_path, "svc", "2.0.0", FAILING))
    assert outcome.status == "rolled-back"
    assert outcome.reason == 'health check failed: {"db": "down"}'
    assert host.info("svc").version == "1.0.0"
    assert [r.value for r in host.call("x", {}).results] == [json.loads(OK)]
    assert host.upgrade(reporting(tmp_path, "svc", "2.1.0", OK)).status == "upgraded"


def test_a_quarantine_survives_a_restart(open_host: Callable[..., plugbox.PluginHost],
                                         tmp_path: Path) -> None:
    policy = BreakerPolicy(consecutive_failures=2, error_rate=None, backoff_s=0.3, jitter=0)
    host = open_host(breaker=policy)
    host.start()
    host.install(echo(tmp_path, "flaky"))
    for _ in range(2):
        host.call("x", {"bad": 1})  # not an object with "status": invalid result
    info = host.info("flaky")
    assert info.state == "quarantined"
    assert info.reason is not None and info.reason.startswith(
        "circuit breaker: 2 failures in a row")
    assert any(e.action == "quarantine" for e in host.audit("flaky"))
    host.close()

    host = open_host(breaker=policy)
    host.start()
    result = host.call("x", {"status": "ok"})
    assert [f.kind for f in result.failures] == ["QuarantinedError"]  # still quarantined
    wait_for(lambda: "flaky" in host._tables.probing.get("x", ()))
    assert [r.plugin for r in host.call("x", {"status": "ok"}).results] == ["flaky"]
    assert host.info("flaky").state == "enabled"  # the probe succeeded: released, recorded

    host.quarantine("flaky", "under investigation")
    host.close()
    host = open_host(breaker=policy)
    host.start()
    time.sleep(0.5)  # past the backoff: an operator's hold has no probe
    assert host.call("x", {"status": "ok"}).failures[0].kind == "QuarantinedError"
    assert host.info("flaky").reason == "held by an operator: under investigation"
    host.release("flaky")
    assert host.info("flaky").state == "enabled"
    assert host.call("x", {"status": "ok"}).failures == []


def test_a_quarantine_reaches_another_process_on_the_same_state(
        open_host: Callable[..., plugbox.PluginHost], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    serving = open_host()
    serving.start()
    serving.install(echo(tmp_path, "svc"))
    assert serving.call("x", {"status": "ok"}).failures == []
    state = str(tmp_path / "state")

    # an operator, from the shell (another PluginHost on the same state)
    assert main(["plugins", "quarantine", "svc", "--reason", "bad output", "--state-dir",
                 state, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["breaker"]["state"] == "open" and doc["breaker"]["manual"] is True
    wait_for(lambda: bool(serving.call("x", {"status": "ok"}).failures))
    assert serving.call("x", {"status": "ok"}).failures[0].kind == "QuarantinedError"

    assert main(["plugins", "info", "svc", "--state-dir", state, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plugin"]["state"] == "quarantined"
    assert main(["plugins", "release", "svc", "--state-dir", state]) == 0
    assert "released svc" in capsys.readouterr().out
    wait_for(lambda: not serving.call("x", {"status": "ok"}).failures)


def test_plugbox_plugins_health(open_host: Callable[..., plugbox.PluginHost], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    host = open_host()
    host.start()
    host.install(reporting(tmp_path, "well", "1.0.0", OK))
    host.install(echo(tmp_path, "plain"))
    host.install(reporting(tmp_path, "sick", "1.0.0", FAILING))
    host.close()
    state = str(tmp_path / "state")

    assert main(["plugins", "health", "--state-dir", state, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    got = {p["plugin"]: (p["status"], p["details"], p["reason"]) for p in doc["plugins"]}
    assert doc["ok"] is False
    assert got == {"well": ("ok", {"v": 1}, None), "plain": ("unknown", {}, None),
                   "sick": ("failing", {}, 'health check failed: {"db": "down"}')}

    assert main(["plugins", "health", "well", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "well" in out and "ok" in out and '{"v": 1}' in out and "sick" not in out
    assert main(["plugins", "health", "nope", "--state-dir", state]) == 2
