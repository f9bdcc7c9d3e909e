"""The timing model's cost: host seconds per simulated operation.

Run: ``python -m pytest benchmarks/bench_timing.py --benchmark-only -s``.

* ``sim-loop``: thinp's event loop on 16 processes x 4,000 operations of a
  lock, a CPU burst and a device request -- and SimPy on the same programs in
  the same run (the ceiling it replaces; the two give the same simulated end
  time, ``tests/timing/test_sim.py``);
* ``simulate``: :func:`thinp.timing.simulate` of a recorded webapp run (10
  containers, scale 0.2) on overlay2 and devicemapper -- the model's
  stages, page cache and locks included.

Each prints microseconds per simulated operation.
"""
from __future__ import annotations

import pytest

from thinp.timing import sim, simulate
from thinp.timing.sim import CPU, DEV, LOCK, UNLOCK
from thinp.workloads import run

N_PROC, N_OPS = 16, 4000
OP = [(LOCK, 1), (CPU, 2e-6), (UNLOCK, 1), (DEV, 20e-6, 0.0)]


def _ours():
    return sim.run(N_PROC, lambda pid, i, now: OP if i < N_OPS else None, cores=2, queue_depth=32,
                   lock_class=lambda lid: "lock").end_s


def _simpy():
    simpy = pytest.importorskip("simpy")
    env = simpy.Environment()
    cpu, lock, dev = simpy.Resource(env, 2), simpy.Resource(env, 1), simpy.Resource(env, 32)

    def proc():
        for _ in range(N_OPS):
            with lock.request() as r:
                yield r
                with cpu.request() as c:
                    yield c
                    yield env.timeout(2e-6)
            with dev.request() as d:
                yield d
                yield env.timeout(20e-6)
    for _ in range(N_PROC):
        env.process(proc())
    env.run()
    return env.now


@pytest.mark.benchmark(group="timing-sim-loop")
@pytest.mark.parametrize("impl", ["thinp", "simpy"])
def test_bench_sim_loop(benchmark, impl):
    fn = _ours if impl == "thinp" else _simpy
    end = benchmark.pedantic(fn, rounds=3, iterations=1)
    assert end == pytest.approx(0.12802, rel=1e-6)
    per_op = benchmark.stats.stats.min / (N_PROC * N_OPS)
    print(f"\n{impl}: {per_op * 1e6:.2f} us per simulated op ({N_PROC * N_OPS} ops)")


@pytest.mark.benchmark(group="timing-simulate")
@pytest.mark.parametrize("driver", ["overlay2", "devicemapper"])
def test_bench_simulate(benchmark, driver):
    log = run("webapp", driver, scale=0.2).oplog
    simulate(log)                       # warm
    rep = benchmark.pedantic(lambda: simulate(log), rounds=3, iterations=1)
    per_op = benchmark.stats.stats.min / len(log)
    print(f"\n{driver}: {len(log)} ops, {rep.events} events, {per_op * 1e6:.2f} us per simulated op")
