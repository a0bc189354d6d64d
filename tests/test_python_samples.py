"""The Python samples, each built once per run with componentize-py (cached under
.build/pytest-pybuild/ between runs), driven by the SAME scenarios through the SDK's native
harness and through the real runtime as components."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import plugbox
from plugbox_sdk import DeniedError, InvalidInputError, LimitReachedError, testing

from .conftest import PYTHON_SAMPLES, REPO

SAMPLES = REPO / "sample-plugins" / "python"
WORK = REPO / ".build" / "pytest-pybuild"
BUILT = PYTHON_SAMPLES


@pytest.fixture(params=["native", "component"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _load(backend: str, name: str, built: dict[str, Path], **kw: object) -> testing.Harness:
    path = SAMPLES / BUILT[name] if backend == "native" else built[name]
    return testing.load(path, backend=backend, cache_dir=WORK / "artifact-cache",
                        **kw)  # type: ignore[arg-type]


def test_py_echo_round_trips_bytes(backend: str, built_samples: dict[str, Path]) -> None:
    echo = _load(backend, "py-echo", built_samples)
    for size in (0, 1, 1024, 65536):
        payload = bytes(i % 256 for i in range(size))
        assert echo.call("echo", payload) == payload


def test_text_tools_does_real_text_work(backend: str, built_samples: dict[str, Path]) -> None:
    tools = _load(backend, "text-tools", built_samples, config={"top_n": 2})
    stats = tools.call_json("text.stats", {"text": "b a b\nc b a"})
    assert stats["words"] == 6 and stats["lines"] == 2 and stats["unique_words"] == 3
    assert stats["top_words"] == [{"word": "b", "count": 3}, {"word": "a", "count": 2}]
    outline = tools.call_json("markdown.outline", {"markdown": "# One\n## Two\n# One\n"})
    assert json.dumps(outline).count("one") >= 2
    summary = tools.call_json("csv.summary", {"csv": "x,y\n1,2\n3,4\n"})
    assert "x" in json.dumps(summary) and "y" in json.dumps(summary)
    with pytest.raises(InvalidInputError):
        tools.call_json("text.stats", {"no": "text"})


def test_kv_notes_stores_emits_and_hits_its_quota(backend: str,
                                                  built_samples: dict[str, Path]) -> None:
    notes = _load(backend, "kv-notes", built_samples)
    assert notes.call_json("notes.put", {"title": "a", "body": "x"})["created"] is True
    assert notes.call_json("notes.put", {"title": "a", "body": "y"})["created"] is False
    assert notes.call_json("notes.get", {"title": "a"})["body"] == "y"
    assert [e.topic for e in notes.events] == ["notes.changed", "notes.changed"]
    with pytest.raises(LimitReachedError):  # quota: 20 keys
        for i in range(25):
            notes.call_json("notes.put", {"title": f"t{i}", "body": "z"})


def test_kv_notes_without_kv_is_denied(backend: str, built_samples: dict[str, Path]) -> None:
    notes = _load(backend, "kv-notes", built_samples, withhold={"kv"})
    with pytest.raises(DeniedError, match="kv"):
        notes.call_json("notes.put", {"title": "a", "body": "x"})


def test_py_fetcher_reaches_a_local_server_through_the_runtime(
    built_samples: dict[str, Path], http_server: str, tmp_path: Path
) -> None:
    policy = plugbox.Policy(http_hosts=("127.0.0.1:*",))
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=WORK / "artifact-cache",
                         policy=policy) as rt:
        fetcher = rt.load(built_samples["py-fetcher"])
        result = fetcher.call_json("fetch", {"url": f"{http_server}/hi"})
        assert result["status"] == 200
        assert result["json"] == {"path": "/hi", "rid": None, "ua": "plugbox"}
        with pytest.raises(plugbox.PermissionDenied) as info:
            fetcher.call_json("fetch", {"url": http_server.replace("127.0.0.1", "localhost")})
        assert info.value.permission == "http"


def test_second_load_of_a_python_plugin_comes_from_the_cache(
    built_samples: dict[str, Path], tmp_path: Path
) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=WORK / "artifact-cache") as rt:
        rt.load(built_samples["py-echo"])  # compiles on a cold cache, else a hit
    with plugbox.Runtime(state_dir=tmp_path / "s2", cache_dir=WORK / "artifact-cache") as rt:
        echo = rt.load(built_samples["py-echo"], mode="fresh")
        assert rt.cache.hits == 1 and rt.cache.misses == 0
        assert echo.call("echo", b"fresh instance") == b"fresh instance"


def test_python_components_take_the_bulk_path_with_the_same_results(
    built_samples: dict[str, Path], tmp_path: Path
) -> None:
    # plugbox build exports the bulk interface (abi/plugbox.wit, world plugin-bulk); the host
    # prefers it, and a megabyte of every byte value round-trips unchanged.
    with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=WORK / "artifact-cache") as rt:
        echo = rt.load(built_samples["py-echo"])
        assert echo._idle[0]._text is not None  # type: ignore[union-attr]
        payload = bytes(range(256)) * 4096
        assert echo.call("echo", payload) == payload
        assert echo.call("echo", b"") == b""
