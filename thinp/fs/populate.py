"""Workloads that run the same way on a simulated filesystem and on a real mount.

A workload is a function ``(target) -> None`` over the target protocol of
:mod:`thinp.validate.target` (``mkdir``, ``write_file``, ``symlink``,
``link``, ``mknod``, ``chmod``, ``chown``, ``unlink``, ``rmtree``, ``sync``,
``fstrim``): ``SimTarget`` drives a :class:`~thinp.fs.Filesystem` or a
driver's view, ``RealDir`` a directory on a real mount.

* ``mkfs``: nothing;
* ``file100m``: one 100 MiB file;
* ``rootfs``: the Debian bookworm minbase manifest (6,668 entries), in
  manifest order, hard links as links, devices as device nodes;
* ``smallfiles``: 10,000 files of 1 B to 8 KiB in 100 directories;
* ``churn``: the rootfs, then ``rm -rf usr/share``; ``churn_trim``: then fstrim.
"""
from __future__ import annotations

import csv
import gzip
import os
import stat as _stat
from pathlib import Path

ROOTFS_MANIFEST = "rootfs/debian-bookworm-minbase.csv.gz"


def fixtures_dir() -> Path:
    """``<repo root>/../shared/fixtures`` (or ``$THINP_FIXTURES``)."""
    env = os.environ.get("THINP_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


def load_manifest(path=None) -> list[dict]:
    """Rows of a rootfs manifest CSV(.gz): path,type,size,mode,uid,gid,nlink,inode_group,target,xattrs."""
    path = Path(path) if path else fixtures_dir() / ROOTFS_MANIFEST
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["size"] = int(r["size"] or 0)
        r["mode"] = int(r["mode"], 8) if r["mode"].startswith("0o") else int(r["mode"] or "0", 8)
        r["uid"] = int(r["uid"] or 0)
        r["gid"] = int(r["gid"] or 0)
    return rows


# ---------------------------------------------------------------------------
def wl_mkfs(t) -> None:
    """Nothing beyond mkfs."""


def wl_file100m(t) -> None:
    t.write_file("f", 100 << 20, seed=1)


def wl_rootfs(t, rows=None) -> None:
    rows = load_manifest() if rows is None else rows
    first_of_group: dict[str, str] = {}
    for i, r in enumerate(rows):
        p, kind = r["path"], r["type"]
        if p.startswith("./"):
            p = p[2:]
        if not p or p == ".":
            continue
        if kind == "d":
            t.mkdir(p, _stat.S_IMODE(r["mode"]))
        elif kind == "f":
            g = r["inode_group"]
            if g and g in first_of_group:
                t.link(first_of_group[g], p)
                continue
            t.write_file(p, r["size"], seed=i)
            if g:
                first_of_group[g] = p
            t.chmod(p, _stat.S_IMODE(r["mode"]))
        elif kind == "l":
            t.symlink(r["target"], p)
        elif kind == "c":
            maj, _, mnr = (r["target"] or "0:0").partition(":")
            t.mknod(p, _stat.S_IFCHR | _stat.S_IMODE(r["mode"]), os.makedev(int(maj), int(mnr or 0)))
        elif kind == "p":
            t.mknod(p, _stat.S_IFIFO | _stat.S_IMODE(r["mode"]), 0)
        else:
            continue
        if r["uid"] or r["gid"]:
            t.chown(p, r["uid"], r["gid"])


def smallfile_size(i: int) -> int:
    return 1 + (i * 2654435761) % 8192


def wl_smallfiles(t, n: int = 10000, per_dir: int = 100) -> None:
    for d in range(-(-n // per_dir)):
        t.mkdir(f"d{d:03d}")
    for i in range(n):
        t.write_file(f"d{i // per_dir:03d}/f{i:05d}", smallfile_size(i), seed=i)


def wl_churn(t) -> None:
    """The rootfs, then ``rm -rf usr/share`` (no discard: blocks stay provisioned)."""
    wl_rootfs(t)
    t.sync()
    t.rmtree("usr/share")
    t.sync()


def wl_churn_trim(t) -> None:
    """``churn``, then ``fstrim``."""
    wl_churn(t)
    t.fstrim()


WORKLOADS = {
    "mkfs": wl_mkfs,
    "file100m": wl_file100m,
    "rootfs": wl_rootfs,
    "smallfiles": wl_smallfiles,
    "churn": wl_churn,
    "churn_trim": wl_churn_trim,
}
