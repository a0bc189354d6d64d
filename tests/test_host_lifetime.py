"""A PluginHost dropped or closed gives everything back: its plugins' finalizers hold their
host services, and so the router, which must not keep the host (and its runtime's 2 TiB
address-space reservation) alive."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import plugbox


def test_a_closed_host_with_plugins_is_collected(tmp_path: Path,
                                                 wat_plugin: Callable[..., Path]) -> None:
    refs = []
    for i in range(3):
        host = plugbox.PluginHost(state_dir=tmp_path / f"s{i}",
                                  runtime_options={"pooled_instances": 4})
        host.extension_point("run", version="1.0.0", payload="bytes")
        host.add(wat_plugin('(i32.store8 (i32.const 16) (i32.const 0))\n'
                            '(i32.store (i32.const 20) (i32.const 0))\n'
                            '(i32.store (i32.const 24) (i32.const 0))\n(i32.const 16)',
                            implements={"run": {"versions": ">=1"}}))
        assert host.call("run", b"x").ok
        host.close()
        refs.append((weakref.ref(host), weakref.ref(host.runtime)))
        del host
    gc.collect()
    assert [(h() is None, r() is None) for h, r in refs] == [(True, True)] * 3
