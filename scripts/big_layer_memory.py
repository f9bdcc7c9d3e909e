"""Peak memory of a chain of commits that each rewrite part of one big file.

Issue 13's bounded-memory scenario: an image whose top layer holds a big file
(1 GiB), then ``--layers`` commits in a chain, each rewriting ``--rewrite``
bytes of that file (10 MiB), run in accounting mode on every storage driver.
Docker's diff carries a changed file whole, so every committed layer holds
the whole file: without bounded layer content each commit held it in memory.

Each driver runs in its own child process; its peak RSS is the child's
``ru_maxrss`` from ``os.wait4``.  Prints one line per driver (or JSON)::

    PYTHONPATH=$PWD python scripts/big_layer_memory.py            # the full 1 GiB case
    PYTHONPATH=$PWD python scripts/big_layer_memory.py --file-size 64MiB --rewrite 640KiB
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DRIVERS = ("vfs", "aufs", "overlay", "overlay2", "btrfs", "zfs", "devicemapper")


def workload(file_size: int, layers: int, rewrite: int):
    """The workload: one container writing ``rewrite`` bytes at a new offset
    of ``/data/big.img`` then committing, ``layers`` times in a chain."""
    from thinp.workloads.format import ImageSpec, Step, Workload

    steps = []
    for i in range(layers):
        off = (i * rewrite) % max(file_size - rewrite, 1)
        steps += [Step("write", path="/data/big.img", offset=off, size=rewrite),
                  Step("commit", chain=True)]
    return Workload("big-layer-chain", ImageSpec("synthetic", None, extra=[("/data/big.img", file_size)]),
                    1, steps, 0, f"{layers} commits each rewriting {rewrite} bytes of a {file_size}-byte file")


def child(driver: str, file_size: int, layers: int, rewrite: int) -> dict:
    """Run the workload on ``driver`` in this process; what it measured."""
    import resource

    from thinp.workloads import run

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    t0 = time.perf_counter()
    res = run(workload(file_size, layers, rewrite), driver, record=False)
    return {"driver": driver, "error": res.error, "seconds": round(time.perf_counter() - t0, 2),
            "rss_after_import": base,
            "commits": res.metrics.get("commits"),
            "layer_bytes_applied": res.metrics.get("layer_bytes_applied")}


def measure(driver: str, file_size: int, layers: int, rewrite: int, timeout: float | None = None) -> dict:
    """Run :func:`child` in a subprocess; its result plus ``peak_rss`` (bytes)
    and ``returncode`` (a child killed by the kernel's OOM killer or by a
    MemoryError shows here)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", driver, "--file-size", str(file_size),
           "--layers", str(layers), "--rewrite", str(rewrite)]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    # the child reports its own peak (RUSAGE_SELF just before it exits):
    # RUSAGE_CHILDREN would be the largest of every child this process reaped
    res = {"driver": driver, "returncode": proc.returncode}
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode == 0 and lines:
        res.update(json.loads(lines[-1]))
    else:
        res["stderr"] = err.decode(errors="replace")[-2000:]
    return res


def _size(s: str) -> int:
    from thinp.units import parse_size
    return parse_size(s)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file-size", default="1GiB")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--rewrite", default="10MiB")
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    file_size, rewrite = _size(a.file_size), _size(a.rewrite)
    if a.child:
        import resource
        res = child(a.child, file_size, a.layers, rewrite)
        res["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
        print(json.dumps(res))
        return 0
    rows = []
    for d in a.drivers.split(","):
        r = measure(d, file_size, a.layers, rewrite)
        rows.append(r)
        if a.json:
            continue
        if r["returncode"] == 0:
            print(f"{r['driver']:13s} peak RSS {r['peak_rss'] / 2**20:8.0f} MiB  "
                  f"(after import {r['rss_after_import'] / 2**20:.0f} MiB)  {r['seconds']:7.1f} s  "
                  f"error={r['error']}", flush=True)
        else:
            print(f"{r['driver']:13s} exit {r['returncode']}: "
                  f"{r.get('stderr', '').strip().splitlines()[-1:]}", flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))
    return 0 if all(r["returncode"] == 0 and not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
