"""Cases on real Rust guests: the ``hostile`` sample's hooks (on the default and on a
small-stack thread) and an impostor of the ``counter`` sample."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from plugbox import PlugboxError, StackOverflow
from plugbox.trust._signing import SecretKey, sign_bytes
from plugbox.trust._trust import PRIMARY_SIGNATURE
from tests.conftest import HOSTILE_EXPECTATIONS

from ._case import Case, Env, add
from .calls import on_thread
from .state import _SECRET_KV, signed, trusting

S = {"limits": "1 host callbacks total, re-entrancy defined", "identity": "8 identity is the host's"}


def _hostile(hook: str, options: dict[str, int], *, stack: int = 0) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        plugin = env.runtime().load(env.rust["hostile"])
        if stack:
            on_thread(stack, lambda: plugin.call(hook, b"x", **options))
        else:
            plugin.call(hook, b"x", **options)

    return run


for _hook, _options, _error in HOSTILE_EXPECTATIONS:
    _id = f"rust-hostile-{_hook}" + ("-deadline" if "deadline_ms" in _options else "")
    add(Case(_id, S["limits"], _hostile(_hook, _options), (_error,), rust=True, timeout=20))
for _kib in (256, 384):
    add(Case(f"rust-hostile-recurse-on-{_kib}k-thread", S["limits"],
             _hostile("recurse", {}, stack=_kib << 10), (StackOverflow,), rust=True))


def _counter_impostor(env: Env) -> None:
    """The real Rust counter, signed by alice, is loaded; a WAT module calling itself
    "counter", signed by another trusted key, must not get its name (and its kv data)."""
    alice, mallory = SecretKey.generate(), SecretKey.generate()
    real_dir = env.tmp / "counter"
    shutil.copytree(env.rust["counter"], real_dir)
    (real_dir / PRIMARY_SIGNATURE).write_text(sign_bytes(
        (real_dir / "plugbox.json").read_bytes(), alice, trusted_comment="corpus").to_text())
    rt = env.new_runtime(trust=trusting(env, alice, mallory))
    real = rt.load(real_dir)
    real.call_json("counter.incr", {"name": "a", "by": 5})
    fake = rt.load(signed(env, _SECRET_KV, mallory, name="counter", permissions={"kv": {}}))
    fake.call("run", b"")


add(Case("rust-counter-impostor-signed-by-another-key", S["identity"], _counter_impostor,
         (PlugboxError,), rust=True))
