"""Union-driver benchmarks (vfs, aufs, overlay, overlay2), accounting mode.

Three workloads per driver, as issue [drivers] lists them:

* load the 14-layer dive image (``images/test-docker-image.tar``):
  ``create`` + ``apply_diff`` per layer;
* start 100 containers on the Debian minbase image (``create`` +
  ``get`` each; the image is filled from the rootfs manifest untimed);
* replay the captured ``dpkg -i nginx`` strace in each of the 100 containers.

Run: ``python -m pytest benchmarks/bench_drivers_union.py --benchmark-only -s``.
Each benchmark prints ops/s and stores figures in ``extra_info``.  The JIT
of the fs kernels is warmed by building the first driver before timing.
Set ``THINP_BENCH_CONTAINERS`` to use fewer containers.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from thinp.drivers import get_driver
from thinp.validate.union import build_debian_lower

FIXTURES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures").resolve()
UNION = ("vfs", "aufs", "overlay", "overlay2")
N = int(os.environ.get("THINP_BENCH_CONTAINERS", "100"))

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")


@pytest.fixture(scope="module")
def dive():
    from thinp.image import load

    img = load(FIXTURES / "images" / "test-docker-image.tar")[0]
    for lay in img.layers:          # read every blob once so timing is not first-read I/O
        lay.scan()
    return img


@pytest.fixture(scope="module")
def trace():
    from thinp.traces import strace

    return strace.read(FIXTURES / "workloads" / "dpkg-install-nginx.strace.gz")


@pytest.fixture(scope="module", autouse=True)
def warm_jit():
    drv = get_driver("overlay2", size="1GiB")
    drv.create("w", None, read_write=True)
    drv.get("w").write("/f", 0, 1 << 20)
    drv.stats()


def _debian(name):
    drv = get_driver(name)
    build_debian_lower(drv, "debian")
    return drv


@pytest.mark.benchmark(group="union-load-dive-14-layers")
@pytest.mark.parametrize("name", UNION)
def test_load_dive_image(benchmark, name, dive):
    def setup():
        return (get_driver(name),), {}

    def run(drv):
        parent = None
        for i, lay in enumerate(dive.layers):
            drv.create(f"L{i}", parent)
            drv.apply_diff(f"L{i}", parent, lay)
            parent = f"L{i}"
        return drv

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    t = benchmark.stats.stats.mean
    benchmark.extra_info.update({"layers": len(dive.layers), "layers_per_s": len(dive.layers) / t})
    print(f"\n{name}: dive image {len(dive.layers)} layers in {t * 1e3:.1f} ms ({len(dive.layers) / t:,.0f} layers/s)")


@pytest.mark.benchmark(group="union-start-100-containers")
@pytest.mark.parametrize("name", UNION)
def test_start_containers(benchmark, name):
    def setup():
        return (_debian(name),), {}

    def run(drv):
        for i in range(N):
            drv.create(f"c{i}", "debian", read_write=True)
            drv.get(f"c{i}")
        return drv

    drv_box = []
    benchmark.pedantic(lambda d: drv_box.append(run(d)), setup=setup, rounds=1, iterations=1)
    t = benchmark.stats.stats.mean
    st = drv_box[-1].stats()
    benchmark.extra_info.update({"containers": N, "containers_per_s": N / t,
                                 "physical_bytes": st["physical_bytes"], "inodes": st["inodes"]})
    print(f"\n{name}: {N} containers in {t:.2f} s ({N / t:,.1f}/s), physical {st['physical_bytes'] >> 20:,} MiB, "
          f"inodes {st['inodes']:,}")


@pytest.mark.benchmark(group="union-nginx-replay-100-containers")
@pytest.mark.parametrize("name", UNION)
def test_nginx_replay(benchmark, name, trace):
    from thinp.traces import strace

    def setup():
        drv = _debian(name)
        views = []
        for i in range(N):
            drv.create(f"c{i}", "debian", read_write=True)
            views.append(drv.get(f"c{i}"))
        return (drv, views), {}

    out = []

    def run(drv, views):
        errors = 0
        for v in views:
            errors += sum(strace.replay(trace.ops, v)["errors"].values())
        out.append((drv, errors))

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    drv, errors = out[-1]
    t = benchmark.stats.stats.mean
    st = drv.stats()
    ops = N * len(trace.ops)
    benchmark.extra_info.update({"containers": N, "ops": ops, "ops_per_s": ops / t, "errors": errors,
                                 "copy_up_count": st["copy_up_count"], "copy_up_bytes": st["copy_up_bytes"],
                                 "lookup_probes": st["lookup_probes"]})
    assert errors == 0
    print(f"\n{name}: nginx replay x{N} in {t:.2f} s ({ops / t:,.0f} ops/s), copy-ups {st['copy_up_count']:,} "
          f"({st['copy_up_bytes'] >> 20:,} MiB), probes {st['lookup_probes']:,}")
