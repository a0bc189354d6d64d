"""Failures an author can debug (issue 10 §5): a Rust panic reaches the host with its message
and ``file:line:column``; a host reads the report only within its bounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import plugbox
from tests.conftest import build_rust_crate, wat_module, write_plugin

LIB_RS = r'''
use plugbox_sdk::{hooks, Result};

fn literal(_payload: Vec<u8>) -> Result<Vec<u8>> {
    panic!("a literal panic")
}

fn formatted(payload: Vec<u8>) -> Result<Vec<u8>> {
    let n = payload.len();
    if n > 2 {
        panic!("payload of {} bytes is too long", n);
    }
    Ok(payload)
}

fn unwrapped(_payload: Vec<u8>) -> Result<Vec<u8>> {
    let nothing: Option<u8> = None;
    Ok(vec![nothing.unwrap()])
}

fn huge(_payload: Vec<u8>) -> Result<Vec<u8>> {
    let long = "x".repeat(5000);
    panic!("line one\nline two \u{1b}[31m {}", long)
}

hooks! {
    "literal" => literal,
    "formatted" => formatted,
    "unwrapped" => unwrapped,
    "huge" => huge,
}
'''

#: The line of each panic in LIB_RS (1-based, as rustc reports it).
LINES = {name: i + 1 for i, line in enumerate(LIB_RS.splitlines())
         for name, marker in (("literal", 'panic!("a literal'), ("formatted", "panic!(\"payload"),
                              ("unwrapped", "nothing.unwrap()"), ("huge", "panic!(\"line one"))
         if marker in line}

@pytest.fixture(scope="module")
def panicky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Rust plugin built from source with the SDK whose hooks panic."""
    return build_rust_crate(tmp_path_factory, "panicky", LIB_RS,
                            ["literal", "formatted", "unwrapped", "huge"])


def trap_of(plugin: plugbox.Plugin, hook: str, payload: bytes = b"") -> plugbox.GuestTrap:
    with pytest.raises(plugbox.GuestTrap) as info:
        plugin.call(hook, payload)
    return info.value


def test_a_rust_panic_reports_its_message_and_location(runtime: plugbox.Runtime,
                                                       panicky: Path) -> None:
    with runtime.load(panicky) as plugin:
        trap = trap_of(plugin, "literal")
        where = f"panicky/src/lib.rs:{LINES['literal']}:5"
        assert (trap.panic_message, trap.panic_location) == ("a literal panic", where)
        assert f"panicked at {where}: a literal panic" in trap.message
        assert "plugin 'panicky'" in trap.message and "'literal'" in trap.message
        assert (trap.plugin, trap.hook) == ("panicky", "literal")

        # formatted messages, and the plugin serves on (a fresh instance) after a panic
        assert plugin.call("formatted", b"ok") == b"ok"
        trap = trap_of(plugin, "formatted", b"four")
        assert trap.panic_message == "payload of 4 bytes is too long"
        assert trap.panic_location == f"panicky/src/lib.rs:{LINES['formatted']}:9"
        assert plugin.call("formatted", b"ok") == b"ok"

        # a panic inside the standard library is located at the caller (track_caller)
        trap = trap_of(plugin, "unwrapped")
        assert trap.panic_message == "called `Option::unwrap()` on a `None` value"
        assert trap.panic_location is not None
        assert trap.panic_location.startswith(f"panicky/src/lib.rs:{LINES['unwrapped']}:")


def test_a_long_panic_message_is_cut_and_its_control_characters_escaped(
        runtime: plugbox.Runtime, panicky: Path) -> None:
    with runtime.load(panicky) as plugin:
        trap = trap_of(plugin, "huge")
    message = trap.panic_message
    assert message is not None
    assert message.startswith("line one\\x0aline two \\x1b[31m xxx")
    assert "\n" not in trap.message and "\x1b" not in trap.message
    # the slot holds 1020 bytes: location, NUL, then as much of the message as fits
    assert len(message.encode()) < 1100 and message.endswith("x")


def slot_module(address: int, report: bytes, *, global_type: str = "i32",
                length: int | None = None) -> bytes:
    """A WAT plugin whose hook traps after leaving ``report`` in a panic slot at ``address``
    (``length`` overrides the length field)."""
    size = len(report) if length is None else length
    data = size.to_bytes(4, "little") + report
    escaped = "".join(f"\\{b:02x}" for b in data)
    init = f"({global_type}.const {address})"
    fields = (f'(global (export "plugbox-panic") {global_type} {init})\n'
              f'  (data (i32.const {address if address < 65536 else 0}) "{escaped}")')
    return wat_module("unreachable", fields)


@pytest.mark.parametrize("case", ["outside memory", "over the bound", "misaligned", "i64",
                                  "empty"])
def test_a_broken_panic_slot_is_ignored(runtime: plugbox.Runtime, tmp_path: Path,
                                        case: str) -> None:
    """What a hostile module puts in the slot never crashes or misleads the host: a report
    that does not fit its bounds is ignored and the trap is reported plainly."""
    kw: dict[str, Any] = {
        "outside memory": {"address": 65534, "report": b"x"},
        "over the bound": {"address": 2048, "report": b"a.rs:1:1\0m", "length": 4096},
        "misaligned": {"address": 2050, "report": b"a.rs:1:1\0m"},
        "i64": {"address": 2048, "report": b"a.rs:1:1\0m", "global_type": "i64"},
        "empty": {"address": 2048, "report": b""},
    }[case]
    if case == "outside memory":
        # the global points 2 bytes before the end of the one-page memory
        module = wat_module("unreachable", '(global (export "plugbox-panic") i32 '
                                           '(i32.const 65534))')
    else:
        module = slot_module(**kw)
    with runtime.load(write_plugin(tmp_path / "p", module, name="slotty")) as plugin:
        trap = trap_of(plugin, "run")
    assert trap.panic_message is None and trap.panic_location is None
    assert "guest trapped: wasm trap: wasm `unreachable` instruction executed" in trap.message


def test_a_well_formed_slot_of_a_hand_written_module_is_read(runtime: plugbox.Runtime,
                                                             tmp_path: Path) -> None:
    module = slot_module(2048, b"lib.c:7:3\0gave up \xff here")
    with runtime.load(write_plugin(tmp_path / "p", module, name="slotty")) as plugin:
        trap = trap_of(plugin, "run")
    assert (trap.panic_location, trap.panic_message) == ("lib.c:7:3", "gave up \ufffd here")


TRACEBACK = ("on-hook raised ValueError:\nTraceback (most recent call last):\n"
             "  File \"app.py\", line 3, in run\nValueError: bad \x1b[31mvalue\n")


def logging_plugin(directory: Path, message: str) -> Path:
    """A WAT plugin whose hook ``run`` logs ``message`` at level error and returns null."""
    data = message.encode()
    escaped = "".join(f"\\{b:02x}" for b in data)
    body = f"""
    (call $log (i32.const 4) (i32.const 1024) (i32.const {len(data)}))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 2048))
    (i32.store (i32.const 24) (i32.const 4))
    (i32.const 16)"""
    fields = ('(import "plugbox:plugin/log@1.0.0" "log" (func $log (param i32 i32 i32)))\n'
              f'  (data (i32.const 1024) "{escaped}")\n  (data (i32.const 2048) "null")')
    return write_plugin(directory, wat_module(body, fields), name="logger",
                        permissions={"log": True},
                        implements={"report.render": {"hook": "run"}})


def test_a_multi_line_plugin_record_keeps_its_lines_and_names_plugin_hook_and_point(
        host: plugbox.PluginHost, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host.extension_point("report.render", version="1.0.0", mode="each")
    host.add(logging_plugin(tmp_path / "logger", TRACEBACK))
    with caplog.at_level("INFO", logger="plugbox.plugin.logger"):
        assert host.call("report.render", {}).values == [None]
        host.plugins[0].plugin.call("run", b"")  # called directly: no point
    dispatched, direct = [r for r in caplog.records if r.name == "plugbox.plugin.logger"]
    assert dispatched.levelname == "ERROR"
    assert dispatched.getMessage() == (
        "on-hook raised ValueError:\n    Traceback (most recent call last):\n"
        "      File \"app.py\", line 3, in run\n    ValueError: bad \\x1b[31mvalue")
    assert dispatched.lines == ("on-hook raised ValueError:", "Traceback (most recent call last):",
                                "  File \"app.py\", line 3, in run",
                                "ValueError: bad \\x1b[31mvalue")
    assert (dispatched.plugin, dispatched.hook, dispatched.point) == ("logger", "run",
                                                                     "report.render")
    assert (direct.plugin, direct.hook, direct.point) == ("logger", "run", None)


# -- plugbox call shows what an author needs --------------------------------------------------

from plugbox.cli._main import main  # noqa: E402


def test_plugbox_call_prints_the_plugins_log_records_and_puts_them_in_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = logging_plugin(tmp_path / "logger", TRACEBACK)
    state = str(tmp_path / "state")
    assert main(["call", str(plugin), "run", "--state-dir", state]) == 0
    out, err = capsys.readouterr()
    assert out == "null\n"
    assert err == ("[error] logger: on-hook raised ValueError:\n"
                   "    Traceback (most recent call last):\n"
                   "      File \"app.py\", line 3, in run\n"
                   "    ValueError: bad \\x1b[31mvalue\n")

    assert main(["call", str(plugin), "run", "--json", "--state-dir", state]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert err == ""  # with --json the records are in the document
    assert doc["logs"] == [{"level": "error", "hook": "run",
                            "message": "on-hook raised ValueError:\n    Traceback (most "
                                       "recent call last):\n      File \"app.py\", line 3, "
                                       "in run\n    ValueError: bad \\x1b[31mvalue",
                            "lines": ["on-hook raised ValueError:",
                                      "Traceback (most recent call last):",
                                      "  File \"app.py\", line 3, in run",
                                      "ValueError: bad \\x1b[31mvalue"]}]
    assert doc["stats"]["fuel_used"] > 0 and doc["stats"]["memory_bytes"] == 65536

    # --log-level filters
    assert main(["call", str(plugin), "run", "--log-level", "error", "--state-dir", state]) == 0
    assert "[error]" in capsys.readouterr().err
    assert main(["call", str(plugin), "run", "--log-level", "trace", "--state-dir", state]) == 0


def test_plugbox_call_json_reports_a_panic_with_its_location_and_stats(
        tmp_path: Path, panicky: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["call", str(panicky), "formatted", "--text", "long", "--json",
                 "--state-dir", str(tmp_path / "state")])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["ok"] is False
    assert doc["error"]["type"] == "GuestTrap"
    assert (f"panicked at panicky/src/lib.rs:{LINES['formatted']}:9: payload of 4 bytes is too "
            f"long") in doc["error"]["message"]
    assert doc["error"]["panic"] == {"message": "payload of 4 bytes is too long",
                                     "location": f"panicky/src/lib.rs:{LINES['formatted']}:9"}
    assert doc["stats"]["fuel_used"] > 0 and doc["stats"]["memory_bytes"] > 0
    assert doc["logs"] == []
