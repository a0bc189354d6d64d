"""docs/host.md, Part 1, runs as written: the files it shows are written, its `plugbox`
commands run (the Rust plugins are built from source), and its Python blocks execute in order
in one namespace, their asserts included. A guide that drifts from the API fails here."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from plugbox.cli import main as plugbox_main

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "host.md"
FILE_MARK = re.compile(r"<!-- file: (\S+) -->")


def guide_blocks(text: str) -> list[tuple[str, str | None, str]]:
    """(language, file it is marked as or None, code) for each fenced block of Part 1."""
    part1 = text.split("\n## Part 2", 1)[0]
    out: list[tuple[str, str | None, str]] = []
    lines = part1.splitlines()
    i, pending = 0, None
    while i < len(lines):
        line = lines[i]
        mark = FILE_MARK.fullmatch(line.strip())
        if mark:
            pending = mark.group(1)
        elif line.startswith("```"):
            lang = line[3:].strip()
            body = []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((lang, pending, "\n".join(body) + "\n"))
            pending = None
        i += 1
    return out


def test_the_block_reader_pairs_files_with_their_blocks() -> None:
    text = "x\n<!-- file: a/b.rs -->\n```rust\nfn f() {}\n```\n```python\nx = 1\n```\n## Part 2\n```sh\nno\n```\n"
    assert guide_blocks(text) == [("rust", "a/b.rs", "fn f() {}\n"), ("python", None, "x = 1\n")]


def test_the_host_guide_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("cargo") is None and not Path("/usr/bin/cargo").exists():
        pytest.skip("no cargo: the guide's Rust plugins cannot be built (python3 dev.py setup "
                    "installs Debian's rustc, cargo and libstd-rust-dev-wasm32)")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__guide__"}
    ran = {"python": 0, "plugbox": 0, "files": 0}
    try:
        for lang, file, code in guide_blocks(GUIDE.read_text(encoding="utf-8")):
            if file is not None:
                target = tmp_path / file
                assert target.parent.is_dir(), f"{file}: the guide writes it before creating its folder"
                target.write_text(code, encoding="utf-8")
                ran["files"] += 1
            elif lang == "sh":
                for line in code.splitlines():
                    line = line.split("#", 1)[0].strip()
                    if not line.startswith("plugbox "):
                        continue  # pip install: the suite runs inside an installed plugbox
                    status = plugbox_main(shlex.split(line)[1:])
                    assert status in (0, None), f"`{line}` exited {status}:\n{capsys.readouterr()}"
                    ran["plugbox"] += 1
            elif lang == "python":
                exec(compile(code, f"docs/host.md block {ran['python'] + 1}", "exec"), namespace)
                ran["python"] += 1
    finally:
        host = namespace.get("host")
        close = getattr(host, "close", None)
        if callable(close):
            close()
    # The guide's promise: three plugins written, scaffolded and built; the host code ran.
    assert ran["files"] == 6 and ran["plugbox"] == 6 and ran["python"] >= 5, ran
