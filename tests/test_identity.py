"""Plugin identity is the host's: under TrustPolicy(mode="require") a name belongs to the keys
that first signed it in a state directory, and another publisher's plugin of that name is
refused, in the same Runtime and after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

import plugbox
from plugbox.trust._signing import SecretKey
from tests.conftest import COUNTER_BODY, ECHO_BODY, wat_module, write_plugin
from tests.test_signatures import make_key, sign_plugin


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, SecretKey]:
    return {name: make_key(tmp_path / "trusted", name)[0] for name in ("alice", "bob")}


def signed(tmp_path: Path, where: str, body: str, *by: SecretKey, name: str = "counter") -> Path:
    directory = write_plugin(tmp_path / where, wat_module(body), name=name)
    for i, key in enumerate(by):
        sign_plugin(directory, key, extra=i > 0)
    return directory


def runtime(tmp_path: Path, cache_dir: Path, mode: str = "require") -> plugbox.Runtime:
    trust = (plugbox.TrustPolicy(trusted_keys=tmp_path / "trusted", mode=mode)  # type: ignore[arg-type]
             if mode != "off" else None)
    return plugbox.Runtime(state_dir=tmp_path / "state", cache_dir=cache_dir, trust=trust)


def test_a_second_publisher_cannot_take_a_loaded_name_or_its_data(
    tmp_path: Path, cache_dir: Path, keys: dict[str, SecretKey]
) -> None:
    real = signed(tmp_path, "real", COUNTER_BODY, keys["alice"])
    impostor = signed(tmp_path, "impostor", ECHO_BODY, keys["bob"])
    with runtime(tmp_path, cache_dir) as rt:
        counter = rt.load(real)
        rt.kv.set("counter", "total", b"41", quota_bytes=1 << 20, quota_keys=10)
        with pytest.raises(plugbox.IdentityConflictError) as info:
            rt.load(impostor)
        alice, bob = keys["alice"].key_id_hex, keys["bob"].key_id_hex
        assert info.value.plugin == "counter"
        assert info.value.key_ids == (bob,) and info.value.bound_key_ids == (alice,)
        assert alice in str(info.value) and bob in str(info.value)
        assert isinstance(info.value, plugbox.VerificationError)
        assert [p.name for p in rt.plugins] == ["counter"] and counter.call("run")
        assert rt.kv.get("counter", "total") == b"41"


def test_the_binding_holds_across_restarts_and_admits_the_same_publisher(
    tmp_path: Path, cache_dir: Path, keys: dict[str, SecretKey]
) -> None:
    with runtime(tmp_path, cache_dir) as rt:
        rt.load(signed(tmp_path, "v1", COUNTER_BODY, keys["alice"])).close()
    with runtime(tmp_path, cache_dir) as rt:  # nothing loaded: the state database decides
        with pytest.raises(plugbox.IdentityConflictError):
            rt.load(signed(tmp_path, "impostor", ECHO_BODY, keys["bob"]))
        # A new release by the same key, and one co-signed by a second key, both load.
        assert rt.load(signed(tmp_path, "v2", ECHO_BODY, keys["alice"])).call("run", b"x") == b"x"
        rt.load(signed(tmp_path, "v3", ECHO_BODY, keys["bob"], keys["alice"]))
        # Other names are free to be claimed by anyone trusted.
        rt.load(signed(tmp_path, "other", ECHO_BODY, keys["bob"], name="other"))


def test_under_development_trust_the_identity_is_the_name(
    tmp_path: Path, cache_dir: Path, keys: dict[str, SecretKey]
) -> None:
    with runtime(tmp_path, cache_dir) as rt:
        rt.load(signed(tmp_path, "real", COUNTER_BODY, keys["alice"]))
    for mode in ("off", "warn"):  # signatures not required: nothing is bound or refused
        with runtime(tmp_path, cache_dir, mode) as rt:
            rt.load(signed(tmp_path, f"dev-{mode}", ECHO_BODY, keys["bob"]))
            rt.load(signed(tmp_path, f"dev2-{mode}", ECHO_BODY, name="unsigned"))
    with runtime(tmp_path, cache_dir) as rt:  # ... and the binding is still alice's
        with pytest.raises(plugbox.IdentityConflictError):
            rt.load(signed(tmp_path, "later", ECHO_BODY, keys["bob"]))
