#!/usr/bin/env python3
"""``thinp validate timing``'s big appends on overlay2 alone, with and
without the copy-up's fsync: per run, the wall time, the processes' own CPU
(the copy-up's part apart), the kernel threads' CPU (on a loop device over
a tmpfs file, mostly its worker's copies and the journal thread), and when
the N processes' copy-ups (their first open for writing) ended.

    python scripts/probe_copy_ups.py 1,4,16 3 normal,volatile

``volatile`` mounts the overlay with ``volatile``, which skips the copy-up's
fsync.  Everything it mounts or attaches is released by its own path or
device.  (Issue #13: copy_up_worker_share and the fsync's sim.DRAIN.)
"""
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from thinp.validate import timing as vt  # noqa: E402

def _cpu(a, b) -> float:
    return b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime


def work(root: str, p: int, out: str) -> None:
    """One process's big appends; its first open copies the file up."""
    path = f"{root}/data/big{p}"
    buf = b"x" * 4096
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    os.write(fd, buf)
    os.close(fd)
    for _ in range(vt.APPENDS_BIG - 1):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, buf)
        os.close(fd)
    t2, r2 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "a") as f:
        f.write(json.dumps([p, t0, t1, t2, _cpu(r0, r1), _cpu(r1, r2)]) + "\n")


def main():
    if len(sys.argv) != 4:
        print("usage: probe_copy_ups.py NS RUNS MODES (e.g. 1,4,16 3 normal,volatile)", file=sys.stderr)
        return 2
    ns = [int(x) for x in sys.argv[1].split(",")]
    runs = int(sys.argv[2])
    modes = sys.argv[3].split(",")
    with contextlib.ExitStack() as st:
        base = vt.scratch(st, "1200M")
        ext4 = st.enter_context(vt.loop_fs(base, "ext4", 1 << 30, ["mkfs.ext4", "-q", "-F"]))
        low, empty = os.path.join(ext4, "big"), os.path.join(ext4, "empty")
        os.makedirs(empty)
        for k in range(16):
            vt.write_file(low + vt.big_file(k), vt.BIG_BYTES, k)
        os.sync()
        dev = vt.real_block.device_at(ext4)
        res, c = [], 0
        for r in range(runs):
            for n in ns:
                for mode in modes:
                    c += 1
                    d = os.path.join(ext4, f"ctr{c}")
                    for sub in ("diff", "work", "merged"):
                        os.makedirs(f"{d}/{sub}")
                    opts = f"lowerdir={low}:{empty},upperdir={d}/diff,workdir={d}/work"
                    if mode == "volatile":
                        opts += ",volatile"
                    vt.mount_overlay(opts, f"{d}/merged")
                    try:
                        vt.drop_caches()
                        vt.io_settled([dev])
                        out = f"{base}/out{c}.jsonl"
                        k0, det = vt.kthread_cpu_s(), {}
                        t = vt.concurrently([(work, (f"{d}/merged", p, out)) for p in range(n)], det)
                        ks = vt.kthread_cpu_s() - k0
                        rows = [json.loads(l) for l in open(out)]
                        t0 = min(x[1] for x in rows)
                        cu_end = sorted(x[2] - t0 for x in rows)
                        cu_cpu, ap_cpu = sum(x[4] for x in rows), sum(x[5] for x in rows)
                        rec = dict(n=n, mode=mode, wall=t, kthread=ks, cpu=det["cpu_s"], cu_cpu=cu_cpu, ap_cpu=ap_cpu,
                                   cu_end_first=cu_end[0], cu_end_med=statistics.median(cu_end), cu_end_last=cu_end[-1],
                                   load=os.getloadavg()[0])
                        res.append(rec)
                        print(json.dumps({k: (round(v * 1e3, 2) if isinstance(v, float) and k != "load" else v) for k, v in rec.items()}), flush=True)
                    finally:
                        vt.umount(f"{d}/merged")
                        shutil.rmtree(d, ignore_errors=True)
        return res

if __name__ == "__main__":
    sys.exit(0 if isinstance(main(), list) else 2)
