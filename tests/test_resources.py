"""The runtime's own resources: address space, threads, the state database and its failures.

The address-space tests run in a child process: they fill most of the process's address space
(and before this was bounded, the 32nd Runtime aborted the process).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import plugbox
from plugbox.engine._addrspace import SLOT_RESERVATION, pool_bytes

from .conftest import REPO

CHILD_PRELUDE = f"""
import gc, os, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
import plugbox
from tests.conftest import COUNTER_BODY, wat_module, write_plugin
work = Path(tempfile.mkdtemp())
plugin = write_plugin(work / "p", wat_module(COUNTER_BODY))

def mapped_tib():
    total = 0
    for line in open("/proc/self/maps"):
        lo, hi = line.split()[0].split("-")
        total += int(hi, 16) - int(lo, 16)
    return total / 2**40

def os_threads():
    return len(os.listdir("/proc/self/task"))
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/maps and /proc/self/task")


def run_child(body: str, timeout: float = 240) -> str:
    """Run ``body`` after CHILD_PRELUDE in a fresh interpreter; its stdout. Fails the test on
    a non-zero exit (an abort shows as a negative return code)."""
    proc = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout


@linux_only
def test_forty_runtimes_coexist_and_one_that_does_not_fit_is_refused_typed() -> None:
    out = run_child("""
        runtimes = [plugbox.Runtime(state_dir=work / f"s{i}") for i in range(40)]
        assert runtimes[39].load(plugin).call("run") == b"\\x01\\0\\0\\0"
        print("forty ok")
        refused = None
        for i in range(40, 300):
            try:
                runtimes.append(plugbox.Runtime(state_dir=work / f"s{i}"))
            except plugbox.UsageError as exc:
                refused = (i, exc.limit, str(exc))
                break
        print("refused", refused[0], refused[1])
        assert "pooled_instances" in refused[2], refused[2]
        for rt in runtimes:
            rt.close()
        del runtimes, rt
        gc.collect()
        with plugbox.Runtime(state_dir=work / "after") as rt:
            assert rt.load(plugin).call("run")
        print("after ok")
    """)
    assert "forty ok" in out and "after ok" in out
    index, limit = out.split("refused ")[1].split()[:2]
    assert int(index) >= 40 and limit == "address-space"


@linux_only
def test_under_ulimit_v_a_pool_that_does_not_fit_is_refused_and_a_smaller_one_runs() -> None:
    out = run_child("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (256 << 30, 256 << 30))
        try:
            plugbox.Runtime(state_dir=work / "big")
        except plugbox.UsageError as exc:
            print("refused", exc.limit)
        for slots in (16, 0):
            with plugbox.Runtime(state_dir=work / f"s{slots}", pooled_instances=slots) as rt:
                p = rt.load(plugin, mode="fresh")
                assert [p.call("run") for _ in range(3)] == [b"\\x01\\0\\0\\0"] * 3
                print("ran", slots)
    """)
    assert "refused address-space" in out and "ran 16" in out and "ran 0" in out


@linux_only
def test_the_admission_estimate_covers_what_wasmtime_reserves() -> None:
    out = run_child("""
        for slots in (1, 100, 500):
            before = mapped_tib()
            rt = plugbox.Runtime(state_dir=work / f"s{slots}", pooled_instances=slots)
            print(slots, (mapped_tib() - before) * 2**40)
            rt.close()
            del rt
            gc.collect()
    """)
    max_memory = plugbox.Policy().max_limits.memory_bytes
    for line in out.splitlines():
        slots, mapped = int(line.split()[0]), float(line.split()[1])
        assert 0.95 * slots * SLOT_RESERVATION <= mapped <= pool_bytes(slots, max_memory), line


@linux_only
def test_a_refused_constructor_releases_what_it_made_100_times_over() -> None:
    out = run_child("""
        holder = plugbox.Runtime(state_dir=work / "held")
        threads, mapped = os_threads(), mapped_tib()
        for attempt in range(100):
            try:
                plugbox.Runtime(state_dir=work / "held")
            except plugbox.StateError as exc:
                assert exc.path == str(work / "held" / "plugbox.sqlite3"), exc.path
                assert "close that Runtime" in str(exc)
            else:
                raise AssertionError("a second Runtime opened a held state directory")
        assert os_threads() == threads, (os_threads(), threads)
        assert abs(mapped_tib() - mapped) < 0.01, (mapped_tib(), mapped)
        holder.close()
        with plugbox.Runtime(state_dir=work / "held") as rt:
            assert rt.load(plugin).call("run")
        print("survived")
    """)
    assert "survived" in out


@linux_only
def test_runtimes_dropped_without_close_give_back_threads_address_space_and_the_lock() -> None:
    out = run_child("""
        import weakref
        with plugbox.Runtime(state_dir=work / "warm", cache_dir=work / "cache") as rt:
            rt.load(plugin).call("run")  # wasmtime's compiler threads stay for good
        del rt
        gc.collect()
        threads, mapped = os_threads(), mapped_tib()
        # 80 x 2 TiB would not fit in 128 TiB: each one's reservation must come back.
        for i in range(80):
            rt = plugbox.Runtime(state_dir=work / f"s{i}", cache_dir=work / "cache")
            rt.load(plugin, mode="fresh" if i % 2 else "persistent").call("run")
        ref = weakref.ref(rt)
        del rt
        gc.collect()
        assert ref() is None, gc.get_referrers(ref())
        # The same state directory, reopened after each unclosed Runtime is dropped.
        for i in range(30):
            rt = plugbox.Runtime(state_dir=work / "same", cache_dir=work / "cache")
            assert rt.load(plugin).call("run") == b"\\x01\\0\\0\\0"
            del rt
        gc.collect()
        print("threads", os_threads() - threads, "mapped", mapped_tib() - mapped)
    """)
    threads, mapped = out.split()[1], out.split()[3]
    assert int(threads) <= 0 and float(mapped) < 0.01, out


@pytest.mark.parametrize("settings", [
    {"max_wasm_stack": -1}, {"max_wasm_stack": 4 << 20}, {"max_wasm_stack": 1 << 40},
    {"epoch_tick_ms": 0}, {"epoch_tick_ms": -1}, {"epoch_tick_ms": 1e9},
    {"epoch_tick_ms": float("nan")}, {"pooled_instances": -1}, {"pooled_instances": 2.5},
    {"switch_interval_ms": 0}, {"switch_interval_ms": 1e4}, {"switch_interval_ms": "1"},
])
def test_settings_wasmtime_would_abort_on_are_usage_errors(tmp_path: Path,
                                                           settings: dict[str, float]) -> None:
    # Before, each of the first three aborted the process, and a zero tick raised ValueError.
    name = next(iter(settings))
    with pytest.raises(plugbox.UsageError, match=name):
        plugbox.Runtime(state_dir=tmp_path / "s", **settings)  # type: ignore[arg-type]
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt:  # nothing was left holding the state
        assert rt.kv.usage("p") == (0, 0)


# -- state failures are StateError, with the path and the fix -----------------------------------


def test_a_state_dir_that_is_a_file_is_a_state_error(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_text("not a directory")
    for state_dir in (target, target / "below"):
        with pytest.raises(plugbox.StateError, match="not a directory") as info:
            plugbox.Runtime(state_dir=state_dir)
        assert info.value.path == str(state_dir)
        assert "pick another state_dir" in str(info.value)


def _write_store(path: Path, keys: int) -> None:
    from plugbox.services._kvstore import KvStore

    with KvStore(path) as store:
        for i in range(keys):
            store.set("p", f"key-{i:05}", os.urandom(200), quota_bytes=1 << 30,
                      quota_keys=1 << 30)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped-leaf", "not-a-database"])
def test_a_damaged_database_is_a_state_error_not_an_empty_store(tmp_path: Path,
                                                                 damage: str) -> None:
    db = tmp_path / "s" / "plugbox.sqlite3"
    _write_store(db, 3000)
    data = bytearray(db.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data[8192:12288] = os.urandom(4096)
    elif damage == "flipped-leaf":  # inside one leaf page, past the header opening reads
        page = len(data) // 4096 - 3
        data[page * 4096 + 200: page * 4096 + 3000] = os.urandom(2800)
    else:
        data = bytearray(b"plain text, " * 500)
    db.write_bytes(bytes(data))
    with pytest.raises(plugbox.StateError) as info:
        plugbox.Runtime(state_dir=tmp_path / "s")
    assert info.value.path == str(db)
    message = str(info.value)
    assert ("is corrupt" in message or "not an SQLite database" in message), message
    assert "move it aside" in message


def test_an_empty_database_file_is_an_empty_store(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "plugbox.sqlite3").write_bytes(b"")
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt:
        assert rt.kv.usage("p") == (0, 0)


def test_a_database_held_by_another_process_is_a_state_error(tmp_path: Path) -> None:
    db = tmp_path / "s" / "plugbox.sqlite3"
    _write_store(db, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3, sys
            conn = sqlite3.connect({str(db)!r}, isolation_level=None)
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE")
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(plugbox.StateError, match="in use by another process") as info:
            plugbox.Runtime(state_dir=tmp_path / "s")
        assert info.value.path == str(db)
    finally:
        holder.communicate("", timeout=30)


def test_a_state_dir_this_user_cannot_write_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "locked-down" / "existing").mkdir(parents=True)
    cases = [(tmp_path / "locked-down" / "new", tmp_path / "locked-down" / "new"),
             (tmp_path / "locked-down" / "existing",
              tmp_path / "locked-down" / "existing" / "plugbox.sqlite3")]
    if os.geteuid() != 0:
        for directory in (tmp_path / "locked-down", tmp_path / "locked-down" / "existing"):
            directory.chmod(0o555)
        try:
            for state_dir, path in cases:
                with pytest.raises(plugbox.StateError, match="not writable") as info:
                    plugbox.Runtime(state_dir=state_dir)
                assert info.value.path == str(path)
        finally:
            for directory in (tmp_path / "locked-down", tmp_path / "locked-down" / "existing"):
                directory.chmod(0o755)
        return
    # root ignores permission bits: ask a child process running as nobody, in a directory
    # tree nobody can traverse but not write.
    out = run_child("""
        import plugbox._runtime
        (work / "locked-down" / "existing").mkdir(parents=True)
        for d in (work, work / "locked-down", work / "locked-down" / "existing"):
            d.chmod(0o755)
        os.setgid(65534)
        os.setuid(65534)
        for name in ("new", "existing"):
            try:
                plugbox.Runtime(state_dir=work / "locked-down" / name)
            except plugbox.StateError as exc:
                print("refused", Path(exc.path).relative_to(work), "not writable" in str(exc))
    """)
    assert out.splitlines() == ["refused locked-down/new True",
                                "refused locked-down/existing/plugbox.sqlite3 True"]


@pytest.fixture
def small_tmpfs() -> Iterator[Callable[[str], Path]]:
    """``mount(size)``: a fresh tmpfs of that size (skips when mounting is not permitted)."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        where = Path("/tmp") / f"plugbox-tmpfs-{uuid.uuid4().hex[:8]}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            where.rmdir()
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'})")
        mounts.append(where)
        return where

    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8) for a small or read-only filesystem")
    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def test_a_full_filesystem_is_a_state_error_at_start_and_a_kv_failure_in_calls(
    small_tmpfs: Callable[[str], Path], wat_plugin: Callable[..., Path]
) -> None:
    fs = small_tmpfs("512k")
    # Filled to the last block: the database cannot even be created.
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(plugbox.StateError, match="full") as info:
        plugbox.Runtime(state_dir=fs / "s")
    assert info.value.path == str(fs / "s" / "plugbox.sqlite3")
    # With room to open, a disk that fills up under the store: the write fails (HostServices
    # answers the guest `failure`), close() does not raise, and nothing written is lost.
    (fs / "filler").unlink()
    (fs / "filler").write_bytes(b"\0" * (300 << 10))
    rt = plugbox.Runtime(state_dir=fs / "s", cache_dir=fs / "s" / "cache")
    written = 0
    try:
        for i in range(400):
            rt.kv.set("p", f"k{i}", b"v" * 1000, quota_bytes=1 << 30, quota_keys=1 << 30)
            written += 1
    except sqlite3.OperationalError as exc:
        assert "full" in str(exc)
    assert 0 < written < 400
    rt.close()
    (fs / "filler").unlink()
    with plugbox.Runtime(state_dir=fs / "s", cache_dir=fs / "s" / "cache") as rt:
        assert rt.kv.usage("p")[1] == written


def test_a_read_only_state_dir_is_a_state_error(small_tmpfs: Callable[[str], Path]) -> None:
    fs = small_tmpfs("4m")
    with plugbox.Runtime(state_dir=fs / "s"):
        pass
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    for state_dir, path in ((fs / "s", fs / "s" / "plugbox.sqlite3"), (fs / "new", fs / "new")):
        with pytest.raises(plugbox.StateError, match="read-only") as info:
            plugbox.Runtime(state_dir=state_dir)
        assert info.value.path == str(path)


# -- the compiled cache: leftovers swept, entries keyed by a private secret ------------------------


def _age(path: Path, seconds: float) -> None:
    import time

    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.mark.skipif(sys.platform == "win32", reason="writers lock temporary files with flock")
def test_temporary_files_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    # A writer SIGKILLed in the middle of writing an artifact, a minute and more ago.
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, tempfile
        fd, name = tempfile.mkstemp(dir={str(cache)!r}, prefix=".tmp-", suffix=".cwasm")
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"half an artifact" * 4096)
        print(name, flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    killed = Path(writer.stdout.readline().strip())
    writer.kill()
    writer.wait(timeout=30)
    _age(killed, 120)
    # A writer that is alive and holds its file (in another process), and one whose writer
    # died a moment ago: no lock, so swept at once.
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(cache / '.tmp-live.cwasm')!r}, os.O_WRONLY | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "held"
        _age(cache / ".tmp-live.cwasm", 120)
        (cache / ".tmp-new.cwasm").write_bytes(b"written by a process that died just now")
        (cache / ".tmp-ancient.cwasm").write_bytes(b"from a crash days ago")
        _age(cache / ".tmp-ancient.cwasm", 3 * 24 * 3600)
        with plugbox.Runtime(state_dir=tmp_path / "s", cache_dir=cache) as rt:
            assert rt.cache.swept == 3
        assert [p.name for p in cache.glob(".tmp-*")] == [".tmp-live.cwasm"]
        assert not killed.exists()
    finally:
        live.communicate("", timeout=30)


def test_the_cache_key_is_private_and_a_replaced_key_is_refused(tmp_path: Path) -> None:
    with plugbox.Runtime(state_dir=tmp_path / "s"):
        pass
    key = tmp_path / "s" / "cache.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    key.chmod(0o644)
    with pytest.raises(plugbox.StateError, match="readable or writable by others") as info:
        plugbox.Runtime(state_dir=tmp_path / "s")
    assert info.value.path == str(key)
    key.unlink()
    (tmp_path / "planted").write_bytes(b"k" * 32)
    key.symlink_to(tmp_path / "planted")
    with pytest.raises(plugbox.StateError, match="symbolic link"):
        plugbox.Runtime(state_dir=tmp_path / "s")
    key.unlink()  # the documented fix: a new key, and everything is recompiled
    with plugbox.Runtime(state_dir=tmp_path / "s"):
        pass


def test_entries_made_under_another_key_or_for_another_module_are_not_loaded(
    tmp_path: Path, wat_plugin: Callable[..., Path]
) -> None:
    from .conftest import COUNTER_BODY, ECHO_BODY

    counter, echo = wat_plugin(COUNTER_BODY), wat_plugin(ECHO_BODY)
    cache = tmp_path / "a" / "cache"
    with plugbox.Runtime(state_dir=tmp_path / "a", cache_dir=cache) as rt:
        rt.load(counter)
        rt.load(echo)
        assert rt.cache.misses == 2
    # Swap the two entries (artifact and HMAC): each now sits under the other module's name.
    names = sorted({p.name.split(".")[0] for p in cache.glob("*.cwasm")})
    for suffix in (".cwasm", ".cwasm.hmac"):
        a, b = (cache / (n + suffix) for n in names)
        a.rename(tmp_path / "swap")
        b.rename(a)
        (tmp_path / "swap").rename(b)
    with plugbox.Runtime(state_dir=tmp_path / "a", cache_dir=cache) as rt:
        assert rt.load(counter).call("run") == b"\x01\0\0\0"
        assert rt.load(echo).call("run", b"echo") == b"echo"
        assert (rt.cache.hits, rt.cache.misses) == (0, 2)
    # The same files under another key (a copied cache, a different state dir): rebuilt.
    other = tmp_path / "b" / "cache"
    shutil.copytree(cache, other)
    with plugbox.Runtime(state_dir=tmp_path / "b", cache_dir=other) as rt:
        rt.load(counter)
        assert (rt.cache.hits, rt.cache.misses) == (0, 1)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_planted_in_the_cache_neither_hangs_nor_loads(
    tmp_path: Path, wat_plugin: Callable[..., Path]
) -> None:
    from .conftest import COUNTER_BODY

    counter = wat_plugin(COUNTER_BODY)
    with plugbox.Runtime(state_dir=tmp_path / "s") as rt:
        entry = rt.cache.path_for(rt.load(counter).manifest.module_sha256)
    for planted in (entry, entry.with_name(entry.name + ".hmac")):
        planted.unlink()
        os.mkfifo(planted)
        with plugbox.Runtime(state_dir=tmp_path / "s") as rt:
            assert rt.load(counter).call("run") == b"\x01\0\0\0"
            assert (rt.cache.hits, rt.cache.misses) == (0, 1)
