"""The btrfs and zfs driver models against the real thing on this machine.

:func:`validate_block_drivers` runs each scenario twice -- on a real btrfs
(a sparse file on a loop device: subvolume snapshots, ``btrfs qgroup show``,
``btrfs filesystem du``) or a real zfs-fuse pool on a sparse file, and on
the simulated driver -- and returns rows ``{driver, scenario, metric, real,
sim, err_pct, note}`` for ``thinp validate drivers``.  Where the machine
refuses (not root, no loop devices, no zfs-fuse) the real column is None and
``note`` says why.

Everything started here -- loop devices, mounts, the zfs-fuse daemon and its
pool -- is released in ``finally`` blocks by its own name or pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager

from .target import RealDir, SimTarget, can_mount

#: seconds a killed real-side tool is given to exit before it is left behind
KILL_GRACE_S = 5.0


def run_bounded(cmd, timeout: float):
    """``(returncode, stdout, stderr)`` of ``cmd``, or None when it did not
    finish in ``timeout`` seconds: it is then killed by its own pid and given
    :data:`KILL_GRACE_S` to exit; one that does not (uninterruptible sleep,
    a client of a wedged zfs-fuse daemon) is left behind, not waited for."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        try:
            p.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            for f in (p.stdout, p.stderr):
                f.close()
        return None
    return p.returncode, out, err

__all__ = ["validate_block_drivers", "format_rows", "btrfs_available", "zfs_available", "real_btrfs", "real_zfs"]

MiB = 1 << 20


def _run(cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[:300]}")
    return r.stdout


def btrfs_available() -> tuple[bool, str]:
    return can_mount(tools=("mkfs.btrfs", "btrfs"), fstype="btrfs", what="losetup and mount")


def zfs_available() -> tuple[bool, str]:
    return can_mount(tools=("zfs-fuse", "zpool", "zfs"), loop=False, fuse=True, what="zfs-fuse")


@contextmanager
def real_btrfs(size="10G", workdir=None):
    """Yield the mount point of a fresh btrfs with quotas on; clean up after."""
    tmp = tempfile.mkdtemp(prefix="thinp-btrfs-", dir=workdir)
    img, mnt = os.path.join(tmp, "disk.img"), os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(__import__("thinp.units", fromlist=["parse_size"]).parse_size(size))
    loop = None
    mounted = False
    try:
        loop = _run(["losetup", "-f", "--show", img]).strip()
        _run(["mkfs.btrfs", "-q", "-f", loop])
        _run(["mount", loop, mnt])
        mounted = True
        _run(["btrfs", "quota", "enable", mnt])
        yield mnt
    finally:
        try:
            if mounted:
                subprocess.run(["umount", mnt], capture_output=True)
        finally:
            if loop:
                subprocess.run(["losetup", "-d", loop], capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)


def _qgroups(mnt) -> dict:
    _run(["sync"])
    _run(["btrfs", "quota", "rescan", "-w", mnt])
    out = {}
    for line in _run(["btrfs", "qgroup", "show", "--raw", mnt]).splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].startswith("0/") and parts[1].isdigit():
            out[parts[3]] = (int(parts[1]), int(parts[2]))
    return out


def _fi_du(path) -> tuple[int, int]:
    for line in _run(["btrfs", "filesystem", "du", "--raw", path]).splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            return int(parts[0]), int(parts[1])
    raise RuntimeError(f"no btrfs fi du line for {path}")


def _write(path, offset, nbytes, *, create=False):
    flags = os.O_WRONLY | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, os.urandom(nbytes), offset)
    finally:
        os.close(fd)


def btrfs_scenario_real(extra_files: int, workdir=None, late: bool = False) -> dict:
    with real_btrfs(workdir=workdir) as mnt:
        _run(["btrfs", "subvolume", "create", f"{mnt}/base"])
        _write(f"{mnt}/base/f", 0, MiB, create=True)
        if late:   # an earlier snapshot, then the files: base's leaves are CoWed copies
            _run(["sync"])
            _run(["btrfs", "subvolume", "snapshot", f"{mnt}/base", f"{mnt}/early"])
        for i in range(extra_files):
            with open(f"{mnt}/base/small{i}", "w") as f:
                f.write("x\n")
        _run(["sync"])
        _run(["btrfs", "subvolume", "snapshot", f"{mnt}/base", f"{mnt}/snap"])
        _run(["sync"])
        q0 = _qgroups(mnt)
        _write(f"{mnt}/snap/f", 10 * 4096, 4096)
        q1 = _qgroups(mnt)
        total, excl = _fi_du(f"{mnt}/snap/f")
        return {"snap_excl_after_snapshot": q0["snap"][1], "snap_referenced": q1["snap"][0],
                "snap_exclusive": q1["snap"][1], "fi_du_total": total, "fi_du_exclusive": excl}


def btrfs_scenario_sim(extra_files: int, late: bool = False) -> dict:
    from ..drivers.btrfs import BtrfsDriver

    d = BtrfsDriver()
    d.create("base", None, read_write=True)
    v = d.get("base")
    v.write("/f", 0, os.urandom(MiB))
    if late:
        d.put("base")
        d.create("early", "base")
        v = d.get("base")
    for i in range(extra_files):
        v.write(f"/small{i}", 0, b"x\n")
    d.put("base")
    d.create("snap", "base", read_write=True)
    q0 = d.qgroup("snap")
    v = d.get("snap")
    v.write("/f", 10 * 4096, os.urandom(4096))
    d.put("snap")
    q1 = d.qgroup("snap")
    du = d.filesystem_du("snap", "/f")
    return {"snap_excl_after_snapshot": q0["exclusive"], "snap_referenced": q1["referenced"],
            "snap_exclusive": q1["exclusive"], "fi_du_total": du["total"], "fi_du_exclusive": du["exclusive"]}


@contextmanager
def real_zfs(workdir=None, size="1G", daemon_args=()):
    """Yield (pool name, mount root) of a zfs-fuse pool on a sparse file; on
    exit destroy the pool and stop the daemon this started (``daemon_args``:
    more zfs-fuse options)."""
    tmp = tempfile.mkdtemp(prefix="thinp-zfs-", dir=workdir)
    disk, mnt, pidfile = os.path.join(tmp, "disk"), os.path.join(tmp, "mnt"), os.path.join(tmp, "zfs.pid")
    with open(disk, "wb") as f:
        f.truncate(__import__("thinp.units", fromlist=["parse_size"]).parse_size(size))
    pool = f"thinpv{os.getpid()}"
    proc = subprocess.Popen(["zfs-fuse", "-n", "--pidfile", pidfile, "--no-kstat-mount", *daemon_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    created = False
    try:
        for _ in range(50):
            if subprocess.run(["zpool", "list"], capture_output=True).returncode == 0:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"zfs-fuse exited with {proc.returncode}")
            time.sleep(0.2)
        else:
            raise RuntimeError("zfs-fuse did not answer within 10 s")
        _run(["zpool", "create", "-f", "-m", mnt, pool, disk])
        created = True
        yield pool, mnt
    finally:
        try:
            if created:
                for _ in range(5):
                    # a hung daemon answers no more: it is stopped below (a
                    # client stuck on it is killed by its pid and, if it
                    # sleeps uninterruptibly, left rather than waited for)
                    r = run_bounded(["zpool", "destroy", "-f", pool], 60)
                    if r is None or r[0] == 0:
                        break
                    time.sleep(1)
        finally:
            try:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass            # (our daemon, killed; the unmount below still runs)
            finally:
                # what a killed daemon left mounted below the root, deepest first
                for m in sorted(mounts_at_or_below(mnt), key=len, reverse=True):
                    run_bounded(["umount", "-l", m], 60)
                shutil.rmtree(tmp, ignore_errors=True)


def _mount_table() -> list[tuple[str, str]]:
    """``(source, mount point)`` of every mount, from the mount table (read,
    not stat'ed: a wedged FUSE daemon's mount would hang a stat)."""
    with open("/proc/self/mounts") as f:
        return [(x[0], x[1]) for x in (ln.split() for ln in f) if len(x) > 1]


def mounts_at_or_below(root: str) -> list[str]:
    """The mount points at ``root`` or below it, from the mount table."""
    return [m for _s, m in _mount_table() if m == root or m.startswith(root + "/")]


def device_at(mnt: str) -> str | None:
    """The name of the block device (``loop3``) mounted at ``mnt``, None
    where none is."""
    return next((os.path.basename(s) for s, m in _mount_table() if m == mnt and s.startswith("/dev/")),
                None)


def _zused(name) -> int:
    return int(_run(["zfs", "get", "-H", "-p", "-o", "value", "used", name]).strip())


def zfs_scenario_real(recordsize="128K", workdir=None) -> dict:
    with real_zfs(workdir=workdir) as (pool, mnt):
        _run(["zfs", "create", "-o", f"recordsize={recordsize}", f"{pool}/base"])
        _write(f"{mnt}/base/f", 0, MiB, create=True)
        _run(["zfs", "snapshot", f"{pool}/base@s"])
        _run(["zfs", "clone", f"{pool}/base@s", f"{pool}/clone"])
        base_used = _zused(f"{pool}/base")
        _write(f"{mnt}/clone/f", 10 * 4096, 4096)
        _run(["sync"])
        _run(["zfs", "snapshot", f"{pool}/clone@sync"])   # forces the txg out
        return {"base_used": base_used, "clone_used": _zused(f"{pool}/clone")}


def zfs_scenario_sim(recordsize="128K") -> dict:
    from ..drivers.zfs import ZfsDriver

    d = ZfsDriver(recordsize=recordsize)
    d.create("base", None, read_write=True)
    v = d.get("base")
    v.write("/f", 0, os.urandom(MiB))
    d.put("base")
    d.create("clone", "base", read_write=True)
    base_used = d.used("base")
    v = d.get("clone")
    v.write("/f", 10 * 4096, os.urandom(4096))
    d.put("clone")
    return {"base_used": base_used, "clone_used": d.used("clone")}


def _rows(driver, scenario, sim, real, note):
    rows = []
    for metric, s in sim.items():
        r = real.get(metric) if real else None
        err = None if r in (None, 0) else 100.0 * (s - r) / r
        rows.append({"driver": driver, "scenario": scenario, "metric": metric, "real": r, "sim": s,
                     "err_pct": err, "note": note})
    return rows


def validate_block_drivers(real: bool = True, workdir=None, rootfs: bool = True) -> list[dict]:
    """Rows comparing the btrfs and zfs models with the real systems (and,
    with ``rootfs``, the Debian rootfs workload on btrfs)."""
    rows = []
    ok, why = btrfs_available() if real else (False, "real runs not requested")
    for extra, late, name in ((0, False, "snapshot + 4 KiB overwrite of a 1 MiB file (one-leaf tree)"),
                              (300, False, "same, 300 more files (two-level tree)"),
                              (300, True, "same, the 300 files added after an earlier snapshot")):
        sim = btrfs_scenario_sim(extra, late)
        r, note = None, why
        if ok:
            try:
                r, note = btrfs_scenario_real(extra, workdir, late), ""
            except RuntimeError as e:
                note = str(e)
        rows += _rows("btrfs", name, sim, r, note)
    ok, why = zfs_available() if real else (False, "real runs not requested")
    for rs in ("128K", "16K"):
        sim = zfs_scenario_sim(rs)
        r, note = None, why
        if ok:
            try:
                r, note = zfs_scenario_real(rs, workdir), ""
            except RuntimeError as e:
                note = str(e)
        rows += _rows("zfs", f"clone + 4 KiB overwrite of a 1 MiB file, recordsize={rs}", sim, r, note)
    if rootfs:
        rows += validate_block_rootfs(real, workdir)
    rows += devicemapper_rows()
    return rows


def devicemapper_rows() -> list[dict]:
    """dm-thin is not in this kernel: the devicemapper pool after mkfs of its
    base device against SOURCES.md's du of the same mkfs on a loop file
    (what a thin pool provisions, in its 64 KiB blocks)."""
    import tempfile as _tf

    from ..drivers.devicemapper import DeviceMapperDriver

    rows = []
    for fs, real_kib in (("xfs", 65868), ("ext4", 233704)):
        with _tf.TemporaryDirectory(prefix="thinp-dmv-") as d:
            drv = DeviceMapperDriver(d, fs=fs)
            try:
                sim = drv.stats()["physical_bytes"]
            finally:
                drv.cleanup()
        rows += _rows("devicemapper", f"base device 10 GiB, mkfs.{fs} (Docker's options)",
                      {"pool_data_bytes": sim}, {"pool_data_bytes": real_kib * 1024},
                      "real = SOURCES.md du of the loop file (dm-thin is not in this kernel)")
    return rows


def format_rows(rows) -> str:
    head = ("driver", "scenario", "metric", "real", "sim", "err %", "note")
    table = [head]
    for r in rows:
        table.append((r["driver"], r["scenario"], r["metric"],
                      "-" if r["real"] is None else f"{r['real']:,}", f"{r['sim']:,}",
                      "-" if r["err_pct"] is None else f"{r['err_pct']:+.1f}", r["note"] or ""))
    w = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in table)


# ----------------------------------------------------------- the rootfs workload
def _rootfs_rows():
    from .fixtures import rootfs_rows

    return rootfs_rows()


def _victims(rows, n=100):
    """The first ``n`` regular files of at least 64 KiB (not hard links)."""
    seen, out = set(), []
    for r in rows:
        if r["type"] == "f" and r["size"] >= 65536 and not (r["inode_group"] and r["inode_group"] in seen):
            out.append(r["path"].lstrip("./") if r["path"].startswith("./") else r["path"])
        if r["inode_group"]:
            seen.add(r["inode_group"])
        if len(out) == n:
            break
    return out


def _fi_df(mnt) -> dict:
    out = {}
    for line in _run(["btrfs", "filesystem", "df", "-b", mnt]).splitlines():
        kind = line.split(",")[0].strip()
        used = int(line.rsplit("used=", 1)[1].strip()) if "used=" in line else 0
        out[kind] = used
    return out


def btrfs_rootfs_real(rows, workdir=None) -> dict:
    from ..fs.populate import wl_rootfs

    with real_btrfs(workdir=workdir) as mnt:
        _run(["btrfs", "subvolume", "create", f"{mnt}/base"])
        wl_rootfs(RealDir(f"{mnt}/base"), rows)
        _run(["sync"])
        df0 = _fi_df(mnt)
        _run(["btrfs", "subvolume", "snapshot", f"{mnt}/base", f"{mnt}/snap"])
        for p in _victims(rows):
            _write(f"{mnt}/snap/{p}", 8192, 4096)
        q = _qgroups(mnt)
        return {"data_used_after_rootfs": df0.get("Data", 0), "metadata_used_after_rootfs": df0.get("Metadata", 0),
                "base_referenced": q["base"][0], "snap_exclusive_after_100_writes": q["snap"][1]}


def btrfs_rootfs_sim(rows) -> dict:
    from ..fs.populate import wl_rootfs
    from ..drivers.btrfs import NODESIZE, BtrfsDriver, item_bytes, tree_shape

    d = BtrfsDriver()
    d.create("base", None, read_write=True)
    wl_rootfs(SimTarget(d.get("base"), d.sync), rows)
    d.put("base")
    data = d.store.units_used * d.unit_bytes
    base = d.layers["base"]
    meta = tree_shape(item_bytes(base.fs, base.trees), d.leaf_fill)[1] * NODESIZE
    d.create("snap", "base", read_write=True)
    v = d.get("snap")
    for p in _victims(rows):
        v.write("/" + p, 8192, 4096)
    d.put("snap")
    return {"data_used_after_rootfs": data, "metadata_used_after_rootfs": meta,
            "base_referenced": d.qgroup("base")["referenced"],
            "snap_exclusive_after_100_writes": d.qgroup("snap")["exclusive"]}


def validate_block_rootfs(real: bool = True, workdir=None) -> list[dict]:
    """The Debian minbase rootfs in a btrfs subvolume, a snapshot, 4 KiB
    overwrites in 100 of its files: real btrfs vs the model."""
    rows = _rootfs_rows()
    if rows is None:
        return []
    ok, why = btrfs_available() if real else (False, "real runs not requested")
    sim = btrfs_rootfs_sim(rows)
    r, note = None, why
    if ok:
        try:
            r, note = btrfs_rootfs_real(rows, workdir), ""
        except RuntimeError as e:
            note = str(e)
    return _rows("btrfs", "Debian rootfs subvolume, snapshot, 4 KiB into 100 files", sim, r, note)
