"""What zfs-fuse's daemon does for validate's big appends and small reads
by 1, 4 and 16 processes (issue #13): per run, the processes' wall time,
their own CPU and every zfs-fuse thread's, with ext4's run of the same
work just before as the reference measured beside it.

A zfs-fuse pool on a sparse file in a tmpfs (:func:`thinp.validate.block.real_zfs`,
as validate makes it), a dataset laid out as validate's image (the 400
small files first, then the 16 big files of 16 MiB, so the big ones push
the small ones out of the ARC) with a snapshot; each zfs run on a fresh
clone (made and destroyed one at a time under
:func:`thinp.validate.timing.zfs_mount_lock`), caches dropped first, as
validate runs it.  The ext4 reference: the same files on an ext4 loop
device, caches dropped first (the big file cut back to 16 MiB after each
run).  ``--busy`` also runs each zfs cell with every core kept busy by
SCHED_IDLE spinners (:func:`thinp.validate.calibrate.busy_cores`).

Cases (``--what``): ``big`` (validate's append-big: 512 open/append
4 KiB/close of ``/data/big{p}``), ``new`` (calibrate's ``append4k``: 250
of them to a new file), ``small`` (validate's read-small: every process
reads the 400 small files whole).

    PYTHONPATH=$PWD python scripts/probe_zfs_lone.py --what big,small --n 1,4,16 --reps 5
    PYTHONPATH=$PWD python scripts/probe_zfs_lone.py --split 8

Seen 2026-12-08 01:26-01:45 UTC (2-vCPU Intel Xeon VM, load 5.7-8.9: four
other sessions' work beside, so the ext4 references moved as much as zfs
did, 2-286 ms, and zfs-fuse's appends switched between its fast mode and
its slow one, 100-1000 us an append, run by run; the figures below are the
fast runs'):

* validate's append-big: one process 18.8 ms (37 us an append), its CPU
  5.2 ms and the daemon's 13.7 ms: the wall time is the two summed; 4 at
  once 77.6 ms, the clients' CPU 24 ms and the daemon's 51 ms (36.6 us an
  append): the wall time is again the CPU summed, one append at a time, as
  the kept validate run's 39, 36 and 39 us an append by 1, 4 and 16
  processes say (the model priced 76 us of CPU an append on 2 cores:
  right by 4 and 16, 2x by 1).
* ``--split 8`` (01:32, load 5.7; the fast mode in 5 of 8 runs): appends
  1-8, 9-16 and 17-32 of a new file took 203-268, 212-240 and 139-167 us
  each (the client's CPU 150-210, 164-178 and 87-110 us, the daemon's
  48-65), appends 33-250 44-55 us (16-19 and 29-31), 5-byte appends to a
  new file 41-42 us, to the big file 42-48, 4 KiB ones to the big file
  42-46 (the first 512 after the clone's caches were dropped 55-67): a new
  file's first record (128 KiB, one block growing by each append) costs
  3.9-4.2x a later append, by the CPU of each run (median 3.94), and
  calibrate's ``append4k`` (250 appends to a new file) averages 32 of them
  in, where validate's big appends meet none
  (:data:`thinp.validate.calibrate.FIRST_RECORD_RATIO`).
* validate's read-small (every process reads the 400 small files cold;
  loaded, so no conclusion on the wall time): the daemon's CPU was 47-83
  us a file by one reader, 27-35 us a file read by 4 (110-140 us a file),
  17 us by 16 -- each reader past the first costs the daemon 25-30 us a
  file (its open and release, the attributes) where the model's warm read
  costs 62 us of its layer_kind_s, 72% under the daemon's lock.
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

NEW_APPENDS = 250


def work(what: str, root: str, p: int) -> None:
    if what == "big":
        _part(f"{root}/data/big{p}", vt.APPENDS_BIG, b"x" * 4096, False, ())
    elif what == "new":
        _part(f"{root}/new{p}-{time.monotonic_ns()}", NEW_APPENDS, b"x" * 4096, True, ())
    elif what == "small":
        for i in range(vt.SMALL_FILES):
            vt.read_whole(f"{root}/small/d{i % vt.SMALL_DIRS:04d}/f{i:06d}")
    else:
        raise ValueError(what)


def ops(what: str) -> int:
    return {"big": vt.APPENDS_BIG, "new": NEW_APPENDS, "small": vt.SMALL_FILES}[what]


def lay(root: str) -> None:
    for i in range(vt.SMALL_FILES):
        d = f"{root}/small/d{i % vt.SMALL_DIRS:04d}"
        os.makedirs(d, exist_ok=True)
        vt.write_file(f"{d}/f{i:06d}", vt.SMALL_BYTES, i)
    os.makedirs(f"{root}/data", exist_ok=True)
    for k in range(vt.BIG_FILES):
        vt.write_file(f"{root}/data/big{k}", vt.BIG_BYTES, k)


@contextlib.contextmanager
def fresh_clone(pool: str, mnt: str, lock: str, name: str):
    """A clone of the image's snapshot, made and destroyed one at a time
    under :func:`thinp.validate.timing.zfs_mount_lock`, its caches dropped:
    yields its root."""
    with vt.zfs_mount_lock(lock):
        vt.run_cmd(["zfs", "clone", f"{pool}/img@base", f"{pool}/{name}"])
    root = f"{mnt}/{name}"
    try:
        vt.drop_caches()
        yield root
    finally:
        with vt.zfs_mount_lock(lock):
            vt.zfs_destroy(f"{pool}/{name}", root)


def _part(path: str, n: int, data: bytes, create: bool, daemon) -> tuple[float, float, float]:
    """``n`` open/append/close of ``data`` to ``path`` in this process:
    microseconds an append of wall time, of this process's CPU and of the
    daemon's threads' CPU."""
    flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0)
    t, c, d = time.perf_counter(), time.process_time(), cal._tasks_cpu_s(daemon)
    for _ in range(n):
        fd = os.open(path, flags, 0o644)
        os.write(fd, data)
        os.close(fd)
    return ((time.perf_counter() - t) / n * 1e6, (time.process_time() - c) / n * 1e6,
            (cal._tasks_cpu_s(daemon) - d) / n * 1e6)


def split(pool: str, mnt: str, lock: str, daemon, reps: int) -> None:
    """One process, a fresh clone a run: 4 KiB appends to a new file in
    parts (appends 1-8, 9-16 and 17-32: its first 128 KiB record, one
    block growing by each; 33-250: the later records), 5-byte appends to a
    new file and to a big one, and 4 KiB appends to two big files (the
    first after the clone's caches were dropped, then another)."""
    four, five = b"x" * 4096, b"hello"
    for rep in range(reps):
        with fresh_clone(pool, mnt, lock, f"s{rep}") as root:
            r = {"big": _part(f"{root}/data/big0", vt.APPENDS_BIG, four, False, daemon)}
            for label, n in (("new 1-8", 8), ("new 9-16", 8), ("new 17-32", 16), ("new 33-250", 218)):
                r[label] = _part(f"{root}/new", n, four, True, daemon)
            r["5B new"] = _part(f"{root}/new5", NEW_APPENDS, five, True, daemon)
            r["5B big"] = _part(f"{root}/data/big0", NEW_APPENDS, five, False, daemon)
            r["big again"] = _part(f"{root}/data/big1", vt.APPENDS_BIG, four, False, daemon)
            print(rep, "(wall, client cpu, daemon cpu) us an append:",
                  {k: tuple(round(x, 1) for x in v) for k, v in r.items()},
                  f"load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", type=int, default=0, metavar="REPS",
                    help="only the one-process split of new-file appends (see split()), REPS runs")
    ap.add_argument("--what", default="big,small")
    ap.add_argument("--n", default="1,4,16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--busy", action="store_true", help="also each zfs cell with every core kept busy")
    a = ap.parse_args()
    others = cal._children_named("zfs-fuse")
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "3G")
        ext4 = stack.enter_context(vt.loop_fs(base, "ext4", 1 << 30, ["mkfs.ext4", "-q", "-F"]))
        lay(ext4)
        pool, mnt = stack.enter_context(block.real_zfs(workdir=base, size="2G"))
        lock = os.path.join(base, "zfs-mount.lock")
        vt.run_cmd(["zfs", "create", f"{pool}/img"])
        lay(f"{mnt}/img")
        vt.run_cmd(["zfs", "snapshot", f"{pool}/img@base"])
        daemon = cal._children_named("zfs-fuse")
        if a.split:
            split(pool, mnt, lock, daemon, a.split)
            return
        print(f"pool {pool}, daemon {daemon} (others before: {others}), load {os.getloadavg()[0]:.2f}",
              flush=True)
        print("what  n busy | zfs wall ms (range) us/op | client cpu us/op | daemon cpu us/op | "
              "ext4 ref wall ms | zfs/ext4 | load", flush=True)
        seq = 0
        med = statistics.median
        for what in a.what.split(","):
            for n in (int(x) for x in a.n.split(",")):
                for busy in ((False, True) if a.busy else (False,)):
                    walls, cpus, dcpus, refs = [], [], [], []
                    for _ in range(a.reps):
                        # the reference, just before
                        vt.drop_caches()
                        refs.append(vt.concurrently([(work, (what, ext4, p)) for p in range(n)]))
                        if what == "big":
                            for p in range(n):
                                os.truncate(f"{ext4}/data/big{p}", vt.BIG_BYTES)
                        seq += 1
                        with fresh_clone(pool, mnt, lock, f"c{seq}") as root:
                            t, c, d = cal.concurrently_with_daemon(
                                [(work, (what, root, p)) for p in range(n)], daemon, busy)
                            walls.append(t)
                            cpus.append(c)
                            dcpus.append(d)
                    k = ops(what) * n
                    rel = [w / r for w, r in zip(walls, refs)]
                    print(f"{what:5s} {n:2d} {int(busy)}    | {med(walls)*1e3:7.1f} ({min(walls)*1e3:.1f}-"
                          f"{max(walls)*1e3:.1f}) {med(walls)/ops(what)*1e6:6.1f} | {med(cpus)/k*1e6:6.1f} | "
                          f"{med(dcpus)/k*1e6:6.1f} | {med(refs)*1e3:6.2f} | {med(rel):6.1f} | "
                          f"{os.getloadavg()[0]:.2f}", flush=True)
                    print(f"      runs ms {[round(w * 1e3, 1) for w in walls]} daemon ms "
                          f"{[round(x * 1e3, 1) for x in dcpus]} client ms {[round(x * 1e3, 1) for x in cpus]}",
                          flush=True)


if __name__ == "__main__":
    main()
