"""Calibrate the simulated filesystems against the real kernel.

For each (fstype, size, mkfs options, workload):

1. make a sparse file, ``losetup`` it, run the real ``mkfs``, ``mount``;
2. apply the workload (:mod:`.workloads`) under the mount point;
3. ``umount``;
4. scan the backing file for the set of 4 KiB blocks that hold data;
5. run the same workload on a simulated filesystem over a :class:`PlainDevice`
   and compare bytes and 64 KiB / 512 KiB chunks touched (what a thin pool
   with that block size would provision).

The scan uses FIEMAP, which lists allocated extents including *unwritten*
ones: mke2fs and mkfs.xfs zero the journal and inode tables with
write-zeroes, which a loop device turns into unwritten extents of the backing
file.  ``du`` counts those, and a thin pool provisions them (dm-thin has no
write-zeroes, so the kernel falls back to writing zeroes), but
``SEEK_DATA``/``SEEK_HOLE`` reports them as holes.  Where FIEMAP is refused
the harness falls back to the SEEK_DATA/SEEK_HOLE scan and says so in the row.

Every loop device and mount made here is released in ``finally`` blocks, by
its own name.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
from contextlib import contextmanager

from ..blockdev import PHYS_BLOCK, PlainDevice, count_chunks
from ..fs import mkfs as sim_mkfs
from ..fs.populate import NEEDS_MANIFEST, WORKLOADS
from .fixtures import ROOTFS_MANIFEST, fixtures_dir, rootfs_rows
from .target import RealDir, SimTarget, can_mount

__all__ = ["validate_fs", "format_table", "DOCKER_EXT4", "DEFAULT_CONFIGS", "calibration_rows", "CALIBRATION", "real_kernel_available",
           "scan_allocated", "scan_seek_data", "run_real", "run_sim"]

KiB = 1024

#: SOURCES.md: du -k of the backing file (KiB) after mkfs, +100 MiB file, rm, fstrim.
CALIBRATION = [
    ("ext4", "10G", {}, (69868, 172272, 172272, 69808)),
    ("ext4", "10G", {"lazy_itable_init": False, "lazy_journal_init": False}, (233704, 336108, 336108, 233644)),
    ("ext4", "100G", {}, (529544, None, None, None)),
    ("xfs", "10G", {}, (65868, 168236, None, 65684)),
    ("xfs", "100G", {}, (65868, 168236, None, 65684)),
]
STAGES = ("mkfs", "+100MiB", "rm", "fstrim")


# -- scanning a backing file ----------------------------------------------------
_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1


def _blocks_from_ranges(ranges, nr_blocks):
    from bitarray import bitarray

    ba = bitarray(nr_blocks)
    ba.setall(0)
    for b, e in ranges:
        ba[b // PHYS_BLOCK:min(nr_blocks, -(-e // PHYS_BLOCK))] = 1
    return ba


def scan_allocated(path):
    """Bitarray of 4 KiB blocks of ``path`` that are allocated (FIEMAP, incl. unwritten)."""
    size = os.path.getsize(path)
    ranges = []
    start = 0
    n = 256
    with open(path, "rb") as f:
        while True:
            buf = bytearray(struct.pack("=QQLLLL", start, (1 << 64) - 1 - start, _FIEMAP_FLAG_SYNC, 0, n, 0) + bytes(56 * n))
            fcntl.ioctl(f.fileno(), _FS_IOC_FIEMAP, buf)
            cnt = struct.unpack_from("=L", buf, 20)[0]
            if cnt == 0:
                break
            last = False
            for i in range(cnt):
                lo, _ph, ln, _r1, _r2, fl = struct.unpack_from("=QQQQQL", buf, 32 + 56 * i)
                ranges.append((lo, lo + ln))
                last |= bool(fl & _FIEMAP_EXTENT_LAST)
            if last:
                break
            start = ranges[-1][1]
    return _blocks_from_ranges(ranges, size // PHYS_BLOCK)


def scan_seek_data(path):
    """Bitarray of 4 KiB blocks of ``path`` inside SEEK_DATA..SEEK_HOLE ranges."""
    size = os.path.getsize(path)
    ranges = []
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            ranges.append((d, h))
            off = h
    finally:
        os.close(fd)
    return _blocks_from_ranges(ranges, size // PHYS_BLOCK)


def summarize(ba) -> dict:
    return {"kib": ba.count(1) * PHYS_BLOCK // KiB, "chunks_64k": count_chunks(ba, 64 * KiB),
            "chunks_512k": count_chunks(ba, 512 * KiB)}


# -- the real kernel -------------------------------------------------------------
def real_kernel_available() -> tuple[bool, str]:
    """(True, "") when this process can losetup, mkfs and mount; else (False, reason)."""
    return can_mount(tools=("mkfs.ext4", "mkfs.xfs"), what="losetup and mount")


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[:300]}")
    return r.stdout


def _mkfs_cmd(fstype, options, dev):
    if fstype == "ext4":
        ext = []
        for k in ("lazy_itable_init", "lazy_journal_init"):
            if k in options:
                ext.append(f"{k}={int(bool(options[k]))}")
        if options.get("nodiscard"):
            ext.append("nodiscard")
        cmd = ["mkfs.ext4", "-q", "-F"]
        if ext:
            cmd += ["-E", ",".join(ext)]
        if "inode_ratio" in options:
            cmd += ["-i", str(options["inode_ratio"])]
        return cmd + [dev]
    cmd = ["mkfs.xfs", "-q", "-f"]
    if "agcount" in options:
        cmd += ["-d", f"agcount={options['agcount']}"]
    if options.get("nodiscard"):
        cmd += ["-K"]
    return cmd + [dev]


@contextmanager
def real_fs(fstype, size, options=None, workdir=None):
    """Yield (image path, loop device, mount point) of a freshly made real fs.

    On exit: unmount (if mounted), detach the loop device, delete the image.
    """
    from ..units import parse_size

    size = parse_size(size)
    tmp = tempfile.mkdtemp(prefix="thinp-validate-", dir=workdir)
    img = os.path.join(tmp, "disk.img")
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(size)
    loop = None
    state = {"mounted": False}
    try:
        loop = _run(["losetup", "-f", "--show", img]).strip()
        _run(_mkfs_cmd(fstype, options or {}, loop))

        def mount(extra=()):
            _run(["mount", *extra, loop, mnt])
            state["mounted"] = True

        def umount():
            if state["mounted"]:
                _run(["umount", mnt])
                state["mounted"] = False

        yield img, loop, mnt, mount, umount
    finally:
        try:
            if state["mounted"]:
                subprocess.run(["umount", mnt], capture_output=True)
        finally:
            if loop:
                subprocess.run(["losetup", "-d", loop], capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)


def _workload(name):
    """:mod:`~thinp.fs.populate`'s workload ``name`` as a function of the
    target; the rootfs ones lay out the fixtures' Debian minbase manifest."""
    fn = WORKLOADS[name]
    if name not in NEEDS_MANIFEST:
        return fn
    rows = rootfs_rows()
    if rows is None:
        raise RuntimeError(f"workload {name}: {fixtures_dir() / ROOTFS_MANIFEST} missing")
    return lambda t: fn(t, rows)


def run_real(fstype, size, options, workload, *, workdir=None, scan="fiemap") -> dict:
    """Run ``workload`` on the real kernel; the summary of the backing file's blocks."""
    with real_fs(fstype, size, options, workdir) as (img, _loop, mnt, mount, umount):
        mount(("-o", "discard") if (options or {}).get("discard") else ())
        _workload(workload)(RealDir(mnt))
        os.sync()
        umount()
        try:
            ba = scan_allocated(img) if scan == "fiemap" else scan_seek_data(img)
            how = scan
        except OSError:
            ba, how = scan_seek_data(img), "seek_data"
        out = summarize(ba)
        out["scan"] = how
        return out


def run_sim(fstype, size, options, workload) -> dict:
    dev = PlainDevice(size)
    fs = sim_mkfs(dev, fstype, **(options or {}))
    _workload(workload)(SimTarget(fs))
    fs.umount()
    return summarize(dev.allocated_blocks())


def _pct(sim, real):
    if real in (None, 0) or sim is None:
        return None
    return 100.0 * (sim - real) / real


#: Docker devicemapper's mkfs.ext4 options.
DOCKER_EXT4 = {"nodiscard": True, "lazy_itable_init": False, "lazy_journal_init": False}
DEFAULT_CONFIGS = (("ext4", {}), ("ext4", DOCKER_EXT4), ("xfs", {}))


def validate_fs(fstypes=None, workloads=("mkfs", "file100m", "rootfs", "smallfiles"),
                size="10G", options=None, *, configs=None, real=True, workdir=None) -> list[dict]:
    """Side-by-side rows of real vs simulated allocation, one per (config, workload).

    ``configs`` is a sequence of (fstype, mkfs options); by default ext4 with
    mkfs defaults, ext4 with Docker devicemapper's options, and xfs.  Or give
    ``fstypes`` (and ``options``: fstype -> options) instead.  With
    ``real=False``, or where the machine refuses, the real columns are None
    and ``note`` says why.
    """
    if configs is None:
        if fstypes is None:
            configs = DEFAULT_CONFIGS
        else:
            configs = [(f, (options or {}).get(f, {})) for f in fstypes]
    ok, why = real_kernel_available() if real else (False, "real runs not requested")
    if "rootfs" in workloads and not (fixtures_dir() / ROOTFS_MANIFEST).exists():
        workloads = tuple(w for w in workloads if w != "rootfs")
        why = (why + "; " if why else "") + f"rootfs skipped: {fixtures_dir() / ROOTFS_MANIFEST} missing"
    rows = []
    for fstype, opts in configs:
        for wl in workloads:
            sim = run_sim(fstype, size, opts, wl)
            row = {"fs": fstype, "size": size, "options": dict(opts), "workload": wl,
                   "sim_kib": sim["kib"], "sim_64k": sim["chunks_64k"], "sim_512k": sim["chunks_512k"],
                   "real_kib": None, "real_64k": None, "real_512k": None, "note": why}
            if ok:
                try:
                    r = run_real(fstype, size, opts, wl, workdir=workdir)
                    row.update(real_kib=r["kib"], real_64k=r["chunks_64k"], real_512k=r["chunks_512k"],
                               note="" if r["scan"] == "fiemap" else "SEEK_DATA scan (FIEMAP refused)")
                except RuntimeError as e:
                    row["note"] = str(e)
            row["err_64k_pct"] = _pct(row["sim_64k"], row["real_64k"])
            row["err_kib_pct"] = _pct(row["sim_kib"], row["real_kib"])
            rows.append(row)
    return rows


def calibration_rows() -> list[dict]:
    """Simulated figures for every row of SOURCES.md's table, beside the real ones."""
    rows = []
    for fstype, size, opts, real in CALIBRATION:
        dev = PlainDevice(size)
        fs = sim_mkfs(dev, fstype, **opts)
        got = [dev.physical_bytes // KiB]
        fs.write("f", 0, 100 << 20)
        fs.umount()
        got.append(dev.physical_bytes // KiB)
        fs.unlink("f")
        fs.umount()
        got.append(dev.physical_bytes // KiB)
        fs.fstrim()
        fs.umount()
        got.append(dev.physical_bytes // KiB)
        for stage, r, s in zip(STAGES, real, got):
            if r is not None:
                rows.append({"fs": fstype, "size": size, "options": opts, "workload": stage,
                             "real_kib": r, "sim_kib": s, "err_kib_pct": _pct(s, r)})
    return rows


def format_table(rows) -> str:
    """A plain-text side-by-side table of :func:`validate_fs` or :func:`calibration_rows` rows."""
    cols = [("fs", "fs"), ("size", "size"), ("options", "options"), ("workload", "workload"),
            ("real_kib", "real KiB"), ("sim_kib", "sim KiB"), ("err_kib_pct", "err %"),
            ("real_64k", "real 64K"), ("sim_64k", "sim 64K"), ("err_64k_pct", "err %"),
            ("real_512k", "real 512K"), ("sim_512k", "sim 512K"), ("note", "note")]
    cols = [c for c in cols if any(c[0] in r for r in rows)]

    def cell(r, k):
        v = r.get(k)
        if v is None:
            return "-"
        if k == "options":
            short = {"lazy_itable_init": "itable", "lazy_journal_init": "journal"}
            return ",".join(k if b is True and k == "nodiscard" else f"{short.get(k, k)}={int(b) if isinstance(b, bool) else b}"
                            for k, b in v.items()) or "default"
        if isinstance(v, float):
            return f"{v:+.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    table = [[h for _k, h in cols]] + [[cell(r, k) for k, _h in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    text_cols = {"fs", "options", "workload", "note"}
    lines = []
    for j, row in enumerate(table):
        lines.append("  ".join(c.rjust(w) if j and cols[i][0] not in text_cols else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m thinp.validate.fs [--sim-only]``: print both tables."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    print("SOURCES.md reference figures (du -k of the backing file):")
    print(format_table(calibration_rows()))
    print()
    print("Real kernel vs simulation, 10 GiB (itable/journal = lazy_*_init):")
    print(format_table(validate_fs(real="--sim-only" not in argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
