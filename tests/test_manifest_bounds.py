"""Files and manifests cannot hang, balloon or escape (issue 7, section 4).

Plugin files (plugbox.json, the module, signatures) are read inside the plugin directory, as
regular files, size-capped and without blocking; validation is bounded (cheap structural checks
and signatures before the schema, linear uniqueItems, capped arrays); plugin-supplied regexes
run on RE2 and config validation has a work budget; the manifest is read once. Timing bounds are
generous: each is a case that took from several seconds to minutes before.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import plugbox
from plugbox import _manifest
from plugbox._manifest import (
    MAX_ARRAY_ITEMS,
    MAX_CONFIG_BYTES,
    MAX_JSON_DEPTH,
    MAX_MODULE_BYTES,
    PluginFileRefused,
    load_manifest,
    read_manifest,
    read_plugin_file,
    validate_config,
    verify_module,
)
from plugbox.trust._signing import SecretKey, sign_bytes

from .conftest import ECHO_BODY, wat_module, write_plugin

MODULE = wat_module(ECHO_BODY)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "plugin", MODULE, name="bounded")


def rewrite(directory: Path, **fields: Any) -> Path:
    """Update manifest fields (a value of None removes the field)."""
    path = directory / "plugbox.json"
    doc = json.loads(path.read_text())
    for key, value in fields.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))
    return directory


def point_module_at(directory: Path, rel: str, sha256: str = "0" * 64) -> Path:
    return rewrite(directory, module={"path": rel, "sha256": sha256})


def in_child(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a child Python (a hang must fail the test, not wedge the suite); its
    stdout. ``code`` prints the outcome."""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s (hung)")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


LOAD_IN_CHILD = """
import plugbox, sys
try:
    plugbox.Runtime(state_dir={state!r}, pooled_instances=0).load({path!r})
    print("loaded")
except plugbox.PlugboxError as exc:
    print(type(exc).__name__, exc.message)
# VmHWM, not ru_maxrss: the latter survives exec, so it would report the parent's peak.
with open("/proc/self/status") as status:
    hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print("maxrss_kib", hwm)
"""


def load_in_child(path: Path, state: Path) -> tuple[str, int]:
    out = in_child(LOAD_IN_CHILD.format(path=str(path), state=str(state)))
    outcome, _, rss = out.strip().rpartition("\n")
    return outcome, int(rss.split()[1])


# -- module.path: inside the directory, a regular file, capped ----------------------------------


def test_a_module_symlink_out_of_the_plugin_directory_is_refused_unread(
        tmp_path: Path, plugin_dir: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"host secret")
    (plugin_dir / "plugin.wasm").unlink()
    (plugin_dir / "plugin.wasm").symlink_to(outside)
    manifest = load_manifest(plugin_dir)
    with pytest.raises(plugbox.ManifestError, match="outside the plugin directory") as info:
        verify_module(manifest)
    assert not isinstance(info.value, plugbox.HashMismatchError)
    assert info.value.json_path == "$.module.path"
    # The digest of a file outside the plugin directory is never printed.
    assert hashlib.sha256(b"host secret").hexdigest() not in info.value.message
    with plugbox.Runtime(state_dir=tmp_path / "state", pooled_instances=0) as runtime:
        with pytest.raises(plugbox.ManifestError, match="outside the plugin directory"):
            runtime.load(plugin_dir)


def test_a_symlinked_directory_on_the_module_path_may_not_leave_the_plugin(
        tmp_path: Path, plugin_dir: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "plugin.wasm").write_bytes(MODULE)
    (plugin_dir / "build").symlink_to(tmp_path / "elsewhere")
    point_module_at(plugin_dir, "build/plugin.wasm", hashlib.sha256(MODULE).hexdigest())
    with pytest.raises(plugbox.ManifestError, match="outside the plugin directory"):
        verify_module(load_manifest(plugin_dir))


def test_a_symlink_that_stays_inside_the_plugin_directory_is_followed(plugin_dir: Path) -> None:
    (plugin_dir / "target").mkdir()
    (plugin_dir / "plugin.wasm").rename(plugin_dir / "target" / "real.wasm")
    (plugin_dir / "plugin.wasm").symlink_to(Path("target") / "real.wasm")
    assert verify_module(load_manifest(plugin_dir)) == MODULE


def test_a_module_that_is_a_directory_is_refused(plugin_dir: Path) -> None:
    (plugin_dir / "sub.wasm").mkdir()
    point_module_at(plugin_dir, "sub.wasm")
    with pytest.raises(plugbox.ManifestError, match="not a regular file"):
        verify_module(load_manifest(plugin_dir))


def test_a_fifo_module_is_refused_without_hanging(tmp_path: Path, plugin_dir: Path) -> None:
    os.mkfifo(plugin_dir / "fifo.wasm")
    point_module_at(plugin_dir, "fifo.wasm")
    outcome, _ = load_in_child(plugin_dir, tmp_path / "state")
    assert outcome.startswith("ManifestError") and "is a FIFO" in outcome, outcome


def test_a_module_linked_to_dev_zero_is_refused_without_growing_the_host(
        tmp_path: Path, plugin_dir: Path) -> None:
    (plugin_dir / "plugin.wasm").unlink()
    (plugin_dir / "plugin.wasm").symlink_to("/dev/zero")
    outcome, rss_kib = load_in_child(plugin_dir, tmp_path / "state")
    assert outcome.startswith("ManifestError") and "outside the plugin directory" in outcome
    assert rss_kib < 400 * 1024, rss_kib


def test_a_module_over_the_hard_cap_is_refused_before_it_is_read(
        tmp_path: Path, plugin_dir: Path) -> None:
    with open(plugin_dir / "plugin.wasm", "r+b") as stream:  # sparse: costs no disk
        stream.truncate(MAX_MODULE_BYTES + 1)
    outcome, rss_kib = load_in_child(plugin_dir, tmp_path / "state")
    assert outcome.startswith("ManifestError") and f"cap of {MAX_MODULE_BYTES}" in outcome
    assert rss_kib < 400 * 1024, rss_kib  # 64 MiB never read


def test_a_swap_to_a_symlink_after_the_path_was_resolved_is_refused(
        tmp_path: Path, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The race: the path is checked, then replaced by a link before it is opened. Simulated
    # by a resolve() that reports the path as it was, while a link is in place.
    (tmp_path / "secret.bin").write_bytes(b"host secret")
    (plugin_dir / "plugin.wasm").unlink()
    (plugin_dir / "plugin.wasm").symlink_to(tmp_path / "secret.bin")
    real_resolve = Path.resolve

    def stale(self: Path, strict: bool = False) -> Path:
        return self if self.name == "plugin.wasm" else real_resolve(self, strict=strict)

    monkeypatch.setattr(Path, "resolve", stale)
    with pytest.raises(PluginFileRefused, match="symbolic link") as info:
        read_plugin_file(plugin_dir.resolve(), "plugin.wasm", 1 << 20)
    assert info.value.kind == "unsafe"


def test_a_manifest_that_is_a_fifo_or_a_device_is_refused_without_hanging(
        tmp_path: Path) -> None:
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "plugbox.json")
    zero_dir = tmp_path / "zero"
    zero_dir.mkdir()
    (zero_dir / "plugbox.json").symlink_to("/dev/zero")
    out = in_child(f"""
import plugbox
for path in ({str(fifo_dir)!r}, {str(zero_dir / "plugbox.json")!r}, {str(zero_dir)!r}):
    try:
        plugbox.load_manifest(path)
    except plugbox.ManifestError as exc:
        print(exc.message)
""")
    fifo, zero, zero_dir_link = out.strip().splitlines()
    assert "is a FIFO, not a regular file" in fifo
    assert "is a device, not a regular file" in zero
    assert "outside the plugin directory" in zero_dir_link


def test_signature_files_are_read_as_safely(tmp_path: Path, plugin_dir: Path) -> None:
    key = SecretKey.generate()
    data = (plugin_dir / "plugbox.json").read_bytes()
    outside = tmp_path / "elsewhere.minisig"
    outside.write_text(sign_bytes(data, key, trusted_comment="t").to_text())
    (plugin_dir / "plugbox.json.minisig").symlink_to(outside)
    policy = plugbox.TrustPolicy([key.public_key()])
    with pytest.raises(plugbox.SignatureError, match="outside the plugin directory"):
        policy.check(load_manifest(plugin_dir))
    # A FIFO (named like a signature, or swapped in) is never opened for a blocking read.
    os.mkfifo(plugin_dir / "trap.minisig")
    start = time.perf_counter()
    with pytest.raises(PluginFileRefused, match="is a FIFO"):
        read_plugin_file(plugin_dir, "trap.minisig", 16384)
    assert time.perf_counter() - start < 5


# -- validation is bounded ---------------------------------------------------------------------


def test_unique_items_over_many_objects_is_fast(plugin_dir: Path) -> None:
    # 8,000 objects took 113 s with jsonschema's pairwise uniqueItems.
    rewrite(plugin_dir, hooks=[{"n": i} for i in range(8_000)])
    start = time.perf_counter()
    with pytest.raises(plugbox.ManifestError, match=r"\$\.hooks"):
        load_manifest(plugin_dir)
    assert time.perf_counter() - start < 10


def test_hook_arrays_are_capped_and_a_duplicate_is_named_in_linear_time(
        plugin_dir: Path) -> None:
    hooks = [f"hook-{i}" for i in range(1_000)] + ["hook-7"]
    rewrite(plugin_dir, hooks=hooks)
    with pytest.raises(plugbox.ManifestError, match="'hook-7' is listed more than once"):
        load_manifest(plugin_dir)
    rewrite(plugin_dir, hooks=[f"hook-{i}" for i in range(1_025)])
    with pytest.raises(plugbox.ManifestError, match=r"\$\.hooks"):
        load_manifest(plugin_dir)
    # A duplicate among 20,000 names (3 s in the explanation before): refused by the cheap
    # array bound before the schema.
    rewrite(plugin_dir, hooks=[f"hook-{i}" for i in range(20_000)] + ["hook-1"])
    start = time.perf_counter()
    with pytest.raises(plugbox.ManifestError, match=f"more than the {MAX_ARRAY_ITEMS}"):
        load_manifest(plugin_dir)
    assert time.perf_counter() - start < 5


def test_a_config_schema_with_many_objects_under_unique_items_is_fast(plugin_dir: Path) -> None:
    # Draft 4's metaschema requires enum values to be unique: jsonschema compared 9,000
    # objects pairwise (40 million comparisons).
    rewrite(plugin_dir, config_schema={"$schema": "http://json-schema.org/draft-04/schema#",
                                       "enum": [{"k": i} for i in range(9_000)]})
    start = time.perf_counter()
    load_manifest(plugin_dir)
    rewrite(plugin_dir, config_schema={"$schema": "http://json-schema.org/draft-04/schema#",
                                       "enum": [{"k": i % 4_500} for i in range(9_000)]})
    with pytest.raises(plugbox.ManifestError, match=r"\$\.config_schema\.enum"):
        load_manifest(plugin_dir)
    assert time.perf_counter() - start < 10


def test_deep_nesting_is_refused_by_the_structural_check(plugin_dir: Path) -> None:
    deep: Any = {}
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = {"items": deep}
    rewrite(plugin_dir, config_schema=deep)
    with pytest.raises(plugbox.ManifestError, match=f"nested more than {MAX_JSON_DEPTH}"):
        read_manifest(plugin_dir)


def test_an_unsigned_hostile_manifest_is_refused_by_signature_first_and_fast(
        tmp_path: Path, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rewrite(plugin_dir, hooks=[{"n": i} for i in range(8_000)],
            config_schema={"required": [{"k": i} for i in range(8_000)]})
    calls: list[object] = []
    real = _manifest._validate_against_schema
    monkeypatch.setattr(_manifest, "_validate_against_schema",
                        lambda *a: calls.append(a) or real(*a))
    key = SecretKey.generate()
    trust = plugbox.TrustPolicy([key.public_key()], mode="require")
    with plugbox.Runtime(state_dir=tmp_path / "state", pooled_instances=0,
                         trust=trust) as runtime:
        start = time.perf_counter()
        with pytest.raises(plugbox.UntrustedSignerError, match="is not signed"):
            runtime.load(plugin_dir)
        assert time.perf_counter() - start < 5  # milliseconds on an idle machine
    assert calls == []  # the schema was never applied


def test_the_manifest_is_read_once_and_its_signature_covers_those_bytes(
        tmp_path: Path, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = SecretKey.generate()
    signed = (plugin_dir / "plugbox.json").read_bytes()
    (plugin_dir / "plugbox.json.minisig").write_text(
        sign_bytes(signed, key, trusted_comment="t").to_text())
    reads: list[str] = []
    real = _manifest.read_plugin_file

    def counting(root: Path, relative: str, cap: int) -> bytes:
        reads.append(relative)
        data = real(root, relative, cap)
        if relative == "plugbox.json":
            # Swapped right after it was read: what was read is what is checked and parsed.
            (plugin_dir / "plugbox.json").write_text(json.dumps({"name": "evil"}))
        return data

    monkeypatch.setattr(_manifest, "read_plugin_file", counting)
    trust = plugbox.TrustPolicy([key.public_key()], mode="require")
    with plugbox.Runtime(state_dir=tmp_path / "state", pooled_instances=0,
                         trust=trust) as runtime:
        plugin = runtime.load(plugin_dir)
        assert plugin.manifest.data == signed
        assert plugin.manifest.name == "bounded"
    assert reads.count("plugbox.json") == 1


# -- config_schema: RE2 and a work budget --------------------------------------------------------


EVIL = r"^(\w+\s?)*$"  # exponential on a backtracking engine: 4 s at 34 characters


def with_config_schema(directory: Path, schema: dict[str, Any]) -> plugbox.Manifest:
    rewrite(directory, config_schema=schema)
    return load_manifest(directory)


def test_a_catastrophic_pattern_runs_in_linear_time(plugin_dir: Path) -> None:
    manifest = with_config_schema(plugin_dir, {"properties": {"a": {"pattern": EVIL}}})
    validate_config(manifest, {"a": "word " * 3})
    start = time.perf_counter()
    with pytest.raises(plugbox.UsageError, match=r"invalid at \$\.a"):
        validate_config(manifest, {"a": "a" * 60 + "!"})
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("schema", [
    {"patternProperties": {EVIL: {"type": "integer"}}},
    {"patternProperties": {EVIL: {}}, "additionalProperties": False},
    {"propertyNames": {"pattern": EVIL}},
])
def test_plugin_patterns_in_property_keywords_run_in_linear_time(
        plugin_dir: Path, schema: dict[str, Any]) -> None:
    manifest = with_config_schema(plugin_dir, schema)
    start = time.perf_counter()
    try:
        validate_config(manifest, {"a" * 60 + "!": 1})
    except plugbox.UsageError:
        pass
    assert time.perf_counter() - start < 5


def test_patterns_keep_their_meaning_under_re2(plugin_dir: Path) -> None:
    manifest = with_config_schema(plugin_dir, {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "properties": {"id": {"pattern": "^[a-z]+-[0-9]{2}$"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
    })
    validate_config(manifest, {"id": "ab-12", "x-note": "fine"})
    for bad in ({"id": "ab-123"}, {"x-note": 3}, {"other": 1}):
        with pytest.raises(plugbox.UsageError):
            validate_config(manifest, bad)


@pytest.mark.parametrize("schema, json_path", [
    ({"properties": {"a": {"pattern": "^(?=a)"}}}, "$.config_schema.properties.a.pattern"),
    ({"patternProperties": {"(a)\\1": {}}}, "$.config_schema.patternProperties"),
])
def test_patterns_re2_cannot_run_are_refused_at_load(
        plugin_dir: Path, schema: dict[str, Any], json_path: str) -> None:
    rewrite(plugin_dir, config_schema=schema)
    with pytest.raises(plugbox.ManifestError, match="RE2") as info:
        load_manifest(plugin_dir)
    assert info.value.json_path == json_path


def test_unevaluated_properties_with_pattern_properties_is_refused(plugin_dir: Path) -> None:
    rewrite(plugin_dir, config_schema={"patternProperties": {"^a": {}},
                                       "unevaluatedProperties": False})
    with pytest.raises(plugbox.ManifestError, match="unevaluatedProperties"):
        load_manifest(plugin_dir)


def test_a_schema_whose_work_doubles_per_level_is_refused_within_the_budget(
        plugin_dir: Path) -> None:
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(40)}
    defs["d40"] = {"type": "object"}
    manifest = with_config_schema(plugin_dir, {"$defs": defs, "$ref": "#/$defs/d0"})
    start = time.perf_counter()
    with pytest.raises(plugbox.ManifestError, match="schema evaluations") as info:
        validate_config(manifest, {})  # 2**40 evaluations without the budget
    assert time.perf_counter() - start < 15
    assert info.value.json_path == "$.config_schema"


def test_unique_items_in_a_config_is_linear(plugin_dir: Path) -> None:
    manifest = with_config_schema(plugin_dir, {"properties": {"xs": {"uniqueItems": True}}})
    start = time.perf_counter()
    validate_config(manifest, {"xs": [{"n": i} for i in range(20_000)]})
    with pytest.raises(plugbox.UsageError, match="more than once"):
        validate_config(manifest, {"xs": [{"n": i} for i in range(20_000)] + [{"n": 5}]})
    assert time.perf_counter() - start < 15  # pairwise: 200 million comparisons
    # JSON equality: 1 and 1.0 are the same value, true and 1 are not.
    with pytest.raises(plugbox.UsageError):
        validate_config(manifest, {"xs": [1, 1.0]})
    validate_config(manifest, {"xs": [1, True, "1", [1], {"1": 1}]})


def test_a_configuration_is_bounded_by_size(plugin_dir: Path) -> None:
    manifest = with_config_schema(plugin_dir, {"type": "object"})
    with pytest.raises(plugbox.UsageError, match=f"more than the {MAX_CONFIG_BYTES}"):
        validate_config(manifest, {"blob": "x" * MAX_CONFIG_BYTES})


def test_packing_and_reading_packages_never_wait_on_a_fifo(tmp_path: Path,
                                                           plugin_dir: Path) -> None:
    os.mkfifo(plugin_dir / "fifo.wasm")
    point_module_at(plugin_dir, "fifo.wasm")
    os.mkfifo(tmp_path / "fifo.plugbox")
    out = in_child(f"""
import plugbox
from plugbox.trust._package import read_package, write_package
for attempt in (lambda: write_package({str(plugin_dir)!r}, {str(tmp_path / "out.plugbox")!r}),
                lambda: read_package({str(tmp_path / "fifo.plugbox")!r})):
    try:
        attempt()
    except plugbox.PlugboxError as exc:
        print(type(exc).__name__, exc.message)
""")
    pack, read = out.strip().splitlines()
    assert pack.startswith("UsageError") and "is a FIFO" in pack
    assert read.startswith("UsageError") and "is a FIFO" in read


def test_a_nested_schema_key_does_not_switch_back_to_backtracking_regexes(
        plugin_dir: Path) -> None:
    manifest = with_config_schema(plugin_dir, {"properties": {"a": {
        "$schema": "http://json-schema.org/draft-07/schema#", "pattern": EVIL}}})
    start = time.perf_counter()
    with pytest.raises(plugbox.UsageError, match=r"invalid at \$\.a"):
        validate_config(manifest, {"a": "a" * 60 + "!"})
    assert time.perf_counter() - start < 5


def test_checking_a_huge_config_schema_is_bounded(plugin_dir: Path) -> None:
    # 30,000 subschemas took about a minute against the 2020-12 metaschema; the budget stops
    # the check after the same amount of work whatever the size.
    rewrite(plugin_dir, config_schema={"properties": {f"p{i}": {} for i in range(30_000)}})
    start = time.perf_counter()
    with pytest.raises(plugbox.ManifestError, match="schema evaluations") as info:
        load_manifest(plugin_dir)
    assert time.perf_counter() - start < 15
    assert info.value.json_path == "$.config_schema"
    # A large but real one is fine.
    rewrite(plugin_dir, config_schema={"properties": {
        f"p{i}": {"type": "string", "maxLength": 10} for i in range(200)}})
    load_manifest(plugin_dir)


def test_a_plugin_directory_whose_manifest_links_out_of_it_is_refused(
        tmp_path: Path, plugin_dir: Path) -> None:
    elsewhere = write_plugin(tmp_path / "elsewhere", MODULE, name="elsewhere")
    (plugin_dir / "plugbox.json").unlink()
    (plugin_dir / "plugbox.json").symlink_to(elsewhere / "plugbox.json")
    with pytest.raises(plugbox.ManifestError, match="outside the plugin directory"):
        load_manifest(plugin_dir)
    # Named explicitly, the manifest is loaded where it really is.
    manifest = load_manifest(plugin_dir / "plugbox.json")
    assert manifest.directory == elsewhere.resolve()


def test_a_signatures_directory_with_too_many_entries_is_not_listed(plugin_dir: Path) -> None:
    sigs = plugin_dir / "signatures"
    sigs.mkdir()
    for i in range(1_100):
        (sigs / f"junk-{i}.txt").touch()
    key = SecretKey.generate()
    report = plugbox.TrustPolicy([key.public_key()]).evaluate(
        plugin_dir, (plugin_dir / "plugbox.json").read_bytes(), plugin="bounded")
    assert isinstance(report.error, plugbox.SignatureError)
    assert "more than 1024 entries" in report.error.message
