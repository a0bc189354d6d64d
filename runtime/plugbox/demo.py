"""The plugbox demo: ``python -m plugbox.demo`` (``just demo``, ``python3 dev.py demo``).

Builds the sample plugins in ``sample-plugins/rust`` from source with cargo, loads them into a
:class:`plugbox.Runtime` whose state lives in a temporary directory, and shows, section by
section, what plugbox does:

1. verification: each plugin's manifest, hash, ABI, permissions and limits are checked before
   anything is compiled, and a module with one flipped byte is refused (HashMismatchError);
2. hooks called with results: word-stats, counter (with a host-side event subscriber),
   fetcher (against a local HTTP server the demo starts), echo;
3. a service call denied for lack of permission: the probe plugin calls every service;
4. runaway plugins stopped by fuel, deadline, memory and stack limits and an ABI violation,
   after which the host keeps serving.

Exit status 0 when every section behaved as expected, 1 otherwise. ``--json`` prints a
machine-readable summary instead of the report; ``--no-build DIR`` uses plugins already staged
in ``DIR/<name>/`` (``just build-samples`` stages them in ``.build/plugins``).
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

import plugbox
from plugbox import (
    AbiViolation,
    DeadlineExceeded,
    FuelExhausted,
    HashMismatchError,
    MemoryLimitExceeded,
    PlugboxError,
    StackOverflow,
)

__all__ = ["main"]

#: The source checkout this module runs from (``runtime/plugbox/demo.py`` -> the repo).
REPO = Path(__file__).resolve().parent.parent.parent
WORKSPACE = REPO / "sample-plugins" / "rust"

PLUGINS = ("echo", "word-stats", "counter", "fetcher", "probe", "hostile")
SERVICES = ("log", "config", "kv", "events", "clock", "random", "http")

#: The runtime's wasm stack cap, passed explicitly so the report can show it.
MAX_WASM_STACK = 512 * 1024

TEXT = (
    "A plugin is code the host does not trust. The host checks the plugin before it compiles "
    "it, runs the plugin under limits on fuel, time, memory and stack, and lets the plugin "
    "reach only the services the host grants. When a plugin misbehaves, the host stops the "
    "call, and the host keeps serving the other plugins."
)
TOP_N = 5

ECHO_PAYLOAD = b"binary-safe \x00\xff\xfe \xe2\x9c\x93"

# (hook, call options, expected error class, what stops it)
RUNAWAYS: tuple[tuple[str, dict[str, int], type[PlugboxError], str], ...] = (
    ("loop", {}, FuelExhausted, "fuel"),
    ("loop", {"fuel": 10**12, "deadline_ms": 100}, DeadlineExceeded, "deadline"),
    ("bomb", {}, MemoryLimitExceeded, "memory"),
    ("recurse", {}, StackOverflow, "stack"),
    ("bad-host-ptr", {}, AbiViolation, "abi"),
)


# ----------------------------------------------------------------------------------- helpers


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 4)) == 0:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} B"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _permissions(perms: plugbox.Permissions) -> list[str]:
    out: list[str] = []
    for name in SERVICES:
        if name == "kv" and perms.kv is not None:
            out.append(f"kv ({_size(perms.kv.quota_bytes)}, {perms.kv.quota_keys} keys)")
        elif name == "events" and perms.events is not None:
            out.append(f"events ({', '.join(perms.events.topics)})")
        elif name == "http" and perms.http is not None:
            out.append(f"http ({', '.join(perms.http.hosts)}; {', '.join(perms.http.methods)})")
        elif name in ("log", "config", "clock", "random") and getattr(perms, name):
            out.append(name)
    return out


def _limits(limits: plugbox.Limits) -> dict[str, int]:
    return {
        "fuel": limits.fuel,
        "memory_bytes": limits.memory_bytes,
        "deadline_ms": limits.deadline_ms,
        "instances": limits.instances,
    }


def _count(n: int) -> str:
    """10_000_000 -> 10M; other numbers with thousands separators."""
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale and n % (scale // 10) == 0:
            return f"{n / scale:g}{suffix}"
    return f"{n:,}"


def _duration(ms: int) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 and ms % 100 == 0 else f"{ms} ms"


def _limits_text(limits: plugbox.Limits) -> str:
    return (
        f"fuel {_count(limits.fuel)}\n{_size(limits.memory_bytes)} · "
        f"{_duration(limits.deadline_ms)}"
    )


def _short_message(error: PlugboxError) -> str:
    """The message without its "plugin 'x', hook 'y': " prefix, cut before the advice."""
    text = _first_line(str(error))
    prefix = f"plugin {error.plugin!r}, hook {error.hook!r}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    return re.split(r"; |\. (?=[A-Z])", text, maxsplit=1)[0]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def expected_word_stats(text: str, top_n: int) -> dict[str, Any]:
    """What word-stats should answer for an ASCII ``text``, computed independently."""
    words = [w.strip("'").lower() for w in re.findall(r"[A-Za-z0-9']+", text)]
    words = [w for w in words if w]
    counts = Counter(words)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    return {
        "words": len(words),
        "unique_words": len(counts),
        "top": [{"word": w, "count": c} for w, c in ranked],
    }


class _LogCollector(logging.Handler):
    """Keeps plugbox's log records (host warnings, plugin logs) so the report can show them
    instead of letting them interleave with it on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def since(self, index: int, prefix: str) -> list[str]:
        return [
            r.getMessage() for r in self.records[index:] if r.name.startswith(prefix)
        ]


class _LocalServer:
    """A small HTTP server on 127.0.0.1 (random port) for the fetcher plugin."""

    def __init__(self) -> None:
        seen: list[dict[str, str]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                rid = self.headers.get("x-request-id", "")
                seen.append({"path": self.path, "x-request-id": rid})
                body = (
                    f"hello from the demo's local server: GET {self.path}, "
                    f"x-request-id {rid}"
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="plugbox-demo-http", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class _Section:
    key: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, condition: bool, what: str) -> bool:
        if not condition:
            self.failures.append(what)
        return condition

    def summary(self) -> dict[str, Any]:
        return {"title": self.title, "ok": not self.failures, "failures": self.failures,
                **self.data}


# -------------------------------------------------------------------------------------- demo


class Demo:
    def __init__(self, console: Console | None, plugins: dict[str, Path], work: Path,
                 cache_dir: Path, logs: _LogCollector) -> None:
        self.console = console
        self.plugins = plugins
        self.work = work
        self.logs = logs
        self.runtime = plugbox.Runtime(
            state_dir=work / "state",
            cache_dir=cache_dir,
            policy=plugbox.Policy(http_hosts=("127.0.0.1:*",)),
            max_wasm_stack=MAX_WASM_STACK,
        )
        self.loaded: dict[str, plugbox.Plugin] = {}
        self.sections: list[_Section] = []

    # -- output ---------------------------------------------------------------------------

    def out(self, *renderables: RenderableType) -> None:
        if self.console is not None:
            self.console.print(*renderables)

    def heading(self, section: _Section, number: int) -> None:
        self.out(Text(), Rule(f"[bold]{number} · {section.title}", align="left", style="cyan"))

    def call(self, section: _Section, plugin: str, hook: str, value: Any) -> Any:
        """call_json, recording an unexpected failure in ``section`` (returns None then)."""
        try:
            return self.loaded[plugin].call_json(hook, value)
        except PlugboxError as exc:
            section.check(False, f"{plugin}/{hook} failed: {type(exc).__name__}: "
                                 f"{_first_line(str(exc))}")
            self.out(Text(f"  ✗ {plugin}/{hook}: {type(exc).__name__}: {exc}", style="red"))
            return None

    # -- 1 --------------------------------------------------------------------------------

    def verification(self) -> _Section:
        s = _Section("verification", "Verification: every plugin is checked before it is "
                     "compiled")
        self.heading(s, 1)
        rt = self.runtime
        self.out(Text("rt.load() checks the manifest schema, the module's sha256, ABI and host "
                      "version, the module's imports/exports and the host policy's caps, and "
                      "only then compiles:", style="dim"))
        table = Table()
        table.add_column("plugin", no_wrap=True)
        table.add_column("sha256", no_wrap=True)
        table.add_column("permissions", ratio=1)
        table.add_column("limits", no_wrap=True)
        table.add_column("load", justify="right", no_wrap=True)
        rows: list[dict[str, Any]] = []
        config = {"word-stats": {"top_n": TOP_N}}
        for name in PLUGINS:
            if name not in self.plugins:
                s.check(False, f"plugin {name!r} was not built/staged")
                continue
            hits = rt.cache.hits
            started = time.perf_counter()
            try:
                # probe deliberately imports every service while requesting none, to show
                # denial at call time; the static capability check would refuse it at load.
                p = rt.load(self.plugins[name], config=config.get(name),
                            allow_unrequested_imports=name == "probe")
            except PlugboxError as exc:
                s.check(False, f"{name} was refused: {type(exc).__name__}: {exc}")
                self.out(Text(f"  ✗ {name}: {type(exc).__name__}: {exc}", style="red"))
                continue
            elapsed = _ms(time.perf_counter() - started)
            self.loaded[name] = p
            m = p.manifest
            row: dict[str, Any] = {
                "name": m.name, "version": m.version, "sha256": m.module_sha256,
                "abi": m.abi, "hooks": list(m.hooks), "permissions": _permissions(p.permissions),
                "limits": _limits(p.limits), "load_ms": elapsed,
                "compiled": rt.cache.hits == hits,
            }
            rows.append(row)
            table.add_row(
                Text.assemble((m.name, "bold"), f" {m.version}\n", (f"ABI {m.abi}", "dim")),
                m.module_sha256[:10] + "…",
                ", ".join(row["permissions"]) or Text("none", style="dim"),
                _limits_text(p.limits),
                f"{elapsed:.0f} ms\n" + ("compiled" if row["compiled"] else "from cache"),
            )
        s.data["plugins"] = rows
        self.out(table)

        # A tampered module: one flipped byte, refused before compilation.
        tampered: dict[str, Any] = {"refused": False}
        if "echo" in self.plugins:
            src = self.plugins["echo"]
            dest = self.work / "tampered-echo"
            shutil.copytree(src, dest)
            manifest = json.loads((dest / "plugbox.json").read_text(encoding="utf-8"))
            module = dest / manifest["module"]["path"]
            data = bytearray(module.read_bytes())
            offset = len(data) // 2
            data[offset] ^= 0x01
            module.write_bytes(bytes(data))
            cache_before = (rt.cache.hits, rt.cache.misses)
            plugins_before = len(rt.plugins)
            tampered.update(offset=offset, module=module.name)
            try:
                rt.load(dest)
            except HashMismatchError as exc:
                tampered.update(refused=True, error=type(exc).__name__, message=str(exc))
            except PlugboxError as exc:
                tampered.update(error=type(exc).__name__, message=str(exc))
            else:
                tampered.update(error=None, message="loaded")
            tampered["compiled"] = (rt.cache.hits, rt.cache.misses) != cache_before
            tampered["plugins_added"] = len(rt.plugins) - plugins_before
            s.check(tampered["refused"], "the tampered echo module was not refused with "
                    f"HashMismatchError (got {tampered.get('error')})")
            s.check(not tampered["compiled"] and tampered["plugins_added"] == 0,
                    "the tampered module reached the compiler or the runtime")
            ok = tampered["refused"] and not tampered["compiled"]
            body = Group(
                Text.assemble(
                    "copied echo, flipped one bit of ", (module.name, "bold"),
                    f" at byte {offset:,}, loaded it:"),
                Text.assemble(
                    ("  refused → ", "bold"),
                    (str(tampered.get("error")), "bold red" if ok else "bold yellow")),
                Text("  " + tampered["message"].replace(f"{self.work}/", ""), style="dim"),
                Text.assemble(
                    "  compiled: ", ("nothing" if not tampered["compiled"] else "YES", "bold"),
                    " (artifact cache untouched)   plugins added: ",
                    (str(tampered["plugins_added"]), "bold")),
            )
            self.out(Panel(body, title="tampered module", title_align="left",
                           border_style="green" if ok else "red"))
        else:
            s.check(False, "no echo plugin to tamper with")
        s.data["tampered"] = tampered
        return s

    # -- 2 --------------------------------------------------------------------------------

    def hooks(self, server: _LocalServer) -> _Section:
        s = _Section("hooks", "Hooks called, with their results")
        self.heading(s, 2)
        calls: list[dict[str, Any]] = []
        s.data["calls"] = calls

        # word-stats
        if "word-stats" in self.loaded:
            result = self.call(s, "word-stats", "text.stats", {"text": TEXT})
            expected = expected_word_stats(TEXT, TOP_N)
            ok = s.check(result == expected, f"word-stats answered {result}, expected {expected}")
            calls.append({"plugin": "word-stats", "hook": "text.stats", "ok": ok,
                          "result": result})
            table = Table()
            table.add_column(f"top {TOP_N} word")
            table.add_column("count", justify="right")
            for item in (result or {}).get("top", []):
                table.add_row(item["word"], str(item["count"]))
            self.out(Panel(
                Group(Text(TEXT, style="italic dim"), Text(),
                      Text.assemble(("words ", "bold"), str((result or {}).get("words")),
                                    ("   unique ", "bold"),
                                    str((result or {}).get("unique_words")),
                                    ("   ✓ matches an independent count" if ok
                                     else "   ✗ differs from an independent count",
                                     "green" if ok else "red")),
                      table),
                title="word-stats", title_align="left"))

        # counter, with a host-side subscriber
        if "counter" in self.loaded:
            received: list[dict[str, Any]] = []

            def on_event(event: plugbox.Event) -> None:
                payload = event.json()
                received.append({"plugin": event.plugin, "topic": event.topic,
                                 "payload": payload})
                self.out(Text.assemble(("    ⚡ event ", "magenta"),
                                       (event.topic, "bold magenta"), f" {_compact(payload)}"))

            unsubscribe = self.runtime.events.subscribe("counter.*", on_event)
            self.out(Text.assemble(
                ("counter", "bold"), " · the host subscribes to \"counter.*\", then calls "
                "counter.incr {\"name\":\"visits\",\"by\":n}:"))
            values = []
            try:
                for by in (1, 1, 3):
                    payload = {"name": "visits", "by": by}
                    result = self.call(s, "counter", "counter.incr", payload)
                    values.append((result or {}).get("value"))
                    self.out(Text.assemble(f"  incr by {by} → ", (_compact(result), "green")))
                listing = self.call(s, "counter", "counter.get", {"name": "visits"})
                self.out(Text.assemble("  counter.get → ", (_compact(listing), "green")))
            finally:
                unsubscribe()
            want_events = [{"name": "visits", "value": v, "previous": p}
                           for p, v in ((0, 1), (1, 2), (2, 5))]
            ok = s.check(values == [1, 2, 5], f"counter values {values}, expected [1, 2, 5]")
            ok = s.check([e["payload"] for e in received] == want_events
                         and all(e["topic"] == "counter.changed" for e in received),
                         f"counter events {received}, expected {want_events}") and ok
            ok = s.check((listing or {}).get("value") == 5, "counter.get did not read 5") and ok
            calls.append({"plugin": "counter", "hook": "counter.incr", "ok": ok,
                          "values": values, "events": received})
            s.data["events"] = received

        # fetcher, against the local server
        if "fetcher" in self.loaded:
            url = f"http://127.0.0.1:{server.port}/greeting"
            log_mark = len(self.logs.records)
            result = self.call(s, "fetcher", "fetch", {"url": url})
            plugin_logs = self.logs.since(log_mark, "plugbox.plugin.fetcher")
            rid = (result or {}).get("request_id")
            ok = s.check((result or {}).get("status") == 200, f"fetcher got {result}")
            ok = s.check(any(seen["x-request-id"] == rid for seen in server.seen),
                         "the local server did not see the fetcher's x-request-id") and ok
            calls.append({"plugin": "fetcher", "hook": "fetch", "ok": ok, "url": url,
                          "result": result, "plugin_log": plugin_logs})
            self.out(Panel(
                Group(
                    Text.assemble("host policy: http_hosts=('127.0.0.1:*',); manifest asks "
                                  "for 127.0.0.1:*, GET; demo server on ",
                                  (f"127.0.0.1:{server.port}", "bold")),
                    Text.assemble("→ fetch {\"url\": ", json.dumps(url), "}"),
                    Text.assemble("  status ", (str((result or {}).get("status")), "green"),
                                  "   request_id ", str(rid)),
                    Text.assemble("  body   ", ((result or {}).get("body", ""), "green")),
                    *[Text.assemble(("  plugin log: ", "dim"), (line, "dim"))
                      for line in plugin_logs],
                ),
                title="fetcher", title_align="left"))

        # echo
        if "echo" in self.loaded:
            try:
                echoed = self.loaded["echo"].call("echo", ECHO_PAYLOAD)
            except PlugboxError as exc:
                echoed = None
                s.check(False, f"echo failed: {type(exc).__name__}: {exc}")
            ok = s.check(echoed == ECHO_PAYLOAD, f"echo returned {echoed!r}")
            calls.append({"plugin": "echo", "hook": "echo", "ok": ok,
                          "payload_hex": ECHO_PAYLOAD.hex(),
                          "result_hex": echoed.hex() if echoed is not None else None})
            self.out(Text.assemble(("echo", "bold"), " · sent     ", repr(ECHO_PAYLOAD)))
            self.out(Text.assemble("       received ", (repr(echoed), "green" if ok else "red"),
                                   ("  ✓ byte for byte" if ok else "  ✗ differs",
                                    "green" if ok else "red")))
        return s

    # -- 3 --------------------------------------------------------------------------------

    def denials(self, server: _LocalServer) -> _Section:
        s = _Section("denials", "Service calls denied for lack of permission")
        self.heading(s, 3)
        if "probe" not in self.loaded:
            s.check(False, "probe plugin not loaded")
            return s
        probe = self.loaded["probe"]
        log_mark = len(self.logs.records)
        result = self.call(s, "probe", "probe",
                           {"http_url": f"http://127.0.0.1:{server.port}/probe"}) or {}
        host_warnings = self.logs.since(log_mark, "plugbox.host")
        denied = dict(probe.services.denied)
        services: dict[str, dict[str, Any]] = {}
        table = Table(title="probe (its manifest requests no permissions) calls every service:",
                      title_justify="left")
        table.add_column("service")
        table.add_column("what the plugin got back")
        table.add_column("host: denied", justify="right")
        for name in SERVICES:
            answer = result.get(name)
            if name == "log":
                expected = answer == "called"  # log returns nothing; the host still denies it
            elif name == "clock":
                expected = answer == "zero"  # clock has no error case: a denied clock reads 0
            else:
                expected = isinstance(answer, str) and answer.startswith("denied")
            count = denied.get(name, 0)
            ok = s.check(expected and count >= 1,
                         f"probe/{name}: plugin saw {answer!r}, host denied count {count}")
            services[name] = {"plugin_saw": answer, "host_denied": count, "ok": ok}
            shown = str(answer)
            if name == "log":
                shown += " (log returns nothing)"
            elif name == "clock":
                shown += " (a denied clock reads as 0)"
            table.add_row(name, Text(shown, style="yellow" if ok else "red"),
                          Text(str(count), style="bold"))
        self.out(table)
        self.out(Text("host-side warnings (logger plugbox.host, rate-limited per service):",
                      style="dim"))
        for line in host_warnings[:1]:
            self.out(Text("  " + line, style="dim"))
        if len(host_warnings) > 1:
            self.out(Text(f"  … and {len(host_warnings) - 1} more like it", style="dim"))
        total = sum(denied.values())
        self.out(Text.assemble("probe.services.denied = ", (repr(probe.services.denied), "bold"),
                               f"  ({total} denied calls; the host kept serving)"))
        s.data.update(services=services, denied_counters=denied, host_warnings=host_warnings)
        return s

    # -- 4 --------------------------------------------------------------------------------

    def runaways(self) -> _Section:
        s = _Section("limits", "Runaway plugins stopped; the host keeps serving")
        self.heading(s, 4)
        if "hostile" not in self.loaded:
            s.check(False, "hostile plugin not loaded")
            return s
        hostile = self.loaded["hostile"]
        limits = hostile.limits
        max_fuel = self.runtime.policy.max_limits.fuel
        table = Table(title="hostile (a test plugin that misbehaves on purpose):",
                      title_justify="left")
        table.add_column("hook", no_wrap=True)
        table.add_column("stopped by · limit", no_wrap=True)
        table.add_column("ms", justify="right", no_wrap=True)
        table.add_column("message", ratio=1)
        rows: list[dict[str, Any]] = []
        for hook, options, expected, what in RUNAWAYS:
            if what == "fuel":
                limit = f"fuel {_count(options.get('fuel', limits.fuel))}"
            elif what == "deadline":
                limit = (f"deadline {options['deadline_ms']} ms, "
                         f"fuel {_count(min(options['fuel'], max_fuel))}")
            elif what == "memory":
                limit = f"memory {_size(limits.memory_bytes)}"
            elif what == "stack":
                limit = f"stack {_size(MAX_WASM_STACK)}"
            else:
                limit = "ABI checks"
            started = time.perf_counter()
            error: PlugboxError | None = None
            try:
                hostile.call(hook, b"", **options)
            except PlugboxError as exc:
                error = exc
            elapsed = _ms(time.perf_counter() - started)
            got = type(error).__name__ if error is not None else "returned normally"
            ok = s.check(type(error) is expected,
                         f"hostile/{hook}: expected {expected.__name__}, got {got}")
            message = _first_line(str(error)) if error is not None else ""
            short = _short_message(error) if error is not None else ""
            rows.append({"hook": hook, "options": options, "expected": expected.__name__,
                         "error": got, "limit": limit, "error_limit": getattr(error, "limit",
                                                                              None),
                         "elapsed_ms": elapsed, "message": message, "ok": ok})
            label = hook
            table.add_row(label, Text.assemble((got, "bold red" if ok else "bold yellow"),
                                               "\n", limit),
                          f"{elapsed:.1f}", Text(short, style="dim"))
        self.out(table)
        s.data["runaways"] = rows

        # Still serving.
        serving: list[dict[str, Any]] = []
        try:
            echoed = hostile.call("echo", b"still here")
        except PlugboxError as exc:
            echoed = f"{type(exc).__name__}: {exc}".encode()
        ok = s.check(echoed == b"still here", f"hostile/echo answered {echoed!r} afterwards")
        serving.append({"plugin": "hostile", "hook": "echo", "ok": ok,
                        "result": echoed.decode(errors="replace")})
        if "word-stats" in self.loaded:
            result = self.call(s, "word-stats", "text.stats", {"text": TEXT})
            ok = s.check(result == expected_word_stats(TEXT, TOP_N),
                         "word-stats answered differently after the runaways")
            serving.append({"plugin": "word-stats", "hook": "text.stats", "ok": ok,
                            "result": result})
        else:
            s.check(False, "word-stats not loaded")
        s.data["still_serving"] = serving
        s.data["instances_discarded"] = hostile.instances_discarded
        all_ok = all(item["ok"] for item in serving)
        lines = [
            Text.assemble("hostile · echo \"still here\" → ",
                          (repr(echoed.decode(errors="replace")), "green" if serving[0]["ok"]
                           else "red")),
        ]
        if len(serving) > 1:
            top = (serving[1]["result"] or {}).get("top", [{}])[0]
            lines.append(Text.assemble(
                "word-stats · text.stats → ",
                (f"{(serving[1]['result'] or {}).get('words')} words, top {top}",
                 "green" if serving[1]["ok"] else "red")))
        lines.append(Text(f"{hostile.instances_discarded} broken hostile instances were "
                          "discarded and replaced; no other plugin noticed.", style="dim"))
        self.out(Panel(Group(*lines), title="host still serving", title_align="left",
                       border_style="green" if all_ok else "red"))
        return s

    # -- all ------------------------------------------------------------------------------

    def run(self) -> list[_Section]:
        server = _LocalServer()
        try:
            for step in (self.verification, lambda: self.hooks(server),
                         lambda: self.denials(server), self.runaways):
                self.sections.append(step())
        finally:
            server.close()
            self.runtime.close()
        return self.sections


# ------------------------------------------------------------------------------------- build


def _build(console: Console, out_dir: Path) -> tuple[dict[str, Path], float]:
    from .authoring._build import build_rust_plugins

    started = time.perf_counter()
    with console.status("building sample plugins with cargo...", spinner="dots"):
        staged = build_rust_plugins(WORKSPACE, out_dir)
    return staged, time.perf_counter() - started


def _staged(directory: Path) -> dict[str, Path]:
    return {
        d.name: d for d in sorted(directory.iterdir())
        if d.is_dir() and (d / "plugbox.json").is_file()
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m plugbox.demo",
        description="Build the sample plugins from source and show what plugbox does with "
        "them: verification, hook calls, denied services, runaway plugins stopped.",
    )
    parser.add_argument("--json", action="store_true",
                        help="print a machine-readable summary instead of the report")
    parser.add_argument("--no-build", metavar="DIR", type=Path,
                        help="use plugins already staged in DIR/<name>/ instead of building")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (0: every section behaved as expected)."""
    args = _parse_args(argv)
    started = time.perf_counter()
    console = None if args.json else Console(highlight=False)
    status_console = Console(stderr=True) if args.json else console
    assert status_console is not None
    summary: dict[str, Any] = {"ok": False, "plugbox": plugbox.__version__}

    def fail(message: str) -> int:
        summary["error"] = message
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            status_console.print(Text(f"✗ demo failed: {message}", style="bold red"))
        return 1

    logger = logging.getLogger("plugbox")
    saved = (logger.level, logger.propagate)
    collector = _LogCollector()
    with ExitStack() as stack:
        logger.addHandler(collector)
        logger.setLevel(logging.INFO)
        logger.propagate = False

        def restore() -> None:
            logger.removeHandler(collector)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]

        stack.callback(restore)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plugbox-demo-")))

        if console is not None:
            console.print(Panel(
                Text.assemble((f"plugbox {plugbox.__version__} demo", "bold"),
                              " · WebAssembly-sandboxed plugins for Python hosts"),
                border_style="cyan"))

        # Build (or find) the plugins.
        if args.no_build is not None:
            if not args.no_build.is_dir():
                return fail(f"--no-build {args.no_build}: not a directory")
            plugins = _staged(args.no_build)
            summary["build"] = {"source": str(args.no_build), "seconds": 0.0,
                                "plugins": sorted(plugins)}
            if console is not None:
                console.print(f"using plugins staged in {args.no_build} (--no-build)")
        else:
            if not (WORKSPACE / "Cargo.toml").is_file():
                return fail(f"the sample plugin sources are not at {WORKSPACE}; run the demo "
                            "from a source checkout, or pass --no-build DIR")
            try:
                plugins, seconds = _build(status_console, work / "plugins")
            except PlugboxError as exc:
                return fail(f"building the sample plugins failed: {exc}")
            summary["build"] = {"source": "cargo", "workspace": str(WORKSPACE),
                                "seconds": round(seconds, 2), "plugins": sorted(plugins)}
            if console is not None:
                console.print(Text.assemble(
                    ("✓ ", "green"), f"built {len(plugins)} sample plugins from source "
                    f"({WORKSPACE.relative_to(REPO)}) with cargo in ",
                    (f"{seconds:.1f} s", "bold")))
        missing = [name for name in PLUGINS if name not in plugins]
        if missing:
            return fail(f"plugins missing from the build: {', '.join(missing)}")

        # Compiled artifacts are cached across runs (keyed by the verified sha256); state
        # (key-value store, staged copies) is per run.
        cache_dir = REPO / ".build" / "demo" / "cache" if (REPO / ".git").exists() \
            else work / "cache"
        demo = Demo(console, plugins, work, cache_dir, collector)
        sections = demo.run()

    elapsed = time.perf_counter() - started
    failures = [f"{s.key}: {f}" for s in sections for f in s.failures]
    summary.update(ok=not failures, seconds=round(elapsed, 2),
                   sections={s.key: s.summary() for s in sections}, failures=failures)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        assert console is not None
        console.print()
        if failures:
            for s in sections:
                for f in s.failures:
                    console.print(Text(f"✗ {s.title}: {f}", style="bold red"))
            console.print(Text(f"✗ {len(failures)} check(s) did not behave as expected",
                               style="bold red"))
        else:
            console.print(Text.assemble(
                ("✓ all 4 sections behaved as expected", "bold green"),
                f" in {elapsed:.1f} s (build included)"))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
