"""Where zfs-fuse's write paths spend their time (issue #13): the big
append and the tree of ``thinp validate timing``, next to calibrate's
4 KiB append benchmark.

A zfs-fuse pool on a sparse file in a tmpfs (:func:`thinp.validate.block.real_zfs`,
as validate makes it), a dataset holding 16 files of 16 MiB (validate's
image's big files) with a snapshot; each run on a fresh clone (made and
destroyed one at a time under :func:`thinp.validate.timing.zfs_mount_lock`),
caches dropped first as validate does.  Per run: the wall time of the
processes (:func:`thinp.validate.timing.concurrently`), their own CPU and
the daemon's (every thread's schedstat), optionally with every core kept
busy by SCHED_IDLE spinners (:func:`thinp.validate.calibrate.busy_cores`).

Workloads (``--what``):

* ``big``: validate's append-big, 512 open/append 4 KiB/close of the
  clone's ``/data/big{p}`` (a 16 MiB file of the origin);
* ``new``: calibrate's ``append4k``, the same appends to a new file;
* ``new5``: calibrate's ``append``, 5-byte appends to a new file;
* ``tree``: validate's tree, depth 8 (511 directories, 255 files).

    PYTHONPATH=$PWD python scripts/probe_zfs_writes.py --what big,new --n 1,4 --reps 5

Seen 2026-12-07 16:10-16:20 UTC (2-vCPU Intel Xeon VM, load 4.7-5.9, other
sessions' work beside): one process's 4 KiB appends took 30-32 us each, to
the big file or a new one, 5-byte ones 30 us (the kept quiet calibration:
52-54 us); the tree by 1, 2, 4 and 16 processes 48, 96, 200 and 1082 ms,
its clients' and the daemon's CPU 80, 92, 98 and 164 us a directory -- by
2 and 4 at once the wall time is all of that CPU, one directory at a time.
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


def _appends(path: str, buf: bytes, n: int, create: bool) -> None:
    flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0)
    for _ in range(n):
        fd = os.open(path, flags, 0o644)
        os.write(fd, buf)
        os.close(fd)


def work(what: str, root: str, p: int) -> None:
    if what == "big":
        _appends(f"{root}/data/big{p}", b"x" * 4096, vt.APPENDS_BIG, False)
    elif what == "new":
        _appends(f"{root}/new{p}", b"x" * 4096, vt.APPENDS_BIG, True)
    elif what == "new5":
        _appends(f"{root}/new{p}", b"hello", vt.APPENDS_BIG, True)
    elif what == "tree":
        vt.make_tree(f"{root}/t{p}", vt.TREE_DEPTH)
    else:
        raise ValueError(what)


def ops(what: str) -> int:
    return 2 ** (vt.TREE_DEPTH + 1) - 1 if what == "tree" else vt.APPENDS_BIG


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="big,new,new5,tree")
    ap.add_argument("--n", default="1,4")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--busy", action="store_true", help="also with every core kept busy")
    a = ap.parse_args()
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "3G")
        pool, mnt = stack.enter_context(block.real_zfs(workdir=base, size="2G"))
        lock = os.path.join(base, "zfs-mount.lock")
        vt.run_cmd(["zfs", "create", f"{pool}/img"])
        os.makedirs(f"{mnt}/img/data")
        for k in range(vt.BIG_FILES):
            vt.write_file(f"{mnt}/img/data/big{k}", vt.BIG_BYTES, k)
        vt.run_cmd(["zfs", "snapshot", f"{pool}/img@base"])
        daemon = cal._children_named("zfs-fuse")
        print(f"pool {pool}, daemon {daemon}, load {os.getloadavg()[0]:.2f}", flush=True)
        seq = 0
        for what in a.what.split(","):
            for n in (int(x) for x in a.n.split(",")):
                for busy in ((False, True) if a.busy else (False,)):
                    walls, cpus, dcpus = [], [], []
                    for _ in range(a.reps):
                        seq += 1
                        name = f"{pool}/c{seq}"
                        with vt.zfs_mount_lock(lock):
                            vt.run_cmd(["zfs", "clone", f"{pool}/img@base", name])
                        root = f"{mnt}/c{seq}"
                        try:
                            vt.drop_caches()
                            t, c, d = cal.concurrently_with_daemon(
                                [(work, (what, root, p)) for p in range(n)], daemon, busy)
                            walls.append(t)
                            cpus.append(c)
                            dcpus.append(d)
                        finally:
                            with vt.zfs_mount_lock(lock):
                                vt.zfs_destroy(name, root)
                    k = ops(what) * n
                    med = statistics.median
                    print(f"{what:5s} n={n:2d} busy={int(busy)} wall {med(walls)*1e3:7.1f} ms "
                          f"(min {min(walls)*1e3:.1f}) per op {med(walls)/ops(what)*1e6:6.1f} us | "
                          f"client cpu/op {med(cpus)/k*1e6:5.1f} us, daemon cpu/op {med(dcpus)/k*1e6:5.1f} us "
                          f"| load {os.getloadavg()[0]:.2f}", flush=True)
                    time.sleep(0.2)


if __name__ == "__main__":
    main()
