"""All seven drivers, one workload, through :class:`thinp.Engine` (accounting mode).

The issue's target: "all seven drivers run the nginx replay on 100
containers in under 60 s together in accounting mode".  Per driver:

* ``Engine(driver=name)`` imports the Debian bookworm minbase rootfs (the
  6,668-entry manifest of ``rootfs/debian-bookworm-minbase.csv.gz`` as one
  flat layer tar, files of the recorded sizes) -- untimed;
* 100 containers are created on it (``<id>-init`` plus the read-write
  layer, as Docker does) and mounted -- untimed;
* the captured ``dpkg -i nginx`` strace (``workloads/dpkg-install-nginx.strace.gz``,
  read with :mod:`thinp.traces.strace`) is replayed in each container --
  timed.

Run: ``python -m pytest benchmarks/bench_drivers.py --benchmark-only -s``.
Each driver prints its seconds; the last test prints the per-driver table
and the total against the 60 s target.  ``THINP_BENCH_CONTAINERS`` sets
fewer containers (the target is for 100).
"""
from __future__ import annotations

import io
import os
import stat as _stat
from pathlib import Path

import pytest

from thinp.drivers import known_drivers
from thinp.drivers.reference import ZeroReader

FIXTURES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures").resolve()
N = int(os.environ.get("THINP_BENCH_CONTAINERS", "100"))
TARGET_S = 60.0
DRIVERS = tuple(sorted(known_drivers()))

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")

RESULTS: dict[str, float] = {}

#: vfs copies the whole rootfs into every layer (a container is two: init and
#: read-write), so 100 containers need more than the union default 20 GiB
OPTIONS = {"vfs": {"size": "64GiB"}}


@pytest.fixture(scope="module")
def debian_tar(tmp_path_factory):
    """The Debian minbase rootfs manifest as one flat layer tar (written once)."""
    from thinp.validate.fixtures import load_manifest
    from thinp.image import Entry
    from thinp.image.layer import write_tar

    items = []
    first: dict[str, str] = {}
    for r in load_manifest():
        p = r["path"][2:] if r["path"].startswith("./") else r["path"]
        if not p or p == ".":
            continue
        mode, uid, gid, kind = _stat.S_IMODE(r["mode"]), r["uid"], r["gid"], r["type"]
        if kind == "d":
            items.append((Entry(p, "dir", mode, uid, gid), None))
        elif kind == "f":
            g = r["inode_group"]
            if g and g in first:
                items.append((Entry(p, "hardlink", mode, uid, gid, linkname=first[g]), None))
                continue
            if g:
                first[g] = p
            items.append((Entry(p, "file", mode, uid, gid, size=r["size"]), io.BufferedReader(ZeroReader(r["size"]))))
        elif kind == "l":
            items.append((Entry(p, "symlink", 0o777, uid, gid, linkname=r["target"]), None))
        elif kind == "c":
            maj, _, mnr = (r["target"] or "0:0").partition(":")
            items.append((Entry(p, "char", mode, uid, gid, devmajor=int(maj), devminor=int(mnr or 0)), None))
        elif kind == "p":
            items.append((Entry(p, "fifo", mode, uid, gid), None))
    path = tmp_path_factory.mktemp("debian") / "debian-minbase.tar"
    with open(path, "wb") as f:
        write_tar(items, f)
    return path


@pytest.fixture(scope="module")
def trace():
    from thinp.traces import strace

    return strace.read(FIXTURES / "workloads" / "dpkg-install-nginx.strace.gz")


@pytest.fixture(scope="module", autouse=True)
def warm_jit():
    """Compile the fs and pool kernels before anything is timed."""
    from thinp import Engine

    for name in ("overlay2", "devicemapper"):
        with Engine(driver=name) as e:
            e.driver.create("w", None, read_write=True)
            v = e.driver.get("w")
            v.write("/f", 0, 1 << 20)
            v.read("/f")
            e.driver.put("w")
            e.metrics()


@pytest.mark.benchmark(group="drivers-nginx-replay-100-containers")
@pytest.mark.parametrize("name", DRIVERS)
def test_nginx_replay(benchmark, name, debian_tar, trace):
    from thinp import Engine
    from thinp.traces import strace

    engines = []

    def setup():
        e = Engine(driver=name, **OPTIONS.get(name, {}))
        engines.append(e)
        with open(debian_tar, "rb") as f:
            e.import_(f, "debian:bookworm")
        views = [e.mount(e.create("debian:bookworm")) for _ in range(N)]
        return (views,), {}

    errors = []

    def run(views):
        errors.append(sum(sum(strace.replay(trace.ops, v)["errors"].values()) for v in views))

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    t = benchmark.stats.stats.mean
    RESULTS[name] = t
    m = engines[-1].metrics()
    ops = N * len(trace.ops)
    benchmark.extra_info.update({"containers": N, "ops": ops, "seconds": t, "errors": errors[-1],
                                 "physical_bytes": m.get("physical_bytes"),
                                 "page_cache_bytes": m.get("page_cache_bytes")})
    for e in engines:
        e.close()
    print(f"\n{name}: nginx replay x{N} in {t:.2f} s ({ops / t:,.0f} ops/s), errors {errors[-1]}, "
          f"physical {m.get('physical_bytes', 0) >> 20:,} MiB, page cache {m.get('page_cache_bytes', 0) >> 20:,} MiB")
    assert errors[-1] == 0


@pytest.fixture(scope="module", autouse=True)
def total_table():
    """After the module: the per-driver table and the total against the target."""
    yield
    if not RESULTS:
        return
    total = sum(RESULTS.values())
    print(f"\n\nnginx replay x{N}, accounting mode, through thinp.Engine:")
    for name in DRIVERS:
        if name in RESULTS:
            print(f"  {name:<13} {RESULTS[name]:7.2f} s")
    missing = [n for n in DRIVERS if n not in RESULTS]
    print(f"  {'total':<13} {total:7.2f} s  (target {TARGET_S:.0f} s for 100 containers, all seven drivers)"
          + (f"; not run: {', '.join(missing)}" if missing else ""))
