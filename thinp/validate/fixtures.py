"""The fixtures the validations read: ``../shared/fixtures`` beside a source
checkout (or ``$THINP_FIXTURES``).

Only validation and tests read them.  No feature of the package may: a fresh
clone or a ``pip install`` has no ``../shared``, so the workloads of
:mod:`thinp.fs.populate` take the manifest rows from their caller, and the
data the built-in scenarios need ships inside the package.
"""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

#: the Debian bookworm minbase rootfs manifest, below :func:`fixtures_dir`
ROOTFS_MANIFEST = "rootfs/debian-bookworm-minbase.csv.gz"


def fixtures_dir() -> Path:
    """``<repo root>/../shared/fixtures`` (or ``$THINP_FIXTURES``)."""
    env = os.environ.get("THINP_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


def load_manifest(path=None) -> list[dict]:
    """Rows of a rootfs manifest CSV(.gz) (default: the fixtures' Debian
    minbase): path,type,size,mode,uid,gid,nlink,inode_group,target,xattrs."""
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


def rootfs_rows() -> list[dict] | None:
    """The Debian minbase manifest's rows, or None when the fixtures are absent."""
    p = fixtures_dir() / ROOTFS_MANIFEST
    return load_manifest(p) if p.exists() else None
