"""plugbox.integrations.flask (issue 14 §1) with Flask's test client and WAT plugins: every
hook kind, routes with roles and CSRF, XSS attempts, static files, templates, the CLI, and
failure policies."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")
import markupsafe  # noqa: E402

import plugbox  # noqa: E402
from plugbox.integrations.flask import Plugbox, declare_points  # noqa: E402

from .conftest import REPO, const_body, wait_for, wat_module, write_plugin  # noqa: E402

BASE = """<html><head><title>{% block title %}Site{% endblock %}</title>
{% block scripts %}<script src="/host.js"></script>{% endblock %}</head>
<body>{% block content %}{% endblock %}</body></html>"""


def plugin(root: Path, name: str, answer: Any, points: list[str], *, version: str = "0.1.0",
           web: dict[str, Any] | None = None, files: dict[str, str] | None = None,
           body: str | None = None) -> Path:
    """A WAT plugin answering ``answer`` (JSON) on hook ``run`` for each of ``points``."""
    if body is None:
        code, data = const_body(json.dumps(answer))
        module = wat_module(code, data)
    else:
        module = wat_module(body)
    fields: dict[str, Any] = {"implements": {p: {"hook": "run"} for p in points}}
    if web is not None:
        fields["web"] = web
    directory = write_plugin(root / f"{name}-{version}", module, name=name, version=version,
                             **fields)
    for rel, text in (files or {}).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    return directory


@pytest.fixture
def host(host: plugbox.PluginHost) -> plugbox.PluginHost:
    """conftest's host with the extension's points declared, so plugins can be added
    before the apps are made."""
    declare_points(host, check_inputs=True)
    return host


@pytest.fixture
def site(tmp_path: Path) -> Path:
    templates = tmp_path / "site-templates"
    templates.mkdir()
    (templates / "base.html").write_text(BASE)
    return templates


def make_app(host: plugbox.PluginHost, site: Path, **options: Any) -> flask.Flask:
    app = flask.Flask("plugbox_test", template_folder=str(site))
    app.secret_key = "test-secret"
    app.config["TESTING"] = True

    @app.get("/page")
    def page() -> str:
        return flask.render_template_string(flask.request.args.get("t", "plain page"))

    @app.get("/boom")
    def boom() -> str:
        flask.abort(404)

    options.setdefault("host_templates", {"base.html": ("title", "content")})
    options.setdefault("check_inputs", True)  # the tests check what the extension sends
    Plugbox(app, host=host, **options)
    return app


def roles_from_headers() -> tuple[str | None, list[str]]:
    """The tests' identity: the user and roles a test request names in X-Test-User/-Roles
    (a stand-in for the host's login; plugins never see these headers)."""
    user = flask.request.headers.get("X-Test-User")
    return user, [r for r in flask.request.headers.get("X-Test-Roles", "").split(",") if r]


# -- import without the extra -------------------------------------------------------------


def test_importing_without_the_extra_names_the_extra_to_install() -> None:
    code = ("import sys; sys.modules['flask'] = None\n"
            "try:\n    import plugbox.integrations.flask\n"
            "except Exception as exc:\n"
            "    import plugbox; print(isinstance(exc, plugbox.PlugboxError), exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO / "runtime")})
    assert out.stdout.startswith("True ")
    assert "pip install 'plugbox[flask]'" in out.stdout


def test_extension_shape_factory_and_points(host: plugbox.PluginHost, site: Path) -> None:
    ext = Plugbox(host=host, check_inputs=True)
    apps = []
    for _ in range(2):  # the application-factory pattern: one extension, two apps
        app = flask.Flask("factory")
        ext.init_app(app)
        apps.append(app)
    assert all(a.extensions["plugbox"].host is host for a in apps)
    assert not hasattr(ext, "app")
    assert host.points["flask.before_request"].version == "1.0.0"
    assert host.points["flask.before_request"].input_schema is not None
    with pytest.raises(plugbox.UsageError, match="already"):
        ext.init_app(apps[0])
    with pytest.raises(plugbox.UsageError, match="host="):
        Plugbox(flask.Flask("nohost"))


# -- request hooks ------------------------------------------------------------------------


def test_before_request_respond_short_circuits_with_the_plugins_answer(
        host: plugbox.PluginHost, site: Path, tmp_path: Path) -> None:
    host.add(plugin(tmp_path, "gate", {"respond": {"status": 403, "text": "go away",
                                                   "headers": {"X-Gate": "1",
                                                               "Set-Cookie": "a=b"}}},
                    ["flask.before_request"]))
    app = make_app(host, site)
    response = app.test_client().get("/page")
    assert response.status_code == 403
    assert response.get_data(as_text=True) == "go away"
    assert response.headers["X-Gate"] == "1"
    assert "Set-Cookie" not in response.headers  # not a header plugins may set
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_before_request_annotations_reach_templates_escaped(
        host: plugbox.PluginHost, site: Path, tmp_path: Path) -> None:
    host.add(plugin(tmp_path, "tag-er", {"annotate": {"tenant": "<b>acme</b>"}},
                    ["flask.before_request"]))
    app = make_app(host, site)
    page = app.test_client().get("/page", query_string={"t": "[{{ plugins.tag_er.tenant }}]"})
    assert page.status_code == 200
    assert page.get_data(as_text=True) == "[&lt;b&gt;acme&lt;/b&gt;]"


def test_plugins_see_only_allow_listed_headers(host: plugbox.PluginHost, site: Path,
                                               tmp_path: Path) -> None:
    seen: list[Any] = []
    host.add(plugin(tmp_path, "peek", None, ["flask.before_request"]))
    app = make_app(host, site, identity=roles_from_headers)
    ext = app.extensions["plugbox"].ext
    original = ext._dispatch

    def spy(point: str, payload: Any) -> Any:
        seen.append(payload)
        return original(point, payload)
    ext._dispatch = spy
    app.test_client().get("/page?a=1&a=2", headers={
        "Cookie": "session=secret", "Authorization": "Bearer t", "Accept": "text/html",
        "X-Test-User": "ann", "X-Test-Roles": "admin"})
    view = seen[0]
    assert view["headers"] == {"accept": "text/html", "user-agent": view["headers"]["user-agent"]}
    assert view["query"] == {"a": ["1", "2"]}
    assert (view["user"], view["roles"]) == ("ann", ["admin"])


def test_after_request_changes_allowed_headers_only(host: plugbox.PluginHost, site: Path,
                                                    tmp_path: Path) -> None:
    host.add(plugin(tmp_path, "stamp", {"set_headers": {
        "X-Stamp": "yes", "X-Frame-Options": "ALLOWALL", "Set-Cookie": "x=1",
        "Location": "https://evil.example/", "X-Bad": "a\r\nb"}}, ["flask.after_request"]))
    app = make_app(host, site)
    response = app.test_client().get("/page")
    assert response.headers["X-Stamp"] == "yes"
    for refused in ("X-Frame-Options", "Set-Cookie", "Location", "X-Bad"):
        assert refused not in response.headers, refused


def test_body_rewrites_need_the_body_grant(host: plugbox.PluginHost, site: Path,
                                           tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    host.add(plugin(tmp_path, "rewriter", {"body": "rewritten", "content_type": "text/html",
                                           "status": 200, "path": "/page"},
                    ["flask.response_body"]))
    app = make_app(host, site)
    with caplog.at_level(logging.ERROR, "plugbox.integrations.flask"):
        assert app.test_client().get("/page").get_data(as_text=True) == "plain page"
    assert "not granted them 'body'" in caplog.text
    granted = make_app(host, site, grants={"rewriter": {"body"}})
    assert granted.test_client().get("/page").get_data(as_text=True) == "rewritten"


def test_teardown_request_notifies_in_the_background(host: plugbox.PluginHost, site: Path,
                                                     tmp_path: Path) -> None:
    hosted = host.add(plugin(tmp_path, "audit", None, ["flask.teardown_request"]))
    app = make_app(host, site)
    before = hosted.plugin.calls
    assert app.test_client().get("/page").status_code == 200
    wait_for(lambda: hosted.plugin.calls == before + 1)


def test_error_handler_plugin_renders_the_error_body(host: plugbox.PluginHost, site: Path,
                                                     tmp_path: Path) -> None:
    host.add(plugin(tmp_path, "errors", {"html": "<h1>Lost</h1><script>x()</script>"},
                    ["flask.error_handler"]))
    app = make_app(host, site)
    response = app.test_client().get("/boom")
    assert response.status_code == 404
    assert "&lt;h1&gt;Lost" in response.get_data(as_text=True)  # escaped: no html grant
    granted = make_app(host, site, grants={"errors": {"html"}})
    response = granted.test_client().get("/nowhere")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == "<h1>Lost</h1>"  # sanitised: script gone


# -- template filters, tests, globals, context processors ------------------------------------


XSS = "<script>alert(1)</script><b onclick='x()'>bold</b>"


def test_filters_are_escaped_unless_granted_then_sanitised(
        host: plugbox.PluginHost, site: Path, tmp_path: Path) -> None:
    host.add(plugin(tmp_path, "shout", {"value": XSS}, ["flask.template_filter"],
                    web={"filters": ["loud"]}))
    page = "{{ 'hi'|shout.loud }}"
    plain = make_app(host, site).test_client().get("/page", query_string={"t": page})
    assert plain.get_data(as_text=True) == (
        "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b onclick=&#39;x()&#39;&gt;bold&lt;/b&gt;")
    granted = make_app(host, site, grants={"shout": {"html"}})
    html = granted.test_client().get("/page", query_string={"t": page}).get_data(as_text=True)
    assert html == "<b>bold</b>"


def test_template_tests_globals_and_context_processors(host: plugbox.PluginHost, site: Path,
                                                       tmp_path: Path) -> None:
    host.add(plugin(tmp_path, "even", {"value": True}, ["flask.template_test"],
                    web={"tests": ["even"]}))
    host.add(plugin(tmp_path, "greet", {"value": "hello <you>"}, ["flask.template_global"],
                    web={"globals": ["hello"]}))
    host.add(plugin(tmp_path, "ctx", {"motto": "<i>ok</i>"}, ["flask.context_processor"]))
    app = make_app(host, site)
    page = ("{% if 'ab' is even.even %}E{% endif %}|{{ plugins.greet.hello('x') }}|"
            "{{ plugins.ctx.motto }}")
    text = app.test_client().get("/page", query_string={"t": page}).get_data(as_text=True)
    assert text == "E|hello &lt;you&gt;|&lt;i&gt;ok&lt;/i&gt;"


def test_an_unknown_plugin_filter_does_not_compile(host: plugbox.PluginHost,
                                                   site: Path) -> None:
    app = make_app(host, site)
    app.config["TESTING"] = False
    response = app.test_client().get("/page", query_string={"t": "{{ 1|nobody.loud }}"})
    assert response.status_code == 500


# -- failure policies -------------------------------------------------------------------------


TRAP = "unreachable"


def test_failing_hook_fails_open_by_default_and_closed_when_the_host_says(
        host: plugbox.PluginHost, site: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    host.add(plugin(tmp_path, "broken", None, ["flask.before_request"], body=TRAP))
    with caplog.at_level(logging.WARNING, "plugbox.integrations.flask"):
        assert make_app(host, site).test_client().get("/page").status_code == 200
    assert "'broken', before_request" in caplog.text and "fail-open" in caplog.text


def test_fail_closed_answers_503_naming_nothing_internal(
        tmp_path: Path, cache_dir: Path, site: Path, caplog: pytest.LogCaptureFixture) -> None:
    with plugbox.PluginHost(state_dir=tmp_path / "s2",
                            runtime_options={"cache_dir": cache_dir}) as host:
        declare_points(host, fail_closed={"flask.before_request"}, check_inputs=True)
        host.add(plugin(tmp_path, "broken", None, ["flask.before_request"], body=TRAP))
        app = make_app(host, site, fail_closed={"flask.before_request"})
        with caplog.at_level(logging.ERROR, "plugbox.integrations.flask"):
            response = app.test_client().get("/page")
        assert response.status_code == 503
        assert response.get_data(as_text=True) == "Service Unavailable\n"
        assert "'broken'" in caplog.text and "Fix:" in caplog.text


@pytest.mark.parametrize("point,page", [
    ("flask.after_request", "plain"),
    ("flask.context_processor", "{{ plugins.broken.anything }}"),
])
def test_other_points_fail_closed_when_the_host_says(
        tmp_path: Path, cache_dir: Path, site: Path, point: str, page: str) -> None:
    with plugbox.PluginHost(state_dir=tmp_path / "s3",
                            runtime_options={"cache_dir": cache_dir}) as host:
        declare_points(host, fail_closed={point}, check_inputs=True)
        host.add(plugin(tmp_path, "broken", None, [point], body=TRAP))
        app = make_app(host, site, fail_closed={point})
        response = app.test_client().get("/page", query_string={"t": page})
        assert response.status_code == 503
        assert "broken" not in response.get_data(as_text=True)


def test_fail_closed_is_refused_for_points_that_cannot(host: plugbox.PluginHost,
                                                       site: Path) -> None:
    with pytest.raises(plugbox.UsageError, match="cannot fail closed"):
        make_app(host, site, fail_closed={"flask.teardown_request"})


# -- routes -----------------------------------------------------------------------------------


ROUTES = {"routes": [
    {"name": "open", "path": "/", "role": "public"},
    {"name": "mine", "path": "/me"},
    {"name": "admin", "path": "/admin/<int:id>", "role": "admin"},
    {"name": "save", "path": "/save", "methods": ["POST"], "role": "public"},
]}


def test_routes_roles_are_checked_before_the_plugin_runs(
        host: plugbox.PluginHost, site: Path, tmp_path: Path) -> None:
    hosted = host.add(plugin(tmp_path, "api", {"json": {"ok": True}}, ["flask.route"],
                             web=ROUTES))
    client = make_app(host, site, identity=roles_from_headers).test_client()
    assert client.get("/plugins/api/").get_json() == {"ok": True}
    calls = hosted.plugin.calls
    assert client.get("/plugins/api/me").status_code == 401
    assert client.get("/plugins/api/admin/3", headers={"X-Test-User": "bob"}).status_code == 403
    assert client.get("/plugins/api/admin/x", headers={"X-Test-User": "bob",
                                                       "X-Test-Roles": "admin"}
                      ).status_code == 404
    assert client.get("/plugins/api/nothing").status_code == 404
    assert client.delete("/plugins/api/").status_code == 405
    assert hosted.plugin.calls == calls  # none of those reached the plugin
    ok = client.get("/plugins/api/admin/3", headers={"X-Test-User": "ann",
                                                     "X-Test-Roles": "admin"})
    assert ok.status_code == 200 and hosted.plugin.calls == calls + 1
    assert ok.headers["X-Content-Type-Options"] == "nosniff"


def test_state_changing_routes_need_the_csrf_token(host: plugbox.PluginHost, site: Path,
                                                    tmp_path: Path) -> None:
    hosted = host.add(plugin(tmp_path, "api", {"text": "saved"}, ["flask.route"], web=ROUTES))
    app = make_app(host, site)
    client = app.test_client()
    calls = hosted.plugin.calls
    assert client.post("/plugins/api/save", data={"x": "1"}).status_code == 403
    assert client.post("/plugins/api/save", data={"csrf_token": "forged"}).status_code == 403
    assert client.post("/plugins/api/save", headers={"X-CSRF-Token": "forged"}
                       ).status_code == 403
    assert hosted.plugin.calls == calls
    token = client.get("/page", query_string={"t": "{{ plugbox_csrf_token() }}"}).get_data(
        as_text=True)
    assert client.post("/plugins/api/save", data={"csrf_token": token}).get_data(
        as_text=True) == "saved"
    assert client.post("/plugins/api/save", headers={"X-CSRF-Token": token},
                       json={"a": 1}).status_code == 200
    assert hosted.plugin.calls == calls + 2
    too_big = client.post("/plugins/api/save", headers={"X-CSRF-Token": token},
                          data=b"x" * (256 * 1024 + 1), content_type="text/plain")
    assert too_big.status_code == 413 and hosted.plugin.calls == calls + 2


@pytest.mark.parametrize("grant", [False, True])
def test_route_html_is_escaped_or_sanitised(host: plugbox.PluginHost, site: Path,
                                            tmp_path: Path, grant: bool) -> None:
    host.add(plugin(tmp_path, "page", {"html": XSS}, ["flask.route"], web=ROUTES))
    app = make_app(host, site, grants={"page": {"html"}} if grant else {})
    text = app.test_client().get("/plugins/page/").get_data(as_text=True)
    assert "<script>" not in text and "onclick" not in text.replace("onclick=&#39;", "")
    assert text == ("<b>bold</b>" if grant else str(markupsafe.escape(XSS)))


def test_bytes_bodies_of_active_types_become_attachments(host: plugbox.PluginHost, site: Path,
                                                         tmp_path: Path) -> None:
    import base64

    host.add(plugin(tmp_path, "bin", {"base64": base64.b64encode(b"<svg onload=x()>").decode(),
                                      "content_type": "image/svg+xml"}, ["flask.route"],
                    web=ROUTES))
    response = make_app(host, site).test_client().get("/plugins/bin/")
    assert response.mimetype == "application/octet-stream"
    assert response.headers["Content-Disposition"] == "attachment"


# -- static files and templates ----------------------------------------------------------------


def test_static_files_versioned_cached_and_without_traversal(
        host: plugbox.PluginHost, site: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.css").write_text("secret")
    directory = plugin(tmp_path, "look", None, [], web={"static": "static"}, files={
        "static/site.css": "body { color: red }", "static/page.html": "<script>x</script>",
        "static/app.js": "x()"})
    os.symlink(tmp_path / "secret.css", directory / "static" / "out.css")
    host.add(directory)
    client = make_app(host, site).test_client()
    ok = client.get("/plugins/look/0.1.0/static/site.css")
    assert ok.status_code == 200 and ok.get_data(as_text=True) == "body { color: red }"
    assert ok.mimetype == "text/css"
    assert ok.headers["X-Content-Type-Options"] == "nosniff"
    assert "immutable" in ok.headers["Cache-Control"] and "max-age=31536000" in \
        ok.headers["Cache-Control"]
    etag = ok.headers["ETag"]
    assert client.get("/plugins/look/0.1.0/static/site.css",
                      headers={"If-None-Match": etag}).status_code == 304
    for bad in ("/plugins/look/0.2.0/static/site.css",        # not the active version
                "/plugins/look/0.1.0/static/../plugbox.json",
                "/plugins/look/0.1.0/static/%2e%2e/plugbox.json",
                "/plugins/look/0.1.0/static/..%2fplugbox.json",
                "/plugins/look/0.1.0/static/page.html",       # not a static type
                "/plugins/look/0.1.0/static/app.js",          # scripts not granted
                "/plugins/look/0.1.0/static/out.css",         # symlink out of the plugin
                "/plugins/look/0.1.0/static/.hidden.css"):
        assert client.get(bad).status_code == 404, bad
    granted = make_app(host, site, grants={"look": {"scripts"}}).test_client()
    assert granted.get("/plugins/look/0.1.0/static/app.js").status_code == 200


PAGE = """{% extends "base.html" %}{% block title %}{{ name }}{% endblock %}
{% block content %}<p>{{ name }}</p><link href="{{ static('site.css') }}">{% endblock %}"""


def test_plugin_templates_extend_the_host_base_sandboxed(
        host: plugbox.PluginHost, site: Path, tmp_path: Path) -> None:
    web = {"templates": "templates", "static": "static", "routes": [
        {"name": "page", "path": "/", "role": "public"}]}
    host.add(plugin(tmp_path, "tpl", {"template": "page.html",
                                      "context": {"name": "<script>x()</script>"}},
                    ["flask.route"], web=web, files={"templates/page.html": PAGE}))
    text = make_app(host, site).test_client().get("/plugins/tpl/").get_data(as_text=True)
    assert "<title>&lt;script&gt;x()&lt;/script&gt;</title>" in text
    assert '<script src="/host.js"></script>' in text  # the host's block is kept
    assert '<link href="/plugins/tpl/0.1.0/static/site.css">' in text


@pytest.mark.parametrize("source", [
    '{% extends "base.html" %}{% block scripts %}<script>evil()</script>{% endblock %}',
    "{{ '<script>'|safe }}",
    "{% autoescape false %}{{ x }}{% endautoescape %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
], ids=["locked-block", "safe", "autoescape-off", "endless"])
def test_plugin_templates_that_break_the_rules_are_refused(
        host: plugbox.PluginHost, site: Path, tmp_path: Path, source: str) -> None:
    web = {"templates": "templates", "routes": [{"name": "page", "path": "/",
                                                  "role": "public"}]}
    host.add(plugin(tmp_path, "tpl", {"template": "page.html", "context": {"x": "<b>"}},
                    ["flask.route"], web=web, files={"templates/page.html": source}))
    app = make_app(host, site, render_deadline_ms=300)
    response = app.test_client().get("/plugins/tpl/")
    assert response.status_code == 503, response.get_data(as_text=True)


def test_plugin_templates_reach_no_python_internals(host: plugbox.PluginHost, site: Path,
                                                   tmp_path: Path) -> None:
    web = {"templates": "templates", "routes": [{"name": "page", "path": "/",
                                                  "role": "public"}]}
    host.add(plugin(tmp_path, "tpl", {"template": "page.html"}, ["flask.route"], web=web,
                    files={"templates/page.html": "[{{ ''.__class__.__mro__ }}]"
                                                  "[{{ request.__class__ }}]"}))
    response = make_app(host, site).test_client().get("/plugins/tpl/")
    assert response.get_data(as_text=True) == "[][]"


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_lifecycle_and_plugin_commands(host: plugbox.PluginHost, site: Path,
                                           tmp_path: Path) -> None:
    source = plugin(tmp_path, "tool", {"stdout": "hello from tool\n", "exit_code": 3},
                    ["flask.command"], web={"commands": [{"name": "hello", "help": "greet"}]})
    app = make_app(host, site)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["plugins", "install", str(source), "--json"])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(args=["plugins", "list", "--json"])
    doc = json.loads(listed.output)
    assert [p["name"] for p in doc["plugins"]] == ["tool"]
    refused = runner.invoke(args=["plugins", "list", "--state-dir", "/tmp/x"])
    assert refused.exit_code != 0
    # A new app over the host that now serves the plugin: `flask tool hello a b`.
    again = make_app(host, site)
    out = again.test_cli_runner().invoke(args=["tool", "hello", "a", "b"])
    assert out.output == "hello from tool\n" and out.exit_code == 3
    disabled = runner.invoke(args=["plugins", "disable", "tool", "--json"])
    assert json.loads(disabled.output)["disabled"] == ["tool"]
    failed = again.test_cli_runner().invoke(args=["tool", "hello"])
    assert failed.exit_code == 1 and "disabled" in failed.output


# -- reload while serving ------------------------------------------------------------------------


def test_upgrade_and_disable_while_serving_fail_no_request(
        host: plugbox.PluginHost, site: Path, tmp_path: Path) -> None:
    import threading

    points = ["flask.route", "flask.before_request"]
    web = {"routes": [{"name": "v", "path": "/", "role": "public"}]}
    v1 = plugin(tmp_path, "live", {"text": "v1"}, points[:1], web=web)
    host.install(v1)
    app = make_app(host, site)
    client = app.test_client()
    seen: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        local = app.test_client()
        while not stop.is_set():
            for url in ("/plugins/live/", "/page"):
                r = local.get(url)
                seen.append((url, r.status_code, r.get_data(as_text=True)))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_for(lambda: len(seen) > 20)
        v2 = plugin(tmp_path, "live", {"text": "v2"}, points[:1], version="0.2.0", web=web)
        assert host.upgrade(v2).status == "upgraded"
        wait_for(lambda: any(s[2] == "v2" for s in seen[-10:]))
        host.disable("live")
        mark = len(seen)
        wait_for(lambda: len(seen) > mark + 20)
    finally:
        stop.set()
        thread.join()
    bodies = {(url, code, body) for url, code, body in seen}
    assert {code for _, code, _ in bodies} <= {200, 404}, bodies
    assert ("/plugins/live/", 200, "v1") in bodies and ("/plugins/live/", 200, "v2") in bodies
    assert seen[-2][1] == 404 or seen[-1][1] == 404
    assert client.get("/page").status_code == 200
