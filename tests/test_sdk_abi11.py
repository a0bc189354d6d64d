"""ABI 1.1 from the SDKs: a Rust plugin (core module and wrapped component) and a Python plugin
(component, and natively against plugbox_sdk.testing's fake host) call host functions, dispatch
extension points and use atomic kv, with the same results."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox_sdk import DeniedError, FailureError, LimitReachedError, NotFoundError, testing
from tests.test_abi11 import FakeRouter, needs_wasm_tools

REPO = Path(__file__).resolve().parent.parent
CALLERS = REPO / "tests" / "abi11"


@pytest.fixture(scope="module")
def rust_caller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plugbox.authoring._build import build_rust_plugins

    staged = build_rust_plugins(CALLERS / "rust", tmp_path_factory.mktemp("abi11-rust"))
    return staged["abi11-rust-caller"]


@pytest.fixture(scope="module")
def python_caller() -> Path:
    from plugbox.authoring import _pybuild

    module = _pybuild.build_python_plugin(
        CALLERS / "python" / "caller", out_dir=REPO / ".build" / "pytest-pybuild" / "abi11-caller")
    return module.parent


PLUGINS = ["rust-core", pytest.param("rust-component", marks=needs_wasm_tools), "python"]


@pytest.fixture
def plugin_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    kind = request.param
    if kind == "python":
        return request.getfixturevalue("python_caller")  # type: ignore[no-any-return]
    core = request.getfixturevalue("rust_caller")
    if kind == "rust-core":
        return core  # type: ignore[no-any-return]
    from plugbox.authoring._build import wrap_component

    return wrap_component(core, tmp_path / "component")


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def rt(tmp_path: Path, router: FakeRouter) -> Iterator[plugbox.Runtime]:
    with plugbox.Runtime(state_dir=tmp_path / "state", router=router) as runtime:
        yield runtime


def _transcript(call: Any, call_json: Any) -> list[Any]:
    """The same scenario for every form: what each step returned or raised."""
    out: list[Any] = []

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 -- the error is the outcome
            return (type(exc).__name__, getattr(exc, "kind", None))

    out.append(attempt(call, "call", b"battles.query\0{\"limit\": 2}"))
    out.append(attempt(call, "call", b"fail\0x"))
    out.append(attempt(call, "call", b"refuse\0x"))
    out.append(attempt(call, "call", b"admin.drop\0x"))  # not granted
    out.append(attempt(call, "call", b"battles.q\0" + b"p" * ((1 << 20) + 1)))
    out.append(attempt(call_json, "call.json", {"name": "battles.json", "value": [1, 2]}))
    out.append(json.loads(attempt(call, "dispatch", b'report.section\0{"t": 1}')))
    out.append(attempt(call, "dispatch", b"other.point\0{}"))
    out.append(attempt(call_json, "incr", {"key": "n", "by": 5}))
    out.append(attempt(call_json, "incr", {"key": "n", "by": -2}))
    out.append(attempt(call_json, "cas", {"key": "c", "expected": None, "new": "a"}))
    out.append(attempt(call_json, "cas", {"key": "c", "expected": None, "new": "b"}))
    out.append(attempt(call_json, "cas", {"key": "c", "expected": "a", "new": "b"}))
    return out


EXPECTED = [
    b'fn battles.query got {"limit": 2}',
    ("GuestError", "failure"),
    ("GuestError", "not-found"),
    ("PermissionDenied", None),
    ("GuestError", "limit-reached"),
    # the fake router echoes: "fn battles.json got [1,2]" is not JSON, so call_json fails
    ("GuestError", "failure"),
    {"point": "report.section", "mode": "each", "value": None,
     "results": [{"plugin": "b", "value": {"t": 1}}], "failures": []},
    ("PermissionDenied", None),
    {"value": 5},
    {"value": 3},
    {"swapped": True},
    {"swapped": False},
    {"swapped": True},
]


@pytest.mark.parametrize("plugin_dir", PLUGINS, indirect=True)
def test_sdk_plugins_use_abi_1_1_through_the_runtime(
        plugin_dir: Path, rt: plugbox.Runtime, router: FakeRouter) -> None:
    plugin = rt.load(plugin_dir)
    name = plugin.name
    got = _transcript(plugin.call, plugin.call_json)
    assert got == EXPECTED
    # Only the granted calls reached the router, with the plugin's name.
    assert [(k, p, n) for k, p, n, _ in router.calls] == [
        ("call", name, "battles.query"), ("call", name, "fail"), ("call", name, "refuse"),
        ("call", name, "battles.json"), ("dispatch", name, "report.section")]
    assert plugin.services.denied["functions"] == 1
    assert plugin.services.denied["dispatch"] == 1


@pytest.mark.parametrize("plugin_dir", PLUGINS, indirect=True)
def test_sdk_plugins_increment_atomically(plugin_dir: Path, rt: plugbox.Runtime) -> None:
    plugin = rt.load(plugin_dir)
    calls = 50 if plugin.name == "abi11-caller" else 200  # a Python call costs more
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(calls):
                plugin.call_json("incr", {"key": "shared"})
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    assert plugin.call_json("incr", {"key": "shared", "by": 0}) == {"value": 4 * calls}


@pytest.mark.parametrize("abi_plugin", ["rust_caller", "python_caller"])
def test_sdk_1_1_plugins_are_refused_by_a_1_0_host(abi_plugin: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "s", abi="1.0") as runtime:
        with pytest.raises(plugbox.IncompatibleAbiError):
            runtime.load(request.getfixturevalue(abi_plugin))


# -- plugbox_sdk.testing: the fake host --------------------------------------------------------


def _fake_functions() -> dict[str, Any]:
    def fail(payload: bytes) -> bytes:
        raise RuntimeError("the database is down")

    def refuse(payload: bytes) -> bytes:
        raise NotFoundError("no such battle")

    return {
        "battles.query": lambda payload: b'fn battles.query got ' + payload,
        "battles.json": lambda payload: "fn battles.json got [1,2]",
        "battles.q": lambda payload: b"",
        "fail": fail,
        "refuse": refuse,
    }


def _fake_points() -> dict[str, Any]:
    return {"report.section": lambda payload: testing.dispatch_result(
        "report.section", {"b": json.loads(payload)})}


def _sdk_error(exc_name_kind: Any) -> Any:
    """The runtime's outcome as the harness reports it (SDK error classes)."""
    if not isinstance(exc_name_kind, tuple):
        return exc_name_kind
    name, kind = exc_name_kind
    if name == "PermissionDenied":
        return ("DeniedError", "denied")
    classes = {"failure": "FailureError", "not-found": "NotFoundError",
               "limit-reached": "LimitReachedError"}
    return (classes[kind], kind)


def test_the_native_harness_serves_host_calls_from_fake_handlers() -> None:
    harness = testing.load(CALLERS / "python" / "caller", functions=_fake_functions(),
                           dispatch=_fake_points())
    assert _transcript(harness.call, harness.call_json) == [_sdk_error(e) for e in EXPECTED]
    host = harness.host  # type: ignore[attr-defined]
    assert [(k, n) for k, n, _ in host.host_calls] == [
        ("call", "battles.query"), ("call", "fail"), ("call", "refuse"),
        ("call", "battles.json"), ("dispatch", "report.section")]
    assert harness.denied == ["functions", "dispatch"]
    assert harness.kv["n"] == (3).to_bytes(8, "little")


def test_the_native_harness_refuses_what_no_handler_serves() -> None:
    harness = testing.load(CALLERS / "python" / "caller")
    with pytest.raises(DeniedError) as info:
        harness.call("call", b"battles.query\0")
    assert "functions={'battles.query': handler}" in str(info.value)
    with pytest.raises(DeniedError):
        harness.call("dispatch", b"report.x\0")


def test_the_native_harness_bounds_and_errors() -> None:
    harness = testing.load(CALLERS / "python" / "caller", functions={
        "battles.big": lambda payload: b"x" * ((16 << 20) + 1),
        "battles.bad": lambda payload: (_ for _ in ()).throw(ValueError("nope")),
    })
    with pytest.raises(LimitReachedError):
        harness.call("call", b"battles.big\0")
    with pytest.raises(FailureError) as info:
        harness.call("call", b"battles.bad\0")
    assert "ValueError: nope" in str(info.value)
    harness.kv["text"] = b"abc"
    with pytest.raises(plugbox_sdk_invalid_input()):
        harness.call_json("incr", {"key": "text"})


def plugbox_sdk_invalid_input() -> type[Exception]:
    from plugbox_sdk import InvalidInputError

    return InvalidInputError


def test_the_component_harness_serves_host_calls_from_the_same_handlers(
        python_caller: Path) -> None:
    harness = testing.load(python_caller, backend="component", functions=_fake_functions(),
                           dispatch=_fake_points())
    try:
        assert _transcript(harness.call, harness.call_json) == [_sdk_error(e)
                                                                for e in EXPECTED]
    finally:
        harness.close()
