"""The event loop against SimPy (the obviously-correct reference) and by hand."""
import random

import pytest

from thinp.timing import sim
from thinp.timing.sim import CPU, DELAY, DEV, LOCK, UNLOCK, WAKE


def _ours(programs, cores, qd, start=None):
    r = sim.run(len(programs), lambda pid, i, now: programs[pid][i] if i < len(programs[pid]) else None,
                cores=cores, queue_depth=qd, lock_class=lambda lid: f"lock{lid}", start_s=start)
    return r


def _simpy(programs, cores, qd, start):
    simpy = pytest.importorskip("simpy", reason="SimPy is the reference model")
    env = simpy.Environment()
    cpu, slots, chan = simpy.Resource(env, cores), simpy.Resource(env, qd), simpy.Resource(env, 1)
    locks = {}
    ends = {}

    def proc(pid, ops):
        yield env.timeout(start[pid])
        for op in ops:
            held = {}
            for s in op:
                if s[0] == LOCK:
                    lk = locks.setdefault(s[1], simpy.Resource(env, 1))
                    req = lk.request()
                    yield req
                    held[s[1]] = (lk, req)
                elif s[0] == UNLOCK:
                    lk, req = held.pop(s[1])
                    lk.release(req)
                elif s[0] == CPU:
                    with cpu.request() as r:
                        yield r
                        yield env.timeout(s[1])
                elif s[0] == DEV:
                    with slots.request() as r:
                        yield r
                        yield env.timeout(s[1])
                    if s[2] > 0:
                        with chan.request() as r:
                            yield r
                            yield env.timeout(s[2])
                elif s[0] == DELAY:
                    yield env.timeout(s[1])
        ends[pid] = env.now

    for pid, ops in enumerate(programs):
        env.process(proc(pid, ops))
    env.run()
    return max(ends.values())


def _random_programs(rng, nproc):
    # durations drawn from a continuum: two events never tie, so the result
    # does not depend on how either loop orders simultaneous events
    u = lambda a, b: rng.uniform(a, b) * 1e-6   # noqa: E731
    progs = []
    for _p in range(nproc):
        ops = []
        for _i in range(rng.randrange(1, 30)):
            op = []
            lk = rng.choice([None, 1, 2])
            if lk:
                op.append((LOCK, lk))
            op.append((CPU, u(1, 5)))
            if rng.random() < 0.5:
                op.append((DEV, u(20, 80), rng.choice([0.0, u(2, 30)])))
            if lk:
                op.append((UNLOCK, lk))
            if rng.random() < 0.2:
                op.append((DELAY, u(5, 15)))
            ops.append(op)
        progs.append(ops)
    return progs


@pytest.mark.parametrize("seed", range(12))
def test_end_time_matches_simpy(seed):
    rng = random.Random(seed)
    progs = _random_programs(rng, rng.randrange(1, 9))
    cores, qd = rng.choice([1, 2, 4]), rng.choice([1, 2, 32])
    # distinct start times: SimPy takes an extra scheduling step for a lock
    # granted at once, so two processes starting together could order their
    # next requests differently in the two loops
    start = [rng.uniform(0, 5) * 1e-6 for _ in progs]
    ours = _ours(progs, cores, qd, start)
    ref = _simpy(progs, cores, qd, start)
    assert ours.end_s == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_a_lock_serializes_and_reports_the_wait():
    op = [(LOCK, 7), (CPU, 10e-6), (UNLOCK, 7)]
    r = _ours([[op], [op], [op]], cores=4, qd=1)
    assert r.end_s == pytest.approx(30e-6)
    assert r.wait_s["lock7"] == pytest.approx(10e-6 + 20e-6)


def test_a_waited_acquisition_pays_its_handoff():
    """``(LOCK, id, h)``: a process that found the lock held resumes h after
    the release, holding the lock; one that took it free pays nothing."""
    op = [(LOCK, 7, 4e-6), (CPU, 10e-6), (UNLOCK, 7)]
    assert _ours([[op]], cores=4, qd=1).end_s == pytest.approx(10e-6)
    r = _ours([[op], [op], [op]], cores=4, qd=1)
    assert r.end_s == pytest.approx(30e-6 + 2 * 4e-6)
    assert r.wait_s["lock7"] == pytest.approx((10e-6 + 4e-6) + (20e-6 + 8e-6))
    # a waiter without a handoff of its own is handed the lock at once
    plain = [(LOCK, 7), (CPU, 10e-6), (UNLOCK, 7)]
    assert _ours([[op], [plain]], cores=4, qd=1).end_s == pytest.approx(20e-6)


def test_cores_bound_parallel_cpu():
    op = [(CPU, 1e-3)]
    assert _ours([[op]] * 4, cores=2, qd=1).end_s == pytest.approx(2e-3)
    assert _ours([[op]] * 4, cores=4, qd=1).end_s == pytest.approx(1e-3)


def test_a_wake_up_costs_cpu_only_on_an_idle_core():
    """``(WAKE, w)``: a process alone finds a core idle after each CPU
    stage and pays w on it; two processes on one core always find it taken
    (the other waits for it), so only the last wake-up, with the other
    done, is paid."""
    n, a, w = 10, 10e-6, 5e-6
    op = [(CPU, a), (WAKE, w)]
    assert _ours([[op] * n], cores=1, qd=1).end_s == pytest.approx(n * (a + w))
    assert _ours([[op] * n] * 2, cores=1, qd=1).end_s == pytest.approx(2 * n * a + w)
    # with a core per process, every wake-up finds one idle
    assert _ours([[op] * n] * 2, cores=2, qd=1).end_s == pytest.approx(n * (a + w))
    # the wake-up is CPU: the busy figure counts it when paid
    assert _ours([[op] * n], cores=1, qd=1).busy_s["cpu"] == pytest.approx(n * (a + w))


def test_queue_depth_overlaps_latency_but_bandwidth_is_shared():
    op = [(DEV, 100e-6, 0.0)]
    assert _ours([[op]] * 8, cores=1, qd=8).end_s == pytest.approx(100e-6)
    assert _ours([[op]] * 8, cores=1, qd=1).end_s == pytest.approx(800e-6)
    xfer = [(DEV, 0.0, 50e-6)]
    assert _ours([[xfer]] * 4, cores=1, qd=32).end_s == pytest.approx(200e-6)


def test_bad_machine_is_refused():
    with pytest.raises(ValueError, match="cores 0"):
        sim.run(1, lambda *a: None, cores=0, queue_depth=1, lock_class=str)


def test_a_drain_waits_until_the_lock_is_free_and_held_by_none_waiting():
    """DRAIN: a process waits until the lock is released with nobody queued
    for it (each holder in turn, then free), and passes a free lock at once."""
    hold = [[(LOCK, 7), (CPU, 1.0), (UNLOCK, 7)]]
    hold2 = [[(DELAY, 0.5), (LOCK, 7), (CPU, 1.0), (UNLOCK, 7)]]
    drain = [[(DELAY, 0.1), (sim.DRAIN, 7), (CPU, 0.25)]]
    free = [[(sim.DRAIN, 8), (CPU, 0.25)]]
    r = _ours([hold, hold2, drain, free], cores=4, qd=1)
    assert r.op_end[2][0] == pytest.approx(2.25)        # after both holders, the second queued meanwhile
    assert r.op_end[3][0] == pytest.approx(0.25)
    assert r.wait_s["lock7"] == pytest.approx(0.5 + 1.9)  # hold2 queued 0.5 s; the drain 1.9 s
