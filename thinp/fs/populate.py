"""Workloads that run the same way on a simulated filesystem and on a real mount.

A workload is a function ``(target) -> None`` over the target protocol of
:mod:`thinp.validate.target` (``mkdir``, ``write_file``, ``symlink``,
``link``, ``mknod``, ``chmod``, ``chown``, ``unlink``, ``rmtree``, ``sync``,
``fstrim``): ``SimTarget`` drives a :class:`~thinp.fs.Filesystem` or a
driver's view, ``RealDir`` a directory on a real mount.

* ``mkfs``: nothing;
* ``file100m``: one 100 MiB file;
* ``rootfs``: a rootfs manifest's entries (the Debian bookworm minbase
  fixture has 6,668), in manifest order, hard links as links, devices as
  device nodes;
* ``smallfiles``: 10,000 files of 1 B to 8 KiB in 100 directories;
* ``churn``: the rootfs, then ``rm -rf usr/share``; ``churn_trim``: then fstrim.

The rootfs workloads (:data:`NEEDS_MANIFEST`) take the manifest's rows from
their caller as a second argument: this module reads no files.
"""
from __future__ import annotations

import os
import stat as _stat


# ---------------------------------------------------------------------------
def wl_mkfs(t) -> None:
    """Nothing beyond mkfs."""


def wl_file100m(t) -> None:
    t.write_file("f", 100 << 20, seed=1)


def wl_rootfs(t, rows) -> None:
    """The entries of a rootfs manifest (``rows`` as
    :func:`thinp.validate.fixtures.load_manifest` reads them), in order."""
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


def wl_churn(t, rows) -> None:
    """The rootfs, then ``rm -rf usr/share`` (no discard: blocks stay provisioned)."""
    wl_rootfs(t, rows)
    t.sync()
    t.rmtree("usr/share")
    t.sync()


def wl_churn_trim(t, rows) -> None:
    """``churn``, then ``fstrim``."""
    wl_churn(t, rows)
    t.fstrim()


WORKLOADS = {
    "mkfs": wl_mkfs,
    "file100m": wl_file100m,
    "rootfs": wl_rootfs,
    "smallfiles": wl_smallfiles,
    "churn": wl_churn,
    "churn_trim": wl_churn_trim,
}

#: the workloads called as ``(target, rows)``: they lay out a rootfs manifest's rows
NEEDS_MANIFEST = frozenset({"rootfs", "churn", "churn_trim"})
