#!/usr/bin/env python3
"""Where a cold small-file read's time goes, per driver (issue #13).

Three modes, each on the real drivers ``thinp validate timing`` builds
(:class:`thinp.validate.timing.RealSetup`):

* ``split`` (default): rounds of the read-small case, N = 1, as validate
  runs it (a new container, ``drop_caches``, the devices settled), read by
  this process itself, cold and then again warm; per file the wall time, the
  reader's on-CPU time, its run-queue wait and the rest (blocked: the device
  read and the wake-ups) from ``/proc/thread-self/schedstat``, and its
  voluntary switches.  A warm pass's CPU reads near 0: schedstat counts a
  running task's time at its switches and ticks, and the warm pass has none;
* ``validate``: validate's own measurement of read-small (a forked reader),
  alone and with every core kept busy by SCHED_IDLE spinners;
* ``paired``: rounds of validate's read-small beside calibrate's cold
  small reads of the image's files and of files calibrate writes itself.

    python scripts/probe_cold_small.py --mode split --drivers overlay2,vfs,btrfs,zfs --rounds 7

Everything it mounts, attaches or starts is released by its own path,
device or pid.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from thinp.validate import calibrate as cal  # noqa: E402
from thinp.validate import timing as vt  # noqa: E402

US_PER_FILE = vt.SMALL_FILES / 1e6


def _image_small(root: str) -> list[str]:
    return [f"{root}/small/d{i % vt.SMALL_DIRS:04d}/f{i:06d}" for i in range(vt.SMALL_FILES)]


def _schedstat() -> tuple[int, int]:
    with open("/proc/thread-self/schedstat") as f:
        on_cpu, runq, _slices = f.read().split()
    return int(on_cpu), int(runq)


def _timed(paths: list[str]) -> tuple:
    """``paths`` read whole by this process: wall, on-CPU, run-queue wait,
    the rest (blocked), voluntary switches."""
    ru0, s0, t0 = resource.getrusage(resource.RUSAGE_SELF), _schedstat(), time.perf_counter()
    for p in paths:
        vt.read_whole(p)
    t1, s1, ru1 = time.perf_counter(), _schedstat(), resource.getrusage(resource.RUSAGE_SELF)
    wall, cpu, rq = t1 - t0, (s1[0] - s0[0]) / 1e9, (s1[1] - s0[1]) / 1e9
    return wall, cpu, rq, wall - cpu - rq, ru1.ru_nvcsw - ru0.ru_nvcsw


@contextlib.contextmanager
def _container(r, d: str):
    """A new container of ``d``, its root; removed and settled after."""
    r.n += 1
    n = r.n
    try:
        yield r.create(d, n)
    finally:
        vt.remove_each(r, d, [n])
        r.settle(d)


def split(r, drivers, rounds: int) -> None:
    got: dict = {}
    for _ in range(rounds):
        for d in drivers:
            with _container(r, d) as root:
                vt.drop_caches()
                vt.io_settled(r.devices)
                paths = _image_small(root)
                got.setdefault(f"{d} cold", []).append(_timed(paths))
                got.setdefault(f"{d} warm", []).append(_timed(paths))
    print(f"load {os.getloadavg()}")
    for what, out in got.items():
        med = [statistics.median(x[i] for x in out) / US_PER_FILE for i in range(4)]
        print(f"{what:15s} us/file median: wall {med[0]:6.1f} cpu {med[1]:5.1f} runq {med[2]:6.1f} "
              f"blocked {med[3]:5.1f} vcsw {statistics.median(x[4] for x in out):.0f}")
        print("    wall " + " ".join(f"{x[0] / US_PER_FILE:.0f}" for x in out)
              + " | cpu " + " ".join(f"{x[1] / US_PER_FILE:.0f}" for x in out)
              + " | blocked " + " ".join(f"{x[3] / US_PER_FILE:.1f}" for x in out), flush=True)


def validate(r, drivers, rounds: int) -> None:
    for d in drivers:
        r.warm_tool(d)
        for busy in (False, True):
            out = []
            for _ in range(rounds):
                with (cal.busy_cores() if busy else contextlib.nullcontext()):
                    t = r.measure("read-small", d, 1)
                out.append((t, r.last_detail["cpu_s"], r.last_detail["waits"], r.last_kthread_s))
            ts = [x[0] for x in out]
            print(f"{d}{' cores busy' if busy else ''}: median {statistics.median(ts) / US_PER_FILE:.1f} us/file, "
                  f"runs ms " + " ".join(f"{x[0] * 1e3:.1f}" for x in out)
                  + " | cpu " + " ".join(f"{x[1] * 1e3:.1f}" for x in out)
                  + " | kthread " + " ".join(f"{x[3] * 1e3:.1f}" for x in out)
                  + f" | waits {statistics.median(x[2] for x in out):.0f}, load {os.getloadavg()[0]:.1f}", flush=True)


def paired(r, drivers, rounds: int) -> None:
    for d in drivers:
        with _container(r, d) as root:
            own = cal._cold_small_files(root)
            os.sync()
            fresh, unfresh = (cal._fresh_copies(r, d, r.n, root) if d in ("btrfs", "zfs")
                              else (None, lambda: None))
            got: dict = {"validate": [], "cal-image": [], "cal-own": []}
            try:
                for _ in range(rounds):
                    got["validate"].append(r.measure("read-small", d, 1) / vt.SMALL_FILES)
                    got["cal-image"].append(cal._cold_small(_image_small(root), 1, reps=1, fresh=fresh))
                    got["cal-own"].append(cal._cold_small(own, 1, reps=1, fresh=fresh))
            finally:
                unfresh()
        for k, v in got.items():
            print(f"{d:8s} {k:10s} us/file median {statistics.median(v) * 1e6:6.1f} least {min(v) * 1e6:6.1f}  "
                  + " ".join(f"{x * 1e6:.0f}" for x in v), f"load {os.getloadavg()[0]:.1f}", flush=True)


MODES = {"split": split, "validate": validate, "paired": paired}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="split")
    ap.add_argument("--drivers", default="overlay2,vfs,btrfs,zfs")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    drivers = a.drivers.split(",")
    with contextlib.ExitStack() as stack:
        r = vt.RealSetup(stack, vt.scratch(stack, "6G"), drivers)
        live = [d for d in drivers if d not in r.skipped]
        for d in set(drivers) - set(live):
            print(f"{d} skipped: {r.skipped[d]}")
        MODES[a.mode](r, live, a.rounds)


if __name__ == "__main__":
    main()
