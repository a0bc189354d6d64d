"""ABI 1.1: host.call and host.dispatch through a router, their permissions, bounds and errors,
in both binary forms; and the versioning rule (1.0 plugins run unchanged on the 1.1 host, a
host offering only 1.0 refuses 1.1 plugins). Atomic kv: tests/test_kv_atomic.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

import plugbox
from plugbox._policy import Policy
from plugbox.services._events import EventBus
from plugbox.services._kvstore import KvStore
from plugbox._permissions import Permissions
from plugbox.services._services import (
    HOST_NAME_MAX,
    HOST_PAYLOAD_MAX,
    HOST_RESULT_MAX,
    HostCallError,
    HostServices,
)
from tests.conftest import ECHO_BODY, WAT_TEMPLATE, write_plugin

REPO = Path(__file__).resolve().parent.parent
ABI10 = REPO / "tests" / "abi10"
WASM_TOOLS = Path(sys.executable).parent / "wasm-tools"

needs_wasm_tools = pytest.mark.skipif(not WASM_TOOLS.exists(), reason="wasm-tools not installed")

ON_INIT = """
  (func (export "on-init") (param i32 i32) (result i32)
    (i32.store8 (i32.const 8) (i32.const 0)) (i32.const 8))
"""


def _host_import(func: str) -> str:
    return (f'(import "plugbox:plugin/host@1.1.0" "{func}" '
            f'(func ${func} (param i32 i32 i32 i32 i32)))')


def _passthrough(func: str) -> str:
    """on-hook: call ``host.<func>`` with the hook's name and payload; return its result (ok
    bytes or the error) as the hook's."""
    return f"""
    (call ${func} (local.get $hp) (local.get $hl) (local.get $pp) (local.get $pl) (i32.const 32))
    (i32.store8 (i32.const 16) (i32.load8_u (i32.const 32)))
    (i32.store (i32.const 20) (i32.load (i32.const 36)))
    (i32.store (i32.const 24) (i32.load (i32.const 40)))
    (i32.store (i32.const 28) (i32.load (i32.const 44)))
    (i32.const 16)
"""


def core(body: str = ECHO_BODY, imports: str = "") -> bytes:
    """A core module of the tests' WAT template, with an on-init so it can be wrapped."""
    text = WAT_TEMPLATE.format(body=body, imports=imports).rstrip().removesuffix(")")
    return bytes(wasmtime.wat2wasm(text + ON_INIT + ")"))


CALLER = core(_passthrough("call"), _host_import("call"))
DISPATCHER = core(_passthrough("dispatch"), _host_import("dispatch"))


def wrap(module: bytes, tmp: Path, wit: Path = REPO / "abi") -> bytes:
    """``module`` as a component of the plugbox world of ``wit``."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "core.wasm").write_bytes(module)
    for args in (["component", "embed", str(wit), "--world", "plugin", str(tmp / "core.wasm"),
                  "-o", str(tmp / "embedded.wasm")],
                 ["component", "new", str(tmp / "embedded.wasm"), "-o", str(tmp / "c.wasm")]):
        subprocess.run([str(WASM_TOOLS), *args], check=True, capture_output=True, timeout=120)
    return (tmp / "c.wasm").read_bytes()


class FakeRouter:
    """A HostRouter recording its calls: ``fail`` raises a bug, ``refuse`` a typed error,
    ``big`` answers more than a plugin may receive, anything else echoes its input."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, bytes]] = []

    def call_function(self, plugin: str, name: str, payload: bytes) -> bytes:
        self.calls.append(("call", plugin, name, payload))
        if name == "fail":
            raise RuntimeError("the database is down")
        if name == "refuse":
            raise HostCallError("not-found", "no such battle")
        if name == "big":
            return b"x" * (HOST_RESULT_MAX + 1)
        return b"fn " + name.encode() + b" got " + payload

    def dispatch(self, plugin: str, point: str, payload: bytes) -> bytes:
        self.calls.append(("dispatch", plugin, point, payload))
        return json.dumps({"point": point, "mode": "each", "value": None,
                           "results": [{"plugin": "b", "value": json.loads(payload)}],
                           "failures": []}).encode()


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def rt(tmp_path: Path, router: FakeRouter) -> Iterator[plugbox.Runtime]:
    with plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                         router=router) as runtime:
        yield runtime


FORMS = ["core", pytest.param("component", marks=needs_wasm_tools)]


def stage(tmp: Path, module: bytes, form: str, name: str = "caller", **manifest: Any) -> Path:
    data = module if form == "core" else wrap(module, tmp / "wrap")
    manifest.setdefault("abi", "1.1")
    return write_plugin(tmp / "plugin", data, name=name, **manifest)


# -- host.call -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_host_call_reaches_the_router_and_returns_its_bytes(
        form: str, rt: plugbox.Runtime, router: FakeRouter, tmp_path: Path) -> None:
    plugin = rt.load(stage(tmp_path, CALLER, form, hooks=["battles.query", "fail", "refuse"],
                           permissions={"functions": ["battles.*", "fail", "refuse"]}))
    assert plugin.call("battles.query", b'{"limit": 3}') == b'fn battles.query got {"limit": 3}'
    assert router.calls == [("call", "caller", "battles.query", b'{"limit": 3}')]
    # A router bug reaches the guest as failure, naming the function and the exception.
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("fail", b"")
    assert info.value.kind == "failure"
    assert "'fail'" in info.value.detail and "RuntimeError: the database is down" in info.value.detail
    # A typed refusal keeps its kind.
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("refuse", b"")
    assert (info.value.kind, info.value.detail) == ("not-found", "no such battle")
    # The instance survived all of it.
    assert plugin.call("battles.query", b"") == b"fn battles.query got "


@pytest.mark.parametrize("form", FORMS)
def test_host_call_without_the_permission_is_denied(
        form: str, rt: plugbox.Runtime, router: FakeRouter, tmp_path: Path) -> None:
    plugin = rt.load(stage(tmp_path, CALLER, form, hooks=["battles.query", "admin.drop"],
                           permissions={"functions": ["battles.*"]}),
                     allow_unrequested_imports=False)
    with pytest.raises(plugbox.PermissionDenied) as info:
        plugin.call("admin.drop", b"")
    assert info.value.permission == "functions"
    assert "permissions.functions" in str(info.value) and "'admin.drop'" in str(info.value)
    assert router.calls == []  # refused before the router saw it
    assert plugin.services.denied["functions"] == 1


def test_a_module_importing_host_needs_functions_or_dispatch_requested(
        rt: plugbox.Runtime, tmp_path: Path) -> None:
    with pytest.raises(plugbox.CapabilityError) as info:
        rt.load(stage(tmp_path, CALLER, "core", hooks=["x"]))
    assert info.value.permission == "host"
    assert '"functions"' in str(info.value)


def test_without_a_router_host_calls_are_denied(tmp_path: Path) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "state") as runtime:
        plugin = runtime.load(stage(tmp_path, CALLER, "core", hooks=["battles.query"],
                                    permissions={"functions": ["*"]}))
        with pytest.raises(plugbox.PermissionDenied) as info:
            plugin.call("battles.query", b"")
    assert info.value.permission == "functions"
    assert "this host offers no host functions" in str(info.value)


@pytest.mark.parametrize("form", FORMS)
def test_host_call_bounds(form: str, rt: plugbox.Runtime, router: FakeRouter,
                          tmp_path: Path) -> None:
    long_name = "a" * (HOST_NAME_MAX + 1)
    plugin = rt.load(stage(tmp_path, CALLER, form, hooks=["ok", "big", long_name[:128]],
                           permissions={"functions": ["*"]}))
    # A payload at the cap passes, one byte more is refused before the router sees it.
    assert plugin.call("ok", b"p" * HOST_PAYLOAD_MAX).endswith(b"p" * 100)
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("ok", b"p" * (HOST_PAYLOAD_MAX + 1))
    assert info.value.kind == "limit-reached" and str(HOST_PAYLOAD_MAX + 1) in info.value.detail
    assert len(router.calls) == 1
    # A result too large to hand to a plugin.
    with pytest.raises(plugbox.GuestError) as info:
        plugin.call("big", b"")
    assert info.value.kind == "limit-reached"


def test_host_name_bounds_at_the_service() -> None:
    svc = _services(Permissions(functions=("*",), dispatch=("*",)), FakeRouter())
    for fn in (svc.host_call, svc.host_dispatch):
        for bad in ("", "a" * (HOST_NAME_MAX + 1), "é" * (HOST_NAME_MAX // 2 + 1)):
            with pytest.raises(HostCallError) as info:
                fn(bad, b"1")
            assert info.value.kind == "invalid-input"
        assert fn("a" * HOST_NAME_MAX, b"1") is not None


# -- host.dispatch ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_host_dispatch_returns_the_dispatch_result(
        form: str, rt: plugbox.Runtime, router: FakeRouter, tmp_path: Path) -> None:
    plugin = rt.load(stage(tmp_path, DISPATCHER, form, hooks=["report.section", "other"],
                           permissions={"dispatch": ["report.*"]}))
    result = json.loads(plugin.call("report.section", b'{"title": "t"}'))
    assert result == {"point": "report.section", "mode": "each", "value": None,
                      "results": [{"plugin": "b", "value": {"title": "t"}}], "failures": []}
    assert router.calls == [("dispatch", "caller", "report.section", b'{"title": "t"}')]
    with pytest.raises(plugbox.PermissionDenied) as info:
        plugin.call("other", b"{}")
    assert info.value.permission == "dispatch"
    assert "permissions.dispatch" in str(info.value)


def _services(perms: Permissions, router: Any, own: frozenset[str] = frozenset(),
              tmp: Path | None = None) -> HostServices:
    return HostServices(plugin="p", permissions=perms, config={},
                        kv=None,  # type: ignore[arg-type]  # kv is not used by host calls
                        events=EventBus(), router=router, own_points=own)


def test_a_plugin_may_dispatch_the_points_it_declares() -> None:
    router = FakeRouter()
    svc = _services(Permissions(), router, frozenset({"mine.point"}))
    assert json.loads(svc.host_dispatch("mine.point", b"1"))["point"] == "mine.point"
    with pytest.raises(HostCallError) as info:
        svc.host_dispatch("theirs.point", b"1")
    assert (info.value.kind, info.value.permission) == ("denied", "dispatch")
    with pytest.raises(HostCallError) as info:
        svc.host_call("mine.point", b"1")  # declaring a point grants no host functions
    assert info.value.permission == "functions"


def test_router_denials_are_charged_to_the_permission() -> None:
    class Denying(FakeRouter):
        def call_function(self, plugin: str, name: str, payload: bytes) -> bytes:
            raise HostCallError("denied", f"{name} is not registered")

    svc = _services(Permissions(functions=("*",)), Denying())
    with pytest.raises(HostCallError) as info:
        svc.host_call("nope", b"")
    assert (info.value.kind, info.value.permission) == ("denied", "functions")
    assert svc.denied["functions"] == 1


def test_router_returning_no_bytes_is_a_failure() -> None:
    class Broken(FakeRouter):
        def call_function(self, plugin: str, name: str, payload: bytes) -> bytes:
            return {"not": "bytes"}  # type: ignore[return-value]

    with pytest.raises(HostCallError) as info:
        _services(Permissions(functions=("*",)), Broken()).host_call("f", b"")
    assert info.value.kind == "failure"


# -- permissions and policy ------------------------------------------------------------------


def test_manifest_permissions_functions_and_dispatch(tmp_path: Path) -> None:
    d = write_plugin(tmp_path / "p", CALLER, abi="1.1",
                     permissions={"functions": ["battles.query", "battles.*"],
                                  "dispatch": ["report.section"]})
    perms = plugbox.load_manifest(d).permissions
    assert perms.functions == ("battles.query", "battles.*")
    assert perms.dispatch == ("report.section",)
    assert "host" in perms.services()
    assert perms.allows_function("battles.list") and not perms.allows_function("admin.x")
    assert Permissions().services() == frozenset()
    for bad in ({"functions": "battles.*"}, {"functions": [""]}, {"dispatch": ["has space"]},
                {"functions": ["x"] * 2}):
        write_plugin(tmp_path / "bad", CALLER, abi="1.1", permissions=bad)
        with pytest.raises(plugbox.ManifestError) as info:
            plugbox.load_manifest(tmp_path / "bad")
        assert "$.permissions." in str(info.value)


def test_policy_caps_functions_and_dispatch_points(tmp_path: Path) -> None:
    d = write_plugin(tmp_path / "p", CALLER, abi="1.1", hooks=["x"],
                     permissions={"functions": ["battles.*"], "dispatch": ["report.section"]})
    manifest = plugbox.load_manifest(d)
    Policy().resolve(manifest)  # default: the host decides per function
    Policy(host_functions=("battles.*",), dispatch_points=("report.*",)).resolve(manifest)
    with pytest.raises(plugbox.PolicyViolationError) as info:
        Policy(host_functions=("battles.query",)).resolve(manifest)
    assert info.value.permission == "functions"
    assert "Policy(host_functions=(..., 'battles.*'))" in str(info.value)
    with pytest.raises(plugbox.PolicyViolationError) as info:
        Policy(dispatch_points=()).resolve(manifest)
    assert info.value.permission == "dispatch"
    with pytest.raises(plugbox.PolicyViolationError):
        Policy(allowed_services=frozenset({"log"})).resolve(manifest)
    with pytest.raises(plugbox.UsageError):
        Policy(host_functions="battles.*")  # a string, not a collection
    with pytest.raises(plugbox.UsageError):
        Policy(dispatch_points=("",))


def test_withholding_host_denies_every_host_call(rt: plugbox.Runtime, tmp_path: Path) -> None:
    plugin = rt.load(stage(tmp_path, CALLER, "core", hooks=["battles.query"],
                           permissions={"functions": ["*"]}), withhold={"host"})
    with pytest.raises(plugbox.PermissionDenied) as info:
        plugin.call("battles.query", b"")
    assert info.value.permission == "functions"


# -- versioning ------------------------------------------------------------------------------


def test_runtime_abi_option(tmp_path: Path) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "a") as runtime:
        assert runtime.abi_version == "1.1.0"
    with plugbox.Runtime(state_dir=tmp_path / "b", abi="1.0") as runtime:
        assert runtime.abi_version == "1.0.0"
    for bad in ("2.0", "1.2", "1", 1.0):
        with pytest.raises(plugbox.UsageError) as info:
            plugbox.Runtime(state_dir=tmp_path / "c", abi=bad)  # type: ignore[arg-type]
        assert "1.0" in str(info.value) and "1.1" in str(info.value)


@pytest.fixture
def rt10(tmp_path: Path, router: FakeRouter) -> Iterator[plugbox.Runtime]:
    with plugbox.Runtime(state_dir=tmp_path / "state10", abi="1.0", router=router) as runtime:
        yield runtime


@pytest.mark.parametrize("form", FORMS)
def test_a_host_offering_1_0_refuses_1_1_plugins(form: str, rt10: plugbox.Runtime,
                                                 tmp_path: Path) -> None:
    # Declared in the manifest ...
    with pytest.raises(plugbox.IncompatibleAbiError) as info:
        rt10.load(stage(tmp_path / "a", CALLER, form, hooks=["x"],
                        permissions={"functions": ["*"]}))
    assert "1.1" in str(info.value) and "1.0" in str(info.value)
    # ... or only in the imports.
    with pytest.raises(plugbox.IncompatibleAbiError) as info:
        rt10.load(stage(tmp_path / "b", CALLER, form, hooks=["x"], abi="1.0",
                        permissions={"functions": ["*"]}))
    assert "1.1" in str(info.value)


def test_a_1_0_module_cannot_import_1_1_functions_under_1_0_names(
        rt: plugbox.Runtime, tmp_path: Path) -> None:
    imports = ('(import "plugbox:plugin/kv@1.0.0" "increment" '
               '(func $i (param i32 i32 i64 i32)))')
    with pytest.raises(plugbox.ModuleInterfaceError) as info:
        rt.load(write_plugin(tmp_path / "p", core(ECHO_BODY, imports), permissions={"kv": {}}))
    assert "added to the kv interface in plugbox ABI 1.1" in str(info.value)
    assert "plugbox:plugin/kv@1.1.0" in str(info.value)


def test_a_1_1_plugin_must_declare_abi_1_1(rt: plugbox.Runtime, tmp_path: Path) -> None:
    with pytest.raises(plugbox.IncompatibleAbiError) as info:
        rt.load(stage(tmp_path, CALLER, "core", hooks=["x"], abi="1.0",
                      permissions={"functions": ["*"]}))
    assert "newer than the abi '1.0' its manifest declares" in str(info.value)


SAMPLES_1_0 = ("echo", "word-stats", "counter")


def _run_1_0_samples(runtime: plugbox.Runtime, plugins: dict[str, Path]) -> list[Any]:
    out: list[Any] = []
    echo = runtime.load(plugins["echo"])
    out.append(echo.call("echo", b"\x00\xffhello"))
    stats = runtime.load(plugins["word-stats"], config={"top_n": 1})
    out.append(stats.call_json("text.stats", {"text": "b a b"}))
    counter = runtime.load(plugins["counter"])
    out.append(counter.call_json("counter.incr", {"name": "n", "by": 2}))
    out.append(counter.call_json("counter.incr", {"name": "n"}))
    out.append(counter.call_json("counter.list", {}))
    return out


EXPECTED_1_0 = [
    b"\x00\xffhello",
    {"words": 3, "unique_words": 2, "top": [{"word": "b", "count": 2}]},
    {"name": "n", "value": 2, "previous": 0},
    {"name": "n", "value": 3, "previous": 2},
    {"counters": {"n": 3}},
]


@pytest.mark.parametrize("abi", ["1.1", "1.0"])
def test_committed_1_0_samples_run_unchanged(abi: str, tmp_path: Path) -> None:
    """The modules and manifests the 1.0 samples were committed with (tests/abi10), untouched:
    pinned digests, 1.0 imports and custom section, on hosts offering 1.1 and 1.0."""
    plugins = {name: ABI10 / name for name in SAMPLES_1_0}
    for directory in plugins.values():
        assert json.loads((directory / "plugbox.json").read_text())["abi"] == "1.0"
    with plugbox.Runtime(state_dir=tmp_path / "s", abi=abi) as runtime:
        assert _run_1_0_samples(runtime, plugins) == EXPECTED_1_0


@needs_wasm_tools
@pytest.mark.parametrize("abi", ["1.1", "1.0"])
def test_1_0_components_link_to_the_1_1_host(abi: str, tmp_path: Path) -> None:
    """Components built against the 1.0 WIT import plugbox:plugin/*@1.0.0; the host defines
    its interfaces at the version it offers, and wasmtime links the older minor to them."""
    from plugbox.authoring._build import wrap_component

    plugins = {name: wrap_component(ABI10 / name, tmp_path / "c", wit=ABI10)
               for name in SAMPLES_1_0}
    from plugbox.engine._wasmparse import inspect_module

    imports = inspect_module((plugins["counter"] / "plugin.wasm").read_bytes()).component_imports
    assert "plugbox:plugin/kv@1.0.0" in imports
    with plugbox.Runtime(state_dir=tmp_path / "s", abi=abi) as runtime:
        assert _run_1_0_samples(runtime, plugins) == EXPECTED_1_0


def test_cli_inspect_agrees_with_the_runtime_on_1_1_plugins(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from plugbox.cli._main import main

    d = stage(tmp_path, CALLER, "core", hooks=["x"], permissions={"functions": ["a.*"]})
    assert main(["inspect", "--json", str(d)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["checks"]["interface"]["ok"] is True
    assert "host" in report["imported_services"]
    assert main(["inspect", str(d)]) == 0  # the table view lists the host interface too
    assert "host" in capsys.readouterr().out
    bare = stage(tmp_path / "bare", CALLER, "core", hooks=["x"])
    assert main(["inspect", str(bare)]) != 0  # imports host without requesting it
