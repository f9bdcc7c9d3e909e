#!/usr/bin/env python3
"""How ``thinp validate timing``'s tree and small appends scale with N
processes on ext4 (vfs's container) and through overlayfs (overlay2's), on
one ext4 over a loop device in a tmpfs, as the validate run lays them out:
per cell the wall time, the measuring processes' own CPU (getrusage, summed),
their involuntary and voluntary context switches, and the 1-minute load.

    python scripts/probe_tree_scaling.py 1,4,16 5

Each round runs every cell once, the places alternating (ext4, overlay,
then overlay, ext4), so that a change in the machine's load falls on both.
Printed per cell: the medians of wall, CPU per process, wall * cores / CPU
(1: the cores were kept busy by the measured processes alone; above 1: a
core idle, or taken by another task), the context switches, and each
place's wall over the other's.  Everything it mounts or attaches is
released by its own path or device.  (Issue #13: tree N = 4 / 16 ordering,
small appends at N = 16.)
"""
import contextlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from thinp.validate import timing as vt  # noqa: E402


def tree(root: str, p: int, tag: str) -> None:
    vt.make_tree(f"{root}/t{p}-{tag}", vt.TREE_DEPTH)


def appends(root: str, p: int, tag: str) -> None:
    path = f"{root}/log-{p}-{tag}"
    for _ in range(vt.APPENDS_SMALL):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"hello")
        os.close(fd)


def main() -> None:
    ns = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1,4,16").split(",")]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    cores = len(os.sched_getaffinity(0))
    got: dict = {}
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "8G")
        ext4 = stack.enter_context(vt.loop_fs(base, "ext4", 6 << 30, ["mkfs.ext4", "-q", "-F"]))
        native = os.path.join(ext4, "native")
        lower, up, wk, mnt = (os.path.join(ext4, x) for x in ("lower", "upper", "work", "merged"))
        for d in (native, lower, up, wk, mnt):
            os.mkdir(d)
        vt.write_file(f"{lower}/etc", 1024, 0)
        vt.mount_overlay(f"lowerdir={lower},upperdir={up},workdir={wk}", mnt)
        stack.callback(vt.umount, mnt)
        places = [("ext4", native), ("overlay", mnt)]
        for r in range(rounds):
            order = places if r % 2 == 0 else places[::-1]
            for case, fn in (("tree", tree), ("append-small", appends)):
                for n in ns:
                    for where, root in order:
                        os.sync()
                        detail: dict = {}
                        wall = vt.concurrently([(fn, (root, p, f"{r}-{n}")) for p in range(n)], detail)
                        got.setdefault((case, n, where), []).append(
                            dict(wall=wall, load=os.getloadavg()[0], **detail))
            print(f"round {r + 1}/{rounds} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    med = statistics.median
    out = []
    for (case, n, where), runs in sorted(got.items()):
        w = med([x["wall"] for x in runs])
        cpu = med([x["cpu_s"] for x in runs])
        eff = med([x["wall"] * min(n, cores) / x["cpu_s"] for x in runs])
        other = got[(case, n, "overlay" if where == "ext4" else "ext4")]
        rel = med([a["wall"] / b["wall"] for a, b in zip(runs, other)])
        row = dict(case=case, n=n, where=where, wall_ms=w * 1e3, cpu_per_proc_ms=cpu / n * 1e3,
                   wall_cores_over_cpu=eff, preempted=med([x["preempted"] for x in runs]),
                   waits=med([x["waits"] for x in runs]), rel_to_other=rel,
                   load=[round(x["load"], 1) for x in runs], walls_ms=[round(x["wall"] * 1e3, 2) for x in runs])
        out.append(row)
        print(f"{case:12} N={n:<3} {where:8} wall {w * 1e3:8.2f} ms  cpu/proc {cpu / n * 1e3:6.2f} ms  "
              f"wall*cores/cpu {eff:4.2f}  preempted {row['preempted']:5}  waits {row['waits']:6}  "
              f"/other {rel:4.2f}  load {min(row['load'])}-{max(row['load'])}")
    json.dump(out, sys.stdout if "--json" in sys.argv else open(os.devnull, "w"))


if __name__ == "__main__":
    main()
