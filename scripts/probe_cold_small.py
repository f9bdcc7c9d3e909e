#!/usr/bin/env python3
"""Where a cold small-file read's time goes, per driver: the read-small case
of ``thinp validate timing`` (one process reading the image's 400 files of
4 KiB after ``drop_caches``) as validate runs it, alone and with every core
kept busy by SCHED_IDLE spinners (:func:`calibrate.busy_cores`: no wake-up
leaves idle), beside ``thinp calibrate``'s cold small reads of the same
files and of files calibrate writes itself.  Prints per run the wall time,
the process's CPU, its voluntary waits and the kernel threads' CPU.

    python scripts/probe_cold_small.py --drivers overlay2,btrfs,zfs --reps 5

Everything it mounts, attaches or starts is released by its own path,
device or pid.  (Issue #13.)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from thinp.validate import calibrate as cal  # noqa: E402
from thinp.validate import timing as vt  # noqa: E402


def _row(what: str, runs: list) -> None:
    ts = [r[0] for r in runs]
    per = statistics.median(ts) / vt.SMALL_FILES * 1e6
    print(f"{what:34s} median {statistics.median(ts) * 1e3:6.1f} ms ({per:5.1f} us/file)  "
          f"least {min(ts) * 1e3:6.1f}  cpu {statistics.median(r[1] for r in runs) * 1e3:5.1f} ms  "
          f"waits {statistics.median(r[2] for r in runs):5.0f}  "
          f"kthread {statistics.median(r[3] for r in runs) * 1e3:5.1f} ms  "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    print("   runs ms", " ".join(f"{t * 1e3:.1f}" for t in ts), "| cpu", " ".join(f"{r[1] * 1e3:.1f}" for r in runs),
          "| kthread", " ".join(f"{r[3] * 1e3:.1f}" for r in runs), flush=True)


def validate_runs(r, d: str, n: int, reps: int, busy: bool) -> list:
    out = []
    for _ in range(reps):
        with (cal.busy_cores() if busy else contextlib.nullcontext()):
            t = r.measure("read-small", d, n)
        out.append((t, r.last_detail["cpu_s"], r.last_detail["waits"], r.last_kthread_s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drivers", default="overlay2,btrfs,zfs")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=1)
    a = ap.parse_args()
    drivers = a.drivers.split(",")
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "6G")
        r = vt.RealSetup(stack, base, drivers)
        for d in drivers:
            if d in r.skipped:
                print(d, "skipped:", r.skipped[d])
                continue
            r.warm_tool(d)
            _row(f"{d} read-small N={a.n}", validate_runs(r, d, a.n, a.reps, False))
            _row(f"{d} read-small N={a.n} cores busy", validate_runs(r, d, a.n, a.reps, True))




def paired(r, d: str, rounds: int) -> None:
    """Rounds of: validate's read-small (N = 1), calibrate's cold small read
    of the image's own small files in a new snapshot / copy, and of files
    calibrate writes itself (its _cold_small_files), one run each, per file."""
    r.n += 1
    root = r.create(d, r.n)
    own = cal._cold_small_files(root)
    os.sync()
    image = [f"{root}/small/d{i % vt.SMALL_DIRS:04d}/f{i:06d}" for i in range(vt.SMALL_FILES)]
    if d in ("btrfs", "zfs"):
        fresh, unfresh = cal._fresh_copies(r, d, r.n, root)
    else:
        fresh, unfresh = None, (lambda: None)
    got: dict = {"validate": [], "cal-image": [], "cal-own": []}
    try:
        for _ in range(rounds):
            got["validate"].append(r.measure("read-small", d, 1) / vt.SMALL_FILES)
            got["cal-image"].append(cal._cold_small(image, 1, reps=1, fresh=fresh))
            got["cal-own"].append(cal._cold_small(own, 1, reps=1, fresh=fresh))
    finally:
        unfresh()
        r.remove(d, r.n)
    for k, v in got.items():
        print(f"{d:8s} {k:10s} us/file median {statistics.median(v) * 1e6:6.1f} least {min(v) * 1e6:6.1f}  "
              + " ".join(f"{x * 1e6:.0f}" for x in v), f"load {os.getloadavg()[0]:.1f}", flush=True)


def main_paired() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paired", action="store_true")
    ap.add_argument("--drivers", default="vfs,btrfs")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    drivers = a.drivers.split(",")
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "6G")
        r = vt.RealSetup(stack, base, drivers)
        for d in drivers:
            paired(r, d, a.rounds)


if __name__ == "__main__" and "--paired" in sys.argv:
    main_paired()
elif __name__ == "__main__" and "--split" not in sys.argv:
    main()


def _schedstat() -> tuple[int, int, int]:
    with open("/proc/thread-self/schedstat") as f:
        a, b, c = f.read().split()
    return int(a), int(b), int(c)


def _timed(root: str) -> tuple:
    """read-small by this process itself: wall, on-CPU, run-queue wait and
    blocked time (wall less the two) from /proc/thread-self/schedstat,
    voluntary switches."""
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    s0 = _schedstat()
    t0 = time.perf_counter()
    vt._proc_work("read-small", root, 0)
    t1 = time.perf_counter()
    s1 = _schedstat()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    wall, cpu, rq = t1 - t0, (s1[0] - s0[0]) / 1e9, (s1[1] - s0[1]) / 1e9
    return wall, cpu, rq, wall - cpu - rq, ru1.ru_nvcsw - ru0.ru_nvcsw


def split_round(r, d: str, busy: bool = False) -> tuple:
    """One run of read-small, N = 1, as validate measures it (a new
    container, drop_caches, the devices settled), cold and then again warm
    in the same container (:func:`_timed` each)."""
    r.n += 1
    root = r.create(d, r.n)
    try:
        vt.drop_caches()
        vt.io_settled(r.devices)
        with (cal.busy_cores() if busy else contextlib.nullcontext()):
            cold = _timed(root)
            warm = _timed(root)
    finally:
        vt.remove_each(r, d, [r.n])
        r.settle(d)
    return cold, warm


def _show(what: str, out: list) -> None:
    f = vt.SMALL_FILES / 1e6
    med = lambda i: statistics.median(x[i] for x in out) / f   # noqa: E731
    print(f"{what:18s} us/file median: wall {med(0):6.1f} cpu {med(1):5.1f} runq {med(2):6.1f} "
          f"blocked {med(3):5.1f} vcsw {statistics.median(x[4] for x in out):.0f}", flush=True)
    print("    wall " + " ".join(f"{x[0] / f:.0f}" for x in out) + " | cpu " + " ".join(f"{x[1] / f:.0f}" for x in out)
          + " | blocked " + " ".join(f"{x[3] / f:.1f}" for x in out))


def main_split() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", action="store_true")
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--drivers", default="overlay2,vfs,btrfs,zfs")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    drivers = a.drivers.split(",")
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "6G")
        r = vt.RealSetup(stack, base, drivers)
        got = {}
        for _ in range(a.rounds):
            for d in drivers:
                for busy in ((False, True) if a.busy else (False,)):
                    c, w = split_round(r, d, busy)
                    got.setdefault((d, busy, "cold"), []).append(c)
                    got.setdefault((d, busy, "warm"), []).append(w)
        print(f"load {os.getloadavg()}")
        for (d, busy, what), out in got.items():
            _show(f"{d} {what}{' busy' if busy else ''}", out)


if __name__ == "__main__" and "--split" in sys.argv:
    main_split()
