"""Why zfs-fuse's lone append cost moves between calibrations (issue #13):
its appends and ext4's, block by block in turn, for a few minutes.

A zfs-fuse pool on a sparse file in a tmpfs (:func:`thinp.validate.block.real_zfs`)
and an ext4 loop device beside it (:func:`thinp.validate.timing.loop_fs`).  Each
round: calibrate's least-of-5 figure of 250 5-byte appends on zfs-fuse
(:func:`thinp.validate.calibrate._per_op`, as calibrate takes ``zfs.append.p1``),
then one run of :func:`thinp.validate.calibrate.interleaved_rel` (8 blocks of
250 zfs-fuse appends and of 1000 ext4 appends in turn), with the median
block's CPU per append (the process's and every zfs-fuse thread's) and the
load average.  ``--arc`` reads 1.5x the ARC's ceiling of other files before
every other round (what calibrate's cold reads do before the ops).

    PYTHONPATH=$PWD python scripts/probe_zfs_append_rel.py --minutes 4

Seen 2026-12-07 19:25-19:31 UTC (2-vCPU Intel Xeon VM, load 5.5-7.1, other
sessions' tests beside): zfs-fuse's appends run in two modes that change
every few seconds, whatever this process does -- 25-36 us an append (its
CPU and the daemon's, the same: every microsecond of it on a core), or
350-1200 us with 175-220 us of CPU (the daemon's threads burning CPU while
the appends wait) -- in about half the rounds, with or without the ARC
refilled by other files first (``--arc``: no difference).  ext4's appends
beside them stayed at 1.26-1.73 us (the median block; 3.4-4.2 us in 3
rounds of 93): a 5-byte ext4
append never sleeps, a zfs-fuse one crosses FUSE four or five times, and
only those round trips meet the other load.  In the fast mode the ratio
to ext4 was steady (22-27x, per block); the slow mode is 100-950x.
calibrate's least of 5 forked runs of 250 (``zfs.append.p1``) caught the
fast mode in 82 of 93 rounds (25-44 us), as the 17:00 calibration's 29.8 us;
the kept one's 53.8 us was measured quiet, where each round trip wakes an
idle core (``idle_wake_s``) instead.  A run of the same appends forked,
in this process and in this process reading the daemon's schedstat
(``/tmp`` probe, 115 daemon threads) met the slow mode alike.  Timed one
block of 250 at a time (19:48-19:49 UTC, load 11.6-11.9, the guest's cores
never idle, 2.5% steal, no direct reclaim), the daemon's threads' CPU was
15-30 us an append in the fast mode and 80-150 us in the slow one, with or
without SCHED_IDLE spinners on every core: the slow mode is the daemon's
own work growing while other tenants' processes hold the cores, not the
machine's speed (ext4's appends did not move) nor the ARC.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

from thinp.validate import block
from thinp.validate import calibrate as cal
from thinp.validate import timing as vt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--arc", action="store_true")
    a = ap.parse_args()
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "3G")
        ext4 = stack.enter_context(vt.loop_fs(base, "ext4", 1 << 30, ["mkfs.ext4", "-q", "-F"]))
        pool, mnt = stack.enter_context(block.real_zfs(workdir=base, size="1G"))
        vt.run_cmd(["zfs", "create", f"{pool}/c"])
        root = f"{mnt}/c"
        cal._prepare(root)
        cal._prepare(ext4)
        big = []
        if a.arc:
            for k in range(12):
                big.append(f"{root}/big{k}")
                vt.write_file(big[-1], 16 << 20, k)
        daemon = cal._children_named("zfs-fuse")
        own, ref = cal._ops(root, 250), cal._ops(ext4, 1000)
        fo, no = own["append"]
        fr, nr = ref["append"]
        t_end = time.monotonic() + 60 * a.minutes
        i = 0
        print("round  t_s   load | least5 zfs us | block medians: zfs us ext4 us, median block ratio | zfs cpu us/op", flush=True)
        t0 = time.monotonic()
        while time.monotonic() < t_end:
            if a.arc and i % 2:
                cal.evict_arc(big, cal.zfs_arc_max_bytes())
            least = cal._least(lambda: cal._per_op(fo, no, 1))
            zs, es, cs, rs = [], [], [], []
            for b in range(8):
                es.append(cal._wall_per_op(fr, nr))
                t, c = cal._cpu_per_op(fo, no, daemon)
                zs.append(t)
                cs.append(c)
                rs.append(t / es[-1])
            zm, em = statistics.median(zs), statistics.median(es)
            print(f"{i:5d} {time.monotonic() - t0:5.0f} {os.getloadavg()[0]:5.2f} | {least * 1e6:8.1f} | "
                  f"{zm * 1e6:8.1f} {em * 1e6:6.2f} {statistics.median(rs):6.1f} | {statistics.median(cs) * 1e6:6.1f}"
                  f"{' (arc evicted)' if a.arc and i % 2 else ''}", flush=True)
            i += 1
            time.sleep(2)


if __name__ == "__main__":
    main()
