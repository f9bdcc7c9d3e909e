#!/usr/bin/env python3
"""Run one or two of ``thinp calibrate``'s measurements alone, add them to
the measurements a calibration file keeps, and fit the constants again
(``thinp calibrate --refit``): for trying a measurement calibrate gained on
a machine whose full calibration is kept, without running all of it.

    python scripts/probe_calibrate_parts.py zfs-busy,copy-up --into cal.toml --out cal2.toml

Parts:

* ``zfs-busy``: zfs-fuse's per-op benchmarks by one process, alone and with
  every core kept busy by SCHED_IDLE spinners (:func:`calibrate.busy_ops`),
  in a clone of a dataset as calibrate makes them; the busy figures are
  added (``zfs.<op>.busy.p1``), the lone ones printed beside the file's;
* ``copy-up``: cold copy-ups of 4 and 16 MiB lower files through overlayfs
  with one lower on an ext4 loop device (:func:`calibrate.cold_copy_ups`);
* ``cold-small``: the cold small-file reads (:func:`calibrate._cold_small_all`)
  on ext4, through overlayfs with one lower, in btrfs snapshots and zfs-fuse
  clones of a container of validate's image (zfs-fuse's ARC emptied first),
  each driver's also beside ext4's in turn (``cold_small_rel``); they
  replace the file's cold small-read figures.

Everything it mounts, attaches or starts is released by its own path,
device or pid.  (Issue #13.)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from thinp.validate import block  # noqa: E402
from thinp.validate import calibrate as cal  # noqa: E402
from thinp.validate import timing as vt  # noqa: E402

PARTS = ("zfs-busy", "copy-up", "cold-small")


def zfs_busy(stack, base: str, n_ops: int) -> dict:
    pool, mnt = stack.enter_context(block.real_zfs(workdir=base, size="1G"))
    vt.run_cmd(["zfs", "create", f"{pool}/img"])
    cal._prepare(f"{mnt}/img")
    vt.run_cmd(["zfs", "snapshot", f"{pool}/img@base"])
    vt.run_cmd(["zfs", "clone", f"{pool}/img@base", f"{pool}/ctr1"])
    root = f"{mnt}/ctr1"
    ops = cal._ops(root, n_ops)
    lone = {f"zfs.{name}.p1": cal._least(lambda: cal._per_op(ops[name][0], ops[name][1], 1))
            for name in cal.BUSY_OPS}
    busy = cal.busy_ops(root, n_ops)
    for name in cal.BUSY_OPS:
        print(f"zfs {name}: alone {lone[f'zfs.{name}.p1'] * 1e6:.1f} us, "
              f"cores busy {busy[f'zfs.{name}.busy.p1'] * 1e6:.1f} us", flush=True)
    return busy, lone


def copy_up(stack, base: str) -> dict:
    ext4 = stack.enter_context(vt.loop_fs(base, "ext4", 1 << 30, ["mkfs.ext4", "-q", "-F"]))
    lower, up, wk, mnt = (os.path.join(ext4, x) for x in ("l", "u", "w", "m"))
    for d in (lower, up, wk, mnt):
        os.mkdir(d)
    vt.mount_overlay(f"lowerdir={lower},upperdir={up},workdir={wk}", mnt)
    stack.callback(vt.umount, mnt)
    got = cal.cold_copy_ups(mnt, lower)
    for k, v in got.items():
        print(f"{k}: {v * 1e3:.2f} ms", flush=True)
    return got


def cold_small(stack, base: str) -> dict:
    procs = (1, 2, 4)
    meas: dict = {}
    real = vt.RealSetup(stack, base, ("overlay2", "btrfs", "zfs"))
    native = os.path.join(real.ext4, "cal-native")
    lower, up, wk, mnt = (os.path.join(real.ext4, x) for x in ("cal-l1-0", "cal-u1", "cal-w1", "cal-m1"))
    for d in (native, lower, up, wk, mnt):
        os.mkdir(d)
    small_lower = cal._cold_small_files(lower)
    vt.mount_overlay(f"lowerdir={lower},upperdir={up},workdir={wk}", mnt)
    stack.callback(vt.umount, mnt)
    ext4_small = cal._cold_small_files(native)
    os.sync()
    cal._cold_small_all(meas, "ext4", ext4_small, procs)
    cal._cold_small_all(meas, "overlay1", [mnt + p[len(lower):] for p in small_lower], procs, ref=ext4_small)
    arc = cal.zfs_arc_max_bytes()
    for d in ("btrfs", "zfs"):
        if d in real.skipped:
            print(f"{d} skipped: {real.skipped[d]}")
            continue
        real.n += 1
        root = real.create(d, real.n)
        try:
            small = cal._cold_small_files(root)
            os.sync()
            big = cal.image_big_files(root)
            fresh, unfresh = cal._fresh_copies(real, d, real.n, root)
            evicted: list = []
            before = (lambda: evicted.append(cal.evict_arc(big, arc))) if d == "zfs" else None
            try:
                cal._cold_small_all(meas, d, small, procs, fresh, before=before, ref=ext4_small)
                if evicted:
                    meas["zfs.cold_small.evicted_bytes"] = min(evicted)
            finally:
                cal._removed(print, unfresh)
        finally:
            cal._removed(print, real.remove, d, real.n)
    for k, v in sorted(meas.items()):
        print(f"{k}: " + (" ".join(f"{x:.3f}" for x in v) if isinstance(v, list)
                          else f"{v:.4g}" if "rel" in k or "bytes" in k else f"{v * 1e6:.1f} us"), flush=True)
    return meas


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", help="comma-separated, of " + ",".join(PARTS))
    ap.add_argument("--into", required=True, metavar="TOML", help="a thinp calibrate file")
    ap.add_argument("--out", required=True, metavar="TOML")
    ap.add_argument("--ops", type=int, default=250, help="ops per zfs benchmark run (calibrate: 250)")
    a = ap.parse_args(argv)
    parts = a.parts.split(",")
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"probe_calibrate_parts: bad part {bad[0]!r}", file=sys.stderr)
        return 2
    from thinp.cost import toml_load

    data = toml_load(a.into)
    meas = dict(data.get("calibration", {}).get("measured_s", {}))
    ok, why = vt.available()
    if not ok:
        print(f"probe_calibrate_parts: the real side cannot run here: {why}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "6G" if "cold-small" in parts else "3G")
        if "copy-up" in parts:
            meas.update(copy_up(stack, base))
        if "cold-small" in parts:
            meas.update(cold_small(stack, base))
        if "zfs-busy" in parts:
            busy, lone = zfs_busy(stack, base, a.ops)
            meas.update(busy)
            for k, v in lone.items():
                if k in meas:
                    print(f"  {k}: the file's {meas[k] * 1e6:.1f} us, here {v * 1e6:.1f} us")
    print(f"measured in {time.perf_counter() - t0:.1f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    cal.write(a.out, {"timing": data.get("timing", {}), "device": data.get("device", {}),
                      "calibration": {**data.get("calibration", {}), "measured_s": meas}})
    cal.refit(a.out, a.out)
    print(f"wrote {a.out} (measurements of {a.into} and these, fitted again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
