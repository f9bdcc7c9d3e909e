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
        print("round  t_s   load | least5 zfs us | block medians: zfs us ext4 us ratio | zfs cpu us/op", flush=True)
        t0 = time.monotonic()
        while time.monotonic() < t_end:
            if a.arc and i % 2:
                cal.evict_arc(big, cal.zfs_arc_max_bytes())
            least = cal._least(lambda: cal._per_op(fo, no, 1))
            zs, es, cs = [], [], []
            for b in range(8):
                es.append(cal._wall_per_op(fr, nr))
                t, c = cal._cpu_per_op(fo, no, daemon)
                zs.append(t)
                cs.append(c)
            zm, em = statistics.median(zs), statistics.median(es)
            print(f"{i:5d} {time.monotonic() - t0:5.0f} {os.getloadavg()[0]:5.2f} | {least * 1e6:8.1f} | "
                  f"{zm * 1e6:8.1f} {em * 1e6:6.2f} {zm / em:6.1f} | {statistics.median(cs) * 1e6:6.1f}"
                  f"{' (arc evicted)' if a.arc and i % 2 else ''}", flush=True)
            i += 1
            time.sleep(2)


if __name__ == "__main__":
    main()
