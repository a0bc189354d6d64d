"""Host policy: caps on requested permissions and limits, and defaults for unrequested limits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugbox import HttpPermission, KvPermission, Limits, PolicyViolationError, UsageError
from plugbox._manifest import Manifest, load_manifest
from plugbox._policy import DEFAULT_MAX_LIMITS, Policy, _host_pattern_covered

ALL_SERVICES = frozenset({"log", "config", "kv", "events", "clock", "random", "http", "host"})


@pytest.fixture
def manifest(tmp_path: Path) -> Callable[..., Manifest]:
    """Factory: a loaded manifest with the given ``permissions`` and ``limits``."""
    counter = iter(range(1000))

    def make(permissions: dict[str, Any] | None = None, limits: dict[str, int] | None = None
             ) -> Manifest:
        directory = tmp_path / f"p{next(counter)}"
        directory.mkdir()
        doc: dict[str, Any] = {
            "manifest_version": 1,
            "name": "probe",
            "version": "0.1.0",
            "abi": "1.0",
            "module": {"path": "plugin.wasm", "sha256": hashlib.sha256(b"").hexdigest()},
            "hooks": ["run"],
        }
        if permissions is not None:
            doc["permissions"] = permissions
        if limits is not None:
            doc["limits"] = limits
        (directory / "plugbox.json").write_text(json.dumps(doc))
        return load_manifest(directory)

    return make


def test_defaults() -> None:
    policy = Policy()
    assert policy.max_limits == Limits(
        fuel=10_000_000_000, memory_bytes=512 << 20, deadline_ms=60_000, instances=16
    )
    assert policy.default_limits == Limits()
    assert policy.allowed_services == ALL_SERVICES
    assert policy.http_hosts == ()
    hash(policy)


def test_nothing_requested_gets_the_default_limits(manifest: Callable[..., Manifest]) -> None:
    perms, limits = Policy().resolve(manifest())
    assert perms.services() == frozenset()
    assert limits == Limits()


def test_requested_limits_are_kept_and_the_rest_defaulted(
    manifest: Callable[..., Manifest],
) -> None:
    policy = Policy(default_limits=Limits(fuel=7, memory_bytes=8 << 20, deadline_ms=9, instances=2))
    _, limits = policy.resolve(manifest(limits={"fuel": 1000, "instances": 3}))
    assert limits == Limits(fuel=1000, memory_bytes=8 << 20, deadline_ms=9, instances=3)


def test_defaults_above_a_cap_are_capped(manifest: Callable[..., Manifest]) -> None:
    # Lowering a cap below the library default must not make unrequested limits illegal.
    policy = Policy(max_limits=dataclasses.replace(DEFAULT_MAX_LIMITS, fuel=1000, instances=1))
    assert policy.effective_defaults() == dataclasses.replace(Limits(), fuel=1000, instances=1)
    _, limits = policy.resolve(manifest())
    assert limits.fuel == 1000 and limits.instances == 1


def test_requests_at_the_cap_are_allowed(manifest: Callable[..., Manifest]) -> None:
    caps = DEFAULT_MAX_LIMITS
    _, limits = Policy().resolve(manifest(limits=dataclasses.asdict(caps)))
    assert limits == caps


@pytest.mark.parametrize("name", ["fuel", "memory_bytes", "deadline_ms", "instances"])
def test_limit_above_cap_is_refused(manifest: Callable[..., Manifest], name: str) -> None:
    requested = getattr(DEFAULT_MAX_LIMITS, name) + 1
    with pytest.raises(PolicyViolationError) as info:
        Policy().resolve(manifest(limits={name: requested}))
    err = info.value
    assert err.plugin == "probe"
    assert err.limit == name
    assert err.permission is None
    message = str(err)
    assert f"limits.{name}={requested}" in message
    assert f"cap of {getattr(DEFAULT_MAX_LIMITS, name)}" in message
    assert f"Policy(max_limits=Limits({name}={requested}" in message


def test_full_request_within_caps_is_granted_unchanged(manifest: Callable[..., Manifest]) -> None:
    perms_doc = {
        "log": True,
        "config": True,
        "clock": True,
        "random": True,
        "kv": {"quota_bytes": 65536, "quota_keys": 100},
        "events": {"topics": ["counter.*"]},
        "http": {"hosts": ["127.0.0.1:*"], "timeout_ms": 5000},
        "functions": ["battles.*"],
        "dispatch": ["report.section"],
    }
    m = manifest(permissions=perms_doc)
    perms, _ = Policy(http_hosts=("127.0.0.1:*",)).resolve(m)
    assert perms == m.permissions
    assert perms.services() == ALL_SERVICES


def test_service_not_allowed_is_refused(manifest: Callable[..., Manifest]) -> None:
    policy = Policy(allowed_services=frozenset({"log", "clock"}))
    policy.resolve(manifest(permissions={"log": True, "clock": True}))
    with pytest.raises(PolicyViolationError) as info:
        policy.resolve(manifest(permissions={"log": True, "kv": {}}))
    assert info.value.permission == "kv"
    assert "'kv' permission" in str(info.value)
    assert "allowed: clock, log" in str(info.value)
    assert "Policy(allowed_services=" in str(info.value)


def test_a_permission_set_to_false_is_not_a_request(manifest: Callable[..., Manifest]) -> None:
    Policy(allowed_services=frozenset()).resolve(manifest(permissions={"log": False}))


@pytest.mark.parametrize(
    ("permissions", "cap_field", "permission"),
    [
        ({"kv": {"quota_bytes": (64 << 20) + 1}}, "max_kv_quota_bytes", "kv"),
        ({"kv": {"quota_keys": 100_001}}, "max_kv_quota_keys", "kv"),
        ({"http": {"timeout_ms": 60_001}}, "max_http_timeout_ms", "http"),
        ({"http": {"max_request_bytes": (32 << 20) + 1}}, "max_http_request_bytes", "http"),
        ({"http": {"max_response_bytes": (32 << 20) + 1}}, "max_http_response_bytes", "http"),
    ],
)
def test_permission_parameters_above_caps_are_refused(
    manifest: Callable[..., Manifest], permissions: dict[str, Any], cap_field: str, permission: str
) -> None:
    m = manifest(permissions=permissions)
    with pytest.raises(PolicyViolationError) as info:
        Policy().resolve(m)
    assert info.value.permission == permission
    assert info.value.limit is None
    assert f"Policy({cap_field}=" in str(info.value)
    # ... and raising that cap lets it through.
    ((attr, value),) = next(iter(permissions.values())).items()
    Policy(**{cap_field: value}).resolve(m)


def test_kv_default_quota_fits_the_default_caps(manifest: Callable[..., Manifest]) -> None:
    perms, _ = Policy().resolve(manifest(permissions={"kv": {}}))
    assert perms.kv == KvPermission()


def test_http_is_refused_until_the_host_lists_patterns(manifest: Callable[..., Manifest]) -> None:
    m = manifest(permissions={"http": {"hosts": ["api.example.com"]}})
    with pytest.raises(PolicyViolationError) as info:
        Policy().resolve(m)
    assert info.value.permission == "http"
    assert "'api.example.com'" in str(info.value)
    assert "permitted: none" in str(info.value)
    assert "--allow-http" in str(info.value)
    perms, _ = Policy(http_hosts=("*.example.com",)).resolve(m)
    assert perms.http == HttpPermission(hosts=("api.example.com",))


def test_http_without_hosts_needs_no_allow_list(manifest: Callable[..., Manifest]) -> None:
    Policy().resolve(manifest(permissions={"http": {}}))


def test_every_requested_host_must_be_covered(manifest: Callable[..., Manifest]) -> None:
    m = manifest(permissions={"http": {"hosts": ["a.example.com", "evil.test"]}})
    with pytest.raises(PolicyViolationError, match="'evil.test'"):
        Policy(http_hosts=("*.example.com",)).resolve(m)


@pytest.mark.parametrize(
    ("requested", "allowed", "covered"),
    [
        ("api.example.com", "api.example.com", True),
        ("API.Example.com", "api.example.com", True),
        ("api.example.com", "*.example.com", True),
        ("*.example.com", "*.example.com", True),
        ("*.example.com", "api.example.com", False),  # wider than allowed
        ("*", "*.example.com", False),
        ("example.com", "*.example.com", False),
        ("127.0.0.1:*", "127.0.0.1:*", True),
        ("127.0.0.1:8080", "127.0.0.1:*", True),
        ("127.0.0.1:*", "127.0.0.1:8080", False),
        ("127.0.0.1:8080", "127.0.0.1:8081", False),
        ("127.0.0.1", "127.0.0.1:*", True),  # default port is some port
        ("127.0.0.1:80", "127.0.0.1", False),  # explicit port is not "the default port"
        ("127.0.0.1", "127.0.0.1", True),
        ("[::1]:8080", "[::1]:*", True),
        ("[::1]", "[::1]:8080", False),
        ("api.example.com:443", "*", False),
        ("api.example.com", "*", True),
        ("api.example.com:443", "*:*", True),
    ],
)
def test_host_pattern_coverage(requested: str, allowed: str, covered: bool) -> None:
    assert _host_pattern_covered(requested, allowed) is covered


def test_collections_are_normalised() -> None:
    policy = Policy(
        allowed_services={"log"},  # type: ignore[arg-type]
        http_hosts=["a.example.com"],  # type: ignore[arg-type]
    )
    assert policy.allowed_services == frozenset({"log"})
    assert policy.http_hosts == ("a.example.com",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_services": frozenset({"filesystem"})},
        {"allowed_services": "log"},
        {"http_hosts": "127.0.0.1:*"},
        {"http_hosts": ("https://example.com/",)},
        {"http_hosts": ("",)},
        {"max_limits": Limits(fuel=0)},
        {"default_limits": Limits(instances=-1)},
        {"max_kv_quota_bytes": 0},
        {"max_http_timeout_ms": True},
        {"max_http_response_bytes": 1.5},
    ],
)
def test_invalid_policy_is_a_usage_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match=r"Policy\("):
        Policy(**kwargs)
