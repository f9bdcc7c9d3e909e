"""A small discrete-event simulator: processes that run operations made of
stages over shared resources -- CPU cores, mutexes, and a device with a queue.

Why not SimPy: SimPy's generator processes cost about 76 us of host time per
simulated operation of three stages on this machine (benchmarks/
test_timing_sim.py measures both); this loop, with a fast path that takes a
free resource without an event, costs a few microseconds, which is what keeps
``thinp compare``'s seven drivers inside their time budget.

A process is a sequence of operations; ``build(pid, i, now)`` returns the
stages of its ``i``-th operation when the process reaches it (so a page
cache consulted there sees the other processes' earlier reads), or None when
the process has no more.  Stages are tuples:

``(CPU, seconds)``
    run on one of ``cores`` (FIFO, not preempted: kernel paths are short);
    with ``busy_slowdown`` x, a stage that starts while every other core is
    taken runs (1 + x) times as long (the cores slow each other when all
    run: shared caches and memory, lock cache lines bouncing between them,
    the scheduler placing N woken processes unevenly).  ``(CPU, seconds,
    False)``: a stage that never slows so (a device worker's copy)
``(LOCK, lock_id)`` / ``(UNLOCK, lock_id)``
    take / release a FIFO mutex; what a lock protects is the caller's choice.
    ``(LOCK, lock_id, handoff_s)``: an acquisition that had to wait resumes
    ``handoff_s`` after the holder's release (a sleeping waiter's wake-up
    and whatever the lock's hand-over redoes), holding the lock meanwhile
``(DEV, latency_s, transfer_s)``
    a batch of device requests: one of ``queue_depth`` slots for
    ``latency_s`` (requests in flight overlap up to the queue depth), then
    the device's one transfer channel for ``transfer_s`` (bandwidth is shared)
``(DELAY, seconds)``
    time that holds nothing (a daemon round trip, udev settle)
``(WAKE, seconds)``
    a hand-off to another thread (a daemon's) that wakes a core from idle:
    when a core is free and no process waits for one, ``seconds`` of CPU
    on it (the idle core's wake-up, the interrupt that wakes it); when
    every core is taken, the woken thread runs on a core already awake and
    the stage costs nothing
``(DRAIN, lock_id)``
    wait until ``lock_id`` is neither held nor waited for (a journal
    commit that waits for every data write in flight: the device worker
    idle); at once if it is free already
``(BARRIER, barrier_id, n)``
    wait until ``n`` processes have reached ``barrier_id`` (the waits are
    reported under ``"barrier"``)

Result: per-process busy intervals per operation, and per resource class the
total time processes waited for it and held it.  Resource classes are the
``lock_class`` names the caller gives each lock id, plus ``"cpu"`` and
``"device"``.
"""
from __future__ import annotations

import heapq
from collections import deque

CPU, LOCK, UNLOCK, DEV, DELAY, BARRIER, WAKE, DRAIN = 0, 1, 2, 3, 4, 5, 6, 7

# event kinds
_RESUME, _CPU_DONE, _SLOT_DONE, _CHAN_DONE = 0, 1, 2, 3


class SimResult:
    """What :func:`run` measured.

    ``op_begin[pid]``/``op_end[pid]``: float lists, one entry per operation
    the process ran (seconds of simulated time); ``wait_s``/``busy_s``: dict
    resource class -> seconds processes spent waiting for / holding it;
    ``wait_by_pid``: list of dicts, the same per process; ``end_s``: when the
    last process finished."""

    def __init__(self, nproc: int):
        self.op_begin = [[] for _ in range(nproc)]
        self.op_end = [[] for _ in range(nproc)]
        self.wait_s: dict[str, float] = {}
        self.busy_s: dict[str, float] = {}
        self.wait_by_pid = [dict() for _ in range(nproc)]
        self.end_s = 0.0
        self.events = 0


def run(nproc: int, build, *, cores: int, queue_depth: int, lock_class, start_s=None,
        busy_slowdown: float = 0.0) -> SimResult:
    """Simulate ``nproc`` processes (see the module docstring).

    ``lock_class(lock_id) -> str`` names the class a lock's waits are
    reported under; ``start_s[pid]`` is when process ``pid`` starts
    (default 0)."""
    if cores < 1 or queue_depth < 1:
        raise ValueError(f"cores {cores} and queue_depth {queue_depth} must be >= 1")
    res = SimResult(nproc)
    heap: list = []
    seq = 0
    free_cores = cores
    cpu_q: deque = deque()
    free_slots = queue_depth
    slot_q: deque = deque()
    chan_busy = False
    chan_q: deque = deque()
    lock_held: dict = {}        # lock id -> holder pid
    lock_q: dict = {}           # lock id -> deque of (pid, t_enqueued)
    classes: dict = {}          # lock id -> class name (memo)
    barriers: dict = {}         # barrier id -> [(pid, t_arrived)]
    drains: dict = {}           # lock id -> [(pid, t_arrived)] waiting for it to be free
    stages = [None] * nproc     # current op's stages
    pos = [0] * nproc           # next stage index
    opi = [0] * nproc           # current op index
    dev_xfer = [0.0] * nproc    # transfer time of the batch in flight
    wait_s, busy_s, wbp = res.wait_s, res.busy_s, res.wait_by_pid
    op_begin, op_end = res.op_begin, res.op_end

    def waited(pid, cls, dt):
        if dt > 0:
            wait_s[cls] = wait_s.get(cls, 0.0) + dt
            d = wbp[pid]
            d[cls] = d.get(cls, 0.0) + dt

    def held(cls, dt):
        busy_s[cls] = busy_s.get(cls, 0.0) + dt

    for pid in range(nproc):
        t0 = float(start_s[pid]) if start_s is not None else 0.0
        heap.append((t0, seq, pid, _RESUME))
        seq += 1
        stages[pid] = None
    heapq.heapify(heap)
    events = 0
    now = 0.0
    while heap:
        now, _s, pid, kind = heapq.heappop(heap)
        events += 1
        if kind == _CPU_DONE:
            if cpu_q:
                q, tq, dt, slows = cpu_q.popleft()
                if slows and cores > 1:
                    dt *= 1.0 + busy_slowdown       # every core is taken
                waited(q, "cpu", now - tq)
                held("cpu", dt)
                heapq.heappush(heap, (now + dt, seq, q, _CPU_DONE))
                seq += 1
            else:
                free_cores += 1
        elif kind == _SLOT_DONE:
            if slot_q:
                q, tq, lat = slot_q.popleft()
                waited(q, "device", now - tq)
                heapq.heappush(heap, (now + lat, seq, q, _SLOT_DONE))
                seq += 1
            else:
                free_slots += 1
            x = dev_xfer[pid]
            if x > 0:
                if chan_busy:
                    chan_q.append((pid, now, x))
                    continue
                chan_busy = True
                held("device", x)
                heapq.heappush(heap, (now + x, seq, pid, _CHAN_DONE))
                seq += 1
                continue
        elif kind == _CHAN_DONE:
            if chan_q:
                q, tq, x = chan_q.popleft()
                waited(q, "device", now - tq)
                held("device", x)
                heapq.heappush(heap, (now + x, seq, q, _CHAN_DONE))
                seq += 1
            else:
                chan_busy = False
        # continue process pid from its next stage
        while True:
            st = stages[pid]
            if st is None or pos[pid] >= len(st):
                if st is not None:
                    op_end[pid].append(now)
                    opi[pid] += 1
                st = build(pid, opi[pid], now)
                if st is None:
                    stages[pid] = None
                    if now > res.end_s:
                        res.end_s = now
                    break
                stages[pid] = st
                pos[pid] = 0
                op_begin[pid].append(now)
                if not st:
                    continue
            s = st[pos[pid]]
            pos[pid] += 1
            k = s[0]
            if k == WAKE:
                # only a core that is idle has to be woken
                if not free_cores or cpu_q:
                    continue
                k = CPU
            if k == CPU:
                dt = s[1]
                if dt <= 0:
                    continue
                slows = busy_slowdown > 0.0 and (len(s) < 3 or s[2])
                if free_cores:
                    free_cores -= 1
                    if slows and not free_cores and cores > 1:
                        dt *= 1.0 + busy_slowdown
                    held("cpu", dt)
                    heapq.heappush(heap, (now + dt, seq, pid, _CPU_DONE))
                    seq += 1
                else:
                    cpu_q.append((pid, now, dt, slows))
                break
            if k == LOCK:
                lid = s[1]
                if lid not in lock_held:
                    lock_held[lid] = pid
                    continue
                q = lock_q.get(lid)
                if q is None:
                    q = lock_q[lid] = deque()
                q.append((pid, now, s[2] if len(s) > 2 else 0.0))
                break
            if k == UNLOCK:
                lid = s[1]
                q = lock_q.get(lid)
                cls = classes.get(lid)
                if cls is None:
                    cls = classes[lid] = lock_class(lid)
                if q:
                    nxt, tq, handoff = q.popleft()
                    lock_held[lid] = nxt
                    waited(nxt, cls, now + handoff - tq)
                    heapq.heappush(heap, (now + handoff, seq, nxt, _RESUME))
                    seq += 1
                else:
                    del lock_held[lid]
                    for q, tq in drains.pop(lid, ()):
                        waited(q, cls, now - tq)
                        heapq.heappush(heap, (now, seq, q, _RESUME))
                        seq += 1
                continue
            if k == DRAIN:
                if s[1] in lock_held:
                    drains.setdefault(s[1], []).append((pid, now))
                    break
                continue
            if k == DEV:
                lat, x = s[1], s[2]
                dev_xfer[pid] = x
                if lat <= 0 and x <= 0:
                    continue
                if free_slots:
                    free_slots -= 1
                    heapq.heappush(heap, (now + lat, seq, pid, _SLOT_DONE))
                    seq += 1
                else:
                    slot_q.append((pid, now, lat))
                break
            if k == BARRIER:
                arrived = barriers.setdefault(s[1], [])
                if len(arrived) + 1 < s[2]:
                    arrived.append((pid, now))
                    break
                for q, tq in arrived:
                    waited(q, "barrier", now - tq)
                    heapq.heappush(heap, (now, seq, q, _RESUME))
                    seq += 1
                del barriers[s[1]]
                continue
            if k == DELAY:
                if s[1] > 0:
                    heapq.heappush(heap, (now + s[1], seq, pid, _RESUME))
                    seq += 1
                    break
                continue
            raise ValueError(f"unknown stage {s!r}")
    # lock hold time: from the waits and the ops is not tracked per lock; the
    # busy figure of a lock class is left to the caller (it knows the stages)
    res.events = events
    return res
