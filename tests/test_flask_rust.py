"""The Rust sample sample-plugins/rust/web-greeter, built from source, served by the Flask
extension: before_request, a filter used in its own template extending the host's base, a
static file, JSON and page routes with roles, and its CLI command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

flask = pytest.importorskip("flask")

import plugbox  # noqa: E402
from plugbox.integrations.flask import Plugbox  # noqa: E402

from .conftest import REPO  # noqa: E402

SAMPLE = REPO / "sample-plugins" / "rust" / "web-greeter"


@pytest.fixture(scope="module")
def greeter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plugbox.authoring._build import build_rust_plugins, find_rust_toolchain

    try:
        find_rust_toolchain()
    except plugbox.UsageError as exc:
        pytest.skip(f"no Rust toolchain for wasm32-unknown-unknown: {exc}")
    out = tmp_path_factory.mktemp("web-greeter")
    staged = build_rust_plugins(REPO / "sample-plugins" / "rust", out, ["web-greeter"])
    directory = staged["web-greeter"]
    for sub in ("templates", "static"):  # the build stages manifest and module only
        shutil.copytree(SAMPLE / sub, directory / sub)
    return directory


def test_rust_plugin_serves_hooks_routes_templates_and_cli(
        greeter: Path, tmp_path: Path, cache_dir: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "base.html").write_text("<title>{% block title %}{% endblock %}</title>"
                                    "<main>{% block content %}{% endblock %}</main>")
    with plugbox.PluginHost(state_dir=tmp_path / "state",
                            runtime_options={"cache_dir": cache_dir}) as host:
        app = flask.Flask("greeter_app", template_folder=str(site))
        app.secret_key = "k"

        @app.get("/home")
        def home() -> str:
            return flask.render_template_string(
                "{{ 'quiet <b>'|web_greeter.shout }} {{ plugins.web_greeter.path_length }}")

        @app.get("/blocked")
        def blocked() -> str:
            raise AssertionError("the plugin answers first")

        Plugbox(app, host=host, host_templates={"base.html": ("title", "content")},
                identity=lambda: ("ann", ["user"]) if flask.request.args.get("login")
                else None)
        host.add(greeter)  # add: the managed store does not carry web assets yet (docs/flask.md)
        client = app.test_client()
        assert client.get("/home").get_data(as_text=True) == "QUIET &lt;B&gt; 5"
        refused = client.get("/blocked")
        assert (refused.status_code, refused.get_data(as_text=True)) == (
            403, "blocked by web-greeter")
        assert client.get("/plugins/web-greeter/hello/bob").get_json() == {
            "greeting": "hello, bob", "user": "anonymous"}
        assert client.get("/plugins/web-greeter/page/<i>x").status_code == 401
        page = client.get("/plugins/web-greeter/page/<i>x?login=1").get_data(as_text=True)
        assert "<title>Hello &lt;i&gt;x</title>" in page
        assert "<h1>Hello, &lt;I&gt;X!</h1>" in page
        assert f"path length {len('/plugins/web-greeter/page/<i>x')}" in page
        css = page.split('href="')[1].split('"')[0]
        assert css == "/plugins/web-greeter/0.1.0/static/greet.css"
        assert client.get(css).get_data(as_text=True) == "h1 { color: teal; }\n"

        fresh = flask.Flask("greeter_cli")
        Plugbox(fresh, host=host)
        runner = fresh.test_cli_runner()
        out = runner.invoke(args=["web-greeter", "greet", "ann", "bob"])
        assert (out.exit_code, out.output) == (0, "hello, ann\nhello, bob\n")
        usage = runner.invoke(args=["web-greeter", "greet"])
        assert usage.exit_code == 2
