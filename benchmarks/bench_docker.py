"""What a persistent ``thinp docker`` root costs each command: re-creating the
driver from ``state.json`` (images re-added, each container's recorded steps
replayed), against the ceiling of doing the same work directly on a fresh
:class:`~thinp.Engine` (load the archive, create the container, apply the
steps) in the same run.

Root: ``test-docker-image.tar`` (14 layers, 415 entries in the bottom one)
plus one container that wrote 200 files of 8 KiB.

Run: ``python -m pytest benchmarks/bench_docker.py --benchmark-only -s``
(``-k report`` prints both medians and their ratio, the CPU model and the
load average).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from thinp import Engine
from thinp.docker.daemon import Daemon

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE = (REPO_ROOT / ".." / "shared" / "fixtures" / "images" / "test-docker-image.tar").resolve()
DRIVERS = ("overlay2", "devicemapper")
STEPS = [["mkdir", "/data"]] + [["write", f"/data/f{i}", 0, 8192] for i in range(200)]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    if not IMAGE.exists():
        pytest.skip(f"{IMAGE} is absent")
    steps = tmp_path_factory.mktemp("steps") / "steps.json"
    steps.write_text(json.dumps(STEPS))
    out = {}
    for drv in DRIVERS:
        root = tmp_path_factory.mktemp(drv)
        with Daemon(root, drv) as d:
            d.load(str(IMAGE))
            d.run("dive-test", name="c1", steps=str(steps))
        out[drv] = root
    return out


def _replay(root):
    Daemon(root).close()


def _direct(drv):
    with Engine(drv) as eng:
        eng.load(IMAGE)
        c = eng.create("dive-test")
        eng.start(c)
        eng.exec(c, [tuple(s) for s in STEPS])


@pytest.mark.benchmark(group="docker-root")
@pytest.mark.parametrize("drv", DRIVERS)
def test_replay(benchmark, roots, drv):
    _replay(roots[drv])          # warm numba and the page cache
    benchmark.pedantic(_replay, args=(roots[drv],), rounds=5, iterations=1)


@pytest.mark.benchmark(group="docker-root")
@pytest.mark.parametrize("drv", DRIVERS)
def test_direct_ceiling(benchmark, drv, roots):
    _direct(drv)
    benchmark.pedantic(_direct, args=(drv,), rounds=5, iterations=1)


def test_report(roots):
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"\nCPU {cpu}, load average {os.getloadavg()[0]:.2f}")
    for drv in DRIVERS:
        times = {}
        for name, fn, arg in (("replay", _replay, roots[drv]), ("direct", _direct, drv)):
            fn(arg)
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                fn(arg)
                runs.append(time.perf_counter() - t)
            times[name] = statistics.median(runs)
        print(f"{drv}: open a root (replay) {times['replay'] * 1e3:.0f} ms, the same work on a fresh engine "
              f"{times['direct'] * 1e3:.0f} ms, ratio {times['replay'] / times['direct']:.2f}")
