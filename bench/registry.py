#!/usr/bin/env python3
"""The registry server under load (issue 12 §4): search and metadata requests per second and
package download throughput over real HTTP on 127.0.0.1, with several client threads, against
a registry holding 1,000 plugins and 10,000 versions.

    .venv/bin/python bench/registry.py [--plugins 1000] [--versions-per-plugin 10]
        [--threads 4] [--seconds 5] [--json-out FILE]

The registry is created with ``plugbox registry init`` and served by ``plugbox registry serve``
in a subprocess (SQLite). Publishing 10,000 versions through the API would mostly measure TUF
signing (every publish re-signs the index), so the catalogue is seeded straight into the
database: rows as the publish path writes them, every version's file a hard link to one real
package (the Rust echo sample, built from source, packed and signed). A few real publishes
through HTTP are timed separately. Descriptions, tags, extension points, permissions and host
ranges are random per plugin, so filters select real subsets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "runtime"))

import httpx  # noqa: E402

from plugbox.trust._signing import SecretKey  # noqa: E402

WORDS = ("text stats words count format notes store cache image audio parse json yaml csv "
         "markdown lint spell translate search index metrics log trace auth token crypto "
         "hash compress archive mail chat calendar weather finance math graph").split()
POINTS = [f"point.{w}" for w in WORDS[:12]]
PERMS = ["log", "config", "clock", "random", "kv", "events"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def seed(directory: Path, package: bytes, plugins: int, per_plugin: int, owner: str) -> None:
    """Insert ``plugins`` x ``per_plugin`` versions as the publish path would."""
    from plugbox.registry import Registry

    rng = random.Random(12)
    sha = hashlib.sha256(package).hexdigest()
    master = directory / "packages" / ".bench-master.plugbox"
    master.write_bytes(package)
    now = time.time()
    with Registry(directory) as registry:
        with registry.db.transaction() as tx:
            for i in range(plugins):
                name = f"p{i:04d}-{rng.choice(WORDS)}"
                description = " ".join(rng.sample(WORDS, 6))
                tags = " ".join(rng.sample(WORDS, 3))
                points = " ".join(sorted(rng.sample(POINTS, rng.randint(0, 2))))
                perms = " ".join(sorted(rng.sample(PERMS, rng.randint(0, 3))))
                tx.execute("INSERT INTO reg_plugins (name, owner, description, tags, "
                           "created_at, updated_at, downloads, rating_sum, rating_count) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (name, owner, description, tags, now, now, rng.randint(0, 10_000),
                            rng.randint(0, 500), rng.randint(0, 100)))
                (directory / "packages" / name).mkdir()
                for v in range(per_plugin):
                    version = f"{v // 5}.{v % 5}.0"
                    host = rng.choice([">=0.1,<1.0", ">=0.1", ">=1.0", None])
                    facts = {"name": name, "version": version, "description": description,
                             "abi": "1.0", "host": host, "hooks": ["echo"],
                             "permissions": perms.split(), "extension_points": points.split(),
                             "declares_points": [], "requires": {}, "optional": {},
                             "conflicts": {}, "module_sha256": "0" * 64}
                    tx.execute(
                        "INSERT INTO reg_versions (name, version, sha256, size, facts_json, "
                        "manifest_json, signers_json, abi, host, permissions, points, "
                        "publisher, published_at, yanked, yank_reason, yanked_at, downloads) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, 0)",
                        (name, version, sha, len(package), json.dumps(facts),
                         json.dumps(facts), "[]", "1.0", host, perms, points, owner,
                         now + i * 0.001 + v * 0.000001))
                    os.link(master, directory / "packages" / name / f"{name}-{version}.plugbox")


def load(url: str, threads: int, seconds: float,
         make: Callable[[random.Random], tuple[str, dict[str, Any]]]) -> dict[str, float]:
    """Requests from ``threads`` clients for ``seconds``: req/s, bytes/s, latency median/p99."""
    stop = time.monotonic() + seconds
    lat: list[float] = []
    nbytes = [0]
    errors = [0]
    lock = threading.Lock()

    def worker(seed_: int) -> None:
        rng = random.Random(seed_)
        mine: list[float] = []
        got = 0
        bad = 0
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                path, params = make(rng)
                t0 = time.perf_counter()
                r = client.get(path, params=params)
                mine.append(time.perf_counter() - t0)
                got += len(r.content)
                bad += r.status_code != 200
        with lock:
            lat.extend(mine)
            nbytes[0] += got
            errors[0] += bad

    started = time.monotonic()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    lat.sort()
    return {"requests": len(lat), "req_per_s": len(lat) / elapsed,
            "mib_per_s": nbytes[0] / elapsed / (1 << 20),
            "median_ms": statistics.median(lat) * 1000 if lat else 0.0,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000 if lat else 0.0,
            "errors": errors[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plugins", type=int, default=1000)
    ap.add_argument("--versions-per-plugin", type=int, default=10)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    from tests.test_registry_server import Reg, Server, init_registry_cli, make_package
    from plugbox.authoring._build import build_rust_plugins

    tmp = Path(tempfile.mkdtemp(prefix="plugbox-bench-registry-"))
    try:
        echo = build_rust_plugins(REPO / "sample-plugins" / "rust", tmp / "build",
                                  names=["echo"])["echo"]
        key = SecretKey.generate()
        directory = tmp / "reg"
        admin = init_registry_cli(directory, limits={"write_burst": 100_000,
                                                     "writes_per_minute": 6_000_000.0})
        package = make_package(echo, key, name="seeded", version="0.0.1")
        big = make_package(echo, key, name="bigpkg", version="1.0.0",
                           readme=os.urandom(1000 << 10))
        server = Server(directory)
        try:
            reg = Reg(directory, server, admin)
            token = reg.account("bench", key=key)
            # A few real publishes through HTTP (verify + store + TUF sign), timed.
            times = []
            for i in range(10):
                body = make_package(echo, key, name="real-publish", version=f"0.{i}.0")
                t0 = time.perf_counter()
                r = reg.publish(token, body)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 201, r.text
            assert reg.publish(token, big).status_code == 201
        finally:
            server.stop()
        log(f"seeding {args.plugins} plugins x {args.versions_per_plugin} versions ...")
        t0 = time.perf_counter()
        seed(directory, package, args.plugins, args.versions_per_plugin, "bench")
        log(f"  seeded in {time.perf_counter() - t0:.1f} s")
        server = Server(directory)
        try:
            names = [i["name"] for page in range(1, 11) for i in httpx.get(
                f"{server.url}/api/v1/plugins", params={"sort": "name", "per_page": 100,
                                                        "page": page}).json()["items"]]
            assert len(names) >= args.plugins, len(names)
            seeded = [n for n in names if n.startswith("p")]
            vmax = args.versions_per_plugin - 1
            cases: dict[str, Callable[[random.Random], tuple[str, dict[str, Any]]]] = {
                "search: all, sort downloads, page 1":
                    lambda r: ("/api/v1/plugins", {"sort": "downloads"}),
                "search: one word (q), sort rating":
                    lambda r: ("/api/v1/plugins", {"q": r.choice(WORDS), "sort": "rating"}),
                "search: q + point + host + abi filters":
                    lambda r: ("/api/v1/plugins", {"q": r.choice(WORDS),
                                                   "point": r.choice(POINTS),
                                                   "host": "0.5.0", "abi": "1.1"}),
                "metadata: a plugin":
                    lambda r: (f"/api/v1/plugins/{r.choice(seeded)}", {}),
                "metadata: one version":
                    lambda r: (f"/api/v1/plugins/{r.choice(seeded)}/versions/"
                               f"{(v := r.randint(0, vmax)) // 5}.{v % 5}.0", {}),
                "metadata: all versions of a plugin":
                    lambda r: (f"/api/v1/plugins/{r.choice(seeded)}/versions", {}),
                f"download: {len(package) // 1024} KiB package":
                    lambda r: (f"/api/v1/plugins/{r.choice(seeded)}/versions/0.0.0/download",
                               {}),
                f"download: {len(big) // 1024} KiB package":
                    lambda r: ("/api/v1/plugins/bigpkg/versions/1.0.0/download", {}),
            }
            rows = []
            for label, make in cases.items():
                res = load(server.url, args.threads, args.seconds, make)
                rows.append({"case": label, **res})
                log(f"  {label}: {res['req_per_s']:.0f} req/s, {res['mib_per_s']:.1f} MiB/s, "
                    f"median {res['median_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
                    f"errors {res['errors']}")
        finally:
            server.stop()
        out = {"plugins": args.plugins, "versions": args.plugins * args.versions_per_plugin,
               "threads": args.threads, "seconds": args.seconds,
               "publish_http_median_ms": statistics.median(times) * 1000, "rows": rows}
        print("| case | req/s | MiB/s | median | p99 |")
        print("|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['case']} | {row['req_per_s']:.0f} | {row['mib_per_s']:.1f} | "
                  f"{row['median_ms']:.1f} ms | {row['p99_ms']:.1f} ms |")
        print(f"\npublish through HTTP (verify, store, TUF sign), median of 10: "
              f"{out['publish_http_median_ms']:.0f} ms")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
