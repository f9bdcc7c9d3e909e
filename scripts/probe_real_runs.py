#!/usr/bin/env python3
"""Repeat one ``thinp validate timing`` cell on the real side and print, per
run, what the harness's wall time alone does not say: the CPU kernel
threads ran meanwhile (on a loop device over a tmpfs file, mostly the loop
worker's copies) and the requests the driver's loop device served.

    python scripts/probe_real_runs.py read-big 16 overlay2,vfs --runs 6
    python scripts/probe_real_runs.py start 1 btrfs --runs 10 --spin

``--spin`` keeps one more core busy with a shell loop during each run (is a
slow mode of a short run an idle vCPU's wake-up?).  The drivers take turns
as in ``validate timing``.  Every mount, loop device and process it starts
is released by its own path, device or pid.  (Issue #13: this is how
overlay2's spread at N = 16 and btrfs' start at N = 1 were looked at.)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from thinp.validate import timing as vt  # noqa: E402


def _diskstats(dev: str) -> tuple[int, int, int, int, int]:
    """(reads, KiB read, writes, KiB written, flushes) served so far by ``dev``."""
    with open("/proc/diskstats") as f:
        for line in f:
            x = line.split()
            if x[2] == dev:
                flushes = int(x[18]) if len(x) > 18 else 0
                return int(x[3]), int(x[5]) // 2, int(x[7]), int(x[9]) // 2, flushes
    return 0, 0, 0, 0, 0


def _device_of(mnt: str) -> str:
    out = subprocess.run(["findmnt", "-no", "SOURCE", mnt], capture_output=True, text=True).stdout
    return os.path.basename(out.strip())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=[c.name for c in vt.CASES])
    ap.add_argument("n", type=int)
    ap.add_argument("drivers", help="comma-separated, of " + ",".join(vt.DRIVERS))
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--spin", action="store_true", help="a busy shell loop beside each run")
    a = ap.parse_args(argv)
    drivers = a.drivers.split(",")
    bad = [d for d in drivers if d not in vt.DRIVERS]
    if bad or a.n < 1 or a.runs < 1:
        print(f"probe_real_runs: bad driver {bad[0]!r}" if bad else "probe_real_runs: n and --runs must be >= 1",
              file=sys.stderr)
        return 2
    ok, why = vt.available()
    if not ok:
        print(f"probe_real_runs: the real side cannot run here: {why}", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        r = vt.RealSetup(stack, vt.scratch(stack, "10G"), drivers)
        devs = {"overlay2": r.ext4, "vfs": r.ext4, "btrfs": r.btrfs}
        devs = {d: _device_of(m) for d, m in devs.items() if m}
        walls: dict = {d: [] for d in drivers}
        for rep in range(a.runs):
            k = rep % len(drivers)
            for d in drivers[k:] + drivers[:k]:
                if d in r.skipped:
                    continue
                dev = devs.get(d)
                io0 = _diskstats(dev) if dev else None
                spin = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if a.spin else None
                try:
                    t = r.measure(a.case, d, a.n)
                finally:
                    if spin is not None:        # ours, by its pid
                        spin.kill()
                        spin.wait()
                walls[d].append(t)
                io = ""
                if io0 is not None:
                    dr, dkr, dw, dkw, df = (y - x for x, y in zip(io0, _diskstats(dev)))
                    io = f"  {dev}: {dr} reads {dkr} KiB, {dw} writes {dkw} KiB, {df} flushes"
                print(f"{rep} {d:8s} {t * 1e3:9.2f} ms  kernel threads {r.last_kthread_s * 1e3:7.1f} ms CPU"
                      f"{io}  load {os.getloadavg()[0]:.1f}", flush=True)
        for d, v in walls.items():
            if v:
                print(f"{d}: median {statistics.median(v) * 1e3:.2f} ms, "
                      f"{min(v) * 1e3:.2f}-{max(v) * 1e3:.2f} ms over {len(v)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
