"""The Python SDK (plugbox_sdk) and its native test harness: hooks and error mapping, JSON
helpers, every host service against the manifest's permissions, and the Python samples.

Nothing here builds a component: the harness runs plugins in this CPython.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugbox
import plugbox_sdk
from plugbox import _permissions
from plugbox.services import _services
from plugbox_sdk import (
    DeniedError,
    Error,
    FailureError,
    InvalidInputError,
    LimitReachedError,
    NotFoundError,
    testing,
)
from plugbox_sdk import _hooks, _host
from plugbox_sdk.http import Request, Response
from plugbox_sdk.testing import _fakehost, _spec

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample-plugins" / "python"

MakePlugin = Callable[..., Path]


@pytest.fixture
def make_plugin(tmp_path: Path) -> MakePlugin:
    """Factory: ``make_plugin(code, hooks=[...], permissions={...}, **manifest)`` -> a plugin
    directory with ``app.py`` (``code``, dedented) and a valid ``plugbox.json``."""
    counter = iter(range(1000))

    def make(code: str, *, hooks: list[str], permissions: dict[str, Any] | None = None,
             files: dict[str, str] | None = None, **manifest: Any) -> Path:
        directory = tmp_path / f"plugin{next(counter)}"
        directory.mkdir()
        (directory / "app.py").write_text(textwrap.dedent(code))
        for name, text in (files or {}).items():
            (directory / name).write_text(textwrap.dedent(text))
        doc = {
            "manifest_version": 1,
            "name": manifest.pop("name", directory.name),
            "version": "0.1.0",
            "abi": "1.0",
            "module": {"path": "plugin.wasm", "sha256": "0" * 64},
            "hooks": hooks,
            "permissions": permissions or {},
            **manifest,
        }
        (directory / "plugbox.json").write_text(json.dumps(doc, indent=2))
        return directory

    return make


# -- public surface --------------------------------------------------------------------------


def test_public_names() -> None:
    assert plugbox_sdk.__all__ == sorted(plugbox_sdk.__all__)
    assert set(plugbox_sdk.__all__) == {
        "ABI_VERSION", "ERROR_KINDS", "DeniedError", "Error", "FailureError",
        "HEALTH_HOOK", "InvalidInputError", "LimitReachedError", "NotFoundError",
        "__version__", "clock", "config", "events", "health", "hook", "host", "http", "init",
        "kv", "log", "random",
    }
    assert testing.__all__ == sorted(testing.__all__)
    for name in plugbox_sdk.__all__ + [f"testing.{n}" for n in testing.__all__]:
        obj = plugbox_sdk
        for part in name.split("."):
            obj = getattr(obj, part)
        assert obj is not None


def test_error_tree_mirrors_the_abi() -> None:
    assert plugbox_sdk.ERROR_KINDS == plugbox.engine._abispec.ERROR_KINDS
    classes = [DeniedError, NotFoundError, InvalidInputError, LimitReachedError, FailureError]
    assert [c.kind for c in classes] == list(plugbox.engine._abispec.ERROR_KINDS)
    for cls in classes:
        error = Error.from_kind(cls.kind, "m")
        assert type(error) is cls and isinstance(error, Error)
        assert str(error) == f"{cls.kind}: m"
        assert error.context("while x").message == "while x: m"
    assert Error("m").kind == "failure" and Error("m") == FailureError("m")
    assert DeniedError("a") != NotFoundError("a")
    with pytest.raises(ValueError, match="unknown ABI error kind"):
        Error.from_kind("nope", "m")


def test_fake_host_refuses_over_cap_inputs_like_the_runtime() -> None:
    spec = _spec.PluginSpec(
        name="caps", directory=Path("."), hooks=("run",), module_path=Path("x.wasm"),
        config=True, kv=_spec.KvSpec(), http=_spec.HttpSpec(hosts=("127.0.0.1:*",)),
    )
    host = _fakehost.FakeHost(spec, http=lambda request: Response(200))
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: host.config_get("k" * 1025), plugbox_sdk.InvalidInputError, "1024"),
        (lambda: host.kv_list_keys("p" * 257), plugbox_sdk.InvalidInputError, "256"),
        (lambda: host.http_fetch("G" * 33, "http://127.0.0.1/", [], b""),
         plugbox_sdk.InvalidInputError, "32"),
        (lambda: host.http_fetch("GET", "http://127.0.0.1/" + "a" * 8192, [], b""),
         plugbox_sdk.InvalidInputError, "8192"),
        (lambda: host.http_fetch("GET", "http://127.0.0.1/", [("x", "y")] * 101, b""),
         plugbox_sdk.LimitReachedError, "100"),
        (lambda: host.http_fetch("GET", "http://127.0.0.1/", [("x", "y" * 8193)], b""),
         plugbox_sdk.InvalidInputError, "8192"),
    ]
    for call, error, cap in cases:
        with pytest.raises(error, match=cap):
            call()
    assert host.config_get("k" * 1024) is None and host.kv_list_keys("p" * 256) == []
    assert host.http_fetch("GET", "http://127.0.0.1/", [("x", "y")] * 100, b"")[0] == 200


def test_fake_host_limits_match_the_runtime() -> None:
    # The harness is only useful if it enforces what the runtime enforces.
    assert _fakehost.KV_KEY_MAX == _services.KV_KEY_MAX
    assert _fakehost.KV_VALUE_MAX == _services.KV_VALUE_MAX
    assert _fakehost.KV_LIST_MAX == _services.KV_LIST_MAX
    assert _fakehost.EVENT_TOPIC_MAX == _services.EVENT_TOPIC_MAX
    assert _fakehost.EVENT_PAYLOAD_MAX == _services.EVENT_PAYLOAD_MAX
    assert _fakehost.RANDOM_MAX == _services.RANDOM_MAX
    assert _fakehost.HTTP_MAX_REDIRECTS == _services.HTTP_MAX_REDIRECTS
    for cap in ("CONFIG_KEY_MAX", "HTTP_METHOD_MAX", "HTTP_URL_MAX", "HTTP_HEADER_NAME_MAX",
                "HTTP_HEADER_VALUE_MAX", "HTTP_HEADERS_MAX"):
        assert getattr(_fakehost, cap) == getattr(_services, cap), cap
    assert _fakehost.FORBIDDEN_REQUEST_HEADERS == _services.FORBIDDEN_REQUEST_HEADERS
    kv, http = _permissions.KvPermission(), _permissions.HttpPermission()
    assert (_spec.KV_QUOTA_BYTES, _spec.KV_QUOTA_KEYS) == (kv.quota_bytes, kv.quota_keys)
    assert _spec.HTTP_METHODS == http.methods
    assert _spec.HTTP_MAX_REQUEST_BYTES == http.max_request_bytes
    assert _spec.HTTP_MAX_RESPONSE_BYTES == http.max_response_bytes
    assert _spec.HTTP_TIMEOUT_MS == http.timeout_ms


def test_host_patterns_match_the_runtime() -> None:
    patterns = ("127.0.0.1:*", "example.com", "*.example.org:8*", "[::1]:*")
    ours = _spec.HttpSpec(hosts=patterns)
    theirs = _permissions.HttpPermission(hosts=patterns)
    for host, port, default in [
        ("127.0.0.1", 8000, 80), ("example.com", 80, 80), ("example.com", 8080, 80),
        ("api.example.org", 8443, 443), ("api.example.org", 443, 443), ("::1", 9, 80),
        ("evil.com", 80, 80),
    ]:
        assert ours.allows_host(host, port, default) == theirs.allows_host(host, port, default)


# -- hooks, errors, JSON ---------------------------------------------------------------------

HOOKS_APP = """
    from plugbox_sdk import hook, InvalidInputError, NotFoundError

    @hook("bytes")
    def as_bytes(payload):
        return payload[::-1]

    @hook("text")
    def as_text(payload):
        return "héllo"

    @hook("nothing")
    def nothing(payload):
        return None

    @hook("wrong-type")
    def wrong(payload):
        return 42

    @hook("json", json=True)
    def as_json(value):
        return {"got": value}

    @hook("not-serialisable", json=True)
    def bad_json(value):
        return {1, 2}

    @hook("invalid")
    def invalid(payload):
        raise InvalidInputError("bad payload")

    @hook("missing")
    def missing(payload):
        raise NotFoundError("no such thing")

    @hook("crash")
    def crash(payload):
        raise ValueError("boom")

    @hook("memory")
    def memory(payload):
        raise MemoryError()
"""
HOOK_NAMES = ["bytes", "text", "nothing", "wrong-type", "json", "not-serialisable", "invalid",
              "missing", "crash", "memory", "declared-only"]


@pytest.fixture
def hooks_plugin(make_plugin: MakePlugin) -> Iterator[testing.Harness]:
    harness = testing.load(make_plugin(HOOKS_APP, hooks=HOOK_NAMES,
                                       permissions={"log": True}))
    yield harness
    harness.close()


def test_bytes_hooks(hooks_plugin: testing.Harness) -> None:
    assert hooks_plugin.call("bytes", b"\x00abc\xff") == b"\xffcba\x00"
    assert hooks_plugin.call("bytes", "text") == b"txet"
    assert hooks_plugin.call("text") == "héllo".encode()
    assert hooks_plugin.call("nothing") == b""
    with pytest.raises(FailureError, match="returned int; a hook returns bytes"):
        hooks_plugin.call("wrong-type")


def test_json_hooks(hooks_plugin: testing.Harness) -> None:
    assert hooks_plugin.call_json("json", [1, "ü"]) == {"got": [1, "ü"]}
    assert hooks_plugin.call("json", b"") == b'{"got":null}'  # empty payload reads as None
    assert hooks_plugin.call("json", '"ü"') == '{"got":"ü"}'.encode()  # compact, UTF-8
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        hooks_plugin.call("json", b"{nope")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        hooks_plugin.call("json", b"\xff")
    with pytest.raises(FailureError, match="not JSON-serialisable"):
        hooks_plugin.call_json("not-serialisable")


def test_errors_keep_their_kind(hooks_plugin: testing.Harness) -> None:
    with pytest.raises(InvalidInputError, match="^invalid-input: bad payload$"):
        hooks_plugin.call("invalid")
    with pytest.raises(NotFoundError, match="no such thing"):
        hooks_plugin.call("missing")


def test_other_exceptions_become_failure_with_a_logged_traceback(
    hooks_plugin: testing.Harness,
) -> None:
    with pytest.raises(FailureError) as info:
        hooks_plugin.call("crash")
    assert info.value.message == "ValueError: boom"
    record = hooks_plugin.logs[-1]
    assert record.level == "error" and "Traceback" in record.message and "boom" in record.message


def test_resource_exhaustion_and_refusals_keep_their_meaning(
    hooks_plugin: testing.Harness,
) -> None:
    # The host reads these to raise MemoryLimitExceeded / StackOverflow / PermissionDenied.
    with pytest.raises(LimitReachedError) as info:
        hooks_plugin.call("memory")
    assert info.value.message == "MemoryError"


def test_unknown_hooks_are_not_found(hooks_plugin: testing.Harness) -> None:
    with pytest.raises(NotFoundError, match="has no hook 'undeclared'; its manifest declares"):
        hooks_plugin.call("undeclared")
    # Declared in the manifest, but app.py registers no handler: the plugin's own not-found.
    with pytest.raises(NotFoundError, match='unknown hook "declared-only"'):
        hooks_plugin.call("declared-only")


def test_traceback_is_not_logged_without_the_log_permission(make_plugin: MakePlugin) -> None:
    harness = testing.load(make_plugin(HOOKS_APP, hooks=HOOK_NAMES))
    with pytest.raises(FailureError):
        harness.call("crash")
    assert harness.logs == [] and harness.denied == ["log"]


def test_registration_mistakes_fail_at_import(make_plugin: MakePlugin) -> None:
    twice = make_plugin("""
        from plugbox_sdk import hook
        @hook("a")
        def one(p): return p
        @hook("a")
        def two(p): return p
    """, hooks=["a"])
    with pytest.raises(ValueError, match="hook 'a' is registered twice"):
        testing.load(twice)
    bad_name = make_plugin("""
        from plugbox_sdk import hook
        @hook("Bad Name")
        def one(p): return p
    """, hooks=["a"])
    with pytest.raises(ValueError, match="invalid hook name 'Bad Name'"):
        testing.load(bad_name)
    bare = make_plugin("""
        from plugbox_sdk import hook
        @hook
        def one(p): return p
    """, hooks=["a"])
    with pytest.raises(TypeError, match="hook name is required"):
        testing.load(bare)


def test_registry_dispatch_directly() -> None:
    registry = _hooks.Registry()
    registry.add_hook("x", lambda p: p + b"!")
    assert registry.dispatch("x", b"hi") == b"hi!"
    registry.run_init("{}")  # no init function: any configuration is accepted
    with pytest.raises(NotFoundError):
        registry.dispatch("y", b"")


def test_init_gets_the_config_and_can_fail(make_plugin: MakePlugin) -> None:
    code = """
        from plugbox_sdk import hook, init, InvalidInputError
        settings = {}

        @init
        def setup(config):
            if config.get("fail"):
                raise InvalidInputError("refusing this configuration")
            settings.update(config)

        @hook("show", json=True)
        def show(value):
            return settings
    """
    directory = make_plugin(code, hooks=["show"])
    assert testing.load(directory, config={"a": 1}).call_json("show") == {"a": 1}
    with pytest.raises(InvalidInputError, match="refusing this configuration"):
        testing.load(directory, config={"fail": True})


def test_config_is_checked_against_the_schema(make_plugin: MakePlugin) -> None:
    directory = make_plugin(
        "from plugbox_sdk import hook\n@hook('a')\ndef a(p): return p\n", hooks=["a"],
        config_schema={"type": "object", "properties": {"n": {"type": "integer"}},
                       "additionalProperties": False},
    )
    testing.load(directory, config={"n": 3})
    with pytest.raises(plugbox.UsageError):
        testing.load(directory, config={"n": "three"})


def test_host_services_at_import_time_fail_clearly(make_plugin: MakePlugin) -> None:
    directory = make_plugin("from plugbox_sdk import kv\nkv.get('x')\n", hooks=["a"])
    with pytest.raises(_host.NoHostError, match="not at import time"):
        testing.load(directory)
    with pytest.raises(_host.NoHostError):
        plugbox_sdk.kv.get("x")  # nor outside a harness


def test_imports_inside_hooks_fail_as_in_a_component(make_plugin: MakePlugin) -> None:
    code = """
        from plugbox_sdk import hook

        @hook("lazy")
        def lazy(payload):
            import plugbox_never_imported_module_xyz
            return b""
    """
    directory = make_plugin(code, hooks=["lazy"])
    with pytest.raises(FailureError, match="Move `import plugbox_never_imported_module_xyz` "
                                           "to the top"):
        testing.load(directory).call("lazy")
    with pytest.raises(FailureError, match="ModuleNotFoundError: No module named"):
        testing.load(directory, strict_imports=False).call("lazy")


def test_plugins_load_side_by_side(make_plugin: MakePlugin) -> None:
    code = """
        import helper
        from plugbox_sdk import hook

        @hook("who")
        def who(payload):
            return helper.NAME
    """
    a = testing.load(make_plugin(code, hooks=["who"], files={"helper.py": "NAME = b'a'\n"}))
    b = testing.load(make_plugin(code, hooks=["who"], files={"helper.py": "NAME = b'b'\n"}))
    assert (a.call("who"), b.call("who")) == (b"a", b"b")
    import sys

    assert "helper" not in sys.modules and "app" not in sys.modules


def test_load_options(make_plugin: MakePlugin, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = make_plugin("from plugbox_sdk import hook\n@hook('a')\ndef a(p): return p\n",
                            hooks=["a"])
    with pytest.raises(ValueError, match="unknown backend 'wasm'"):
        testing.load(directory, backend="wasm")
    monkeypatch.setenv("PLUGBOX_TEST_BACKEND", "wasm")
    with pytest.raises(ValueError, match="unknown backend 'wasm'"):
        testing.load(directory)
    with pytest.raises(ValueError, match="http= responders work with backend='native' only"):
        testing.load(directory, backend="component", http=lambda r: b"")
    with pytest.raises(FileNotFoundError, match="build the plugin first"):
        testing.load(directory, backend="component")
    with pytest.raises(FileNotFoundError, match="no plugbox.json"):
        testing.load(directory / "missing")
    (directory / "app.py").unlink()
    with pytest.raises(FileNotFoundError, match="no app.py"):
        testing.load(directory, backend="native")


# -- host services ---------------------------------------------------------------------------

SERVICES_APP = """
    from plugbox_sdk import hook, log, config, kv, events, clock, random, http

    @hook("log", json=True)
    def do_log(v):
        log.log(v["level"], v["message"])
        log.info("info")
        return None

    @hook("config", json=True)
    def do_config(v):
        return {"one": config.get(v["key"], "dflt"), "text": config.get_text(v["key"]),
                "all": config.get_all()}

    @hook("kv.set", json=True)
    def do_kv_set(v):
        kv.set(v["key"], v["value"])
        return None

    @hook("kv.get", json=True)
    def do_kv_get(v):
        value = kv.get(v["key"])
        return None if value is None else value.decode()

    @hook("kv.other", json=True)
    def do_kv_other(v):
        kv.set_json("j", {"n": 1})
        return {"json": kv.get_json("j"), "default": kv.get_json("none", 7),
                "keys": kv.list_keys(v.get("prefix", "")), "deleted": kv.delete("j"),
                "again": kv.delete("j")}

    @hook("emit", json=True)
    def do_emit(v):
        events.emit(v["topic"], v["payload"] if "payload" in v else b"raw\\x00")
        return None

    @hook("clock", json=True)
    def do_clock(v):
        return [clock.now(), clock.monotonic()]

    @hook("random", json=True)
    def do_random(v):
        return [len(random.bytes(v)), len(random.hex(4))]

    @hook("fetch", json=True)
    def do_fetch(v):
        r = http.fetch(v["url"], v.get("method", "GET"), headers=v.get("headers"),
                       body=v.get("body", b""))
        return {"status": r.status, "ok": r.ok, "ct": r.header("Content-Type"),
                "body": r.text(errors="replace")}
"""
SERVICE_HOOKS = ["log", "config", "kv.set", "kv.get", "kv.other", "emit", "clock", "random",
                 "fetch"]
ALL_PERMISSIONS = {
    "log": True, "config": True, "clock": True, "random": True,
    "kv": {"quota_bytes": 64, "quota_keys": 3},
    "events": {"topics": ["notes.*", "exact"]},
    "http": {"hosts": ["127.0.0.1:*", "api.example.com"], "methods": ["GET", "POST"],
             "max_request_bytes": 10, "max_response_bytes": 100},
}


@pytest.fixture
def services(make_plugin: MakePlugin) -> Callable[..., testing.Harness]:
    def load(permissions: dict[str, Any] | None = None, **options: Any) -> testing.Harness:
        perms = ALL_PERMISSIONS if permissions is None else permissions
        return testing.load(make_plugin(SERVICES_APP, hooks=SERVICE_HOOKS, permissions=perms),
                            **options)

    return load


def test_every_service_is_denied_without_its_permission(
    services: Callable[..., testing.Harness],
) -> None:
    plugin = services({})
    calls: list[tuple[str, Any, str]] = [
        ("config", {"key": "a"}, "config"),
        ("kv.get", {"key": "a"}, "kv"),
        ("kv.other", {}, "kv"),
        ("emit", {"topic": "exact"}, "events"),
        ("random", 4, "random"),
        ("fetch", {"url": "http://127.0.0.1:1/"}, "http"),
    ]
    for hook, value, service in calls:
        with pytest.raises(DeniedError, match=f'{service}: permission not granted; add '
                                              f'"{service}" to permissions in plugbox.json'):
            plugin.call_json(hook, value)
    assert plugin.denied == [service for _, _, service in calls]
    # log and clock have no error case in the ABI: dropped records, a zero clock.
    plugin.call_json("log", {"level": "warn", "message": "m"})
    assert plugin.call_json("clock") == [0, 0]
    assert plugin.logs == []
    assert plugin.denied[-4:] == ["log", "log", "clock", "clock"]


def test_withheld_services_are_denied(services: Callable[..., testing.Harness]) -> None:
    plugin = services(withhold={"kv"})
    with pytest.raises(DeniedError):
        plugin.call_json("kv.get", {"key": "a"})
    assert plugin.call_json("random", 3) == [3, 8]


def test_log(services: Callable[..., testing.Harness]) -> None:
    plugin = services()
    plugin.call_json("log", {"level": "warning", "message": "careful"})
    plugin.call_json("log", {"level": 0, "message": "t"})
    assert [(r.level, r.message) for r in plugin.logs] == [
        ("warn", "careful"), ("info", "info"), ("trace", "t"), ("info", "info")]
    with pytest.raises(FailureError, match="unknown log level 'loud'"):
        plugin.call_json("log", {"level": "loud", "message": "m"})


def test_config(services: Callable[..., testing.Harness]) -> None:
    plugin = services(config={"a": [1, "ü"], "b": None})
    assert plugin.call_json("config", {"key": "a"}) == {
        "one": [1, "ü"], "text": '[1,"ü"]', "all": {"a": [1, "ü"], "b": None}}
    assert plugin.call_json("config", {"key": "zz"})["one"] == "dflt"
    assert plugin.call_json("config", {"key": "b"})["text"] == "null"


def test_kv(services: Callable[..., testing.Harness]) -> None:
    plugin = services()
    plugin.call_json("kv.set", {"key": "k", "value": "v"})
    assert plugin.kv == {"k": b"v"}
    assert plugin.call_json("kv.get", {"key": "k"}) == "v"
    assert plugin.call_json("kv.get", {"key": "nope"}) is None
    plugin.kv["seeded"] = b"s"
    assert plugin.call_json("kv.other", {}) == {
        "json": {"n": 1}, "default": 7, "keys": ["j", "k", "seeded"], "deleted": True,
        "again": False}
    for key in ("", "x" * 257):
        with pytest.raises(InvalidInputError, match="key must be 1 to 256 bytes"):
            plugin.call_json("kv.set", {"key": key, "value": "v"})


def test_kv_quotas(services: Callable[..., testing.Harness]) -> None:
    plugin = services()  # 64 bytes, 3 keys
    plugin.call_json("kv.set", {"key": "a", "value": "x" * 40})
    with pytest.raises(LimitReachedError, match="quota of 64 bytes reached .*quota_bytes"):
        plugin.call_json("kv.set", {"key": "b", "value": "x" * 40})
    plugin.call_json("kv.set", {"key": "a", "value": "x" * 10})  # shrinking is fine
    plugin.call_json("kv.set", {"key": "b", "value": "1"})
    plugin.call_json("kv.set", {"key": "c", "value": "1"})
    with pytest.raises(LimitReachedError, match="quota of 3 keys reached .*quota_keys"):
        plugin.call_json("kv.set", {"key": "d", "value": "1"})
    assert sorted(plugin.kv) == ["a", "b", "c"]
    big = services({"kv": {}})
    with pytest.raises(LimitReachedError, match="exceeds the maximum of 1048576 bytes"):
        big.call_json("kv.set", {"key": "a", "value": "x" * ((1 << 20) + 1)})


def test_events(services: Callable[..., testing.Harness]) -> None:
    plugin = services()
    plugin.call_json("emit", {"topic": "notes.added", "payload": {"n": 1}})
    plugin.call_json("emit", {"topic": "exact", "payload": "text"})
    plugin.call_json("emit", {"topic": "exact"})
    assert [(e.topic, e.payload) for e in plugin.events] == [
        ("notes.added", b'{"n":1}'), ("exact", b'"text"'), ("exact", b"raw\x00")]
    assert plugin.events[0].json() == {"n": 1}
    with pytest.raises(DeniedError, match="topic 'other' is not allowed; add it .* "
                                          "permissions.events.topics"):
        plugin.call_json("emit", {"topic": "other"})
    with pytest.raises(DeniedError):
        plugin.call_json("emit", {"topic": "notes"})  # the pattern needs the dot
    with pytest.raises(InvalidInputError, match="topic must be 1 to 256 characters"):
        plugin.call_json("emit", {"topic": ""})
    with pytest.raises(LimitReachedError, match="payload of"):
        plugin.call_json("emit", {"topic": "exact", "payload": "x" * (1 << 20)})
    assert len(plugin.events) == 3


def test_clock_and_random(services: Callable[..., testing.Harness]) -> None:
    plugin = services()
    now, mono = plugin.call_json("clock")
    assert now > 1_600_000_000 * 10**9 and mono > 0
    assert plugin.call_json("random", 16) == [16, 8]
    with pytest.raises(LimitReachedError, match="at most 1048576 per call"):
        plugin.call_json("random", (1 << 20) + 1)


def test_http_with_a_responder(services: Callable[..., testing.Harness]) -> None:
    seen: list[Request] = []

    def responder(request: Request) -> Response:
        seen.append(request)
        return Response(201, [("Content-Type", "text/plain")], b"made")

    plugin = services(http=responder)
    result = plugin.call_json("fetch", {"url": "http://api.example.com/x", "method": "post",
                                        "headers": {"X-Id": "7"}, "body": "hi"})
    assert result == {"status": 201, "ok": True, "ct": "text/plain", "body": "made"}
    assert seen == [Request("POST", "http://api.example.com/x", [("x-id", "7")], b"hi")]
    assert seen[0].header("X-ID") == "7"


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"url": "http://evil.example.com/"}, DeniedError,
         "host 'evil.example.com' is not allowed; add 'evil.example.com' to "
         "permissions.http.hosts"),
        ({"url": "http://api.example.com:8080/"}, DeniedError, "'api.example.com:8080'"),
        ({"url": "http://127.0.0.1:9/", "method": "DELETE"}, DeniedError,
         "method DELETE is not allowed"),
        ({"url": "ftp://127.0.0.1/"}, InvalidInputError, "unsupported URL scheme 'ftp'"),
        ({"url": "http:///nohost"}, InvalidInputError, "URL has no host"),
        ({"url": "http://127.0.0.1:9/", "headers": {"Host": "x"}}, InvalidInputError,
         "header 'Host' is set by the host"),
        ({"url": "http://127.0.0.1:9/", "headers": {"a": "b\nc"}}, InvalidInputError,
         "must be ASCII without CR, LF or NUL"),
        ({"url": "http://127.0.0.1:9/", "method": "GE T"}, InvalidInputError,
         "invalid method"),
        ({"url": "http://127.0.0.1:9/", "method": "POST", "body": "x" * 11}, LimitReachedError,
         "exceeds max_request_bytes"),
    ],
)
def test_http_checks(services: Callable[..., testing.Harness], value: dict[str, Any],
                     error: type[Error], message: str) -> None:
    plugin = services(http=lambda request: pytest.fail("the request must not be sent"))
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        plugin.call_json("fetch", value)


def test_http_response_cap_and_responder_errors(
    services: Callable[..., testing.Harness],
) -> None:
    plugin = services(http=testing.static_responder({"http://127.0.0.1/big": b"x" * 101,
                                                     "http://127.0.0.1/ok": "fine"}))
    with pytest.raises(LimitReachedError, match="max_response_bytes"):
        plugin.call_json("fetch", {"url": "http://127.0.0.1/big"})
    assert plugin.call_json("fetch", {"url": "http://127.0.0.1/ok"})["body"] == "fine"
    assert plugin.call_json("fetch", {"url": "http://127.0.0.1/x"})["status"] == 404

    def down(request: Request) -> Response:
        raise FailureError("http: connection refused")

    with pytest.raises(FailureError, match="connection refused"):
        services(http=down).call_json("fetch", {"url": "http://127.0.0.1/"})


def test_http_over_the_network(services: Callable[..., testing.Harness],
                               http_server: str) -> None:
    server = http_server
    plugin = services()
    result = plugin.call_json("fetch", {"url": f"{server}/hello"})
    assert result["status"] == 200 and result["ct"] == "application/json"
    assert json.loads(result["body"]) == {"path": "/hello", "rid": None, "ua": "plugbox"}
    assert plugin.call_json("fetch", {"url": f"{server}/missing"})["status"] == 404
    assert json.loads(plugin.call_json("fetch", {"url": f"{server}/redirect-in"})["body"])[
        "path"] == "/hello"
    with pytest.raises(DeniedError, match=r"host 'evil.example.com' is not allowed "
                                          r"\(redirected from"):
        plugin.call_json("fetch", {"url": f"{server}/redirect-out"})
    with pytest.raises(FailureError, match="failed"):
        plugin.call_json("fetch", {"url": "http://127.0.0.1:1/"})


# -- the samples, natively -------------------------------------------------------------------


def test_sample_echo() -> None:
    echo = testing.load(SAMPLES / "echo")
    for payload in (b"", b"hi", bytes(range(256)) * 64):
        assert echo.call("echo", payload) == payload
    assert echo.denied == [] and echo.logs == []


def test_sample_text_tools() -> None:
    tools = testing.load(SAMPLES / "text-tools", config={"top_n": 2})
    stats = tools.call_json("text.stats", {"text": "The cat and the hat.\nThe end"})
    assert stats == {"lines": 2, "words": 7, "characters": 28, "unique_words": 5,
                     "top_words": [{"word": "the", "count": 3}, {"word": "and", "count": 1}]}
    outline = tools.call_json("markdown.outline", {
        "markdown": "# Title\n\n```\n# not a heading\n```\n## Usage ##\n## Usage\n#nope"})
    assert outline == {"headings": [
        {"level": 1, "text": "Title", "slug": "title", "line": 1},
        {"level": 2, "text": "Usage", "slug": "usage", "line": 6},
        {"level": 2, "text": "Usage", "slug": "usage-1", "line": 7},
    ]}
    summary = tools.call_json("csv.summary", {"csv": "name,age\nAda,36\nAlan,41\nAda,\n"})
    assert summary == {"rows": 3, "ragged_rows": 0, "columns": [
        {"name": "name", "empty": 0, "type": "text", "distinct": 2,
         "top": [{"value": "Ada", "count": 2}, {"value": "Alan", "count": 1}]},
        {"name": "age", "empty": 1, "type": "number", "min": 36.0, "max": 41.0, "mean": 38.5},
    ]}
    assert tools.call_json("config.show") == {"top_n": 2, "all": {"top_n": 2}}
    with pytest.raises(InvalidInputError, match='string field "text"'):
        tools.call_json("text.stats", {"txt": ""})
    with pytest.raises(InvalidInputError, match="single character"):
        tools.call_json("csv.summary", {"csv": "a", "delimiter": ";;"})
    with pytest.raises(plugbox.UsageError):
        testing.load(SAMPLES / "text-tools", config={"top_n": 0})  # config_schema: minimum 1


def test_sample_kv_notes() -> None:
    notes = testing.load(SAMPLES / "kv-notes")
    assert notes.call_json("notes.put", {"title": "todo", "body": "milk"}) == {
        "title": "todo", "created": True}
    assert notes.call_json("notes.put", {"title": "todo", "body": "eggs"})["created"] is False
    note = notes.call_json("notes.get", {"title": "todo"})
    assert note["body"] == "eggs" and note["updated_ns"] > 0
    notes.call_json("notes.put", {"title": "tea"})
    assert notes.call_json("notes.list") == {"titles": ["tea", "todo"]}
    assert notes.call_json("notes.list", {"prefix": "to"}) == {"titles": ["todo"]}
    assert notes.call_json("notes.delete", {"title": "tea"}) == {"deleted": True}
    assert notes.call_json("notes.delete", {"title": "tea"}) == {"deleted": False}
    with pytest.raises(NotFoundError, match="no note titled 'tea'"):
        notes.call_json("notes.get", {"title": "tea"})
    with pytest.raises(InvalidInputError, match="title must not be empty"):
        notes.call_json("notes.put", {"title": "  "})
    assert [e.json()["change"] for e in notes.events] == [
        "created", "updated", "created", "deleted"]
    assert set(notes.kv) == {"note:todo"}
    for i in range(19):
        notes.call_json("notes.put", {"title": f"n{i}"})
    with pytest.raises(LimitReachedError, match="quota of 20 keys"):
        notes.call_json("notes.put", {"title": "one too many"})


def test_sample_py_fetcher(http_server: str) -> None:
    server = http_server
    fetcher = testing.load(SAMPLES / "py-fetcher")
    result = fetcher.call_json("fetch", {"url": f"{server}/data"})
    assert result["status"] == 200
    assert result["json"] == {"path": "/data", "rid": None, "ua": "plugbox"}
    assert result["content_type"] == "application/json" and result["bytes"] > 0
    with pytest.raises(DeniedError, match="method POST is not allowed"):
        fetcher.call_json("fetch", {"url": f"{server}/data", "method": "POST"})
    with pytest.raises(DeniedError, match="host 'example.com' is not allowed"):
        fetcher.call_json("fetch", {"url": "http://example.com/"})
    assert [r.level for r in fetcher.logs] == ["info", "warn", "warn"]
    fake = testing.load(SAMPLES / "py-fetcher", http=lambda r: b"\xffnot utf-8")
    assert fake.call_json("fetch", {"url": "http://127.0.0.1/"})["body"] == "\ufffdnot utf-8"


def test_sample_hostile_echo_natively() -> None:
    # The other hostile hooks only make sense in the sandbox (tests/test_pybuild.py).
    hostile = testing.load(SAMPLES / "hostile")
    assert hostile.call("echo", b"still here") == b"still here"
