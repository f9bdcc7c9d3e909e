"""Applying a layer tar: the Debian minbase rootfs (6,668 entries) on every driver.

Every driver applies layers through one routine (:mod:`thinp.drivers.apply`),
with its whiteout format as a plug-in.  This times ``apply_diff`` of the
Debian rootfs as one flat layer (the tar of :func:`bench_drivers.debian_tar`,
files of the recorded sizes, accounting mode), one fresh driver per round,
and, in the same run, the ceiling nothing can beat: reading the same tar's
entries and contents (``Layer.walk(verify=False)``, as the apply reads them:
the DiffID was checked when the layer was loaded) without applying them, timed once more
beside each driver.  Each driver prints its seconds, entries/s and its time
as a multiple of that ceiling (the figure to compare across runs and loads).

Run: ``python -m pytest benchmarks/bench_drivers_apply.py --benchmark-only -s``.
"""
from __future__ import annotations

import os
import time

import pytest

from bench_drivers import DRIVERS, FIXTURES, OPTIONS, debian_tar  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")

CEILING: dict[str, float] = {}


def read_all(layer) -> int:
    """The ceiling's work: every entry and every content byte, nothing applied."""
    n = 0
    for _e, stream in layer.walk(verify=False):
        if stream is not None:
            while stream.read(1 << 20):
                pass
        n += 1
    return n


@pytest.fixture(scope="module")
def layer(debian_tar):  # noqa: F811
    from thinp.image import Layer

    lay = Layer.from_path(os.fspath(debian_tar))
    lay.nr_entries = sum(1 for _ in lay.walk())
    return lay


@pytest.mark.benchmark(group="drivers-apply-debian-rootfs")
def test_read_layer_ceiling(benchmark, layer):
    read_all(layer)
    n = benchmark.pedantic(read_all, args=(layer,), rounds=3, iterations=1)
    CEILING["s"] = benchmark.stats.stats.mean
    print(f"\nread the layer: {n} entries in {CEILING['s']:.3f} s ({n / CEILING['s']:,.0f} entries/s)")


@pytest.mark.benchmark(group="drivers-apply-debian-rootfs")
@pytest.mark.parametrize("name", DRIVERS)
def test_apply_debian_rootfs(benchmark, name, layer):
    from thinp.drivers import get_driver

    made = []

    def setup():
        d = get_driver(name, None, **OPTIONS.get(name, {}))
        d.create("debian", None)
        made.append(d)
        return (d,), {}

    def run(d):
        return d.apply_diff("debian", None, layer)

    d, = setup()[0]                   # warm the JIT and the caches once, untimed
    run(d)
    t0 = time.perf_counter()          # the ceiling again, next to this driver's rounds (load varies)
    read_all(layer)
    ceiling = time.perf_counter() - t0
    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    t = benchmark.stats.stats.mean
    n = layer.nr_entries
    ratio = t / ceiling
    benchmark.extra_info.update({"entries": n, "seconds": t, "x_ceiling": ratio})
    print(f"\n{name}: applied {n} entries in {t:.3f} s ({n / t:,.0f} entries/s), {ratio:.1f}x the read ceiling")
    for x in made:
        x.cleanup()
