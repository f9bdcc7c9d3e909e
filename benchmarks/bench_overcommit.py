"""Overcommit and sweep benchmarks (issue [overcommit]'s performance targets).

Run: ``python benchmarks/bench_overcommit.py`` (prints the figures), or
``pytest benchmarks/bench_overcommit.py --benchmark-only -s``.

* the 2,000 containers x 200 MiB run of random 4 KiB writes on a 100 GiB pool
  with 64 KiB blocks, twice: with Docker's ``dm.min_free_space`` (10%) the
  pool refuses new containers at 90% full, so only the ~460 containers that
  start write (23.6 M block writes through :meth:`thinp.ThinPool.replay`);
  with ``min_free_space=0`` all 2,000 start: 102.4 M block writes, ~76 M of
  them failing with ENOSPC on the full pool (``no_space="error"``) -- the
  issue's "100 M block writes" figure;
* a 100-point sweep at 1 and 2 local workers (points/s, process start-up and
  numba's cache load included).  A point is one overcommit run on a 32 GiB
  pool (devicemapper ~0.3 s, overlay2 on a plain disk ~0.5 s).

Figures: the README's benchmark table (measured with the machine's load
average next to them; compare ratios from the same run).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

PAGE = 4096


def run_2000(min_free_space=10):
    from thinp.experiments.overcommit import overcommit

    overcommit(pool="1G", containers=2, write_per_container="8M", progress=False, plot=False)   # numba warm-up
    t0 = time.perf_counter()
    df, _ = overcommit(pool="100G", block_size="64k", containers=2000, write_per_container="200M",
                       progress=False, plot=False, min_free_space=min_free_space)
    dt = time.perf_counter() - t0
    writes = int(df["started"].sum()) * (200 << 20) // PAGE
    return {"seconds": dt, "containers_started": int(df["started"].sum()), "block_writes": writes,
            "block_writes_per_s": writes / dt, "final_data_pct": float(df["data_pct"].iloc[-1]),
            "enospc": int(df["enospc"].sum())}


SWEEP = {
    "grid": {"seed": list(range(25)), "driver": ["devicemapper", "overlay2"], "block_size": ["64k", "256k"]},
    "fixed": {"pool": "32G", "containers": 200, "write_per_container": "200M"},
}


def run_sweep_points(workers):
    from thinp.experiments.sweep import run_sweep

    out = tempfile.mkdtemp(prefix="thinp-bench-sweep-")
    try:
        st = run_sweep(SWEEP, os.path.join(out, "r.parquet"), workers=workers, progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert st["ran"] == 100 and st["failed"] == 0, st
    return {"workers": workers, "seconds": st["seconds"], "points_per_s": st["ran"] / st["seconds"]}


def test_overcommit_2000(benchmark):
    r = benchmark.pedantic(run_2000, rounds=1, iterations=1)
    benchmark.extra_info.update(r)
    print(r)


def test_overcommit_2000_all_write(benchmark):
    r = benchmark.pedantic(run_2000, kwargs={"min_free_space": 0}, rounds=1, iterations=1)
    benchmark.extra_info.update(r)
    print(r)


def test_sweep_100_points_1_worker(benchmark):
    r = benchmark.pedantic(run_sweep_points, args=(1,), rounds=1, iterations=1)
    benchmark.extra_info.update(r)
    print(r)


def test_sweep_100_points_2_workers(benchmark):
    r = benchmark.pedantic(run_sweep_points, args=(2,), rounds=1, iterations=1)
    benchmark.extra_info.update(r)
    print(r)


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    print("2000 x 200 MiB, dm.min_free_space 10%:", run_2000())
    print("2000 x 200 MiB, min_free_space 0 (all write):", run_2000(0))
    for w in (1, 2):
        print(f"sweep 100 points, {w} worker(s):", run_sweep_points(w))
