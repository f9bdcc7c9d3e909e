"""``thinp compare`` benchmark: the default run (``webapp`` on all seven
drivers, nvme), target under 30 s on the 2-core CI machine with the numba
cache warm (issue [compare]).

Run: ``python -m pytest benchmarks/bench_compare.py --benchmark-only -s``.
``THINP_BENCH_SCENARIO`` picks another scenario.  Two rows: the default (one process per driver, as many as the
CPUs) and ``jobs=1`` (everything in one process), so the pool's gain is a
ratio measured in the same run.  Figures: see the README's benchmark table.
"""
from __future__ import annotations

import os

import pytest

import thinp
from thinp.experiments.compare import ALL_DRIVERS


def _runner():
    try:
        from thinp.experiments.compare import _default_runner

        return _default_runner()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no workload runner: {e}")


@pytest.mark.parametrize("jobs", [None, 1], ids=["jobs-default", "jobs-1"])
def test_bench_compare_default(benchmark, tmp_path, jobs):
    runner = _runner()
    scenario = os.environ.get("THINP_BENCH_SCENARIO", "webapp")
    # warm the numba kernels of every driver untimed
    thinp.compare(scenario, drivers="all", scale=0.1, progress=False, runner=runner)
    df, _fig = benchmark.pedantic(
        lambda: thinp.compare(scenario, drivers="all", out=tmp_path, progress=False, runner=runner, jobs=jobs),
        rounds=1, iterations=1)
    assert list(df["driver"]) == list(ALL_DRIVERS)
    secs = benchmark.stats.stats.max
    benchmark.extra_info.update({"scenario": scenario, "seconds": secs, "jobs": jobs,
                                 "run_s": dict(zip(df["driver"], df["run_s"].round(2))),
                                 "failed": [d for d, e in zip(df["driver"], df["error"]) if isinstance(e, str)]})
    print(f"\ncompare {scenario} on {len(df)} drivers, jobs={jobs}: {secs:.1f} s (target < 30 s); "
          f"per driver {dict(zip(df['driver'], df['run_s'].round(1)))}")
    print(df[["driver", "sim_start_s", "sim_time_s", "disk_used_bytes", "error"]].to_string(index=False))
